//! The host with real Debian guests: several VMs at once, exit statuses, a crash that stays
//! in its VM, a graceful stop through SysRq, and the inventory across host restarts.
//!
//! The image is built once per run with `vmk_image::build_image` (package cache in
//! `$VMK_CACHE` or ~/.cache/vmk; needs Debian's mirror or a warm cache). Its init script
//! reads what to do from the kernel command line (`vmk.test=`, `vmk.status=`), so one image
//! serves every VM. Each VM has 256 MiB and one vCPU; a boot takes ~10 s here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vmk_host::model::*;
use vmk_host::runtime::Host;

/// The fault hook's text: printed by the script, not part of the kernel command line (the
/// kernel echoes that on the console).
const FAULT_TEXT: &str = "vmk-test-fault-trigger";

const SCRIPT: &str = r#"
mode=
status=0
for w in $(cat /proc/cmdline); do
    case "$w" in
        vmk.test=*) mode="${w#vmk.test=}" ;;
        vmk.status=*) status="${w#vmk.status=}" ;;
    esac
done
case "$mode" in
    hello)
        echo "hello-$status"
        exit "$status"
        ;;
    fault)
        echo "vmk-test-$mode-trigger"
        sleep 5
        echo "still-alive"
        exit 0
        ;;
    sleep)
        echo "sleeping-forever"
        while :; do sleep 1; done
        ;;
esac
echo "unknown mode '$mode'"
exit 99
"#;

fn image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join("host-runtime-image");
        let script = tmp.join("host-runtime-script.sh");
        std::fs::write(&script, SCRIPT).expect("write the init script");
        let mut opts = vmk_image::ImageOptions::new(&dir);
        opts.init_script = Some(script);
        opts.apt_output = vmk_image::AptOutput::Quiet;
        vmk_image::build_image(&opts, &mut |_| {})
            .expect("build the guest image (needs deb.debian.org or a warm cache)");
        dir
    })
}

/// Guest tests boot several VMs each; running two tests' VMs at once on a small host only
/// makes every boot slower, so they take turns.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn open(dir: &Path) -> Arc<Host> {
    Host::open(&HostConfig {
        dir: dir.to_path_buf(),
        ..HostConfig::default()
    })
    .expect("open the host")
}

fn guest(name: &str, append: &str) -> VmDefinition {
    VmDefinition {
        name: name.into(),
        cpus: 1,
        memory: ByteSize(256 << 20),
        autostart: false,
        boot: Boot {
            image: Some(image().to_path_buf()),
            append: Some(format!("console=ttyS0 earlycon=sbi {append}")),
            ..Boot::default()
        },
        disks: vec![],
        nics: vec![],
        resources: Resources::default(),
        test_fault_on_console: None,
    }
}

/// Waits until `name` is no longer starting/running/stopping.
fn wait_end(h: &Host, name: &str, timeout: Duration) -> VmInfo {
    let deadline = Instant::now() + timeout;
    loop {
        let i = h.info(name).expect("info");
        if matches!(i.state, VmState::Stopped | VmState::Crashed) {
            return i;
        }
        if Instant::now() > deadline {
            let log = h.console_log(name, 4000).unwrap_or_default();
            panic!(
                "VM {name} did not end within {timeout:?}: {i:?}\nconsole:\n{}",
                String::from_utf8_lossy(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn console(h: &Host, name: &str) -> String {
    String::from_utf8_lossy(&h.console_log(name, 1 << 20).expect("console log")).into_owned()
}

#[test]
fn three_vms_run_their_scripts_and_the_inventory_survives_a_restart() {
    let _turn = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let names = ["vm1", "vm2", "vm3"];
    {
        let h = open(&dir);
        for (i, n) in names.iter().enumerate() {
            h.create(guest(n, &format!("vmk.test=hello vmk.status={}", i + 1)))
                .expect("create");
        }
        let t0 = Instant::now();
        // Started at once, from three threads.
        let starts: Vec<_> = names
            .iter()
            .map(|n| {
                let h = h.clone();
                let n = n.to_string();
                std::thread::spawn(move || h.start(&n))
            })
            .collect();
        for s in starts {
            let i = s.join().unwrap().expect("start");
            assert_eq!(i.state, VmState::Running, "{i:?}");
        }
        assert_eq!(h.host_info().vms_running, 3);
        for (i, n) in names.iter().enumerate() {
            let info = wait_end(&h, n, Duration::from_secs(300));
            let status = i as i32 + 1;
            assert_eq!(info.state, VmState::Stopped, "{info:?}");
            assert_eq!(
                info.last_exit,
                Some(ExitInfo::PoweredOff { status }),
                "{n}:\n{}",
                console(&h, n)
            );
            assert_eq!(info.boots, 1);
            let log = console(&h, n);
            assert!(log.contains(&format!("\nhello-{status}")), "{log}");
            assert!(log.contains(&format!("vmk-guest: exit-status {status}")));
            assert!(
                log.contains("Linux version 6.12"),
                "kernel banner in the log"
            );
            let m = h.vm_metrics(n).unwrap();
            assert!(m.vcpus[0].instret > 100_000_000, "{m:?}");
            assert!(m.vcpus[0].cpu_time_ns > 1_000_000_000, "{m:?}");
            assert!(m.memory_touched > 16 << 20, "{m:?}");
            assert!(m.memory_touched <= 256 << 20, "{m:?}");
        }
        eprintln!("three guests ran in {:?}", t0.elapsed());
        assert_eq!(h.host_info().vms_running, 0);
    }
    // A host restart: the same three definitions, stopped, their last exits kept.
    let h = open(&dir);
    let list = h.list();
    assert_eq!(
        list.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        names
    );
    for (i, info) in list.iter().enumerate() {
        assert_eq!(info.state, VmState::Stopped);
        assert_eq!(
            info.last_exit,
            Some(ExitInfo::PoweredOff {
                status: i as i32 + 1
            })
        );
        assert_eq!(
            info.definition,
            guest(&info.name, &format!("vmk.test=hello vmk.status={}", i + 1))
        );
    }
    assert!(h.inventory_errors().is_empty());
}

#[test]
fn a_crashing_vm_is_reported_and_the_others_finish() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the fault hook exists in debug builds only");
        return;
    }
    let _turn = serial();
    let tmp = tempfile::tempdir().unwrap();
    let h = open(&tmp.path().join("host"));
    let mut bad = guest("faulty", "vmk.test=fault");
    bad.test_fault_on_console = Some(FAULT_TEXT.into());
    h.create(bad).unwrap();
    h.create(guest("ok1", "vmk.test=hello vmk.status=11"))
        .unwrap();
    h.create(guest("ok2", "vmk.test=hello vmk.status=12"))
        .unwrap();
    for n in ["faulty", "ok1", "ok2"] {
        h.start(n).expect("start");
    }
    let f = wait_end(&h, "faulty", Duration::from_secs(300));
    assert_eq!(f.state, VmState::Crashed);
    match &f.last_exit {
        Some(ExitInfo::Crashed { reason }) => {
            assert!(
                reason.contains("panicked") && reason.contains("fault"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    let log = console(&h, "faulty");
    assert!(!log.contains("still-alive"), "{log}");
    for (n, status) in [("ok1", 11), ("ok2", 12)] {
        let i = wait_end(&h, n, Duration::from_secs(300));
        assert_eq!(i.state, VmState::Stopped);
        assert_eq!(i.last_exit, Some(ExitInfo::PoweredOff { status }));
    }
    // The crashed VM can run again (and crashes again, the same way).
    h.start("faulty").unwrap();
    assert_eq!(
        wait_end(&h, "faulty", Duration::from_secs(300)).state,
        VmState::Crashed
    );
    assert_eq!(h.info("faulty").unwrap().boots, 2);
}

#[test]
fn stop_ends_a_guest_gracefully_through_sysrq() {
    let _turn = serial();
    let tmp = tempfile::tempdir().unwrap();
    let h = open(&tmp.path().join("host"));
    h.create(guest("sleeper", "vmk.test=sleep")).unwrap();
    h.start("sleeper").unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !console(&h, "sleeper").contains("sleeping-forever") {
        assert!(Instant::now() < deadline, "{}", console(&h, "sleeper"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let c = h.console_attach("sleeper").unwrap();
    assert!(String::from_utf8_lossy(&c.history).contains("sleeping-forever"));
    let timeout = Duration::from_secs(60);
    let t0 = Instant::now();
    let i = h.stop("sleeper", timeout).unwrap();
    assert_eq!(i.state, VmState::Stopping);
    let i = wait_end(&h, "sleeper", timeout + Duration::from_secs(30));
    let took = t0.elapsed();
    let log = console(&h, "sleeper");
    // SysRq e ended the script (SIGTERM: status 143); /init reported it and powered off,
    // long before the timeout.
    assert_eq!(
        i.last_exit,
        Some(ExitInfo::PoweredOff { status: 143 }),
        "{log}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(log.contains("sysrq: Terminate All Tasks"), "{log}");
    // The attached console saw the end.
    let mut ended = None;
    while let Ok(ev) = c.events.recv_timeout(Duration::from_secs(10)) {
        if let ConsoleEvent::Ended(e) = ev {
            ended = Some(e);
            break;
        }
    }
    assert_eq!(ended, Some(ExitInfo::PoweredOff { status: 143 }));
    eprintln!("graceful stop took {took:?}");
}
