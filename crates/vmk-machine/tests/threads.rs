//! The host threads of a VM as the host's tools see them: each vCPU thread is named
//! `<vm>/vcpu<i>` (cut to Linux's 15 bytes), and the CPU time a vCPU reports is its
//! thread's CPU time as the kernel accounts it (what `vmk vm top` turns into %USED, 100% =
//! one host CPU).

mod guest;

use guest::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmk_machine::{vcpu_thread_name, Console, Vm, VmConfig, VmOutcome};

#[derive(Default)]
struct Capture(Mutex<Vec<u8>>);

impl Console for Capture {
    fn write(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
    }
}

/// This process's threads: tid → (comm, CPU time in ns from utime + stime).
fn threads() -> BTreeMap<u32, (String, u64)> {
    // SAFETY: sysconf has no preconditions.
    let tick_ns = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let Ok(e) = e else { continue };
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A thread may end between the listing and the reads.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(e.path().join("comm")),
            std::fs::read_to_string(e.path().join("stat")),
        ) else {
            continue;
        };
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.insert(
            tid,
            (
                comm.trim_end().to_string(),
                (ticks(11) + ticks(12)) * tick_ns,
            ),
        );
    }
    out
}

#[test]
fn thread_names_fit_linux() {
    assert_eq!(vcpu_thread_name(None, 3), "vcpu3");
    assert_eq!(vcpu_thread_name(Some(""), 0), "vcpu0");
    assert_eq!(vcpu_thread_name(Some("web1"), 1), "web1/vcpu1");
    assert_eq!(
        vcpu_thread_name(Some("database-server"), 1),
        "database-/vcpu1"
    );
    assert_eq!(
        vcpu_thread_name(Some("database-server"), 63),
        "database/vcpu63"
    );
    // Cut at a character boundary, never inside one.
    assert_eq!(vcpu_thread_name(Some("ééééé"), 0), "éééé/vcpu0");
    for (name, i) in [("x", 0), ("a-very-long-vm-name", 12), ("é", 63)] {
        assert!(vcpu_thread_name(Some(name), i).len() <= 15);
    }
}

/// A 2-vCPU machine named `database-server`: its vCPU threads are `database-/vcpu0` and
/// `database-/vcpu1`; vCPU 0 spins, and the CPU time it reports is its thread's.
#[test]
fn vcpu_threads_are_named_per_vm_and_report_their_cpu_time() {
    let prog = {
        let mut a = Asm::new();
        a.print("spinning\n").hang();
        a.runtime();
        a.finish()
    };
    let kernel = Path::new(env!("CARGO_TARGET_TMPDIR")).join("threads-spin.elf");
    std::fs::write(&kernel, prog.elf()).expect("write kernel");
    let console = Arc::new(Capture::default());
    let mut vm = Vm::new(VmConfig {
        cpus: 2,
        memory: 32 << 20,
        kernel,
        initrd: None,
        cmdline: "threads".into(),
        console: console.clone(),
        disks: Vec::new(),
        nics: Vec::new(),
        fault_on_console: None,
    })
    .expect("Vm::new");
    vm.set_name("database-server");
    let ctl = vm.controller();
    let stop = vm.stopper();
    let runner = std::thread::spawn(move || vm.run());

    let want = ["database-/vcpu0", "database-/vcpu1"];
    let deadline = Instant::now() + Duration::from_secs(30);
    let tids: Vec<u32> = loop {
        let t = threads();
        let found: Vec<u32> = want
            .iter()
            .filter_map(|w| t.iter().find(|(_, (c, _))| c == w).map(|(tid, _)| *tid))
            .collect();
        if found.len() == want.len() {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "vCPU threads not found; threads: {:?}",
            t.values().map(|(c, _)| c).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // No thread of this process has the old, VM-less name `vcpuN`.
    let old_style = |c: &str| {
        c.strip_prefix("vcpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    assert!(
        !threads().values().any(|(c, _)| old_style(c)),
        "{:?}",
        threads()
    );

    // Let vCPU 0 spin for a while, then compare what it reports with the kernel's count.
    let t0 = (Instant::now(), ctl.stats().vcpus[0].cpu_time_ns);
    std::thread::sleep(Duration::from_millis(1500));
    let reported = ctl.stats().vcpus;
    eprintln!(
        "vCPU 0 used {:.0}% of one host CPU over {:?} (the host may be busy)",
        reported[0].cpu_time_ns.saturating_sub(t0.1) as f64 / t0.0.elapsed().as_nanos() as f64
            * 100.0,
        t0.0.elapsed()
    );
    let kernel_ns = threads().get(&tids[0]).map(|(_, ns)| *ns).unwrap_or(0);
    stop();
    assert_eq!(runner.join().expect("run"), VmOutcome::Stopped);
    assert_eq!(reported.len(), 2);
    let r0 = reported[0].cpu_time_ns;
    // The kernel counts in clock ticks (10 ms at 100 Hz) and the vCPU publishes its time
    // after each slice: allow some of both.
    let slack = 50_000_000 + kernel_ns / 20;
    assert!(
        r0.abs_diff(kernel_ns) <= slack,
        "vCPU 0 reports {r0} ns of CPU, its thread used {kernel_ns} ns"
    );
    assert!(r0 > 100_000_000, "the spinning vCPU used only {r0} ns");
    // vCPU 1 waits (HSM stopped): next to nothing.
    assert!(
        reported[1].cpu_time_ns < r0 / 4,
        "the idle vCPU reports {} ns",
        reported[1].cpu_time_ns
    );
    let text =
        String::from_utf8_lossy(&console.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert_eq!(text, "spinning\n");
}
