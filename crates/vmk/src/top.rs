//! `vmk vm top`: the host's VMs live, like esxtop. Each frame compares two samples of
//! `GET /v1/metrics`: %USED, %RDY, %CSTP, %WAIT and %MLMTD from the scheduler's accounting
//! of the vCPUs (run, ready, co-stopped, idle, held back by the limit), MIPS from
//! instructions retired, disk IOPS and MB/s from the disk counters, over the time between
//! the samples. Like esxtop's VM lines, each is the sum over the VM's vCPUs (a 4-vCPU VM
//! that idles shows %WAIT 400).
//!
//! %USED is esxtop's: host CPU time per wall-clock time, in % of ONE host CPU, not of the
//! host. A VM whose one vCPU is busy shows 100 when it gets a whole host CPU, a VM with two
//! busy vCPUs 200, whatever the host has; the host line shows the host process's %USED
//! next to what its CPUs allow (`of 200` on 2 CPUs). A busy vCPU below 100 did not get a
//! whole host CPU (other threads or processes had it).

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use vmk_api::client::Client;
use vmk_api::model::{HostMetrics, VmMetrics};

use crate::error::CmdError;
use crate::fmt::{fmt_bytes, fmt_duration, state_name};
use crate::term::RawMode;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between frames (fractions allowed).
    #[arg(short = 'd', long = "delay", value_name = "SECS", default_value = "2", value_parser = parse_delay)]
    pub delay: Duration,
    /// Stop after N frames (default: until q, or Ctrl-C).
    #[arg(short = 'n', long = "iterations", value_name = "N")]
    pub iterations: Option<u64>,
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.05..=3600.0).contains(&secs) {
        return Err(format!("the delay must be 0.05 to 3600 seconds, not {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Counter growth between two samples; a counter that went down belongs to a new run and
/// counts from zero.
fn delta(prev: u64, cur: u64) -> u64 {
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

/// Rates of one VM between two samples.
#[derive(Debug, PartialEq)]
pub struct Rates {
    /// %USED: host CPU used by all its vCPUs, in % of one host CPU (100 = one CPU; a VM
    /// with 2 busy vCPUs is at 200).
    pub used_pct: f64,
    /// %RDY, %CSTP, %WAIT, %MLMTD: the same unit.
    pub ready_pct: f64,
    pub costop_pct: f64,
    pub wait_pct: f64,
    pub limited_pct: f64,
    pub mips: f64,
    pub iops: f64,
    /// Disk MB/s (10^6 bytes), reads plus writes.
    pub mbps: f64,
}

pub fn rates(prev: &VmMetrics, cur: &VmMetrics, dt: Duration) -> Rates {
    let secs = dt.as_secs_f64().max(1e-9);
    let sum = |m: &VmMetrics, f: fn(&vmk_api::model::VcpuMetrics) -> u64| -> u64 {
        m.vcpus.iter().map(f).sum()
    };
    let disk = |m: &VmMetrics| -> (u64, u64) {
        m.disks.iter().fold((0, 0), |(ops, bytes), d| {
            (
                ops + d.read_ops + d.write_ops,
                bytes + d.read_bytes + d.write_bytes,
            )
        })
    };
    let cpu_ns = delta(sum(prev, |c| c.cpu_time_ns), sum(cur, |c| c.cpu_time_ns));
    let pct = |f: fn(&vmk_api::model::VcpuMetrics) -> u64| {
        delta(sum(prev, f), sum(cur, f)) as f64 / 1e9 / secs * 100.0
    };
    let instret = delta(sum(prev, |c| c.instret), sum(cur, |c| c.instret));
    let (p_ops, p_bytes) = disk(prev);
    let (c_ops, c_bytes) = disk(cur);
    Rates {
        used_pct: cpu_ns as f64 / 1e9 / secs * 100.0,
        ready_pct: pct(|c| c.ready_ns),
        costop_pct: pct(|c| c.costop_ns),
        wait_pct: pct(|c| c.wait_ns),
        limited_pct: pct(|c| c.limited_ns),
        mips: instret as f64 / secs / 1e6,
        iops: delta(p_ops, c_ops) as f64 / secs,
        mbps: delta(p_bytes, c_bytes) as f64 / secs / 1e6,
    }
}

/// One frame: a host line, then a row per VM. A VM absent from `prev` shows no rates yet.
pub fn render(prev: &HostMetrics, cur: &HostMetrics, dt: Duration) -> String {
    let h = &cur.host;
    let secs = dt.as_secs_f64().max(1e-9);
    // The same unit as the VMs' %USED: 100 = one host CPU.
    let host_used = delta(prev.cpu_time_ns, cur.cpu_time_ns) as f64 / 1e9 / secs * 100.0;
    let mut s = format!(
        "vmk top - {} up {}, {} VMs ({} running), host %USED {:.1} of {} ({} CPUs), RSS {}\n\n",
        h.hostname,
        fmt_duration(h.uptime_secs),
        h.vms,
        h.vms_running,
        host_used,
        u64::from(h.cpus) * 100,
        h.cpus,
        fmt_bytes(cur.rss)
    );
    s += &format!(
        "{:<20} {:<8} {:>4} {:>7} {:>6} {:>6} {:>6} {:>6} {:>9} {:>15} {:>8} {:>8}\n",
        "NAME",
        "STATE",
        "VCPU",
        "%USED",
        "%RDY",
        "%CSTP",
        "%WAIT",
        "%MLMTD",
        "MIPS",
        "MEM TOUCHED",
        "IOPS",
        "MB/s"
    );
    for vm in &cur.vms {
        let mem = format!(
            "{}/{}",
            fmt_bytes(vm.memory_touched),
            fmt_bytes(vm.memory_configured)
        );
        let cols: [String; 9] = match prev.vms.iter().find(|p| p.name == vm.name) {
            Some(p) => {
                let r = rates(p, vm, dt);
                [
                    format!("{:.1}", r.used_pct),
                    format!("{:.1}", r.ready_pct),
                    format!("{:.1}", r.costop_pct),
                    format!("{:.1}", r.wait_pct),
                    format!("{:.1}", r.limited_pct),
                    format!("{:.1}", r.mips),
                    mem,
                    format!("{:.0}", r.iops),
                    format!("{:.2}", r.mbps),
                ]
            }
            None => std::array::from_fn(|i| if i == 6 { mem.clone() } else { "-".into() }),
        };
        s += &format!(
            "{:<20} {:<8} {:>4} {:>7} {:>6} {:>6} {:>6} {:>6} {:>9} {:>15} {:>8} {:>8}\n",
            vm.name,
            state_name(vm.state),
            vm.vcpus.len(),
            cols[0],
            cols[1],
            cols[2],
            cols[3],
            cols[4],
            cols[5],
            cols[6],
            cols[7],
            cols[8]
        );
    }
    if cur.vms.is_empty() {
        s += "(no VMs)\n";
    }
    s
}

pub fn run(c: &Client, args: &TopArgs, out: &mut dyn Write) -> Result<(), CmdError> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // q (or Ctrl-C, which raw mode delivers as a key) quits; without a terminal on stdin
    // there are no keys and only -n or a signal ends it.
    let raw = if tty { RawMode::enable() } else { None };
    let (quit_tx, quit) = mpsc::channel::<()>();
    if raw.is_some() {
        // Left blocked on stdin when top ends by -n; the process exits after.
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            while let Ok(n @ 1..) = std::io::stdin().read(&mut buf) {
                if buf[..n].iter().any(|&b| matches!(b, b'q' | b'Q' | 0x03)) {
                    let _ = quit_tx.send(());
                    return;
                }
            }
        });
    }
    frames(c, args, out, tty, &quit)
}

/// Prints frames until `iterations` or a message on `quit`. With `clear`, each frame
/// replaces the last on the terminal; otherwise frames follow each other (batch mode).
fn frames(
    c: &Client,
    args: &TopArgs,
    out: &mut dyn Write,
    clear: bool,
    quit: &mpsc::Receiver<()>,
) -> Result<(), CmdError> {
    let mut prev = c.metrics()?;
    let mut prev_at = Instant::now();
    let mut shown = 0u64;
    while args.iterations.map(|n| shown < n).unwrap_or(true) {
        match quit.recv_timeout(args.delay) {
            Ok(()) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // No key reader (stdin closed): recv_timeout returns at once, so wait here.
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(args.delay),
        }
        let cur = c.metrics()?;
        let now = Instant::now();
        let frame = render(&prev, &cur, now - prev_at);
        if clear {
            // Home, clear screen; raw mode keeps output processing, so "\n" is fine.
            write!(out, "\x1b[H\x1b[2J{frame}")?;
        } else {
            if shown > 0 {
                writeln!(out)?;
            }
            write!(out, "{frame}")?;
        }
        out.flush()?;
        prev = cur;
        prev_at = now;
        shown += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vmk_api::model::{DiskMetrics, HostConfig, HostInfo, VcpuMetrics, VmState};
    use vmk_host::fake::{FakeHost, TestServer};

    fn vm(name: &str, cpu_ns: u64, instret: u64, ops: u64, bytes: u64) -> VmMetrics {
        VmMetrics {
            name: name.into(),
            state: VmState::Running,
            vcpus: vec![
                VcpuMetrics {
                    cpu_time_ns: cpu_ns,
                    instret,
                    ready_ns: cpu_ns / 5,
                    ..Default::default()
                },
                VcpuMetrics {
                    cpu_time_ns: cpu_ns,
                    instret: 0,
                    wait_ns: cpu_ns / 2,
                    ..Default::default()
                },
            ],
            memory_configured: 512 << 20,
            memory_touched: 100 << 20,
            disks: vec![DiskMetrics {
                path: "/d".into(),
                read_ops: ops,
                read_bytes: bytes,
                write_ops: ops,
                write_bytes: bytes,
                ..Default::default()
            }],
            nics: vec![],
        }
    }

    fn host(cpu_ns: u64, vms: Vec<VmMetrics>) -> HostMetrics {
        HostMetrics {
            host: HostInfo {
                hostname: "h1".into(),
                version: "0".into(),
                cpus: 2,
                memory: 1 << 30,
                vms: vms.len() as u32,
                vms_running: vms.len() as u32,
                uptime_secs: 3700,
                dir: "/".into(),
                datastores: Vec::new(),
                cpu: Default::default(),
            },
            rss: 300 << 20,
            cpu_time_ns: cpu_ns,
            vms,
            pcpus: Vec::new(),
        }
    }

    #[test]
    fn rates_from_deltas() {
        let dt = Duration::from_secs(2);
        // Each vCPU used 0.5 s in 2 s: 2 x 25% = 50 %USED; 200M instructions in 2 s =
        // 100 MIPS; 2 x 100 ops = 100 IOPS; 2 x 1 MB = 1 MB/s.
        let r = rates(
            &vm("a", 0, 0, 0, 0),
            &vm("a", 500_000_000, 200_000_000, 100, 1_000_000),
            dt,
        );
        assert_eq!(
            r,
            Rates {
                used_pct: 50.0,
                ready_pct: 5.0,
                costop_pct: 0.0,
                wait_pct: 12.5,
                limited_pct: 0.0,
                mips: 100.0,
                iops: 100.0,
                mbps: 1.0
            }
        );
        // A restarted VM's counters start again from zero.
        let r = rates(
            &vm("a", 9_000_000_000, 9, 9, 9),
            &vm("a", 1_000_000_000, 0, 0, 0),
            dt,
        );
        assert_eq!(r.used_pct, 100.0);
    }

    /// esxtop's %USED: 100 = one host CPU, whatever the host has. A busy 1-vCPU VM on a
    /// 2-CPU host is at 100 (not 50), a VM with 2 busy vCPUs at 200.
    #[test]
    fn used_is_per_host_cpu() {
        let dt = Duration::from_secs(1);
        let one = |ns: u64| VmMetrics {
            vcpus: vec![VcpuMetrics {
                cpu_time_ns: ns,
                ..Default::default()
            }],
            ..vm("one", 0, 0, 0, 0)
        };
        assert_eq!(rates(&one(0), &one(1_000_000_000), dt).used_pct, 100.0);
        // Both vCPUs of `vm` busy for the whole second.
        let r = rates(
            &vm("two", 0, 0, 0, 0),
            &vm("two", 1_000_000_000, 0, 0, 0),
            dt,
        );
        assert_eq!(r.used_pct, 200.0);
        // On the 2-CPU host of `host`: the busy 1-vCPU VM shows 100.0, and the host line
        // puts the host process's %USED next to the 200 its 2 CPUs allow.
        let f = render(
            &host(0, vec![one(0)]),
            &host(1_000_000_000, vec![one(1_000_000_000)]),
            dt,
        );
        let lines: Vec<_> = f.lines().collect();
        assert!(
            lines[0].ends_with("host %USED 100.0 of 200 (2 CPUs), RSS 300M"),
            "{f}"
        );
        assert!(lines[2].contains("  %USED  "), "{f}");
        assert!(lines[3].starts_with("one "), "{f}");
        assert_eq!(lines[3].split_whitespace().nth(3), Some("100.0"), "{f}");
    }

    #[test]
    fn frame_layout() {
        let prev = host(0, vec![vm("web1", 0, 0, 0, 0)]);
        let cur = host(
            1_000_000_000,
            vec![
                vm("web1", 500_000_000, 200_000_000, 100, 1_000_000),
                vm("new", 1, 1, 1, 1),
            ],
        );
        let f = render(&prev, &cur, Duration::from_secs(2));
        let lines: Vec<_> = f.lines().collect();
        assert_eq!(
            lines[0],
            "vmk top - h1 up 1h 01m, 2 VMs (2 running), host %USED 50.0 of 200 (2 CPUs), RSS 300M"
        );
        assert_eq!(
            lines[2],
            "NAME                 STATE    VCPU   %USED   %RDY  %CSTP  %WAIT %MLMTD      MIPS     MEM TOUCHED     IOPS     MB/s"
        );
        assert_eq!(
            lines[3],
            "web1                 running     2    50.0    5.0    0.0   12.5    0.0     100.0       100M/512M      100     1.00"
        );
        assert_eq!(
            lines[4],
            "new                  running     2       -      -      -      -      -         -       100M/512M        -        -"
        );
    }

    #[test]
    fn frames_against_a_host() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HostConfig {
            dir: dir.path().join("inv"),
            socket: dir.path().join("vmk.sock"),
            tcp: None,
            ..HostConfig::default()
        };
        let fake = Arc::new(FakeHost::default());
        let server = TestServer::start(fake.clone(), &cfg).unwrap();
        let c = Client::unix(server.socket());
        let def = serde_json::from_value(serde_json::json!(
            {"name": "web1", "cpus": 1, "boot": {"kernel": "/k"}}
        ))
        .unwrap();
        c.create(&def).unwrap();
        c.start("web1").unwrap();
        let worker = {
            let fake = fake.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    fake.work("web1", 0, 10_000_000, 5_000_000, (0, 0)).unwrap();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let args = TopArgs {
            delay: Duration::from_millis(60),
            iterations: Some(3),
        };
        let (_tx, quit) = mpsc::channel();
        let mut out = Vec::new();
        frames(&c, &args, &mut out, false, &quit).unwrap();
        worker.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("vmk top - fake").count(), 3, "{text}");
        assert!(
            text.contains("\nweb1                 running     1 "),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "batch mode has no escapes");

        // q ends it before -n.
        let (tx, quit) = mpsc::channel();
        tx.send(()).unwrap();
        let mut out = Vec::new();
        frames(
            &c,
            &TopArgs {
                iterations: None,
                ..args
            },
            &mut out,
            true,
            &quit,
        )
        .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn delays() {
        assert_eq!(parse_delay("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_delay("0").is_err());
        assert!(parse_delay("x").unwrap_err().contains("not a number"));
    }
}
