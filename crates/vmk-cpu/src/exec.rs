//! The interpreter: block lookup and decoding, and execution of decoded ops.

use crate::csr::{cause, CsrIllegal, MS_TSR, MS_TVM, MS_TW};
use crate::decode::{decode16, decode32, Amo, Op, K};
use crate::fpu;
use crate::mmu::{read_host, tlb_index, write_host, Fault};
use crate::{Block, BlockErr, Exit, Hart, JcEntry, PendingLoad, PrivMode, JC_SIZE};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering::SeqCst};

/// Longest block, in instructions: bounds the latency of kicks and shoot-downs.
const MAX_BLOCK_OPS: usize = 64;

const NAN_BOX: u64 = 0xffff_ffff_0000_0000;

impl Hart {
    /// The jump cache tag of the current privilege and generation.
    #[inline(always)]
    pub(crate) fn jc_tag(&self) -> u64 {
        (self.cache.jc_gen << 2) | self.prv as u64
    }

    /// Finds (or decodes) the block at the current pc.
    #[inline(always)]
    pub(crate) fn lookup_block(&mut self) -> Result<*const Block, BlockErr> {
        let pc = self.pc;
        // Compiled code (jit.rs, emit_next_block) computes the same index: keep them in step.
        let tag = self.jc_tag();
        let idx = ((pc >> 1) as usize) & (JC_SIZE - 1);
        let e = self.cache.jc[idx];
        if e.pc == pc && e.tag == tag {
            return Ok(e.blk);
        }
        self.lookup_block_slow(pc, tag, idx)
    }

    fn lookup_block_slow(
        &mut self,
        pc: u64,
        tag: u64,
        idx: usize,
    ) -> Result<*const Block, BlockErr> {
        let (gpa, host) = match self.fetch_addr(pc) {
            Ok(v) => v,
            Err(Fault::Trap(c, t)) => return Err(BlockErr::Trap(c, t)),
            Err(Fault::Mmio(_)) => return Err(BlockErr::Trap(cause::FETCH_ACCESS, pc)),
        };
        let blk = match self.cache.by_gpa.get(&gpa) {
            // SAFETY: blocks in `by_gpa` are alive (owned by the arena).
            Some(&b) if self.still_current(unsafe { &*b }, gpa, host) => b,
            Some(_) => {
                self.cache.invalidate_page(gpa & !0xfff);
                self.decode_block(pc, gpa, host)?
            }
            None => self.decode_block(pc, gpa, host)?,
        };
        self.cache.jc[idx] = JcEntry { pc, tag, blk };
        Ok(blk)
    }

    /// True when guest memory still holds the instructions `blk` was decoded from (checked
    /// once per FENCE.I generation).
    fn still_current(&self, blk: &Block, gpa: u64, host: *const u8) -> bool {
        if blk.checked.get() == self.cache.fence_gen {
            return true;
        }
        let start_off = (gpa & 0xfff) as i64;
        let page_host = host.wrapping_sub(start_off as usize);
        let same = blk.ops.iter().all(|op| {
            let off = (start_off + op.pc_off as i64) as usize;
            // SAFETY: decode_block only made ops that lie wholly inside this 4 KiB frame.
            unsafe {
                if op.len == 2 {
                    (page_host.add(off) as *const u16).read_unaligned() as u32 == op.raw
                } else {
                    (page_host.add(off) as *const u32).read_unaligned() == op.raw
                }
            }
        });
        if same {
            blk.checked.set(self.cache.fence_gen);
        }
        same
    }

    /// Decodes the block starting at `gpa` (host address `host`, virtual `pc`).
    fn decode_block(
        &mut self,
        pc: u64,
        gpa: u64,
        host: *const u8,
    ) -> Result<*const Block, BlockErr> {
        let mut ops: Vec<Op> = Vec::with_capacity(16);
        // Offsets within the page: the block may follow direct jumps inside it.
        let start_off = (gpa & 0xfff) as i64;
        let page_host = host.wrapping_sub(start_off as usize);
        let mut cur = start_off;
        while ops.len() < MAX_BLOCK_OPS && cur + 2 <= 0x1000 {
            // SAFETY: page_host..page_host+4096 is one guest RAM frame; cur + 2 <= 4096.
            let lo = unsafe { (page_host.add(cur as usize) as *const u16).read_unaligned() };
            let mut op = if lo & 3 != 3 {
                decode16(lo)
            } else if cur + 4 <= 0x1000 {
                // SAFETY: as above, 4 bytes are left in the frame.
                decode32(unsafe { (page_host.add(cur as usize) as *const u32).read_unaligned() })
            } else {
                // A 32-bit instruction that crosses into the next page.
                if ops.is_empty() {
                    let hi_va = pc.wrapping_add((0x1000 - start_off) as u64);
                    let hi = match self.fetch_addr(hi_va) {
                        // SAFETY: fetch_addr returns a host address inside a guest frame with
                        // at least 2 bytes left (hi_va is page aligned).
                        Ok((_, h)) => unsafe { (h as *const u16).read_unaligned() },
                        Err(Fault::Trap(c, t)) => return Err(BlockErr::Trap(c, t)),
                        Err(Fault::Mmio(_)) => {
                            return Err(BlockErr::Trap(cause::FETCH_ACCESS, hi_va))
                        }
                    };
                    return Err(BlockErr::Straddle(decode32(lo as u32 | (hi as u32) << 16)));
                }
                break;
            };
            op.pc_off = (cur - start_off) as i16;
            cur += op.len as i64;
            if op.kind == K::Jal {
                // Follow a direct jump that stays in this page and does not loop back into
                // the block: one block instead of two.
                let target = cur - op.len as i64 + op.imm;
                let seen = ops.iter().any(|o| o.pc_off as i64 == target - start_off);
                if (0..0x1000).contains(&target) && !seen && target != cur - op.len as i64 {
                    op.kind = K::JalInline;
                    ops.push(op);
                    cur = target;
                    continue;
                }
            }
            let end = op.ends_block();
            ops.push(op);
            if end {
                break;
            }
        }
        let blk = Box::new(Block::new(ops, cur - start_off, self.cache.fence_gen));
        let ptr: *const Block = &*blk;
        self.cache.arena.push(blk);
        self.cache.by_gpa.insert(gpa, ptr);
        let page = gpa & !0xfff;
        let list = self.cache.code_pages.entry(page).or_default();
        let first_on_page = list.is_empty();
        list.push(gpa);
        if first_on_page {
            self.protect_code_page(page);
        }
        Ok(ptr)
    }

    /// Writes a loaded value (from memory or an MMIO exit) into the op's destination.
    pub(crate) fn finish_load(&mut self, op: Op, v: u64) {
        let rd = (op.rd & 63) as usize;
        match op.kind {
            K::Lb => self.x[rd] = v as i8 as i64 as u64,
            K::Lh => self.x[rd] = v as i16 as i64 as u64,
            K::Lw => self.x[rd] = v as i32 as i64 as u64,
            K::Lbu => self.x[rd] = v as u8 as u64,
            K::Lhu => self.x[rd] = v as u16 as u64,
            K::Lwu => self.x[rd] = v as u32 as u64,
            K::Ld => self.x[rd] = v,
            K::Flw => {
                self.f[(op.rd & 31) as usize] = v as u32 as u64 | NAN_BOX;
                self.set_fs_dirty();
            }
            K::Fld => {
                self.f[(op.rd & 31) as usize] = v;
                self.set_fs_dirty();
            }
            _ => {}
        }
    }

    /// Ends the block at op `i` with exception `cause`: the op did not retire.
    #[cold]
    fn raise(&mut self, vpc: u64, blk: &Block, i: usize, cause: u64, tval: u64) -> Option<Exit> {
        self.pc = vpc.wrapping_add(blk.ops[i].pc_off as i64 as u64);
        self.instret -= (blk.ops.len() - i) as u64;
        self.take_trap(cause, tval, false)
    }

    #[cold]
    fn illegal(&mut self, vpc: u64, blk: &Block, i: usize) -> Option<Exit> {
        let raw = blk.ops[i].raw as u64;
        self.raise(vpc, blk, i, cause::ILLEGAL, raw)
    }

    /// Ends the block after op `i` (which retired) with the pc at the next instruction.
    fn leave_after(&mut self, vpc: u64, blk: &Block, i: usize) {
        let op = &blk.ops[i];
        self.pc = vpc.wrapping_add((op.pc_off as i64 + op.len as i64) as u64);
        self.instret -= (blk.ops.len() - i - 1) as u64;
    }

    #[cold]
    fn load_fault(&mut self, f: Fault, vpc: u64, blk: &Block, i: usize, size: u8) -> Option<Exit> {
        match f {
            Fault::Trap(c, t) => self.raise(vpc, blk, i, c, t),
            Fault::Mmio(addr) => {
                self.pending_load = Some(PendingLoad { op: blk.ops[i] });
                self.leave_after(vpc, blk, i);
                Some(Exit::MmioRead { addr, size })
            }
        }
    }

    #[cold]
    fn store_fault(
        &mut self,
        f: Fault,
        vpc: u64,
        blk: &Block,
        i: usize,
        size: u8,
        value: u64,
    ) -> Option<Exit> {
        match f {
            Fault::Trap(c, t) => self.raise(vpc, blk, i, c, t),
            Fault::Mmio(addr) => {
                self.leave_after(vpc, blk, i);
                let mask = if size == 8 {
                    u64::MAX
                } else {
                    (1 << (8 * size)) - 1
                };
                Some(Exit::MmioWrite {
                    addr,
                    size,
                    value: value & mask,
                })
            }
        }
    }

    #[inline(always)]
    fn load_fast(&self, va: u64, size: u64) -> Option<*const u8> {
        let e = &self.tlb.read[tlb_index(va)];
        if e.tag == (va & !0xfff) | self.dtag && (va & 0xfff) <= 0x1000 - size {
            Some((va as usize).wrapping_add(e.addend) as *const u8)
        } else {
            None
        }
    }

    #[inline(always)]
    fn store_fast(&self, va: u64, size: u64) -> Option<*mut u8> {
        let e = &self.tlb.write[tlb_index(va)];
        if e.tag == (va & !0xfff) | self.dtag && (va & 0xfff) <= 0x1000 - size {
            Some((va as usize).wrapping_add(e.addend) as *mut u8)
        } else {
            None
        }
    }

    /// Executes one block entered at virtual pc `self.pc`, from op `start` on (the ops before
    /// it ran as compiled code). `self.instret` already counts all its ops; early exits give
    /// back the ops that did not retire.
    pub(crate) fn exec_block(&mut self, blk: &Block, start: usize) -> Option<Exit> {
        let vpc = self.pc;
        macro_rules! x {
            ($r:expr) => {
                self.x[($r & 63) as usize]
            };
        }
        macro_rules! load {
            ($i:expr, $op:expr, $size:expr) => {{
                let va = x!($op.rs1).wrapping_add($op.imm as u64);
                match self.load_fast(va, $size) {
                    // SAFETY: the TLB entry maps the whole page; the access fits in it.
                    Some(p) => unsafe { read_host(p, $size) },
                    None => match self.load_slow(va, $size) {
                        Ok(v) => v,
                        Err(f) => return self.load_fault(f, vpc, blk, $i, $size as u8),
                    },
                }
            }};
        }
        macro_rules! store {
            ($i:expr, $op:expr, $size:expr, $val:expr) => {{
                let va = x!($op.rs1).wrapping_add($op.imm as u64);
                let v: u64 = $val;
                match self.store_fast(va, $size) {
                    // SAFETY: the TLB entry maps the whole page writable; the access fits.
                    Some(p) => unsafe { write_host(p, $size, v) },
                    None => {
                        if let Err(f) = self.store_slow(va, $size, v) {
                            return self.store_fault(f, vpc, blk, $i, $size as u8, v);
                        }
                    }
                }
            }};
        }
        let n = blk.ops.len();
        macro_rules! branch {
            ($i:expr, $op:expr, $cond:expr) => {{
                if $cond {
                    // Taken: leave the block; the ops after this one did not run.
                    self.pc = vpc
                        .wrapping_add($op.pc_off as i64 as u64)
                        .wrapping_add($op.imm as u64);
                    self.instret -= (n - $i - 1) as u64;
                    return None;
                }
            }};
        }
        for (i, op) in blk.ops.iter().enumerate().skip(start) {
            // By reference: copying the op would load every field before the dispatch.
            match op.kind {
                K::Addi => x!(op.rd) = x!(op.rs1).wrapping_add(op.imm as u64),
                K::Add => x!(op.rd) = x!(op.rs1).wrapping_add(x!(op.rs2)),
                K::Ld => x!(op.rd) = load!(i, op, 8),
                K::Sd => store!(i, op, 8, x!(op.rs2)),
                K::Lw => x!(op.rd) = load!(i, op, 4) as i32 as i64 as u64,
                K::Sw => store!(i, op, 4, x!(op.rs2)),
                K::Lui => x!(op.rd) = op.imm as u64,
                K::Auipc => {
                    x!(op.rd) = vpc
                        .wrapping_add(op.pc_off as i64 as u64)
                        .wrapping_add(op.imm as u64)
                }
                K::Jal => {
                    let here = vpc.wrapping_add(op.pc_off as i64 as u64);
                    x!(op.rd) = here.wrapping_add(op.len as u64);
                    self.pc = here.wrapping_add(op.imm as u64);
                    return None;
                }
                K::JalInline => {
                    let here = vpc.wrapping_add(op.pc_off as i64 as u64);
                    x!(op.rd) = here.wrapping_add(op.len as u64);
                }
                K::Jalr => {
                    let here = vpc.wrapping_add(op.pc_off as i64 as u64);
                    let target = x!(op.rs1).wrapping_add(op.imm as u64) & !1;
                    x!(op.rd) = here.wrapping_add(op.len as u64);
                    self.pc = target;
                    return None;
                }
                K::Beq => branch!(i, op, x!(op.rs1) == x!(op.rs2)),
                K::Bne => branch!(i, op, x!(op.rs1) != x!(op.rs2)),
                K::Blt => branch!(i, op, (x!(op.rs1) as i64) < (x!(op.rs2) as i64)),
                K::Bge => branch!(i, op, (x!(op.rs1) as i64) >= (x!(op.rs2) as i64)),
                K::Bltu => branch!(i, op, x!(op.rs1) < x!(op.rs2)),
                K::Bgeu => branch!(i, op, x!(op.rs1) >= x!(op.rs2)),
                K::Lb => x!(op.rd) = load!(i, op, 1) as i8 as i64 as u64,
                K::Lh => x!(op.rd) = load!(i, op, 2) as i16 as i64 as u64,
                K::Lbu => x!(op.rd) = load!(i, op, 1),
                K::Lhu => x!(op.rd) = load!(i, op, 2),
                K::Lwu => x!(op.rd) = load!(i, op, 4),
                K::Sb => store!(i, op, 1, x!(op.rs2)),
                K::Sh => store!(i, op, 2, x!(op.rs2)),
                K::Slti => x!(op.rd) = ((x!(op.rs1) as i64) < op.imm) as u64,
                K::Sltiu => x!(op.rd) = (x!(op.rs1) < op.imm as u64) as u64,
                K::Xori => x!(op.rd) = x!(op.rs1) ^ op.imm as u64,
                K::Ori => x!(op.rd) = x!(op.rs1) | op.imm as u64,
                K::Andi => x!(op.rd) = x!(op.rs1) & op.imm as u64,
                K::Slli => x!(op.rd) = x!(op.rs1) << (op.imm & 63),
                K::Srli => x!(op.rd) = x!(op.rs1) >> (op.imm & 63),
                K::Srai => x!(op.rd) = ((x!(op.rs1) as i64) >> (op.imm & 63)) as u64,
                K::Sub => x!(op.rd) = x!(op.rs1).wrapping_sub(x!(op.rs2)),
                K::Sll => x!(op.rd) = x!(op.rs1) << (x!(op.rs2) & 63),
                K::Slt => x!(op.rd) = ((x!(op.rs1) as i64) < (x!(op.rs2) as i64)) as u64,
                K::Sltu => x!(op.rd) = (x!(op.rs1) < x!(op.rs2)) as u64,
                K::Xor => x!(op.rd) = x!(op.rs1) ^ x!(op.rs2),
                K::Srl => x!(op.rd) = x!(op.rs1) >> (x!(op.rs2) & 63),
                K::Sra => x!(op.rd) = ((x!(op.rs1) as i64) >> (x!(op.rs2) & 63)) as u64,
                K::Or => x!(op.rd) = x!(op.rs1) | x!(op.rs2),
                K::And => x!(op.rd) = x!(op.rs1) & x!(op.rs2),
                K::Addiw => {
                    x!(op.rd) = (x!(op.rs1) as i32).wrapping_add(op.imm as i32) as i64 as u64
                }
                K::Slliw => x!(op.rd) = ((x!(op.rs1) as u32) << (op.imm & 31)) as i32 as i64 as u64,
                K::Srliw => x!(op.rd) = ((x!(op.rs1) as u32) >> (op.imm & 31)) as i32 as i64 as u64,
                K::Sraiw => x!(op.rd) = ((x!(op.rs1) as i32) >> (op.imm & 31)) as i64 as u64,
                K::Addw => {
                    x!(op.rd) = (x!(op.rs1) as i32).wrapping_add(x!(op.rs2) as i32) as i64 as u64
                }
                K::Subw => {
                    x!(op.rd) = (x!(op.rs1) as i32).wrapping_sub(x!(op.rs2) as i32) as i64 as u64
                }
                K::Sllw => {
                    x!(op.rd) = ((x!(op.rs1) as u32) << (x!(op.rs2) & 31)) as i32 as i64 as u64
                }
                K::Srlw => {
                    x!(op.rd) = ((x!(op.rs1) as u32) >> (x!(op.rs2) & 31)) as i32 as i64 as u64
                }
                K::Sraw => x!(op.rd) = ((x!(op.rs1) as i32) >> (x!(op.rs2) & 31)) as i64 as u64,
                K::Mul => x!(op.rd) = x!(op.rs1).wrapping_mul(x!(op.rs2)),
                K::Mulh => {
                    x!(op.rd) =
                        (((x!(op.rs1) as i64 as i128) * (x!(op.rs2) as i64 as i128)) >> 64) as u64
                }
                K::Mulhsu => {
                    x!(op.rd) =
                        (((x!(op.rs1) as i64 as i128) * (x!(op.rs2) as u128 as i128)) >> 64) as u64
                }
                K::Mulhu => {
                    x!(op.rd) = (((x!(op.rs1) as u128) * (x!(op.rs2) as u128)) >> 64) as u64
                }
                K::Div => {
                    let (a, b) = (x!(op.rs1) as i64, x!(op.rs2) as i64);
                    x!(op.rd) = if b == 0 {
                        u64::MAX
                    } else {
                        a.wrapping_div(b) as u64
                    };
                }
                K::Divu => {
                    let (a, b) = (x!(op.rs1), x!(op.rs2));
                    x!(op.rd) = a.checked_div(b).unwrap_or(u64::MAX);
                }
                K::Rem => {
                    let (a, b) = (x!(op.rs1) as i64, x!(op.rs2) as i64);
                    x!(op.rd) = if b == 0 {
                        a as u64
                    } else {
                        a.wrapping_rem(b) as u64
                    };
                }
                K::Remu => {
                    let (a, b) = (x!(op.rs1), x!(op.rs2));
                    x!(op.rd) = if b == 0 { a } else { a % b };
                }
                K::Mulw => {
                    x!(op.rd) = (x!(op.rs1) as i32).wrapping_mul(x!(op.rs2) as i32) as i64 as u64
                }
                K::Divw => {
                    let (a, b) = (x!(op.rs1) as i32, x!(op.rs2) as i32);
                    x!(op.rd) = if b == 0 {
                        u64::MAX
                    } else {
                        a.wrapping_div(b) as i64 as u64
                    };
                }
                K::Divuw => {
                    let (a, b) = (x!(op.rs1) as u32, x!(op.rs2) as u32);
                    x!(op.rd) = a
                        .checked_div(b)
                        .map_or(u64::MAX, |q| q as i32 as i64 as u64);
                }
                K::Remw => {
                    let (a, b) = (x!(op.rs1) as i32, x!(op.rs2) as i32);
                    x!(op.rd) = if b == 0 {
                        a as i64 as u64
                    } else {
                        a.wrapping_rem(b) as i64 as u64
                    };
                }
                K::Remuw => {
                    let (a, b) = (x!(op.rs1) as u32, x!(op.rs2) as u32);
                    x!(op.rd) = if b == 0 {
                        a as i32 as i64 as u64
                    } else {
                        (a % b) as i32 as i64 as u64
                    };
                }
                K::Fence => {}
                K::Pause => {
                    // A hint: a spin-wait. After enough of them in one run, let the
                    // hypervisor run someone else (the vCPU that holds the lock).
                    self.leave_after(vpc, blk, i);
                    self.pauses += 1;
                    if self.pauses >= crate::PAUSE_YIELD {
                        self.pauses = 0;
                        return Some(Exit::Yield);
                    }
                    return None;
                }
                K::Flw | K::Fld | K::Fsw | K::Fsd => {
                    if self.fs_off() {
                        return self.illegal(vpc, blk, i);
                    }
                    match op.kind {
                        K::Flw => {
                            let v = load!(i, op, 4);
                            self.f[(op.rd & 31) as usize] = v | NAN_BOX;
                            self.set_fs_dirty();
                        }
                        K::Fld => {
                            let v = load!(i, op, 8);
                            self.f[(op.rd & 31) as usize] = v;
                            self.set_fs_dirty();
                        }
                        K::Fsw => store!(i, op, 4, self.f[(op.rs2 & 31) as usize]),
                        _ => store!(i, op, 8, self.f[(op.rs2 & 31) as usize]),
                    }
                }
                K::Fp => {
                    if self.fs_off() {
                        return self.illegal(vpc, blk, i);
                    }
                    let rm = if op.rm == 7 { self.frm as u8 } else { op.rm };
                    if rm > 4 {
                        return self.illegal(vpc, blk, i);
                    }
                    let a = if op.fp.int_source() {
                        x!(op.rs1)
                    } else {
                        self.f[(op.rs1 & 31) as usize]
                    };
                    let (r, flags) = fpu::execute(
                        op.fp,
                        a,
                        self.f[(op.rs2 & 31) as usize],
                        self.f[(op.rs3 & 31) as usize],
                        rm,
                    );
                    self.fflags |= flags as u64;
                    if op.fp.writes_int() {
                        x!(op.rd) = r;
                        if flags != 0 {
                            self.set_fs_dirty();
                        }
                    } else {
                        self.f[(op.rd & 31) as usize] = r;
                        self.set_fs_dirty();
                    }
                }
                K::LrW | K::LrD => {
                    let size = if op.kind == K::LrW { 4 } else { 8 };
                    let va = x!(op.rs1);
                    let p = match self.amo_addr(va, size, true) {
                        Ok(p) => p,
                        Err(f) => return self.load_fault(f, vpc, blk, i, size as u8),
                    };
                    // SAFETY: p is naturally aligned inside a guest RAM frame.
                    let v = unsafe {
                        if size == 4 {
                            AtomicU32::from_ptr(p as *mut u32).load(SeqCst) as i32 as i64 as u64
                        } else {
                            AtomicU64::from_ptr(p as *mut u64).load(SeqCst)
                        }
                    };
                    x!(op.rd) = v;
                    self.reservation = Some((va, v));
                }
                K::ScW | K::ScD => {
                    let size = if op.kind == K::ScW { 4 } else { 8 };
                    let va = x!(op.rs1);
                    let new = x!(op.rs2);
                    let res = self.reservation.take();
                    let ok = match res {
                        Some((rva, old)) if rva == va => {
                            let p = match self.amo_addr(va, size, false) {
                                Ok(p) => p,
                                Err(f) => return self.store_fault(f, vpc, blk, i, size as u8, new),
                            };
                            // SAFETY: p is naturally aligned inside a writable guest RAM frame.
                            unsafe {
                                if size == 4 {
                                    AtomicU32::from_ptr(p as *mut u32)
                                        .compare_exchange(old as u32, new as u32, SeqCst, SeqCst)
                                        .is_ok()
                                } else {
                                    AtomicU64::from_ptr(p as *mut u64)
                                        .compare_exchange(old, new, SeqCst, SeqCst)
                                        .is_ok()
                                }
                            }
                        }
                        _ => {
                            if va & (size - 1) != 0 {
                                return self.raise(vpc, blk, i, cause::STORE_MISALIGNED, va);
                            }
                            false
                        }
                    };
                    x!(op.rd) = (!ok) as u64;
                }
                K::AmoW | K::AmoD => {
                    let va = x!(op.rs1);
                    let src = x!(op.rs2);
                    let size = if op.kind == K::AmoW { 4 } else { 8 };
                    let p = match self.amo_addr(va, size, false) {
                        Ok(p) => p,
                        Err(f) => return self.store_fault(f, vpc, blk, i, size as u8, src),
                    };
                    // SAFETY: p is naturally aligned inside a writable guest RAM frame.
                    let old = unsafe { amo(p, size, Amo::from_u8(op.rs3), src) };
                    x!(op.rd) = old;
                }
                K::Csrrw | K::Csrrs | K::Csrrc | K::Csrrwi | K::Csrrsi | K::Csrrci => {
                    let src = match op.kind {
                        K::Csrrw | K::Csrrs | K::Csrrc => x!(op.rs1),
                        _ => op.rs1 as u64,
                    };
                    let write = matches!(op.kind, K::Csrrw | K::Csrrwi) || op.rs1 != 0;
                    let kind = op.kind;
                    // The CSR op is the block's last op: counters must not include it yet.
                    self.instret -= 1;
                    let r = self.csr_op((op.imm & 0xfff) as u16, write, |old| match kind {
                        K::Csrrw | K::Csrrwi => src,
                        K::Csrrs | K::Csrrsi => old | src,
                        _ => old & !src,
                    });
                    self.instret += 1;
                    let csr = (op.imm & 0xfff) as u16;
                    if write && r.is_ok() {
                        // "If a CSR access instruction writes such a CSR, the write is done
                        // instead of the increment": undo this instruction's count.
                        match csr {
                            0xb02 => {
                                self.instret -= 1;
                                self.cycle_offset = self.cycle_offset.wrapping_add(1);
                            }
                            0xb00 => self.cycle_offset = self.cycle_offset.wrapping_sub(1),
                            _ => {}
                        }
                    }
                    match r {
                        Ok(old) => {
                            x!(op.rd) = old;
                            self.local_attention = true;
                        }
                        Err(CsrIllegal) => return self.illegal(vpc, blk, i),
                    }
                }
                K::Ecall => {
                    if self.cfg.sbi_exits && self.prv == PrivMode::Supervisor {
                        self.leave_after(vpc, blk, i);
                        return Some(Exit::Ecall);
                    }
                    let c = cause::ECALL_U + self.prv as u64;
                    return self.raise(vpc, blk, i, c, 0);
                }
                K::Ebreak => {
                    let here = vpc.wrapping_add(op.pc_off as i64 as u64);
                    return self.raise(vpc, blk, i, cause::BREAKPOINT, here);
                }
                K::Mret => {
                    if self.prv != PrivMode::Machine {
                        return self.illegal(vpc, blk, i);
                    }
                    self.mret();
                    return None;
                }
                K::Sret => {
                    if self.prv == PrivMode::User
                        || (self.prv == PrivMode::Supervisor && self.mstatus & MS_TSR != 0)
                    {
                        return self.illegal(vpc, blk, i);
                    }
                    self.sret();
                    return None;
                }
                K::Wfi => {
                    if self.prv == PrivMode::User
                        || (self.prv == PrivMode::Supervisor && self.mstatus & MS_TW != 0)
                    {
                        return self.illegal(vpc, blk, i);
                    }
                    self.leave_after(vpc, blk, i);
                    self.local_attention = true;
                    if self.mip() & self.mie != 0 {
                        return None;
                    }
                    return Some(Exit::Wfi);
                }
                K::SfenceVma => {
                    if self.prv == PrivMode::User
                        || (self.prv == PrivMode::Supervisor && self.mstatus & MS_TVM != 0)
                    {
                        return self.illegal(vpc, blk, i);
                    }
                    // TLB entries do not record the page size: fencing one address must also
                    // drop the other 4 KiB entries of a superpage, so drop everything (O(1)).
                    self.flush_tlb();
                    self.leave_after(vpc, blk, i);
                    return None;
                }
                K::FenceI => {
                    self.cache.fence_i();
                    self.leave_after(vpc, blk, i);
                    return None;
                }
                K::Illegal => return self.illegal(vpc, blk, i),
            }
        }
        self.pc = vpc.wrapping_add(blk.end_off as u64);
        None
    }
}

/// Performs an AMO on host memory and returns the old value (sign-extended for words).
///
/// # Safety
/// `p` must be naturally aligned for `size` and point into writable guest RAM.
unsafe fn amo(p: *mut u8, size: u64, op: Amo, src: u64) -> u64 {
    if size == 4 {
        let a = AtomicU32::from_ptr(p as *mut u32);
        let s = src as u32;
        let old = match op {
            Amo::Swap => a.swap(s, SeqCst),
            Amo::Add => a.fetch_add(s, SeqCst),
            Amo::Xor => a.fetch_xor(s, SeqCst),
            Amo::And => a.fetch_and(s, SeqCst),
            Amo::Or => a.fetch_or(s, SeqCst),
            Amo::Min => AtomicI32::from_ptr(p as *mut i32).fetch_min(s as i32, SeqCst) as u32,
            Amo::Max => AtomicI32::from_ptr(p as *mut i32).fetch_max(s as i32, SeqCst) as u32,
            Amo::Minu => a.fetch_min(s, SeqCst),
            Amo::Maxu => a.fetch_max(s, SeqCst),
        };
        old as i32 as i64 as u64
    } else {
        let a = AtomicU64::from_ptr(p as *mut u64);
        match op {
            Amo::Swap => a.swap(src, SeqCst),
            Amo::Add => a.fetch_add(src, SeqCst),
            Amo::Xor => a.fetch_xor(src, SeqCst),
            Amo::And => a.fetch_and(src, SeqCst),
            Amo::Or => a.fetch_or(src, SeqCst),
            Amo::Min => AtomicI64::from_ptr(p as *mut i64).fetch_min(src as i64, SeqCst) as u64,
            Amo::Max => AtomicI64::from_ptr(p as *mut i64).fetch_max(src as i64, SeqCst) as u64,
            Amo::Minu => a.fetch_min(src, SeqCst),
            Amo::Maxu => a.fetch_max(src, SeqCst),
        }
    }
}
