//! The encoder (`vmk_testkit::rv64`) against the GNU assembler: every instruction form and
//! pseudo-instruction it has, in the operand ranges the tests use, assembled by
//! `riscv64-unknown-elf-as` and compared byte for byte. The assembler is required (scripts/deps
//! installs it): without it this test fails rather than leave the encoder unchecked.

use std::process::Command;

use vmk_testkit::rv64::*;

enum Enc {
    W(u32),
    H(u16),
}

/// Runs a binutils tool; a missing one fails the test with what to do about it (a silent
/// skip would leave the encoder unchecked).
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {cmd:?}: {e}; run scripts/deps (it installs gcc-riscv64-unknown-elf and \
             binutils-riscv64-unknown-elf)"
        )
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assembles `src` (one instruction per line, linked at 0x80000000 without relaxation) and
/// returns the bytes of .text.
fn gnu_assemble(src: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("vmk-testkit-as-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = dir.join("t.s");
    let o = dir.join("t.o");
    let elf = dir.join("t.elf");
    let bin = dir.join("t.bin");
    std::fs::write(&s, src).unwrap();
    run(Command::new("riscv64-unknown-elf-as")
        .args(["-march=rv64gc", "-mno-relax", "-o"])
        .arg(&o)
        .arg(&s));
    run(Command::new("riscv64-unknown-elf-ld")
        .args(["-Ttext=0x80000000", "--no-relax", "-e", "0", "-o"])
        .arg(&elf)
        .arg(&o));
    run(Command::new("riscv64-unknown-elf-objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&elf)
        .arg(&bin));
    let text = std::fs::read(&bin).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    text
}

fn rn(r: u32) -> String {
    format!("x{r}")
}

#[test]
fn encoder_matches_gnu_as() {
    use Enc::{H, W};
    let mut cases: Vec<(String, Enc)> = Vec::new();
    let mut w = |s: String, e: u32| cases.push((s, W(e)));
    // RV64I
    for imm20 in [0i64, 1, 0x7ffff, 0x80000, 0xfffff, 0x12345] {
        w(format!("lui x5, {imm20:#x}"), lui(T0, imm20));
        w(format!("auipc x31, {imm20:#x}"), auipc(T6, imm20));
    }
    for off in [
        0i64, 2, 4, 0x7fe, 0x800, 0xffe, 0x1000, 0x55554, 0xffffe, -2, -0x800, -0x100000, -0xaaaaa,
    ] {
        w(format!("jal x1, .{off:+}"), jal(RA, off));
    }
    for imm in [0i64, 1, -1, 2047, -2048, 0x555, -0x556] {
        w(format!("jalr x7, {imm}(x31)"), jalr(T2, T6, imm));
        w(format!("addi x10, x11, {imm}"), addi(A0, A1, imm));
        w(format!("slti x1, x2, {imm}"), slti(RA, SP, imm));
        w(format!("sltiu x3, x4, {imm}"), sltiu(GP, TP, imm));
        w(format!("xori x5, x6, {imm}"), xori(T0, T1, imm));
        w(format!("ori x7, x8, {imm}"), ori(T2, S0, imm));
        w(format!("andi x9, x10, {imm}"), andi(S1, A0, imm));
        w(format!("addiw x30, x29, {imm}"), addiw(T5, T4, imm));
        w(format!("lb x1, {imm}(x2)"), lb(1, 2, imm));
        w(format!("lh x3, {imm}(x4)"), lh(3, 4, imm));
        w(format!("lw x5, {imm}(x6)"), lw(5, 6, imm));
        w(format!("ld x7, {imm}(x8)"), ld(7, 8, imm));
        w(format!("lbu x9, {imm}(x10)"), lbu(9, 10, imm));
        w(format!("lhu x11, {imm}(x12)"), lhu(11, 12, imm));
        w(format!("lwu x13, {imm}(x14)"), lwu(13, 14, imm));
        w(format!("sb x15, {imm}(x16)"), sb(15, 16, imm));
        w(format!("sh x17, {imm}(x18)"), sh(17, 18, imm));
        w(format!("sw x19, {imm}(x20)"), sw(19, 20, imm));
        w(format!("sd x21, {imm}(x22)"), sd(21, 22, imm));
        w(format!("flw f1, {imm}(x2)"), flw(1, 2, imm));
        w(format!("fld f31, {imm}(x30)"), fld(31, 30, imm));
        w(format!("fsw f3, {imm}(x4)"), fsw(3, 4, imm));
        w(format!("fsd f29, {imm}(x28)"), fsd(29, 28, imm));
    }
    for off in [0i64, 2, 4, 0x7fe, 0x800, 0xffe, -2, -0x1000, -0x556, 0xaaa] {
        w(format!("beq x1, x2, .{off:+}"), beq(1, 2, off));
        w(format!("bne x3, x4, .{off:+}"), bne(3, 4, off));
        w(format!("blt x5, x6, .{off:+}"), blt(5, 6, off));
        w(format!("bge x7, x8, .{off:+}"), bge(7, 8, off));
        w(format!("bltu x9, x10, .{off:+}"), bltu(9, 10, off));
        w(format!("bgeu x31, x30, .{off:+}"), bgeu(31, 30, off));
    }
    for sh in [0u32, 1, 31, 32, 63] {
        w(format!("slli x1, x2, {sh}"), slli(1, 2, sh));
        w(format!("srli x3, x4, {sh}"), srli(3, 4, sh));
        w(format!("srai x5, x6, {sh}"), srai(5, 6, sh));
    }
    for sh in [0u32, 1, 16, 31] {
        w(format!("slliw x1, x2, {sh}"), slliw(1, 2, sh));
        w(format!("srliw x3, x4, {sh}"), srliw(3, 4, sh));
        w(format!("sraiw x5, x6, {sh}"), sraiw(5, 6, sh));
    }
    type R = fn(u32, u32, u32) -> u32;
    let rops: [(&str, R); 33] = [
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
        ("div", div),
        ("divu", divu),
        ("rem", rem),
        ("remu", remu),
        ("mulw", mulw),
        ("divw", divw),
        ("divuw", divuw),
        ("remw", remw),
        ("remuw", remuw),
        ("add", add),
        ("sub", sub),
        ("xor", xor),
        ("or", or),
        ("and", and),
    ];
    for (i, (name, f)) in rops.iter().enumerate() {
        let (d, a, b) = (
            (i as u32) % 32,
            (i as u32 * 7 + 3) % 32,
            (i as u32 * 13 + 5) % 32,
        );
        w(
            format!("{name} {}, {}, {}", rn(d), rn(a), rn(b)),
            f(d, a, b),
        );
    }
    w("fence rw, rw".into(), fence(3, 3));
    w("fence iorw, iorw".into(), fence(15, 15));
    w("fence r, w".into(), fence(2, 1));
    w("fence.i".into(), fence_i());
    w("ecall".into(), ecall());
    w("ebreak".into(), ebreak());
    w("sret".into(), sret());
    w("mret".into(), mret());
    w("wfi".into(), wfi());
    w("sfence.vma x0, x0".into(), sfence_vma(0, 0));
    w("sfence.vma x10, x11".into(), sfence_vma(10, 11));
    for (csr, name) in [(0x300u32, "0x300"), (0xfff, "0xfff"), (0x001, "0x001")] {
        w(format!("csrrw x1, {name}, x2"), csrrw(1, csr, 2));
        w(format!("csrrs x3, {name}, x4"), csrrs(3, csr, 4));
        w(format!("csrrc x5, {name}, x6"), csrrc(5, csr, 6));
        w(format!("csrrwi x7, {name}, 31"), csrrwi(7, csr, 31));
        w(format!("csrrsi x8, {name}, 1"), csrrsi(8, csr, 1));
        w(format!("csrrci x9, {name}, 16"), csrrci(9, csr, 16));
    }
    // A
    w("lr.w x1, (x2)".into(), lr_w(1, 2));
    w("sc.w x3, x4, (x5)".into(), sc_w(3, 4, 5));
    w("lr.d x6, (x7)".into(), lr_d(6, 7));
    w("sc.d x8, x9, (x10)".into(), sc_d(8, 9, 10));
    for op in AmoOp::ALL {
        w(
            format!("{}.w x11, x12, (x13)", op.name()),
            amo_w(op, 11, 12, 13),
        );
        w(
            format!("{}.d x31, x1, (x30)", op.name()),
            amo_d(op, 31, 1, 30),
        );
    }
    // F/D
    for (rm, name) in [
        (RNE, "rne"),
        (RTZ, "rtz"),
        (RDN, "rdn"),
        (RUP, "rup"),
        (RMM, "rmm"),
        (DYN, "dyn"),
    ] {
        w(format!("fadd.s f1, f2, f3, {name}"), fadd_s(1, 2, 3, rm));
        w(format!("fsub.s f4, f5, f6, {name}"), fsub_s(4, 5, 6, rm));
        w(format!("fmul.s f7, f8, f9, {name}"), fmul_s(7, 8, 9, rm));
        w(
            format!("fdiv.s f10, f11, f12, {name}"),
            fdiv_s(10, 11, 12, rm),
        );
        w(
            format!("fadd.d f13, f14, f15, {name}"),
            fadd_d(13, 14, 15, rm),
        );
        w(
            format!("fdiv.d f31, f30, f29, {name}"),
            fdiv_d(31, 30, 29, rm),
        );
        w(format!("fcvt.w.s x5, f6, {name}"), fcvt_w_s(5, 6, rm));
    }
    w("fsgnj.s f1, f2, f3".into(), fsgnj_s(1, 2, 3));
    w("fmv.x.w x10, f11".into(), fmv_x_w(10, 11));
    w("fmv.w.x f12, x13".into(), fmv_w_x(12, 13));
    w("fmv.x.d x14, f15".into(), fmv_x_d(14, 15));
    w("fmv.d.x f16, x17".into(), fmv_d_x(16, 17));
    w("feq.s x18, f19, f20".into(), feq_s(18, 19, 20));

    // Written as the machine tests' guests write them: ABI register names, CSR names,
    // pseudo-instructions, the branch conditions of `branch`, the extremes of each range.
    let abi: Vec<(&str, u32)> = vec![
        ("addi a0, sp, -2048", addi(A0, SP, -2048)),
        ("addi t6, s11, 2047", addi(T6, S11, 2047)),
        ("addiw a5, a5, -1", addiw(A5, A5, -1)),
        ("andi t2, t2, 15", andi(T2, T2, 15)),
        ("ori s1, zero, 0x7ff", ori(S1, ZERO, 0x7ff)),
        ("slli a0, a0, 63", slli(A0, A0, 63)),
        ("srli t0, t1, 33", srli(T0, T1, 33)),
        ("add s2, s3, s4", add(S2, S3, S4)),
        ("sub a1, a2, a3", sub(A1, A2, A3)),
        ("srl t2, t0, t1", srl(T2, T0, T1)),
        ("and a0, a1, a2", and(A0, A1, A2)),
        ("or a3, a4, a5", or(A3, A4, A5)),
        ("lui t0, 0xfffff", lui(T0, 0xfffff)),
        ("auipc a0, 0x80000", auipc(A0, 0x80000)),
        ("lb a0, -1(s1)", lb(A0, S1, -1)),
        ("lw s1, 80(t0)", lw(S1, T0, 80)),
        ("lwu a0, 4(a1)", lwu(A0, A1, 4)),
        ("ld t0, -8(sp)", ld(T0, SP, -8)),
        ("lbu a0, 0(t0)", lbu(A0, T0, 0)),
        ("sb a0, 1(a1)", sb(A0, A1, 1)),
        ("sw s2, -2048(s1)", sw(S2, S1, -2048)),
        ("sd s2, 2040(s1)", sd(S2, S1, 2040)),
        ("jalr zero, 0(ra)", jalr(ZERO, RA, 0)),
        ("jalr ra, -4(t1)", jalr(RA, T1, -4)),
        ("csrrw zero, stvec, t0", csrrw(ZERO, csr::STVEC, T0)),
        ("csrrs s8, scause, zero", csrrs(S8, csr::SCAUSE, ZERO)),
        ("csrrc a0, sstatus, a1", csrrc(A0, csr::SSTATUS, A1)),
        ("csrrsi zero, sstatus, 2", csrrsi(ZERO, csr::SSTATUS, 2)),
        ("csrrci zero, sstatus, 2", csrrci(ZERO, csr::SSTATUS, 2)),
        ("csrrs a0, mhartid, zero", csrrs(A0, csr::MHARTID, ZERO)),
        ("csrr t0, satp", csrr(T0, SATP)),
        ("csrw mtvec, a0", csrw(MTVEC, A0)),
        ("csrs mie, t1", csrs(MIE, T1)),
        ("csrc mip, s0", csrc(MIP, S0)),
        ("nop", nop()),
        ("beq a0, a1, .+16", branch(Cond::Eq, A0, A1, 16)),
        ("bne s1, zero, .-4096", branch(Cond::Ne, S1, ZERO, -4096)),
        ("blt t2, t3, .+4094", branch(Cond::Lt, T2, T3, 4094)),
        ("bge t1, zero, .-8", branch(Cond::Ge, T1, ZERO, -8)),
        ("bltu a0, a1, .+2", branch(Cond::Ltu, A0, A1, 2)),
        ("bgeu a0, a1, .-2", branch(Cond::Geu, A0, A1, -2)),
        ("jal ra, .+2048", jal(RA, 2048)),
        ("jal zero, .-1048576", jal(ZERO, -(1 << 20))),
        ("jal t0, .+1048574", jal(T0, (1 << 20) - 2)),
        ("jal zero, .", jal(ZERO, 0)),
        ("j .-64", j(-64)),
    ];
    for (s, e) in abi {
        w(s.into(), e);
    }

    // RVC
    let mut h = |s: String, e: u16| cases.push((s, H(e)));
    for imm in [4i64, 8, 16, 32, 64, 128, 256, 512, 1020, 0x154, 0x2a8] {
        h(format!("c.addi4spn x8, sp, {imm}"), c_addi4spn(S0, imm));
        h(format!("c.addi4spn x15, sp, {imm}"), c_addi4spn(A5, imm));
    }
    for off in [0i64, 8, 16, 32, 64, 128, 248, 0xa8, 0x50] {
        h(format!("c.fld f8, {off}(x9)"), c_fld(8, 9, off));
        h(format!("c.ld x10, {off}(x11)"), c_ld(10, 11, off));
        h(format!("c.fsd f12, {off}(x13)"), c_fsd(12, 13, off));
        h(format!("c.sd x14, {off}(x15)"), c_sd(14, 15, off));
    }
    for off in [0i64, 4, 8, 16, 32, 64, 124, 0x54, 0x28] {
        h(format!("c.lw x8, {off}(x15)"), c_lw(8, 15, off));
        h(format!("c.sw x9, {off}(x14)"), c_sw(9, 14, off));
    }
    h("c.nop".into(), c_nop());
    for imm in [1i64, 2, 4, 8, 16, -32, 31, -1, 0x15, -0x16] {
        h(format!("c.addi x1, {imm}"), c_addi(1, imm));
        h(format!("c.addiw x31, {imm}"), c_addiw(31, imm));
        h(format!("c.li x17, {imm}"), c_li(17, imm));
        h(format!("c.andi x12, {imm}"), c_andi(12, imm));
        let lui_op = if imm < 0 { imm & 0xfffff } else { imm };
        h(format!("c.lui x3, {lui_op:#x}"), c_lui(3, imm));
    }
    h("c.li x9, 0".into(), c_li(9, 0));
    h("c.andi x13, 0".into(), c_andi(13, 0));
    for imm in [16i64, 32, 64, 128, 256, -512, 496, -16, 0x150, -0x160] {
        h(format!("c.addi16sp sp, {imm}"), c_addi16sp(imm));
    }
    for sh in [1u32, 2, 4, 8, 16, 32, 63, 0x15, 0x2a] {
        h(format!("c.srli x8, {sh}"), c_srli(8, sh));
        h(format!("c.srai x15, {sh}"), c_srai(15, sh));
        h(format!("c.slli x31, {sh}"), c_slli(31, sh));
    }
    h("c.sub x8, x15".into(), c_sub(8, 15));
    h("c.xor x9, x14".into(), c_xor(9, 14));
    h("c.or x10, x13".into(), c_or(10, 13));
    h("c.and x11, x12".into(), c_and(11, 12));
    h("c.subw x12, x11".into(), c_subw(12, 11));
    h("c.addw x15, x8".into(), c_addw(15, 8));
    for off in [
        0i64, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, -2048, 2046, -2, 0x556, -0x556,
    ] {
        h(format!("c.j .{off:+}"), c_j(off));
    }
    for off in [0i64, 2, 4, 8, 16, 32, 64, 128, -256, 254, -2, 0xaa, -0xac] {
        h(format!("c.beqz x8, .{off:+}"), c_beqz(8, off));
        h(format!("c.bnez x15, .{off:+}"), c_bnez(15, off));
    }
    for off in [0i64, 8, 16, 32, 64, 128, 256, 504, 0x1a8, 0x58] {
        h(format!("c.fldsp f1, {off}(sp)"), c_fldsp(1, off));
        h(format!("c.ldsp x31, {off}(sp)"), c_ldsp(31, off));
        h(format!("c.fsdsp f30, {off}(sp)"), c_fsdsp(30, off));
        h(format!("c.sdsp x2, {off}(sp)"), c_sdsp(2, off));
    }
    for off in [0i64, 4, 8, 16, 32, 64, 128, 252, 0xa8, 0x54] {
        h(format!("c.lwsp x1, {off}(sp)"), c_lwsp(1, off));
        h(format!("c.swsp x29, {off}(sp)"), c_swsp(29, off));
    }
    h("c.jr x1".into(), c_jr(1));
    h("c.jr x31".into(), c_jr(31));
    h("c.mv x1, x31".into(), c_mv(1, 31));
    h("c.ebreak".into(), c_ebreak());
    h("c.jalr x5".into(), c_jalr(5));
    h("c.jalr x1".into(), c_jalr(1));
    h("c.add x31, x1".into(), c_add(31, 1));

    let mut src = String::from(".option norelax\n");
    for (s, e) in &cases {
        src += match e {
            W(_) => ".option norvc\n",
            H(_) => ".option rvc\n",
        };
        src += s;
        src += "\n";
    }
    let bin = gnu_assemble(&src);
    let mut off = 0usize;
    for (s, e) in &cases {
        match e {
            W(v) => {
                let got = u32::from_le_bytes(bin[off..off + 4].try_into().unwrap());
                assert_eq!(*v, got, "{s}: encoder {v:#010x}, as {got:#010x}");
                off += 4;
            }
            H(v) => {
                let got = u16::from_le_bytes(bin[off..off + 2].try_into().unwrap());
                assert_eq!(*v, got, "{s}: encoder {v:#06x}, as {got:#06x}");
                off += 2;
            }
        }
    }
    assert_eq!(off, bin.len());
}
