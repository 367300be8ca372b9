//! The machine survives hostile guests and hostile configurations: accesses to unmapped
//! physical addresses and MMIO holes, SBI calls with bad arguments, guests that spin with
//! interrupts off or storm traps, and bad input to `Vm::new`. Each gets an architected error
//! (in the guest) or a VM outcome / `VmError` with a clear message; the host never panics.
//!
//! Guests are tiny RV64 programs assembled by `guest` (no toolchain needed at test time) and
//! loaded as ELF kernels.

mod guest;

use guest::*;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmk_machine::layout::{RAM_BASE, UART_BASE, VIRTIO_BASE};
use vmk_machine::{Console, Vm, VmConfig, VmOutcome};

const MIB: u64 = 1 << 20;
/// Guest RAM of the test VMs.
const MEM: u64 = 32 * MIB;
const RAM_END: u64 = RAM_BASE + MEM;
/// Nothing lives here: not RAM, not a device.
const UNMAPPED: u64 = 0x4000_0000;
/// A VM that has not finished by then is stopped and the test fails.
const WATCHDOG: Duration = Duration::from_secs(60);

const SBI_ERR_FAILED: i64 = -1;
const SBI_ERR_NOT_SUPPORTED: i64 = -2;
const SBI_ERR_INVALID_PARAM: i64 = -3;
const SBI_ERR_INVALID_ADDRESS: i64 = -5;
const SBI_ERR_ALREADY_AVAILABLE: i64 = -6;

// ---- Harness ---------------------------------------------------------------------------------

/// Captures everything the guest writes to its consoles (UART and SBI).
#[derive(Default)]
struct Capture(Mutex<Vec<u8>>);

impl Console for Capture {
    fn write(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
    }
}

impl Capture {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn tmp_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-{name}"))
}

fn write_file(name: &str, data: &[u8]) -> PathBuf {
    let p = tmp_path(name);
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

fn config(kernel: PathBuf, cpus: u32, memory: u64, console: Arc<Capture>) -> VmConfig {
    VmConfig {
        cpus,
        memory,
        kernel,
        initrd: None,
        cmdline: "hostile".into(),
        console,
        disks: Vec::new(),
        nics: Vec::new(),
        fault_on_console: None,
    }
}

struct Run {
    outcome: VmOutcome,
    console: String,
    /// Raw console bytes (the text above is lossy UTF-8).
    raw: Vec<u8>,
}

/// Boots `prog` and runs it to the end (stopping it after [`WATCHDOG`]).
fn run_program(name: &str, prog: &Program, cpus: u32) -> Run {
    let kernel = write_file(&format!("{name}.elf"), &prog.elf());
    let console = Arc::new(Capture::default());
    let vm = Vm::new(config(kernel, cpus, MEM, console.clone()))
        .unwrap_or_else(|e| panic!("{name}: Vm::new: {e}"));
    let stop = vm.stopper();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(WATCHDOG).is_err() {
            stop();
        }
    });
    let outcome = vm.run();
    let _ = done.send(());
    watchdog.join().unwrap();
    let raw = console.bytes();
    Run {
        outcome,
        console: String::from_utf8_lossy(&raw).into_owned(),
        raw,
    }
}

/// What `Asm::report(name, r)` prints for value `v`.
fn line(name: &str, v: u64) -> String {
    format!("{name}={v:016x}\n")
}

/// Assembles a guest: `body` is the code at the entry point; the runtime follows.
fn program(body: impl FnOnce(&mut Asm)) -> Program {
    let mut a = Asm::new();
    body(&mut a);
    a.runtime();
    a.finish()
}

/// Emits a trap handler at `handler` that reports scause, stval and sepc (relative to nothing:
/// raw addresses), then resumes: after an instruction fetch fault at the address in s11, else
/// at the instruction after the faulting one. Uses s8-s10.
fn reporting_handler(a: &mut Asm) {
    let not_fetch = a.anon();
    a.label("handler");
    a.csrr(S8, csr::SCAUSE)
        .csrr(S9, csr::STVAL)
        .csrr(S10, csr::SEPC);
    a.report("trap scause", S8).report("trap stval", S9);
    a.li(T0, 1).b(Cond::Ne, S8, T0, &not_fetch);
    a.csrw(csr::SEPC, S11).emit(sret());
    a.label(&not_fetch);
    a.emit(addi(S10, S10, 4)).csrw(csr::SEPC, S10).emit(sret());
}

fn install_handler(a: &mut Asm) {
    a.la(T0, "handler").csrw(csr::STVEC, T0);
}

fn trap_lines(scause: u64, stval: u64) -> String {
    line("trap scause", scause) + &line("trap stval", stval)
}

/// `li` sequences load what they should: the guest prints each constant back.
#[test]
fn li_loads_constants() {
    let values: Vec<u64> = vec![
        0,
        1,
        2047,
        (-2048i64) as u64,
        2048,
        0x7fff_f800,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        (-1i64) as u64,
        i32::MIN as i64 as u64,
        0x8000_0000_0000_0000,
        0x1234_5678_9abc_def0,
        0xdead_beef_0000_0800,
        0x0000_0fff_ffff_f800,
        u64::MAX - 0x7ff,
    ];
    let vals = values.clone();
    let prog = program(move |a| {
        for (i, v) in vals.iter().enumerate() {
            a.li(S1, *v).report(&format!("v{i}"), S1);
        }
        a.shutdown();
    });
    let r = run_program("li", &prog, 1);
    let want: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| line(&format!("v{i}"), *v))
        .collect();
    assert_eq!(r.console, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

// ---- 1, 2: stores to unmapped physical addresses ----------------------------------------------

/// A store to an unmapped physical address is a store access fault the guest's handler sees
/// (scause 7, stval = the address, sepc = the store), reports, and recovers from.
#[test]
fn store_to_unmapped_address_traps_to_guest_handler() {
    let prog = program(|a| {
        a.la(T0, "on_fault").csrw(csr::STVEC, T0);
        a.li(S1, UNMAPPED).li(S2, 0x1234);
        a.label("store").emit(sd(S2, S1, 0));
        a.print_dbcn("resumed after the fault\n").shutdown();

        a.label("on_fault");
        a.csrr(S3, csr::SCAUSE)
            .csrr(S4, csr::STVAL)
            .csrr(S5, csr::SEPC);
        a.print_dbcn("guest handler: ");
        a.report("scause", S3)
            .report("stval", S4)
            .report("sepc", S5);
        a.emit(addi(S5, S5, 4)).csrw(csr::SEPC, S5).emit(sret());
    });
    let r = run_program("store-handler", &prog, 1);
    let want = format!(
        "guest handler: {}{}{}resumed after the fault\n",
        line("scause", 7),
        line("stval", UNMAPPED),
        line("sepc", prog.addr("store")),
    );
    assert_eq!(r.console, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

/// The same store with no handler (stvec = 0 at boot): the fault enters stvec 0, which is not
/// RAM, so fetching the handler faults again at the same address: a trap loop. The VM ends
/// `Crashed` with a message naming the vCPU, the loop's fault and its pc. No panic.
#[test]
fn store_to_unmapped_address_without_handler_crashes_vm() {
    let prog = program(|a| {
        a.print("storing\n");
        a.li(S1, UNMAPPED).li(S2, 0x1234);
        a.label("store").emit(sd(S2, S1, 0));
        a.print("not reached\n").shutdown();
    });
    let r = run_program("store-no-handler", &prog, 1);
    assert_eq!(r.console, "storing\n");
    let VmOutcome::Crashed(msg) = &r.outcome else {
        panic!("expected Crashed, got {:?}", r.outcome);
    };
    // "vCPU 0: trap loop: instruction access fault (cause 1) at pc 0x0, and the trap handler
    // at that address faults the same way"
    for frag in [
        "vCPU 0",
        "trap loop",
        "instruction access fault",
        "cause 1",
        "pc 0x0",
    ] {
        assert!(msg.contains(frag), "{frag:?} missing from {msg:?}");
    }
}

/// What the crash message should also say: the trap that led into the loop (the store access
/// fault, its address and pc). Today the message only describes the secondary fault at the
/// trap vector (pc 0x0), so the user cannot tell which guest instruction failed.
#[test]
fn crash_message_names_the_original_fault() {
    let prog = program(|a| {
        a.li(S1, UNMAPPED).li(S2, 0x1234);
        a.label("store").emit(sd(S2, S1, 0));
        a.shutdown();
    });
    let r = run_program("store-no-handler-msg", &prog, 1);
    let VmOutcome::Crashed(msg) = &r.outcome else {
        panic!("expected Crashed, got {:?}", r.outcome);
    };
    let store_pc = format!("{:#x}", prog.addr("store"));
    for frag in ["store/AMO access fault", "0x40000000", store_pc.as_str()] {
        assert!(msg.contains(frag), "{frag:?} missing from {msg:?}");
    }
}

// ---- 3: SBI calls with bad arguments ---------------------------------------------------------

struct Call {
    name: &'static str,
    eid: u64,
    fid: u64,
    args: Vec<u64>,
    /// a0 after the call.
    error: i64,
    /// a1 after the call, when the test checks it.
    value: Option<u64>,
}

fn call(name: &'static str, eid: u64, fid: u64, args: &[u64], error: i64) -> Call {
    Call {
        name,
        eid,
        fid,
        args: args.to_vec(),
        error,
        value: None,
    }
}

/// Runs `calls` in a 1-vCPU guest that prints each a0 (and a1 where checked), then prints
/// "alive" and shuts down. Returns the run and the expected console text.
fn run_sbi_calls(name: &str, calls: &[Call]) -> (Run, String) {
    let prog = program(|a| {
        for c in calls {
            a.sbi(c.eid, c.fid, &c.args);
            a.mv(S1, A0).mv(S2, A1);
            a.report(c.name, S1);
            if c.value.is_some() {
                a.report(&format!("{}.value", c.name), S2);
            }
        }
        a.print("alive\n").shutdown();
    });
    let mut want = String::new();
    for c in calls {
        want += &line(c.name, c.error as u64);
        if let Some(v) = c.value {
            want += &line(&format!("{}.value", c.name), v);
        }
    }
    want += "alive\n";
    (run_program(name, &prog, 1), want)
}

/// Every bad SBI call gets an SBI error code in a0; the VM goes on and shuts down normally.
#[test]
fn sbi_calls_with_bad_arguments_return_errors() {
    let calls = vec![
        call(
            "unknown_extension",
            0x0abc_def0,
            0,
            &[],
            SBI_ERR_NOT_SUPPORTED,
        ),
        call(
            "unknown_extension_fid",
            0x0abc_def0,
            0x1234_5678,
            &[1, 2, 3],
            SBI_ERR_NOT_SUPPORTED,
        ),
        call(
            "base_unknown_fid",
            sbi::BASE,
            99,
            &[],
            SBI_ERR_NOT_SUPPORTED,
        ),
        Call {
            value: Some(0),
            ..call("probe_unknown", sbi::BASE, 3, &[0x0abc_def0], 0)
        },
        call("legacy_eid_9", 0x09, 0, &[], SBI_ERR_NOT_SUPPORTED),
        // HSM.
        call(
            "hart_start_nonexistent",
            sbi::HSM,
            0,
            &[7, BASE, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "hart_start_id_max",
            sbi::HSM,
            0,
            &[u64::MAX, BASE, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "hart_start_self",
            sbi::HSM,
            0,
            &[0, BASE, 0],
            SBI_ERR_ALREADY_AVAILABLE,
        ),
        call(
            "hart_status_nonexistent",
            sbi::HSM,
            2,
            &[1],
            SBI_ERR_INVALID_PARAM,
        ),
        call("hsm_unknown_fid", sbi::HSM, 9, &[], SBI_ERR_NOT_SUPPORTED),
        call(
            "hart_suspend_platform_type",
            sbi::HSM,
            3,
            &[0x1000_0000, 0, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        // DBCN console_write: buffer not in RAM, partly outside RAM, wrapping, high half.
        call(
            "dbcn_write_unmapped",
            sbi::DBCN,
            0,
            &[16, UNMAPPED, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "dbcn_write_mmio",
            sbi::DBCN,
            0,
            &[8, UART_BASE, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "dbcn_write_past_ram_end",
            sbi::DBCN,
            0,
            &[u64::MAX, RAM_END - 16, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "dbcn_write_wraps",
            sbi::DBCN,
            0,
            &[64, u64::MAX - 7, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "dbcn_write_addr_hi",
            sbi::DBCN,
            0,
            &[4, BASE, 1],
            SBI_ERR_INVALID_PARAM,
        ),
        call("dbcn_unknown_fid", sbi::DBCN, 7, &[], SBI_ERR_NOT_SUPPORTED),
        // A huge length from a valid buffer is clamped to 64 KiB: a partial write that
        // reports how much it wrote (the buffer is untouched, zeroed RAM).
        Call {
            value: Some(0x1_0000),
            ..call(
                "dbcn_write_huge_len",
                sbi::DBCN,
                0,
                &[1 << 40, RAM_BASE + 16 * MIB, 0],
                0,
            )
        },
        // IPI / RFENCE hart masks beyond the machine.
        call(
            "ipi_mask_beyond",
            sbi::IPI,
            0,
            &[1 << 5, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "ipi_base_beyond",
            sbi::IPI,
            0,
            &[1, 1],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "ipi_base_wraps",
            sbi::IPI,
            0,
            &[4, u64::MAX - 1],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "rfence_mask_beyond",
            sbi::RFENCE,
            0,
            &[1 << 3, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "rfence_sfence_beyond",
            sbi::RFENCE,
            1,
            &[1 << 63, 0, 0, u64::MAX],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "rfence_hfence",
            sbi::RFENCE,
            3,
            &[0, u64::MAX, 0, 0],
            SBI_ERR_NOT_SUPPORTED,
        ),
        call(
            "rfence_unknown_fid",
            sbi::RFENCE,
            99,
            &[0, u64::MAX],
            SBI_ERR_NOT_SUPPORTED,
        ),
        call(
            "ipi_unknown_fid",
            sbi::IPI,
            1,
            &[0, u64::MAX],
            SBI_ERR_NOT_SUPPORTED,
        ),
        call(
            "time_unknown_fid",
            sbi::TIME,
            1,
            &[0],
            SBI_ERR_NOT_SUPPORTED,
        ),
        call(
            "srst_unknown_fid",
            sbi::SRST,
            1,
            &[0, 0],
            SBI_ERR_NOT_SUPPORTED,
        ),
        // SRST with reserved type / reason: an error, and the VM keeps running.
        call(
            "srst_reserved_type",
            sbi::SRST,
            0,
            &[3, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "srst_reserved_type_high",
            sbi::SRST,
            0,
            &[0xefff_ffff, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "srst_reserved_reason",
            sbi::SRST,
            0,
            &[0, 2],
            SBI_ERR_INVALID_PARAM,
        ),
        // Legacy calls with a bad hart-mask pointer: unmapped, device memory, wrapping.
        call(
            "legacy_fence_i_bad_ptr",
            0x05,
            0,
            &[UNMAPPED],
            SBI_ERR_INVALID_ADDRESS,
        ),
        call(
            "legacy_ipi_mmio_ptr",
            0x04,
            0,
            &[UART_BASE],
            SBI_ERR_INVALID_ADDRESS,
        ),
        call(
            "legacy_sfence_wrapping_ptr",
            0x06,
            0,
            &[u64::MAX - 3],
            SBI_ERR_INVALID_ADDRESS,
        ),
        call(
            "legacy_sfence_asid_past_ram",
            0x07,
            0,
            &[RAM_END - 4],
            SBI_ERR_INVALID_ADDRESS,
        ),
        call("legacy_getchar_empty", 0x02, 0, &[], SBI_ERR_FAILED),
        // Timer far in the future: fine.
        call("set_timer_max", sbi::TIME, 0, &[u64::MAX], 0),
    ];
    let (r, want) = run_sbi_calls("sbi-bad-args", &calls);
    // The clamped DBCN write put 64 KiB of the guest's zeroed RAM on the console.
    let nuls = r.raw.iter().filter(|b| **b == 0).count();
    assert_eq!(nuls, 0x1_0000, "bytes written by dbcn_write_huge_len");
    let text: String = r.console.chars().filter(|c| *c != '\0').collect();
    assert_eq!(text, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

/// Return codes where the machine deviates from SBI v2.0 (which it advertises): reserved
/// suspend types and unimplemented platform-specific reset types are "reserved or
/// platform-specific and unimplemented" → SBI_ERR_INVALID_PARAM; console_read into memory
/// that is not RAM is SBI_ERR_INVALID_PARAM even when there is nothing to read.
#[test]
fn sbi_error_codes_follow_spec_v2() {
    let calls = vec![
        call(
            "hart_suspend_reserved_low",
            sbi::HSM,
            3,
            &[1, 0, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "hart_suspend_reserved_high",
            sbi::HSM,
            3,
            &[0x8000_0001, 0, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "srst_vendor_type",
            sbi::SRST,
            0,
            &[0xf000_0000, 0],
            SBI_ERR_INVALID_PARAM,
        ),
        call(
            "dbcn_read_unmapped",
            sbi::DBCN,
            1,
            &[16, UNMAPPED, 0],
            SBI_ERR_INVALID_PARAM,
        ),
    ];
    let (r, want) = run_sbi_calls("sbi-spec", &calls);
    assert_eq!(r.console, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

// ---- 4: guests that never give the CPU back --------------------------------------------------

/// Runs `prog`, stops it from another thread after ~1 s, and checks that `run` returns
/// `Stopped` promptly and that the guest really ran (or waited) until then.
fn assert_stops_promptly(name: &str, prog: &Program, cpus: u32, want_console: &str) -> u64 {
    let kernel = write_file(&format!("{name}.elf"), &prog.elf());
    let console = Arc::new(Capture::default());
    let vm = Vm::new(config(kernel, cpus, MEM, console.clone())).unwrap();
    let stop = vm.stopper();
    let instret = vm.instret_counter();
    let (tx, rx) = mpsc::channel();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        let _ = tx.send(Instant::now());
        stop();
    });
    let start = Instant::now();
    let outcome = vm.run();
    let end = Instant::now();
    stopper.join().unwrap();
    let stopped_at = rx.recv().unwrap();
    let latency = end.saturating_duration_since(stopped_at);
    assert_eq!(outcome, VmOutcome::Stopped, "{name}");
    assert!(
        end - start >= Duration::from_millis(900),
        "{name}: run returned after {:?}, before it was stopped",
        end - start
    );
    assert!(
        latency < Duration::from_secs(2),
        "{name}: run returned {latency:?} after the stop"
    );
    let text = String::from_utf8_lossy(&console.bytes()).into_owned();
    assert_eq!(text, want_console, "{name}");
    instret().iter().sum()
}

/// sstatus.SIE = 0, sie = 0, `j .`: the host stops it within a couple of seconds.
#[test]
fn spinning_guest_with_interrupts_off_is_stopped() {
    let prog = program(|a| {
        a.emit(csrrci(ZERO, csr::SSTATUS, 2)).csrw(csr::SIE, ZERO);
        a.print("spinning\n").hang();
    });
    let n = assert_stops_promptly("spin", &prog, 1, "spinning\n");
    assert!(n > 1_000_000, "the guest retired only {n} instructions");
}

/// WFI forever with nothing enabled: the vCPU thread sleeps; the stop wakes it.
#[test]
fn guest_idling_forever_in_wfi_is_stopped() {
    let prog = program(|a| {
        a.emit(csrrci(ZERO, csr::SSTATUS, 2)).csrw(csr::SIE, ZERO);
        a.print("idle\n").label("idle").emit(wfi()).j("idle");
    });
    assert_stops_promptly("wfi", &prog, 1, "idle\n");
}

/// 4 vCPUs: hart 0 spins with interrupts off, harts 1-3 are never started (they wait in the
/// HSM stopped state). Stopping ends all four threads.
#[test]
fn smp_guest_with_stopped_harts_is_stopped() {
    let prog = program(|a| {
        a.emit(csrrci(ZERO, csr::SSTATUS, 2));
        a.print("hart 0 spins\n").hang();
    });
    assert_stops_promptly("smp-spin", &prog, 4, "hart 0 spins\n");
}

/// A trap storm: stvec points at an illegal instruction, so every trap re-enters the handler,
/// which traps again at the same pc. The vCPU still hands its thread back every slice (traps
/// are charged to the budget) and the host stops it. The machine does not detect this loop
/// (it only detects instruction *fetch* faults at the vector); a future `Crashed("... trap
/// loop ...")` would be fine too.
#[test]
fn trap_storm_at_the_vector_is_stoppable() {
    let prog = program(|a| {
        a.la(T0, "vector").csrw(csr::STVEC, T0);
        a.print("storm\n").word(0xffff_ffff); // illegal
        a.hang();
        a.emit(nop()).label("vector").word(0); // illegal (c.unimp + 0)
    });
    let kernel = write_file("storm.elf", &prog.elf());
    let console = Arc::new(Capture::default());
    let vm = Vm::new(config(kernel, 1, MEM, console.clone())).unwrap();
    let stop = vm.stopper();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        stop();
    });
    let start = Instant::now();
    let outcome = vm.run();
    t.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(4));
    match &outcome {
        VmOutcome::Stopped => {}
        VmOutcome::Crashed(m) if m.contains("trap loop") => {}
        o => panic!("unexpected outcome {o:?}"),
    }
    assert_eq!(String::from_utf8_lossy(&console.bytes()), "storm\n");
}

/// A handler that itself stores to an unmapped address: the store fault re-enters the handler
/// forever (a trap storm with forward progress in between). Stoppable; no host stack growth.
#[test]
fn faulting_handler_is_stoppable() {
    let prog = program(|a| {
        a.la(T0, "vector").csrw(csr::STVEC, T0);
        a.li(S1, UNMAPPED).print("faulting\n");
        a.label("vector").emit(addi(S2, S2, 1)).emit(sd(S2, S1, 0));
        a.hang();
    });
    let n = assert_stops_promptly("faulting-handler", &prog, 1, "faulting\n");
    assert!(n > 1000, "the guest retired only {n} instructions");
}

// ---- 5: MMIO holes and other addresses that are not RAM ----------------------------------------

/// Loads and stores to MMIO holes and around the edges of RAM and devices.
///
/// What the machine does (asserted below):
/// - an address inside an MMIO window with no device behind it (virtio slot 0, empty) reads
///   as 0 and stores are dropped: the window is registered with guest memory as MMIO, the
///   access leaves the vCPU as an MMIO exit, and the machine answers bus misses with 0;
/// - a UART offset past its 8 registers (inside its 0x100 window) reads 0 (the UART counts a
///   bad access);
/// - an 8-byte load that starts in the UART window and runs past its end reads 0 (a bus miss);
/// - addresses outside every RAM and MMIO range (the gap between the UART and virtio windows,
///   address 0, past the end of RAM) are architected access faults: load 5, store 7, fetch 1
///   with stval = the address;
/// - a load or store that starts in the last RAM page and runs past the end of RAM faults
///   (without writing the RAM part).
#[test]
fn mmio_holes_read_zero_and_unmapped_addresses_fault() {
    const SENTINEL: u64 = 0x5a5a_5a5a_5a5a_5a5a;
    let gap = UART_BASE + 0x800;
    let prog = program(|a| {
        install_handler(a);
        a.li(S1, SENTINEL).li(T0, VIRTIO_BASE).emit(ld(S1, T0, 0));
        a.report("virtio_slot0_magic", S1);
        a.li(S1, SENTINEL)
            .li(T0, VIRTIO_BASE + 0x7000)
            .emit(lw(S1, T0, 0x100));
        a.report("virtio_slot7_config", S1);
        a.li(T0, VIRTIO_BASE).li(T1, 0xff).emit(sw(T1, T0, 0x70));
        a.print("virtio_store_done\n");
        a.li(S1, SENTINEL).li(T0, UART_BASE).emit(lw(S1, T0, 0x50));
        a.report("uart_beyond_registers", S1);
        a.li(S1, SENTINEL).li(T0, UART_BASE).emit(ld(S1, T0, 0xfc));
        a.report("uart_straddling_end", S1);
        a.li(T0, UART_BASE).emit(sd(T0, T0, 0xf8));
        a.print("uart_store_beyond_done\n");
        // Not RAM, not MMIO: access faults.
        a.li(T0, gap).emit(lw(S1, T0, 0));
        a.li(T0, gap).emit(sw(T0, T0, 0));
        a.emit(ld(S1, ZERO, 0));
        // Straddling the end of RAM: the RAM half must stay untouched.
        a.li(S3, RAM_END - 8).li(T0, 0x1111).emit(sd(T0, S3, 0));
        a.li(T0, -1i64 as u64).emit(sd(T0, S3, 4));
        a.emit(ld(S1, S3, 4));
        a.emit(ld(S1, S3, 0))
            .report("ram_end_after_straddling_store", S1);
        // Fetch from a device and from the gap.
        a.la(S11, "after_fetch_uart")
            .li(T0, UART_BASE)
            .emit(jalr(ZERO, T0, 0));
        a.label("after_fetch_uart");
        a.la(S11, "after_fetch_gap")
            .li(T0, gap)
            .emit(jalr(ZERO, T0, 0));
        a.label("after_fetch_gap");
        a.print("done\n").shutdown();
        reporting_handler(a);
    });
    let r = run_program("mmio-holes", &prog, 1);
    let want = [
        line("virtio_slot0_magic", 0),
        line("virtio_slot7_config", 0),
        "virtio_store_done\n".into(),
        line("uart_beyond_registers", 0),
        line("uart_straddling_end", 0),
        "uart_store_beyond_done\n".into(),
        trap_lines(5, gap),
        trap_lines(7, gap),
        trap_lines(5, 0),
        // stval is the first byte that is not RAM (the portion that faulted, as the
        // privileged spec allows for accesses that cross pages).
        trap_lines(7, RAM_END),
        trap_lines(5, RAM_END),
        line("ram_end_after_straddling_store", 0x1111),
        trap_lines(1, UART_BASE),
        trap_lines(1, gap),
        "done\n".into(),
    ]
    .concat();
    assert_eq!(r.console, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

/// S-mode cannot reach M-mode state: M-mode CSRs and MRET are illegal instructions the guest
/// handles, and a delegated fault still goes to the guest afterwards (medeleg unchanged).
#[test]
fn guest_cannot_reach_machine_mode() {
    let prog = program(|a| {
        install_handler(a);
        a.label("i0").emit(csrrs(S1, csr::MSTATUS, ZERO));
        a.label("i1").emit(csrrw(ZERO, csr::MEDELEG, ZERO));
        a.label("i2").emit(csrrs(S1, csr::MHARTID, ZERO));
        a.label("i3").emit(mret());
        a.li(T0, UNMAPPED).emit(sd(T0, T0, 0));
        a.print("done\n").shutdown();
        reporting_handler(a);
    });
    let r = run_program("no-m-mode", &prog, 1);
    let want = [
        trap_lines(2, csrrs(S1, csr::MSTATUS, ZERO) as u64),
        trap_lines(2, csrrw(ZERO, csr::MEDELEG, ZERO) as u64),
        trap_lines(2, csrrs(S1, csr::MHARTID, ZERO) as u64),
        trap_lines(2, mret() as u64),
        trap_lines(7, UNMAPPED),
        "done\n".into(),
    ]
    .concat();
    assert_eq!(r.console, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

/// Paging on with a root table that is not RAM: every fetch faults, including the handler's,
/// and the machine reports a trap loop instead of spinning forever.
#[test]
fn page_table_outside_ram_crashes_with_message() {
    let prog = program(|a| {
        install_handler(a);
        a.print("paging on\n");
        a.li(T0, (8 << 60) | (UNMAPPED >> 12)).csrw(csr::SATP, T0);
        a.print("not reached\n").shutdown();
        reporting_handler(a);
    });
    let r = run_program("bad-satp", &prog, 1);
    assert_eq!(r.console, "paging on\n");
    let VmOutcome::Crashed(msg) = &r.outcome else {
        panic!("expected Crashed, got {:?}", r.outcome);
    };
    let handler = format!("pc {:#x}", prog.addr("handler"));
    for frag in ["trap loop", "instruction access fault", handler.as_str()] {
        assert!(msg.contains(frag), "{frag:?} missing from {msg:?}");
    }
}

// ---- 6: SMP through HSM ----------------------------------------------------------------------

/// Hart 0 starts hart 1 at an entry point with an opaque value; hart 1 sees hartid in a0 and
/// the opaque value in a1, satp = 0 and SIE = 0, prints them and powers off.
#[test]
fn hart_start_passes_hartid_and_opaque() {
    const OPAQUE: u64 = 0x0123_4567_89ab_cdef;
    let prog = program(|a| {
        // Hart 0.
        a.sbi(sbi::HSM, 0, &[1, UNMAPPED, 0]).mv(S1, A0);
        a.report("h0 start_unmapped_entry", S1);
        a.sbi(sbi::HSM, 2, &[1]).mv(S1, A1);
        a.report("h0 status1_before", S1);
        for name in ["h0 start", "h0 start_again"] {
            a.li(A0, 1).la(A1, "hart1").li(A2, OPAQUE);
            a.li(A6, 0).li(A7, sbi::HSM).emit(ecall()).mv(S1, A0);
            a.report(name, S1);
        }
        a.la(S0, "flag").li(T0, 1).emit(sd(T0, S0, 0));
        a.hang();

        // Hart 1: waits until hart 0 is done printing.
        a.label("hart1").mv(S1, A0).mv(S2, A1);
        a.csrr(S3, csr::SATP)
            .csrr(S4, csr::SSTATUS)
            .emit(andi(S4, S4, 2));
        let wait = a.anon();
        a.la(S0, "flag")
            .label(&wait)
            .emit(ld(T0, S0, 0))
            .beqz(T0, &wait);
        a.report("h1 a0", S1).report("h1 a1", S2);
        a.report("h1 satp", S3).report("h1 sstatus.sie", S4);
        a.sbi(sbi::HSM, 2, &[0]).mv(S1, A1).report("h1 status0", S1);
        a.sbi(sbi::HSM, 2, &[1]).mv(S1, A1).report("h1 status1", S1);
        a.sbi(sbi::HSM, 0, &[1, BASE, 0])
            .mv(S1, A0)
            .report("h1 start_self", S1);
        a.shutdown();
        a.data_bytes("flag", &[0; 8]);
    });
    let r = run_program("hsm", &prog, 2);
    let want = [
        line("h0 start_unmapped_entry", SBI_ERR_INVALID_ADDRESS as u64),
        line("h0 status1_before", 1),
        line("h0 start", 0),
        line("h0 start_again", SBI_ERR_ALREADY_AVAILABLE as u64),
        line("h1 a0", 1),
        line("h1 a1", OPAQUE),
        line("h1 satp", 0),
        line("h1 sstatus.sie", 0),
        line("h1 status0", 0),
        line("h1 status1", 0),
        line("h1 start_self", SBI_ERR_ALREADY_AVAILABLE as u64),
    ]
    .concat();
    assert_eq!(r.console, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

/// A hart stops itself (HSM hart_stop does not return); another hart sees it stopped and
/// starts it again at a new entry point.
#[test]
fn stopped_hart_can_be_restarted() {
    const OPAQUE: u64 = 0xabc;
    let prog = program(|a| {
        // Hart 0, first life.
        a.li(A0, 1).la(A1, "hart1").li(A2, 0);
        a.li(A6, 0).li(A7, sbi::HSM).emit(ecall()).mv(S1, A0);
        a.report("h0 start1", S1);
        a.sbi(sbi::HSM, 1, &[]).mv(S1, A0);
        a.report("h0 hart_stop returned", S1).hang();

        // Hart 1: waits until hart 0 is stopped, restarts it, then lets it print.
        a.label("hart1");
        let wait = a.anon();
        a.label(&wait).sbi(sbi::HSM, 2, &[0]).li(T0, 1);
        a.b(Cond::Ne, A1, T0, &wait);
        a.print("h1 sees hart 0 stopped\n");
        a.li(A0, 0).la(A1, "hart0_again").li(A2, OPAQUE);
        a.li(A6, 0).li(A7, sbi::HSM).emit(ecall()).mv(S1, A0);
        a.report("h1 start0", S1);
        a.la(S0, "flag").li(T0, 1).emit(sd(T0, S0, 0)).hang();

        // Hart 0, second life.
        a.label("hart0_again").mv(S1, A0).mv(S2, A1);
        let wait = a.anon();
        a.la(S0, "flag")
            .label(&wait)
            .emit(ld(T0, S0, 0))
            .beqz(T0, &wait);
        a.report("h0 again a0", S1)
            .report("h0 again a1", S2)
            .shutdown();
        a.data_bytes("flag", &[0; 8]);
    });
    let r = run_program("hsm-restart", &prog, 2);
    let want = [
        line("h0 start1", 0),
        "h1 sees hart 0 stopped\n".into(),
        line("h1 start0", 0),
        line("h0 again a0", 0),
        line("h0 again a1", OPAQUE),
    ]
    .concat();
    assert_eq!(r.console, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

/// The only hart stops itself: nothing can ever run again. The machine keeps the VM (idle,
/// no CPU burnt: the vCPU thread sleeps) until the host stops it.
#[test]
fn vm_whose_harts_all_stopped_is_stoppable() {
    let prog = program(|a| {
        a.print("stopping\n").sbi(sbi::HSM, 1, &[]);
        a.print("hart_stop returned\n").hang();
    });
    let n = assert_stops_promptly("all-stopped", &prog, 1, "stopping\n");
    assert!(n < 10_000, "a stopped hart retired {n} instructions");
}

/// Two harts hammer remote fences (which shoot down every vCPU's TLB and wait for the running
/// ones) and IPIs at each other: no deadlock, no error.
#[test]
fn concurrent_remote_fences_and_ipis_do_not_deadlock() {
    const ROUNDS: u64 = 2000;
    let prog = program(|a| {
        let fence_loop = |a: &mut Asm| {
            let lp = a.anon();
            a.li(S5, 0).li(S2, ROUNDS).label(&lp);
            a.sbi(sbi::RFENCE, 1, &[0, u64::MAX, 0, u64::MAX])
                .emit(or(S5, S5, A0));
            a.sbi(sbi::RFENCE, 0, &[0, u64::MAX]).emit(or(S5, S5, A0));
            a.sbi(sbi::IPI, 0, &[0b11, 0]).emit(or(S5, S5, A0));
            a.sbi(0x06, 0, &[0]).emit(or(S5, S5, A0)); // legacy remote sfence, all harts
            a.emit(addi(S2, S2, -1)).bnez(S2, &lp);
        };
        // Hart 0.
        a.li(A0, 1).la(A1, "hart1").li(A2, 0);
        a.li(A6, 0).li(A7, sbi::HSM).emit(ecall()).mv(S1, A0);
        fence_loop(a);
        let wait = a.anon();
        a.la(S0, "flag")
            .label(&wait)
            .emit(ld(T0, S0, 0))
            .beqz(T0, &wait);
        a.emit(ld(S3, S0, 8));
        a.report("start", S1)
            .report("h0 errors", S5)
            .report("h1 errors", S3);
        a.shutdown();
        // Hart 1.
        a.label("hart1");
        fence_loop(a);
        a.la(S0, "flag")
            .emit(sd(S5, S0, 8))
            .li(T0, 1)
            .emit(sd(T0, S0, 0));
        a.hang();
        a.data_bytes("flag", &[0; 16]);
    });
    let r = run_program("fence-storm", &prog, 2);
    let want = line("start", 0) + &line("h0 errors", 0) + &line("h1 errors", 0);
    assert_eq!(r.console, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

/// The largest machine (64 vCPUs) boots and powers off; 63 harts wait in HSM stopped.
#[test]
fn sixty_four_vcpus_boot() {
    let prog = program(|a| {
        a.sbi(sbi::HSM, 2, &[63]).mv(S1, A1).report("status63", S1);
        a.sbi(sbi::HSM, 2, &[64]).mv(S1, A0).report("status64", S1);
        a.shutdown();
    });
    let r = run_program("cpus64", &prog, 64);
    let want = line("status63", 1) + &line("status64", SBI_ERR_INVALID_PARAM as u64);
    assert_eq!(r.console, want);
    assert_eq!(r.outcome, VmOutcome::PowerOff { code: 0 });
}

// ---- Bad input to Vm::new --------------------------------------------------------------------

fn minimal_guest() -> Program {
    program(|a| {
        a.shutdown();
    })
}

/// `Vm::new` must fail with a message containing every fragment. Panics count as failures.
fn assert_vm_error(what: &str, cfg: VmConfig, fragments: &[&str]) {
    if let Err(e) = check_vm_error(what, cfg, fragments) {
        panic!("{e}");
    }
}

fn check_vm_error(what: &str, cfg: VmConfig, fragments: &[&str]) -> Result<(), String> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Vm::new(cfg)));
    let e = match r {
        Err(_) => return Err(format!("{what}: Vm::new panicked")),
        Ok(Ok(_)) => return Err(format!("{what}: Vm::new accepted it")),
        Ok(Err(e)) => e.to_string(),
    };
    for f in fragments {
        if !e.contains(f) {
            return Err(format!("{what}: {f:?} missing from {e:?}"));
        }
    }
    Ok(())
}

fn cfg_with(kernel: PathBuf, cpus: u32, memory: u64) -> VmConfig {
    config(kernel, cpus, memory, Arc::new(Capture::default()))
}

#[test]
fn vm_new_rejects_bad_memory_sizes_and_cpu_counts() {
    let k = write_file("minimal.elf", &minimal_guest().elf());
    assert_vm_error(
        "memory 0",
        cfg_with(k.clone(), 1, 0),
        &["memory size 0 MiB is too small", "at least 16 MiB"],
    );
    assert_vm_error(
        "memory 8 MiB",
        cfg_with(k.clone(), 1, 8 * MIB),
        &["memory size 8 MiB is too small", "at least 16 MiB"],
    );
    assert_vm_error(
        "memory 16 MiB - 1",
        cfg_with(k.clone(), 1, 16 * MIB - 1),
        &["too small", "at least 16 MiB"],
    );
    assert_vm_error(
        "memory u64::MAX",
        cfg_with(k.clone(), 1, u64::MAX),
        &["more than a VM can have", "1024 GiB"],
    );
    assert_vm_error(
        "memory 4 EiB",
        cfg_with(k.clone(), 1, 1 << 62),
        &["memory size 4294967296 GiB is more than a VM can have"],
    );
    assert_vm_error(
        "memory 16 TiB",
        cfg_with(k.clone(), 1, 16 << 40),
        &["memory size 16384 GiB is more than a VM can have (1024 GiB)"],
    );
    assert_vm_error(
        "0 cpus",
        cfg_with(k.clone(), 0, MEM),
        &["--cpus 0", "1 to 64 vCPUs"],
    );
    assert_vm_error(
        "65 cpus",
        cfg_with(k.clone(), 65, MEM),
        &["--cpus 65", "1 to 64 vCPUs"],
    );
    assert_vm_error(
        "u32::MAX cpus",
        cfg_with(k.clone(), u32::MAX, MEM),
        &["--cpus 4294967295", "1 to 64 vCPUs"],
    );
    // The boundaries themselves are fine.
    assert!(Vm::new(cfg_with(k.clone(), 64, 16 * MIB)).is_ok());
    assert!(Vm::new(cfg_with(k, 1, 16 * MIB + 123)).is_ok());
}

#[test]
fn vm_new_rejects_bad_kernels() {
    let good = minimal_guest().elf();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("empty", vec![], vec!["only 0 bytes", "too short"]),
        ("tiny", b"\x7fELF".to_vec(), vec!["only 4 bytes"]),
        (
            "text",
            vec![b'#'; 4096],
            vec!["neither a RISC-V Linux Image", "nor an ELF"],
        ),
        (
            "gzip",
            [&[0x1f, 0x8b][..], &[0; 100]].concat(),
            vec!["gzip"],
        ),
        ("pe", [&b"MZ"[..], &[0; 100]].concat(), vec!["PE/EFI"]),
        (
            "elf-truncated-phdrs",
            good[..100].to_vec(),
            vec!["program headers truncated"],
        ),
        (
            "elf-truncated-segment",
            good[..0x1000 + 4].to_vec(),
            vec!["segment 0 lies beyond the end of the file", "truncated"],
        ),
        (
            "elf-x86-64",
            patch(&good, 18, &62u16.to_le_bytes()),
            vec!["machine 62", "not RISC-V", "wrong architecture"],
        ),
        ("elf-32", patch(&good, 4, &[1]), vec!["32-bit ELF"]),
        ("elf-big-endian", patch(&good, 5, &[2]), vec!["big-endian"]),
        (
            "elf-no-load",
            patch(&good, 64, &[6, 0, 0, 0]),
            vec!["no loadable segment"],
        ),
        (
            "elf-entry-outside",
            patch(&good, 24, &0x9000_0000u64.to_le_bytes()),
            vec!["entry point is outside"],
        ),
        (
            "elf-memsz-below-filesz",
            patch(&good, 64 + 40, &4u64.to_le_bytes()),
            vec!["memsz < filesz"],
        ),
        (
            "elf-bigger-than-ram",
            elf64(&[0; 64], BASE, BASE, 64 * MIB, 243),
            vec![
                "the kernel",
                "does not fit in guest RAM of 32 MiB",
                "--memory",
            ],
        ),
        (
            "image-bad-text-offset",
            image_header(0x1234, 4096),
            vec!["unusable text_offset 0x1234"],
        ),
    ];
    for (name, data, fragments) in cases {
        let k = write_file(&format!("bad-{name}"), &data);
        assert_vm_error(name, cfg_with(k.clone(), 1, MEM), &fragments);
        // The path is in the message, so the user knows which file is bad (the size error
        // does not name the file).
        if name != "elf-bigger-than-ram" {
            assert_vm_error(name, cfg_with(k.clone(), 1, MEM), &[k.to_str().unwrap()]);
        }
    }
    assert_vm_error(
        "missing file",
        cfg_with(tmp_path("does-not-exist"), 1, MEM),
        &["cannot read kernel", "does-not-exist"],
    );
    assert_vm_error(
        "directory",
        cfg_with(PathBuf::from(env!("CARGO_TARGET_TMPDIR")), 1, MEM),
        &["cannot read kernel"],
    );
}

#[test]
fn vm_new_rejects_bad_initrds() {
    let k = write_file("minimal-initrd.elf", &minimal_guest().elf());
    let big = write_file("initrd-20m", &vec![0u8; 20 * MIB as usize]);
    let mut cfg = cfg_with(k.clone(), 1, 16 * MIB);
    cfg.initrd = Some(big.clone());
    assert_vm_error(
        "initrd bigger than RAM",
        cfg,
        &[
            "the initrd (20971520 bytes)",
            "does not fit in guest RAM of 16 MiB",
            "--memory",
        ],
    );
    // Smaller than RAM but not beside the kernel and the device tree either.
    let mid = write_file("initrd-13m", &vec![0u8; 13 * MIB as usize]);
    let mut cfg = cfg_with(k.clone(), 1, 16 * MIB);
    cfg.initrd = Some(mid);
    assert_vm_error(
        "initrd too big for the room left",
        cfg,
        &["the initrd", "does not fit"],
    );
    let mut cfg = cfg_with(k.clone(), 1, 16 * MIB);
    cfg.initrd = Some(tmp_path("no-such-initrd"));
    assert_vm_error(
        "missing initrd",
        cfg,
        &["cannot read initrd", "no-such-initrd"],
    );
    // It fits with more memory.
    let mut cfg = cfg_with(k, 1, 64 * MIB);
    cfg.initrd = Some(big);
    assert!(Vm::new(cfg).is_ok());
}

/// Header fields that overflow address arithmetic must be errors, not host panics (the test
/// profile has overflow checks on, as debug builds do).
#[test]
fn vm_new_survives_overflowing_kernel_headers() {
    let good = minimal_guest().elf();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "elf-phoff-max",
            patch(&good, 32, &(u64::MAX - 1).to_le_bytes()),
        ),
        (
            "elf-memsz-max",
            patch(&good, 64 + 40, &u64::MAX.to_le_bytes()),
        ),
        ("image-size-max", image_header(0, u64::MAX)),
    ];
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, data)| {
            let k = write_file(&format!("overflow-{name}"), &data);
            check_vm_error(name, cfg_with(k, 1, MEM), &["kernel"]).err()
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A kernel whose footprint reaches into the top 64 KiB of RAM, where the device tree goes:
/// the machine must refuse it (or put the DTB elsewhere), not overwrite the kernel's memory.
#[test]
fn kernel_and_device_tree_do_not_overlap() {
    // Footprint = 2 MiB + memsz = RAM size - 4 KiB: accepted by the size check.
    let mut a = Asm::new();
    a.mv(S1, A1).report("a1", S1).shutdown();
    a.runtime();
    let mut prog = a.finish();
    let memsz = MEM - 2 * MIB - 4096;
    prog.bss = memsz - prog.image.len() as u64;
    let kernel = write_file("fills-ram.elf", &prog.elf());
    let console = Arc::new(Capture::default());
    let kernel_end = BASE + memsz;
    match Vm::new(config(kernel, 1, MEM, console.clone())) {
        Err(e) => assert!(e.to_string().contains("does not fit"), "{e}"),
        Ok(vm) => {
            assert_eq!(vm.run(), VmOutcome::PowerOff { code: 0 });
            let text = String::from_utf8_lossy(&console.bytes()).into_owned();
            let dtb = u64::from_str_radix(text.trim().trim_start_matches("a1="), 16).unwrap();
            assert!(
                dtb >= kernel_end,
                "DTB at {dtb:#x} inside the kernel image (ends at {kernel_end:#x})"
            );
        }
    }
}

fn patch(data: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    d[at..at + bytes.len()].copy_from_slice(bytes);
    d
}

/// A flat RISC-V Linux Image header (64 bytes) plus padding to 4 KiB.
fn image_header(text_offset: u64, image_size: u64) -> Vec<u8> {
    let mut d = vec![0u8; 4096];
    d[8..16].copy_from_slice(&text_offset.to_le_bytes());
    d[16..24].copy_from_slice(&image_size.to_le_bytes());
    d[48..53].copy_from_slice(b"RISCV");
    d[56..60].copy_from_slice(b"RSC\x05");
    d
}

/// Writes `text` to the UART's THR byte by byte (the fault hook watches the UART, not SBI).
fn uart_print(a: &mut Asm, text: &str) {
    a.li(T0, UART_BASE);
    for b in text.bytes() {
        a.li(T1, u64::from(b)).emit(sb(T1, T0, 0));
    }
}

#[test]
fn device_panic_from_the_fault_hook_crashes_only_its_vm() {
    let noisy = program(|a| {
        uart_print(a, "before\nBO");
        uart_print(a, "OM\nafter\n");
        a.shutdown();
    });
    let quiet = program(|a| {
        uart_print(a, "quiet vm\n");
        a.shutdown();
    });
    let k1 = write_file("fault-noisy.elf", &noisy.elf());
    let k2 = write_file("fault-quiet.elf", &quiet.elf());
    let c1 = Arc::new(Capture::default());
    let c2 = Arc::new(Capture::default());
    let mut cfg = config(k1, 1, MEM, c1.clone());
    cfg.fault_on_console = Some("BOOM".into());
    let mut cfg2 = config(k2, 1, MEM, c2.clone());
    // The text appears in the quiet VM's config too, but its guest never prints it.
    cfg2.fault_on_console = Some("BOOM".into());
    // The crate's dev-dependency on itself turns the hook on for its tests; a build
    // without it refuses the configuration.
    if !cfg!(feature = "test-hooks") {
        assert_vm_error(
            "fault hook without test-hooks",
            cfg,
            &["test-hooks feature"],
        );
        return;
    }
    let vm1 = Vm::new(cfg).expect("vm1");
    let vm2 = Vm::new(cfg2).expect("vm2");
    let t = std::thread::spawn(move || vm2.run());
    let o1 = vm1.run();
    let o2 = t.join().expect("the other VM's thread survives");
    match o1 {
        VmOutcome::Crashed(why) => {
            assert!(why.contains("panicked") && why.contains("fault"), "{why}")
        }
        o => panic!("the faulted VM ended {o:?}"),
    }
    assert_eq!(o2, VmOutcome::PowerOff { code: 0 });
    assert!(String::from_utf8_lossy(&c1.bytes()).contains("before"));
    assert!(!String::from_utf8_lossy(&c1.bytes()).contains("after"));
    assert!(String::from_utf8_lossy(&c2.bytes()).contains("quiet vm"));
}

#[test]
fn controller_reports_live_and_final_counters_and_stops_the_vm() {
    let spin = program(|a| {
        // Touch 1 MiB of RAM above the program so memory_touched moves, then spin.
        a.li(T0, 0x8100_0000).li(T1, 0x8110_0000);
        let top = a.anon();
        a.label(&top)
            .emit(sd(ZERO, T0, 0))
            .emit(addi(T0, T0, 64))
            .b(Cond::Ne, T0, T1, &top);
        a.hang();
    });
    let k = write_file("controller-spin.elf", &spin.elf());
    let vm = Vm::new(cfg_with(k, 2, MEM)).expect("vm");
    let ctl = vm.controller();
    let t = std::thread::spawn(move || vm.run());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let live = loop {
        let st = ctl.stats();
        if st.vcpus[0].instret > 1_000_000 && st.vcpus[0].cpu_time_ns > 0 {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(live.vcpus.len(), 2);
    assert_eq!(live.vcpus[1].instret, 0, "hart 1 was never started");
    assert_eq!(live.memory_configured, MEM);
    assert!(live.memory_touched >= 1 << 20, "{live:?}");
    assert!(live.disks.is_empty());
    ctl.stop();
    assert_eq!(t.join().expect("run"), VmOutcome::Stopped);
    let last = ctl.stats();
    assert!(last.vcpus[0].instret >= live.vcpus[0].instret);
    assert_eq!(
        last.memory_touched,
        live.memory_touched.max(last.memory_touched)
    );
    assert!(!ctl.send_sysrq(b'o'), "no console once the VM has ended");
    ctl.stop(); // a no-op now
}

#[test]
fn a_fifo_or_directory_as_kernel_or_initrd_is_refused_without_blocking() {
    let fifo = tmp_path("kernel.fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(made, "mkfifo {}", fifo.display());
    assert_vm_error(
        "FIFO kernel",
        cfg_with(fifo.clone(), 1, MEM),
        &["cannot read kernel", "not a regular file"],
    );
    let dir = std::env::temp_dir();
    assert_vm_error(
        "directory kernel",
        cfg_with(dir, 1, MEM),
        &["cannot read kernel", "not a regular file"],
    );
    let k = write_file("fifo-test.elf", &minimal_guest().elf());
    let mut cfg = cfg_with(k, 1, MEM);
    cfg.initrd = Some(fifo);
    assert_vm_error(
        "FIFO initrd",
        cfg,
        &["cannot read initrd", "not a regular file"],
    );
}
