//! `vmk disk info|convert|check` through the binary, on real files (no guest): the info
//! table and its JSON, the target format convert infers from the output's name, and the
//! uncleanShutdown flag alone reported as a notice (exit 0), as `qemu-img check` does.

use std::path::Path;
use std::process::{Command, Output};

use vmk_vmdk::{CreateOptions, OpenMode, Subformat, Vmdk};

mod cli_support;
use cli_support::{ok, vmk};

const MIB: u64 = 1 << 20;

/// Runs a failing command; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = vmk(args);
    assert_eq!(out.status.code(), Some(1), "vmk {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Runs qemu-img when it is installed: `None` without it.
fn qemu_img(args: &[&str]) -> Option<Output> {
    Command::new("qemu-img").args(args).output().ok()
}

/// A 96 MiB monolithicSparse disk with three grains of data at 1 MiB.
fn sparse_disk(path: &Path) -> Vec<u8> {
    let data: Vec<u8> = (0..3 * 65536u32).map(|i| (i % 253) as u8 + 1).collect();
    let mut d = Vmdk::create(
        path,
        &CreateOptions::new(96 * MIB, Subformat::MonolithicSparse),
    )
    .unwrap();
    d.write_at(MIB, &data).unwrap();
    d.close().unwrap();
    data
}

#[test]
fn info_is_a_table_and_json() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base.vmdk");
    sparse_disk(&base);
    let cid = Vmdk::open(&base, OpenMode::ReadOnly).unwrap().info().cid;

    let table = ok(&["disk", "info", s(&base)]);
    assert!(!table.contains("VmdkInfo"), "a debug dump:\n{table}");
    for line in [
        format!("image:            {}", base.display()),
        "file format:      vmdk".into(),
        "create type:      monolithicSparse".into(),
        "virtual size:     96.0 MiB (100663296 bytes)".into(),
        "grain size:       64.0 KiB (65536 bytes)".into(),
        "allocated:        3 grains (192.0 KiB)".into(),
        "adapter type:     lsilogic".into(),
        "hardware version: 4".into(),
        format!("CID:              {cid:08x}"),
        "parent CID:       ffffffff (no parent)".into(),
        "extents:".into(),
    ] {
        assert!(table.lines().any(|l| l == line), "no {line:?} in:\n{table}");
    }
    assert!(table.contains("disk size:"), "{table}");
    assert!(!table.contains("parent:"), "{table}");
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("0  sparse"))
        .unwrap_or_else(|| panic!("no extent row in:\n{table}"));
    assert!(row.ends_with(s(&base)), "{row}");

    let j: serde_json::Value =
        serde_json::from_str(&ok(&["disk", "info", "--json", s(&base)])).unwrap();
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "adapter_type",
            "allocated_grains",
            "cid",
            "create_type",
            "disk_size",
            "extents",
            "format",
            "grain_size",
            "hw_version",
            "parent",
            "parent_cid",
            "path",
            "unclean_shutdown",
            "virtual_size"
        ],
        "the documented keys"
    );
    assert_eq!(j["format"], "vmdk");
    assert_eq!(j["create_type"], "monolithicSparse");
    assert_eq!(j["virtual_size"], 96 * MIB);
    assert_eq!(j["allocated_grains"], 3);
    assert_eq!(j["grain_size"], 65536);
    assert_eq!(j["cid"], format!("{cid:08x}"));
    assert_eq!(j["parent_cid"], "ffffffff");
    assert_eq!(j["parent"], serde_json::Value::Null);
    assert_eq!(j["unclean_shutdown"], false);
    let e = &j["extents"][0];
    assert_eq!(e["type"], "sparse");
    assert_eq!(
        (e["start"].as_u64(), e["size"].as_u64()),
        (Some(0), Some(96 * MIB))
    );
    let file_len = std::fs::metadata(&base).unwrap().len();
    assert_eq!(e["file_size"], file_len);
    assert_eq!(j["extents"].as_array().unwrap().len(), 1);
    // The same sizes and CID as qemu-img reads.
    if let Some(q) = qemu_img(&["info", "--output=json", "-f", "vmdk", s(&base)]) {
        assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
        let q: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
        assert_eq!(q["virtual-size"], j["virtual_size"], "{q}");
        assert_eq!(q["actual-size"], j["disk_size"], "{q}");
        assert_eq!(q["format-specific"]["data"]["cid"], cid, "{q}");
    }

    // A delta disk names its parent.
    let child = t.path().join("child.vmdk");
    let mut o = CreateOptions::new(0, Subformat::MonolithicSparse);
    o.parent = Some("base.vmdk".into());
    Vmdk::create(&child, &o).unwrap().close().unwrap();
    let table = ok(&["disk", "info", s(&child)]);
    assert!(
        table
            .lines()
            .any(|l| l == format!("parent CID:       {cid:08x}")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("parent:") && l.ends_with("base.vmdk")),
        "{table}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(&["disk", "info", "--json", s(&child)])).unwrap();
    assert_eq!(j["parent_cid"], format!("{cid:08x}"));
    assert!(j["parent"].as_str().unwrap().ends_with("base.vmdk"), "{j}");
}

#[test]
fn convert_takes_the_format_from_the_output_name() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.vmdk");
    let data = sparse_disk(&src);
    let is_vmdk = |p: &Path| std::fs::read(p).unwrap().starts_with(b"KDMV");
    for name in ["out.raw", "out.img", "OUT.RAW"] {
        let out = t.path().join(name);
        ok(&["disk", "convert", s(&src), s(&out)]);
        let b = std::fs::read(&out).unwrap();
        assert_eq!(b.len() as u64, 96 * MIB, "{name} is a raw image");
        assert!(b[MIB as usize..][..data.len()] == data[..], "{name}");
    }
    let out = t.path().join("out.vmdk");
    ok(&["disk", "convert", s(&src), s(&out)]);
    assert!(is_vmdk(&out));
    assert_eq!(
        Vmdk::open(&out, OpenMode::ReadOnly)
            .unwrap()
            .info()
            .subformat,
        Subformat::MonolithicSparse
    );
    // An explicit --type wins over the name.
    let out = t.path().join("really-a-vmdk.raw");
    ok(&[
        "disk",
        "convert",
        "--type",
        "monolithicSparse",
        s(&src),
        s(&out),
    ]);
    assert!(is_vmdk(&out));
    let out = t.path().join("flat.vmdk");
    ok(&["disk", "convert", "--type", "raw", s(&src), s(&out)]);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 96 * MIB);
    // A name that says nothing is refused, and nothing is written.
    for name in ["out.qcow2", "out"] {
        let out = t.path().join(name);
        let e = fails(&["disk", "convert", s(&src), s(&out)]);
        assert!(
            e.contains("cannot tell the target format") && e.contains("--type raw"),
            "{e}"
        );
        assert!(!out.exists(), "{name} was written");
    }
}

#[test]
fn unclean_shutdown_alone_is_a_notice() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("d.vmdk");
    sparse_disk(&disk);
    // What a host crash leaves when the tables were consistent: the flag, nothing else.
    let set_flag = |p: &Path| {
        let mut b = std::fs::read(p).unwrap();
        b[72] = 1;
        std::fs::write(p, &b).unwrap();
    };
    set_flag(&disk);
    let out = ok(&["disk", "check", s(&disk)]);
    assert!(
        out.contains("notice: uncleanShutdown is set")
            && out.contains("no problems found")
            && out.contains("vmk disk check --repair"),
        "{out}"
    );
    let info = ok(&["disk", "info", s(&disk)]);
    assert!(info.contains("unclean shutdown: yes"), "{info}");
    if let Some(q) = qemu_img(&["check", "-f", "vmdk", s(&disk)]) {
        assert!(
            q.status.success(),
            "qemu-img check: {}",
            String::from_utf8_lossy(&q.stdout)
        );
    }
    // With a leaked grain too, the disk has problems.
    let mut b = std::fs::read(&disk).unwrap();
    b.extend_from_slice(&[9u8; 65536]);
    std::fs::write(&disk, &b).unwrap();
    let e = fails(&["disk", "check", s(&disk)]);
    assert!(
        e.contains("has problems; run `vmk disk check --repair`"),
        "{e}"
    );
    let out = ok(&["disk", "check", "--repair", s(&disk)]);
    assert!(out.contains("[repaired]"), "{out}");
    assert_eq!(
        std::fs::read(&disk).unwrap()[72],
        0,
        "repair clears the flag"
    );
    let out = ok(&["disk", "check", s(&disk)]);
    assert_eq!(out, "no problems found\n");
}
