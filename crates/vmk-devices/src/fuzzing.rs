//! The logic of the `mmio_ops` fuzz target (`fuzz/fuzz_targets/mmio_ops.rs`), here so that a
//! normal unit test runs it too.
//!
//! [`mmio_ops`] decodes a byte string into a sequence of guest MMIO accesses (any offset, any
//! size, any value, reads and writes), host input and device interrupt lines, applies them to
//! a UART, a PLIC and a test device (directly and through an [`MmioBus`] at the machine's
//! addresses), and panics if a device panics or breaks an invariant:
//! - a claim returns 0 or a source that was pending, enabled for the context and above its
//!   threshold, namely the one with the highest priority (lowest id on ties);
//! - every PLIC context line is high exactly when some source is claimable for it;
//! - the UART's IIR says "interrupt pending" exactly when its line is high, LSR always shows
//!   THRE and TEMT and shows DR exactly when data is queued, and at most 16 bytes are queued;
//! - a UART whose line is low has no pending PLIC request.
//!
//! Running the fuzz target needs a nightly toolchain: `cargo +nightly fuzz run mmio_ops` in
//! `crates/vmk-devices` (with cargo-fuzz installed), or without cargo-fuzz, from
//! `crates/vmk-devices/fuzz`:
//!
//! ```text
//! RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
//!   -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
//!   -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
//!   cargo +nightly build --release --target x86_64-unknown-linux-gnu --bin mmio_ops
//! target/x86_64-unknown-linux-gnu/release/mmio_ops corpus/ -max_total_time=600
//! ```

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use crate::layout::{
    PLIC_BASE, PLIC_NUM_SOURCES, PLIC_SIZE, TEST_BASE, TEST_SIZE, UART_BASE, UART_IRQ, UART_SIZE,
};
use crate::{
    IrqLine, LevelIrq, MmioBus, MmioDevice, Plic, PlicSource, PowerState, SifiveTest, Uart,
    UartInput,
};

const CONTEXTS: usize = 4;

/// Reads decoding parameters from a fuzz input; yields zeros once it runs out. Shared by the
/// fuzz targets of this crate (device registers, virtio queues).
pub(crate) struct Reader<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) pos: usize,
}

impl Reader<'_> {
    pub(crate) fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// Mostly valid access sizes, sometimes not.
    pub(crate) fn size(&mut self) -> u8 {
        [1, 2, 4, 8, 4, 4, 0, 3, 16, 255][usize::from(self.u8() % 10)]
    }

    /// true with probability n/256.
    pub(crate) fn chance(&mut self, n: u8) -> bool {
        self.u8() < n
    }
}

/// xorshift64*: a fixed, dependency-free pseudo-random source for the seeded tests that
/// drive the fuzz targets' logic.
#[cfg(test)]
pub(crate) struct Rng(pub(crate) u64);

#[cfg(test)]
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Rig {
    uart: Arc<Mutex<Uart>>,
    uart_irq: Arc<LevelIrq>,
    input: UartInput,
    plic: Arc<Mutex<Plic>>,
    lines: Vec<Arc<LevelIrq>>,
    sources: Vec<PlicSource>,
    test: Arc<Mutex<SifiveTest>>,
    bus: MmioBus,
    seen: Seen,
}

/// What the operations reached, so the unit test can tell that the pseudo-random input got
/// the devices into interesting states.
#[derive(Debug, Default)]
struct Seen {
    ops: Cell<usize>,
    claims: Cell<usize>,
    context_lines_high: Cell<usize>,
    uart_interrupts: Cell<usize>,
    rx_bytes_read: Cell<usize>,
}

fn bump(c: &Cell<usize>) {
    c.set(c.get() + 1);
}

use vmk_base::lock;

impl Rig {
    fn new() -> Rig {
        let lines: Vec<Arc<LevelIrq>> = (0..CONTEXTS).map(|_| Arc::new(LevelIrq::new())).collect();
        let ctx: Vec<Arc<dyn IrqLine>> = lines
            .iter()
            .map(|l| l.clone() as Arc<dyn IrqLine>)
            .collect();
        let plic = match Plic::new(PLIC_NUM_SOURCES, ctx) {
            Ok(p) => p,
            Err(e) => panic!("PLIC setup: {e}"),
        };
        let sources: Vec<PlicSource> = (1..=8).filter_map(|id| plic.source(id)).collect();
        let uart_src = plic.source(UART_IRQ);
        let uart_irq = Arc::new(LevelIrq::new());
        let rec = uart_irq.clone();
        let tee = move |level: bool| {
            rec.set_level(level);
            if let Some(s) = &uart_src {
                s.set_level(level);
            }
        };
        let uart = Uart::new(Box::new(std::io::sink()), Some(Arc::new(tee)));
        let input = uart.input();
        let uart = Arc::new(Mutex::new(uart));
        let plic = Arc::new(Mutex::new(plic));
        let test = Arc::new(Mutex::new(SifiveTest::new(PowerState::new())));
        let mut bus = MmioBus::new();
        let regs = [
            bus.register("uart", UART_BASE, UART_SIZE, uart.clone()),
            bus.register("plic", PLIC_BASE, PLIC_SIZE, plic.clone()),
            bus.register("test", TEST_BASE, TEST_SIZE, test.clone()),
        ];
        for r in regs {
            if let Err(e) = r {
                panic!("bus setup: {e}");
            }
        }
        Rig {
            uart,
            uart_irq,
            input,
            plic,
            lines,
            sources,
            test,
            bus,
            seen: Seen::default(),
        }
    }

    fn plic_rd(&self, off: u64) -> u32 {
        lock(&self.plic).read(off, 4) as u32
    }

    /// The claim a context would get, computed from the register file as the guest sees it.
    fn expected_claim(&self, ctx: u64) -> u32 {
        let threshold = self.plic_rd(0x20_0000 + 0x1000 * ctx);
        let mut best = 0;
        let mut best_prio = threshold;
        for id in 1..PLIC_NUM_SOURCES {
            let w = u64::from(id / 32) * 4;
            let b = 1u32 << (id % 32);
            let pending = self.plic_rd(0x1000 + w) & b != 0;
            let enabled = self.plic_rd(0x2000 + 0x80 * ctx + w) & b != 0;
            let prio = self.plic_rd(4 * u64::from(id));
            if pending && enabled && prio > best_prio {
                best = id;
                best_prio = prio;
            }
        }
        best
    }

    fn plic_pending(&self, id: u32) -> bool {
        self.plic_rd(0x1000 + u64::from(id / 32) * 4) & (1 << (id % 32)) != 0
    }

    fn check_invariants(&self) {
        for ctx in 0..CONTEXTS {
            let want = self.expected_claim(ctx as u64) != 0;
            let line = self.lines.get(ctx).is_some_and(|l| l.level());
            assert_eq!(line, want, "PLIC context {ctx} line");
            assert_eq!(
                lock(&self.plic).context_level(ctx),
                want,
                "PLIC context {ctx} level"
            );
            if want {
                bump(&self.seen.context_lines_high);
            }
        }
        let (queued, level) = {
            let u = lock(&self.uart);
            (u.rx_queued(), u.irq_level())
        };
        assert!(queued <= crate::UART_RX_FIFO_LEN, "{queued} bytes queued");
        assert_eq!(level, self.uart_irq.level(), "UART line");
        if !level {
            assert!(
                !self.plic_pending(UART_IRQ),
                "UART line low but PLIC source pending"
            );
        }
    }

    fn uart_op(&self, r: &mut Reader, write: bool) {
        let off = u64::from(r.u8() % 12);
        let size = r.size();
        let mut u = lock(&self.uart);
        if write {
            u.write(off, size, r.u64());
            return;
        }
        let level_before = self.uart_irq.level();
        let queued_before = u.rx_queued();
        let v = u.read(off, size);
        if !matches!(size, 1 | 2 | 4 | 8) || off > 7 {
            assert_eq!(v, 0);
            return;
        }
        assert!(v <= 0xff, "UART register wider than a byte: {v:#x}");
        drop(u);
        // LCR.DLAB does not affect IIR/LSR.
        match off {
            2 => {
                let id = v & 0x0f;
                assert!(
                    matches!(id, 0x0 | 0x1 | 0x2 | 0x4 | 0x6 | 0xc),
                    "IIR {v:#x}"
                );
                assert_eq!(id & 1 == 0, level_before, "IIR {v:#x} vs line");
                if level_before {
                    bump(&self.seen.uart_interrupts);
                }
            }
            5 => {
                assert_eq!(v & 0x60, 0x60, "LSR {v:#x}: THRE and TEMT");
                assert_eq!(v & 1 != 0, queued_before > 0, "LSR {v:#x}: DR");
            }
            0 if queued_before > 0 && lock(&self.uart).rx_queued() < queued_before => {
                bump(&self.seen.rx_bytes_read);
            }
            _ => {}
        }
    }

    /// An offset in the PLIC: mostly registers that matter (priorities, enables of the first
    /// word, thresholds, claim/complete), sometimes anything.
    fn plic_offset(&self, r: &mut Reader) -> u64 {
        let ctx = u64::from(r.u8() % (CONTEXTS as u8 + 1));
        let word = |r: &mut Reader| {
            let b = r.u8();
            u64::from(if b < 192 { 0 } else { b % 4 })
        };
        match r.u8() % 20 {
            0..=5 => 4 * u64::from(r.source_id()),
            6 => 0x1000 + 4 * word(r),
            7..=12 => 0x2000 + 0x80 * ctx + 4 * word(r),
            13 | 14 => 0x20_0000 + 0x1000 * ctx,
            15..=17 => 0x20_0004 + 0x1000 * ctx,
            _ => u64::from(r.u32()) % PLIC_SIZE,
        }
    }

    fn plic_op(&self, r: &mut Reader, write: bool) {
        let off = self.plic_offset(r);
        let size = if r.u8() & 7 == 0 { r.size() } else { 4 };
        if write {
            let value = match r.u8() % 3 {
                0 => u64::from(r.source_id()),
                1 => u64::from(r.u8() % 8),
                _ => r.u64(),
            };
            lock(&self.plic).write(off, size, value);
            return;
        }
        let is_claim = size == 4
            && off >= 0x20_0000
            && off % 0x1000 == 4
            && (off - 0x20_0004) / 0x1000 < CONTEXTS as u64;
        if is_claim {
            self.claim((off - 0x20_0004) / 0x1000);
        } else {
            let v = lock(&self.plic).read(off, size);
            assert!(v <= u64::from(u32::MAX));
        }
    }

    /// A claim by `ctx`, checked against the register file.
    fn claim(&self, ctx: u64) -> u32 {
        let expected = self.expected_claim(ctx);
        let v = lock(&self.plic).read(0x20_0004 + 0x1000 * ctx, 4);
        assert_eq!(v, u64::from(expected), "claim by context {ctx}");
        if v != 0 {
            bump(&self.seen.claims);
            assert!(
                !self.plic_pending(expected),
                "claimed source {v} still pending"
            );
        }
        expected
    }

    /// What a guest's interrupt handler does: claim, quiet the device (or not), complete
    /// (usually on the same context).
    fn handle_interrupt(&self, r: &mut Reader) {
        let ctx = u64::from(r.u8()) % CONTEXTS as u64;
        let id = self.claim(ctx);
        let how = r.u8();
        if how & 1 != 0 {
            if let Some(s) = id.checked_sub(1).and_then(|i| self.sources.get(i as usize)) {
                s.set_level(false);
            }
        }
        if how & 2 != 0 {
            let ctx = if how & 4 != 0 {
                u64::from(r.u8()) % 5
            } else {
                ctx
            };
            lock(&self.plic).write(0x20_0004 + 0x1000 * ctx, 4, u64::from(id));
        }
    }

    fn step(&self, r: &mut Reader) {
        match r.u8() % 12 {
            0 => self.uart_op(r, true),
            1 => self.uart_op(r, false),
            2 => {
                let n = usize::from(r.u8() % 24);
                let bytes: Vec<u8> = (0..n).map(|_| r.u8()).collect();
                let took = self.input.try_push_input(&bytes);
                assert!(took <= n && took <= crate::UART_RX_FIFO_LEN);
            }
            3 => self.plic_op(r, true),
            4 | 5 => self.plic_op(r, false),
            6 => {
                let which = r.u8();
                let level = r.u8() & 1 != 0;
                match self.sources.get(usize::from(which % 10)) {
                    Some(s) => s.set_level(level),
                    None => lock(&self.plic).set_source_level(u32::from(which), level),
                }
            }
            7 => {
                let addr = match r.u8() % 4 {
                    0 => UART_BASE + u64::from(r.u8()),
                    1 => PLIC_BASE + u64::from(r.u32()) % (PLIC_SIZE + 8),
                    2 => TEST_BASE + u64::from(r.u16_ish()),
                    _ => r.u64(),
                };
                let size = r.size();
                if r.u8() & 1 == 0 {
                    self.bus.read(addr, size);
                } else {
                    let v = r.u64();
                    self.bus.write(addr, size, v);
                }
            }
            8 => {
                let off = u64::from(r.u8() % 8);
                let size = r.size();
                let v = match r.u8() % 4 {
                    0 => 0x5555,
                    1 => 0x7777,
                    2 => (u64::from(r.u8()) << 16) | 0x3333,
                    _ => r.u64(),
                };
                let mut t = lock(&self.test);
                t.write(off, size, v);
                assert_eq!(t.read(off, size), 0);
                t.state().take();
            }
            10 => self.handle_interrupt(r),
            _ => {
                // Anything at all, straight at a device.
                let off = r.u64();
                let size = r.u8();
                let v = r.u64();
                let write = r.u8() & 1 != 0;
                let dev: &Mutex<dyn MmioDevice> = match r.u8() % 3 {
                    0 => &*self.uart,
                    1 => &*self.plic,
                    _ => &*self.test,
                };
                let mut d = lock(dev);
                if write {
                    d.write(off, size, v);
                } else {
                    d.read(off, size);
                }
            }
        }
    }
}

impl Reader<'_> {
    /// A source id, mostly one the rig drives (1..=8 and the UART's 10), sometimes any.
    fn source_id(&mut self) -> u8 {
        let b = self.u8();
        if b < 192 {
            b % 12
        } else {
            b % 100
        }
    }

    fn u16_ish(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()]) % 0x1100
    }
}

/// Runs the operations encoded in `data` against fresh devices and returns how many there
/// were; panics on a device panic or a broken invariant.
pub fn mmio_ops(data: &[u8]) -> usize {
    run(data).ops.get()
}

fn run(data: &[u8]) -> Seen {
    let rig = Rig::new();
    let mut r = Reader { data, pos: 0 };
    while !r.done() {
        rig.step(&mut r);
        rig.check_invariants();
        bump(&rig.seen.ops);
    }
    rig.seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_mmio_ops() {
        let mut rng = Rng(0x5eed_0f0b_5e55_ed00);
        let total = Seen::default();
        for _ in 0..200 {
            let len = 256 + (rng.next() % 4096) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let seen = run(&data);
            for (t, s) in [
                (&total.ops, &seen.ops),
                (&total.claims, &seen.claims),
                (&total.context_lines_high, &seen.context_lines_high),
                (&total.uart_interrupts, &seen.uart_interrupts),
                (&total.rx_bytes_read, &seen.rx_bytes_read),
            ] {
                t.set(t.get() + s.get());
            }
        }
        eprintln!("{total:?}");
        assert!(total.ops.get() > 5000, "{total:?}");
        assert!(total.claims.get() > 50, "{total:?}");
        assert!(total.context_lines_high.get() > 500, "{total:?}");
        assert!(total.uart_interrupts.get() > 50, "{total:?}");
        assert!(total.rx_bytes_read.get() > 50, "{total:?}");
    }

    /// A sequence that exercises claims with sources up: raise, enable, prioritise, claim.
    #[test]
    fn directed_claims() {
        let mut data = Vec::new();
        for id in 1..=8u8 {
            // set source `id` (handle index id-1) high
            data.extend_from_slice(&[6, id - 1, 1]);
            // priority of `id` = id % 8 (op 3, ctx byte, class 0, id, size byte, value class 1)
            data.extend_from_slice(&[3, 0, 0, id, 1, 1, id]);
            // enable word 0 of context 1 = 0x1fe (class 7, value class 2 = u64)
            data.extend_from_slice(&[3, 1, 7, 0, 1, 2, 0xfe, 0x01, 0, 0, 0, 0, 0, 0]);
        }
        for _ in 0..10 {
            data.extend_from_slice(&[4, 1, 15, 1]); // claim on context 1
        }
        let seen = run(&data);
        assert_eq!(seen.ops.get(), 34);
        // Source 8 got priority 0: it never interrupts.
        assert_eq!(seen.claims.get(), 7, "{seen:?}");
    }
}
