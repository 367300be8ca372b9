//! The host end to end, as a user drives it: `vmk host start` as a daemon process, VMs
//! defined from TOML files and managed with `vmk vm ...` over the API socket, real Debian
//! guests. Needs Debian's mirror (or a warm image cache) like the other guest tests.

mod common;
mod daemon;

use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon::Daemon;
use serde_json::Value;

/// One image for every VM; the kernel command line says what each guest does.
const SCRIPT: &str = r#"
code=0
fault=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmk.test.exit=*) code="${arg#vmk.test.exit=}" ;;
        vmk.test.fault=*) fault="${arg#vmk.test.fault=}" ;;
    esac
done
echo "task says hello, will exit $code"
if [ -n "$fault" ]; then
    echo "about to print the fault trigger"
    echo "$fault"
    echo "task still running after the fault"
fi
exit "$code"
"#;

const APPEND: &str = "console=ttyS0 earlycon=sbi";
/// How long the host may take to create its socket.
const STARTUP: Duration = Duration::from_secs(30);

fn define(
    dir: &Path,
    image: &Path,
    name: &str,
    extra_append: &str,
    fault: Option<&str>,
) -> PathBuf {
    let mut toml = format!("name = \"{name}\"\ncpus = 1\nmemory = \"256M\"\n",);
    if let Some(f) = fault {
        toml.push_str(&format!("test_fault_on_console = \"{f}\"\n"));
    }
    toml.push_str(&format!(
        "\n[boot]\nimage = \"{}\"\nappend = \"{APPEND} {extra_append}\"\n",
        image.display()
    ));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("write VM definition");
    path
}

#[test]
fn three_vms_through_the_daemon_one_crashes_and_the_inventory_survives_a_restart() {
    let image = common::build_image("host-e2e", SCRIPT, &[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let d = Daemon::start(dir, "", STARTUP);

    let fault = "FAULT-TRIGGER-0xdead";
    let defs = [
        define(dir, &image, "alpha", "vmk.test.exit=0", None),
        define(dir, &image, "bravo", "vmk.test.exit=3", None),
        define(
            dir,
            &image,
            "charlie",
            &format!("vmk.test.exit=5 vmk.test.fault={fault}"),
            Some(fault),
        ),
    ];
    for def in &defs {
        d.vmk(&["vm", "create", def.to_str().expect("utf-8 path")]);
    }
    // A duplicate and a hostile name are refused with a message, the host stays up.
    let dup = d.vmk_raw(&["vm", "create", defs[0].to_str().unwrap_or_default()]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("alpha"));
    let bad = d.vmk_raw(&["vm", "start", "../etc"]);
    assert!(!bad.status.success());

    for name in ["alpha", "bravo", "charlie"] {
        d.vmk(&["vm", "start", name]);
    }
    // Starting a running VM makes no sense.
    let again = d.vmk_raw(&["vm", "start", "alpha"]);
    if !again.status.success() {
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("alpha"),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
    }
    d.wait_ended(&["alpha", "bravo", "charlie"], Duration::from_secs(600));

    let a = d.info("alpha");
    assert_eq!(a["state"], "stopped", "{a}");
    assert_eq!(a["last_exit"]["kind"], "poweredoff", "{a}");
    assert_eq!(a["last_exit"]["status"], 0, "{a}");
    let b = d.info("bravo");
    assert_eq!(b["state"], "stopped", "{b}");
    assert_eq!(b["last_exit"]["status"], 3, "{b}");
    let c = d.info("charlie");
    assert_eq!(c["state"], "crashed", "{c}");
    assert_eq!(c["last_exit"]["kind"], "crashed", "{c}");
    let reason = c["last_exit"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("panicked"), "{reason}");

    // The consoles were logged: the guests' own lines, and the crash stopped the third.
    let client = vmk_api::client::Client::unix(&d.socket);
    let log_b = d.console("bravo");
    assert!(log_b.contains("vmk-guest: ready"), "{log_b}");
    assert!(log_b.contains("task says hello, will exit 3"), "{log_b}");
    let log_c = d.console("charlie");
    assert!(
        log_c.contains("about to print the fault trigger"),
        "{log_c}"
    );
    assert!(
        !log_c.contains("task still running after the fault"),
        "{log_c}"
    );

    // Metrics of the finished runs: real work was counted.
    let m = client.vm_metrics("alpha").expect("metrics");
    assert!(m.vcpus[0].instret > 100_000_000, "{m:?}");
    assert!(m.vcpus[0].cpu_time_ns > 500_000_000, "{m:?}");
    assert!(
        m.memory_touched > 16 << 20 && m.memory_touched <= 256 << 20,
        "{m:?}"
    );
    let prom = client.prometheus().expect("/metrics");
    assert!(prom.contains("alpha"), "{prom}");

    let list = d.vmk(&["vm", "list"]);
    for name in ["alpha", "bravo", "charlie"] {
        assert!(list.contains(name), "{list}");
    }
    let host = d.vmk(&["host", "info"]);
    assert!(host.contains("3"), "{host}");
    d.stop();

    // A new host process on the same directory has the same inventory and last exits.
    let d = Daemon::start(dir, "", STARTUP);
    let list: Value = serde_json::from_str(&d.vmk(&["vm", "list", "--json"])).expect("list JSON");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{list}");
    for n in ["alpha", "bravo", "charlie"] {
        assert!(names.contains(&n), "{list}");
    }
    assert_eq!(d.info("bravo")["last_exit"]["status"], 3);
    // After a host restart nothing runs: every VM is stopped, with its last exit kept.
    let c = d.info("charlie");
    assert_eq!(c["state"], "stopped", "{c}");
    assert_eq!(c["last_exit"]["kind"], "crashed", "{c}");
    // A stopped VM can be deleted; its definition is gone for good.
    d.vmk(&["vm", "delete", "alpha"]);
    let gone = d.vmk_raw(&["vm", "info", "alpha"]);
    assert!(!gone.status.success());
    d.stop();
}

/// Stop as a user meets it: `vmk vm stop` one second after `vmk vm start` (the guest is
/// still booting) is carried out once the guest can act on its power button, and SIGTERM
/// to the host stops idle VMs in parallel, each through its power button, in seconds.
#[test]
fn vm_stop_during_boot_and_host_sigterm_end_vms_through_the_power_button() {
    let image = common::build_image("host-idle", "echo idling\nwhile :; do sleep 1; done\n", &[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let d = Daemon::start(dir, "", STARTUP);
    for name in ["early", "idle1", "idle2"] {
        let def = define(dir, &image, name, "", None);
        d.vmk(&["vm", "create", def.to_str().expect("utf-8 path")]);
    }
    d.vmk(&["vm", "start", "early"]);
    std::thread::sleep(Duration::from_secs(1));
    let t = std::time::Instant::now();
    d.vmk(&["vm", "stop", "early"]);
    let early_took = t.elapsed();
    let e = d.info("early");
    let log = d.console("early");
    assert_eq!(e["state"], "stopped", "{e}\n{log}");
    assert_eq!(e["last_exit"]["kind"], "poweredoff", "{e}\n{log}");
    assert_eq!(e["last_exit"]["status"], 143, "{e}\n{log}");
    assert!(
        log.contains("vmk-guest: power button: shutting down"),
        "{log}"
    );
    assert!(!log.contains("cannot load module"), "{log}");

    for name in ["idle1", "idle2"] {
        d.vmk(&["vm", "start", name]);
    }
    for name in ["idle1", "idle2"] {
        d.wait_console(name, "idling", Duration::from_secs(300));
    }
    let t = std::time::Instant::now();
    d.stop();
    let sigterm_took = t.elapsed();
    assert!(
        sigterm_took < Duration::from_secs(15),
        "SIGTERM took {sigterm_took:?}"
    );
    let d = Daemon::start(dir, "", STARTUP);
    for name in ["idle1", "idle2"] {
        let i = d.info(name);
        let log = d.console(name);
        assert_eq!(i["last_exit"]["kind"], "poweredoff", "{i}\n{log}");
        assert_eq!(i["last_exit"]["status"], 143, "{i}\n{log}");
        assert!(
            log.contains("vmk-guest: power button: shutting down"),
            "{log}"
        );
    }
    d.stop();
    eprintln!("vmk vm stop 1 s after start took {early_took:?}; SIGTERM with 2 idle VMs took {sigterm_took:?}");
}

/// The network through the daemon and the CLI, no guests: vSwitch, TAP uplink (as root),
/// port group with shaping, a policy change, hostile input refused with the reason, a VM
/// whose NIC names a missing port group refused, and everything back after a restart.
#[test]
fn network_configuration_through_the_daemon_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0 && Path::new("/dev/net/tun").exists();
    let tap = format!("vmkd{}", std::process::id() % 100_000);
    let d = Daemon::start(tmp.path(), "", STARTUP);
    d.vmk(&["vswitch", "add", "sw0", "--mtu", "9000"]);
    if root {
        d.vmk(&["uplink", "add", "--vswitch", "sw0", "--tap", &tap]);
    } else {
        eprintln!("(not root: no TAP uplink in this run)");
    }
    d.vmk(&[
        "portgroup",
        "add",
        "lan",
        "--vswitch",
        "sw0",
        "--vlan",
        "10",
        "--shaping",
        "8M,10M,64K",
    ]);
    d.vmk(&["portgroup", "set", "lan", "--promiscuous", "accept"]);
    for (args, says) in [
        (
            &["vswitch", "add", "big", "--mtu", "10000"][..],
            "MTU 10000",
        ),
        (
            &[
                "portgroup",
                "add",
                "p",
                "--vswitch",
                "sw0",
                "--vlan",
                "4096",
            ],
            "VLAN 4096",
        ),
        (
            &["portgroup", "add", "p", "--vswitch", "nope"],
            "no vSwitch named 'nope'",
        ),
        (&["vswitch", "remove", "sw0"], "still has port groups (lan)"),
    ] {
        let out = d.vmk_raw(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    let def = tmp.path().join("n.toml");
    let kernel = env!("CARGO_BIN_EXE_vmk");
    std::fs::write(
        &def,
        format!("name = \"n\"\n[boot]\nkernel = \"{kernel}\"\n[[nic]]\nportgroup = \"wan\"\n"),
    )
    .unwrap();
    let out = d.vmk_raw(&["vm", "create", def.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no port group named 'wan'"),
        "{err}"
    );
    d.stop();

    let d = Daemon::start(tmp.path(), "", STARTUP);
    let list = d.vmk(&["portgroup", "list"]);
    let lan = list
        .lines()
        .find(|l| l.starts_with("lan"))
        .unwrap_or_default();
    assert!(
        lan.contains("sw0") && lan.contains(" 10 ") && lan.contains("accept"),
        "{list}"
    );
    assert!(lan.contains("8000000/10000000 bit/s, 65536 B"), "{list}");
    let switches = d.vmk(&["vswitch", "list"]);
    assert!(switches.contains("sw0  mtu 9000"), "{switches}");
    if root {
        assert!(
            switches.contains(&format!("uplink {tap} (tap)")),
            "{switches}"
        );
        assert!(!switches.contains("error"), "{switches}");
    }
    let net: Value = serde_json::from_str(&d.vmk(&["network", "--json"])).unwrap();
    assert_eq!(net["portgroups"][0]["config"]["vlan"], 10);
    d.stop();
}
