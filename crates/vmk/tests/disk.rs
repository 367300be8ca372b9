//! A Debian guest formats a virtual disk with ext4, writes random data and its sha256, and
//! powers off; a second boot mounts the disk and checks the data. The disk is a raw file
//! and a VMDK created by `vmk disk create`; `qemu-img check` must find the VMDK clean.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;

const SCRIPT: &str = r#"
mode=
for w in $(cat /proc/cmdline); do
    case "$w" in vmk.mode=*) mode="${w#vmk.mode=}" ;; esac
done
echo "disk-test: serial $(cat /sys/block/vda/serial) sectors $(cat /sys/block/vda/size)"
mkdir -p /mnt
if [ "$mode" = write ]; then
    mkfs.ext4 -q -F /dev/vda || exit 10
    mount -t ext4 /dev/vda /mnt || exit 11
    dd if=/dev/urandom of=/mnt/data bs=1M count=16 2>/dev/null || exit 12
    sha256sum /mnt/data > /mnt/data.sha256 || exit 13
    echo "disk-test: wrote $(cat /mnt/data.sha256)"
    umount /mnt || exit 14
else
    mount -t ext4 -o ro /dev/vda /mnt || exit 21
    echo "disk-test: read $(sha256sum /mnt/data)"
    sha256sum -c /mnt/data.sha256 || exit 22
    umount /mnt
fi
"#;

fn image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::build_image("disk-test", SCRIPT, &["e2fsprogs"]))
}

/// `vmk run` with `disk` (a host path or `[ds] dir/file.vmdk`) and extra arguments.
fn boot_with(disk: &Path, extra: &[&str], mode: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(["run", "--memory", "512M", "--image"])
        .arg(image())
        .arg("--disk")
        .arg(format!("{},serial=vmk-test-disk", disk.display()))
        .args(extra)
        .args(["--append", &format!("console=ttyS0 vmk.mode={mode}")])
        .output()
        .expect("run vmk run");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{mode} boot failed; console:\n{console}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    console
}

fn line<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{console}"))
}

/// Writes through one boot, reads back through another, returns the data's sha256.
fn round_trip(disk: &Path) -> String {
    round_trip_with(disk, &[])
}

fn round_trip_with(disk: &Path, extra: &[&str]) -> String {
    let boot = |disk: &Path, mode: &str| boot_with(disk, extra, mode);
    let w = boot(disk, "write");
    assert_eq!(
        line(&w, "disk-test: serial "),
        "vmk-test-disk sectors 2097152",
        "the guest must see a 1 GiB disk with our serial"
    );
    let written = line(&w, "disk-test: wrote ").to_string();
    let sum = written
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sum.len(), 64, "{written}");
    let r = boot(disk, "read");
    assert!(r.contains("/mnt/data: OK"), "{r}");
    assert_eq!(
        line(&r, "disk-test: read ").split_whitespace().next(),
        Some(sum.as_str())
    );
    sum
}

#[test]
fn ext4_on_a_raw_disk_survives_a_reboot() {
    let disk = Path::new(env!("CARGO_TARGET_TMPDIR")).join("disk-test.raw");
    let _ = std::fs::remove_file(&disk);
    let f = std::fs::File::create(&disk).expect("create raw disk");
    f.set_len(1 << 30).expect("size raw disk");
    drop(f);
    round_trip(&disk);
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is missing: apt-get install qemu-utils (scripts/deps does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-img {args:?} failed:\n{text}");
    text
}

#[test]
fn ext4_on_a_vmdk_survives_a_reboot_and_qemu_img_agrees() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let disk = tmp.join("disk-test.vmdk");
    let raw = tmp.join("disk-test-copy.raw");
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(&raw);
    let out = Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(["disk", "create", "--size", "1G"])
        .arg(&disk)
        .output()
        .expect("run vmk disk create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    round_trip(&disk);
    // The VM closed the disk cleanly: no uncleanShutdown flag, nothing leaked.
    let out = Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(["disk", "check"])
        .arg(&disk)
        .output()
        .expect("run vmk disk check");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("no problems found"),
        "vmk disk check after the VM stopped:
{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = disk.to_string_lossy().into_owned();
    let check = qemu_img(&["check", &d]);
    assert!(check.contains("No errors were found"), "{check}");
    // vmk's reading of the disk, as a raw file, must be what QEMU reads.
    let out = Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(["disk", "convert", "--type", "raw"])
        .arg(&disk)
        .arg(&raw)
        .output()
        .expect("run vmk disk convert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cmp = qemu_img(&["compare", &d, &raw.to_string_lossy()]);
    assert!(cmp.contains("Images are identical"), "{cmp}");
}

/// The same two boots with the disk on a datastore (`[ds1] vm1/disk.vmdk`, mounted by
/// `vmk run --datastore`): ext4 and 16 MiB of random data survive; the VMDK is clean and
/// the volume passes fsck afterwards.
#[test]
fn ext4_on_a_vmdk_on_a_datastore_survives_a_reboot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vol = tmp.path().join("vol.img").to_string_lossy().into_owned();
    let vmk = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vmk"))
            .args(args)
            .output()
            .expect("run vmk");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "vmk {args:?}: {text}");
        text
    };
    vmk(&[
        "datastore",
        "create",
        "--size",
        "2G",
        "--label",
        "ds1",
        &vol,
    ]);
    let disk = "[ds1] vm1/disk.vmdk";
    vmk(&[
        "disk",
        "create",
        "--size",
        "1G",
        disk,
        "--datastore-device",
        &vol,
    ]);
    let ds = format!("ds1={vol}");
    let sum = round_trip_with(Path::new(disk), &["--datastore", &ds]);
    eprintln!("ext4 data on the datastore disk: sha256 {sum}");
    let check = vmk(&["disk", "check", disk, "--datastore-device", &vol]);
    assert!(check.contains("no problems found"), "{check}");
    let fsck = vmk(&["datastore", "fsck", &vol]);
    assert!(fsck.contains("clean"), "{fsck}");
}
