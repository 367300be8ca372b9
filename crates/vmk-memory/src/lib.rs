//! Guest physical memory of one VM.
//!
//! Guest RAM is described page by page: every 4 KiB guest physical frame has an entry in a
//! *page map* that names the host frame backing it (or none) and whether the guest may write it
//! directly. Nothing above this crate assumes that guest RAM is one contiguous host buffer, so
//! later memory management (page sharing, ballooning, hypervisor swap) can move a single guest
//! page to another host frame by changing its entry. Today the one such change is
//! [`GuestMemory::protect_page`] (write protection, for copy-on-write sharing).
//!
//! vCPUs cache translations to host pointers in their own software TLBs. Whoever changes a page
//! map entry must call [`GuestMemory::shootdown`], which returns only once every vCPU of the VM
//! has dropped its cached translations (see [`VcpuSignal`] for the protocol).
//!
//! Address ranges that are neither RAM nor MMIO are unmapped: accesses there are guest-visible
//! access faults, never host errors.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// Page map entry bits (the rest of the word is the host address of the 4 KiB frame).
const ENTRY_PRESENT: usize = 1;
const ENTRY_WRITABLE: usize = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemError {
    #[error("guest physical address {addr:#x} (+{len} bytes) is not RAM")]
    NotRam { addr: u64, len: u64 },
    #[error("guest memory layout: {0}")]
    Layout(String),
    #[error("cannot reserve {bytes} bytes of host memory for guest RAM: {reason}")]
    HostAlloc { bytes: u64, reason: String },
}

/// What a guest physical address is backed by, as seen at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhysLookup {
    /// RAM backed by a host frame. `host` points at the byte for the looked-up address.
    Ram { host: NonNull<u8>, writable: bool },
    /// RAM page with no host frame right now (ballooned or swapped out) or one that is
    /// write-protected for this access (shared copy-on-write).
    NeedsFault,
    /// A device register range: the access must leave the vCPU as an MMIO exit.
    Mmio,
    /// Nothing is there: a guest-visible access fault.
    Unmapped,
}

/// A range of guest physical RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    pub base: u64,
    pub size: u64,
}

/// A range of guest physical addresses that belongs to devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioRange {
    pub base: u64,
    pub size: u64,
}

/// Anonymous host memory reserved for guest frames. Pages are only committed by the host
/// kernel when first touched, so a VM's resident size grows with what the guest uses.
struct HostRegion {
    addr: usize,
    len: usize,
}

impl HostRegion {
    fn new(len: u64) -> Result<Self, MemError> {
        let len_usize = usize::try_from(len).map_err(|_| MemError::HostAlloc {
            bytes: len,
            reason: "larger than the host address space".into(),
        })?;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemError::HostAlloc {
                bytes: len,
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(HostRegion {
            addr: p as usize,
            len: len_usize,
        })
    }
}

impl Drop for HostRegion {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; all users hold an Arc<GuestMemory> that keeps us alive.
        unsafe {
            libc::munmap(self.addr as *mut libc::c_void, self.len);
        }
    }
}

struct RamRegion {
    base: u64,
    size: u64,
    /// One entry per guest page: host frame address | ENTRY_* bits, 0 when not present.
    pages: Box<[AtomicUsize]>,
    _backing: HostRegion,
}

/// Per-vCPU signalling word shared between the vCPU thread and the rest of the hypervisor.
///
/// The vCPU polls `attention` at every block boundary (one relaxed load). Other threads set
/// bits in it to make the vCPU kick out of `run`, flush its TLB or re-evaluate interrupts.
///
/// Shoot-down protocol: [`GuestMemory::shootdown`] bumps the VM's TLB generation, sets
/// [`VcpuSignal::FLUSH_TLB`] in every vCPU's word, then waits for each vCPU that is inside
/// `run` to acknowledge the new generation. A vCPU acknowledges after it has emptied its TLB,
/// either at the next block boundary or when it next enters `run`. vCPUs outside `run` hold no
/// host pointers, so they need not be waited for.
#[derive(Debug, Default)]
pub struct VcpuSignal {
    pub attention: AtomicU32,
    in_run: AtomicBool,
    acked_generation: AtomicU64,
}

impl VcpuSignal {
    /// Leave `run` as soon as possible.
    pub const KICK: u32 = 1;
    /// Page map entries changed: drop cached translations and acknowledge.
    pub const FLUSH_TLB: u32 = 2;
    /// Interrupt lines changed: re-evaluate pending interrupts.
    pub const IRQ: u32 = 4;

    pub fn new() -> Self {
        Self::default()
    }

    pub fn request(&self, bits: u32) {
        self.attention.fetch_or(bits, Ordering::SeqCst);
    }

    /// Take the pending attention bits (the vCPU does this at a block boundary).
    pub fn take(&self) -> u32 {
        self.attention.swap(0, Ordering::SeqCst)
    }

    /// Called by the vCPU when it starts executing guest code. After this it must compare its
    /// TLB generation with [`GuestMemory::tlb_generation`] before using any cached pointer.
    pub fn enter_run(&self) {
        self.in_run.store(true, Ordering::SeqCst);
    }

    /// Called by the vCPU when it stops executing guest code.
    pub fn exit_run(&self) {
        self.in_run.store(false, Ordering::SeqCst);
    }

    /// Called by the vCPU once its TLB no longer holds translations older than `generation`.
    pub fn ack_generation(&self, generation: u64) {
        self.acked_generation.store(generation, Ordering::SeqCst);
    }
}

/// The unit of volatile guest-memory copies: 16 bytes (an SSE2 register) on x86-64, which
/// copies as fast as `copy_nonoverlapping` (13 GiB/s here; 8-byte units managed 5-7).
#[cfg(target_arch = "x86_64")]
type CopyUnit = std::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type CopyUnit = u64;
const COPY_UNIT: usize = std::mem::size_of::<CopyUnit>();

/// Copies `dst.len()` bytes of guest RAM at `src` into `dst`.
///
/// Why volatile, not `copy_nonoverlapping`: guest RAM is memory shared with code the
/// compiler cannot see — other vCPU threads and compiled guest code store to it at any
/// time, and the guest may change a buffer while a device copies it. A plain copy lets the
/// compiler assume nobody else writes the source during the copy (it may read a byte
/// twice, or split and merge reads), and a racing plain access is undefined behaviour in
/// Rust's model. Volatile accesses are each performed exactly once, as in rust-vmm's
/// vm-memory (`VolatileSlice`); aligned [`CopyUnit`]s keep it fast. A racing guest store
/// may be seen or not, per unit: what DMA on real hardware gives, and what virtio drivers
/// allow for (they publish buffers with barriers before notifying).
///
/// # Safety
/// `src..src + dst.len()` must be readable guest RAM that stays mapped during the call.
unsafe fn copy_from_guest(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let mut i = 0;
    // Byte by byte up to the first aligned guest address, then whole units.
    while i < len && !(src as usize + i).is_multiple_of(COPY_UNIT) {
        // SAFETY: i < len: in the guest range the caller vouches for.
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    while len - i >= COPY_UNIT {
        // SAFETY: the read is in range (a unit is left) and aligned (the loop above); the
        // write goes to `dst`, which has a unit left at `i` (unaligned write of a Copy type).
        unsafe {
            let w = std::ptr::read_volatile(src.add(i) as *const CopyUnit);
            std::ptr::write_unaligned(dst.as_mut_ptr().add(i) as *mut CopyUnit, w);
        }
        i += COPY_UNIT;
    }
    while i < len {
        // SAFETY: i < len.
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

/// Copies `src` into guest RAM at `dst`, with volatile stores (see [`copy_from_guest`]).
///
/// # Safety
/// `dst..dst + src.len()` must be writable guest RAM that stays mapped during the call.
unsafe fn copy_to_guest(src: &[u8], dst: *mut u8) {
    let len = src.len();
    let mut i = 0;
    while i < len && !(dst as usize + i).is_multiple_of(COPY_UNIT) {
        // SAFETY: i < len: in the guest range the caller vouches for.
        unsafe { std::ptr::write_volatile(dst.add(i), src[i]) };
        i += 1;
    }
    while len - i >= COPY_UNIT {
        // SAFETY: `src` has a unit left at `i` (unaligned read of a Copy type); the guest
        // write is in range and aligned (the loop above).
        unsafe {
            let w = std::ptr::read_unaligned(src.as_ptr().add(i) as *const CopyUnit);
            std::ptr::write_volatile(dst.add(i) as *mut CopyUnit, w);
        }
        i += COPY_UNIT;
    }
    while i < len {
        // SAFETY: i < len.
        unsafe { std::ptr::write_volatile(dst.add(i), src[i]) };
        i += 1;
    }
}

/// Guest physical memory of one VM: RAM ranges, MMIO ranges and the page map.
pub struct GuestMemory {
    ram: Vec<RamRegion>,
    mmio: Vec<MmioRange>,
    tlb_generation: AtomicU64,
    vcpus: Mutex<Vec<Weak<VcpuSignal>>>,
}

// SAFETY: host frame addresses are plain integers in atomics; the backing mappings live as long
// as the GuestMemory.
unsafe impl Send for GuestMemory {}
// SAFETY: as for Send: what threads share is atomics, a Mutex, and mappings that outlive them.
unsafe impl Sync for GuestMemory {}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ram: Vec<_> = self
            .ram
            .iter()
            .map(|r| RamRange {
                base: r.base,
                size: r.size,
            })
            .collect();
        f.debug_struct("GuestMemory")
            .field("ram", &ram)
            .field("mmio", &self.mmio)
            .finish()
    }
}

fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

impl GuestMemory {
    /// Builds the guest physical address space: RAM ranges (page aligned, non-empty) and MMIO
    /// ranges, none overlapping another.
    pub fn new(ram: &[RamRange], mmio: &[MmioRange]) -> Result<Arc<Self>, MemError> {
        let mut all: Vec<(u64, u64, &str)> = Vec::new();
        for r in ram {
            if r.size == 0 || r.base & PAGE_MASK != 0 || r.size & PAGE_MASK != 0 {
                return Err(MemError::Layout(format!(
                    "RAM range {:#x}+{:#x} must be non-empty and 4 KiB aligned",
                    r.base, r.size
                )));
            }
            if r.base.checked_add(r.size).is_none() {
                return Err(MemError::Layout(format!(
                    "RAM range {:#x}+{:#x} wraps the address space",
                    r.base, r.size
                )));
            }
            all.push((r.base, r.size, "RAM"));
        }
        for m in mmio {
            if m.size == 0 {
                return Err(MemError::Layout(format!(
                    "MMIO range at {:#x} is empty",
                    m.base
                )));
            }
            all.push((m.base, m.size, "MMIO"));
        }
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if overlaps(a.0, a.1, b.0, b.1) {
                    return Err(MemError::Layout(format!(
                        "{} range {:#x}+{:#x} overlaps {} range {:#x}+{:#x}",
                        a.2, a.0, a.1, b.2, b.0, b.1
                    )));
                }
            }
        }
        let mut regions = Vec::new();
        for r in ram {
            let backing = HostRegion::new(r.size)?;
            let npages = (r.size >> PAGE_SHIFT) as usize;
            let mut pages: Vec<AtomicUsize> = Vec::new();
            pages
                .try_reserve_exact(npages)
                .map_err(|e| MemError::HostAlloc {
                    bytes: (npages * std::mem::size_of::<AtomicUsize>()) as u64,
                    reason: format!("page map for {} MiB of guest RAM: {e}", r.size >> 20),
                })?;
            pages.extend((0..npages).map(|i| {
                AtomicUsize::new(
                    (backing.addr + (i << PAGE_SHIFT)) | ENTRY_PRESENT | ENTRY_WRITABLE,
                )
            }));
            let pages = pages.into_boxed_slice();
            regions.push(RamRegion {
                base: r.base,
                size: r.size,
                pages,
                _backing: backing,
            });
        }
        let mut mmio = mmio.to_vec();
        mmio.sort_by_key(|m| m.base);
        Ok(Arc::new(GuestMemory {
            ram: regions,
            mmio,
            tlb_generation: AtomicU64::new(1),
            vcpus: Mutex::new(Vec::new()),
        }))
    }

    /// Guest RAM backed by host memory now (touched by the guest or by vmk), in bytes: the
    /// host kernel's view (mincore), so pages never touched cost nothing and are not counted.
    pub fn resident_bytes(&self) -> u64 {
        // Chunked so that a 1 TiB guest does not need a 256 MiB vector.
        const CHUNK_PAGES: usize = 1 << 16;
        let page = 1usize << PAGE_SHIFT;
        let mut vec = vec![0u8; CHUNK_PAGES];
        let mut resident = 0u64;
        for r in &self.ram {
            let mut off = 0usize;
            while off < r._backing.len {
                let len = (r._backing.len - off).min(CHUNK_PAGES * page);
                // SAFETY: the range lies inside our own live mapping and `vec` has one byte
                // per page of it.
                let rc = unsafe {
                    libc::mincore(
                        (r._backing.addr + off) as *mut libc::c_void,
                        len,
                        vec.as_mut_ptr(),
                    )
                };
                if rc == 0 {
                    let n = len.div_ceil(page);
                    resident += vec[..n].iter().filter(|&&b| b & 1 != 0).count() as u64;
                }
                off += len;
            }
        }
        resident << PAGE_SHIFT
    }

    pub fn ram_ranges(&self) -> Vec<RamRange> {
        self.ram
            .iter()
            .map(|r| RamRange {
                base: r.base,
                size: r.size,
            })
            .collect()
    }

    pub fn mmio_ranges(&self) -> &[MmioRange] {
        &self.mmio
    }

    fn page_entry(&self, gpa: u64) -> Option<&AtomicUsize> {
        for r in &self.ram {
            if gpa >= r.base && gpa - r.base < r.size {
                return Some(&r.pages[((gpa - r.base) >> PAGE_SHIFT) as usize]);
            }
        }
        None
    }

    /// Looks up what backs `gpa` for a read (`write == false`) or a write.
    #[inline]
    pub fn lookup(&self, gpa: u64, write: bool) -> PhysLookup {
        if let Some(e) = self.page_entry(gpa) {
            let v = e.load(Ordering::Acquire);
            if v & ENTRY_PRESENT == 0 || (write && v & ENTRY_WRITABLE == 0) {
                return PhysLookup::NeedsFault;
            }
            let host = (v & !(PAGE_MASK as usize)) + (gpa & PAGE_MASK) as usize;
            // SAFETY (non-null): present entries always hold a frame address.
            return match NonNull::new(host as *mut u8) {
                Some(host) => PhysLookup::Ram {
                    host,
                    writable: v & ENTRY_WRITABLE != 0,
                },
                None => PhysLookup::Unmapped,
            };
        }
        if self.is_mmio(gpa) {
            PhysLookup::Mmio
        } else {
            PhysLookup::Unmapped
        }
    }

    pub fn is_mmio(&self, gpa: u64) -> bool {
        self.mmio
            .iter()
            .any(|m| gpa >= m.base && gpa - m.base < m.size)
    }

    pub fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.ram
            .iter()
            .any(|r| gpa >= r.base && len <= r.size && gpa - r.base <= r.size - len)
    }

    /// Resolves a page that [`lookup`](Self::lookup) reported as `NeedsFault`. Memory
    /// overcommit (sharing, balloon, swap) hooks in here; with plain RAM every page is present
    /// and writable, so this only reports whether the page now is.
    pub fn resolve_fault(&self, gpa: u64, write: bool) -> PhysLookup {
        self.lookup(gpa, write)
    }

    /// Copies guest memory at `gpa` into `buf` (for loaders and device DMA). Other vCPUs
    /// may write the same bytes meanwhile: each byte read is one of the values it had.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.for_each_chunk(gpa, buf.len() as u64, false, |host, off, len| {
            // SAFETY: `host` points at `len` readable bytes of one guest frame, which stays
            // mapped while `self` lives; `buf[off..off + len]` is ours alone.
            unsafe { copy_from_guest(host, &mut buf[off..off + len]) };
        })
    }

    /// Copies `buf` into guest memory at `gpa` (for loaders and device DMA).
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        self.for_each_chunk(gpa, buf.len() as u64, true, |host, off, len| {
            // SAFETY: `host` points at `len` writable bytes of one guest frame, which stays
            // mapped while `self` lives.
            unsafe { copy_to_guest(&buf[off..off + len], host) };
        })
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }

    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }

    fn for_each_chunk(
        &self,
        gpa: u64,
        len: u64,
        write: bool,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), MemError> {
        if len == 0 {
            return Ok(());
        }
        if gpa.checked_add(len).is_none() || !self.is_ram(gpa, len) {
            return Err(MemError::NotRam { addr: gpa, len });
        }
        let mut done = 0u64;
        while done < len {
            let a = gpa + done;
            let chunk = (PAGE_SIZE - (a & PAGE_MASK)).min(len - done);
            let host = match self.lookup(a, write) {
                PhysLookup::Ram { host, .. } => host,
                _ => match self.resolve_fault(a, write) {
                    PhysLookup::Ram { host, .. } => host,
                    _ => {
                        return Err(MemError::NotRam {
                            addr: a,
                            len: chunk,
                        })
                    }
                },
            };
            f(host.as_ptr(), done as usize, chunk as usize);
            done += chunk;
        }
        Ok(())
    }

    /// Makes guest page `gpa` write-protected (or writable again) and shoots down every vCPU's
    /// cached translation of it. Used by copy-on-write page sharing.
    pub fn protect_page(&self, gpa: u64, writable: bool) -> Result<(), MemError> {
        let e = self.page_entry(gpa).ok_or(MemError::NotRam {
            addr: gpa,
            len: PAGE_SIZE,
        })?;
        if writable {
            e.fetch_or(ENTRY_WRITABLE, Ordering::AcqRel);
        } else {
            e.fetch_and(!ENTRY_WRITABLE, Ordering::AcqRel);
        }
        self.shootdown();
        Ok(())
    }

    /// Number of guest RAM pages.
    pub fn ram_pages(&self) -> u64 {
        self.ram.iter().map(|r| r.size >> PAGE_SHIFT).sum()
    }

    /// The VM's current TLB generation (see [`VcpuSignal`]).
    #[inline]
    pub fn tlb_generation(&self) -> u64 {
        self.tlb_generation.load(Ordering::SeqCst)
    }

    /// Registers a vCPU for shoot-downs. The returned signal is the vCPU's attention word.
    pub fn register_vcpu(&self) -> Arc<VcpuSignal> {
        let s = Arc::new(VcpuSignal::new());
        s.acked_generation
            .store(self.tlb_generation(), Ordering::SeqCst);
        let mut v = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(&s));
        s
    }

    /// Makes every vCPU of the VM drop its cached guest-physical-to-host translations. When this
    /// returns, no vCPU accesses memory through a page map entry that was changed before the
    /// call.
    pub fn shootdown(&self) {
        let gen = self.tlb_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let vcpus: Vec<Arc<VcpuSignal>> = {
            let v = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
            v.iter().filter_map(|w| w.upgrade()).collect()
        };
        for v in &vcpus {
            v.request(VcpuSignal::FLUSH_TLB);
        }
        for v in &vcpus {
            let mut spins = 0u32;
            while v.in_run.load(Ordering::SeqCst) && v.acked_generation.load(Ordering::SeqCst) < gen
            {
                spins += 1;
                if spins < 100 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> Arc<GuestMemory> {
        GuestMemory::new(
            &[RamRange {
                base: 0x8000_0000,
                size: 1 << 20,
            }],
            &[MmioRange {
                base: 0x1000_0000,
                size: 0x1000,
            }],
        )
        .unwrap()
    }

    #[test]
    fn read_write_across_pages() {
        let m = mem();
        let data: Vec<u8> = (0..10000u32).map(|i| (i * 7) as u8).collect();
        m.write(0x8000_0ff0, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read(0x8000_0ff0, &mut back).unwrap();
        assert_eq!(back, data);
    }

    /// Every alignment of start and length on both sides of the word-wise copies, against a
    /// byte model of guest memory (read back through a different alignment than written).
    #[test]
    fn copies_at_every_alignment_match_a_byte_model() {
        let m = mem();
        let base = 0x8000_0000u64;
        let span = 3 * 4096 + 64;
        let mut model: Vec<u8> = (0..span).map(|i| (i * 31 + 7) as u8).collect();
        m.write(base, &model).unwrap();
        let mut seed = 0x9E37_79B9u32;
        for start in 0..24u64 {
            for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 63, 4095, 4096, 4097, 8200] {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = 4090 - 16 + start;
                let data: Vec<u8> = (0..len).map(|i| (i as u32 ^ seed) as u8).collect();
                m.write(base + at, &data).unwrap();
                model[at as usize..at as usize + len].copy_from_slice(&data);
                let from = at.saturating_sub(start % 5);
                let n = len + (start % 5) as usize + (start % 3) as usize;
                let mut back = vec![0xAAu8; n];
                m.read(base + from, &mut back).unwrap();
                assert_eq!(
                    back,
                    &model[from as usize..from as usize + n],
                    "write at {at:#x} len {len}, read at {from:#x} len {n}"
                );
            }
        }
    }

    #[test]
    fn resident_bytes_counts_touched_pages_only() {
        let m = GuestMemory::new(
            &[RamRange {
                base: 0x8000_0000,
                size: 64 << 20,
            }],
            &[],
        )
        .unwrap();
        assert_eq!(m.resident_bytes(), 0, "nothing touched yet");
        m.write(0x8000_0000, &[1]).unwrap();
        m.write(0x8000_0000 + (40 << 20) + 5, &[0u8; 8192]).unwrap();
        // One page, then 8 KiB starting 5 bytes into a page: three pages.
        assert_eq!(m.resident_bytes(), 4 * 4096);
    }

    #[test]
    fn out_of_ram_is_an_error_not_a_panic() {
        let m = mem();
        let mut b = [0u8; 16];
        assert!(matches!(
            m.read(0x8010_0000 - 8, &mut b),
            Err(MemError::NotRam { .. })
        ));
        assert!(m.read(u64::MAX - 4, &mut b).is_err());
        assert!(m.write(0x1000_0000, &b).is_err());
        assert_eq!(m.lookup(0x1000_0008, false), PhysLookup::Mmio);
        assert_eq!(m.lookup(0x2000_0000, false), PhysLookup::Unmapped);
    }

    #[test]
    fn overlapping_layout_rejected() {
        let e = GuestMemory::new(
            &[RamRange {
                base: 0x8000_0000,
                size: 0x10000,
            }],
            &[MmioRange {
                base: 0x8000_8000,
                size: 0x10,
            }],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        assert!(GuestMemory::new(
            &[RamRange {
                base: 0x123,
                size: 0x1000
            }],
            &[]
        )
        .is_err());
    }

    #[test]
    fn protect_page_makes_writes_fault() {
        let m = mem();
        m.protect_page(0x8000_2000, false).unwrap();
        assert_eq!(m.lookup(0x8000_2010, true), PhysLookup::NeedsFault);
        assert!(matches!(
            m.lookup(0x8000_2010, false),
            PhysLookup::Ram {
                writable: false,
                ..
            }
        ));
        m.protect_page(0x8000_2000, true).unwrap();
        assert!(matches!(
            m.lookup(0x8000_2010, true),
            PhysLookup::Ram { writable: true, .. }
        ));
    }

    #[test]
    fn shootdown_waits_for_running_vcpu_ack() {
        let m = mem();
        let sig = m.register_vcpu();
        sig.enter_run();
        let m2 = m.clone();
        let done = Arc::new(AtomicBool::new(false));
        let d2 = done.clone();
        let t = std::thread::spawn(move || {
            m2.shootdown();
            d2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !done.load(Ordering::SeqCst),
            "shootdown returned before the vCPU acked"
        );
        assert_ne!(sig.take() & VcpuSignal::FLUSH_TLB, 0);
        sig.ack_generation(m.tlb_generation());
        t.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        // A vCPU outside run is not waited for.
        sig.exit_run();
        m.shootdown();
    }
}
