//! Differential tests: every bare-metal program in `tests/baremetal/` must pass on vmk (exit
//! code 0 through the test finisher) and print exactly what it prints on QEMU.
//!
//! Lines starting with '#' are left out of the comparison: programs use them for checks where
//! QEMU 7.2 deviates from the RISC-V spec (`SPEC_CHECK_EQ`); vmk must pass those too.

mod common;

use std::time::Duration;

use common::Limits;

/// QEMU runs with `-icount shift=0` so that its instret/cycle counters count instructions
/// exactly (without it they follow the host clock).
const QEMU_OPTS: &[&str] = &["-icount", "shift=0"];

fn differential(name: &str) {
    differential_with(name, &[]);
}

fn differential_with(name: &str, pokes: &[(&str, u64)]) {
    common::require_qemu();
    let elf = common::elf_path(name);
    let vmk = common::run_vmk(&elf, pokes, Limits::default())
        .unwrap_or_else(|e| panic!("{name} on vmk: {e}"));
    let qemu_elf = if pokes.is_empty() {
        elf.clone()
    } else {
        let mut prog = common::Program::load(&elf).unwrap_or_else(|e| panic!("{e}"));
        for (sym, v) in pokes {
            prog.image = prog
                .patched_image(sym, *v)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let img = prog.image;
        let path = common::build_dir().join(format!("{name}.patched.elf"));
        std::fs::write(&path, img).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    };
    let qemu = common::run_qemu(&qemu_elf, QEMU_OPTS, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{name} on QEMU: {e}"));
    assert!(
        !qemu.timed_out && qemu.exit_code == Some(0),
        "{name} does not pass on QEMU (exit {:?}, timed out: {}) — the program is wrong:\n{}",
        qemu.exit_code,
        qemu.timed_out,
        qemu.console
    );
    let spec_failures: Vec<&str> = vmk
        .console
        .lines()
        .filter(|l| l.starts_with("#spec FAIL"))
        .collect();
    assert!(
        vmk.exit_code == 0 && spec_failures.is_empty(),
        "{name} fails on vmk (exit code {}, spec failures {spec_failures:?}):\n{}",
        vmk.exit_code,
        vmk.console
    );
    let a = common::comparable(&vmk.console);
    let b = common::comparable(&qemu.console);
    if let Some(diff) = common::first_difference(&a, &b) {
        panic!(
            "{name}: vmk output differs from QEMU's\n{diff}\n--- vmk ---\n{}\n--- qemu ---\n{}",
            vmk.console, qemu.console
        );
    }
    eprintln!("{name}: {} instructions on vmk", vmk.instret);
}

#[test]
fn traps() {
    differential("traps");
}

#[test]
fn vm_sv39() {
    differential("vm_sv39");
}

#[test]
fn vm_sv48() {
    differential("vm_sv48");
}

#[test]
fn misaligned() {
    differential("misaligned");
}

#[test]
fn interrupts() {
    differential("interrupts");
}

#[test]
fn counters() {
    differential("counters");
}

#[test]
fn isa() {
    differential("isa");
}

#[test]
fn bad_code() {
    differential("bad_code");
}

#[test]
fn bench_sha256() {
    differential_with("bench_sha256", &[("iterations", 20)]);
}

#[test]
fn bench_mix() {
    differential_with("bench_mix", &[("iterations", 50)]);
}

/// A guest that never finishes must fail the run (instruction cap), not hang the test.
#[test]
fn hung_guest_is_reported() {
    let elf = common::elf_path("smp");
    // smp waits for 4 harts; alone, hart 0 spins forever.
    let limits = Limits {
        max_instret: 5_000_000,
        max_wall: Duration::from_secs(60),
    };
    let err = common::run_vmk(&elf, &[], limits).expect_err("a lone smp hart cannot finish");
    assert!(err.contains("no finisher write"), "{err}");
}

/// A trap loop (mtvec in unmapped memory) ends the run with an error instead of hanging.
#[test]
fn trap_loop_is_reported() {
    let elf = common::elf_path("trap_loop");
    let limits = Limits {
        max_instret: 50_000_000,
        max_wall: Duration::from_secs(60),
    };
    let err = common::run_vmk(&elf, &[], limits).expect_err("a wedged guest cannot finish");
    assert!(err.contains("wedging"), "{err}");
    assert!(!err.contains("not reached"), "{err}");
    eprintln!(
        "trap loop reported as: {}",
        err.lines().next().unwrap_or("")
    );
}
