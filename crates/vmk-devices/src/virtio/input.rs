//! virtio-input (virtio 1.2 §5.8), device id 18: vmk's power button.
//!
//! The device reports Linux input events (`struct virtio_input_event`: le16 type, le16
//! code, le32 value) in device-writable buffers of its event queue (queue 0) and takes
//! status events (LEDs and the like) from the driver on its status queue (queue 1), which it
//! reads and returns. No feature bits; the driver reads what the device is from config
//! space: the driver writes `select` (byte 0) and `subsel` (byte 1) and reads `size` (byte
//! 2) and up to 128 bytes of data at byte 8.
//!
//! | select | subsel | data |
//! |---|---|---|
//! | `ID_NAME` (1) | 0 | the name ("vmk power button") |
//! | `ID_SERIAL` (2) | 0 | the serial (empty: size 0) |
//! | `ID_DEVIDS` (3) | 0 | bustype `BUS_VIRTUAL`, vendor, product, version (le16 each) |
//! | `EV_BITS` (0x11) | `EV_KEY` | bitmap of the keys (bit n of byte n/8) |
//! | anything else | | size 0 |
//!
//! Linux's `virtio_input` driver turns this into an input device with the keys given
//! ([`VirtioInput::power_button`]: `KEY_POWER` alone), which `evdev` exposes as
//! `/dev/input/eventN`. That is what power-button handlers read: systemd-logind (udev tags
//! every `ID_INPUT_KEY` device `power-switch`), acpid, busybox acpid.
//!
//! # Host-side presses
//!
//! [`VirtioMmio::press_key`] queues a press and release (`KEY 1`, `SYN_REPORT`, `KEY 0`,
//! `SYN_REPORT`) and delivers what the event queue has buffers for. Events the driver has no
//! buffers for yet (it is not loaded, or not set up: during boot) wait in the device, at most
//! [`MAX_PENDING_EVENTS`] of them (a press of a key whose press is still waiting is not
//! queued twice), and are delivered when the driver makes buffers available (its next kick
//! of the event queue) — across device resets too, so a press is deferred, not lost.
//!
//! # Untrusted guest input
//!
//! Config writes other than `select`/`subsel` are ignored and reads past the end read 0.
//! An event-queue chain that is not device-writable only, shorter than an event or outside
//! RAM is returned with length 0 and counted ([`InputStats::bad_chains`]); the event waits
//! for the next buffer. Status-queue chains are read (at most one event) and returned.
//! Ring-level faults go to the transport (`DEVICE_NEEDS_RESET`) as for every device.

use std::collections::VecDeque;

use vmk_memory::GuestMemory;

use super::{device_type, Queue, QueueError, VirtioDevice, VirtioMmio};

/// Event types and codes (Linux `input-event-codes.h`).
pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const SYN_REPORT: u16 = 0;
pub const KEY_POWER: u16 = 116;
/// `input_id.bustype` of virtual devices.
pub const BUS_VIRTUAL: u16 = 0x06;

/// Config `select` values (virtio 1.2 §5.8.5).
pub const VIRTIO_INPUT_CFG_UNSET: u8 = 0x00;
pub const VIRTIO_INPUT_CFG_ID_NAME: u8 = 0x01;
pub const VIRTIO_INPUT_CFG_ID_SERIAL: u8 = 0x02;
pub const VIRTIO_INPUT_CFG_ID_DEVIDS: u8 = 0x03;
pub const VIRTIO_INPUT_CFG_PROP_BITS: u8 = 0x10;
pub const VIRTIO_INPUT_CFG_EV_BITS: u8 = 0x11;
pub const VIRTIO_INPUT_CFG_ABS_INFO: u8 = 0x12;

pub const EVENT_QUEUE: usize = 0;
pub const STATUS_QUEUE: usize = 1;
/// Bytes of one `virtio_input_event`.
pub const EVENT_LEN: usize = 8;
/// Events waiting for buffers, at most (a few presses).
pub const MAX_PENDING_EVENTS: usize = 64;

/// Config space: select, subsel, size, 5 reserved, 128 bytes of data.
const CONFIG_LEN: usize = 136;
const CONFIG_DATA: usize = 8;
const DATA_LEN: usize = 128;
const QUEUE_SIZE: u16 = 64;
/// The name of the power button device (`/sys/class/input/input*/name` in the guest).
pub const POWER_BUTTON_NAME: &str = "vmk power button";

/// One input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: u32,
}

impl InputEvent {
    /// The 8 bytes of `virtio_input_event`.
    pub fn to_bytes(self) -> [u8; EVENT_LEN] {
        let mut b = [0u8; EVENT_LEN];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

/// Counters of one virtio-input device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputStats {
    /// Events written into guest buffers.
    pub delivered: u64,
    /// Events dropped because [`MAX_PENDING_EVENTS`] were already waiting.
    pub dropped: u64,
    /// Event-queue chains returned unused (readable, short, outside RAM).
    pub bad_chains: u64,
    /// Status-queue chains the driver sent.
    pub status_events: u64,
}

/// What became of a key press ([`VirtioMmio::press_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPress {
    /// The driver has the whole press.
    Delivered,
    /// The driver has no buffers for it yet: it waits in the device.
    Pending,
    /// The device has no such key, or too many events are waiting.
    Refused,
}

/// A virtio-input device with a set of keys (see the module docs).
pub struct VirtioInput {
    name: String,
    /// Sorted, deduplicated.
    keys: Vec<u16>,
    select: u8,
    subsel: u8,
    pending: VecDeque<InputEvent>,
    stats: InputStats,
}

impl VirtioInput {
    /// A device named `name` with `keys` (codes at most `KEY_MAX`, 0x2ff; others are left
    /// out).
    pub fn new(name: &str, keys: &[u16]) -> VirtioInput {
        let mut keys: Vec<u16> = keys.iter().copied().filter(|&k| k <= 0x2ff).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut name = name.to_string();
        while name.len() > DATA_LEN {
            name.pop();
        }
        VirtioInput {
            name,
            keys,
            select: VIRTIO_INPUT_CFG_UNSET,
            subsel: 0,
            pending: VecDeque::new(),
            stats: InputStats::default(),
        }
    }

    /// A power button: `KEY_POWER` alone.
    pub fn power_button() -> VirtioInput {
        VirtioInput::new(POWER_BUTTON_NAME, &[KEY_POWER])
    }

    pub fn stats(&self) -> InputStats {
        self.stats
    }

    /// Events waiting for driver buffers.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues a press and release of `key` (without delivering it: see
    /// [`VirtioMmio::press_key`]). False if the device has no such key or no room.
    pub fn queue_press(&mut self, key: u16) -> bool {
        if self.keys.binary_search(&key).is_err() {
            return false;
        }
        let down = InputEvent {
            kind: EV_KEY,
            code: key,
            value: 1,
        };
        if self.pending.contains(&down) {
            // A press of this key is still waiting: the driver will get it.
            return true;
        }
        let syn = InputEvent {
            kind: EV_SYN,
            code: SYN_REPORT,
            value: 0,
        };
        let up = InputEvent { value: 0, ..down };
        if self.pending.len() + 4 > MAX_PENDING_EVENTS {
            self.stats.dropped += 4;
            return false;
        }
        self.pending.extend([down, syn, up, syn]);
        true
    }

    /// The config data and its size for the current select/subsel.
    fn config_data(&self) -> ([u8; DATA_LEN], usize) {
        let mut d = [0u8; DATA_LEN];
        let n = match (self.select, self.subsel) {
            (VIRTIO_INPUT_CFG_ID_NAME, 0) => {
                let b = self.name.as_bytes();
                let n = b.len().min(DATA_LEN);
                d[..n].copy_from_slice(&b[..n]);
                n
            }
            (VIRTIO_INPUT_CFG_ID_DEVIDS, 0) => {
                let ids = [BUS_VIRTUAL, 0, 0, 1];
                for (i, v) in ids.iter().enumerate() {
                    d[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
                }
                8
            }
            (VIRTIO_INPUT_CFG_EV_BITS, s) if u16::from(s) == EV_KEY => {
                let mut n = 0;
                for &k in &self.keys {
                    let byte = usize::from(k / 8);
                    if let Some(b) = d.get_mut(byte) {
                        *b |= 1 << (k % 8);
                        n = n.max(byte + 1);
                    }
                }
                n
            }
            // No serial, no properties, no other event types, no axes.
            _ => 0,
        };
        (d, n)
    }

    /// Writes waiting events into event-queue buffers while both last.
    fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<(), QueueError> {
        while let Some(&ev) = self.pending.front() {
            let Some(chain) = queue.pop(mem)? else {
                break;
            };
            let bufs = chain.writable();
            let ok = chain.descriptors().iter().all(|d| d.writable)
                && bufs.len() >= EVENT_LEN as u64
                && bufs.in_ram(mem);
            if ok && bufs.write(mem, 0, &ev.to_bytes()).is_ok() {
                queue.add_used(mem, chain.head(), EVENT_LEN as u32)?;
                self.pending.pop_front();
                self.stats.delivered += 1;
            } else {
                self.stats.bad_chains += 1;
                queue.add_used(mem, chain.head(), 0)?;
            }
        }
        Ok(())
    }

    /// Takes the driver's status events (LED state and the like: nothing to do here).
    fn drain_status(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<(), QueueError> {
        while let Some(chain) = queue.pop(mem)? {
            self.stats.status_events += 1;
            queue.add_used(mem, chain.head(), 0)?;
        }
        Ok(())
    }
}

impl VirtioDevice for VirtioInput {
    fn device_type(&self) -> u32 {
        device_type::INPUT
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let (d, n) = self.config_data();
        for (i, out) in data.iter_mut().enumerate() {
            let Some(at) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|&a| a < CONFIG_LEN)
            else {
                *out = 0;
                continue;
            };
            *out = match at {
                0 => self.select,
                1 => self.subsel,
                2 => n as u8,
                a if a >= CONFIG_DATA => d[a - CONFIG_DATA],
                _ => 0,
            };
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => self.select = b,
                Some(1) => self.subsel = b,
                // size and data are the device's.
                _ => {}
            }
        }
    }

    fn activate(&mut self, _features: u64) -> Result<(), QueueError> {
        Ok(())
    }

    fn reset(&mut self) {
        // Waiting events stay: a press made while the driver resets is delivered after.
        self.select = VIRTIO_INPUT_CFG_UNSET;
        self.subsel = 0;
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<(), QueueError> {
        match index {
            EVENT_QUEUE => self.deliver(queue, mem),
            STATUS_QUEUE => self.drain_status(queue, mem),
            _ => Ok(()),
        }
    }
}

impl VirtioMmio<VirtioInput> {
    /// Presses and releases `key` (host side): queues the events and delivers what the
    /// driver has buffers for (raising the interrupt). See the module docs.
    pub fn press_key(&mut self, key: u16) -> KeyPress {
        if !self.device_mut().queue_press(key) {
            return KeyPress::Refused;
        }
        self.process_queue(EVENT_QUEUE);
        if self.device().pending() == 0 {
            KeyPress::Delivered
        } else {
            KeyPress::Pending
        }
    }
}
