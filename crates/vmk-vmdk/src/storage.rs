//! Where a disk's files live: the host's file system (the default, [`crate::Vmdk::open`]) or
//! any other [`Storage`] ([`crate::Vmdk::open_on`]), such as a vmk datastore.
//!
//! A VMDK is several files (a descriptor, flat or sparse extents, split extents, a parent), and
//! the descriptor names the others relative to itself, so a storage is asked for files by
//! path: the disk's own path with the descriptor's file names joined to its directory
//! (`Path::parent().join(name)`), exactly as for host files. What a path means (for example
//! `[ds1] vm1/disk.vmdk`) is up to the storage.
//!
//! This crate does not depend on any storage implementation: the datastore's lives in
//! `vmk-machine` (which already depends on both), so the dependency graph points down.
//!
//! # Locking
//! A storage file is locked by the storage when it is opened, for as long as it stays open:
//! exclusively when opened for writing (one writer), shared otherwise. The disk keeps every
//! file it opened (extents, and the descriptor file) open until it is closed. A refusal
//! because someone else holds the file is an error of kind [`std::io::ErrorKind::WouldBlock`]
//! whose message says who (it becomes [`crate::VmdkError::InUse`]).

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Files of disks, by path. See the [module documentation](self).
pub trait Storage: Send + Sync + fmt::Debug {
    /// Opens an existing file: for writing (exclusive) or reading (shared).
    fn open(&self, path: &Path, writable: bool) -> io::Result<Box<dyn StorageFile>>;
    /// Creates a new, empty file opened for writing; [`io::ErrorKind::AlreadyExists`] if
    /// there is one. `size_hint`: the size it will have (a storage may allocate it now).
    fn create(&self, path: &Path, size_hint: u64) -> io::Result<Box<dyn StorageFile>>;
    /// True if a file (or directory) exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Removes a file (used to clean up after a failed create).
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// One open file of a [`Storage`]: positioned I/O like a disk.
pub trait StorageFile: Send + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `off`; returns how many (0 at or past the end).
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `off`, growing the file as needed.
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Bytes of storage the file occupies.
    fn allocated(&self) -> u64;
}

/// The storage a disk's files come from: `None` is the host's file system.
pub(crate) type Store = Option<Arc<dyn Storage>>;
