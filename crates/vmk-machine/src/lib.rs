//! Assembles a vmk virtual machine: guest memory map, devices, device tree, kernel loading,
//! the SBI, and one host thread per vCPU.

mod config;
pub mod datastore;
mod disk;
pub mod fdt;
pub mod loader;
pub mod sbi;
mod vm;

pub use config::{Console, DiskSpec, DiskStorage, NicSpec, VmConfig, VmError, VmOutcome};
pub use vm::{vcpu_thread_name, DiskStats, PowerButton, VcpuStats, Vm, VmController, VmStats};

/// The guest physical memory map (compatible with QEMU's `virt` machine where it overlaps, so
/// that the same kernels and bare-metal programs run on both).
pub mod layout {
    pub const TEST_BASE: u64 = 0x10_0000;
    pub const TEST_SIZE: u64 = 0x1000;
    pub const PLIC_BASE: u64 = 0x0c00_0000;
    pub const PLIC_SIZE: u64 = 0x60_0000;
    /// Number of PLIC interrupt sources including the reserved source 0.
    pub const PLIC_SOURCES: u32 = 96;
    pub const UART_BASE: u64 = 0x1000_0000;
    pub const UART_SIZE: u64 = 0x100;
    pub const UART_IRQ: u32 = 10;
    /// virtio-mmio slots: 0x1000_1000 + 0x1000 * i, PLIC sources 1..=8.
    pub const VIRTIO_BASE: u64 = 0x1000_1000;
    pub const VIRTIO_STRIDE: u64 = 0x1000;
    pub const VIRTIO_SLOTS: u64 = 8;
    pub const fn virtio_base(i: u32) -> u64 {
        VIRTIO_BASE + VIRTIO_STRIDE * i as u64
    }
    pub const fn virtio_irq(i: u32) -> u32 {
        1 + i
    }
    /// The power button (virtio-input) in the virtio-mmio slot after the disks' and NICs'
    /// ones, on PLIC source 9 (free in QEMU virt too).
    pub const POWER_BUTTON_BASE: u64 = virtio_base(VIRTIO_SLOTS as u32);
    pub const POWER_BUTTON_IRQ: u32 = virtio_irq(VIRTIO_SLOTS as u32);
    pub const RAM_BASE: u64 = 0x8000_0000;
    /// Smallest guest RAM vmk accepts.
    pub const MIN_RAM: u64 = 16 << 20;
    /// Largest guest RAM of one VM (1 TiB; the page map alone is 2 GiB there).
    pub const MAX_RAM: u64 = 1 << 40;
}
