//! virtio-net on virtio-mmio, driven by a fake driver that sets up the receive, transmit
//! and control queues in guest memory the way Linux's virtio_net does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::features::*;
use super::harness::{self, Bench, Regs, Vq, HOLE, RAM_BASE as RAM};
use super::net::*;
use super::status::*;
use super::*;
use crate::MmioDevice;

const RAM_SIZE: u64 = 1 << 20;
const HEAP: u64 = RAM + 0x1_0000;
const MAC: [u8; 6] = [0x02, 0x56, 0x4b, 0, 0, 1];
const MTU: u16 = 1500;

/// What the backend saw and will deliver; shared with the test.
#[derive(Default)]
struct Wire {
    sent: Vec<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
    /// Throttle the next this-many transmits.
    throttle: usize,
    notify: Option<RxNotify>,
    macs: Vec<[u8; 6]>,
    rx_mode: (bool, bool),
}

#[derive(Clone, Default)]
struct TestBackend(Arc<Mutex<Wire>>);

impl TestBackend {
    fn wire(&self) -> std::sync::MutexGuard<'_, Wire> {
        self.0.lock().unwrap()
    }

    /// A frame arrives for the guest from "another thread".
    fn deliver(&self, frame: Vec<u8>) {
        let n = {
            let mut w = self.wire();
            w.to_guest.push_back(frame);
            w.notify.clone()
        };
        if let Some(n) = n {
            n();
        }
    }
}

impl NetBackend for TestBackend {
    fn mac(&self) -> [u8; 6] {
        MAC
    }
    fn mtu(&self) -> u16 {
        MTU
    }
    fn transmit(&mut self, frame: &[u8]) -> TxOutcome {
        let mut w = self.wire();
        if w.throttle > 0 {
            w.throttle -= 1;
            return TxOutcome::Throttled(Duration::from_millis(20));
        }
        w.sent.push(frame.to_vec());
        TxOutcome::Sent
    }
    fn receive(&mut self) -> Option<Vec<u8>> {
        self.wire().to_guest.pop_front()
    }
    fn set_rx_notify(&mut self, notify: RxNotify) {
        self.wire().notify = Some(notify);
    }
    fn set_mac(&mut self, mac: [u8; 6]) -> bool {
        self.wire().macs.push(mac);
        mac[0] & 1 == 0
    }
    fn set_rx_mode(&mut self, promiscuous: bool, all_multicast: bool) {
        self.wire().rx_mode = (promiscuous, all_multicast);
    }
}

/// virtio_net's driver: the bench's registers and one [`Vq`] per queue.
struct Net {
    b: Bench<VirtioNet>,
    backend: TestBackend,
    features: u64,
    qs: Vec<Vq>,
    heap: u64,
}

impl std::ops::Deref for Net {
    type Target = Bench<VirtioNet>;
    fn deref(&self) -> &Bench<VirtioNet> {
        &self.b
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&MAC);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, seed]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    for (i, b) in f.iter_mut().enumerate().skip(14) {
        *b = (i as u8).wrapping_mul(31) ^ seed;
    }
    f
}

impl Net {
    fn new() -> Net {
        let backend = TestBackend::default();
        let net = VirtioNet::new(Box::new(backend.clone()), NetConfig::default());
        Net {
            b: Bench::new(net, harness::guest_memory(RAM_SIZE, true)),
            backend,
            features: 0,
            qs: Vec::new(),
            heap: HEAP,
        }
    }

    fn stats(&self) -> NetStats {
        self.dev.lock().unwrap().device().stats()
    }

    /// Linux's probe with `want` features (what it accepts of the offer) and queues.
    fn init(&mut self, want: u64) {
        assert_eq!(self.rd(0x008), 1, "device id");
        self.wr(0x70, 0);
        self.wr(0x70, ACKNOWLEDGE);
        self.wr(0x70, ACKNOWLEDGE | DRIVER);
        self.features = self.b.offered_features() & want;
        self.b.write_driver_features(self.features);
        self.wr(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_ne!(self.status() & FEATURES_OK, 0, "FEATURES_OK refused");
        let nq = if self.features & VIRTIO_NET_F_CTRL_VQ != 0 {
            3
        } else {
            2
        };
        self.qs.clear();
        for i in 0..nq {
            let base = RAM + 0x3000 * u64::from(i);
            let q = Vq::new(i, base, base + 0x1000, base + 0x2000, 64);
            self.mem.write(q.avail, &[0; 0x1000]).unwrap();
            self.mem.write(q.used, &[0; 0x1000]).unwrap();
            self.wr(0x30, i);
            assert!(self.rd(0x34) >= 64);
            self.wr(0x38, 64);
            self.b.write_queue_rings(q.desc, q.avail, q.used);
            self.wr(0x44, 1);
            self.qs.push(q);
        }
        self.wr(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(self.status() & DEVICE_NEEDS_RESET, 0);
    }

    /// What Linux takes: everything offered, without EVENT_IDX to keep kicks simple.
    fn init_linux(&mut self) {
        self.init(!VIRTIO_F_RING_EVENT_IDX);
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.heap;
        self.heap = (self.heap + len + 15) & !15;
        assert!(self.heap < RAM + RAM_SIZE);
        a
    }

    fn write_desc(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        harness::write_desc(&self.mem, table, i, addr, len, flags, next).unwrap();
    }

    /// Adds a chain of (addr, len, writable) to queue `q` and publishes it (no kick).
    fn add(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        self.qs[q].add(&self.b.mem, bufs)
    }

    fn kick(&self, q: usize) {
        self.wr(0x50, self.qs[q].index);
    }

    /// Used elements since the last call: (head, len).
    fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = self.qs[q].take_used(&self.b.mem);
        used.into_iter().map(|(id, len)| (id as u16, len)).collect()
    }

    /// Sends a frame with its header, split as `split` byte counts (header + frame).
    fn tx(&mut self, hdr: [u8; NET_HDR_LEN], frame: &[u8], split: &[usize]) -> u16 {
        let mut bytes = hdr.to_vec();
        bytes.extend_from_slice(frame);
        let mut bufs = Vec::new();
        let mut at = 0;
        for &n in split.iter().chain(std::iter::once(&usize::MAX)) {
            let n = n.min(bytes.len() - at);
            if n == 0 {
                break;
            }
            let a = self.alloc(n as u64);
            self.mem.write(a, &bytes[at..at + n]).unwrap();
            bufs.push((a, n as u32, false));
            at += n;
        }
        self.add(1, &bufs)
    }

    /// Posts `n` receive buffers of `len` bytes; returns their addresses by head.
    fn post_rx(&mut self, n: usize, len: u32) -> Vec<(u16, u64)> {
        (0..n)
            .map(|_| {
                let a = self.alloc(u64::from(len));
                (self.add(0, &[(a, len, true)]), a)
            })
            .collect()
    }

    fn read(&self, a: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.mem.read(a, &mut v).unwrap();
        v
    }

    fn ack_interrupt(&self) -> u32 {
        let s = self.rd(0x60);
        self.wr(0x64, s);
        s
    }
}

fn hdr() -> [u8; NET_HDR_LEN] {
    [0; NET_HDR_LEN]
}

#[test]
fn probe_features_and_config_space() {
    let mut n = Net::new();
    n.init_linux();
    let f = n.features;
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_CTRL_MAC_ADDR,
        VIRTIO_F_VERSION_1,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x} not offered");
    }
    // No offloads are offered.
    for bit in [0u32, 1, 7, 8, 11, 12] {
        assert_eq!(f & (1 << bit), 0, "offload bit {bit} offered");
    }
    let d = n.dev.lock().unwrap();
    let mut d = d;
    let cfg: Vec<u8> = (0..17).map(|i| d.read(0x100 + i, 1) as u8).collect();
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), MTU);
    assert_eq!(d.read(0x100 + 10, 2), u64::from(MTU));
    assert_eq!(d.read(0x100 + 12, 4), 10_000);
    d.device_mut().set_link_up(false);
    d.config_changed();
    assert_eq!(d.read(0x106, 2), 0, "link down");
    assert_ne!(d.interrupt_status() & interrupt::CONFIG_CHANGE, 0);
}

#[test]
fn control_queue_needs_ctrl_vq() {
    let n = Net::new();
    n.wr(0x70, 0);
    n.wr(0x70, ACKNOWLEDGE | DRIVER);
    n.wr(0x24, 0);
    n.wr(0x20, (VIRTIO_NET_F_CTRL_MAC_ADDR) as u32);
    n.wr(0x24, 1);
    n.wr(0x20, 1); // VERSION_1
    n.wr(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(n.status() & FEATURES_OK, 0);
}

#[test]
fn transmit_strips_the_header_whatever_the_split() {
    let mut n = Net::new();
    n.init_linux();
    let fr = frame(100, 1);
    let mut heads = Vec::new();
    for split in [&[][..], &[12][..], &[5, 20, 1][..], &[12, 14][..]] {
        heads.push(n.tx(hdr(), &fr, split));
    }
    n.kick(1);
    let used = n.used(1);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads);
    assert!(used.iter().all(|u| u.1 == 0), "TX used length is 0");
    assert_eq!(n.backend.wire().sent, vec![fr.clone(); 4]);
    assert!(n.irq.level());
    assert_eq!(n.ack_interrupt(), interrupt::USED_BUFFER);
    assert!(!n.irq.level());
    let s = n.stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (4, 400));
}

#[test]
fn receive_writes_header_and_frame_with_num_buffers() {
    let mut n = Net::new();
    n.init_linux();
    let bufs = n.post_rx(4, 1536);
    n.kick(0);
    assert!(n.used(0).is_empty());
    let fr = frame(1000, 2);
    n.backend.deliver(fr.clone()); // no notifier: process by hand
    n.dev.lock().unwrap().process_queue(RX_QUEUE);
    let used = n.used(0);
    assert_eq!(used, vec![(bufs[0].0, 12 + 1000)]);
    let got = n.read(bufs[0].1, 1012);
    let mut want_hdr = [0u8; 12];
    want_hdr[10] = 1; // num_buffers
    assert_eq!(&got[..12], &want_hdr);
    assert_eq!(&got[12..], &fr[..]);
    assert!(n.irq.level());
    assert_eq!(n.stats().rx_frames, 1);
}

#[test]
fn mergeable_frames_span_buffers() {
    let mut n = Net::new();
    n.init_linux();
    let bufs = n.post_rx(8, 512);
    n.kick(0);
    let fr = frame(1200, 3);
    n.backend.deliver(fr.clone());
    n.backend.deliver(frame(60, 4));
    n.dev.lock().unwrap().process_queue(RX_QUEUE);
    let used = n.used(0);
    assert_eq!(
        used,
        vec![
            (bufs[0].0, 512),
            (bufs[1].0, 512),
            (bufs[2].0, 188),
            (bufs[3].0, 72)
        ]
    );
    let mut all = Vec::new();
    for (_, a) in &bufs[..3] {
        all.extend(n.read(*a, 512));
    }
    assert_eq!(u16::from_le_bytes([all[10], all[11]]), 3, "num_buffers");
    assert_eq!(&all[12..1212], &fr[..]);
    assert_eq!(n.read(bufs[3].1 + 10, 2), vec![1, 0]);
}

#[test]
fn without_mergeable_buffers_a_frame_needs_one_big_buffer() {
    let mut n = Net::new();
    n.init(!VIRTIO_NET_F_MRG_RXBUF & !VIRTIO_F_RING_EVENT_IDX);
    let bufs = n.post_rx(1, 100);
    n.kick(0);
    n.backend.deliver(frame(200, 1)); // too big for the buffer: dropped
    n.backend.deliver(frame(80, 2)); // fits
    n.dev.lock().unwrap().process_queue(RX_QUEUE);
    assert_eq!(n.used(0), vec![(bufs[0].0, 92)]);
    assert_eq!(n.read(bufs[0].1 + 10, 2), vec![1, 0], "num_buffers is 1");
    assert_eq!(&n.read(bufs[0].1 + 12, 80)[..], &frame(80, 2)[..]);
    assert_eq!(n.stats().rx_too_big, 1);
}

#[test]
fn frames_wait_for_receive_buffers() {
    let mut n = Net::new();
    n.init_linux();
    let waker = NetWaker::start(&n.dev, "test-net").unwrap();
    for i in 0..3 {
        n.backend.deliver(frame(64, i));
    }
    // No buffers: nothing used, frames still queued (one held by the device).
    assert!(n.used(0).is_empty());
    assert!(n.backend.wire().to_guest.len() >= 2);
    // The guest posts buffers and kicks: all three arrive in order.
    let bufs = n.post_rx(3, 2048);
    n.kick(0);
    let used = n.used(0);
    assert_eq!(used.len(), 3);
    for (i, (_, a)) in bufs.iter().enumerate() {
        assert_eq!(n.read(a + 12, 64), frame(64, i as u8));
    }
    drop(waker);
}

#[test]
fn delivery_from_another_thread_while_the_device_is_busy() {
    let mut n = Net::new();
    n.init_linux();
    let _w = NetWaker::start(&n.dev, "test-net").unwrap();
    n.post_rx(2, 2048);
    n.kick(0);
    // Hold the device's lock (as its vCPU would) while another thread delivers.
    let guard = n.dev.lock().unwrap();
    let b = n.backend.clone();
    let t = std::thread::spawn(move || b.deliver(frame(64, 9)));
    t.join().unwrap();
    drop(guard);
    // The worker thread delivers once the lock is free.
    let start = Instant::now();
    loop {
        if n.used(0).len() == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not delivered");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(n.irq.level());
}

#[test]
fn throttled_frames_are_delayed_not_dropped() {
    let mut n = Net::new();
    n.init_linux();
    let _w = NetWaker::start(&n.dev, "test-net").unwrap();
    n.backend.wire().throttle = 1;
    let fr = frame(100, 1);
    n.tx(hdr(), &fr, &[]);
    n.tx(hdr(), &fr, &[]);
    n.kick(1);
    assert!(n.used(1).is_empty(), "the chain stays with the device");
    assert!(n.backend.wire().sent.is_empty());
    let start = Instant::now();
    while n.backend.wire().sent.len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "no retry");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(start.elapsed() >= Duration::from_millis(10));
    assert_eq!(n.used(1).len(), 2);
    let s = n.stats();
    assert_eq!((s.tx_throttled, s.tx_frames), (1, 2));
}

#[test]
fn hostile_transmit_chains_are_dropped_and_counted() {
    let mut n = Net::new();
    n.init_linux();
    // Too short for the header.
    let a = n.alloc(8);
    n.add(1, &[(a, 8, false)]);
    // A header but no Ethernet header.
    n.tx(hdr(), &[1, 2, 3], &[]);
    // Oversize.
    n.tx(hdr(), &frame(1500 + 18 + 1, 1), &[]);
    // A device-writable descriptor in a TX chain.
    let b = n.alloc(200);
    n.add(1, &[(b, 12, false), (b + 16, 100, true)]);
    // Offloads that were not negotiated.
    let mut h = hdr();
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    n.tx(h, &frame(100, 1), &[]);
    let mut h = hdr();
    h[1] = 1; // GSO_TCPV4
    n.tx(h, &frame(100, 1), &[]);
    // Buffers outside RAM.
    n.add(1, &[(HOLE, 200, false)]);
    n.add(1, &[(u64::MAX - 10, 100, false)]);
    // And a good one after all that.
    n.tx(hdr(), &frame(60, 7), &[]);
    n.kick(1);
    assert_eq!(n.used(1).len(), 9, "every chain is returned");
    assert_eq!(n.backend.wire().sent, vec![frame(60, 7)]);
    let s = n.stats();
    assert_eq!((s.tx_malformed, s.tx_oversize, s.tx_frames), (7, 1, 1));
    assert_eq!(n.status() & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn hostile_receive_chains_are_returned_unused() {
    let mut n = Net::new();
    n.init_linux();
    let a = n.alloc(2048);
    n.add(0, &[(a, 2048, false)]); // read-only
    n.add(0, &[(a, 8, true)]); // shorter than the header
    n.add(0, &[(HOLE, 2048, true)]); // not RAM
    n.add(0, &[(a, 64, false), (a + 64, 2048, true)]); // readable part
    let good = n.post_rx(1, 2048);
    n.kick(0);
    let before = n.read(a, 2048);
    n.backend.deliver(frame(100, 1));
    n.backend.deliver(frame(1500 + 18 + 1, 2)); // longer than the MTU allows
    n.dev.lock().unwrap().process_queue(RX_QUEUE);
    let used = n.used(0);
    assert_eq!(used.len(), 5);
    assert!(used[..4].iter().all(|u| u.1 == 0));
    assert_eq!(used[4], (good[0].0, 112));
    assert_eq!(
        n.read(a, 2048),
        before,
        "nothing written to the bad buffers"
    );
    let s = n.stats();
    assert_eq!((s.rx_bad_chains, s.rx_too_big, s.rx_frames), (4, 1, 1));
}

#[test]
fn descriptor_loops_need_a_reset_and_never_hang() {
    let mut n = Net::new();
    n.init_linux();
    // Descriptor 0 → 1 → 0 ...
    let a = n.alloc(64);
    n.write_desc(n.qs[1].desc, 0, a, 32, 1, 1);
    n.write_desc(n.qs[1].desc, 1, a, 32, 1, 0);
    let vq = &mut n.qs[1];
    vq.avail_idx = 1;
    n.b.mem.write(vq.avail + 4, &0u16.to_le_bytes()).unwrap();
    n.b.mem.write(vq.avail + 2, &1u16.to_le_bytes()).unwrap();
    n.kick(1);
    assert_ne!(n.status() & DEVICE_NEEDS_RESET, 0);
    assert!(n.backend.wire().sent.is_empty());
    // The driver resets and starts over; the device works again.
    n.init_linux();
    n.tx(hdr(), &frame(60, 1), &[]);
    n.kick(1);
    assert_eq!(n.backend.wire().sent.len(), 1);
}

#[test]
fn control_queue_commands() {
    let mut n = Net::new();
    n.init_linux();
    let cmd = |n: &mut Net, class: u8, c: u8, data: &[u8]| -> u8 {
        let h = n.alloc(2);
        n.mem.write(h, &[class, c]).unwrap();
        let d = n.alloc(data.len().max(1) as u64);
        n.mem.write(d, data).unwrap();
        let ack = n.alloc(1);
        n.mem.write(ack, &[0xff]).unwrap();
        let mut bufs = vec![(h, 2, false)];
        if !data.is_empty() {
            bufs.push((d, data.len() as u32, false));
        }
        bufs.push((ack, 1, true));
        n.add(2, &bufs);
        n.kick(2);
        assert_eq!(n.used(2).len(), 1);
        n.read(ack, 1)[0]
    };
    let new_mac = [0x02, 0x56, 0x4b, 9, 9, 9];
    assert_eq!(
        cmd(
            &mut n,
            VIRTIO_NET_CTRL_MAC,
            VIRTIO_NET_CTRL_MAC_ADDR_SET,
            &new_mac
        ),
        VIRTIO_NET_OK
    );
    assert_eq!(n.backend.wire().macs, vec![new_mac]);
    // The backend refuses a group address.
    assert_eq!(
        cmd(
            &mut n,
            VIRTIO_NET_CTRL_MAC,
            VIRTIO_NET_CTRL_MAC_ADDR_SET,
            &[1, 0, 0, 0, 0, 1]
        ),
        VIRTIO_NET_ERR
    );
    assert_eq!(
        cmd(
            &mut n,
            VIRTIO_NET_CTRL_MAC,
            VIRTIO_NET_CTRL_MAC_ADDR_SET,
            &[1, 2]
        ),
        VIRTIO_NET_ERR
    );
    assert_eq!(
        cmd(&mut n, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1]),
        VIRTIO_NET_OK
    );
    assert_eq!(n.backend.wire().rx_mode, (true, false));
    // MAC tables: 1 unicast, 0 multicast entries.
    let mut t = 1u32.to_le_bytes().to_vec();
    t.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(
        cmd(
            &mut n,
            VIRTIO_NET_CTRL_MAC,
            VIRTIO_NET_CTRL_MAC_TABLE_SET,
            &t
        ),
        VIRTIO_NET_OK
    );
    assert_eq!(
        cmd(
            &mut n,
            VIRTIO_NET_CTRL_MAC,
            VIRTIO_NET_CTRL_MAC_TABLE_SET,
            &t[..7]
        ),
        VIRTIO_NET_ERR
    );
    assert_eq!(cmd(&mut n, 9, 9, &[]), VIRTIO_NET_ERR);
    assert_eq!(n.stats().ctrl_errors, 4);
}

#[test]
fn reset_forgets_held_frames_and_buffers() {
    let mut n = Net::new();
    n.init_linux();
    n.backend.deliver(frame(64, 1));
    n.backend.deliver(frame(64, 2));
    n.dev.lock().unwrap().process_queue(RX_QUEUE); // no buffers: frame 1 is held
    n.wr(0x70, 0);
    assert_eq!(n.stats().rx_lost_on_reset, 1);
    n.init_linux();
    let bufs = n.post_rx(2, 2048);
    n.kick(0);
    assert_eq!(n.used(0).len(), 1);
    assert_eq!(n.read(bufs[0].1 + 12, 64), frame(64, 2));
}

use crate::fuzzing::Rng;

#[test]
fn pseudo_random_virtio_net_queues() {
    let mut rng = Rng(0x0005_eed0_f7e7_cafe);
    let mut total = super::net_fuzzing::Seen::default();
    for _ in 0..300 {
        let len = 64 + (rng.next() % 2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        total.add(&super::net_fuzzing::run(&data));
    }
    eprintln!("{total:?}");
    assert!(total.ops > 20_000, "{total:?}");
    assert!(total.cov.live > 1_000, "{total:?}");
    assert!(total.tx_verified > 200, "{total:?}");
    assert!(total.rx_verified > 80, "{total:?}");
    assert!(total.dropped > 100, "{total:?}");
    assert!(total.cov.needs_reset > 20, "{total:?}");
    assert!(total.cov.interrupts > 300, "{total:?}");
    assert!(total.cov.memory_checks > 1_000, "{total:?}");
}

#[test]
fn net_fuzz_input_edge_cases() {
    assert_eq!(super::net_fuzzing::virtio_net_queue(&[]), 0);
    super::net_fuzzing::virtio_net_queue(&[0xff; 64]);
    super::net_fuzzing::virtio_net_queue(&[0; 64]);
    let ramp: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    assert!(super::net_fuzzing::virtio_net_queue(&ramp) > 10);
}
