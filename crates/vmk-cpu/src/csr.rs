//! Control and status registers, traps, interrupts and privilege changes.

use crate::csr_addr;
use crate::{Exit, FatalError, Hart, PrivMode, TLB_GEN_MAX};
use std::sync::atomic::Ordering;

// mstatus fields.
pub(crate) const MS_SIE: u64 = 1 << 1;
pub(crate) const MS_MIE: u64 = 1 << 3;
pub(crate) const MS_SPIE: u64 = 1 << 5;
pub(crate) const MS_MPIE: u64 = 1 << 7;
pub(crate) const MS_SPP: u64 = 1 << 8;
pub(crate) const MS_MPP: u64 = 3 << 11;
pub(crate) const MS_FS: u64 = 3 << 13;
pub(crate) const MS_MPRV: u64 = 1 << 17;
pub(crate) const MS_SUM: u64 = 1 << 18;
pub(crate) const MS_MXR: u64 = 1 << 19;
pub(crate) const MS_TVM: u64 = 1 << 20;
pub(crate) const MS_TW: u64 = 1 << 21;
pub(crate) const MS_TSR: u64 = 1 << 22;
const MS_UXL_SXL: u64 = (2 << 32) | (2 << 34);
const MS_SD: u64 = 1 << 63;

const MSTATUS_WMASK: u64 = MS_SIE
    | MS_MIE
    | MS_SPIE
    | MS_MPIE
    | MS_SPP
    | MS_MPP
    | MS_FS
    | MS_MPRV
    | MS_SUM
    | MS_MXR
    | MS_TVM
    | MS_TW
    | MS_TSR;
const SSTATUS_MASK: u64 = MS_SIE | MS_SPIE | MS_SPP | MS_FS | MS_SUM | MS_MXR;

/// Interrupt bits: S-level ones can be delegated and are software-writable in mip.
const S_INTS: u64 = (1 << 1) | (1 << 5) | (1 << 9);
const ALL_INTS: u64 = 0xaaa;
/// Exceptions that medeleg can delegate (not ECALL from M, not reserved causes).
const DELEGABLE_EXC: u64 = 0xb3ff;

/// RV64 IMAFDC + S + U.
pub(crate) const MISA: u64 = (2 << 62)
    | (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 8)
    | (1 << 12)
    | (1 << 18)
    | (1 << 20);

/// Interrupt priority order of the privileged spec.
const IRQ_PRIORITY: [u64; 6] = [11, 3, 7, 9, 1, 5];

pub(crate) mod cause {
    pub const FETCH_ACCESS: u64 = 1;
    pub const ILLEGAL: u64 = 2;
    pub const BREAKPOINT: u64 = 3;
    pub const LOAD_MISALIGNED: u64 = 4;
    pub const LOAD_ACCESS: u64 = 5;
    pub const STORE_MISALIGNED: u64 = 6;
    pub const STORE_ACCESS: u64 = 7;
    pub const ECALL_U: u64 = 8;
    pub const FETCH_PAGE: u64 = 12;
    pub const LOAD_PAGE: u64 = 13;
    pub const STORE_PAGE: u64 = 15;
}

fn cause_name(cause: u64, interrupt: bool) -> &'static str {
    if interrupt {
        return "interrupt";
    }
    match cause {
        0 => "instruction address misaligned",
        1 => "instruction access fault",
        2 => "illegal instruction",
        3 => "breakpoint",
        4 => "load address misaligned",
        5 => "load access fault",
        6 => "store/AMO address misaligned",
        7 => "store/AMO access fault",
        8 => "ecall from U-mode",
        9 => "ecall from S-mode",
        11 => "ecall from M-mode",
        12 => "instruction page fault",
        13 => "load page fault",
        15 => "store/AMO page fault",
        _ => "exception",
    }
}

/// Error of a CSR access: the instruction is illegal.
pub(crate) struct CsrIllegal;

impl Hart {
    pub(crate) fn fs_off(&self) -> bool {
        self.mstatus & MS_FS == 0
    }

    #[inline]
    pub(crate) fn set_fs_dirty(&mut self) {
        self.mstatus |= MS_FS;
    }

    pub(crate) fn mip(&self) -> u64 {
        self.mip_sw | self.shared.lines.load(Ordering::SeqCst)
    }

    /// Privilege used for loads and stores (MPRV makes M-mode use MPP's).
    fn data_priv(&self) -> u64 {
        if self.prv == PrivMode::Machine && self.mstatus & MS_MPRV != 0 {
            (self.mstatus >> 11) & 3
        } else {
            self.prv as u64
        }
    }

    pub(crate) fn update_tags(&mut self) {
        self.dtag = (self.tlb_gen << 2) | self.data_priv();
        self.ftag = (self.tlb_gen << 2) | self.prv as u64;
    }

    /// Drops every cached translation (software TLB and jump cache).
    pub(crate) fn flush_tlb(&mut self) {
        self.tlb_gen += 1;
        if self.tlb_gen > TLB_GEN_MAX {
            self.tlb.clear();
            self.tlb_gen = 1;
        }
        self.update_tags();
        self.cache.invalidate_jc();
    }

    pub(crate) fn set_prv(&mut self, p: PrivMode) {
        self.prv = p;
        self.update_tags();
        self.local_attention = true;
    }

    /// The highest-priority interrupt that is pending, enabled and not masked.
    pub(crate) fn pending_interrupt(&self) -> Option<u64> {
        let pending = self.mip() & self.mie;
        if pending == 0 {
            return None;
        }
        let m_enabled = self.prv < PrivMode::Machine || self.mstatus & MS_MIE != 0;
        let s_enabled = self.prv < PrivMode::Supervisor
            || (self.prv == PrivMode::Supervisor && self.mstatus & MS_SIE != 0);
        let m = if m_enabled {
            pending & !self.mideleg
        } else {
            0
        };
        let s = if s_enabled { pending & self.mideleg } else { 0 };
        let take = if m != 0 { m } else { s };
        IRQ_PRIORITY.iter().copied().find(|c| take & (1 << c) != 0)
    }

    /// Enters the trap handler for `cause` at the current pc. Returns an exit when the guest
    /// cannot handle it.
    pub(crate) fn take_trap(&mut self, cause: u64, tval: u64, interrupt: bool) -> Option<Exit> {
        let epc = self.pc;
        // A trap retires nothing but is work: charge it to the budget, so that a guest stuck in
        // faults at its own trap vector still hands the thread back when its slice is over.
        self.budget_end = self.budget_end.saturating_sub(1);
        let deleg = if interrupt {
            self.mideleg
        } else {
            self.medeleg
        };
        self.reservation = None;
        let vectored = |tvec: u64| {
            if interrupt && tvec & 3 == 1 {
                (tvec & !3).wrapping_add(4 * cause)
            } else {
                tvec & !3
            }
        };
        // The trap that led here, for the message if this turns out to be a trap loop.
        let previous;
        if self.prv <= PrivMode::Supervisor && (deleg >> cause) & 1 != 0 {
            previous = (self.scause, self.stval, self.sepc);
            self.scause = cause | ((interrupt as u64) << 63);
            self.sepc = epc;
            self.stval = tval;
            let sie = (self.mstatus & MS_SIE) != 0;
            self.mstatus &= !(MS_SPIE | MS_SIE | MS_SPP);
            if sie {
                self.mstatus |= MS_SPIE;
            }
            if self.prv == PrivMode::Supervisor {
                self.mstatus |= MS_SPP;
            }
            self.pc = vectored(self.stvec);
            self.set_prv(PrivMode::Supervisor);
        } else {
            if self.cfg.sbi_exits {
                return Some(Exit::Fatal(FatalError::UnhandledTrap {
                    cause,
                    tval,
                    pc: epc,
                    what: cause_name(cause, interrupt),
                }));
            }
            previous = (self.mcause, self.mtval, self.mepc);
            self.mcause = cause | ((interrupt as u64) << 63);
            self.mepc = epc;
            self.mtval = tval;
            let mie = (self.mstatus & MS_MIE) != 0;
            self.mstatus &= !(MS_MPIE | MS_MIE | MS_MPP);
            if mie {
                self.mstatus |= MS_MPIE;
            }
            self.mstatus |= (self.prv as u64) << 11;
            self.pc = vectored(self.mtvec);
            self.set_prv(PrivMode::Machine);
        }
        if !interrupt
            && (cause == crate::csr::cause::FETCH_ACCESS || cause == crate::csr::cause::FETCH_PAGE)
            && self.pc == epc
        {
            let (pcause, ptval, ppc) = previous;
            let pint = pcause >> 63 != 0;
            let pcause = pcause & !(1 << 63);
            return Some(Exit::Fatal(FatalError::TrapLoop {
                cause,
                pc: epc,
                what: cause_name(cause, false),
                entered_by: format!(
                    "{} (cause {pcause}, tval {ptval:#x}) at pc {ppc:#x}",
                    cause_name(pcause, pint)
                ),
            }));
        }
        None
    }

    pub(crate) fn mret(&mut self) {
        let mpp = PrivMode::from_bits(self.mstatus >> 11);
        let mpie = self.mstatus & MS_MPIE != 0;
        self.mstatus &= !(MS_MIE | MS_MPP);
        self.mstatus |= MS_MPIE;
        if mpie {
            self.mstatus |= MS_MIE;
        }
        if mpp != PrivMode::Machine {
            self.mstatus &= !MS_MPRV;
        }
        self.pc = self.mepc;
        self.set_prv(mpp);
    }

    pub(crate) fn sret(&mut self) {
        let spp = if self.mstatus & MS_SPP != 0 {
            PrivMode::Supervisor
        } else {
            PrivMode::User
        };
        let spie = self.mstatus & MS_SPIE != 0;
        self.mstatus &= !(MS_SIE | MS_SPP | MS_MPRV);
        self.mstatus |= MS_SPIE;
        if spie {
            self.mstatus |= MS_SIE;
        }
        self.pc = self.sepc;
        self.set_prv(spp);
    }

    fn mstatus_read(&self) -> u64 {
        let mut v = self.mstatus | MS_UXL_SXL;
        if v & MS_FS == MS_FS {
            v |= MS_SD;
        }
        v
    }

    fn mstatus_write(&mut self, val: u64) {
        let old = self.mstatus;
        let mut new = (old & !MSTATUS_WMASK) | (val & MSTATUS_WMASK);
        if (new >> 11) & 3 == 2 {
            // MPP is WARL: the reserved encoding keeps the previous mode.
            new = (new & !MS_MPP) | (old & MS_MPP);
        }
        self.mstatus = new;
        if (old ^ new) & (MS_MPRV | MS_MPP | MS_SUM | MS_MXR) != 0 {
            self.flush_tlb();
        }
        self.local_attention = true;
    }

    /// Whether the counter CSR `csr` (cycle, time, instret, hpmcounterN) is accessible.
    fn counter_allowed(&self, csr: u16) -> bool {
        let bit = (csr & 0x1f) as u64;
        match self.prv {
            PrivMode::Machine => true,
            PrivMode::Supervisor => (self.mcounteren >> bit) & 1 != 0,
            PrivMode::User => {
                (self.mcounteren >> bit) & 1 != 0 && (self.scounteren >> bit) & 1 != 0
            }
        }
    }

    /// Reads a CSR without privilege checks.
    pub(crate) fn csr_read(&self, csr: u16) -> Result<u64, CsrIllegal> {
        Ok(match csr {
            csr_addr::FFLAGS => self.fflags,
            csr_addr::FRM => self.frm,
            csr_addr::FCSR => (self.frm << 5) | self.fflags,
            csr_addr::CYCLE | csr_addr::MCYCLE => self.instret.wrapping_add(self.cycle_offset),
            csr_addr::TIME => self.time(),
            csr_addr::INSTRET | csr_addr::MINSTRET => self.instret,
            0xc03..=0xc1f | 0xb03..=0xb1f | 0x323..=0x33f => 0,
            csr_addr::SSTATUS => {
                self.mstatus_read() & (SSTATUS_MASK | MS_UXL_SXL | MS_SD) & !(3 << 34)
            }
            csr_addr::SIE => self.mie & self.mideleg,
            csr_addr::STVEC => self.stvec,
            csr_addr::SCOUNTEREN => self.scounteren,
            csr_addr::SENVCFG => self.senvcfg,
            csr_addr::SSCRATCH => self.sscratch,
            csr_addr::SEPC => self.sepc,
            csr_addr::SCAUSE => self.scause,
            csr_addr::STVAL => self.stval,
            csr_addr::SIP => self.mip() & self.mideleg,
            csr_addr::SATP => self.satp,
            csr_addr::MSTATUS => self.mstatus_read(),
            csr_addr::MISA => crate::csr::MISA,
            csr_addr::MEDELEG => self.medeleg,
            csr_addr::MIDELEG => self.mideleg,
            csr_addr::MIE => self.mie,
            csr_addr::MTVEC => self.mtvec,
            csr_addr::MCOUNTEREN => self.mcounteren,
            csr_addr::MENVCFG => self.menvcfg,
            csr_addr::MCOUNTINHIBIT => self.mcountinhibit,
            csr_addr::MSCRATCH => self.mscratch,
            csr_addr::MEPC => self.mepc,
            csr_addr::MCAUSE => self.mcause,
            csr_addr::MTVAL => self.mtval,
            csr_addr::MIP => self.mip(),
            0x3a0..=0x3af => {
                let n = (csr - 0x3a0) as usize;
                if n % 2 == 1 {
                    return Err(CsrIllegal);
                }
                self.pmpcfg[n / 2]
            }
            0x3b0..=0x3ef => self.pmpaddr[(csr - 0x3b0) as usize],
            0xf11..=0xf13 | csr_addr::MCONFIGPTR => 0,
            csr_addr::MHARTID => self.cfg.hart_id,
            _ => return Err(CsrIllegal),
        })
    }

    /// Writes a CSR without privilege checks.
    pub(crate) fn csr_write(&mut self, csr: u16, v: u64) -> Result<(), CsrIllegal> {
        match csr {
            csr_addr::FFLAGS => {
                self.fflags = v & 0x1f;
                self.set_fs_dirty();
            }
            csr_addr::FRM => {
                self.frm = v & 7;
                self.set_fs_dirty();
            }
            csr_addr::FCSR => {
                self.fflags = v & 0x1f;
                self.frm = (v >> 5) & 7;
                self.set_fs_dirty();
            }
            csr_addr::MCYCLE => self.cycle_offset = v.wrapping_sub(self.instret),
            csr_addr::MINSTRET => {
                let delta = v.wrapping_sub(self.instret);
                // Keep cycle unchanged while instret moves.
                self.cycle_offset = self.cycle_offset.wrapping_sub(delta);
                self.budget_end = self.budget_end.wrapping_add(delta);
                self.instret = v;
            }
            0xb03..=0xb1f | 0x323..=0x33f => {}
            csr_addr::SSTATUS => {
                let m = (self.mstatus & !SSTATUS_MASK) | (v & SSTATUS_MASK);
                self.mstatus_write(m);
            }
            csr_addr::SIE => {
                self.mie = (self.mie & !self.mideleg) | (v & self.mideleg);
                self.local_attention = true;
            }
            csr_addr::STVEC => {
                if v & 3 < 2 {
                    self.stvec = v;
                }
            }
            csr_addr::SCOUNTEREN => self.scounteren = v & 0xffff_ffff,
            csr_addr::SENVCFG => self.senvcfg = v & 1,
            csr_addr::SSCRATCH => self.sscratch = v,
            csr_addr::SEPC => self.sepc = v & !1,
            csr_addr::SCAUSE => self.scause = v,
            csr_addr::STVAL => self.stval = v,
            csr_addr::SIP => {
                let m = self.mideleg & (1 << 1);
                self.mip_sw = (self.mip_sw & !m) | (v & m);
                self.local_attention = true;
            }
            csr_addr::SATP => {
                let mode = v >> 60;
                if mode == 0 || mode == 8 || mode == 9 {
                    // ASIDs are accepted (16 bits) but the TLB is not tagged with them: any
                    // satp write flushes it.
                    self.satp = v;
                    self.flush_tlb();
                }
            }
            csr_addr::MSTATUS => self.mstatus_write(v),
            csr_addr::MISA => {}
            csr_addr::MEDELEG => self.medeleg = v & DELEGABLE_EXC,
            csr_addr::MIDELEG => {
                self.mideleg = v & S_INTS;
                self.local_attention = true;
            }
            csr_addr::MIE => {
                self.mie = v & ALL_INTS;
                self.local_attention = true;
            }
            csr_addr::MTVEC => {
                if v & 3 < 2 {
                    self.mtvec = v;
                }
            }
            csr_addr::MCOUNTEREN => self.mcounteren = v & 0xffff_ffff,
            csr_addr::MENVCFG => self.menvcfg = v & 1,
            csr_addr::MCOUNTINHIBIT => self.mcountinhibit = v & 0xffff_fffd,
            csr_addr::MSCRATCH => self.mscratch = v,
            csr_addr::MEPC => self.mepc = v & !1,
            csr_addr::MCAUSE => self.mcause = v,
            csr_addr::MTVAL => self.mtval = v,
            csr_addr::MIP => {
                self.mip_sw = (self.mip_sw & !S_INTS) | (v & S_INTS);
                self.local_attention = true;
            }
            0x3a0..=0x3af => {
                let n = (csr - 0x3a0) as usize;
                if n % 2 == 1 {
                    return Err(CsrIllegal);
                }
                // Reserved R=0,W=1 combinations are WARL-cleared; PMP itself is not enforced.
                let mut bytes = v.to_le_bytes();
                for b in &mut bytes {
                    if *b & 3 == 2 {
                        *b &= !3;
                    }
                }
                self.pmpcfg[n / 2] = u64::from_le_bytes(bytes) & 0x9f9f_9f9f_9f9f_9f9f;
            }
            0x3b0..=0x3ef => self.pmpaddr[(csr - 0x3b0) as usize] = v & ((1 << 54) - 1),
            _ => return Err(CsrIllegal),
        }
        Ok(())
    }

    /// Executes a Zicsr instruction: privilege checks, read, write. Returns the old value.
    pub(crate) fn csr_op(
        &mut self,
        csr: u16,
        write: bool,
        compute: impl FnOnce(u64) -> u64,
    ) -> Result<u64, CsrIllegal> {
        let min_priv = (csr >> 8) & 3;
        if (self.prv as u16) < min_priv {
            return Err(CsrIllegal);
        }
        if write && (csr >> 10) & 3 == 3 {
            return Err(CsrIllegal);
        }
        match csr {
            0x001..=0x003 if self.fs_off() => return Err(CsrIllegal),
            0xc00..=0xc1f if !self.counter_allowed(csr) => return Err(CsrIllegal),
            0x180 if self.prv == PrivMode::Supervisor && self.mstatus & MS_TVM != 0 => {
                return Err(CsrIllegal)
            }
            _ => {}
        }
        let old = self.csr_read(csr)?;
        if write {
            self.csr_write(csr, compute(old))?;
        }
        Ok(old)
    }
}
