//! virtio-input (the power button) on virtio-mmio, driven as Linux's `virtio_input` driver
//! does, and by a hostile one.

use super::harness::{self, Bench, Regs, Vq, HOLE, RAM_BASE as RAM};
use super::input::*;
use super::status::*;
use super::*;
use crate::MmioDevice;

const RAM_SIZE: u64 = 1 << 20;
const QSIZE: u16 = 16;
const BUFS: u64 = RAM + 0x8_0000;

fn queue_addrs(q: usize) -> (u64, u64, u64) {
    let b = RAM + 0x1_0000 * q as u64;
    (b, b + 0x1000, b + 0x2000)
}

fn vq(q: usize) -> Vq {
    let (desc, avail, used) = queue_addrs(q);
    Vq::new(q as u32, desc, avail, used, QSIZE)
}

/// virtio_input's driver: the bench's registers, the event and status queues.
struct Driver {
    b: Bench<VirtioInput>,
    qs: [Vq; 2],
}

impl std::ops::Deref for Driver {
    type Target = Bench<VirtioInput>;
    fn deref(&self) -> &Bench<VirtioInput> {
        &self.b
    }
}

impl Driver {
    fn new() -> Driver {
        Driver {
            b: Bench::new(
                VirtioInput::power_button(),
                harness::guest_memory(RAM_SIZE, true),
            ),
            qs: [vq(0), vq(1)],
        }
    }

    fn cfg_select(&self, select: u8, subsel: u8) -> u8 {
        let mut d = self.dev.lock().unwrap();
        d.write(0x100, 1, u64::from(select));
        d.write(0x101, 1, u64::from(subsel));
        d.read(0x102, 1) as u8
    }

    fn cfg_bytes(&self, n: usize) -> Vec<u8> {
        let mut d = self.dev.lock().unwrap();
        (0..n as u64).map(|i| d.read(0x108 + i, 1) as u8).collect()
    }

    /// Linux's probe up to DRIVER_OK, without event buffers yet.
    fn probe(&mut self) {
        self.wr(0x70, 0);
        self.wr(0x70, ACKNOWLEDGE);
        self.wr(0x70, ACKNOWLEDGE | DRIVER);
        self.b.write_driver_features(features::VIRTIO_F_VERSION_1);
        self.wr(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_ne!(self.rd(0x70) & FEATURES_OK, 0);
        for q in 0..2 {
            let (desc, avail, used) = queue_addrs(q);
            // Fresh rings, as the driver allocates them.
            self.mem.write(desc, &[0u8; 0x3000]).unwrap();
            self.wr(0x30, q as u32);
            assert_eq!(self.rd(0x34), 64);
            self.wr(0x38, u32::from(QSIZE));
            self.b.write_queue_rings(desc, avail, used);
            self.wr(0x44, 1);
        }
        self.qs = [vq(0), vq(1)];
        self.wr(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(self.rd(0x70) & DEVICE_NEEDS_RESET, 0);
    }

    /// Makes one buffer (one descriptor) available on queue `q`, without a kick.
    fn post(&mut self, q: usize, addr: u64, len: u32, flags: u16) {
        self.qs[q].post_one(&self.b.mem, addr, len, flags);
    }

    /// `n` event buffers of 8 bytes, then a kick (what `virtinput_fill_evt` does).
    fn fill_events(&mut self, n: u16) {
        for k in 0..n {
            let at = BUFS + 8 * u64::from(self.qs[0].next_desc % QSIZE) + 0x1000 * u64::from(k % 2);
            self.mem.write(at, &[0xee; 8]).unwrap();
            self.post(0, at, 8, 2);
        }
        self.wr(0x50, 0);
    }

    /// Used entries of queue `q` since the last call: (descriptor id, length).
    fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        self.qs[q].take_used(&self.b.mem)
    }

    /// The events in the used event buffers since the last call.
    fn events(&mut self) -> Vec<InputEvent> {
        let (desc, _, _) = queue_addrs(0);
        self.take_used(0)
            .into_iter()
            .filter(|&(_, len)| len == 8)
            .map(|(id, _)| {
                let mut d = [0u8; 16];
                self.mem.read(desc + 16 * u64::from(id), &mut d).unwrap();
                let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
                let mut e = [0u8; 8];
                self.mem.read(addr, &mut e).unwrap();
                InputEvent {
                    kind: u16::from_le_bytes([e[0], e[1]]),
                    code: u16::from_le_bytes([e[2], e[3]]),
                    value: u32::from_le_bytes(e[4..8].try_into().unwrap()),
                }
            })
            .collect()
    }

    fn press(&self) -> KeyPress {
        self.dev.lock().unwrap().press_key(KEY_POWER)
    }

    fn pending(&self) -> usize {
        self.dev.lock().unwrap().device().pending()
    }
}

fn press_events() -> Vec<InputEvent> {
    super::input_fuzzing::press().to_vec()
}

#[test]
fn config_space_describes_a_power_button() {
    let d = Driver::new();
    assert_eq!(d.rd(0x8), device_type::INPUT);
    assert_eq!(d.rd(0x10) & 0x00ff_ffff, 0, "no device-specific features");
    let n = d.cfg_select(VIRTIO_INPUT_CFG_ID_NAME, 0);
    assert_eq!(d.cfg_bytes(usize::from(n)), b"vmk power button");
    assert_eq!(d.cfg_select(VIRTIO_INPUT_CFG_ID_SERIAL, 0), 0);
    assert_eq!(d.cfg_select(VIRTIO_INPUT_CFG_ID_DEVIDS, 0), 8);
    assert_eq!(&d.cfg_bytes(2), &BUS_VIRTUAL.to_le_bytes());
    assert_eq!(d.cfg_select(VIRTIO_INPUT_CFG_PROP_BITS, 0), 0);
    // Keys: KEY_POWER (116) alone, bit 4 of byte 14.
    let n = d.cfg_select(VIRTIO_INPUT_CFG_EV_BITS, EV_KEY as u8);
    assert_eq!(n, 15);
    let bits = d.cfg_bytes(128);
    assert_eq!(bits[14], 1 << 4);
    assert_eq!(bits.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    // No autorepeat, no other event types, no axes; a subsel on ID_NAME is nothing.
    for (sel, sub) in [
        (VIRTIO_INPUT_CFG_EV_BITS, 0x14),
        (VIRTIO_INPUT_CFG_EV_BITS, 2),
        (VIRTIO_INPUT_CFG_EV_BITS, 3),
        (VIRTIO_INPUT_CFG_ABS_INFO, 0),
        (VIRTIO_INPUT_CFG_ID_NAME, 1),
        (VIRTIO_INPUT_CFG_UNSET, 0),
        (0xff, 0xff),
    ] {
        assert_eq!(d.cfg_select(sel, sub), 0, "select {sel:#x}/{sub:#x}");
    }
    // Wide and odd accesses: a 4-byte read of select/subsel/size, reads past the end.
    d.cfg_select(VIRTIO_INPUT_CFG_ID_NAME, 0);
    let mut dev = d.dev.lock().unwrap();
    assert_eq!(dev.read(0x100, 4), 0x0010_0001);
    assert_eq!(dev.read(0x100 + 136, 8), 0);
    assert_eq!(dev.read(0x100 + 132, 8) >> 32, 0);
    assert_eq!(dev.read(0xffff_ffff_ffff_fff8, 8), 0);
    // The size and the data are the device's: writes there change nothing.
    dev.write(0x102, 1, 0xff);
    dev.write(0x108, 8, u64::MAX);
    dev.write(u64::MAX, 8, u64::MAX);
    assert_eq!(dev.read(0x102, 1), 16);
    assert_eq!(dev.read(0x108, 1), u64::from(b'v'));
}

#[test]
fn a_press_before_the_driver_is_ready_waits_and_is_delivered_once() {
    let mut d = Driver::new();
    // No driver at all: the press waits; pressing again does not queue a second one.
    assert_eq!(d.press(), KeyPress::Pending);
    assert_eq!(d.press(), KeyPress::Pending);
    assert_eq!(d.pending(), 4);
    // Probed, DRIVER_OK, but no buffers yet (Linux sets DRIVER_OK before filling).
    d.probe();
    assert_eq!(d.pending(), 4);
    assert!(!d.irq.level());
    // The driver fills the event queue and kicks: the press arrives, with an interrupt.
    d.fill_events(8);
    assert_eq!(d.events(), press_events());
    assert_eq!(d.pending(), 0);
    assert!(d.irq.level());
    assert_eq!(d.rd(0x60) & interrupt::USED_BUFFER, interrupt::USED_BUFFER);
    d.wr(0x64, interrupt::USED_BUFFER);
    assert!(!d.irq.level());
    // Live with buffers: the next press is delivered at once.
    assert_eq!(d.press(), KeyPress::Delivered);
    assert_eq!(d.events(), press_events());
    assert!(d.irq.level());
    let s = d.dev.lock().unwrap().device().stats();
    assert_eq!(s.delivered, 8);
    assert_eq!(s.bad_chains, 0);
}

#[test]
fn a_press_waits_for_buffers_across_a_reset_and_a_partial_queue() {
    let mut d = Driver::new();
    d.probe();
    d.fill_events(1);
    // One buffer: the first event goes, three wait for the next buffers.
    assert_eq!(d.press(), KeyPress::Pending);
    assert_eq!(d.events(), press_events()[..1]);
    assert_eq!(d.pending(), 3);
    // The driver resets (module unload, reboot into a new kernel): the rest still waits.
    d.wr(0x70, 0);
    assert_eq!(d.rd(0x70), 0);
    assert_eq!(d.pending(), 3);
    d.probe();
    d.fill_events(8);
    assert_eq!(d.events(), press_events()[1..]);
    // Keys the device does not have are refused; presses are bounded while none is taken.
    let mut dev = d.dev.lock().unwrap();
    assert_eq!(dev.press_key(30), KeyPress::Refused);
    assert_eq!(dev.press_key(u16::MAX), KeyPress::Refused);
    drop(dev);
    let mut fresh = Driver::new();
    for _ in 0..1000 {
        fresh.press();
    }
    assert!(fresh.pending() <= MAX_PENDING_EVENTS);
    fresh.probe();
    fresh.fill_events(16);
    assert_eq!(fresh.events(), press_events());
}

#[test]
fn hostile_event_and_status_buffers_are_returned_not_fatal() {
    let mut d = Driver::new();
    d.probe();
    d.press();
    // Device-readable, too short, in the MMIO hole, outside any memory, zero length: each is
    // returned with length 0 and counted; the event waits.
    d.post(0, BUFS, 8, 0);
    d.post(0, BUFS, 4, 2);
    d.post(0, HOLE, 8, 2);
    d.post(0, 0xffff_ffff_ffff_fff0, 8, 2);
    d.post(0, BUFS, 0, 2);
    d.wr(0x50, 0);
    let used = d.take_used(0);
    assert_eq!(used.len(), 5);
    assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
    assert_eq!(d.pending(), 4);
    assert_eq!(d.dev.lock().unwrap().device().stats().bad_chains, 5);
    // A good buffer after them gets the first event.
    d.fill_events(4);
    assert_eq!(d.events(), press_events());
    // Status events (LEDs) and nonsense on the status queue are taken and returned.
    d.post(1, BUFS, 8, 0);
    d.post(1, HOLE, 8, 2);
    d.post(1, BUFS, 0xffff_ffff, 0);
    d.wr(0x50, 1);
    assert_eq!(d.take_used(1).len(), 3);
    // Kicks of queues that do not exist, before setup, and a broken ring.
    d.wr(0x50, 2);
    d.wr(0x50, u32::MAX);
    d.mem
        .write(queue_addrs(0).1 + 2, &0x8000u16.to_le_bytes())
        .unwrap();
    d.press();
    d.wr(0x50, 0);
    assert_ne!(
        d.rd(0x70) & DEVICE_NEEDS_RESET,
        0,
        "a ring far ahead is fatal"
    );
    assert_eq!(
        d.press(),
        KeyPress::Pending,
        "no queue is touched until a reset"
    );
    // After a reset and probe the device works again.
    d.probe();
    d.fill_events(8);
    assert_eq!(d.events(), press_events());
}

#[test]
fn fuzz_logic_runs_with_a_fixed_seed() {
    let seen = super::input_fuzzing::run_seeded(0x5eed_1234, 300);
    eprintln!("{seen:?}");
    assert!(seen.ops > 10_000, "{seen:?}");
    assert!(seen.cov.live > 0, "{seen:?}");
    assert!(seen.delivered > 0, "{seen:?}");
    assert!(seen.checked > 100, "{seen:?}");
    assert!(seen.cov.memory_checks > 100, "{seen:?}");
    assert!(seen.cov.needs_reset > 0, "{seen:?}");
}
