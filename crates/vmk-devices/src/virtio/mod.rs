//! virtio 1.2 devices over the virtio-mmio transport.
//!
//! - [`VirtioMmio`] is the transport (virtio 1.2 §4.2, "modern", `Version` = 2): the register
//!   file, the device status state machine, feature negotiation, queue setup, notifications
//!   and the interrupt. It is generic over a [`VirtioDevice`], so virtio-net and
//!   virtio-balloon reuse it unchanged.
//! - [`Queue`] is a split virtqueue (virtio 1.2 §2.7) read and written through
//!   [`GuestMemory::read`] / [`GuestMemory::write`]: descriptor chains with NEXT, WRITE and
//!   INDIRECT, `VIRTIO_F_EVENT_IDX`, free-running 16-bit indices.
//! - [`VirtioBlk`] is the block device (device id 2) over a [`BlockBackend`];
//!   [`RawFileBackend`] is a raw image file or host block device.
//! - [`VirtioNet`] is the network device (device id 1) over a [`NetBackend`] (a vSwitch
//!   port); [`NetWaker`] brings frames that arrive on other threads to the guest.
//! - [`VirtioInput`] is the input device (device id 18): vmk's power button, pressed from
//!   the host with [`VirtioMmio::press_key`].
//!
//! # Wiring a device into a machine
//!
//! ```no_run
//! # use std::sync::{Arc, Mutex};
//! # use vmk_devices::{layout, IrqLine, MmioBus, Plic};
//! # use vmk_devices::virtio::{BlockConfig, RawFileBackend, VirtioBlk, VirtioMmio};
//! # fn f(mem: Arc<vmk_memory::GuestMemory>, plic: &Plic, bus: &mut MmioBus)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! let slot = 0;
//! let backend = RawFileBackend::open("disk.img", false)?;
//! let blk = VirtioBlk::new(Box::new(backend), BlockConfig::default());
//! let irq: Arc<dyn IrqLine> = Arc::new(plic.source(layout::virtio_irq(slot)).unwrap());
//! let dev = Arc::new(Mutex::new(VirtioMmio::new(blk, mem, irq)));
//! bus.register("virtio-blk0", layout::virtio_base(slot), layout::VIRTIO_SIZE, dev)?;
//! // Device tree: virtio_mmio@10001000 { compatible = "virtio,mmio";
//! //   reg = <0x0 0x10001000 0x0 0x1000>; interrupts = <1>; interrupt-parent = <&plic>; };
//! # Ok(()) }
//! ```
//!
//! # Where requests run
//!
//! Queues are processed synchronously on the vCPU thread that writes `QueueNotify`, inside
//! that MMIO exit, with the device's mutex held: the request is parsed, the backend I/O is
//! done, the used ring is updated and the interrupt raised before the store returns to the
//! guest. This is the simplest model that is correct with several vCPUs (the device mutex
//! serialises kicks; `VIRTIO_F_EVENT_IDX`'s `avail_event` is written and the ring re-checked
//! before a kick returns, so a buffer another vCPU adds meanwhile is either seen or kicked
//! again). Its cost is that the kicking vCPU stalls for the disk I/O; an I/O thread per
//! device can replace it later without changing [`VirtioDevice`] (it would call
//! [`VirtioMmio::process_queue`], which host-side code can already use, e.g. for network
//! receive).
//!
//! # Untrusted guest input
//!
//! Everything in guest memory is the guest's and can change under the device: every index,
//! length and address is checked before use, with checked arithmetic, and is read once.
//! A malformed request whose status byte can be located fails with the device's error status
//! (`VIRTIO_BLK_S_IOERR`); a malformed queue or descriptor chain (index ≥ queue size, loops,
//! indirect within indirect, bad indirect table length, more than 4 GiB in a chain, no
//! device-writable status byte, rings outside RAM, the available index running more than a
//! queue ahead) puts the device in `DEVICE_NEEDS_RESET`: the status bit is set, a
//! configuration-change interrupt is raised (once `DRIVER_OK` is set), and no queue is
//! touched again until the driver resets the device. The host never panics on guest data
//! and never writes outside device-writable buffers and the used ring.
//!
//! # Why not rust-vmm's `virtio-queue`
//!
//! rust-vmm's `virtio-queue` is written against `vm-memory`'s `GuestMemory` trait family
//! (`GuestAddressSpace`, `Bytes`, `GuestMemoryRegion` with host slices and volatile
//! accesses). vmk's [`GuestMemory`] is a page map whose guest frames can move to other
//! host frames (sharing, balloon, swap), with no stable contiguous host mapping to hand
//! out; bridging the two would mean implementing `vm-memory`'s region model over the page
//! map. The split ring is small, so vmk has its own, on copy-in/copy-out through
//! `GuestMemory::read`/`write`, which never holds host pointers across a page map change.

pub mod blk;
pub mod input;
mod mmio;
pub mod net;
pub mod queue;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(any(test, feature = "fuzzing"))]
mod harness;
#[cfg(any(test, feature = "fuzzing"))]
pub mod input_fuzzing;
#[cfg(any(test, feature = "fuzzing"))]
pub mod net_fuzzing;

#[cfg(test)]
mod input_tests;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod tests;

pub use blk::{
    BlkStats, BlockBackend, BlockConfig, RawFileBackend, VecBackend, VirtioBlk, VIRTIO_BLK_ID_BYTES,
};
pub use input::{InputEvent, InputStats, KeyPress, VirtioInput};
pub use mmio::{VirtioMmio, VIRTIO_MMIO_MAGIC, VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION};
pub use net::{
    NetBackend, NetConfig, NetStats, NetWaker, RxNotify, SharedNet, TxOutcome, VirtioNet,
    NET_HDR_LEN,
};
pub use queue::{Descriptor, DescriptorChain, GuestBuffers, Queue, MAX_QUEUE_SIZE};

use vmk_memory::GuestMemory;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Device-independent feature bits (virtio 1.2 §6).
pub mod features {
    pub const VIRTIO_F_RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
    pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
    pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
    /// The feature bits [`super::VirtioMmio`] offers for every device.
    pub const TRANSPORT: u64 =
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX;
}

/// `InterruptStatus` bits.
pub mod interrupt {
    /// The device used a buffer in at least one queue.
    pub const USED_BUFFER: u32 = 1;
    /// The device configuration changed (or the device needs a reset).
    pub const CONFIG_CHANGE: u32 = 2;
}

/// Virtio device type ids (virtio 1.2 §5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const BALLOON: u32 = 5;
    pub const INPUT: u32 = 18;
}

/// Why a queue or device stopped: the guest broke the virtio contract in a way that no
/// per-request status can report. The transport answers with `DEVICE_NEEDS_RESET`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue size {size} is not a power of two in 1..={max}")]
    BadSize { size: u32, max: u16 },
    #[error("{what} at {addr:#x} is misaligned or not in guest RAM")]
    BadRing { what: &'static str, addr: u64 },
    #[error("guest memory at {addr:#x} (+{len}) is not RAM")]
    Memory { addr: u64, len: u64 },
    #[error("available index {avail_idx} is more than a queue ({size}) ahead of {next_avail}")]
    AvailIndex {
        avail_idx: u16,
        next_avail: u16,
        size: u16,
    },
    #[error("descriptor index {index} is outside a table of {size}")]
    DescriptorIndex { index: u32, size: u32 },
    #[error("descriptor chain longer than its table ({size}): a loop")]
    ChainLoop { size: u32 },
    #[error("descriptor chain holds more than 4 GiB")]
    ChainTooBig,
    #[error("indirect descriptor without VIRTIO_F_RING_INDIRECT_DESC")]
    IndirectNotNegotiated,
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    #[error(
        "indirect table of {len} bytes (must be a non-zero multiple of 16, at most {max} entries)"
    )]
    IndirectTableLength { len: u32, max: u32 },
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("request has no device-writable status byte in guest RAM")]
    NoStatus,
    #[error("{0}")]
    Device(String),
}

/// A virtio device behind a transport ([`VirtioMmio`]).
///
/// The transport owns the queues and the status state machine; the device sees the queues
/// only in [`process_queue`](Self::process_queue), and never before the driver set
/// `DRIVER_OK` with a valid feature set.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;

    /// Device-specific feature bits offered to the driver. The transport adds
    /// [`features::TRANSPORT`] (VERSION_1, RING_INDIRECT_DESC, RING_EVENT_IDX).
    fn device_features(&self) -> u64;

    /// The maximum size of each virtqueue (powers of two, at most [`MAX_QUEUE_SIZE`]); the
    /// length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;

    /// Reads device configuration space at `offset` (relative to 0x100 of the transport).
    /// Bytes past the end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// A driver write to the configuration space. Default: ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// The driver sets FEATURES_OK with `features` (already checked to be a subset of what
    /// was offered, with VERSION_1). Return false to refuse them (FEATURES_OK stays clear).
    fn negotiate_features(&mut self, features: u64) -> bool {
        let _ = features;
        true
    }

    /// The driver set DRIVER_OK: the device goes live with the negotiated `features`. An
    /// error puts the device in DEVICE_NEEDS_RESET.
    fn activate(&mut self, features: u64) -> Result<(), QueueError>;

    /// The driver reset the device (or the transport is being dropped with it): forget the
    /// negotiated state. Queue state is dropped by the transport.
    fn reset(&mut self);

    /// Processes what the driver made available in queue `index`: pop chains, serve them,
    /// [`Queue::add_used`] them. The transport raises the used-buffer interrupt afterwards
    /// if the queue's notification suppression allows. An error puts the device in
    /// DEVICE_NEEDS_RESET.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<(), QueueError>;
}
