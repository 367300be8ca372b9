//! Guest serial consoles on the host side: the exit-status watcher (shared with `vmk run`),
//! the bounded console log file, and the per-VM hub that fans output out to the log, an
//! in-memory tail and attached consoles.
//!
//! The vCPU must never wait for a console reader. The guest's UART calls
//! [`vmk_machine::Console::write`] on the vCPU thread (one byte per THR write, with the UART
//! lock held), so the host's sink ([`Pump`]) only appends to a bounded in-memory buffer; a pump
//! thread per run moves the bytes to the log file, the tail and the subscribers. A subscriber
//! that does not keep up loses output (its channel is bounded and written with `try_send`);
//! output beyond the pump's buffer is dropped and counted rather than stalling the guest.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmk_api::model::ExitInfo;

use crate::host_api::ConsoleEvent;

/// The console line that carries the exit status of an image's init script
/// (`vmk-guest: exit-status N`, see `vmk_image::initscript`).
pub const EXIT_STATUS_PREFIX: &str = vmk_image::initscript::EXIT_STATUS_PREFIX;

/// Console lines longer than this are cut for the status watcher (the marker is short; a
/// guest printing megabytes without a newline must not grow host memory).
const MAX_LINE: usize = 4096;

/// The guest's exit status from a console line ending in `vmk-guest: exit-status N`. The
/// marker may follow other output on the same line (a script whose last output lacks a
/// newline), so the last occurrence counts.
pub fn parse_status(line: &[u8]) -> Option<i32> {
    let prefix = EXIT_STATUS_PREFIX.as_bytes();
    let pos = line.windows(prefix.len()).rposition(|w| w == prefix)?;
    let rest = std::str::from_utf8(line.get(pos + prefix.len()..)?).ok()?;
    rest.trim().parse().ok()
}

/// Watches console output, line by line, for the exit-status marker.
#[derive(Debug, Default, Clone)]
pub struct StatusWatcher {
    line: Vec<u8>,
    status: Option<i32>,
}

impl StatusWatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds console output (any chunking; lines end at `\n` or `\r`).
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if let Some(code) = parse_status(&self.line) {
                    self.status = Some(code);
                }
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    /// The last exit status seen, if any.
    pub fn status(&self) -> Option<i32> {
        self.status
    }
}

/// Size at which `console.log` is rotated to `console.log.1` (the old `.1` is replaced).
pub const LOG_LIMIT: u64 = 1 << 20;
/// Bytes of recent output kept in memory for a new console attachment.
pub const TAIL_LIMIT: usize = 64 << 10;
/// Events queued for one attached console before its output is dropped.
pub const SUBSCRIBER_QUEUE: usize = 256;
/// Output buffered between the vCPU and the pump thread before output is dropped.
const PENDING_LIMIT: usize = 1 << 20;

/// A console log file bounded to `limit` bytes: when a write would pass the limit the file
/// becomes `<path>.1` and a new one is started, so at most ~2 × `limit` bytes are on disk.
pub struct ConsoleLog {
    path: PathBuf,
    file: File,
    size: u64,
    limit: u64,
}

impl ConsoleLog {
    /// Opens (appends to) the log at `path`.
    pub fn open(path: &Path, limit: u64) -> io::Result<ConsoleLog> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(ConsoleLog {
            path: path.to_path_buf(),
            file,
            size,
            limit: limit.max(1),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rotated file next to `path`.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(".1");
        PathBuf::from(s)
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.size >= self.limit {
                self.rotate()?;
            }
            let room = (self.limit - self.size) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.file.write_all(now)?;
            self.size += now.len() as u64;
            bytes = rest;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// The last `max` bytes of the log at `path`, older (rotated) part first. Missing files
    /// count as empty.
    pub fn read_tail(path: &Path, max: usize) -> io::Result<Vec<u8>> {
        let mut out = read_last(path, max)?;
        if out.len() < max {
            let mut older = read_last(&Self::rotated_path(path), max - out.len())?;
            older.append(&mut out);
            out = older;
        }
        Ok(out)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn read_last(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max as u64);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.take(max as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

struct Subscriber {
    tx: SyncSender<ConsoleEvent>,
    /// Output bytes dropped since the last successful send (reported in-band when the
    /// subscriber catches up).
    dropped: u64,
}

struct HubInner {
    log_path: PathBuf,
    log: Option<ConsoleLog>,
    /// Log write failures not yet reported (reported once per failure streak).
    log_failed: bool,
    tail: VecDeque<u8>,
    subscribers: Vec<Subscriber>,
}

/// One VM's console, across its runs: log file, tail, attached consoles.
pub struct ConsoleHub {
    inner: Mutex<HubInner>,
}

impl ConsoleHub {
    /// A hub logging to `log_path` (opened on first output).
    pub fn new(log_path: PathBuf) -> ConsoleHub {
        ConsoleHub {
            inner: Mutex::new(HubInner {
                log_path,
                log: None,
                log_failed: false,
                tail: VecDeque::new(),
                subscribers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        vmk_base::lock(&self.inner)
    }

    pub fn log_path(&self) -> PathBuf {
        self.lock().log_path.clone()
    }

    /// Guest output: to the log, the tail and every subscriber that keeps up.
    pub fn output(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut g = self.lock();
        let inner = &mut *g;
        let r = match &mut inner.log {
            Some(log) => log.write(bytes),
            None => ConsoleLog::open(&inner.log_path, LOG_LIMIT).and_then(|mut log| {
                let r = log.write(bytes);
                inner.log = Some(log);
                r
            }),
        };
        match r {
            Ok(()) => inner.log_failed = false,
            Err(e) => {
                if !inner.log_failed {
                    tracing::warn!(
                        "cannot write console log {}: {e} (output is still kept in memory and \
                         sent to attached consoles)",
                        inner.log_path.display()
                    );
                }
                inner.log_failed = true;
                // Reopen next time (the file may have been removed or the disk freed).
                inner.log = None;
            }
        }
        let over = (inner.tail.len() + bytes.len()).saturating_sub(TAIL_LIMIT);
        inner.tail.drain(..over.min(inner.tail.len()));
        let keep = bytes.len().min(TAIL_LIMIT);
        inner.tail.extend(&bytes[bytes.len() - keep..]);
        inner.subscribers.retain_mut(|s| {
            if s.dropped > 0 {
                let note = format!(
                    "\r\n[vmk: {} bytes of console output dropped: this console did not keep up]\r\n",
                    s.dropped
                );
                match s.tx.try_send(ConsoleEvent::Output(note.into_bytes())) {
                    Ok(()) => s.dropped = 0,
                    Err(TrySendError::Full(_)) => {
                        s.dropped += bytes.len() as u64;
                        return true;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            match s.tx.try_send(ConsoleEvent::Output(bytes.to_vec())) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.dropped += bytes.len() as u64;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }

    /// Registers a subscriber: the recent output, and a channel of what follows.
    pub fn attach(&self) -> (Vec<u8>, Receiver<ConsoleEvent>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(SUBSCRIBER_QUEUE);
        let mut g = self.lock();
        g.subscribers.push(Subscriber { tx, dropped: 0 });
        (g.tail.iter().copied().collect(), rx)
    }

    /// Number of attached consoles (disconnected ones are noticed at the next output).
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// The run ended: every subscriber gets `Ended` and is detached. A subscriber whose
    /// queue is full gets it from a helper thread once it has room (or has gone away), so
    /// the end is never lost and never waited for here.
    pub fn ended(&self, exit: &ExitInfo) {
        let subs = std::mem::take(&mut self.lock().subscribers);
        for s in subs {
            match s.tx.try_send(ConsoleEvent::Ended(exit.clone())) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(ev)) => {
                    let tx = s.tx;
                    let spawned = std::thread::Builder::new()
                        .name("console-end".into())
                        .spawn(move || {
                            // Blocks until the reader takes an event or drops its receiver.
                            let _ = tx.send(ev);
                        });
                    if let Err(e) = spawned {
                        tracing::warn!("cannot deliver a console's end event: {e}");
                    }
                }
            }
        }
    }

    /// The last `max` bytes of the console log files.
    pub fn log_tail(&self, max: usize) -> io::Result<Vec<u8>> {
        // Hold the lock so a rotation does not happen between reading the two files.
        let g = self.lock();
        ConsoleLog::read_tail(&g.log_path, max)
    }
}

struct PumpBuf {
    data: Vec<u8>,
    dropped: u64,
    closed: bool,
}

struct PumpShared {
    buf: Mutex<PumpBuf>,
    cv: Condvar,
}

impl PumpShared {
    fn lock(&self) -> MutexGuard<'_, PumpBuf> {
        vmk_base::lock(&self.buf)
    }
}

/// The console sink of one run: `Console::write` (vCPU thread) only buffers; a pump thread
/// delivers to the hub and watches for the exit status.
pub struct Pump {
    shared: Arc<PumpShared>,
    thread: Option<JoinHandle<StatusWatcher>>,
}

/// What the VM writes its console into (cheap, never blocks on I/O).
pub struct PumpSink {
    shared: Arc<PumpShared>,
}

impl vmk_machine::Console for PumpSink {
    fn write(&self, bytes: &[u8]) {
        let mut b = self.shared.lock();
        if b.closed {
            return;
        }
        if b.data.len() + bytes.len() > PENDING_LIMIT {
            b.dropped += bytes.len() as u64;
            return;
        }
        let was_empty = b.data.is_empty();
        b.data.extend_from_slice(bytes);
        drop(b);
        // One wake-up per batch: the pump takes everything buffered when it wakes.
        if was_empty {
            self.shared.cv.notify_one();
        }
    }
}

impl Pump {
    /// Starts the pump thread of a run of VM `name`, delivering to `hub`.
    pub fn start(name: &str, hub: Arc<ConsoleHub>) -> io::Result<Pump> {
        let shared = Arc::new(PumpShared {
            buf: Mutex::new(PumpBuf {
                data: Vec::new(),
                dropped: 0,
                closed: false,
            }),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("con-{name}"))
            .spawn(move || pump_loop(&s, &hub))?;
        Ok(Pump {
            shared,
            thread: Some(thread),
        })
    }

    pub fn sink(&self) -> Arc<PumpSink> {
        Arc::new(PumpSink {
            shared: self.shared.clone(),
        })
    }

    /// Delivers what is buffered, stops the thread, and returns the exit status the console
    /// showed (if any).
    pub fn finish(mut self) -> Option<i32> {
        self.close()
    }

    fn close(&mut self) -> Option<i32> {
        self.shared.lock().closed = true;
        self.shared.cv.notify_one();
        let t = self.thread.take()?;
        match t.join() {
            Ok(w) => w.status(),
            Err(_) => {
                tracing::error!("a console pump thread panicked");
                None
            }
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.close();
    }
}

fn pump_loop(s: &PumpShared, hub: &ConsoleHub) -> StatusWatcher {
    let mut watcher = StatusWatcher::new();
    let mut spare = Vec::new();
    loop {
        let mut b = s.lock();
        while b.data.is_empty() && b.dropped == 0 && !b.closed {
            b = s.cv.wait(b).unwrap_or_else(|e| e.into_inner());
        }
        if b.data.is_empty() && b.dropped == 0 && b.closed {
            return watcher;
        }
        std::mem::swap(&mut b.data, &mut spare);
        let dropped = std::mem::take(&mut b.dropped);
        drop(b);
        hub.output(&spare);
        watcher.feed(&spare);
        if dropped > 0 {
            let note = format!(
                "\r\n[vmk: {dropped} bytes of console output dropped: the host fell behind]\r\n"
            );
            hub.output(note.as_bytes());
        }
        spare.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmk_machine::Console;

    #[test]
    fn status_line() {
        assert_eq!(parse_status(b"vmk-guest: exit-status 3"), Some(3));
        assert_eq!(
            parse_status(b"no newline at endvmk-guest: exit-status 0"),
            Some(0)
        );
        assert_eq!(parse_status(b"vmk-guest: exit-status x"), None);
        assert_eq!(parse_status(b"vmk-guest: ready"), None);
        assert_eq!(parse_status(b"vmk-guest: exit-status "), None);
    }

    #[test]
    fn watcher_sees_the_marker_across_chunks_and_keeps_the_last() {
        let mut w = StatusWatcher::new();
        for chunk in [&b"boot\r\nvmk-guest: exit-"[..], b"status 4", b"2\r\n"] {
            w.feed(chunk);
        }
        assert_eq!(w.status(), Some(42));
        w.feed(b"vmk-guest: exit-status 7\n");
        assert_eq!(w.status(), Some(7));
        // No line end yet: not counted.
        w.feed(b"vmk-guest: exit-status 9");
        assert_eq!(w.status(), Some(7));
        // A huge line does not grow memory and does not produce a status.
        let mut w = StatusWatcher::new();
        w.feed(&vec![b'x'; 100_000]);
        w.feed(b"vmk-guest: exit-status 1\n");
        assert!(w.line.is_empty());
        assert_eq!(w.status(), None, "the marker was beyond the line limit");
    }

    #[test]
    fn log_is_bounded_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = ConsoleLog::open(&path, 100).unwrap();
        let data: Vec<u8> = (0..250u32).map(|i| b'a' + (i % 26) as u8).collect();
        for chunk in data.chunks(7) {
            log.write(chunk).unwrap();
        }
        let cur = std::fs::read(&path).unwrap();
        let old = std::fs::read(ConsoleLog::rotated_path(&path)).unwrap();
        assert_eq!(old.len(), 100);
        assert_eq!(cur.len(), 50);
        assert_eq!(cur, &data[200..]);
        assert_eq!(old, &data[100..200], "the oldest 100 bytes are gone");
        assert!(!dir.path().join("console.log.2").exists());
        // The tail spans both files.
        assert_eq!(ConsoleLog::read_tail(&path, 80).unwrap(), &data[170..]);
        assert_eq!(ConsoleLog::read_tail(&path, 1000).unwrap(), &data[100..]);
        // One write larger than the limit still keeps files bounded.
        log.write(&[b'z'; 350]).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        assert_eq!(
            std::fs::metadata(ConsoleLog::rotated_path(&path))
                .unwrap()
                .len(),
            100
        );
        // Reopening appends and keeps counting from the file's size.
        drop(log);
        let size = std::fs::metadata(&path).unwrap().len();
        let mut log = ConsoleLog::open(&path, 100).unwrap();
        log.write(&vec![b'y'; (100 - size) as usize + 1]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1);
        assert_eq!(
            ConsoleLog::read_tail(&dir.path().join("missing.log"), 10).unwrap(),
            b""
        );
    }

    #[test]
    fn hub_tail_subscribers_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(ConsoleHub::new(dir.path().join("console.log")));
        hub.output(b"before ");
        let (history, rx) = hub.attach();
        assert_eq!(history, b"before ");
        // A subscriber that never reads must not block output; it loses what did not fit.
        let (_, slow) = hub.attach();
        let (_, gone) = hub.attach();
        drop(gone);
        for i in 0..SUBSCRIBER_QUEUE + 10 {
            hub.output(format!("{i},").as_bytes());
            // The fast reader keeps up.
            match rx.try_recv() {
                Ok(ConsoleEvent::Output(b)) => assert_eq!(b, format!("{i},").as_bytes()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(hub.subscribers(), 2, "the dropped receiver is detached");
        let mut slow_got = 0;
        while let Ok(ConsoleEvent::Output(_)) = slow.try_recv() {
            slow_got += 1;
        }
        assert_eq!(slow_got, SUBSCRIBER_QUEUE);
        // Caught up now: the next output is preceded by a note of what was lost.
        hub.output(b"x");
        match slow.try_recv() {
            Ok(ConsoleEvent::Output(b)) => {
                let s = String::from_utf8(b).unwrap();
                assert!(s.contains("bytes of console output dropped"), "{s}");
            }
            other => panic!("{other:?}"),
        }
        // The tail is bounded.
        hub.output(&vec![b'q'; TAIL_LIMIT + 5]);
        let (history, _rx3) = hub.attach();
        assert_eq!(history.len(), TAIL_LIMIT);
        // Fill the slow subscriber again, then end: the end arrives once it reads.
        for _ in 0..SUBSCRIBER_QUEUE {
            hub.output(b"y");
        }
        let exit = ExitInfo::PoweredOff { status: 3 };
        hub.ended(&exit);
        assert_eq!(hub.subscribers(), 0);
        assert!(matches!(rx.try_recv(), Ok(ConsoleEvent::Output(_))));
        let last = rx.iter().last();
        assert_eq!(last, Some(ConsoleEvent::Ended(exit.clone())));
        let last = slow.iter().last();
        assert_eq!(last, Some(ConsoleEvent::Ended(exit)));
        // Everything went to the log.
        let log = hub.log_tail(usize::MAX >> 1).unwrap();
        assert!(log.starts_with(b"before 0,1,2,"), "{:?}", &log[..20]);
    }

    #[test]
    fn pump_delivers_everything_and_finds_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(ConsoleHub::new(dir.path().join("console.log")));
        let pump = Pump::start("t", hub.clone()).unwrap();
        let sink = pump.sink();
        let text = b"hello\r\nvmk-guest: exit-status 5\r\n";
        for &b in text {
            sink.write(&[b]);
        }
        assert_eq!(pump.finish(), Some(5));
        assert_eq!(hub.log_tail(1000).unwrap(), text);
        // After the end, the sink swallows output (a late vCPU write does not panic).
        sink.write(b"late");
        assert_eq!(hub.log_tail(1000).unwrap(), text);
    }
}
