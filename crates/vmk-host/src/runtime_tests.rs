//! Lifecycle, inventory and console tests of the host with tiny bare-metal guests
//! (see `testutil`); the Debian guest tests are in tests/runtime.rs.

use super::*;
use crate::host_api::ConsoleEvent;
use crate::testutil::{def, kernel};
use std::sync::Barrier;

fn host(dir: &Path) -> Arc<Host> {
    Host::open(&HostConfig {
        dir: dir.to_path_buf(),
        ..HostConfig::default()
    })
    .expect("open host")
}

/// Waits (up to 20 s) until VM `name` is in state `want`.
fn wait_state(h: &Host, name: &str, want: VmState) -> VmInfo {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = h.info(name).expect("info");
        if i.state == want {
            return i;
        }
        assert!(Instant::now() < deadline, "VM {name} never {want:?}: {i:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn conflict(r: Result<impl std::fmt::Debug, HostError>, words: &[&str]) {
    match r {
        Err(HostError::Conflict(m)) => {
            for w in words {
                assert!(m.contains(w), "'{m}' lacks '{w}'");
            }
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
}

#[test]
fn exit_status_from_console_or_power_off_code() {
    let tmp = tempfile::tempdir().unwrap();
    let k1 = kernel(tmp.path(), "status", |a| {
        a.print("hello\nvmk-guest: exit-status 7\n").poweroff(0);
    });
    let k2 = kernel(tmp.path(), "code", |a| {
        a.print("no marker\n").poweroff(3);
    });
    let h = host(&tmp.path().join("host"));
    h.create(def("a", &k1)).unwrap();
    h.create(def("b", &k2)).unwrap();
    let i = h.start("a").unwrap();
    assert!(
        matches!(i.state, VmState::Running | VmState::Stopped),
        "{i:?}"
    );
    h.start("b").unwrap();
    let a = wait_state(&h, "a", VmState::Stopped);
    let b = wait_state(&h, "b", VmState::Stopped);
    assert_eq!(a.last_exit, Some(ExitInfo::PoweredOff { status: 7 }));
    assert_eq!(b.last_exit, Some(ExitInfo::PoweredOff { status: 3 }));
    assert_eq!((a.boots, b.boots), (1, 1));
    assert!(a.started_at.is_some() && a.ended_at >= a.started_at);
    // The console went to the log.
    let log = h.console_log("a", 1000).unwrap();
    assert_eq!(log, b"hello\nvmk-guest: exit-status 7\n");
    assert_eq!(h.console_log("a", 6).unwrap(), b"tus 7\n");
    // Metrics of an ended run are its final counters.
    let m = h.vm_metrics("a").unwrap();
    assert_eq!(m.vcpus.len(), 1);
    assert!(m.vcpus[0].instret > 20, "{m:?}");
    assert_eq!(m.memory_configured, 16 << 20);
}

#[test]
fn state_machine_refuses_what_makes_no_sense() {
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "idle", |a| {
        a.print("up\n").idle();
    });
    let h = host(&tmp.path().join("host"));
    h.create(def("web1", &k)).unwrap();
    conflict(
        h.stop("web1", Duration::from_secs(1)),
        &["not running", "stopped"],
    );
    conflict(h.poweroff("web1"), &["not running"]);
    conflict(h.reset("web1"), &["not running"]);
    conflict(h.console_attach("web1").map(|_| ()), &["not running"]);
    assert_eq!(h.start("web1").unwrap().state, VmState::Running);
    assert_eq!(h.host_info().vms_running, 1);
    conflict(
        h.start("web1"),
        &["VM 'web1' is running; stop or power it off first"],
    );
    conflict(h.delete("web1"), &["running", "stop or power it off"]);
    // Reset: a new run, still running.
    let i = h.reset("web1").unwrap();
    assert_eq!((i.state, i.boots), (VmState::Running, 2));
    // A stop of a guest that ignores the power button (bare metal) powers off at the
    // timeout, recorded as a host power-off.
    let t0 = Instant::now();
    let i = h.stop("web1", Duration::from_millis(400)).unwrap();
    assert_eq!(i.state, VmState::Stopping);
    conflict(
        h.stop("web1", Duration::from_secs(1)),
        &["already stopping"],
    );
    conflict(h.start("web1"), &["stopping"]);
    conflict(h.delete("web1"), &["stopping"]);
    let i = wait_state(&h, "web1", VmState::Stopped);
    assert!(t0.elapsed() >= Duration::from_millis(400));
    assert_eq!(i.last_exit, Some(ExitInfo::Killed));
    // Poweroff waits for the end.
    h.start("web1").unwrap();
    let i = h.poweroff("web1").unwrap();
    assert_eq!(
        (i.state, i.last_exit),
        (VmState::Stopped, Some(ExitInfo::Killed))
    );
    assert_eq!(i.boots, 3);
    // Delete removes the directory; the name is free again.
    let dir = tmp.path().join("host/vms/web1");
    assert!(dir.join("vm.toml").exists());
    h.delete("web1").unwrap();
    assert!(!dir.exists());
    assert!(matches!(h.info("web1"), Err(HostError::NotFound(_))));
    assert!(matches!(h.delete("web1"), Err(HostError::NotFound(_))));
    assert!(matches!(h.start("../etc"), Err(HostError::Invalid(_))));
    h.create(def("web1", &k)).unwrap();
    assert!(matches!(
        h.create(def("web1", &k)),
        Err(HostError::AlreadyExists(_))
    ));
    assert_eq!(h.info("web1").unwrap().boots, 0);
}

#[test]
fn concurrent_starts_one_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "idle", |a| {
        a.idle();
    });
    let h = host(&tmp.path().join("host"));
    h.create(def("race", &k)).unwrap();
    for round in 0..3 {
        let barrier = Arc::new(Barrier::new(4));
        let results: Vec<_> = (0..4)
            .map(|_| {
                let (h, b) = (h.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    h.start("race")
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, HostError::Conflict(_)), "{e}");
            }
        }
        // Concurrent poweroff + delete: the delete is refused or comes after the poweroff.
        let (h1, h2) = (h.clone(), h.clone());
        let p = std::thread::spawn(move || h1.poweroff("race"));
        let d = std::thread::spawn(move || h2.delete("race"));
        let (p, d) = (p.join().unwrap(), d.join().unwrap());
        assert!(p.is_ok(), "{p:?}");
        match d {
            Err(HostError::Conflict(_)) => {}
            Ok(()) => {
                h.create(def("race", &k)).unwrap();
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.info("race").unwrap().state, VmState::Stopped);
    }
}

#[test]
fn guest_reboot_restarts_and_counts_boots() {
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "reboot", |a| {
        a.print("boot\n").reboot();
    });
    let h = host(&tmp.path().join("host"));
    h.create(def("loop", &k)).unwrap();
    h.start("loop").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.info("loop").unwrap().boots < 5 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.info("loop").unwrap().state, VmState::Running);
    let i = h.poweroff("loop").unwrap();
    assert_eq!(i.state, VmState::Stopped);
    assert_eq!(i.last_exit, Some(ExitInfo::Killed));
    let log = String::from_utf8(h.console_log("loop", 1 << 20).unwrap()).unwrap();
    // The last boot may have been stopped before it printed.
    assert!(log.matches("boot\n").count() >= 4, "{log}");
}

#[test]
fn a_crash_marks_only_that_vm_crashed() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = kernel(tmp.path(), "bad", |a| {
        a.print("about to BOOM\n").idle();
    });
    let good = kernel(tmp.path(), "good", |a| {
        a.idle();
    });
    let h = host(&tmp.path().join("host"));
    let mut d = def("bad", &bad);
    d.test_fault_on_console = Some("BOOM".into());
    h.create(d).unwrap();
    h.create(def("good", &good)).unwrap();
    h.start("good").unwrap();
    h.start("bad").unwrap();
    let i = wait_state(&h, "bad", VmState::Crashed);
    match &i.last_exit {
        Some(ExitInfo::Crashed { reason }) => {
            assert!(reason.contains("panicked"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.info("good").unwrap().state, VmState::Running);
    // A crashed VM can be deleted or started again.
    conflict(h.poweroff("bad"), &["not running", "crashed"]);
    h.delete("bad").unwrap();
    h.poweroff("good").unwrap();
}

#[test]
fn a_machine_that_cannot_be_built_is_marked_crashed() {
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "gone", |a| {
        a.idle();
    });
    let h = host(&tmp.path().join("host"));
    h.create(def("gone", &k)).unwrap();
    std::fs::write(&k, b"not a kernel").unwrap();
    match h.start("gone") {
        Err(HostError::Invalid(m)) => assert!(
            m.contains("cannot start") && m.contains("gone.Image"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    let i = h.info("gone").unwrap();
    assert_eq!(i.state, VmState::Crashed);
    assert_eq!(i.boots, 0);
    assert!(
        matches!(&i.last_exit, Some(ExitInfo::Crashed { reason }) if reason.contains("gone.Image")),
        "{i:?}"
    );
}

#[test]
fn console_attach_sees_output_sends_input_and_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "echo", |a| {
        a.print("ready> ").echo();
    });
    let h = host(&tmp.path().join("host"));
    h.create(def("echo", &k)).unwrap();
    h.start("echo").unwrap();
    // Wait for the prompt to reach the tail, then attach: it is in the history.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.console_log("echo", 100).unwrap() != b"ready> " {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let c = h.console_attach("echo").unwrap();
    assert_eq!(c.history, b"ready> ");
    (c.input)(b"ping");
    let mut got = Vec::new();
    while got != b"ping" {
        match c.events.recv_timeout(Duration::from_secs(10)) {
            Ok(ConsoleEvent::Output(b)) => got.extend(b),
            other => panic!("{other:?} after {got:?}"),
        }
    }
    h.poweroff("echo").unwrap();
    assert_eq!(
        c.events.recv_timeout(Duration::from_secs(10)),
        Ok(ConsoleEvent::Ended(ExitInfo::Killed))
    );
    // Input after the end goes nowhere, quietly.
    (c.input)(b"late");
}

#[test]
fn inventory_persists_across_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let done = kernel(tmp.path(), "done", |a| {
        a.print("vmk-guest: exit-status 4\n").poweroff(0);
    });
    let idle = kernel(tmp.path(), "idle", |a| {
        a.idle();
    });
    {
        let h = host(&dir);
        h.create(def("done", &done)).unwrap();
        h.create(def("idle", &idle)).unwrap();
        let mut auto = def("auto", &idle);
        auto.autostart = true;
        auto.memory = ByteSize(32 << 20);
        h.create(auto).unwrap();
        assert_eq!(h.list().len(), 3);
        h.start("done").unwrap();
        wait_state(&h, "done", VmState::Stopped);
        h.start("idle").unwrap();
        // A second host on the same directory is refused while this one lives.
        match Host::open(&HostConfig {
            dir: dir.clone(),
            ..HostConfig::default()
        }) {
            Err(HostError::Conflict(m)) => assert!(m.contains("in use"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        h.shutdown(Duration::from_millis(300));
        assert_eq!(h.info("idle").unwrap().state, VmState::Stopped);
        // Dropped here: the directory lock is released.
    }
    let meta = std::fs::metadata(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let h = host(&dir);
    let names: Vec<String> = h.list().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["auto", "done", "idle"]);
    let d = h.info("done").unwrap();
    assert_eq!(d.state, VmState::Stopped);
    assert_eq!(d.last_exit, Some(ExitInfo::PoweredOff { status: 4 }));
    assert_eq!(d.boots, 1);
    assert_eq!(d.definition, def("done", &done));
    let i = h.info("idle").unwrap();
    assert_eq!(
        (i.state, i.last_exit),
        (VmState::Stopped, Some(ExitInfo::Killed))
    );
    // Autostart: started by the second host.
    let a = h.info("auto").unwrap();
    assert_eq!((a.state, a.boots), (VmState::Running, 1));
    assert_eq!(a.definition.memory, ByteSize(32 << 20));
    h.shutdown(Duration::from_millis(100));
}

#[test]
fn corrupt_definitions_are_skipped_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let k = kernel(tmp.path(), "k", |a| {
        a.idle();
    });
    {
        let h = host(&dir);
        h.create(def("good", &k)).unwrap();
        h.create(def("broken", &k)).unwrap();
        h.create(def("renamed", &k)).unwrap();
    }
    std::fs::write(
        dir.join("vms/broken/vm.toml"),
        "name = \"broken\"\ncpus = \"many\"\n",
    )
    .unwrap();
    let renamed = dir.join("vms/renamed/vm.toml");
    let text = std::fs::read_to_string(&renamed).unwrap();
    std::fs::write(&renamed, text.replace("\"renamed\"", "\"other\"")).unwrap();
    std::fs::create_dir_all(dir.join("vms/bad name")).unwrap();
    std::fs::write(dir.join("vms/good/state.toml"), "garbage = [").unwrap();
    let h = host(&dir);
    let names: Vec<String> = h.list().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["good"]);
    assert_eq!(
        h.info("good").unwrap().boots,
        0,
        "corrupt state = fresh state"
    );
    let errs = h.inventory_errors();
    assert_eq!(errs.len(), 3, "{errs:?}");
    let broken = errs
        .iter()
        .find(|e| e.path.ends_with("broken/vm.toml"))
        .expect("broken reported");
    assert!(
        broken.message.contains("broken/vm.toml"),
        "{}",
        broken.message
    );
    assert!(broken.message.contains("cpus"), "{}", broken.message);
    assert!(errs.iter().any(|e| e
        .message
        .contains("'other' is not its directory's name 'renamed'")));
    assert!(errs.iter().any(|e| e.path.ends_with("bad name")));
    // The name of an unloadable VM is not silently reused.
    assert!(matches!(
        h.create(def("broken", &k)),
        Err(HostError::AlreadyExists(m)) if m.contains("holds no loadable VM")
    ));
}

#[test]
fn host_info_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "idle", |a| {
        a.print("x").idle();
    });
    let dir = tmp.path().join("host");
    let h = host(&dir);
    h.create(def("m", &k)).unwrap();
    let hi = h.host_info();
    assert_eq!(hi.version, env!("CARGO_PKG_VERSION"));
    assert_eq!((hi.vms, hi.vms_running), (1, 0));
    assert!(hi.cpus >= 1 && hi.memory > 0);
    assert_eq!(hi.dir, dir);
    h.start("m").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = h.vm_metrics("m").unwrap();
        if m.vcpus[0].instret > 0 && m.memory_touched > 0 {
            break m;
        }
        assert!(Instant::now() < deadline, "{m:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(m.state, VmState::Running);
    assert_eq!(m.memory_configured, 16 << 20);
    assert!(m.nics.is_empty() && m.disks.is_empty());
    let all = h.metrics();
    assert_eq!(all.vms.len(), 1);
    assert!(all.rss > 0 && all.cpu_time_ns > 0);
    assert_eq!(all.host.vms_running, 1);
    h.poweroff("m").unwrap();
}

// ---- datastores ----

/// Two hosts in this process (host IDs 1 and 2 on one volume file): a VM's disk on the
/// datastore is locked by the host that runs it; the other host's VM on it is refused with
/// who holds it, and starts once the first VM is powered off. A datastore that cannot be
/// mounted is reported, and the host runs without it.
#[test]
fn datastore_disks_have_one_writer_across_hosts() {
    use vmk_machine::datastore::DatastoreStorage;
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol.img");
    std::fs::File::create(&vol)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let dev = |ro| vmk_vmfs::open_device(&vol.to_string_lossy(), ro).unwrap();
    vmk_vmfs::Datastore::create(
        dev(false),
        &vmk_vmfs::CreateOptions {
            label: "ds1".into(),
            renew_ms: 100,
            lease_timeout_ms: 1000,
            io_timeout_ms: 50,
            ..vmk_vmfs::CreateOptions::default()
        },
    )
    .unwrap();
    {
        let ds = vmk_vmfs::Datastore::mount(dev(false), &Default::default()).unwrap();
        let st = DatastoreStorage::new("ds1", Arc::new(ds));
        vmk_vmdk::Vmdk::create_on(
            Arc::new(st),
            Path::new("[ds1] vm1/disk.vmdk"),
            &vmk_vmdk::CreateOptions::new(8 << 20, vmk_vmdk::Subformat::MonolithicSparse),
        )
        .unwrap()
        .close()
        .unwrap();
    }
    let garbage = tmp.path().join("garbage.img");
    std::fs::write(&garbage, vec![0x5a; 1 << 20]).unwrap();
    let open = |name: &str, id: u32| {
        Host::open(&HostConfig {
            dir: tmp.path().join(name),
            datastores: vec![
                DatastoreConfig {
                    name: "ds1".into(),
                    device: vol.to_string_lossy().into_owned(),
                    host_id: Some(id),
                },
                DatastoreConfig {
                    name: "junk".into(),
                    device: garbage.to_string_lossy().into_owned(),
                    host_id: None,
                },
            ],
            ..HostConfig::default()
        })
        .expect("open host")
    };
    let (a, b) = (open("a", 1), open("b", 2));
    let st = a.host_info().datastores;
    assert_eq!(
        (st[0].state.as_str(), st[0].host_id),
        ("mounted", Some(1)),
        "{st:?}"
    );
    assert_eq!(st[1].state, "error", "{st:?}");
    assert!(
        st[1]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("not a vmk datastore"),
        "{st:?}"
    );
    let k = kernel(tmp.path(), "idle", |a| {
        a.print("up\n").idle();
    });
    let with_disk = |name: &str, path: &str| {
        let mut d = def(name, &k);
        d.disks = vec![DiskDef {
            path: path.into(),
            read_only: false,
            serial: None,
        }];
        d
    };
    for (path, why) in [
        ("[ds1] vm1/none.vmdk", "no such file"),
        ("[junk] vm1/disk.vmdk", "not mounted"),
        ("[ds9] vm1/disk.vmdk", "no datastore named 'ds9'"),
        ("[ds1 vm1/disk.vmdk", "no closing ']'"),
    ] {
        let e = a.create(with_disk("bad", path)).unwrap_err();
        assert!(
            matches!(&e, HostError::Invalid(m) if m.contains(why)),
            "{path}: {e}"
        );
    }
    a.create(with_disk("va", "[ds1] vm1/disk.vmdk")).unwrap();
    // The same disk for a second VM of this host is refused at create, naming the VM that
    // has it (the path is compared as the datastore sees it).
    let e = a
        .create(with_disk("va2", "[ds1] /vm1//disk.vmdk"))
        .unwrap_err();
    assert!(
        matches!(&e, HostError::Conflict(m) if m.contains("is a disk of VM 'va'")),
        "{e}"
    );
    b.create(with_disk("vb", "[ds1] vm1/disk.vmdk")).unwrap();
    a.start("va").unwrap();
    wait_state(&a, "va", VmState::Running);
    // Another host's VM on it is refused at start with the datastore's lock owner, and
    // stays stopped (not crashed: nothing about it is broken).
    let e = b.start("vb").unwrap_err();
    assert!(
        matches!(&e, HostError::Conflict(m) if m.contains("locked exclusive by host 1 since")
            && m.contains("disk 0 '[ds1] vm1/disk.vmdk'")),
        "{e}"
    );
    let vb = b.info("vb").unwrap();
    assert_eq!(
        (vb.state, vb.last_exit, vb.boots),
        (VmState::Stopped, None, 0)
    );
    a.poweroff("va").unwrap();
    b.start("vb").unwrap();
    wait_state(&b, "vb", VmState::Running);
    b.poweroff("vb").unwrap();
}

/// One VM per disk: a second VM on a disk (the same file by another spelling: `..`, a
/// symlink) is refused at create naming the VM that has it; a VM defined with it anyway
/// (e.g. inventories merged, a symlink re-pointed) is refused at start while the holder
/// runs, and stays stopped. Read-only disks are shared by read-only attachments.
#[test]
fn a_disk_in_use_is_refused_naming_its_vm() {
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "idle", |a| {
        a.print("up\n").idle();
    });
    let disks = tmp.path().join("disks");
    std::fs::create_dir_all(tmp.path().join("vms")).unwrap();
    std::fs::create_dir(&disks).unwrap();
    std::fs::write(disks.join("a.img"), vec![0u8; 4096]).unwrap();
    std::fs::write(disks.join("b.img"), vec![0u8; 4096]).unwrap();
    let link = tmp.path().join("link.img");
    std::os::unix::fs::symlink(disks.join("a.img"), &link).unwrap();
    let with = |name: &str, path: PathBuf, read_only: bool| {
        let mut d = def(name, &k);
        d.disks = vec![DiskDef {
            path,
            read_only,
            serial: None,
        }];
        d
    };
    let h = host(&tmp.path().join("host"));
    // Stored normalised (`..` resolved), the user's spelling otherwise kept.
    let unnormal = tmp.path().join("vms/../disks/a.img");
    let i = h.create(with("web1", unnormal, false)).unwrap();
    assert_eq!(i.definition.disks[0].path, disks.join("a.img"));
    assert_eq!(
        h.info("web1").unwrap().definition.disks[0].path,
        disks.join("a.img")
    );
    // At create: any other defined VM (web1 is stopped), through a symlink too.
    for p in [disks.join("a.img"), link.clone()] {
        let e = h.create(with("web2", p.clone(), false)).unwrap_err();
        let m = match &e {
            HostError::Conflict(m) => m.clone(),
            other => panic!("{p:?}: {other:?}"),
        };
        assert!(m.contains("is a disk of VM 'web1'"), "{m}");
        assert!(m.contains(&p.display().to_string()), "{m}");
        assert!(m.contains("own disk"), "{m}");
    }
    assert!(matches!(h.info("web2"), Err(HostError::NotFound(_))));
    // Read-only attachments share; a writer does not join them.
    h.create(with("ro1", disks.join("b.img"), true)).unwrap();
    h.create(with("ro2", link.clone(), true)).unwrap_err(); // web1 writes a.img
    h.create(with("ro2", disks.join("b.img"), true)).unwrap();
    assert!(h.create(with("rw", disks.join("b.img"), false)).is_err());

    // At start: a VM defined with the disk anyway (here: its definition was on another
    // disk, re-pointed through the symlink) is refused while web1 runs, and stays stopped.
    let other = tmp.path().join("other.img");
    std::fs::write(&other, vec![0u8; 4096]).unwrap();
    let link2 = tmp.path().join("link2.img");
    std::os::unix::fs::symlink(&other, &link2).unwrap();
    h.create(with("web3", link2.clone(), false)).unwrap();
    std::fs::remove_file(&link2).unwrap();
    std::os::unix::fs::symlink(disks.join("a.img"), &link2).unwrap();
    h.start("web1").unwrap();
    wait_state(&h, "web1", VmState::Running);
    let e = h.start("web3").unwrap_err();
    match &e {
        HostError::Conflict(m) => {
            assert!(
                m.contains("VM 'web3' cannot start")
                    && m.contains("is a disk of VM 'web1'")
                    && m.contains("which is running")
                    && m.contains("stays stopped"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    let i = h.info("web3").unwrap();
    assert_eq!((i.state, i.last_exit, i.boots), (VmState::Stopped, None, 0));
    // Once web1 is off, web3 starts (and now web1 is the one refused).
    h.poweroff("web1").unwrap();
    h.start("web3").unwrap();
    conflict(
        h.start("web1"),
        &["is a disk of VM 'web3'", "stays stopped"],
    );
    assert_eq!(h.info("web1").unwrap().state, VmState::Stopped);
    h.poweroff("web3").unwrap();
    // Two read-only VMs run together.
    h.start("ro1").unwrap();
    h.start("ro2").unwrap();
    h.poweroff("ro1").unwrap();
    h.poweroff("ro2").unwrap();
}

/// The host names a VM's vCPU threads after it (`<vm>/vcpuN`, cut to 15 bytes).
#[test]
fn vcpus_run_on_the_hosts_scheduler() {
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "idle", |a| {
        a.idle();
    });
    let h = host(&tmp.path().join("host"));
    let mut d = def("schednames", &k);
    d.cpus = 2;
    h.create(d).unwrap();
    h.start("schednames").unwrap();
    let comms = || -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .map(|c| c.trim_end().to_string())
            .collect()
    };
    // The host's workers run the vCPUs; no vCPU has a thread of its own.
    assert!(
        comms().iter().any(|c| c.starts_with("vmk-cpu")),
        "{:?}",
        comms()
    );
    assert!(
        !comms().iter().any(|c| c.starts_with("schedname")),
        "{:?}",
        comms()
    );
    let info = h.host_info();
    assert_eq!(info.cpu.scheduler, "vmk");
    assert_eq!(info.cpu.cpus.len() as u32, crate::sysinfo::cpus());
    assert!(info.cpu.cpu_mhz > 0);
    assert_eq!(
        info.cpu.capacity_mhz,
        info.cpu.cpu_mhz * info.cpu.cpus.len() as u64
    );
    h.poweroff("schednames").unwrap();
}

/// Disk paths are stored normalised: `..` resolved, the user's symlinks kept.
#[test]
fn disk_paths_are_stored_normalised() {
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "idle", |a| {
        a.idle();
    });
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    std::fs::create_dir_all(root.join("vms")).unwrap();
    std::fs::create_dir(root.join("disks")).unwrap();
    std::fs::write(root.join("disks/a.img"), vec![0u8; 4096]).unwrap();
    std::os::unix::fs::symlink(root.join("disks"), root.join("dl")).unwrap();
    let h = host(&root.join("host"));
    let mut d = def("web1", &k);
    d.disks = vec![
        DiskDef {
            path: root.join("vms/../disks/./a.img"),
            read_only: true,
            serial: None,
        },
        DiskDef {
            path: root.join("vms/../dl/a.img"),
            read_only: true,
            serial: Some("second".into()),
        },
    ];
    h.create(d).unwrap_err(); // the same file twice
    let mut d = def("web1", &k);
    d.disks = vec![DiskDef {
        path: root.join("vms/../dl/a.img"),
        read_only: false,
        serial: None,
    }];
    let i = h.create(d).unwrap();
    assert_eq!(i.definition.disks[0].path, root.join("dl/a.img"));
    drop(h);
    // As stored: a new host reads the normalised path.
    let h = host(&root.join("host"));
    assert_eq!(
        h.info("web1").unwrap().definition.disks[0].path,
        root.join("dl/a.img")
    );
}

/// VM NICs: connected to their port group at start with a stable generated MAC (kept
/// across host restarts), a MAC in use refused naming the VM that has it, port groups
/// checked at create and at start, ports and MACs released when the VM ends.
#[test]
fn nics_connect_to_the_host_network() {
    use vmk_api::network::{PortGroupDef, SecurityDef, TeamingDef, VSwitchDef};
    let tmp = tempfile::tempdir().unwrap();
    let k = kernel(tmp.path(), "idle", |a| {
        a.print("up\n").idle();
    });
    let dir = tmp.path().join("host");
    let nic = |pg: &str, mac: Option<&str>| NicDef {
        portgroup: pg.into(),
        mac: mac.map(String::from),
    };
    let generated;
    {
        let h = host(&dir);
        let net = h.network().unwrap();
        net.add_vswitch(VSwitchDef {
            name: "sw0".into(),
            mtu: 1500,
            teaming: TeamingDef::default(),
        })
        .unwrap();
        net.add_portgroup(PortGroupDef {
            name: "pg0".into(),
            vswitch: "sw0".into(),
            vlan: 0,
            security: SecurityDef::default(),
            shaping: None,
        })
        .unwrap();
        let mut a = def("a", &k);
        a.nics = vec![nic("nope", None)];
        let e = h.create(a.clone()).unwrap_err();
        assert!(
            e.to_string().contains("NIC 0: no port group named 'nope'"),
            "{e}"
        );
        a.nics = vec![nic("pg0", None), nic("pg0", Some("02:00:00:00:00:07"))];
        h.create(a).unwrap();
        let mut b = def("b", &k);
        b.nics = vec![nic("pg0", Some("02:00:00:00:00:07"))];
        h.create(b).unwrap();

        let info = h.start("a").unwrap();
        generated = info.nics[0].mac.clone();
        assert!(info.nics[0].generated && generated.starts_with("02:56:4b:"));
        assert_eq!(info.nics[1].mac, "02:00:00:00:00:07");
        wait_state(&h, "a", VmState::Running);
        let ports = net.info().ports;
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert!(ports
            .iter()
            .any(|p| p.name == "a/eth0" && p.counters.mac == generated));
        let m = h.vm_metrics("a").unwrap();
        assert_eq!(m.nics.len(), 2);
        assert_eq!(
            (m.nics[0].portgroup.as_str(), &m.nics[0].mac),
            ("pg0", &generated)
        );

        // b wants a's second MAC: refused, naming a.
        conflict(
            h.start("b"),
            &["02:00:00:00:00:07", "NIC 1 of running VM 'a'"],
        );
        assert_eq!(h.info("b").unwrap().state, VmState::Stopped);
        // The port group has a's ports: it stays.
        assert!(matches!(
            net.remove_portgroup("pg0"),
            Err(HostError::Conflict(_))
        ));
        h.poweroff("a").unwrap();
        wait_state(&h, "a", VmState::Stopped);
        assert!(net.info().ports.is_empty());
        // a's MAC is free again: b starts.
        h.start("b").unwrap();
        h.poweroff("b").unwrap();
        wait_state(&h, "b", VmState::Stopped);
        h.shutdown(Duration::from_secs(5));
    }
    // After a host restart: the network is back and a gets the same MAC.
    let h = host(&dir);
    let info = h.start("a").unwrap();
    assert_eq!(info.nics[0].mac, generated);
    h.poweroff("a").unwrap();
    wait_state(&h, "a", VmState::Stopped);
    // Without its port group a VM does not start, and says why.
    h.network().unwrap().remove_portgroup("pg0").unwrap();
    let e = h.start("a").unwrap_err();
    assert!(
        e.to_string().contains("NIC 0: no port group named 'pg0'"),
        "{e}"
    );
    assert_eq!(h.info("a").unwrap().state, VmState::Stopped);
}

/// `PUT /v1/vms/{name}` against the real host, through the real router: a stopped VM's
/// definition is replaced and read back, kept across a host restart with its last exit;
/// a running VM, a rename, an invalid definition and another VM's disk are refused with
/// the old definition kept (in memory and in vm.toml).
#[test]
fn definitions_are_replaced_through_the_api_and_persist() {
    use crate::fake::TestServer;
    use vmk_api::client::Client;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let done = kernel(tmp.path(), "done", |a| {
        a.print("vmk-guest: exit-status 4\n").poweroff(0);
    });
    let idle = kernel(tmp.path(), "idle", |a| {
        a.print("up\n").idle();
    });
    let disk = tmp.path().join("d.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let cfg = HostConfig {
        dir: dir.clone(),
        socket: tmp.path().join("vmk.sock"),
        ..HostConfig::default()
    };
    let toml = dir.join("vms/web1/vm.toml");
    let edited = {
        let h = Host::open(&cfg).unwrap();
        let server = TestServer::start(h.clone(), &cfg).unwrap();
        let c = Client::unix(server.socket());
        c.create(&def("web1", &done)).unwrap();
        let mut other = def("other", &idle);
        other.disks = vec![DiskDef {
            path: disk.clone(),
            read_only: false,
            serial: None,
        }];
        c.create(&other).unwrap();
        c.start("web1").unwrap();
        let ran = wait_state(&h, "web1", VmState::Stopped);
        assert_eq!(ran.last_exit, Some(ExitInfo::PoweredOff { status: 4 }));

        // Edited while stopped: the answer and a read-back show it; the run is kept.
        let mut new = def("web1", &done);
        new.cpus = 2;
        new.memory = ByteSize(32 << 20);
        new.boot.append = Some("quiet".into());
        let resp = c
            .send(
                "PUT",
                "/v1/vms/web1",
                Some(("application/json", &serde_json::to_vec(&new).unwrap())),
            )
            .unwrap();
        assert_eq!(resp.status, 200, "{}", resp.error_message());
        let answer: VmInfo = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(answer.definition, new);
        let back = c.info("web1").unwrap();
        assert_eq!(back.definition, new);
        assert_eq!(
            (back.state, back.last_exit, back.boots),
            (VmState::Stopped, ran.last_exit.clone(), 1)
        );
        let stored = std::fs::read_to_string(&toml).unwrap();
        assert!(stored.contains("cpus = 2"), "{stored}");

        // Refused: each with its status and a message that says what to do; nothing
        // changes, in memory or on disk.
        let refused = |name: &str, d: &VmDefinition, status: u16, words: &[&str]| {
            let e = c.update(name, d).unwrap_err();
            assert_eq!(e.status(), Some(status), "{e}");
            for w in words {
                assert!(e.to_string().contains(w), "'{e}' lacks '{w}'");
            }
            assert_eq!(c.info("web1").unwrap().definition, new);
            assert_eq!(std::fs::read_to_string(&toml).unwrap(), stored);
        };
        let mut renamed = new.clone();
        renamed.name = "web9".into();
        refused("web1", &renamed, 400, &["cannot be renamed", "'web9'"]);
        let mut bad = new.clone();
        bad.cpus = 0;
        refused("web1", &bad, 400, &["cpus"]);
        let mut no_kernel = new.clone();
        no_kernel.boot.kernel = Some(tmp.path().join("missing.Image"));
        refused("web1", &no_kernel, 400, &["missing.Image"]);
        let mut no_pg = new.clone();
        no_pg.nics = vec![NicDef {
            portgroup: "nope".into(),
            mac: None,
        }];
        refused("web1", &no_pg, 400, &["NIC 0", "port group"]);
        let mut clash = new.clone();
        clash.disks = other.disks.clone();
        refused(
            "web1",
            &clash,
            409,
            &["is a disk of VM 'other'", "unchanged"],
        );
        let e = c.update("nope", &def("nope", &done)).unwrap_err();
        assert_eq!(e.status(), Some(404), "{e}");

        // Running: refused with 409 until it is stopped.
        c.start("other").unwrap();
        wait_state(&h, "other", VmState::Running);
        let mut more = other.clone();
        more.cpus = 2;
        let e = c.update("other", &more).unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        assert!(
            e.to_string().contains("is running") && e.to_string().contains("stop it first"),
            "{e}"
        );
        assert_eq!(c.info("other").unwrap().definition.cpus, 1);
        c.poweroff("other").unwrap();
        // Its own disk is no clash with itself.
        assert_eq!(c.update("other", &more).unwrap().definition.cpus, 2);
        drop(server);
        h.shutdown(Duration::from_millis(100));
        new
    };

    // A new host loads the edited definitions, with the run history.
    let h = host(&dir);
    let i = h.info("web1").unwrap();
    assert_eq!(i.definition, edited);
    assert_eq!(
        (i.state, i.last_exit, i.boots),
        (
            VmState::Stopped,
            Some(ExitInfo::PoweredOff { status: 4 }),
            1
        )
    );
    let o = h.info("other").unwrap();
    assert_eq!(
        (o.definition.cpus, o.last_exit),
        (2, Some(ExitInfo::Killed))
    );
}
