//! System-level tests of the interpreter: traps and privilege changes, CSRs, Sv39/Sv48 paging,
//! self-modifying code, MMIO exits, bad guest code, interrupts from other threads and TLB
//! shoot-down.
//!
//! Expected values come from the RISC-V Privileged Architecture (20211203 / 20240411) and from
//! the implementation choices documented in `vmk_cpu`'s crate docs, never from running the code.

mod asm;

use asm::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use vmk_cpu::{Exit, FatalError, Hart, HartConfig, Irq, PrivMode};

// mstatus fields.
const SIE_B: u64 = 1 << 1;
const MIE_B: u64 = 1 << 3;
const SPIE: u64 = 1 << 5;
const MPIE: u64 = 1 << 7;
const SPP: u64 = 1 << 8;
const MPP: u64 = 3 << 11;
const MPP_S: u64 = 1 << 11;
const MPP_M: u64 = 3 << 11;
const MPRV: u64 = 1 << 17;
const SUM: u64 = 1 << 18;
const MXR: u64 = 1 << 19;
const TVM: u64 = 1 << 20;
const TW: u64 = 1 << 21;
const TSR: u64 = 1 << 22;

const INT: u64 = 1 << 63;

/// Runs `hart.run(budget)` on another thread; gives up (kicking the hart) after `timeout`.
/// Returns the hart and the exit, or None when the run did not return in time.
fn run_on_thread(hart: Hart, budget: u64, timeout: Duration) -> (Option<Exit>, Option<Hart>) {
    let handle = hart.handle();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut hart = hart;
        let e = hart.run(budget);
        let _ = tx.send(());
        (e, hart)
    });
    match rx.recv_timeout(timeout) {
        Ok(()) => {
            let (e, h) = t.join().unwrap();
            (Some(e), Some(h))
        }
        Err(_) => {
            // Try to get the thread back; if even a kick does not stop it, leave it spinning.
            handle.kick();
            match rx.recv_timeout(Duration::from_secs(2)) {
                Ok(()) => {
                    let (_, h) = t.join().unwrap();
                    (None, Some(h))
                }
                Err(_) => (None, None),
            }
        }
    }
}

// ==========================================================================================
// Traps
// ==========================================================================================

#[test]
fn ecall_from_m_mode() {
    let mut vm = Vm::new();
    vm.code32(&[nop(), ecall()]);
    vm.set_csr(MSTATUS, MIE_B);
    let t = vm.run_trap();
    assert_eq!(
        t,
        Trap {
            cause: 11,
            epc: CODE + 4,
            tval: 0
        }
    );
    assert_eq!(vm.hart.priv_mode(), PrivMode::Machine);
    let ms = vm.csr(MSTATUS);
    assert_eq!(ms & MPP, MPP_M, "MPP = M");
    assert_eq!(ms & (MIE_B | MPIE), MPIE, "MPIE = old MIE, MIE = 0");
}

#[test]
fn ebreak_reports_pc() {
    let mut vm = Vm::new();
    vm.code32(&[nop(), nop(), ebreak()]);
    let t = vm.run_trap();
    assert_eq!(
        t,
        Trap {
            cause: 3,
            epc: CODE + 8,
            tval: CODE + 8
        }
    );
}

#[test]
fn mret_state_transitions() {
    // To S: MIE = MPIE, MPIE = 1, MPP = U (least-privileged mode), MPRV cleared.
    let mut vm = Vm::new();
    let target = CODE + 0x100;
    vm.code32(&[mret()]);
    vm.load(target, &prog(&[wfi()]));
    vm.set_csr(MSTATUS, MPP_S | MPIE | MPRV);
    vm.set_csr(MEPC, target);
    assert_eq!(vm.run(), Exit::Wfi, "{}", vm.state());
    assert_eq!(vm.hart.pc(), target + 4);
    assert_eq!(vm.hart.priv_mode(), PrivMode::Supervisor);
    let ms = vm.csr(MSTATUS);
    assert_eq!(ms & (MIE_B | MPIE | MPP | MPRV), MIE_B | MPIE, "{ms:#x}");

    // To U with MPIE = 0: MIE becomes 0; the ecall from U shows MPP = U and MPIE = 0.
    let mut vm = Vm::new();
    vm.code32(&[mret()]);
    vm.load(target, &prog(&[ecall()]));
    vm.set_csr(MSTATUS, MIE_B);
    vm.set_csr(MEPC, target);
    let t = vm.run_trap();
    assert_eq!(
        t,
        Trap {
            cause: 8,
            epc: target,
            tval: 0
        }
    );
    assert_eq!(vm.csr(MSTATUS) & (MIE_B | MPIE | MPP), 0);

    // To M: MPRV is kept.
    let mut vm = Vm::new();
    vm.code32(&[mret()]);
    vm.load(target, &prog(&[wfi()]));
    vm.set_csr(MSTATUS, MPP_M | MPRV);
    vm.set_csr(MEPC, target);
    assert_eq!(vm.run(), Exit::Wfi);
    assert_eq!(vm.hart.priv_mode(), PrivMode::Machine);
    assert_eq!(vm.csr(MSTATUS) & (MPRV | MPP | MPIE), MPRV | MPIE);

    // mret from S is illegal.
    let mut vm = Vm::new();
    vm.code32(&[mret()]);
    vm.hart.set_priv_mode(PrivMode::Supervisor);
    let t = vm.run_trap();
    assert_eq!(
        t,
        Trap {
            cause: 2,
            epc: CODE,
            tval: mret() as u64
        }
    );
    assert_eq!(vm.csr(MSTATUS) & MPP, MPP_S);
}

#[test]
fn sret_state_transitions() {
    let target = CODE + 0x100;
    // S → U: SIE = SPIE, SPIE = 1, SPP = U. The U-mode ecall (delegated) then shows
    // SPP = U, SPIE = SIE (1), SIE = 0 in sstatus.
    let mut vm = Vm::new();
    vm.code32(&[sret()]);
    vm.load(target, &prog(&[ecall()]));
    vm.hart.set_priv_mode(PrivMode::Supervisor);
    vm.set_csr(MEDELEG, 1 << 8);
    vm.set_csr(SSTATUS, SPIE);
    vm.set_csr(SEPC, target);
    vm.set_csr(MCAUSE, 0x99);
    let t = vm.run_strap();
    assert_eq!(
        t,
        Trap {
            cause: 8,
            epc: target,
            tval: 0
        }
    );
    assert_eq!(vm.csr(MCAUSE), 0x99, "delegated trap must not touch mcause");
    assert_eq!(vm.hart.priv_mode(), PrivMode::Supervisor);
    assert_eq!(vm.csr(SSTATUS) & (SIE_B | SPIE | SPP), SPIE);

    // S → S with SPIE = 0: SIE = 0, SPIE = 1, SPP = U afterwards.
    let mut vm = Vm::new();
    vm.code32(&[sret()]);
    vm.load(target, &prog(&[csrr(A0, SSTATUS), wfi()]));
    vm.hart.set_priv_mode(PrivMode::Supervisor);
    vm.set_csr(SSTATUS, SPP | SIE_B);
    vm.set_csr(SEPC, target);
    assert_eq!(vm.run(), Exit::Wfi, "{}", vm.state());
    assert_eq!(vm.hart.pc(), target + 8);
    assert_eq!(vm.hart.priv_mode(), PrivMode::Supervisor);
    assert_eq!(vm.x(A0) & (SIE_B | SPIE | SPP), SPIE);

    // sret in U is illegal; in S with TSR it is illegal (to M).
    for (prv, tsr) in [(PrivMode::User, 0), (PrivMode::Supervisor, TSR)] {
        let mut vm = Vm::new();
        vm.code32(&[sret()]);
        vm.set_csr(MSTATUS, tsr);
        vm.set_csr(SEPC, target);
        vm.hart.set_priv_mode(prv);
        let t = vm.run_trap();
        assert_eq!(
            t,
            Trap {
                cause: 2,
                epc: CODE,
                tval: sret() as u64
            },
            "{prv:?}"
        );
    }
}

#[test]
fn medeleg_routes_exceptions() {
    // (mode, medeleg, code, cause, to S)
    let ill = 0xffff_ffffu32;
    let cases = [
        (PrivMode::User, 1u64 << 8, ecall(), 8u64, true),
        (PrivMode::User, 0, ecall(), 8, false),
        (PrivMode::Supervisor, 1 << 9, ecall(), 9, true),
        (PrivMode::Supervisor, 1 << 8, ecall(), 9, false),
        (PrivMode::Supervisor, 1 << 2, ill, 2, true),
        (PrivMode::User, 1 << 2, ill, 2, true),
        (PrivMode::User, 1 << 3, ill, 2, false),
        (PrivMode::Supervisor, 1 << 3, ebreak(), 3, true),
        // Traps never go to a less privileged mode: M-mode exceptions stay in M.
        (PrivMode::Machine, 0xffff, ill, 2, false),
        (PrivMode::Machine, 0xffff, ebreak(), 3, false),
    ];
    for (prv, deleg, insn, cause, to_s) in cases {
        let mut vm = Vm::new();
        vm.code32(&[insn]);
        vm.set_csr(MEDELEG, deleg);
        vm.set_csr(MCAUSE, 0x99);
        vm.set_csr(SCAUSE, 0x99);
        vm.hart.set_priv_mode(prv);
        let what = format!("{prv:?} medeleg {deleg:#x} cause {cause}");
        let e = vm.run();
        let want_pc = if to_s { STRAP + 4 } else { TRAP + 4 };
        assert!(
            e == Exit::Wfi && vm.hart.pc() == want_pc,
            "{what}: {e:?} {}",
            vm.state()
        );
        let tval = match cause {
            2 => insn as u64,
            3 => CODE,
            _ => 0,
        };
        let want = Trap {
            cause,
            epc: CODE,
            tval,
        };
        if to_s {
            assert_eq!(vm.strap(), want, "{what}");
            assert_eq!(vm.csr(MCAUSE), 0x99, "{what}");
            assert_eq!(vm.hart.priv_mode(), PrivMode::Supervisor);
            let spp = vm.csr(SSTATUS) & SPP != 0;
            assert_eq!(spp, prv == PrivMode::Supervisor, "{what}: SPP");
        } else {
            assert_eq!(vm.mtrap(), want, "{what}");
            assert_eq!(vm.csr(SCAUSE), 0x99, "{what}");
            assert_eq!((vm.csr(MSTATUS) & MPP) >> 11, prv as u64, "{what}: MPP");
        }
    }
}

#[test]
fn medeleg_ecall_from_m_is_not_delegable() {
    // Privileged spec 3.1.8: medeleg[11] is read-only zero.
    let mut vm = Vm::new();
    vm.set_csr(MEDELEG, u64::MAX);
    assert_eq!(vm.csr(MEDELEG) & (1 << 11), 0);
}

const VEC: u64 = RAM_BASE + 0x31_0000;
const SVEC: u64 = RAM_BASE + 0x31_1000;

#[test]
fn vectored_mtvec_for_interrupts_only() {
    // Exceptions go to BASE.
    let mut vm = Vm::new();
    vm.load(VEC, &prog(&[wfi()]));
    vm.set_csr(MTVEC, VEC | 1);
    vm.code32(&[ecall()]);
    assert_eq!(vm.run(), Exit::Wfi);
    assert_eq!(vm.hart.pc(), VEC + 4);
    assert_eq!(vm.csr(MCAUSE), 11);

    // Interrupts go to BASE + 4 * cause.
    for (irq, cause) in [
        (Irq::MachineTimer, 7u64),
        (Irq::MachineExternal, 11),
        (Irq::MachineSoft, 3),
        (Irq::SupervisorExternal, 9),
    ] {
        let mut vm = Vm::new();
        vm.load(VEC, &prog(&[wfi()]));
        vm.load(VEC + 4 * cause, &prog(&[csrw(MIE, ZERO), wfi()]));
        vm.set_csr(MTVEC, VEC | 1);
        vm.set_csr(MIE, 1 << cause);
        vm.hart.handle().set_irq(irq, true);
        vm.code32(&[nop(), csrrsi(ZERO, MSTATUS, MIE_B as u32), nop()]);
        assert_eq!(vm.run(), Exit::Wfi, "{}", vm.state());
        assert_eq!(vm.hart.pc(), VEC + 4 * cause + 8, "cause {cause}");
        assert_eq!(
            vm.mtrap(),
            Trap {
                cause: cause | INT,
                epc: CODE + 8,
                tval: 0
            }
        );
    }

    // stvec vectored: a delegated STI from U goes to SVEC + 4*5.
    let mut vm = Vm::new();
    vm.load(SVEC, &prog(&[wfi()]));
    vm.load(SVEC + 20, &prog(&[csrw(SIE, ZERO), wfi()]));
    vm.set_csr(STVEC, SVEC | 1);
    vm.set_csr(MIDELEG, 1 << 5);
    vm.set_csr(MIE, 1 << 5);
    vm.hart.handle().set_irq(Irq::SupervisorTimer, true);
    vm.hart.set_priv_mode(PrivMode::User);
    vm.code32(&[nop()]);
    assert_eq!(vm.run(), Exit::Wfi, "{}", vm.state());
    assert_eq!(vm.hart.pc(), SVEC + 28);
    assert_eq!(vm.csr(SCAUSE), 5 | INT);
}

#[test]
fn epc_bit_0_reads_zero() {
    let mut vm = Vm::new();
    vm.code32(&[
        csrw(MEPC, A1),
        csrr(A2, MEPC),
        csrw(SEPC, A1),
        csrr(A3, SEPC),
    ]);
    vm.set_x(A1, 0x8000_1003);
    vm.run_ok();
    // IALIGN = 16: bit 0 is zero, bit 1 is kept.
    assert_eq!((vm.x(A2), vm.x(A3)), (0x8000_1002, 0x8000_1002));
}

// ==========================================================================================
// CSRs
// ==========================================================================================

#[test]
fn misa_and_ids() {
    let mut vm = Vm::with_config(HartConfig {
        hart_id: 5,
        ..HartConfig::default()
    });
    vm.code32(&[
        csrr(A0, MISA),
        csrr(A1, MHARTID),
        csrr(A2, 0xf11),
        csrr(A3, 0xf12),
        csrr(A4, 0xf13),
    ]);
    vm.set_x(A2, 9);
    vm.set_x(A3, 9);
    vm.set_x(A4, 9);
    vm.run_ok();
    // MXL = 2 (64-bit); A, C, D, F, I, M, S, U.
    let want = (2u64 << 62)
        | 1
        | (1 << 2)
        | (1 << 3)
        | (1 << 5)
        | (1 << 8)
        | (1 << 12)
        | (1 << 18)
        | (1 << 20);
    assert_eq!(vm.x(A0), want);
    assert_eq!(want, 0x8000_0000_0014_112d);
    assert_eq!(vm.x(A1), 5);
    // mvendorid/marchid/mimpid may be 0 ("not implemented"), but must be readable.
    assert_eq!((vm.x(A2), vm.x(A3), vm.x(A4)), (0, 0, 0));
}

/// Runs `insn` in `prv`: true if it raised an illegal-instruction exception (checked in
/// detail), false if it completed.
fn csr_illegal(prv: PrivMode, insn: u32, setup: impl FnOnce(&mut Vm)) -> bool {
    let mut vm = Vm::new();
    // U-mode cannot wfi: end with a store to DONE.
    vm.code32(&[insn, sw(ZERO, T6, 0)]);
    vm.hart.set_priv_mode(prv);
    setup(&mut vm);
    vm.set_x(A0, 0x77);
    match vm.run() {
        Exit::Wfi if vm.hart.pc() == TRAP + 4 => {
            assert_eq!(
                vm.mtrap(),
                Trap {
                    cause: 2,
                    epc: CODE,
                    tval: insn as u64
                },
                "{insn:#x} in {prv:?}"
            );
            assert_eq!(vm.x(A0), 0x77, "rd written by an illegal CSR instruction");
            true
        }
        Exit::MmioWrite { addr: DONE, .. } => false,
        e => panic!("{insn:#x} in {prv:?}: {e:?} {}", vm.state()),
    }
}

#[test]
fn nonexistent_csrs_are_illegal() {
    for csr in [
        0x7c0u32, 0x3a1, 0xc80, 0x600, 0x5a8, 0x7b0, 0xfff, 0x0ff, 0x800,
    ] {
        assert!(
            csr_illegal(PrivMode::Machine, csrr(A0, csr), |_| {}),
            "csrr {csr:#x}"
        );
    }
}

#[test]
fn read_only_csrs() {
    let m = PrivMode::Machine;
    // Writes are illegal, even of the value it already has and even with rd = x0.
    assert!(csr_illegal(m, csrw(CYCLE, A1), |_| {}), "csrw cycle");
    assert!(
        csr_illegal(m, csrrw(A0, INSTRET, A1), |_| {}),
        "csrrw instret"
    );
    assert!(csr_illegal(m, csrrwi(ZERO, TIME, 0), |_| {}), "csrrwi time");
    assert!(
        csr_illegal(m, csrrw(A0, MHARTID, ZERO), |_| {}),
        "csrrw mhartid, x0"
    );
    // csrrs/csrrc with rs1 = a register (even holding 0) is a write.
    assert!(
        csr_illegal(m, csrrs(A0, MHARTID, A1), |vm| vm.set_x(A1, 0)),
        "csrrs mhartid, a1=0"
    );
    assert!(
        csr_illegal(m, csrrc(A0, CYCLE, A1), |_| {}),
        "csrrc cycle, a1"
    );
    // rs1 = x0 / uimm = 0: no write, allowed.
    for insn in [
        csrrs(A0, CYCLE, ZERO),
        csrrc(A0, CYCLE, ZERO),
        csrrsi(A0, MHARTID, 0),
        csrrci(A0, MHARTID, 0),
        csrrs(A0, INSTRET, ZERO),
    ] {
        assert!(!csr_illegal(m, insn, |_| {}), "{insn:#x}");
    }
}

#[test]
fn privilege_of_csr_accesses() {
    let s = PrivMode::Supervisor;
    let u = PrivMode::User;
    for csr in [
        MSTATUS, MSCRATCH, MEPC, MTVEC, MIE, MHARTID, MINSTRET, MCYCLE, 0x3a0, 0x3b0,
    ] {
        assert!(csr_illegal(s, csrr(A0, csr), |_| {}), "S reads {csr:#x}");
        assert!(csr_illegal(u, csrr(A0, csr), |_| {}), "U reads {csr:#x}");
    }
    for csr in [SSTATUS, SSCRATCH, SEPC, STVEC, SIE, SATP, SCAUSE] {
        assert!(!csr_illegal(s, csrr(A0, csr), |_| {}), "S reads {csr:#x}");
        assert!(csr_illegal(u, csrr(A0, csr), |_| {}), "U reads {csr:#x}");
    }
    // satp from S with TVM = 1.
    assert!(csr_illegal(s, csrr(A0, SATP), |vm| vm.set_csr(MSTATUS, TVM)));
    assert!(csr_illegal(s, sfence_vma(0, 0), |vm| vm.set_csr(MSTATUS, TVM)));
    // sfence.vma from U.
    assert!(csr_illegal(u, sfence_vma(0, 0), |_| {}));
    // wfi from U, and from S with TW.
    assert!(csr_illegal(u, wfi(), |_| {}));
    assert!(csr_illegal(s, wfi(), |vm| vm.set_csr(MSTATUS, TW)));
}

#[test]
fn instret_is_exact() {
    // The difference of two reads separated by N instructions is N + 1.
    for n in [0usize, 1, 10, 63, 64, 65, 200] {
        let mut p = prog(&[csrr(A0, MINSTRET)]);
        for _ in 0..n {
            p.i(addi(A2, A2, 1));
        }
        p.i(csrr(A1, MINSTRET));
        let mut vm = Vm::new();
        vm.code(&p);
        vm.run_ok();
        assert_eq!(vm.x(A1) - vm.x(A0), n as u64 + 1, "N = {n}");
    }
    // Mixed: compressed instructions, taken and untaken branches, a call.
    let mut p = prog(&[csrr(A0, INSTRET)]);
    p.c(c_li(A2, 3)) // 1
        .c(c_addi(A2, -1)) // 2 per iteration: c.addi, c.bnez
        .c(c_bnez(A2, -2))
        .i(beq(ZERO, ZERO, 8)) // taken, skips one
        .i(nop())
        .i(jal(RA, 8)) // call
        .i(j(8))
        .c(c_jr(RA)) // return
        .c(c_nop())
        .i(csrr(A1, INSTRET));
    // Count: c.li, 3x(c.addi, c.bnez), beq, jal, c.jr, j = 1 + 6 + 4 = 11 → difference 12.
    let mut vm = Vm::new();
    vm.code(&p);
    vm.run_ok();
    assert_eq!(vm.x(A1) - vm.x(A0), 12);
}

#[test]
fn instret_excludes_trapping_instructions() {
    // An ecall does not retire; the handler's instructions do.
    let mut vm = Vm::new();
    vm.load(
        TRAP,
        &prog(&[csrr(T0, MEPC), addi(T0, T0, 4), csrw(MEPC, T0), mret()]),
    );
    vm.code32(&[csrr(A0, MINSTRET), ecall(), csrr(A1, MINSTRET)]);
    vm.run_ok();
    // csrr A0 (1) + handler (4) = 5.
    assert_eq!(vm.x(A1) - vm.x(A0), 5);
}

#[test]
fn counter_enables_gate_cycle_time_instret() {
    // (csr, bit)
    let ctrs = [
        (CYCLE, 0u32),
        (TIME, 1),
        (INSTRET, 2),
        (0xc03, 3),
        (0xc1f, 31),
    ];
    for (mcen, scen) in [
        (0u64, 0u64),
        (0b101, 0b111),
        (0xffff_ffff, 0b010),
        (0b111, 0),
    ] {
        for (csr, bit) in ctrs {
            let m_ok = mcen >> bit & 1 != 0;
            let s_ok = scen >> bit & 1 != 0;
            let setup = |vm: &mut Vm| {
                vm.set_csr(MCOUNTEREN, mcen);
                vm.set_csr(SCOUNTEREN, scen);
            };
            assert!(!csr_illegal(PrivMode::Machine, csrr(A0, csr), setup));
            assert_eq!(
                csr_illegal(PrivMode::Supervisor, csrr(A0, csr), setup),
                !m_ok,
                "S reads {csr:#x}, mcounteren {mcen:#x}"
            );
            assert_eq!(
                csr_illegal(PrivMode::User, csrr(A0, csr), setup),
                !(m_ok && s_ok),
                "U reads {csr:#x}, mcounteren {mcen:#x} scounteren {scen:#x}"
            );
        }
    }
}

#[test]
fn satp_warl_ignores_unsupported_modes() {
    let mut vm = Vm::new();
    vm.code32(&[
        csrw(SATP, A1), // Sv57: ignored
        csrr(A0, SATP),
        csrw(SATP, A2), // Sv39: accepted
        csrr(A3, SATP),
        csrw(SATP, A1), // ignored, keeps Sv39
        csrr(A4, SATP),
        csrw(SATP, A5), // mode 1 (reserved): ignored
        csrr(A6, SATP),
        csrw(SATP, A7), // Sv48
        csrr(S2, SATP),
    ]);
    let sv39 = (8u64 << 60) | 0x80380;
    vm.set_x(A1, (10 << 60) | 0x1234);
    vm.set_x(A2, sv39);
    vm.set_x(A5, (1 << 60) | 0x4321);
    vm.set_x(A7, (9 << 60) | 0x80381);
    vm.run_ok();
    assert_eq!(vm.x(A0), 0);
    assert_eq!(vm.x(A3), sv39);
    assert_eq!(vm.x(A4), sv39);
    assert_eq!(vm.x(A6), sv39);
    assert_eq!(vm.x(S2), (9 << 60) | 0x80381);
}

#[test]
fn mstatus_warl_fields() {
    let mut vm = Vm::new();
    vm.code32(&[
        csrw(MSTATUS, A1), // MPP = S
        csrw(MSTATUS, A2), // MPP = 2 (reserved): keeps S
        csrr(A0, MSTATUS),
        csrw(SSTATUS, A3), // sstatus cannot set MIE/MPP
        csrr(A4, MSTATUS),
        csrr(A5, SSTATUS),
    ]);
    vm.set_x(A1, MPP_S);
    vm.set_x(A2, 2 << 11);
    vm.set_x(A3, MIE_B | MPP_M | SIE_B | SUM);
    vm.run_ok();
    assert_eq!(vm.x(A0) & MPP, MPP_S);
    // UXL = SXL = 2 (64-bit).
    assert_eq!((vm.x(A0) >> 32) & 0xf, 0xa);
    assert_eq!(vm.x(A4) & (MIE_B | MPP | SIE_B | SUM), MPP_S | SIE_B | SUM);
    // sstatus shows UXL but not SXL or M fields.
    assert_eq!(vm.x(A5) & ((0xf << 32) | MIE_B | MPP), 2 << 32);
}

#[test]
fn mip_sip_mie_sie_views() {
    let mut vm = Vm::new();
    vm.code32(&[
        csrw(MIP, A1), // only SSIP, STIP, SEIP are writable in mip
        csrr(A0, MIP),
        csrw(MIE, A1),
        csrr(A2, MIE),
        csrw(MIDELEG, A3), // SSI, STI, SEI
        csrr(A4, SIE),
        csrr(A5, SIP),
        sw(ZERO, T6, 0), // pending and enabled interrupts would make a final wfi a nop
    ]);
    vm.set_x(A1, u64::MAX);
    vm.set_x(A3, (1 << 1) | (1 << 9));
    vm.run_done();
    assert_eq!(vm.x(A0), (1 << 1) | (1 << 5) | (1 << 9));
    assert_eq!(vm.x(A2), 0xaaa);
    assert_eq!(vm.x(A4), (1 << 1) | (1 << 9));
    assert_eq!(vm.x(A5), (1 << 1) | (1 << 9));
}

// ==========================================================================================
// Paging
// ==========================================================================================

const V: u64 = 1;
const R: u64 = 2;
const W: u64 = 4;
const X_: u64 = 8;
const U: u64 = 16;
const A: u64 = 64;
const D: u64 = 128;
const RWX_AD: u64 = V | R | W | X_ | A | D;
const RW_AD: u64 = V | R | W | A | D;

/// Page tables live here (512 KiB).
const PT_AREA: u64 = RAM_BASE + 0x38_0000;
const PT_END: u64 = RAM_BASE + RAM_SIZE;

/// A page-table builder for Sv39 (3 levels) or Sv48 (4 levels) in guest memory.
struct Pt {
    levels: u32,
    root: u64,
    next: u64,
}

fn pte(pa: u64, flags: u64) -> u64 {
    ((pa >> 12) << 10) | flags
}

fn vpn(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * level)) & 0x1ff
}

impl Pt {
    fn new(levels: u32) -> Pt {
        Pt {
            levels,
            root: PT_AREA,
            next: PT_AREA + 0x1000,
        }
    }

    /// A second, independent set of tables in the upper half of the page-table area.
    fn another(&self, levels: u32) -> Pt {
        let root = PT_AREA + (PT_END - PT_AREA) / 2;
        assert!(self.next <= root);
        Pt {
            levels,
            root,
            next: root + 0x1000,
        }
    }

    fn satp(&self) -> u64 {
        let mode = if self.levels == 3 { 8 } else { 9 };
        (mode << 60) | (self.root >> 12)
    }

    fn alloc(&mut self, vm: &Vm) -> u64 {
        let t = self.next;
        assert!(t < PT_END, "out of page-table memory");
        self.next += 0x1000;
        vm.mem.write(t, &[0u8; 4096]).unwrap();
        t
    }

    /// Address of the PTE for `va` at `level`, creating pointer PTEs above it.
    fn slot(&mut self, vm: &Vm, va: u64, level: u32) -> u64 {
        let mut table = self.root;
        for l in (level + 1..self.levels).rev() {
            let a = table + vpn(va, l) * 8;
            let e = vm.r64(a);
            table = if e & V == 0 {
                let t = self.alloc(vm);
                vm.w64(a, pte(t, V));
                t
            } else {
                assert_eq!(
                    e & (R | X_),
                    0,
                    "{va:#x}: a leaf is in the way at level {l}"
                );
                (e >> 10) << 12
            };
        }
        table + vpn(va, level) * 8
    }

    /// Maps `va` to `pa` with a leaf at `level` (0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB, 3 = 512
    /// GiB). Returns the PTE address.
    fn map(&mut self, vm: &Vm, va: u64, pa: u64, level: u32, flags: u64) -> u64 {
        let a = self.slot(vm, va, level);
        vm.w64(a, pte(pa, flags));
        a
    }

    /// The standard layout: RAM identity-mapped by a 1 GiB RWX page, the low 1 GiB (MMIO)
    /// identity-mapped RW.
    fn standard(&mut self, vm: &Vm) {
        self.map(vm, RAM_BASE, RAM_BASE, 2, RWX_AD);
        self.map(vm, 0, 0, 2, RW_AD);
    }
}

/// A hart in S-mode with paging on (standard layout) and page-table builder.
fn paged_vm(levels: u32) -> (Vm, Pt) {
    let mut vm = Vm::new();
    let mut pt = Pt::new(levels);
    vm.mem.write(pt.root, &[0u8; 4096]).unwrap();
    pt.standard(&vm);
    vm.set_csr(SATP, pt.satp());
    vm.hart.set_priv_mode(PrivMode::Supervisor);
    (vm, pt)
}

const TV: u64 = 0x4000_0000;

fn translation_sizes(levels: u32) {
    let (mut vm, mut pt) = paged_vm(levels);
    let mut maps = vec![
        (TV + 0x1000, DATA, 0u32, 0x128u64),
        (TV + 0x20_0000, RAM_BASE + 0x20_0000, 1, 0x1_2348),
        (0xc000_0000, RAM_BASE, 2, 0x20_0010),
        // A canonical high address (bits 63..VA_BITS-1 all ones).
        (0xffff_ffff_c000_0000, RAM_BASE, 2, 0x20_0020),
    ];
    if levels == 4 {
        maps.push((0x80_0000_0000, 0, 3, RAM_BASE + 0x20_0030));
    }
    let mut p = Prog::new();
    for (i, &(va, pa, level, off)) in maps.iter().enumerate() {
        pt.map(&vm, va, pa, level, RW_AD);
        vm.w64(pa + off, 0x1000 + i as u64);
        // a1 = va + off comes from S2+i; load it, then store i+0x2000 next to it.
        let r = S2 + i as u32;
        vm.set_x(r, va + off);
        p.i(ld(A0 + i as u32, r, 0));
        p.i(addi(T0, ZERO, 0x200 + i as i64));
        p.i(sd(T0, r, 8));
    }
    vm.code(&p);
    vm.run_ok();
    for (i, &(va, pa, _, off)) in maps.iter().enumerate() {
        assert_eq!(vm.x(A0 + i as u32), 0x1000 + i as u64, "load via {va:#x}");
        assert_eq!(vm.r64(pa + off + 8), 0x200 + i as u64, "store via {va:#x}");
    }
}

#[test]
fn sv39_translates_4k_2m_1g_pages() {
    translation_sizes(3);
}

#[test]
fn sv48_translates_4k_2m_1g_512g_pages() {
    translation_sizes(4);
}

#[test]
fn accessed_and_dirty_bits_are_set() {
    for levels in [3, 4] {
        let (mut vm, mut pt) = paged_vm(levels);
        let p_load = pt.map(&vm, TV + 0x3000, DATA + 0x3000, 0, V | R | W);
        let p_store = pt.map(&vm, TV + 0x4000, DATA + 0x4000, 0, V | R | W);
        let p_fetch = pt.map(&vm, TV + 0x5000, CODE + 0x5000, 0, V | R | X_);
        let p_untouched = pt.map(&vm, TV + 0x6000, DATA + 0x6000, 0, V | R | W);
        vm.load(CODE + 0x5000, &prog(&[jalr(ZERO, RA, 0)]));
        vm.code32(&[ld(A0, A1, 0), sd(A0, A2, 0), jalr(RA, A3, 0)]);
        vm.set_x(A1, TV + 0x3000);
        vm.set_x(A2, TV + 0x4000);
        vm.set_x(A3, TV + 0x5000);
        vm.run_ok();
        assert_eq!(
            vm.r64(p_load) & (A | D),
            A,
            "Sv{}: load sets A only",
            12 + 9 * levels
        );
        assert_eq!(vm.r64(p_store) & (A | D), A | D, "store sets A and D");
        assert_eq!(vm.r64(p_fetch) & (A | D), A, "fetch sets A");
        assert_eq!(vm.r64(p_untouched) & (A | D), 0);
    }
}

/// Runs a paged S-mode program expected to trap to M; returns the trap.
fn paged_trap(vm: &mut Vm) -> Trap {
    let t = vm.run_trap();
    assert_eq!(vm.csr(MSTATUS) & MPP, MPP_S, "trap came from S");
    t
}

#[test]
fn page_faults_report_cause_and_va() {
    for levels in [3, 4] {
        // (what, flags of the page at TV+0x1000, instruction, cause)
        let cases: [(&str, u64, u32, u64); 8] = [
            ("load, invalid", 0, ld(A0, A1, 0x18), 13),
            ("store, invalid", 0, sd(A0, A1, 0x18), 15),
            ("store, read-only", V | R | A | D, sw(A0, A1, 0x18), 15),
            (
                "amo, read-only",
                V | R | A | D,
                amo_w(AmoOp::Add, A0, A0, A1),
                15,
            ),
            ("load, execute-only", V | X_ | A, lw(A0, A1, 0x18), 13),
            (
                "load, W without R (reserved)",
                V | W | A | D,
                lb(A0, A1, 0x18),
                13,
            ),
            ("lr, invalid", 0, lr_d(A0, A1), 13),
            ("fetch, not executable", RW_AD, jalr(RA, A1, 0x18), 12),
        ];
        for (what, flags, insn, cause) in cases {
            for delegate in [false, true] {
                let (mut vm, mut pt) = paged_vm(levels);
                pt.map(&vm, TV + 0x1000, DATA, 0, flags);
                vm.code32(&[nop(), insn]);
                vm.set_x(A1, TV + 0x1000);
                vm.set_x(A0, 0x77);
                let va = if matches!(insn & 0x7f, 0x2f) {
                    TV + 0x1000
                } else {
                    TV + 0x1018
                };
                let epc = if cause == 12 { va } else { CODE + 4 };
                let want = Trap {
                    cause,
                    epc,
                    tval: va,
                };
                if delegate {
                    vm.set_csr(MEDELEG, 1 << cause);
                    assert_eq!(vm.run_strap(), want, "Sv{}: {what} (to S)", 12 + 9 * levels);
                } else {
                    assert_eq!(paged_trap(&mut vm), want, "Sv{}: {what}", 12 + 9 * levels);
                }
                if cause != 12 {
                    assert_eq!(vm.x(A0), 0x77, "{what}: rd written");
                }
                assert_eq!(vm.r64(DATA + 0x18), 0, "{what}: memory written");
            }
        }
    }
}

#[test]
fn sum_and_mxr() {
    let user_page = V | R | W | U | A | D;
    // (mstatus bits, page flags, instruction, expected cause or None for success)
    let cases: [(&str, u64, u64, u32, Option<u64>); 9] = [
        (
            "S load U page, SUM=0",
            0,
            user_page,
            ld(A0, A1, 0),
            Some(13),
        ),
        (
            "S store U page, SUM=0",
            0,
            user_page,
            sd(A0, A1, 0),
            Some(15),
        ),
        ("S load U page, SUM=1", SUM, user_page, ld(A0, A1, 0), None),
        ("S store U page, SUM=1", SUM, user_page, sd(A2, A1, 0), None),
        (
            "S fetch U page, SUM=1",
            SUM,
            user_page | X_,
            jalr(RA, A1, 0),
            Some(12),
        ),
        (
            "S fetch U page, SUM=0",
            0,
            user_page | X_,
            jalr(RA, A1, 0),
            Some(12),
        ),
        (
            "S load X-only, MXR=0",
            0,
            V | X_ | A,
            ld(A0, A1, 0),
            Some(13),
        ),
        ("S load X-only, MXR=1", MXR, V | X_ | A, ld(A0, A1, 0), None),
        (
            "S store X-only, MXR=1",
            MXR,
            V | X_ | A | D,
            sd(A2, A1, 0),
            Some(15),
        ),
    ];
    for (what, ms, flags, insn, fault) in cases {
        let (mut vm, mut pt) = paged_vm(3);
        pt.map(&vm, TV, DATA, 0, flags);
        vm.load(DATA, &prog(&[jalr(ZERO, RA, 0)])); // in case it is fetched and runs
        vm.w64(DATA + 8, 0x1234);
        vm.set_csr(MSTATUS, ms);
        vm.code32(&[insn]);
        vm.set_x(A1, TV);
        vm.set_x(A2, 0x5555);
        match fault {
            Some(cause) => {
                let epc = if cause == 12 { TV } else { CODE };
                assert_eq!(
                    paged_trap(&mut vm),
                    Trap {
                        cause,
                        epc,
                        tval: TV
                    },
                    "{what}"
                );
            }
            None => {
                vm.run_ok();
                if insn == ld(A0, A1, 0) {
                    assert_eq!(vm.x(A0), jalr(ZERO, RA, 0) as u64, "{what}");
                } else {
                    assert_eq!(vm.r64(DATA), 0x5555, "{what}");
                }
            }
        }
    }
}

#[test]
fn user_mode_permissions() {
    const UCODE: u64 = TV + 0x10_0000;
    let user_code = V | R | X_ | U | A;
    // (what, data page flags, expected cause: 8 = reached the ecall)
    for (what, flags, insn, cause) in [
        ("U load U page", V | R | U | A, ld(A0, A1, 0), 8u64),
        ("U load S page", V | R | A, ld(A0, A1, 0), 13),
        ("U store S page", RW_AD, sd(A0, A1, 0), 15),
        ("U fetch S page", RWX_AD, jalr(RA, A1, 0), 12),
        (
            "U store U read-only page",
            V | R | U | A | D,
            sd(A0, A1, 0),
            15,
        ),
    ] {
        let (mut vm, mut pt) = paged_vm(3);
        pt.map(&vm, UCODE, CODE + 0x4000, 0, user_code);
        pt.map(&vm, TV, DATA, 0, flags);
        vm.load(CODE + 0x4000, &prog(&[insn, ecall()]));
        vm.load(DATA, &prog(&[ecall()]));
        vm.hart.set_priv_mode(PrivMode::User);
        vm.hart.set_pc(UCODE);
        vm.set_x(A1, TV);
        let t = vm.run_trap();
        let (epc, tval) = match cause {
            8 => (UCODE + 4, 0),
            12 => (TV, TV),
            _ => (UCODE, TV),
        };
        assert_eq!(t, Trap { cause, epc, tval }, "{what}");
        assert_eq!(vm.csr(MSTATUS) & MPP, 0, "{what}: from U");
    }
    // U-mode code on a supervisor page: fetch fault at the first instruction.
    let (mut vm, _pt) = paged_vm(3);
    vm.code32(&[nop()]);
    vm.hart.set_priv_mode(PrivMode::User);
    assert_eq!(
        vm.run_trap(),
        Trap {
            cause: 12,
            epc: CODE,
            tval: CODE
        }
    );
}

#[test]
fn mprv_translates_m_mode_data_accesses() {
    let (mut vm, mut pt) = paged_vm(3);
    pt.map(&vm, TV + 0x1000, DATA, 0, RW_AD);
    vm.w64(DATA, 0xfeed);
    vm.hart.set_priv_mode(PrivMode::Machine);
    // M-mode code runs untranslated; with MPRV = 1 and MPP = S, its loads use Sv39.
    vm.set_csr(MSTATUS, MPRV | MPP_S);
    vm.code32(&[ld(A0, A1, 0), sd(A0, A1, 8)]);
    vm.set_x(A1, TV + 0x1000);
    vm.run_ok();
    assert_eq!(vm.x(A0), 0xfeed);
    assert_eq!(vm.r64(DATA + 8), 0xfeed);

    // MPP = U: the supervisor page is not accessible.
    let (mut vm, mut pt) = paged_vm(3);
    pt.map(&vm, TV + 0x1000, DATA, 0, RW_AD);
    vm.hart.set_priv_mode(PrivMode::Machine);
    vm.set_csr(MSTATUS, MPRV);
    vm.code32(&[ld(A0, A1, 0)]);
    vm.set_x(A1, TV + 0x1000);
    assert_eq!(
        vm.run_trap(),
        Trap {
            cause: 13,
            epc: CODE,
            tval: TV + 0x1000
        }
    );
}

#[test]
fn non_canonical_addresses_fault() {
    for (levels, va) in [
        (3u32, 0x0000_0080_4000_1000u64), // bit 39 set, bit 38 clear: truncated it is mapped
        (3, 0xffff_ff00_4000_1000),       // bits 63..40 set, 39..38 clear
        (3, 0x8000_0000_4000_1000),
        (4, 0x0001_0000_4000_1000), // bit 48
        (4, 0x0000_8000_4000_1000), // bit 47 set, upper clear
    ] {
        for (insn, cause) in [
            (ld(A0, A1, 0), 13u64),
            (sd(A0, A1, 0), 15),
            (jalr(RA, A1, 0), 12),
        ] {
            let (mut vm, mut pt) = paged_vm(levels);
            pt.map(&vm, TV + 0x1000, DATA, 0, RWX_AD);
            vm.code32(&[insn]);
            vm.set_x(A1, va);
            let epc = if cause == 12 { va } else { CODE };
            assert_eq!(
                paged_trap(&mut vm),
                Trap {
                    cause,
                    epc,
                    tval: va
                },
                "Sv{} {va:#x}",
                12 + 9 * levels
            );
        }
    }
}

#[test]
fn garbage_page_tables_fault_instead_of_hanging() {
    for levels in [3u32, 4] {
        let sv = 12 + 9 * levels;
        // A table whose entry 5 points to itself, walked with vpn = 5 at every level.
        let va_loop = (0..levels).fold(0u64, |v, l| v | 5 << (12 + 9 * l));
        // (what, setup, va, cause)
        type Setup = Box<dyn Fn(&Vm, &mut Pt)>;
        let cases: Vec<(&str, Setup, u64, u64)> = vec![
            (
                "self-pointing PTE at every level",
                Box::new(|vm: &Vm, pt: &mut Pt| vm.w64(pt.root + 5 * 8, pte(pt.root, V))),
                va_loop,
                13,
            ),
            (
                "two tables pointing at each other",
                Box::new(|vm: &Vm, pt: &mut Pt| {
                    let t = pt.alloc(vm);
                    vm.w64(pt.root + 5 * 8, pte(t, V));
                    vm.w64(t + 5 * 8, pte(pt.root, V));
                }),
                va_loop,
                13,
            ),
            (
                "leaf with bit 54 set",
                Box::new(|vm: &Vm, pt: &mut Pt| {
                    pt.map(vm, TV + 0x1000, DATA, 0, RW_AD | 1 << 54);
                }),
                TV + 0x1000,
                13,
            ),
            (
                "leaf with N (bit 63) set",
                Box::new(|vm: &Vm, pt: &mut Pt| {
                    pt.map(vm, TV + 0x1000, DATA, 0, RW_AD | 1 << 63);
                }),
                TV + 0x1000,
                13,
            ),
            (
                "leaf with PBMT (bits 62:61) set",
                Box::new(|vm: &Vm, pt: &mut Pt| {
                    pt.map(vm, TV + 0x1000, DATA, 0, RW_AD | 1 << 61);
                }),
                TV + 0x1000,
                13,
            ),
            (
                "pointer PTE with reserved bits",
                Box::new(|vm: &Vm, pt: &mut Pt| {
                    pt.map(vm, TV + 0x20_0000, DATA, 0, RW_AD);
                    // The level-1 entry covering TV + 2 MiB is a pointer: set bit 60.
                    let l1 = pt.slot(vm, TV + 0x20_0000, 1);
                    vm.w64(l1, vm.r64(l1) | 1 << 60);
                }),
                TV + 0x20_0000,
                13,
            ),
            (
                "pointer PTE in the last level",
                Box::new(|vm: &Vm, pt: &mut Pt| {
                    pt.map(vm, TV + 0x1000, DATA, 0, V);
                }),
                TV + 0x1000,
                13,
            ),
            (
                "misaligned 2 MiB superpage",
                Box::new(|vm: &Vm, pt: &mut Pt| {
                    pt.map(vm, TV + 0x60_0000, DATA + 0x1000, 1, RW_AD);
                }),
                TV + 0x60_0000,
                13,
            ),
            (
                "leaf pointing at unmapped physical memory",
                Box::new(|vm: &Vm, pt: &mut Pt| {
                    pt.map(vm, TV + 0x1000, UNMAPPED, 0, RW_AD);
                }),
                TV + 0x1000,
                5,
            ),
            (
                "page-table pointer to unmapped physical memory",
                Box::new(|vm: &Vm, pt: &mut Pt| {
                    pt.slot(vm, TV + 0x80_0000, 0);
                    let l1 = pt.slot(vm, TV + 0x80_0000, 1);
                    vm.w64(l1, pte(UNMAPPED, V));
                }),
                TV + 0x80_0000,
                5,
            ),
        ];
        for (what, setup, va, cause) in cases {
            let (mut vm, mut pt) = paged_vm(levels);
            setup(&vm, &mut pt);
            vm.code32(&[ld(A0, A1, 0)]);
            vm.set_x(A1, va);
            let (e, hart) = run_on_thread(vm.hart, 1_000_000, Duration::from_secs(10));
            vm.hart = hart.unwrap_or_else(|| panic!("Sv{sv} {what}: the hart hangs"));
            let e = e.unwrap_or_else(|| panic!("Sv{sv} {what}: run did not return"));
            assert!(
                e == Exit::Wfi && vm.hart.pc() == TRAP + 4,
                "Sv{sv} {what}: {e:?} {}",
                vm.state()
            );
            assert_eq!(
                vm.mtrap(),
                Trap {
                    cause,
                    epc: CODE,
                    tval: va
                },
                "Sv{sv} {what}"
            );
        }
    }
}

#[test]
fn satp_write_flushes_translations() {
    // Documented: any satp write flushes the software TLB (no sfence.vma needed).
    let (mut vm, mut pt_a) = paged_vm(3);
    let mut pt_b = pt_a.another(3);
    vm.mem.write(pt_b.root, &[0u8; 4096]).unwrap();
    pt_b.standard(&vm);
    let (p1, p2) = (DATA, DATA + 0x1000);
    pt_a.map(&vm, TV, p1, 0, RW_AD);
    pt_b.map(&vm, TV, p2, 0, RW_AD);
    // Code at the same VA, different physical pages.
    let (c1, c2) = (CODE + 0x8000, CODE + 0x9000);
    pt_a.map(&vm, TV + 0x10_0000, c1, 0, RWX_AD);
    pt_b.map(&vm, TV + 0x10_0000, c2, 0, RWX_AD);
    vm.load(c1, &prog(&[addi(S2, ZERO, 1), jalr(ZERO, RA, 0)]));
    vm.load(c2, &prog(&[addi(S2, ZERO, 2), jalr(ZERO, RA, 0)]));
    vm.w64(p1, 111);
    vm.w64(p2, 222);
    vm.code32(&[
        ld(A0, A1, 0),
        jalr(RA, A4, 0),
        addi(S3, S2, 0),
        csrw(SATP, A2),
        ld(A3, A1, 0),
        jalr(RA, A4, 0),
        csrw(SATP, A5),
        ld(A6, A1, 0),
    ]);
    vm.set_x(A1, TV);
    vm.set_x(A2, pt_b.satp());
    vm.set_x(A4, TV + 0x10_0000);
    vm.set_x(A5, pt_a.satp());
    vm.run_ok();
    assert_eq!((vm.x(A0), vm.x(S3)), (111, 1));
    assert_eq!((vm.x(A3), vm.x(S2)), (222, 2));
    assert_eq!(vm.x(A6), 111);
}

#[test]
fn sfence_vma_makes_pte_changes_visible() {
    for (name, fence) in [
        ("sfence.vma x0, x0", sfence_vma(0, 0)),
        ("sfence.vma va, x0", sfence_vma(A1, 0)),
        ("sfence.vma va, asid", sfence_vma(A1, A7)),
    ] {
        let (mut vm, mut pt) = paged_vm(3);
        let pte_data = pt.map(&vm, TV, DATA, 0, RW_AD);
        let pte_code = pt.map(&vm, TV + 0x1000, CODE + 0x8000, 0, RWX_AD);
        vm.load(
            CODE + 0x8000,
            &prog(&[addi(S2, ZERO, 1), jalr(ZERO, RA, 0)]),
        );
        vm.load(
            CODE + 0x9000,
            &prog(&[addi(S2, ZERO, 2), jalr(ZERO, RA, 0)]),
        );
        vm.w64(DATA, 111);
        vm.w64(DATA + 0x1000, 222);
        let mut code = vec![
            ld(A0, A1, 0),
            jalr(RA, A4, 0),
            addi(S3, S2, 0),
            sd(T0, T1, 0), // data PTE → DATA + 0x1000
            sd(T2, T3, 0), // code PTE → CODE + 0x9000
            fence,
        ];
        if name != "sfence.vma x0, x0" {
            // A per-page fence covers one page: fence the code page too.
            code.push(match fence {
                f if f == sfence_vma(A1, 0) => sfence_vma(A4, 0),
                _ => sfence_vma(A4, A7),
            });
        }
        code.extend([ld(A3, A1, 0), jalr(RA, A4, 0)]);
        vm.code32(&code);
        vm.set_x(A1, TV);
        vm.set_x(A4, TV + 0x1000);
        vm.set_x(A7, 1);
        vm.set_x(T0, pte(DATA + 0x1000, RW_AD));
        vm.set_x(T1, pte_data);
        vm.set_x(T2, pte(CODE + 0x9000, RWX_AD));
        vm.set_x(T3, pte_code);
        vm.run_ok();
        assert_eq!((vm.x(A0), vm.x(S3)), (111, 1), "{name}");
        assert_eq!((vm.x(A3), vm.x(S2)), (222, 2), "{name}");
    }
}

#[test]
fn mmio_through_paging_reports_physical_address() {
    let (mut vm, mut pt) = paged_vm(3);
    pt.map(&vm, TV + 0x2000, MMIO_BASE, 0, RW_AD);
    vm.code32(&[lw(A0, A1, 0x10), sh(A2, A1, 0x18)]);
    vm.set_x(A1, TV + 0x2000);
    vm.set_x(A2, 0xabcd_1234);
    assert_eq!(
        vm.run(),
        Exit::MmioRead {
            addr: MMIO_BASE + 0x10,
            size: 4
        }
    );
    vm.hart.complete_mmio_read(0x8000_0001);
    assert_eq!(
        vm.run(),
        Exit::MmioWrite {
            addr: MMIO_BASE + 0x18,
            size: 2,
            value: 0x1234
        }
    );
    vm.run_ok();
    assert_eq!(vm.x(A0), 0xffff_ffff_8000_0001);
}

// ==========================================================================================
// Self-modifying code
// ==========================================================================================

/// X: addi a0, a0, 1 / bnez a1, done / li a1, 1 / store `addi a0, a0, 100` over X / `sync` /
/// j X / done. Returns a0: 101 when the second pass ran the new instruction, 2 when stale.
fn smc_loop(sync: u32, store: u32) -> u64 {
    let mut vm = Vm::new();
    vm.code32(&[
        addi(A0, A0, 1),
        bne(A1, ZERO, 24),
        addi(A1, ZERO, 1),
        store,
        sync,
        jal(ZERO, -20),
        nop(),
    ]);
    vm.set_x(T0, addi(A0, A0, 100) as u64);
    vm.set_x(T1, CODE);
    vm.run_ok();
    vm.x(A0)
}

#[test]
fn self_modifying_code_with_fence_i() {
    assert_eq!(smc_loop(fence_i(), sw(T0, T1, 0)), 101);
}

#[test]
fn self_modifying_code_without_fence_i() {
    // Documented: stores to pages holding decoded code invalidate it even without FENCE.I.
    assert_eq!(smc_loop(nop(), sw(T0, T1, 0)), 101, "sw");
    assert_eq!(
        smc_loop(nop(), amo_w(AmoOp::Swap, ZERO, T0, T1)),
        101,
        "amoswap.w"
    );
}

#[test]
fn code_store_after_write_tlb_was_warm() {
    // The data TLB has a write entry for the page before code on it is first decoded; the
    // later store to the code must still invalidate it.
    let page = CODE + 0x2000;
    let mut vm = Vm::new();
    vm.load(page, &prog(&[addi(A0, A0, 1), jalr(ZERO, RA, 0)]));
    vm.code32(&[
        sw(ZERO, T2, 0x100),
        jalr(RA, T2, 0),
        sw(T1, T2, 0),
        jalr(RA, T2, 0),
    ]);
    vm.set_x(T2, page);
    vm.set_x(T1, addi(A0, A0, 100) as u64);
    vm.run_ok();
    assert_eq!(vm.x(A0), 101);
}

#[test]
fn code_store_through_a_virtual_alias() {
    // Paged: the code page is executed at its identity VA and written through another VA.
    for sync in [fence_i(), nop()] {
        let (mut vm, mut pt) = paged_vm(3);
        let page = CODE + 0x2000;
        pt.map(&vm, TV + 0x1000, page, 0, RW_AD);
        vm.load(page, &prog(&[addi(A0, A0, 1), jalr(ZERO, RA, 0)]));
        vm.code32(&[jalr(RA, T2, 0), sw(T1, T3, 0), sync, jalr(RA, T2, 0)]);
        vm.set_x(T2, page);
        vm.set_x(T3, TV + 0x1000);
        vm.set_x(T1, addi(A0, A0, 100) as u64);
        vm.run_ok();
        assert_eq!(vm.x(A0), 101, "sync {sync:#x}");
    }
}

#[test]
fn host_code_write_with_remote_fence_i() {
    let page = CODE + 0x2000;
    let mut vm = Vm::new();
    vm.load(page, &prog(&[addi(A0, A0, 1), jalr(ZERO, RA, 0)]));
    vm.code32(&[jalr(RA, T2, 0)]);
    vm.set_x(T2, page);
    vm.run_ok();
    assert_eq!(vm.x(A0), 1);
    // The hypervisor rewrites the code (a loader, DMA) and asks for a FENCE.I.
    vm.w32(page, addi(A0, A0, 100));
    vm.hart.handle().request_fence_i();
    vm.hart.set_pc(CODE);
    vm.run_ok();
    assert_eq!(vm.x(A0), 101);
}

// ==========================================================================================
// MMIO
// ==========================================================================================

#[test]
fn mmio_loads_exit_and_extend() {
    let addr = MMIO_BASE + 0x100;
    let cases: Vec<(&str, Prog, u8, u64, u64)> = vec![
        (
            "lb",
            prog(&[lb(A0, A1, -8)]),
            1,
            0x80,
            0xffff_ffff_ffff_ff80,
        ),
        ("lbu", prog(&[lbu(A0, A1, -8)]), 1, 0x80, 0x80),
        (
            "lh",
            prog(&[lh(A0, A1, -8)]),
            2,
            0x8000,
            0xffff_ffff_ffff_8000,
        ),
        ("lhu", prog(&[lhu(A0, A1, -8)]), 2, 0x8000, 0x8000),
        (
            "lw",
            prog(&[lw(A0, A1, -8)]),
            4,
            0x8000_0000,
            0xffff_ffff_8000_0000,
        ),
        ("lwu", prog(&[lwu(A0, A1, -8)]), 4, 0x8000_0000, 0x8000_0000),
        (
            "ld",
            prog(&[ld(A0, A1, -8)]),
            8,
            0x8000_0000_0000_0001,
            0x8000_0000_0000_0001,
        ),
        // The device value is truncated to the access size before extension.
        (
            "lb, wide value",
            prog(&[lb(A0, A1, -8)]),
            1,
            0xffff_ff80,
            0xffff_ffff_ffff_ff80,
        ),
        ("lbu, wide value", prog(&[lbu(A0, A1, -8)]), 1, 0x1ff, 0xff),
        (
            "lhu, wide value",
            prog(&[lhu(A0, A1, -8)]),
            2,
            0xdead_8000,
            0x8000,
        ),
        (
            "lw, wide value",
            prog(&[lw(A0, A1, -8)]),
            4,
            0x1_8000_0000,
            0xffff_ffff_8000_0000,
        ),
        (
            "lwu, wide value",
            prog(&[lwu(A0, A1, -8)]),
            4,
            u64::MAX,
            0xffff_ffff,
        ),
        (
            "c.lw",
            Prog::new().c(c_lw(A0, S1, 8)).clone(),
            4,
            0x8000_0000,
            0xffff_ffff_8000_0000,
        ),
        (
            "c.ld",
            Prog::new().c(c_ld(A0, S1, 8)).clone(),
            8,
            0x1234,
            0x1234,
        ),
    ];
    for (name, p, size, dev, want) in cases {
        let mut vm = Vm::new();
        let len = p.len();
        let mut p = p;
        p.i(addi(A2, A0, 0));
        vm.code(&p);
        vm.set_x(A1, addr + 8);
        vm.set_x(S1, addr - 8);
        assert_eq!(vm.run(), Exit::MmioRead { addr, size }, "{name}");
        assert_eq!(vm.hart.pc(), CODE + len, "{name}: pc after the exit");
        vm.hart.complete_mmio_read(dev);
        vm.run_ok();
        assert_eq!((vm.x(A0), vm.x(A2)), (want, want), "{name}");
    }
}

#[test]
fn mmio_fp_loads_and_stores() {
    let mut vm = Vm::new();
    vm.set_csr(MSTATUS, 1 << 13);
    vm.code32(&[flw(1, A1, 0), fld(2, A1, 8), fsw(3, A1, 16), fsd(3, A1, 24)]);
    vm.set_x(A1, MMIO_BASE);
    vm.set_f(3, 0x1122_3344_5566_7788);
    assert_eq!(
        vm.run(),
        Exit::MmioRead {
            addr: MMIO_BASE,
            size: 4
        }
    );
    vm.hart.complete_mmio_read(0x3f80_0000);
    assert_eq!(
        vm.run(),
        Exit::MmioRead {
            addr: MMIO_BASE + 8,
            size: 8
        }
    );
    vm.hart.complete_mmio_read(0x4000_0000_0000_0000);
    assert_eq!(
        vm.run(),
        Exit::MmioWrite {
            addr: MMIO_BASE + 16,
            size: 4,
            value: 0x5566_7788
        }
    );
    assert_eq!(
        vm.run(),
        Exit::MmioWrite {
            addr: MMIO_BASE + 24,
            size: 8,
            value: 0x1122_3344_5566_7788
        }
    );
    vm.run_ok();
    assert_eq!(vm.f(1), 0xffff_ffff_3f80_0000, "NaN-boxed");
    assert_eq!(vm.f(2), 0x4000_0000_0000_0000);
}

#[test]
fn mmio_stores_exit_with_masked_value() {
    let v = 0x1122_3344_5566_7788u64;
    let cases: Vec<(&str, Prog, u8, u64)> = vec![
        ("sb", prog(&[sb(A2, A1, -4)]), 1, 0x88),
        ("sh", prog(&[sh(A2, A1, -4)]), 2, 0x7788),
        ("sw", prog(&[sw(A2, A1, -4)]), 4, 0x5566_7788),
        ("sd", prog(&[sd(A2, A1, -4)]), 8, v),
        (
            "c.sw",
            Prog::new().c(c_sw(A2, S1, 4)).clone(),
            4,
            0x5566_7788,
        ),
        ("c.sd", Prog::new().c(c_sd(A2, S1, 4 * 2)).clone(), 8, v),
    ];
    for (name, p, size, value) in cases {
        let mut vm = Vm::new();
        let len = p.len();
        vm.code(&p);
        let addr = MMIO_BASE + 0x200;
        vm.set_x(A1, addr + 4);
        vm.set_x(S1, if name == "c.sd" { addr - 8 } else { addr - 4 });
        vm.set_x(A2, v);
        assert_eq!(vm.run(), Exit::MmioWrite { addr, size, value }, "{name}");
        assert_eq!(vm.hart.pc(), CODE + len, "{name}: pc after the exit");
        vm.run_ok();
    }
}

#[test]
fn mmio_read_not_completed_reads_zero() {
    // Documented in Hart::run: a read the hypervisor did not complete returns 0.
    let mut vm = Vm::new();
    vm.code32(&[ld(A0, A1, 0)]);
    vm.set_x(A1, MMIO_BASE);
    vm.set_x(A0, 0x77);
    assert_eq!(
        vm.run(),
        Exit::MmioRead {
            addr: MMIO_BASE,
            size: 8
        }
    );
    vm.run_ok();
    assert_eq!(vm.x(A0), 0);
}

#[test]
fn mmio_load_retires_once() {
    let mut vm = Vm::new();
    vm.code32(&[csrr(A0, MINSTRET), lw(A2, A1, 0), csrr(A3, MINSTRET)]);
    vm.set_x(A1, MMIO_BASE);
    assert!(matches!(vm.run(), Exit::MmioRead { .. }));
    vm.hart.complete_mmio_read(1);
    vm.run_ok();
    assert_eq!(vm.x(A3) - vm.x(A0), 2);
}

#[test]
fn atomics_and_fetch_on_mmio_are_access_faults() {
    for (name, insn, cause, epc_is_target) in [
        ("amoadd.w", amo_w(AmoOp::Add, A0, A2, A1), 7u64, false),
        ("amoswap.d", amo_d(AmoOp::Swap, A0, A2, A1), 7, false),
        ("lr.w", lr_w(A0, A1), 5, false),
        ("fetch", jalr(RA, A1, 0), 1, true),
    ] {
        let mut vm = Vm::new();
        vm.code32(&[insn]);
        vm.set_x(A1, MMIO_BASE + 0x40);
        let e = vm.run();
        assert!(
            e == Exit::Wfi && vm.hart.pc() == TRAP + 4,
            "{name}: {e:?} {}",
            vm.state()
        );
        let epc = if epc_is_target {
            MMIO_BASE + 0x40
        } else {
            CODE
        };
        assert_eq!(
            vm.mtrap(),
            Trap {
                cause,
                epc,
                tval: MMIO_BASE + 0x40
            },
            "{name}"
        );
    }
}

// ==========================================================================================
// Bad guest code
// ==========================================================================================

const RAM_END: u64 = RAM_BASE + RAM_SIZE;

#[test]
fn jump_to_unmapped_is_a_fetch_access_fault() {
    let mut vm = Vm::new();
    vm.code32(&[jalr(RA, A1, 0)]);
    vm.set_x(A1, UNMAPPED);
    assert_eq!(
        vm.run_trap(),
        Trap {
            cause: 1,
            epc: UNMAPPED,
            tval: UNMAPPED
        }
    );
    assert_eq!(vm.x(RA), CODE + 4);
}

#[test]
fn instruction_straddling_pages() {
    // A 32-bit instruction at the last halfword of a page runs, links pc + 4.
    let at = CODE + 0x1ffe;
    let mut vm = Vm::new();
    vm.load(
        at - 2,
        &Prog::new()
            .c(c_li(A0, 1))
            .i(jal(RA, 8))
            .i(nop())
            .i(wfi())
            .clone(),
    );
    vm.hart.set_pc(at - 2);
    assert_eq!(vm.run(), Exit::Wfi);
    assert_eq!(vm.hart.pc(), at + 12);
    assert_eq!((vm.x(A0), vm.x(RA)), (1, at + 4));

    // The second half is not memory: access fault with mepc = the instruction and mtval =
    // the address of the part that faulted (privileged spec, mtval).
    let mut vm = Vm::new();
    vm.load(RAM_END - 2, &Prog::new().c(0x0013).clone()); // low half of a 32-bit nop
    vm.code32(&[jalr(RA, A1, 0)]);
    vm.set_x(A1, RAM_END - 2);
    assert_eq!(
        vm.run_trap(),
        Trap {
            cause: 1,
            epc: RAM_END - 2,
            tval: RAM_END
        }
    );
}

#[test]
fn page_crossing_access_into_nothing() {
    let mut vm = Vm::new();
    vm.w64(RAM_END - 8, 0x1111_2222_3333_4444);
    vm.code32(&[sd(A2, A1, 0)]);
    vm.set_x(A1, RAM_END - 4);
    vm.set_x(A2, u64::MAX);
    let t = vm.run_trap();
    assert_eq!((t.cause, t.epc), (7, CODE));
    assert!(
        t.tval == RAM_END - 4 || t.tval == RAM_END,
        "tval {:#x}",
        t.tval
    );
    assert_eq!(vm.r64(RAM_END - 8), 0x1111_2222_3333_4444, "partial store");

    let mut vm = Vm::new();
    vm.code32(&[lw(A0, A1, 0)]);
    vm.set_x(A1, RAM_END - 2);
    vm.set_x(A0, 0x77);
    let t = vm.run_trap();
    assert_eq!((t.cause, t.epc, vm.x(A0)), (5, CODE, 0x77));
}

#[test]
fn unmapped_trap_vector_is_fatal_not_a_hang() {
    for mtvec in [UNMAPPED + 0x1000, 0] {
        let mut vm = Vm::new();
        vm.set_csr(MTVEC, mtvec);
        vm.code32(&[jalr(RA, A1, 0)]);
        vm.set_x(A1, UNMAPPED);
        let (e, _) = run_on_thread(vm.hart, 1_000_000, Duration::from_secs(10));
        match e {
            Some(Exit::Fatal(FatalError::TrapLoop { cause: 1, pc, .. })) => assert_eq!(pc, mtvec),
            e => panic!("mtvec {mtvec:#x}: {e:?}"),
        }
    }
    // Also when the first fault is something else (an ecall).
    let mut vm = Vm::new();
    vm.set_csr(MTVEC, UNMAPPED);
    vm.code32(&[ecall()]);
    let (e, _) = run_on_thread(vm.hart, 1_000_000, Duration::from_secs(10));
    assert!(
        matches!(e, Some(Exit::Fatal(FatalError::TrapLoop { cause: 1, .. }))),
        "{e:?}"
    );
}

#[test]
fn trap_loop_without_retirement_returns_from_run() {
    // mtvec points at an illegal instruction (or an ecall): every trap re-enters the handler
    // and nothing retires. run(budget) must still come back to the hypervisor.
    let mut failures = vec![];
    for (what, handler) in [("illegal", 0u32), ("ecall", ecall()), ("ebreak", ebreak())] {
        let mut vm = Vm::new();
        vm.w32(TRAP, handler);
        vm.code32(&[ecall()]);
        let (e, hart) = run_on_thread(vm.hart, 100_000, Duration::from_secs(10));
        assert!(hart.is_some(), "{what}: even a kick did not stop the hart");
        match e {
            Some(Exit::BudgetExhausted) | Some(Exit::Fatal(_)) => {}
            e => failures.push(format!(
                "{what} at mtvec: run(100000) returned {e:?} (None = not within 10 s)"
            )),
        }
    }
    // The same loop entirely inside a guest kernel (hypervisor-as-SBI configuration): stvec
    // points at an illegal instruction and illegal instructions are delegated.
    let mut vm = sbi_vm();
    vm.w32(STRAP, 0);
    vm.set_csr(MEDELEG, 1 << 2);
    vm.code32(&[0xffff_ffff]);
    let (e, hart) = run_on_thread(vm.hart, 100_000, Duration::from_secs(10));
    assert!(hart.is_some(), "S loop: even a kick did not stop the hart");
    match e {
        Some(Exit::BudgetExhausted) | Some(Exit::Fatal(_)) => {}
        e => failures.push(format!(
            "illegal at stvec (delegated, sbi_exits): run(100000) returned {e:?}"
        )),
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn sbi_vm() -> Vm {
    Vm::with_config(HartConfig {
        sbi_exits: true,
        start_mode: PrivMode::Supervisor,
        ..HartConfig::default()
    })
}

#[test]
fn sbi_ecall_exits_past_the_ecall() {
    let mut vm = sbi_vm();
    assert_eq!(vm.hart.priv_mode(), PrivMode::Supervisor);
    vm.code32(&[addi(A7, ZERO, 0x10), ecall(), addi(A2, A0, 1)]);
    assert_eq!(vm.run(), Exit::Ecall);
    assert_eq!(vm.hart.pc(), CODE + 8);
    assert_eq!(vm.x(A7), 0x10);
    vm.set_x(A0, 41);
    vm.run_ok();
    assert_eq!(vm.x(A2), 42);
}

#[test]
fn sbi_undelegated_exception_is_fatal() {
    let mut vm = sbi_vm();
    let ill = 0xffff_ffffu32;
    vm.code32(&[nop(), ill]);
    match vm.run() {
        Exit::Fatal(FatalError::UnhandledTrap {
            cause, tval, pc, ..
        }) => {
            assert_eq!((cause, tval, pc), (2, ill as u64, CODE + 4));
        }
        e => panic!("{e:?}"),
    }
    // Delegated, the same exception reaches the guest's stvec.
    let mut vm = sbi_vm();
    vm.set_csr(MEDELEG, 1 << 2);
    vm.code32(&[nop(), ill]);
    assert_eq!(
        vm.run_strap(),
        Trap {
            cause: 2,
            epc: CODE + 4,
            tval: ill as u64
        }
    );
    // An ecall from U is an exception like any other.
    let mut vm = sbi_vm();
    vm.hart.set_priv_mode(PrivMode::User);
    vm.code32(&[ecall()]);
    assert!(matches!(
        vm.run(),
        Exit::Fatal(FatalError::UnhandledTrap { cause: 8, .. })
    ));
}

// ==========================================================================================
// Interrupts, kicks and the budget
// ==========================================================================================

/// Handler that records mcause/mepc in a0/a1, disables all interrupts and idles.
fn irq_handler() -> Prog {
    prog(&[csrr(A0, MCAUSE), csrr(A1, MEPC), csrw(MIE, ZERO), wfi()])
}

#[test]
fn timer_interrupt_from_another_thread() {
    let mut vm = Vm::new();
    vm.load(TRAP, &irq_handler());
    // Enable MTIE and MIE, then spin.
    vm.code32(&[
        csrw(MIE, T0),
        csrrsi(ZERO, MSTATUS, MIE_B as u32),
        addi(A2, A2, 1),
        jal(ZERO, -4),
    ]);
    vm.set_x(T0, 1 << 7);
    let h = vm.hart.handle();
    let raised = Arc::new(AtomicBool::new(false));
    let r2 = raised.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        r2.store(true, Ordering::SeqCst);
        h.set_irq(Irq::MachineTimer, true);
    });
    let start = Instant::now();
    let (e, hart) = run_on_thread(vm.hart, u64::MAX, Duration::from_secs(20));
    t.join().unwrap();
    vm.hart = hart.expect("hart stuck");
    let e = e.expect("the interrupt was not taken within 20 s");
    assert!(raised.load(Ordering::SeqCst));
    assert_eq!(e, Exit::Wfi, "{}", vm.state());
    assert_eq!(vm.hart.pc(), TRAP + 16);
    assert_eq!(vm.x(A0), 7 | INT);
    assert!(
        vm.x(A1) == CODE + 8 || vm.x(A1) == CODE + 12,
        "mepc {:#x} is not in the loop",
        vm.x(A1)
    );
    assert!(vm.x(A2) > 0, "the loop ran");
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn kick_from_another_thread() {
    let mut vm = Vm::new();
    vm.code32(&[addi(A2, A2, 1), jal(ZERO, -4)]);
    let h = vm.hart.handle();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        h.kick();
    });
    let (e, hart) = run_on_thread(vm.hart, u64::MAX, Duration::from_secs(20));
    t.join().unwrap();
    assert_eq!(e, Some(Exit::Kicked));
    let hart = hart.unwrap();
    assert!(hart.reg(A2 as usize) > 0);
    // A kick while not running makes the next run return at once.
    let mut hart = hart;
    let before = hart.instret();
    hart.handle().kick();
    assert_eq!(hart.run(1_000_000), Exit::Kicked);
    assert!(hart.instret() - before <= 64);
    // And only once.
    assert_eq!(hart.run(1000), Exit::BudgetExhausted);
}

#[test]
fn interrupt_priority() {
    // Privileged spec 3.1.9: MEI > MSI > MTI > SEI > SSI > STI.
    let order = [
        (Irq::MachineExternal, 11u64),
        (Irq::MachineSoft, 3),
        (Irq::MachineTimer, 7),
        (Irq::SupervisorExternal, 9),
        (Irq::SupervisorSoft, 1),
        (Irq::SupervisorTimer, 5),
    ];
    for first in 0..order.len() {
        let mut vm = Vm::new();
        vm.load(TRAP, &irq_handler());
        vm.set_csr(MIE, 0xaaa);
        for &(irq, _) in &order[first..] {
            vm.hart.handle().set_irq(irq, true);
        }
        vm.code32(&[nop(), csrrsi(ZERO, MSTATUS, MIE_B as u32), nop()]);
        assert_eq!(vm.run(), Exit::Wfi, "{}", vm.state());
        assert_eq!(
            vm.x(A0),
            order[first].1 | INT,
            "pending {:?}",
            &order[first..]
        );
        assert_eq!(vm.x(A1), CODE + 8);
    }
    // M-level interrupts before S-level ones even if the S cause is higher in the list: with
    // SEI delegated and the hart in S, a pending MTI is taken first (to M).
    let mut vm = Vm::new();
    vm.load(TRAP, &irq_handler());
    vm.set_csr(MIE, (1 << 7) | (1 << 9) | (1 << 11));
    vm.set_csr(MIDELEG, 1 << 9);
    vm.set_csr(MSTATUS, SIE_B);
    vm.hart.handle().set_irq(Irq::SupervisorExternal, true);
    vm.hart.handle().set_irq(Irq::MachineTimer, true);
    vm.hart.set_priv_mode(PrivMode::Supervisor);
    vm.code32(&[nop()]);
    assert_eq!(vm.run(), Exit::Wfi, "{}", vm.state());
    assert_eq!(vm.x(A0), 7 | INT);
}

#[test]
fn global_interrupt_enables_per_mode() {
    // (mode, mstatus, mideleg, line, mie bit, taken to: None / Some(M or S))
    let cases = [
        ("M, MIE=0", PrivMode::Machine, 0, 0, Irq::MachineTimer, None),
        (
            "M, MIE=1",
            PrivMode::Machine,
            MIE_B,
            0,
            Irq::MachineTimer,
            Some(PrivMode::Machine),
        ),
        (
            "S, MIE=0: M irq",
            PrivMode::Supervisor,
            0,
            0,
            Irq::MachineTimer,
            Some(PrivMode::Machine),
        ),
        (
            "U, MIE=0: M irq",
            PrivMode::User,
            0,
            0,
            Irq::MachineExternal,
            Some(PrivMode::Machine),
        ),
        (
            "S, SIE=0: S irq",
            PrivMode::Supervisor,
            MIE_B,
            1 << 5,
            Irq::SupervisorTimer,
            None,
        ),
        (
            "S, SIE=1: S irq",
            PrivMode::Supervisor,
            SIE_B,
            1 << 5,
            Irq::SupervisorTimer,
            Some(PrivMode::Supervisor),
        ),
        (
            "U, SIE=0: S irq",
            PrivMode::User,
            0,
            1 << 5,
            Irq::SupervisorTimer,
            Some(PrivMode::Supervisor),
        ),
        (
            "M, MIE=1: delegated S irq",
            PrivMode::Machine,
            MIE_B | SIE_B,
            1 << 9,
            Irq::SupervisorExternal,
            None,
        ),
        (
            "M, MIE=1: undelegated S irq",
            PrivMode::Machine,
            MIE_B,
            0,
            Irq::SupervisorExternal,
            Some(PrivMode::Machine),
        ),
        (
            "S, MIE=0: undelegated S irq",
            PrivMode::Supervisor,
            0,
            0,
            Irq::SupervisorSoft,
            Some(PrivMode::Machine),
        ),
    ];
    for (what, prv, ms, mideleg, irq, to) in cases {
        let mut vm = Vm::new();
        vm.load(TRAP, &irq_handler());
        vm.load(
            STRAP,
            &prog(&[csrr(A0, SCAUSE), csrr(A1, SEPC), csrw(SIE, ZERO), wfi()]),
        );
        vm.set_csr(MSTATUS, ms);
        vm.set_csr(MIDELEG, mideleg);
        vm.set_csr(MIE, 1 << irq as u64);
        vm.hart.handle().set_irq(irq, true);
        vm.hart.set_priv_mode(prv);
        // U cannot wfi: end with a store to DONE in every mode.
        vm.code32(&[nop(), nop(), sw(ZERO, T6, 0)]);
        let e = vm.run();
        match to {
            None => assert!(
                matches!(e, Exit::MmioWrite { addr: DONE, .. }),
                "{what}: {e:?} {}",
                vm.state()
            ),
            Some(m) => {
                let handler = if m == PrivMode::Machine { TRAP } else { STRAP };
                assert!(
                    e == Exit::Wfi && vm.hart.pc() == handler + 16,
                    "{what}: {e:?} {}",
                    vm.state()
                );
                assert_eq!(vm.x(A0), irq as u64 | INT, "{what}");
                assert_eq!(vm.x(A1), CODE, "{what}");
            }
        }
    }
}

#[test]
fn wfi_exits_or_retires() {
    // Nothing pending: Exit::Wfi with the pc past the wfi.
    let mut vm = Vm::new();
    vm.code32(&[nop(), wfi(), addi(A0, ZERO, 1)]);
    assert_eq!(vm.run(), Exit::Wfi);
    assert_eq!(vm.hart.pc(), CODE + 8);
    vm.run_ok();
    assert_eq!(vm.x(A0), 1);

    // Pending but not enabled in mie: still Exit::Wfi.
    let mut vm = Vm::new();
    vm.code32(&[wfi()]);
    vm.hart.handle().set_irq(Irq::MachineTimer, true);
    vm.set_csr(MIE, 1 << 3);
    assert_eq!(vm.run(), Exit::Wfi);

    // Pending and enabled in mie with MIE = 0: wfi retires as a nop, no trap is taken.
    let mut vm = Vm::new();
    vm.code32(&[
        wfi(),
        addi(A0, ZERO, 1),
        wfi(),
        addi(A0, A0, 1),
        sw(ZERO, T6, 0),
    ]);
    vm.hart.handle().set_irq(Irq::MachineTimer, true);
    vm.set_csr(MIE, 1 << 7);
    vm.run_done();
    assert_eq!(vm.x(A0), 2);
    assert_eq!(vm.csr(MCAUSE), 0);
}

#[test]
fn budget_bounds_run() {
    // run(1000) on an endless loop: BudgetExhausted after at least 1000 and at most one more
    // block (64 instructions).
    for body in [1usize, 7, 30, 100] {
        let mut p = Prog::new();
        for _ in 1..body {
            p.i(addi(A0, A0, 1));
        }
        p.i(jal(ZERO, -4 * (body as i64 - 1)));
        let mut vm = Vm::new();
        vm.code(&p);
        let before = vm.hart.instret();
        assert_eq!(vm.hart.run(1000), Exit::BudgetExhausted);
        let n = vm.hart.instret() - before;
        assert!((1000..=1064).contains(&n), "loop of {body}: ran {n}");
        // The next slice continues where this one stopped.
        assert_eq!(vm.hart.run(500), Exit::BudgetExhausted);
        let m = vm.hart.instret() - before - n;
        assert!(
            (500..=564).contains(&m),
            "loop of {body}: second slice ran {m}"
        );
    }
}

#[test]
fn exit_on_interrupt_reports_the_delivery() {
    let mut vm = Vm::with_config(HartConfig {
        exit_on_interrupt: 1 << 7,
        ..HartConfig::default()
    });
    vm.load(TRAP, &irq_handler());
    vm.code32(&[csrrsi(ZERO, MSTATUS, MIE_B as u32), nop()]);
    vm.set_csr(MIE, 1 << 7);
    vm.hart.handle().set_irq(Irq::MachineTimer, true);
    assert_eq!(vm.run(), Exit::Interrupt { cause: 7 });
    assert_eq!(vm.hart.pc(), TRAP, "the guest is at its handler");
    assert_eq!(vm.csr(MCAUSE), 7 | INT);
}

#[test]
fn posted_ssip_reaches_the_guest() {
    let mut vm = Vm::new();
    // S-mode handler: record scause, clear sip.SSIP, idle.
    vm.load(
        STRAP,
        &prog(&[csrr(A0, SCAUSE), csrrci(ZERO, SIP, 2), wfi()]),
    );
    vm.set_csr(MIDELEG, 1 << 1);
    vm.set_csr(MIE, 1 << 1);
    vm.set_csr(MSTATUS, SIE_B);
    vm.hart.set_priv_mode(PrivMode::Supervisor);
    vm.code32(&[addi(A2, A2, 1), jal(ZERO, -4)]);
    let h = vm.hart.handle();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        h.post_ssip();
    });
    let (e, hart) = run_on_thread(vm.hart, u64::MAX, Duration::from_secs(20));
    t.join().unwrap();
    vm.hart = hart.unwrap();
    assert_eq!(e, Some(Exit::Wfi), "{}", vm.state());
    assert_eq!(vm.x(A0), 1 | INT);
    assert_eq!(vm.csr(MIP) & 2, 0, "the guest cleared SSIP");
}

// ==========================================================================================
// Shoot-down
// ==========================================================================================

#[test]
fn protect_page_shoots_down_a_running_vcpu() {
    // The guest increments a counter and stores it to a page, forever. The host write-protects
    // the page while the vCPU runs on another thread. From the moment protect_page returns,
    // no store may reach the page: the next store must take a store access fault (cause 7),
    // which the guest's handler reports through an MMIO exit.
    let page = DATA + 0x5000;
    let mut vm = Vm::new();
    vm.load(
        TRAP,
        &prog(&[
            csrr(A2, MCAUSE),
            csrr(A3, MTVAL),
            csrr(A4, MEPC),
            sw(ZERO, T6, 0),
        ]),
    );
    // loop: a0 += 1; sd a0, 8(a1); j loop
    vm.code32(&[addi(A0, A0, 1), sd(A0, A1, 8), jal(ZERO, -8)]);
    vm.set_x(A1, page);
    let mem = vm.mem.clone();
    let mut hart = vm.hart;
    for round in 0..20 {
        let (tx, rx) = mpsc::channel();
        let h = hart.handle();
        let t = std::thread::spawn(move || {
            let e = hart.run(u64::MAX);
            tx.send(()).unwrap();
            (e, hart)
        });
        // Wait until the guest is storing (it goes through the fast path by now).
        let start_val = mem.read_u64(page + 8).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while mem.read_u64(page + 8).unwrap() < start_val + 10_000 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the guest does not run"
            );
            std::thread::yield_now();
        }
        mem.protect_page(page, false).unwrap();
        let frozen = mem.read_u64(page + 8).unwrap();
        // The vCPU must now fault; give it a moment and check nothing more was written.
        let returned = rx.recv_timeout(Duration::from_secs(10)).is_ok();
        let after = mem.read_u64(page + 8).unwrap();
        if !returned {
            h.kick();
        }
        let (e, h2) = t.join().unwrap();
        hart = h2;
        assert!(
            returned,
            "round {round}: the vCPU kept running after protect_page: {e:?}"
        );
        assert_eq!(
            after, frozen,
            "round {round}: stores reached the page after protect_page"
        );
        assert_eq!(
            e,
            Exit::MmioWrite {
                addr: DONE,
                size: 4,
                value: 0
            },
            "round {round}"
        );
        let r = |i: u32| hart.reg(i as usize);
        assert_eq!(r(A2), 7, "round {round}: cause");
        assert_eq!(r(A3), page + 8, "round {round}: tval");
        assert_eq!(r(A4), CODE + 4, "round {round}: epc is the store");
        // The faulting store is the one of a0; the last one that reached memory is a0 - 1.
        assert_eq!(r(A0) - 1, frozen, "round {round}: last value stored");
        // Make the page writable again and resume the loop.
        mem.protect_page(page, true).unwrap();
        hart.set_pc(CODE + 4);
    }
}

// ==========================================================================================
// More paging and trap corner cases
// ==========================================================================================

#[test]
fn sfence_vma_with_address_flushes_a_whole_superpage() {
    // Privileged spec, SFENCE.VMA: with rs1 = va it orders accesses to "the leaf page table
    // entries corresponding to the virtual address in rs1". For a 2 MiB page that one leaf
    // covers every 4 KiB page in it (Linux fences huge pages once per 2 MiB).
    for levels in [3u32, 4] {
        let (mut vm, mut pt) = paged_vm(levels);
        let sp = TV + 0x20_0000;
        let (pa1, pa2) = (RAM_BASE + 0x20_0000, RAM_BASE);
        let leaf = pt.map(&vm, sp, pa1, 1, RW_AD);
        vm.w64(pa1 + 0x3000, 111);
        vm.w64(pa2 + 0x3000, 222);
        vm.code32(&[
            ld(A0, A1, 0),     // sp + 0: fills the TLB entry for the first 4 KiB
            ld(A2, A1, 0x7f8), // sp + 0x7f8 (same 4 KiB)
            lui(T4, 3),        // t4 = 0x3000
            add(T4, A1, T4),   // sp + 0x3000
            ld(A3, T4, 0),     // fills the TLB entry for sp + 0x3000
            sd(T0, T1, 0),     // leaf → pa2
            sfence_vma(A1, 0), // fence the superpage by its first address
            ld(A4, T4, 0),     // sp + 0x3000 through the new leaf
        ]);
        vm.set_x(A1, sp);
        vm.set_x(T0, pte(pa2, RW_AD));
        vm.set_x(T1, leaf);
        vm.run_ok();
        assert_eq!(vm.x(A3), 111, "Sv{}", 12 + 9 * levels);
        assert_eq!(
            vm.x(A4),
            222,
            "Sv{}: stale translation after sfence.vma va",
            12 + 9 * levels
        );
    }
}

#[test]
fn accessed_bit_update_respects_write_protected_page_tables() {
    // Setting A/D is a write to the page table. When the page holding the PTE is
    // write-protected in the page map (shared copy-on-write), the hart must not modify it in
    // place. With nothing to resolve the protection, the PTE update violates the physical
    // memory attributes: privileged spec, Sv32 algorithm step 7 (A/D update) → "if the
    // update would violate a PMA or PMP check, raise an access-fault exception corresponding
    // to the original access type".
    let (mut vm, mut pt) = paged_vm(3);
    let leaf = pt.map(&vm, TV + 0x1000, DATA, 0, V | R | W); // A = D = 0
    let before = vm.r64(leaf);
    vm.mem.protect_page(leaf & !0xfff, false).unwrap();
    vm.code32(&[ld(A0, A1, 0)]);
    vm.set_x(A1, TV + 0x1000);
    let e = vm.run();
    let after = vm.r64(leaf);
    assert_eq!(
        after, before,
        "the hart wrote A/D into a write-protected page ({e:?})"
    );
    assert!(
        e == Exit::Wfi && vm.hart.pc() == TRAP + 4,
        "{e:?} {}",
        vm.state()
    );
    assert_eq!(
        vm.mtrap(),
        Trap {
            cause: 5,
            epc: CODE,
            tval: TV + 0x1000
        }
    );
}

#[test]
fn straddling_fetch_into_a_non_executable_page() {
    // mepc = the instruction, mtval = the address of the part that faulted.
    let (mut vm, mut pt) = paged_vm(3);
    pt.map(&vm, TV + 0x1000, CODE + 0x6000, 0, RWX_AD);
    pt.map(&vm, TV + 0x2000, CODE + 0x7000, 0, RW_AD);
    vm.load(CODE + 0x6ffe, &Prog::new().c(0x0013).clone());
    vm.load(CODE + 0x7000, &Prog::new().c(0x0000).clone());
    vm.code32(&[jalr(RA, A1, 0)]);
    vm.set_x(A1, TV + 0x1ffe);
    assert_eq!(
        vm.run_trap(),
        Trap {
            cause: 12,
            epc: TV + 0x1ffe,
            tval: TV + 0x2000
        }
    );
}

#[test]
fn exception_in_the_middle_of_a_block() {
    let mut vm = Vm::new();
    vm.load(TRAP, &prog(&[csrr(A6, MINSTRET), wfi()]));
    vm.code32(&[
        csrr(A5, MINSTRET),
        addi(A0, A0, 1),
        addi(A0, A0, 1),
        addi(A0, A0, 1),
        ld(A2, A1, 0), // unmapped: load access fault
        addi(A0, A0, 1),
        addi(A0, A0, 1),
    ]);
    vm.set_x(A1, UNMAPPED);
    assert_eq!(vm.run(), Exit::Wfi);
    assert_eq!(vm.hart.pc(), TRAP + 8, "{}", vm.state());
    assert_eq!(
        vm.mtrap(),
        Trap {
            cause: 5,
            epc: CODE + 16,
            tval: UNMAPPED
        }
    );
    assert_eq!(vm.x(A0), 3);
    // Retired between the two reads: the first csrr and the three addi.
    assert_eq!(vm.x(A6) - vm.x(A5), 4);
}

#[test]
fn time_csr_uses_the_configured_source() {
    let mut vm = Vm::with_config(HartConfig {
        time_fn: Some(Arc::new(|| 0x1234_5678_9abc)),
        ..HartConfig::default()
    });
    vm.code32(&[csrr(A0, TIME)]);
    vm.run_ok();
    assert_eq!(vm.x(A0), 0x1234_5678_9abc);
}

/// PAUSE (Zihintpause) is a spin-wait hint: a loop of them leaves `run` with
/// `Exit::Yield` after `PAUSE_YIELD` of them, past the PAUSE, registers as they were; a
/// FENCE that is not PAUSE does not count.
#[test]
fn a_pause_loop_yields() {
    const PAUSE: u32 = 0x0100_000f; // fence w, 0
    const FENCE_RW_RW: u32 = 0x0330_000f;
    let mut vm = Vm::new();
    vm.code32(&[addi(A2, A2, 1), PAUSE, jal(ZERO, -8)]);
    assert_eq!(vm.hart.run(1_000_000), Exit::Yield);
    assert_eq!(vm.hart.reg(A2 as usize), vmk_cpu::PAUSE_YIELD as u64);
    // Past the PAUSE: the next run goes on with the jump.
    assert_eq!(vm.hart.pc(), CODE + 8);
    assert_eq!(vm.hart.run(1_000_000), Exit::Yield);
    assert_eq!(vm.hart.reg(A2 as usize), 2 * vmk_cpu::PAUSE_YIELD as u64);

    let mut vm = Vm::new();
    vm.code32(&[addi(A2, A2, 1), FENCE_RW_RW, jal(ZERO, -8)]);
    assert_eq!(vm.hart.run(100_000), Exit::BudgetExhausted);
}
