//! Interoperability with QEMU's qemu-img, both ways, for every subformat QEMU writes:
//! images qemu-img creates or converts open in vmk and take writes, after which
//! `qemu-img check` is clean and `qemu-img compare` against the expected raw contents
//! matches; images vmk makes are read correctly by qemu-img.

mod common;

use std::path::Path;

use common::{p, qemu, qemu_img, raw_file, raw_write, Rng, TempDir};
use vmk_vmdk::{convert, CreateOptions, OpenMode, Subformat, Target, Vmdk};

const MIB: u64 = 1 << 20;
const QEMU_SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

fn qemu_clean(img: &Path) {
    let out = qemu(&["check", "-f", "vmdk", p(img)]);
    assert!(
        out.contains("No errors were found"),
        "qemu-img check {}:\n{out}",
        img.display()
    );
}

fn qemu_same(img: &Path, raw: &Path) {
    let out = qemu(&["compare", "-f", "vmdk", "-F", "raw", p(img), p(raw)]);
    assert!(
        out.contains("Images are identical"),
        "qemu-img compare:\n{out}"
    );
}

/// Writes a mix of aligned, unaligned, grain-crossing and boundary writes to `d` and to the
/// raw file `expected` (which the disk matches before).
fn guest_writes(d: &mut Vmdk, expected: &Path, seed: u64, hot: &[u64]) {
    let size = d.size();
    let mut rng = Rng(seed);
    let mut spots: Vec<(u64, u64)> = vec![(0, 4096), (size - 512, 512), (size - 100_000, 100_000)];
    for &h in hot {
        spots.push((h - 70_000, 140_000));
    }
    for _ in 0..40 {
        let off = rng.below(size);
        spots.push((off, (1 + rng.below(200_000)).min(size - off)));
    }
    for _ in 0..10 {
        let g = 64 << 10;
        let off = rng.below(size / g - 20) * g;
        spots.push((off, (1 + rng.below(16)) * g));
    }
    for (i, (off, len)) in spots.into_iter().enumerate() {
        if i % 7 == 6 {
            d.write_zeroes(off, len).expect("write_zeroes");
            raw_write(expected, off, &vec![0u8; len as usize]);
        } else {
            let data = rng.bytes(len as usize);
            d.write_at(off, &data).expect("write");
            raw_write(expected, off, &data);
        }
    }
}

fn size_for(subformat: &str) -> u64 {
    if subformat.starts_with("twoGb") {
        // Two extents in QEMU's 2 GiB split, sparse files on the host.
        2048 * MIB + 24 * MIB
    } else {
        40 * MIB
    }
}

#[test]
fn qemu_created_images_open_and_take_writes() {
    let Some(_) = qemu_img() else { return };
    let t = TempDir::new("qemu-create");
    let variants: Vec<(&str, &str)> = QEMU_SUBFORMATS
        .iter()
        .map(|f| (*f, ""))
        .chain([
            ("monolithicSparse", "zeroed_grain=on"),
            ("monolithicSparse", "adapter_type=lsilogic,hwversion=6"),
            (
                "twoGbMaxExtentSparse",
                "zeroed_grain=on,adapter_type=buslogic",
            ),
            ("monolithicSparse", "compat6=on"),
        ])
        .collect();
    for (k, (f, extra)) in variants.into_iter().enumerate() {
        let img = t.join(&format!("q{k}.vmdk"));
        let size = size_for(f);
        let o = if extra.is_empty() {
            format!("subformat={f}")
        } else {
            format!("subformat={f},{extra}")
        };
        qemu(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &o,
            p(&img),
            &size.to_string(),
        ]);
        let expected = t.join(&format!("q{k}.raw"));
        raw_file(&expected, size);
        if f == "streamOptimized" {
            let mut d = Vmdk::open(&img, OpenMode::ReadOnly).expect("open qemu stream");
            assert_eq!(d.info().subformat, Subformat::StreamOptimized);
            common::assert_same(&mut d, &expected);
            continue;
        }
        let mut d =
            Vmdk::open(&img, OpenMode::ReadWrite).unwrap_or_else(|e| panic!("{f} {extra}: {e}"));
        assert_eq!(d.size(), size);
        assert_eq!(d.info().subformat.as_str(), f);
        let hot = if size > 2048 * MIB {
            vec![2048 * MIB]
        } else {
            vec![]
        };
        guest_writes(&mut d, &expected, k as u64, &hot);
        common::assert_same(&mut d, &expected);
        d.close().expect("close");
        qemu_clean(&img);
        qemu_same(&img, &expected);
        let rep = Vmdk::check(&img, false).expect("vmk check");
        assert!(rep.is_clean(), "{f} {extra}: {rep}");
    }
}

#[test]
fn qemu_converted_images_read_and_write_in_vmk() {
    let Some(_) = qemu_img() else { return };
    let t = TempDir::new("qemu-convert");
    let src = t.join("src.raw");
    let size = 24 * MIB;
    common::random_raw(&src, size, 42);
    for (k, f) in QEMU_SUBFORMATS.into_iter().enumerate() {
        let img = t.join(&format!("c{k}.vmdk"));
        qemu(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={f}"),
            p(&src),
            p(&img),
        ]);
        let mut d = Vmdk::open(&img, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{f}: {e}"));
        common::assert_same(&mut d, &src);
        drop(d);
        assert!(Vmdk::check(&img, false).unwrap().is_clean(), "{f}");
        if f == "streamOptimized" {
            continue;
        }
        let expected = t.join(&format!("c{k}.raw"));
        std::fs::copy(&src, &expected).unwrap();
        let mut d = Vmdk::open(&img, OpenMode::ReadWrite).unwrap();
        guest_writes(&mut d, &expected, 100 + k as u64, &[]);
        d.close().unwrap();
        qemu_clean(&img);
        qemu_same(&img, &expected);
    }
}

#[test]
fn vmk_images_read_by_qemu() {
    let Some(_) = qemu_img() else { return };
    let t = TempDir::new("qemu-read");
    for (k, f) in Subformat::ALL.into_iter().enumerate() {
        for small_split in [true, false] {
            if !small_split && !f.is_split() {
                continue;
            }
            let img = t.join(&format!("v{k}{small_split}.vmdk"));
            let expected = t.join(&format!("v{k}{small_split}.raw"));
            let size = if small_split {
                40 * MIB + 512
            } else {
                2047 * MIB + 8 * MIB
            };
            raw_file(&expected, size);
            let mut o = CreateOptions::new(size, f);
            if small_split {
                o.split_size = 16 * MIB;
            }
            if f == Subformat::StreamOptimized {
                // Written by convert, from a disk written by the guest.
                let tmp = t.join(&format!("v{k}-src.vmdk"));
                let mut d =
                    Vmdk::create(&tmp, &CreateOptions::new(size, Subformat::MonolithicSparse))
                        .unwrap();
                guest_writes(&mut d, &expected, 200 + k as u64, &[]);
                d.close().unwrap();
                convert(&tmp, &img, &Target::Vmdk(o), &mut |_, _| {}).unwrap();
            } else {
                let mut d = Vmdk::create(&img, &o).unwrap();
                let hot = if small_split {
                    vec![16 * MIB, 32 * MIB]
                } else {
                    vec![2047 * MIB]
                };
                guest_writes(&mut d, &expected, 200 + k as u64, &hot);
                d.close().unwrap();
            }
            qemu_clean(&img);
            qemu_same(&img, &expected);
            let info = qemu(&["info", "--output=json", p(&img)]);
            assert!(
                info.contains(&format!("\"virtual-size\": {size}")),
                "{info}"
            );
        }
    }
}

#[test]
fn delta_disks_both_ways() {
    let Some(_) = qemu_img() else { return };
    let t = TempDir::new("qemu-delta");
    let size = 16 * MIB;
    let src = t.join("base.raw");
    common::random_raw(&src, size, 5);
    // QEMU base and child, written through vmk.
    let base = t.join("qbase.vmdk");
    qemu(&["convert", "-f", "raw", "-O", "vmdk", p(&src), p(&base)]);
    let child = t.join("qchild.vmdk");
    qemu(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "qbase.vmdk",
        "-F",
        "vmdk",
        p(&child),
    ]);
    let expected = t.join("qchild.raw");
    std::fs::copy(&src, &expected).unwrap();
    let mut d = Vmdk::open(&child, OpenMode::ReadWrite).expect("open qemu child");
    assert_eq!(d.info().parent.as_deref(), Some(base.as_path()));
    common::assert_same(&mut d, &expected);
    guest_writes(&mut d, &expected, 9, &[]);
    d.close().unwrap();
    qemu_clean(&child);
    qemu_same(&child, &expected);
    qemu_same(&base, &src);
    // vmk base and child (zeroed grains in the child), read by QEMU.
    let vbase = t.join("vbase.vmdk");
    convert(
        &src,
        &vbase,
        &Target::Vmdk(CreateOptions::new(0, Subformat::MonolithicSparse)),
        &mut |_, _| {},
    )
    .unwrap();
    for (k, zeroed) in [true, false].into_iter().enumerate() {
        let vchild = t.join(&format!("vchild{k}.vmdk"));
        let mut o = CreateOptions::new(0, Subformat::MonolithicSparse);
        o.parent = Some("vbase.vmdk".into());
        o.zeroed_grain = zeroed;
        let mut d = Vmdk::create(&vchild, &o).unwrap();
        let expected = t.join(&format!("vchild{k}.raw"));
        std::fs::copy(&src, &expected).unwrap();
        guest_writes(&mut d, &expected, 10 + k as u64, &[]);
        d.write_zeroes(2 * MIB, 3 * MIB).unwrap();
        raw_write(&expected, 2 * MIB, &vec![0u8; 3 * MIB as usize]);
        d.close().unwrap();
        qemu_clean(&vchild);
        qemu_same(&vchild, &expected);
    }
}

/// A process that dies with a disk open read-write leaves uncleanShutdown set and nothing
/// else: `check` reports the flag as a notice, not a problem, and `qemu-img check` (where
/// installed) calls the disk clean too. A repair clears the flag.
#[test]
fn unclean_shutdown_alone_is_a_notice() {
    const TEST: &str = "unclean_shutdown_alone_is_a_notice";
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    if let Some(path) = std::env::var_os("VMK_VMDK_DIE_WITH_OPEN_DISK") {
        // The child: write, flush, and end the process without closing the disk (no
        // destructor runs), as a killed vmk would.
        let mut d = Vmdk::open(Path::new(&path), OpenMode::ReadWrite).expect("child open");
        d.write_at(MIB + 1000, &data).expect("child write");
        d.flush().expect("child flush");
        std::process::exit(0);
    }
    let t = TempDir::new("unclean-notice");
    let img = t.join("u.vmdk");
    Vmdk::create(
        &img,
        &CreateOptions::new(8 * MIB, Subformat::MonolithicSparse),
    )
    .unwrap()
    .close()
    .unwrap();
    let st = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture"])
        .env("VMK_VMDK_DIE_WITH_OPEN_DISK", &img)
        .status()
        .expect("run the child");
    assert!(st.success(), "child: {st}");
    assert_eq!(
        std::fs::read(&img).unwrap()[72],
        1,
        "uncleanShutdown left set"
    );

    let rep = Vmdk::check(&img, false).unwrap();
    assert!(rep.unclean_shutdown, "{rep}");
    assert_eq!(rep.findings.len(), 1, "{rep}");
    assert!(rep.findings[0].notice && !rep.findings[0].repaired, "{rep}");
    assert_eq!(rep.problems().count(), 0, "{rep}");
    let text = rep.to_string();
    assert!(
        text.contains("notice: uncleanShutdown is set") && text.contains("no problems found"),
        "{text}"
    );
    if qemu_img().is_some() {
        qemu_clean(&img);
    }
    // What the child wrote and flushed is there.
    let mut d = Vmdk::open(&img, OpenMode::ReadOnly).unwrap();
    let mut b = vec![0u8; data.len()];
    d.read_at(MIB + 1000, &mut b).unwrap();
    assert!(b == data);
    drop(d);

    let rep = Vmdk::check(&img, true).unwrap();
    assert!(rep.findings[0].repaired, "{rep}");
    assert_eq!(
        std::fs::read(&img).unwrap()[72],
        0,
        "repair clears the flag"
    );
    assert!(Vmdk::check(&img, false).unwrap().is_clean());

    // With real damage besides (a leaked grain at the end), the flag is part of the
    // problem, not a notice.
    let mut b = std::fs::read(&img).unwrap();
    b[72] = 1;
    b.extend_from_slice(&vec![7u8; 64 << 10]);
    std::fs::write(&img, &b).unwrap();
    let rep = Vmdk::check(&img, false).unwrap();
    assert!(rep.findings.iter().all(|f| !f.notice), "{rep}");
    assert_eq!(rep.problems().count(), 2, "{rep}");
    assert!(!rep.to_string().contains("no problems found"), "{rep}");
}
