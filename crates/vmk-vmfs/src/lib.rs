//! vmk's datastore: a VMFS-style clustered file system for virtual disks.
//!
//! Up to 32 hosts (separate processes, or machines sharing storage) mount one volume at the
//! same time and coordinate only through the disk: a heartbeat slot per host (delta
//! leases, `lease.rs`), a Disk Paxos lock on every inode and resource cluster
//! (`paxos.rs`), and a journal per host for metadata. The on-disk format is in
//! `docs/vmfs-format.md` and [`format`](mod@format).
//!
//! ```no_run
//! use vmk_vmfs::{Datastore, FileDevice, FileOptions, LockMode, MountOptions};
//! # fn main() -> vmk_vmfs::Result<()> {
//! let ds = Datastore::mount(Box::new(FileDevice::open("vol.img".as_ref(), false)?), &MountOptions::default())?;
//! let mut f = ds.create_file("/vm1/disk.vmdk", &FileOptions { size: 10 << 30, eager_zeroed: false })?;
//! f.write_at(b"hello", 0)?;
//! f.close()?;
//! let mut r = ds.open_file("/vm1/disk.vmdk", LockMode::SharedRead)?;
//! # Ok(()) }
//! ```

mod device;
mod error;
mod file;
pub mod format;
mod fs;
pub mod fsck;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod inner;
mod lease;
mod nbd;
mod open;
mod paxos;
mod volume;

pub use device::{BlockDevice, FileDevice, MemDevice};
pub use error::{LockMode, Result, VmfsError};
pub use file::{FileOptions, VmfsFile, PREALLOC, PREALLOC_MAX};
pub use fs::{CreateOptions, Datastore, DirListing, HostInfo, MountOptions, Usage, VolumeInfo};
pub use fsck::{Finding, FsckReport};
pub use inner::{parse_path, Stat};
pub use nbd::NbdDevice;
pub use open::open_device;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod tests;
