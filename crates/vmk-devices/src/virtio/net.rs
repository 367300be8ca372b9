//! virtio-net (virtio 1.2 §5.1), device id 1: one receive queue, one transmit queue and a
//! control queue, in front of a [`NetBackend`] (a vSwitch port in vmk).
//!
//! # Features
//!
//! Offered: `VIRTIO_NET_F_MAC` (the port's MAC in config space), `VIRTIO_NET_F_STATUS` (link
//! status, up unless the host says otherwise), `VIRTIO_NET_F_MTU` (the port's MTU),
//! `VIRTIO_NET_F_MRG_RXBUF` (a received frame may span several receive buffers),
//! `VIRTIO_NET_F_CTRL_VQ` with `CTRL_RX` and `CTRL_MAC_ADDR` (the guest tells the device
//! about MAC changes, so the switch's "MAC address changes" policy sees them), and
//! `VIRTIO_NET_F_SPEED_DUPLEX` (10 Gbit/s, full duplex).
//!
//! Not offered: checksum offload (`CSUM`, `GUEST_CSUM`) and segmentation offload
//! (`HOST_TSO*`, `GUEST_TSO*`, `HOST_UFO`...). The guest computes every checksum and
//! segments every TCP stream itself, which is correct whatever the frame's path (another
//! VM, an uplink). A TX header that asks for an offload anyway (`NEEDS_CSUM`, a GSO type)
//! is malformed and the frame is dropped and counted.
//!
//! # The header
//!
//! Every frame in either direction is preceded by the 12-byte `virtio_net_hdr_v1`:
//! flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16,
//! num_buffers u16. With VERSION_1 (always negotiated on this transport) `num_buffers` is
//! always present: the device writes 1 without `MRG_RXBUF`, and the number of buffers the
//! frame spans with it.
//!
//! # Transmit
//!
//! A TX chain is device-readable only: header then frame, split over descriptors in any
//! way. A chain with device-writable descriptors, shorter than the header plus an Ethernet
//! header, with buffers outside RAM, asking for an offload, or whose frame is longer than
//! [`NetConfig::max_frame`] is dropped and counted ([`NetStats`]), and returned to the
//! driver: one bad frame never stops the queue. The frame goes to
//! [`NetBackend::transmit`]. If the backend says [`TxOutcome::Throttled`] (traffic
//! shaping), the device keeps that frame, stops taking TX chains and retries after the
//! given delay (through the [`NetWaker`]'s thread): the guest's TX ring fills and its
//! stack slows down, so shaping delays frames rather than dropping them.
//!
//! # Receive
//!
//! Frames arrive from other threads (other VMs' vCPUs, uplink threads): the backend queues
//! them and calls the notifier installed with [`NetBackend::set_rx_notify`]. [`NetWaker`]
//! is that notifier: it takes the device's lock with `try_lock` and fills receive buffers
//! right there (the common case), or, if the device is busy (for example its own vCPU is
//! transmitting, or it is the device the delivering thread is transmitting from), hands
//! the work to a small per-device thread that waits for the lock. A delivering thread
//! therefore never blocks on a device lock while holding another, and two VMs sending to
//! each other cannot deadlock. When the guest has no receive buffers the frame waits (the
//! device holds one; the backend's bounded queue holds the rest and drops, counting, when
//! full); the guest's next RX kick drains them.
//!
//! A receive chain must be device-writable only, in RAM and at least 12 bytes long; a bad
//! one is returned with length 0 and counted. Without `MRG_RXBUF` a frame that does not fit
//! the next buffer is dropped (counted) and the buffer kept for the next frame.
//!
//! # Control queue
//!
//! Commands: `VIRTIO_NET_CTRL_RX` (promiscuous, all-multicast...: acknowledged and
//! recorded; the switch decides what a port sees), `VIRTIO_NET_CTRL_MAC` `TABLE_SET`
//! (acknowledged; filtering is the switch's) and `ADDR_SET` (passed to
//! [`NetBackend::set_mac`]). Anything else is answered with `VIRTIO_NET_ERR`.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, TryLockError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use vmk_memory::GuestMemory;

use super::{device_type, DescriptorChain, GuestBuffers, Queue, QueueError, VirtioDevice};
use super::{VirtioMmio, MAX_QUEUE_SIZE};

pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
pub const VIRTIO_NET_F_CTRL_RX: u64 = 1 << 18;
pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u64 = 1 << 23;
pub const VIRTIO_NET_F_SPEED_DUPLEX: u64 = 1 << 63;

/// `status` in config space.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `flags` of the header.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `gso_type` of the header.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// Control queue classes and commands (virtio 1.2 §5.1.6.5).
pub const VIRTIO_NET_CTRL_RX: u8 = 0;
pub const VIRTIO_NET_CTRL_RX_PROMISC: u8 = 0;
pub const VIRTIO_NET_CTRL_RX_ALLMULTI: u8 = 1;
pub const VIRTIO_NET_CTRL_MAC: u8 = 1;
pub const VIRTIO_NET_CTRL_MAC_TABLE_SET: u8 = 0;
pub const VIRTIO_NET_CTRL_MAC_ADDR_SET: u8 = 1;
pub const VIRTIO_NET_OK: u8 = 0;
pub const VIRTIO_NET_ERR: u8 = 1;

/// Length of `virtio_net_hdr_v1` (num_buffers included: VERSION_1 is always negotiated).
pub const NET_HDR_LEN: usize = 12;
const ETH_HLEN: usize = 14;
/// An Ethernet header plus one 802.1Q tag (frames of guests that tag their own VLANs).
const ETH_VLAN_OVERHEAD: usize = 18;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const CTRL_QUEUE: usize = 2;

const CONFIG_LEN: usize = 17;
/// Link speed advertised with SPEED_DUPLEX, in Mbit/s.
const SPEED_MBPS: u32 = 10_000;
const DUPLEX_FULL: u8 = 1;

/// What the backend did with a transmitted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// Taken (forwarded, or dropped by policy and counted by the backend).
    Sent,
    /// Dropped by the backend (it counts why).
    Dropped,
    /// Over the port's traffic shaping limit: try this frame again after the delay.
    Throttled(Duration),
}

/// Called by a backend when frames are waiting for the guest.
pub type RxNotify = Arc<dyn Fn() + Send + Sync>;

/// Where a virtio-net device's frames go and come from: a vSwitch port, a test double.
pub trait NetBackend: Send {
    /// The MAC address the device presents in config space.
    fn mac(&self) -> [u8; 6];
    /// The MTU the device presents (`VIRTIO_NET_F_MTU`): the largest payload of a frame,
    /// without the Ethernet header.
    fn mtu(&self) -> u16;
    /// One frame the guest sent: Ethernet header onwards, without the virtio-net header.
    fn transmit(&mut self, frame: &[u8]) -> TxOutcome;
    /// The next frame waiting for the guest, if any (Ethernet header onwards).
    fn receive(&mut self) -> Option<Vec<u8>>;
    /// Installs the function the backend calls (from any thread, with no device lock held)
    /// when frames start waiting for the guest.
    fn set_rx_notify(&mut self, notify: RxNotify);
    /// The guest changed its MAC address (`VIRTIO_NET_CTRL_MAC_ADDR_SET`). Returns whether
    /// the backend accepts the request (the guest is told OK or ERR).
    fn set_mac(&mut self, mac: [u8; 6]) -> bool {
        let _ = mac;
        false
    }
    /// The guest's receive mode (promiscuous, all-multicast), for information: what a
    /// port sees is decided by the switch's policy.
    fn set_rx_mode(&mut self, promiscuous: bool, all_multicast: bool) {
        let _ = (promiscuous, all_multicast);
    }
}

/// How a virtio-net device presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// QueueNumMax of the receive and transmit queues.
    pub queue_size: u16,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { queue_size: 256 }
    }
}

impl NetConfig {
    /// The longest frame (without the virtio-net header) for an MTU: the payload, an
    /// Ethernet header and one VLAN tag.
    pub fn max_frame(mtu: u16) -> usize {
        usize::from(mtu) + ETH_VLAN_OVERHEAD
    }
}

/// Counters of one virtio-net device (the guest's side; the switch port counts too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent that the backend took.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// TX chains dropped: device-writable descriptors, too short, outside RAM, offload
    /// requested.
    pub tx_malformed: u64,
    /// TX frames longer than the maximum frame for the MTU.
    pub tx_oversize: u64,
    /// TX frames the backend dropped.
    pub tx_backend_dropped: u64,
    /// Times the backend throttled a frame (each delays it; none is dropped).
    pub tx_throttled: u64,
    /// Frames written into guest receive buffers.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// RX chains returned unused: device-readable descriptors, shorter than the header,
    /// outside RAM.
    pub rx_bad_chains: u64,
    /// Frames dropped because they were longer than the maximum frame, or (without
    /// MRG_RXBUF) than the receive buffer.
    pub rx_too_big: u64,
    /// Frames the device held for the guest that were lost to a device reset.
    pub rx_lost_on_reset: u64,
    /// Control commands answered with an error (unknown, malformed).
    pub ctrl_errors: u64,
}

/// A receive buffer the device took from the ring and has not used yet.
struct RxBuffer {
    head: u16,
    bufs: GuestBuffers,
}

/// A frame the backend throttled, waiting to be sent again.
struct PendingTx {
    head: u16,
    frame: Vec<u8>,
}

/// The virtio-net device. Put it behind a [`VirtioMmio`]; start a [`NetWaker`] for it so
/// that frames from other threads reach the guest.
pub struct VirtioNet {
    backend: Box<dyn NetBackend>,
    config: NetConfig,
    mac: [u8; 6],
    mtu: u16,
    link_up: bool,
    features: u64,
    /// Receive buffers taken from the ring, not used yet (in ring order).
    rx_stash: VecDeque<RxBuffer>,
    /// A frame taken from the backend that waits for receive buffers.
    rx_pending: Option<Vec<u8>>,
    tx_pending: Option<PendingTx>,
    promiscuous: bool,
    all_multicast: bool,
    waker: Option<Arc<WorkerShared>>,
    stats: NetStats,
}

impl VirtioNet {
    pub fn new(backend: Box<dyn NetBackend>, config: NetConfig) -> Self {
        let mac = backend.mac();
        let mtu = backend.mtu();
        VirtioNet {
            backend,
            config,
            mac,
            mtu,
            link_up: true,
            features: 0,
            rx_stash: VecDeque::new(),
            rx_pending: None,
            tx_pending: None,
            promiscuous: false,
            all_multicast: false,
            waker: None,
            stats: NetStats::default(),
        }
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    pub fn backend(&self) -> &dyn NetBackend {
        &*self.backend
    }

    pub fn backend_mut(&mut self) -> &mut dyn NetBackend {
        &mut *self.backend
    }

    /// The MAC address in config space (the guest may use another one after ADDR_SET).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The guest's receive mode as its driver last set it: (promiscuous, all-multicast).
    pub fn rx_mode(&self) -> (bool, bool) {
        (self.promiscuous, self.all_multicast)
    }

    /// Sets the link state the guest sees; call [`VirtioMmio::config_changed`] afterwards
    /// so the driver re-reads it.
    pub fn set_link_up(&mut self, up: bool) {
        self.link_up = up;
    }

    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// The longest frame the device passes either way.
    pub fn max_frame(&self) -> usize {
        NetConfig::max_frame(self.mtu)
    }

    /// The receive buffers the device took from the ring and holds for the next frames
    /// (guest address, length): the device may still write there although the driver may
    /// have reused their descriptors.
    pub fn held_rx_buffers(&self) -> Vec<(u64, u64)> {
        self.rx_stash
            .iter()
            .flat_map(|b| b.bufs.segments().iter().copied())
            .collect()
    }

    /// Whether a throttled frame waits to be sent again.
    pub fn tx_pending(&self) -> bool {
        self.tx_pending.is_some()
    }

    fn mergeable(&self) -> bool {
        self.features & VIRTIO_NET_F_MRG_RXBUF != 0
    }

    fn queue_max_size(&self) -> u16 {
        Queue::new(self.config.queue_size.min(MAX_QUEUE_SIZE)).max_size()
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c[12..16].copy_from_slice(&SPEED_MBPS.to_le_bytes());
        c[16] = DUPLEX_FULL;
        c
    }

    // ---- transmit -------------------------------------------------------------------

    /// The frame of a TX chain, or None (counted) if the chain is malformed or oversize.
    fn tx_frame(&mut self, chain: &DescriptorChain, mem: &GuestMemory) -> Option<Vec<u8>> {
        if chain.descriptors().iter().any(|d| d.writable) {
            self.stats.tx_malformed += 1;
            return None;
        }
        let out = chain.readable();
        let hdr_len = NET_HDR_LEN as u64;
        if out.len() < hdr_len + ETH_HLEN as u64 || !out.in_ram(mem) {
            self.stats.tx_malformed += 1;
            return None;
        }
        let len = out.len() - hdr_len;
        if len > self.max_frame() as u64 {
            self.stats.tx_oversize += 1;
            return None;
        }
        let mut hdr = [0u8; NET_HDR_LEN];
        if out.read(mem, 0, &mut hdr).is_err() {
            self.stats.tx_malformed += 1;
            return None;
        }
        // No checksum or segmentation offload was offered.
        if hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 || hdr[1] != VIRTIO_NET_HDR_GSO_NONE {
            self.stats.tx_malformed += 1;
            return None;
        }
        // len ≤ max_frame, a small number.
        let mut frame = vec![0u8; len as usize];
        if out.read(mem, hdr_len, &mut frame).is_err() {
            self.stats.tx_malformed += 1;
            return None;
        }
        Some(frame)
    }

    /// Hands a frame to the backend; false if it was throttled (and is now pending).
    fn send(&mut self, head: u16, frame: Vec<u8>) -> bool {
        match self.backend.transmit(&frame) {
            TxOutcome::Sent => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += frame.len() as u64;
                true
            }
            TxOutcome::Dropped => {
                self.stats.tx_backend_dropped += 1;
                true
            }
            TxOutcome::Throttled(delay) => {
                self.stats.tx_throttled += 1;
                self.tx_pending = Some(PendingTx { head, frame });
                if let Some(w) = &self.waker {
                    w.schedule_tx(Instant::now() + delay);
                }
                false
            }
        }
    }

    fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<(), QueueError> {
        if let Some(p) = self.tx_pending.take() {
            if !self.send(p.head, p.frame) {
                return Ok(());
            }
            queue.add_used(mem, p.head, 0)?;
        }
        while let Some(chain) = queue.pop(mem)? {
            if let Some(frame) = self.tx_frame(&chain, mem) {
                if !self.send(chain.head(), frame) {
                    // Throttled: the chain stays with the device until the retry.
                    return Ok(());
                }
            }
            // TX buffers are only read: the used length is 0.
            queue.add_used(mem, chain.head(), 0)?;
        }
        Ok(())
    }

    // ---- receive --------------------------------------------------------------------

    /// Takes the next usable receive buffer from the ring into the stash; returns false
    /// when the ring is empty. Bad chains are returned with length 0 and counted.
    fn stash_rx_buffer(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueError> {
        while let Some(chain) = queue.pop(mem)? {
            let bufs = chain.writable();
            let ok = !chain.descriptors().iter().any(|d| !d.writable)
                && bufs.len() >= NET_HDR_LEN as u64
                && bufs.in_ram(mem);
            if ok {
                self.rx_stash.push_back(RxBuffer {
                    head: chain.head(),
                    bufs,
                });
                return Ok(true);
            }
            self.stats.rx_bad_chains += 1;
            queue.add_used(mem, chain.head(), 0)?;
        }
        Ok(false)
    }

    /// Bytes available in the stashed buffers.
    fn stash_bytes(&self) -> u64 {
        self.rx_stash.iter().map(|b| b.bufs.len()).sum()
    }

    /// Writes `frame` into stashed buffers. Ok(false) if there is not enough room yet (the
    /// frame is not consumed).
    fn deliver(
        &mut self,
        frame: &[u8],
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueError> {
        let need = (NET_HDR_LEN + frame.len()) as u64;
        if self.mergeable() {
            while self.stash_bytes() < need {
                if !self.stash_rx_buffer(queue, mem)? {
                    return Ok(false);
                }
            }
        } else {
            if self.rx_stash.is_empty() && !self.stash_rx_buffer(queue, mem)? {
                return Ok(false);
            }
            match self.rx_stash.front() {
                Some(b) if b.bufs.len() < need => {
                    // The buffer is too small for this frame: drop the frame, keep the
                    // buffer for the next one.
                    self.stats.rx_too_big += 1;
                    return Ok(true);
                }
                Some(_) => {}
                None => return Ok(false),
            }
        }
        // Count the buffers the frame spans (num_buffers).
        let mut spans = 0usize;
        let mut room = 0u64;
        for b in &self.rx_stash {
            spans += 1;
            room += b.bufs.len();
            if room >= need {
                break;
            }
        }
        let mut hdr = [0u8; NET_HDR_LEN];
        // flags, gso_type NONE, hdr_len, gso_size, csum_start, csum_offset: 0.
        hdr[10..12].copy_from_slice(&(spans as u16).to_le_bytes());
        let mut bytes = Vec::with_capacity(need as usize);
        bytes.extend_from_slice(&hdr);
        bytes.extend_from_slice(frame);
        let mut at = 0usize;
        for _ in 0..spans {
            let Some(b) = self.rx_stash.pop_front() else {
                break;
            };
            let n = (b.bufs.len() as usize).min(bytes.len() - at);
            let used = match b.bufs.write(mem, 0, &bytes[at..at + n]) {
                Ok(()) => n,
                Err(_) => {
                    // Checked to be RAM when taken; only a memory map change gets here.
                    self.stats.rx_bad_chains += 1;
                    0
                }
            };
            at += n;
            // A buffer is < 4 GiB.
            queue.add_used(mem, b.head, u32::try_from(used).unwrap_or(u32::MAX))?;
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += frame.len() as u64;
        Ok(true)
    }

    fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<(), QueueError> {
        loop {
            let frame = match self.rx_pending.take() {
                Some(f) => f,
                None => match self.backend.receive() {
                    Some(f) => f,
                    None => return Ok(()),
                },
            };
            if frame.len() > self.max_frame() {
                self.stats.rx_too_big += 1;
                continue;
            }
            if !self.deliver(&frame, queue, mem)? {
                self.rx_pending = Some(frame);
                return Ok(());
            }
        }
    }

    // ---- control --------------------------------------------------------------------

    fn ctrl_command(&mut self, out: &GuestBuffers, mem: &GuestMemory) -> u8 {
        let mut cmd = [0u8; 2];
        if out.read(mem, 0, &mut cmd).is_err() {
            return VIRTIO_NET_ERR;
        }
        let data = out
            .slice(2, out.len().saturating_sub(2))
            .unwrap_or_default();
        match (cmd[0], cmd[1]) {
            (
                VIRTIO_NET_CTRL_RX,
                c @ (VIRTIO_NET_CTRL_RX_PROMISC | VIRTIO_NET_CTRL_RX_ALLMULTI),
            ) => {
                let mut on = [0u8];
                if data.len() != 1 || data.read(mem, 0, &mut on).is_err() {
                    return VIRTIO_NET_ERR;
                }
                if c == VIRTIO_NET_CTRL_RX_PROMISC {
                    self.promiscuous = on[0] != 0;
                } else {
                    self.all_multicast = on[0] != 0;
                }
                self.backend
                    .set_rx_mode(self.promiscuous, self.all_multicast);
                VIRTIO_NET_OK
            }
            // Other RX-mode commands (all-unicast, no-multicast...) need CTRL_RX_EXTRA,
            // which is not offered.
            (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET) => {
                // Two tables (u32 count + 6-byte entries); the switch does the filtering,
                // so the tables are only checked for shape.
                let mut n = [0u8; 4];
                if data.read(mem, 0, &mut n).is_err() {
                    return VIRTIO_NET_ERR;
                }
                let uni = u64::from(u32::from_le_bytes(n));
                let at = 4 + 6 * uni;
                if data.read(mem, at, &mut n).is_err() {
                    return VIRTIO_NET_ERR;
                }
                let multi = u64::from(u32::from_le_bytes(n));
                if at + 4 + 6 * multi != data.len() {
                    return VIRTIO_NET_ERR;
                }
                VIRTIO_NET_OK
            }
            (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET) => {
                let mut mac = [0u8; 6];
                if data.len() != 6 || data.read(mem, 0, &mut mac).is_err() {
                    return VIRTIO_NET_ERR;
                }
                if self.backend.set_mac(mac) {
                    VIRTIO_NET_OK
                } else {
                    VIRTIO_NET_ERR
                }
            }
            _ => VIRTIO_NET_ERR,
        }
    }

    fn process_ctrl(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<(), QueueError> {
        while let Some(chain) = queue.pop(mem)? {
            let out = chain.readable();
            let inb = chain.writable();
            // The ack is the first device-writable byte.
            let ack_ok = inb.slice(0, 1).is_some_and(|a| a.in_ram(mem));
            if !ack_ok {
                self.stats.ctrl_errors += 1;
                queue.add_used(mem, chain.head(), 0)?;
                continue;
            }
            let ack = self.ctrl_command(&out, mem);
            if ack != VIRTIO_NET_OK {
                self.stats.ctrl_errors += 1;
            }
            let used = match inb.write(mem, 0, &[ack]) {
                Ok(()) => 1,
                Err(_) => 0,
            };
            queue.add_used(mem, chain.head(), used)?;
        }
        Ok(())
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn device_features(&self) -> u64 {
        VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_MTU
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_NET_F_CTRL_VQ
            | VIRTIO_NET_F_CTRL_RX
            | VIRTIO_NET_F_CTRL_MAC_ADDR
            | VIRTIO_NET_F_SPEED_DUPLEX
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let n = self.queue_max_size();
        // The control queue holds a few commands at a time.
        vec![n, n, 64]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn negotiate_features(&mut self, features: u64) -> bool {
        // CTRL_RX and CTRL_MAC_ADDR need the control queue (virtio 1.2 §5.1.3.1).
        let needs_cvq = VIRTIO_NET_F_CTRL_RX | VIRTIO_NET_F_CTRL_MAC_ADDR;
        features & needs_cvq == 0 || features & VIRTIO_NET_F_CTRL_VQ != 0
    }

    fn activate(&mut self, features: u64) -> Result<(), QueueError> {
        self.features = features;
        Ok(())
    }

    fn reset(&mut self) {
        self.features = 0;
        // Buffers belong to the old rings; a held frame is lost (the backend's queue
        // keeps the rest for the next driver).
        self.rx_stash.clear();
        if self.rx_pending.take().is_some() {
            self.stats.rx_lost_on_reset += 1;
        }
        self.tx_pending = None;
        self.promiscuous = false;
        self.all_multicast = false;
        self.backend.set_rx_mode(false, false);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<(), QueueError> {
        match index {
            RX_QUEUE => self.process_rx(queue, mem),
            TX_QUEUE => self.process_tx(queue, mem),
            CTRL_QUEUE if self.features & VIRTIO_NET_F_CTRL_VQ != 0 => {
                self.process_ctrl(queue, mem)
            }
            _ => Ok(()),
        }
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        if let Some(w) = &self.waker {
            w.stop();
        }
    }
}

// ---- host-side events ---------------------------------------------------------------

/// A virtio-net device as the machine shares it.
pub type SharedNet = Arc<Mutex<VirtioMmio<VirtioNet>>>;

#[derive(Default)]
struct WorkerState {
    rx: bool,
    tx_at: Option<Instant>,
    stop: bool,
}

/// The state shared between a device, its [`NetWaker`]s and its worker thread.
#[derive(Default)]
struct WorkerShared {
    state: Mutex<WorkerState>,
    cv: Condvar,
}

impl WorkerShared {
    fn state(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        crate::lock(&self.state)
    }

    fn signal_rx(&self) {
        self.state().rx = true;
        self.cv.notify_one();
    }

    fn schedule_tx(&self, at: Instant) {
        let mut s = self.state();
        s.tx_at = Some(s.tx_at.map_or(at, |t| t.min(at)));
        drop(s);
        self.cv.notify_one();
    }

    fn stop(&self) {
        self.state().stop = true;
        self.cv.notify_one();
    }
}

/// Delivers host-side events to a virtio-net device: frames waiting for the guest, and TX
/// retries after traffic shaping. Cheap to clone; holds no strong reference to the device.
#[derive(Clone)]
pub struct NetWaker {
    dev: Weak<Mutex<VirtioMmio<VirtioNet>>>,
    shared: Arc<WorkerShared>,
}

impl NetWaker {
    /// Starts the device's worker thread (named `name`) and installs the waker as the
    /// backend's RX notifier. The thread ends when the device is dropped.
    pub fn start(dev: &SharedNet, name: &str) -> std::io::Result<NetWaker> {
        let shared = Arc::new(WorkerShared::default());
        let waker = NetWaker {
            dev: Arc::downgrade(dev),
            shared: shared.clone(),
        };
        let w = waker.clone();
        thread::Builder::new()
            .name(name.to_string())
            .spawn(move || w.worker())?;
        let notify_waker = waker.clone();
        let notify: RxNotify = Arc::new(move || notify_waker.wake_rx());
        let mut d = crate::lock(dev);
        let net = d.device_mut();
        net.waker = Some(shared);
        net.backend.set_rx_notify(notify);
        Ok(waker)
    }

    /// Frames wait for the guest: fill receive buffers now if the device is free,
    /// otherwise let the worker thread do it as soon as it is.
    pub fn wake_rx(&self) {
        let Some(dev) = self.dev.upgrade() else {
            return;
        };
        match dev.try_lock() {
            Ok(mut d) => d.process_queue(RX_QUEUE),
            Err(TryLockError::Poisoned(p)) => p.into_inner().process_queue(RX_QUEUE),
            Err(TryLockError::WouldBlock) => self.shared.signal_rx(),
        };
    }

    fn worker(self) {
        loop {
            let (rx, tx) = {
                let mut s = self.shared.state();
                loop {
                    if s.stop {
                        return;
                    }
                    let now = Instant::now();
                    let tx_due = s.tx_at.is_some_and(|t| t <= now);
                    if s.rx || tx_due {
                        break;
                    }
                    // Wake up now and then to notice a device that went away without
                    // stopping us (it always stops us; this is a backstop).
                    let wait = s
                        .tx_at
                        .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
                    s = self
                        .shared
                        .cv
                        .wait_timeout(s, wait)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                let tx_due = s.tx_at.is_some_and(|t| t <= Instant::now());
                if tx_due {
                    s.tx_at = None;
                }
                let rx = std::mem::take(&mut s.rx);
                (rx, tx_due)
            };
            let Some(dev) = self.dev.upgrade() else {
                return;
            };
            let mut d = crate::lock(&dev);
            if tx {
                d.process_queue(TX_QUEUE);
            }
            if rx {
                d.process_queue(RX_QUEUE);
            }
        }
    }
}
