//! Where a volume lives: a [`BlockDevice`] (a regular file, a host block device, an NBD
//! export, or memory in tests).
//!
//! Hosts share a volume only through this interface. Implementations must not cache across
//! calls: a `read_at` must see every `write_at` that completed before it, on any host. A
//! regular file or block device opened by several processes of one machine gets that from the
//! kernel's page cache (one coherent cache for all processes). Separate machines need
//! storage without a client-side cache: NBD (our client caches nothing; the server must run
//! with one cache for all its clients, as `qemu-nbd --shared=N` does), or a shared block
//! device opened with O_DIRECT.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{Result, VmfsError};

/// Storage with positioned reads and writes.
pub trait BlockDevice: Send + Sync {
    /// Fills `buf` from `offset` (the whole buffer, or an error).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Writes all of `buf` at `offset`; visible to every host's reads when it returns.
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Makes every completed write durable (fdatasync, NBD_CMD_FLUSH).
    fn flush(&self) -> std::io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Name for messages (a path, an NBD address).
    fn name(&self) -> String;
}

/// Wraps a device and turns its I/O errors into [`VmfsError::Io`] with the offset.
pub(crate) struct Dev {
    pub inner: Box<dyn BlockDevice>,
}

impl Dev {
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.inner.size())
        {
            return Err(VmfsError::Io {
                device: self.inner.name(),
                op: "reading",
                offset,
                len: buf.len(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "past the end of the device",
                ),
            });
        }
        self.inner
            .read_at(buf, offset)
            .map_err(|source| VmfsError::Io {
                device: self.inner.name(),
                op: "reading",
                offset,
                len: buf.len(),
                source,
            })
    }

    pub fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.inner.size())
        {
            return Err(VmfsError::Io {
                device: self.inner.name(),
                op: "writing",
                offset,
                len: buf.len(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "past the end of the device",
                ),
            });
        }
        self.inner
            .write_at(buf, offset)
            .map_err(|source| VmfsError::Io {
                device: self.inner.name(),
                op: "writing",
                offset,
                len: buf.len(),
                source,
            })
    }

    pub fn flush(&self) -> Result<()> {
        self.inner.flush().map_err(|source| VmfsError::Io {
            device: self.inner.name(),
            op: "flushing",
            offset: 0,
            len: 0,
            source,
        })
    }

    pub fn size(&self) -> u64 {
        self.inner.size()
    }

    pub fn name(&self) -> String {
        self.inner.name()
    }
}

/// A regular file or a host block device, with pread/pwrite (no user-space cache) and
/// fdatasync.
pub struct FileDevice {
    file: File,
    size: u64,
    name: String,
}

impl FileDevice {
    /// Opens `path` (read-write unless `read_only`). The size is the file's length or the
    /// block device's capacity.
    pub fn open(path: &Path, read_only: bool) -> Result<FileDevice> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| VmfsError::Open(format!("cannot open {}: {e}", path.display())))?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| VmfsError::Open(format!("cannot size {}: {e}", path.display())))?;
        Ok(FileDevice {
            file,
            size,
            name: path.display().to_string(),
        })
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn name(&self) -> String {
        self.name.clone()
    }
}

/// A volume in memory (tests, fuzzing). Clones share the bytes, like hosts sharing a disk.
#[derive(Clone)]
pub struct MemDevice {
    data: std::sync::Arc<Mutex<Vec<u8>>>,
}

impl MemDevice {
    pub fn new(size: usize) -> MemDevice {
        MemDevice::from_vec(vec![0; size])
    }
    pub fn from_vec(data: Vec<u8>) -> MemDevice {
        MemDevice {
            data: std::sync::Arc::new(Mutex::new(data)),
        }
    }
    /// A copy of the bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().clone()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock cannot leave the bytes half-updated in a way that
        // matters more than a torn write on a disk, so poisoning is ignored.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.lock();
        let start = offset as usize;
        let src = d
            .get(start..start + buf.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut d = self.lock();
        let start = offset as usize;
        let dst = d
            .get_mut(start..start + buf.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past end"))?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }
    fn name(&self) -> String {
        "memory".into()
    }
}
