//! The host with real Debian guests: a graceful stop through the power button at any point
//! of a guest's life, a power-off at the timeout for a guest that ignores it, and a host
//! shutdown that stops idle VMs in parallel. (Several VMs at once,
//! exit statuses, a crash that stays in its VM and the inventory across host restarts are
//! tested end to end through the daemon and the CLI in `crates/vmk/tests/host.rs`.)
//!
//! The image is built once per run with `vmk_testkit::image::build` (package cache in
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
    stubborn)
        # Ignores SIGTERM (so does every child): the power button ends nothing.
        trap '' TERM
        echo "ignoring-sigterm"
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
        vmk_testkit::image::build(tmp, "host-runtime", Some(SCRIPT), |_| {}).dir
    })
}

/// An image without an init script: an interactive shell on the console, idle.
fn shell_image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        vmk_testkit::image::build(tmp, "host-runtime-shell", None, |_| {}).dir
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

fn wait_console(h: &Host, name: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !console(h, name).contains(text) {
        assert!(Instant::now() < deadline, "{}", console(h, name));
        std::thread::sleep(Duration::from_millis(200));
    }
}

const BUTTON_LINE: &str = "vmk-guest: power button: shutting down";

#[test]
fn stop_ends_a_running_guest_gracefully_through_the_power_button() {
    let tmp = tempfile::tempdir().unwrap();
    let h = open(&tmp.path().join("host"));
    h.create(guest("sleeper", "vmk.test=sleep")).unwrap();
    h.start("sleeper").unwrap();
    wait_console(&h, "sleeper", "sleeping-forever");
    let c = h.console_attach("sleeper").unwrap();
    assert!(String::from_utf8_lossy(&c.history).contains("sleeping-forever"));
    let timeout = Duration::from_secs(120);
    let t0 = Instant::now();
    let i = h.stop("sleeper", timeout).unwrap();
    assert_eq!(i.state, VmState::Stopping);
    let i = wait_end(&h, "sleeper", timeout + Duration::from_secs(30));
    let took = t0.elapsed();
    let log = console(&h, "sleeper");
    // acpid saw KEY_POWER and ran its action, which ended the script with SIGTERM (status
    // 143); /init reported it and powered off, long before the timeout.
    assert!(log.contains("acpid: PWRF/00000080"), "{log}");
    assert!(log.contains(BUTTON_LINE), "{log}");
    assert!(log.contains("vmk-guest: exit-status 143"), "{log}");
    assert_eq!(
        i.last_exit,
        Some(ExitInfo::PoweredOff { status: 143 }),
        "{log}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // The attached console saw the end.
    let mut ended = None;
    while let Ok(ev) = c.events.recv_timeout(Duration::from_secs(10)) {
        if let ConsoleEvent::Ended(e) = ev {
            ended = Some(e);
            break;
        }
    }
    assert_eq!(ended, Some(ExitInfo::PoweredOff { status: 143 }));
    eprintln!("stop of a running guest took {took:?}");
}

#[test]
fn stop_one_second_after_start_is_deferred_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let h = open(&tmp.path().join("host"));
    h.create(guest("early", "vmk.test=sleep")).unwrap();
    let t0 = Instant::now();
    h.start("early").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // The kernel is still booting: no driver for the button yet.
    assert!(!console(&h, "early").contains("vmk-guest: ready"));
    let timeout = Duration::from_secs(240);
    h.stop("early", timeout).unwrap();
    let t1 = Instant::now();
    let i = wait_end(&h, "early", timeout + Duration::from_secs(30));
    let log = console(&h, "early");
    // The press waited for the guest; its init saw it and powered off cleanly (the script
    // was ended by SIGTERM, or not started at all: status 143 either way).
    assert!(log.contains(BUTTON_LINE), "{log}");
    assert!(log.contains("vmk-guest: exit-status 143"), "{log}");
    assert_eq!(
        i.last_exit,
        Some(ExitInfo::PoweredOff { status: 143 }),
        "{log}"
    );
    assert!(!log.contains("cannot load module"), "{log}");
    let ready = log.find("vmk-guest: ready").expect("the guest booted");
    assert!(ready < log.find("vmk-guest: exit-status 143").unwrap());
    for l in log
        .lines()
        .filter(|l| l.contains("vmk-guest") || l.contains("acpid") || l.contains("input"))
    {
        eprintln!("  console: {l}");
    }
    eprintln!(
        "stop 1 s after start: ended {:?} after the stop ({:?} after the start)",
        t1.elapsed(),
        t0.elapsed()
    );
}

#[test]
fn a_guest_that_ignores_the_power_button_is_powered_off_at_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let h = open(&tmp.path().join("host"));
    h.create(guest("stubborn", "vmk.test=stubborn")).unwrap();
    h.start("stubborn").unwrap();
    wait_console(&h, "stubborn", "ignoring-sigterm");
    let timeout = Duration::from_secs(8);
    let t0 = Instant::now();
    h.stop("stubborn", timeout).unwrap();
    let i = wait_end(&h, "stubborn", timeout + Duration::from_secs(30));
    let took = t0.elapsed();
    let log = console(&h, "stubborn");
    assert!(log.contains(BUTTON_LINE), "the guest got the press: {log}");
    assert!(!log.contains("vmk-guest: exit-status"), "{log}");
    // A host power-off, not a guest exit status.
    assert_eq!(i.last_exit, Some(ExitInfo::Killed), "{log}");
    assert!(took >= timeout, "took {took:?}");
    assert!(took < timeout + Duration::from_secs(10), "took {took:?}");
    eprintln!("stop of a guest ignoring the button took {took:?}");
}

#[test]
fn idle_shell_guests_stop_in_seconds_and_a_host_shutdown_stops_them_in_parallel() {
    let tmp = tempfile::tempdir().unwrap();
    let h = open(&tmp.path().join("host"));
    let shell = |name: &str| {
        let mut d = guest(name, "");
        d.boot.image = Some(shell_image().to_path_buf());
        d
    };
    for n in ["sh1", "sh2", "sh3"] {
        h.create(shell(n)).unwrap();
        h.start(n).unwrap();
    }
    for n in ["sh1", "sh2", "sh3"] {
        wait_console(&h, n, "vmk-guest: ready");
    }
    // Let the shells come up (the prompt), then stop one: the button hangs the shell up.
    std::thread::sleep(Duration::from_secs(2));
    let timeout = Duration::from_secs(120);
    let t0 = Instant::now();
    h.stop("sh1", timeout).unwrap();
    let i = wait_end(&h, "sh1", timeout);
    let took = t0.elapsed();
    let log = console(&h, "sh1");
    assert!(log.contains(BUTTON_LINE), "{log}");
    assert!(
        matches!(i.last_exit, Some(ExitInfo::PoweredOff { .. })),
        "{i:?}\n{log}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // The host going down (SIGTERM to `vmk host start`) stops the others in parallel, each
    // through its power button.
    let t1 = Instant::now();
    h.shutdown(Duration::from_secs(30));
    let shutdown = t1.elapsed();
    for n in ["sh2", "sh3"] {
        let i = h.info(n).unwrap();
        assert_eq!(i.state, VmState::Stopped, "{i:?}");
        assert!(
            matches!(i.last_exit, Some(ExitInfo::PoweredOff { .. })),
            "{i:?}\n{}",
            console(&h, n)
        );
        assert!(console(&h, n).contains(BUTTON_LINE));
    }
    assert!(
        shutdown < Duration::from_secs(30),
        "shutdown took {shutdown:?}"
    );
    eprintln!("stop of an idle shell guest took {took:?}; host shutdown with 2 idle VMs took {shutdown:?}");
}
