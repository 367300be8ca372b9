//! Damaged and foreign inputs give precise errors: which file, which byte or line, what.

mod common;

use std::path::Path;

use common::TempDir;
use vmk_vmdk::{
    CreateOptions, DescriptorProblem, HeaderProblem, OpenMode, Subformat, TableKind, TableProblem,
    Vmdk, VmdkError,
};

const MIB: u64 = 1 << 20;

fn sparse_image(t: &TempDir, name: &str) -> std::path::PathBuf {
    let path = t.join(name);
    let mut d = Vmdk::create(
        &path,
        &CreateOptions::new(8 * MIB, Subformat::MonolithicSparse),
    )
    .unwrap();
    d.write_at(0, &[7u8; 200_000]).unwrap();
    d.close().unwrap();
    path
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let mut b = std::fs::read(path).unwrap();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, b).unwrap();
}

fn header_error(path: &Path) -> (u64, HeaderProblem, String) {
    match Vmdk::open(path, OpenMode::ReadOnly) {
        Err(e @ VmdkError::BadHeader { .. }) => {
            let msg = e.to_string();
            let VmdkError::BadHeader {
                offset,
                problem,
                path: p,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(p, path);
            (offset, problem, msg)
        }
        other => panic!("expected a header error, got {other:?}"),
    }
}

#[test]
fn wrong_magic() {
    let t = TempDir::new("magic");
    // A monolithic file without the magic is not a VMDK at all.
    let path = sparse_image(&t, "m.vmdk");
    patch(&path, 0, b"XDMV");
    match Vmdk::open(&path, OpenMode::ReadOnly) {
        Err(VmdkError::NotVmdk { path: p, why }) => {
            assert_eq!(p, path);
            assert!(why.contains("KDMV"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // An extent named by a descriptor must have it.
    let d = t.join("split.vmdk");
    let mut o = CreateOptions::new(4 * MIB, Subformat::TwoGbMaxExtentSparse);
    o.split_size = 2 * MIB;
    Vmdk::create(&d, &o).unwrap().close().unwrap();
    let ext = t.join("split-s002.vmdk");
    patch(&ext, 0, b"KDMX");
    let (off, problem, msg) = header_error_at(&d, &ext);
    assert_eq!(off, 0);
    assert!(matches!(problem, HeaderProblem::BadMagic(_)));
    assert!(
        msg.contains("split-s002.vmdk") && msg.contains("0x564d444b"),
        "{msg}"
    );
}

fn header_error_at(open: &Path, file: &Path) -> (u64, HeaderProblem, String) {
    match Vmdk::open(open, OpenMode::ReadOnly) {
        Err(e @ VmdkError::BadHeader { .. }) => {
            let msg = e.to_string();
            let VmdkError::BadHeader {
                offset,
                problem,
                path,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(path, file);
            (offset, problem, msg)
        }
        other => panic!("expected a header error, got {other:?}"),
    }
}

#[test]
fn bad_version() {
    let t = TempDir::new("version");
    let path = sparse_image(&t, "v.vmdk");
    patch(&path, 4, &7u32.to_le_bytes());
    let (off, problem, msg) = header_error(&path);
    assert_eq!((off, problem), (4, HeaderProblem::UnsupportedVersion(7)));
    assert!(msg.contains("version 7"), "{msg}");
}

#[test]
fn grain_size_not_power_of_two() {
    let t = TempDir::new("grain");
    let path = sparse_image(&t, "g.vmdk");
    patch(&path, 20, &96u64.to_le_bytes());
    let (off, problem, _) = header_error(&path);
    assert_eq!(
        (off, problem),
        (20, HeaderProblem::GrainSizeNotPowerOfTwo(96))
    );
    patch(&path, 20, &0u64.to_le_bytes());
    assert_eq!(header_error(&path).1, HeaderProblem::GrainSizeZero);
}

#[test]
fn grain_directory_beyond_eof() {
    let t = TempDir::new("gd");
    let path = sparse_image(&t, "d.vmdk");
    let len = std::fs::metadata(&path).unwrap().len();
    patch(&path, 56, &(len / 512 + 10).to_le_bytes());
    let (off, problem, msg) = header_error(&path);
    assert_eq!(off, 56);
    assert!(
        matches!(problem, HeaderProblem::GdBeyondEof { file_len, .. } if file_len == len),
        "{problem:?}"
    );
    assert!(msg.contains("beyond the end of the file"), "{msg}");
}

#[test]
fn text_mode_transfer_and_truncation() {
    let t = TempDir::new("nl");
    let path = sparse_image(&t, "n.vmdk");
    patch(&path, 75, b"\n");
    assert_eq!(header_error(&path).1, HeaderProblem::TextModeTransfer);
    let short = t.join("short.vmdk");
    std::fs::write(&short, b"KDMV\x01\0\0\0").unwrap();
    assert!(matches!(
        header_error(&short).1,
        HeaderProblem::Truncated { file_len: 8 }
    ));
}

/// The byte offsets of the first grain table and redundant grain table of an image made by
/// vmk (one table each).
fn first_gts(path: &Path) -> (u64, u64) {
    let b = std::fs::read(path).unwrap();
    let table = |field: usize| {
        let dir = u64::from_le_bytes(b[field..field + 8].try_into().unwrap()) * 512;
        u32::from_le_bytes(b[dir as usize..dir as usize + 4].try_into().unwrap()) as u64 * 512
    };
    (table(56), table(48))
}

fn first_gte(path: &Path) -> u64 {
    first_gts(path).0
}

#[test]
fn grain_table_entry_beyond_eof() {
    let t = TempDir::new("gte");
    let path = sparse_image(&t, "e.vmdk");
    let len = std::fs::metadata(&path).unwrap().len();
    let (gt, rgt) = first_gts(&path);
    let beyond = ((len / 512 + 3) as u32).to_le_bytes();
    patch(&path, gt as usize + 4, &beyond);
    let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    let mut b = [0u8; 16];
    d.read_at(0, &mut b).unwrap();
    assert_eq!(b, [7u8; 16], "grain 0 is fine");
    match d.read_at(65536, &mut b) {
        Err(e @ VmdkError::BadTable { .. }) => {
            let msg = e.to_string();
            let VmdkError::BadTable {
                path: p,
                table,
                offset,
                index,
                problem,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(
                (p, table, offset, index),
                (path.clone(), TableKind::GrainTable, gt + 4, 1)
            );
            assert!(matches!(problem, TableProblem::BeyondEof { .. }));
            assert!(msg.contains("check --repair"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    drop(d);
    // check finds it; with the redundant table intact, repair restores the entry from it.
    let rep = Vmdk::check(&path, false).unwrap();
    assert_eq!(rep.bad_entries, 1, "{rep}");
    let rep = Vmdk::check(&path, true).unwrap();
    assert_eq!(rep.unrepaired().count(), 0, "{rep}");
    let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    d.read_at(65536, &mut b).unwrap();
    assert_eq!(b, [7u8; 16]);
    drop(d);
    // Both copies damaged (as a lost file extension leaves them): repair clears the entry,
    // the grain reads as never written, and the rest stays.
    patch(&path, gt as usize + 4, &beyond);
    patch(&path, rgt as usize + 4, &beyond);
    let rep = Vmdk::check(&path, true).unwrap();
    assert_eq!(rep.bad_entries, 1, "{rep}");
    assert!(
        rep.unrepaired()
            .all(|f| f.kind == vmk_vmdk::FindingKind::LeakedSpace),
        "{rep}"
    );
    let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    d.read_at(65536, &mut b).unwrap();
    assert_eq!(b, [0u8; 16]);
    d.read_at(131072, &mut b).unwrap();
    assert_eq!(b, [7u8; 16]);
}

#[test]
fn grain_table_entry_into_metadata() {
    let t = TempDir::new("gte-meta");
    let path = sparse_image(&t, "e.vmdk");
    let gte = first_gte(&path);
    patch(&path, gte as usize, &5u32.to_le_bytes());
    let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(
        d.read_at(0, &mut b),
        Err(VmdkError::BadTable {
            problem: TableProblem::IntoMetadata { sector: 5, .. },
            ..
        })
    ));
}

fn descriptor_error(path: &Path) -> (usize, String, DescriptorProblem, String) {
    match Vmdk::open(path, OpenMode::ReadOnly) {
        Err(e @ VmdkError::BadDescriptor { .. }) => {
            let msg = e.to_string();
            let VmdkError::BadDescriptor {
                line,
                text,
                problem,
                path: p,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(p, path);
            (line, text, problem, msg)
        }
        other => panic!("expected a descriptor error, got {other:?}"),
    }
}

fn flat_disk(t: &TempDir) -> (std::path::PathBuf, String) {
    let path = t.join("f.vmdk");
    Vmdk::create(&path, &CreateOptions::new(MIB, Subformat::MonolithicFlat))
        .unwrap()
        .close()
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

#[test]
fn descriptor_bad_lines() {
    let t = TempDir::new("desc");
    let (path, text) = flat_disk(&t);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;

    std::fs::write(
        &path,
        text.replace(
            "createType=\"monolithicFlat\"",
            "createType=\"monolithicFancy\"",
        ),
    )
    .unwrap();
    let (line, shown, problem, msg) = descriptor_error(&path);
    assert_eq!(line, line_of("createType"));
    assert_eq!(shown, "createType=\"monolithicFancy\"");
    assert_eq!(
        problem,
        DescriptorProblem::UnknownCreateType("monolithicFancy".into())
    );
    assert!(msg.contains(&format!("line {line}")), "{msg}");

    std::fs::write(
        &path,
        text.replace("createType=\"monolithicFlat\"", "createType=\"vmfsSparse\""),
    )
    .unwrap();
    assert_eq!(
        descriptor_error(&path).2,
        DescriptorProblem::UnsupportedCreateType("vmfsSparse".into())
    );

    std::fs::write(&path, text.replace("version=1", "this line is nonsense")).unwrap();
    let (line, _, problem, _) = descriptor_error(&path);
    assert_eq!(
        (line, problem),
        (line_of("version=1"), DescriptorProblem::Syntax)
    );

    std::fs::write(&path, text.replace("CID=", "CID=zz")).unwrap();
    assert!(matches!(
        descriptor_error(&path).2,
        DescriptorProblem::BadCid(_)
    ));

    std::fs::write(
        &path,
        text.replace(" FLAT \"f-flat.vmdk\" 0", " FLAT f-flat.vmdk 0"),
    )
    .unwrap();
    let (line, _, problem, _) = descriptor_error(&path);
    assert_eq!(line, line_of("FLAT"));
    assert_eq!(
        problem,
        DescriptorProblem::BadExtent("the file name must be in double quotes")
    );

    std::fs::write(&path, text.replace("RW 2048 FLAT", "RW two FLAT")).unwrap();
    assert_eq!(
        descriptor_error(&path).2,
        DescriptorProblem::BadExtent("the size is not a decimal number of sectors")
    );

    std::fs::write(&path, text.replace("RW 2048 FLAT", "RW 2048 VMFSRDM")).unwrap();
    assert_eq!(
        descriptor_error(&path).2,
        DescriptorProblem::UnsupportedExtentType("VMFSRDM".into())
    );

    let no_extent: String = text
        .lines()
        .filter(|l| !l.starts_with("RW "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, no_extent).unwrap();
    assert_eq!(descriptor_error(&path).0, 0);
}

#[test]
fn extent_file_missing() {
    let t = TempDir::new("missing");
    let (path, text) = flat_disk(&t);
    std::fs::remove_file(t.join("f-flat.vmdk")).unwrap();
    match Vmdk::open(&path, OpenMode::ReadOnly) {
        Err(e @ VmdkError::MissingExtent { .. }) => {
            let msg = e.to_string();
            let VmdkError::MissingExtent {
                descriptor,
                line,
                extent,
                source,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(descriptor, path);
            assert_eq!(
                line,
                text.lines().position(|l| l.contains("FLAT")).unwrap() + 1
            );
            assert_eq!(extent, t.join("f-flat.vmdk"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert!(msg.contains("f-flat.vmdk"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn not_a_vmdk_and_bad_options() {
    let t = TempDir::new("notvmdk");
    let raw = t.join("x.raw");
    std::fs::write(&raw, vec![0x55u8; 4096]).unwrap();
    assert!(matches!(
        Vmdk::open(&raw, OpenMode::ReadOnly),
        Err(VmdkError::NotVmdk { .. })
    ));
    assert_eq!(
        vmk_vmdk::detect_format(&raw).unwrap(),
        vmk_vmdk::DiskFormat::Raw
    );
    let p = t.join("a.vmdk");
    let bad = |o: CreateOptions| matches!(Vmdk::create(&p, &o), Err(VmdkError::InvalidArgument(_)));
    assert!(bad(CreateOptions::new(1000, Subformat::MonolithicSparse)));
    assert!(bad(CreateOptions::new(0, Subformat::MonolithicSparse)));
    assert!(bad(CreateOptions::new(MIB, Subformat::StreamOptimized)));
    let mut o = CreateOptions::new(MIB, Subformat::MonolithicSparse);
    o.grain_size = 3 * 4096;
    assert!(bad(o));
    assert!(!p.exists());
    Vmdk::create(&p, &CreateOptions::new(MIB, Subformat::MonolithicSparse))
        .unwrap()
        .close()
        .unwrap();
    assert!(matches!(
        Vmdk::create(&p, &CreateOptions::new(MIB, Subformat::MonolithicSparse)),
        Err(VmdkError::AlreadyExists { .. })
    ));
    assert!("monolithicsparse".parse::<Subformat>().is_ok());
    assert!("bogus".parse::<Subformat>().is_err());
}
