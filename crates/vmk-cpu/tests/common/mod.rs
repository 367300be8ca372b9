//! Harness for the bare-metal RISC-V test programs in `tests/baremetal/`.
//!
//! It builds the programs (once per test process), loads an ELF into a [`GuestMemory`] laid
//! out like QEMU's `virt` machine, and runs it on vmk harts with a minimal platform: a
//! ns16550a UART (transmit only), QEMU's `sifive_test` finisher and a CLINT whose `mtime` is
//! derived from the number of retired instructions (deterministic). The same ELF can be run in
//! QEMU for differential testing.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use object::{Object, ObjectSegment, ObjectSymbol};
use vmk_cpu::{Exit, Hart, HartConfig, HartHandle, Irq, PrivMode};
use vmk_memory::{GuestMemory, MmioRange, RamRange};

pub const RAM_BASE: u64 = 0x8000_0000;
pub const RAM_SIZE: u64 = 128 << 20;
pub const UART_BASE: u64 = 0x1000_0000;
pub const UART_SIZE: u64 = 0x100;
pub const FINISHER_BASE: u64 = 0x10_0000;
pub const FINISHER_SIZE: u64 = 0x1000;
pub const CLINT_BASE: u64 = 0x200_0000;
pub const CLINT_SIZE: u64 = 0x1_0000;
const CLINT_MTIMECMP: u64 = 0x4000;
const CLINT_MTIME: u64 = 0xbff8;
pub const MAX_HARTS: usize = 8;

/// Guest instructions per call of [`Hart::run`]: the CLINT timer advances between slices.
pub const SLICE: u64 = 10_000;
/// mtime ticks once per this many retired instructions.
pub const INSNS_PER_TICK: u64 = 10;

/// Where the test programs live.
pub fn programs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/baremetal")
}

/// Where the harness builds them.
pub fn build_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("baremetal")
}

fn build_all() -> Result<PathBuf, String> {
    let gcc = Command::new("riscv64-unknown-elf-gcc")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(gcc, Ok(s) if s.success()) {
        return Err(
            "riscv64-unknown-elf-gcc not found: the bare-metal test programs need a \
                    RISC-V cross compiler (apt-get install gcc-riscv64-unknown-elf)"
                .into(),
        );
    }
    let out = build_dir();
    let res = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(programs_dir())
        .arg(format!("OUT={}", out.display()))
        .output()
        .map_err(|e| format!("cannot run make: {e}"))?;
    if !res.status.success() {
        return Err(format!(
            "building the bare-metal programs failed:\n{}{}",
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        ));
    }
    Ok(out)
}

/// Path of the built ELF of program `name` (builds all programs on first use).
pub fn elf_path(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_all) {
        Ok(dir) => dir.join(format!("{name}.elf")),
        Err(e) => panic!("{e}"),
    }
}

/// A loadable program: PT_LOAD segments, entry point and symbol table.
pub struct Program {
    pub entry: u64,
    /// (guest address, file bytes, size in memory)
    pub segments: Vec<(u64, Vec<u8>, u64)>,
    /// symbol name -> (address, file offset of that address if it has file contents)
    pub symbols: HashMap<String, (u64, Option<u64>)>,
    pub image: Vec<u8>,
}

impl Program {
    pub fn load(path: &Path) -> Result<Program, String> {
        let image = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = object::File::parse(&*image).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut segments = Vec::new();
        let mut ranges = Vec::new();
        for seg in file.segments() {
            let data = seg
                .data()
                .map_err(|e| format!("{}: segment data: {e}", path.display()))?;
            let (off, fsz) = seg.file_range();
            ranges.push((seg.address(), off, fsz));
            segments.push((seg.address(), data.to_vec(), seg.size()));
        }
        let mut symbols = HashMap::new();
        for sym in file.symbols() {
            if let Ok(name) = sym.name() {
                let addr = sym.address();
                let off = ranges
                    .iter()
                    .find(|(a, _, sz)| addr >= *a && addr - *a < *sz)
                    .map(|(a, off, _)| off + (addr - a));
                symbols.insert(name.to_string(), (addr, off));
            }
        }
        Ok(Program {
            entry: file.entry(),
            segments,
            symbols,
            image,
        })
    }

    pub fn symbol(&self, name: &str) -> Result<u64, String> {
        self.symbols
            .get(name)
            .map(|s| s.0)
            .ok_or_else(|| format!("symbol {name} not found"))
    }

    /// A copy of the ELF file with the 8-byte initialized variable `name` set to `value`.
    pub fn patched_image(&self, name: &str, value: u64) -> Result<Vec<u8>, String> {
        let off = self
            .symbols
            .get(name)
            .and_then(|s| s.1)
            .ok_or_else(|| format!("symbol {name} has no file contents"))?;
        let off = usize::try_from(off).map_err(|e| e.to_string())?;
        let mut img = self.image.clone();
        img.get_mut(off..off + 8)
            .ok_or_else(|| format!("symbol {name} outside the file"))?
            .copy_from_slice(&value.to_le_bytes());
        Ok(img)
    }
}

/// Set by benchmarks to measure the interpreter alone.
static NO_JIT: AtomicBool = AtomicBool::new(false);

/// Harts made after this call compile hot code (`true`, the default) or only interpret.
#[allow(dead_code)]
pub fn set_jit(on: bool) {
    NO_JIT.store(!on, Ordering::Relaxed);
}

pub fn new_memory() -> Arc<GuestMemory> {
    GuestMemory::new(
        &[RamRange {
            base: RAM_BASE,
            size: RAM_SIZE,
        }],
        &[
            MmioRange {
                base: UART_BASE,
                size: UART_SIZE,
            },
            MmioRange {
                base: FINISHER_BASE,
                size: FINISHER_SIZE,
            },
            MmioRange {
                base: CLINT_BASE,
                size: CLINT_SIZE,
            },
        ],
    )
    .expect("guest memory layout")
}

/// Copies the program into guest memory and applies `pokes` (8-byte symbol values).
pub fn load_into(mem: &GuestMemory, prog: &Program, pokes: &[(&str, u64)]) -> Result<(), String> {
    for (addr, data, memsz) in &prog.segments {
        mem.write(*addr, data)
            .map_err(|e| format!("loading segment at {addr:#x}: {e}"))?;
        if *memsz > data.len() as u64 {
            let zeros = vec![0u8; (*memsz - data.len() as u64) as usize];
            mem.write(*addr + data.len() as u64, &zeros)
                .map_err(|e| format!("clearing segment at {addr:#x}: {e}"))?;
        }
    }
    for (name, value) in pokes {
        let addr = prog.symbol(name)?;
        mem.write_u64(addr, *value)
            .map_err(|e| format!("poking {name}: {e}"))?;
    }
    Ok(())
}

/// The platform devices shared by all harts of one run.
pub struct Machine {
    pub mem: Arc<GuestMemory>,
    console: Mutex<Vec<u8>>,
    msip: [AtomicU64; MAX_HARTS],
    mtimecmp: [AtomicU64; MAX_HARTS],
    /// Current mtime (monotonic maximum over all harts' views).
    mtime: Arc<AtomicU64>,
    /// Ticks added by fast-forwarding idle WFIs and by guest writes to mtime.
    skip: AtomicU64,
    handles: Mutex<Vec<Option<HartHandle>>>,
    /// Set once a hart writes the finisher: (exit code).
    finished: Mutex<Option<i32>>,
    stop: AtomicBool,
}

impl Machine {
    pub fn new(mem: Arc<GuestMemory>) -> Arc<Machine> {
        Arc::new(Machine {
            mem,
            console: Mutex::new(Vec::new()),
            msip: Default::default(),
            mtimecmp: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            mtime: Arc::new(AtomicU64::new(0)),
            skip: AtomicU64::new(0),
            handles: Mutex::new(vec![None; MAX_HARTS]),
            finished: Mutex::new(None),
            stop: AtomicBool::new(false),
        })
    }

    /// A hart of this machine, reset to `entry` in M-mode, with `time` from the CLINT.
    pub fn new_hart(self: &Arc<Self>, hart_id: u64, entry: u64) -> Hart {
        let mtime = self.mtime.clone();
        let cfg = HartConfig {
            hart_id,
            start_mode: PrivMode::Machine,
            sbi_exits: false,
            time_fn: Some(Arc::new(move || mtime.load(Ordering::SeqCst))),
            jit: !NO_JIT.load(Ordering::Relaxed),
            ..HartConfig::default()
        };
        let mut hart = Hart::new(self.mem.clone(), cfg);
        hart.set_pc(entry);
        if let Some(slot) = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(hart_id as usize)
        {
            *slot = Some(hart.handle());
        }
        hart
    }

    pub fn console(&self) -> Vec<u8> {
        self.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn console_string(&self) -> String {
        String::from_utf8_lossy(&self.console()).into_owned()
    }

    pub fn finished(&self) -> Option<i32> {
        *self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
        {
            h.kick();
        }
    }

    fn hart_count(&self) -> usize {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .count()
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn now(&self, instret: u64) -> u64 {
        let t = instret / INSNS_PER_TICK + self.skip.load(Ordering::SeqCst);
        self.mtime.fetch_max(t, Ordering::SeqCst).max(t)
    }

    fn handle(&self, hart: usize) -> Option<HartHandle> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hart)
            .cloned()
            .flatten()
    }

    /// Re-evaluates this hart's timer and software interrupt lines.
    fn update_irqs(&self, hart_id: usize, instret: u64, handle: &HartHandle) {
        let now = self.now(instret);
        let cmp = self.mtimecmp[hart_id].load(Ordering::SeqCst);
        handle.set_irq(Irq::MachineTimer, now >= cmp);
    }

    fn clint_read(&self, off: u64, instret: u64) -> u64 {
        let (reg, base) = if off < CLINT_MTIMECMP {
            let h = (off / 4) as usize;
            (
                self.msip.get(h).map_or(0, |m| m.load(Ordering::SeqCst)),
                off & !3,
            )
        } else if off < CLINT_MTIME {
            let h = ((off - CLINT_MTIMECMP) / 8) as usize;
            (
                self.mtimecmp.get(h).map_or(0, |m| m.load(Ordering::SeqCst)),
                off & !7,
            )
        } else {
            (self.now(instret), off & !7)
        };
        reg >> (8 * (off - base))
    }

    fn clint_write(&self, off: u64, size: u8, value: u64, instret: u64) {
        let merge = |old: u64, base: u64| -> u64 {
            let shift = 8 * (off - base);
            let mask = if size >= 8 {
                u64::MAX
            } else {
                ((1u64 << (8 * size as u64)) - 1) << shift
            };
            (old & !mask) | ((value << shift) & mask)
        };
        if off < CLINT_MTIMECMP {
            let h = (off / 4) as usize;
            if let Some(m) = self.msip.get(h) {
                let v = merge(m.load(Ordering::SeqCst), off & !3) & 1;
                m.store(v, Ordering::SeqCst);
                if let Some(handle) = self.handle(h) {
                    handle.set_irq(Irq::MachineSoft, v != 0);
                }
            }
        } else if off < CLINT_MTIME {
            let h = ((off - CLINT_MTIMECMP) / 8) as usize;
            if let Some(m) = self.mtimecmp.get(h) {
                let v = merge(m.load(Ordering::SeqCst), off & !7);
                m.store(v, Ordering::SeqCst);
            }
        } else {
            // Writing mtime: move the offset so that mtime reads the new value.
            let now = self.now(instret);
            let new = merge(now, off & !7);
            if new >= now {
                self.skip.fetch_add(new - now, Ordering::SeqCst);
                self.mtime.fetch_max(new, Ordering::SeqCst);
            }
        }
    }

    fn mmio_read(&self, addr: u64, size: u8, instret: u64) -> u64 {
        let v = if (UART_BASE..UART_BASE + UART_SIZE).contains(&addr) {
            // LSR: transmitter empty and holding register empty.
            if addr - UART_BASE == 5 {
                0x60
            } else {
                0
            }
        } else if (CLINT_BASE..CLINT_BASE + CLINT_SIZE).contains(&addr) {
            self.clint_read(addr - CLINT_BASE, instret)
        } else {
            0
        };
        if size >= 8 {
            v
        } else {
            v & ((1u64 << (8 * size as u64)) - 1)
        }
    }

    /// Handles a store; returns the exit code if it was a finisher write.
    fn mmio_write(&self, addr: u64, size: u8, value: u64, instret: u64) -> Option<i32> {
        if addr == UART_BASE {
            self.console
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(value as u8);
        } else if addr == FINISHER_BASE {
            let code = match value & 0xffff {
                0x5555 => Some(0),
                0x3333 => Some(((value >> 16) & 0xffff) as i32),
                _ => None,
            };
            if let Some(c) = code {
                let mut f = self.finished.lock().unwrap_or_else(|e| e.into_inner());
                f.get_or_insert(c);
            }
            return code;
        } else if (CLINT_BASE..CLINT_BASE + CLINT_SIZE).contains(&addr) {
            self.clint_write(addr - CLINT_BASE, size, value, instret);
        }
        None
    }
}

/// Limits for one hart's run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The guest fails if it has not finished after this many instructions.
    pub max_instret: u64,
    /// ... or after this much wall-clock time.
    pub max_wall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instret: 2_000_000_000,
            max_wall: Duration::from_secs(300),
        }
    }
}

/// How one hart's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HartEnd {
    /// This hart wrote the finisher.
    Finished(i32),
    /// Another hart finished (or [`Machine::stop`] was called).
    Stopped,
}

/// Runs `hart` until it writes the finisher, the machine is stopped, or it fails.
pub fn run_hart(machine: &Machine, hart: &mut Hart, limits: Limits) -> Result<HartEnd, String> {
    let id = hart.config().hart_id as usize;
    if id >= MAX_HARTS {
        return Err(format!("hart id {id} too large"));
    }
    let handle = hart.handle();
    let start = Instant::now();
    let mut idle_wfis = 0u32;
    loop {
        if machine.stopped() {
            return Ok(HartEnd::Stopped);
        }
        let instret = hart.instret();
        if instret > limits.max_instret {
            return Err(format!(
                "hart {id}: no finisher write after {instret} instructions (pc {:#x})",
                hart.pc()
            ));
        }
        if start.elapsed() > limits.max_wall {
            return Err(format!(
                "hart {id}: no finisher write after {:?} ({instret} instructions, pc {:#x})",
                limits.max_wall,
                hart.pc()
            ));
        }
        machine.update_irqs(id, instret, &handle);
        let exit = hart.run(SLICE);
        let instret = hart.instret();
        if exit != Exit::Wfi {
            idle_wfis = 0;
        }
        match exit {
            Exit::MmioRead { addr, size } => {
                let v = machine.mmio_read(addr, size, instret);
                hart.complete_mmio_read(v);
            }
            Exit::MmioWrite { addr, size, value } => {
                if let Some(code) = machine.mmio_write(addr, size, value, instret) {
                    machine.stop();
                    return Ok(HartEnd::Finished(code));
                }
            }
            Exit::Wfi => {
                let now = machine.now(instret);
                let cmp = machine.mtimecmp[id].load(Ordering::SeqCst);
                if cmp != u64::MAX && cmp > now {
                    // Nothing else can happen: jump to the timer deadline.
                    machine.skip.fetch_add(cmp - now, Ordering::SeqCst);
                    idle_wfis = 0;
                } else if cmp > now {
                    // No timer armed: only another hart can wake us.
                    idle_wfis += 1;
                    if machine.hart_count() <= 1 && idle_wfis > 1000 {
                        return Err(format!(
                            "hart {id}: waits in WFI with no timer armed and no other hart \
                             (pc {:#x})",
                            hart.pc()
                        ));
                    }
                    if idle_wfis > 100 {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    continue;
                }
            }
            Exit::BudgetExhausted | Exit::Kicked | Exit::Interrupt { .. } | Exit::Yield => {}
            Exit::Ecall => {
                return Err(format!(
                    "hart {id}: unexpected SBI ecall exit at pc {:#x}",
                    hart.pc()
                ))
            }
            Exit::Fatal(e) => return Err(format!("hart {id}: fatal: {e}")),
        }
    }
}

/// Result of running a program on vmk.
#[derive(Debug, Clone)]
pub struct VmkRun {
    pub exit_code: i32,
    pub console: String,
    pub instret: u64,
    pub elapsed: Duration,
}

/// Runs a single-hart program on vmk. `pokes` set 8-byte variables before the start.
pub fn run_vmk(elf: &Path, pokes: &[(&str, u64)], limits: Limits) -> Result<VmkRun, String> {
    let prog = Program::load(elf)?;
    let mem = new_memory();
    load_into(&mem, &prog, pokes)?;
    let machine = Machine::new(mem);
    let mut hart = machine.new_hart(0, prog.entry);
    let start = Instant::now();
    let end = run_hart(&machine, &mut hart, limits);
    let elapsed = start.elapsed();
    let console = machine.console_string();
    match end {
        Ok(HartEnd::Finished(code)) => Ok(VmkRun {
            exit_code: code,
            console,
            instret: hart.instret(),
            elapsed,
        }),
        Ok(HartEnd::Stopped) => Err(format!("stopped without a finisher write\n{console}")),
        Err(e) => Err(format!(
            "{e}\n--- console so far ---\n{console}\n--- end of console ---"
        )),
    }
}

/// Result of running a program in QEMU.
#[derive(Debug, Clone)]
pub struct QemuRun {
    /// None when QEMU was killed (timeout) or died from a signal.
    pub exit_code: Option<i32>,
    pub console: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

pub const QEMU: &str = "qemu-system-riscv64";

pub fn qemu_available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn require_qemu() {
    if !qemu_available() {
        panic!(
            "{QEMU} not found: the differential tests compare with QEMU \
             (apt-get install qemu-system-misc)"
        );
    }
}

/// Runs `elf` in QEMU's `virt` machine without firmware. `extra` adds options (e.g.
/// `-icount shift=0` for exact instruction counters, `-smp 4`).
pub fn run_qemu(elf: &Path, extra: &[&str], timeout: Duration) -> Result<QemuRun, String> {
    let mut child = Command::new(QEMU)
        .args([
            "-machine",
            "virt",
            "-nographic",
            "-bios",
            "none",
            "-m",
            "128M",
        ])
        .args(extra)
        .arg("-kernel")
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {QEMU}: {e}"))?;
    let start = Instant::now();
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {QEMU}: {e}")),
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let mut console = String::from_utf8_lossy(&out).into_owned();
    if !err.is_empty() {
        console.push_str("\n[qemu stderr] ");
        console.push_str(&String::from_utf8_lossy(&err));
    }
    Ok(QemuRun {
        exit_code: status.and_then(|s| s.code()),
        console,
        timed_out,
        elapsed,
    })
}

/// The lines that must agree between vmk and QEMU: those not starting with '#'.
pub fn comparable(console: &str) -> Vec<&str> {
    console.lines().filter(|l| !l.starts_with('#')).collect()
}

/// A readable description of the first difference between two consoles.
pub fn first_difference(vmk: &[&str], qemu: &[&str]) -> Option<String> {
    let n = vmk.len().max(qemu.len());
    for i in 0..n {
        let a = vmk.get(i).copied();
        let b = qemu.get(i).copied();
        if a != b {
            let from = i.saturating_sub(3);
            let mut s = format!("first difference at line {}:\n", i + 1);
            for j in from..i {
                s.push_str(&format!("    {}\n", vmk.get(j).copied().unwrap_or("")));
            }
            s.push_str(&format!("  vmk:  {}\n", a.unwrap_or("<end of output>")));
            s.push_str(&format!("  qemu: {}\n", b.unwrap_or("<end of output>")));
            return Some(s);
        }
    }
    None
}
