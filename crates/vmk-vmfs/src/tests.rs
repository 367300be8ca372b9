//! Single-process tests on a volume in memory.

use crate::*;

pub(crate) fn quick_opts() -> CreateOptions {
    CreateOptions {
        label: "test".into(),
        block_size: 1 << 20,
        renew_ms: 50,
        lease_timeout_ms: 400,
        io_timeout_ms: 20,
    }
}

pub(crate) fn new_volume(size: usize) -> MemDevice {
    let dev = MemDevice::new(size);
    Datastore::create(Box::new(dev.clone()), &quick_opts()).unwrap();
    dev
}

pub(crate) fn mount(dev: &MemDevice, host: u32) -> Datastore {
    Datastore::mount(
        Box::new(dev.clone()),
        &MountOptions {
            host_id: Some(host),
            sync: true,
            who: format!("test host {host}"),
        },
    )
    .unwrap()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

#[test]
fn create_mount_write_read_remove() {
    let dev = new_volume(128 << 20);
    let ds = mount(&dev, 1);
    let before = ds.df().unwrap();
    ds.mkdir("/vm1").unwrap();
    assert!(matches!(ds.mkdir("/vm1"), Err(VmfsError::AlreadyExists(_))));
    // small file
    let mut f = ds
        .create_file("/vm1/small", &FileOptions::default())
        .unwrap();
    f.write_at(b"hello world", 0).unwrap();
    f.close().unwrap();
    let mut f = ds.open_file("/vm1/small", LockMode::SharedRead).unwrap();
    let mut b = [0u8; 64];
    assert_eq!(f.read_at(&mut b, 0).unwrap(), 11);
    assert_eq!(&b[..11], b"hello world");
    drop(f);
    // large file crossing from sub-block to blocks, with holes
    let data = pattern(1, 3 << 20);
    let mut f = ds
        .create_file("/vm1/disk.vmdk", &FileOptions::default())
        .unwrap();
    f.write_at(&data[..1000], 0).unwrap();
    f.write_at(&data[1000..], 1000).unwrap();
    f.write_at(&data[..5000], (9 << 20) + 77).unwrap();
    assert_eq!(f.len(), (9 << 20) + 77 + 5000);
    f.close().unwrap();
    let mut f = ds
        .open_file("/vm1/disk.vmdk", LockMode::SharedRead)
        .unwrap();
    let mut got = vec![0u8; f.len() as usize];
    assert_eq!(f.read_at(&mut got, 0).unwrap(), got.len());
    assert_eq!(&got[..data.len()], &data[..]);
    assert!(got[data.len()..(9 << 20) + 77].iter().all(|&x| x == 0));
    assert_eq!(&got[(9 << 20) + 77..], &data[..5000]);
    let st = f.stat().unwrap();
    assert_eq!(
        st.allocated,
        4 << 20,
        "3 data blocks + 1 at 9 MiB (thin, preallocation given back)"
    );
    drop(f);
    // truncate and regrow reads zeros
    let mut f = ds.open_file("/vm1/disk.vmdk", LockMode::Exclusive).unwrap();
    f.set_len(1500).unwrap();
    f.set_len(3 << 20).unwrap();
    let mut got = vec![0u8; 3 << 20];
    f.read_at(&mut got, 0).unwrap();
    assert_eq!(&got[..1500], &data[..1500]);
    assert!(got[1500..].iter().all(|&x| x == 0));
    f.close().unwrap();
    let names: Vec<_> = ds
        .list("/vm1")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["disk.vmdk", "small"]);
    assert!(matches!(
        ds.remove("/vm1"),
        Err(VmfsError::DirectoryNotEmpty(_))
    ));
    ds.remove("/vm1/disk.vmdk").unwrap();
    ds.remove("/vm1/small").unwrap();
    ds.remove("/vm1").unwrap();
    // Everything is back except the root directory's first page (directories do not shrink).
    let after = ds.df().unwrap();
    assert_eq!(
        after,
        Usage {
            free_sub_blocks: before.free_sub_blocks - 1,
            ..before
        }
    );
    ds.unmount().unwrap();
    let report = fsck::check(Box::new(dev.clone()), &fsck::FsckOptions::default()).unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn big_directory_and_eager_files() {
    let dev = new_volume(256 << 20);
    let ds = mount(&dev, 3);
    ds.mkdir("/d").unwrap();
    for i in 0..520 {
        ds.create_file(&format!("/d/f{i}"), &FileOptions::default())
            .unwrap()
            .close()
            .unwrap();
    }
    assert_eq!(ds.list("/d").unwrap().len(), 520);
    let f = ds
        .create_file(
            "/e",
            &FileOptions {
                size: 5 << 20,
                eager_zeroed: true,
            },
        )
        .unwrap();
    assert_eq!(f.stat().unwrap().allocated, 5 << 20);
    f.close().unwrap();
    let mut m = ds.open_file("/e", LockMode::MultiWriter).unwrap();
    // Same host, same process: the lock is already held by this process.
    assert!(ds.open_file("/e", LockMode::MultiWriter).is_err());
    m.write_at(b"xyz", 4 << 20).unwrap();
    assert!(
        m.write_at(b"xyz", 5 << 20).is_err(),
        "multi-writer cannot grow"
    );
    drop(m);
    for i in (0..520).step_by(2) {
        ds.remove(&format!("/d/f{i}")).unwrap();
    }
    assert_eq!(ds.list("/d").unwrap().len(), 260);
    ds.unmount().unwrap();
    let report = fsck::check(Box::new(dev.clone()), &fsck::FsckOptions::default()).unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn bad_names_are_refused() {
    let dev = new_volume(64 << 20);
    let ds = mount(&dev, 1);
    for bad in ["/a/../b", "/x\u{1}y", &"n".repeat(200)] {
        assert!(
            matches!(ds.mkdir(bad), Err(VmfsError::InvalidName { .. })),
            "{bad}"
        );
    }
    assert!(matches!(ds.mkdir("/no/such"), Err(VmfsError::NotFound(_))));
}

/// A device that stops taking writes after `limit` of them: what the disk holds when the
/// process is killed at that moment (every write before it landed, none after).
#[derive(Clone)]
struct DiesAfter {
    inner: MemDevice,
    left: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl BlockDevice for DiesAfter {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 0 {
            return Err(std::io::Error::other("killed"));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        "dies-after".into()
    }
}

fn workload(ds: &Datastore) -> Result<()> {
    ds.mkdir("/vm")?;
    let mut f = ds.create_file("/vm/disk", &FileOptions::default())?;
    f.write_at(&pattern(3, 50_000), 0)?;
    f.write_at(&pattern(4, 3 << 20), 40_000)?;
    f.flush()?;
    f.set_len(1 << 20)?;
    f.close()?;
    for i in 0..3 {
        ds.create_file(
            &format!("/vm/s{i}"),
            &FileOptions {
                size: 10,
                eager_zeroed: true,
            },
        )?
        .close()?;
    }
    ds.remove("/vm/s1")?;
    ds.remove("/vm/disk")?;
    Ok(())
}

/// A kill at any write leaves a volume that fsck finds clean once the journal is replayed
/// (fsck checks the state with pending journal pages laid over it).
#[test]
fn crash_at_every_point_is_clean_after_replay() {
    let fresh = new_volume(64 << 20).snapshot();
    // Count the writes of the whole workload (the heartbeat thread adds a few, by time).
    let count = {
        let dev = DiesAfter {
            inner: MemDevice::from_vec(fresh.clone()),
            left: std::sync::Arc::new(i64::MAX.into()),
        };
        let ds = Datastore::mount(
            Box::new(dev.clone()),
            &MountOptions {
                host_id: Some(1),
                sync: true,
                who: "t".into(),
            },
        )
        .unwrap();
        workload(&ds).unwrap();
        drop(ds);
        i64::MAX - dev.left.load(std::sync::atomic::Ordering::SeqCst)
    };
    let step = std::env::var("VMFS_CRASH_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or((count / 15).max(1));
    let mut replayed = 0;
    let mut n = 1;
    while n < count {
        let mem = MemDevice::from_vec(fresh.clone());
        let dev = DiesAfter {
            inner: mem.clone(),
            left: std::sync::Arc::new(n.into()),
        };
        if let Ok(ds) = Datastore::mount(
            Box::new(dev),
            &MountOptions {
                host_id: Some(1),
                sync: true,
                who: "t".into(),
            },
        ) {
            let _ = workload(&ds);
            drop(ds);
        }
        let r = fsck::check(Box::new(mem.clone()), &fsck::FsckOptions::default()).unwrap();
        let other: Vec<_> = r
            .findings
            .iter()
            .filter(|f| !f.what.contains("not replayed yet"))
            .collect();
        assert!(other.is_empty(), "killed after write {n} of {count}:\n{r}");
        if r.findings.len() > other.len() {
            replayed += 1;
        }
        n += step;
    }
    eprintln!("{count} writes, crash points every {step}: {replayed} left a journal to replay");
}

/// Host 1 opens a file exclusively right after host 2 mounted and took it: host 1's view of
/// the heartbeats may predate host 2's mount, and must not count host 2 as gone (it took
/// the lock over, and both hosts had the file open for writing).
#[test]
fn a_just_mounted_hosts_lock_is_not_taken_for_gone() {
    for round in 0..10 {
        let dev = new_volume(64 << 20);
        let d1 = mount(&dev, 1);
        d1.create_file("/r", &FileOptions::default())
            .unwrap()
            .close()
            .unwrap();
        let d2 = mount(&dev, 2);
        let f2 = d2.open_file("/r", LockMode::Exclusive).unwrap();
        match d1.open_file("/r", LockMode::Exclusive) {
            Err(VmfsError::Locked { host: 2, .. }) => {}
            other => panic!("round {round}: host 1 got {other:?} while host 2 holds /r"),
        }
        f2.close().unwrap();
    }
}
