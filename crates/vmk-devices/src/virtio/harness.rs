//! The shape every virtio fuzz harness and unit-test driver shares, written once over
//! [`VirtioDevice`]: guest RAM with a device on the virtio-mmio transport
//! ([`Bench`]), the driver's register sequences ([`Regs`]), split-ring layout from the
//! driver's side ([`write_desc`], [`Vq`]), and the fuzz harnesses' transport invariants
//! ([`FuzzBench::checked`]). What a device's requests look like and what is checked about
//! them stay in the device's own harness (`fuzzing`, `net_fuzzing`, `input_fuzzing`) and
//! tests (`tests`, `net_tests`, `input_tests`).

use std::sync::{Arc, Mutex, MutexGuard};

use vmk_base::lock;
use vmk_memory::{GuestMemory, MmioRange, RamRange};

use super::{features, status, VirtioDevice, VirtioMmio};
use crate::{IrqLine, LevelIrq, MmioDevice};

/// Where guest RAM starts (as in a machine).
pub(crate) const RAM_BASE: u64 = 0x8000_0000;
/// An MMIO hole below RAM (unit tests): DMA there must fail.
pub(crate) const HOLE: u64 = 0x1000_0000;

/// `size` bytes of guest RAM at [`RAM_BASE`], with a page of MMIO at [`HOLE`] if `hole`.
pub(crate) fn guest_memory(size: u64, hole: bool) -> Arc<GuestMemory> {
    let ram = [RamRange {
        base: RAM_BASE,
        size,
    }];
    let mmio: &[MmioRange] = if hole {
        &[MmioRange {
            base: HOLE,
            size: 0x1000,
        }]
    } else {
        &[]
    };
    match GuestMemory::new(&ram, mmio) {
        Ok(m) => m,
        Err(e) => panic!("guest memory: {e}"),
    }
}

/// A device on the virtio-mmio transport in guest memory, with its interrupt line.
pub(crate) struct Bench<D: VirtioDevice> {
    pub(crate) mem: Arc<GuestMemory>,
    pub(crate) dev: Arc<Mutex<VirtioMmio<D>>>,
    pub(crate) irq: Arc<LevelIrq>,
}

impl<D: VirtioDevice> Bench<D> {
    pub(crate) fn new(device: D, mem: Arc<GuestMemory>) -> Self {
        let irq = Arc::new(LevelIrq::new());
        let dev = VirtioMmio::new(device, mem.clone(), irq.clone() as Arc<dyn IrqLine>);
        Bench {
            mem,
            dev: Arc::new(Mutex::new(dev)),
            irq,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, VirtioMmio<D>> {
        lock(&self.dev)
    }

    /// A 4-byte register read.
    #[cfg(test)]
    pub(crate) fn rd(&self, off: u64) -> u32 {
        self.lock().read(off, 4) as u32
    }

    /// A 4-byte register write.
    #[cfg(test)]
    pub(crate) fn wr(&self, off: u64, v: u32) {
        self.lock().write(off, 4, u64::from(v));
    }

    #[cfg(test)]
    pub(crate) fn status(&self) -> u32 {
        self.rd(0x70)
    }

    /// Guest RAM from [`RAM_BASE`], `len` bytes.
    pub(crate) fn snapshot(&self, len: u64) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        if self.mem.read(RAM_BASE, &mut v).is_err() {
            panic!("RAM unreadable");
        }
        v
    }

    /// The transport's view of queue `i`.
    pub(crate) fn qstate(&self, i: usize) -> Option<QState> {
        self.lock().queue(i).map(|q| QState {
            ready: q.ready(),
            size: u64::from(q.size()),
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        })
    }
}

/// 4-byte register accesses, and the driver's sequences built on them (virtio 1.2 §4.2.3).
/// The unit tests' drivers access the device directly, the fuzz harnesses through their
/// invariant checks.
pub(crate) trait Regs {
    fn read_reg(&mut self, off: u64) -> u32;
    fn write_reg(&mut self, off: u64, v: u32);

    /// DeviceFeatures, high word first (as Linux's vm_get_features reads them).
    fn offered_features(&mut self) -> u64 {
        self.write_reg(0x14, 1);
        let hi = self.read_reg(0x10);
        self.write_reg(0x14, 0);
        let lo = self.read_reg(0x10);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// DriverFeatures, high word first.
    fn write_driver_features(&mut self, f: u64) {
        self.write_reg(0x24, 1);
        self.write_reg(0x20, (f >> 32) as u32);
        self.write_reg(0x24, 0);
        self.write_reg(0x20, f as u32);
    }

    /// QueueDesc, QueueDriver (available ring), QueueDevice (used ring) of the selected queue.
    fn write_queue_rings(&mut self, desc: u64, avail: u64, used: u64) {
        for (reg, a) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            self.write_reg(reg, a as u32);
            self.write_reg(reg + 4, (a >> 32) as u32);
        }
    }

    /// QueueSel, QueueNum, the rings, QueueReady.
    fn setup_queue(&mut self, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
        self.write_reg(0x30, index);
        self.write_reg(0x38, size);
        self.write_queue_rings(desc, avail, used);
        self.write_reg(0x44, 1);
    }
}

#[cfg(test)]
impl<D: VirtioDevice> Regs for Bench<D> {
    fn read_reg(&mut self, off: u64) -> u32 {
        self.rd(off)
    }
    fn write_reg(&mut self, off: u64, v: u32) {
        self.wr(off, v)
    }
}

/// A fuzz harness: every device access goes through its invariant checks (built on
/// [`FuzzBench::checked`]); register accesses and the driver's sequences follow.
pub(crate) trait Checked {
    type Device: VirtioDevice;

    /// Runs one device operation and checks the invariants around it.
    fn access(&mut self, f: impl FnOnce(&mut VirtioMmio<Self::Device>) -> u64) -> u64;

    fn mmio_read(&mut self, off: u64, size: u8) -> u64 {
        self.access(|d| d.read(off, size))
    }

    fn mmio_write(&mut self, off: u64, size: u8, v: u64) {
        self.access(|d| {
            d.write(off, size, v);
            0
        });
    }
}

impl<T: Checked> Regs for T {
    fn read_reg(&mut self, off: u64) -> u32 {
        self.mmio_read(off, 4) as u32
    }
    fn write_reg(&mut self, off: u64, v: u32) {
        self.mmio_write(off, 4, u64::from(v));
    }
}

/// A split-ring descriptor (virtio 1.2 §2.7.5).
pub(crate) fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..].copy_from_slice(&next.to_le_bytes());
    b
}

/// Writes descriptor `idx` of the table at `table`.
pub(crate) fn write_desc(
    mem: &GuestMemory,
    table: u64,
    idx: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) -> Result<(), vmk_memory::MemError> {
    mem.write(
        table + 16 * u64::from(idx),
        &desc_bytes(addr, len, flags, next),
    )
}

#[cfg(test)]
fn u16_at(mem: &GuestMemory, a: u64) -> u16 {
    let mut b = [0u8; 2];
    mem.read(a, &mut b).unwrap();
    u16::from_le_bytes(b)
}

// The unit tests' side

/// One virtqueue as a well-behaved driver keeps it (Linux's virtio_ring, split layout):
/// free descriptors, chains in flight, the indices it has published and consumed.
#[cfg(test)]
pub(crate) struct Vq {
    pub(crate) index: u32,
    pub(crate) desc: u64,
    pub(crate) avail: u64,
    pub(crate) used: u64,
    pub(crate) size: u16,
    pub(crate) avail_idx: u16,
    pub(crate) last_used: u16,
    /// The next descriptor of [`Vq::post_one`], which recycles descriptors in order.
    pub(crate) next_desc: u16,
    /// Buffers go in with [`Vq::post_one`], not from the free list.
    in_order: bool,
    pub(crate) free: Vec<u16>,
    pub(crate) chains: std::collections::HashMap<u16, Vec<u16>>,
}

#[cfg(test)]
impl Vq {
    pub(crate) fn new(index: u32, desc: u64, avail: u64, used: u64, size: u16) -> Vq {
        Vq {
            index,
            desc,
            avail,
            used,
            size,
            avail_idx: 0,
            last_used: 0,
            next_desc: 0,
            in_order: false,
            free: (0..size).rev().collect(),
            chains: Default::default(),
        }
    }

    /// Makes `head` available (virtqueue_add's last step: ring slot, then index).
    pub(crate) fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write(self.avail + 4 + 2 * slot, &head.to_le_bytes())
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write(self.avail + 2, &self.avail_idx.to_le_bytes())
            .unwrap();
    }

    fn flags(i: usize, n: usize, writable: bool) -> u16 {
        let mut f = if writable { 2 } else { 0 };
        if i + 1 < n {
            f |= 1;
        }
        f
    }

    /// virtqueue_add_split with direct descriptors from the free list: a chain of (addr,
    /// len, device-writable) buffers, published (no kick). Returns the head.
    pub(crate) fn add(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        let idx: Vec<u16> = (0..bufs.len())
            .map(|_| self.free.pop().expect("no free descriptor"))
            .collect();
        for (i, &(a, l, w)) in bufs.iter().enumerate() {
            let next = idx.get(i + 1).copied().unwrap_or(0);
            let flags = Self::flags(i, bufs.len(), w);
            write_desc(mem, self.desc, idx[i], a, l, flags, next).unwrap();
        }
        let head = idx[0];
        self.chains.insert(head, idx);
        self.publish(mem, head);
        head
    }

    /// virtqueue_add_split through an indirect table at `table`: one descriptor from the
    /// free list points at it. Returns the head.
    pub(crate) fn add_indirect(
        &mut self,
        mem: &GuestMemory,
        table: u64,
        bufs: &[(u64, u32, bool)],
    ) -> u16 {
        for (i, &(a, l, w)) in bufs.iter().enumerate() {
            let flags = Self::flags(i, bufs.len(), w);
            write_desc(mem, table, i as u16, a, l, flags, i as u16 + 1).unwrap();
        }
        let head = self.free.pop().expect("no free descriptor");
        write_desc(mem, self.desc, head, table, 16 * bufs.len() as u32, 4, 0).unwrap();
        self.chains.insert(head, vec![head]);
        self.publish(mem, head);
        head
    }

    /// One buffer in the next descriptor in order, with raw `flags` (drivers whose buffers
    /// are all one descriptor, such as virtio_input's). Returns its descriptor.
    pub(crate) fn post_one(&mut self, mem: &GuestMemory, addr: u64, len: u32, flags: u16) -> u16 {
        self.in_order = true;
        let i = self.next_desc % self.size;
        self.next_desc = self.next_desc.wrapping_add(1);
        write_desc(mem, self.desc, i, addr, len, flags, 0).unwrap();
        self.publish(mem, i);
        i
    }

    /// virtqueue_get_buf until the used ring is drained: (id, len) in used order. Chains
    /// from [`Vq::add`] go back to the free list, and must have been in flight.
    pub(crate) fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u32, u32)> {
        let idx = u16_at(mem, self.used + 2);
        let mut out = Vec::new();
        while self.last_used != idx {
            let slot = u64::from(self.last_used % self.size);
            let mut e = [0u8; 8];
            mem.read(self.used + 4 + 8 * slot, &mut e).unwrap();
            let id = u32::from_le_bytes(e[..4].try_into().unwrap());
            let len = u32::from_le_bytes(e[4..].try_into().unwrap());
            if !self.in_order {
                let chain = self
                    .chains
                    .remove(&(id as u16))
                    .expect("used id not in flight");
                self.free.extend(chain);
            }
            out.push((id, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The fuzz harnesses' side

/// The queue state the checks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QState {
    pub(crate) ready: bool,
    pub(crate) size: u64,
    pub(crate) desc: u64,
    pub(crate) avail: u64,
    pub(crate) used: u64,
    pub(crate) next_avail: u16,
    pub(crate) next_used: u16,
}

/// What the transport checks reached, so a unit test can tell that pseudo-random input got
/// the device into interesting states.
#[derive(Debug, Default, Clone)]
pub(crate) struct Coverage {
    /// Operations that left the device live (DRIVER_OK).
    pub(crate) live: usize,
    /// Operations that put the device in DEVICE_NEEDS_RESET.
    pub(crate) needs_reset: usize,
    /// Operations that raised the interrupt line.
    pub(crate) interrupts: usize,
    /// Operations whose guest memory writes were checked.
    pub(crate) memory_checks: usize,
}

impl Coverage {
    #[cfg(test)]
    pub(crate) fn add(&mut self, o: &Coverage) {
        self.live += o.live;
        self.needs_reset += o.needs_reset;
        self.interrupts += o.interrupts;
        self.memory_checks += o.memory_checks;
    }
}

/// What one checked operation saw, for the device's own checks.
pub(crate) struct Step {
    pub(crate) value: u64,
    pub(crate) after: Vec<u8>,
    pub(crate) q0: Vec<Option<QState>>,
    pub(crate) q1: Vec<Option<QState>>,
    pub(crate) status0: u32,
    pub(crate) status1: u32,
}

/// Queue `i`'s descriptor table, available and used rings, 4 KiB each from RAM's start.
pub(crate) fn queue_base(i: usize) -> (u64, u64, u64) {
    let b = RAM_BASE + 0x3000 * i as u64;
    (b, b + 0x1000, b + 0x2000)
}

/// A [`Bench`] for a fuzz harness: `ram` bytes of RAM, `queues` queues to watch.
pub(crate) struct FuzzBench<D: VirtioDevice> {
    pub(crate) b: Bench<D>,
    pub(crate) ram: u64,
    pub(crate) queues: usize,
    pub(crate) cov: Coverage,
}

impl<D: VirtioDevice> FuzzBench<D> {
    pub(crate) fn new(device: D, ram: u64, queues: usize) -> Self {
        FuzzBench {
            b: Bench::new(device, guest_memory(ram, false)),
            ram,
            queues,
            cov: Coverage::default(),
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<u8> {
        self.b.snapshot(self.ram)
    }

    pub(crate) fn qstate(&self, i: usize) -> Option<QState> {
        self.b.qstate(i)
    }

    fn qstates(&self) -> Vec<Option<QState>> {
        (0..self.queues).map(|i| self.b.qstate(i)).collect()
    }

    /// The driver's own writes may be anywhere, even outside RAM (then they do nothing).
    pub(crate) fn write_mem(&self, addr: u64, data: &[u8]) {
        let _ = self.b.mem.write(addr, data);
    }

    pub(crate) fn write_desc(&self, table: u64, idx: u16, a: u64, len: u32, flags: u16, next: u16) {
        let _ = write_desc(&self.b.mem, table, idx, a, len, flags, next);
    }

    /// Writes `chain` of (addr, len, flags) as one direct chain from descriptor `first` on
    /// (mod `size`), NEXT set on all but the last.
    pub(crate) fn write_chain(&self, table: u64, first: u16, size: u16, chain: &[(u64, u32, u16)]) {
        let n = chain.len();
        for (i, &(a, l, f)) in chain.iter().enumerate() {
            let idx = first.wrapping_add(i as u16) % size;
            let next = first.wrapping_add(i as u16 + 1) % size;
            let flags = if i + 1 < n { f | 1 } else { f };
            self.write_desc(table, idx, a, l, flags, next);
        }
    }

    /// Writes `chain` as an indirect table at `table`.
    pub(crate) fn write_indirect(&self, table: u64, chain: &[(u64, u32, u16)]) {
        let n = chain.len();
        for (i, &(a, l, f)) in chain.iter().enumerate() {
            let flags = if i + 1 < n { f | 1 } else { f };
            self.write_desc(table, i as u16, a, l, flags, i as u16 + 1);
        }
    }

    /// Makes `head` available in the ring at `avail`, after whatever index guest memory
    /// holds now (the harness may have scribbled over it).
    pub(crate) fn publish(&self, avail: u64, size: u16, head: u16) {
        let mut idx = [0u8; 2];
        let _ = self.b.mem.read(avail + 2, &mut idx);
        let idx = u16::from_le_bytes(idx);
        self.write_mem(
            avail + 4 + 2 * (u64::from(idx) % u64::from(size)),
            &head.to_le_bytes(),
        );
        self.write_mem(avail + 2, &idx.wrapping_add(1).to_le_bytes());
    }

    /// Runs one device operation and checks the transport's invariants around it:
    /// - the interrupt line is high exactly when InterruptStatus is non-zero;
    /// - FEATURES_OK only with VERSION_1 and offered features, DRIVER_OK only with
    ///   FEATURES_OK;
    /// - the device wrote guest memory only in `held` (buffers it already had), the used
    ///   rings and the device-writable buffers of its ready queues (checked when those do
    ///   not overlap the rings and tables).
    pub(crate) fn checked(
        &mut self,
        held: Vec<(u64, u64)>,
        f: impl FnOnce(&mut VirtioMmio<D>) -> u64,
    ) -> Step {
        let before = self.snapshot();
        let q0 = self.qstates();
        let status0 = self.b.lock().status();
        let rises0 = self.b.irq.rises();
        let value = f(&mut self.b.lock());
        let after = self.snapshot();
        let q1 = self.qstates();
        let d = self.b.lock();
        let status1 = d.status();
        assert_eq!(
            self.b.irq.level(),
            d.interrupt_status() != 0,
            "line vs InterruptStatus {:#x}",
            d.interrupt_status()
        );
        if self.b.irq.rises() > rises0 {
            self.cov.interrupts += 1;
        }
        if status1 & status::FEATURES_OK != 0 {
            let f = d.driver_features();
            assert_eq!(f & !d.device_features(), 0, "unoffered features accepted");
            assert_ne!(f & features::VIRTIO_F_VERSION_1, 0, "no VERSION_1");
        }
        if status1 & status::DRIVER_OK != 0 {
            assert_ne!(
                status1 & status::FEATURES_OK,
                0,
                "DRIVER_OK without FEATURES_OK"
            );
            self.cov.live += 1;
        }
        if status1 & status::DEVICE_NEEDS_RESET != 0 && status0 & status::DEVICE_NEEDS_RESET == 0 {
            self.cov.needs_reset += 1;
        }
        drop(d);
        if before != after {
            let mut allowed = held;
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
                self.cov.memory_checks += 1;
                for (i, (a, b)) in before.iter().zip(&after).enumerate() {
                    if a != b {
                        let addr = RAM_BASE + i as u64;
                        assert!(
                            in_regions(&allowed, addr),
                            "device wrote {addr:#x} outside its buffers ({a:#x} -> {b:#x})"
                        );
                    }
                }
            }
        }
        Step {
            value,
            after,
            q0,
            q1,
            status0,
            status1,
        }
    }
}

/// A little-endian number of `n` bytes at `at` of a RAM snapshot (0 past its end).
pub(crate) fn read_le(mem: &[u8], at: u64, n: usize) -> u64 {
    let mut v = 0u64;
    for i in (0..n).rev() {
        let b = usize::try_from(at)
            .ok()
            .and_then(|a| a.checked_add(i))
            .and_then(|a| mem.get(a))
            .copied()
            .unwrap_or(0);
        v = v << 8 | u64::from(b);
    }
    v
}

/// Reads a descriptor from the snapshot, None if the table entry is not in RAM.
fn snap_desc(mem: &[u8], table: u64, idx: u64) -> Option<(u64, u64, u16)> {
    let at = table.checked_add(16 * idx)?.checked_sub(RAM_BASE)?;
    if at.checked_add(16)? > mem.len() as u64 {
        return None;
    }
    Some((
        read_le(mem, at, 8),
        read_le(mem, at + 8, 4),
        read_le(mem, at + 12, 2) as u16,
    ))
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Where the device may write: the used ring and every device-writable buffer in the
/// descriptor table and the indirect tables it points at. None if those overlap the
/// structures the device reads (then the device can legitimately rewrite its own
/// instructions and the check would be unsound).
pub(crate) fn allowed_regions(mem: &[u8], q: &QState) -> Option<Vec<(u64, u64)>> {
    let size = q.size.clamp(1, 32768);
    let used = (q.used, 6 + 8 * size);
    let mut read_only = vec![(q.desc, 16 * size), (q.avail, 6 + 2 * size)];
    let mut writable = vec![used];
    for i in 0..size {
        let Some((addr, len, flags)) = snap_desc(mem, q.desc, i) else {
            continue;
        };
        if flags & 4 != 0 {
            read_only.push((addr, len));
            for j in 0..(len / 16).min(32768) {
                match snap_desc(mem, addr, j) {
                    Some((a, l, f)) if f & 2 != 0 => writable.push((a, l)),
                    Some(_) => {}
                    None => break,
                }
            }
        } else if flags & 2 != 0 {
            writable.push((addr, len));
        }
    }
    for w in &writable {
        if read_only.iter().any(|r| overlaps(*w, *r)) {
            return None;
        }
    }
    writable.sort_unstable();
    Some(writable)
}

pub(crate) fn in_regions(regions: &[(u64, u64)], addr: u64) -> bool {
    regions.iter().any(|&(a, l)| addr >= a && addr - a < l)
}
