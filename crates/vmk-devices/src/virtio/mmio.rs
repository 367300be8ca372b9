//! The virtio-mmio transport (virtio 1.2 §4.2), modern interface only (`Version` = 2).
//!
//! | offset | register | dir |
//! |---|---|---|
//! | 0x000 | MagicValue 0x74726976 | R |
//! | 0x004 | Version (2) | R |
//! | 0x008 | DeviceID | R |
//! | 0x00c | VendorID | R |
//! | 0x010 | DeviceFeatures (word DeviceFeaturesSel) | R |
//! | 0x014 | DeviceFeaturesSel | W |
//! | 0x020 | DriverFeatures (word DriverFeaturesSel) | W |
//! | 0x024 | DriverFeaturesSel | W |
//! | 0x030 | QueueSel | W |
//! | 0x034 | QueueNumMax | R |
//! | 0x038 | QueueNum | W |
//! | 0x044 | QueueReady | RW |
//! | 0x050 | QueueNotify | W |
//! | 0x060 | InterruptStatus | R |
//! | 0x064 | InterruptACK | W |
//! | 0x070 | Status | RW |
//! | 0x080/0x084 | QueueDescLow/High | W |
//! | 0x090/0x094 | QueueDriverLow/High | W |
//! | 0x0a0/0x0a4 | QueueDeviceLow/High | W |
//! | 0x0ac | SHMSel | W |
//! | 0x0b0..0x0bc | SHMLen/SHMBase Low/High (no regions: all ones) | R |
//! | 0x0fc | ConfigGeneration | R |
//! | 0x100+ | device configuration space (any size 1/2/4/8, any alignment) | RW |
//!
//! Registers below 0x100 take 32-bit aligned accesses only; anything else, writes to
//! read-only and reads of write-only registers are counted in
//! [`MmioDevice::bad_accesses`] (reads return 0).
//!
//! Status state machine: writing 0 resets the device (synchronously: Linux polls until
//! Status reads 0). Otherwise the driver can only add bits; a write that clears one is
//! ignored. DEVICE_NEEDS_RESET is the device's and kept whatever the driver writes.
//! FEATURES_OK sticks only if DRIVER is set and the driver features are a subset of the
//! offered ones including VERSION_1 (the driver re-reads Status to find out); DRIVER_OK only
//! after FEATURES_OK. Driver features are frozen once FEATURES_OK is set. Queues are
//! processed only while DRIVER_OK is set and neither FAILED nor DEVICE_NEEDS_RESET are;
//! kicks that arrive earlier are served when DRIVER_OK is set.

use std::sync::Arc;

use vmk_memory::GuestMemory;

use super::{features, interrupt, status, Queue, QueueError, VirtioDevice};
use crate::{IrqLine, MmioDevice};

pub const VIRTIO_MMIO_MAGIC: u32 = 0x7472_6976;
pub const VIRTIO_MMIO_VERSION: u32 = 2;
/// `VendorID`: "vmk\0".
pub const VIRTIO_MMIO_VENDOR_ID: u32 = u32::from_le_bytes(*b"vmk\0");

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// A virtio device on the virtio-mmio transport: put it on the [`crate::MmioBus`] at a
/// 4 KiB slot ([`crate::layout::virtio_base`]) and connect `irq` to the slot's PLIC source.
pub struct VirtioMmio<D: VirtioDevice> {
    device: D,
    mem: Arc<GuestMemory>,
    irq: Arc<dyn IrqLine>,
    status: u32,
    device_features: u64,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<Queue>,
    interrupt_status: u32,
    irq_level: bool,
    config_generation: u32,
    bad_accesses: u64,
    last_error: Option<QueueError>,
    needs_reset_count: u64,
}

impl<D: VirtioDevice> VirtioMmio<D> {
    /// The transport for `device`, doing DMA in `mem` and interrupting through `irq`.
    pub fn new(device: D, mem: Arc<GuestMemory>, irq: Arc<dyn IrqLine>) -> Self {
        let queues = device
            .queue_max_sizes()
            .into_iter()
            .map(Queue::new)
            .collect();
        let device_features = device.device_features() | features::TRANSPORT;
        VirtioMmio {
            device,
            mem,
            irq,
            status: 0,
            device_features,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            irq_level: false,
            config_generation: 0,
            bad_accesses: 0,
            last_error: None,
            needs_reset_count: 0,
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The InterruptStatus register (the interrupt line is high exactly when it is non-zero).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// The features offered (device-specific ones plus [`features::TRANSPORT`]).
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// The features the driver wrote (negotiated once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn queue(&self, index: usize) -> Option<&Queue> {
        self.queues.get(index)
    }

    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// Why the device last went to DEVICE_NEEDS_RESET (kept across resets, for diagnostics).
    pub fn last_error(&self) -> Option<&QueueError> {
        self.last_error.as_ref()
    }

    /// How many times the device went to DEVICE_NEEDS_RESET.
    pub fn needs_reset_count(&self) -> u64 {
        self.needs_reset_count
    }

    /// Whether the device may use its queues now.
    fn live(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.status & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0
    }

    fn update_irq(&mut self) {
        let level = self.interrupt_status != 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn raise(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        self.update_irq();
    }

    /// The host changed the device configuration (e.g. a disk was resized): bump
    /// ConfigGeneration and send a configuration change notification once the driver is up.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.raise(interrupt::CONFIG_CHANGE);
        }
    }

    /// Enters DEVICE_NEEDS_RESET because of `e`.
    fn needs_reset(&mut self, e: QueueError) {
        self.last_error = Some(e);
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.needs_reset_count += 1;
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK != 0 {
            self.raise(interrupt::CONFIG_CHANGE);
        }
    }

    /// Serves queue `index` now, as if the driver had notified it (for host-side events,
    /// e.g. packets received for a network device). Does nothing unless the device is live
    /// and the queue ready.
    pub fn process_queue(&mut self, index: usize) {
        if !self.live() || !self.queues.get(index).is_some_and(Queue::ready) {
            return;
        }
        let Some(q) = self.queues.get_mut(index) else {
            return;
        };
        let r = self.device.process_queue(index, q, &self.mem);
        let notify = q.needs_notification(&self.mem);
        match notify {
            Ok(true) => self.raise(interrupt::USED_BUFFER),
            Ok(false) => {}
            Err(e) => self.needs_reset(e),
        }
        if let Err(e) = r {
            self.needs_reset(e);
        }
    }

    /// Device reset (Status = 0): the device forgets the driver, queues stop and lose their
    /// configuration, the interrupt goes low.
    pub fn reset(&mut self) {
        self.device.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt_status = 0;
        self.update_irq();
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = (v & 0xff & !status::DEVICE_NEEDS_RESET) | (old & status::DEVICE_NEEDS_RESET);
        if old & !new != 0 {
            // The driver must not clear bits (other than by a reset).
            return;
        }
        let added = new & !old;
        if added & status::FEATURES_OK != 0 {
            let f = self.driver_features;
            let ok = new & status::DRIVER != 0
                && f & !self.device_features == 0
                && f & features::VIRTIO_F_VERSION_1 != 0
                && self.device.negotiate_features(f);
            if !ok {
                new &= !status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0 && new & status::FEATURES_OK == 0 {
            new &= !status::DRIVER_OK;
        }
        self.status = new;
        if new & !old & status::DRIVER_OK != 0 {
            let f = self.driver_features;
            for q in &mut self.queues {
                q.set_features(f);
            }
            if let Err(e) = self.device.activate(f) {
                self.needs_reset(e);
            }
            if self.status & status::DEVICE_NEEDS_RESET != 0 {
                // It broke during setup: tell the driver now that it listens.
                self.raise(interrupt::CONFIG_CHANGE);
            }
            // Serve anything kicked before DRIVER_OK.
            for i in 0..self.queues.len() {
                self.process_queue(i);
            }
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&mut self, offset: u64) -> Option<u32> {
        Some(match offset {
            MAGIC => VIRTIO_MMIO_MAGIC,
            VERSION => VIRTIO_MMIO_VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VIRTIO_MMIO_VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            // No shared memory regions: length and base read as -1.
            SHM_LEN_LOW..=SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            _ => return None,
        })
    }

    fn write_reg(&mut self, offset: u64, v: u32) -> bool {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES => {
                // Only between DRIVER and FEATURES_OK.
                if self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => {}
                    }
                }
            }
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v);
                }
            }
            QUEUE_READY => {
                let features = self.driver_features;
                let mem = self.mem.clone();
                let r = match self.selected_queue() {
                    Some(q) if v & 1 == 1 && !q.ready() => q.enable(&mem, features),
                    Some(q) if v & 1 == 0 => {
                        q.disable();
                        Ok(())
                    }
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    self.needs_reset(e);
                }
            }
            QUEUE_NOTIFY => {
                // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
                self.process_queue(v as usize);
            }
            INTERRUPT_ACK => {
                self.interrupt_status &= !v;
                self.update_irq();
            }
            STATUS => self.set_status(v),
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_word(offset == QUEUE_DESC_HIGH, v);
                }
            }
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_word(offset == QUEUE_DRIVER_HIGH, v);
                }
            }
            QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_word(offset == QUEUE_DEVICE_HIGH, v);
                }
            }
            SHM_SEL => {}
            _ => return false,
        }
        true
    }
}

impl<D: VirtioDevice> MmioDevice for VirtioMmio<D> {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= CONFIG {
            if !matches!(size, 1 | 2 | 4 | 8) {
                self.bad_accesses += 1;
                return 0;
            }
            let mut b = [0u8; 8];
            self.device
                .read_config(offset - CONFIG, &mut b[..usize::from(size)]);
            return u64::from_le_bytes(b);
        }
        if size != 4 || !offset.is_multiple_of(4) {
            self.bad_accesses += 1;
            return 0;
        }
        match self.read_reg(offset) {
            Some(v) => u64::from(v),
            None => {
                self.bad_accesses += 1;
                0
            }
        }
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        if offset >= CONFIG {
            if !matches!(size, 1 | 2 | 4 | 8) {
                self.bad_accesses += 1;
                return;
            }
            let b = value.to_le_bytes();
            self.device
                .write_config(offset - CONFIG, &b[..usize::from(size)]);
            return;
        }
        if size != 4 || !offset.is_multiple_of(4) || !self.write_reg(offset, value as u32) {
            self.bad_accesses += 1;
        }
    }

    fn bad_accesses(&self) -> u64 {
        self.bad_accesses
    }
}

impl<D: VirtioDevice> Drop for VirtioMmio<D> {
    /// The VM is going away: let the device finish (a block device flushes its backend).
    fn drop(&mut self) {
        self.device.reset();
    }
}
