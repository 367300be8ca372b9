//! The host threads of a VM as the host's tools see them. On vmk's scheduler a vCPU has no
//! thread: it runs on the scheduler's workers (`vmk-cpu<N>`, one per host CPU), and the CPU
//! time it reports is what the kernel counts for the worker while it ran (what `vmk vm top`
//! turns into %USED, 100% = one host CPU). In the thread-per-vCPU baseline each vCPU thread
//! is named `<vm>/vcpu<i>` (cut to Linux's 15 bytes).

mod guest;

use guest::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmk_machine::{vcpu_thread_name, Console, Vm, VmConfig, VmOutcome};
use vmk_sched::{Mode, SchedConfig, Scheduler, Topology};

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

fn spin_vm(name: &str) -> (Vm, Arc<Capture>) {
    let prog = {
        let mut a = Asm::new();
        a.print("spinning\n").hang();
        a.runtime();
        a.finish()
    };
    let kernel = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("threads-spin-{name}.elf"));
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
    vm.set_name(name);
    (vm, console)
}

fn scheduler(mode: Mode) -> Scheduler {
    let topology = Topology::from_host().expect("topology");
    Scheduler::new(SchedConfig {
        // One worker on the first CPU: all this VM's vCPUs run there.
        topology: topology.restrict(&[topology.cpus[0].id]).expect("CPU"),
        cpu_mhz: 1000,
        quantum: Duration::from_millis(10),
        skew: Duration::from_millis(3),
        pin: true,
        mode,
    })
    .expect("scheduler")
}

fn wait_for_threads(want: &[&str]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = threads();
        let found: Vec<u32> = want
            .iter()
            .filter_map(|w| t.iter().find(|(_, (c, _))| c == w).map(|(tid, _)| *tid))
            .collect();
        if found.len() == want.len() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "threads {want:?} not found; threads: {:?}",
            t.values().map(|(c, _)| c).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The kernel counts in clock ticks (10 ms at 100 Hz) and the vCPU's time is published at
/// the end of each slice: allow some of both.
fn assert_close(reported: u64, kernel_ns: u64, what: &str) {
    let slack = 50_000_000 + kernel_ns / 20;
    assert!(
        reported.abs_diff(kernel_ns) <= slack,
        "vCPU 0 reports {reported} ns of CPU, {what} used {kernel_ns} ns"
    );
    assert!(
        reported > 100_000_000,
        "the spinning vCPU used only {reported} ns"
    );
}

/// vmk's scheduler: a 2-vCPU machine's vCPUs run on the scheduler's worker (`vmk-cpu<N>`),
/// not on threads of their own; vCPU 0 spins and the CPU time it reports is what the
/// kernel counts for the worker; vCPU 1 (HSM stopped) costs nothing and shows as waiting.
#[test]
fn vcpus_run_on_the_scheduler_workers_and_report_their_cpu_time() {
    let sched = scheduler(Mode::Scheduler);
    let (vm, console) = spin_vm("scheduled");
    let ctl = vm.controller();
    let stop = vm.stopper();
    let group = Arc::new(
        sched
            .add_group(vm.default_cpu_params(), 2)
            .expect("admitted"),
    );
    let runner = std::thread::spawn(move || vm.run_in(group));
    let worker = format!("vmk-cpu{}", sched.cpu_ids()[0]);
    let tid = wait_for_threads(&[&worker])[0];
    std::thread::sleep(Duration::from_millis(200));
    // (The baseline test may run beside this one, with threads of its own VM.)
    let is_vcpu_thread = |c: &str| c.starts_with("scheduled/");
    assert!(
        !threads().values().any(|(c, _)| is_vcpu_thread(c)),
        "a vCPU has a thread of its own: {:?}",
        threads()
    );
    let k0 = threads().get(&tid).map(|(_, ns)| *ns).unwrap_or(0);
    let r0 = ctl.stats().vcpus[0].cpu_time_ns;
    let w0 = ctl.stats().vcpus[1].wait_ns;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let reported = ctl.stats().vcpus;
    let kernel_ns = threads().get(&tid).map(|(_, ns)| *ns).unwrap_or(0) - k0;
    let elapsed = t0.elapsed().as_nanos() as u64;
    stop();
    assert_eq!(runner.join().expect("run"), VmOutcome::Stopped);
    assert_eq!(reported.len(), 2);
    assert_close(reported[0].cpu_time_ns - r0, kernel_ns, "the worker");
    assert!(reported[1].cpu_time_ns < 10_000_000, "{:?}", reported[1]);
    let waited = reported[1].wait_ns - w0;
    assert!(
        waited + 50_000_000 >= elapsed,
        "vCPU 1 waited {waited} of {elapsed} ns"
    );
    // The final counters stay readable once the VM has ended.
    assert!(ctl.stats().vcpus[0].cpu_time_ns >= reported[0].cpu_time_ns);
    let text =
        String::from_utf8_lossy(&console.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert_eq!(text, "spinning\n");
}

/// The thread-per-vCPU baseline (`bench/sched.sh` compares against it): each vCPU thread
/// is named `<vm>/vcpu<i>` (cut to 15 bytes) and reports its thread's CPU time.
#[test]
fn baseline_vcpu_threads_are_named_per_vm_and_report_their_cpu_time() {
    let sched = scheduler(Mode::ThreadPerTask);
    let (vm, console) = spin_vm("database-server");
    let ctl = vm.controller();
    let stop = vm.stopper();
    let group = Arc::new(
        sched
            .add_group(vm.default_cpu_params(), 2)
            .expect("admitted"),
    );
    let runner = std::thread::spawn(move || vm.run_in(group));
    let tids = wait_for_threads(&["database-/vcpu0", "database-/vcpu1"]);
    std::thread::sleep(Duration::from_millis(1500));
    let reported = ctl.stats().vcpus;
    let kernel_ns = threads().get(&tids[0]).map(|(_, ns)| *ns).unwrap_or(0);
    stop();
    assert_eq!(runner.join().expect("run"), VmOutcome::Stopped);
    assert_close(reported[0].cpu_time_ns, kernel_ns, "its thread");
    assert!(
        reported[1].cpu_time_ns < reported[0].cpu_time_ns / 4,
        "the idle vCPU reports {} ns",
        reported[1].cpu_time_ns
    );
    let text =
        String::from_utf8_lossy(&console.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert_eq!(text, "spinning\n");
}
