//! Round trips through vmk alone: every subformat, unaligned I/O across grains, grain
//! tables and extents, zeroes and discard, grow, CID and uncleanShutdown rules, delta disks,
//! locking and convert.

mod common;

use common::{Rng, TempDir};
use vmk_vmdk::{
    convert, BlockKind, CreateOptions, ExtentKind, OpenMode, Subformat, Target, Vmdk, VmdkError,
};

const MIB: u64 = 1 << 20;

fn opts(size: u64, f: Subformat) -> CreateOptions {
    let mut o = CreateOptions::new(size, f);
    o.split_size = 8 * MIB;
    o
}

/// Random writes (aligned and not), zeroes and grain-aligned discards, mirrored in `model`.
fn exercise(d: &mut Vmdk, model: &mut [u8], rng: &mut Rng, ops: usize) {
    let size = model.len() as u64;
    for i in 0..ops {
        let (off, len) = match i % 4 {
            // Grain-aligned runs of whole grains.
            0 => {
                let g = 64 << 10;
                let off = rng.below(size / g) * g;
                (off, (1 + rng.below(40)) * g)
            }
            // Anything.
            _ => (rng.below(size), 1 + rng.below(300_000)),
        };
        let len = len.min(size - off);
        match rng.below(10) {
            0 => {
                d.write_zeroes(off, len).expect("write_zeroes");
                model[off as usize..(off + len) as usize].fill(0);
            }
            1 => {
                // Discard whole grains only: those read as zeros afterwards everywhere.
                let g = 64 << 10;
                let a = off / g * g;
                let n = len / g * g;
                if n > 0 && a + n <= size {
                    d.discard(a, n).expect("discard");
                    model[a as usize..(a + n) as usize].fill(0);
                }
            }
            _ => {
                let data = rng.bytes(len as usize);
                d.write_at(off, &data).expect("write");
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
        }
    }
}

fn assert_model(d: &mut Vmdk, model: &[u8]) {
    let mut got = vec![0u8; model.len()];
    // Read in odd-sized pieces to cross every kind of boundary.
    let mut off = 0;
    let mut step = 12345usize;
    while off < model.len() {
        let n = step.min(model.len() - off);
        d.read_at(off as u64, &mut got[off..off + n]).expect("read");
        off += n;
        step = step * 7 % 1_000_003 + 1;
    }
    if got != model {
        let i = (0..model.len()).find(|&i| got[i] != model[i]).unwrap_or(0);
        panic!("disk differs from the model at byte {i}");
    }
}

#[test]
fn vmdk_is_send() {
    fn send<T: Send>() {}
    send::<Vmdk>();
    send::<std::sync::Mutex<Vmdk>>();
}

#[test]
fn every_writable_subformat_round_trips() {
    let t = TempDir::new("rt");
    // Not a multiple of the grain, a grain table's span, or the split size.
    let size = 37 * MIB + 3 * 512;
    for (k, f) in [
        Subformat::MonolithicSparse,
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentSparse,
        Subformat::TwoGbMaxExtentFlat,
        Subformat::Vmfs,
    ]
    .into_iter()
    .enumerate()
    {
        let path = t.join(&format!("d{k}.vmdk"));
        let mut d = Vmdk::create(&path, &opts(size, f)).expect("create");
        let info = d.info();
        assert_eq!(info.subformat, f);
        assert_eq!(info.capacity, size);
        let want_extents = if f.is_split() { 5 } else { 1 };
        assert_eq!(info.extents.len(), want_extents, "{f}");
        let mut model = vec![0u8; size as usize];
        assert_model(&mut d, &model);
        let mut rng = Rng(0x1000 + k as u64);
        exercise(&mut d, &mut model, &mut rng, 120);
        // The last byte and a write across the end of an extent.
        d.write_at(size - 1, &[0x5a]).expect("last byte");
        model[size as usize - 1] = 0x5a;
        let data = rng.bytes(100_000);
        d.write_at(8 * MIB - 50_000, &data)
            .expect("across an extent boundary");
        model[(8 * MIB - 50_000) as usize..(8 * MIB + 50_000) as usize].copy_from_slice(&data);
        assert_model(&mut d, &model);
        d.flush().expect("flush");
        d.close().expect("close");
        let mut d = Vmdk::open(&path, OpenMode::ReadOnly).expect("reopen");
        assert_model(&mut d, &model);
        assert!(!d.info().unclean_shutdown);
        drop(d);
        let rep = Vmdk::check(&path, false).expect("check");
        assert!(rep.is_clean(), "{f}: {rep}");
    }
}

#[test]
fn stream_optimized_round_trips_through_convert() {
    let t = TempDir::new("stream");
    let raw = t.join("src.raw");
    let size = 21 * MIB + 512;
    common::random_raw(&raw, size, 7);
    let s = t.join("s.vmdk");
    let mut calls = 0;
    convert(
        &raw,
        &s,
        &Target::Vmdk(CreateOptions::new(0, Subformat::StreamOptimized)),
        &mut |done, total| {
            assert!(done <= total);
            calls += 1;
        },
    )
    .expect("convert to stream");
    assert!(calls > 1);
    let mut d = Vmdk::open(&s, OpenMode::ReadOnly).expect("open stream");
    assert_eq!(d.info().subformat, Subformat::StreamOptimized);
    assert_eq!(d.info().extents[0].kind, ExtentKind::Compressed);
    common::assert_same(&mut d, &raw);
    // Stream images are read-only here.
    assert!(matches!(
        Vmdk::open(&s, OpenMode::ReadWrite),
        Err(VmdkError::ReadOnly { .. }) | Err(VmdkError::Locked { .. })
    ));
    drop(d);
    assert!(matches!(
        Vmdk::open(&s, OpenMode::ReadWrite),
        Err(VmdkError::ReadOnly { .. })
    ));
    assert!(Vmdk::check(&s, false).expect("check stream").is_clean());
    // And back to every other subformat and raw.
    for (k, f) in [Subformat::MonolithicSparse, Subformat::TwoGbMaxExtentFlat]
        .into_iter()
        .enumerate()
    {
        let out = t.join(&format!("o{k}.vmdk"));
        convert(&s, &out, &Target::Vmdk(opts(0, f)), &mut |_, _| {}).expect("convert back");
        let mut d = Vmdk::open(&out, OpenMode::ReadOnly).expect("open");
        common::assert_same(&mut d, &raw);
    }
    let back = t.join("back.raw");
    convert(&s, &back, &Target::Raw, &mut |_, _| {}).expect("to raw");
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&raw).unwrap());
    assert!(matches!(
        convert(&raw, &back, &Target::Raw, &mut |_, _| {}),
        Err(VmdkError::AlreadyExists { .. })
    ));
}

#[test]
fn convert_skips_zeros_and_compacts() {
    let t = TempDir::new("compact");
    let path = t.join("a.vmdk");
    let mut d = Vmdk::create(&path, &opts(64 * MIB, Subformat::MonolithicSparse)).unwrap();
    let mut rng = Rng(3);
    d.write_at(3 * MIB, &rng.bytes(MIB as usize)).unwrap();
    d.write_at(40 * MIB, &vec![0u8; 4 * MIB as usize]).unwrap(); // allocated zeros
    d.close().unwrap();
    let out = t.join("b.vmdk");
    convert(
        &path,
        &out,
        &Target::Vmdk(CreateOptions::new(0, Subformat::MonolithicSparse)),
        &mut |_, _| {},
    )
    .unwrap();
    let mut a = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    let mut b = Vmdk::open(&out, OpenMode::ReadOnly).unwrap();
    assert_eq!(a.allocated_grains().unwrap(), 80);
    assert_eq!(
        b.allocated_grains().unwrap(),
        16,
        "zero grains are not copied"
    );
    let mut x = vec![0u8; 64 * MIB as usize];
    let mut y = vec![0u8; 64 * MIB as usize];
    a.read_at(0, &mut x).unwrap();
    b.read_at(0, &mut y).unwrap();
    assert!(x == y);
    assert_eq!(
        b.block_status(0, 64 * MIB).unwrap(),
        (BlockKind::Zero, 3 * MIB)
    );
    assert_eq!(
        b.block_status(3 * MIB, 64 * MIB).unwrap(),
        (BlockKind::Data, MIB)
    );
}

#[test]
fn grow_every_writable_subformat() {
    let t = TempDir::new("grow");
    for (k, f) in [
        Subformat::MonolithicSparse,
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentSparse,
        Subformat::TwoGbMaxExtentFlat,
    ]
    .into_iter()
    .enumerate()
    {
        let path = t.join(&format!("g{k}.vmdk"));
        let size = 10 * MIB;
        let mut d = Vmdk::create(&path, &opts(size, f)).unwrap();
        let mut rng = Rng(50 + k as u64);
        let mut model = vec![0u8; size as usize];
        exercise(&mut d, &mut model, &mut rng, 30);
        let new = 45 * MIB + 512;
        assert!(matches!(
            d.grow(size - 512),
            Err(VmdkError::InvalidArgument(_))
        ));
        assert!(matches!(
            d.grow(new + 1),
            Err(VmdkError::InvalidArgument(_))
        ));
        d.grow(new).expect("grow");
        assert_eq!(d.size(), new);
        model.resize(new as usize, 0);
        assert_model(&mut d, &model);
        exercise(&mut d, &mut model, &mut rng, 40);
        d.close().unwrap();
        let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
        assert_eq!(d.size(), new);
        if f.is_split() {
            assert_eq!(d.info().extents.len(), 6, "{f}");
        }
        assert_model(&mut d, &model);
        drop(d);
        let rep = Vmdk::check(&path, false).unwrap();
        assert!(rep.is_clean(), "{f}: {rep}");
    }
}

#[test]
fn grow_relocates_full_grain_directories() {
    let t = TempDir::new("grow-gd");
    let path = t.join("g.vmdk");
    let mut o = CreateOptions::new(MIB, Subformat::MonolithicSparse);
    o.grain_size = 4096; // one grain table covers 2 MiB, one directory sector 256 MiB
    let mut d = Vmdk::create(&path, &o).unwrap();
    d.write_at(4096, b"before").unwrap();
    d.grow(300 * MIB).unwrap();
    d.write_at(299 * MIB, b"after").unwrap();
    d.close().unwrap();
    let mut d = Vmdk::open(&path, OpenMode::ReadWrite).unwrap();
    let mut b = [0u8; 6];
    d.read_at(4096, &mut b).unwrap();
    assert_eq!(&b, b"before");
    d.read_at(299 * MIB, &mut b[..5]).unwrap();
    assert_eq!(&b[..5], b"after");
    d.grow(700 * MIB).unwrap();
    d.write_at(650 * MIB, b"again").unwrap();
    d.close().unwrap();
    let rep = Vmdk::check(&path, false).unwrap();
    assert!(rep.is_clean(), "{rep}");
}

fn header_byte(path: &std::path::Path, at: usize) -> u8 {
    std::fs::read(path).unwrap()[at]
}

#[test]
fn cid_changes_on_first_write_only() {
    let t = TempDir::new("cid");
    let path = t.join("c.vmdk");
    let d = Vmdk::create(
        &path,
        &CreateOptions::new(4 * MIB, Subformat::MonolithicSparse),
    )
    .unwrap();
    let cid0 = d.info().cid;
    assert_eq!(d.info().parent_cid, 0xffff_ffff);
    d.close().unwrap();
    // A read-only open, and a read-write open without writes, keep the CID.
    let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    let mut b = [0u8; 10];
    d.read_at(0, &mut b).unwrap();
    drop(d);
    let d = Vmdk::open(&path, OpenMode::ReadWrite).unwrap();
    d.close().unwrap();
    assert_eq!(
        Vmdk::open(&path, OpenMode::ReadOnly).unwrap().info().cid,
        cid0
    );
    // The first write changes it, later ones in the same session do not.
    let mut d = Vmdk::open(&path, OpenMode::ReadWrite).unwrap();
    d.write_at(0, b"x").unwrap();
    let cid1 = d.info().cid;
    assert_ne!(cid1, cid0);
    d.write_at(1, b"y").unwrap();
    assert_eq!(d.info().cid, cid1);
    d.close().unwrap();
    assert_eq!(
        Vmdk::open(&path, OpenMode::ReadOnly).unwrap().info().cid,
        cid1
    );
}

#[test]
fn unclean_shutdown_is_set_while_open() {
    let t = TempDir::new("unclean");
    let path = t.join("u.vmdk");
    let d = Vmdk::create(
        &path,
        &CreateOptions::new(4 * MIB, Subformat::MonolithicSparse),
    )
    .unwrap();
    assert_eq!(header_byte(&path, 72), 1, "set while open read-write");
    d.close().unwrap();
    assert_eq!(header_byte(&path, 72), 0, "cleared by close");
    let d = Vmdk::open(&path, OpenMode::ReadWrite).unwrap();
    drop(d);
    assert_eq!(header_byte(&path, 72), 0, "cleared by drop");
    // An image left with the flag set opens, says so, and check repairs it.
    let mut b = std::fs::read(&path).unwrap();
    b[72] = 1;
    std::fs::write(&path, &b).unwrap();
    let d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    assert!(d.info().unclean_shutdown);
    drop(d);
    let rep = Vmdk::check(&path, true).unwrap();
    assert!(rep.unclean_shutdown);
    assert_eq!(rep.findings.len(), 1, "{rep}");
    assert!(Vmdk::check(&path, false).unwrap().is_clean());
}

#[test]
fn locking() {
    let t = TempDir::new("lock");
    let path = t.join("l.vmdk");
    let d = Vmdk::create(&path, &CreateOptions::new(MIB, Subformat::MonolithicFlat)).unwrap();
    assert!(matches!(
        Vmdk::open(&path, OpenMode::ReadOnly),
        Err(VmdkError::Locked { .. })
    ));
    assert!(matches!(
        Vmdk::open(&path, OpenMode::ReadWrite),
        Err(VmdkError::Locked { .. })
    ));
    d.close().unwrap();
    let a = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    let _b = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    assert!(matches!(
        Vmdk::open(&path, OpenMode::ReadWrite),
        Err(VmdkError::Locked { .. })
    ));
    drop(a);
}

#[test]
fn out_of_range_and_read_only() {
    let t = TempDir::new("range");
    let path = t.join("r.vmdk");
    let mut d = Vmdk::create(&path, &CreateOptions::new(MIB, Subformat::MonolithicSparse)).unwrap();
    let mut b = [0u8; 2];
    assert!(matches!(
        d.read_at(MIB - 1, &mut b),
        Err(VmdkError::OutOfRange { .. })
    ));
    assert!(matches!(
        d.write_at(u64::MAX, &b),
        Err(VmdkError::OutOfRange { .. })
    ));
    d.read_at(MIB - 2, &mut b).unwrap();
    d.write_at(MIB, &[]).unwrap();
    d.close().unwrap();
    let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    assert!(matches!(d.write_at(0, &b), Err(VmdkError::ReadOnly { .. })));
    assert!(matches!(d.grow(2 * MIB), Err(VmdkError::ReadOnly { .. })));
}

#[test]
fn delta_disks_read_through_and_copy_on_write() {
    let t = TempDir::new("delta");
    let base = t.join("base.vmdk");
    let size = 8 * MIB;
    let mut rng = Rng(77);
    let mut model = rng.bytes(size as usize);
    model[3 * MIB as usize..5 * MIB as usize].fill(0);
    let mut d = Vmdk::create(
        &base,
        &CreateOptions::new(size, Subformat::MonolithicSparse),
    )
    .unwrap();
    d.write_at(0, &model).unwrap();
    d.close().unwrap();
    let child = t.join("child.vmdk");
    let mut o = CreateOptions::new(0, Subformat::MonolithicSparse);
    o.parent = Some("base.vmdk".into());
    let mut c = Vmdk::create(&child, &o).unwrap();
    assert_eq!(c.size(), size);
    assert_eq!(c.info().parent.as_deref(), Some(base.as_path()));
    assert_model(&mut c, &model);
    // Partial grains copy the rest from the parent; whole-grain zeroes use zeroed grains.
    let data = rng.bytes(70_000);
    c.write_at(100_000, &data).unwrap();
    model[100_000..170_000].copy_from_slice(&data);
    c.write_zeroes(MIB, 4 * 65536).unwrap();
    model[MIB as usize..(MIB + 4 * 65536) as usize].fill(0);
    c.write_zeroes(6 * MIB + 1000, 5000).unwrap();
    model[(6 * MIB + 1000) as usize..(6 * MIB + 6000) as usize].fill(0);
    assert_model(&mut c, &model);
    assert_eq!(
        c.block_status(MIB, MIB).unwrap(),
        (BlockKind::Zero, 4 * 65536)
    );
    assert_eq!(
        c.allocated_grains().unwrap(),
        3,
        "two grains written, one partly zeroed"
    );
    c.close().unwrap();
    let mut c = Vmdk::open(&child, OpenMode::ReadOnly).unwrap();
    assert_model(&mut c, &model);
    drop(c);
    // Flattening the chain.
    let flat = t.join("flat.raw");
    convert(&child, &flat, &Target::Raw, &mut |_, _| {}).unwrap();
    assert!(std::fs::read(&flat).unwrap() == model);
    // Changing the parent invalidates the child.
    let mut d = Vmdk::open(&base, OpenMode::ReadWrite).unwrap();
    d.write_at(0, b"changed").unwrap();
    d.close().unwrap();
    match Vmdk::open(&child, OpenMode::ReadOnly) {
        Err(VmdkError::ParentCidMismatch { parent, .. }) => assert_eq!(parent, base),
        other => panic!("expected a parent CID mismatch, got {other:?}"),
    }
    let rep = Vmdk::check(&child, false).unwrap();
    assert_eq!(rep.findings[0].kind, vmk_vmdk::FindingKind::Parent, "{rep}");
}

#[test]
fn zeroes_and_discard_free_host_space() {
    let t = TempDir::new("zero");
    let path = t.join("z.vmdk");
    let mut d = Vmdk::create(
        &path,
        &CreateOptions::new(16 * MIB, Subformat::MonolithicSparse),
    )
    .unwrap();
    let mut rng = Rng(9);
    d.write_at(0, &rng.bytes(8 * MIB as usize)).unwrap();
    d.flush().unwrap();
    let before = d.info().allocated_bytes;
    d.write_zeroes(0, 4 * MIB).unwrap();
    d.discard(4 * MIB, 2 * MIB + 1000).unwrap();
    d.flush().unwrap();
    let after = d.info().allocated_bytes;
    assert!(
        after + 5 * MIB < before,
        "holes punched: {before} -> {after}"
    );
    let mut b = vec![0u8; 6 * MIB as usize];
    d.read_at(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    // Whole grains on a disk without parent never get allocated for zeroes.
    let g = d.allocated_grains().unwrap();
    d.write_zeroes(9 * MIB, 4 * MIB + 7).unwrap();
    assert_eq!(d.allocated_grains().unwrap(), g);
}

#[test]
fn raw_round_trip_through_every_subformat() {
    let t = TempDir::new("raw");
    let raw = t.join("src.raw");
    // Not a multiple of 512: VMDKs round up, and the copy back is compared on the prefix.
    let size = 19 * MIB + 700;
    common::random_raw(&raw, size, 11);
    let src = std::fs::read(&raw).unwrap();
    for (k, f) in Subformat::ALL.into_iter().enumerate() {
        let out = t.join(&format!("c{k}.vmdk"));
        convert(&raw, &out, &Target::Vmdk(opts(0, f)), &mut |_, _| {}).expect("to vmdk");
        let mut d = Vmdk::open(&out, OpenMode::ReadOnly).unwrap();
        assert_eq!(d.size(), size.div_ceil(512) * 512);
        assert_eq!(d.info().subformat, f);
        let mut b = vec![0u8; d.size() as usize];
        d.read_at(0, &mut b).unwrap();
        assert!(b[..src.len()] == src[..], "{f}");
        assert!(b[src.len()..].iter().all(|&x| x == 0));
        drop(d);
        assert!(Vmdk::check(&out, false).unwrap().is_clean());
        let back = t.join(&format!("c{k}.raw"));
        convert(&out, &back, &Target::Raw, &mut |_, _| {}).unwrap();
        let b = std::fs::read(&back).unwrap();
        assert!(b[..src.len()] == src[..], "{f} back to raw");
    }
}
