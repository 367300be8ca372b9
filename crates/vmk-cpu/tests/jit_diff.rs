//! Differential test of the JIT against the interpreter: randomly generated RV64IMC programs
//! run twice, once with `HartConfig::jit` on and once with it off, and every architectural
//! result must be identical (x registers, pc, instret, privilege, trap CSRs, the sequence of
//! exits with their pc and instret, and the data region byte for byte).
//!
//! The programs are a random body wrapped in a loop run [`ITERS`] times, so that the JIT
//! compiles the body's blocks and then runs them many times with different data (the loop
//! counter is mixed into the registers every iteration, and branches test bits of it so both
//! directions of a branch are taken from the same compiled block).
//!
//! The paged variants run the programs in S-mode under Sv39 with 4 KiB pages: code and data
//! at virtual addresses whose pages lie in reverse order in physical memory (so accesses and
//! instructions that cross a page boundary cross to a non-adjacent frame), and, for the
//! faulting programs, a read-only alias of the data area where loads succeed and stores take
//! a store page fault.
//!
//! Reproduce one seed with `VMK_JIT_DIFF_SEED=<n> cargo test -p vmk-cpu --test jit_diff`;
//! `VMK_JIT_DIFF_SEEDS=<n>` changes how many seeds each test runs.

mod asm;

use asm::*;
use vmk_cpu::{Exit, HartConfig, PrivMode};

/// The hart configuration of one side of the comparison.
fn hart_config(jit: bool) -> HartConfig {
    HartConfig {
        jit,
        // The programs count on blocks being compiled after 32 runs.
        jit_threshold: 32,
        ..HartConfig::default()
    }
}

/// Loop iterations of every program (the JIT compiles a block after it ran a few dozen times).
const ITERS: u64 = 200;
/// Seeds of [`random_programs_match`] and [`faulting_programs_match`].
const SEEDS: u64 = 300;
const FAULT_SEEDS: u64 = 100;
/// The data region compared byte for byte: 8 KiB, two guest pages.
const DREGION: u64 = DATA;
const DREGION_LEN: usize = 0x2000;
/// x8 holds this during the whole program: loads and stores at x8 + simm12 stay in the data
/// region, and those near offset 0 cross the page boundary at DBASE.
const DBASE: u64 = DATA + 0x1000;
/// x2 (sp) holds this, for the compressed sp-relative loads and stores (offsets 0..512).
const SPBASE: u64 = DBASE - 0x200;
/// The skip-the-faulting-instruction M-mode trap handler of the faulting programs.
const HANDLER: u64 = RAM_BASE + 0x30_2000;
/// Upper bound on the exits of one run, and on its instructions.
const MAX_EXITS: usize = 50_000;
const MAX_INSTRET: u64 = 20_000_000;
/// Seeds of the paged (Sv39) variants.
const PAGED_SEEDS: u64 = 150;
const PAGED_FAULT_SEEDS: u64 = 100;

/// Sv39 layout of the paged variants. Virtual pages `CODE_VA + i * 4 KiB` (i < CODE_PAGES)
/// map to physical `CODE + (CODE_PAGES - 1 - i) * 4 KiB`; the two data pages at `DATA_VA` map
/// to the two pages of the data region swapped; MMIO is identity-mapped.
const CODE_VA: u64 = 0x20_0000_0000;
const CODE_PAGES: u64 = 8;
const DATA_VA: u64 = 0x10_0000_0000;
const DBASE_VA: u64 = DATA_VA + (DBASE - DREGION);
const SPBASE_VA: u64 = DATA_VA + (SPBASE - DREGION);
/// RO_PAGES read-only pages aliasing the 64 KiB data area (DATA + i * 4 KiB), at an address
/// LUI can make.
const RO_VA: u64 = 0x2000_0000;
const RO_PAGES: u64 = 16;
/// Page tables of the paged variants (RAM_BASE + 3.5 MiB: above the handlers, below the
/// end of RAM).
const PT_AREA: u64 = RAM_BASE + 0x38_0000;
const PTE_V: u64 = 1;
const PTE_R: u64 = 2;
const PTE_W: u64 = 4;
const PTE_X: u64 = 8;
const PTE_AD: u64 = 64 | 128;

// ------------------------------------------------------------------------------------------
// PRNG
// ------------------------------------------------------------------------------------------

/// xorshift64*, seeded through splitmix64 so that small seeds give unrelated streams.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in lo..=hi.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, s: &[T]) -> T {
        s[self.below(s.len() as u64) as usize]
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ------------------------------------------------------------------------------------------
// Program text with a listing
// ------------------------------------------------------------------------------------------

/// Encoded instructions plus one listing line per instruction (offset, raw word, text).
#[derive(Default)]
struct Code {
    prog: Prog,
    listing: Vec<(u64, u32, bool, String)>,
}

impl Code {
    fn w(&mut self, w: u32, text: String) {
        self.listing.push((self.prog.len(), w, false, text));
        self.prog.i(w);
    }

    fn c(&mut self, h: u16, text: String) {
        self.listing.push((self.prog.len(), h as u32, true, text));
        self.prog.c(h);
    }

    fn len(&self) -> u64 {
        self.prog.len()
    }

    fn append(&mut self, other: Code) {
        let base = self.len();
        for (off, w, c, t) in other.listing {
            self.listing.push((base + off, w, c, t));
        }
        self.prog.bytes.extend_from_slice(&other.prog.bytes);
    }

    fn listing(&self, base: u64) -> String {
        let mut s = String::new();
        for (off, w, c, t) in &self.listing {
            let raw = if *c {
                format!("    {w:04x}")
            } else {
                format!("{w:08x}")
            };
            s.push_str(&format!("  {:#x} (+{off:#05x}): {raw}  {t}\n", base + off));
        }
        s
    }
}

// ------------------------------------------------------------------------------------------
// Generator
// ------------------------------------------------------------------------------------------

type R3 = fn(u32, u32, u32) -> u32;
type RI = fn(u32, u32, i64) -> u32;
type RSh = fn(u32, u32, u32) -> u32;
type CR = fn(u32, u32) -> u16;

const ALU_RR: &[(&str, R3)] = &[
    ("add", add),
    ("sub", sub),
    ("sll", sll),
    ("slt", slt),
    ("sltu", sltu),
    ("xor", xor),
    ("srl", srl),
    ("sra", sra),
    ("or", or),
    ("and", and),
    ("addw", addw),
    ("subw", subw),
    ("sllw", sllw),
    ("srlw", srlw),
    ("sraw", sraw),
    ("mul", mul),
    ("mulh", mulh),
    ("mulhsu", mulhsu),
    ("mulhu", mulhu),
    ("mulw", mulw),
];

/// Division ops: (name, encoder, is a W form).
const DIVS: &[(&str, R3, bool)] = &[
    ("div", div, false),
    ("divu", divu, false),
    ("rem", rem, false),
    ("remu", remu, false),
    ("divw", divw, true),
    ("divuw", divuw, true),
    ("remw", remw, true),
    ("remuw", remuw, true),
];

const ALU_RI: &[(&str, RI)] = &[
    ("addi", addi),
    ("slti", slti),
    ("sltiu", sltiu),
    ("xori", xori),
    ("ori", ori),
    ("andi", andi),
    ("addiw", addiw),
];

/// Immediate shifts: (name, encoder, shamt bits).
const SHIFTS: &[(&str, RSh, u32)] = &[
    ("slli", slli, 6),
    ("srli", srli, 6),
    ("srai", srai, 6),
    ("slliw", slliw, 5),
    ("srliw", srliw, 5),
    ("sraiw", sraiw, 5),
];

/// Loads: (name, encoder, size).
const LOADS: &[(&str, RI, i64)] = &[
    ("lb", lb, 1),
    ("lbu", lbu, 1),
    ("lh", lh, 2),
    ("lhu", lhu, 2),
    ("lw", lw, 4),
    ("lwu", lwu, 4),
    ("ld", ld, 8),
];

const STORES: &[(&str, RI, i64)] = &[("sb", sb, 1), ("sh", sh, 2), ("sw", sw, 4), ("sd", sd, 8)];

/// Branches share the I-type encoder signature: (rs1, rs2, offset).
const BRANCHES: &[(&str, RI)] = &[
    ("beq", beq),
    ("bne", bne),
    ("blt", blt),
    ("bge", bge),
    ("bltu", bltu),
    ("bgeu", bgeu),
];

/// Values registers start with and constants the body loads.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    u64::MAX,
    i64::MIN as u64,
    i64::MAX as u64,
    i32::MIN as i64 as u64,
    i32::MAX as u64,
    0xffff_ffff,
    0x8000_0000,
    63,
    64,
    31,
    32,
    0x7ff,
    0xfff,
    0x1_0000_0001,
];

/// What the faulting programs do at an address outside RAM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FaultMode {
    /// Only loads and stores in RAM.
    None,
    /// MMIO accesses, and accesses to unmapped addresses that trap to a handler which skips
    /// the instruction and returns (so traps are taken from hot code on every iteration).
    Skip,
    /// MMIO accesses, and one access to an unmapped address on iteration `k` that traps to
    /// the `wfi` at TRAP and ends the run.
    Stop { k: u64 },
}

struct Gen {
    rng: Rng,
    /// The program runs under Sv39 (see [`CODE_VA`]): [`Gen::outside`] also accesses the
    /// read-only alias of the data area.
    paged: bool,
    /// Registers the body may write (never x0, sp, x8, x9, nor the handler's x30/x31).
    writable: Vec<u32>,
    faults: FaultMode,
    /// Accesses to unmapped addresses generated so far.
    unmapped: u32,
}

impl Gen {
    /// A destination: usually a writable register, sometimes x0.
    fn dst(&mut self) -> u32 {
        if self.rng.chance(6) {
            ZERO
        } else {
            self.wr()
        }
    }

    fn wr(&mut self) -> u32 {
        let i = self.rng.below(self.writable.len() as u64) as usize;
        self.writable[i]
    }

    /// Two different writable registers.
    fn wr2(&mut self) -> (u32, u32) {
        let a = self.wr();
        loop {
            let b = self.wr();
            if b != a {
                return (a, b);
            }
        }
    }

    /// A source: any register.
    fn src(&mut self) -> u32 {
        self.rng.below(32) as u32
    }

    /// A writable register of the compressed set x8..x15.
    fn cwr(&mut self) -> u32 {
        loop {
            let r = self.rng.range(8, 15) as u32;
            if self.writable.contains(&r) {
                return r;
            }
        }
    }

    fn csrc(&mut self) -> u32 {
        self.rng.range(8, 15) as u32
    }

    fn shamt(&mut self, bits: u32) -> u32 {
        let max = (1 << bits) - 1;
        if self.rng.chance(40) {
            self.rng.pick(&[0, 1, max / 2, max / 2 + 1, max - 1, max])
        } else {
            self.rng.below(max as u64 + 1) as u32
        }
    }

    fn imm12(&mut self) -> i64 {
        if self.rng.chance(30) {
            self.rng.pick(&[0, 1, -1, 2047, -2048, 0x7f0, -0x800 + 1])
        } else {
            self.rng.range(-2048, 2047)
        }
    }

    /// `li rd, v` for a value of [`INTERESTING`] (or a random one), in one to three
    /// instructions.
    fn li(&mut self, c: &mut Code, rd: u32, v: u64) {
        let s = v as i64;
        if (-2048..2048).contains(&s) {
            c.w(addi(rd, ZERO, s), format!("addi x{rd}, x0, {s}  # li"));
        } else if s == i64::MIN {
            c.w(addi(rd, ZERO, 1), format!("addi x{rd}, x0, 1"));
            c.w(
                slli(rd, rd, 63),
                format!("slli x{rd}, x{rd}, 63  # li INT64_MIN"),
            );
        } else if s == s as i32 as i64 {
            let lo = (s << 52) >> 52;
            let hi = ((s - lo) >> 12) & 0xf_ffff;
            c.w(lui(rd, hi), format!("lui x{rd}, {hi:#x}"));
            c.w(
                addiw(rd, rd, lo),
                format!("addiw x{rd}, x{rd}, {lo}  # li {v:#x}"),
            );
        } else {
            // Anything else: lui + addi of random fields (a random value, not v).
            let hi = self.rng.range(-(1 << 19), (1 << 20) - 1);
            let lo = self.rng.range(-2048, 2047);
            c.w(lui(rd, hi), format!("lui x{rd}, {hi:#x}"));
            c.w(addi(rd, rd, lo), format!("addi x{rd}, x{rd}, {lo}"));
        }
    }

    /// One straight-line item: an ALU, M, constant or RAM load/store instruction group.
    fn straight(&mut self, c: &mut Code) {
        match self.rng.below(100) {
            0..=21 => {
                let (n, f) = self.rng.pick(ALU_RR);
                let (rd, a, b) = (self.dst(), self.src(), self.src());
                c.w(f(rd, a, b), format!("{n} x{rd}, x{a}, x{b}"));
            }
            22..=31 => {
                let (n, f) = self.rng.pick(ALU_RI);
                let (rd, a, i) = (self.dst(), self.src(), self.imm12());
                c.w(f(rd, a, i), format!("{n} x{rd}, x{a}, {i}"));
            }
            32..=39 => {
                let (n, f, bits) = self.rng.pick(SHIFTS);
                let (rd, a, sh) = (self.dst(), self.src(), self.shamt(bits));
                c.w(f(rd, a, sh), format!("{n} x{rd}, x{a}, {sh}"));
            }
            40..=43 => {
                let rd = self.dst();
                let imm = self.rng.range(-(1 << 19), (1 << 20) - 1);
                if self.rng.chance(50) {
                    c.w(lui(rd, imm), format!("lui x{rd}, {imm:#x}"));
                } else {
                    c.w(auipc(rd, imm), format!("auipc x{rd}, {imm:#x}"));
                }
            }
            44..=53 => self.division(c),
            54..=57 => {
                let rd = self.wr();
                let v = self.rng.pick(INTERESTING);
                self.li(c, rd, v);
            }
            58..=77 => self.ram_access(c),
            _ => self.compressed(c),
        }
    }

    /// A division, sometimes of INT_MIN by -1 or by zero.
    fn division(&mut self, c: &mut Code) {
        let (n, f, w) = self.rng.pick(DIVS);
        let rd = self.dst();
        let (a, b) = match self.rng.below(6) {
            0 | 1 => {
                let (a, b) = self.wr2();
                let min = if w {
                    i32::MIN as i64 as u64
                } else {
                    i64::MIN as u64
                };
                self.li(c, a, min);
                self.li(c, b, u64::MAX);
                (a, b)
            }
            2 => (self.src(), ZERO),
            _ => (self.src(), self.src()),
        };
        c.w(f(rd, a, b), format!("{n} x{rd}, x{a}, x{b}"));
    }

    /// A load or store in the data region, at x8 + simm12 or at an address computed from a
    /// register's value (so it changes every iteration).
    fn ram_access(&mut self, c: &mut Code) {
        let store = self.rng.chance(40);
        let (name, f, size) = if store {
            self.rng.pick(STORES)
        } else {
            self.rng.pick(LOADS)
        };
        let (base, off) = if self.rng.chance(50) {
            // x8 + simm12; a quarter of them straddle the page boundary at x8.
            let off = if self.rng.chance(25) {
                self.rng.range(-size, 0)
            } else {
                self.rng.range(-2048, 2047)
            };
            (8, off)
        } else {
            // t = x8 + (r & 0x7ff); access at t + [-2048, 0]: [x8 - 2048, x8 + 2047].
            let t = self.wr();
            let r = self.src();
            c.w(andi(t, r, 0x7ff), format!("andi x{t}, x{r}, 0x7ff"));
            c.w(add(t, t, 8), format!("add x{t}, x{t}, x8"));
            (t, self.rng.range(-2048, 0))
        };
        if store {
            let v = self.src();
            c.w(f(v, base, off), format!("{name} x{v}, {off}(x{base})"));
        } else {
            let rd = self.dst();
            c.w(f(rd, base, off), format!("{name} x{rd}, {off}(x{base})"));
        }
    }

    /// A compressed ALU op or load/store.
    fn compressed(&mut self, c: &mut Code) {
        match self.rng.below(17) {
            0 => {
                let (rd, i) = (self.wr(), self.rng.range(-32, 31));
                c.c(c_addi(rd, i), format!("c.addi x{rd}, {i}"));
            }
            1 => {
                let (rd, i) = (self.wr(), self.rng.range(-32, 31));
                c.c(c_addiw(rd, i), format!("c.addiw x{rd}, {i}"));
            }
            2 => {
                let (rd, i) = (self.wr(), self.rng.range(-32, 31));
                c.c(c_li(rd, i), format!("c.li x{rd}, {i}"));
            }
            3 => {
                let rd = self.wr();
                let mut i = self.rng.range(-32, 30);
                if i >= 0 {
                    i += 1;
                }
                c.c(c_lui(rd, i), format!("c.lui x{rd}, {i}"));
            }
            4 => {
                let (rd, sh) = (self.cwr(), self.rng.range(1, 63) as u32);
                if self.rng.chance(50) {
                    c.c(c_srli(rd, sh), format!("c.srli x{rd}, {sh}"));
                } else {
                    c.c(c_srai(rd, sh), format!("c.srai x{rd}, {sh}"));
                }
            }
            5 => {
                let (rd, i) = (self.cwr(), self.rng.range(-32, 31));
                c.c(c_andi(rd, i), format!("c.andi x{rd}, {i}"));
            }
            6 => {
                let (rd, sh) = (self.wr(), self.rng.range(1, 63) as u32);
                c.c(c_slli(rd, sh), format!("c.slli x{rd}, {sh}"));
            }
            7 => {
                let ops: &[(&str, CR)] = &[
                    ("c.sub", c_sub),
                    ("c.xor", c_xor),
                    ("c.or", c_or),
                    ("c.and", c_and),
                    ("c.subw", c_subw),
                    ("c.addw", c_addw),
                ];
                let (n, f) = self.rng.pick(ops);
                let (rd, rs) = (self.cwr(), self.csrc());
                c.c(f(rd, rs), format!("{n} x{rd}, x{rs}"));
            }
            8 => {
                let (rd, rs) = (self.wr(), self.rng.range(1, 31) as u32);
                if self.rng.chance(50) {
                    c.c(c_mv(rd, rs), format!("c.mv x{rd}, x{rs}"));
                } else {
                    c.c(c_add(rd, rs), format!("c.add x{rd}, x{rs}"));
                }
            }
            9 => {
                let rd = self.cwr();
                let i = self.rng.range(1, 255) * 4;
                c.c(c_addi4spn(rd, i), format!("c.addi4spn x{rd}, sp, {i}"));
            }
            10 => {
                let (rd, off) = (self.cwr(), self.rng.range(0, 31) * 4);
                c.c(c_lw(rd, 8, off), format!("c.lw x{rd}, {off}(x8)"));
            }
            11 => {
                let (rd, off) = (self.cwr(), self.rng.range(0, 31) * 8);
                c.c(c_ld(rd, 8, off), format!("c.ld x{rd}, {off}(x8)"));
            }
            12 => {
                let (rs, off) = (self.csrc(), self.rng.range(0, 31) * 4);
                c.c(c_sw(rs, 8, off), format!("c.sw x{rs}, {off}(x8)"));
            }
            13 => {
                let (rs, off) = (self.csrc(), self.rng.range(0, 31) * 8);
                c.c(c_sd(rs, 8, off), format!("c.sd x{rs}, {off}(x8)"));
            }
            14 => {
                let rd = self.wr();
                if self.rng.chance(50) {
                    let off = self.rng.range(0, 63) * 4;
                    c.c(c_lwsp(rd, off), format!("c.lwsp x{rd}, {off}(sp)"));
                } else {
                    let off = self.rng.range(0, 63) * 8;
                    c.c(c_ldsp(rd, off), format!("c.ldsp x{rd}, {off}(sp)"));
                }
            }
            15 => {
                let rs = self.src();
                if self.rng.chance(50) {
                    let off = self.rng.range(0, 63) * 4;
                    c.c(c_swsp(rs, off), format!("c.swsp x{rs}, {off}(sp)"));
                } else {
                    let off = self.rng.range(0, 63) * 8;
                    c.c(c_sdsp(rs, off), format!("c.sdsp x{rs}, {off}(sp)"));
                }
            }
            _ => c.c(c_nop(), "c.nop".into()),
        }
    }

    /// 1 to 4 straight-line items (what a forward jump skips).
    fn chunk(&mut self) -> Code {
        let mut c = Code::default();
        for _ in 0..self.rng.range(1, 4) {
            self.straight(&mut c);
        }
        c
    }

    /// A forward conditional branch over a chunk.
    fn branch(&mut self, c: &mut Code) {
        let skipped = self.chunk();
        let (mut a, mut b) = match self.rng.below(4) {
            0 => {
                // A bit pattern of the loop counter: taken on some iterations, not others.
                let t = self.wr();
                let m = self.rng.pick(&[1, 2, 3, 4, 7]);
                c.w(andi(t, 9, m), format!("andi x{t}, x9, {m}"));
                (t, ZERO)
            }
            1 => {
                let r = self.src();
                (r, r)
            }
            2 => (self.src(), ZERO),
            _ => (self.src(), self.src()),
        };
        if self.rng.chance(50) {
            std::mem::swap(&mut a, &mut b);
        }
        let cand = if (8..16).contains(&a) && b == ZERO {
            Some(a)
        } else if (8..16).contains(&b) && a == ZERO {
            Some(b)
        } else {
            None
        };
        match cand {
            Some(r) if self.rng.chance(40) => {
                let off = 2 + skipped.len() as i64;
                if self.rng.chance(50) {
                    c.c(c_beqz(r, off), format!("c.beqz x{r}, +{off}"));
                } else {
                    c.c(c_bnez(r, off), format!("c.bnez x{r}, +{off}"));
                }
            }
            _ => {
                let (n, f) = self.rng.pick(BRANCHES);
                let off = 4 + skipped.len() as i64;
                c.w(f(a, b, off), format!("{n} x{a}, x{b}, +{off}"));
            }
        }
        c.append(skipped);
    }

    /// JAL / C.J forward over a chunk.
    fn jump(&mut self, c: &mut Code) {
        let skipped = self.chunk();
        if self.rng.chance(25) {
            let off = 2 + skipped.len() as i64;
            c.c(c_j(off), format!("c.j +{off}"));
        } else {
            let d = self.dst();
            let rd = self.rng.pick(&[ZERO, RA, d]);
            let off = 4 + skipped.len() as i64;
            c.w(jal(rd, off), format!("jal x{rd}, +{off}"));
        }
        c.append(skipped);
    }

    /// AUIPC + ADDI + JALR (or C.JR / C.JALR) to a computed target past a chunk.
    fn indirect(&mut self, c: &mut Code) {
        let skipped = self.chunk();
        let t = self.wr();
        c.w(auipc(t, 0), format!("auipc x{t}, 0"));
        let compressed = self.rng.chance(30);
        let jlen = if compressed { 2 } else { 4 };
        // Distance from the auipc to the target.
        let dist = 4 + 4 + jlen + skipped.len() as i64;
        if compressed {
            c.w(addi(t, t, dist), format!("addi x{t}, x{t}, {dist}"));
            if self.rng.chance(50) {
                c.c(c_jr(t), format!("c.jr x{t}"));
            } else {
                c.c(c_jalr(t), format!("c.jalr x{t}"));
            }
        } else {
            let imm = self.rng.range(-64, 64);
            // Sometimes an odd sum: JALR clears bit 0 of the target.
            let odd = self.rng.below(2) as i64;
            let delta = dist - imm + odd;
            c.w(addi(t, t, delta), format!("addi x{t}, x{t}, {delta}"));
            let d = self.dst();
            let rd = self.rng.pick(&[ZERO, RA, t, d]);
            c.w(jalr(rd, t, imm), format!("jalr x{rd}, {imm}(x{t})"));
        }
        c.append(skipped);
    }

    /// An access outside RAM: MMIO (an exit) or unmapped (an access fault).
    fn outside(&mut self, c: &mut Code) {
        let store = self.rng.chance(40);
        let (name, f, size) = if store {
            self.rng.pick(STORES)
        } else {
            self.rng.pick(LOADS)
        };
        let unmapped = self.rng.chance(50);
        // Paged: half of the mapped accesses go to the read-only pages, where stores fault.
        let read_only = self.paged && !unmapped && self.rng.chance(50);
        let faulting = unmapped || (read_only && store);
        self.unmapped += faulting as u32;
        let t = self.wr();
        let mut access = Code::default();
        let (hi, off) = if unmapped {
            (
                (UNMAPPED >> 12) as i64 + self.rng.range(0, 15),
                self.imm12(),
            )
        } else if read_only {
            (
                (RO_VA >> 12) as i64 + self.rng.range(1, RO_PAGES as i64 - 2),
                self.imm12(),
            )
        } else if self.rng.chance(20) {
            // Possibly misaligned.
            ((MMIO_BASE >> 12) as i64, self.rng.range(0, 0x7ff - size))
        } else {
            (
                (MMIO_BASE >> 12) as i64,
                self.rng.range(0, 0x7ff / size) * size,
            )
        };
        access.w(lui(t, hi), format!("lui x{t}, {hi:#x}"));
        if store {
            let v = self.src();
            access.w(f(v, t, off), format!("{name} x{v}, {off}(x{t})"));
        } else {
            let rd = self.dst();
            access.w(f(rd, t, off), format!("{name} x{rd}, {off}(x{t})"));
        }
        match self.faults {
            FaultMode::Stop { k } if faulting => {
                // Only on the iteration where x9 == k.
                let g = self.wr();
                c.w(addi(g, 9, -(k as i64)), format!("addi x{g}, x9, -{k}"));
                let skip = 4 + access.len() as i64;
                c.w(bne(g, ZERO, skip), format!("bne x{g}, x0, +{skip}"));
            }
            _ => {}
        }
        c.append(access);
    }

    /// The loop body.
    fn body(&mut self, c: &mut Code) {
        // Mix the loop counter in: every iteration computes on different values.
        for _ in 0..self.rng.range(1, 3) {
            let r = self.wr();
            if self.rng.chance(50) {
                c.w(add(r, r, 9), format!("add x{r}, x{r}, x9"));
            } else {
                c.w(xor(r, r, 9), format!("xor x{r}, x{r}, x9"));
            }
        }
        for _ in 0..self.rng.range(15, 50) {
            let outside = self.faults != FaultMode::None;
            match self.rng.below(100) {
                0..=9 => self.branch(c),
                10..=14 => self.jump(c),
                15..=19 => self.indirect(c),
                20..=34 if outside => self.outside(c),
                _ => self.straight(c),
            }
        }
        // Fold a few results together.
        for _ in 0..self.rng.range(1, 3) {
            let (a, b) = (self.wr(), self.src());
            c.w(add(a, a, b), format!("add x{a}, x{a}, x{b}"));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Test cases and their execution
// ------------------------------------------------------------------------------------------

struct Case {
    seed: u64,
    mode: PrivMode,
    faults: FaultMode,
    code_addr: u64,
    code: Code,
    /// The pc after the final `wfi`.
    end: u64,
    regs: [u64; 32],
    data: Vec<u8>,
    /// Whether the program accesses unmapped addresses (or stores to read-only pages).
    unmapped: bool,
    /// Runs in S-mode under Sv39 (see [`CODE_VA`]).
    paged: bool,
    /// The virtual address of the program's first instruction (`code_addr` when not paged).
    entry: u64,
}

/// The skip handler: accumulates mcause and mtval into x30, steps mepc over the faulting
/// (32-bit) instruction and returns.
fn skip_handler() -> Prog {
    prog(&[
        csrr(T6, MCAUSE),
        add(T5, T5, T6),
        csrr(T6, MTVAL),
        xor(T5, T5, T6),
        csrr(T6, MEPC),
        addi(T6, T6, 4),
        csrw(MEPC, T6),
        mret(),
    ])
}

fn generate(seed: u64, fault_test: bool) -> Case {
    generate_in(seed, fault_test, false)
}

fn generate_in(seed: u64, fault_test: bool, paged: bool) -> Case {
    let mut rng = Rng::new(
        seed ^ if fault_test { 0xfa17 << 48 } else { 0 } ^ if paged { 0x5639 << 32 } else { 0 },
    );
    let mode = if rng.chance(50) && !paged {
        PrivMode::Machine
    } else {
        PrivMode::Supervisor
    };
    let faults = if !fault_test {
        FaultMode::None
    } else if rng.chance(50) {
        FaultMode::Skip
    } else {
        FaultMode::Stop {
            k: rng.range(1, ITERS as i64) as u64,
        }
    };
    let reserved: &[u32] = if fault_test {
        &[ZERO, SP, S0, S1, T5, T6]
    } else {
        &[ZERO, SP, S0, S1]
    };
    let writable = (0..32).filter(|r| !reserved.contains(r)).collect();
    // Code starts somewhere in the 1 KiB before a page boundary, so that blocks (and some
    // 32-bit instructions) cross it.
    let code_addr = CODE + 0x1000 - 2 * rng.range(0, 511) as u64;
    let mut g = Gen {
        rng,
        paged,
        writable,
        faults,
        unmapped: 0,
    };
    let mut code = Code::default();
    g.body(&mut code);
    code.w(addi(S1, S1, -1), "addi x9, x9, -1".into());
    let back = -(code.len() as i64);
    if back >= -4096 {
        code.w(bne(S1, ZERO, back), format!("bne x9, x0, {back}"));
    } else {
        code.w(beq(S1, ZERO, 8), "beq x9, x0, +8".into());
        let back = back - 4;
        code.w(jal(ZERO, back), format!("jal x0, {back}"));
    }
    code.w(wfi(), "wfi".into());
    let entry = if paged {
        CODE_VA + (code_addr - CODE)
    } else {
        code_addr
    };
    assert!(
        !paged || code_addr - CODE + code.len() <= CODE_PAGES * 0x1000,
        "seed {seed}: program too long for the mapped code pages"
    );
    let end = entry + code.len();

    let mut regs = [0u64; 32];
    for r in regs.iter_mut().skip(1) {
        *r = if g.rng.chance(50) {
            g.rng.pick(INTERESTING)
        } else {
            g.rng.next()
        };
    }
    regs[SP as usize] = if paged { SPBASE_VA } else { SPBASE };
    regs[S0 as usize] = if paged { DBASE_VA } else { DBASE };
    regs[S1 as usize] = ITERS;
    let mut data = vec![0u8; DREGION_LEN];
    for b in data.iter_mut() {
        *b = g.rng.next() as u8;
    }
    Case {
        seed,
        mode,
        faults,
        code_addr,
        code,
        end,
        regs,
        data,
        unmapped: g.unmapped > 0,
        paged,
        entry,
    }
}

/// A minimal Sv39 page-table builder (4 KiB leaves only) in guest memory at [`PT_AREA`].
struct Sv39 {
    root: u64,
    next: u64,
}

impl Sv39 {
    fn new(vm: &Vm) -> Sv39 {
        vm.mem.write(PT_AREA, &[0u8; 4096]).unwrap();
        Sv39 {
            root: PT_AREA,
            next: PT_AREA + 0x1000,
        }
    }

    fn satp(&self) -> u64 {
        (8 << 60) | (self.root >> 12)
    }

    fn map(&mut self, vm: &Vm, va: u64, pa: u64, flags: u64) {
        let mut table = self.root;
        for level in [2, 1] {
            let a = table + ((va >> (12 + 9 * level)) & 0x1ff) * 8;
            let e = vm.r64(a);
            table = if e & PTE_V == 0 {
                let t = self.next;
                self.next += 0x1000;
                assert!(t < RAM_BASE + RAM_SIZE, "out of page-table memory");
                vm.mem.write(t, &[0u8; 4096]).unwrap();
                vm.w64(a, ((t >> 12) << 10) | PTE_V);
                t
            } else {
                (e >> 10) << 12
            };
        }
        vm.w64(
            table + ((va >> 12) & 0x1ff) * 8,
            ((pa >> 12) << 10) | flags | PTE_V | PTE_AD,
        );
    }
}

/// Physical address of code byte `va` in the paged layout.
fn code_pa(va: u64) -> u64 {
    let page = (va - CODE_VA) >> 12;
    assert!(page < CODE_PAGES);
    CODE + (CODE_PAGES - 1 - page) * 0x1000 + (va & 0xfff)
}

/// Sets up the paged layout (see [`CODE_VA`]) and writes the program into its frames.
fn load_paged(vm: &mut Vm, case: &Case) {
    let mut pt = Sv39::new(vm);
    for i in 0..CODE_PAGES {
        let va = CODE_VA + i * 0x1000;
        pt.map(vm, va, code_pa(va), PTE_R | PTE_X);
    }
    pt.map(vm, DATA_VA, DREGION + 0x1000, PTE_R | PTE_W);
    pt.map(vm, DATA_VA + 0x1000, DREGION, PTE_R | PTE_W);
    for i in 0..RO_PAGES {
        pt.map(vm, RO_VA + i * 0x1000, DATA + i * 0x1000, PTE_R);
    }
    pt.map(vm, MMIO_BASE, MMIO_BASE, PTE_R | PTE_W);
    // The program, page by page.
    let bytes = &case.code.prog.bytes;
    let mut done = 0;
    while done < bytes.len() {
        let va = case.entry + done as u64;
        let n = (0x1000 - (va & 0xfff) as usize).min(bytes.len() - done);
        vm.mem.write(code_pa(va), &bytes[done..done + n]).unwrap();
        done += n;
    }
    vm.set_csr(SATP, pt.satp());
}

/// Everything architectural a run leaves behind.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Every exit of `run` but BudgetExhausted, with the pc and instret at that exit.
    exits: Vec<(Exit, u64, u64)>,
    x: [u64; 32],
    pc: u64,
    instret: u64,
    prv: PrivMode,
    csrs: Vec<(&'static str, u64)>,
    data: Vec<u8>,
}

/// What the "device" returns for the n-th exit, an MMIO read of `addr`.
fn mmio_value(addr: u64, size: u8, n: usize) -> u64 {
    splitmix(addr ^ ((size as u64) << 40) ^ ((n as u64) << 48))
}

/// Runs `case`; returns what it left behind and how many blocks the JIT compiled.
fn execute(case: &Case, jit: bool) -> (Outcome, u64) {
    let mut vm = Vm::with_config(hart_config(jit));
    if case.paged {
        load_paged(&mut vm, case);
    } else {
        vm.load(case.code_addr, &case.code.prog);
    }
    if case.faults == FaultMode::Skip {
        vm.load(HANDLER, &skip_handler());
        vm.set_csr(MTVEC, HANDLER);
    }
    vm.mem.write(DREGION, &case.data).unwrap();
    for (i, v) in case.regs.iter().enumerate() {
        vm.hart.set_reg(i, *v);
    }
    vm.hart.set_priv_mode(case.mode);
    vm.hart.set_pc(case.entry);
    let mut exits = Vec::new();
    loop {
        let e = vm.hart.run(1_000_000);
        if vm.hart.instret() > MAX_INSTRET || exits.len() >= MAX_EXITS {
            exits.push((e, vm.hart.pc(), vm.hart.instret()));
            break;
        }
        if e == Exit::BudgetExhausted {
            continue;
        }
        exits.push((e.clone(), vm.hart.pc(), vm.hart.instret()));
        match e {
            Exit::MmioRead { addr, size } => {
                vm.hart
                    .complete_mmio_read(mmio_value(addr, size, exits.len()))
            }
            Exit::MmioWrite { .. } => {}
            _ => break,
        }
    }
    let mut x = [0u64; 32];
    for (i, r) in x.iter_mut().enumerate() {
        *r = vm.hart.reg(i);
    }
    let csrs = [
        ("mstatus", MSTATUS),
        ("mepc", MEPC),
        ("mcause", MCAUSE),
        ("mtval", MTVAL),
        ("sepc", SEPC),
        ("scause", SCAUSE),
        ("stval", STVAL),
        ("minstret", MINSTRET),
    ]
    .iter()
    .map(|&(n, c)| (n, vm.csr(c)))
    .collect();
    let out = Outcome {
        exits,
        x,
        pc: vm.hart.pc(),
        instret: vm.hart.instret(),
        prv: vm.hart.priv_mode(),
        csrs,
        data: vm.read(DREGION, DREGION_LEN),
    };
    (out, vm.hart.jit_blocks())
}

/// The differences between two outcomes, readably: for each kind of state that differs, the
/// first difference (the exits first: they are in time order).
fn differences(a: &Outcome, b: &Outcome) -> Vec<String> {
    let mut d = Vec::new();
    let show = |e: Option<&(Exit, u64, u64)>| match e {
        Some((e, pc, n)) => format!("{e:?} at pc {pc:#x}, instret {n}"),
        None => "no more exits".into(),
    };
    let n = a.exits.len().max(b.exits.len());
    if let Some(i) = (0..n).find(|&i| a.exits.get(i) != b.exits.get(i)) {
        d.push(format!(
            "exit #{i} (of {} with the JIT, {} without): jit {}, interpreter {}",
            a.exits.len(),
            b.exits.len(),
            show(a.exits.get(i)),
            show(b.exits.get(i))
        ));
    }
    let regs: Vec<usize> = (0..32).filter(|&i| a.x[i] != b.x[i]).collect();
    if let Some(&i) = regs.first() {
        d.push(format!(
            "x{i}: jit {:#018x}, interpreter {:#018x} ({} registers differ: {})",
            a.x[i],
            b.x[i],
            regs.len(),
            regs.iter()
                .map(|r| format!("x{r}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if a.pc != b.pc {
        d.push(format!("pc: jit {:#x}, interpreter {:#x}", a.pc, b.pc));
    }
    if a.instret != b.instret {
        d.push(format!(
            "instret: jit {}, interpreter {}",
            a.instret, b.instret
        ));
    }
    if a.prv != b.prv {
        d.push(format!(
            "privilege: jit {:?}, interpreter {:?}",
            a.prv, b.prv
        ));
    }
    for (x, y) in a.csrs.iter().zip(&b.csrs) {
        if x != y {
            d.push(format!("{}: jit {:#x}, interpreter {:#x}", x.0, x.1, y.1));
        }
    }
    let bytes: Vec<usize> = (0..a.data.len())
        .filter(|&i| a.data[i] != b.data[i])
        .collect();
    if let Some(&i) = bytes.first() {
        let addr = DREGION + i as u64;
        d.push(format!(
            "data byte at {addr:#x} (x8{:+}): jit {:#04x}, interpreter {:#04x} ({} bytes differ)",
            addr as i64 - DBASE as i64,
            a.data[i],
            b.data[i],
            bytes.len()
        ));
    }
    d
}

fn describe(case: &Case, out: &Outcome) -> String {
    let mut regs = String::new();
    for (i, v) in case.regs.iter().enumerate() {
        regs.push_str(&format!("x{i}={v:#x} "));
    }
    format!(
        "seed {} ({:?}{}, faults {:?}); initial registers: {regs}\n\
         interpreter run: {} exits, the last {}; pc {:#x}, instret {}\n\
         program at {:#x} ({} bytes; data base x8 = {:#x}, sp = {:#x}):\n{}",
        case.seed,
        case.mode,
        if case.paged { ", Sv39" } else { "" },
        case.faults,
        out.exits.len(),
        match out.exits.last() {
            Some((e, pc, n)) => format!("{e:?} at pc {pc:#x}, instret {n}"),
            None => "none".into(),
        },
        out.pc,
        out.instret,
        case.entry,
        case.code.len(),
        case.regs[S0 as usize],
        case.regs[SP as usize],
        case.code.listing(case.entry),
    )
}

/// What [`check`] counted of one case.
#[derive(Default)]
struct Stats {
    /// Guest instructions per side.
    insns: u64,
    /// Blocks the JIT compiled.
    jit_blocks: u64,
    /// Programs of which the JIT compiled at least one block.
    compiled_programs: u64,
    programs: u64,
}

impl Stats {
    fn add(&mut self, instret: u64, jit_blocks: u64) {
        self.insns += instret;
        self.jit_blocks += jit_blocks;
        self.compiled_programs += (jit_blocks > 0) as u64;
        self.programs += 1;
    }

    /// Asserts that the JIT side really ran compiled code: on a host with a JIT, a JIT that
    /// cannot start (no executable memory, a compile error on every block) would otherwise
    /// make this test compare the interpreter with itself.
    fn assert_jit_ran(&self, min_share_percent: u64) {
        if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            return;
        }
        assert!(
            self.jit_blocks > 0,
            "the JIT compiled no block in {} programs: the test compared the interpreter \
             with itself",
            self.programs
        );
        assert!(
            self.compiled_programs * 100 >= self.programs * min_share_percent,
            "the JIT compiled blocks in only {} of {} programs",
            self.compiled_programs,
            self.programs
        );
    }
}

/// Runs `case` with and without the JIT and asserts the same results; returns the outcome
/// and the number of blocks the JIT side compiled.
fn check(case: &Case) -> (Outcome, u64) {
    let (jit, jit_blocks) = execute(case, true);
    let (interp, interp_blocks) = execute(case, false);
    assert_eq!(interp_blocks, 0, "blocks compiled with the JIT off");
    let d = differences(&jit, &interp);
    if !d.is_empty() {
        panic!(
            "JIT and interpreter differ:\n  {}\n{}",
            d.join("\n  "),
            describe(case, &interp)
        );
    }
    assert_eq!(jit, interp, "{}", describe(case, &interp));
    // The program itself must be what the generator meant: it ran to the end (or, for
    // FaultMode::Stop, to the trap), without an unexpected trap.
    let last = interp.exits.last().map(|e| (&e.0, e.1));
    // Access faults, or page faults under Sv39 (unmapped, or a store to a read-only page).
    let fault = |cause: u64| {
        if case.paged {
            matches!(cause, 13 | 15)
        } else {
            matches!(cause, 5 | 7)
        }
    };
    match case.faults {
        FaultMode::Stop { .. } if case.unmapped => assert!(
            last == Some((&Exit::Wfi, TRAP + 4)) && fault(interp.csrs[2].1),
            "the program did not end at its access fault\n{}",
            describe(case, &interp)
        ),
        _ => assert!(
            last == Some((&Exit::Wfi, case.end))
                && interp.x[S1 as usize] == 0
                && match case.faults {
                    FaultMode::None => interp.csrs[2].1 == 0,
                    _ => interp.csrs[2].1 == 0 || fault(interp.csrs[2].1),
                },
            "the program did not run to its end\n{}",
            describe(case, &interp)
        ),
    }
    (interp, jit_blocks)
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("VMK_JIT_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("VMK_JIT_DIFF_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

/// Runs `n` seeds of the generator (`faults`, `paged`), compares each, prints what ran, and
/// asserts that the JIT compiled code in at least `min_share_percent` of the programs.
/// `inspect` sees every run (for extra counts).
fn run_seeds(
    what: &str,
    n: u64,
    faults: bool,
    paged: bool,
    min_share_percent: u64,
    mut inspect: impl FnMut(&Outcome),
) -> Stats {
    let start = std::time::Instant::now();
    let mut stats = Stats::default();
    for seed in seeds(n) {
        let (out, blocks) = check(&generate_in(seed, faults, paged));
        stats.add(out.instret, blocks);
        inspect(&out);
    }
    eprintln!(
        "{} {what}, {} guest instructions per side, {} blocks compiled (in {} programs), {:?}",
        stats.programs,
        stats.insns,
        stats.jit_blocks,
        stats.compiled_programs,
        start.elapsed()
    );
    stats.assert_jit_ran(min_share_percent);
    stats
}

#[test]
fn random_programs_match() {
    // Every program loops ITERS times over its body: the JIT compiles in all of them.
    run_seeds("programs", SEEDS, false, false, 100, |_| {});
}

#[test]
fn faulting_programs_match() {
    // Programs that stop at an early fault may end before anything is hot.
    run_seeds("faulting programs", FAULT_SEEDS, true, false, 50, |_| {});
}

#[test]
fn paged_programs_match() {
    run_seeds("paged programs", PAGED_SEEDS, false, true, 100, |_| {});
}

#[test]
fn paged_faulting_programs_match() {
    // Programs whose last trap was a store page fault on the read-only pages (the store was
    // refused identically with the JIT on and off: `check` compares mcause, mtval, mepc and
    // the data bytes the aliased pages show).
    let mut read_only_stores = 0;
    let ro = RO_VA..RO_VA + RO_PAGES * 0x1000;
    let stats = run_seeds(
        "paged faulting programs",
        PAGED_FAULT_SEEDS,
        true,
        true,
        50,
        |out| {
            let (mcause, mtval) = (out.csrs[2].1, out.csrs[3].1);
            if mcause == 15 && ro.contains(&mtval) {
                read_only_stores += 1;
            }
        },
    );
    eprintln!("{read_only_stores} ended on a read-only store");
    if stats.programs >= 20 {
        assert!(
            read_only_stores > 0,
            "no program stored to the read-only pages"
        );
    }
}

#[test]
fn generator_is_deterministic() {
    for seed in [0, 1, 12345] {
        let (a, b) = (generate(seed, false), generate(seed, false));
        assert_eq!(a.code.prog.bytes, b.code.prog.bytes);
        assert_eq!(a.regs, b.regs);
        assert_eq!(a.data, b.data);
    }
}
