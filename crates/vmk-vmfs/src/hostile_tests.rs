//! Corrupt and hostile volumes: each gives a clear error (naming the structure and its
//! offset) at mount, at use or in fsck, never a panic; fsck --repair fixes what it reports.

use crate::format::*;
use crate::fsck::{self, FsckOptions};
use crate::fuzzing;
use crate::tests::{mount, new_volume};
use crate::*;

fn geo(img: &[u8]) -> Geometry {
    VolumeHeader::decode(&img[..PAGE], img.len() as u64)
        .unwrap()
        .geo
}

fn check(img: &[u8]) -> fsck::FsckReport {
    fsck::check(
        Box::new(MemDevice::from_vec(img.to_vec())),
        &FsckOptions::default(),
    )
    .unwrap()
}

fn repair_then_clean(img: &[u8]) {
    let dev = MemDevice::from_vec(img.to_vec());
    let r = fsck::check(
        Box::new(dev.clone()),
        &FsckOptions {
            repair: true,
            verbose: false,
        },
    )
    .unwrap();
    assert!(r.unrepaired().next().is_none(), "{r}");
    let r = fsck::check(Box::new(dev), &FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "after repair: {r}");
}

fn reseal(img: &mut [u8], off: u64, len: usize, magic: &[u8; 8]) {
    seal(&mut img[off as usize..off as usize + len], magic, off);
}

#[test]
fn wrong_magic_is_not_a_datastore() {
    let mut img = fuzzing::template().to_vec();
    img[0] = b'X';
    let e = Datastore::open_read_only(Box::new(MemDevice::from_vec(img.clone())))
        .err()
        .unwrap();
    assert!(e.to_string().contains("bad magic"), "{e}");
    assert!(fsck::check(Box::new(MemDevice::from_vec(img)), &FsckOptions::default()).is_err());
}

#[test]
fn truncated_volume_is_refused() {
    let img = fuzzing::template();
    let e = Datastore::open_read_only(Box::new(MemDevice::from_vec(img[..img.len() / 2].to_vec())))
        .err()
        .unwrap();
    assert!(e.to_string().contains("larger than the device"), "{e}");
}

#[test]
fn bitmap_pointing_outside_the_volume() {
    let mut img = fuzzing::template().to_vec();
    let g = geo(&img);
    let off = g.map(0) as usize;
    // A block bit past the cluster's blocks, with a valid checksum.
    set_bit(
        &mut img[off + MAP_BLOCKS_AT..off + MAP_BLOCKS_AT + 512],
        g.bpc as usize + 3,
        true,
    );
    reseal(&mut img, off as u64, PAGE, MAGIC_CLUSTER);
    let r = check(&img);
    assert!(
        r.findings
            .iter()
            .any(|f| f.what.contains("points outside the volume")),
        "{r}"
    );
    repair_then_clean(&img);
}

#[test]
fn pointer_outside_the_volume() {
    let ds_img = fuzzing::template().to_vec();
    let g = geo(&ds_img);
    let ds = Datastore::open_read_only(Box::new(MemDevice::from_vec(ds_img.clone()))).unwrap();
    let big = ds.stat("/a/b/big").unwrap();
    drop(ds);
    let mut img = ds_img;
    let ino = Inode::decode(&img[g.inode(big.inum) as usize..][..PAGE], &g, big.inum).unwrap();
    let pp = g.sub(ino.addrs[0]) as usize;
    put_u32(&mut img, pp + 64, 0x7fff_fff0);
    reseal(&mut img, pp as u64, PAGE, MAGIC_POINTER);
    let ds = Datastore::open_read_only(Box::new(MemDevice::from_vec(img.clone()))).unwrap();
    let mut f = ds.open_file("/a/b/big", LockMode::SharedRead).unwrap();
    let e = f.read_at(&mut [0u8; 10], 0).unwrap_err();
    assert!(
        e.to_string().contains("pointer block page")
            && e.to_string().contains("outside the volume"),
        "{e}"
    );
    let r = check(&img);
    assert!(!r.is_clean());
    repair_then_clean(&img);
}

#[test]
fn directory_loop() {
    let mut img = fuzzing::template().to_vec();
    let g = geo(&img);
    let ds = Datastore::open_read_only(Box::new(MemDevice::from_vec(img.clone()))).unwrap();
    let b = ds.stat("/a/b").unwrap().inum;
    let a = ds.stat("/a").unwrap();
    drop(ds);
    // /a/b gets an entry "up" naming /a: a cycle a -> b -> a.
    let ino = Inode::decode(&img[g.inode(b) as usize..][..PAGE], &g, b).unwrap();
    let off = g.sub(ino.addrs[0]);
    let mut page =
        DirPage::decode(&img[off as usize..][..PAGE], &g, off, b, ino.generation, 0).unwrap();
    let gen_a = Inode::decode(&img[g.inode(a.inum) as usize..][..PAGE], &g, a.inum)
        .unwrap()
        .generation;
    page.entries[5] = Some(DirEntry {
        inum: a.inum,
        generation: gen_a,
        kind: Kind::Dir,
        name: "up".into(),
    });
    img[off as usize..off as usize + PAGE].copy_from_slice(&page.encode(off));
    let r = check(&img);
    assert!(r.findings.iter().any(|f| f.what.contains("loop")), "{r}");
    // Lookups through the loop stay bounded by the path.
    let ds = Datastore::open_read_only(Box::new(MemDevice::from_vec(img.clone()))).unwrap();
    assert!(ds.stat("/a/b/up/b/up/b/small").is_err());
    assert!(ds.stat("/a/b/up/small").is_ok());
    repair_then_clean(&img);
}

#[test]
fn lock_record_with_garbage() {
    let dev = new_volume(64 << 20);
    {
        let ds = mount(&dev, 1);
        ds.create_file("/f", &FileOptions::default())
            .unwrap()
            .close()
            .unwrap();
        ds.unmount().unwrap();
    }
    let mut img = dev.snapshot();
    let g = geo(&img);
    let inum = Datastore::open_read_only(Box::new(MemDevice::from_vec(img.clone())))
        .unwrap()
        .stat("/f")
        .unwrap()
        .inum;
    let at = g.lock(LockId::Inode(inum)) as usize;
    for (i, b) in img[at..at + SECTOR].iter_mut().enumerate() {
        *b = (i * 37 + 11) as u8;
    }
    let dev = MemDevice::from_vec(img.clone());
    let ds = mount(&dev, 2);
    let e = ds.open_file("/f", LockMode::Exclusive).unwrap_err();
    assert!(
        e.to_string().contains("lock leader record") && e.to_string().contains(&format!("{at:#x}")),
        "{e}"
    );
    // Reading without the lock still works.
    assert!(ds.stat("/f").is_ok());
    ds.unmount().unwrap();
    let r = check(&img);
    assert!(r.findings.iter().any(|f| f.what.contains("lock")), "{r}");
    repair_then_clean(&img);
}

#[test]
fn each_structure_corrupted_is_reported_and_repaired() {
    let base = fuzzing::template().to_vec();
    let g = geo(&base);
    let ds = Datastore::open_read_only(Box::new(MemDevice::from_vec(base.clone()))).unwrap();
    let small = ds.stat("/a/small").unwrap().inum;
    let big = ds.stat("/a/b/big").unwrap().inum;
    drop(ds);
    let big_ino = Inode::decode(&base[g.inode(big) as usize..][..PAGE], &g, big).unwrap();
    let cases: Vec<(&str, u64, &str)> = vec![
        ("heartbeat slot", g.hb_slot(1) + 30, "heartbeat slot"),
        ("journal", g.journal(1) + 100, "journal"),
        ("cluster map", g.map(0) + 100, "resource cluster map"),
        ("inode", g.inode(small) + 40, "inode"),
        (
            "pointer page",
            g.sub(big_ino.addrs[0]) + 70,
            "pointer block page",
        ),
        (
            "dblock",
            g.lock(LockId::Cluster(0)) + SECTOR as u64 + 3,
            "lock paxos block",
        ),
    ];
    for (name, off, expect) in cases {
        let mut img = base.clone();
        img[off as usize] ^= 0x5a;
        let r = check(&img);
        assert!(
            r.findings.iter().any(|f| f.what.contains(expect)),
            "{name}: {r}"
        );
        repair_then_clean(&img);
    }
    // A block marked used that nobody owns (leak), and one owned but marked free.
    for set in [true, false] {
        let mut img = base.clone();
        let off = g.map(0) as usize;
        let i = if set { g.bpc as usize - 1 } else { 1 };
        let bits = &mut img[off + MAP_BLOCKS_AT..off + MAP_BLOCKS_AT + 512];
        let was = bit(bits, i);
        set_bit(bits, i, !was);
        reseal(&mut img, off as u64, PAGE, MAGIC_CLUSTER);
        let r = check(&img);
        assert!(!r.is_clean(), "bitmap flip {i}: {r}");
        repair_then_clean(&img);
    }
}

#[test]
fn seeded_random_mutations_never_panic() {
    let base = fuzzing::template();
    let g = geo(base);
    let n: u64 = std::env::var("VMFS_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    // Metadata lives below the data blocks; aim most edits there.
    let regions = [
        (0, PAGE as u64),
        (g.hb_off, g.journal_off),
        (g.lock_off, g.lock_off + 40 * LOCK_AREA),
        (g.map_off, g.sub_off + 32 * SUB_BLOCK),
    ];
    for seed in 0..n {
        let edits: Vec<(u32, u8)> = (0..1 + rnd() % 8)
            .map(|_| {
                // The header only now and then: most edits there just stop the mount.
                let first = if seed % 5 == 0 { 0 } else { 1 };
                let (a, b) = regions[first + (rnd() % (regions.len() - first) as u64) as usize];
                ((a + rnd() % (b - a)) as u32, rnd() as u8)
            })
            .collect();
        let img = fuzzing::mutate(base, &edits);
        let _ = fuzzing::exercise(&img);
        if let Err(e) = fuzzing::exercise_repair(&img) {
            panic!("seed {seed} edits {edits:?}: {e}");
        }
    }
}
