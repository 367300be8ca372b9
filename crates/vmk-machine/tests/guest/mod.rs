//! Tiny RISC-V guests for machine tests: a one-pass assembler with labels on top of
//! `vmk_testkit::rv64` (the encoder, re-exported here; checked against GNU as there), a
//! small runtime (console output through the SBI) and an ELF64 writer the machine's loader
//! accepts.

#![allow(dead_code)]

use std::collections::HashMap;

pub use vmk_testkit::rv64::*;

/// Where the loader puts an ELF kernel: RAM base + 2 MiB. Guests are linked there.
pub const BASE: u64 = 0x8020_0000;

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

/// The instruction sequence `li rd, v` expands to (lui/addiw, then shifts and addis).
pub fn li_seq(rd: u32, v: i64) -> Vec<u32> {
    let mut out = Vec::new();
    li_into(&mut out, rd, v);
    out
}

fn sext12(v: i64) -> i64 {
    ((v & 0xfff) << 52) >> 52
}

fn li_into(out: &mut Vec<u32>, rd: u32, v: i64) {
    if (-2048..2048).contains(&v) {
        out.push(addi(rd, ZERO, v));
    } else if (i32::MIN as i64..=i32::MAX as i64).contains(&v) {
        let lo = sext12(v);
        let hi = ((v - lo) >> 12) & 0xfffff;
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
    Branch(Cond, u32, u32),
    Jal(u32),
    /// auipc + addi pair loading the label's address.
    La(u32),
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

    pub fn li(&mut self, rd: u32, v: u64) -> &mut Self {
        let seq = li_seq(rd, v as i64);
        self.emit_all(&seq)
    }

    pub fn mv(&mut self, rd: u32, rs: u32) -> &mut Self {
        self.emit(addi(rd, rs, 0))
    }

    pub fn la(&mut self, rd: u32, label: &str) -> &mut Self {
        self.fixups
            .push((self.code.len(), label.to_string(), Fixup::La(rd)));
        self.emit(nop()).emit(nop())
    }

    pub fn b(&mut self, c: Cond, rs1: u32, rs2: u32, label: &str) -> &mut Self {
        self.fixups.push((
            self.code.len(),
            label.to_string(),
            Fixup::Branch(c, rs1, rs2),
        ));
        self.emit(nop())
    }

    pub fn beqz(&mut self, rs: u32, label: &str) -> &mut Self {
        self.b(Cond::Eq, rs, ZERO, label)
    }

    pub fn bnez(&mut self, rs: u32, label: &str) -> &mut Self {
        self.b(Cond::Ne, rs, ZERO, label)
    }

    pub fn jal(&mut self, rd: u32, label: &str) -> &mut Self {
        self.fixups
            .push((self.code.len(), label.to_string(), Fixup::Jal(rd)));
        self.emit(nop())
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

    pub fn csrw(&mut self, csr: u32, rs: u32) -> &mut Self {
        self.emit(csrrw(ZERO, csr, rs))
    }

    pub fn csrr(&mut self, rd: u32, csr: u32) -> &mut Self {
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
            self.li(A0 + i as u32, *v);
        }
        self.li(A6, fid).li(A7, eid).emit(ecall())
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
            .emit(ecall())
    }

    /// Prints register `r` as 16 hex digits (clobbers t0-t3, a0, a7, ra).
    pub fn print_hex(&mut self, r: u32) -> &mut Self {
        self.mv(A0, r).call("puthex")
    }

    /// Prints `name=<hex of r>\n`.
    pub fn report(&mut self, name: &str, r: u32) -> &mut Self {
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
        self.li(A7, sbi::LEGACY_PUTCHAR).emit(ecall());
        self.emit(addi(T0, T0, 1)).j(&lp).label(&done).ret();
        // puthex: a0 = value, 16 hex digits.
        let (lp, digit) = (self.anon(), self.anon());
        self.label("puthex").mv(T0, A0).li(T1, 60).label(&lp);
        self.emit(srl(T2, T0, T1)).emit(andi(T2, T2, 15)).li(T3, 10);
        self.b(Cond::Lt, T2, T3, &digit)
            .emit(addi(T2, T2, (b'a' - b'0' - 10) as i64));
        self.label(&digit).emit(addi(A0, T2, b'0' as i64));
        self.li(A7, sbi::LEGACY_PUTCHAR).emit(ecall());
        self.emit(addi(T1, T1, -4)).b(Cond::Ge, T1, ZERO, &lp).ret();
        self
    }

    /// Lays out the data area and resolves labels.
    pub fn finish(mut self) -> Program {
        while self.code.len() & 7 != 0 {
            self.emit(nop());
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
                    let hi = ((off - lo) >> 12) & 0xfffff;
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
