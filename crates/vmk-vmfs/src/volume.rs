//! A mounted volume's I/O: checked reads (with retries for torn reads of structures that
//! another host is rewriting), fenced writes (no write once this host's lease may have
//! expired), and the per-host metadata journal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::device::Dev;
use crate::error::{corrupt, Result, VmfsError};
use crate::format::*;

/// This host's right to write: set by the heartbeat thread, checked before every write.
pub(crate) struct Fence {
    pub host: u32,
    base: Instant,
    /// Writes are allowed until this many ms after `base`.
    valid_until_ms: AtomicU64,
    lost: AtomicBool,
    why: Mutex<String>,
}

impl Fence {
    pub fn new(host: u32) -> Fence {
        Fence {
            host,
            base: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            why: Mutex::new(String::new()),
        }
    }
    pub fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
    /// A renewal that started at `started_ms` (our clock) succeeded: writes are safe until
    /// `started_ms + grace_ms`.
    pub fn extend(&self, started_ms: u64, grace_ms: u64) {
        self.valid_until_ms
            .fetch_max(started_ms + grace_ms, Ordering::SeqCst);
    }
    pub fn lose(&self, why: String) {
        if let Ok(mut w) = self.why.lock() {
            if w.is_empty() {
                *w = why;
            }
        }
        self.lost.store(true, Ordering::SeqCst);
    }
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            let why = self.why.lock().map(|w| w.clone()).unwrap_or_default();
            return Err(VmfsError::LeaseLost {
                host: self.host,
                why,
            });
        }
        if self.now_ms() >= self.valid_until_ms.load(Ordering::SeqCst) {
            return Err(VmfsError::LeaseLost {
                host: self.host,
                why: "the heartbeat was not renewed in time".into(),
            });
        }
        Ok(())
    }
}

pub(crate) struct Volume {
    pub dev: Dev,
    pub hdr: VolumeHeader,
    pub geo: Geometry,
    /// fdatasync at the journal's commit points (off only where a process crash, not a
    /// power loss, is what must be survived, e.g. tests on a shared page cache).
    pub sync: bool,
    pub fence: Option<Arc<Fence>>,
}

/// How often a structure that fails its checksum is read again before it is reported:
/// another host may be rewriting it (a read racing a write can see half of each).
const TORN_RETRIES: u32 = 4;

impl Volume {
    pub fn read_vec(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.dev.read(&mut b, off)?;
        Ok(b)
    }

    /// Reads `len` bytes at `off` and decodes them; a corrupt result is read again a few
    /// times (torn read) before the error is returned.
    pub fn read_decode<T>(
        &self,
        off: u64,
        len: usize,
        f: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            let b = self.read_vec(off, len)?;
            match f(&b) {
                Err(VmfsError::Corrupt { .. })
                    if attempt < TORN_RETRIES && self.fence.is_some() =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(1 << attempt));
                }
                r => return r,
            }
        }
    }

    pub fn write(&self, off: u64, buf: &[u8]) -> Result<()> {
        if let Some(f) = &self.fence {
            f.check()?;
        }
        self.dev.write(buf, off)
    }

    pub fn flush(&self) -> Result<()> {
        if self.sync {
            self.dev.flush()?;
        }
        Ok(())
    }

    pub fn read_map(&self, c: u32) -> Result<ClusterMap> {
        self.read_decode(self.geo.map(c), PAGE, |b| {
            ClusterMap::decode(b, &self.geo, c)
        })
    }

    pub fn read_inode(&self, i: u32) -> Result<Inode> {
        if i == 0 || i as u64 >= self.geo.ninodes() {
            return Err(corrupt(
                "inode",
                self.geo.inode_off,
                format!("inode number {i} is outside the inode table"),
            ));
        }
        self.read_decode(self.geo.inode(i), PAGE, |b| Inode::decode(b, &self.geo, i))
    }

    /// Where page `page` of a small (sub-block) or block-mode byte stream lives.
    pub fn ptr_page_offset(&self, pb_sub: u32, page: usize) -> u64 {
        self.geo.sub(pb_sub) + (page * PAGE) as u64
    }

    pub fn read_ptr_page(&self, ino: &Inode, pb_index: usize, page: usize) -> Result<PointerPage> {
        let sub = ino.addrs[pb_index];
        let off = self.ptr_page_offset(sub, page);
        let first = pb_index as u64 * PTRS_PER_PB + (page * PTRS_PER_PAGE) as u64;
        self.read_decode(off, PAGE, |b| {
            PointerPage::decode(b, &self.geo, off, ino.inum, ino.generation, first)
        })
    }

    // ---- journal ----

    /// Reads a host's journal: the committed, not yet done transaction, if any.
    pub fn pending_txn(&self, host: u32) -> Result<Option<(JournalDesc, Vec<Vec<u8>>)>> {
        let j = self.geo.journal(host);
        let desc = self.read_decode(j, PAGE, |b| JournalDesc::decode(b, j, host))?;
        let done = self.read_decode(j + PAGE as u64, PAGE, |b| {
            JournalDone::decode(b, j + PAGE as u64, host)
        })?;
        let Some(desc) = desc else { return Ok(None) };
        if desc.seq <= done.done_seq {
            return Ok(None);
        }
        if desc.targets.len() > self.geo.journal_pages_max() {
            return Err(corrupt(
                "journal transaction",
                j,
                format!("{} pages do not fit in the journal", desc.targets.len()),
            ));
        }
        let imgs = self.read_vec(j + 2 * PAGE as u64, desc.targets.len() * PAGE)?;
        if crc32c::crc32c(&imgs) != desc.images_crc {
            // Torn: the descriptor was written but not all images (a crash mid-commit, before
            // anything was written in place). Never committed.
            return Ok(Some((desc, Vec::new())));
        }
        for (k, &t) in desc.targets.iter().enumerate() {
            if !self.is_journaled_target(t) {
                return Err(corrupt(
                    "journal transaction",
                    j,
                    format!("page {k} targets offset {t:#x}, which is not a metadata page"),
                ));
            }
        }
        Ok(Some((
            desc,
            imgs.chunks(PAGE).map(|c| c.to_vec()).collect(),
        )))
    }

    /// Journaled pages are cluster maps, inodes, and pages in the sub-block and block areas.
    fn is_journaled_target(&self, t: u64) -> bool {
        t.is_multiple_of(PAGE as u64) && t >= self.geo.map_off && t + PAGE as u64 <= self.geo.end
    }

    pub fn journal_seq(&self, host: u32) -> Result<u64> {
        let j = self.geo.journal(host);
        let desc = self
            .read_decode(j, PAGE, |b| JournalDesc::decode(b, j, host))
            .ok()
            .flatten();
        let done = self.read_decode(j + PAGE as u64, PAGE, |b| {
            JournalDone::decode(b, j + PAGE as u64, host)
        })?;
        Ok(desc.map(|d| d.seq).unwrap_or(0).max(done.done_seq))
    }

    /// Replays `host`'s pending transaction, if any (idempotent: writes whole page images).
    /// Returns the number of pages written. The caller holds what makes this safe: it is
    /// `host` itself at mount, or it holds `host`'s journal lock and `host` is dead.
    pub fn replay(&self, host: u32, by: u32) -> Result<usize> {
        let Some((desc, imgs)) = self.pending_txn(host)? else {
            return Ok(0);
        };
        for (t, img) in desc.targets.iter().zip(&imgs) {
            self.write(*t, img)?;
        }
        self.flush()?;
        let j = self.geo.journal(host) + PAGE as u64;
        self.write(
            j,
            &JournalDone {
                host,
                done_seq: desc.seq,
                replayed_by: by,
            }
            .encode(j),
        )?;
        self.flush()?;
        Ok(imgs.len())
    }

    /// Commits a transaction through `host`'s journal: images + descriptor, flush, pages in
    /// place, flush, done record, flush. The caller holds the locks of every page.
    pub fn commit(&self, host: u32, seq: u64, txn: &Txn) -> Result<()> {
        if txn.pages.is_empty() {
            return Ok(());
        }
        let max = self.geo.journal_pages_max();
        if txn.pages.len() > max {
            return Err(VmfsError::Invalid(format!(
                "internal: a transaction of {} pages does not fit in the journal ({max})",
                txn.pages.len()
            )));
        }
        let j = self.geo.journal(host);
        let mut imgs = Vec::with_capacity(txn.pages.len() * PAGE);
        for (_, p) in &txn.pages {
            imgs.extend_from_slice(p);
        }
        self.write(j + 2 * PAGE as u64, &imgs)?;
        let desc = JournalDesc {
            host,
            seq,
            images_crc: crc32c::crc32c(&imgs),
            targets: txn.pages.iter().map(|(o, _)| *o).collect(),
        };
        self.write(j, &desc.encode(j))?;
        self.flush()?;
        test_kill_point();
        for (o, p) in &txn.pages {
            self.write(*o, p)?;
        }
        self.flush()?;
        let d = j + PAGE as u64;
        self.write(
            d,
            &JournalDone {
                host,
                done_seq: seq,
                replayed_by: 0,
            }
            .encode(d),
        )?;
        self.flush()
    }
}

/// Page images to write atomically, in order (an inode before the directory entry that
/// names it, so lock-free readers see a finished inode).
#[derive(Default)]
pub(crate) struct Txn {
    pub pages: Vec<(u64, Vec<u8>)>,
}

impl Txn {
    pub fn put(&mut self, off: u64, img: Vec<u8>) {
        if let Some(p) = self.pages.iter_mut().find(|(o, _)| *o == off) {
            p.1 = img;
        } else {
            self.pages.push((off, img));
        }
    }
}

/// Test hook (debug builds only): `VMFS_TEST_KILL_AT_COMMIT=N` kills this process with
/// SIGKILL right after the Nth transaction is committed to the journal and before any of
/// it is written in place, the worst moment for a crash.
fn test_kill_point() {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::AtomicU64;
        static COMMITS: AtomicU64 = AtomicU64::new(0);
        static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        let at = AT.get_or_init(|| {
            std::env::var("VMFS_TEST_KILL_AT_COMMIT")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(at) = at {
            if COMMITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
                // SAFETY: kill(2) on our own pid; no memory is touched.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
        }
    }
}
