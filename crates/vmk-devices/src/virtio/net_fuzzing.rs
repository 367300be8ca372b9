//! The logic of the `virtio_net_queue` fuzz target
//! (`fuzz/fuzz_targets/virtio_net_queue.rs`), here so that a unit test runs it too.
//!
//! [`virtio_net_queue`] decodes a byte string into operations of a hostile driver and a
//! busy network against a virtio-net device on virtio-mmio, in 128 KiB of guest RAM:
//! register accesses, a Linux-like probe with a random feature subset and queue sizes,
//! well-formed or corrupted transmit chains (direct or indirect), receive buffers of many
//! sizes (some read-only, short, outside RAM), frames from the host of any length (beyond
//! the MTU too), control commands, raw descriptor/ring/memory writes, throttling by the
//! backend, interrupt handling and resets. It panics if the device panics or breaks an
//! invariant:
//! - the interrupt line is high exactly when InterruptStatus is non-zero; FEATURES_OK only
//!   with VERSION_1 and offered features, DRIVER_OK only with FEATURES_OK;
//! - the device writes guest memory only in the used rings and device-writable buffers of
//!   its queues (checked when those do not overlap the rings and tables);
//! - every frame the backend gets is 14..=MTU+18 bytes; a well-formed frame the guest
//!   sent alone reaches the backend unchanged;
//! - a frame delivered into well-formed buffers arrives whole after a correct header
//!   (`num_buffers` = the buffers it spans).
//!
//! Running it: `cargo +nightly fuzz run virtio_net_queue` in `crates/vmk-devices`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::harness::{queue_base, read_le, Checked, Coverage, FuzzBench, Regs, RAM_BASE};
use super::net::*;
use super::{features, status, VirtioMmio};
use crate::fuzzing::Reader;

const RAM_SIZE: u64 = 0x2_0000;
const INDIRECT: u64 = RAM_BASE + 0x9000;
const DATA: u64 = RAM_BASE + 0xa000;
const DATA_END: u64 = RAM_BASE + RAM_SIZE;
const MTU: u16 = 1500;
const MAC: [u8; 6] = [0x02, 0x56, 0x4b, 0, 0, 1];

/// What the operations reached (summed by the unit test).
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    pub ops: usize,
    pub cov: Coverage,
    pub tx_verified: usize,
    pub rx_verified: usize,
    pub dropped: usize,
}

impl Seen {
    #[cfg(test)]
    pub(crate) fn add(&mut self, o: &Seen) {
        self.ops += o.ops;
        self.cov.add(&o.cov);
        self.tx_verified += o.tx_verified;
        self.rx_verified += o.rx_verified;
        self.dropped += o.dropped;
    }
}

#[derive(Default)]
struct Wire {
    sent: Vec<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
    throttle: bool,
}

struct FuzzBackend(Arc<Mutex<Wire>>);

use vmk_base::lock;

impl NetBackend for FuzzBackend {
    fn mac(&self) -> [u8; 6] {
        MAC
    }
    fn mtu(&self) -> u16 {
        MTU
    }
    fn transmit(&mut self, frame: &[u8]) -> TxOutcome {
        assert!(
            frame.len() >= 14 && frame.len() <= NetConfig::max_frame(MTU),
            "backend got a {}-byte frame",
            frame.len()
        );
        let mut w = lock(&self.0);
        if w.throttle {
            return TxOutcome::Throttled(Duration::from_millis(1));
        }
        w.sent.push(frame.to_vec());
        TxOutcome::Sent
    }
    fn receive(&mut self) -> Option<Vec<u8>> {
        lock(&self.0).to_guest.pop_front()
    }
    fn set_rx_notify(&mut self, _notify: RxNotify) {}
    fn set_mac(&mut self, mac: [u8; 6]) -> bool {
        mac[0] & 1 == 0
    }
}

struct Rig {
    h: FuzzBench<VirtioNet>,
    wire: Arc<Mutex<Wire>>,
    /// Next descriptor index per queue, and whether it wrapped since the probe.
    next_desc: [u16; 3],
    wrapped: [bool; 3],
    /// Guest memory was written behind the structured operations' back since the probe.
    dirty: bool,
    /// RX buffers posted by head: (address, length).
    rx_posted: HashMap<u16, (u64, u32)>,
    data_at: u64,
    seen: Seen,
}

impl Checked for Rig {
    type Device = VirtioNet;

    /// Runs one device operation and checks the invariants around it
    /// ([`FuzzBench::checked`]); receive buffers the device held before it are its own.
    fn access(&mut self, f: impl FnOnce(&mut VirtioMmio<Self::Device>) -> u64) -> u64 {
        let held = self.h.b.lock().device().held_rx_buffers();
        let v = self.h.checked(held, f).value;
        let s = self.h.b.lock().device().stats();
        self.seen.dropped =
            (s.tx_malformed + s.tx_oversize + s.rx_bad_chains + s.rx_too_big) as usize;
        v
    }
}

impl Rig {
    fn new() -> Rig {
        let wire = Arc::new(Mutex::new(Wire::default()));
        let net = VirtioNet::new(
            Box::new(FuzzBackend(wire.clone())),
            NetConfig { queue_size: 64 },
        );
        Rig {
            h: FuzzBench::new(net, RAM_SIZE, 3),
            wire,
            next_desc: [0; 3],
            wrapped: [false; 3],
            dirty: false,
            rx_posted: HashMap::new(),
            data_at: DATA,
            seen: Seen::default(),
        }
    }

    fn write_mem(&self, addr: u64, data: &[u8]) {
        self.h.write_mem(addr, data);
    }

    fn standard_init(&mut self, r: &mut Reader) {
        self.mmio_write(0x70, 4, 0);
        self.mmio_write(0x70, 4, 1);
        self.mmio_write(0x70, 4, 3);
        let offered = self.offered_features();
        let mut want = if r.chance(160) {
            offered
        } else {
            offered & (u64::from(r.u32()) << 32 | u64::from(r.u32()))
        };
        if r.chance(240) {
            want |= features::VIRTIO_F_VERSION_1;
        }
        self.write_driver_features(want);
        self.mmio_write(0x70, 4, 0xb);
        let size = [64u64, 16, 8, 2, 1, 3][usize::from(r.u8() % 6)];
        for i in 0..3 {
            self.mmio_write(0x30, 4, i);
            self.mmio_write(0x38, 4, size);
            let (d, a, u) = queue_base(i as usize);
            self.write_mem(a, &[0; 0x1000]);
            self.write_mem(u, &[0; 0x1000]);
            let [d, a, u] = [d, a, u].map(|addr| if r.chance(4) { r.u64() } else { addr });
            self.write_queue_rings(d, a, u);
            self.mmio_write(0x44, 4, 1);
        }
        self.mmio_write(0x70, 4, 0xf);
        self.next_desc = [0; 3];
        self.wrapped = [false; 3];
        self.dirty = false;
        self.rx_posted.clear();
        self.data_at = DATA;
    }

    fn alloc(&mut self, len: u64) -> u64 {
        if self.data_at + len > DATA_END {
            self.data_at = DATA;
        }
        let a = self.data_at;
        self.data_at = (self.data_at + len + 15) & !15;
        a
    }

    /// Adds a chain of (addr, len, flags) to queue `q`, direct or indirect; returns the head.
    fn add_chain(&mut self, r: &mut Reader, q: usize, chain: &[(u64, u32, u16)]) -> Option<u16> {
        let st = self.h.qstate(q)?;
        let size = st.size.clamp(1, 64) as u16;
        let (desc, _, _) = queue_base(q);
        let head = self.next_desc[q] % size;
        if r.chance(32) && q != 0 {
            let table = INDIRECT + 0x400 * q as u64;
            self.h.write_indirect(table, chain);
            self.h
                .write_desc(desc, head, table, 16 * chain.len() as u32, 4, 0);
            self.bump(q, 1, size);
        } else {
            if chain.len() > usize::from(size) {
                // The chain overwrites itself in a queue this small: no longer ours to check.
                self.dirty = true;
            }
            self.h.write_chain(desc, self.next_desc[q], size, chain);
            self.bump(q, chain.len() as u16, size);
        }
        self.h.publish(st.avail, size, head);
        Some(head)
    }

    fn bump(&mut self, q: usize, n: u16, size: u16) {
        let next = self.next_desc[q].wrapping_add(n);
        if next >= size {
            self.wrapped[q] = true;
        }
        self.next_desc[q] = next % size;
    }

    fn frame(&self, r: &mut Reader) -> Vec<u8> {
        let len = match r.u8() % 8 {
            0 => usize::from(r.u8() % 20),
            1 => 1518 + usize::from(r.u8() % 4),
            2 => usize::from(r.u16()) % 10_000,
            _ => 14 + usize::from(r.u16() % 1500),
        };
        let seed = r.u8();
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed | 1) ^ seed)
            .collect()
    }

    fn transmit(&mut self, r: &mut Reader) {
        let frame = self.frame(r);
        let mut hdr = [0u8; NET_HDR_LEN];
        if r.chance(16) {
            hdr[usize::from(r.u8() % 12)] = r.u8();
        }
        let mut bytes = hdr.to_vec();
        bytes.extend_from_slice(&frame);
        let mut chain = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let n = if r.chance(128) {
                bytes.len() - at
            } else {
                1 + usize::from(r.u16()) % (bytes.len() - at)
            };
            let a = self.alloc(n as u64);
            self.write_mem(a, &bytes[at..at + n]);
            chain.push((a, n as u32, 0u16));
            at += n;
            if chain.len() >= 4 {
                let rest = bytes.len() - at;
                if rest > 0 {
                    let a = self.alloc(rest as u64);
                    self.write_mem(a, &bytes[at..]);
                    chain.push((a, rest as u32, 0));
                }
                break;
            }
        }
        if chain.is_empty() {
            chain.push((self.alloc(1), 0, 0));
        }
        let corrupt = r.chance(24);
        if corrupt {
            let i = usize::from(r.u8()) % chain.len();
            match r.u8() % 4 {
                0 => chain[i].0 = r.u64(),
                1 => chain[i].1 = r.u32(),
                2 => chain[i].2 |= 2,
                _ => chain[i].0 = DATA_END - u64::from(r.u8() % 8),
            }
        }
        let Some(q) = self.h.qstate(1) else { return };
        let sent0 = lock(&self.wire).sent.len();
        let pending = self.h.b.lock().device().tx_pending();
        if self.add_chain(r, 1, &chain).is_none() {
            return;
        }
        self.mmio_write(0x50, 4, 1);
        let q1 = self.h.qstate(1);
        let w = lock(&self.wire);
        let ok_frame =
            frame.len() >= 14 && frame.len() <= NetConfig::max_frame(MTU) && hdr[..2] == [0, 0];
        if !corrupt
            && !pending
            && !self.dirty
            && ok_frame
            && q.ready
            && q1.is_some_and(|q1| q1.next_used.wrapping_sub(q.next_used) == 1)
            && w.sent.len() == sent0 + 1
        {
            assert!(
                w.sent[sent0] == frame,
                "the backend got another frame: {} vs {} bytes, chain {:x?}, size {}",
                w.sent[sent0].len(),
                frame.len(),
                chain,
                q.size
            );
            self.seen.tx_verified += 1;
        }
    }

    fn post_rx(&mut self, r: &mut Reader) {
        for _ in 0..1 + r.u8() % 4 {
            let len = match r.u8() % 6 {
                0 => u32::from(r.u8() % 16),
                1 => 512,
                2 => 1536,
                3 => 2048,
                _ => 64 + u32::from(r.u16() % 4096),
            };
            let a = self.alloc(u64::from(len));
            let mut flags = 2u16;
            let mut addr = a;
            if r.chance(16) {
                match r.u8() % 3 {
                    0 => flags = 0,
                    1 => addr = r.u64(),
                    _ => addr = DATA_END - 4,
                }
                self.dirty = true;
            }
            if let Some(head) = self.add_chain(r, 0, &[(addr, len, flags)]) {
                self.rx_posted.insert(head, (addr, len));
            }
        }
        if r.chance(200) {
            self.mmio_write(0x50, 4, 0);
        }
    }

    fn receive(&mut self, r: &mut Reader) {
        let frame = self.frame(r);
        let Some(q) = self.h.qstate(0) else { return };
        lock(&self.wire).to_guest.push_back(frame.clone());
        self.access(|d| {
            d.process_queue(RX_QUEUE);
            0
        });
        let Some(q1) = self.h.qstate(0) else { return };
        let n = q1.next_used.wrapping_sub(q.next_used);
        if !q.ready || !q1.ready || n == 0 || self.dirty || self.wrapped[0] {
            return;
        }
        // The frame is the last one delivered if the backend queue is now empty and
        // nothing else was pending: check the elements just added form one frame.
        if !lock(&self.wire).to_guest.is_empty() {
            return;
        }
        let snap = self.h.snapshot();
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for i in 0..n {
            let slot = u64::from(q.next_used.wrapping_add(i)) % q.size;
            let at = q.used + 4 + 8 * slot - RAM_BASE;
            let id = read_le(&snap, at, 4) as u16;
            let len = read_le(&snap, at + 4, 4) as u32;
            let Some(&(addr, blen)) = self.rx_posted.get(&id) else {
                return;
            };
            assert!(len <= blen, "used length {len} beyond a {blen}-byte buffer");
            if len == 0 {
                return;
            }
            spans.push((addr, len));
        }
        for (addr, len) in &spans {
            let mut b = vec![0u8; *len as usize];
            let _ = self.h.b.mem.read(*addr, &mut b);
            bytes.extend(b);
        }
        let num = u16::from_le_bytes([bytes[10], bytes[11]]);
        if usize::from(num) != spans.len() || bytes.len() != NET_HDR_LEN + frame.len() {
            // Earlier frames (held while buffers were missing) came out in this batch.
            return;
        }
        assert_eq!(&bytes[..10], &[0; 10], "header fields");
        assert_eq!(&bytes[NET_HDR_LEN..], &frame[..], "frame contents");
        self.seen.rx_verified += 1;
    }

    fn ctrl(&mut self, r: &mut Reader) {
        let class = if r.chance(200) { r.u8() % 2 } else { r.u8() };
        let cmd = if r.chance(200) { r.u8() % 2 } else { r.u8() };
        let n = usize::from(r.u8() % 24);
        let data: Vec<u8> = (0..n).map(|_| r.u8()).collect();
        let h = self.alloc(2);
        self.write_mem(h, &[class, cmd]);
        let d = self.alloc(n as u64 + 1);
        self.write_mem(d, &data);
        let ack = self.alloc(1);
        let mut chain = vec![(h, 2, 0)];
        if n > 0 {
            chain.push((d, n as u32, 0));
        }
        chain.push((ack, 1, 2));
        if self.add_chain(r, 2, &chain).is_some() {
            self.mmio_write(0x50, 4, 2);
        }
    }

    fn step(&mut self, r: &mut Reader) {
        if self.h.b.lock().status() & status::DEVICE_NEEDS_RESET != 0 && r.chance(128) {
            self.standard_init(r);
            return;
        }
        match r.u8() % 32 {
            0 | 1 => {
                let off = if r.chance(224) {
                    u64::from(r.u8() % 0x40) * 4
                } else {
                    u64::from(r.u16() % 0x200)
                };
                let size = if r.chance(240) { 4 } else { r.u8() % 9 };
                let v = if r.chance(128) {
                    u64::from(r.u8() % 4)
                } else {
                    r.u64()
                };
                self.mmio_write(off, size, v);
            }
            2 => {
                let off = u64::from(r.u16() % 0x120);
                let size = [1, 2, 4, 8, 3][usize::from(r.u8() % 5)];
                self.mmio_read(off, size);
            }
            3 => self.standard_init(r),
            4..=10 => self.transmit(r),
            11..=15 => self.post_rx(r),
            16..=21 => self.receive(r),
            22 => self.ctrl(r),
            23 => {
                let q = usize::from(r.u8() % 3);
                let (desc, _, _) = queue_base(q);
                let addr = if r.chance(128) {
                    DATA + u64::from(r.u16())
                } else {
                    r.u64()
                };
                self.h.write_desc(
                    desc,
                    u16::from(r.u8() % 64),
                    addr,
                    r.u32() % 8192,
                    u16::from(r.u8() % 8),
                    u16::from(r.u8() % 64),
                );
                self.dirty = true;
            }
            24 => {
                let q = usize::from(r.u8() % 3);
                let (_, avail, _) = queue_base(q);
                let off = u64::from(r.u8() % 140);
                self.write_mem(avail + off, &r.u16().to_le_bytes());
                self.dirty = true;
            }
            25..=27 => {
                let st = self.mmio_read(0x60, 4);
                self.mmio_write(0x64, 4, st);
            }
            28 => {
                let off = u64::from(r.u16()) % RAM_SIZE;
                let bytes: Vec<u8> = (0..r.u8() % 16).map(|_| r.u8()).collect();
                self.write_mem(RAM_BASE + off, &bytes);
                self.dirty = true;
            }
            29 => {
                let t = r.chance(64);
                lock(&self.wire).throttle = t;
            }
            30 => {
                let q = usize::from(r.u8() % 4);
                self.access(|d| {
                    d.process_queue(q);
                    0
                });
            }
            _ => match r.u8() % 3 {
                0 => self.mmio_write(0x70, 4, 0),
                1 => {
                    let up = r.chance(128);
                    self.access(|d| {
                        d.device_mut().set_link_up(up);
                        d.config_changed();
                        0
                    });
                }
                _ => {
                    let off = 0x100 + u64::from(r.u8() % 24);
                    self.mmio_write(off, 1, u64::from(r.u8()));
                }
            },
        }
    }
}

/// Runs the operations encoded in `data` against a fresh device and returns how many there
/// were; panics on a device panic or a broken invariant.
pub fn virtio_net_queue(data: &[u8]) -> usize {
    run(data).ops
}

pub(crate) fn run(data: &[u8]) -> Seen {
    let mut r = Reader { data, pos: 0 };
    let mut rig = Rig::new();
    if r.chance(220) {
        rig.standard_init(&mut r);
    }
    while !r.done() {
        rig.step(&mut r);
        rig.seen.ops += 1;
    }
    // The device is dropped with the rig (a flush); that must not panic either.
    rig.seen.cov = std::mem::take(&mut rig.h.cov);
    rig.seen
}
