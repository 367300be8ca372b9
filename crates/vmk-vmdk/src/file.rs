//! An image file: positioned reads and writes with errors that name the file, advisory
//! locking, hole punching, and (for the crash tests) a switch that silently drops all writes
//! after a given number, as if the host had died.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::error::VmdkError;
use crate::storage::{StorageFile, Store};

/// Shared by the files of one disk: how many more writes reach the disk (-1: all).
#[derive(Debug, Default)]
pub(crate) struct CrashSwitch {
    remaining: AtomicI64,
}

impl CrashSwitch {
    pub(crate) fn new() -> Arc<CrashSwitch> {
        Arc::new(CrashSwitch {
            remaining: AtomicI64::new(-1),
        })
    }

    /// Lets `n` more writes through, then drops every write.
    #[cfg(test)]
    pub(crate) fn arm(&self, n: u64) {
        self.remaining.store(n as i64, Ordering::SeqCst);
    }

    /// Writes still let through (-1: no limit).
    #[cfg(test)]
    pub(crate) fn remaining(&self) -> i64 {
        self.remaining.load(Ordering::SeqCst)
    }

    /// True once writes are being dropped.
    pub(crate) fn crashed(&self) -> bool {
        self.remaining.load(Ordering::SeqCst) == 0
    }

    /// Accounts for one write; false when it must be dropped.
    pub(crate) fn pass(&self) -> bool {
        let mut cur = self.remaining.load(Ordering::SeqCst);
        loop {
            if cur < 0 {
                return true;
            }
            if cur == 0 {
                return false;
            }
            match self
                .remaining
                .compare_exchange(cur, cur - 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }
}

/// One open image file.
#[derive(Debug)]
pub(crate) struct ImageFile {
    io: Io,
    pub(crate) path: PathBuf,
    crash: Arc<CrashSwitch>,
}

/// A host file (flock, holes, SEEK_DATA), or a file of another [`Storage`] (locked by the
/// storage when opened; no holes to ask about).
#[derive(Debug)]
enum Io {
    Host(File),
    Store(Box<dyn StorageFile>),
}

/// What a storage's refusal becomes: "in use" (with the storage's words on who holds it)
/// or a plain I/O error.
fn store_err(path: &Path, doing: &'static str, e: io::Error) -> VmdkError {
    if e.kind() == io::ErrorKind::WouldBlock {
        VmdkError::InUse {
            path: path.to_path_buf(),
            why: e.to_string(),
        }
    } else if e.kind() == io::ErrorKind::AlreadyExists {
        VmdkError::AlreadyExists {
            path: path.to_path_buf(),
        }
    } else {
        VmdkError::io(path, doing, 0, e)
    }
}

/// Lock kinds for [`ImageFile::lock`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    Shared,
    Exclusive,
}

impl ImageFile {
    pub(crate) fn open(
        path: &Path,
        writable: bool,
        crash: &Arc<CrashSwitch>,
    ) -> io::Result<ImageFile> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(ImageFile {
            io: Io::Host(file),
            path: path.to_path_buf(),
            crash: crash.clone(),
        })
    }

    /// Opens `path` on `store` (the host's file system when `None`). A storage's "in use"
    /// refusal is [`VmdkError::InUse`]; other errors are `io::Error`s for the caller to
    /// describe (a missing extent, say).
    pub(crate) fn open_on(
        store: &Store,
        path: &Path,
        writable: bool,
        crash: &Arc<CrashSwitch>,
    ) -> Result<io::Result<ImageFile>, VmdkError> {
        let Some(st) = store else {
            return Ok(ImageFile::open(path, writable, crash));
        };
        match st.open(path, writable) {
            Ok(f) => Ok(Ok(ImageFile {
                io: Io::Store(f),
                path: path.to_path_buf(),
                crash: crash.clone(),
            })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(store_err(path, "opening the file", e))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// Creates a new file on `store`; fails if it exists. `size_hint`: its final size.
    pub(crate) fn create_on(
        store: &Store,
        path: &Path,
        size_hint: u64,
        crash: &Arc<CrashSwitch>,
    ) -> Result<ImageFile, VmdkError> {
        let Some(st) = store else {
            return ImageFile::create(path, crash);
        };
        let f = st
            .create(path, size_hint)
            .map_err(|e| store_err(path, "creating the file", e))?;
        Ok(ImageFile {
            io: Io::Store(f),
            path: path.to_path_buf(),
            crash: crash.clone(),
        })
    }

    /// True for a file of a [`Storage`] other than the host's file system.
    pub(crate) fn on_store(&self) -> bool {
        matches!(self.io, Io::Store(_))
    }

    /// Creates a new file; fails if it exists.
    pub(crate) fn create(path: &Path, crash: &Arc<CrashSwitch>) -> Result<ImageFile, VmdkError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    VmdkError::AlreadyExists {
                        path: path.to_path_buf(),
                    }
                } else {
                    VmdkError::io(path, "creating the file", 0, e)
                }
            })?;
        Ok(ImageFile {
            io: Io::Host(file),
            path: path.to_path_buf(),
            crash: crash.clone(),
        })
    }

    /// Takes an advisory lock (flock). A conflicting lock is retried for half a second: a
    /// process forked by another thread holds copies of our descriptors, and so our locks,
    /// until it execs.
    pub(crate) fn lock(&self, kind: Lock) -> Result<(), VmdkError> {
        // A storage file was locked by its storage when it was opened.
        let Io::Host(file) = &self.io else {
            return Ok(());
        };
        let op = match kind {
            Lock::Shared => libc::LOCK_SH,
            Lock::Exclusive => libc::LOCK_EX,
        } | libc::LOCK_NB;
        for _ in 0..50 {
            // SAFETY: flock on a file descriptor this struct owns.
            let r = unsafe { libc::flock(file.as_raw_fd(), op) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(VmdkError::io(&self.path, "locking the file", 0, e));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(VmdkError::Locked {
            path: self.path.clone(),
        })
    }

    pub(crate) fn len(&self) -> Result<u64, VmdkError> {
        match &self.io {
            Io::Host(file) => file.metadata().map(|m| m.len()),
            Io::Store(f) => f.len(),
        }
        .map_err(|e| VmdkError::io(&self.path, "reading the file size", 0, e))
    }

    /// Bytes the file occupies on the host (allocated blocks).
    pub(crate) fn allocated(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        match &self.io {
            Io::Host(file) => file.metadata().map(|m| m.blocks() * 512).unwrap_or(0),
            Io::Store(f) => f.allocated(),
        }
    }

    fn raw_read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        match &self.io {
            Io::Host(file) => file.read_at(buf, off),
            Io::Store(f) => f.read_at(buf, off),
        }
    }

    fn raw_write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        match &self.io {
            Io::Host(file) => file.write_all_at(buf, off),
            Io::Store(f) => f.write_at(buf, off),
        }
    }

    /// Reads `buf.len()` bytes at `off`; what lies past the end of the file reads as zeros.
    pub(crate) fn read_at(
        &self,
        off: u64,
        buf: &mut [u8],
        doing: &'static str,
    ) -> Result<(), VmdkError> {
        let mut done = 0;
        while done < buf.len() {
            match self.raw_read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VmdkError::io(&self.path, doing, off + done as u64, e)),
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `off`: a short file is an error.
    pub(crate) fn read_exact_at(
        &self,
        off: u64,
        buf: &mut [u8],
        doing: &'static str,
    ) -> Result<(), VmdkError> {
        let mut done = 0;
        while done < buf.len() {
            match self.raw_read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Err(VmdkError::io(&self.path, doing, off + done as u64, e));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VmdkError::io(&self.path, doing, off + done as u64, e)),
            }
        }
        Ok(())
    }

    pub(crate) fn write_at(
        &self,
        off: u64,
        buf: &[u8],
        doing: &'static str,
    ) -> Result<(), VmdkError> {
        if !self.crash.pass() {
            return Ok(());
        }
        self.raw_write_all_at(buf, off)
            .map_err(|e| VmdkError::io(&self.path, doing, off, e))
    }

    pub(crate) fn set_len(&self, len: u64) -> Result<(), VmdkError> {
        if !self.crash.pass() {
            return Ok(());
        }
        match &self.io {
            Io::Host(file) => file.set_len(len),
            Io::Store(f) => f.set_len(len),
        }
        .map_err(|e| VmdkError::io(&self.path, "resizing the file", len, e))
    }

    /// fdatasync.
    pub(crate) fn sync(&self) -> Result<(), VmdkError> {
        if self.crash.crashed() {
            return Ok(());
        }
        match &self.io {
            Io::Host(file) => file.sync_data(),
            Io::Store(f) => f.flush(),
        }
        .map_err(|e| VmdkError::io(&self.path, "syncing the file", 0, e))
    }

    /// The first offset at or after `off` that may hold data (SEEK_DATA); `None` when only
    /// holes follow.
    pub(crate) fn next_data(&self, off: u64) -> Option<u64> {
        // A storage file does not tell its holes: it may hold data anywhere.
        let Io::Host(file) = &self.io else {
            return Some(off);
        };
        // SAFETY: lseek on a file descriptor this struct owns; positioned I/O ignores the
        // file position it moves.
        let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
        if r >= 0 {
            return Some(r as u64);
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
            None
        } else {
            Some(off)
        }
    }

    /// The first hole at or after `off` (SEEK_HOLE; the end of the file counts as one).
    pub(crate) fn next_hole(&self, off: u64) -> u64 {
        let Io::Host(file) = &self.io else {
            return u64::MAX;
        };
        // SAFETY: as in next_data.
        let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, libc::SEEK_HOLE) };
        if r >= 0 {
            r as u64
        } else {
            u64::MAX
        }
    }

    /// Makes `len` bytes at `off` read as zeros: punches a hole where the file system can,
    /// writes zeros elsewhere. The file size does not change.
    pub(crate) fn zero_range(&self, off: u64, len: u64) -> Result<(), VmdkError> {
        if len == 0 {
            return Ok(());
        }
        if !self.crash.pass() {
            return Ok(());
        }
        if let Io::Host(file) = &self.io {
            // SAFETY: fallocate on a file descriptor this struct owns.
            let r = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as libc::off_t,
                    len as libc::off_t,
                )
            };
            if r == 0 {
                return Ok(());
            }
        }
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let n = (end - pos).min(ZEROS.len() as u64);
            self.raw_write_all_at(&ZEROS[..n as usize], pos)
                .map_err(|e| VmdkError::io(&self.path, "writing zeros", pos, e))?;
            pos += n;
        }
        Ok(())
    }
}

/// A source of zeros for writes.
pub(crate) static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
