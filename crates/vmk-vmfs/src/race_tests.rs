//! Interleavings of two hosts forced step by step (issue 12): host B is paused in the middle
//! of a lock-free read, at the moment it reads a given part of the volume, while host A
//! frees and reuses what B is about to read. Each test failed before lock-free readers
//! validated what they follow (`Inner::read_unlocked`), with B reporting a healthy volume
//! as corrupt.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::format::{Inode, SUB_BLOCK};
use crate::tests::{mount, new_volume};
use crate::*;

/// Stops a read that touches an armed byte range, once, until the test lets it go on.
struct Gate {
    armed: Mutex<Option<(u64, u64)>>,
    reached: Mutex<Sender<u64>>,
    go: Mutex<Receiver<()>>,
}

/// A device that shares `MemDevice`'s memory and pauses reads at its [`Gate`].
struct PauseDevice {
    inner: MemDevice,
    gate: Arc<Gate>,
}

impl BlockDevice for PauseDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let hit = {
            let mut armed = self.gate.armed.lock().unwrap_or_else(|p| p.into_inner());
            match *armed {
                Some((start, end)) if offset < end && offset + buf.len() as u64 > start => {
                    *armed = None;
                    true
                }
                _ => false,
            }
        };
        if hit {
            let _ = self
                .gate
                .reached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(offset);
            let _ = self
                .gate
                .go
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .recv();
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

/// Host B on `dev`, with the handles that pause and release its reads.
struct Paused {
    ds: Arc<Datastore>,
    gate: Arc<Gate>,
    reached: Receiver<u64>,
    go: Sender<()>,
}

impl Paused {
    fn mount(dev: &MemDevice, host: u32) -> Paused {
        let (reached_tx, reached) = channel();
        let (go, go_rx) = channel();
        let gate = Arc::new(Gate {
            armed: Mutex::new(None),
            reached: Mutex::new(reached_tx),
            go: Mutex::new(go_rx),
        });
        let ds = Datastore::mount(
            Box::new(PauseDevice {
                inner: dev.clone(),
                gate: gate.clone(),
            }),
            &MountOptions {
                host_id: Some(host),
                sync: true,
                who: format!("paused host {host}"),
            },
        )
        .unwrap();
        Paused {
            ds: Arc::new(ds),
            gate,
            reached,
            go,
        }
    }

    /// The next read of B that touches `[start, start + len)` stops there.
    fn arm(&self, start: u64, len: u64) {
        *self.gate.armed.lock().unwrap() = Some((start, start + len));
    }

    /// Runs `f` on B in a thread and waits until it is stopped at the armed range.
    fn run_until_paused<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Datastore) -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ds = self.ds.clone();
        let t = std::thread::spawn(move || f(&ds));
        self.reached
            .recv_timeout(Duration::from_secs(10))
            .expect("host B never read the armed range");
        t
    }
}

fn inode_of(ds: &Datastore, path: &str) -> Inode {
    let inum = ds.stat(path).unwrap().inum;
    ds.inner.vol.read_inode(inum).unwrap()
}

/// Random bytes that cannot pass for any structure.
fn noise(len: usize) -> Vec<u8> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// Host A creates small files with random contents (each takes a sub-block for its data)
/// until one of them gets `sub`, which must be free. Returns that file's name. At worst
/// this fills every sub-block of the volume, so it does not depend on the allocator's
/// choices.
fn reuse_sub_block_as_data(a: &Datastore, sub: u32) -> String {
    for i in 0.. {
        let name = format!("/intruder-{i}");
        let mut f = a.create_file(&name, &FileOptions::default()).unwrap();
        f.write_at(&noise(20_000), 0).unwrap();
        f.close().unwrap();
        if inode_of(a, &name).addrs[0] == sub {
            return name;
        }
    }
    unreachable!()
}

/// The interleaving of the 32-host stress failure: B lists a directory (a lock-free read
/// that stats every file, following its pointer blocks); between B's read of a file's
/// inode and of its pointer block, A removes the file and the freed pointer block becomes
/// another file's data. B must not call that corrupt: the file is simply gone.
#[test]
fn list_while_a_file_is_removed_and_its_pointer_block_reused() {
    let dev = new_volume(256 << 20);
    let a = mount(&dev, 1);
    let b = Paused::mount(&dev, 2);
    let mut f = a.create_file("/victim", &FileOptions::default()).unwrap();
    f.write_at(&noise(3 << 20), 0).unwrap();
    f.close().unwrap();
    let ino = inode_of(&a, "/victim");
    assert_eq!(ino.mode, format::AddrMode::Blocks);
    let pb = ino.addrs[0];
    let g = a.inner.vol.geo.clone();

    b.arm(g.sub(pb), SUB_BLOCK);
    let listing = b.run_until_paused(|ds| ds.list("/"));
    a.remove("/victim").unwrap();
    let intruder = reuse_sub_block_as_data(&a, pb);
    b.go.send(()).unwrap();
    let listing = listing.join().unwrap();

    let listing = listing.expect("a lock-free listing must not fail on a race");
    assert!(
        listing.iter().all(|e| e.name != "victim"),
        "the removed file is listed: {listing:?}"
    );
    // Each file it shows has its real size.
    for e in &listing {
        assert_eq!(e.stat.size, 20_000, "{e:?}");
    }
    let names: Vec<String> =
        b.ds.list("/")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
    assert!(names.contains(&intruder[1..].to_string()), "{names:?}");
}

/// The same for `stat` of one file: removed while B follows its pointer block.
#[test]
fn stat_while_the_file_is_removed_and_its_pointer_block_reused() {
    let dev = new_volume(256 << 20);
    let a = mount(&dev, 1);
    let b = Paused::mount(&dev, 2);
    let mut f = a.create_file("/victim", &FileOptions::default()).unwrap();
    f.write_at(&noise(2 << 20), 0).unwrap();
    f.close().unwrap();
    let pb = inode_of(&a, "/victim").addrs[0];
    let g = a.inner.vol.geo.clone();

    b.arm(g.sub(pb), SUB_BLOCK);
    let st = b.run_until_paused(|ds| ds.stat("/victim"));
    a.remove("/victim").unwrap();
    reuse_sub_block_as_data(&a, pb);
    b.go.send(()).unwrap();
    match st.join().unwrap() {
        Err(VmfsError::NotFound(_)) => {}
        other => panic!("expected /victim not found, got {other:?}"),
    }
}

/// A lookup through a directory that outgrows its sub-block: B reads the directory's inode,
/// A adds the entry that moves the directory into a block (freeing the sub-block) and
/// reuses the sub-block as file data, then B reads the old directory page.
#[test]
fn lookup_while_the_directory_moves_to_a_block() {
    let dev = new_volume(256 << 20);
    let a = mount(&dev, 1);
    let b = Paused::mount(&dev, 2);
    a.mkdir("/d").unwrap();
    // 16 pages of 31 entries fill a small directory.
    for i in 0..16 * 31 {
        a.create_file(&format!("/d/f{i}"), &FileOptions::default())
            .unwrap()
            .close()
            .unwrap();
    }
    let dir = inode_of(&a, "/d");
    assert_eq!(dir.mode, format::AddrMode::Small);
    let old = dir.addrs[0];
    let g = a.inner.vol.geo.clone();

    b.arm(g.sub(old), SUB_BLOCK);
    let found = b.run_until_paused(|ds| ds.stat("/d/f7"));
    a.create_file("/d/one-more", &FileOptions::default())
        .unwrap()
        .close()
        .unwrap();
    assert_eq!(inode_of(&a, "/d").mode, format::AddrMode::Blocks);
    // The freed sub-block becomes a small file's data.
    reuse_sub_block_as_data(&a, old);
    b.go.send(()).unwrap();
    let st = found
        .join()
        .unwrap()
        .expect("a lookup must not fail on a race");
    assert!(!st.is_dir);
}

/// Under a valid lock nothing may change what the holder reads: a pointer page that is not
/// the file's is reported as a bug (`Inconsistent`), not as a routine corrupt volume.
#[test]
fn a_changed_pointer_page_under_a_held_lock_is_reported_as_a_bug() {
    let dev = new_volume(256 << 20);
    let a = mount(&dev, 1);
    let mut f = a.create_file("/mine", &FileOptions::default()).unwrap();
    f.write_at(&noise(2 << 20), 0).unwrap();
    f.close().unwrap();
    let pb = inode_of(&a, "/mine").addrs[0];
    let g = a.inner.vol.geo.clone();
    let mut f = a.open_file("/mine", LockMode::Exclusive).unwrap();
    // What a buggy host would do: write over a pointer block it does not own.
    dev.write_at(&noise(SUB_BLOCK as usize), g.sub(pb)).unwrap();
    let mut buf = vec![0u8; 4096];
    match f.read_at(&mut buf, 0) {
        Err(e @ VmfsError::Inconsistent { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("BUG: pointer block page"), "{msg}");
            assert!(msg.contains("the lock of inode"), "{msg}");
            assert!(msg.contains("vmk datastore fsck"), "{msg}");
        }
        other => panic!("expected an Inconsistent error, got {other:?}"),
    }
    drop(f);
    // A lock-free reader of the same damage, with the inode unchanged, reports corruption.
    match a.stat("/mine") {
        Err(VmfsError::Corrupt { what, .. }) => assert_eq!(what, "pointer block page"),
        other => panic!("expected a corrupt pointer block page, got {other:?}"),
    }
}
