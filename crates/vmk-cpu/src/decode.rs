//! Instruction decoder: 32-bit RV64GC encodings and every RV64 compressed form, decoded once
//! into [`Op`]s that the interpreter caches per block. Decoding never fails: reserved or
//! unknown encodings become [`K::Illegal`] carrying the instruction bits for `tval`.

use crate::fpu::FpOp;

/// `pause` (Zihintpause): FENCE with fm = 0, pred = W, succ = 0, rd = rs1 = 0.
pub const PAUSE_INSN: u32 = 0x0100_000f;

/// Integer register slot that absorbs writes to x0, so that ops need no `rd != 0` test.
pub const X_SINK: u8 = 32;

/// Operation kinds. `repr(u8)` keeps [`Op`] small and the dispatch `match` a jump table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum K {
    Illegal,
    Lui,
    Auipc,
    Jal,
    /// A JAL whose target is in the same page and was decoded into the same block: it only
    /// writes the link register; the next op is the target's.
    JalInline,
    Jalr,
    Beq,
    Bne,
    Blt,
    Bge,
    Bltu,
    Bgeu,
    Lb,
    Lh,
    Lw,
    Ld,
    Lbu,
    Lhu,
    Lwu,
    Sb,
    Sh,
    Sw,
    Sd,
    Addi,
    Slti,
    Sltiu,
    Xori,
    Ori,
    Andi,
    Slli,
    Srli,
    Srai,
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
    Addiw,
    Slliw,
    Srliw,
    Sraiw,
    Addw,
    Subw,
    Sllw,
    Srlw,
    Sraw,
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
    Mulw,
    Divw,
    Divuw,
    Remw,
    Remuw,
    Fence,
    /// The Zihintpause PAUSE hint (a FENCE with pred = W, succ = 0).
    Pause,
    FenceI,
    Ecall,
    Ebreak,
    Mret,
    Sret,
    Wfi,
    SfenceVma,
    /// CSR ops: `imm` holds the CSR number, `rs1` the register or the 5-bit immediate.
    Csrrw,
    Csrrs,
    Csrrc,
    Csrrwi,
    Csrrsi,
    Csrrci,
    LrW,
    ScW,
    LrD,
    ScD,
    /// AMOs: `rs3` holds the [`Amo`] operation.
    AmoW,
    AmoD,
    Flw,
    Fld,
    Fsw,
    Fsd,
    /// F/D compute: `fp` holds the [`FpOp`], `rm` the rounding mode field.
    Fp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Amo {
    Swap,
    Add,
    Xor,
    And,
    Or,
    Min,
    Max,
    Minu,
    Maxu,
}

impl Amo {
    pub fn from_u8(v: u8) -> Amo {
        match v {
            0 => Amo::Swap,
            1 => Amo::Add,
            2 => Amo::Xor,
            3 => Amo::And,
            4 => Amo::Or,
            5 => Amo::Min,
            6 => Amo::Max,
            7 => Amo::Minu,
            _ => Amo::Maxu,
        }
    }
}

/// One decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub kind: K,
    pub rd: u8,
    pub rs1: u8,
    pub rs2: u8,
    pub rs3: u8,
    pub rm: u8,
    /// Instruction length in bytes (2 or 4).
    pub len: u8,
    /// Byte offset of the instruction from the start of its block (negative after a followed
    /// backward jump).
    pub pc_off: i16,
    /// The F/D operation of a [`K::Fp`] op.
    pub fp: FpOp,
    /// The instruction bits, for `tval` when the op turns out to be illegal at run time.
    pub raw: u32,
    pub imm: i64,
}

impl Op {
    fn new(kind: K) -> Op {
        Op {
            kind,
            rd: X_SINK,
            rs1: 0,
            rs2: 0,
            rs3: 0,
            rm: 0,
            len: 4,
            pc_off: 0,
            fp: FpOp::FaddS,
            raw: 0,
            imm: 0,
        }
    }

    pub fn illegal(bits: u32, len: u8) -> Op {
        Op {
            imm: bits as i64,
            len,
            ..Op::new(K::Illegal)
        }
    }

    /// True for ops after which the block must end: unconditional control flow, and anything
    /// that can change privilege, translation, interrupt state or the instruction stream.
    /// Conditional branches do not end a block: the not-taken path continues in it and a taken
    /// branch leaves it early, which makes blocks longer (fewer lookups per instruction).
    pub fn ends_block(&self) -> bool {
        matches!(
            self.kind,
            K::Illegal
                | K::Jal
                | K::Jalr
                | K::FenceI
                | K::Pause
                | K::Ecall
                | K::Ebreak
                | K::Mret
                | K::Sret
                | K::Wfi
                | K::SfenceVma
                | K::Csrrw
                | K::Csrrs
                | K::Csrrc
                | K::Csrrwi
                | K::Csrrsi
                | K::Csrrci
        )
    }
}

fn rd_of(r: u32) -> u8 {
    if r == 0 {
        X_SINK
    } else {
        r as u8
    }
}

fn bits(i: u32, hi: u32, lo: u32) -> u32 {
    (i >> lo) & ((1 << (hi - lo + 1)) - 1)
}

fn sext(v: u64, width: u32) -> i64 {
    let s = 64 - width;
    ((v << s) as i64) >> s
}

fn r_type(kind: K, i: u32) -> Op {
    Op {
        rd: rd_of(bits(i, 11, 7)),
        rs1: bits(i, 19, 15) as u8,
        rs2: bits(i, 24, 20) as u8,
        ..Op::new(kind)
    }
}

fn i_type(kind: K, i: u32) -> Op {
    Op {
        rd: rd_of(bits(i, 11, 7)),
        rs1: bits(i, 19, 15) as u8,
        imm: (i as i32 >> 20) as i64,
        ..Op::new(kind)
    }
}

fn s_imm(i: u32) -> i64 {
    sext(((bits(i, 31, 25) << 5) | bits(i, 11, 7)) as u64, 12)
}

fn b_imm(i: u32) -> i64 {
    let v = (bits(i, 31, 31) << 12)
        | (bits(i, 7, 7) << 11)
        | (bits(i, 30, 25) << 5)
        | (bits(i, 11, 8) << 1);
    sext(v as u64, 13)
}

fn j_imm(i: u32) -> i64 {
    let v = (bits(i, 31, 31) << 20)
        | (bits(i, 19, 12) << 12)
        | (bits(i, 20, 20) << 11)
        | (bits(i, 30, 21) << 1);
    sext(v as u64, 21)
}

/// Decodes a 32-bit instruction.
pub fn decode32(i: u32) -> Op {
    Op {
        raw: i,
        ..decode32_inner(i)
    }
}

fn decode32_inner(i: u32) -> Op {
    let ill = Op::illegal(i, 4);
    let f3 = bits(i, 14, 12);
    let f7 = bits(i, 31, 25);
    match i & 0x7f {
        0x37 => Op {
            rd: rd_of(bits(i, 11, 7)),
            imm: (i & 0xffff_f000) as i32 as i64,
            ..Op::new(K::Lui)
        },
        0x17 => Op {
            rd: rd_of(bits(i, 11, 7)),
            imm: (i & 0xffff_f000) as i32 as i64,
            ..Op::new(K::Auipc)
        },
        0x6f => Op {
            rd: rd_of(bits(i, 11, 7)),
            imm: j_imm(i),
            ..Op::new(K::Jal)
        },
        0x67 if f3 == 0 => i_type(K::Jalr, i),
        0x63 => {
            let kind = match f3 {
                0 => K::Beq,
                1 => K::Bne,
                4 => K::Blt,
                5 => K::Bge,
                6 => K::Bltu,
                7 => K::Bgeu,
                _ => return ill,
            };
            Op {
                rs1: bits(i, 19, 15) as u8,
                rs2: bits(i, 24, 20) as u8,
                imm: b_imm(i),
                ..Op::new(kind)
            }
        }
        0x03 => {
            let kind = match f3 {
                0 => K::Lb,
                1 => K::Lh,
                2 => K::Lw,
                3 => K::Ld,
                4 => K::Lbu,
                5 => K::Lhu,
                6 => K::Lwu,
                _ => return ill,
            };
            i_type(kind, i)
        }
        0x23 => {
            let kind = match f3 {
                0 => K::Sb,
                1 => K::Sh,
                2 => K::Sw,
                3 => K::Sd,
                _ => return ill,
            };
            Op {
                rs1: bits(i, 19, 15) as u8,
                rs2: bits(i, 24, 20) as u8,
                imm: s_imm(i),
                ..Op::new(kind)
            }
        }
        0x13 => {
            let kind = match f3 {
                0 => K::Addi,
                2 => K::Slti,
                3 => K::Sltiu,
                4 => K::Xori,
                6 => K::Ori,
                7 => K::Andi,
                1 if bits(i, 31, 26) == 0 => K::Slli,
                5 if bits(i, 31, 26) == 0 => K::Srli,
                5 if bits(i, 31, 26) == 0x10 => K::Srai,
                _ => return ill,
            };
            let mut op = i_type(kind, i);
            if matches!(kind, K::Slli | K::Srli | K::Srai) {
                op.imm = bits(i, 25, 20) as i64;
            }
            op
        }
        0x1b => {
            let kind = match (f3, f7) {
                (0, _) => K::Addiw,
                (1, 0) => K::Slliw,
                (5, 0) => K::Srliw,
                (5, 0x20) => K::Sraiw,
                _ => return ill,
            };
            let mut op = i_type(kind, i);
            if kind != K::Addiw {
                op.imm = bits(i, 24, 20) as i64;
            }
            op
        }
        0x33 => {
            let kind = match (f7, f3) {
                (0, 0) => K::Add,
                (0x20, 0) => K::Sub,
                (0, 1) => K::Sll,
                (0, 2) => K::Slt,
                (0, 3) => K::Sltu,
                (0, 4) => K::Xor,
                (0, 5) => K::Srl,
                (0x20, 5) => K::Sra,
                (0, 6) => K::Or,
                (0, 7) => K::And,
                (1, 0) => K::Mul,
                (1, 1) => K::Mulh,
                (1, 2) => K::Mulhsu,
                (1, 3) => K::Mulhu,
                (1, 4) => K::Div,
                (1, 5) => K::Divu,
                (1, 6) => K::Rem,
                (1, 7) => K::Remu,
                _ => return ill,
            };
            r_type(kind, i)
        }
        0x3b => {
            let kind = match (f7, f3) {
                (0, 0) => K::Addw,
                (0x20, 0) => K::Subw,
                (0, 1) => K::Sllw,
                (0, 5) => K::Srlw,
                (0x20, 5) => K::Sraw,
                (1, 0) => K::Mulw,
                (1, 4) => K::Divw,
                (1, 5) => K::Divuw,
                (1, 6) => K::Remw,
                (1, 7) => K::Remuw,
                _ => return ill,
            };
            r_type(kind, i)
        }
        0x0f => match f3 {
            // FENCE (incl. FENCE.TSO and PAUSE hints): vCPUs run on a TSO host and every guest
            // access is a host access in program order, so no host fence is needed beyond the
            // one the AMO path issues.
            0 if i == PAUSE_INSN => Op::new(K::Pause),
            0 => Op::new(K::Fence),
            1 => Op::new(K::FenceI),
            _ => ill,
        },
        0x73 => decode_system(i),
        0x2f => decode_amo(i),
        0x07 => match f3 {
            2 => i_type_f(K::Flw, i),
            3 => i_type_f(K::Fld, i),
            _ => ill,
        },
        0x27 => {
            let kind = match f3 {
                2 => K::Fsw,
                3 => K::Fsd,
                _ => return ill,
            };
            Op {
                rs1: bits(i, 19, 15) as u8,
                rs2: bits(i, 24, 20) as u8,
                imm: s_imm(i),
                ..Op::new(kind)
            }
        }
        0x43 | 0x47 | 0x4b | 0x4f => decode_fma(i),
        0x53 => decode_opfp(i),
        _ => ill,
    }
}

fn i_type_f(kind: K, i: u32) -> Op {
    Op {
        rd: bits(i, 11, 7) as u8,
        rs1: bits(i, 19, 15) as u8,
        imm: (i as i32 >> 20) as i64,
        ..Op::new(kind)
    }
}

fn decode_system(i: u32) -> Op {
    let f3 = bits(i, 14, 12);
    let rd = bits(i, 11, 7);
    let rs1 = bits(i, 19, 15);
    if f3 == 0 {
        if bits(i, 31, 25) == 0x09 && rd == 0 {
            return Op {
                rs1: rs1 as u8,
                rs2: bits(i, 24, 20) as u8,
                ..Op::new(K::SfenceVma)
            };
        }
        if rd != 0 || rs1 != 0 {
            return Op::illegal(i, 4);
        }
        return match i >> 20 {
            0x000 => Op::new(K::Ecall),
            0x001 => Op::new(K::Ebreak),
            0x102 => Op::new(K::Sret),
            0x302 => Op::new(K::Mret),
            0x105 => Op::new(K::Wfi),
            _ => Op::illegal(i, 4),
        };
    }
    let kind = match f3 {
        1 => K::Csrrw,
        2 => K::Csrrs,
        3 => K::Csrrc,
        5 => K::Csrrwi,
        6 => K::Csrrsi,
        7 => K::Csrrci,
        _ => return Op::illegal(i, 4),
    };
    Op {
        rd: rd_of(rd),
        rs1: rs1 as u8,
        imm: (i >> 20) as i64,
        ..Op::new(kind)
    }
}

fn decode_amo(i: u32) -> Op {
    let f3 = bits(i, 14, 12);
    let f5 = bits(i, 31, 27);
    let wide = match f3 {
        2 => false,
        3 => true,
        _ => return Op::illegal(i, 4),
    };
    let base = r_type(K::AmoW, i);
    let (kind, amo) = match f5 {
        0x02 => {
            if bits(i, 24, 20) != 0 {
                return Op::illegal(i, 4);
            }
            (if wide { K::LrD } else { K::LrW }, Amo::Swap)
        }
        0x03 => (if wide { K::ScD } else { K::ScW }, Amo::Swap),
        0x01 => (K::AmoW, Amo::Swap),
        0x00 => (K::AmoW, Amo::Add),
        0x04 => (K::AmoW, Amo::Xor),
        0x0c => (K::AmoW, Amo::And),
        0x08 => (K::AmoW, Amo::Or),
        0x10 => (K::AmoW, Amo::Min),
        0x14 => (K::AmoW, Amo::Max),
        0x18 => (K::AmoW, Amo::Minu),
        0x1c => (K::AmoW, Amo::Maxu),
        _ => return Op::illegal(i, 4),
    };
    let kind = if kind == K::AmoW && wide {
        K::AmoD
    } else {
        kind
    };
    Op {
        kind,
        rs3: amo as u8,
        ..base
    }
}

fn valid_rm(rm: u32) -> bool {
    rm <= 4 || rm == 7
}

fn fp_op(op: FpOp, i: u32, rm_used: bool) -> Op {
    let rm = bits(i, 14, 12);
    if rm_used && !valid_rm(rm) {
        return Op::illegal(i, 4);
    }
    let rd = bits(i, 11, 7);
    Op {
        rd: if op.writes_int() { rd_of(rd) } else { rd as u8 },
        rs1: bits(i, 19, 15) as u8,
        rs2: bits(i, 24, 20) as u8,
        rs3: bits(i, 31, 27) as u8,
        rm: rm as u8,
        fp: op,
        ..Op::new(K::Fp)
    }
}

fn decode_fma(i: u32) -> Op {
    let dbl = match bits(i, 26, 25) {
        0 => false,
        1 => true,
        _ => return Op::illegal(i, 4),
    };
    let op = match (i & 0x7f, dbl) {
        (0x43, false) => FpOp::FmaddS,
        (0x47, false) => FpOp::FmsubS,
        (0x4b, false) => FpOp::FnmsubS,
        (0x4f, false) => FpOp::FnmaddS,
        (0x43, true) => FpOp::FmaddD,
        (0x47, true) => FpOp::FmsubD,
        (0x4b, true) => FpOp::FnmsubD,
        _ => FpOp::FnmaddD,
    };
    fp_op(op, i, true)
}

fn decode_opfp(i: u32) -> Op {
    use FpOp::*;
    let f7 = bits(i, 31, 25);
    let f3 = bits(i, 14, 12);
    let rs2 = bits(i, 24, 20);
    let ill = Op::illegal(i, 4);
    // (op, uses the rm field)
    let (op, rm_used) = match f7 {
        0x00 => (FaddS, true),
        0x04 => (FsubS, true),
        0x08 => (FmulS, true),
        0x0c => (FdivS, true),
        0x2c if rs2 == 0 => (FsqrtS, true),
        0x01 => (FaddD, true),
        0x05 => (FsubD, true),
        0x09 => (FmulD, true),
        0x0d => (FdivD, true),
        0x2d if rs2 == 0 => (FsqrtD, true),
        0x10 | 0x11 => {
            let d = f7 == 0x11;
            let op = match (f3, d) {
                (0, false) => FsgnjS,
                (1, false) => FsgnjnS,
                (2, false) => FsgnjxS,
                (0, true) => FsgnjD,
                (1, true) => FsgnjnD,
                (2, true) => FsgnjxD,
                _ => return ill,
            };
            (op, false)
        }
        0x14 | 0x15 => {
            let d = f7 == 0x15;
            let op = match (f3, d) {
                (0, false) => FminS,
                (1, false) => FmaxS,
                (0, true) => FminD,
                (1, true) => FmaxD,
                _ => return ill,
            };
            (op, false)
        }
        0x20 if rs2 == 1 => (FcvtSD, true),
        0x21 if rs2 == 0 => (FcvtDS, true),
        0x50 | 0x51 => {
            let d = f7 == 0x51;
            let op = match (f3, d) {
                (2, false) => FeqS,
                (1, false) => FltS,
                (0, false) => FleS,
                (2, true) => FeqD,
                (1, true) => FltD,
                (0, true) => FleD,
                _ => return ill,
            };
            (op, false)
        }
        0x60 | 0x61 => {
            let d = f7 == 0x61;
            let op = match (rs2, d) {
                (0, false) => FcvtWS,
                (1, false) => FcvtWuS,
                (2, false) => FcvtLS,
                (3, false) => FcvtLuS,
                (0, true) => FcvtWD,
                (1, true) => FcvtWuD,
                (2, true) => FcvtLD,
                (3, true) => FcvtLuD,
                _ => return ill,
            };
            (op, true)
        }
        0x68 | 0x69 => {
            let d = f7 == 0x69;
            let op = match (rs2, d) {
                (0, false) => FcvtSW,
                (1, false) => FcvtSWu,
                (2, false) => FcvtSL,
                (3, false) => FcvtSLu,
                (0, true) => FcvtDW,
                (1, true) => FcvtDWu,
                (2, true) => FcvtDL,
                (3, true) => FcvtDLu,
                _ => return ill,
            };
            (op, true)
        }
        0x70 | 0x71 if rs2 == 0 => {
            let d = f7 == 0x71;
            let op = match (f3, d) {
                (0, false) => FmvXW,
                (1, false) => FclassS,
                (0, true) => FmvXD,
                (1, true) => FclassD,
                _ => return ill,
            };
            (op, false)
        }
        0x78 | 0x79 if rs2 == 0 && f3 == 0 => (if f7 == 0x78 { FmvWX } else { FmvDX }, false),
        _ => return ill,
    };
    fp_op(op, i, rm_used)
}

/// Decodes a 16-bit compressed instruction into the op of its 32-bit expansion.
pub fn decode16(c: u16) -> Op {
    Op {
        raw: c as u32,
        ..decode16_inner(c)
    }
}

fn decode16_inner(c: u16) -> Op {
    let i = c as u32;
    let ill = Op::illegal(i, 2);
    let f3 = bits(i, 15, 13);
    let rdp = (bits(i, 4, 2) + 8) as u8; // rd' / rs2'
    let rs1p = (bits(i, 9, 7) + 8) as u8; // rs1' / rd'
    let r = bits(i, 11, 7); // full rd/rs1
    let rs2 = bits(i, 6, 2) as u8;
    let mk = |kind: K, rd: u8, rs1: u8, rs2: u8, imm: i64| Op {
        kind,
        rd,
        rs1,
        rs2,
        rs3: 0,
        rm: 0,
        len: 2,
        pc_off: 0,
        fp: FpOp::FaddS,
        raw: i,
        imm,
    };
    let imm6 = sext(((bits(i, 12, 12) << 5) | bits(i, 6, 2)) as u64, 6);
    let ld_off = ((bits(i, 12, 10) << 3) | (bits(i, 6, 5) << 6)) as i64; // c.ld/c.fld/c.sd/c.fsd
    let lw_off = ((bits(i, 12, 10) << 3) | (bits(i, 6, 6) << 2) | (bits(i, 5, 5) << 6)) as i64;
    match (i & 3, f3) {
        (0, 0) => {
            let nzuimm = (bits(i, 12, 11) << 4)
                | (bits(i, 10, 7) << 6)
                | (bits(i, 6, 6) << 2)
                | (bits(i, 5, 5) << 3);
            if nzuimm == 0 {
                return ill; // includes the all-zero illegal instruction
            }
            mk(K::Addi, rdp, 2, 0, nzuimm as i64)
        }
        (0, 1) => mk(K::Fld, rdp, rs1p, 0, ld_off),
        (0, 2) => mk(K::Lw, rdp, rs1p, 0, lw_off),
        (0, 3) => mk(K::Ld, rdp, rs1p, 0, ld_off),
        (0, 5) => mk(K::Fsd, X_SINK, rs1p, rdp, ld_off),
        (0, 6) => mk(K::Sw, X_SINK, rs1p, rdp, lw_off),
        (0, 7) => mk(K::Sd, X_SINK, rs1p, rdp, ld_off),
        (1, 0) => mk(K::Addi, rd_of(r), r as u8, 0, imm6), // c.nop when r == 0
        (1, 1) => {
            if r == 0 {
                return ill;
            }
            mk(K::Addiw, r as u8, r as u8, 0, imm6)
        }
        (1, 2) => mk(K::Addi, rd_of(r), 0, 0, imm6),
        (1, 3) => {
            if r == 2 {
                let v = (bits(i, 12, 12) << 9)
                    | (bits(i, 6, 6) << 4)
                    | (bits(i, 5, 5) << 6)
                    | (bits(i, 4, 3) << 7)
                    | (bits(i, 2, 2) << 5);
                if v == 0 {
                    return ill;
                }
                mk(K::Addi, 2, 2, 0, sext(v as u64, 10))
            } else {
                let v = (bits(i, 12, 12) << 17) | (bits(i, 6, 2) << 12);
                if v == 0 {
                    return ill;
                }
                mk(K::Lui, rd_of(r), 0, 0, sext(v as u64, 18))
            }
        }
        (1, 4) => {
            let shamt = ((bits(i, 12, 12) << 5) | bits(i, 6, 2)) as i64;
            match bits(i, 11, 10) {
                0 => mk(K::Srli, rs1p, rs1p, 0, shamt),
                1 => mk(K::Srai, rs1p, rs1p, 0, shamt),
                2 => mk(K::Andi, rs1p, rs1p, 0, imm6),
                _ => {
                    let kind = match (bits(i, 12, 12), bits(i, 6, 5)) {
                        (0, 0) => K::Sub,
                        (0, 1) => K::Xor,
                        (0, 2) => K::Or,
                        (0, 3) => K::And,
                        (1, 0) => K::Subw,
                        (1, 1) => K::Addw,
                        _ => return ill,
                    };
                    mk(kind, rs1p, rs1p, rdp, 0)
                }
            }
        }
        (1, 5) => {
            let v = (bits(i, 12, 12) << 11)
                | (bits(i, 11, 11) << 4)
                | (bits(i, 10, 9) << 8)
                | (bits(i, 8, 8) << 10)
                | (bits(i, 7, 7) << 6)
                | (bits(i, 6, 6) << 7)
                | (bits(i, 5, 3) << 1)
                | (bits(i, 2, 2) << 5);
            mk(K::Jal, X_SINK, 0, 0, sext(v as u64, 12))
        }
        (1, 6) | (1, 7) => {
            let v = (bits(i, 12, 12) << 8)
                | (bits(i, 11, 10) << 3)
                | (bits(i, 6, 5) << 6)
                | (bits(i, 4, 3) << 1)
                | (bits(i, 2, 2) << 5);
            let kind = if f3 == 6 { K::Beq } else { K::Bne };
            mk(kind, X_SINK, rs1p, 0, sext(v as u64, 9))
        }
        (2, 0) => {
            let shamt = ((bits(i, 12, 12) << 5) | bits(i, 6, 2)) as i64;
            mk(K::Slli, rd_of(r), r as u8, 0, shamt)
        }
        (2, 1) => {
            let off = (bits(i, 12, 12) << 5) | (bits(i, 6, 5) << 3) | (bits(i, 4, 2) << 6);
            mk(K::Fld, r as u8, 2, 0, off as i64)
        }
        (2, 2) => {
            if r == 0 {
                return ill;
            }
            let off = (bits(i, 12, 12) << 5) | (bits(i, 6, 4) << 2) | (bits(i, 3, 2) << 6);
            mk(K::Lw, r as u8, 2, 0, off as i64)
        }
        (2, 3) => {
            if r == 0 {
                return ill;
            }
            let off = (bits(i, 12, 12) << 5) | (bits(i, 6, 5) << 3) | (bits(i, 4, 2) << 6);
            mk(K::Ld, r as u8, 2, 0, off as i64)
        }
        (2, 4) => {
            let hi = bits(i, 12, 12);
            match (hi, r, rs2) {
                (0, 0, 0) => ill,
                (0, _, 0) => mk(K::Jalr, X_SINK, r as u8, 0, 0),
                (0, _, _) => mk(K::Add, rd_of(r), 0, rs2, 0),
                (1, 0, 0) => mk(K::Ebreak, X_SINK, 0, 0, 0),
                (1, _, 0) => mk(K::Jalr, 1, r as u8, 0, 0),
                _ => mk(K::Add, rd_of(r), r as u8, rs2, 0),
            }
        }
        (2, 5) => {
            let off = (bits(i, 12, 10) << 3) | (bits(i, 9, 7) << 6);
            mk(K::Fsd, X_SINK, 2, rs2, off as i64)
        }
        (2, 6) => {
            let off = (bits(i, 12, 9) << 2) | (bits(i, 8, 7) << 6);
            mk(K::Sw, X_SINK, 2, rs2, off as i64)
        }
        (2, 7) => {
            let off = (bits(i, 12, 10) << 3) | (bits(i, 9, 7) << 6);
            mk(K::Sd, X_SINK, 2, rs2, off as i64)
        }
        _ => ill,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_forms() {
        // addi a0, a1, -1
        let op = decode32(0xfff5_8513);
        assert_eq!((op.kind, op.rd, op.rs1, op.imm), (K::Addi, 10, 11, -1));
        // add x0, x1, x2 writes the sink
        let op = decode32(0x0020_8033);
        assert_eq!((op.kind, op.rd), (K::Add, X_SINK));
        // beq x1, x2, -4
        let op = decode32(0xfe20_8ee3);
        assert_eq!((op.kind, op.imm), (K::Beq, -4));
        // jal ra, 2048
        let op = decode32(0x0010_00ef);
        assert_eq!((op.kind, op.rd, op.imm), (K::Jal, 1, 2048));
        // sd a0, -8(sp)
        let op = decode32(0xfea1_3c23);
        assert_eq!((op.kind, op.rs1, op.rs2, op.imm), (K::Sd, 2, 10, -8));
        // csrrs a0, mstatus, x0
        let op = decode32(0x3000_2573);
        assert_eq!((op.kind, op.imm, op.rd), (K::Csrrs, 0x300, 10));
    }

    #[test]
    fn reserved_encodings_are_illegal_with_bits() {
        for bits in [
            0xffff_ffffu32,
            0x0000_0000,
            0x0000_1013 | (0x3f << 26),
            0x0000_4073,
        ] {
            let op = decode32(bits);
            assert_eq!(op.kind, K::Illegal, "{bits:#x}");
            assert_eq!(op.imm as u32, bits);
        }
        // fadd.s with rm=5 is reserved
        assert_eq!(decode32(0x0020_d0d3).kind, K::Illegal);
        // fadd.s with rm=7 (dynamic) is fine
        assert_eq!(decode32(0x0020_f0d3).kind, K::Fp);
        assert_eq!(decode16(0).kind, K::Illegal);
        assert_eq!(decode16(0).len, 2);
    }

    #[test]
    fn compressed_expansions() {
        // c.addi4spn a0, sp, 16 = 0x0808
        let op = decode16(0x0808);
        assert_eq!((op.kind, op.rd, op.rs1, op.imm), (K::Addi, 10, 2, 16));
        // c.li a0, -1 = 0x557d
        let op = decode16(0x557d);
        assert_eq!((op.kind, op.rd, op.rs1, op.imm), (K::Addi, 10, 0, -1));
        // c.lui a0, 0xfffff (i.e. -4096) = 0x757d
        let op = decode16(0x757d);
        assert_eq!((op.kind, op.rd, op.imm), (K::Lui, 10, -4096));
        // c.addi16sp sp, -64 = 0x7139
        let op = decode16(0x7139);
        assert_eq!((op.kind, op.rd, op.imm), (K::Addi, 2, -64));
        // c.j -2 = 0xbffd
        let op = decode16(0xbffd);
        assert_eq!((op.kind, op.imm), (K::Jal, -2));
        // c.beqz a0, -4 = 0xdd75
        let op = decode16(0xdd75);
        assert_eq!((op.kind, op.rs1, op.imm), (K::Beq, 10, -4));
        // c.ldsp ra, 8(sp) = 0x60a2
        let op = decode16(0x60a2);
        assert_eq!((op.kind, op.rd, op.rs1, op.imm), (K::Ld, 1, 2, 8));
        // c.sdsp ra, 8(sp) = 0xe406
        let op = decode16(0xe406);
        assert_eq!((op.kind, op.rs2, op.rs1, op.imm), (K::Sd, 1, 2, 8));
        // c.jr ra = 0x8082, c.jalr a0 = 0x9502, c.ebreak = 0x9002, c.mv a0,a1 = 0x852e
        assert_eq!(decode16(0x8082).kind, K::Jalr);
        let op = decode16(0x9502);
        assert_eq!((op.kind, op.rd, op.rs1), (K::Jalr, 1, 10));
        assert_eq!(decode16(0x9002).kind, K::Ebreak);
        let op = decode16(0x852e);
        assert_eq!((op.kind, op.rd, op.rs1, op.rs2), (K::Add, 10, 0, 11));
        // c.subw a0, a1 = 0x9d0d; reserved 0x9d4d (c.addw is 0x9d2d)
        assert_eq!(decode16(0x9d0d).kind, K::Subw);
        assert_eq!(decode16(0x9d2d).kind, K::Addw);
        assert_eq!(decode16(0x9d4d).kind, K::Illegal);
        // c.lwsp x0 is reserved
        assert_eq!(decode16(0x4002).kind, K::Illegal);
    }
}
