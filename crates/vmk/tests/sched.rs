//! vmk's CPU scheduler through the real daemon (`vmk host start`) and CLI: shares, limits,
//! changes to a running VM, reservations and the edition's vCPU cap. The guests are tiny
//! kernels that spin (busy vCPUs without Debian's boot), so the figures are the
//! scheduler's, not a guest's.

mod daemon;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daemon::Daemon;
use vmk_api::client::Client;
use vmk_api::model::HostMetrics;

/// A RISC-V Linux Image (64-byte header) whose code is `j .`: one busy vCPU.
fn spin_kernel(dir: &Path) -> PathBuf {
    let mut d = vec![0u8; 64];
    d[0..4].copy_from_slice(&0x0400_006fu32.to_le_bytes()); // j +64
    d[48..53].copy_from_slice(b"RISCV");
    d[56..60].copy_from_slice(b"RSC\x05");
    d.extend_from_slice(&0x0000_006fu32.to_le_bytes()); // j .
    let p = dir.join("spin.Image");
    std::fs::write(&p, d).expect("write kernel");
    p
}

fn create(d: &Daemon, dir: &Path, name: &str, cpus: u32, resources: &str) {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\ncpus = {cpus}\nmemory = \"64M\"\n[boot]\nkernel = \"{}\"\n\
             [resources]\n{resources}\n",
            spin_kernel(dir).display()
        ),
    )
    .expect("write definition");
    d.vmk(&["vm", "create", file.to_str().expect("utf-8 path")]);
}

/// (used, ready, limited) seconds of a VM's vCPUs in `m`.
fn times(m: &HostMetrics, vm: &str) -> (f64, f64, f64) {
    let v = m
        .vms
        .iter()
        .find(|v| v.name == vm)
        .unwrap_or_else(|| panic!("no VM {vm} in the metrics"));
    let s = |f: fn(&vmk_api::model::VcpuMetrics) -> u64| {
        v.vcpus.iter().map(f).sum::<u64>() as f64 / 1e9
    };
    (s(|c| c.cpu_time_ns), s(|c| c.ready_ns), s(|c| c.limited_ns))
}

/// CPU used by each VM over `secs` of wall time, with ready and limited time.
fn measure(c: &Client, vms: &[&str], secs: u64) -> (f64, Vec<(f64, f64, f64)>) {
    let m0 = c.metrics().expect("metrics");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let m1 = c.metrics().expect("metrics");
    let wall = t0.elapsed().as_secs_f64();
    let d = vms
        .iter()
        .map(|vm| {
            let (a, b) = (times(&m0, vm), times(&m1, vm));
            (b.0 - a.0, b.1 - a.1, b.2 - a.2)
        })
        .collect();
    (wall, d)
}

/// Shares 2000:1000 on one CPU give 2:1; a limit of half a CPU's MHz gives half a CPU;
/// a change of a running VM's shares takes effect at once.
#[test]
fn shares_limits_and_live_changes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(tmp.path(), "", Duration::from_secs(20));
    let c = Client::unix(&d.socket);
    let mhz = c.host_info().expect("host info").cpu.cpu_mhz;
    assert!(mhz > 0);
    create(
        &d,
        tmp.path(),
        "big",
        1,
        "cpu_shares = 2000\ncpu_affinity = [0]",
    );
    create(
        &d,
        tmp.path(),
        "small",
        1,
        "cpu_shares = 1000\ncpu_affinity = [0]",
    );
    d.vmk(&["vm", "start", "big"]);
    d.vmk(&["vm", "start", "small"]);
    std::thread::sleep(Duration::from_millis(500));
    let (wall, t) = measure(&c, &["big", "small"], 8);
    let ratio = t[0].0 / t[1].0;
    eprintln!(
        "shares 2000:1000 on CPU 0 over {wall:.1} s: used {:.2} s and {:.2} s (ratio {ratio:.3}), \
         ready {:.2} s and {:.2} s",
        t[0].0, t[1].0, t[0].1, t[1].1
    );
    assert!((ratio - 2.0).abs() <= 0.2, "2:1 shares gave {ratio:.3}");
    // The smaller share waits for CPU 0 about 2/3 of the time.
    assert!(
        t[1].1 > 0.5 * wall,
        "small was ready {:.2} s of {wall:.1} s",
        t[1].1
    );

    // Equal shares, changed while both run: 1:1 at once.
    d.vmk(&["vm", "set", "small", "cpu_shares=2000"]);
    let (_, t) = measure(&c, &["big", "small"], 4);
    let ratio = t[0].0 / t[1].0;
    eprintln!("after cpu_shares=2000 on small: ratio {ratio:.3}");
    assert!((ratio - 1.0).abs() <= 0.1, "equal shares gave {ratio:.3}");
    d.vmk(&["vm", "poweroff", "big"]);
    d.vmk(&["vm", "poweroff", "small"]);

    // Half of one CPU's MHz, alone on a CPU: half a CPU, and the rest shows as limited.
    create(
        &d,
        tmp.path(),
        "capped",
        1,
        &format!("cpu_limit_mhz = {}\ncpu_affinity = [1]", mhz / 2),
    );
    d.vmk(&["vm", "start", "capped"]);
    std::thread::sleep(Duration::from_millis(500));
    let (wall, t) = measure(&c, &["capped"], 8);
    let share = t[0].0 / wall;
    eprintln!(
        "limit {} MHz of {mhz}: used {:.1}% of a CPU, limited {:.2} s of {wall:.1} s",
        mhz / 2,
        share * 100.0,
        t[0].2
    );
    assert!((0.45..=0.55).contains(&share), "used {share:.3} of a CPU");
    // The rest it wanted CPU: held back by the limit (or, on a busy test host, ready while
    // Linux ran something else on CPU 1).
    assert!(
        t[0].2 > 0.1 * wall && t[0].2 + t[0].1 > 0.3 * wall,
        "limited {:.2} s, ready {:.2} s",
        t[0].2,
        t[0].1
    );
    // Lifted while it runs: a whole CPU at once.
    d.vmk(&["vm", "set", "capped", "cpu_limit=none"]);
    let (wall, t) = measure(&c, &["capped"], 3);
    assert!(
        t[0].0 / wall > 0.8,
        "unlimited used {:.3} of a CPU",
        t[0].0 / wall
    );
    d.vmk(&["vm", "poweroff", "capped"]);

    // Per logical CPU: the worker of CPU 0 ran the two VMs.
    let m = c.metrics().expect("metrics");
    let cpu0 = m.pcpus.iter().find(|p| p.cpu == 0).expect("CPU 0");
    assert!(cpu0.used_ns > 7_000_000_000, "{:?}", m.pcpus);
    d.stop();
}

/// Admission control: a reservation that does not fit beside the running VMs' is refused
/// (the VM stays stopped); the edition caps a VM's vCPUs at create and at start.
#[test]
fn reservations_and_edition_caps_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(
        tmp.path(),
        "edition = \"standard\"\n[cpu]\nmhz = 1000\ncpus = [0, 1]\n",
        Duration::from_secs(20),
    );
    let c = Client::unix(&d.socket);
    let info = c.host_info().expect("host info");
    assert_eq!(info.cpu.cpu_mhz, 1000);
    assert_eq!(info.cpu.capacity_mhz, 2000);
    assert_eq!(info.cpu.edition, "standard");
    let text = d.vmk(&["host", "info"]);
    assert!(text.contains("cpu_mhz:   1000"), "{text}");
    let json = d.vmk(&["host", "info", "--json"]);
    assert!(json.contains("\"cpu_mhz\": 1000"), "{json}");

    create(
        &d,
        tmp.path(),
        "r1",
        1,
        "cpu_reservation_mhz = 1200\ncpu_affinity = [0]",
    );
    // 1200 MHz on one vCPU is more than one CPU's 1000 MHz: refused at start, saying so.
    let out = d.vmk_raw(&["vm", "start", "r1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("more than 1 vCPU(s) can use"), "{err}");
    d.vmk(&["vm", "set", "r1", "cpu_reservation=800", "cpu_affinity=any"]);
    d.vmk(&["vm", "start", "r1"]);
    assert_eq!(c.host_info().expect("info").cpu.reserved_mhz, 800);

    create(&d, tmp.path(), "r2", 2, "cpu_reservation_mhz = 1500");
    let out = d.vmk_raw(&["vm", "start", "r2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("does not fit") && err.contains("1200 MHz free"),
        "{err}"
    );
    assert_eq!(d.info("r2")["state"], "stopped");
    // Once r1 is off, r2 fits.
    d.vmk(&["vm", "poweroff", "r1"]);
    d.vmk(&["vm", "start", "r2"]);
    assert_eq!(c.host_info().expect("info").cpu.reserved_mhz, 1500);
    d.vmk(&["vm", "poweroff", "r2"]);

    // The power policy: balanced at start; low-power through the API packs vCPUs and
    // sets the cpufreq governor where the host has one (this one may not: then it says so).
    assert_eq!(info.cpu.power_policy, "balanced");
    let out = d.vmk(&["host", "power", "low-power"]);
    assert!(out.starts_with("power: low-power: "), "{out}");
    assert!(out.contains("packed onto as few CPUs"), "{out}");
    assert!(
        out.contains("cpufreq governor powersave on CPUs") || out.contains("exposes no cpufreq"),
        "{out}"
    );
    assert_eq!(c.host_info().expect("info").cpu.power_policy, "low-power");
    let out = d.vmk_raw(&["host", "power", "turbo"]);
    assert!(!out.status.success());

    // The standard edition: at most 4 vCPUs per VM, refused at create naming the cap.
    let file = tmp.path().join("wide.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"wide\"\ncpus = 5\nmemory = \"64M\"\n[boot]\nkernel = \"{}\"\n",
            spin_kernel(tmp.path()).display()
        ),
    )
    .expect("write");
    let out = d.vmk_raw(&["vm", "create", file.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("standard edition allows at most 4 vCPUs per VM"),
        "{err}"
    );
    d.stop();
}
