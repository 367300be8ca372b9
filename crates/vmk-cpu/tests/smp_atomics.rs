//! Multi-vCPU atomicity: four harts on their own threads over one GuestMemory run
//! `tests/baremetal/smp.c`, which hammers amoadd.w, amoadd.d and an LR/SC increment loop on
//! shared counters. Every increment must land exactly once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{HartEnd, Limits, Machine, Program};

const HARTS: u64 = 4;
const N: u64 = 100_000;

#[test]
fn four_harts_count_exactly() {
    let elf = common::elf_path("smp");
    let prog = Program::load(&elf).unwrap_or_else(|e| panic!("{e}"));
    let mem = common::new_memory();
    common::load_into(&mem, &prog, &[("iterations", N)]).unwrap_or_else(|e| panic!("{e}"));
    let machine = Machine::new(mem.clone());
    let limits = Limits {
        max_instret: 500_000_000,
        max_wall: Duration::from_secs(240),
    };
    let threads: Vec<_> = (0..HARTS)
        .map(|id| {
            let machine = Arc::clone(&machine);
            let entry = prog.entry;
            std::thread::spawn(move || {
                let mut hart = machine.new_hart(id, entry);
                let r = common::run_hart(&machine, &mut hart, limits);
                if r.is_err() {
                    machine.stop();
                }
                (r, hart.instret())
            })
        })
        .collect();
    let mut ends = Vec::new();
    for t in threads {
        ends.push(t.join().expect("hart thread panicked"));
    }
    let console = machine.console_string();
    for (id, (end, instret)) in ends.iter().enumerate() {
        match end {
            Ok(HartEnd::Finished(code)) => {
                assert_eq!(id, 0, "only hart 0 reports");
                assert_eq!(*code, 0, "smp failed in the guest:\n{console}");
            }
            Ok(HartEnd::Stopped) => assert_ne!(id, 0, "hart 0 did not finish:\n{console}"),
            Err(e) => panic!("hart {id} ({instret} instructions): {e}\n{console}"),
        }
    }
    let read32 = |name: &str| -> u64 {
        let addr = prog.symbol(name).unwrap_or_else(|e| panic!("{e}"));
        u64::from(mem.read_u32(addr).expect("counter in RAM"))
    };
    let read64 = |name: &str| -> u64 {
        let addr = prog.symbol(name).unwrap_or_else(|e| panic!("{e}"));
        mem.read_u64(addr).expect("counter in RAM")
    };
    assert_eq!(read32("counter_w"), HARTS * N, "amoadd.w total");
    assert_eq!(read64("counter_d"), HARTS * N, "amoadd.d total");
    assert_eq!(read64("counter_lrsc"), HARTS * N, "LR/SC total");
    assert_eq!(read32("harts_done"), HARTS);
    assert!(
        console.contains("amoadd.w=1 amoadd.d=1 lr/sc=1") && console.contains("PASS"),
        "{console}"
    );
    let instrets: Vec<u64> = ends.iter().map(|e| e.1).collect();
    eprintln!("smp: instructions per hart {instrets:?}");
}

/// The program itself is right: QEMU with 4 harts prints the same.
#[test]
fn smp_program_passes_on_qemu() {
    common::require_qemu();
    let elf = common::elf_path("smp");
    let q = common::run_qemu(&elf, &["-smp", "4"], Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.exit_code, Some(0), "{}", q.console);
    assert!(
        q.console.contains("amoadd.w=1 amoadd.d=1 lr/sc=1"),
        "{}",
        q.console
    );
}
