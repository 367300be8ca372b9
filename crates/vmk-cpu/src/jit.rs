//! The x86-64 block compiler: turns a hot decoded [`Block`](crate::Block) into host code.
//!
//! Contract with the interpreter. Guest registers stay in the hart's `x` array (no register
//! allocation), so the state is exact after every op and the interpreter can take over at any
//! op. Compiled code handles the common integer ops, loads and stores through the software
//! TLB's fast path, branches and jumps. Everything else (a TLB miss, a page-crossing access,
//! CSRs, FP, atomics, system ops) returns `i + 1` *before* touching any state of op `i`, with
//! the block in `JitCtx::stopped`, and the interpreter runs that block on from op `i`. A return of 0 means the block ran to its end
//! and the pc is written; taken branches give back their untaken ops to `instret` themselves.
//!
//! At its end a block does what the run loop would do next, as long as nothing needs the
//! run loop (budget left, no attention bits): it looks the new pc up in the jump cache and,
//! if that block is compiled, counts its ops and jumps to it. So hot code runs from block to
//! block without returning to Rust.
//!
//! Written by hand on dynasm rather than with a compiler back end (Cranelift): blocks are
//! small, compiled once they are hot, and compile time must be microseconds.

use crate::decode::{Op, K};
use crate::{Block, Hart, JcEntry, JitCtx, TlbEntry, JC_SIZE, TLB_SIZE};
use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};
use std::cell::Cell;
use std::mem::offset_of;

/// Compiled block: `(hart, vpc) -> 0 | resume op + 1`.
pub(crate) type JitFn = unsafe extern "sysv64" fn(hart: *mut Hart, vpc: u64) -> u64;

/// Code space per hart. Only the pages written count towards the host's memory.
const ARENA_SIZE: usize = 64 << 20;

const _: () = assert!(std::mem::size_of::<TlbEntry>() == 24);
const _: () = assert!(offset_of!(TlbEntry, tag) == 0 && offset_of!(TlbEntry, addend) == 8);
const _: () = assert!(std::mem::size_of::<JcEntry>() == 24);
const _: () = assert!(
    offset_of!(JcEntry, pc) == 0 && offset_of!(JcEntry, tag) == 8 && offset_of!(JcEntry, blk) == 16
);
// A compiled block's code pointer is read as a plain word: null when there is none.
const _: () = assert!(std::mem::size_of::<Cell<Option<JitFn>>>() == 8);

/// Offsets in the Hart, which compiled code gets as its base.
const X: i32 = offset_of!(Hart, x) as i32;
const PC: i32 = offset_of!(Hart, pc) as i32;
const INSTRET: i32 = offset_of!(Hart, instret) as i32;
const BUDGET_END: i32 = offset_of!(Hart, budget_end) as i32;
const LOCAL_ATTENTION: i32 = offset_of!(Hart, local_attention) as i32;
const DTAG: i32 = offset_of!(Hart, dtag) as i32;
const CTX: usize = offset_of!(Hart, jit_ctx);
const TLB_READ: i32 = (CTX + offset_of!(JitCtx, tlb_read)) as i32;
const TLB_WRITE: i32 = (CTX + offset_of!(JitCtx, tlb_write)) as i32;
const JC: i32 = (CTX + offset_of!(JitCtx, jc)) as i32;
const ATTENTION: i32 = (CTX + offset_of!(JitCtx, attention)) as i32;
const JC_TAG: i32 = (CTX + offset_of!(JitCtx, jc_tag)) as i32;
const STOPPED: i32 = (CTX + offset_of!(JitCtx, stopped)) as i32;
const BLOCK_CODE: i32 = offset_of!(Block, jit) as i32;
const BLOCK_OPS: i32 = offset_of!(Block, n_ops) as i32;

/// Executable memory with two views of one memfd: code is written through a writable
/// mapping and run from an executable one, so no page is ever writable and executable.
pub(crate) struct CodeArena {
    fd: libc::c_int,
    rw: *mut u8,
    rx: *const u8,
    size: usize,
    used: usize,
    /// Address of the code every block ends with: the run loop's fast path (`emit_next_block`),
    /// shared at the start of the arena.
    next_block: usize,
}

impl CodeArena {
    /// Fails when the host refuses (no memfd, or no executable mappings): the hart then
    /// interprets everything.
    pub(crate) fn new() -> std::io::Result<CodeArena> {
        let size = ARENA_SIZE;
        // SAFETY: plain syscalls; every result is checked and the fd closed on all paths.
        unsafe {
            // Kernels with vm.memfd_noexec need MFD_EXEC; older ones refuse the flag.
            let name = c"vmk-jit".as_ptr();
            let mut fd = libc::memfd_create(name, libc::MFD_CLOEXEC | libc::MFD_EXEC);
            if fd < 0 {
                fd = libc::memfd_create(name, libc::MFD_CLOEXEC);
            }
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ftruncate(fd, size as libc::off_t) != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            let map = |prot| libc::mmap(std::ptr::null_mut(), size, prot, libc::MAP_SHARED, fd, 0);
            let rw = map(libc::PROT_READ | libc::PROT_WRITE);
            let rx = map(libc::PROT_READ | libc::PROT_EXEC);
            if rw == libc::MAP_FAILED || rx == libc::MAP_FAILED {
                let e = std::io::Error::last_os_error();
                for m in [rw, rx] {
                    if m != libc::MAP_FAILED {
                        libc::munmap(m, size);
                    }
                }
                libc::close(fd);
                return Err(e);
            }
            let mut arena = CodeArena {
                fd,
                rw: rw as *mut u8,
                rx: rx as *const u8,
                size,
                used: 0,
                next_block: 0,
            };
            arena.install_next_block()?;
            Ok(arena)
        }
    }

    fn install_next_block(&mut self) -> std::io::Result<()> {
        let mut a = VecAssembler::<X64Relocation>::new(self.rx as usize + self.used);
        let entry = a.new_dynamic_label();
        emit_next_block(&mut a, entry);
        let code = a
            .finalize()
            .map_err(|e| std::io::Error::other(format!("assembling the block exit: {e:?}")))?;
        self.next_block = self.put(&code).ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(())
    }

    /// Copies `code` (assembled for the next free address) into the arena; returns its
    /// executable address, or `None` when it does not fit.
    fn put(&mut self, code: &[u8]) -> Option<usize> {
        // Entries 16-byte aligned, as compilers do for functions.
        let len = (code.len() + 15) & !15;
        if self.used + len > self.size {
            return None;
        }
        // SAFETY: the range is inside the writable view; nothing runs code there yet.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.rw.add(self.used), code.len());
        }
        let at = self.rx as usize + self.used;
        self.used += len;
        Some(at)
    }

    /// Forgets all code and gives its memory back to the host; only called when no
    /// compiled block can run any more.
    pub(crate) fn reset(&mut self) {
        if self.used > 0 {
            // SAFETY: punches a hole in our own memfd; both views then read zeros. Failure
            // only means the pages stay resident.
            unsafe {
                libc::fallocate(
                    self.fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    self.used as libc::off_t,
                );
            }
        }
        self.used = 0;
        // It fitted in the empty arena before, so it does again.
        let _ = self.install_next_block();
    }
}

impl Drop for CodeArena {
    fn drop(&mut self) {
        // SAFETY: both mappings were made in `new` with this size and are not used after.
        unsafe {
            libc::munmap(self.rw as *mut libc::c_void, self.size);
            libc::munmap(self.rx as *mut libc::c_void, self.size);
            libc::close(self.fd);
        }
    }
}

/// Why a block got no code.
pub(crate) enum NoCode {
    /// Its first op is one the compiler leaves to the interpreter: nothing to gain.
    Unsupported,
    /// The arena is full: flush the block cache (and the arena with it).
    ArenaFull,
}

/// Compiles `ops` (a block whose fall-through end is `end_off` bytes after its start).
pub(crate) fn compile(arena: &mut CodeArena, blk: &Block) -> Result<JitFn, NoCode> {
    let ops = &blk.ops[..];
    if !supported(&ops[0]) {
        return Err(NoCode::Unsupported);
    }
    let base = arena.rx as usize + arena.used;
    let mut a = VecAssembler::<X64Relocation>::new(base);
    emit_block(&mut a, blk, arena.next_block);
    let code = a.finalize().map_err(|_| NoCode::Unsupported)?;
    let at = arena.put(&code).ok_or(NoCode::ArenaFull)?;
    // SAFETY: `at` is the executable view of the bytes just written, assembled for that
    // address, following the sysv64 convention of JitFn.
    Ok(unsafe { std::mem::transmute::<usize, JitFn>(at) })
}

/// Ops the compiler emits code for; the block is compiled up to the first other one.
fn supported(op: &Op) -> bool {
    use K::*;
    matches!(
        op.kind,
        Lui | Auipc
            | Jal
            | JalInline
            | Jalr
            | Beq
            | Bne
            | Blt
            | Bge
            | Bltu
            | Bgeu
            | Lb
            | Lh
            | Lw
            | Ld
            | Lbu
            | Lhu
            | Lwu
            | Sb
            | Sh
            | Sw
            | Sd
            | Addi
            | Slti
            | Sltiu
            | Xori
            | Ori
            | Andi
            | Slli
            | Srli
            | Srai
            | Add
            | Sub
            | Sll
            | Slt
            | Sltu
            | Xor
            | Srl
            | Sra
            | Or
            | And
            | Addiw
            | Slliw
            | Srliw
            | Sraiw
            | Addw
            | Subw
            | Sllw
            | Srlw
            | Sraw
            | Mul
            | Mulh
            | Mulhu
            | Mulw
            | Div
            | Divu
            | Rem
            | Remu
            | Divw
            | Divuw
            | Remw
            | Remuw
            | Fence
    ) && (!matches!(op.kind, Lui | Auipc) || i32::try_from(op.imm).is_ok())
}

type Asm = VecAssembler<X64Relocation>;

/// Offset of x register `i` in the Hart.
fn r(i: u8) -> i32 {
    X + ((i & 63) as i32) * 8
}

/// Out-of-line exits, emitted after the block body.
enum Stub {
    /// Leave to the interpreter at op `i`.
    Resume(DynamicLabel, usize),
    /// A taken branch at op `i`: pc = vpc + `disp`, give back `untaken` ops.
    Taken(DynamicLabel, i32, u64),
}

// Register use: rdi = the Hart, rsi = vpc, r8 = read TLB, r9 = write TLB, r10 = data tag;
// rax, rcx, rdx, r11 are scratch. Nothing is called, so no register needs saving.
fn emit_block(a: &mut Asm, blk: &Block, next_block: usize) {
    let (ops, end_off) = (&blk.ops[..], blk.end_off);
    // Returning to the interpreter at op i: eax = i + 1, then this tail names the block (boxed,
    // and freed only with its code by BlockCache::flush).
    let stopped = a.new_dynamic_label();
    let stop =
        |a: &mut Asm, i: usize| dynasm!(a ; .arch x64 ; mov eax, (i + 1) as i32 ; jmp =>stopped);
    dynasm!(a
        ; .arch x64
        ; mov r8, [rdi + TLB_READ]
        ; mov r9, [rdi + TLB_WRITE]
        ; mov r10, [rdi + DTAG]
    );
    // Every way out with a new pc in rax jumps to the shared `emit_next_block` code.
    let n = ops.len();
    let mut stubs: Vec<Stub> = Vec::new();
    let resume = |a: &mut Asm, stubs: &mut Vec<Stub>, i: usize| {
        let l = a.new_dynamic_label();
        stubs.push(Stub::Resume(l, i));
        l
    };
    let mut ended = false;
    for (i, op) in ops.iter().enumerate() {
        if !supported(op) {
            stop(a, i);
            ended = true;
            break;
        }
        let (rd, rs1, rs2) = (r(op.rd), r(op.rs1), r(op.rs2));
        let imm = op.imm as i32;
        let here = op.pc_off as i32;
        let next = here + op.len as i32;
        match op.kind {
            K::Lui => dynasm!(a ; .arch x64 ; mov QWORD [rdi + rd], imm),
            K::Auipc => {
                // imm fits i32 (checked by `supported`); pc_off is small.
                let disp = op.imm + op.pc_off as i64;
                if let Ok(d) = i32::try_from(disp) {
                    dynasm!(a ; .arch x64 ; lea rax, [rsi + d]);
                } else {
                    dynasm!(a ; .arch x64 ; mov rax, QWORD disp ; add rax, rsi);
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rax);
            }
            K::Jal => {
                dynasm!(a
                    ; .arch x64
                    ; lea rax, [rsi + next]
                    ; mov [rdi + rd], rax
                    ; lea rax, [rsi + here + imm]
                    ; jmp extern next_block
                );
                ended = true;
                break;
            }
            K::JalInline => dynasm!(a
                ; .arch x64
                ; lea rax, [rsi + next]
                ; mov [rdi + rd], rax
            ),
            K::Jalr => {
                // The target is read before the link is written: rd may be rs1.
                dynasm!(a
                    ; .arch x64
                    ; mov rax, [rdi + rs1]
                    ; add rax, imm
                    ; and rax, -2
                    ; lea rcx, [rsi + next]
                    ; mov [rdi + rd], rcx
                    ; jmp extern next_block
                );
                ended = true;
                break;
            }
            K::Beq | K::Bne | K::Blt | K::Bge | K::Bltu | K::Bgeu => {
                let l = a.new_dynamic_label();
                stubs.push(Stub::Taken(l, here + imm, (n - i - 1) as u64));
                dynasm!(a ; .arch x64 ; mov rax, [rdi + rs1] ; cmp rax, [rdi + rs2]);
                match op.kind {
                    K::Beq => dynasm!(a ; .arch x64 ; je =>l),
                    K::Bne => dynasm!(a ; .arch x64 ; jne =>l),
                    K::Blt => dynasm!(a ; .arch x64 ; jl =>l),
                    K::Bge => dynasm!(a ; .arch x64 ; jge =>l),
                    K::Bltu => dynasm!(a ; .arch x64 ; jb =>l),
                    _ => dynasm!(a ; .arch x64 ; jae =>l),
                }
            }
            K::Lb | K::Lh | K::Lw | K::Ld | K::Lbu | K::Lhu | K::Lwu => {
                let size = match op.kind {
                    K::Lb | K::Lbu => 1,
                    K::Lh | K::Lhu => 2,
                    K::Lw | K::Lwu => 4,
                    _ => 8,
                };
                let miss = resume(a, &mut stubs, i);
                emit_translate(a, rs1, imm, size, false, miss);
                match op.kind {
                    K::Lb => dynasm!(a ; .arch x64 ; movsx rax, BYTE [rax]),
                    K::Lbu => dynasm!(a ; .arch x64 ; movzx eax, BYTE [rax]),
                    K::Lh => dynasm!(a ; .arch x64 ; movsx rax, WORD [rax]),
                    K::Lhu => dynasm!(a ; .arch x64 ; movzx eax, WORD [rax]),
                    K::Lw => dynasm!(a ; .arch x64 ; movsxd rax, DWORD [rax]),
                    K::Lwu => dynasm!(a ; .arch x64 ; mov eax, [rax]),
                    _ => dynasm!(a ; .arch x64 ; mov rax, [rax]),
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rax);
            }
            K::Sb | K::Sh | K::Sw | K::Sd => {
                let size = match op.kind {
                    K::Sb => 1,
                    K::Sh => 2,
                    K::Sw => 4,
                    _ => 8,
                };
                let miss = resume(a, &mut stubs, i);
                emit_translate(a, rs1, imm, size, true, miss);
                dynasm!(a ; .arch x64 ; mov rdx, [rdi + rs2]);
                match op.kind {
                    K::Sb => dynasm!(a ; .arch x64 ; mov [rax], dl),
                    K::Sh => dynasm!(a ; .arch x64 ; mov [rax], dx),
                    K::Sw => dynasm!(a ; .arch x64 ; mov [rax], edx),
                    _ => dynasm!(a ; .arch x64 ; mov [rax], rdx),
                }
            }
            K::Addi => {
                dynasm!(a ; .arch x64 ; mov rax, [rdi + rs1]);
                if imm != 0 {
                    dynasm!(a ; .arch x64 ; add rax, imm);
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rax);
            }
            K::Slti | K::Sltiu => {
                dynasm!(a ; .arch x64 ; xor edx, edx ; mov rax, [rdi + rs1] ; cmp rax, imm);
                if op.kind == K::Slti {
                    dynasm!(a ; .arch x64 ; setl dl);
                } else {
                    dynasm!(a ; .arch x64 ; setb dl);
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rdx);
            }
            K::Xori | K::Ori | K::Andi => {
                dynasm!(a ; .arch x64 ; mov rax, [rdi + rs1]);
                match op.kind {
                    K::Xori => dynasm!(a ; .arch x64 ; xor rax, imm),
                    K::Ori => dynasm!(a ; .arch x64 ; or rax, imm),
                    _ => dynasm!(a ; .arch x64 ; and rax, imm),
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rax);
            }
            K::Slli | K::Srli | K::Srai => {
                let sh = (op.imm & 63) as i8;
                dynasm!(a ; .arch x64 ; mov rax, [rdi + rs1]);
                match op.kind {
                    K::Slli => dynasm!(a ; .arch x64 ; shl rax, sh),
                    K::Srli => dynasm!(a ; .arch x64 ; shr rax, sh),
                    _ => dynasm!(a ; .arch x64 ; sar rax, sh),
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rax);
            }
            K::Add | K::Sub | K::Xor | K::Or | K::And | K::Mul => {
                dynasm!(a ; .arch x64 ; mov rax, [rdi + rs1]);
                match op.kind {
                    K::Add => dynasm!(a ; .arch x64 ; add rax, [rdi + rs2]),
                    K::Sub => dynasm!(a ; .arch x64 ; sub rax, [rdi + rs2]),
                    K::Xor => dynasm!(a ; .arch x64 ; xor rax, [rdi + rs2]),
                    K::Or => dynasm!(a ; .arch x64 ; or rax, [rdi + rs2]),
                    K::And => dynasm!(a ; .arch x64 ; and rax, [rdi + rs2]),
                    _ => dynasm!(a ; .arch x64 ; imul rax, [rdi + rs2]),
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rax);
            }
            K::Sll | K::Srl | K::Sra => {
                // x86 masks 64-bit shift counts to 6 bits, as RISC-V does.
                dynasm!(a ; .arch x64 ; mov rcx, [rdi + rs2] ; mov rax, [rdi + rs1]);
                match op.kind {
                    K::Sll => dynasm!(a ; .arch x64 ; shl rax, cl),
                    K::Srl => dynasm!(a ; .arch x64 ; shr rax, cl),
                    _ => dynasm!(a ; .arch x64 ; sar rax, cl),
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rax);
            }
            K::Slt | K::Sltu => {
                dynasm!(a
                    ; .arch x64
                    ; xor edx, edx
                    ; mov rax, [rdi + rs1]
                    ; cmp rax, [rdi + rs2]
                );
                if op.kind == K::Slt {
                    dynasm!(a ; .arch x64 ; setl dl);
                } else {
                    dynasm!(a ; .arch x64 ; setb dl);
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rdx);
            }
            K::Addiw | K::Slliw | K::Srliw | K::Sraiw => {
                let sh = (op.imm & 31) as i8;
                dynasm!(a ; .arch x64 ; mov eax, [rdi + rs1]);
                match op.kind {
                    K::Addiw => dynasm!(a ; .arch x64 ; add eax, imm),
                    K::Slliw => dynasm!(a ; .arch x64 ; shl eax, sh),
                    K::Srliw => dynasm!(a ; .arch x64 ; shr eax, sh),
                    _ => dynasm!(a ; .arch x64 ; sar eax, sh),
                }
                dynasm!(a ; .arch x64 ; movsxd rax, eax ; mov [rdi + rd], rax);
            }
            K::Addw | K::Subw | K::Mulw => {
                dynasm!(a ; .arch x64 ; mov eax, [rdi + rs1]);
                match op.kind {
                    K::Addw => dynasm!(a ; .arch x64 ; add eax, [rdi + rs2]),
                    K::Subw => dynasm!(a ; .arch x64 ; sub eax, [rdi + rs2]),
                    _ => dynasm!(a ; .arch x64 ; imul eax, [rdi + rs2]),
                }
                dynasm!(a ; .arch x64 ; movsxd rax, eax ; mov [rdi + rd], rax);
            }
            K::Sllw | K::Srlw | K::Sraw => {
                // 32-bit shift counts are masked to 5 bits, as RISC-V's W shifts are.
                dynasm!(a ; .arch x64 ; mov ecx, [rdi + rs2] ; mov eax, [rdi + rs1]);
                match op.kind {
                    K::Sllw => dynasm!(a ; .arch x64 ; shl eax, cl),
                    K::Srlw => dynasm!(a ; .arch x64 ; shr eax, cl),
                    _ => dynasm!(a ; .arch x64 ; sar eax, cl),
                }
                dynasm!(a ; .arch x64 ; movsxd rax, eax ; mov [rdi + rd], rax);
            }
            K::Mulh | K::Mulhu => {
                dynasm!(a ; .arch x64 ; mov rax, [rdi + rs1]);
                if op.kind == K::Mulh {
                    dynasm!(a ; .arch x64 ; imul QWORD [rdi + rs2]);
                } else {
                    dynasm!(a ; .arch x64 ; mul QWORD [rdi + rs2]);
                }
                dynasm!(a ; .arch x64 ; mov [rdi + rd], rdx);
            }
            K::Div | K::Divu | K::Rem | K::Remu | K::Divw | K::Divuw | K::Remw | K::Remuw => {
                emit_div(a, op)
            }
            K::Fence => {}
            _ => unreachable!("supported() admitted {:?}", op.kind),
        }
    }
    if !ended {
        dynasm!(a
            ; .arch x64
            ; lea rax, [rsi + end_off as i32]
            ; jmp extern next_block
        );
    }
    for s in stubs {
        match s {
            Stub::Resume(l, i) => {
                dynasm!(a ; .arch x64 ; =>l);
                stop(a, i);
            }
            Stub::Taken(l, disp, untaken) => dynasm!(a
                ; .arch x64
                ; =>l
                ; lea rax, [rsi + disp]
                ; sub QWORD [rdi + INSTRET], untaken as i32
                ; jmp extern next_block
            ),
        }
    }
    let this = blk as *const Block as i64;
    dynasm!(a
        ; .arch x64
        ; =>stopped
        ; mov rcx, QWORD this
        ; mov [rdi + STOPPED], rcx
        ; ret
    );
}

/// The run loop's fast path: with the new pc in rax, store it; then, unless the budget is
/// used up or something asks for attention, find the next block in the jump cache (same index
/// and tag as `Hart::lookup_block`), and if it is compiled, count its ops and jump to it.
/// Otherwise return 0 to the run loop.
fn emit_next_block(a: &mut Asm, at: DynamicLabel) {
    let to_run_loop = a.new_dynamic_label();
    dynasm!(a
        ; .arch x64
        ; =>at
        ; mov [rdi + PC], rax
        ; mov rcx, [rdi + INSTRET]
        ; cmp rcx, [rdi + BUDGET_END]
        ; jae =>to_run_loop
        ; cmp BYTE [rdi + LOCAL_ATTENTION], 0
        ; jne =>to_run_loop
        ; mov rdx, [rdi + ATTENTION]
        ; cmp DWORD [rdx], 0
        ; jne =>to_run_loop
        ; mov rdx, rax
        ; shr rdx, 1
        ; and edx, (JC_SIZE - 1) as i32
        ; lea rdx, [rdx + rdx * 2]
        ; mov rcx, [rdi + JC]
        ; lea rdx, [rcx + rdx * 8]
        ; cmp rax, [rdx]
        ; jne =>to_run_loop
        ; mov rcx, [rdi + JC_TAG]
        ; cmp rcx, [rdx + 8]
        ; jne =>to_run_loop
        ; mov rdx, [rdx + 16]
        ; mov r11, [rdx + BLOCK_CODE]
        ; test r11, r11
        ; jz =>to_run_loop
        ; mov rcx, [rdx + BLOCK_OPS]
        ; add [rdi + INSTRET], rcx
        ; mov rsi, rax
        ; jmp r11
        ; =>to_run_loop
        ; xor eax, eax
        ; ret
    );
}

/// Leaves the host address of `x[rs1] + imm` in rax, or jumps to `miss` when the TLB has no
/// entry for it or the access crosses the page (the interpreter's slow path handles both).
fn emit_translate(a: &mut Asm, rs1: i32, imm: i32, size: i32, write: bool, miss: DynamicLabel) {
    dynasm!(a ; .arch x64 ; mov rax, [rdi + rs1]);
    if imm != 0 {
        dynasm!(a ; .arch x64 ; add rax, imm);
    }
    // The tag is compared with the page of the access's last byte: an access that crosses
    // into the next page misses (QEMU's softmmu does the same).
    dynasm!(a
        ; .arch x64
        ; mov rcx, rax
        ; shr rcx, 12
        ; and ecx, (TLB_SIZE - 1) as i32
        ; lea rcx, [rcx + rcx * 2]
        ; lea rdx, [rax + size - 1]
        ; and rdx, -4096
        ; or rdx, r10
    );
    if write {
        dynasm!(a ; .arch x64 ; lea rcx, [r9 + rcx * 8]);
    } else {
        dynasm!(a ; .arch x64 ; lea rcx, [r8 + rcx * 8]);
    }
    dynasm!(a ; .arch x64 ; cmp rdx, [rcx] ; jne =>miss);
    dynasm!(a ; .arch x64 ; add rax, [rcx + 8]);
}

/// Division with RISC-V's results for a zero divisor (quotient all ones, remainder the
/// dividend) and for overflow (quotient the dividend, remainder 0); x86 would fault on both.
fn emit_div(a: &mut Asm, op: &Op) {
    let (rd, rs1, rs2) = (r(op.rd), r(op.rs1), r(op.rs2));
    let word = matches!(op.kind, K::Divw | K::Divuw | K::Remw | K::Remuw);
    let signed = matches!(op.kind, K::Div | K::Rem | K::Divw | K::Remw);
    let rem = matches!(op.kind, K::Rem | K::Remu | K::Remw | K::Remuw);
    let zero = a.new_dynamic_label();
    let done = a.new_dynamic_label();
    let minus_one = a.new_dynamic_label();
    if word {
        dynasm!(a ; .arch x64 ; mov eax, [rdi + rs1] ; mov ecx, [rdi + rs2] ; test ecx, ecx ; jz =>zero);
    } else {
        dynasm!(a ; .arch x64 ; mov rax, [rdi + rs1] ; mov rcx, [rdi + rs2] ; test rcx, rcx ; jz =>zero);
    }
    match (word, signed) {
        (false, true) => dynasm!(a ; .arch x64 ; cmp rcx, -1 ; je =>minus_one ; cqo ; idiv rcx),
        (false, false) => dynasm!(a ; .arch x64 ; xor edx, edx ; div rcx),
        (true, true) => dynasm!(a ; .arch x64 ; cmp ecx, -1 ; je =>minus_one ; cdq ; idiv ecx),
        (true, false) => dynasm!(a ; .arch x64 ; xor edx, edx ; div ecx),
    }
    // Result: rax (quotient) or rdx (remainder), sign-extended from 32 bits for W ops.
    if rem {
        dynasm!(a ; .arch x64 ; mov rax, rdx);
    }
    dynasm!(a ; .arch x64 ; =>done);
    if word {
        dynasm!(a ; .arch x64 ; movsxd rax, eax);
    }
    dynasm!(a ; .arch x64 ; mov [rdi + rd], rax);
    let out = a.new_dynamic_label();
    dynasm!(a ; .arch x64 ; jmp =>out);
    // Divisor 0: quotient all ones, remainder the dividend (still in rax).
    dynasm!(a ; .arch x64 ; =>zero);
    if !rem {
        dynasm!(a ; .arch x64 ; mov rax, -1);
    }
    dynasm!(a ; .arch x64 ; jmp =>done);
    // Divisor -1: quotient -dividend (wrapping, which covers MIN / -1), remainder 0.
    dynasm!(a ; .arch x64 ; =>minus_one);
    if rem {
        dynasm!(a ; .arch x64 ; xor eax, eax);
    } else if word {
        dynasm!(a ; .arch x64 ; neg eax);
    } else {
        dynasm!(a ; .arch x64 ; neg rax);
    }
    dynasm!(a ; .arch x64 ; jmp =>done ; =>out);
}
