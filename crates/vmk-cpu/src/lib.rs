//! The vmk virtual CPU: a RISC-V RV64GC hart (RV64IMAFDC, Zicsr, Zifencei, Zicntr) with
//! M, S and U modes and Sv39/Sv48 paging, executed in software.
//!
//! A [`Hart`] runs guest code over a [`GuestMemory`] until something needs the hypervisor: an
//! [`Exit`]. Instructions are decoded once into blocks cached by guest physical address
//! (dropped by stores to cached code pages, re-checked against memory after FENCE.I); on
//! x86-64 Linux, blocks that run often are compiled to host code (see `jit.rs` and
//! [`HartConfig::jit`]). Guest virtual addresses are
//! translated through a per-vCPU software TLB that caches the combined guest-virtual →
//! host-pointer translation (the shadow page table); it is flushed by SFENCE.VMA, satp writes,
//! changes of MPRV/SUM/MXR, and by [`GuestMemory::shootdown`].
//!
//! Documented implementation choices:
//! - Misaligned loads and stores are performed (no trap), also across pages; misaligned AMOs
//!   and LR/SC raise address-misaligned exceptions.
//! - PMP CSRs (16 entries) hold what is written but do not restrict accesses.
//! - A/D bits are set by the hart when it walks a page table (no page fault for A=0/D=0).
//! - satp accepts Bare, Sv39 and Sv48; other modes are ignored (WARL).
//! - FENCE is a no-op: guest accesses are host accesses in program order on a TSO host and AMOs
//!   are sequentially consistent host atomics.
//! - SC succeeds when memory still holds the value LR read (a compare-and-swap, as QEMU does):
//!   another hart storing a different value and then the original one back in between is not
//!   detected (A-B-A). Linux's LR/SC loops are correct under this.
//! - SFENCE.VMA with an address flushes the whole TLB (entries do not record page sizes; the
//!   flush is O(1)).
//! - Host writes to guest memory (device DMA, loaders) do not invalidate decoded code: the
//!   guest's FENCE.I, or [`HartHandle::request_fence_i`], does.
//! - A trap costs one unit of the run budget, so a guest that faults at its own trap vector
//!   still returns from `run` when its slice is over.

mod csr;
pub mod csr_addr;
mod decode;
mod exec;
pub mod fpu;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod jit;
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[path = "jit_none.rs"]
mod jit;
mod mmu;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use vmk_memory::{GuestMemory, MmioRange, RamRange, VcpuSignal};

use decode::Op;

/// Privilege levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum PrivMode {
    User = 0,
    Supervisor = 1,
    Machine = 3,
}

impl PrivMode {
    fn from_bits(v: u64) -> PrivMode {
        match v & 3 {
            0 => PrivMode::User,
            1 => PrivMode::Supervisor,
            _ => PrivMode::Machine,
        }
    }
}

/// Interrupt lines the hypervisor can drive (the bit number is the mip bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Irq {
    SupervisorSoft = 1,
    MachineSoft = 3,
    SupervisorTimer = 5,
    MachineTimer = 7,
    SupervisorExternal = 9,
    MachineExternal = 11,
}

/// Why a guest cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FatalError {
    #[error("trap loop: {what} (cause {cause}) at pc {pc:#x}, and the trap handler at that address faults the same way; the loop was entered by {entered_by}")]
    TrapLoop {
        cause: u64,
        pc: u64,
        what: &'static str,
        /// The trap that jumped to the faulting handler.
        entered_by: String,
    },
    #[error("guest trap not delegated to S-mode while the hypervisor serves as M-mode: {what} (cause {cause}, tval {tval:#x}) at pc {pc:#x}")]
    UnhandledTrap {
        cause: u64,
        tval: u64,
        pc: u64,
        what: &'static str,
    },
}

/// Why [`Hart::run`] returned. This is the contract between the vCPU and the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// A load from an MMIO range. The hart has moved past the load; call
    /// [`Hart::complete_mmio_read`] with the value before running again.
    MmioRead { addr: u64, size: u8 },
    /// A store to an MMIO range. The hart has moved past the store.
    MmioWrite { addr: u64, size: u8, value: u64 },
    /// ECALL from S-mode with [`HartConfig::sbi_exits`]: an SBI call. Arguments are in a0-a7;
    /// the hypervisor writes the results to a0/a1. The hart has moved past the ECALL.
    Ecall,
    /// WFI with no interrupt pending. The hart has moved past the WFI; run it again once an
    /// interrupt line changes (or whenever: running with nothing pending just retires the WFI).
    Wfi,
    /// The instruction budget of this call is used up (the time slice ended).
    BudgetExhausted,
    /// [`HartHandle::kick`] was called.
    Kicked,
    /// The guest spins: it executed [`PAUSE_YIELD`] PAUSE hints in this `run` call (a
    /// spin-wait loop, e.g. on a lock another vCPU holds). The hart has moved past the
    /// PAUSE; the hypervisor may run another vCPU first (as pause-loop exiting does).
    Yield,
    /// The hart took an interrupt whose cause is in [`HartConfig::exit_on_interrupt`]; the
    /// guest is now at its trap handler.
    Interrupt { cause: u64 },
    /// The guest cannot make progress.
    Fatal(FatalError),
}

/// A time source for the `time` CSR, in ticks of the timebase.
pub type TimeFn = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Static configuration of a hart.
#[derive(Clone)]
pub struct HartConfig {
    pub hart_id: u64,
    /// Mode at reset: Machine for firmware, Supervisor when the hypervisor serves the SBI.
    pub start_mode: PrivMode,
    /// ECALL from S-mode leaves `run` as [`Exit::Ecall`] (the hypervisor is the SBI), and a
    /// trap that would enter M-mode is fatal (there is no M-mode software).
    pub sbi_exits: bool,
    /// Frequency of the `time` CSR.
    pub timebase_hz: u64,
    /// Source of the `time` CSR; `None` uses the host's monotonic clock at `timebase_hz`.
    pub time_fn: Option<TimeFn>,
    /// Interrupt causes (bit n = cause n) after whose delivery `run` returns
    /// [`Exit::Interrupt`].
    pub exit_on_interrupt: u64,
    /// Compile hot blocks to host code (x86-64 Linux hosts; elsewhere the interpreter runs
    /// all).
    pub jit: bool,
    /// Executions of a block before it is compiled. Most boot-time code runs a few times
    /// only: a higher threshold compiles less code (memory) for little speed.
    pub jit_threshold: u32,
}

impl Default for HartConfig {
    fn default() -> Self {
        HartConfig {
            hart_id: 0,
            start_mode: PrivMode::Machine,
            sbi_exits: false,
            timebase_hz: 10_000_000,
            time_fn: None,
            exit_on_interrupt: 0,
            jit: cfg!(all(target_arch = "x86_64", target_os = "linux")),
            jit_threshold: 128,
        }
    }
}

impl std::fmt::Debug for HartConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HartConfig")
            .field("hart_id", &self.hart_id)
            .field("start_mode", &self.start_mode)
            .field("sbi_exits", &self.sbi_exits)
            .field("timebase_hz", &self.timebase_hz)
            .field("exit_on_interrupt", &self.exit_on_interrupt)
            .field("jit", &self.jit)
            .field("jit_threshold", &self.jit_threshold)
            .finish()
    }
}

/// Attention bits of this crate's own, next to those of [`VcpuSignal`].
const ATTN_FENCE_I: u32 = 8;

struct HartShared {
    signal: Arc<VcpuSignal>,
    /// Interrupt lines driven by devices and the hypervisor (mip bit positions).
    lines: AtomicU64,
    /// Software-writable mip bits posted by other threads (IPIs), merged at a block boundary.
    posted: AtomicU64,
}

/// A handle other threads use to signal a running hart.
#[derive(Clone)]
pub struct HartHandle {
    shared: Arc<HartShared>,
}

impl HartHandle {
    /// Makes `run` return [`Exit::Kicked`] at the next block boundary (or at once if the hart
    /// is not running: the next `run` returns immediately).
    pub fn kick(&self) {
        self.shared.signal.request(VcpuSignal::KICK);
    }

    /// Drives an interrupt line. Lines are levels: the guest sees the bit in mip while it is
    /// raised. (Supervisor software interrupts for IPIs are usually raised, then lowered by
    /// the hypervisor when the guest clears sip.SSIP; see [`HartHandle::post_ssip`].)
    pub fn set_irq(&self, irq: Irq, level: bool) {
        let bit = 1u64 << irq as u64;
        if level {
            self.shared.lines.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.shared.lines.fetch_and(!bit, Ordering::SeqCst);
        }
        self.shared.signal.request(VcpuSignal::IRQ);
    }

    /// Sets sip.SSIP as software would (an IPI): the guest clears it itself.
    pub fn post_ssip(&self) {
        self.shared
            .posted
            .fetch_or(1 << Irq::SupervisorSoft as u64, Ordering::SeqCst);
        self.shared.signal.request(VcpuSignal::IRQ);
    }

    /// Makes the hart drop its decoded-instruction cache before it runs more code (remote
    /// FENCE.I).
    pub fn request_fence_i(&self) {
        self.shared.signal.request(ATTN_FENCE_I);
    }

    pub fn signal(&self) -> &Arc<VcpuSignal> {
        &self.shared.signal
    }
}

/// Load whose value comes from an MMIO exit.
#[derive(Debug, Clone, Copy)]
struct PendingLoad {
    op: Op,
}

/// One software-TLB entry: `host = va + addend` for every address of the page.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct TlbEntry {
    /// Virtual page | (generation << 2) | privilege; 0 never matches.
    tag: u64,
    addend: usize,
    gpa_page: u64,
}

const TLB_BITS: u32 = 10;
const TLB_SIZE: usize = 1 << TLB_BITS;
/// TLB generations live in tag bits 2..12.
const TLB_GEN_MAX: u64 = (1 << 10) - 1;

struct Tlb {
    read: Box<[TlbEntry]>,
    write: Box<[TlbEntry]>,
    fetch: Box<[TlbEntry]>,
}

impl Tlb {
    fn new() -> Tlb {
        Tlb {
            read: vec![TlbEntry::default(); TLB_SIZE].into_boxed_slice(),
            write: vec![TlbEntry::default(); TLB_SIZE].into_boxed_slice(),
            fetch: vec![TlbEntry::default(); TLB_SIZE].into_boxed_slice(),
        }
    }

    fn clear(&mut self) {
        for t in [&mut self.read, &mut self.write, &mut self.fetch] {
            t.fill(TlbEntry::default());
        }
    }
}

/// A decoded basic block: straight-line ops from one guest physical page, ending at a control
/// transfer, a system op, the page end or a length limit.
pub(crate) struct Block {
    ops: Vec<Op>,
    /// `ops.len()`, where compiled code can read it.
    n_ops: u64,
    /// Offset from the block's start of the instruction after its last op (where execution
    /// continues when no op left the block).
    end_off: i64,
    /// Host code for the block once it is hot.
    jit: Cell<Option<jit::JitFn>>,
    /// Executions so far, up to [`HartConfig::jit_threshold`]; `u32::MAX` when it will not
    /// be compiled.
    heat: Cell<u32>,
    /// The [`BlockCache::fence_gen`] at which the guest's code was last seen to still be
    /// these ops.
    checked: Cell<u64>,
}

impl Block {
    fn new(ops: Vec<Op>, end_off: i64, fence_gen: u64) -> Block {
        Block {
            n_ops: ops.len() as u64,
            ops,
            end_off,
            jit: Cell::new(None),
            heat: Cell::new(0),
            checked: Cell::new(fence_gen),
        }
    }
}

const JC_BITS: u32 = 12;
const JC_SIZE: usize = 1 << JC_BITS;

#[derive(Clone, Copy)]
#[repr(C)]
struct JcEntry {
    pc: u64,
    tag: u64,
    blk: *const Block,
}

/// Decoded-instruction cache, keyed by guest physical address, plus a virtual-pc jump cache.
struct BlockCache {
    /// Owns every block. Blocks are only freed by [`BlockCache::flush`], which runs at block
    /// boundaries, so a pointer to the executing block stays valid while it executes. Boxed so
    /// that pointers stay valid when the Vec grows.
    #[allow(clippy::vec_box)]
    arena: Vec<Box<Block>>,
    by_gpa: HashMap<u64, *const Block>,
    /// Guest physical pages that have decoded blocks, with the block addresses.
    code_pages: HashMap<u64, Vec<u64>>,
    jc: Box<[JcEntry]>,
    jc_gen: u64,
    /// Bumped by FENCE.I: blocks checked at an older generation are compared with guest
    /// memory before they run again.
    fence_gen: u64,
    flush_pending: bool,
    /// Code of compiled blocks; made at the first compile, `None` when the JIT is off.
    code: Option<jit::CodeArena>,
    /// The JIT is on and the code arena could be made (or has not been tried yet).
    jit_enabled: bool,
    /// Blocks compiled since the hart was made.
    compiled: u64,
}

const MAX_BLOCKS: usize = 1 << 17;

impl BlockCache {
    fn new() -> BlockCache {
        BlockCache {
            arena: Vec::new(),
            by_gpa: HashMap::new(),
            code_pages: HashMap::new(),
            jc: vec![
                JcEntry {
                    pc: 0,
                    tag: 0,
                    blk: std::ptr::null()
                };
                JC_SIZE
            ]
            .into_boxed_slice(),
            jc_gen: 1,
            fence_gen: 1,
            flush_pending: false,
            code: None,
            jit_enabled: false,
            compiled: 0,
        }
    }

    fn flush(&mut self) {
        self.by_gpa.clear();
        self.code_pages.clear();
        self.arena.clear();
        if let Some(code) = &mut self.code {
            code.reset();
        }
        self.invalidate_jc();
        self.flush_pending = false;
    }

    /// FENCE.I. Stores by this hart to pages with decoded code already dropped those blocks
    /// (see `protect_code_page`); what is left to catch is code written by other harts or by
    /// the host (DMA, loaders). Linux fences after every text patch (tens of thousands of
    /// times while booting), so rather than dropping every block, each block is compared
    /// with guest memory the next time it is looked up, and only changed pages are dropped.
    fn fence_i(&mut self) {
        self.fence_gen += 1;
        self.invalidate_jc();
    }

    fn invalidate_jc(&mut self) {
        self.jc_gen += 1;
        if self.jc_gen >= 1 << 60 {
            self.jc.fill(JcEntry {
                pc: 0,
                tag: 0,
                blk: std::ptr::null(),
            });
            self.jc_gen = 1;
        }
    }

    /// Forgets the blocks decoded from guest physical page `page` (the guest wrote to it).
    fn invalidate_page(&mut self, page: u64) {
        if let Some(addrs) = self.code_pages.remove(&page) {
            for a in addrs {
                self.by_gpa.remove(&a);
            }
            self.invalidate_jc();
        }
    }
}

/// The hart's pointers that compiled code (`jit.rs`) follows, at fixed offsets in the Hart.
#[repr(C)]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux")),
    allow(dead_code)
)]
pub(crate) struct JitCtx {
    pub tlb_read: *const TlbEntry,
    pub tlb_write: *const TlbEntry,
    pub jc: *const JcEntry,
    pub attention: *const AtomicU32,
    /// The jump cache tag of the current privilege and generation, set before each call.
    pub jc_tag: u64,
    /// The block whose op the run loop must go on with, when compiled code returns non-zero
    /// (it may be a later block than the one called).
    pub stopped: *const Block,
}

impl Default for JitCtx {
    fn default() -> Self {
        JitCtx {
            tlb_read: std::ptr::null(),
            tlb_write: std::ptr::null(),
            jc: std::ptr::null(),
            attention: std::ptr::null(),
            jc_tag: 0,
            stopped: std::ptr::null(),
        }
    }
}

/// One RISC-V hart.
pub struct Hart {
    // Hot state first.
    /// x registers; index 32 absorbs writes to x0, the rest is padding so that indices masked
    /// with 63 need no bounds check.
    x: [u64; 64],
    f: [u64; 32],
    pc: u64,
    instret: u64,
    budget_end: u64,
    /// Something local changed that the block-boundary check must look at.
    local_attention: bool,
    /// Low tag bits of TLB entries for data accesses: (generation << 2) | effective privilege.
    dtag: u64,
    /// Low tag bits for instruction fetch: (generation << 2) | privilege.
    ftag: u64,
    tlb: Tlb,
    tlb_gen: u64,
    cache: BlockCache,
    /// What compiled code reads to reach the TLBs and to go on to the next block itself.
    jit_ctx: JitCtx,

    mem: Arc<GuestMemory>,
    shared: Arc<HartShared>,
    seen_mem_generation: u64,
    pending_load: Option<PendingLoad>,
    reservation: Option<(u64, u64)>,
    cfg: HartConfig,
    clock_start: Instant,

    // Architectural CSR state.
    prv: PrivMode,
    mstatus: u64,
    medeleg: u64,
    mideleg: u64,
    mie: u64,
    mip_sw: u64,
    mtvec: u64,
    stvec: u64,
    mepc: u64,
    sepc: u64,
    mcause: u64,
    scause: u64,
    mtval: u64,
    stval: u64,
    mscratch: u64,
    sscratch: u64,
    satp: u64,
    mcounteren: u64,
    scounteren: u64,
    menvcfg: u64,
    senvcfg: u64,
    mcountinhibit: u64,
    cycle_offset: u64,
    pmpcfg: [u64; 8],
    pmpaddr: [u64; 64],
    fflags: u64,
    frm: u64,
    /// PAUSE hints executed in this `run` call (see [`Exit::Yield`]).
    pauses: u32,
}

/// PAUSE hints (Zihintpause) a `run` call executes before it returns [`Exit::Yield`]: a
/// spin-wait loop (Linux's cpu_relax) runs a few instructions per PAUSE, so this is a few
/// microseconds of spinning, past the short waits that end by themselves (as x86's
/// pause-loop exiting window).
pub const PAUSE_YIELD: u32 = 256;

impl Hart {
    /// Creates a hart at reset over `mem`: pc 0, all registers zero, in `cfg.start_mode`.
    pub fn new(mem: Arc<GuestMemory>, cfg: HartConfig) -> Hart {
        let signal = mem.register_vcpu();
        let seen = mem.tlb_generation();
        let mut h = Hart {
            x: [0; 64],
            f: [0; 32],
            pc: 0,
            instret: 0,
            budget_end: 0,
            local_attention: true,
            dtag: 0,
            ftag: 0,
            tlb: Tlb::new(),
            tlb_gen: 1,
            cache: BlockCache::new(),
            jit_ctx: JitCtx::default(),
            mem,
            shared: Arc::new(HartShared {
                signal,
                lines: AtomicU64::new(0),
                posted: AtomicU64::new(0),
            }),
            seen_mem_generation: seen,
            pending_load: None,
            reservation: None,
            prv: cfg.start_mode,
            cfg,
            clock_start: Instant::now(),
            mstatus: 0,
            medeleg: 0,
            mideleg: 0,
            mie: 0,
            mip_sw: 0,
            mtvec: 0,
            stvec: 0,
            mepc: 0,
            sepc: 0,
            mcause: 0,
            scause: 0,
            mtval: 0,
            stval: 0,
            mscratch: 0,
            sscratch: 0,
            satp: 0,
            mcounteren: 0,
            scounteren: 0,
            menvcfg: 0,
            senvcfg: 0,
            mcountinhibit: 0,
            cycle_offset: 0,
            pmpcfg: [0; 8],
            pmpaddr: [0; 64],
            fflags: 0,
            frm: 0,
            pauses: 0,
        };
        h.cache.jit_enabled = h.cfg.jit;
        // The TLBs, the jump cache and the signal are boxed: these pointers stay valid when
        // the Hart moves.
        h.jit_ctx = JitCtx {
            tlb_read: h.tlb.read.as_ptr(),
            tlb_write: h.tlb.write.as_ptr(),
            jc: h.cache.jc.as_ptr(),
            attention: &h.shared.signal.attention,
            jc_tag: 0,
            stopped: std::ptr::null(),
        };
        h.update_tags();
        h
    }

    pub fn handle(&self) -> HartHandle {
        HartHandle {
            shared: self.shared.clone(),
        }
    }

    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    pub fn config(&self) -> &HartConfig {
        &self.cfg
    }

    pub fn pc(&self) -> u64 {
        self.pc
    }

    pub fn set_pc(&mut self, pc: u64) {
        self.pc = pc & !1;
    }

    /// Integer register `i` (0..32); x0 reads 0.
    pub fn reg(&self, i: usize) -> u64 {
        if i == 0 || i >= 32 {
            0
        } else {
            self.x[i]
        }
    }

    pub fn set_reg(&mut self, i: usize, v: u64) {
        if i != 0 && i < 32 {
            self.x[i] = v;
        }
    }

    /// Floating-point register `i` (raw bits; singles are NaN-boxed).
    pub fn freg(&self, i: usize) -> u64 {
        self.f[i & 31]
    }

    pub fn set_freg(&mut self, i: usize, v: u64) {
        self.f[i & 31] = v;
    }

    pub fn priv_mode(&self) -> PrivMode {
        self.prv
    }

    pub fn set_priv_mode(&mut self, p: PrivMode) {
        self.set_prv(p);
    }

    /// Instructions retired.
    pub fn instret(&self) -> u64 {
        self.instret
    }

    /// Blocks compiled to host code since the hart was made (0 with the JIT off or
    /// unavailable).
    pub fn jit_blocks(&self) -> u64 {
        self.cache.compiled
    }

    /// Reads a CSR as M-mode software would, without privilege checks (for the hypervisor and
    /// debuggers). `None` for CSRs this hart does not have.
    pub fn csr(&self, csr: u16) -> Option<u64> {
        self.csr_read(csr).ok()
    }

    /// Writes a CSR as M-mode software would. Returns false for unknown or read-only CSRs.
    pub fn set_csr(&mut self, csr: u16, value: u64) -> bool {
        self.csr_write(csr, value).is_ok()
    }

    /// Supplies the value of the load that caused the last [`Exit::MmioRead`].
    pub fn complete_mmio_read(&mut self, value: u64) {
        if let Some(p) = self.pending_load.take() {
            self.finish_load(p.op, value);
        }
    }

    /// Runs guest code until an [`Exit`], for at most about `budget` instructions (checked at
    /// block boundaries).
    pub fn run(&mut self, budget: u64) -> Exit {
        if let Some(p) = self.pending_load.take() {
            // The hypervisor did not complete an MMIO read: the device returned nothing.
            self.finish_load(p.op, 0);
        }
        self.shared.signal.enter_run();
        self.sync_memory_generation();
        self.budget_end = self.instret.saturating_add(budget);
        self.pauses = 0;
        self.local_attention = true;
        let exit = self.run_loop();
        self.shared.signal.exit_run();
        exit
    }

    fn run_loop(&mut self) -> Exit {
        loop {
            if self.local_attention
                || self.instret >= self.budget_end
                || self.shared.signal.attention.load(Ordering::Relaxed) != 0
            {
                if let Some(e) = self.service() {
                    return e;
                }
            }
            let blk = match self.lookup_block() {
                Ok(b) => b,
                Err(e) => match e {
                    BlockErr::Trap(cause, tval) => {
                        if let Some(x) = self.take_trap(cause, tval, false) {
                            return x;
                        }
                        continue;
                    }
                    BlockErr::Straddle(op) => {
                        // An instruction that crosses a page: run it alone, uncached.
                        let blk = Block::new(vec![op], op.len as i64, 0);
                        self.instret += 1;
                        if let Some(x) = self.exec_block(&blk, 0) {
                            return x;
                        }
                        continue;
                    }
                },
            };
            // SAFETY: blocks are owned by `self.cache.arena` and freed only by
            // BlockCache::flush, which runs in `service` between blocks, never during one.
            let blk = unsafe { &*blk };
            self.instret += blk.ops.len() as u64;
            let (blk, start) = match blk.jit.get() {
                Some(code) => {
                    // Compiled code goes on to the next compiled block through the jump
                    // cache while this tag is current.
                    self.jit_ctx.jc_tag = self.jc_tag();
                    let vpc = self.pc;
                    let hart: *mut Hart = self;
                    // SAFETY: the code was compiled for this block and lives in
                    // `self.cache.code` until the flush that also frees the block; it touches
                    // only x, pc, instret, jit_ctx.stopped and guest RAM reached through the
                    // TLBs, and reads nothing that changes while it runs.
                    let r = unsafe { code(hart, vpc) };
                    if r == 0 {
                        continue;
                    }
                    // SAFETY: set by the code to a live block (freed only by a flush, which
                    // runs in `service`), whose entry pc it wrote to self.pc.
                    (unsafe { &*self.jit_ctx.stopped }, (r - 1) as usize)
                }
                None => {
                    self.heat_up(blk);
                    (blk, 0)
                }
            };
            if let Some(x) = self.exec_block(blk, start) {
                return x;
            }
        }
    }

    /// Counts an interpreted execution of `blk` and compiles it once it is hot.
    #[inline(always)]
    fn heat_up(&mut self, blk: &Block) {
        let heat = blk.heat.get();
        if heat < self.cfg.jit_threshold {
            blk.heat.set(heat + 1);
            return;
        }
        if heat == u32::MAX || !self.cache.jit_enabled {
            return;
        }
        self.compile(blk);
    }

    #[cold]
    fn compile(&mut self, blk: &Block) {
        if self.cache.code.is_none() {
            match jit::CodeArena::new() {
                Ok(a) => self.cache.code = Some(a),
                Err(e) => {
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| {
                        tracing::warn!(
                            "no executable memory for the JIT ({e}); vCPUs interpret all \
                             guest code, several times slower"
                        )
                    });
                    self.cache.jit_enabled = false;
                    return;
                }
            }
        }
        let Some(code) = &mut self.cache.code else {
            return;
        };
        match jit::compile(code, blk) {
            Ok(f) => {
                blk.jit.set(Some(f));
                self.cache.compiled += 1;
            }
            Err(jit::NoCode::Unsupported) => blk.heat.set(u32::MAX),
            Err(jit::NoCode::ArenaFull) => {
                self.cache.flush_pending = true;
                self.local_attention = true;
            }
        }
    }

    /// The slow part of the block boundary: signals from other threads, interrupts, budget.
    fn service(&mut self) -> Option<Exit> {
        let att = self.shared.signal.take();
        self.local_attention = false;
        if att & VcpuSignal::FLUSH_TLB != 0 {
            self.sync_memory_generation();
        }
        if att & VcpuSignal::IRQ != 0 {
            self.mip_sw |= self.shared.posted.swap(0, Ordering::SeqCst);
        }
        if att & ATTN_FENCE_I != 0 {
            self.cache.fence_i();
        }
        if self.cache.flush_pending || self.cache.arena.len() > MAX_BLOCKS {
            self.cache.flush();
        }
        if let Some(cause) = self.pending_interrupt() {
            if let Some(x) = self.take_trap(cause, 0, true) {
                return Some(x);
            }
            if self.cfg.exit_on_interrupt & (1 << cause) != 0 {
                return Some(Exit::Interrupt { cause });
            }
        }
        if att & VcpuSignal::KICK != 0 {
            return Some(Exit::Kicked);
        }
        if self.instret >= self.budget_end {
            return Some(Exit::BudgetExhausted);
        }
        None
    }

    /// Drops cached translations if the VM's page map changed, and acknowledges.
    fn sync_memory_generation(&mut self) {
        let g = self.mem.tlb_generation();
        if g != self.seen_mem_generation {
            self.flush_tlb();
            self.seen_mem_generation = g;
        }
        self.shared.signal.ack_generation(g);
    }

    fn time(&self) -> u64 {
        match &self.cfg.time_fn {
            Some(f) => f(),
            None => {
                let ns = self.clock_start.elapsed().as_nanos();
                (ns * self.cfg.timebase_hz as u128 / 1_000_000_000) as u64
            }
        }
    }
}

// SAFETY: the raw block pointers in the cache point into the hart's own arena; a Hart moves
// between threads as a whole.
unsafe impl Send for Hart {}

pub(crate) enum BlockErr {
    Trap(u64, u64),
    Straddle(Op),
}
