//! Split virtqueues (virtio 1.2 §2.7), read and written through [`GuestMemory`].
//!
//! Layout (little-endian, `size` = queue size, a power of two):
//!
//! | part | alignment | contents |
//! |---|---|---|
//! | descriptor table | 16 | `size` × { addr u64, len u32, flags u16, next u16 } |
//! | available ring (driver area) | 2 | flags u16, idx u16, `ring[size]` u16, used_event u16 |
//! | used ring (device area) | 4 | flags u16, idx u16, `ring[size]` { id u32, len u32 }, avail_event u16 |
//!
//! The device keeps its own copies of the next available and next used indices (free-running
//! `u16`s, compared with wrapping arithmetic), reads every guest word once, and validates
//! each chain completely before a device sees it.

use std::sync::atomic::{fence, Ordering};

use vmk_memory::GuestMemory;

use super::QueueError;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// The largest split queue (virtio 1.2 §2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

const DESC_SIZE: u64 = 16;

/// One buffer of a descriptor chain, after indirect tables have been flattened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// A validated descriptor chain: its head index (what goes into the used ring) and its
/// buffers in order, device-readable ones first. Total length ≤ 4 GiB − 1, no loops, at most
/// one level of indirection. Buffer addresses are NOT checked: a device checks them when it
/// uses them (see [`GuestBuffers::in_ram`]), so that a bad data buffer can fail only its own
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorChain {
    head: u16,
    descriptors: Vec<Descriptor>,
}

impl DescriptorChain {
    pub fn head(&self) -> u16 {
        self.head
    }

    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// The device-readable buffers, in order.
    pub fn readable(&self) -> GuestBuffers {
        let mut b = GuestBuffers::new();
        for d in self.descriptors.iter().filter(|d| !d.writable) {
            b.push(d.addr, u64::from(d.len));
        }
        b
    }

    /// The device-writable buffers, in order.
    pub fn writable(&self) -> GuestBuffers {
        let mut b = GuestBuffers::new();
        for d in self.descriptors.iter().filter(|d| d.writable) {
            b.push(d.addr, u64::from(d.len));
        }
        b
    }
}

/// A scatter list of guest physical buffers seen as one byte string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestBuffers {
    /// (guest address, length), no zero lengths.
    segs: Vec<(u64, u64)>,
    len: u64,
}

impl GuestBuffers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a buffer; zero-length buffers are dropped. Lengths add up with saturation (a
    /// chain is at most 4 GiB, so this never saturates for one).
    pub fn push(&mut self, addr: u64, len: u64) {
        if len > 0 {
            self.segs.push((addr, len));
            self.len = self.len.saturating_add(len);
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// (guest address, length) of each buffer.
    pub fn segments(&self) -> &[(u64, u64)] {
        &self.segs
    }

    /// Bytes `[offset, offset + len)` of the string, or None if that runs past its end.
    pub fn slice(&self, offset: u64, len: u64) -> Option<GuestBuffers> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        let mut out = GuestBuffers::new();
        let mut pos = 0u64;
        for &(addr, slen) in &self.segs {
            let s_end = pos + slen;
            let from = offset.max(pos);
            let to = end.min(s_end);
            if from < to {
                out.push(addr + (from - pos), to - from);
            }
            pos = s_end;
            if pos >= end {
                break;
            }
        }
        Some(out)
    }

    /// Whether every buffer is guest RAM (no address wraps, nothing MMIO or unmapped).
    pub fn in_ram(&self, mem: &GuestMemory) -> bool {
        self.segs.iter().all(|&(a, l)| mem.is_ram(a, l))
    }

    /// Copies `buf.len()` bytes from offset `offset` of the string.
    pub fn read(&self, mem: &GuestMemory, offset: u64, buf: &mut [u8]) -> Result<(), QueueError> {
        self.for_each(offset, buf.len() as u64, |addr, at, n| {
            mem.read(addr, &mut buf[at..at + n])
                .map_err(|_| QueueError::Memory {
                    addr,
                    len: n as u64,
                })
        })
    }

    /// Copies `data` to offset `offset` of the string.
    pub fn write(&self, mem: &GuestMemory, offset: u64, data: &[u8]) -> Result<(), QueueError> {
        self.for_each(offset, data.len() as u64, |addr, at, n| {
            mem.write(addr, &data[at..at + n])
                .map_err(|_| QueueError::Memory {
                    addr,
                    len: n as u64,
                })
        })
    }

    /// Calls `f(guest address, offset into the caller's buffer, length)` for the pieces of
    /// `[offset, offset + len)`.
    fn for_each(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let part = self
            .slice(offset, len)
            .ok_or(QueueError::Memory { addr: offset, len })?;
        let mut at = 0usize;
        for &(addr, n) in &part.segs {
            // n ≤ len, which is a host buffer length.
            let n = n as usize;
            f(addr, at, n)?;
            at += n;
        }
        Ok(())
    }
}

fn read_u16(mem: &GuestMemory, addr: u64) -> Result<u16, QueueError> {
    let mut b = [0u8; 2];
    mem.read(addr, &mut b)
        .map_err(|_| QueueError::Memory { addr, len: 2 })?;
    Ok(u16::from_le_bytes(b))
}

fn write_u16(mem: &GuestMemory, addr: u64, v: u16) -> Result<(), QueueError> {
    mem.write(addr, &v.to_le_bytes())
        .map_err(|_| QueueError::Memory { addr, len: 2 })
}

/// A raw descriptor as the guest wrote it.
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestMemory, table: u64, index: u32) -> Result<RawDesc, QueueError> {
    let addr = table
        .checked_add(u64::from(index) * DESC_SIZE)
        .ok_or(QueueError::Memory {
            addr: table,
            len: DESC_SIZE,
        })?;
    let mut b = [0u8; 16];
    mem.read(addr, &mut b).map_err(|_| QueueError::Memory {
        addr,
        len: DESC_SIZE,
    })?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = b;
    Ok(RawDesc {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        flags: u16::from_le_bytes([f0, f1]),
        next: u16::from_le_bytes([n0, n1]),
    })
}

/// One split virtqueue: the registers the driver programs through the transport, and the
/// device's position in the rings.
#[derive(Debug, Clone)]
pub struct Queue {
    max_size: u16,
    size: u32,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    /// Next available ring slot the device will read (free-running).
    next_avail: u16,
    /// Next used ring slot the device will write (free-running); what used.idx holds.
    next_used: u16,
    /// used.idx at the last notification check (EVENT_IDX), None before the first.
    signalled_used: Option<u16>,
    /// Used elements were added since the last notification check.
    added: bool,
    event_idx: bool,
    indirect: bool,
}

impl Queue {
    /// A queue of at most `max_size` entries (rounded down to a power of two in
    /// 1..=[`MAX_QUEUE_SIZE`]).
    pub fn new(max_size: u16) -> Queue {
        let m = max_size.clamp(1, MAX_QUEUE_SIZE);
        let max_size = 1u16 << (15 - m.leading_zeros().min(15));
        let max_size = if max_size > m {
            max_size >> 1
        } else {
            max_size
        };
        Queue {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            next_avail: 0,
            next_used: 0,
            signalled_used: None,
            added: false,
            event_idx: false,
            indirect: false,
        }
    }

    /// `QueueNumMax`.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The size the driver chose (`QueueNum`; the maximum until it writes one). Valid only
    /// once the queue is ready.
    pub fn size(&self) -> u16 {
        self.size as u16
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    pub fn desc_table(&self) -> u64 {
        self.desc_table
    }

    pub fn avail_ring(&self) -> u64 {
        self.avail_ring
    }

    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    /// The device's next available index.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The device's next used index (= used.idx).
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// `QueueNum`. Ignored while the queue is ready.
    pub fn set_size(&mut self, size: u32) {
        if !self.ready {
            self.size = size;
        }
    }

    /// `QueueDesc{Low,High}`: `high` selects the word. Ignored while the queue is ready.
    pub fn set_desc_table_word(&mut self, high: bool, v: u32) {
        if !self.ready {
            set_word(&mut self.desc_table, high, v);
        }
    }

    /// `QueueDriver{Low,High}`. Ignored while the queue is ready.
    pub fn set_avail_ring_word(&mut self, high: bool, v: u32) {
        if !self.ready {
            set_word(&mut self.avail_ring, high, v);
        }
    }

    /// `QueueDevice{Low,High}`. Ignored while the queue is ready.
    pub fn set_used_ring_word(&mut self, high: bool, v: u32) {
        if !self.ready {
            set_word(&mut self.used_ring, high, v);
        }
    }

    /// Checks the driver's queue configuration: a power-of-two size ≤ `QueueNumMax`, and each
    /// ring aligned and entirely in guest RAM.
    pub fn validate(&self, mem: &GuestMemory) -> Result<(), QueueError> {
        let size = self.size;
        if size == 0 || size > u32::from(self.max_size) || !size.is_power_of_two() {
            return Err(QueueError::BadSize {
                size,
                max: self.max_size,
            });
        }
        let n = u64::from(size);
        for (what, addr, align, len) in [
            ("descriptor table", self.desc_table, 16, 16 * n),
            ("available ring", self.avail_ring, 2, 6 + 2 * n),
            ("used ring", self.used_ring, 4, 6 + 8 * n),
        ] {
            if addr % align != 0 || !mem.is_ram(addr, len) {
                return Err(QueueError::BadRing { what, addr });
            }
        }
        Ok(())
    }

    /// `QueueReady` = 1: validates the configuration and starts the queue from index 0 with
    /// the negotiated `features`. On error the queue stays stopped.
    pub fn enable(&mut self, mem: &GuestMemory, features: u64) -> Result<(), QueueError> {
        self.validate(mem)?;
        self.ready = true;
        self.next_avail = 0;
        self.next_used = 0;
        self.signalled_used = None;
        self.added = false;
        self.set_features(features);
        Ok(())
    }

    /// Applies the negotiated features (EVENT_IDX, INDIRECT_DESC).
    pub fn set_features(&mut self, features: u64) {
        self.event_idx = features & super::features::VIRTIO_F_RING_EVENT_IDX != 0;
        self.indirect = features & super::features::VIRTIO_F_RING_INDIRECT_DESC != 0;
    }

    /// `QueueReady` = 0: the device stops using the queue.
    pub fn disable(&mut self) {
        self.ready = false;
    }

    /// Device reset: back to the state after construction.
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// The driver's available index.
    fn avail_idx(&self, mem: &GuestMemory) -> Result<u16, QueueError> {
        read_u16(mem, self.avail_ring + 2)
    }

    /// Takes the next available descriptor chain, or None when the driver has made nothing
    /// more available. With EVENT_IDX, an empty ring first publishes `avail_event` = the
    /// next index and checks again, so a buffer added concurrently is never left without a
    /// notification.
    pub fn pop(&mut self, mem: &GuestMemory) -> Result<Option<DescriptorChain>, QueueError> {
        if !self.ready {
            return Ok(None);
        }
        let size = self.size as u16;
        let mut avail_idx = self.avail_idx(mem)?;
        if avail_idx == self.next_avail {
            if !self.event_idx {
                return Ok(None);
            }
            self.set_avail_event(mem)?;
            fence(Ordering::SeqCst);
            avail_idx = self.avail_idx(mem)?;
            if avail_idx == self.next_avail {
                return Ok(None);
            }
        }
        if avail_idx.wrapping_sub(self.next_avail) > size {
            return Err(QueueError::AvailIndex {
                avail_idx,
                next_avail: self.next_avail,
                size,
            });
        }
        // Read the ring entry only after the index that published it.
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail % size);
        let head = read_u16(mem, self.avail_ring + 4 + 2 * slot)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.walk(mem, head).map(Some)
    }

    /// Writes `avail_event` (EVENT_IDX): "notify me when you make index next_avail
    /// available".
    fn set_avail_event(&self, mem: &GuestMemory) -> Result<(), QueueError> {
        write_u16(
            mem,
            self.used_ring + 4 + 8 * u64::from(self.size),
            self.next_avail,
        )
    }

    /// Follows the chain that starts at `head`, flattening an indirect table.
    fn walk(&self, mem: &GuestMemory, head: u16) -> Result<DescriptorChain, QueueError> {
        let mut table = self.desc_table;
        let mut table_len = self.size;
        let mut index = u32::from(head);
        let mut steps = 0u32;
        let mut in_indirect = false;
        let mut seen_writable = false;
        let mut total = 0u64;
        let mut descriptors = Vec::new();
        if index >= table_len {
            return Err(QueueError::DescriptorIndex {
                index,
                size: table_len,
            });
        }
        loop {
            // A chain that visits more descriptors than its table holds repeats one.
            steps += 1;
            if steps > table_len {
                return Err(QueueError::ChainLoop { size: table_len });
            }
            let d = read_desc(mem, table, index)?;
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if in_indirect {
                    return Err(QueueError::NestedIndirect);
                }
                if !self.indirect {
                    return Err(QueueError::IndirectNotNegotiated);
                }
                if d.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(QueueError::IndirectWithNext);
                }
                let max = u32::from(self.max_size);
                if d.len == 0 || d.len % 16 != 0 || d.len / 16 > max {
                    return Err(QueueError::IndirectTableLength { len: d.len, max });
                }
                if !mem.is_ram(d.addr, u64::from(d.len)) {
                    return Err(QueueError::Memory {
                        addr: d.addr,
                        len: u64::from(d.len),
                    });
                }
                // The WRITE flag of the descriptor that points at the table is ignored.
                table = d.addr;
                table_len = d.len / 16;
                index = 0;
                steps = 0;
                in_indirect = true;
                continue;
            }
            let writable = d.flags & VIRTQ_DESC_F_WRITE != 0;
            if seen_writable && !writable {
                return Err(QueueError::ReadableAfterWritable);
            }
            seen_writable |= writable;
            total += u64::from(d.len);
            if total > u64::from(u32::MAX) {
                return Err(QueueError::ChainTooBig);
            }
            descriptors.push(Descriptor {
                addr: d.addr,
                len: d.len,
                writable,
            });
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            index = u32::from(d.next);
            if index >= table_len {
                return Err(QueueError::DescriptorIndex {
                    index,
                    size: table_len,
                });
            }
        }
        Ok(DescriptorChain { head, descriptors })
    }

    /// Returns chain `head` to the driver with `len` bytes written into its device-writable
    /// buffers.
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::Device("used buffer on a stopped queue".into()));
        }
        let slot = u64::from(self.next_used % self.size as u16);
        let elem = self.used_ring + 4 + 8 * slot;
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        b[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(elem, &b)
            .map_err(|_| QueueError::Memory { addr: elem, len: 8 })?;
        // The element must be visible before the index that publishes it.
        fence(Ordering::Release);
        self.next_used = self.next_used.wrapping_add(1);
        self.added = true;
        write_u16(mem, self.used_ring + 2, self.next_used)
    }

    /// Whether the driver wants a used-buffer notification for what was added since the last
    /// one: with EVENT_IDX, when used.idx passed `used_event`; otherwise unless the driver
    /// set VIRTQ_AVAIL_F_NO_INTERRUPT. False when nothing was added.
    pub fn needs_notification(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        if !self.ready || !self.added {
            return Ok(false);
        }
        self.added = false;
        let new = self.next_used;
        let old = self.signalled_used;
        // The used index must be visible before the driver's suppression fields are read.
        fence(Ordering::SeqCst);
        let size = u64::from(self.size);
        if self.event_idx {
            self.signalled_used = Some(new);
            let used_event = read_u16(mem, self.avail_ring + 4 + 2 * size)?;
            Ok(match old {
                // vring_need_event(used_event, new, old)
                Some(old) => new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old),
                None => true,
            })
        } else {
            self.signalled_used = Some(new);
            let flags = read_u16(mem, self.avail_ring)?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

fn set_word(reg: &mut u64, high: bool, v: u32) {
    if high {
        *reg = (*reg & 0xffff_ffff) | (u64::from(v) << 32);
    } else {
        *reg = (*reg & !0xffff_ffff) | u64::from(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmk_memory::RamRange;

    fn mem() -> std::sync::Arc<GuestMemory> {
        GuestMemory::new(
            &[RamRange {
                base: 0x8000_0000,
                size: 0x10000,
            }],
            &[],
        )
        .unwrap()
    }

    #[test]
    fn max_size_rounds_to_power_of_two() {
        assert_eq!(Queue::new(256).max_size(), 256);
        assert_eq!(Queue::new(300).max_size(), 256);
        assert_eq!(Queue::new(0).max_size(), 1);
        assert_eq!(Queue::new(u16::MAX).max_size(), 32768);
        assert_eq!(Queue::new(3).max_size(), 2);
    }

    #[test]
    fn buffers_slice_and_copy() {
        let m = mem();
        let mut b = GuestBuffers::new();
        b.push(0x8000_0000, 3);
        b.push(0x8000_0100, 0);
        b.push(0x8000_0200, 5);
        assert_eq!(b.len(), 8);
        assert_eq!(b.segments().len(), 2);
        let s = b.slice(2, 3).unwrap();
        assert_eq!(s.segments(), &[(0x8000_0002, 1), (0x8000_0200, 2)]);
        assert!(b.slice(7, 2).is_none());
        assert!(b.slice(u64::MAX, 2).is_none());
        b.write(&m, 1, &[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 8];
        b.read(&m, 0, &mut out).unwrap();
        assert_eq!(out, [0, 1, 2, 3, 4, 0, 0, 0]);
        assert!(b.write(&m, 6, &[0; 3]).is_err());
        let mut bad = GuestBuffers::new();
        bad.push(u64::MAX - 1, 4);
        assert!(!bad.in_ram(&m));
        assert!(bad.read(&m, 0, &mut [0; 4]).is_err());
    }

    #[test]
    fn stopped_queue_is_inert() {
        let m = mem();
        let mut q = Queue::new(8);
        q.set_size(0);
        assert_eq!(q.pop(&m), Ok(None));
        assert!(q.add_used(&m, 0, 0).is_err());
        assert_eq!(q.needs_notification(&m), Ok(false));
        assert!(q.enable(&m, 0).is_err(), "size 0");
        assert!(!q.ready());
    }

    #[test]
    fn vring_need_event_wraps() {
        let m = mem();
        let mut q = Queue::new(4);
        q.set_desc_table_word(false, 0x8000_0000);
        q.set_avail_ring_word(false, 0x8000_1000);
        q.set_used_ring_word(false, 0x8000_2000);
        q.enable(&m, super::super::features::VIRTIO_F_RING_EVENT_IDX)
            .unwrap();
        // Pretend the indices are near the wrap.
        q.next_used = 0xfffe;
        q.signalled_used = Some(0xfffe);
        write_u16(&m, 0x8000_1000 + 4 + 8, 0xffff).unwrap(); // used_event
        assert!(!q.needs_notification(&m).unwrap(), "nothing added");
        q.next_used = 0xffff;
        q.added = true;
        assert!(
            !q.needs_notification(&m).unwrap(),
            "idx 0xffff not past 0xffff"
        );
        q.next_used = 0x0000;
        q.added = true;
        assert!(
            q.needs_notification(&m).unwrap(),
            "idx 0 passed used_event 0xffff"
        );
        q.next_used = 0x0001;
        q.added = true;
        assert!(!q.needs_notification(&m).unwrap());
    }
}
