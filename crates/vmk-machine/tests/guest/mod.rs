//! Tiny RISC-V guests for machine tests: an RV64 encoder for the handful of instructions the
//! tests need, a one-pass assembler with labels, a small runtime (console output through the
//! SBI) and an ELF64 writer the machine's loader accepts.
//!
//! Encodings are cross-checked against `riscv64-unknown-elf-as` by
//! `hostile::encoder_matches_gnu_as`.

#![allow(dead_code)]

use std::collections::HashMap;

/// Where the loader puts an ELF kernel: RAM base + 2 MiB. Guests are linked there.
pub const BASE: u64 = 0x8020_0000;

pub const ZERO: u8 = 0;
pub const RA: u8 = 1;
pub const SP: u8 = 2;
pub const T0: u8 = 5;
pub const T1: u8 = 6;
pub const T2: u8 = 7;
pub const S0: u8 = 8;
pub const S1: u8 = 9;
pub const A0: u8 = 10;
pub const A1: u8 = 11;
pub const A2: u8 = 12;
pub const A3: u8 = 13;
pub const A4: u8 = 14;
pub const A5: u8 = 15;
pub const A6: u8 = 16;
pub const A7: u8 = 17;
pub const S2: u8 = 18;
pub const S3: u8 = 19;
pub const S4: u8 = 20;
pub const S5: u8 = 21;
pub const S6: u8 = 22;
pub const S7: u8 = 23;
pub const S8: u8 = 24;
pub const S9: u8 = 25;
pub const S10: u8 = 26;
pub const S11: u8 = 27;
pub const T3: u8 = 28;
pub const T4: u8 = 29;
pub const T5: u8 = 30;
pub const T6: u8 = 31;

pub mod csr {
    pub const SSTATUS: u16 = 0x100;
    pub const SIE: u16 = 0x104;
    pub const STVEC: u16 = 0x105;
    pub const SSCRATCH: u16 = 0x140;
    pub const SEPC: u16 = 0x141;
    pub const SCAUSE: u16 = 0x142;
    pub const STVAL: u16 = 0x143;
    pub const SIP: u16 = 0x144;
    pub const SATP: u16 = 0x180;
    pub const MSTATUS: u16 = 0x300;
    pub const MEDELEG: u16 = 0x302;
    pub const MHARTID: u16 = 0xf14;
}

/// SBI extension IDs.
pub mod sbi {
    pub const LEGACY_PUTCHAR: u64 = 0x01;
    pub const BASE: u64 = 0x10;
    pub const TIME: u64 = 0x5449_4d45;
    pub const IPI: u64 = 0x0073_5049;
    pub const RFENCE: u64 = 0x5246_4e43;
    pub const HSM: u64 = 0x0048_534d;
    pub const SRST: u64 = 0x5352_5354;
    pub const DBCN: u64 = 0x4442_434e;
}

// ---- Raw encoders (RV64I + Zicsr + privileged) -------------------------------------------

fn reg(r: u8) -> u32 {
    assert!(r < 32, "register x{r}");
    r as u32
}

pub fn enc_r(f7: u32, rs2: u8, rs1: u8, f3: u32, rd: u8, op: u32) -> u32 {
    (f7 << 25) | (reg(rs2) << 20) | (reg(rs1) << 15) | (f3 << 12) | (reg(rd) << 7) | op
}

pub fn enc_i(imm: i64, rs1: u8, f3: u32, rd: u8, op: u32) -> u32 {
    assert!(
        (-2048..2048).contains(&imm),
        "I-immediate {imm} out of range"
    );
    (((imm as u32) & 0xfff) << 20) | (reg(rs1) << 15) | (f3 << 12) | (reg(rd) << 7) | op
}

pub fn enc_s(imm: i64, rs2: u8, rs1: u8, f3: u32, op: u32) -> u32 {
    assert!(
        (-2048..2048).contains(&imm),
        "S-immediate {imm} out of range"
    );
    let i = imm as u32;
    (((i >> 5) & 0x7f) << 25)
        | (reg(rs2) << 20)
        | (reg(rs1) << 15)
        | (f3 << 12)
        | ((i & 0x1f) << 7)
        | op
}

pub fn enc_b(off: i64, rs2: u8, rs1: u8, f3: u32) -> u32 {
    assert!(
        (-4096..4096).contains(&off) && off % 2 == 0,
        "branch offset {off} out of range"
    );
    let i = off as u32;
    (((i >> 12) & 1) << 31)
        | (((i >> 5) & 0x3f) << 25)
        | (reg(rs2) << 20)
        | (reg(rs1) << 15)
        | (f3 << 12)
        | (((i >> 1) & 0xf) << 8)
        | (((i >> 11) & 1) << 7)
        | 0x63
}

pub fn enc_u(imm20: u32, rd: u8, op: u32) -> u32 {
    assert!(imm20 < (1 << 20));
    (imm20 << 12) | (reg(rd) << 7) | op
}

pub fn enc_j(off: i64, rd: u8) -> u32 {
    assert!(
        (-(1 << 20)..(1 << 20)).contains(&off) && off % 2 == 0,
        "jal offset {off} out of range"
    );
    let i = off as u32;
    (((i >> 20) & 1) << 31)
        | (((i >> 1) & 0x3ff) << 21)
        | (((i >> 11) & 1) << 20)
        | (((i >> 12) & 0xff) << 12)
        | (reg(rd) << 7)
        | 0x6f
}

pub fn addi(rd: u8, rs1: u8, imm: i64) -> u32 {
    enc_i(imm, rs1, 0, rd, 0x13)
}
pub fn addiw(rd: u8, rs1: u8, imm: i64) -> u32 {
    enc_i(imm, rs1, 0, rd, 0x1b)
}
pub fn andi(rd: u8, rs1: u8, imm: i64) -> u32 {
    enc_i(imm, rs1, 7, rd, 0x13)
}
pub fn ori(rd: u8, rs1: u8, imm: i64) -> u32 {
    enc_i(imm, rs1, 6, rd, 0x13)
}
pub fn slli(rd: u8, rs1: u8, sh: u32) -> u32 {
    assert!(sh < 64);
    enc_i(sh as i64, rs1, 1, rd, 0x13)
}
pub fn srli(rd: u8, rs1: u8, sh: u32) -> u32 {
    assert!(sh < 64);
    enc_i(sh as i64, rs1, 5, rd, 0x13)
}
pub fn add(rd: u8, rs1: u8, rs2: u8) -> u32 {
    enc_r(0, rs2, rs1, 0, rd, 0x33)
}
pub fn sub(rd: u8, rs1: u8, rs2: u8) -> u32 {
    enc_r(0x20, rs2, rs1, 0, rd, 0x33)
}
pub fn srl(rd: u8, rs1: u8, rs2: u8) -> u32 {
    enc_r(0, rs2, rs1, 5, rd, 0x33)
}
pub fn and(rd: u8, rs1: u8, rs2: u8) -> u32 {
    enc_r(0, rs2, rs1, 7, rd, 0x33)
}
pub fn or(rd: u8, rs1: u8, rs2: u8) -> u32 {
    enc_r(0, rs2, rs1, 6, rd, 0x33)
}
pub fn lui(rd: u8, imm20: u32) -> u32 {
    enc_u(imm20, rd, 0x37)
}
pub fn auipc(rd: u8, imm20: u32) -> u32 {
    enc_u(imm20, rd, 0x17)
}
pub fn lb(rd: u8, rs1: u8, off: i64) -> u32 {
    enc_i(off, rs1, 0, rd, 0x03)
}
pub fn lw(rd: u8, rs1: u8, off: i64) -> u32 {
    enc_i(off, rs1, 2, rd, 0x03)
}
pub fn ld(rd: u8, rs1: u8, off: i64) -> u32 {
    enc_i(off, rs1, 3, rd, 0x03)
}
pub fn lbu(rd: u8, rs1: u8, off: i64) -> u32 {
    enc_i(off, rs1, 4, rd, 0x03)
}
pub fn lwu(rd: u8, rs1: u8, off: i64) -> u32 {
    enc_i(off, rs1, 6, rd, 0x03)
}
pub fn sb(rs2: u8, rs1: u8, off: i64) -> u32 {
    enc_s(off, rs2, rs1, 0, 0x23)
}
pub fn sw(rs2: u8, rs1: u8, off: i64) -> u32 {
    enc_s(off, rs2, rs1, 2, 0x23)
}
pub fn sd(rs2: u8, rs1: u8, off: i64) -> u32 {
    enc_s(off, rs2, rs1, 3, 0x23)
}
pub fn jalr(rd: u8, rs1: u8, off: i64) -> u32 {
    enc_i(off, rs1, 0, rd, 0x67)
}
pub fn csrrw(rd: u8, csr: u16, rs1: u8) -> u32 {
    enc_r(0, 0, rs1, 1, rd, 0x73) | ((csr as u32) << 20)
}
pub fn csrrs(rd: u8, csr: u16, rs1: u8) -> u32 {
    enc_r(0, 0, rs1, 2, rd, 0x73) | ((csr as u32) << 20)
}
pub fn csrrc(rd: u8, csr: u16, rs1: u8) -> u32 {
    enc_r(0, 0, rs1, 3, rd, 0x73) | ((csr as u32) << 20)
}
pub fn csrrsi(rd: u8, csr: u16, uimm: u8) -> u32 {
    assert!(uimm < 32);
    enc_r(0, 0, uimm, 6, rd, 0x73) | ((csr as u32) << 20)
}
pub fn csrrci(rd: u8, csr: u16, uimm: u8) -> u32 {
    assert!(uimm < 32);
    enc_r(0, 0, uimm, 7, rd, 0x73) | ((csr as u32) << 20)
}
pub const ECALL: u32 = 0x0000_0073;
pub const SRET: u32 = 0x1020_0073;
pub const MRET: u32 = 0x3020_0073;
pub const WFI: u32 = 0x1050_0073;
pub const FENCE_I: u32 = 0x0000_100f;
pub const NOP: u32 = 0x0000_0013;

/// Branch conditions (funct3).
#[derive(Clone, Copy, Debug)]
pub enum Cond {
    Eq = 0,
    Ne = 1,
    Lt = 4,
    Ge = 5,
    Ltu = 6,
    Geu = 7,
}

pub fn branch(c: Cond, rs1: u8, rs2: u8, off: i64) -> u32 {
    enc_b(off, rs2, rs1, c as u32)
}

pub fn jal(rd: u8, off: i64) -> u32 {
    enc_j(off, rd)
}

/// The instruction sequence `li rd, v` expands to (lui/addiw, then shifts and addis).
pub fn li_seq(rd: u8, v: i64) -> Vec<u32> {
    let mut out = Vec::new();
    li_into(&mut out, rd, v);
    out
}

fn sext12(v: i64) -> i64 {
    ((v & 0xfff) << 52) >> 52
}

fn li_into(out: &mut Vec<u32>, rd: u8, v: i64) {
    if (-2048..2048).contains(&v) {
        out.push(addi(rd, ZERO, v));
    } else if (i32::MIN as i64..=i32::MAX as i64).contains(&v) {
        let lo = sext12(v);
        let hi = ((v - lo) >> 12) as u32 & 0xfffff;
        out.push(lui(rd, hi));
        if lo != 0 {
            out.push(addiw(rd, rd, lo));
        }
    } else {
        let lo = sext12(v);
        let mut hi = (v - lo) >> 12;
        let tz = hi.trailing_zeros();
        hi >>= tz;
        li_into(out, rd, hi);
        out.push(slli(rd, rd, 12 + tz));
        if lo != 0 {
            out.push(addi(rd, rd, lo));
        }
    }
}

// ---- Assembler -------------------------------------------------------------------------------

enum Fixup {
    Branch(Cond, u8, u8),
    Jal(u8),
    /// auipc + addi pair loading the label's address.
    La(u8),
}

/// Assembles code at [`BASE`], then a data area of strings and words.
pub struct Asm {
    code: Vec<u8>,
    labels: HashMap<String, usize>,
    fixups: Vec<(usize, String, Fixup)>,
    data: Vec<(String, Vec<u8>)>,
    next_anon: usize,
    /// Bytes of zeroed memory after the image (bss) the ELF declares.
    pub bss: u64,
}

/// An assembled guest.
pub struct Program {
    pub image: Vec<u8>,
    pub labels: HashMap<String, u64>,
    pub bss: u64,
}

impl Program {
    /// Guest address of `label`.
    pub fn addr(&self, label: &str) -> u64 {
        *self
            .labels
            .get(label)
            .unwrap_or_else(|| panic!("no label {label}"))
    }

    /// The ELF64 file of this program, linked at [`BASE`].
    pub fn elf(&self) -> Vec<u8> {
        elf64(
            &self.image,
            BASE,
            BASE,
            self.image.len() as u64 + self.bss,
            243,
        )
    }
}

impl Default for Asm {
    fn default() -> Self {
        Self::new()
    }
}

impl Asm {
    pub fn new() -> Asm {
        Asm {
            code: Vec::new(),
            labels: HashMap::new(),
            fixups: Vec::new(),
            data: Vec::new(),
            next_anon: 0,
            bss: 0,
        }
    }

    /// Current address.
    pub fn here(&self) -> u64 {
        BASE + self.code.len() as u64
    }

    pub fn label(&mut self, name: &str) -> &mut Self {
        let prev = self.labels.insert(name.to_string(), self.code.len());
        assert!(prev.is_none(), "label {name} defined twice");
        self
    }

    /// A fresh label name.
    pub fn anon(&mut self) -> String {
        self.next_anon += 1;
        format!(".L{}", self.next_anon)
    }

    pub fn emit(&mut self, insn: u32) -> &mut Self {
        self.code.extend_from_slice(&insn.to_le_bytes());
        self
    }

    pub fn emit_all(&mut self, insns: &[u32]) -> &mut Self {
        for i in insns {
            self.emit(*i);
        }
        self
    }

    /// A raw 32-bit word in the code stream.
    pub fn word(&mut self, w: u32) -> &mut Self {
        self.emit(w)
    }

    pub fn li(&mut self, rd: u8, v: u64) -> &mut Self {
        let seq = li_seq(rd, v as i64);
        self.emit_all(&seq)
    }

    pub fn mv(&mut self, rd: u8, rs: u8) -> &mut Self {
        self.emit(addi(rd, rs, 0))
    }

    pub fn la(&mut self, rd: u8, label: &str) -> &mut Self {
        self.fixups
            .push((self.code.len(), label.to_string(), Fixup::La(rd)));
        self.emit(NOP).emit(NOP)
    }

    pub fn b(&mut self, c: Cond, rs1: u8, rs2: u8, label: &str) -> &mut Self {
        self.fixups.push((
            self.code.len(),
            label.to_string(),
            Fixup::Branch(c, rs1, rs2),
        ));
        self.emit(NOP)
    }

    pub fn beqz(&mut self, rs: u8, label: &str) -> &mut Self {
        self.b(Cond::Eq, rs, ZERO, label)
    }

    pub fn bnez(&mut self, rs: u8, label: &str) -> &mut Self {
        self.b(Cond::Ne, rs, ZERO, label)
    }

    pub fn jal(&mut self, rd: u8, label: &str) -> &mut Self {
        self.fixups
            .push((self.code.len(), label.to_string(), Fixup::Jal(rd)));
        self.emit(NOP)
    }

    pub fn j(&mut self, label: &str) -> &mut Self {
        self.jal(ZERO, label)
    }

    pub fn call(&mut self, label: &str) -> &mut Self {
        self.jal(RA, label)
    }

    pub fn ret(&mut self) -> &mut Self {
        self.emit(jalr(ZERO, RA, 0))
    }

    /// `j .`
    pub fn hang(&mut self) -> &mut Self {
        self.emit(jal(ZERO, 0))
    }

    pub fn csrw(&mut self, csr: u16, rs: u8) -> &mut Self {
        self.emit(csrrw(ZERO, csr, rs))
    }

    pub fn csrr(&mut self, rd: u8, csr: u16) -> &mut Self {
        self.emit(csrrs(rd, csr, ZERO))
    }

    /// A NUL-terminated string in the data area; returns its label.
    pub fn string(&mut self, s: &str) -> String {
        let l = self.anon();
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.data.push((l.clone(), b));
        l
    }

    /// Bytes in the data area (8-byte aligned) under `label`.
    pub fn data_bytes(&mut self, label: &str, bytes: &[u8]) {
        self.data.push((label.to_string(), bytes.to_vec()));
    }

    // ---- Runtime: SBI calls and console output ----

    /// `ecall` with a7 = `eid`, a6 = `fid`, a0.. = `args`.
    pub fn sbi(&mut self, eid: u64, fid: u64, args: &[u64]) -> &mut Self {
        assert!(args.len() <= 6);
        for (i, v) in args.iter().enumerate() {
            self.li(A0 + i as u8, *v);
        }
        self.li(A6, fid).li(A7, eid).emit(ECALL)
    }

    /// Prints `s` with the legacy putchar call, byte by byte (clobbers t0, a0, a7, ra).
    pub fn print(&mut self, s: &str) -> &mut Self {
        let l = self.string(s);
        self.la(A0, &l).call("puts")
    }

    /// Prints `s` with one DBCN console_write (clobbers a0-a2, a6, a7).
    pub fn print_dbcn(&mut self, s: &str) -> &mut Self {
        let l = self.string(s);
        self.li(A0, s.len() as u64)
            .la(A1, &l)
            .li(A2, 0)
            .li(A6, 0)
            .li(A7, sbi::DBCN)
            .emit(ECALL)
    }

    /// Prints register `r` as 16 hex digits (clobbers t0-t3, a0, a7, ra).
    pub fn print_hex(&mut self, r: u8) -> &mut Self {
        self.mv(A0, r).call("puthex")
    }

    /// Prints `name=<hex of r>\n`.
    pub fn report(&mut self, name: &str, r: u8) -> &mut Self {
        self.print(&format!("{name}=")).print_hex(r).print("\n")
    }

    /// SRST shutdown; hangs if that returns.
    pub fn shutdown(&mut self) -> &mut Self {
        self.sbi(sbi::SRST, 0, &[0, 0]).hang()
    }

    /// Emits the runtime routines `puts` and `puthex` (leaf routines returning through ra).
    pub fn runtime(&mut self) -> &mut Self {
        // puts: a0 = NUL-terminated string.
        let (lp, done) = (self.anon(), self.anon());
        self.label("puts").mv(T0, A0).label(&lp);
        self.emit(lbu(A0, T0, 0)).beqz(A0, &done);
        self.li(A7, sbi::LEGACY_PUTCHAR).emit(ECALL);
        self.emit(addi(T0, T0, 1)).j(&lp).label(&done).ret();
        // puthex: a0 = value, 16 hex digits.
        let (lp, digit) = (self.anon(), self.anon());
        self.label("puthex").mv(T0, A0).li(T1, 60).label(&lp);
        self.emit(srl(T2, T0, T1)).emit(andi(T2, T2, 15)).li(T3, 10);
        self.b(Cond::Lt, T2, T3, &digit)
            .emit(addi(T2, T2, (b'a' - b'0' - 10) as i64));
        self.label(&digit).emit(addi(A0, T2, b'0' as i64));
        self.li(A7, sbi::LEGACY_PUTCHAR).emit(ECALL);
        self.emit(addi(T1, T1, -4)).b(Cond::Ge, T1, ZERO, &lp).ret();
        self
    }

    /// Lays out the data area and resolves labels.
    pub fn finish(mut self) -> Program {
        while self.code.len() & 7 != 0 {
            self.emit(NOP);
        }
        for (label, bytes) in std::mem::take(&mut self.data) {
            while self.code.len() & 7 != 0 {
                self.code.push(0);
            }
            let prev = self.labels.insert(label.clone(), self.code.len());
            assert!(prev.is_none(), "label {label} defined twice");
            self.code.extend_from_slice(&bytes);
        }
        while self.code.len() & 7 != 0 {
            self.code.push(0);
        }
        for (at, label, fix) in std::mem::take(&mut self.fixups) {
            let target = *self
                .labels
                .get(&label)
                .unwrap_or_else(|| panic!("undefined label {label}"));
            let off = target as i64 - at as i64;
            let put = |code: &mut Vec<u8>, at: usize, w: u32| {
                code[at..at + 4].copy_from_slice(&w.to_le_bytes());
            };
            match fix {
                Fixup::Branch(c, rs1, rs2) => put(&mut self.code, at, branch(c, rs1, rs2, off)),
                Fixup::Jal(rd) => put(&mut self.code, at, jal(rd, off)),
                Fixup::La(rd) => {
                    let lo = sext12(off);
                    let hi = (((off - lo) >> 12) as u32) & 0xfffff;
                    put(&mut self.code, at, auipc(rd, hi));
                    put(&mut self.code, at + 4, addi(rd, rd, lo));
                }
            }
        }
        Program {
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), BASE + *v as u64))
                .collect(),
            image: self.code,
            bss: self.bss,
        }
    }
}

/// An ELF64 little-endian executable with one PT_LOAD segment holding `image` at `vaddr`
/// (file offset 0x1000), `memsz` bytes in memory, for machine `machine` (243 = RISC-V).
pub fn elf64(image: &[u8], vaddr: u64, entry: u64, memsz: u64, machine: u16) -> Vec<u8> {
    let mut d = vec![0u8; 0x1000];
    d[..4].copy_from_slice(b"\x7fELF");
    d[4] = 2; // ELFCLASS64
    d[5] = 1; // little-endian
    d[6] = 1; // EV_CURRENT
    d[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    d[18..20].copy_from_slice(&machine.to_le_bytes());
    d[20..24].copy_from_slice(&1u32.to_le_bytes());
    d[24..32].copy_from_slice(&entry.to_le_bytes());
    d[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    d[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    d[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    d[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    d[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    d[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    d[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
    d[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
    d[ph + 24..ph + 32].copy_from_slice(&vaddr.to_le_bytes()); // p_paddr
    d[ph + 32..ph + 40].copy_from_slice(&(image.len() as u64).to_le_bytes());
    d[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
    d[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes()); // p_align
    d.extend_from_slice(image);
    d
}
