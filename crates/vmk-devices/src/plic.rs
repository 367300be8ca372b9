//! The RISC-V platform-level interrupt controller (PLIC spec 1.0.0), as QEMU's `riscv,plic0`.
//!
//! Register map (32-bit registers; other access sizes and misaligned accesses read 0 and are
//! ignored, and counted):
//!
//! | offset | register |
//! |---|---|
//! | `0x00_0000 + 4*id` | priority of source `id` (0..=7, WARL: higher bits dropped) |
//! | `0x00_1000 + 4*w` | pending bits of sources `32*w ..` (read-only) |
//! | `0x00_2000 + 0x80*ctx + 4*w` | enable bits of context `ctx` |
//! | `0x20_0000 + 0x1000*ctx` | priority threshold of context `ctx` |
//! | `0x20_0004 + 0x1000*ctx` | claim (read) / complete (write) of context `ctx` |
//!
//! Contexts follow QEMU virt: context `2*h` is hart `h`'s M-mode, `2*h + 1` its S-mode
//! ([`context_for_hart`]). Source 0 does not exist: its priority, pending and enable bits
//! read 0.
//!
//! Sources are level-triggered, each behind a gateway with at most one request in flight: a
//! source is pending while its level is high and it is not claimed. A claim returns the
//! highest-priority source that is pending, enabled for the context and above its threshold
//! (ties go to the lowest id; priority 0 never interrupts), and clears its pending bit. A
//! completion (for a source enabled in that context; others are ignored) ends the claim, and
//! the source is pending again at once if its level is still high. Each context drives an
//! [`IrqLine`], high while some pending source is enabled for it above its threshold.
//!
//! Thread safety: devices raise sources ([`PlicSource`]) from their threads while vCPUs claim
//! and complete through MMIO; all of it goes through one lock.

use std::sync::{Arc, Mutex};

use crate::{lock, DeviceError, IrqLine, MmioDevice};

/// Highest priority (3 priority bits, as QEMU virt).
pub const PLIC_MAX_PRIORITY: u32 = 7;
/// Most contexts the register map has room for.
pub const PLIC_MAX_CONTEXTS: usize = 15872;
/// Most interrupt sources (ids 0..1024, 0 reserved).
const MAX_SOURCES: u32 = 1024;

const PRIORITY_BASE: u64 = 0x0;
const PENDING_BASE: u64 = 0x1000;
const ENABLE_BASE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT_BASE: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;
const CONTEXT_THRESHOLD: u64 = 0;
const CONTEXT_CLAIM: u64 = 4;

/// The PLIC context of a hart's M-mode (`supervisor == false`) or S-mode external interrupt,
/// as QEMU virt numbers them.
pub const fn context_for_hart(hart: usize, supervisor: bool) -> usize {
    2 * hart + supervisor as usize
}

struct State {
    /// Number of source ids, including the reserved 0.
    num_sources: u32,
    /// Words of 32 source bits.
    words: usize,
    /// Bits of valid sources (source 0 and ids >= num_sources cleared).
    valid: Vec<u32>,
    priority: Vec<u32>,
    /// Levels the devices drive.
    level: Vec<u32>,
    pending: Vec<u32>,
    /// Claimed and not yet completed.
    claimed: Vec<u32>,
    /// `words` words per context.
    enable: Vec<u32>,
    threshold: Vec<u32>,
    /// Level driven on each context's line.
    out: Vec<bool>,
    bad_accesses: u64,
}

struct Shared {
    state: Mutex<State>,
    contexts: Vec<Arc<dyn IrqLine>>,
}

/// The PLIC. Register it on the bus as `Arc<Mutex<Plic>>`; hand each device a
/// [`PlicSource`] from [`Plic::source`].
pub struct Plic {
    shared: Arc<Shared>,
}

/// One interrupt source of a PLIC: the line a device drives. Cheap to clone, thread-safe.
#[derive(Clone)]
pub struct PlicSource {
    shared: Arc<Shared>,
    id: u32,
}

fn bit(id: u32) -> (usize, u32) {
    ((id / 32) as usize, 1u32 << (id % 32))
}

fn test_bit(v: &[u32], id: u32) -> bool {
    let (w, m) = bit(id);
    v.get(w).is_some_and(|x| x & m != 0)
}

fn set_bit(v: &mut [u32], id: u32, on: bool) {
    let (w, m) = bit(id);
    if let Some(x) = v.get_mut(w) {
        if on {
            *x |= m;
        } else {
            *x &= !m;
        }
    }
}

impl State {
    fn enables(&self, ctx: usize) -> &[u32] {
        let start = ctx * self.words;
        self.enable
            .get(start..start + self.words)
            .unwrap_or_default()
    }

    fn prio(&self, id: u32) -> u32 {
        self.priority.get(id as usize).copied().unwrap_or(0)
    }

    /// The source a claim by `ctx` would return, or 0.
    fn best(&self, ctx: usize) -> u32 {
        let threshold = self
            .threshold
            .get(ctx)
            .copied()
            .unwrap_or(PLIC_MAX_PRIORITY);
        let mut best = 0;
        let mut best_prio = threshold;
        for (w, (&p, &e)) in self.pending.iter().zip(self.enables(ctx)).enumerate() {
            let mut bits = p & e;
            while bits != 0 {
                let id = w as u32 * 32 + bits.trailing_zeros();
                bits &= bits - 1;
                let prio = self.prio(id);
                if prio > best_prio {
                    best = id;
                    best_prio = prio;
                }
            }
        }
        best
    }

    /// Re-evaluates every context's output line and drives the ones that changed.
    fn update(&mut self, lines: &[Arc<dyn IrqLine>]) {
        for (ctx, line) in lines.iter().enumerate() {
            let level = self.best(ctx) != 0;
            if let Some(out) = self.out.get_mut(ctx) {
                if *out != level {
                    *out = level;
                    line.set_level(level);
                }
            }
        }
    }

    fn set_level(&mut self, id: u32, level: bool) -> bool {
        if !test_bit(&self.valid, id) || test_bit(&self.level, id) == level {
            return false;
        }
        set_bit(&mut self.level, id, level);
        // Pending while high and not in flight; dropping the line retracts a request.
        let pending = level && !test_bit(&self.claimed, id);
        set_bit(&mut self.pending, id, pending);
        true
    }

    fn claim(&mut self, ctx: usize) -> u32 {
        let id = self.best(ctx);
        if id != 0 {
            set_bit(&mut self.pending, id, false);
            set_bit(&mut self.claimed, id, true);
        }
        id
    }

    fn complete(&mut self, ctx: usize, value: u64) {
        let Ok(id) = u32::try_from(value) else {
            return;
        };
        if !test_bit(&self.valid, id) || !test_bit(self.enables(ctx), id) {
            return;
        }
        if test_bit(&self.claimed, id) {
            set_bit(&mut self.claimed, id, false);
            let high = test_bit(&self.level, id);
            set_bit(&mut self.pending, id, high);
        }
    }

    fn read(&mut self, offset: u64) -> Option<u32> {
        let nctx = self.out.len() as u64;
        match offset {
            o if o < PENDING_BASE => {
                let id = (o - PRIORITY_BASE) / 4;
                (id < u64::from(self.num_sources)).then(|| self.prio(id as u32))
            }
            o if o < ENABLE_BASE => {
                let w = ((o - PENDING_BASE) / 4) as usize;
                self.pending.get(w).copied()
            }
            o if o < CONTEXT_BASE => {
                let ctx = (o - ENABLE_BASE) / ENABLE_STRIDE;
                let w = ((o - ENABLE_BASE) % ENABLE_STRIDE / 4) as usize;
                if ctx < nctx && w < self.words {
                    self.enable.get(ctx as usize * self.words + w).copied()
                } else {
                    None
                }
            }
            o => {
                let ctx = (o - CONTEXT_BASE) / CONTEXT_STRIDE;
                if ctx >= nctx {
                    return None;
                }
                match (o - CONTEXT_BASE) % CONTEXT_STRIDE {
                    CONTEXT_THRESHOLD => self.threshold.get(ctx as usize).copied(),
                    CONTEXT_CLAIM => Some(self.claim(ctx as usize)),
                    _ => None,
                }
            }
        }
    }

    /// Returns whether the register exists.
    fn write(&mut self, offset: u64, value: u32) -> bool {
        let nctx = self.out.len() as u64;
        match offset {
            o if o < PENDING_BASE => {
                let id = ((o - PRIORITY_BASE) / 4) as u32;
                if id >= self.num_sources {
                    return false;
                }
                if test_bit(&self.valid, id) {
                    if let Some(p) = self.priority.get_mut(id as usize) {
                        *p = value & PLIC_MAX_PRIORITY;
                    }
                }
                true
            }
            // Pending bits are read-only.
            o if o < ENABLE_BASE => (((o - PENDING_BASE) / 4) as usize) < self.words,
            o if o < CONTEXT_BASE => {
                let ctx = (o - ENABLE_BASE) / ENABLE_STRIDE;
                let w = ((o - ENABLE_BASE) % ENABLE_STRIDE / 4) as usize;
                if ctx >= nctx || w >= self.words {
                    return false;
                }
                let mask = self.valid.get(w).copied().unwrap_or(0);
                if let Some(e) = self.enable.get_mut(ctx as usize * self.words + w) {
                    *e = value & mask;
                }
                true
            }
            o => {
                let ctx = (o - CONTEXT_BASE) / CONTEXT_STRIDE;
                if ctx >= nctx {
                    return false;
                }
                match (o - CONTEXT_BASE) % CONTEXT_STRIDE {
                    CONTEXT_THRESHOLD => {
                        if let Some(t) = self.threshold.get_mut(ctx as usize) {
                            *t = value & PLIC_MAX_PRIORITY;
                        }
                        true
                    }
                    CONTEXT_CLAIM => {
                        self.complete(ctx as usize, u64::from(value));
                        true
                    }
                    _ => false,
                }
            }
        }
    }
}

impl Plic {
    /// A PLIC with source ids `0..num_sources` (0 reserved; QEMU virt has 96, so the device
    /// tree's `riscv,ndev` is `num_sources - 1`) and one context per line in `contexts`,
    /// numbered as [`context_for_hart`] says. All priorities, enables and thresholds start at 0.
    pub fn new(num_sources: u32, contexts: Vec<Arc<dyn IrqLine>>) -> Result<Self, DeviceError> {
        if !(1..=MAX_SOURCES).contains(&num_sources) {
            return Err(DeviceError::PlicSources(num_sources));
        }
        if contexts.is_empty() || contexts.len() > PLIC_MAX_CONTEXTS {
            return Err(DeviceError::PlicContexts(contexts.len()));
        }
        let words = num_sources.div_ceil(32) as usize;
        let mut valid = vec![0u32; words];
        for id in 1..num_sources {
            set_bit(&mut valid, id, true);
        }
        let nctx = contexts.len();
        let state = State {
            num_sources,
            words,
            valid,
            priority: vec![0; num_sources as usize],
            level: vec![0; words],
            pending: vec![0; words],
            claimed: vec![0; words],
            enable: vec![0; words * nctx],
            threshold: vec![0; nctx],
            out: vec![false; nctx],
            bad_accesses: 0,
        };
        Ok(Plic {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                contexts,
            }),
        })
    }

    /// The handle a device drives source `id` with; `None` for 0 and ids out of range.
    pub fn source(&self, id: u32) -> Option<PlicSource> {
        let s = lock(&self.shared.state);
        (id != 0 && id < s.num_sources).then(|| PlicSource {
            shared: self.shared.clone(),
            id,
        })
    }

    /// Number of source ids including the reserved 0.
    pub fn num_sources(&self) -> u32 {
        lock(&self.shared.state).num_sources
    }

    /// The device tree's `riscv,ndev`: the highest source id.
    pub fn ndev(&self) -> u32 {
        self.num_sources() - 1
    }

    pub fn num_contexts(&self) -> usize {
        self.shared.contexts.len()
    }

    /// Length of the register space these contexts use (the bus range may be larger, e.g.
    /// QEMU virt's 0x60_0000).
    pub fn mmio_size(&self) -> u64 {
        CONTEXT_BASE + CONTEXT_STRIDE * self.num_contexts() as u64
    }

    /// Drives source `id` (what [`PlicSource::set_level`] does). Ids out of range are ignored.
    pub fn set_source_level(&self, id: u32, level: bool) {
        set_level(&self.shared, id, level);
    }

    /// The level context `ctx` drives on its line.
    pub fn context_level(&self, ctx: usize) -> bool {
        lock(&self.shared.state)
            .out
            .get(ctx)
            .copied()
            .unwrap_or(false)
    }

    /// What a claim by `ctx` would return now, without claiming.
    pub fn peek_claim(&self, ctx: usize) -> u32 {
        lock(&self.shared.state).best(ctx)
    }
}

fn set_level(shared: &Shared, id: u32, level: bool) {
    let mut s = lock(&shared.state);
    if s.set_level(id, level) {
        s.update(&shared.contexts);
    }
}

impl PlicSource {
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl IrqLine for PlicSource {
    fn set_level(&self, level: bool) {
        set_level(&self.shared, self.id, level);
    }
}

impl MmioDevice for Plic {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        let mut s = lock(&self.shared.state);
        if size != 4 || offset & 3 != 0 {
            s.bad_accesses += 1;
            return 0;
        }
        let was_claim = offset >= CONTEXT_BASE && offset % CONTEXT_STRIDE == CONTEXT_CLAIM;
        match s.read(offset) {
            Some(v) => {
                if was_claim {
                    s.update(&self.shared.contexts);
                }
                u64::from(v)
            }
            None => {
                s.bad_accesses += 1;
                0
            }
        }
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        let mut s = lock(&self.shared.state);
        if size != 4 || offset & 3 != 0 {
            s.bad_accesses += 1;
            return;
        }
        if s.write(offset, value as u32) {
            s.update(&self.shared.contexts);
        } else {
            s.bad_accesses += 1;
        }
    }

    fn bad_accesses(&self) -> u64 {
        lock(&self.shared.state).bad_accesses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LevelIrq;

    struct Rig {
        plic: Plic,
        lines: Vec<Arc<LevelIrq>>,
    }

    impl Rig {
        fn new(harts: usize) -> Rig {
            let lines: Vec<Arc<LevelIrq>> =
                (0..2 * harts).map(|_| Arc::new(LevelIrq::new())).collect();
            let ctx: Vec<Arc<dyn IrqLine>> = lines
                .iter()
                .map(|l| l.clone() as Arc<dyn IrqLine>)
                .collect();
            Rig {
                plic: Plic::new(96, ctx).unwrap(),
                lines,
            }
        }
        fn rd(&mut self, off: u64) -> u32 {
            self.plic.read(off, 4) as u32
        }
        fn wr(&mut self, off: u64, v: u32) {
            self.plic.write(off, 4, u64::from(v));
        }
        fn prio(&mut self, id: u32, p: u32) {
            self.wr(4 * u64::from(id), p);
        }
        fn enable(&mut self, ctx: usize, id: u32) {
            let off = ENABLE_BASE + ENABLE_STRIDE * ctx as u64 + 4 * u64::from(id / 32);
            let v = self.rd(off) | 1 << (id % 32);
            self.wr(off, v);
        }
        fn threshold(&mut self, ctx: usize, t: u32) {
            self.wr(CONTEXT_BASE + CONTEXT_STRIDE * ctx as u64, t);
        }
        fn claim(&mut self, ctx: usize) -> u32 {
            self.rd(CONTEXT_BASE + CONTEXT_STRIDE * ctx as u64 + 4)
        }
        fn complete(&mut self, ctx: usize, id: u32) {
            self.wr(CONTEXT_BASE + CONTEXT_STRIDE * ctx as u64 + 4, id);
        }
        fn pending(&mut self, id: u32) -> bool {
            self.rd(PENDING_BASE + 4 * u64::from(id / 32)) & (1 << (id % 32)) != 0
        }
    }

    #[test]
    fn context_numbering() {
        assert_eq!(context_for_hart(0, false), 0);
        assert_eq!(context_for_hart(0, true), 1);
        assert_eq!(context_for_hart(3, true), 7);
        let r = Rig::new(4);
        assert_eq!(r.plic.num_contexts(), 8);
        assert_eq!(r.plic.ndev(), 95);
        assert_eq!(r.plic.mmio_size(), 0x20_8000);
    }

    #[test]
    fn rejects_bad_configuration() {
        let one: Vec<Arc<dyn IrqLine>> = vec![Arc::new(LevelIrq::new())];
        assert!(Plic::new(0, one.clone()).is_err());
        assert!(Plic::new(1025, one.clone()).is_err());
        assert!(Plic::new(96, Vec::new()).is_err());
        assert!(Plic::new(1024, one).is_ok());
    }

    #[test]
    fn raise_claim_complete() {
        let mut r = Rig::new(1);
        let s_ctx = context_for_hart(0, true);
        let src = r.plic.source(10).unwrap();
        r.prio(10, 1);
        r.enable(s_ctx, 10);
        assert!(!r.lines[s_ctx].level());
        src.set_level(true);
        assert!(r.pending(10));
        assert!(r.lines[s_ctx].level());
        assert!(!r.lines[0].level(), "not enabled for M-mode");
        assert_eq!(r.claim(s_ctx), 10);
        assert!(!r.pending(10), "claim clears pending");
        assert!(!r.lines[s_ctx].level());
        assert_eq!(r.claim(s_ctx), 0, "in flight");
        src.set_level(false);
        r.complete(s_ctx, 10);
        assert!(!r.pending(10));
        assert!(!r.lines[s_ctx].level());
        assert_eq!(r.lines[s_ctx].rises(), 1);
    }

    #[test]
    fn level_still_high_after_complete_re_pends() {
        let mut r = Rig::new(1);
        let src = r.plic.source(5).unwrap();
        r.prio(5, 3);
        r.enable(1, 5);
        src.set_level(true);
        assert_eq!(r.claim(1), 5);
        src.set_level(true); // re-asserted while in flight: nothing new
        assert_eq!(r.claim(1), 0);
        r.complete(1, 5);
        assert!(r.pending(5));
        assert!(r.lines[1].level());
        assert_eq!(r.claim(1), 5);
    }

    #[test]
    fn lowering_the_line_retracts_a_pending_request() {
        let mut r = Rig::new(1);
        r.prio(7, 1);
        r.enable(1, 7);
        r.plic.set_source_level(7, true);
        assert!(r.lines[1].level());
        r.plic.set_source_level(7, false);
        assert!(!r.pending(7));
        assert!(!r.lines[1].level());
        assert_eq!(r.claim(1), 0);
    }

    #[test]
    fn priority_and_threshold() {
        let mut r = Rig::new(1);
        for (id, p) in [(3, 2), (4, 5), (5, 5), (6, 0)] {
            r.prio(id, p);
            r.enable(1, id);
            r.plic.set_source_level(id, true);
        }
        r.threshold(1, 5);
        assert!(!r.lines[1].level(), "nothing above threshold 5");
        assert_eq!(r.claim(1), 0);
        r.threshold(1, 4);
        assert!(r.lines[1].level());
        assert_eq!(r.claim(1), 4, "tie at priority 5: lowest id");
        assert_eq!(r.claim(1), 5);
        assert_eq!(r.claim(1), 0, "3 is below the threshold");
        r.threshold(1, 0);
        assert_eq!(r.claim(1), 3);
        assert_eq!(r.claim(1), 0, "priority 0 never interrupts");
        assert!(r.pending(6));
        // WARL: priorities and thresholds keep 3 bits.
        r.prio(3, 0xff);
        assert_eq!(r.rd(12), 7);
        r.threshold(1, 9);
        assert_eq!(r.rd(CONTEXT_BASE + CONTEXT_STRIDE), 1);
    }

    #[test]
    fn complete_of_a_source_not_enabled_is_ignored() {
        let mut r = Rig::new(2);
        r.prio(9, 1);
        r.enable(1, 9);
        r.plic.set_source_level(9, true);
        assert_eq!(r.claim(1), 9);
        r.complete(3, 9); // hart 1's S context: 9 not enabled there
        r.complete(1, 0);
        r.complete(1, 1000);
        r.complete(1, 95);
        assert_eq!(r.claim(1), 0, "still in flight");
        r.complete(1, 9);
        assert_eq!(r.claim(1), 9);
    }

    #[test]
    fn contexts_are_independent() {
        let mut r = Rig::new(2);
        r.prio(1, 1);
        r.prio(2, 2);
        r.enable(1, 1);
        r.enable(3, 1);
        r.enable(3, 2);
        r.plic.set_source_level(1, true);
        r.plic.set_source_level(2, true);
        assert!(r.lines[1].level() && r.lines[3].level());
        assert!(!r.lines[0].level() && !r.lines[2].level());
        assert_eq!(r.claim(3), 2);
        assert_eq!(r.claim(3), 1);
        // Source 1 was claimed by hart 1: hart 0 sees nothing now.
        assert!(!r.lines[1].level());
        assert_eq!(r.claim(1), 0);
        r.complete(3, 1);
        assert_eq!(
            r.claim(1),
            1,
            "re-pended (level still high), hart 0 may take it"
        );
    }

    #[test]
    fn source_zero_and_out_of_range() {
        let mut r = Rig::new(1);
        assert!(r.plic.source(0).is_none());
        assert!(r.plic.source(96).is_none());
        assert!(r.plic.source(95).is_some());
        r.prio(0, 7);
        assert_eq!(r.rd(0), 0);
        r.wr(ENABLE_BASE, 0xffff_ffff);
        r.wr(ENABLE_BASE + 8, 0xffff_ffff);
        assert_eq!(r.rd(ENABLE_BASE), 0xffff_fffe, "source 0 cannot be enabled");
        assert_eq!(r.rd(ENABLE_BASE + 8), 0xffff_ffff, "ids 64..96");
        r.plic.set_source_level(0, true);
        r.plic.set_source_level(500, true);
        assert_eq!(r.rd(PENDING_BASE), 0);
        let before = r.plic.bad_accesses();
        assert_eq!(
            r.rd(ENABLE_BASE + 12),
            0,
            "word 3 does not exist with 96 sources"
        );
        assert_eq!(
            r.rd(CONTEXT_BASE + 2 * CONTEXT_STRIDE),
            0,
            "context 2 does not exist"
        );
        assert_eq!(r.plic.read(0x20_0004, 8), 0);
        assert_eq!(r.plic.read(0x20_0006, 4), 0);
        r.plic.write(0x5f_fffc, 4, 1);
        r.plic.write(u64::MAX - 3, 4, 1);
        assert_eq!(r.plic.bad_accesses(), before + 6);
        // Pending is read-only.
        r.wr(PENDING_BASE, 0xffff_ffff);
        assert_eq!(r.rd(PENDING_BASE), 0);
    }

    #[test]
    fn linux_init_sequence() {
        // What drivers/irqchip/irq-sifive-plic.c does for an S-mode context: threshold 0,
        // all enables cleared, priority 1 per source when unmasked, enable bit per hwirq.
        let mut r = Rig::new(1);
        r.threshold(1, 0);
        for w in 0..3 {
            r.wr(ENABLE_BASE + ENABLE_STRIDE + 4 * w, 0);
        }
        r.prio(10, 1);
        r.enable(1, 10);
        let uart = r.plic.source(10).unwrap();
        uart.set_level(true);
        assert!(r.lines[1].level());
        let id = r.claim(1);
        assert_eq!(id, 10);
        uart.set_level(false); // the handler drained the UART
        r.complete(1, id);
        assert!(!r.lines[1].level());
    }

    #[test]
    fn concurrent_raise_and_claim() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let lines: Vec<Arc<dyn IrqLine>> = (0..4)
            .map(|_| Arc::new(LevelIrq::new()) as Arc<dyn IrqLine>)
            .collect();
        let plic = Arc::new(Mutex::new(Plic::new(96, lines).unwrap()));
        {
            let mut p = plic.lock().unwrap();
            for id in 1..=8u32 {
                p.write(4 * u64::from(id), 4, 1);
            }
            p.write(ENABLE_BASE + ENABLE_STRIDE, 4, 0x1fe);
            p.write(ENABLE_BASE + 3 * ENABLE_STRIDE, 4, 0x1fe);
        }
        let sources: Vec<PlicSource> = (1..=8)
            .map(|id| plic.lock().unwrap().source(id).unwrap())
            .collect();
        let handled = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Each device raises its line, then waits until a vCPU has handled it.
        let raised: Vec<Arc<std::sync::atomic::AtomicBool>> = (0..8)
            .map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false)))
            .collect();
        let mut threads = Vec::new();
        for ctx in [1u64, 3] {
            let plic = plic.clone();
            let sources = sources.clone();
            let raised = raised.clone();
            let handled = handled.clone();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let claim = CONTEXT_BASE + CONTEXT_STRIDE * ctx + 4;
                while !stop.load(Ordering::SeqCst) {
                    let id = plic.lock().unwrap().read(claim, 4) as u32;
                    if id == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    assert!((1..=8).contains(&id));
                    let i = id as usize - 1;
                    // The handler quiets the device, then the device may raise again.
                    sources[i].set_level(false);
                    assert!(
                        raised[i].swap(false, Ordering::SeqCst),
                        "claimed {id} twice"
                    );
                    handled.fetch_add(1, Ordering::SeqCst);
                    plic.lock().unwrap().write(claim, 4, u64::from(id));
                }
            }));
        }
        const ROUNDS: u64 = 2000;
        for i in 0..8usize {
            let src = sources[i].clone();
            let r = raised[i].clone();
            threads.push(std::thread::spawn(move || {
                for _ in 0..ROUNDS / 8 {
                    while r.load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                    r.store(true, Ordering::SeqCst);
                    src.set_level(true);
                }
            }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while handled.load(Ordering::SeqCst) < ROUNDS {
            assert!(
                std::time::Instant::now() < deadline,
                "stuck at {}",
                handled.load(Ordering::SeqCst)
            );
            std::thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(handled.load(Ordering::SeqCst), ROUNDS);
    }
}
