//! An ns16550a UART (16550A with 16-byte FIFOs), modelled on QEMU's `hw/char/serial.c`.
//!
//! Registers (byte registers at offsets 0..=7, `reg-shift` 0; any access size is accepted and
//! addresses the byte register at its offset, as QEMU's MMIO serial does):
//!
//! | offset | DLAB=0 read | DLAB=0 write | DLAB=1 |
//! |---|---|---|---|
//! | 0 | RBR | THR | DLL |
//! | 1 | IER | IER | DLM |
//! | 2 | IIR | FCR | (IIR / FCR) |
//! | 3 | LCR | LCR | |
//! | 4 | MCR | MCR | |
//! | 5 | LSR | (ignored) | |
//! | 6 | MSR | (ignored) | |
//! | 7 | SCR | SCR | |
//!
//! Transmission is instantaneous: a byte written to THR goes to the output sink at once, so
//! LSR.THRE and LSR.TEMT are always set and the THRE interrupt re-arms after every write.
//! Received bytes wait in a 16-byte FIFO (one byte with the FIFO disabled); host input that
//! does not fit waits in [`UartInput::push_input`] until the guest reads, nothing is dropped.
//!
//! Interrupts (IIR priorities, highest first): receiver line status (an overrun, only possible
//! in loopback), received data available, transmit holding register empty, modem status (MSR
//! never changes here, so never). With the FIFO enabled, data below the trigger level is
//! reported at once as a character timeout (IIR 0xC): the modelled timeout is zero character
//! times, which the 8250 driver treats like a data-available interrupt.
//!
//! Loopback (MCR bit 4): THR bytes are received instead of sent, MSR reflects MCR's outputs
//! (what the 8250 driver's autoconfig checks), and host input waits until loopback ends.
//! Linux declares a `ns16550a` device-tree node with `UPF_FIXED_TYPE`, so it skips autoconfig
//! and goes straight to `serial8250_do_startup`: the LSR != 0xff check, the THRE re-assertion
//! test (IER.THRI 1 → 0 → 1 must raise THRE each time) and the TX-enable test; all pass here.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{lock, IrqLine, MmioDevice};

/// Depth of the receive FIFO.
pub const UART_RX_FIFO_LEN: usize = 16;

// Register offsets.
const RBR_THR_DLL: u64 = 0;
const IER_DLM: u64 = 1;
const IIR_FCR: u64 = 2;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;
const SCR: u64 = 7;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IER_RLSI: u8 = 0x04;
const IER_MSI: u8 = 0x08;

const IIR_NO_INT: u8 = 0x01;
const IIR_MSI: u8 = 0x00;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_RLSI: u8 = 0x06;
const IIR_CTI: u8 = 0x0c;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_FE: u8 = 0x01;
const FCR_RFR: u8 = 0x02;
const FCR_XFR: u8 = 0x04;
/// The FCR bits that stick (trigger level, DMA mode, FIFO enable).
const FCR_STICKY: u8 = 0xc9;

const LCR_DLAB: u8 = 0x80;

const MCR_LOOP: u8 = 0x10;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_BI: u8 = 0x10;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const LSR_INT_ANY: u8 = 0x1e;

const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_DCD: u8 = 0x80;
const MSR_ANY_DELTA: u8 = 0x0f;

/// Counters of a UART.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UartStats {
    /// Bytes written to THR and sent to the output sink.
    pub tx_bytes: u64,
    /// Output sink write errors (the byte is lost to the host, the guest does not notice).
    pub tx_errors: u64,
    /// Bytes accepted from the host into the receive FIFO.
    pub rx_bytes: u64,
    /// Bytes the guest read from RBR while data was available.
    pub rx_read: u64,
    /// Bytes lost to receive overruns (loopback writes into a full FIFO: the guest's doing,
    /// and flagged to it in LSR.OE).
    pub rx_overruns: u64,
    /// Bytes the guest discarded unread by resetting the receive FIFO (FCR).
    pub rx_flushed: u64,
    /// Break conditions sent by the host.
    pub rx_breaks: u64,
    /// Accesses beyond register 7.
    pub bad_accesses: u64,
}

struct State {
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    /// LSR error bits (OE, BI); DR, THRE and TEMT are derived.
    lsr_err: u8,
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// The last byte received: what RBR reads when empty with the FIFO disabled.
    rbr: u8,
    rx: VecDeque<u8>,
    /// Index in `rx` of a received break (a NUL byte flagged with LSR.BI when it reaches the
    /// top of the FIFO, as a real 16550 does). One pending break at a time is enough: the
    /// host sends a break before a SysRq key.
    rx_break: Option<usize>,
    rx_trigger: usize,
    thr_ipending: bool,
    irq_level: bool,
    out: Box<dyn Write + Send>,
    irq: Option<Arc<dyn IrqLine>>,
    input_closed: bool,
    stats: UartStats,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when receive space may have become free (or input was closed).
    rx_space: Condvar,
}

/// An ns16550a UART. Register it on the bus as `Arc<Mutex<Uart>>`; feed it host input from any
/// thread through [`Uart::input`].
pub struct Uart {
    shared: Arc<Shared>,
}

/// The host side of a UART's receive line: cheap to clone, usable from a stdin thread.
#[derive(Clone)]
pub struct UartInput {
    shared: Arc<Shared>,
}

impl State {
    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_FE != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            UART_RX_FIFO_LEN
        } else {
            1
        }
    }

    /// Room for host input: none while in loopback (the receive pin is disconnected).
    fn host_rx_space(&self) -> usize {
        if self.loopback() {
            0
        } else {
            self.rx_capacity().saturating_sub(self.rx.len())
        }
    }

    /// LSR error bits: the sticky ones plus BI while a break is at the top of the FIFO.
    fn line_errors(&self) -> u8 {
        let bi = if self.rx_break == Some(0) { LSR_BI } else { 0 };
        self.lsr_err | bi
    }

    fn lsr(&self) -> u8 {
        let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
        dr | self.line_errors() | LSR_THRE | LSR_TEMT
    }

    fn pop_rx(&mut self) -> Option<u8> {
        let b = self.rx.pop_front()?;
        self.rx_break = match self.rx_break {
            Some(0) | None => None,
            Some(i) => Some(i - 1),
        };
        Some(b)
    }

    fn clear_rx(&mut self) {
        self.rx.clear();
        self.rx_break = None;
    }

    /// The interrupt identification (IIR bits 3:0), by priority.
    fn iir_id(&self) -> u8 {
        if self.ier & IER_RLSI != 0 && self.line_errors() & LSR_INT_ANY != 0 {
            IIR_RLSI
        } else if self.ier & IER_RDI != 0 && !self.rx.is_empty() {
            if self.fifo_enabled() && self.rx.len() < self.rx_trigger {
                IIR_CTI
            } else {
                IIR_RDI
            }
        } else if self.ier & IER_THRI != 0 && self.thr_ipending {
            IIR_THRI
        } else if self.ier & IER_MSI != 0 && self.msr & MSR_ANY_DELTA != 0 {
            IIR_MSI
        } else {
            IIR_NO_INT
        }
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fifo_enabled() {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        self.iir_id() | fifo
    }

    fn update_irq(&mut self) {
        let level = self.iir_id() != IIR_NO_INT;
        if level != self.irq_level {
            self.irq_level = level;
            if let Some(irq) = &self.irq {
                irq.set_level(level);
            }
        }
    }

    /// A byte arriving at the receiver from the loopback path: an overrun if there is no room.
    fn receive_loopback(&mut self, b: u8) {
        if self.rx.len() < self.rx_capacity() {
            self.rx.push_back(b);
        } else {
            self.lsr_err |= LSR_OE;
            self.stats.rx_overruns += 1;
            if !self.fifo_enabled() {
                // Without a FIFO the holding register is overwritten.
                self.pop_rx();
                self.rx.push_back(b);
            }
        }
        self.rbr = b;
    }

    fn transmit(&mut self, b: u8) {
        if self.loopback() {
            self.receive_loopback(b);
        } else {
            self.stats.tx_bytes += 1;
            if self
                .out
                .write_all(&[b])
                .and_then(|()| self.out.flush())
                .is_err()
            {
                self.stats.tx_errors += 1;
            }
        }
        // The byte left at once: the holding register is empty again.
        self.thr_ipending = true;
    }

    /// Returns whether receive space may have been freed.
    fn write_reg(&mut self, reg: u64, val: u8) -> bool {
        let dlab = self.lcr & LCR_DLAB != 0;
        let mut freed = false;
        match reg {
            RBR_THR_DLL if dlab => self.dll = val,
            RBR_THR_DLL => self.transmit(val),
            IER_DLM if dlab => self.dlm = val,
            IER_DLM => {
                let new = val & 0x0f;
                let changed = (self.ier ^ new) & 0x0f;
                self.ier = new;
                // Turning THRI on raises THRE if the holding register is empty (always), even
                // if an IIR read had cleared it before; turning it off forgets it.
                if changed & IER_THRI != 0 {
                    self.thr_ipending = new & IER_THRI != 0;
                }
            }
            IIR_FCR => {
                let mut val = val;
                if (val ^ self.fcr) & FCR_FE != 0 {
                    val |= FCR_RFR | FCR_XFR;
                }
                if val & FCR_RFR != 0 {
                    self.stats.rx_flushed += self.rx.len() as u64;
                    self.clear_rx();
                    self.lsr_err &= !LSR_BI;
                    freed = true;
                }
                if val & FCR_XFR != 0 {
                    self.thr_ipending = true;
                }
                self.fcr = val & FCR_STICKY;
                self.rx_trigger = match val >> 6 {
                    0 => 1,
                    1 => 4,
                    2 => 8,
                    _ => 14,
                };
            }
            LCR => self.lcr = val,
            MCR => {
                let was_loop = self.loopback();
                self.mcr = val & 0x1f;
                freed = was_loop && !self.loopback();
            }
            LSR | MSR => {}
            SCR => self.scr = val,
            _ => self.stats.bad_accesses += 1,
        }
        self.update_irq();
        freed
    }

    /// Returns the value and whether receive space may have been freed.
    fn read_reg(&mut self, reg: u64) -> (u8, bool) {
        let dlab = self.lcr & LCR_DLAB != 0;
        let mut freed = false;
        let v = match reg {
            RBR_THR_DLL if dlab => self.dll,
            RBR_THR_DLL => {
                let v = match self.pop_rx() {
                    Some(b) => {
                        self.stats.rx_read += 1;
                        freed = true;
                        b
                    }
                    None if self.fifo_enabled() => 0,
                    None => self.rbr,
                };
                if self.rx.is_empty() {
                    self.lsr_err &= !LSR_BI;
                }
                v
            }
            IER_DLM if dlab => self.dlm,
            IER_DLM => self.ier,
            IIR_FCR => {
                let v = self.iir();
                if v & 0x0f == IIR_THRI {
                    self.thr_ipending = false;
                }
                v
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let v = self.lsr();
                self.lsr_err &= !(LSR_BI | LSR_OE);
                v
            }
            MSR if self.loopback() => {
                // Outputs wired to inputs: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD.
                ((self.mcr & 0x0c) << 4) | ((self.mcr & 0x02) << 3) | ((self.mcr & 0x01) << 5)
            }
            MSR => {
                let v = self.msr;
                self.msr &= !MSR_ANY_DELTA;
                v
            }
            SCR => self.scr,
            _ => {
                self.stats.bad_accesses += 1;
                0
            }
        };
        self.update_irq();
        (v, freed)
    }
}

impl Uart {
    /// A UART in its reset state that writes transmitted bytes to `out` and drives `irq` (if
    /// any; typically a [`crate::PlicSource`]).
    pub fn new(out: Box<dyn Write + Send>, irq: Option<Arc<dyn IrqLine>>) -> Self {
        let state = State {
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0x08, // OUT2, as QEMU resets it
            lsr_err: 0,
            msr: MSR_DCD | MSR_DSR | MSR_CTS,
            scr: 0,
            dll: 0x0c,
            dlm: 0,
            rbr: 0,
            rx: VecDeque::with_capacity(UART_RX_FIFO_LEN),
            rx_break: None,
            rx_trigger: 1,
            thr_ipending: false,
            irq_level: false,
            out,
            irq,
            input_closed: false,
            stats: UartStats::default(),
        };
        Uart {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                rx_space: Condvar::new(),
            }),
        }
    }

    /// The host side of the receive line.
    pub fn input(&self) -> UartInput {
        UartInput {
            shared: self.shared.clone(),
        }
    }

    /// Same as `self.input().push_input(data)`.
    pub fn push_input(&self, data: &[u8]) -> usize {
        self.input().push_input(data)
    }

    pub fn stats(&self) -> UartStats {
        lock(&self.shared.state).stats
    }

    /// Bytes waiting in the receive FIFO.
    pub fn rx_queued(&self) -> usize {
        lock(&self.shared.state).rx.len()
    }

    /// The level the UART drives on its interrupt line.
    pub fn irq_level(&self) -> bool {
        lock(&self.shared.state).irq_level
    }

    /// Replaces the output sink (e.g. to capture a boot log).
    pub fn set_output(&self, out: Box<dyn Write + Send>) {
        lock(&self.shared.state).out = out;
    }
}

impl Drop for Uart {
    fn drop(&mut self) {
        // Wake host threads blocked in push_input: nobody will read their bytes any more.
        self.input().close();
    }
}

impl UartInput {
    /// Puts as much of `data` into the receive FIFO as fits now and returns how many bytes
    /// that was (0 while the FIFO is full, in loopback, or after [`UartInput::close`]).
    pub fn try_push_input(&self, data: &[u8]) -> usize {
        let mut s = lock(&self.shared.state);
        Self::accept(&mut s, data)
    }

    /// Puts all of `data` into the receive FIFO, waiting for the guest to make room as
    /// needed. Returns the number of bytes accepted: `data.len()`, or fewer if the input was
    /// closed (or the UART dropped) meanwhile.
    pub fn push_input(&self, data: &[u8]) -> usize {
        self.push_inner(data, None)
    }

    /// Like [`UartInput::push_input`], but gives up waiting after `timeout`.
    pub fn push_input_timeout(&self, data: &[u8], timeout: Duration) -> usize {
        self.push_inner(data, Some(Instant::now() + timeout))
    }

    /// Sends a break condition: the guest receives a NUL byte flagged with LSR.BI (Linux
    /// treats a break on its serial console as the start of a magic SysRq sequence). Returns
    /// false, sending nothing, if the FIFO is full, a break is already pending, or input is
    /// closed.
    pub fn send_break(&self) -> bool {
        let mut s = lock(&self.shared.state);
        if s.input_closed || s.rx_break.is_some() || s.host_rx_space() == 0 {
            return false;
        }
        s.rx_break = Some(s.rx.len());
        s.rx.push_back(0);
        s.rbr = 0;
        s.stats.rx_breaks += 1;
        s.update_irq();
        true
    }

    /// Stops accepting input and wakes every thread waiting in `push_input`.
    pub fn close(&self) {
        lock(&self.shared.state).input_closed = true;
        self.shared.rx_space.notify_all();
    }

    fn push_inner(&self, data: &[u8], deadline: Option<Instant>) -> usize {
        let mut done = 0;
        let mut s = lock(&self.shared.state);
        loop {
            done += Self::accept(&mut s, data.get(done..).unwrap_or_default());
            if done >= data.len() || s.input_closed {
                return done;
            }
            s = match deadline {
                None => self
                    .shared
                    .rx_space
                    .wait(s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return done;
                    }
                    self.shared
                        .rx_space
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn accept(s: &mut State, data: &[u8]) -> usize {
        if s.input_closed {
            return 0;
        }
        let n = s.host_rx_space().min(data.len());
        if n == 0 {
            return 0;
        }
        let bytes = data.get(..n).unwrap_or_default();
        s.rx.extend(bytes);
        if let Some(&last) = bytes.last() {
            s.rbr = last;
        }
        s.stats.rx_bytes += n as u64;
        s.update_irq();
        n
    }
}

impl MmioDevice for Uart {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        let mut s = lock(&self.shared.state);
        if !matches!(size, 1 | 2 | 4 | 8) {
            s.stats.bad_accesses += 1;
            return 0;
        }
        let (v, freed) = s.read_reg(offset);
        drop(s);
        if freed {
            self.shared.rx_space.notify_all();
        }
        u64::from(v)
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        let mut s = lock(&self.shared.state);
        if !matches!(size, 1 | 2 | 4 | 8) {
            s.stats.bad_accesses += 1;
            return;
        }
        let freed = s.write_reg(offset, value as u8);
        drop(s);
        if freed {
            self.shared.rx_space.notify_all();
        }
    }

    fn bad_accesses(&self) -> u64 {
        lock(&self.shared.state).stats.bad_accesses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LevelIrq;

    /// An output sink the test can read.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> (Uart, Capture, Arc<LevelIrq>) {
        let out = Capture::default();
        let irq = Arc::new(LevelIrq::new());
        let u = Uart::new(Box::new(out.clone()), Some(irq.clone()));
        (u, out, irq)
    }

    fn rd(u: &mut Uart, off: u64) -> u8 {
        u.read(off, 1) as u8
    }

    fn wr(u: &mut Uart, off: u64, v: u8) {
        u.write(off, 1, u64::from(v));
    }

    #[test]
    fn reset_state() {
        let (mut u, _, irq) = uart();
        assert_eq!(rd(&mut u, LSR), LSR_THRE | LSR_TEMT);
        assert_eq!(rd(&mut u, IIR_FCR), IIR_NO_INT);
        assert_eq!(rd(&mut u, IER_DLM), 0);
        assert_eq!(rd(&mut u, MSR), 0xb0);
        assert_eq!(rd(&mut u, MCR), 0x08);
        assert!(!irq.level());
    }

    #[test]
    fn thr_goes_to_output() {
        let (mut u, out, irq) = uart();
        for b in b"hello\n" {
            // What earlycon and the console driver do: wait for THRE|TEMT, write THR.
            assert_eq!(rd(&mut u, LSR) & 0x60, 0x60);
            wr(&mut u, RBR_THR_DLL, *b);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hello\n");
        assert_eq!(u.stats().tx_bytes, 6);
        assert!(!irq.level(), "THRI not enabled");
    }

    #[test]
    fn dlab_switches_divisor_latch() {
        let (mut u, out, _) = uart();
        wr(&mut u, IER_DLM, 0x05);
        wr(&mut u, LCR, LCR_DLAB | 0x03);
        wr(&mut u, RBR_THR_DLL, 0x01);
        wr(&mut u, IER_DLM, 0x02);
        assert_eq!(rd(&mut u, RBR_THR_DLL), 0x01);
        assert_eq!(rd(&mut u, IER_DLM), 0x02);
        wr(&mut u, LCR, 0x03);
        assert_eq!(rd(&mut u, IER_DLM), 0x05, "IER kept");
        assert_eq!(rd(&mut u, LCR), 0x03);
        assert!(
            out.0.lock().unwrap().is_empty(),
            "DLL write is no THR write"
        );
        wr(&mut u, SCR, 0x5a);
        assert_eq!(rd(&mut u, SCR), 0x5a);
    }

    #[test]
    fn break_is_a_flagged_nul_at_the_top_of_the_fifo() {
        let (mut u, _, irq) = uart();
        wr(&mut u, IIR_FCR, FCR_FE | FCR_RFR | FCR_XFR | 0x80);
        wr(&mut u, IER_DLM, IER_RDI | IER_RLSI);
        let input = u.input();
        assert_eq!(input.try_push_input(b"a"), 1);
        assert!(input.send_break());
        assert!(!input.send_break(), "one pending break at a time");
        assert_eq!(input.try_push_input(b"s"), 1);
        // 'a' first: no BI yet.
        assert_eq!(rd(&mut u, LSR) & (LSR_BI | LSR_DR), LSR_DR);
        assert_eq!(rd(&mut u, RBR_THR_DLL), b'a');
        // The break at the top: BI with DR, a line-status interrupt, NUL data.
        assert!(irq.level());
        assert_eq!(rd(&mut u, IIR_FCR), 0xc0 | IIR_RLSI);
        assert_eq!(rd(&mut u, LSR) & (LSR_BI | LSR_DR), LSR_BI | LSR_DR);
        assert_eq!(rd(&mut u, RBR_THR_DLL), 0);
        // Then the key, without BI.
        assert_eq!(rd(&mut u, LSR) & (LSR_BI | LSR_DR), LSR_DR);
        assert_eq!(rd(&mut u, RBR_THR_DLL), b's');
        assert!(!irq.level());
        assert_eq!(u.stats().rx_breaks, 1);
        assert!(input.send_break(), "a new break once the last was read");
        wr(&mut u, IIR_FCR, FCR_FE | FCR_RFR);
        assert_eq!(rd(&mut u, LSR) & LSR_BI, 0, "FIFO reset drops the break");
    }

    #[test]
    fn rx_fifo_and_rda_interrupt() {
        let (mut u, _, irq) = uart();
        wr(&mut u, IIR_FCR, FCR_FE | FCR_RFR | FCR_XFR | 0x80); // trigger 8, as Linux sets
        wr(&mut u, IER_DLM, IER_RDI | IER_RLSI);
        assert!(!irq.level());
        let input = u.input();
        assert_eq!(input.try_push_input(b"abc"), 3);
        assert!(irq.level());
        assert_eq!(
            rd(&mut u, IIR_FCR),
            0xc0 | IIR_CTI,
            "below trigger: timeout"
        );
        assert_eq!(input.try_push_input(b"defghijk"), 8);
        assert_eq!(rd(&mut u, IIR_FCR), 0xc0 | IIR_RDI);
        let mut got = Vec::new();
        while rd(&mut u, LSR) & LSR_DR != 0 {
            got.push(rd(&mut u, RBR_THR_DLL));
        }
        assert_eq!(got, b"abcdefghijk");
        assert!(!irq.level());
        assert_eq!(rd(&mut u, IIR_FCR), 0xc0 | IIR_NO_INT);
        assert_eq!(rd(&mut u, RBR_THR_DLL), 0, "empty FIFO reads 0");
    }

    #[test]
    fn full_fifo_makes_input_wait_without_loss() {
        let (mut u, _, _) = uart();
        wr(&mut u, IIR_FCR, FCR_FE);
        let data: Vec<u8> = (0..100u8).collect();
        let input = u.input();
        assert_eq!(input.try_push_input(&data), UART_RX_FIFO_LEN);
        assert_eq!(input.try_push_input(&data), 0, "full");
        let rest = data[UART_RX_FIFO_LEN..].to_vec();
        let t = std::thread::spawn(move || input.push_input(&rest));
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < data.len() {
            assert!(Instant::now() < deadline, "input stalled at {}", got.len());
            if rd(&mut u, LSR) & LSR_DR != 0 {
                got.push(rd(&mut u, RBR_THR_DLL));
            } else {
                std::thread::yield_now();
            }
        }
        assert_eq!(t.join().unwrap(), data.len() - UART_RX_FIFO_LEN);
        assert_eq!(got, data);
        let st = u.stats();
        assert_eq!((st.rx_bytes, st.rx_read, st.rx_overruns), (100, 100, 0));
    }

    #[test]
    fn without_fifo_one_byte_at_a_time() {
        let (mut u, _, _) = uart();
        let input = u.input();
        assert_eq!(input.try_push_input(b"xy"), 1);
        assert_eq!(rd(&mut u, RBR_THR_DLL), b'x');
        assert_eq!(input.try_push_input(b"y"), 1);
        assert_eq!(rd(&mut u, RBR_THR_DLL), b'y');
        assert_eq!(rd(&mut u, LSR) & LSR_DR, 0);
    }

    #[test]
    fn push_gives_up_on_close_timeout_and_drop() {
        let (u, _, _) = uart();
        let input = u.input();
        assert_eq!(input.try_push_input(b"a"), 1);
        assert_eq!(
            input.push_input_timeout(b"bc", Duration::from_millis(20)),
            0
        );
        let i2 = input.clone();
        let t = std::thread::spawn(move || i2.push_input(b"bc"));
        std::thread::sleep(Duration::from_millis(20));
        drop(u);
        assert_eq!(t.join().unwrap(), 0);
        assert_eq!(input.try_push_input(b"z"), 0);
    }

    #[test]
    fn thre_interrupt_and_iir_read_clears_it() {
        let (mut u, _, irq) = uart();
        wr(&mut u, IER_DLM, IER_THRI);
        assert!(irq.level());
        assert_eq!(rd(&mut u, IIR_FCR), IIR_THRI);
        assert!(!irq.level(), "IIR read acknowledges THRE");
        assert_eq!(rd(&mut u, IIR_FCR), IIR_NO_INT);
        wr(&mut u, RBR_THR_DLL, b'a');
        assert!(irq.level(), "THRE again after the byte left");
        wr(&mut u, IER_DLM, 0);
        assert!(!irq.level());
    }

    #[test]
    fn iir_priorities() {
        let (mut u, _, _) = uart();
        wr(&mut u, IIR_FCR, FCR_FE);
        wr(&mut u, MCR, MCR_LOOP);
        for b in 0..17u8 {
            wr(&mut u, RBR_THR_DLL, b); // the 17th overruns
        }
        wr(&mut u, IER_DLM, IER_RDI | IER_THRI | IER_RLSI | IER_MSI);
        assert_eq!(rd(&mut u, IIR_FCR) & 0x0f, IIR_RLSI);
        assert_eq!(rd(&mut u, LSR) & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        assert_eq!(rd(&mut u, LSR) & LSR_OE, 0, "OE clears on read");
        assert_eq!(rd(&mut u, IIR_FCR) & 0x0f, IIR_RDI);
        for _ in 0..16 {
            rd(&mut u, RBR_THR_DLL);
        }
        assert_eq!(rd(&mut u, IIR_FCR) & 0x0f, IIR_THRI);
        assert_eq!(rd(&mut u, IIR_FCR) & 0x0f, IIR_NO_INT);
        assert_eq!(u.stats().rx_overruns, 1);
    }

    #[test]
    fn loopback_as_autoconfig_probes_it() {
        let (mut u, out, _) = uart();
        // serial8250 autoconfig: MCR = LOOP | OUT2 | RTS, MSR high nibble must read 0x90.
        let save = rd(&mut u, MCR);
        wr(&mut u, MCR, MCR_LOOP | 0x0a);
        assert_eq!(rd(&mut u, MSR) & 0xf0, 0x90);
        wr(&mut u, MCR, MCR_LOOP | 0x0f);
        assert_eq!(rd(&mut u, MSR), 0xf0);
        // Transmitted bytes come back and do not reach the host; host input waits.
        wr(&mut u, IIR_FCR, FCR_FE);
        wr(&mut u, RBR_THR_DLL, 0x55);
        assert_eq!(u.input().try_push_input(b"h"), 0);
        assert_eq!(rd(&mut u, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, RBR_THR_DLL), 0x55);
        wr(&mut u, MCR, save);
        assert_eq!(rd(&mut u, MSR), 0xb0);
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(u.input().try_push_input(b"h"), 1);
        // autoconfig's other probes: IER keeps only 4 bits, IIR reports the FIFO as 16550A.
        wr(&mut u, IER_DLM, 0xff);
        assert_eq!(rd(&mut u, IER_DLM), 0x0f);
        wr(&mut u, IER_DLM, 0);
        wr(&mut u, IIR_FCR, FCR_FE);
        assert_eq!(rd(&mut u, IIR_FCR) >> 6, 3);
    }

    /// The register sequence of Linux's serial8250_do_startup for a PORT_16550A port with an
    /// IRQ (what runs for a `ns16550a` device-tree node, which skips autoconfig).
    #[test]
    fn linux_8250_startup_sequence() {
        let (mut u, out, irq) = uart();
        let input = u.input();
        assert_eq!(input.try_push_input(b"junk"), 1);
        // serial8250_clear_fifos
        wr(&mut u, IIR_FCR, FCR_FE);
        wr(&mut u, IIR_FCR, FCR_FE | FCR_RFR | FCR_XFR);
        wr(&mut u, IIR_FCR, 0);
        // Clear the interrupt registers.
        rd(&mut u, LSR);
        rd(&mut u, RBR_THR_DLL);
        rd(&mut u, IIR_FCR);
        rd(&mut u, MSR);
        assert_ne!(rd(&mut u, LSR), 0xff, "LSR safety check");
        // THRE re-assertion test.
        assert_ne!(rd(&mut u, LSR) & LSR_THRE, 0);
        wr(&mut u, IER_DLM, IER_THRI);
        let iir1 = rd(&mut u, IIR_FCR);
        wr(&mut u, IER_DLM, 0);
        wr(&mut u, IER_DLM, IER_THRI);
        let iir = rd(&mut u, IIR_FCR);
        wr(&mut u, IER_DLM, 0);
        assert!(
            !((iir1 & IIR_NO_INT == 0) && (iir & IIR_NO_INT != 0)),
            "would set UART_BUG_THRE"
        );
        assert_eq!(iir1 & IIR_NO_INT, 0);
        // Initialize: 8N1, DTR|RTS|OUT2.
        wr(&mut u, LCR, 0x03);
        wr(&mut u, MCR, 0x0b);
        // TX enable test.
        wr(&mut u, IER_DLM, IER_THRI);
        let lsr = rd(&mut u, LSR);
        let iir = rd(&mut u, IIR_FCR);
        wr(&mut u, IER_DLM, 0);
        assert!(
            !(lsr & LSR_TEMT != 0 && iir & IIR_NO_INT != 0),
            "would set UART_BUG_TXEN"
        );
        // Clear again, enable RX interrupts.
        rd(&mut u, LSR);
        rd(&mut u, RBR_THR_DLL);
        rd(&mut u, IIR_FCR);
        rd(&mut u, MSR);
        wr(&mut u, IER_DLM, IER_RLSI | IER_RDI);
        // set_termios: divisor, FIFO with trigger 8.
        wr(&mut u, LCR, LCR_DLAB | 0x03);
        wr(&mut u, RBR_THR_DLL, 1);
        wr(&mut u, IER_DLM, 0);
        wr(&mut u, LCR, 0x03);
        wr(&mut u, IIR_FCR, FCR_FE | 0x80);
        assert!(!irq.level());
        // A key press: interrupt, IIR, LSR, RBR until !DR.
        assert_eq!(input.try_push_input(b"ls\r"), 3);
        assert!(irq.level());
        assert_eq!(rd(&mut u, IIR_FCR) & IIR_NO_INT, 0);
        let mut got = Vec::new();
        while rd(&mut u, LSR) & LSR_DR != 0 {
            got.push(rd(&mut u, RBR_THR_DLL));
        }
        assert_eq!(got, b"ls\r");
        assert!(!irq.level());
        // Interrupt-driven transmit: start_tx sets THRI, the handler fills the FIFO, stop_tx.
        wr(&mut u, IER_DLM, IER_RLSI | IER_RDI | IER_THRI);
        assert!(irq.level());
        assert_eq!(rd(&mut u, IIR_FCR) & 0x0f, IIR_THRI);
        for b in b"ok\n" {
            wr(&mut u, RBR_THR_DLL, *b);
        }
        wr(&mut u, IER_DLM, IER_RLSI | IER_RDI);
        assert!(!irq.level());
        assert_eq!(&*out.0.lock().unwrap(), b"ok\n");
    }

    #[test]
    fn bad_offsets_and_sizes_are_counted() {
        let (mut u, out, _) = uart();
        assert_eq!(u.read(8, 1), 0);
        assert_eq!(u.read(0xff, 1), 0);
        u.write(0x80, 1, 0x41);
        assert_eq!(u.read(LSR, 3), 0);
        u.write(RBR_THR_DLL, 0, 0x41);
        assert_eq!(MmioDevice::bad_accesses(&u), 5);
        assert!(out.0.lock().unwrap().is_empty());
        // Wider accesses address the byte register.
        u.write(RBR_THR_DLL, 4, 0xffff_ff41);
        assert_eq!(u.read(LSR, 8), 0x60);
        assert_eq!(&*out.0.lock().unwrap(), b"A");
    }

    #[test]
    fn fifo_disable_flushes_and_shrinks() {
        let (mut u, _, _) = uart();
        wr(&mut u, IIR_FCR, FCR_FE);
        assert_eq!(u.input().try_push_input(b"0123456789"), 10);
        wr(&mut u, IIR_FCR, 0);
        assert_eq!(u.rx_queued(), 0);
        assert_eq!(u.stats().rx_flushed, 10);
        assert_eq!(u.input().try_push_input(b"ab"), 1);
        assert_eq!(rd(&mut u, IIR_FCR) & 0xc0, 0);
    }
}
