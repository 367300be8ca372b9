//! An RV64GC instruction encoder for tests that write guest code by hand.
//!
//! Every encoder follows the RISC-V unprivileged spec (chapter "RV32/64G Instruction Set
//! Listings" and the RVC chapter); `tests/gnu_as.rs` checks each of them against
//! `riscv64-unknown-elf-as`. Immediates are given as the assembler takes them (byte offsets
//! for branches, loads and stores; the 20-bit field for LUI/AUIPC) and out-of-range values
//! panic, so a typo in a test cannot silently encode something else. Registers (x and f)
//! and CSR numbers are `u32`s: the named constants below, or plain numbers.

// ------------------------------------------------------------------------------------------
// Registers
// ------------------------------------------------------------------------------------------

pub const ZERO: u32 = 0;
pub const RA: u32 = 1;
pub const SP: u32 = 2;
pub const GP: u32 = 3;
pub const TP: u32 = 4;
pub const T0: u32 = 5;
pub const T1: u32 = 6;
pub const T2: u32 = 7;
pub const S0: u32 = 8;
pub const S1: u32 = 9;
pub const A0: u32 = 10;
pub const A1: u32 = 11;
pub const A2: u32 = 12;
pub const A3: u32 = 13;
pub const A4: u32 = 14;
pub const A5: u32 = 15;
pub const A6: u32 = 16;
pub const A7: u32 = 17;
pub const S2: u32 = 18;
pub const S3: u32 = 19;
pub const S4: u32 = 20;
pub const S5: u32 = 21;
pub const S6: u32 = 22;
pub const S7: u32 = 23;
pub const S8: u32 = 24;
pub const S9: u32 = 25;
pub const S10: u32 = 26;
pub const S11: u32 = 27;
pub const T3: u32 = 28;
pub const T4: u32 = 29;
pub const T5: u32 = 30;
pub const T6: u32 = 31;

/// Rounding modes (the rm field).
pub const RNE: u32 = 0;
pub const RTZ: u32 = 1;
pub const RDN: u32 = 2;
pub const RUP: u32 = 3;
pub const RMM: u32 = 4;
pub const DYN: u32 = 7;

/// CSR numbers (also re-exported at the top of this module).
pub mod csr {
    pub const FFLAGS: u32 = 0x001;
    pub const FRM: u32 = 0x002;
    pub const FCSR: u32 = 0x003;
    pub const CYCLE: u32 = 0xc00;
    pub const TIME: u32 = 0xc01;
    pub const INSTRET: u32 = 0xc02;
    pub const SSTATUS: u32 = 0x100;
    pub const SIE: u32 = 0x104;
    pub const STVEC: u32 = 0x105;
    pub const SCOUNTEREN: u32 = 0x106;
    pub const SSCRATCH: u32 = 0x140;
    pub const SEPC: u32 = 0x141;
    pub const SCAUSE: u32 = 0x142;
    pub const STVAL: u32 = 0x143;
    pub const SIP: u32 = 0x144;
    pub const SATP: u32 = 0x180;
    pub const MSTATUS: u32 = 0x300;
    pub const MISA: u32 = 0x301;
    pub const MEDELEG: u32 = 0x302;
    pub const MIDELEG: u32 = 0x303;
    pub const MIE: u32 = 0x304;
    pub const MTVEC: u32 = 0x305;
    pub const MCOUNTEREN: u32 = 0x306;
    pub const MSCRATCH: u32 = 0x340;
    pub const MEPC: u32 = 0x341;
    pub const MCAUSE: u32 = 0x342;
    pub const MTVAL: u32 = 0x343;
    pub const MIP: u32 = 0x344;
    pub const MCYCLE: u32 = 0xb00;
    pub const MINSTRET: u32 = 0xb02;
    pub const MHARTID: u32 = 0xf14;
}
pub use csr::*;

// ------------------------------------------------------------------------------------------
// Field helpers
// ------------------------------------------------------------------------------------------

fn reg(r: u32) -> u32 {
    assert!(r < 32, "register x{r} out of range");
    r
}

/// Checks that `imm` fits a signed field of `bits` bits and is a multiple of `align`.
fn simm(imm: i64, bits: u32, align: i64) -> u32 {
    let lo = -(1i64 << (bits - 1));
    let hi = (1i64 << (bits - 1)) - 1;
    assert!(
        (lo..=hi).contains(&imm) && imm % align == 0,
        "immediate {imm} does not fit a signed {bits}-bit field aligned to {align}"
    );
    (imm as u32) & ((1u32 << bits) - 1)
}

/// Checks that `imm` fits an unsigned field of `bits` bits and is a multiple of `align`.
fn uimm(imm: i64, bits: u32, align: i64) -> u32 {
    assert!(
        (0..(1i64 << bits)).contains(&imm) && imm % align == 0,
        "immediate {imm} does not fit an unsigned {bits}-bit field aligned to {align}"
    );
    imm as u32
}

fn bit(v: u32, n: u32) -> u32 {
    (v >> n) & 1
}

fn bits(v: u32, hi: u32, lo: u32) -> u32 {
    (v >> lo) & ((1 << (hi - lo + 1)) - 1)
}

// ------------------------------------------------------------------------------------------
// 32-bit formats
// ------------------------------------------------------------------------------------------

pub fn r_type(opcode: u32, f3: u32, f7: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    (f7 << 25) | (reg(rs2) << 20) | (reg(rs1) << 15) | (f3 << 12) | (reg(rd) << 7) | opcode
}

pub fn i_type(opcode: u32, f3: u32, rd: u32, rs1: u32, imm: i64) -> u32 {
    (simm(imm, 12, 1) << 20) | (reg(rs1) << 15) | (f3 << 12) | (reg(rd) << 7) | opcode
}

pub fn s_type(opcode: u32, f3: u32, rs1: u32, rs2: u32, imm: i64) -> u32 {
    let v = simm(imm, 12, 1);
    (bits(v, 11, 5) << 25)
        | (reg(rs2) << 20)
        | (reg(rs1) << 15)
        | (f3 << 12)
        | (bits(v, 4, 0) << 7)
        | opcode
}

pub fn b_type(f3: u32, rs1: u32, rs2: u32, off: i64) -> u32 {
    let v = simm(off, 13, 2);
    (bit(v, 12) << 31)
        | (bits(v, 10, 5) << 25)
        | (reg(rs2) << 20)
        | (reg(rs1) << 15)
        | (f3 << 12)
        | (bits(v, 4, 1) << 8)
        | (bit(v, 11) << 7)
        | 0x63
}

/// U-type: `imm20` is the 20-bit field (the assembler's operand), -2^19..2^20.
pub fn u_type(opcode: u32, rd: u32, imm20: i64) -> u32 {
    assert!(
        (-(1i64 << 19)..(1i64 << 20)).contains(&imm20),
        "U immediate {imm20:#x} out of range"
    );
    ((imm20 as u32) << 12) | (reg(rd) << 7) | opcode
}

pub fn j_type(rd: u32, off: i64) -> u32 {
    let v = simm(off, 21, 2);
    (bit(v, 20) << 31)
        | (bits(v, 10, 1) << 21)
        | (bit(v, 11) << 20)
        | (bits(v, 19, 12) << 12)
        | (reg(rd) << 7)
        | 0x6f
}

// ------------------------------------------------------------------------------------------
// RV64I
// ------------------------------------------------------------------------------------------

pub fn lui(rd: u32, imm20: i64) -> u32 {
    u_type(0x37, rd, imm20)
}
pub fn auipc(rd: u32, imm20: i64) -> u32 {
    u_type(0x17, rd, imm20)
}
pub fn jal(rd: u32, off: i64) -> u32 {
    j_type(rd, off)
}
/// `j off` = `jal x0, off`.
pub fn j(off: i64) -> u32 {
    jal(ZERO, off)
}
pub fn jalr(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x67, 0, rd, rs1, imm)
}
pub fn beq(rs1: u32, rs2: u32, off: i64) -> u32 {
    b_type(0, rs1, rs2, off)
}
pub fn bne(rs1: u32, rs2: u32, off: i64) -> u32 {
    b_type(1, rs1, rs2, off)
}
pub fn blt(rs1: u32, rs2: u32, off: i64) -> u32 {
    b_type(4, rs1, rs2, off)
}
pub fn bge(rs1: u32, rs2: u32, off: i64) -> u32 {
    b_type(5, rs1, rs2, off)
}
pub fn bltu(rs1: u32, rs2: u32, off: i64) -> u32 {
    b_type(6, rs1, rs2, off)
}
pub fn bgeu(rs1: u32, rs2: u32, off: i64) -> u32 {
    b_type(7, rs1, rs2, off)
}

/// Branch conditions (funct3), for code that picks the branch at run time (an assembler's
/// fix-ups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Eq = 0,
    Ne = 1,
    Lt = 4,
    Ge = 5,
    Ltu = 6,
    Geu = 7,
}

/// `b<cond> rs1, rs2, off`.
pub fn branch(c: Cond, rs1: u32, rs2: u32, off: i64) -> u32 {
    b_type(c as u32, rs1, rs2, off)
}
pub fn lb(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x03, 0, rd, rs1, imm)
}
pub fn lh(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x03, 1, rd, rs1, imm)
}
pub fn lw(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x03, 2, rd, rs1, imm)
}
pub fn ld(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x03, 3, rd, rs1, imm)
}
pub fn lbu(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x03, 4, rd, rs1, imm)
}
pub fn lhu(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x03, 5, rd, rs1, imm)
}
pub fn lwu(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x03, 6, rd, rs1, imm)
}
pub fn sb(rs2: u32, rs1: u32, imm: i64) -> u32 {
    s_type(0x23, 0, rs1, rs2, imm)
}
pub fn sh(rs2: u32, rs1: u32, imm: i64) -> u32 {
    s_type(0x23, 1, rs1, rs2, imm)
}
pub fn sw(rs2: u32, rs1: u32, imm: i64) -> u32 {
    s_type(0x23, 2, rs1, rs2, imm)
}
pub fn sd(rs2: u32, rs1: u32, imm: i64) -> u32 {
    s_type(0x23, 3, rs1, rs2, imm)
}
pub fn addi(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x13, 0, rd, rs1, imm)
}
pub fn slti(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x13, 2, rd, rs1, imm)
}
pub fn sltiu(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x13, 3, rd, rs1, imm)
}
pub fn xori(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x13, 4, rd, rs1, imm)
}
pub fn ori(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x13, 6, rd, rs1, imm)
}
pub fn andi(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x13, 7, rd, rs1, imm)
}
pub fn slli(rd: u32, rs1: u32, sh: u32) -> u32 {
    assert!(sh < 64);
    (sh << 20) | (reg(rs1) << 15) | (1 << 12) | (reg(rd) << 7) | 0x13
}
pub fn srli(rd: u32, rs1: u32, sh: u32) -> u32 {
    assert!(sh < 64);
    (sh << 20) | (reg(rs1) << 15) | (5 << 12) | (reg(rd) << 7) | 0x13
}
pub fn srai(rd: u32, rs1: u32, sh: u32) -> u32 {
    assert!(sh < 64);
    (0x10 << 26) | (sh << 20) | (reg(rs1) << 15) | (5 << 12) | (reg(rd) << 7) | 0x13
}
pub fn add(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 0, 0, rd, rs1, rs2)
}
pub fn sub(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 0, 0x20, rd, rs1, rs2)
}
pub fn sll(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 1, 0, rd, rs1, rs2)
}
pub fn slt(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 2, 0, rd, rs1, rs2)
}
pub fn sltu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 3, 0, rd, rs1, rs2)
}
pub fn xor(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 4, 0, rd, rs1, rs2)
}
pub fn srl(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 5, 0, rd, rs1, rs2)
}
pub fn sra(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 5, 0x20, rd, rs1, rs2)
}
pub fn or(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 6, 0, rd, rs1, rs2)
}
pub fn and(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 7, 0, rd, rs1, rs2)
}
pub fn addiw(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x1b, 0, rd, rs1, imm)
}
pub fn slliw(rd: u32, rs1: u32, sh: u32) -> u32 {
    assert!(sh < 32);
    (sh << 20) | (reg(rs1) << 15) | (1 << 12) | (reg(rd) << 7) | 0x1b
}
pub fn srliw(rd: u32, rs1: u32, sh: u32) -> u32 {
    assert!(sh < 32);
    (sh << 20) | (reg(rs1) << 15) | (5 << 12) | (reg(rd) << 7) | 0x1b
}
pub fn sraiw(rd: u32, rs1: u32, sh: u32) -> u32 {
    assert!(sh < 32);
    (0x20 << 25) | (sh << 20) | (reg(rs1) << 15) | (5 << 12) | (reg(rd) << 7) | 0x1b
}
pub fn addw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 0, 0, rd, rs1, rs2)
}
pub fn subw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 0, 0x20, rd, rs1, rs2)
}
pub fn sllw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 1, 0, rd, rs1, rs2)
}
pub fn srlw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 5, 0, rd, rs1, rs2)
}
pub fn sraw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 5, 0x20, rd, rs1, rs2)
}
/// `fence pred, succ` with the 4-bit I/O/R/W sets.
pub fn fence(pred: u32, succ: u32) -> u32 {
    assert!(pred < 16 && succ < 16);
    (pred << 24) | (succ << 20) | 0x0f
}
pub fn fence_i() -> u32 {
    0x0000_100f
}
pub fn ecall() -> u32 {
    0x0000_0073
}
pub fn ebreak() -> u32 {
    0x0010_0073
}
pub fn sret() -> u32 {
    0x1020_0073
}
pub fn mret() -> u32 {
    0x3020_0073
}
pub fn wfi() -> u32 {
    0x1050_0073
}
pub fn sfence_vma(rs1: u32, rs2: u32) -> u32 {
    r_type(0x73, 0, 0x09, 0, rs1, rs2)
}
pub fn nop() -> u32 {
    addi(ZERO, ZERO, 0)
}

// ------------------------------------------------------------------------------------------
// Zicsr
// ------------------------------------------------------------------------------------------

fn csr_type(f3: u32, rd: u32, csr: u32, src: u32) -> u32 {
    assert!(csr < 0x1000 && src < 32);
    (csr << 20) | (src << 15) | (f3 << 12) | (reg(rd) << 7) | 0x73
}
pub fn csrrw(rd: u32, csr: u32, rs1: u32) -> u32 {
    csr_type(1, rd, csr, rs1)
}
pub fn csrrs(rd: u32, csr: u32, rs1: u32) -> u32 {
    csr_type(2, rd, csr, rs1)
}
pub fn csrrc(rd: u32, csr: u32, rs1: u32) -> u32 {
    csr_type(3, rd, csr, rs1)
}
pub fn csrrwi(rd: u32, csr: u32, uimm: u32) -> u32 {
    csr_type(5, rd, csr, uimm)
}
pub fn csrrsi(rd: u32, csr: u32, uimm: u32) -> u32 {
    csr_type(6, rd, csr, uimm)
}
pub fn csrrci(rd: u32, csr: u32, uimm: u32) -> u32 {
    csr_type(7, rd, csr, uimm)
}
/// `csrr rd, csr` = `csrrs rd, csr, x0`.
pub fn csrr(rd: u32, csr: u32) -> u32 {
    csrrs(rd, csr, ZERO)
}
/// `csrw csr, rs1` = `csrrw x0, csr, rs1`.
pub fn csrw(csr: u32, rs1: u32) -> u32 {
    csrrw(ZERO, csr, rs1)
}
/// `csrs csr, rs1` = `csrrs x0, csr, rs1`.
pub fn csrs(csr: u32, rs1: u32) -> u32 {
    csrrs(ZERO, csr, rs1)
}
/// `csrc csr, rs1` = `csrrc x0, csr, rs1`.
pub fn csrc(csr: u32, rs1: u32) -> u32 {
    csrrc(ZERO, csr, rs1)
}

// ------------------------------------------------------------------------------------------
// RV64M
// ------------------------------------------------------------------------------------------

pub fn mul(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 0, 1, rd, rs1, rs2)
}
pub fn mulh(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 1, 1, rd, rs1, rs2)
}
pub fn mulhsu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 2, 1, rd, rs1, rs2)
}
pub fn mulhu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 3, 1, rd, rs1, rs2)
}
pub fn div(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 4, 1, rd, rs1, rs2)
}
pub fn divu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 5, 1, rd, rs1, rs2)
}
pub fn rem(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 6, 1, rd, rs1, rs2)
}
pub fn remu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x33, 7, 1, rd, rs1, rs2)
}
pub fn mulw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 0, 1, rd, rs1, rs2)
}
pub fn divw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 4, 1, rd, rs1, rs2)
}
pub fn divuw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 5, 1, rd, rs1, rs2)
}
pub fn remw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 6, 1, rd, rs1, rs2)
}
pub fn remuw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x3b, 7, 1, rd, rs1, rs2)
}

// ------------------------------------------------------------------------------------------
// RV64A (aq = rl = 0)
// ------------------------------------------------------------------------------------------

fn amo(f5: u32, f3: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(0x2f, f3, f5 << 2, rd, rs1, rs2)
}
pub fn lr_w(rd: u32, rs1: u32) -> u32 {
    amo(0x02, 2, rd, rs1, 0)
}
pub fn sc_w(rd: u32, rs2: u32, rs1: u32) -> u32 {
    amo(0x03, 2, rd, rs1, rs2)
}
pub fn lr_d(rd: u32, rs1: u32) -> u32 {
    amo(0x02, 3, rd, rs1, 0)
}
pub fn sc_d(rd: u32, rs2: u32, rs1: u32) -> u32 {
    amo(0x03, 3, rd, rs1, rs2)
}

/// The nine AMO operations with their funct5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmoOp {
    Swap = 0x01,
    Add = 0x00,
    Xor = 0x04,
    And = 0x0c,
    Or = 0x08,
    Min = 0x10,
    Max = 0x14,
    Minu = 0x18,
    Maxu = 0x1c,
}

impl AmoOp {
    pub const ALL: [AmoOp; 9] = [
        AmoOp::Swap,
        AmoOp::Add,
        AmoOp::Xor,
        AmoOp::And,
        AmoOp::Or,
        AmoOp::Min,
        AmoOp::Max,
        AmoOp::Minu,
        AmoOp::Maxu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AmoOp::Swap => "amoswap",
            AmoOp::Add => "amoadd",
            AmoOp::Xor => "amoxor",
            AmoOp::And => "amoand",
            AmoOp::Or => "amoor",
            AmoOp::Min => "amomin",
            AmoOp::Max => "amomax",
            AmoOp::Minu => "amominu",
            AmoOp::Maxu => "amomaxu",
        }
    }
}

/// `amo<op>.w rd, rs2, (rs1)`.
pub fn amo_w(op: AmoOp, rd: u32, rs2: u32, rs1: u32) -> u32 {
    amo(op as u32, 2, rd, rs1, rs2)
}
/// `amo<op>.d rd, rs2, (rs1)`.
pub fn amo_d(op: AmoOp, rd: u32, rs2: u32, rs1: u32) -> u32 {
    amo(op as u32, 3, rd, rs1, rs2)
}

// ------------------------------------------------------------------------------------------
// F and D (register operands are f-register numbers unless the name says x)
// ------------------------------------------------------------------------------------------

pub fn flw(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x07, 2, rd, rs1, imm)
}
pub fn fld(rd: u32, rs1: u32, imm: i64) -> u32 {
    i_type(0x07, 3, rd, rs1, imm)
}
pub fn fsw(rs2: u32, rs1: u32, imm: i64) -> u32 {
    s_type(0x27, 2, rs1, rs2, imm)
}
pub fn fsd(rs2: u32, rs1: u32, imm: i64) -> u32 {
    s_type(0x27, 3, rs1, rs2, imm)
}
fn op_fp(f7: u32, rm: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    assert!(rm < 8);
    r_type(0x53, rm, f7, rd, rs1, rs2)
}
pub fn fadd_s(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x00, rm, rd, rs1, rs2)
}
pub fn fsub_s(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x04, rm, rd, rs1, rs2)
}
pub fn fmul_s(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x08, rm, rd, rs1, rs2)
}
pub fn fdiv_s(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x0c, rm, rd, rs1, rs2)
}
pub fn fadd_d(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x01, rm, rd, rs1, rs2)
}
pub fn fdiv_d(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x0d, rm, rd, rs1, rs2)
}
pub fn fsgnj_s(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x10, 0, rd, rs1, rs2)
}
/// `fmv.x.w xd, fs1`.
pub fn fmv_x_w(rd: u32, rs1: u32) -> u32 {
    op_fp(0x70, 0, rd, rs1, 0)
}
/// `fmv.w.x fd, xs1`.
pub fn fmv_w_x(rd: u32, rs1: u32) -> u32 {
    op_fp(0x78, 0, rd, rs1, 0)
}
/// `fmv.x.d xd, fs1`.
pub fn fmv_x_d(rd: u32, rs1: u32) -> u32 {
    op_fp(0x71, 0, rd, rs1, 0)
}
/// `fmv.d.x fd, xs1`.
pub fn fmv_d_x(rd: u32, rs1: u32) -> u32 {
    op_fp(0x79, 0, rd, rs1, 0)
}
/// `fcvt.w.s xd, fs1, rm`.
pub fn fcvt_w_s(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x60, rm, rd, rs1, 0)
}
/// `feq.s xd, fs1, fs2`.
pub fn feq_s(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x50, 2, rd, rs1, rs2)
}

// ------------------------------------------------------------------------------------------
// RVC (RV64). Register operands written rd'/rs1'/rs2' in the spec must be x8..x15 (f8..f15).
// ------------------------------------------------------------------------------------------

fn creg(r: u32) -> u16 {
    assert!(
        (8..16).contains(&r),
        "x{r} is not a compressed register (x8..x15)"
    );
    (r - 8) as u16
}

fn cfull(r: u32) -> u16 {
    reg(r) as u16
}

/// CL/CS format with a doubleword offset: `uimm[5:3]` at 12:10, `uimm[7:6]` at 6:5.
fn cl_d(f3: u16, r1: u32, r2: u32, off: i64) -> u16 {
    let u = uimm(off, 8, 8);
    (f3 << 13)
        | ((bits(u, 5, 3) as u16) << 10)
        | (creg(r1) << 7)
        | ((bits(u, 7, 6) as u16) << 5)
        | (creg(r2) << 2)
}

/// CL/CS format with a word offset: `uimm[5:3]` at 12:10, `uimm[2]` at 6, `uimm[6]` at 5.
fn cl_w(f3: u16, r1: u32, r2: u32, off: i64) -> u16 {
    let u = uimm(off, 7, 4);
    (f3 << 13)
        | ((bits(u, 5, 3) as u16) << 10)
        | (creg(r1) << 7)
        | ((bit(u, 2) as u16) << 6)
        | ((bit(u, 6) as u16) << 5)
        | (creg(r2) << 2)
}

/// `c.addi4spn rd', sp, nzuimm`.
pub fn c_addi4spn(rd: u32, imm: i64) -> u16 {
    c_addi4spn_raw(rd, uimm(imm, 10, 4))
}
/// Like [`c_addi4spn`] but allows the reserved immediate 0.
pub fn c_addi4spn_raw(rd: u32, u: u32) -> u16 {
    ((bits(u, 5, 4) as u16) << 11)
        | ((bits(u, 9, 6) as u16) << 7)
        | ((bit(u, 2) as u16) << 6)
        | ((bit(u, 3) as u16) << 5)
        | (creg(rd) << 2)
}
/// `c.fld fd', off(rs1')`.
pub fn c_fld(rd: u32, rs1: u32, off: i64) -> u16 {
    cl_d(1, rs1, rd, off)
}
/// `c.lw rd', off(rs1')`.
pub fn c_lw(rd: u32, rs1: u32, off: i64) -> u16 {
    cl_w(2, rs1, rd, off)
}
/// `c.ld rd', off(rs1')`.
pub fn c_ld(rd: u32, rs1: u32, off: i64) -> u16 {
    cl_d(3, rs1, rd, off)
}
/// `c.fsd fs2', off(rs1')`.
pub fn c_fsd(rs2: u32, rs1: u32, off: i64) -> u16 {
    cl_d(5, rs1, rs2, off)
}
/// `c.sw rs2', off(rs1')`.
pub fn c_sw(rs2: u32, rs1: u32, off: i64) -> u16 {
    cl_w(6, rs1, rs2, off)
}
/// `c.sd rs2', off(rs1')`.
pub fn c_sd(rs2: u32, rs1: u32, off: i64) -> u16 {
    cl_d(7, rs1, rs2, off)
}

/// CI format with a signed 6-bit immediate: `imm[5]` at 12, `imm[4:0]` at 6:2.
fn ci(f3: u16, op: u16, rd: u32, imm: i64) -> u16 {
    let v = simm(imm, 6, 1);
    (f3 << 13) | ((bit(v, 5) as u16) << 12) | (cfull(rd) << 7) | ((bits(v, 4, 0) as u16) << 2) | op
}

pub fn c_nop() -> u16 {
    0x0001
}
pub fn c_addi(rd: u32, imm: i64) -> u16 {
    ci(0, 1, rd, imm)
}
pub fn c_addiw(rd: u32, imm: i64) -> u16 {
    ci(1, 1, rd, imm)
}
pub fn c_li(rd: u32, imm: i64) -> u16 {
    ci(2, 1, rd, imm)
}
/// `c.addi16sp sp, nzimm`: `nzimm[9]` at 12, `nzimm[4|6|8:7|5]` at 6:2.
pub fn c_addi16sp(imm: i64) -> u16 {
    let v = simm(imm, 10, 16);
    (3 << 13)
        | ((bit(v, 9) as u16) << 12)
        | (2 << 7)
        | ((bit(v, 4) as u16) << 6)
        | ((bit(v, 6) as u16) << 5)
        | ((bits(v, 8, 7) as u16) << 3)
        | ((bit(v, 5) as u16) << 2)
        | 1
}
/// `c.lui rd, imm6`: `imm6` is the assembler operand, the 6-bit field `nzimm[17:12]` as a
/// signed value (-32..31, not 0); rd gets sext(imm6 << 12).
pub fn c_lui(rd: u32, imm6: i64) -> u16 {
    let v = simm(imm6, 6, 1);
    (3 << 13) | ((bit(v, 5) as u16) << 12) | (cfull(rd) << 7) | ((bits(v, 4, 0) as u16) << 2) | 1
}
fn c_shift(f3: u16, op: u16, f2: u16, rd: u16, sh: u32) -> u16 {
    assert!(sh < 64);
    (f3 << 13)
        | ((bit(sh, 5) as u16) << 12)
        | (f2 << 10)
        | (rd << 7)
        | ((bits(sh, 4, 0) as u16) << 2)
        | op
}
pub fn c_srli(rd: u32, sh: u32) -> u16 {
    c_shift(4, 1, 0, creg(rd), sh)
}
pub fn c_srai(rd: u32, sh: u32) -> u16 {
    c_shift(4, 1, 1, creg(rd), sh)
}
pub fn c_andi(rd: u32, imm: i64) -> u16 {
    let v = simm(imm, 6, 1);
    (4 << 13)
        | ((bit(v, 5) as u16) << 12)
        | (2 << 10)
        | (creg(rd) << 7)
        | ((bits(v, 4, 0) as u16) << 2)
        | 1
}
fn ca(b12: u16, f2: u16, rd: u32, rs2: u32) -> u16 {
    (4 << 13) | (b12 << 12) | (3 << 10) | (creg(rd) << 7) | (f2 << 5) | (creg(rs2) << 2) | 1
}
pub fn c_sub(rd: u32, rs2: u32) -> u16 {
    ca(0, 0, rd, rs2)
}
pub fn c_xor(rd: u32, rs2: u32) -> u16 {
    ca(0, 1, rd, rs2)
}
pub fn c_or(rd: u32, rs2: u32) -> u16 {
    ca(0, 2, rd, rs2)
}
pub fn c_and(rd: u32, rs2: u32) -> u16 {
    ca(0, 3, rd, rs2)
}
pub fn c_subw(rd: u32, rs2: u32) -> u16 {
    ca(1, 0, rd, rs2)
}
pub fn c_addw(rd: u32, rs2: u32) -> u16 {
    ca(1, 1, rd, rs2)
}
/// `c.j off`: `offset[11|4|9:8|10|6|7|3:1|5]` at 12:2.
pub fn c_j(off: i64) -> u16 {
    let v = simm(off, 12, 2);
    (5 << 13)
        | ((bit(v, 11) as u16) << 12)
        | ((bit(v, 4) as u16) << 11)
        | ((bits(v, 9, 8) as u16) << 9)
        | ((bit(v, 10) as u16) << 8)
        | ((bit(v, 6) as u16) << 7)
        | ((bit(v, 7) as u16) << 6)
        | ((bits(v, 3, 1) as u16) << 3)
        | ((bit(v, 5) as u16) << 2)
        | 1
}
/// CB branch: `offset[8|4:3]` at 12:10, `offset[7:6|2:1|5]` at 6:2.
fn cb(f3: u16, rs1: u32, off: i64) -> u16 {
    let v = simm(off, 9, 2);
    (f3 << 13)
        | ((bit(v, 8) as u16) << 12)
        | ((bits(v, 4, 3) as u16) << 10)
        | (creg(rs1) << 7)
        | ((bits(v, 7, 6) as u16) << 5)
        | ((bits(v, 2, 1) as u16) << 3)
        | ((bit(v, 5) as u16) << 2)
        | 1
}
pub fn c_beqz(rs1: u32, off: i64) -> u16 {
    cb(6, rs1, off)
}
pub fn c_bnez(rs1: u32, off: i64) -> u16 {
    cb(7, rs1, off)
}
pub fn c_slli(rd: u32, sh: u32) -> u16 {
    assert!(sh < 64);
    ((bit(sh, 5) as u16) << 12) | (cfull(rd) << 7) | ((bits(sh, 4, 0) as u16) << 2) | 2
}
/// CI stack-pointer load with a doubleword offset: `uimm[5]` at 12, `uimm[4:3|8:6]` at 6:2.
fn ci_sp_d(f3: u16, rd: u32, off: i64) -> u16 {
    let u = uimm(off, 9, 8);
    (f3 << 13)
        | ((bit(u, 5) as u16) << 12)
        | (cfull(rd) << 7)
        | ((bits(u, 4, 3) as u16) << 5)
        | ((bits(u, 8, 6) as u16) << 2)
        | 2
}
/// `c.fldsp fd, off(sp)`.
pub fn c_fldsp(rd: u32, off: i64) -> u16 {
    ci_sp_d(1, rd, off)
}
/// `c.lwsp rd, off(sp)`: `uimm[5]` at 12, `uimm[4:2|7:6]` at 6:2.
pub fn c_lwsp(rd: u32, off: i64) -> u16 {
    let u = uimm(off, 8, 4);
    (2 << 13)
        | ((bit(u, 5) as u16) << 12)
        | (cfull(rd) << 7)
        | ((bits(u, 4, 2) as u16) << 4)
        | ((bits(u, 7, 6) as u16) << 2)
        | 2
}
/// `c.ldsp rd, off(sp)`.
pub fn c_ldsp(rd: u32, off: i64) -> u16 {
    ci_sp_d(3, rd, off)
}
fn cr(b12: u16, r1: u32, r2: u32) -> u16 {
    (4 << 13) | (b12 << 12) | (cfull(r1) << 7) | (cfull(r2) << 2) | 2
}
pub fn c_jr(rs1: u32) -> u16 {
    cr(0, rs1, 0)
}
pub fn c_mv(rd: u32, rs2: u32) -> u16 {
    cr(0, rd, rs2)
}
pub fn c_ebreak() -> u16 {
    0x9002
}
pub fn c_jalr(rs1: u32) -> u16 {
    cr(1, rs1, 0)
}
pub fn c_add(rd: u32, rs2: u32) -> u16 {
    cr(1, rd, rs2)
}
/// CSS store with a doubleword offset: `uimm[5:3|8:6]` at 12:7.
fn css_d(f3: u16, rs2: u32, off: i64) -> u16 {
    let u = uimm(off, 9, 8);
    (f3 << 13)
        | ((bits(u, 5, 3) as u16) << 10)
        | ((bits(u, 8, 6) as u16) << 7)
        | (cfull(rs2) << 2)
        | 2
}
/// `c.fsdsp fs2, off(sp)`.
pub fn c_fsdsp(rs2: u32, off: i64) -> u16 {
    css_d(5, rs2, off)
}
/// `c.swsp rs2, off(sp)`: `uimm[5:2|7:6]` at 12:7.
pub fn c_swsp(rs2: u32, off: i64) -> u16 {
    let u = uimm(off, 8, 4);
    (6 << 13)
        | ((bits(u, 5, 2) as u16) << 9)
        | ((bits(u, 7, 6) as u16) << 7)
        | (cfull(rs2) << 2)
        | 2
}
/// `c.sdsp rs2, off(sp)`.
pub fn c_sdsp(rs2: u32, off: i64) -> u16 {
    css_d(7, rs2, off)
}
