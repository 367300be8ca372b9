//! Differential fuzzing of the JIT against the interpreter. The input's bytes (up to 1 KiB)
//! are M-mode guest code at the start of RAM, wrapped in a loop run ITERS times so its blocks
//! get compiled; a trap handler skips faulting instructions (at most TRAPS of them). The case
//! runs with the JIT on (threshold 2) and off, and when both runs end at the same exit with the
//! same instret, registers, pc, privilege, trap CSRs and RAM must be identical.
#![no_main]

#[path = "../../tests/asm/mod.rs"]
mod asm;

use std::sync::Arc;

use asm::*;
use libfuzzer_sys::fuzz_target;
use vmk_cpu::{Exit, GuestMemory, Hart, HartConfig, MmioRange, PrivMode, RamRange};

const RAM_LEN: u64 = 256 << 10;
/// The skip handler, far from the code.
const HANDLER: u64 = RAM_BASE + 0x3_0000;
/// Loop iterations (x9 counts them down) and skipped traps (x30 counts them down).
const ITERS: u64 = 16;
const TRAPS: u64 = 10_000;
const BUDGET: u64 = 200_000;
/// Exits recorded for the comparison (the rest are counted only).
const MAX_EXITS: usize = 1000;

fuzz_target!(|data: &[u8]| run_case(data));

/// Steps mepc over the faulting instruction (2 or 4 bytes by its low bits) and returns; stops
/// in a `wfi` after TRAPS traps or on an instruction access/page fault (mepc is not readable).
fn skip_handler() -> Prog {
    prog(&[
        beq(T5, ZERO, 16 * 4), // -> stop
        addi(T5, T5, -1),
        csrr(T6, MCAUSE),
        addi(T6, T6, -1),
        beq(T6, ZERO, 12 * 4), // cause 1 -> stop
        addi(T6, T6, -11),
        beq(T6, ZERO, 10 * 4), // cause 12 -> stop
        csrr(T6, MEPC),
        lhu(T6, T6, 0),
        andi(T6, T6, 3),
        addi(T6, T6, -3),
        beq(T6, ZERO, 7 * 4), // -> four
        csrr(T6, MEPC),
        addi(T6, T6, 2),
        csrw(MEPC, T6),
        mret(),
        // stop:
        wfi(),
        j(0),
        // four:
        csrr(T6, MEPC),
        addi(T6, T6, 4),
        csrw(MEPC, T6),
        mret(),
    ])
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    exits: Vec<(Exit, u64, u64)>,
    n_exits: usize,
    last: Exit,
    x: Vec<u64>,
    f: Vec<u64>,
    pc: u64,
    instret: u64,
    prv: PrivMode,
    csrs: Vec<(u32, Option<u64>)>,
    ram: Vec<u8>,
}

fn execute(code: &Prog, jit: bool) -> Outcome {
    let mem = GuestMemory::new(
        &[RamRange {
            base: RAM_BASE,
            size: RAM_LEN,
        }],
        &[MmioRange {
            base: MMIO_BASE,
            size: MMIO_SIZE,
        }],
    )
    .expect("guest memory");
    let cfg = HartConfig {
        jit,
        jit_threshold: 2,
        // A fixed `time`: the two runs must not see different clocks.
        time_fn: Some(Arc::new(|| 0)),
        ..HartConfig::default()
    };
    let mut hart = Hart::new(mem.clone(), cfg);
    mem.write(CODE, &code.bytes).unwrap();
    mem.write(HANDLER, &skip_handler().bytes).unwrap();
    assert!(hart.set_csr(MTVEC as u16, HANDLER));
    // Registers point all over RAM (and one at MMIO) so loads and stores hit something.
    for i in 1..32 {
        hart.set_reg(i, RAM_BASE + (i as u64) * 0x2000 + 0x800);
    }
    hart.set_reg(A5 as usize, MMIO_BASE);
    hart.set_reg(A4 as usize, 0x8000_0000_0000_0000);
    hart.set_reg(S1 as usize, ITERS);
    hart.set_reg(T5 as usize, TRAPS);
    hart.set_pc(CODE);

    let mut exits = Vec::new();
    let mut n_exits = 0;
    let last = loop {
        let left = BUDGET.saturating_sub(hart.instret());
        if left == 0 {
            break Exit::BudgetExhausted;
        }
        let e = hart.run(left);
        match e {
            Exit::BudgetExhausted => continue,
            Exit::MmioRead { .. } | Exit::MmioWrite { .. } => {
                if exits.len() < MAX_EXITS {
                    exits.push((e.clone(), hart.pc(), hart.instret()));
                }
                n_exits += 1;
                if matches!(e, Exit::MmioRead { .. }) {
                    hart.complete_mmio_read(0);
                }
            }
            e => break e,
        }
    };
    let csrs = [
        MSTATUS, MEPC, MCAUSE, MTVAL, SEPC, SCAUSE, STVAL, FCSR, MINSTRET,
    ]
    .iter()
    .map(|&c| (c, hart.csr(c as u16)))
    .collect();
    let mut ram = vec![0u8; RAM_LEN as usize];
    mem.read(RAM_BASE, &mut ram).unwrap();
    Outcome {
        exits,
        n_exits,
        last,
        x: (0..32).map(|i| hart.reg(i)).collect(),
        f: (0..32).map(|i| hart.freg(i)).collect(),
        pc: hart.pc(),
        instret: hart.instret(),
        prv: hart.priv_mode(),
        csrs,
        ram,
    }
}

fn run_case(data: &[u8]) {
    let body = &data[..data.len().min(1024) & !1];
    let mut code = Prog::new();
    code.bytes.extend_from_slice(body);
    // Two c.nop: a 32-bit instruction starting in the last 2 bytes of the body swallows the
    // first one, and the epilogue stays aligned.
    code.c(0x0001);
    code.c(0x0001);
    code.i(addi(S1, S1, -1));
    code.i(beq(S1, ZERO, 8));
    let back = -(code.len() as i64);
    code.i(jal(ZERO, back));
    code.i(wfi());

    let a = execute(&code, true);
    let b = execute(&code, false);
    if a.last != b.last || a.instret != b.instret {
        // Runs cut by the budget may stop at different points (block granularity).
        let budget = |o: &Outcome| o.last == Exit::BudgetExhausted || o.instret >= BUDGET;
        assert!(
            budget(&a) || budget(&b),
            "runs ended differently: jit {:?} at pc {:#x} instret {}, interpreter {:?} at pc \
             {:#x} instret {}",
            a.last,
            a.pc,
            a.instret,
            b.last,
            b.pc,
            b.instret
        );
        return;
    }
    if a != b {
        let mut d = Vec::new();
        for (name, x, y) in [
            ("exits", format!("{:?}", a.exits), format!("{:?}", b.exits)),
            ("n_exits", a.n_exits.to_string(), b.n_exits.to_string()),
            ("pc", format!("{:#x}", a.pc), format!("{:#x}", b.pc)),
            ("prv", format!("{:?}", a.prv), format!("{:?}", b.prv)),
            ("csrs", format!("{:x?}", a.csrs), format!("{:x?}", b.csrs)),
        ] {
            if x != y {
                d.push(format!("{name}: jit {x} / interpreter {y}"));
            }
        }
        for i in 0..32 {
            if a.x[i] != b.x[i] {
                d.push(format!(
                    "x{i}: jit {:#x} / interpreter {:#x}",
                    a.x[i], b.x[i]
                ));
            }
            if a.f[i] != b.f[i] {
                d.push(format!(
                    "f{i}: jit {:#x} / interpreter {:#x}",
                    a.f[i], b.f[i]
                ));
            }
        }
        if let Some(i) = (0..a.ram.len()).find(|&i| a.ram[i] != b.ram[i]) {
            d.push(format!(
                "RAM at {:#x}: jit {:#x} / interpreter {:#x}",
                RAM_BASE + i as u64,
                a.ram[i],
                b.ram[i]
            ));
        }
        panic!(
            "JIT and interpreter differ after {:?} at instret {}:\n{}",
            a.last,
            a.instret,
            d.join("\n")
        );
    }
}
