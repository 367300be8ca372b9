//! Emulated devices of a vmk VM, in the style of Firecracker's small device model.
//!
//! A device is an [`MmioDevice`]: it answers loads and stores at offsets relative to its base.
//! An [`MmioBus`] maps guest physical ranges to devices; the vCPU run loop hands it the
//! `Exit::MmioRead` / `Exit::MmioWrite` exits of `vmk-cpu`. Devices raise interrupts through
//! [`IrqLine`]s, so this crate does not depend on the CPU crate: the machine implements
//! `IrqLine` for the PLIC's contexts by calling `HartHandle::set_irq`.
//!
//! Devices:
//! - [`Uart`]: an ns16550a UART (QEMU's `hw/char/serial.c` behaviour), what Linux's 8250
//!   driver and `earlycon=uart8250,mmio,0x10000000` drive.
//! - [`Plic`]: the RISC-V platform-level interrupt controller (PLIC spec 1.0.0, QEMU's
//!   `riscv,plic0`), two contexts per hart (M-mode, then S-mode).
//! - [`SifiveTest`]: QEMU virt's `sifive,test1` finisher, which Linux's `syscon-poweroff` and
//!   `syscon-reboot` drivers use to power off and reset.
//!
//! Guest input never panics a device: bad offsets and access sizes read as 0, writes to them
//! are ignored, and both are counted ([`MmioDevice::bad_accesses`]).
//!
//! Locking: each device keeps its state behind its own mutex, and [`IrqLine::set_level`] is
//! called with that mutex held (UART → PLIC → hart). An `IrqLine` implementation must therefore
//! never call back into a device; driving a hart's interrupt line (atomics) or waking a thread
//! is fine.

mod bus;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod layout;
mod plic;
mod test_dev;
mod uart;
pub mod virtio;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use bus::{MmioBus, SharedDevice};
pub use plic::{context_for_hart, Plic, PlicSource, PLIC_MAX_CONTEXTS, PLIC_MAX_PRIORITY};
pub use test_dev::{PowerRequest, PowerState, SifiveTest};
pub use uart::{Uart, UartInput, UartStats, UART_RX_FIFO_LEN};
pub use virtio::{
    BlockBackend, BlockConfig, NetBackend, NetConfig, NetWaker, RawFileBackend, TxOutcome,
    VirtioBlk, VirtioDevice, VirtioMmio, VirtioNet,
};

/// A memory-mapped device.
pub trait MmioDevice: Send {
    /// A load of `size` bytes (1, 2, 4 or 8) at `offset` from the device base. Offsets and
    /// sizes the device does not implement read as 0 (and are counted), never panic.
    fn read(&mut self, offset: u64, size: u8) -> u64;
    /// A store of the low `size` bytes of `value` at `offset` from the device base. Offsets and
    /// sizes the device does not implement are ignored (and counted), never panic.
    fn write(&mut self, offset: u64, size: u8, value: u64);
    /// How many accesses hit offsets or sizes the device does not implement.
    fn bad_accesses(&self) -> u64 {
        0
    }
}

/// An interrupt line from a device to an interrupt controller (or from the PLIC to a hart).
///
/// Lines are levels: the receiver sees the line raised until `set_level(false)`. Devices call
/// `set_level` with their own lock held, so implementations must not call back into devices.
pub trait IrqLine: Send + Sync {
    fn set_level(&self, level: bool);
}

/// Any `Fn(bool)` closure is an interrupt line, e.g.
/// `move |level| hart.set_irq(Irq::SupervisorExternal, level)`.
impl<F: Fn(bool) + Send + Sync> IrqLine for F {
    fn set_level(&self, level: bool) {
        self(level)
    }
}

/// An [`IrqLine`] that only records its level and how often it rose: for tests, fuzzing and
/// run loops that poll.
#[derive(Debug, Default)]
pub struct LevelIrq {
    level: AtomicBool,
    rises: AtomicU64,
}

impl LevelIrq {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current level.
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }

    /// How many times the line went from low to high.
    pub fn rises(&self) -> u64 {
        self.rises.load(Ordering::SeqCst)
    }
}

impl IrqLine for LevelIrq {
    fn set_level(&self, level: bool) {
        let old = self.level.swap(level, Ordering::SeqCst);
        if level && !old {
            self.rises.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Errors in setting up devices (host configuration, never guest behaviour).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("MMIO device `{name}` at {base:#x} has length 0")]
    EmptyRange { name: String, base: u64 },
    #[error(
        "MMIO device `{name}` at {base:#x} (+{len:#x}) runs past the end of the address space"
    )]
    RangeOverflow { name: String, base: u64, len: u64 },
    #[error(
        "MMIO device `{name}` [{base:#x}, {end:#x}) overlaps `{other}` [{other_base:#x}, {other_end:#x})"
    )]
    Overlap {
        name: String,
        base: u64,
        end: u64,
        other: String,
        other_base: u64,
        other_end: u64,
    },
    #[error(
        "PLIC: {0} interrupt sources requested; must be 1..=1024 (including the reserved source 0)"
    )]
    PlicSources(u32),
    #[error("PLIC: {0} contexts requested; must be 1..={max}", max = PLIC_MAX_CONTEXTS)]
    PlicContexts(usize),
}

/// Takes a mutex even if a thread panicked while holding it: device state stays usable (every
/// state a device can be in is valid), and a device must not turn one panic into many.
pub(crate) use vmk_base::lock;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn level_irq_counts_rising_edges() {
        let l = LevelIrq::new();
        l.set_level(true);
        l.set_level(true);
        l.set_level(false);
        l.set_level(true);
        assert!(l.level());
        assert_eq!(l.rises(), 2);
    }

    /// The machine's wiring: UART → PLIC source 10 → hart 0's S-mode context, over the bus.
    #[test]
    fn uart_interrupt_through_plic_and_bus() {
        use crate::layout::*;
        let lines: Vec<Arc<LevelIrq>> = (0..2).map(|_| Arc::new(LevelIrq::new())).collect();
        let ctx: Vec<Arc<dyn IrqLine>> = lines
            .iter()
            .map(|l| l.clone() as Arc<dyn IrqLine>)
            .collect();
        let plic = Plic::new(PLIC_NUM_SOURCES, ctx).unwrap();
        let src: Arc<dyn IrqLine> = Arc::new(plic.source(UART_IRQ).unwrap());
        let uart = Uart::new(Box::new(std::io::sink()), Some(src));
        let input = uart.input();
        let power = PowerState::new();
        let mut bus = MmioBus::new();
        bus.register(
            "plic",
            PLIC_BASE,
            PLIC_SIZE,
            Arc::new(std::sync::Mutex::new(plic)),
        )
        .unwrap();
        bus.register(
            "uart",
            UART_BASE,
            UART_SIZE,
            Arc::new(std::sync::Mutex::new(uart)),
        )
        .unwrap();
        bus.register(
            "test",
            TEST_BASE,
            TEST_SIZE,
            Arc::new(std::sync::Mutex::new(SifiveTest::new(power.clone()))),
        )
        .unwrap();
        let s_ctx = context_for_hart(0, true) as u64;
        let claim = PLIC_BASE + 0x20_0004 + 0x1000 * s_ctx;
        // Guest: priority 1 for the UART, enable it for hart 0 S-mode, UART RX interrupts on.
        assert!(bus.write(PLIC_BASE + 4 * u64::from(UART_IRQ), 4, 1));
        assert!(bus.write(PLIC_BASE + 0x2000 + 0x80 * s_ctx, 4, 1 << UART_IRQ));
        assert!(bus.write(UART_BASE + 1, 1, 0x01));
        assert!(!lines[1].level());
        // Host: a key press.
        assert_eq!(input.try_push_input(b"x"), 1);
        assert!(lines[1].level() && !lines[0].level());
        // Guest handler: claim, drain the UART, complete.
        assert_eq!(bus.read(claim, 4), Some(u64::from(UART_IRQ)));
        assert_eq!(bus.read(UART_BASE + 2, 1), Some(0x04)); // IIR: RX data
        assert_eq!(bus.read(UART_BASE, 1), Some(u64::from(b'x')));
        assert!(bus.write(claim, 4, u64::from(UART_IRQ)));
        assert!(!lines[1].level());
        assert_eq!(bus.read(claim, 4), Some(0));
        // Power off through the bus.
        assert!(bus.write(TEST_BASE, 4, 0x5555));
        assert_eq!(power.take(), Some(PowerRequest::Poweroff { code: 0 }));
    }

    #[test]
    fn closures_are_irq_lines() {
        let seen = Arc::new(AtomicBool::new(false));
        let s = seen.clone();
        let line: Arc<dyn IrqLine> = Arc::new(move |level| s.store(level, Ordering::SeqCst));
        line.set_level(true);
        assert!(seen.load(Ordering::SeqCst));
    }
}
