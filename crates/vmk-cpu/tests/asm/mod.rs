//! The RV64GC encoder (`vmk_testkit::rv64`, re-exported here so the tests name
//! instructions directly) and a small harness that runs encoded programs on a [`Hart`].
#![allow(dead_code)]

use std::sync::Arc;
use vmk_cpu::{Exit, GuestMemory, Hart, HartConfig, MmioRange, RamRange};
pub use vmk_testkit::rv64::*;

// ------------------------------------------------------------------------------------------
// Programs
// ------------------------------------------------------------------------------------------

/// A sequence of encoded instructions (32- and 16-bit) in memory order.
#[derive(Debug, Clone, Default)]
pub struct Prog {
    pub bytes: Vec<u8>,
}

impl Prog {
    pub fn new() -> Prog {
        Prog::default()
    }

    /// Appends a 32-bit instruction.
    pub fn i(&mut self, w: u32) -> &mut Prog {
        self.bytes.extend_from_slice(&w.to_le_bytes());
        self
    }

    /// Appends 32-bit instructions.
    pub fn is(&mut self, ws: &[u32]) -> &mut Prog {
        for w in ws {
            self.i(*w);
        }
        self
    }

    /// Appends a 16-bit instruction.
    pub fn c(&mut self, h: u16) -> &mut Prog {
        self.bytes.extend_from_slice(&h.to_le_bytes());
        self
    }

    /// Byte length so far (the offset of the next instruction).
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A program of 32-bit instructions.
pub fn prog(ws: &[u32]) -> Prog {
    let mut p = Prog::new();
    p.is(ws);
    p
}

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

pub const RAM_BASE: u64 = 0x8000_0000;
pub const RAM_SIZE: u64 = 4 << 20;
pub const MMIO_BASE: u64 = 0x1000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
/// An MMIO store here ends a test program (see [`Vm::run_done`]).
pub const DONE: u64 = MMIO_BASE + 0xff8;
/// Where [`Vm::code`] puts programs.
pub const CODE: u64 = RAM_BASE;
/// M-mode trap handler installed by [`Vm::new`]: a single `wfi`.
pub const TRAP: u64 = RAM_BASE + 0x30_0000;
/// S-mode trap handler installed by [`Vm::new`]: a single `wfi`.
pub const STRAP: u64 = RAM_BASE + 0x30_1000;
/// A 64 KiB scratch data area.
pub const DATA: u64 = RAM_BASE + 0x20_0000;
/// Address nothing is mapped at.
pub const UNMAPPED: u64 = 0x4000_0000;

/// A trap as recorded in the CSRs of the handling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trap {
    pub cause: u64,
    pub epc: u64,
    pub tval: u64,
}

/// One hart over a fresh guest memory: RAM_SIZE bytes of RAM at RAM_BASE and an MMIO range.
pub struct Vm {
    pub mem: Arc<GuestMemory>,
    pub hart: Hart,
    /// The pc after the final `wfi` of the program loaded by [`Vm::code`].
    pub end: u64,
}

pub fn new_memory() -> Arc<GuestMemory> {
    GuestMemory::new(
        &[RamRange {
            base: RAM_BASE,
            size: RAM_SIZE,
        }],
        &[MmioRange {
            base: MMIO_BASE,
            size: MMIO_SIZE,
        }],
    )
    .expect("guest memory")
}

impl Default for Vm {
    fn default() -> Self {
        Self::new()
    }
}

impl Vm {
    pub fn new() -> Vm {
        Vm::with_config(HartConfig::default())
    }

    /// A hart in `cfg.start_mode` at pc CODE, with mtvec = TRAP and stvec = STRAP (each a
    /// `wfi`), and t6 = DONE.
    pub fn with_config(cfg: HartConfig) -> Vm {
        let mem = new_memory();
        let mut hart = Hart::new(mem.clone(), cfg);
        mem.write_u32(TRAP, wfi()).unwrap();
        mem.write_u32(STRAP, wfi()).unwrap();
        assert!(hart.set_csr(MTVEC as u16, TRAP));
        assert!(hart.set_csr(STVEC as u16, STRAP));
        hart.set_pc(CODE);
        hart.set_reg(T6 as usize, DONE);
        Vm { mem, hart, end: 0 }
    }

    /// Writes `p` at `addr`.
    pub fn load(&mut self, addr: u64, p: &Prog) {
        self.mem.write(addr, &p.bytes).expect("program fits in RAM");
    }

    /// Writes `p` followed by a `wfi` at CODE and records the pc after that `wfi` as the end.
    pub fn code(&mut self, p: &Prog) {
        let mut p = p.clone();
        p.i(wfi());
        self.load(CODE, &p);
        self.end = CODE + p.len();
    }

    /// [`Vm::code`] of 32-bit instructions.
    pub fn code32(&mut self, ws: &[u32]) {
        self.code(&prog(ws));
    }

    pub fn run(&mut self) -> Exit {
        self.hart.run(10_000_000)
    }

    /// Describes the hart for failure messages.
    pub fn state(&self) -> String {
        format!(
            "pc={:#x} prv={:?} mcause={:#x} mepc={:#x} mtval={:#x} scause={:#x} sepc={:#x} stval={:#x}",
            self.hart.pc(),
            self.hart.priv_mode(),
            self.csr(MCAUSE),
            self.csr(MEPC),
            self.csr(MTVAL),
            self.csr(SCAUSE),
            self.csr(SEPC),
            self.csr(STVAL),
        )
    }

    /// Runs the program loaded by [`Vm::code`] and asserts it reached its final `wfi`.
    pub fn run_ok(&mut self) {
        let e = self.run();
        assert!(
            e == Exit::Wfi && self.hart.pc() == self.end,
            "expected the program to end at {:#x}; got {e:?}, {}",
            self.end,
            self.state()
        );
    }

    /// Runs until the M-mode handler's `wfi` and returns the trap.
    pub fn run_trap(&mut self) -> Trap {
        let e = self.run();
        assert!(
            e == Exit::Wfi && self.hart.pc() == TRAP + 4,
            "expected a trap to M-mode; got {e:?}, {}",
            self.state()
        );
        self.mtrap()
    }

    /// Runs until the S-mode handler's `wfi` and returns the trap.
    pub fn run_strap(&mut self) -> Trap {
        let e = self.run();
        assert!(
            e == Exit::Wfi && self.hart.pc() == STRAP + 4,
            "expected a trap to S-mode; got {e:?}, {}",
            self.state()
        );
        self.strap()
    }

    /// Runs until a store to DONE.
    pub fn run_done(&mut self) {
        let e = self.run();
        assert!(
            matches!(e, Exit::MmioWrite { addr: DONE, .. }),
            "expected a store to DONE; got {e:?}, {}",
            self.state()
        );
    }

    pub fn mtrap(&self) -> Trap {
        Trap {
            cause: self.csr(MCAUSE),
            epc: self.csr(MEPC),
            tval: self.csr(MTVAL),
        }
    }

    pub fn strap(&self) -> Trap {
        Trap {
            cause: self.csr(SCAUSE),
            epc: self.csr(SEPC),
            tval: self.csr(STVAL),
        }
    }

    pub fn x(&self, r: u32) -> u64 {
        self.hart.reg(r as usize)
    }

    pub fn set_x(&mut self, r: u32, v: u64) {
        self.hart.set_reg(r as usize, v);
    }

    pub fn f(&self, r: u32) -> u64 {
        self.hart.freg(r as usize)
    }

    pub fn set_f(&mut self, r: u32, v: u64) {
        self.hart.set_freg(r as usize, v);
    }

    pub fn csr(&self, n: u32) -> u64 {
        self.hart
            .csr(n as u16)
            .unwrap_or_else(|| panic!("CSR {n:#x} does not exist"))
    }

    pub fn set_csr(&mut self, n: u32, v: u64) {
        assert!(self.hart.set_csr(n as u16, v), "CSR {n:#x} write failed");
    }

    pub fn r64(&self, a: u64) -> u64 {
        self.mem.read_u64(a).unwrap()
    }

    pub fn r32(&self, a: u64) -> u32 {
        self.mem.read_u32(a).unwrap()
    }

    pub fn w64(&self, a: u64, v: u64) {
        self.mem.write_u64(a, v).unwrap()
    }

    pub fn w32(&self, a: u64, v: u32) {
        self.mem.write_u32(a, v).unwrap()
    }

    pub fn read(&self, a: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.mem.read(a, &mut b).unwrap();
        b
    }
}

/// Interrupt cause value as mcause/scause show it.
pub fn irq_cause(n: u64) -> u64 {
    n | (1 << 63)
}
