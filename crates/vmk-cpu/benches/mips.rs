//! Guest MIPS of the vmk vCPU on integer workloads, compared with QEMU TCG, and with vmk's
//! interpreter alone (the JIT off).
//!
//! `cargo bench -p vmk-cpu --bench mips` (needs riscv64-unknown-elf-gcc; QEMU optional).
//! For each program the guest `iterations` variable is set before the start. vmk: median of
//! 5 runs of guest instructions / wall time (the interpreter: 3 shorter runs). QEMU: wall time at two iteration counts, so its
//! start-up cost cancels out, converted to MIPS with the instruction count vmk measured for
//! the same work. `VMK_BENCH_SECS` sets the target length of one vmk run (default 1.0).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Limits, Program};

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn vmk_run(name: &str, iterations: u64) -> common::VmkRun {
    let elf = common::elf_path(name);
    let limits = Limits {
        max_instret: u64::MAX,
        max_wall: Duration::from_secs(600),
    };
    let r = common::run_vmk(&elf, &[("iterations", iterations)], limits)
        .unwrap_or_else(|e| panic!("{name} on vmk: {e}"));
    assert_eq!(r.exit_code, 0, "{name} failed on vmk:\n{}", r.console);
    r
}

fn qemu_seconds(name: &str, iterations: u64) -> f64 {
    let elf = common::elf_path(name);
    let prog = Program::load(&elf).unwrap_or_else(|e| panic!("{e}"));
    let img = prog
        .patched_image("iterations", iterations)
        .unwrap_or_else(|e| panic!("{e}"));
    let path = common::build_dir().join(format!("{name}.bench-{iterations}.elf"));
    std::fs::write(&path, img).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let q = common::run_qemu(&path, &[], Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{name} on QEMU: {e}"));
    assert_eq!(
        q.exit_code,
        Some(0),
        "{name} failed on QEMU:\n{}",
        q.console
    );
    q.elapsed.as_secs_f64()
}

fn bench(name: &str, target_secs: f64) {
    // Instructions per iteration, from two short runs (the set-up cost cancels out).
    let a = vmk_run(name, 10);
    let b = vmk_run(name, 20);
    let per_iter = (b.instret - a.instret) as f64 / 10.0;
    let setup = a.instret as f64 - 10.0 * per_iter;
    // Size the measured run to about target_secs of vmk time.
    let mips_guess = b.instret as f64 / b.elapsed.as_secs_f64().max(1e-6) / 1e6;
    let iterations = ((target_secs * mips_guess * 1e6 - setup) / per_iter).max(20.0) as u64;
    let mut mips = Vec::new();
    let mut instret = 0;
    for _ in 0..RUNS {
        let r = vmk_run(name, iterations);
        instret = r.instret;
        mips.push(r.instret as f64 / r.elapsed.as_secs_f64() / 1e6);
    }
    let vmk_mips = median(mips);
    common::set_jit(false);
    let interp_iterations = (iterations / 4).max(20);
    let interp_mips = median(
        (0..3)
            .map(|_| {
                let r = vmk_run(name, interp_iterations);
                r.instret as f64 / r.elapsed.as_secs_f64() / 1e6
            })
            .collect(),
    );
    common::set_jit(true);
    let mut line = format!(
        "{name}: vmk {vmk_mips:.1} MIPS (median of {RUNS}, {instret} instructions, {iterations} iterations), \
         interpreter alone {interp_mips:.1} MIPS (JIT/interpreter = {:.1})",
        vmk_mips / interp_mips
    );
    if common::qemu_available() {
        // QEMU is much faster and its start-up time varies: grow the larger iteration count
        // until the difference takes at least a second of QEMU time.
        let n1 = (iterations / 10).max(1);
        let mut n2 = iterations * 10;
        for _ in 0..6 {
            let dt = qemu_seconds(name, n2) - qemu_seconds(name, n1);
            if dt >= 1.0 {
                break;
            }
            n2 = (n2 as f64 * (1.5 / dt.max(0.05)).min(20.0)) as u64;
        }
        let mut rates = Vec::new();
        for _ in 0..3 {
            let t1 = qemu_seconds(name, n1);
            let t2 = qemu_seconds(name, n2);
            let insns = per_iter * (n2 - n1) as f64;
            if std::env::var_os("VMK_BENCH_VERBOSE").is_some() {
                eprintln!("  qemu {name}: {n1} iterations {t1:.3} s, {n2} iterations {t2:.3} s");
            }
            rates.push(insns / (t2 - t1).max(1e-6) / 1e6);
        }
        let qemu_mips = median(rates);
        line = format!(
            "{line}, qemu-tcg {qemu_mips:.1} MIPS, vmk/qemu = {:.2}",
            vmk_mips / qemu_mips
        );
    } else {
        line.push_str(", qemu-tcg: not installed (apt-get install qemu-system-misc)");
    }
    println!("{line}");
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let target = std::env::var("VMK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(if quick { 0.05 } else { 1.0 });
    for name in ["bench_sha256", "bench_mix"] {
        bench(name, target);
    }
}
