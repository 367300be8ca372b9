//! VM disks on a datastore: `[name] dir/file.vmdk` paths (ESX's syntax) and the
//! [`vmk_vmdk::Storage`] of a mounted [`vmk_vmfs::Datastore`].
//!
//! The adapter lives here rather than in vmk-vmdk or vmk-vmfs so that neither of those
//! depends on the other: vmk-machine is the first crate that needs both (it opens a VM's
//! disks), and the host and the CLI reach the adapter through it.
//!
//! # Locking
//! Every file of a disk is opened with the datastore's on-disk lock: [`LockMode::Exclusive`]
//! for a disk opened read-write (descriptor and every extent), [`LockMode::SharedRead`] for
//! a read-only one. Another host that holds any of them makes the open fail with
//! `locked exclusive by host H since T` (a [`vmk_vmfs::VmfsError::Locked`], carried as an
//! `io::ErrorKind::WouldBlock`), so the VM does not start. Once H's heartbeat has stopped for
//! the lease timeout, the datastore replays H's journal and the lock can be taken over.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vmk_vmdk::{Storage, StorageFile};
use vmk_vmfs::{Datastore, FileOptions, LockMode, VmfsError, VmfsFile};

/// A disk path on a datastore: `[ds1] vm1/disk.vmdk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsPath {
    /// The datastore's name (as the host configuration names it).
    pub datastore: String,
    /// The path inside the datastore, without a leading `/` (`vm1/disk.vmdk`).
    pub path: String,
}

impl DsPath {
    /// `None` if `s` does not start with `[` (a host path); an error for a malformed one.
    pub fn parse(s: &str) -> Option<Result<DsPath, String>> {
        let rest = s.strip_prefix('[')?;
        let Some((name, path)) = rest.split_once(']') else {
            return Some(Err(format!(
                "'{s}': a datastore path is '[DATASTORE] dir/file.vmdk' (no closing ']')"
            )));
        };
        let name = name.trim();
        let path = path.trim_start().trim_start_matches('/');
        if name.is_empty() {
            return Some(Err(format!(
                "'{s}': the datastore name between '[' and ']' is empty"
            )));
        }
        if path.is_empty() {
            return Some(Err(format!(
                "'{s}': no file after the datastore name (example: '[{name}] vm1/disk.vmdk')"
            )));
        }
        if let Err(e) = vmk_vmfs::parse_path(path) {
            return Some(Err(format!("'{s}': {e}")));
        }
        Some(Ok(DsPath {
            datastore: name.to_string(),
            path: path.to_string(),
        }))
    }

    /// Parses a host path's text (`Path` of a disk definition).
    pub fn from_path(p: &Path) -> Option<Result<DsPath, String>> {
        DsPath::parse(&p.to_string_lossy())
    }
}

impl std::fmt::Display for DsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.datastore, self.path)
    }
}

/// The files of a mounted datastore as a [`Storage`] for VMDKs. Paths are `[name] dir/file`
/// (the name must be this datastore's) or datastore paths without the prefix (`dir/file`,
/// `/dir/file`): the extents of a disk at the root of a datastore resolve to those.
#[derive(Clone)]
pub struct DatastoreStorage {
    name: String,
    ds: Arc<Datastore>,
    eager_zeroed: bool,
}

impl std::fmt::Debug for DatastoreStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatastoreStorage")
            .field("name", &self.name)
            .field("host_id", &self.ds.host_id())
            .finish()
    }
}

impl DatastoreStorage {
    pub fn new(name: &str, ds: Arc<Datastore>) -> DatastoreStorage {
        DatastoreStorage {
            name: name.to_string(),
            ds,
            eager_zeroed: false,
        }
    }

    /// Files created with a size (flat extents) are eager-zeroed: allocated and zeroed
    /// now, as ESX's eagerZeroedThick disks. Otherwise every file is thin.
    pub fn with_eager_zeroed(mut self, on: bool) -> DatastoreStorage {
        self.eager_zeroed = on;
        self
    }

    pub fn datastore(&self) -> &Arc<Datastore> {
        &self.ds
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The datastore path of `p`.
    fn ds_path(&self, p: &Path) -> io::Result<String> {
        let s = p.to_string_lossy();
        let inner = match DsPath::parse(&s) {
            Some(Ok(d)) if d.datastore == self.name => d.path,
            Some(Ok(d)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{s}: is on datastore '{}', not '{}': all files of a disk must be on \
                         one datastore",
                        d.datastore, self.name
                    ),
                ))
            }
            Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidInput, e)),
            None => s.trim_start_matches('/').to_string(),
        };
        Ok(format!("/{inner}"))
    }

    /// Creates the directories above `path` (a VM's directory), as ESX does for a new disk.
    fn make_parents(&self, path: &str) -> Result<(), VmfsError> {
        match path.rsplit_once('/') {
            Some((dir, _)) if !dir.is_empty() => self.ds.mkdir_all(dir),
            _ => Ok(()),
        }
    }
}

/// A datastore error as an `io::Error` of the kind vmk-vmdk understands (who holds a lock:
/// `WouldBlock`; the message is the datastore's).
pub fn vmfs_io(e: VmfsError) -> io::Error {
    if let VmfsError::Locked {
        host, mode, since, ..
    } = &e
    {
        // Without the datastore-internal path: vmk-vmdk names the file (`[ds] dir/file`).
        return io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "locked {mode} by host {host} since {since}; it is released when host {host} \
                 closes it (stops the VM), or taken over once host {host} has been dead (no \
                 heartbeat) for the datastore's lease timeout"
            ),
        );
    }
    let kind = match &e {
        VmfsError::Locked { .. } => io::ErrorKind::WouldBlock,
        VmfsError::NotFound(_) => io::ErrorKind::NotFound,
        VmfsError::AlreadyExists(_) => io::ErrorKind::AlreadyExists,
        VmfsError::NoSpace { .. } => io::ErrorKind::StorageFull,
        VmfsError::ReadOnly | VmfsError::WrongMode { .. } => io::ErrorKind::PermissionDenied,
        VmfsError::Io { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// A [`VmfsFile`] behind a mutex: its calls take `&mut self` (it caches pointer pages),
/// the storage trait `&self`. One disk's files are used by one thread at a time anyway.
#[derive(Debug)]
struct DsFile(Mutex<VmfsFile>);

impl DsFile {
    fn f(&self) -> std::sync::MutexGuard<'_, VmfsFile> {
        // A panic under this lock leaves the file as consistent as the last call made it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StorageFile for DsFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.f().read_at(buf, off).map_err(vmfs_io)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.f().write_at(buf, off).map_err(vmfs_io)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.f().len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.f().set_len(len).map_err(vmfs_io)
    }
    fn flush(&self) -> io::Result<()> {
        self.f().flush().map_err(vmfs_io)
    }
    fn allocated(&self) -> u64 {
        self.f().stat().map(|s| s.allocated).unwrap_or(0)
    }
}

impl Storage for DatastoreStorage {
    fn open(&self, path: &Path, writable: bool) -> io::Result<Box<dyn StorageFile>> {
        let p = self.ds_path(path)?;
        let mode = if writable {
            LockMode::Exclusive
        } else {
            LockMode::SharedRead
        };
        let f = self.ds.open_file(&p, mode).map_err(vmfs_io)?;
        Ok(Box::new(DsFile(Mutex::new(f))))
    }

    fn create(&self, path: &Path, size_hint: u64) -> io::Result<Box<dyn StorageFile>> {
        let p = self.ds_path(path)?;
        self.make_parents(&p).map_err(vmfs_io)?;
        let eager = self.eager_zeroed && size_hint > 0;
        let f = self
            .ds
            .create_file(
                &p,
                &FileOptions {
                    size: if eager { size_hint } else { 0 },
                    eager_zeroed: eager,
                },
            )
            .map_err(vmfs_io)?;
        Ok(Box::new(DsFile(Mutex::new(f))))
    }

    fn exists(&self, path: &Path) -> bool {
        self.ds_path(path)
            .map(|p| self.ds.stat(&p).is_ok())
            .unwrap_or(false)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let p = self.ds_path(path)?;
        self.ds.remove(&p).map_err(vmfs_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmk_vmdk::{CreateOptions, OpenMode, Subformat, Vmdk, VmdkError};
    use vmk_vmfs::MemDevice;

    /// Two hosts (1 and 2) on one volume in memory, as `ds1`.
    fn two_hosts() -> (Arc<dyn Storage>, Arc<dyn Storage>, Arc<Datastore>) {
        let dev = MemDevice::new(256 << 20);
        Datastore::create(
            Box::new(dev.clone()),
            &vmk_vmfs::CreateOptions {
                label: "ds1".into(),
                block_size: 1 << 20,
                renew_ms: 50,
                lease_timeout_ms: 400,
                io_timeout_ms: 20,
            },
        )
        .unwrap();
        let mount = |h| {
            Arc::new(
                Datastore::mount(
                    Box::new(dev.clone()),
                    &vmk_vmfs::MountOptions {
                        host_id: Some(h),
                        sync: false,
                        who: format!("test host {h}"),
                    },
                )
                .unwrap(),
            )
        };
        let (d1, d2) = (mount(1), mount(2));
        let s1: Arc<dyn Storage> =
            Arc::new(DatastoreStorage::new("ds1", d1.clone()).with_eager_zeroed(true));
        let s2: Arc<dyn Storage> = Arc::new(DatastoreStorage::new("ds1", d2));
        (s1, s2, d1)
    }

    #[test]
    fn one_writer_shared_readers_across_hosts() {
        let (s1, s2, d1) = two_hosts();
        for (path, sub) in [
            ("[ds1] vm1/thin.vmdk", Subformat::MonolithicSparse),
            ("[ds1] vm2/ez.vmdk", Subformat::Vmfs),
        ] {
            let p = Path::new(path);
            let mut w = Vmdk::create_on(s1.clone(), p, &CreateOptions::new(16 << 20, sub)).unwrap();
            let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
            w.write_at(5 << 20, &data).unwrap();
            // Host 2 can neither write nor read while host 1 writes: every file is locked.
            for mode in [OpenMode::ReadWrite, OpenMode::ReadOnly] {
                let e = Vmdk::open_on(s2.clone(), p, mode).unwrap_err();
                let msg = e.to_string();
                assert!(
                    matches!(e, VmdkError::InUse { .. })
                        && msg.contains("locked exclusive by host 1 since"),
                    "{path}: {msg}"
                );
            }
            w.close().unwrap();
            // Readers share, across hosts; a writer is refused while they read.
            let mut r1 = Vmdk::open_on(s1.clone(), p, OpenMode::ReadOnly).unwrap();
            let mut r2 = Vmdk::open_on(s2.clone(), p, OpenMode::ReadOnly).unwrap();
            let e = Vmdk::open_on(s2.clone(), p, OpenMode::ReadWrite).unwrap_err();
            assert!(matches!(e, VmdkError::InUse { .. }), "{path}: {e}");
            let mut back = vec![0u8; data.len()];
            r2.read_at(5 << 20, &mut back).unwrap();
            assert!(back == data, "{path}: host 2 reads other data");
            r1.read_at(5 << 20, &mut back).unwrap();
            assert!(back == data, "{path}: host 1 reads other data");
            drop((r1, r2));
            // Free again: host 2 may write now.
            Vmdk::open_on(s2.clone(), p, OpenMode::ReadWrite)
                .unwrap()
                .close()
                .unwrap();
        }
        // Thin sparse: only what was written (and the metadata) is allocated; the
        // eager-zeroed flat extent is allocated in full.
        let thin = d1.stat("/vm1/thin.vmdk").unwrap();
        assert!(!thin.eager_zeroed && thin.allocated < 8 << 20, "{thin:?}");
        let flat = d1.stat("/vm2/ez-flat.vmdk").unwrap();
        assert!(flat.eager_zeroed && flat.allocated >= 16 << 20, "{flat:?}");
        // A path on another datastore is refused, not silently mapped.
        assert!(s1.open(Path::new("[other] vm1/thin.vmdk"), false).is_err());
    }

    /// Two hosts race to open one (two-file) VMDK for writing, many times: exactly one wins
    /// each time, and the loser holds nothing afterwards (the winner's next open works).
    #[test]
    fn racing_writers_exactly_one_wins() {
        let (s1, s2, _d1) = two_hosts();
        let p = Path::new("[ds1] race/disk.vmdk");
        Vmdk::create_on(
            s1.clone(),
            p,
            &CreateOptions::new(4 << 20, Subformat::MonolithicFlat),
        )
        .unwrap()
        .close()
        .unwrap();
        let mut wins = [0u32; 2];
        for round in 0..20 {
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let opens: Vec<_> = [s1.clone(), s2.clone()]
                .into_iter()
                .map(|st| {
                    let b = barrier.clone();
                    std::thread::spawn(move || {
                        b.wait();
                        Vmdk::open_on(st, Path::new("[ds1] race/disk.vmdk"), OpenMode::ReadWrite)
                    })
                })
                .collect();
            let results: Vec<_> = opens.into_iter().map(|h| h.join().unwrap()).collect();
            let ok: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
            assert_eq!(ok.len(), 1, "round {round}: {results:?}");
            let loser = 1 - ok[0];
            assert!(
                matches!(&results[loser], Err(VmdkError::InUse { why, .. }) if why.contains("locked")),
                "round {round}: {:?}",
                results[loser]
            );
            wins[ok[0]] += 1;
            for d in results.into_iter().flatten() {
                d.close().unwrap();
            }
        }
        eprintln!("host 1 won {} rounds, host 2 {}", wins[0], wins[1]);
    }

    #[test]
    fn paths() {
        let d = DsPath::parse("[ds1] vm1/disk.vmdk").unwrap().unwrap();
        assert_eq!(
            (d.datastore.as_str(), d.path.as_str()),
            ("ds1", "vm1/disk.vmdk")
        );
        assert_eq!(d.to_string(), "[ds1] vm1/disk.vmdk");
        let d = DsPath::parse("[ds 2]/a.vmdk").unwrap().unwrap();
        assert_eq!((d.datastore.as_str(), d.path.as_str()), ("ds 2", "a.vmdk"));
        assert!(DsPath::parse("/var/disk.vmdk").is_none());
        for bad in ["[ds1 vm1/disk.vmdk", "[] a.vmdk", "[ds1] ", "[ds1] a/../b"] {
            assert!(DsPath::parse(bad).unwrap().is_err(), "{bad}");
        }
    }
}
