//! `vmk disk create|info|check` on a datastore and `vmk datastore mount` (FUSE), through the
//! binary. No guest, no network.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod cli_support;
use cli_support::{ok, vmk};

fn err(args: &[&str]) -> String {
    let out = vmk(args);
    assert!(!out.status.success(), "vmk {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn volume(dir: &Path) -> String {
    let vol = dir.join("vol.img").to_string_lossy().into_owned();
    ok(&[
        "datastore",
        "create",
        "--size",
        "1G",
        "--label",
        "ds1",
        "--lease-timeout-ms",
        "2000",
        &vol,
    ]);
    vol
}

#[test]
fn disks_on_a_datastore_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = volume(tmp.path());
    let dev = ["--datastore-device", vol.as_str()];
    let thin = "[ds1] vm1/thin.vmdk";
    let ez = "[ds1] vm1/ez.vmdk";
    let split = "[ds1] vm2/split.vmdk";
    let create = |p: &str, ty: &str| {
        let mut a = vec!["disk", "create", "--size", "96M", "--type", ty, p];
        a.extend(dev);
        ok(&a)
    };
    assert!(create(thin, "monolithicSparse").contains("created [ds1] vm1/thin.vmdk"));
    assert!(create(ez, "eagerZeroedThick").contains("eager-zeroed"));
    create(split, "twoGbMaxExtentFlat");
    // Thin sparse file, eager-zeroed flat extent ('e'), thin split extent.
    let ls = ok(&["datastore", "ls", &format!("{vol}:/vm1")]);
    let line = |name: &str| {
        ls.lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{ls}"))
            .to_string()
    };
    let ezf = line("ez-flat.vmdk");
    assert!(ezf.starts_with('e'), "{ezf}");
    let alloc: Vec<u64> = ezf
        .split_whitespace()
        .skip(1)
        .take(2)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(alloc, vec![96 << 20, 96 << 20], "{ezf}");
    let t = line("thin.vmdk");
    assert!(t.starts_with('-'), "{t}");
    let allocated: u64 = t.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(allocated < 1 << 20, "a new sparse disk is thin: {t}");
    for p in [thin, ez, split] {
        let mut a = vec!["disk", "info", p];
        a.extend(dev);
        let info = ok(&a);
        assert!(info.contains("(100663296 bytes)"), "{info}");
        let mut a = vec!["disk", "check", p];
        a.extend(dev);
        assert!(ok(&a).contains("no problems found"));
    }
    // Grow: the flat extent file on the datastore grows with the disk.
    let mut a = vec!["disk", "grow", "--size", "200M", split];
    a.extend(dev);
    ok(&a);
    let mut a = vec!["disk", "info", "--json", split];
    a.extend(dev);
    let info: serde_json::Value = serde_json::from_str(&ok(&a)).unwrap();
    assert_eq!(info["virtual_size"], 209715200, "{info}");
    assert_eq!(info["create_type"], "twoGbMaxExtentFlat", "{info}");
    assert_eq!(info["extents"][0]["file_size"], 209715200, "{info}");
    // Clear errors.
    let e = err(&["disk", "create", "--size", "1M", "[ds1] vm1/x.vmdk"]);
    assert!(e.contains("--datastore-device"), "{e}");
    let mut a = vec!["disk", "create", "--size", "1M", thin];
    a.extend(dev);
    assert!(err(&a).contains("already exists"));
    let junk = tmp.path().join("junk.img");
    std::fs::write(&junk, vec![7u8; 1 << 20]).unwrap();
    let e = err(&[
        "disk",
        "info",
        thin,
        "--datastore-device",
        &junk.to_string_lossy(),
    ]);
    assert!(
        e.contains("datastore 'ds1'") && e.contains("not a vmk datastore"),
        "{e}"
    );
    let e = err(&["disk", "info", "/tmp/x.vmdk", "--datastore-device", &vol]);
    assert!(e.contains("is for a datastore path"), "{e}");
    let e = err(&[
        "disk",
        "create",
        "--size",
        "1M",
        "--type",
        "eagerZeroedThick",
        "/tmp/x.vmdk",
    ]);
    assert!(e.contains("on a datastore"), "{e}");
    let fsck = ok(&["datastore", "fsck", &vol]);
    assert!(fsck.contains("clean"), "{fsck}");
}

#[test]
fn fuse_mount_shows_the_files_read_only() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse on this machine");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let vol = volume(tmp.path());
    let data: Vec<u8> = (0..3_000_001u32).map(|i| (i * 7 % 253) as u8).collect();
    let src = tmp.path().join("blob");
    std::fs::write(&src, &data).unwrap();
    ok(&["datastore", "mkdir", &format!("{vol}:/vm1")]);
    ok(&[
        "datastore",
        "cp",
        &src.to_string_lossy(),
        &format!("{vol}:/vm1/blob"),
    ]);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(["datastore", "mount", &vol])
        .arg(&mnt)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !mnt.join("vm1").exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "vmk datastore mount exited {st}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(t.elapsed() < Duration::from_secs(10), "not mounted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let back = std::fs::read(mnt.join("vm1/blob")).unwrap();
    assert!(back == data, "the file read through FUSE differs");
    let names: Vec<String> = std::fs::read_dir(mnt.join("vm1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["blob"]);
    let w = std::fs::write(mnt.join("vm1/new"), b"x").unwrap_err();
    assert_eq!(w.raw_os_error(), Some(libc::EROFS), "{w}");
    // SIGTERM unmounts and ends the process.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(
        !mnt.join("vm1").exists(),
        "still mounted after the process ended"
    );
}

/// ls, mkdir, rm and cp all name a place in the datastore as DEV:/PATH; the older
/// `DEV PATH` of ls/mkdir/rm still works, and mixing the two is refused with the new form.
#[test]
fn datastore_paths_are_dev_colon_path() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = volume(tmp.path());
    let at = |p: &str| format!("{vol}:{p}");
    ok(&["datastore", "mkdir", "-p", &at("/a/b")]);
    let blob = tmp.path().join("blob");
    std::fs::write(&blob, vec![5u8; 70_000]).unwrap();
    ok(&["datastore", "cp", &blob.to_string_lossy(), &at("/a/b")]);
    let ls = ok(&["datastore", "ls", &at("/a/b")]);
    let header: Vec<&str> = ls.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["T", "SIZE", "ALLOCATED", "MODIFIED", "NAME"],
        "ls has a header:\n{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with('-') && l.ends_with("  blob")),
        "{ls}"
    );
    assert_eq!(ok(&["datastore", "ls", &vol, "/a/b"]), ls, "the older form");
    let root = ok(&["datastore", "ls", &vol]);
    assert!(root.lines().any(|l| l.ends_with("  a/")), "{root}");
    let back = tmp.path().join("back");
    ok(&["datastore", "cp", &at("/a/b/blob"), &back.to_string_lossy()]);
    assert_eq!(std::fs::read(&back).unwrap(), vec![5u8; 70_000]);
    ok(&["datastore", "rm", &at("/a/b/blob")]);
    assert!(!ok(&["datastore", "ls", &at("/a/b")]).contains("blob"));
    ok(&["datastore", "rm", &vol, "/a/b"]);

    let e = err(&["datastore", "ls", &at("/a"), "/b"]);
    assert!(e.contains("vmk datastore ls DEV:/PATH"), "{e}");
    let e = err(&["datastore", "rm", &vol]);
    assert!(e.contains("vmk datastore rm DEV:/PATH"), "{e}");
    let help = ok(&["datastore", "ls", "--help"]);
    assert!(help.contains("DEV:/PATH"), "{help}");
}
