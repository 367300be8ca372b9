//! The logic of the `virtio_input_queue` fuzz target
//! (`fuzz/fuzz_targets/virtio_input_queue.rs`), here so that a unit test runs it too.
//!
//! [`virtio_input_queue`] decodes a byte string into operations of a hostile driver and a
//! host pressing the power button against a virtio-input device on virtio-mmio, in 64 KiB of
//! guest RAM: register and config-space accesses of any offset and size, a Linux-like probe,
//! event buffers that are good, read-only, short or outside RAM, status-queue chains, raw
//! writes to descriptors, rings and memory, kicks of any queue, host presses and resets. It
//! panics if the device panics or breaks an invariant:
//! - the interrupt line is high exactly when InterruptStatus is non-zero; DRIVER_OK only
//!   with FEATURES_OK;
//! - the device writes guest memory only in the used rings and device-writable buffers of
//!   its queues (checked when those do not overlap the rings and tables);
//! - events reach the guest in the order pressed, each press as KEY 1, SYN, KEY 0, SYN,
//!   and never more than [`MAX_PENDING_EVENTS`] wait.
//!
//! Running it: `cargo +nightly fuzz run virtio_input_queue` in `crates/vmk-devices`.

use super::harness::{queue_base, read_le, Checked, Coverage, FuzzBench, Regs, RAM_BASE};
use super::input::*;
use super::{status, VirtioMmio};
use crate::fuzzing::Reader;
use crate::MmioDevice;

const RAM_SIZE: u64 = 0x1_0000;
const DATA: u64 = RAM_BASE + 0x8000;

/// What the operations reached (summed by the unit test).
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    pub ops: usize,
    pub cov: Coverage,
    pub delivered: usize,
    /// Delivered events read back from guest memory and checked.
    pub checked: usize,
}

struct Rig {
    h: FuzzBench<VirtioInput>,
    next_desc: [u16; 2],
    avail_idx: [u16; 2],
    /// Events delivered since the device was made (presses are whole: KEY 1, SYN, KEY 0, SYN).
    stream: u64,
    /// The event queue's used entries already looked at.
    last_used: u16,
    /// Next good event buffer.
    bump: u64,
    /// Memory, descriptors or registers were changed behind the structured operations.
    dirty: bool,
    seen: Seen,
}

impl Checked for Rig {
    type Device = VirtioInput;

    /// Runs one device operation and checks the invariants around it
    /// ([`FuzzBench::checked`]), then the events it delivered.
    fn access(&mut self, f: impl FnOnce(&mut VirtioMmio<Self::Device>) -> u64) -> u64 {
        let delivered0 = self.h.b.lock().device().stats().delivered;
        let step = self.h.checked(Vec::new(), f);
        let (pending, delivered) = {
            let d = self.h.b.lock();
            (d.device().pending(), d.device().stats().delivered)
        };
        assert!(pending <= MAX_PENDING_EVENTS);
        let fresh = delivered - delivered0;
        self.seen.delivered += fresh as usize;
        if fresh > 0 && !self.dirty {
            self.check_events(&step.after, fresh);
        }
        self.stream += fresh;
        step.value
    }
}

impl Rig {
    fn new() -> Rig {
        Rig {
            h: FuzzBench::new(VirtioInput::power_button(), RAM_SIZE, 2),
            next_desc: [0; 2],
            avail_idx: [0; 2],
            stream: 0,
            last_used: 0,
            bump: 0,
            dirty: false,
            seen: Seen::default(),
        }
    }

    fn probe(&mut self, r: &mut Reader) {
        self.write_reg(0x70, 0);
        self.write_reg(0x70, status::ACKNOWLEDGE | status::DRIVER);
        let hi = if r.chance(240) { 1 } else { r.u32() };
        let lo = if r.chance(240) { 0 } else { r.u32() };
        self.write_driver_features(u64::from(hi) << 32 | u64::from(lo));
        self.write_reg(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.h.write_mem(RAM_BASE, &[0u8; 0x6000]);
        for q in 0..2 {
            let (desc, avail, used) = queue_base(q);
            let size = [1u32, 2, 4, 8, 16, 64, 3, 128][usize::from(r.u8() % 8)];
            self.setup_queue(q as u32, size, desc, avail, used);
        }
        self.next_desc = [0; 2];
        self.avail_idx = [0; 2];
        self.last_used = 0;
        self.dirty = false;
        self.write_reg(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    /// The `fresh` events just written into well-formed buffers continue the press stream.
    fn check_events(&mut self, mem: &[u8], fresh: u64) {
        let Some(q) = self.h.qstate(0) else { return };
        let size = q.size.max(1);
        let rd = |a: u64, n: usize| read_le(mem, a.wrapping_sub(RAM_BASE), n);
        let used_idx = rd(q.used + 2, 2) as u16;
        let mut n = 0;
        while self.last_used != used_idx && n < fresh {
            let slot = u64::from(self.last_used) % size;
            let id = rd(q.used + 4 + 8 * slot, 4);
            let len = rd(q.used + 8 + 8 * slot, 4);
            self.last_used = self.last_used.wrapping_add(1);
            if len != EVENT_LEN as u64 {
                continue;
            }
            let addr = rd(q.desc + 16 * (id % size), 8);
            let b = rd(addr, 8).to_le_bytes();
            let got = InputEvent {
                kind: u16::from_le_bytes([b[0], b[1]]),
                code: u16::from_le_bytes([b[2], b[3]]),
                value: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            };
            assert_eq!(
                got,
                press()[((self.stream + n) % 4) as usize],
                "event {} of the stream",
                self.stream + n
            );
            n += 1;
            self.seen.checked += 1;
        }
    }

    /// Makes a one-descriptor buffer available on queue `q` (size from the device).
    fn post(&mut self, q: usize, addr: u64, len: u32, flags: u16) {
        let size = self.h.qstate(q).map_or(1, |s| s.size.max(1)) as u16;
        let (desc, avail, _) = queue_base(q);
        let i = self.next_desc[q] % size;
        self.next_desc[q] = self.next_desc[q].wrapping_add(1);
        self.h.write_desc(desc, i, addr, len, flags, 0);
        // The index the rig published last, not what guest memory says: a hostile write
        // there is the test.
        let slot = u64::from(self.avail_idx[q] % size);
        self.h.write_mem(avail + 4 + 2 * slot, &i.to_le_bytes());
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.h
            .write_mem(avail + 2, &self.avail_idx[q].to_le_bytes());
    }
}

/// Runs the operations encoded in `data` against a fresh device and returns how many there
/// were; panics on a device panic or a broken invariant.
pub fn virtio_input_queue(data: &[u8]) -> usize {
    run(data).ops
}

pub(crate) fn run(data: &[u8]) -> Seen {
    let mut r = Reader { data, pos: 0 };
    let mut rig = Rig::new();
    while !r.done() && rig.seen.ops < 4096 {
        rig.seen.ops += 1;
        match r.u8() % 12 {
            0 => rig.probe(&mut r),
            1 | 2 => {
                // Good event buffers, then a kick.
                for _ in 0..=r.u8() % 8 {
                    // Buffers that do not overlap (the check reads them back).
                    let at = DATA + (rig.bump % 0x3f0) * 32;
                    rig.bump += 1;
                    rig.post(0, at, 8 + u32::from(r.u8() % 3) * 8, 2);
                }
                rig.write_reg(0x50, 0);
            }
            3 => {
                // A hostile buffer on any queue.
                rig.dirty = true;
                let q = usize::from(r.u8() % 2);
                let addr = match r.u8() % 4 {
                    0 => r.u64(),
                    1 => RAM_BASE + RAM_SIZE - u64::from(r.u8() % 16),
                    _ => DATA + u64::from(r.u16() % 0x7ff) * 8,
                };
                let len = if r.chance(128) {
                    r.u32()
                } else {
                    u32::from(r.u8() % 16)
                };
                let flags = r.u16() & 0x7;
                rig.post(q, addr, len, flags);
                let kick = if r.chance(200) { q as u32 } else { r.u32() };
                rig.write_reg(0x50, kick);
            }
            4 | 5 => {
                rig.access(|d| d.press_key(KEY_POWER) as u64);
            }
            6 => {
                // Any register, any size.
                rig.dirty = true;
                let off = u64::from(r.u16() % 0x200);
                let size = r.size();
                let v = r.u64();
                if r.chance(128) {
                    rig.access(|d| d.read(off, size));
                } else {
                    rig.access(|d| {
                        d.write(off, size, v);
                        0
                    });
                }
            }
            7 => {
                // Config space as the driver reads it.
                let (sel, sub) = (r.u8(), r.u8());
                rig.access(|d| {
                    d.write(0x100, 1, u64::from(sel));
                    d.write(0x101, 1, u64::from(sub));
                    let n = d.read(0x102, 1);
                    for i in 0..n.min(200) {
                        d.read(0x108 + i, 1);
                    }
                    n
                });
            }
            8 => {
                // Raw memory: descriptors, rings, anything.
                rig.dirty = true;
                let at = RAM_BASE + u64::from(r.u16()) % RAM_SIZE;
                let v = r.u64().to_le_bytes();
                let n = usize::from(r.u8() % 8) + 1;
                rig.h.write_mem(at, &v[..n]);
            }
            9 => {
                let v = r.u32();
                rig.write_reg(0x64, v);
            }
            10 => rig.write_reg(0x70, 0),
            _ => {
                let q = r.u32() % 4;
                rig.write_reg(0x50, q);
            }
        }
    }
    rig.seen.cov = rig.h.cov;
    rig.seen
}

/// The events of one press and release, as the guest must see them (also the unit tests'
/// expectation).
pub(crate) fn press() -> [InputEvent; 4] {
    let key = |value| InputEvent {
        kind: EV_KEY,
        code: KEY_POWER,
        value,
    };
    let syn = InputEvent {
        kind: EV_SYN,
        code: SYN_REPORT,
        value: 0,
    };
    [key(1), syn, key(0), syn]
}

/// Runs `n` pseudo-random inputs from `seed` (the unit test).
#[cfg(test)]
pub(crate) fn run_seeded(seed: u64, n: usize) -> Seen {
    let mut rng = crate::fuzzing::Rng(seed);
    let mut total = Seen::default();
    for _ in 0..n {
        let len = 64 + (rng.next() % 2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let s = run(&data);
        total.ops += s.ops;
        total.cov.add(&s.cov);
        total.delivered += s.delivered;
        total.checked += s.checked;
    }
    total
}
