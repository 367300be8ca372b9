//! Self-modifying and host-modified code with the JIT on and off: FENCE.I keeps valid blocks
//! (and their host code) and drops changed ones; stores by the hart to code pages, including
//! stores from compiled code, are seen after FENCE.I; code written by the host is seen after
//! `HartHandle::request_fence_i` or a guest FENCE.I. Also blocks that follow a backward JAL
//! inline (ops with negative pc offsets) with AUIPC, a taken branch and a trap after it.
//!
//! Every scenario runs with the JIT on and off and checks architecturally computed results;
//! with the JIT on it also checks that blocks were compiled (on hosts that have the JIT).

mod asm;

use asm::*;
use vmk_cpu::{Exit, HartConfig};

/// Hosts where `HartConfig::jit` compiles code.
const JIT_HOST: bool = cfg!(all(target_arch = "x86_64", target_os = "linux"));

fn vm(jit: bool) -> Vm {
    Vm::with_config(HartConfig {
        jit,
        // The programs count on blocks being compiled after 32 runs.
        jit_threshold: 32,
        ..HartConfig::default()
    })
}

/// With the JIT on (on a JIT host), at least one block must have been compiled.
fn assert_compiled(vm: &Vm, jit: bool, what: &str) {
    if jit && JIT_HOST {
        assert!(
            vm.hart.jit_blocks() > 0,
            "{what}: the JIT compiled nothing (is it running at all?)"
        );
    } else {
        assert_eq!(vm.hart.jit_blocks(), 0, "{what}: compiled with the JIT off");
    }
}

/// Runs from `pc` to a `wfi` whose address is `wfi_at`; panics on anything else.
fn run_to(vm: &mut Vm, pc: u64, wfi_at: u64) {
    vm.hart.set_pc(pc);
    let e = vm.hart.run(50_000_000);
    assert!(
        e == Exit::Wfi && vm.hart.pc() == wfi_at + 4,
        "expected the wfi at {wfi_at:#x}; got {e:?}, {}",
        vm.state()
    );
}

// ------------------------------------------------------------------------------------------
// 2. A hot loop that patches an instruction of its own body
// ------------------------------------------------------------------------------------------

/// Iterations of the self-modifying loop, and the iteration that patches it.
const SMC_ITERS: u64 = 200;
const SMC_PATCH_AT: u64 = 50;

/// Runs the self-modifying loop; returns (t0, instret, jit_blocks).
///
/// ```text
/// L:    addi t0, t0, 1        (or c.addi t0, 1; c.nop)   <- patched to +7 on iteration 50
///       addi s1, s1, -1
///       addi a2, s1, -(ITERS - 50)
///       bne  a2, x0, skip
///       sw   a1, 0(a0)        (or sh)                    a0 = L, a1 = the new instruction
///       fence.i
/// skip: bne  s1, x0, L
///       wfi
/// ```
fn smc_loop(jit: bool, compressed: bool) -> (u64, u64, u64) {
    let mut vm = vm(jit);
    let mut p = Prog::new();
    let new_insn = if compressed {
        p.c(c_addi(T0, 1)).c(c_nop());
        c_addi(T0, 7) as u32
    } else {
        p.i(addi(T0, T0, 1));
        addi(T0, T0, 7)
    };
    p.i(addi(S1, S1, -1));
    p.i(addi(A2, S1, -((SMC_ITERS - SMC_PATCH_AT) as i64)));
    p.i(bne(A2, ZERO, 12));
    p.i(if compressed {
        sh(A1, A0, 0)
    } else {
        sw(A1, A0, 0)
    });
    p.i(fence_i());
    let back = -(p.len() as i64);
    p.i(bne(S1, ZERO, back));
    vm.code(&p);
    vm.set_x(T0, 0);
    vm.set_x(S1, SMC_ITERS);
    vm.set_x(A0, CODE);
    vm.set_x(A1, new_insn as u64);
    vm.run_ok();
    // The patched instruction is in memory.
    let mem = if compressed {
        vm.r32(CODE) & 0xffff
    } else {
        vm.r32(CODE)
    };
    assert_eq!(mem, new_insn);
    assert_compiled(&vm, jit, "self-modifying loop");
    (vm.x(T0), vm.hart.instret(), vm.hart.jit_blocks())
}

#[test]
fn self_modifying_hot_loop() {
    // Iterations 1..=50 add 1 (the store on iteration 50 comes after that iteration's add),
    // the remaining 150 add 7.
    let expected = SMC_PATCH_AT + (SMC_ITERS - SMC_PATCH_AT) * 7;
    assert_eq!(expected, 1100);
    for compressed in [false, true] {
        let (jt0, jinstret, jblocks) = smc_loop(true, compressed);
        let (it0, iinstret, _) = smc_loop(false, compressed);
        assert_eq!(jt0, expected, "JIT on, compressed {compressed}");
        assert_eq!(it0, expected, "JIT off, compressed {compressed}");
        // 5 instructions per iteration (6 with the c.nop), 2 more (store, fence.i) once, and
        // the wfi.
        let per_iter = if compressed { 6 } else { 5 };
        assert_eq!(iinstret, SMC_ITERS * per_iter + 2 + 1);
        assert_eq!(jinstret, iinstret);
        if JIT_HOST {
            // The loop block was compiled before the patch (50 > the threshold of 32) and its new
            // version again after it (150 more iterations).
            assert!(jblocks >= 2, "only {jblocks} blocks compiled");
        }
    }
}

// ------------------------------------------------------------------------------------------
// 3. Code changed by the host
// ------------------------------------------------------------------------------------------

/// The function the host patches: `F: addi t0, t0, 1; addi s1, s1, -1; bne s1, x0, F; wfi`.
const F: u64 = CODE + 0x100;
const F_WFI: u64 = F + 12;
/// `fence.i; j F`: runs F after a guest FENCE.I.
const STUB: u64 = CODE + 0x800;
const F_ITERS: u64 = 100;

fn load_f(vm: &mut Vm) {
    vm.load(
        F,
        &prog(&[addi(T0, T0, 1), addi(S1, S1, -1), bne(S1, ZERO, -8), wfi()]),
    );
    vm.load(
        STUB,
        &prog(&[fence_i(), jal(ZERO, F as i64 - (STUB as i64 + 4))]),
    );
}

/// Runs F (from `entry`) with t0 = 0 and returns t0.
fn call_f(vm: &mut Vm, entry: u64) -> u64 {
    vm.set_x(T0, 0);
    vm.set_x(S1, F_ITERS);
    run_to(vm, entry, F_WFI);
    vm.x(T0)
}

fn host_modified_code(jit: bool) {
    let mut vm = vm(jit);
    load_f(&mut vm);
    assert_eq!(call_f(&mut vm, F), F_ITERS);
    assert_compiled(&vm, jit, "F");

    // The host rewrites `addi t0, t0, 1` as `addi t0, t0, 3`, with no fence. The hart may
    // run the old or the new code (lib.rs: host writes do not invalidate decoded code; only a
    // FENCE.I makes them visible), but not a mix within this run: nothing invalidates blocks.
    vm.w32(F, addi(T0, T0, 3));
    let unfenced = call_f(&mut vm, F);
    eprintln!(
        "jit {jit}: host-modified code run without a fence gave {unfenced} ({} code)",
        if unfenced == F_ITERS { "old" } else { "new" }
    );
    assert!(unfenced == F_ITERS || unfenced == 3 * F_ITERS, "{unfenced}");

    // Remote FENCE.I: the new code must run.
    vm.hart.handle().request_fence_i();
    assert_eq!(call_f(&mut vm, F), 3 * F_ITERS, "after request_fence_i");
    let blocks = vm.hart.jit_blocks();
    // ... and keeps running (compiled again).
    assert_eq!(call_f(&mut vm, F), 3 * F_ITERS);

    // Identical bytes written again, then fenced (remotely and by the guest): the blocks are
    // still valid, so they are kept with their host code; nothing is compiled again.
    let blocks_before = vm.hart.jit_blocks();
    assert_eq!(blocks_before, blocks, "F compiled again although unchanged");
    for _ in 0..10 {
        vm.w32(F, addi(T0, T0, 3));
        vm.load(F + 4, &prog(&[addi(S1, S1, -1), bne(S1, ZERO, -8)]));
        vm.hart.handle().request_fence_i();
        assert_eq!(call_f(&mut vm, F), 3 * F_ITERS);
    }
    // Through the stub (a guest FENCE.I, then a block that follows the jump into F inline).
    assert_eq!(call_f(&mut vm, STUB), 3 * F_ITERS);
    assert_eq!(call_f(&mut vm, STUB), 3 * F_ITERS);
    let grown = vm.hart.jit_blocks() - blocks_before;
    assert!(
        grown == 0,
        "{grown} blocks compiled again although the code did not change"
    );

    // A change made visible by the guest's own FENCE.I.
    vm.w32(F, addi(T0, T0, 5));
    assert_eq!(call_f(&mut vm, STUB), 5 * F_ITERS, "after a guest fence.i");
    assert_eq!(call_f(&mut vm, F), 5 * F_ITERS);

    // A change to the middle of the compiled loop (the decrement), remote fence.
    vm.w32(F + 4, addi(S1, S1, -2));
    vm.hart.handle().request_fence_i();
    assert_eq!(call_f(&mut vm, F), 5 * F_ITERS / 2);
    assert_compiled(&vm, jit, "F after the patches");
}

#[test]
fn host_modified_code_seen_after_fence() {
    host_modified_code(true);
    host_modified_code(false);
}

// ------------------------------------------------------------------------------------------
// 4. Many FENCE.I around hot code
// ------------------------------------------------------------------------------------------

const OUTER: u64 = 1000;
const INNER: u64 = 50;

/// ```text
/// O: addi s1, x0, INNER
/// I: addi t0, t0, 3
///    addi s1, s1, -1
///    bne  s1, x0, I
///    fence.i
///    addi s2, s2, -1
///    bne  s2, x0, O
///    wfi
/// ```
/// then a loop with a FENCE.I in every iteration:
/// ```text
/// L: addi t1, t1, 5
///    fence.i
///    addi s1, s1, -1
///    bne  s1, x0, L
///    wfi
/// ```
fn fence_loops(jit: bool) -> (u64, u64) {
    let mut vm = vm(jit);
    vm.code32(&[
        addi(S1, ZERO, INNER as i64),
        addi(T0, T0, 3),
        addi(S1, S1, -1),
        bne(S1, ZERO, -8),
        fence_i(),
        addi(S2, S2, -1),
        bne(S2, ZERO, -24),
    ]);
    vm.set_x(S2, OUTER);
    vm.set_x(T0, 0);
    vm.run_ok();
    assert_eq!(vm.x(T0), OUTER * INNER * 3);
    assert_eq!(vm.hart.instret(), OUTER * (1 + INNER * 3 + 3) + 1);
    assert_compiled(&vm, jit, "fenced outer loop");
    let first = vm.hart.jit_blocks();

    let l = CODE + 0x400;
    vm.load(
        l,
        &prog(&[
            addi(T1, T1, 5),
            fence_i(),
            addi(S1, S1, -1),
            bne(S1, ZERO, -12),
            wfi(),
        ]),
    );
    vm.set_x(S1, OUTER);
    vm.set_x(T1, 0);
    run_to(&mut vm, l, l + 16);
    assert_eq!(vm.x(T1), OUTER * 5);
    (first, vm.hart.jit_blocks())
}

#[test]
fn fence_i_keeps_compiled_blocks() {
    let (first, total) = fence_loops(true);
    let (ifirst, itotal) = fence_loops(false);
    assert_eq!((ifirst, itotal), (0, 0));
    if JIT_HOST {
        // If FENCE.I dropped the blocks, the inner loop would be compiled again on every one
        // of the 1000 outer iterations (50 > the threshold of 32).
        assert!(
            (1..20).contains(&first),
            "{first} blocks compiled for the fenced loop"
        );
        assert!(
            total - first < 20,
            "{} blocks compiled for the loop with a FENCE.I per iteration",
            total - first
        );
        assert!(
            total > first,
            "the FENCE.I-per-iteration loop was not compiled"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 5. Backward JAL followed inline
// ------------------------------------------------------------------------------------------

/// Entry, at CODE: `j S`. T (CODE + 0x40), reached by a backward `jal ra` from S, so that the
/// block starting at S holds T's ops with negative pc offsets:
/// ```text
/// T:   auipc a0, 1
///      add   t2, t2, a0
///      add   a3, a3, ra
///      addi  s1, s1, -1
///      bne   s1, x0, S     (taken but on the last iteration)
///      j     END
/// S:   addi  t0, t0, 1     (CODE + 0x100)
///      add   t3, t3, t0
///      jal   ra, T
/// END: wfi                 (CODE + 0x200)
/// ```
const T_OFF: u64 = 0x40;
const S_OFF: u64 = 0x100;
const END_OFF: u64 = 0x200;

fn backward_jal_prog(vm: &mut Vm, t_body: &[u32]) {
    vm.load(CODE, &prog(&[jal(ZERO, S_OFF as i64)]));
    let mut t = prog(t_body);
    let bne_off = T_OFF + t.len();
    t.i(bne(S1, ZERO, S_OFF as i64 - bne_off as i64));
    t.i(jal(ZERO, END_OFF as i64 - (bne_off as i64 + 4)));
    vm.load(CODE + T_OFF, &t);
    vm.load(
        CODE + S_OFF,
        &prog(&[
            addi(T0, T0, 1),
            add(T3, T3, T0),
            jal(RA, T_OFF as i64 - (S_OFF as i64 + 8)),
        ]),
    );
    vm.load(CODE + END_OFF, &prog(&[wfi()]));
}

fn backward_jal(jit: bool) -> ([u64; 32], u64) {
    let mut vm = vm(jit);
    backward_jal_prog(
        &mut vm,
        &[
            auipc(A0, 1),
            add(T2, T2, A0),
            add(A3, A3, RA),
            addi(S1, S1, -1),
        ],
    );
    let n = 300u64;
    vm.set_x(S1, n);
    run_to(&mut vm, CODE, CODE + END_OFF);
    assert_eq!(vm.x(T0), n);
    assert_eq!(vm.x(T3), n * (n + 1) / 2);
    assert_eq!(vm.x(A0), CODE + T_OFF + 0x1000);
    assert_eq!(vm.x(T2), n * (CODE + T_OFF + 0x1000));
    assert_eq!(vm.x(RA), CODE + S_OFF + 12);
    assert_eq!(vm.x(A3), n * (CODE + S_OFF + 12));
    assert_eq!(vm.x(S1), 0);
    // Entry jump, then n iterations of 3 + 5 instructions, the final `j END` and the wfi.
    assert_eq!(vm.hart.instret(), 1 + n * 8 + 1 + 1);
    assert_compiled(&vm, jit, "backward jal");
    let mut x = [0u64; 32];
    for (i, r) in x.iter_mut().enumerate() {
        *r = vm.hart.reg(i);
    }
    (x, vm.hart.instret())
}

/// As [`backward_jal`], with a load in T that faults (unmapped address) on iteration 100:
/// the trap must report the load's own address although the op sits before the block start.
fn backward_jal_trap(jit: bool) -> (u64, [u64; 32], u64, (u64, u64, u64)) {
    let mut vm = vm(jit);
    // a4 = DATA + ((s1 == 100) << 30 ... ): an address in RAM except on one iteration, when
    // it is DATA + 0x4000_0000 (nothing is mapped there).
    backward_jal_prog(
        &mut vm,
        &[
            auipc(A0, 1),
            addi(A5, S1, -200),
            sltiu(A5, A5, 1),
            slli(A5, A5, 30),
            add(A4, S4, A5),
            ld(A6, A4, 8),
            add(T2, T2, A6),
            addi(S1, S1, -1),
        ],
    );
    vm.w64(DATA + 8, 0x1234_5678_9abc_def0);
    vm.set_x(S4, DATA);
    vm.set_x(S1, 300);
    vm.hart.set_pc(CODE);
    let trap = vm.run_trap();
    assert_eq!(trap.cause, 5, "load access fault; {}", vm.state());
    // The ld is the 6th instruction of T.
    assert_eq!(trap.epc, CODE + T_OFF + 20);
    assert_eq!(trap.tval, DATA + (1 << 30) + 8);
    // Iterations with s1 = 300..=201 completed; the fault is on the one with s1 = 200.
    assert_eq!(vm.x(T0), 101);
    assert_eq!(vm.x(T2), 100u64.wrapping_mul(0x1234_5678_9abc_def0));
    assert_eq!(vm.x(S1), 200);
    assert_compiled(&vm, jit, "backward jal with a trap");
    let mut x = [0u64; 32];
    for (i, r) in x.iter_mut().enumerate() {
        *r = vm.hart.reg(i);
    }
    (
        vm.hart.pc(),
        x,
        vm.hart.instret(),
        (trap.cause, trap.epc, trap.tval),
    )
}

#[test]
fn backward_followed_jal_matches() {
    assert_eq!(backward_jal(true), backward_jal(false));
    assert_eq!(backward_jal_trap(true), backward_jal_trap(false));
}

// ------------------------------------------------------------------------------------------
// 6. Stores from compiled code to a page with other code
// ------------------------------------------------------------------------------------------

/// X (CODE + 0x1800, its own page): `addi t4, t4, 1000; ret`, called 100 times (compiled).
/// Then a hot loop on the page at CODE stores to DATA for 100 iterations (so that it is
/// compiled before it ever touches the code page) and then writes `addi t4, t4, s1 + 7` over
/// X's first instruction on each of its last 100 iterations (the last stores
/// `addi t4, t4, 8`). After a FENCE.I, one call of X must add 8.
///
/// With `same_page` the storing loop sits on X's page itself (so each of its stores also
/// drops its own block). Without `fence` a `nop` replaces the FENCE.I.
fn store_to_code_page(jit: bool, same_page: bool, fence: bool) -> u64 {
    let x_addr = CODE + 0x1800;
    let mut vm = vm(jit);
    // X
    vm.load(x_addr, &prog(&[addi(T4, T4, 1000), jalr(ZERO, RA, 0)]));
    // A data word on X's page written before X is first decoded: a write-TLB entry for the
    // page exists before the page holds code.
    vm.w64(x_addr + 0x100, 0);
    let main = CODE;
    let store_loop = if same_page {
        x_addr + 0x200
    } else {
        CODE + 0x400
    };
    vm.code32(&[
        // Touch X's page with a store first.
        sd(ZERO, S6, 0x100),
        // Call X 100 times.
        addi(S1, ZERO, 100),
        jal(RA, x_addr as i64 - (main as i64 + 8)),
        addi(S1, S1, -1),
        bne(S1, ZERO, -8),
        // The store loop.
        addi(S1, ZERO, 200),
        jal(RA, store_loop as i64 - (main as i64 + 24)),
        if fence { fence_i() } else { nop() },
        // One more call of X.
        jal(RA, x_addr as i64 - (main as i64 + 32)),
    ]);
    // The store loop: a0 = s1 > 100 ? DATA : X; store addi(t4, t4, s1 + 7) there.
    vm.load(
        store_loop,
        &prog(&[
            sltu(A5, S4, S1),  // a5 = s1 > 100
            sub(A5, ZERO, A5), // mask
            and(A5, A5, S5),   // (X ^ DATA) & mask
            xor(A0, S6, A5),   // a0 = X or DATA
            addi(A4, S1, 7),
            slli(A2, A4, 20),
            or(A2, A2, A3), // addi t4, t4, s1 + 7
            sw(A2, A0, 0),
            addi(S1, S1, -1),
            bne(S1, ZERO, -36),
            jalr(ZERO, RA, 0),
        ]),
    );
    vm.set_x(S4, 100);
    vm.set_x(S5, x_addr ^ DATA);
    vm.set_x(S6, x_addr);
    vm.set_x(A3, addi(T4, T4, 0) as u64);
    vm.set_x(T4, 0);
    vm.run_ok();
    assert_eq!(vm.r32(x_addr), addi(T4, T4, 8));
    assert_eq!(vm.r32(DATA), addi(T4, T4, 101 + 7));
    assert_compiled(&vm, jit, "store to a code page");
    vm.x(T4)
}

#[test]
fn stores_from_compiled_code_to_code_page() {
    for same_page in [false, true] {
        for jit in [true, false] {
            assert_eq!(
                store_to_code_page(jit, same_page, true),
                100 * 1000 + 8,
                "jit {jit}, storing loop on X's page: {same_page}"
            );
        }
    }
}

/// Not architectural (RISC-V needs a FENCE.I), but documented in lib.rs: a hart's own stores
/// to a page with decoded code drop that page's blocks at once, so the next block fetched
/// from the page sees the store even without FENCE.I. This is the only way to observe that
/// stores from compiled code take the slow path on code pages (`protect_code_page`): with a
/// FENCE.I, the raw-bits check would catch a missed invalidation anyway.
#[test]
fn own_stores_to_code_page_drop_blocks_without_fence() {
    for same_page in [false, true] {
        for jit in [true, false] {
            assert_eq!(
                store_to_code_page(jit, same_page, false),
                100 * 1000 + 8,
                "jit {jit}, storing loop on X's page: {same_page}"
            );
        }
    }
}
