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

use std::sync::Arc;

use vmk_memory::{GuestMemory, RamRange};

use super::fuzzing::{allowed_regions, in_regions, read_le, QState};
use super::input::*;
use super::{status, VirtioMmio};
use crate::fuzzing::Reader;
use crate::{IrqLine, LevelIrq, MmioDevice};

const RAM_BASE: u64 = 0x8000_0000;
const RAM_SIZE: u64 = 0x1_0000;
const DATA: u64 = RAM_BASE + 0x8000;

fn queue_base(i: usize) -> (u64, u64, u64) {
    let b = RAM_BASE + 0x3000 * i as u64;
    (b, b + 0x1000, b + 0x2000)
}

/// What the operations reached (summed by the unit test).
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    pub ops: usize,
    pub live: usize,
    pub delivered: usize,
    /// Delivered events read back from guest memory and checked.
    pub checked: usize,
    pub needs_reset: usize,
    pub memory_checks: usize,
}

struct Rig {
    mem: Arc<GuestMemory>,
    dev: VirtioMmio<VirtioInput>,
    irq: Arc<LevelIrq>,
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

impl Rig {
    fn new() -> Rig {
        let mem = match GuestMemory::new(
            &[RamRange {
                base: RAM_BASE,
                size: RAM_SIZE,
            }],
            &[],
        ) {
            Ok(m) => m,
            Err(e) => panic!("guest memory: {e}"),
        };
        let irq = Arc::new(LevelIrq::new());
        let dev = VirtioMmio::new(
            VirtioInput::power_button(),
            mem.clone(),
            irq.clone() as Arc<dyn IrqLine>,
        );
        Rig {
            mem,
            dev,
            irq,
            next_desc: [0; 2],
            avail_idx: [0; 2],
            stream: 0,
            last_used: 0,
            bump: 0,
            dirty: false,
            seen: Seen::default(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; RAM_SIZE as usize];
        if self.mem.read(RAM_BASE, &mut v).is_err() {
            panic!("RAM unreadable");
        }
        v
    }

    fn qstate(&self, i: usize) -> Option<QState> {
        self.dev.queue(i).map(|q| QState {
            ready: q.ready(),
            size: u64::from(q.size()),
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        })
    }

    /// Runs one device operation and checks the invariants around it.
    fn access(&mut self, f: impl FnOnce(&mut VirtioMmio<VirtioInput>) -> u64) -> u64 {
        let before = self.snapshot();
        let q0: Vec<Option<QState>> = (0..2).map(|i| self.qstate(i)).collect();
        let status0 = self.dev.status();
        let delivered0 = self.dev.device().stats().delivered;
        let v = f(&mut self.dev);
        let after = self.snapshot();
        let q1: Vec<Option<QState>> = (0..2).map(|i| self.qstate(i)).collect();
        let status1 = self.dev.status();
        assert_eq!(
            self.irq.level(),
            self.dev.interrupt_status() != 0,
            "line vs InterruptStatus"
        );
        if status1 & status::DRIVER_OK != 0 {
            assert_ne!(
                status1 & status::FEATURES_OK,
                0,
                "DRIVER_OK without FEATURES_OK"
            );
            self.seen.live += 1;
        }
        if status1 & status::DEVICE_NEEDS_RESET != 0 && status0 & status::DEVICE_NEEDS_RESET == 0 {
            self.seen.needs_reset += 1;
        }
        assert!(self.dev.device().pending() <= MAX_PENDING_EVENTS);
        let s = self.dev.device().stats();
        let fresh = s.delivered - delivered0;
        self.seen.delivered += fresh as usize;
        if fresh > 0 && !self.dirty {
            self.check_events(&after, fresh);
        }
        self.stream += fresh;
        if before != after {
            let mut allowed = Vec::new();
            let mut sound = true;
            for (a, b) in q0.iter().zip(&q1) {
                let q = match (a, b) {
                    (_, Some(q)) if q.ready => q,
                    (Some(q), _) if q.ready => q,
                    _ => continue,
                };
                match allowed_regions(&before, q) {
                    Some(r) => allowed.extend(r),
                    None => sound = false,
                }
            }
            if sound {
                self.seen.memory_checks += 1;
                for (i, (a, b)) in before.iter().zip(&after).enumerate() {
                    if a != b {
                        let addr = RAM_BASE + i as u64;
                        assert!(
                            in_regions(&allowed, addr),
                            "device wrote {addr:#x} outside its rings and writable buffers"
                        );
                    }
                }
            }
        }
        v
    }

    fn wr(&mut self, off: u64, v: u32) {
        self.access(|d| {
            d.write(off, 4, u64::from(v));
            0
        });
    }

    fn probe(&mut self, r: &mut Reader) {
        self.wr(0x70, 0);
        self.wr(0x70, status::ACKNOWLEDGE | status::DRIVER);
        self.wr(0x24, 1);
        self.wr(0x20, if r.chance(240) { 1 } else { r.u32() });
        self.wr(0x24, 0);
        self.wr(0x20, if r.chance(240) { 0 } else { r.u32() });
        self.wr(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        let _ = self.mem.write(RAM_BASE, &[0u8; 0x6000]);
        for q in 0..2 {
            let (desc, avail, used) = queue_base(q);
            self.wr(0x30, q as u32);
            let size = [1u32, 2, 4, 8, 16, 64, 3, 128][usize::from(r.u8() % 8)];
            self.wr(0x38, size);
            for (reg, a) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
                self.wr(reg, a as u32);
                self.wr(reg + 4, (a >> 32) as u32);
            }
            self.wr(0x44, 1);
        }
        self.next_desc = [0; 2];
        self.avail_idx = [0; 2];
        self.last_used = 0;
        self.dirty = false;
        self.wr(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    /// The `fresh` events just written into well-formed buffers continue the press stream.
    fn check_events(&mut self, mem: &[u8], fresh: u64) {
        let Some(q) = self.qstate(0) else { return };
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
        let size = self.qstate(q).map_or(1, |s| s.size.max(1)) as u16;
        let (desc, avail, _) = queue_base(q);
        let i = self.next_desc[q] % size;
        self.next_desc[q] = self.next_desc[q].wrapping_add(1);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        let _ = self.mem.write(desc + 16 * u64::from(i), &d);
        let slot = u64::from(self.avail_idx[q] % size);
        let _ = self.mem.write(avail + 4 + 2 * slot, &i.to_le_bytes());
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        let _ = self.mem.write(avail + 2, &self.avail_idx[q].to_le_bytes());
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
                rig.wr(0x50, 0);
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
                rig.wr(0x50, kick);
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
                let _ = rig.mem.write(at, &v[..n]);
            }
            9 => {
                let v = r.u32();
                rig.wr(0x64, v);
            }
            10 => rig.wr(0x70, 0),
            _ => {
                let q = r.u32() % 4;
                rig.wr(0x50, q);
            }
        }
    }
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
        total.live += s.live;
        total.delivered += s.delivered;
        total.checked += s.checked;
        total.needs_reset += s.needs_reset;
        total.memory_checks += s.memory_checks;
    }
    total
}
