//! VM disks on a datastore, end to end: two `vmk host start` processes (host IDs 1 and 2)
//! share one volume file.
//!
//! 1. A Debian guest on host 1 writes 8 MiB of random data to its disk, a VMDK at
//!    `[ds1] vm1/disk.vmdk`; after it powers off, this test reads the same VMDK back from
//!    the datastore (mounted as host 3) and the sha256 matches what the guest printed.
//! 2. While a VM on host 1 runs with that disk, a VM on host 2 using it is refused with
//!    `locked ... by host 1 since ...` and does not start.
//! 3. Host 1 is killed (-9) while its VM writes the disk; after the lease timeout host 2
//!    takes the disk over (replaying host 1's journal) and its VM starts and writes.
//!    `vmk disk check --repair` fixes what the kill left in the VMDK (it may leak grains),
//!    and `vmk datastore fsck` finds the volume clean at the end.
//!
//! Needs Debian's mirror (or a warm image cache) like the other guest tests.

mod common;
mod daemon;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::Daemon;
use serde_json::Value;
use vmk_machine::datastore::DatastoreStorage;
use vmk_vmdk::{OpenMode, Vmdk};
use vmk_vmfs::{Datastore, MountOptions};

const SCRIPT: &str = r#"
mode=
for w in $(cat /proc/cmdline); do
    case "$w" in vmk.mode=*) mode="${w#vmk.mode=}" ;; esac
done
case "$mode" in
write)
    dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null || exit 10
    dd if=/tmp/data of=/dev/vda bs=1M seek=4 2>/dev/null || exit 11
    sync
    echo "ds-test: wrote $(sha256sum < /tmp/data)"
    exit 0
    ;;
hold)
    # Keeps writing (and flushing) until the host is killed under it.
    i=0
    while :; do
        dd if=/dev/urandom of=/dev/vda bs=64k count=4 seek=$(( (i * 7) % 1000 )) 2>/dev/null
        sync
        [ $i = 3 ] && echo "ds-test: holding the disk"
        i=$((i + 1))
    done
    ;;
esac
exit 99
"#;

/// Lease timeout of the test volume (ms): a dead host's disk is free after this.
const LEASE_MS: u64 = 2000;

fn vmk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(args)
        .output()
        .expect("run vmk")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A host with datastore `ds1` on `vol` as host `host_id`, and a datastore `broken` whose
/// volume does not exist.
fn start_host(dir: &Path, vol: &Path, host_id: u32) -> Daemon {
    Daemon::start(
        dir,
        &format!(
            "\n[[datastore]]\nname = \"ds1\"\ndevice = \"{}\"\nhost_id = {host_id}\n\n[[datastore]]\nname = \"broken\"\ndevice = \"{}\"\n",
            vol.display(),
            dir.join("no-such-volume.img").display(),
        ),
        // Mounting waits for the datastore's lease protocol.
        Duration::from_secs(60),
    )
}

fn define(dir: &Path, image: &Path, name: &str, mode: &str, disk: &str) -> String {
    let toml = format!(
        "name = \"{name}\"\ncpus = 1\nmemory = \"256M\"\n\n[boot]\nimage = \"{}\"\nappend = \"console=ttyS0 earlycon=sbi vmk.mode={mode}\"\n\n[[disk]]\npath = \"{disk}\"\n",
        image.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("write VM definition");
    path.to_string_lossy().into_owned()
}

fn sha256(data: &[u8]) -> String {
    let tmp = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(tmp.path(), data).expect("write");
    let out = Command::new("sha256sum")
        .arg(tmp.path())
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_guest_writes_a_vmdk_on_a_datastore_and_a_second_host_cannot_take_it_until_the_first_dies() {
    let image = common::build_image("ds-disk", SCRIPT, &[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let vol = root.join("vol.img");
    let vols = vol.to_string_lossy().into_owned();
    ok(
        vmk(&[
            "datastore",
            "create",
            "--size",
            "1G",
            "--label",
            "ds1",
            "--lease-timeout-ms",
            &LEASE_MS.to_string(),
            &vols,
        ]),
        "datastore create",
    );
    let disk = "[ds1] vm1/disk.vmdk";
    ok(
        vmk(&[
            "disk",
            "create",
            "--size",
            "64M",
            disk,
            "--datastore-device",
            &vols,
        ]),
        "disk create",
    );

    // 1. Host 1: a guest writes; the host reads the same bytes back from the datastore.
    let a = start_host(&root.join("a"), &vol, 1);
    let info: Value =
        serde_json::from_str(&a.vmk(&["host", "info", "--json"])).expect("host info JSON");
    let ds = info["datastores"]
        .as_array()
        .expect("datastores in host info");
    assert_eq!(ds[0]["state"], "mounted", "{info}");
    assert_eq!(ds[0]["host_id"], 1, "{info}");
    assert_eq!(ds[1]["state"], "error", "{info}");
    assert!(
        ds[1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no-such-volume"),
        "{info}"
    );
    // Validation knows the datastores: a missing file and an unknown datastore are refused.
    for (bad, why) in [
        ("[ds1] vm1/none.vmdk", "no such file"),
        ("[nope] vm1/disk.vmdk", "no datastore named 'nope'"),
        ("[broken] vm1/disk.vmdk", "not mounted"),
    ] {
        let def = define(root, &image, "bad", "write", bad);
        let out = a.vmk_raw(&["vm", "create", &def]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{bad}: {err}");
    }
    a.vmk(&[
        "vm",
        "create",
        &define(root, &image, "writer", "write", disk),
    ]);
    a.vmk(&["vm", "start", "writer"]);
    let v = a
        .wait_ended(&["writer"], Duration::from_secs(600))
        .remove(0);
    assert_eq!(v["last_exit"]["status"], 0, "{v}\n{}", a.console("writer"));
    let console = a.console("writer");
    let wrote = console
        .lines()
        .find_map(|l| l.strip_prefix("ds-test: wrote "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no 'wrote' line:\n{console}"))
        .to_string();
    assert_eq!(wrote.len(), 64, "{console}");
    {
        // This process as host 3 on the same volume, while host 1 stays mounted.
        let ds = Datastore::mount(
            vmk_vmfs::open_device(&vols, false).expect("open the volume"),
            &MountOptions {
                host_id: Some(3),
                ..MountOptions::default()
            },
        )
        .expect("mount as host 3");
        let st = Arc::new(DatastoreStorage::new("ds1", Arc::new(ds)));
        let mut d = Vmdk::open_on(st.clone(), Path::new(disk), OpenMode::ReadOnly)
            .expect("open the VMDK on the datastore");
        let mut buf = vec![0u8; 8 << 20];
        d.read_at(4 << 20, &mut buf).expect("read the guest's data");
        let read = sha256(&buf);
        eprintln!("guest wrote sha256 {wrote}, host read back {read}");
        assert_eq!(read, wrote, "the data read back from the datastore differs");
        // The VM closed its disk cleanly.
        drop(d);
        let rep = Vmdk::check_on(st, Path::new(disk), false).expect("check");
        assert!(rep.is_clean(), "{rep}");
    }

    // 2. One writer: host 1 runs a VM on the disk; host 2's VM on it is refused. A host
    //    gives a disk to one of its VMs at a time: a second VM of host 1 on it is refused
    //    at create, naming the first, until that one is deleted.
    let out = a.vmk_raw(&[
        "vm",
        "create",
        &define(root, &image, "holder", "hold", disk),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is a disk of VM 'writer'"),
        "{}: {err}",
        out.status
    );
    a.vmk(&["vm", "delete", "writer"]);
    a.vmk(&[
        "vm",
        "create",
        &define(root, &image, "holder", "hold", disk),
    ]);
    a.vmk(&["vm", "start", "holder"]);
    a.wait_console(
        "holder",
        "ds-test: holding the disk",
        Duration::from_secs(300),
    );
    let b = start_host(&root.join("b"), &vol, 2);
    b.vmk(&[
        "vm",
        "create",
        &define(root, &image, "taker", "write", disk),
    ]);
    let out = b.vmk_raw(&["vm", "start", "taker"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second host started the VM: {err}"
    );
    assert!(
        err.contains("locked exclusive by host 1 since"),
        "the refusal must say who holds the disk: {err}"
    );
    eprintln!("host 2 refused: {}", err.trim());
    assert_ne!(b.info("taker")["state"], "running");

    // 3. Host 1 dies: after the lease timeout host 2 takes the disk over.
    let killed = Instant::now();
    drop(a); // SIGKILL
    let t = Instant::now();
    loop {
        let out = b.vmk_raw(&["vm", "start", "taker"]);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("locked"), "{err}");
        assert!(
            t.elapsed() < Duration::from_millis(LEASE_MS * 10),
            "host 2 never took the disk over: {err}\nhost log:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = killed.elapsed();
    eprintln!("host 2 took the disk over {took:?} after host 1 was killed");
    assert!(took >= Duration::from_millis(LEASE_MS), "{took:?}");
    let v = b.wait_ended(&["taker"], Duration::from_secs(600)).remove(0);
    assert_eq!(v["last_exit"]["status"], 0, "{v}\n{}", b.console("taker"));
    b.stop();

    // `vmk run` mounts the datastore for one VM (a host ID of its own, 4).
    let out = Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(["run", "--memory", "256M", "--image"])
        .arg(&image)
        .args([
            "--disk",
            disk,
            "--datastore",
            &format!("ds1={vols},host-id=4"),
        ])
        .args(["--append", "console=ttyS0 vmk.mode=write"])
        .output()
        .expect("vmk run");
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && console.contains("ds-test: wrote "),
        "vmk run with a datastore disk: {}\n{console}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // What the kill left in the VMDK (leaked grains at worst) is repaired; then it is clean.
    let rep = ok(
        vmk(&[
            "disk",
            "check",
            "--repair",
            disk,
            "--datastore-device",
            &vols,
        ]),
        "disk check --repair",
    );
    eprintln!("disk check --repair after the kill:\n{rep}");
    let rep = ok(
        vmk(&["disk", "check", disk, "--datastore-device", &vols]),
        "disk check",
    );
    assert!(rep.contains("no problems found"), "{rep}");

    let fsck = ok(vmk(&["datastore", "fsck", &vols]), "datastore fsck");
    assert!(fsck.contains("clean"), "{fsck}");
}
