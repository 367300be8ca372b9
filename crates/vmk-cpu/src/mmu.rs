//! Address translation: Sv39/Sv48 page-table walks, the software TLB (shadow page table) and
//! the slow paths of loads, stores and instruction fetch.

use crate::csr::{cause, MS_MXR, MS_SUM};
use crate::{Hart, PrivMode, TlbEntry, TLB_SIZE};
use std::sync::atomic::{AtomicU64, Ordering};
use vmk_memory::PhysLookup;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Load,
    Store,
    Fetch,
}

impl Access {
    fn page_fault(self) -> u64 {
        match self {
            Access::Load => cause::LOAD_PAGE,
            Access::Store => cause::STORE_PAGE,
            Access::Fetch => cause::FETCH_PAGE,
        }
    }

    pub(crate) fn access_fault(self) -> u64 {
        match self {
            Access::Load => cause::LOAD_ACCESS,
            Access::Store => cause::STORE_ACCESS,
            Access::Fetch => cause::FETCH_ACCESS,
        }
    }
}

/// Why a memory access did not complete on the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Architectural exception (cause, tval).
    Trap(u64, u64),
    /// The guest physical address is a device register.
    Mmio(u64),
}

const PTE_V: u64 = 1 << 0;
const PTE_R: u64 = 1 << 1;
const PTE_W: u64 = 1 << 2;
const PTE_X: u64 = 1 << 3;
const PTE_U: u64 = 1 << 4;
const PTE_A: u64 = 1 << 6;
const PTE_D: u64 = 1 << 7;
/// Bits 63:54 (PBMT, N and reserved) must be zero: those extensions are not implemented.
const PTE_RESERVED: u64 = 0x3ff << 54;

#[inline(always)]
pub(crate) fn tlb_index(va: u64) -> usize {
    ((va >> 12) as usize) & (TLB_SIZE - 1)
}

impl Hart {
    /// Translates a guest virtual address to a guest physical address for `access` at
    /// privilege `prv` (already adjusted for MPRV), walking the guest page table.
    pub(crate) fn translate(&mut self, va: u64, access: Access, prv: u64) -> Result<u64, Fault> {
        let mode = self.satp >> 60;
        if prv == PrivMode::Machine as u64 || mode == 0 {
            return Ok(va);
        }
        let levels: u32 = if mode == 9 { 4 } else { 3 };
        let va_bits = 12 + 9 * levels;
        // The address must be sign-extended from its top implemented bit.
        let top = (va as i64) >> (va_bits - 1);
        if top != 0 && top != -1 {
            return Err(Fault::Trap(access.page_fault(), va));
        }
        let pf = Fault::Trap(access.page_fault(), va);
        'walk: for _attempt in 0..8 {
            let mut table = (self.satp & ((1 << 44) - 1)) << 12;
            for level in (0..levels).rev() {
                let vpn = (va >> (12 + 9 * level)) & 0x1ff;
                let pte_addr = table + vpn * 8;
                let pte_ptr = match self.mem.lookup(pte_addr, false) {
                    PhysLookup::Ram { host, .. } => host.as_ptr(),
                    PhysLookup::NeedsFault => match self.mem.resolve_fault(pte_addr, false) {
                        PhysLookup::Ram { host, .. } => host.as_ptr(),
                        _ => return Err(Fault::Trap(access.access_fault(), va)),
                    },
                    _ => return Err(Fault::Trap(access.access_fault(), va)),
                };
                // SAFETY: pte_addr is 8-byte aligned (table is page aligned) and lies in a
                // guest RAM frame; other vCPUs update PTEs atomically as well.
                let pte_atomic = unsafe { AtomicU64::from_ptr(pte_ptr as *mut u64) };
                let pte = pte_atomic.load(Ordering::Acquire);
                if pte & PTE_V == 0 || (pte & PTE_R == 0 && pte & PTE_W != 0) {
                    return Err(pf);
                }
                if pte & PTE_RESERVED != 0 {
                    return Err(pf);
                }
                if pte & (PTE_R | PTE_X) == 0 {
                    // Pointer to the next level. A, D and U must be zero here.
                    if pte & (PTE_A | PTE_D | PTE_U) != 0 || level == 0 {
                        return Err(pf);
                    }
                    table = ((pte >> 10) & ((1 << 44) - 1)) << 12;
                    continue;
                }
                // Leaf: permissions.
                let user_page = pte & PTE_U != 0;
                match prv {
                    0 if !user_page => return Err(pf),
                    1 if user_page && (access == Access::Fetch || self.mstatus & MS_SUM == 0) => {
                        return Err(pf)
                    }
                    _ => {}
                }
                let ok = match access {
                    Access::Load => {
                        pte & PTE_R != 0 || (self.mstatus & MS_MXR != 0 && pte & PTE_X != 0)
                    }
                    Access::Store => pte & PTE_W != 0,
                    Access::Fetch => pte & PTE_X != 0,
                };
                if !ok {
                    return Err(pf);
                }
                let ppn = (pte >> 10) & ((1 << 44) - 1);
                let span_mask = (1u64 << (12 + 9 * level)) - 1;
                if (ppn << 12) & span_mask != 0 {
                    return Err(pf); // misaligned superpage
                }
                let want = PTE_A | if access == Access::Store { PTE_D } else { 0 };
                if pte & want != want {
                    // Setting A/D is a store to the page table: take the write path, so that a
                    // write-protected (shared) page-table page is never modified in place.
                    let wptr = match self.mem.lookup(pte_addr, true) {
                        PhysLookup::Ram { host, .. } => host.as_ptr(),
                        _ => match self.mem.resolve_fault(pte_addr, true) {
                            PhysLookup::Ram { host, .. } => host.as_ptr(),
                            _ => return Err(Fault::Trap(access.access_fault(), va)),
                        },
                    };
                    // SAFETY: as for `pte_atomic`; the same guest PTE, now writable.
                    let w = unsafe { AtomicU64::from_ptr(wptr as *mut u64) };
                    if w.compare_exchange(pte, pte | want, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        continue 'walk; // another hart changed the PTE: walk again
                    }
                }
                return Ok(((ppn << 12) & !span_mask) | (va & span_mask));
            }
            return Err(pf);
        }
        Err(pf)
    }

    /// Resolves a data access on a TLB miss: page walk, page map lookup, TLB fill. Returns the
    /// host address of `va`.
    pub(crate) fn data_host_addr(&mut self, va: u64, access: Access) -> Result<*mut u8, Fault> {
        let prv = self.dtag & 3;
        let gpa = self.translate(va, access, prv)?;
        let write = access == Access::Store;
        let host = match self.mem.lookup(gpa, write) {
            PhysLookup::Ram { host, .. } => host.as_ptr(),
            PhysLookup::NeedsFault => match self.mem.resolve_fault(gpa, write) {
                PhysLookup::Ram { host, .. } => host.as_ptr(),
                _ => return Err(Fault::Trap(access.access_fault(), va)),
            },
            PhysLookup::Mmio => return Err(Fault::Mmio(gpa)),
            PhysLookup::Unmapped => return Err(Fault::Trap(access.access_fault(), va)),
        };
        let gpa_page = gpa & !0xfff;
        if write && self.cache.code_pages.contains_key(&gpa_page) {
            // The guest writes to a page we decoded code from: forget those blocks.
            self.cache.invalidate_page(gpa_page);
        }
        let entry = TlbEntry {
            tag: (va & !0xfff) | self.dtag,
            addend: (host as usize).wrapping_sub(va as usize),
            gpa_page,
        };
        let idx = tlb_index(va);
        if write {
            self.tlb.write[idx] = entry;
        } else {
            self.tlb.read[idx] = entry;
        }
        Ok(host)
    }

    /// Translates the pc for instruction fetch. Returns (guest physical address, host address).
    pub(crate) fn fetch_addr(&mut self, pc: u64) -> Result<(u64, *const u8), Fault> {
        let idx = tlb_index(pc);
        let e = self.tlb.fetch[idx];
        if e.tag == (pc & !0xfff) | self.ftag {
            return Ok((
                e.gpa_page | (pc & 0xfff),
                (pc as usize).wrapping_add(e.addend) as *const u8,
            ));
        }
        let gpa = self.translate(pc, Access::Fetch, self.prv as u64)?;
        let host = match self.mem.lookup(gpa, false) {
            PhysLookup::Ram { host, .. } => host.as_ptr(),
            PhysLookup::NeedsFault => match self.mem.resolve_fault(gpa, false) {
                PhysLookup::Ram { host, .. } => host.as_ptr(),
                _ => return Err(Fault::Trap(cause::FETCH_ACCESS, pc)),
            },
            _ => return Err(Fault::Trap(cause::FETCH_ACCESS, pc)),
        };
        self.tlb.fetch[idx] = TlbEntry {
            tag: (pc & !0xfff) | self.ftag,
            addend: (host as usize).wrapping_sub(pc as usize),
            gpa_page: gpa & !0xfff,
        };
        Ok((gpa, host))
    }

    /// Marks guest physical page `page` as holding decoded code: stores to it must take the
    /// slow path so they invalidate the blocks.
    pub(crate) fn protect_code_page(&mut self, page: u64) {
        for e in self.tlb.write.iter_mut() {
            if e.gpa_page == page {
                e.tag = 0;
            }
        }
    }

    /// Slow-path load of `size` bytes (1, 2, 4 or 8), any alignment.
    pub(crate) fn load_slow(&mut self, va: u64, size: u64) -> Result<u64, Fault> {
        if (va & 0xfff) + size > 0x1000 {
            // Crosses a page: byte by byte, each byte translated on its own.
            let mut v = 0u64;
            for k in 0..size {
                let b = match self.load_slow(va.wrapping_add(k), 1) {
                    Ok(b) => b,
                    Err(Fault::Mmio(_)) => return Err(Fault::Trap(cause::LOAD_ACCESS, va)),
                    Err(e) => return Err(e),
                };
                v |= b << (8 * k);
            }
            return Ok(v);
        }
        let p = self.data_host_addr(va, Access::Load)?;
        // SAFETY: `p` points at `size` bytes inside one guest RAM frame.
        Ok(unsafe { read_host(p, size) })
    }

    /// Slow-path store of the low `size` bytes of `v`, any alignment.
    pub(crate) fn store_slow(&mut self, va: u64, size: u64, v: u64) -> Result<(), Fault> {
        if (va & 0xfff) + size > 0x1000 {
            // Crosses a page: translate both pages before writing anything, so that a fault on
            // the second page leaves memory untouched.
            let first = 0x1000 - (va & 0xfff);
            let second_va = va.wrapping_add(first);
            let p1 = match self.data_host_addr(va, Access::Store) {
                Err(Fault::Mmio(_)) => return Err(Fault::Trap(cause::STORE_ACCESS, va)),
                r => r?,
            };
            let p2 = match self.data_host_addr(second_va, Access::Store) {
                Err(Fault::Mmio(_)) => return Err(Fault::Trap(cause::STORE_ACCESS, va)),
                r => r?,
            };
            let bytes = v.to_le_bytes();
            // SAFETY: p1 has `first` writable bytes left in its frame, p2 the rest.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), p1, first as usize);
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr().add(first as usize),
                    p2,
                    (size - first) as usize,
                );
            }
            return Ok(());
        }
        let p = self.data_host_addr(va, Access::Store)?;
        // SAFETY: `p` points at `size` writable bytes inside one guest RAM frame.
        unsafe { write_host(p, size, v) };
        Ok(())
    }

    /// Host address for an atomic access of `size` bytes at `va` (naturally aligned, RAM only).
    pub(crate) fn amo_addr(
        &mut self,
        va: u64,
        size: u64,
        load_only: bool,
    ) -> Result<*mut u8, Fault> {
        if va & (size - 1) != 0 {
            return Err(Fault::Trap(
                if load_only {
                    cause::LOAD_MISALIGNED
                } else {
                    cause::STORE_MISALIGNED
                },
                va,
            ));
        }
        let access = if load_only {
            Access::Load
        } else {
            Access::Store
        };
        let e = if load_only {
            &self.tlb.read[tlb_index(va)]
        } else {
            &self.tlb.write[tlb_index(va)]
        };
        if e.tag == (va & !0xfff) | self.dtag {
            return Ok((va as usize).wrapping_add(e.addend) as *mut u8);
        }
        match self.data_host_addr(va, access) {
            Err(Fault::Mmio(_)) => Err(Fault::Trap(access.access_fault(), va)),
            r => r,
        }
    }
}

/// Reads `size` little-endian bytes at `p`.
///
/// # Safety
/// `p` must point at `size` readable bytes.
#[inline(always)]
pub(crate) unsafe fn read_host(p: *const u8, size: u64) -> u64 {
    match size {
        1 => *p as u64,
        2 => (p as *const u16).read_unaligned() as u64,
        4 => (p as *const u32).read_unaligned() as u64,
        _ => (p as *const u64).read_unaligned(),
    }
}

/// Writes the low `size` bytes of `v` at `p`.
///
/// # Safety
/// `p` must point at `size` writable bytes.
#[inline(always)]
pub(crate) unsafe fn write_host(p: *mut u8, size: u64, v: u64) {
    match size {
        1 => *p = v as u8,
        2 => (p as *mut u16).write_unaligned(v as u16),
        4 => (p as *mut u32).write_unaligned(v as u32),
        _ => (p as *mut u64).write_unaligned(v),
    }
}
