//! The host with a real Debian guest: a graceful stop through SysRq. (Several VMs at once,
//! exit statuses, a crash that stays in its VM and the inventory across host restarts are
//! tested end to end through the daemon and the CLI in `crates/vmk/tests/host.rs`.)
//!
//! The image is built once per run with `vmk_image::build_image` (package cache in
//! `$VMK_CACHE` or ~/.cache/vmk; needs Debian's mirror or a warm cache). Its init script
//! reads what to do from the kernel command line (`vmk.test=`, `vmk.status=`), so one image
//! serves every VM. Each VM has 256 MiB and one vCPU; a boot takes ~10 s here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vmk_api::model::*;
use vmk_host::host_api::{ConsoleEvent, HostApi};
use vmk_host::runtime::Host;

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
fn stop_ends_a_guest_gracefully_through_sysrq() {
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
