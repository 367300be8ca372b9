//! Instruction-level tests of the interpreter: every RV64IMAFD and C instruction form with the
//! corner cases the unprivileged spec defines, and the reserved encodings.
//!
//! Expected values are derived from the RISC-V Unprivileged ISA spec (20191213 / 2024
//! ratified), never from running the code under test. The encoder the tests write their
//! programs with is checked against GNU as in `vmk-testkit` (`tests/gnu_as.rs`).

mod asm;

use asm::*;
use vmk_cpu::Exit;

// ==========================================================================================
// Helpers
// ==========================================================================================

type R3 = fn(u32, u32, u32) -> u32;
type RImm = fn(u32, u32, i64) -> u32;
type RSh = fn(u32, u32, u32) -> u32;

/// Runs one instruction with a1 = `a`, a2 = `b` and returns a0.
fn run1(insn: u32, a: u64, b: u64) -> u64 {
    let mut vm = Vm::new();
    vm.code32(&[insn]);
    vm.set_x(A1, a);
    vm.set_x(A2, b);
    vm.run_ok();
    assert_eq!((vm.x(A1), vm.x(A2)), (a, b), "sources changed");
    vm.x(A0)
}

/// Collects mismatches so that one test reports every failing case at once.
#[derive(Default)]
struct Check {
    failures: Vec<String>,
}

impl Check {
    fn eq(&mut self, what: impl std::fmt::Display, got: u64, want: u64) {
        if got != want {
            self.failures
                .push(format!("{what}: got {got:#x}, want {want:#x}"));
        }
    }

    fn done(self) {
        assert!(
            self.failures.is_empty(),
            "{} failures:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

fn check_r(c: &mut Check, name: &str, f: R3, cases: &[(u64, u64, u64)]) {
    for &(a, b, want) in cases {
        let got = run1(f(A0, A1, A2), a, b);
        c.eq(format_args!("{name} {a:#x}, {b:#x}"), got, want);
    }
}

fn check_i(c: &mut Check, name: &str, f: RImm, cases: &[(u64, i64, u64)]) {
    for &(a, imm, want) in cases {
        let got = run1(f(A0, A1, imm), a, 0);
        c.eq(format_args!("{name} {a:#x}, {imm}"), got, want);
    }
}

fn check_sh(c: &mut Check, name: &str, f: RSh, cases: &[(u64, u32, u64)]) {
    for &(a, sh, want) in cases {
        let got = run1(f(A0, A1, sh), a, 0);
        c.eq(format_args!("{name} {a:#x}, {sh}"), got, want);
    }
}

const M1: u64 = u64::MAX; // -1
const MIN: u64 = 1 << 63; // i64::MIN
const MAX: u64 = MIN - 1; // i64::MAX
const X: u64 = 0x0123_4567_89ab_cdef;

fn neg(v: i64) -> u64 {
    v as u64
}

// ==========================================================================================
// RV64I
// ==========================================================================================

#[test]
fn rv64i_register_register() {
    let mut c = Check::default();
    check_r(
        &mut c,
        "add",
        add,
        &[
            (1, 2, 3),
            (MAX, 1, MIN),
            (M1, 1, 0),
            (MIN, MIN, 0),
            (neg(-5), 3, neg(-2)),
        ],
    );
    check_r(
        &mut c,
        "sub",
        sub,
        &[(3, 5, neg(-2)), (MIN, 1, MAX), (0, MIN, MIN), (0, 1, M1)],
    );
    check_r(
        &mut c,
        "slt",
        slt,
        &[
            (M1, 1, 1),
            (1, M1, 0),
            (5, 5, 0),
            (MIN, MAX, 1),
            (MAX, MIN, 0),
            (neg(-3), neg(-2), 1),
        ],
    );
    check_r(
        &mut c,
        "sltu",
        sltu,
        &[(M1, 1, 0), (1, M1, 1), (5, 5, 0), (0, 1, 1), (MAX, MIN, 1)],
    );
    let (p, q) = (0xff00_ff00_ff00_ff00, 0x0ff0_0ff0_0ff0_0ff0);
    check_r(
        &mut c,
        "xor",
        xor,
        &[(p, q, 0xf0f0_f0f0_f0f0_f0f0), (M1, M1, 0)],
    );
    check_r(
        &mut c,
        "or",
        or,
        &[(p, q, 0xfff0_fff0_fff0_fff0), (0, 0, 0)],
    );
    check_r(
        &mut c,
        "and",
        and,
        &[(p, q, 0x0f00_0f00_0f00_0f00), (M1, X, X)],
    );
    // Register shift amounts use the low 6 bits of rs2.
    check_r(
        &mut c,
        "sll",
        sll,
        &[
            (X, 0, X),
            (X, 4, 0x1234_5678_9abc_def0),
            (1, 31, 0x8000_0000),
            (1, 32, 0x1_0000_0000),
            (1, 63, MIN),
            (1, 64, 1),
            (1, 65, 2),
            (1, 0xffff_ffff_ffff_ffc1, 2),
            (3, 63, MIN),
        ],
    );
    check_r(
        &mut c,
        "srl",
        srl,
        &[
            (MIN, 63, 1),
            (MIN, 32, 0x8000_0000),
            (MIN, 31, 0x1_0000_0000),
            (M1, 0, M1),
            (M1, 64, M1),
            (MIN, 0x7f, 1),
            (X, 4, 0x0012_3456_789a_bcde),
        ],
    );
    check_r(
        &mut c,
        "sra",
        sra,
        &[
            (MIN, 63, M1),
            (MIN, 32, 0xffff_ffff_8000_0000),
            (MIN, 31, 0xffff_ffff_0000_0000),
            (1 << 62, 62, 1),
            (X, 0, X),
            (MIN, 64, MIN),
            (MIN, 0xffff_ffff_ffff_ff81, 0xc000_0000_0000_0000),
            (X, 4, 0x0012_3456_789a_bcde),
        ],
    );
    c.done();
}

#[test]
fn rv64i_register_immediate() {
    let mut c = Check::default();
    check_i(
        &mut c,
        "addi",
        addi,
        &[
            (5, -6, M1),
            (MAX, 1, MIN),
            (0, -2048, neg(-2048)),
            (0, 2047, 2047),
            (M1, 1, 0),
        ],
    );
    check_i(
        &mut c,
        "slti",
        slti,
        &[
            (M1, 0, 1),
            (0, -1, 0),
            (neg(-2049), -2048, 1),
            (neg(-2048), -2048, 0),
            (MIN, 2047, 1),
            (MAX, -2048, 0),
        ],
    );
    // SLTIU: the immediate is sign-extended, then compared unsigned.
    check_i(
        &mut c,
        "sltiu",
        sltiu,
        &[
            (5, -1, 1),
            (M1, -1, 0),
            (0, 1, 1),
            (1, 1, 0),
            (0xffff_ffff_ffff_f800, -2048, 0),
            (0xffff_ffff_ffff_f7ff, -2048, 1),
        ],
    );
    check_i(
        &mut c,
        "xori",
        xori,
        &[
            (0x1234, -1, 0xffff_ffff_ffff_edcb),
            (0xff, 0x0f, 0xf0),
            (X, 0, X),
        ],
    );
    check_i(
        &mut c,
        "ori",
        ori,
        &[
            (0x1000_0000_0000_0000, -2048, 0xffff_ffff_ffff_f800),
            (0x10, 1, 0x11),
        ],
    );
    check_i(
        &mut c,
        "andi",
        andi,
        &[
            (M1, -2048, 0xffff_ffff_ffff_f800),
            (0xf0f0_f0f0_f0f0_f0f0, 0x7ff, 0x0f0),
            (X, -1, X),
        ],
    );
    check_sh(
        &mut c,
        "slli",
        slli,
        &[
            (1, 0, 1),
            (1, 31, 0x8000_0000),
            (1, 32, 0x1_0000_0000),
            (1, 63, MIN),
            (X, 4, 0x1234_5678_9abc_def0),
        ],
    );
    check_sh(
        &mut c,
        "srli",
        srli,
        &[
            (MIN, 0, MIN),
            (MIN, 31, 0x1_0000_0000),
            (MIN, 32, 0x8000_0000),
            (MIN, 63, 1),
        ],
    );
    check_sh(
        &mut c,
        "srai",
        srai,
        &[
            (MIN, 0, MIN),
            (MIN, 31, 0xffff_ffff_0000_0000),
            (MIN, 32, 0xffff_ffff_8000_0000),
            (MIN, 63, M1),
            (MAX, 63, 0),
        ],
    );
    c.done();
}

#[test]
fn rv64i_word_ops_sign_extend_bit_31() {
    let mut c = Check::default();
    let sx = 0xffff_ffff_8000_0000u64;
    check_r(
        &mut c,
        "addw",
        addw,
        &[
            (0x7fff_ffff, 1, sx),
            (0xffff_ffff, 1, 0),
            (0x1_0000_0005, 0x2_0000_0003, 8),
            (0x8000_0000, 0x8000_0000, 0),
        ],
    );
    check_r(
        &mut c,
        "subw",
        subw,
        &[
            (0x8000_0000, 1, 0x7fff_ffff),
            (0, 1, M1),
            (0x1_0000_0000, 0, 0),
            (0x7fff_ffff, neg(-1), sx),
        ],
    );
    check_i(
        &mut c,
        "addiw",
        addiw,
        &[
            (0x7fff_ffff, 1, sx),
            (0x1_8000_0000, 0, sx),
            (0, -1, M1),
            (0xffff_ffff_0000_0001, -2, M1),
            (0x1234_5678_0000_0000, 2047, 2047),
        ],
    );
    // W-form register shifts use the low 5 bits of rs2.
    check_r(
        &mut c,
        "sllw",
        sllw,
        &[
            (1, 31, sx),
            (1, 32, 1),
            (1, 33, 2),
            (0xffff_ffff_0000_0001, 0, 1),
            (3, 31, sx),
            (0x1_0000_0001, 4, 0x10),
        ],
    );
    check_r(
        &mut c,
        "srlw",
        srlw,
        &[
            (sx, 0, sx),
            (0x8000_0000, 31, 1),
            (0x8000_0000, 1, 0x4000_0000),
            (0x8000_0000, 32, sx),
            (0x1234_5678_9abc_def0, 4, 0x09ab_cdef),
            (0xffff_ffff_ffff_ffff, 63, 1),
        ],
    );
    check_r(
        &mut c,
        "sraw",
        sraw,
        &[
            (0x8000_0000, 31, M1),
            (0x8000_0000, 1, 0xffff_ffff_c000_0000),
            (0x7fff_ffff, 30, 1),
            (0x1_7fff_ffff, 0, 0x7fff_ffff),
            (0x8000_0000, 0x3f, M1),
            (0x8000_0000, 32, sx),
        ],
    );
    check_sh(
        &mut c,
        "slliw",
        slliw,
        &[
            (1, 31, sx),
            (0x1_0000_0001, 0, 1),
            (0xffff_ffff, 1, neg(-2)),
            (0x7fff_ffff, 0, 0x7fff_ffff),
        ],
    );
    check_sh(
        &mut c,
        "srliw",
        srliw,
        &[
            (sx, 0, sx),
            (0x8000_0000, 31, 1),
            (0xffff_ffff, 1, 0x7fff_ffff),
            (0xabcd_ef01_8000_0000, 0, sx),
        ],
    );
    check_sh(
        &mut c,
        "sraiw",
        sraiw,
        &[
            (0x8000_0000, 31, M1),
            (0x8000_0000, 0, sx),
            (0x1_4000_0000, 30, 1),
            (0x8000_0000, 4, 0xffff_ffff_f800_0000),
        ],
    );
    c.done();
}

#[test]
fn lui_and_auipc() {
    let mut c = Check::default();
    for (imm20, want) in [
        (0x80000i64, 0xffff_ffff_8000_0000u64),
        (0xfffff, 0xffff_ffff_ffff_f000),
        (0x7ffff, 0x7fff_f000),
        (1, 0x1000),
        (-1, 0xffff_ffff_ffff_f000),
    ] {
        c.eq(
            format_args!("lui {imm20:#x}"),
            run1(lui(A0, imm20), 0, 0),
            want,
        );
    }
    // AUIPC adds the sign-extended 32-bit immediate to its own address.
    for (imm20, want) in [
        (0xfffffi64, CODE - 0x1000),
        (0x80000, CODE.wrapping_add(0xffff_ffff_8000_0000)),
        (1, CODE + 0x1000),
        (0, CODE),
        (0x7ffff, CODE + 0x7fff_f000),
    ] {
        c.eq(
            format_args!("auipc {imm20:#x}"),
            run1(auipc(A0, imm20), 0, 0),
            want,
        );
    }
    // Not the first instruction of the program: pc is that of the auipc.
    let mut vm = Vm::new();
    vm.code(Prog::new().i(nop()).c(c_nop()).i(auipc(A0, 0xfffff)));
    vm.run_ok();
    c.eq("auipc at CODE+6", vm.x(A0), CODE + 6 - 0x1000);
    c.done();
}

#[test]
fn jal_links_and_jumps() {
    // Forward: skip one instruction.
    let mut vm = Vm::new();
    vm.code32(&[jal(RA, 8), addi(A0, ZERO, 1), addi(A1, ZERO, 2)]);
    vm.run_ok();
    assert_eq!((vm.x(RA), vm.x(A0), vm.x(A1)), (CODE + 4, 0, 2));

    // Maximal offsets: +0xffffe (every offset bit but the sign) and -0x100000 (the sign).
    for (at, off) in [
        (CODE + 0x10_0100, 0xffffei64),
        (CODE + 0x10_0100, -0x100000),
    ] {
        let mut vm = Vm::new();
        vm.load(at, &prog(&[jal(T0, off)]));
        let target = at.wrapping_add(off as u64);
        vm.load(target, &prog(&[wfi()]));
        vm.hart.set_pc(at);
        assert_eq!(vm.run(), Exit::Wfi);
        assert_eq!(vm.hart.pc(), target + 4, "jal {off:#x}");
        assert_eq!(vm.x(T0), at + 4);
    }

    // Every single offset bit (bit 1 alone would overlap the jal: covered by 0xffffe above).
    for b in 2..20 {
        let off = 1i64 << b;
        let mut vm = Vm::new();
        let at = CODE + 0x1000;
        vm.load(at, &prog(&[jal(RA, off)]));
        vm.load(at + off as u64, &prog(&[wfi()]));
        vm.hart.set_pc(at);
        assert_eq!(vm.run(), Exit::Wfi, "jal {off:#x}");
        assert_eq!(vm.hart.pc(), at + off as u64 + 4, "jal {off:#x}");
        assert_eq!(vm.x(RA), at + 4);
    }
}

#[test]
fn jalr_links_and_clears_bit_0() {
    // jalr ra, 1(a1) with a1 = CODE+12: target (CODE+13) & !1 = CODE+12.
    let mut vm = Vm::new();
    vm.code32(&[
        jalr(RA, A1, 1),
        addi(A0, ZERO, 1),
        addi(A0, ZERO, 2),
        addi(A2, ZERO, 3),
    ]);
    vm.set_x(A1, CODE + 12);
    vm.run_ok();
    assert_eq!((vm.x(RA), vm.x(A0), vm.x(A2)), (CODE + 4, 0, 3));

    // Bit 1 of the target is kept: (CODE+12+3) & !1 = CODE+14, which skips a c.li.
    let mut vm = Vm::new();
    let mut p = Prog::new();
    p.i(jalr(RA, A1, 3)).i(nop()).i(nop()).c(c_li(A0, 1));
    vm.code(&p);
    vm.set_x(A1, CODE + 12);
    vm.run_ok();
    assert_eq!(vm.x(A0), 0);

    // rd == rs1: the target uses the old value; negative immediate.
    let mut vm = Vm::new();
    vm.code32(&[jalr(A1, A1, -4), addi(A0, ZERO, 1), addi(A2, ZERO, 3)]);
    vm.set_x(A1, CODE + 12);
    vm.run_ok();
    assert_eq!((vm.x(A1), vm.x(A0), vm.x(A2)), (CODE + 4, 0, 3));

    // Maximal immediates: a1 = target - imm.
    for imm in [2047i64, -2048] {
        let mut vm = Vm::new();
        let target = CODE + 0x2000;
        vm.code32(&[jalr(T0, A1, imm)]);
        vm.load(target, &prog(&[wfi()]));
        vm.set_x(A1, target.wrapping_sub(imm as u64));
        assert_eq!(vm.run(), Exit::Wfi);
        assert_eq!(vm.hart.pc(), target + 4, "jalr imm {imm}");
        assert_eq!(vm.x(T0), CODE + 4);
    }
}

type Br = fn(u32, u32, i64) -> u32;
/// (rs1, rs2, taken)
type BrCases = &'static [(u64, u64, bool)];

/// Runs `b a1, a2, +12` over [not taken: a0 = 1; wfi] [taken: a0 = 2; wfi].
fn branch_taken(f: Br, a: u64, b: u64) -> bool {
    let mut vm = Vm::new();
    vm.code32(&[f(A1, A2, 12), addi(A0, ZERO, 1), wfi(), addi(A0, ZERO, 2)]);
    vm.set_x(A1, a);
    vm.set_x(A2, b);
    assert_eq!(vm.run(), Exit::Wfi, "{}", vm.state());
    match (vm.x(A0), vm.hart.pc()) {
        (1, pc) if pc == CODE + 12 => false,
        (2, pc) if pc == CODE + 20 => true,
        (v, pc) => panic!("a0 = {v}, pc = {pc:#x}"),
    }
}

#[test]
fn every_branch_taken_and_not_taken() {
    let cases: [(&str, Br, BrCases); 6] = [
        ("beq", beq, &[(5, 5, true), (5, 6, false), (M1, 1, false)]),
        ("bne", bne, &[(5, 6, true), (5, 5, false), (0, MIN, true)]),
        (
            "blt",
            blt,
            &[
                (M1, 1, true),
                (1, M1, false),
                (5, 5, false),
                (MIN, MAX, true),
            ],
        ),
        (
            "bge",
            bge,
            &[
                (1, M1, true),
                (M1, 1, false),
                (5, 5, true),
                (MAX, MIN, true),
            ],
        ),
        (
            "bltu",
            bltu,
            &[
                (1, M1, true),
                (M1, 1, false),
                (5, 5, false),
                (MAX, MIN, true),
            ],
        ),
        (
            "bgeu",
            bgeu,
            &[
                (M1, 1, true),
                (1, M1, false),
                (5, 5, true),
                (MIN, MAX, true),
            ],
        ),
    ];
    let mut c = Check::default();
    for (name, f, list) in cases {
        for &(a, b, want) in list {
            c.eq(
                format_args!("{name} {a:#x}, {b:#x} taken"),
                branch_taken(f, a, b) as u64,
                want as u64,
            );
        }
    }
    c.done();
}

#[test]
fn branch_offsets_backward_and_maximal() {
    // A counted backward loop.
    let mut vm = Vm::new();
    vm.code32(&[addi(A0, A0, 1), addi(A1, A1, -1), bne(A1, ZERO, -8)]);
    vm.set_x(A1, 10);
    vm.run_ok();
    assert_eq!(vm.x(A0), 10);

    // +4094 (all offset bits but the sign), -4096 (the sign), and every single bit.
    let at = CODE + 0x2000;
    let mut offs: Vec<i64> = (1..12).map(|b| 1i64 << b).collect();
    offs.extend([4094, -4096, -2, -0x556]);
    for off in offs {
        let mut vm = Vm::new();
        vm.load(at, &prog(&[beq(ZERO, ZERO, off)]));
        let target = at.wrapping_add(off as u64);
        if off == -2 {
            // A 16-bit c.addi at at-2 runs, then the branch again... make it not loop: bne.
            vm.load(at, &prog(&[bne(A0, ZERO, -2), wfi()]));
            vm.load(target, &Prog::new().c(c_addi(A0, -1)).clone());
            vm.set_x(A0, 1);
            vm.hart.set_pc(at);
            assert_eq!(vm.run(), Exit::Wfi);
            assert_eq!(vm.hart.pc(), at + 8);
            assert_eq!(vm.x(A0), 0);
            continue;
        }
        vm.load(target, &prog(&[wfi()]));
        vm.hart.set_pc(at);
        assert_eq!(vm.run(), Exit::Wfi, "beq {off}");
        assert_eq!(vm.hart.pc(), target + 4, "beq {off}");
    }
}

/// Byte pattern of the data area: distinct for every address in a 64 KiB range.
fn pat(a: u64) -> u8 {
    (a as u8).wrapping_mul(31) ^ ((a >> 8) as u8).wrapping_mul(17) ^ 0x5a
}

/// `n` pattern bytes at `a`, little-endian.
fn pat_le(a: u64, n: u64) -> u64 {
    (0..n).fold(0, |v, k| v | (pat(a + k) as u64) << (8 * k))
}

fn fill_pattern(vm: &Vm, base: u64, len: u64) {
    let b: Vec<u8> = (0..len).map(|k| pat(base + k)).collect();
    vm.mem.write(base, &b).unwrap();
}

fn sext(v: u64, bits: u32) -> u64 {
    (((v << (64 - bits)) as i64) >> (64 - bits)) as u64
}

#[test]
fn loads_extend_correctly() {
    let mut c = Check::default();
    type L = fn(u32, u32, i64) -> u32;
    let mk = |vals: &[(u64, u64)]| {
        let vm = Vm::new();
        for &(a, v) in vals {
            vm.w64(a, v);
        }
        vm
    };
    // Bytes at DATA: ef cd ab 89 67 45 23 81, then 7f 80 ff 7f 00 80 34 12.
    let init = [
        (DATA, 0x8123_4567_89ab_cdef),
        (DATA + 8, 0x1234_8000_7fff_807f),
    ];
    let cases: [(&str, L, i64, u64); 18] = [
        ("lb", lb, 0, 0xffff_ffff_ffff_ffef),
        ("lb", lb, 4, 0x67),
        ("lb", lb, 8, 0x7f),
        ("lb", lb, 9, 0xffff_ffff_ffff_ff80),
        ("lbu", lbu, 0, 0xef),
        ("lbu", lbu, 9, 0x80),
        ("lh", lh, 0, 0xffff_ffff_ffff_cdef),
        ("lh", lh, 4, 0x4567),
        ("lh", lh, 10, 0x7fff),
        ("lhu", lhu, 0, 0xcdef),
        ("lhu", lhu, 12, 0x8000),
        ("lw", lw, 0, 0xffff_ffff_89ab_cdef),
        ("lw", lw, 4, 0xffff_ffff_8123_4567),
        ("lw", lw, 8, 0x7fff_807f),
        ("lwu", lwu, 0, 0x89ab_cdef),
        ("lwu", lwu, 4, 0x8123_4567),
        ("ld", ld, 0, 0x8123_4567_89ab_cdef),
        ("ld", ld, 8, 0x1234_8000_7fff_807f),
    ];
    for (name, f, off, want) in cases {
        // Through a positive and a negative immediate.
        for (base, imm) in [(DATA, off), (DATA + 16, off - 16)] {
            let mut vm = mk(&init);
            vm.code32(&[f(A0, A1, imm)]);
            vm.set_x(A1, base);
            vm.run_ok();
            c.eq(format_args!("{name} {imm}({base:#x})"), vm.x(A0), want);
        }
    }
    // Maximal immediates.
    for (imm, base) in [(2047i64, DATA + 7 - 2047), (-2048, DATA + 7 + 2048)] {
        let mut vm = mk(&init);
        vm.code32(&[lb(A0, A1, imm), lbu(A2, A1, imm)]);
        vm.set_x(A1, base);
        vm.run_ok();
        c.eq(format_args!("lb {imm}"), vm.x(A0), 0xffff_ffff_ffff_ff81);
        c.eq(format_args!("lbu {imm}"), vm.x(A2), 0x81);
    }
    c.done();
}

#[test]
fn stores_write_exactly_their_width() {
    type S = fn(u32, u32, i64) -> u32;
    let v = 0x1122_3344_5566_7788u64;
    for (name, f, size) in [
        ("sb", sb as S, 1u64),
        ("sh", sh, 2),
        ("sw", sw, 4),
        ("sd", sd, 8),
    ] {
        for (base, imm) in [
            (DATA, 8i64),
            (DATA + 2048 + 8, -2048),
            (DATA + 8 - 2047, 2047),
        ] {
            let mut vm = Vm::new();
            vm.mem.write(DATA, &[0xaa; 32]).unwrap();
            vm.code32(&[f(A2, A1, imm)]);
            vm.set_x(A1, base);
            vm.set_x(A2, v);
            vm.run_ok();
            let mut want = [0xaau8; 32];
            want[8..8 + size as usize].copy_from_slice(&v.to_le_bytes()[..size as usize]);
            assert_eq!(vm.read(DATA, 32), want, "{name} {imm}({base:#x})");
        }
    }
}

#[test]
fn misaligned_and_page_crossing_accesses_are_performed() {
    // Documented choice (lib.rs): misaligned loads and stores do not trap, also across pages.
    let mut vm = Vm::new();
    let page_end = DATA + 0x1000;
    fill_pattern(&vm, DATA, 0x2000);
    vm.code32(&[
        lw(A0, A1, 1),
        ld(A2, A3, 0),
        lh(A4, A3, 3),
        sd(A5, A6, 0),
        lwu(A7, A1, 3),
    ]);
    vm.set_x(A1, DATA);
    vm.set_x(A3, page_end - 5);
    vm.set_x(A5, 0x0102_0304_0506_0708);
    vm.set_x(A6, page_end + 0x100 - 3);
    vm.run_ok();
    assert_eq!(vm.x(A0), sext(pat_le(DATA + 1, 4), 32));
    assert_eq!(vm.x(A2), pat_le(page_end - 5, 8));
    assert_eq!(vm.x(A4), sext(pat_le(page_end - 2, 2), 16));
    assert_eq!(vm.r64(page_end + 0x100 - 3), 0x0102_0304_0506_0708);
    assert_eq!(vm.x(A7), pat_le(DATA + 3, 4));
}

// ==========================================================================================
// RV64M
// ==========================================================================================

#[test]
fn multiply() {
    let mut c = Check::default();
    check_r(
        &mut c,
        "mul",
        mul,
        &[
            (neg(-3), 5, neg(-15)),
            (MIN, M1, MIN),
            (M1, M1, 1),
            (0x1_0000_0001, 0x1_0000_0001, 0x2_0000_0001),
            (X, 0, 0),
        ],
    );
    check_r(
        &mut c,
        "mulh",
        mulh,
        &[
            (M1, M1, 0),
            (MIN, MIN, 0x4000_0000_0000_0000),
            (M1, 1, M1),
            (1 << 62, 4, 1),
            (MIN, 1, M1),
            (MAX, MAX, 0x3fff_ffff_ffff_ffff),
            (MIN, MAX, 0xc000_0000_0000_0000),
        ],
    );
    // MULHSU: rs1 signed, rs2 unsigned.
    check_r(
        &mut c,
        "mulhsu",
        mulhsu,
        &[
            (M1, M1, M1),
            (MIN, M1, MIN),
            (2, M1, 1),
            (M1, 1, M1),
            (neg(-2), 1 << 63, M1),
            (1, M1, 0),
        ],
    );
    check_r(
        &mut c,
        "mulhu",
        mulhu,
        &[
            (M1, M1, 0xffff_ffff_ffff_fffe),
            (MIN, 2, 1),
            (M1, 1, 0),
            (1 << 32, 1 << 32, 1),
        ],
    );
    let sx = 0xffff_ffff_8000_0000u64;
    check_r(
        &mut c,
        "mulw",
        mulw,
        &[
            (0x7fff_ffff, 2, neg(-2)),
            (0x1_0000_0003, 5, 15),
            (0x4000_0000, 2, sx),
            (0xffff_ffff, 0xffff_ffff, 1),
            (0x8000_0000, M1, sx),
        ],
    );
    c.done();
}

#[test]
fn divide_and_remainder_corner_cases() {
    let mut c = Check::default();
    let sx = 0xffff_ffff_8000_0000u64;
    check_r(
        &mut c,
        "div",
        div,
        &[
            (neg(-7), 2, neg(-3)),
            (7, neg(-2), neg(-3)),
            (neg(-7), neg(-2), 3),
            (7, 0, M1),
            (0, 0, M1),
            (MIN, M1, MIN),
            (MIN, 1, MIN),
        ],
    );
    check_r(
        &mut c,
        "divu",
        divu,
        &[
            (M1, 2, MAX),
            (7, 0, M1),
            (0, 0, M1),
            (MIN, M1, 0),
            (M1, M1, 1),
        ],
    );
    check_r(
        &mut c,
        "rem",
        rem,
        &[
            (neg(-7), 2, neg(-1)),
            (7, neg(-2), 1),
            (neg(-7), neg(-2), neg(-1)),
            (7, 0, 7),
            (neg(-7), 0, neg(-7)),
            (MIN, M1, 0),
        ],
    );
    check_r(
        &mut c,
        "remu",
        remu,
        &[(M1, 2, 1), (7, 0, 7), (M1, 0, M1), (MIN, M1, MIN)],
    );
    // W forms: operands are the low 32 bits, results are sign-extended.
    check_r(
        &mut c,
        "divw",
        divw,
        &[
            (neg(-7), 2, neg(-3)),
            (0x1_0000_0010, 0x1_0000_0002, 8),
            (7, 0, M1),
            (0x1_0000_0007, 0x1_0000_0000, M1),
            (0x8000_0000, M1, sx),
            (sx, 0xffff_ffff, sx),
        ],
    );
    check_r(
        &mut c,
        "divuw",
        divuw,
        &[
            (0xffff_fffe, 2, 0x7fff_ffff),
            (0xffff_ffff, 1, M1),
            (7, 0, M1),
            (0x1_0000_0000, 0, M1),
            (0x1_0000_0010, 0x2_0000_0004, 4),
            (0x8000_0000, 0xffff_ffff, 0),
        ],
    );
    check_r(
        &mut c,
        "remw",
        remw,
        &[
            (neg(-7), 2, neg(-1)),
            (0x8000_0000, M1, 0),
            (0x8000_0000, 0, sx),
            (0x1_0000_0007, 0, 7),
            (0x1_0000_0007, 0x1_0000_0000, 7),
            (7, neg(-2), 1),
        ],
    );
    check_r(
        &mut c,
        "remuw",
        remuw,
        &[
            (0x1_8000_0001, 0, 0xffff_ffff_8000_0001),
            (0xffff_ffff, 0x1_0000_0000, M1),
            (0xffff_ffff, 2, 1),
            (0x8000_0007, 0x8000_0000, 7),
        ],
    );
    c.done();
}

#[test]
fn writes_to_x0_are_discarded() {
    let mut vm = Vm::new();
    vm.w64(DATA, 0x1234_5678_9abc_def0);
    let mut p = Prog::new();
    p.is(&[
        addi(ZERO, A1, 5),
        add(T0, ZERO, ZERO),
        lui(ZERO, 0x12345),
        add(T1, ZERO, ZERO),
        ld(ZERO, A2, 0),
        or(T2, ZERO, ZERO),
        jal(ZERO, 4),
        add(S2, ZERO, ZERO),
        amo_d(AmoOp::Add, ZERO, A1, A3),
        add(S3, ZERO, ZERO),
        csrr(ZERO, MSCRATCH),
        lr_d(ZERO, A2),
        sc_d(ZERO, A1, A2),
        add(S4, ZERO, ZERO),
    ]);
    // Compressed HINTs with rd = x0.
    p.c(c_li(ZERO, 7))
        .c(c_mv(ZERO, A1))
        .c(c_add(ZERO, A1))
        .c(c_lui(ZERO, 1))
        .c(c_slli(ZERO, 3))
        .i(add(S5, ZERO, ZERO))
        .i(addi(S6, ZERO, 0));
    vm.code(&p);
    for r in [T0, T1, T2, S2, S3, S4, S5, S6] {
        vm.set_x(r, 0xdead);
    }
    vm.set_x(A1, 0x55);
    vm.set_x(A2, DATA);
    vm.set_x(A3, DATA + 8);
    vm.w64(DATA + 8, 1000);
    vm.run_ok();
    for r in [T0, T1, T2, S2, S3, S4, S5, S6] {
        assert_eq!(vm.x(r), 0, "x{r} read x0 as nonzero");
    }
    assert_eq!(vm.hart.reg(0), 0);
    // The AMO and SC with rd = x0 still wrote memory.
    assert_eq!(vm.r64(DATA), 0x55);
    assert_eq!(vm.r64(DATA + 8), 1000 + 0x55);
}

// ==========================================================================================
// RV64A
// ==========================================================================================

/// Expected (memory after, as `width` bits) of `op` on memory `m` and source `s`.
fn amo_result(op: AmoOp, m: u64, s: u64, width: u32) -> u64 {
    let mask = if width == 64 { M1 } else { (1 << width) - 1 };
    let (m, s) = (m & mask, s & mask);
    let (ms, ss) = (sext(m, width) as i64, sext(s, width) as i64);
    let r = match op {
        AmoOp::Swap => s,
        AmoOp::Add => m.wrapping_add(s),
        AmoOp::Xor => m ^ s,
        AmoOp::And => m & s,
        AmoOp::Or => m | s,
        AmoOp::Min => {
            if ms < ss {
                m
            } else {
                s
            }
        }
        AmoOp::Max => {
            if ms > ss {
                m
            } else {
                s
            }
        }
        AmoOp::Minu => m.min(s),
        AmoOp::Maxu => m.max(s),
    };
    r & mask
}

#[test]
fn amo_word_and_doubleword() {
    let mut c = Check::default();
    // The expected results, spelled out per the spec for the main cases:
    let literal_w: [(AmoOp, u64); 9] = [
        (AmoOp::Swap, 5),
        (AmoOp::Add, 0x8000_0006),
        (AmoOp::Xor, 0x8000_0004),
        (AmoOp::And, 1),
        (AmoOp::Or, 0x8000_0005),
        (AmoOp::Min, 0x8000_0001),
        (AmoOp::Max, 5),
        (AmoOp::Minu, 5),
        (AmoOp::Maxu, 0x8000_0001),
    ];
    for (op, want) in literal_w {
        assert_eq!(amo_result(op, 0x8000_0001, 5, 32), want, "{op:?}");
    }
    let word_cases = [
        (0x8000_0001u64, 0xabcd_0000_0000_0005u64),
        (0x7fff_fff0, 0xffff_fff0),
        (0xffff_ffff, 1),
        (0, 0x8000_0000),
    ];
    for op in AmoOp::ALL {
        for (m, s) in word_cases {
            let mut vm = Vm::new();
            vm.w32(DATA, m as u32);
            vm.w32(DATA + 4, 0xdead_beef);
            vm.code32(&[amo_w(op, A0, A2, A1)]);
            vm.set_x(A1, DATA);
            vm.set_x(A2, s);
            vm.run_ok();
            let what = format!("{}.w mem {m:#x} src {s:#x}", op.name());
            c.eq(format_args!("{what}: rd"), vm.x(A0), sext(m, 32));
            c.eq(
                format_args!("{what}: mem"),
                vm.r32(DATA) as u64,
                amo_result(op, m, s, 32),
            );
            c.eq(
                format_args!("{what}: next word"),
                vm.r32(DATA + 4) as u64,
                0xdead_beef,
            );
        }
    }
    let dword_cases = [
        (0x8000_0000_0000_0001u64, 5u64),
        (0x7fff_ffff_ffff_fff0, 0xffff_ffff_ffff_fff0),
        (M1, 1),
        (0x1_0000_0000, 0xffff_ffff),
    ];
    for op in AmoOp::ALL {
        for (m, s) in dword_cases {
            let mut vm = Vm::new();
            vm.w64(DATA, m);
            vm.w64(DATA + 8, 0x0bad_f00d_dead_beef);
            vm.code32(&[amo_d(op, A0, A2, A1)]);
            vm.set_x(A1, DATA);
            vm.set_x(A2, s);
            vm.run_ok();
            let what = format!("{}.d mem {m:#x} src {s:#x}", op.name());
            c.eq(format_args!("{what}: rd"), vm.x(A0), m);
            c.eq(
                format_args!("{what}: mem"),
                vm.r64(DATA),
                amo_result(op, m, s, 64),
            );
            c.eq(
                format_args!("{what}: next"),
                vm.r64(DATA + 8),
                0x0bad_f00d_dead_beef,
            );
        }
    }
    // rd == rs2: the source is read before rd is written.
    let mut vm = Vm::new();
    vm.w64(DATA, 40);
    vm.code32(&[amo_d(AmoOp::Add, A2, A2, A1)]);
    vm.set_x(A1, DATA);
    vm.set_x(A2, 2);
    vm.run_ok();
    c.eq("amoadd.d a2, a2: rd", vm.x(A2), 40);
    c.eq("amoadd.d a2, a2: mem", vm.r64(DATA), 42);
    c.done();
}

#[test]
fn lr_sc_success() {
    let mut vm = Vm::new();
    vm.w64(DATA, 0x1111_2222_8000_0001);
    vm.w64(DATA + 8, 0x0102_0304_0506_0708);
    vm.code32(&[
        lr_w(A0, A1),
        sc_w(A2, A3, A1),
        lr_d(A4, S2),
        sc_d(A5, A6, S2),
    ]);
    vm.set_x(A1, DATA);
    vm.set_x(A3, 0xffff_ffff_4444_5555);
    vm.set_x(S2, DATA + 8);
    vm.set_x(A6, 0x9999_aaaa_bbbb_cccc);
    vm.set_x(A2, 77);
    vm.set_x(A5, 77);
    vm.run_ok();
    assert_eq!(vm.x(A0), 0xffff_ffff_8000_0001, "lr.w sign-extends");
    assert_eq!(vm.x(A2), 0, "sc.w succeeds");
    assert_eq!(vm.r64(DATA), 0x1111_2222_4444_5555);
    assert_eq!(vm.x(A4), 0x0102_0304_0506_0708);
    assert_eq!(vm.x(A5), 0, "sc.d succeeds");
    assert_eq!(vm.r64(DATA + 8), 0x9999_aaaa_bbbb_cccc);
}

#[test]
fn sc_failure_paths() {
    // No LR at all.
    let mut vm = Vm::new();
    vm.w64(DATA, 0x1234);
    vm.code32(&[sc_w(A2, A3, A1), sc_d(A4, A3, A1)]);
    vm.set_x(A1, DATA);
    vm.set_x(A3, 0x5555);
    vm.run_ok();
    assert_eq!(
        (vm.x(A2), vm.x(A4)),
        (1, 1),
        "sc without lr must fail with 1"
    );
    assert_eq!(vm.r64(DATA), 0x1234, "failed sc must not write");

    // SC to another address than the LR.
    let mut vm = Vm::new();
    vm.w64(DATA, 7);
    vm.w64(DATA + 8, 8);
    vm.code32(&[lr_d(A0, A1), sc_d(A2, A3, S2)]);
    vm.set_x(A1, DATA);
    vm.set_x(S2, DATA + 8);
    vm.set_x(A3, 0x5555);
    vm.run_ok();
    assert_eq!(vm.x(A2), 1, "sc to another address must fail");
    assert_eq!((vm.r64(DATA), vm.r64(DATA + 8)), (7, 8));

    // A second SC after a successful one.
    let mut vm = Vm::new();
    vm.w64(DATA, 7);
    vm.code32(&[lr_w(A0, A1), sc_w(A2, A3, A1), sc_w(A4, A5, A1)]);
    vm.set_x(A1, DATA);
    vm.set_x(A3, 0x11);
    vm.set_x(A5, 0x22);
    vm.run_ok();
    assert_eq!((vm.x(A2), vm.x(A4)), (0, 1));
    assert_eq!(vm.r32(DATA), 0x11);

    // A trap between LR and SC clears the reservation (the handler returns with mret).
    let mut vm = Vm::new();
    vm.w64(DATA, 7);
    vm.load(
        TRAP,
        &prog(&[csrr(T0, MEPC), addi(T0, T0, 4), csrw(MEPC, T0), mret()]),
    );
    vm.code32(&[lr_w(A0, A1), ecall(), sc_w(A2, A3, A1)]);
    vm.set_x(A1, DATA);
    vm.set_x(A3, 0x11);
    vm.run_ok();
    assert_eq!(vm.x(A2), 1, "sc after a trap");
    assert_eq!(vm.r32(DATA), 7);
}

#[test]
#[ignore = "documented deviation: SC is a compare-and-swap and misses A-B-A stores (vmk-cpu docs)"]
fn sc_fails_after_another_hart_stored_to_the_reservation() {
    // A extension, LR/SC: "An SC may succeed only if no store from another hart to the
    // reservation set can be observed to have occurred between the LR and the SC". Hart B
    // stores a different value and then the original one back (A-B-A): the SC of hart A
    // must still fail. Both harts run on this thread, one after the other, so the order of
    // the accesses is certain.
    let mut a = Vm::new();
    let mut b = vmk_cpu::Hart::new(a.mem.clone(), vmk_cpu::HartConfig::default());
    a.w64(DATA, 5);
    a.code32(&[lr_d(A0, A1), wfi(), sc_d(A2, A3, A1)]);
    a.set_x(A1, DATA);
    a.set_x(A3, 99);
    assert_eq!(a.run(), Exit::Wfi);
    assert_eq!(a.x(A0), 5);
    // Hart B: sd 6; sd 5 (its code lives elsewhere).
    let bcode = CODE + 0x4000;
    a.load(bcode, &prog(&[sd(T0, A1, 0), sd(T1, A1, 0), wfi()]));
    b.set_pc(bcode);
    b.set_reg(A1 as usize, DATA);
    b.set_reg(T0 as usize, 6);
    b.set_reg(T1 as usize, 5);
    assert_eq!(b.run(1000), Exit::Wfi);
    assert_eq!(a.r64(DATA), 5);
    a.run_ok();
    assert_eq!(
        a.x(A2),
        1,
        "sc.d succeeded although another hart stored in between"
    );
    assert_eq!(a.r64(DATA), 5);
}

#[test]
fn misaligned_atomics_trap() {
    let cases: [(&str, u32, u64, u64); 6] = [
        ("amoadd.w", amo_w(AmoOp::Add, A0, A2, A1), DATA + 2, 6),
        ("amoswap.d", amo_d(AmoOp::Swap, A0, A2, A1), DATA + 4, 6),
        ("amomaxu.w", amo_w(AmoOp::Maxu, A0, A2, A1), DATA + 1, 6),
        ("lr.w", lr_w(A0, A1), DATA + 2, 4),
        ("lr.d", lr_d(A0, A1), DATA + 4, 4),
        ("sc.w", sc_w(A0, A2, A1), DATA + 2, 6),
    ];
    for (name, insn, addr, cause) in cases {
        let mut vm = Vm::new();
        vm.w64(DATA, 0x0706_0504_0302_0100);
        vm.w64(DATA + 8, 0x0f0e_0d0c_0b0a_0908);
        vm.code32(&[insn]);
        vm.set_x(A1, addr);
        vm.set_x(A2, 0xffff);
        vm.set_x(A0, 0x1234);
        let t = vm.run_trap();
        assert_eq!(
            t,
            Trap {
                cause,
                epc: CODE,
                tval: addr
            },
            "{name}"
        );
        assert_eq!(vm.x(A0), 0x1234, "{name} wrote rd");
        assert_eq!(vm.r64(DATA), 0x0706_0504_0302_0100, "{name} wrote memory");
        assert_eq!(
            vm.r64(DATA + 8),
            0x0f0e_0d0c_0b0a_0908,
            "{name} wrote memory"
        );
    }
}

// ==========================================================================================
// F and D
// ==========================================================================================

const MS_FS: u64 = 3 << 13;
const FS_INITIAL: u64 = 1 << 13;
const FS_CLEAN: u64 = 2 << 13;
const MS_SD: u64 = 1 << 63;
const BOX: u64 = 0xffff_ffff_0000_0000;
const ONE_S: u64 = BOX | 0x3f80_0000;

fn fp_vm() -> Vm {
    let mut vm = Vm::new();
    vm.set_csr(MSTATUS, FS_INITIAL);
    vm
}

#[test]
fn fp_loads_and_stores_round_trip_and_nan_box() {
    let mut vm = fp_vm();
    vm.w32(DATA, 0x4049_0fdb); // pi
    vm.w32(DATA + 4, 0x7f80_0001); // a signaling NaN: bits must be kept
    vm.w64(DATA + 16, 0x4009_21fb_5444_2d18);
    vm.w32(DATA + 32, 0xbf80_0000); // -1.0
    vm.code32(&[
        flw(1, A1, 0),
        fsw(1, A1, 8),
        flw(2, A1, 4),
        fsw(2, A1, 12),
        fld(3, A1, 16),
        fsd(3, A1, 24),
        fsw(4, A1, 40),
        flw(5, A1, 32),
        fmv_x_w(A0, 5),
        fsd(6, A1, 48),
    ]);
    vm.set_x(A1, DATA);
    vm.set_f(4, 0x1234_5678_9abc_def0); // not NaN-boxed: FSW stores the low bits anyway
    vm.set_f(6, 0x1234_5678_9abc_def0);
    vm.run_ok();
    assert_eq!(vm.f(1), 0xffff_ffff_4049_0fdb, "flw NaN-boxes");
    assert_eq!(vm.r32(DATA + 8), 0x4049_0fdb);
    assert_eq!(vm.f(2), 0xffff_ffff_7f80_0001);
    assert_eq!(vm.r32(DATA + 12), 0x7f80_0001, "sNaN payload kept");
    assert_eq!(vm.f(3), 0x4009_21fb_5444_2d18);
    assert_eq!(vm.r64(DATA + 24), 0x4009_21fb_5444_2d18);
    assert_eq!(vm.r32(DATA + 40), 0x9abc_def0);
    assert_eq!(vm.x(A0), 0xffff_ffff_bf80_0000, "fmv.x.w sign-extends");
    assert_eq!(vm.r64(DATA + 48), 0x1234_5678_9abc_def0);
}

#[test]
fn fp_dynamic_rounding_mode_uses_frm() {
    // 1.0 + 2^-30 is inexact: RUP rounds to 1.0 + 2^-23, RNE/RTZ/RDN/RMM to 1.0.
    let tiny = BOX | 0x3080_0000;
    for (frm, static_rm, want) in [
        (RUP, DYN, 0x3f80_0001u64),
        (RNE, DYN, 0x3f80_0000),
        (RTZ, DYN, 0x3f80_0000),
        (RDN, DYN, 0x3f80_0000),
        (RMM, DYN, 0x3f80_0000),
        (RNE, RUP, 0x3f80_0001),
        (RUP, RNE, 0x3f80_0000),
    ] {
        let mut vm = fp_vm();
        vm.code32(&[
            csrrwi(ZERO, FRM, frm),
            fadd_s(3, 1, 2, static_rm),
            csrr(A0, FFLAGS),
        ]);
        vm.set_f(1, ONE_S);
        vm.set_f(2, tiny);
        vm.run_ok();
        assert_eq!(vm.f(3), BOX | want, "frm {frm} rm {static_rm}");
        assert_eq!(vm.x(A0), 1, "NX");
    }
}

#[test]
fn fp_reserved_rounding_modes_are_illegal() {
    // Dynamic rm with frm = 5, 6, 7: illegal instruction, mtval = the instruction.
    for frm in [5u32, 6, 7] {
        let mut vm = fp_vm();
        let insn = fadd_s(3, 1, 2, DYN);
        vm.code32(&[csrrwi(ZERO, FRM, frm), insn]);
        vm.set_f(1, ONE_S);
        vm.set_f(2, ONE_S);
        vm.set_f(3, 0x5555);
        let t = vm.run_trap();
        assert_eq!(
            t,
            Trap {
                cause: 2,
                epc: CODE + 4,
                tval: insn as u64
            },
            "frm {frm}"
        );
        assert_eq!(vm.f(3), 0x5555);
        assert_eq!(vm.csr(FRM), frm as u64, "frm holds what was written");
    }
    // Reserved static rm.
    for rm in [5u32, 6] {
        let mut vm = fp_vm();
        let insn = fadd_s(3, 1, 2, rm);
        vm.code32(&[insn]);
        let t = vm.run_trap();
        assert_eq!(
            t,
            Trap {
                cause: 2,
                epc: CODE,
                tval: insn as u64
            },
            "rm {rm}"
        );
    }
    // Instructions without a rounding mode ignore frm.
    let mut vm = fp_vm();
    vm.code32(&[csrrwi(ZERO, FRM, 5), fsgnj_s(3, 1, 1), feq_s(A0, 1, 1)]);
    vm.set_f(1, ONE_S);
    vm.run_ok();
    assert_eq!((vm.f(3), vm.x(A0)), (ONE_S, 1));
}

#[test]
fn fp_flags_accumulate() {
    let mut vm = fp_vm();
    vm.code32(&[
        fdiv_s(3, 1, 2, RNE), // 1/3: NX
        csrr(A0, FFLAGS),
        fdiv_s(4, 1, 0, RNE), // 1/0: DZ
        fadd_s(5, 1, 1, RNE), // exact: adds nothing
        csrr(A1, FFLAGS),
        csrr(A2, FCSR),
        csrrw(A3, FCSR, A6), // frm = 2, fflags = NV; returns the old fcsr
        csrr(A4, FRM),
        csrr(A5, FFLAGS),
    ]);
    vm.set_f(0, BOX); // +0.0
    vm.set_f(1, ONE_S);
    vm.set_f(2, BOX | 0x4040_0000); // 3.0
    vm.set_x(A6, (2 << 5) | 0x10);
    vm.run_ok();
    assert_eq!(vm.f(3), BOX | 0x3eaa_aaab);
    assert_eq!(vm.f(4), BOX | 0x7f80_0000);
    assert_eq!(vm.f(5), BOX | 0x4000_0000);
    assert_eq!(vm.x(A0), 0x01);
    assert_eq!(vm.x(A1), 0x09);
    assert_eq!(vm.x(A2), 0x09);
    assert_eq!(vm.x(A3), 0x09);
    assert_eq!((vm.x(A4), vm.x(A5)), (2, 0x10));
}

#[test]
fn fp_off_makes_fp_instructions_and_fcsr_illegal() {
    let mut cases: Vec<(String, Prog)> = vec![];
    for (name, insn) in [
        ("fadd.s", fadd_s(1, 2, 3, RNE)),
        ("fadd.d", fadd_d(1, 2, 3, RNE)),
        ("flw", flw(1, A1, 0)),
        ("fld", fld(1, A1, 0)),
        ("fsw", fsw(1, A1, 0)),
        ("fsd", fsd(1, A1, 0)),
        ("fmv.w.x", fmv_w_x(1, A1)),
        ("fmv.x.w", fmv_x_w(A0, 1)),
        ("fmv.x.d", fmv_x_d(A0, 1)),
        ("feq.s", feq_s(A0, 1, 1)),
        ("csrr fflags", csrr(A0, FFLAGS)),
        ("csrr frm", csrr(A0, FRM)),
        ("csrr fcsr", csrr(A0, FCSR)),
        ("csrw fcsr", csrw(FCSR, A1)),
        ("csrrwi frm", csrrwi(ZERO, FRM, 1)),
    ] {
        cases.push((name.into(), prog(&[insn])));
    }
    for (name, h) in [
        ("c.fld", c_fld(8, 9, 0)),
        ("c.fsd", c_fsd(8, 9, 0)),
        ("c.fldsp", c_fldsp(1, 0)),
        ("c.fsdsp", c_fsdsp(1, 0)),
    ] {
        cases.push((name.into(), Prog::new().c(h).clone()));
    }
    for (name, p) in cases {
        let mut vm = Vm::new();
        assert_eq!(vm.csr(MSTATUS) & MS_FS, 0, "FS is Off at reset");
        vm.code(&p);
        vm.set_x(A1, DATA);
        vm.set_x(S1, DATA);
        vm.set_x(SP, DATA);
        vm.set_x(A0, 0x77);
        vm.set_f(1, 0x1234);
        vm.w64(DATA, 0x5555_5555_5555_5555);
        let bits = match p.bytes.len() {
            2 => u16::from_le_bytes([p.bytes[0], p.bytes[1]]) as u64,
            _ => u32::from_le_bytes(p.bytes[..4].try_into().unwrap()) as u64,
        };
        let t = vm.run_trap();
        assert_eq!(
            t,
            Trap {
                cause: 2,
                epc: CODE,
                tval: bits
            },
            "{name} with FS=Off"
        );
        assert_eq!((vm.x(A0), vm.f(1)), (0x77, 0x1234), "{name} changed state");
        assert_eq!(vm.r64(DATA), 0x5555_5555_5555_5555, "{name} stored");
        assert_eq!(vm.csr(MSTATUS) & MS_FS, 0, "{name} changed FS");
    }
}

#[test]
fn fp_state_changes_set_fs_dirty_and_sd() {
    type Mk = fn() -> Prog;
    let cases: [(&str, u64, Mk); 5] = [
        ("fadd.s", FS_INITIAL, || prog(&[fadd_s(1, 2, 3, RNE)])),
        ("flw", FS_CLEAN, || prog(&[flw(1, A1, 0)])),
        ("fmv.d.x", FS_INITIAL, || prog(&[fmv_d_x(1, A1)])),
        ("csrw fflags", FS_CLEAN, || prog(&[csrrwi(ZERO, FFLAGS, 1)])),
        ("c.fldsp", FS_INITIAL, || {
            Prog::new().c(c_fldsp(1, 0)).clone()
        }),
    ];
    for (name, fs, mk) in cases {
        let mut vm = Vm::new();
        vm.set_csr(MSTATUS, fs);
        let mut p = prog(&[csrr(A2, MSTATUS)]);
        p.bytes.extend(mk().bytes);
        p.i(csrr(A3, MSTATUS)).i(csrr(A4, SSTATUS));
        vm.code(&p);
        vm.set_x(A1, DATA);
        vm.set_x(SP, DATA);
        vm.run_ok();
        assert_eq!(vm.x(A2) & (MS_FS | MS_SD), fs, "{name}: before");
        assert_eq!(
            vm.x(A3) & (MS_FS | MS_SD),
            MS_FS | MS_SD,
            "{name}: mstatus after"
        );
        assert_eq!(
            vm.x(A4) & (MS_FS | MS_SD),
            MS_FS | MS_SD,
            "{name}: sstatus after"
        );
    }
}

// ==========================================================================================
// RVC
// ==========================================================================================

/// Offsets with each single bit of an unsigned `lo..=hi` bit field set, plus all of them.
fn single_bits(lo: u32, hi: u32) -> Vec<i64> {
    let mut v: Vec<i64> = (lo..=hi).map(|b| 1i64 << b).collect();
    v.push((1i64 << (hi + 1)) - (1i64 << lo));
    v.push(0);
    v
}

fn cprog(hs: &[u16]) -> Prog {
    let mut p = Prog::new();
    for h in hs {
        p.c(*h);
    }
    p
}

const CDATA: u64 = DATA + 0x800;

#[test]
fn c_addi4spn_every_immediate_bit_and_register() {
    let mut c = Check::default();
    for rd in 8..16 {
        for imm in single_bits(2, 9).into_iter().filter(|&i| i != 0) {
            let mut vm = Vm::new();
            vm.code(&cprog(&[c_addi4spn(rd, imm)]));
            vm.set_x(SP, 0x1234_5000);
            vm.run_ok();
            c.eq(
                format_args!("c.addi4spn x{rd}, {imm}"),
                vm.x(rd),
                0x1234_5000 + imm as u64,
            );
        }
    }
    c.done();
}

#[test]
fn c_register_based_loads() {
    let mut c = Check::default();
    for rd in 8..16u32 {
        let rs1 = 8 + (rd + 3) % 8;
        for (name, off_bits, size) in [
            ("c.lw", (2, 6), 4u64),
            ("c.ld", (3, 7), 8),
            ("c.fld", (3, 7), 8),
        ] {
            for off in single_bits(off_bits.0, off_bits.1) {
                let h = match name {
                    "c.lw" => c_lw(rd, rs1, off),
                    "c.ld" => c_ld(rd, rs1, off),
                    _ => c_fld(rd, rs1, off),
                };
                let mut vm = fp_vm();
                fill_pattern(&vm, DATA, 0x1000);
                vm.code(&cprog(&[h]));
                vm.set_x(rs1, CDATA);
                vm.run_ok();
                let raw = pat_le(CDATA + off as u64, size);
                let (got, want) = match name {
                    "c.lw" => (vm.x(rd), sext(raw, 32)),
                    "c.ld" => (vm.x(rd), raw),
                    _ => (vm.f(rd), raw),
                };
                c.eq(format_args!("{name} x{rd}, {off}(x{rs1})"), got, want);
            }
        }
    }
    c.done();
}

#[test]
fn c_stack_based_loads() {
    let mut c = Check::default();
    for rd in [1u32, 8, 10, 15, 16, 31] {
        for (name, off_bits, size) in [
            ("c.lwsp", (2, 7), 4u64),
            ("c.ldsp", (3, 8), 8),
            ("c.fldsp", (3, 8), 8),
        ] {
            for off in single_bits(off_bits.0, off_bits.1) {
                let h = match name {
                    "c.lwsp" => c_lwsp(rd, off),
                    "c.ldsp" => c_ldsp(rd, off),
                    _ => c_fldsp(rd, off),
                };
                let mut vm = fp_vm();
                fill_pattern(&vm, DATA, 0x1000);
                vm.code(&cprog(&[h]));
                vm.set_x(SP, CDATA);
                vm.run_ok();
                let raw = pat_le(CDATA + off as u64, size);
                let (got, want) = match name {
                    "c.lwsp" => (vm.x(rd), sext(raw, 32)),
                    "c.ldsp" => (vm.x(rd), raw),
                    _ => (vm.f(rd), raw),
                };
                c.eq(format_args!("{name} x{rd}, {off}(sp)"), got, want);
            }
        }
    }
    // c.ldsp sp, off(sp): the base is read before sp is written.
    let mut vm = Vm::new();
    vm.w64(CDATA + 8, 0xabcd);
    vm.code(&cprog(&[c_ldsp(SP, 8)]));
    vm.set_x(SP, CDATA);
    vm.run_ok();
    c.eq("c.ldsp sp, 8(sp)", vm.x(SP), 0xabcd);
    c.done();
}

#[test]
fn c_stores() {
    let v = 0x8899_aabb_ccdd_eeffu64;
    for (name, off_bits, size) in [
        ("c.sw", (2, 6), 4usize),
        ("c.sd", (3, 7), 8),
        ("c.fsd", (3, 7), 8),
        ("c.swsp", (2, 7), 4),
        ("c.sdsp", (3, 8), 8),
        ("c.fsdsp", (3, 8), 8),
    ] {
        for off in single_bits(off_bits.0, off_bits.1) {
            for (rs2, base) in [(9u32, 12u32), (15, 8)] {
                let h = match name {
                    "c.sw" => c_sw(rs2, base, off),
                    "c.sd" => c_sd(rs2, base, off),
                    "c.fsd" => c_fsd(rs2, base, off),
                    "c.swsp" => c_swsp(rs2, off),
                    "c.sdsp" => c_sdsp(rs2, off),
                    _ => c_fsdsp(rs2, off),
                };
                let mut vm = fp_vm();
                vm.code(&cprog(&[h]));
                vm.set_x(base, CDATA);
                vm.set_x(SP, CDATA);
                vm.set_x(rs2, v);
                vm.set_f(rs2, v);
                vm.run_ok();
                let mut want = vec![0u8; 0x400];
                want[off as usize..off as usize + size].copy_from_slice(&v.to_le_bytes()[..size]);
                assert!(
                    vm.read(CDATA, 0x400) == want,
                    "{name} x{rs2}, {off}: memory differs"
                );
            }
        }
    }
}

#[test]
fn c_integer_immediate_ops() {
    let mut c = Check::default();
    let one = |h: u16, rd: u32, init: u64| {
        let mut vm = Vm::new();
        vm.code(&cprog(&[h]));
        vm.set_x(rd, init);
        vm.run_ok();
        vm.x(rd)
    };
    let imms6 = [1i64, 2, 4, 8, 16, -32, 31, -1];
    for imm in imms6 {
        for rd in [1u32, 10, 31] {
            c.eq(
                format_args!("c.addi x{rd}, {imm}"),
                one(c_addi(rd, imm), rd, 1000),
                1000u64.wrapping_add(imm as u64),
            );
            c.eq(
                format_args!("c.li x{rd}, {imm}"),
                one(c_li(rd, imm), rd, 0xdead),
                imm as u64,
            );
        }
        c.eq(
            format_args!("c.addiw {imm}"),
            one(c_addiw(A0, imm), A0, 0xffff_0000_0000_1000),
            (0x1000 + imm) as u64,
        );
        c.eq(
            format_args!("c.andi {imm}"),
            one(c_andi(S0, imm), S0, 0xf0f0_f0f0_f0f0_f0ff),
            0xf0f0_f0f0_f0f0_f0ff & imm as u64,
        );
        // c.lui: rd = sext(imm6 << 12).
        c.eq(
            format_args!("c.lui {imm}"),
            one(c_lui(A5, imm), A5, 0xdead),
            (imm << 12) as u64,
        );
    }
    c.eq("c.li 0", one(c_li(A0, 0), A0, 5), 0);
    c.eq("c.andi 0", one(c_andi(S1, 0), S1, 5), 0);
    c.eq(
        "c.addiw overflow",
        one(c_addiw(A0, 1), A0, 0x7fff_ffff),
        0xffff_ffff_8000_0000,
    );
    c.eq("c.addiw -1", one(c_addiw(A0, -1), A0, 0x1_0000_0000), M1);
    c.eq(
        "c.addiw 0 (sext.w)",
        one(c_addiw(A0, 0), A0, 0x1_8000_0000),
        0xffff_ffff_8000_0000,
    );
    c.eq("c.addi wraps", one(c_addi(A0, 1), A0, M1), 0);
    for imm in [16i64, 32, 64, 128, 256, -512, 496, -16] {
        c.eq(
            format_args!("c.addi16sp {imm}"),
            one(c_addi16sp(imm), SP, 0x8000_1000),
            0x8000_1000u64.wrapping_add(imm as u64),
        );
    }
    for sh in [1u32, 2, 4, 8, 16, 32, 63] {
        c.eq(
            format_args!("c.srli {sh}"),
            one(c_srli(S0, sh), S0, 0x8000_0000_0000_0001 | X),
            (0x8000_0000_0000_0001 | X) >> sh,
        );
        c.eq(
            format_args!("c.srai {sh}"),
            one(c_srai(A5, sh), A5, 0x8000_0000_0000_0001 | X),
            (((0x8000_0000_0000_0001 | X) as i64) >> sh) as u64,
        );
        c.eq(
            format_args!("c.slli {sh}"),
            one(c_slli(T6, sh), T6, 1),
            1 << sh,
        );
    }
    c.eq("c.slli 63 of 3", one(c_slli(RA, 63), RA, 3), MIN);
    c.done();
}

#[test]
fn c_register_register_ops() {
    let mut c = Check::default();
    type Ca = fn(u32, u32) -> u16;
    let (p, q) = (0xff00_ff00_8000_0000u64, 0x0ff0_0ff0_0000_0001u64);
    let cases: [(&str, Ca, u64, u64, u64); 10] = [
        ("c.sub", c_sub, p, q, p.wrapping_sub(q)),
        ("c.xor", c_xor, p, q, p ^ q),
        ("c.or", c_or, p, q, p | q),
        ("c.and", c_and, p, q, p & q),
        ("c.subw", c_subw, p, q, 0x7fff_ffff),
        ("c.subw", c_subw, 0, 1, M1),
        ("c.addw", c_addw, p, q, 0xffff_ffff_8000_0001),
        ("c.addw", c_addw, 0x7fff_ffff, 1, 0xffff_ffff_8000_0000),
        ("c.add", c_add, MAX, 1, MIN),
        ("c.mv", c_mv, 5, q, q),
    ];
    for (name, f, a, b, want) in cases {
        for (rd, rs2) in [(8u32, 15u32), (15, 8), (10, 11)] {
            let mut vm = Vm::new();
            vm.code(&cprog(&[f(rd, rs2)]));
            vm.set_x(rd, a);
            vm.set_x(rs2, b);
            vm.run_ok();
            c.eq(format_args!("{name} x{rd}, x{rs2}"), vm.x(rd), want);
            c.eq(format_args!("{name} x{rd}, x{rs2}: rs2"), vm.x(rs2), b);
        }
    }
    // c.add/c.mv take any register.
    let mut vm = Vm::new();
    vm.code(&cprog(&[c_add(RA, T6), c_mv(GP, RA)]));
    vm.set_x(RA, 3);
    vm.set_x(T6, 4);
    vm.run_ok();
    c.eq("c.add ra, t6", vm.x(RA), 7);
    c.eq("c.mv gp, ra", vm.x(GP), 7);
    c.done();
}

#[test]
fn c_nop_advances_by_two() {
    let mut vm = Vm::new();
    vm.code(&cprog(&[c_nop(), c_nop(), c_li(A0, 3)]));
    vm.run_ok();
    assert_eq!(vm.x(A0), 3);
    assert_eq!(vm.end, CODE + 6 + 4);
}

#[test]
fn c_jumps_every_offset_bit() {
    let at = CODE + 0x1000;
    let mut offs: Vec<i64> = (2..11).map(|b| 1i64 << b).collect();
    offs.extend([6, 2046, -2048, -2046, -4, 0x556, -0x556]);
    for off in offs {
        let mut vm = Vm::new();
        vm.load(at, &cprog(&[c_j(off)]));
        let target = at.wrapping_add(off as u64);
        vm.load(target, &prog(&[wfi()]));
        vm.hart.set_pc(at);
        assert_eq!(vm.run(), Exit::Wfi, "c.j {off}: {}", vm.state());
        assert_eq!(vm.hart.pc(), target + 4, "c.j {off}");
    }
}

#[test]
fn c_branches_every_offset_bit() {
    let at = CODE + 0x1000;
    let mut offs: Vec<i64> = (2..8).map(|b| 1i64 << b).collect();
    offs.extend([6, 254, -256, -254, -4, 0xaa, -0xac]);
    for off in offs {
        for (name, zero_taken) in [("c.beqz", true), ("c.bnez", false)] {
            for rs in [8u32, 15] {
                for taken in [true, false] {
                    let h = if zero_taken {
                        c_beqz(rs, off)
                    } else {
                        c_bnez(rs, off)
                    };
                    let mut vm = Vm::new();
                    let target = at.wrapping_add(off as u64);
                    if taken {
                        vm.load(target, &prog(&[wfi()]));
                        vm.load(at, &cprog(&[h]));
                    } else {
                        vm.load(at, Prog::new().c(h).i(wfi()));
                    }
                    let v = if taken == zero_taken { 0 } else { MIN };
                    vm.set_x(rs, v);
                    vm.hart.set_pc(at);
                    assert_eq!(vm.run(), Exit::Wfi, "{name} {off}: {}", vm.state());
                    let want = if taken { target + 4 } else { at + 6 };
                    assert_eq!(vm.hart.pc(), want, "{name} x{rs}={v:#x}, {off}");
                }
            }
        }
    }
}

#[test]
fn c_jr_and_jalr() {
    // c.jr clears bit 0 of the target, links nothing.
    let mut vm = Vm::new();
    let target = CODE + 0x100;
    vm.code(&cprog(&[c_jr(A1)]));
    vm.load(target, &prog(&[wfi()]));
    vm.set_x(A1, target | 1);
    vm.set_x(RA, 0x77);
    assert_eq!(vm.run(), Exit::Wfi);
    assert_eq!((vm.hart.pc(), vm.x(RA)), (target + 4, 0x77));

    // c.jalr links pc + 2.
    let mut vm = Vm::new();
    vm.code(&cprog(&[c_nop(), c_jalr(T6)]));
    vm.load(target, &prog(&[wfi()]));
    vm.set_x(T6, target);
    assert_eq!(vm.run(), Exit::Wfi);
    assert_eq!((vm.hart.pc(), vm.x(RA)), (target + 4, CODE + 4));

    // c.jalr ra: the target is the old ra.
    let mut vm = Vm::new();
    vm.code(&cprog(&[c_jalr(RA)]));
    vm.load(target, &prog(&[wfi()]));
    vm.set_x(RA, target);
    assert_eq!(vm.run(), Exit::Wfi);
    assert_eq!((vm.hart.pc(), vm.x(RA)), (target + 4, CODE + 2));

    // A function call and return with c.jalr / c.jr.
    let mut vm = Vm::new();
    vm.code(&cprog(&[c_jalr(A1), c_addi(A0, 1)]));
    vm.load(target, &cprog(&[c_li(A0, 10), c_jr(RA)]));
    vm.set_x(A1, target);
    vm.run_ok();
    assert_eq!(vm.x(A0), 11);
}

#[test]
fn c_ebreak_traps_with_pc() {
    let mut vm = Vm::new();
    vm.code(&cprog(&[c_nop(), c_ebreak()]));
    let t = vm.run_trap();
    assert_eq!(
        t,
        Trap {
            cause: 3,
            epc: CODE + 2,
            tval: CODE + 2
        }
    );
}

#[test]
fn compressed_hints_do_nothing() {
    // HINT encodings (RVC chapter, "HINT Instructions"): they execute as no-ops.
    let mut vm = Vm::new();
    let hints = [
        0x0005u16, // c.nop with nonzero immediate
        0x0501,    // c.addi a0, 0
        c_li(ZERO, 5),
        c_lui(ZERO, 3),
        c_mv(ZERO, A1),
        c_add(ZERO, A1),
        c_slli(ZERO, 5),
        0x0502,            // c.slli a0, 0
        0x8001 | (2 << 7), // c.srli s2'(x10), 0
        0x8401 | (2 << 7), // c.srai x10, 0
    ];
    vm.code(&cprog(&hints));
    vm.set_x(A0, 0x1234_5678_9abc_def0);
    vm.set_x(A1, 3);
    vm.run_ok();
    assert_eq!(vm.x(A0), 0x1234_5678_9abc_def0);
}

// ==========================================================================================
// Reserved encodings
// ==========================================================================================

fn assert_illegal(p: &Prog, bits: u64, what: &str) {
    let mut vm = Vm::new();
    vm.code(p);
    vm.set_x(A0, 0x55);
    vm.set_x(A1, DATA);
    vm.set_x(SP, DATA);
    let e = vm.run();
    assert!(
        e == Exit::Wfi && vm.hart.pc() == TRAP + 4,
        "{what}: expected an illegal-instruction trap; got {e:?}, {}",
        vm.state()
    );
    assert_eq!(
        vm.mtrap(),
        Trap {
            cause: 2,
            epc: CODE,
            tval: bits
        },
        "{what}"
    );
    assert_eq!(vm.x(A0), 0x55, "{what} changed a0");
}

#[test]
fn reserved_compressed_encodings_are_illegal() {
    for (h, what) in [
        (0x0000u16, "all zeros"),
        (c_addi4spn_raw(9, 0), "c.addi4spn imm 0"),
        (c_addi4spn_raw(15, 0), "c.addi4spn a5, imm 0"),
        (0x4002, "c.lwsp rd=0"),
        (0x4006 | (1 << 12), "c.lwsp rd=0, nonzero offset"),
        (0x6002, "c.ldsp rd=0"),
        (0x8002, "c.jr x0"),
        (0x2001, "c.addiw rd=0"),
        (0x6101, "c.addi16sp imm 0"),
        (0x6081, "c.lui ra, 0"),
        (0x6501, "c.lui a0, 0"),
        (0x8000, "quadrant 0, funct3 4"),
        (0x9c41, "CA funct6 100111, funct2 10"),
        (0x9c61, "CA funct6 100111, funct2 11"),
    ] {
        assert_illegal(&cprog(&[h]), h as u64, &format!("{what} ({h:#06x})"));
    }
}

#[test]
fn reserved_32bit_encodings_are_illegal() {
    for (w, what) in [
        (0xffff_ffffu32, "all ones"),
        (0x0000_000b, "custom-0 opcode"),
        (0x0000_0057, "OP-V opcode (no V)"),
        (0x0000_007b, "custom-3 opcode"),
        (r_type(0x33, 0, 0x40, A0, A0, A1), "OP funct7 0x40"),
        (r_type(0x33, 1, 0x20, A0, A0, A1), "sll with funct7 0x20"),
        (r_type(0x3b, 2, 0, A0, A0, A1), "OP-32 funct3 2"),
        (r_type(0x3b, 0, 2, A0, A0, A1), "OP-32 funct7 2"),
        (0x0000_4073, "SYSTEM funct3 4"),
        (0x0000_7003 | (10 << 7), "LOAD funct3 7"),
        (0x0000_4023, "STORE funct3 4"),
        (0x0800_1013 | (10 << 7), "slli with funct6 2"),
        (0x0200_101b | (10 << 7), "slliw with imm[5] set"),
        (0x0000_2063, "BRANCH funct3 2"),
        (0x0000_1067, "JALR funct3 1"),
        (ecall() | (1 << 7), "ecall with rd != 0"),
        (0x0020_0073, "SYSTEM funct12 2"),
        (
            r_type(0x2f, 2, 0x06 << 2, A0, A1, A2),
            "AMO funct5 0x06 (reserved)",
        ),
        (lr_w(A0, A1) | (1 << 20), "lr.w with rs2 != 0"),
        (r_type(0x2f, 4, 0, A0, A1, A2), "AMO funct3 4"),
    ] {
        assert_illegal(&prog(&[w]), w as u64, &format!("{what} ({w:#010x})"));
    }
}
