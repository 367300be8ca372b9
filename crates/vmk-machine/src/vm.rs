//! A running VM: its memory, devices and vCPU threads.

use crate::config::{Console, VmConfig, VmError, VmOutcome};
use crate::fdt::{self, FdtConfig};
use crate::layout::*;
use crate::loader::{self, LoadError};
use crate::sbi::{self, SbiHost, SystemRequest};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use vmk_cpu::{
    csr_addr, Exit, GuestMemory, Hart, HartConfig, HartHandle, Irq, MmioRange, PrivMode, RamRange,
};
use vmk_devices::virtio::input::KEY_POWER;
use vmk_devices::virtio::{KeyPress, NetConfig, NetWaker, VirtioInput, VirtioNet};
use vmk_devices::{
    BlockConfig, IrqLine, MmioBus, Plic, PowerRequest, PowerState, SifiveTest, Uart, UartInput,
    VirtioBlk, VirtioMmio,
};
use vmk_sched::{Group, GroupParams, Scheduler, Slice, TaskHandle, TaskTimes, Yield};

const TIMEBASE_HZ: u64 = 10_000_000;
/// Instructions per `run` call: bounds timer latency (~0.2-1 ms at 200-500 MIPS).
const SLICE: u64 = 200_000;

/// Counters of one vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuStats {
    /// Guest instructions retired.
    pub instret: u64,
    /// Host CPU time the vCPU ran, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Time it was ready to run but not running (esxtop %RDY), in nanoseconds.
    pub ready_ns: u64,
    /// Time it was held back by co-scheduling (%CSTP).
    pub costop_ns: u64,
    /// Time it waited in the guest (WFI, or stopped), (%WAIT).
    pub wait_ns: u64,
    /// Time it was ready but held back by the VM's CPU limit (%MLMTD).
    pub limited_ns: u64,
}

/// Counters of one virtual disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub flush_ops: u64,
    /// Requests answered with an error status (I/O error or unsupported).
    pub errors: u64,
}

/// A VM's counters; see [`VmController::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmStats {
    pub vcpus: Vec<VcpuStats>,
    pub memory_configured: u64,
    /// Guest RAM backed by host memory (pages the guest or vmk touched), in bytes.
    pub memory_touched: u64,
    /// In the order of [`VmConfig::disks`].
    pub disks: Vec<DiskStats>,
}

/// What became of a power button press ([`VmController::press_power_button`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerButton {
    /// The guest's driver has the press (whether the guest acts on it is the guest's).
    Delivered,
    /// The guest has no driver ready yet: the press waits in the device.
    Pending,
    /// The VM has ended.
    Ended,
}

/// Controls a VM from other threads (a host's API, a console). Holds no VM resources: once
/// the VM has ended its disks are closed and its memory freed, and the controller reports
/// the final counters.
#[derive(Clone)]
pub struct VmController {
    shared: std::sync::Weak<Shared>,
    vcpus: Arc<[VcpuCounters]>,
    sched: Arc<SchedSlot>,
    memory_configured: u64,
    last: Arc<Mutex<VmStats>>,
}

/// The VM's scheduler group and vCPU tasks, once it runs.
#[derive(Default)]
struct SchedSlot {
    /// Weak: the runner owns the group, and dropping it releases the VM's reservation.
    group: Mutex<std::sync::Weak<Group>>,
    tasks: Mutex<Vec<TaskHandle>>,
}

impl VmController {
    /// Ends [`Vm::run`] with [`VmOutcome::Stopped`] (a no-op once the VM has ended).
    pub fn stop(&self) {
        if let Some(s) = self.shared.upgrade() {
            s.finish(VmOutcome::Stopped)
        }
    }

    /// Presses and releases the guest's power button (a virtio-input device with
    /// `KEY_POWER`): Linux's `virtio_input` driver passes it on as an input event, which
    /// systemd-logind, acpid or busybox acpid (a vmk image's `/init`) act on, normally by
    /// shutting down. If the driver is not ready (the guest is booting) the press waits in
    /// the device and is delivered when it is; a press is never queued twice.
    pub fn press_power_button(&self) -> PowerButton {
        let Some(s) = self.shared.upgrade() else {
            return PowerButton::Ended;
        };
        let r = s
            .power_button
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .press_key(KEY_POWER);
        match r {
            KeyPress::Delivered => PowerButton::Delivered,
            KeyPress::Pending | KeyPress::Refused => PowerButton::Pending,
        }
    }

    /// Sends a BREAK and then `key` on the serial console: Linux runs magic SysRq `key` (if
    /// its `kernel.sysrq` mask allows it). Returns false if the VM has ended or the UART's
    /// receive FIFO has no room now.
    pub fn send_sysrq(&self, key: u8) -> bool {
        match self.shared.upgrade() {
            Some(s) => s.uart_input.send_break() && s.uart_input.try_push_input(&[key]) == 1,
            None => false,
        }
    }

    /// Changes the running VM's CPU shares, reservation, limit or affinity at once. Refused
    /// (with the reason) if a new reservation does not fit; a no-op for a VM not running.
    pub fn set_cpu_params(&self, params: GroupParams) -> Result<(), vmk_sched::PolicyError> {
        match vmk_base::lock(&self.sched.group).upgrade() {
            Some(g) => g.set_params(params),
            None => Ok(()),
        }
    }

    /// The VM's scheduler group while it runs.
    pub fn sched_group(&self) -> Option<Arc<Group>> {
        vmk_base::lock(&self.sched.group).upgrade()
    }

    /// The VM's counters: live while it runs, the final values once it has ended.
    pub fn stats(&self) -> VmStats {
        let live = self.shared.upgrade().map(|s| s.disk_stats());
        let times: Vec<TaskTimes> = vmk_base::lock(&self.sched.tasks)
            .iter()
            .map(TaskHandle::times)
            .collect();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.vcpus = self
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let t = times.get(i).copied().unwrap_or_default();
                VcpuStats {
                    instret: c.instret.load(Ordering::Relaxed),
                    cpu_time_ns: t.used,
                    ready_ns: t.ready,
                    costop_ns: t.costop,
                    wait_ns: t.wait,
                    limited_ns: t.limited,
                }
            })
            .collect();
        last.memory_configured = self.memory_configured;
        if let Some((touched, disks)) = live {
            last.memory_touched = touched;
            last.disks = disks;
        }
        last.clone()
    }
}

/// Counters a vCPU updates after every run; they outlive the VM. (Its times come from
/// the scheduler.)
#[derive(Default)]
struct VcpuCounters {
    instret: AtomicU64,
}

/// Adapts the console to `std::io::Write` for the UART.
struct ConsoleWriter {
    console: Arc<dyn Console>,
    /// The test fault hook's trigger text and the output seen so far (its length at most).
    #[cfg(feature = "test-hooks")]
    fault: Option<(Vec<u8>, Vec<u8>)>,
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.console.write(buf);
        #[cfg(feature = "test-hooks")]
        if let Some((needle, seen)) = &mut self.fault {
            seen.extend_from_slice(buf);
            if seen.windows(needle.len()).any(|w| w == needle.as_slice()) {
                panic!("test fault hook: the guest printed the fault trigger");
            }
            let keep = needle.len().saturating_sub(1);
            let cut = seen.len().saturating_sub(keep);
            seen.drain(..cut);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HsmState {
    Started,
    Stopped,
    StartPending { addr: u64, opaque: u64 },
}

/// Wakes a vCPU that waits in WFI or in the HSM stopped state: its scheduler task, bound
/// when the VM starts running (before that every vCPU is about to run anyway).
#[derive(Default)]
struct Waker {
    task: OnceLock<TaskHandle>,
}

impl Waker {
    fn wake(&self) {
        if let Some(t) = self.task.get() {
            t.wake();
        }
    }
}

struct HartSlot {
    handle: HartHandle,
    deadline: AtomicU64,
    hsm: Mutex<HsmState>,
    waker: Arc<Waker>,
}

impl HartSlot {
    fn wake(&self) {
        self.waker.wake();
    }
}

struct Shared {
    mem: Arc<GuestMemory>,
    bus: MmioBus,
    harts: Vec<HartSlot>,
    /// Per-vCPU counters, updated after every slice; shared with controllers.
    counters: Arc<[VcpuCounters]>,
    disks: Vec<Arc<Mutex<VirtioMmio<VirtioBlk>>>>,
    power_button: Arc<Mutex<VirtioMmio<VirtioInput>>>,
    uart_input: UartInput,
    stop: AtomicBool,
    outcome: Mutex<Option<VmOutcome>>,
    console: Arc<dyn Console>,
    power: Arc<PowerState>,
    clock: Instant,
}

impl Shared {
    /// Memory touched and disk counters, read from the devices.
    fn disk_stats(&self) -> (u64, Vec<DiskStats>) {
        let disks = self
            .disks
            .iter()
            .map(|d| {
                let st = d.lock().unwrap_or_else(|e| e.into_inner()).device().stats();
                DiskStats {
                    read_ops: st.reads,
                    read_bytes: st.bytes_read,
                    write_ops: st.writes,
                    write_bytes: st.bytes_written,
                    flush_ops: st.flushes,
                    errors: st.ioerr + st.unsupp,
                }
            })
            .collect();
        (self.mem.resident_bytes(), disks)
    }

    fn now(&self) -> u64 {
        (self.clock.elapsed().as_nanos() * TIMEBASE_HZ as u128 / 1_000_000_000) as u64
    }

    fn finish(&self, outcome: VmOutcome) {
        let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if o.is_none() {
            *o = Some(outcome);
        }
        self.stop.store(true, Ordering::SeqCst);
        for h in &self.harts {
            h.handle.kick();
            h.wake();
        }
    }
}

/// The PLIC drives a hart's external interrupt through this.
struct HartIrq {
    handle: HartHandle,
    waker: Arc<Waker>,
    irq: Irq,
}

impl IrqLine for HartIrq {
    fn set_level(&self, level: bool) {
        self.handle.set_irq(self.irq, level);
        if level {
            self.waker.wake();
        }
    }
}

pub struct Vm {
    shared: Arc<Shared>,
    harts: Vec<Hart>,
    sched: Arc<SchedSlot>,
    uart: UartInput,
    /// The final counters, filled when `run` ends (controllers keep reporting them).
    last: Arc<Mutex<VmStats>>,
    /// Names the vCPU threads ([`Vm::set_name`]).
    name: Option<String>,
}

/// Linux thread names (`comm`) are at most 15 bytes.
const THREAD_NAME_MAX: usize = 15;

/// The name of vCPU `i`'s thread: `<vm>/vcpu<i>`, the VM's name cut (at a character
/// boundary) so that the whole fits Linux's 15 bytes, or `vcpu<i>` for a VM without a name
/// (or one that would keep fewer than 3 bytes of its name: `ab/vcpu63` still says which
/// VM, a lone `a/` hardly does).
pub fn vcpu_thread_name(vm: Option<&str>, i: usize) -> String {
    let vcpu = format!("vcpu{i}");
    let Some(vm) = vm.filter(|n| !n.is_empty()) else {
        return vcpu;
    };
    let room = THREAD_NAME_MAX.saturating_sub(vcpu.len() + 1);
    let mut cut = room.min(vm.len());
    while !vm.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut < vm.len().min(3) {
        return vcpu;
    }
    format!("{}/{vcpu}", &vm[..cut])
}

impl Vm {
    pub fn new(cfg: VmConfig) -> Result<Vm, VmError> {
        check_config(&cfg)?;
        let mut backends = Vec::new();
        for d in &cfg.disks {
            backends.push(crate::disk::open(d)?);
        }
        let ram_size = cfg.memory & !0xfff;
        let guest = load_guest(&cfg, ram_size, backends.len() + cfg.nics.len())?;
        let clock = Instant::now();
        let harts = new_harts(&guest, cfg.cpus, clock);
        let power = PowerState::new();
        let slots: Vec<HartSlot> = harts
            .iter()
            .enumerate()
            .map(|(i, h)| HartSlot {
                handle: h.handle(),
                deadline: AtomicU64::new(u64::MAX),
                hsm: Mutex::new(if i == 0 {
                    HsmState::Started
                } else {
                    HsmState::Stopped
                }),
                waker: Arc::new(Waker::default()),
            })
            .collect();
        let console = cfg.console.clone();
        let cpus = cfg.cpus;
        let devices = attach_devices(cfg, backends, &guest.mem, &slots, &power)?;
        let mem = guest.mem;
        let counters: Arc<[VcpuCounters]> = (0..cpus).map(|_| VcpuCounters::default()).collect();
        let last = Arc::new(Mutex::new(VmStats {
            memory_configured: ram_size,
            ..VmStats::default()
        }));
        let shared = Arc::new(Shared {
            mem,
            bus: devices.bus,
            harts: slots,
            counters,
            disks: devices.disks,
            power_button: devices.power_button,
            uart_input: devices.uart_input.clone(),
            stop: AtomicBool::new(false),
            outcome: Mutex::new(None),
            console,
            power,
            clock,
        });
        Ok(Vm {
            shared,
            harts,
            sched: Arc::default(),
            uart: devices.uart_input,
            last,
            name: None,
        })
    }

    /// Names the VM for its threads: vCPU `i` runs in a thread named `<name>/vcpu<i>`
    /// (shortened to Linux's 15 bytes, see [`vcpu_thread_name`]), so `top -H` and
    /// `/proc/PID/task/*/comm` tell the VMs apart. Without a name: `vcpu<i>`.
    pub fn set_name(&mut self, name: &str) {
        self.name = Some(name.to_string());
    }

    /// Feeds console input to the guest's UART.
    pub fn uart(&self) -> UartInput {
        self.uart.clone()
    }

    /// Guest instructions retired so far, per vCPU (readable while the VM runs).
    /// Keeps the final counts once the VM has ended.
    pub fn instret_counter(&self) -> impl Fn() -> Vec<u64> + Send + Sync + 'static {
        let counters = self.shared.counters.clone();
        move || {
            counters
                .iter()
                .map(|c| c.instret.load(Ordering::Relaxed))
                .collect()
        }
    }

    /// A controller for other threads: stop, the power button, SysRq on the console,
    /// counters.
    pub fn controller(&self) -> VmController {
        VmController {
            shared: Arc::downgrade(&self.shared),
            vcpus: self.shared.counters.clone(),
            sched: self.sched.clone(),
            memory_configured: self
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .memory_configured,
            last: self.last.clone(),
        }
    }

    /// A handle that stops the VM from another thread (a no-op once it has ended). It holds
    /// no reference to the VM, so the devices close (disks flush) when `run` returns.
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let w = Arc::downgrade(&self.shared);
        move || {
            if let Some(s) = w.upgrade() {
                s.finish(VmOutcome::Stopped)
            }
        }
    }

    /// The scheduler settings of a VM without resource settings of its own: normal shares
    /// (1000 per vCPU), no reservation, no limit, any CPU.
    pub fn default_cpu_params(&self) -> GroupParams {
        GroupParams {
            shares: 1000 * self.harts.len() as u32,
            ..GroupParams::default()
        }
    }

    /// Runs the VM on the process's scheduler ([`Scheduler::global`]) with default settings
    /// until it powers off, resets, crashes or is stopped.
    pub fn run(self) -> VmOutcome {
        let params = self.default_cpu_params();
        match Scheduler::global().add_group(params, self.harts.len()) {
            Ok(g) => self.run_in(Arc::new(g)),
            Err(e) => VmOutcome::Crashed(format!("the CPU scheduler refused the VM: {e}")),
        }
    }

    /// Runs the VM's vCPUs as tasks of `group` (admitted by the caller, with the VM's
    /// resource settings) until it powers off, resets, crashes or is stopped.
    pub fn run_in(self, group: Arc<Group>) -> VmOutcome {
        let shared = self.shared.clone();
        *vmk_base::lock(&self.sched.group) = Arc::downgrade(&group);
        let mut handles = Vec::new();
        for (i, hart) in self.harts.into_iter().enumerate() {
            let kick = hart.handle();
            let task = VcpuTask {
                s: shared.clone(),
                id: i,
                hart,
            };
            match group.spawn(
                &vcpu_thread_name(self.name.as_deref(), i),
                Box::new(task),
                Some(Arc::new(move || kick.kick())),
            ) {
                Ok(h) => {
                    // The task may already have run and be waiting (a stopped hart waits at
                    // once) before its waker is bound here: a hart_start, IPI or stop in
                    // that window found no handle. A wake-up after binding covers it (a
                    // ready or running task ignores it).
                    let _ = shared.harts[i].waker.task.set(h.clone());
                    h.wake();
                    handles.push(h);
                }
                Err(e) => {
                    shared.finish(VmOutcome::Crashed(format!("cannot start vCPU {i}: {e}")));
                    break;
                }
            }
        }
        *vmk_base::lock(&self.sched.tasks) = handles.clone();
        for h in &handles {
            h.join();
        }
        drop(group);
        let o = shared
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Keep the final counters for controllers: the devices go away with `shared`.
        let (touched, disks) = shared.disk_stats();
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            last.memory_touched = touched;
            last.disks = disks;
        }
        o.unwrap_or(VmOutcome::Stopped)
    }
}

/// What `Vm::new` refuses before it touches anything.
fn check_config(cfg: &VmConfig) -> Result<(), VmError> {
    if cfg.cpus == 0 || cfg.cpus > 64 {
        return Err(VmError::BadCpuCount(cfg.cpus));
    }
    if cfg.memory < MIN_RAM {
        return Err(VmError::MemoryTooSmall(cfg.memory >> 20, MIN_RAM >> 20));
    }
    if cfg.memory > MAX_RAM {
        return Err(VmError::MemoryTooLarge(cfg.memory >> 30, MAX_RAM >> 30));
    }
    if cfg.fault_on_console.is_some() && !cfg!(feature = "test-hooks") {
        return Err(VmError::FaultInjectionUnavailable);
    }
    if (cfg.disks.len() + cfg.nics.len()) as u64 > VIRTIO_SLOTS {
        return Err(VmError::Devices(format!(
            "{} disks and {} NICs: a VM has at most {VIRTIO_SLOTS} virtio devices in all",
            cfg.disks.len(),
            cfg.nics.len()
        )));
    }
    Ok(())
}

/// Guest RAM with the kernel, the initrd and the device tree in it.
struct LoadedGuest {
    mem: Arc<GuestMemory>,
    /// Where hart 0 starts.
    entry: u64,
    /// The device tree's guest physical address (a1 at entry).
    fdt_addr: u64,
}

/// Builds guest memory (RAM and the MMIO holes) and loads the kernel, the initrd and a device
/// tree describing `cfg` with `virtio_devices` disks and NICs.
fn load_guest(
    cfg: &VmConfig,
    ram_size: u64,
    virtio_devices: usize,
) -> Result<LoadedGuest, VmError> {
    let kernel = loader::load_kernel(&cfg.kernel)?;
    let initrd_len = match &cfg.initrd {
        Some(p) => Some(loader::initrd_len(p)?),
        None => None,
    };
    let mem = GuestMemory::new(
        &[RamRange {
            base: RAM_BASE,
            size: ram_size,
        }],
        &[
            MmioRange {
                base: TEST_BASE,
                size: TEST_SIZE,
            },
            MmioRange {
                base: PLIC_BASE,
                size: PLIC_SIZE,
            },
            MmioRange {
                base: UART_BASE,
                size: UART_SIZE,
            },
            MmioRange {
                // The disks' and NICs' slots, then the power button's.
                base: VIRTIO_BASE,
                size: VIRTIO_STRIDE * (VIRTIO_SLOTS + 1),
            },
        ],
    )?;
    let ram_mib = ram_size >> 20;
    // The device tree lives in the top 64 KiB of RAM; the kernel must end below it.
    let fdt_slot = 64 << 10;
    if kernel.footprint > ram_size - fdt_slot {
        return Err(LoadError::TooBig {
            what: "the kernel",
            size: kernel.footprint,
            ram: ram_mib,
            at: RAM_BASE,
        }
        .into());
    }
    for seg in &kernel.segments {
        let base = RAM_BASE + seg.ram_offset;
        loader::copy_file(&cfg.kernel, seg.file_offset, seg.len, |off, bytes| {
            mem.write(base + off, bytes).map_err(|e| e.to_string())
        })
        .map_err(|what| LoadError::BadKernel {
            path: cfg.kernel.display().to_string(),
            what,
        })?;
    }
    // Device tree at the top of RAM, the initrd below it, both clear of the kernel.
    let fdt_addr = RAM_BASE + ram_size - fdt_slot;
    let initrd_range = match (&cfg.initrd, initrd_len) {
        (Some(path), Some(len)) => {
            let start = fdt_addr.saturating_sub(len) & !0xfff;
            if start < RAM_BASE + kernel.footprint + (2 << 20) {
                return Err(LoadError::TooBig {
                    what: "the initrd",
                    size: len,
                    ram: ram_mib,
                    at: start,
                }
                .into());
            }
            loader::copy_file(path, 0, len, |off, bytes| {
                mem.write(start + off, bytes).map_err(|e| e.to_string())
            })
            .map_err(|what| LoadError::ReadInitrd {
                path: path.display().to_string(),
                err: std::io::Error::other(what),
            })?;
            Some((start, start + len))
        }
        _ => None,
    };
    let dtb = fdt::build(&FdtConfig {
        cpus: cfg.cpus,
        ram_base: RAM_BASE,
        ram_size,
        bootargs: cfg.cmdline.clone(),
        initrd: initrd_range,
        timebase_hz: TIMEBASE_HZ as u32,
        virtio: (0..virtio_devices as u32)
            .map(|i| (virtio_base(i), virtio_irq(i)))
            .chain([(POWER_BUTTON_BASE, POWER_BUTTON_IRQ)])
            .collect(),
    })
    .map_err(|e| VmError::Fdt(e.to_string()))?;
    if dtb.len() as u64 > fdt_slot {
        return Err(VmError::Fdt(format!(
            "device tree is {} bytes, more than its {} byte slot",
            dtb.len(),
            fdt_slot
        )));
    }
    mem.write(fdt_addr, &dtb)?;
    Ok(LoadedGuest {
        mem,
        entry: RAM_BASE + kernel.entry_offset,
        fdt_addr,
    })
}

/// The vCPUs, set up as the M-mode firmware leaves them for S-mode; hart 0 at the kernel's
/// entry with the device tree in a1 (the others wait for SBI HSM start).
fn new_harts(guest: &LoadedGuest, cpus: u32, clock: Instant) -> Vec<Hart> {
    let mem = &guest.mem;
    let time_fn: vmk_cpu::TimeFn =
        Arc::new(move || (clock.elapsed().as_nanos() * TIMEBASE_HZ as u128 / 1_000_000_000) as u64);
    let mut harts = Vec::new();
    for id in 0..cpus as u64 {
        let mut h = Hart::new(
            mem.clone(),
            HartConfig {
                hart_id: id,
                start_mode: PrivMode::Supervisor,
                sbi_exits: true,
                timebase_hz: TIMEBASE_HZ,
                time_fn: Some(time_fn.clone()),
                exit_on_interrupt: 0,
                // VMK_JIT=0 runs the interpreter alone (to compare, or to rule the
                // block compiler out when chasing a guest problem).
                jit: std::env::var_os("VMK_JIT").is_none_or(|v| v != "0"),
                ..HartConfig::default()
            },
        );
        // The hypervisor is the M-mode firmware: delegate everything it can to S-mode,
        // as OpenSBI does, and let S-mode read the counters.
        h.set_csr(csr_addr::MEDELEG, 0xb1ff);
        h.set_csr(csr_addr::MIDELEG, 0x222);
        h.set_csr(csr_addr::MCOUNTEREN, 0xffff_ffff);
        // As OpenSBI does: user mode may read cycle, time and instret unless the kernel
        // says otherwise (Linux's legacy PMU driver relies on this; the vDSO and glibc
        // read `time` directly).
        h.set_csr(csr_addr::SCOUNTEREN, 0x7);
        h.set_csr(csr_addr::MENVCFG, 0);
        harts.push(h);
    }
    harts[0].set_pc(guest.entry);
    harts[0].set_reg(10, 0);
    harts[0].set_reg(11, guest.fdt_addr);
    harts
}

/// The machine's devices on their bus.
struct Devices {
    bus: MmioBus,
    disks: Vec<Arc<Mutex<VirtioMmio<VirtioBlk>>>>,
    power_button: Arc<Mutex<VirtioMmio<VirtioInput>>>,
    uart_input: UartInput,
}

/// The interrupt controller wired to the harts, the UART, the test device, the disks, the
/// NICs (their I/O threads started) and the power button, each at its place on the bus.
fn attach_devices(
    cfg: VmConfig,
    backends: Vec<Box<dyn vmk_devices::BlockBackend>>,
    mem: &Arc<GuestMemory>,
    slots: &[HartSlot],
    power: &Arc<PowerState>,
) -> Result<Devices, VmError> {
    let mut lines: Vec<Arc<dyn IrqLine>> = Vec::new();
    for slot in slots {
        for irq in [Irq::MachineExternal, Irq::SupervisorExternal] {
            lines.push(Arc::new(HartIrq {
                handle: slot.handle.clone(),
                waker: slot.waker.clone(),
                irq,
            }));
        }
    }
    let dev_err = |e: vmk_devices::DeviceError| VmError::Devices(e.to_string());
    let plic = Plic::new(PLIC_SOURCES, lines).map_err(dev_err)?;
    let uart_irq = plic
        .source(UART_IRQ)
        .map(|s| Arc::new(s) as Arc<dyn IrqLine>);
    let writer = ConsoleWriter {
        console: cfg.console.clone(),
        #[cfg(feature = "test-hooks")]
        fault: cfg
            .fault_on_console
            .as_ref()
            .filter(|t| !t.is_empty())
            .map(|t| (t.as_bytes().to_vec(), Vec::new())),
    };
    let uart = Uart::new(Box::new(writer), uart_irq);
    let uart_input = uart.input();
    let mut bus = MmioBus::new();
    let mut disks = Vec::new();
    bus.register("uart", UART_BASE, UART_SIZE, Arc::new(Mutex::new(uart)))
        .map_err(dev_err)?;
    bus.register(
        "test",
        TEST_BASE,
        TEST_SIZE,
        Arc::new(Mutex::new(SifiveTest::new(power.clone()))),
    )
    .map_err(dev_err)?;
    for (i, (backend, spec)) in backends.into_iter().zip(&cfg.disks).enumerate() {
        let slot = i as u32;
        let irq: Arc<dyn IrqLine> = Arc::new(plic.source(virtio_irq(slot)).ok_or_else(|| {
            VmError::Devices(format!("no PLIC source {} for disk {i}", virtio_irq(slot)))
        })?);
        let blk = VirtioBlk::new(
            backend,
            BlockConfig {
                read_only: spec.read_only,
                serial: spec.serial.clone().unwrap_or_default(),
                ..BlockConfig::default()
            },
        );
        let dev = Arc::new(Mutex::new(VirtioMmio::new(blk, mem.clone(), irq)));
        bus.register(
            &format!("virtio-blk{i}"),
            virtio_base(slot),
            VIRTIO_STRIDE,
            dev.clone(),
        )
        .map_err(dev_err)?;
        disks.push(dev);
    }
    // NICs take the slots after the disks.
    let first_nic = disks.len();
    for (i, nic) in cfg.nics.into_iter().enumerate() {
        let slot = (first_nic + i) as u32;
        let irq: Arc<dyn IrqLine> = Arc::new(plic.source(virtio_irq(slot)).ok_or_else(|| {
            VmError::Devices(format!("no PLIC source {} for NIC {i}", virtio_irq(slot)))
        })?);
        let net = VirtioNet::new(nic.backend, NetConfig::default());
        let dev = Arc::new(Mutex::new(VirtioMmio::new(net, mem.clone(), irq)));
        bus.register(
            &format!("virtio-net{i}"),
            virtio_base(slot),
            VIRTIO_STRIDE,
            dev.clone(),
        )
        .map_err(dev_err)?;
        // The I/O thread brings frames from other threads to the guest; it ends
        // when the device does.
        NetWaker::start(&dev, &format!("net-{}", nic.name)).map_err(|e| {
            VmError::Devices(format!(
                "NIC {}: cannot start its I/O thread: {e}",
                nic.name
            ))
        })?;
    }
    // The power button: how the host asks the guest to shut down (`vm stop`).
    let button_irq: Arc<dyn IrqLine> =
        Arc::new(plic.source(POWER_BUTTON_IRQ).ok_or_else(|| {
            VmError::Devices(format!(
                "no PLIC source {POWER_BUTTON_IRQ} for the power button"
            ))
        })?);
    let power_button = Arc::new(Mutex::new(VirtioMmio::new(
        VirtioInput::power_button(),
        mem.clone(),
        button_irq,
    )));
    bus.register(
        "power-button",
        POWER_BUTTON_BASE,
        VIRTIO_STRIDE,
        power_button.clone(),
    )
    .map_err(dev_err)?;
    bus.register("plic", PLIC_BASE, PLIC_SIZE, Arc::new(Mutex::new(plic)))
        .map_err(dev_err)?;
    Ok(Devices {
        bus,
        disks,
        power_button,
        uart_input,
    })
}

struct CallCtx<'a> {
    shared: &'a Shared,
    hart: usize,
    stop_self: bool,
}

impl SbiHost for CallCtx<'_> {
    fn hart_count(&self) -> u64 {
        self.shared.harts.len() as u64
    }
    fn set_timer(&mut self, deadline: u64) {
        let slot = &self.shared.harts[self.hart];
        slot.deadline.store(deadline, Ordering::SeqCst);
        let fired = self.shared.now() >= deadline;
        slot.handle.set_irq(Irq::SupervisorTimer, fired);
    }
    fn send_ipi(&mut self, hart: u64) {
        if let Some(h) = self.shared.harts.get(hart as usize) {
            h.handle.post_ssip();
            h.wake();
        }
    }
    fn remote_fence_i(&mut self, hart: u64) {
        if let Some(h) = self.shared.harts.get(hart as usize) {
            h.handle.request_fence_i();
        }
    }
    fn remote_sfence_vma(&mut self, _harts: &[u64]) {
        // A shoot-down flushes every vCPU of the VM and waits for the running ones.
        self.shared.mem.shootdown();
    }
    fn hart_status(&self, hart: u64) -> u64 {
        match self
            .shared
            .harts
            .get(hart as usize)
            .map(|h| *h.hsm.lock().unwrap_or_else(|e| e.into_inner()))
        {
            Some(HsmState::Started) => 0,
            Some(HsmState::Stopped) | None => 1,
            Some(HsmState::StartPending { .. }) => 2,
        }
    }
    fn hart_start(&mut self, hart: u64, addr: u64, opaque: u64) -> Result<(), i64> {
        let slot = self
            .shared
            .harts
            .get(hart as usize)
            .ok_or(sbi::SBI_ERR_INVALID_PARAM)?;
        let mut st = slot.hsm.lock().unwrap_or_else(|e| e.into_inner());
        if *st != HsmState::Stopped {
            return Err(sbi::SBI_ERR_ALREADY_AVAILABLE);
        }
        if !self.shared.mem.is_ram(addr, 4) {
            return Err(sbi::SBI_ERR_INVALID_ADDRESS);
        }
        *st = HsmState::StartPending { addr, opaque };
        drop(st);
        slot.wake();
        Ok(())
    }
    fn hart_stop_self(&mut self) {
        self.stop_self = true;
    }
    fn system(&mut self, req: SystemRequest) {
        self.shared.finish(match req {
            SystemRequest::Shutdown => VmOutcome::PowerOff { code: 0 },
            SystemRequest::Reboot => VmOutcome::Reboot,
        });
    }
    fn console_write(&mut self, bytes: &[u8]) {
        self.shared.console.write(bytes);
    }
    fn console_read_byte(&mut self) -> Option<u8> {
        None
    }
    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.shared.mem.read(gpa, buf).is_ok()
    }
    fn write_guest(&self, gpa: u64, buf: &[u8]) -> bool {
        self.shared.mem.write(gpa, buf).is_ok()
    }
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.shared.mem.is_ram(gpa, len)
    }
}

/// A vCPU as a scheduler task: runs its hart in `SLICE`-instruction steps until the
/// scheduler's slice is over, the guest waits (WFI, HSM stopped) or the VM ends.
struct VcpuTask {
    s: Arc<Shared>,
    id: usize,
    hart: Hart,
}

impl vmk_sched::Task for VcpuTask {
    fn run(&mut self, slice: &Slice) -> Yield {
        // A panic in a vCPU (a bug in vmk) ends this VM, not the host or the scheduler's
        // worker, and must not leave the other vCPUs running forever.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_slice(slice)));
        r.unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            self.s.finish(VmOutcome::Crashed(format!(
                "vCPU {} panicked: {msg}",
                self.id
            )));
            Yield::Done
        })
    }
}

impl VcpuTask {
    fn run_slice(&mut self, slice: &Slice) -> Yield {
        let s = &*self.s;
        let id = self.id;
        let hart = &mut self.hart;
        let slot = &s.harts[id];
        loop {
            if s.stop.load(Ordering::SeqCst) {
                return Yield::Done;
            }
            // HSM: a stopped hart waits for hart_start (which wakes it).
            let state = *slot.hsm.lock().unwrap_or_else(|e| e.into_inner());
            match state {
                HsmState::Stopped => return Yield::Wait(None),
                HsmState::StartPending { addr, opaque } => {
                    hart.set_priv_mode(PrivMode::Supervisor);
                    hart.set_csr(csr_addr::SATP, 0);
                    hart.set_csr(csr_addr::SSTATUS, 0); // SIE off
                    hart.set_pc(addr);
                    hart.set_reg(10, id as u64);
                    hart.set_reg(11, opaque);
                    *slot.hsm.lock().unwrap_or_else(|e| e.into_inner()) = HsmState::Started;
                }
                HsmState::Started => {}
            }
            let exit = hart.run(SLICE);
            s.counters[id]
                .instret
                .store(hart.instret(), Ordering::Relaxed);
            let deadline = slot.deadline.load(Ordering::SeqCst);
            if deadline != u64::MAX && s.now() >= deadline {
                slot.handle.set_irq(Irq::SupervisorTimer, true);
            }
            match exit {
                Exit::MmioRead { addr, size } => {
                    let v = s.bus.read(addr, size).unwrap_or(0);
                    hart.complete_mmio_read(v);
                }
                Exit::MmioWrite { addr, size, value } => {
                    s.bus.write(addr, size, value);
                    if let Some(req) = s.power.take() {
                        s.finish(match req {
                            PowerRequest::Poweroff { code } | PowerRequest::Fail { code } => {
                                VmOutcome::PowerOff { code: code as i32 }
                            }
                            PowerRequest::Reset => VmOutcome::Reboot,
                        });
                    }
                }
                Exit::Ecall => {
                    let a = [
                        hart.reg(10),
                        hart.reg(11),
                        hart.reg(12),
                        hart.reg(13),
                        hart.reg(14),
                        hart.reg(15),
                    ];
                    let (fid, eid) = (hart.reg(16), hart.reg(17));
                    let mut ctx = CallCtx {
                        shared: s,
                        hart: id,
                        stop_self: false,
                    };
                    let r = sbi::handle(&mut ctx, id as u64, eid, fid, a);
                    hart.set_reg(10, r.error as u64);
                    if eid >= 0x10 {
                        hart.set_reg(11, r.value);
                    }
                    if ctx.stop_self {
                        *slot.hsm.lock().unwrap_or_else(|e| e.into_inner()) = HsmState::Stopped;
                    }
                }
                Exit::Wfi => {
                    // Idle until an interrupt line rises (its IrqLine wakes the task) or
                    // the timer's deadline; nothing polls.
                    if deadline == u64::MAX {
                        return Yield::Wait(None);
                    }
                    let now = s.now();
                    if deadline > now {
                        let wait = Duration::from_nanos(
                            ((deadline - now) as u128 * 1_000_000_000 / TIMEBASE_HZ as u128) as u64,
                        );
                        return Yield::Wait(Some(Instant::now() + wait));
                    }
                }
                Exit::BudgetExhausted | Exit::Kicked | Exit::Interrupt { .. } => {}
                // The guest spins on something another vCPU must do: end the slice, so
                // the scheduler can run that vCPU (the laggard goes first) or another VM.
                Exit::Yield => return Yield::Ready,
                Exit::Fatal(e) => {
                    s.finish(VmOutcome::Crashed(format!("vCPU {id}: {e}")));
                    return Yield::Done;
                }
            }
            if slice.over() {
                return Yield::Ready;
            }
        }
    }
}
