//! Where the machine puts these devices: QEMU virt's memory map, so guests, firmware and
//! device trees written for `qemu-system-riscv64 -M virt` work unchanged.

/// The SiFive test/finisher device.
pub const TEST_BASE: u64 = 0x10_0000;
pub const TEST_SIZE: u64 = 0x1000;
/// `compatible` of the test device node; `syscon` lets `syscon-poweroff` / `syscon-reboot`
/// nodes point at it (`regmap`, offset 0, value [`TEST_POWEROFF_VALUE`] / [`TEST_RESET_VALUE`]).
pub const TEST_COMPATIBLE: &[&str] = &["sifive,test1", "sifive,test0", "syscon"];
pub const TEST_POWEROFF_VALUE: u32 = 0x5555;
pub const TEST_RESET_VALUE: u32 = 0x7777;

/// The PLIC.
pub const PLIC_BASE: u64 = 0x0c00_0000;
pub const PLIC_SIZE: u64 = 0x60_0000;
/// Source ids including the reserved 0: the device tree's `riscv,ndev` is one less.
pub const PLIC_NUM_SOURCES: u32 = 96;
pub const PLIC_COMPATIBLE: &[&str] = &["sifive,plic-1.0.0", "riscv,plic0"];

/// The ns16550a UART.
pub const UART_BASE: u64 = 0x1000_0000;
pub const UART_SIZE: u64 = 0x100;
pub const UART_IRQ: u32 = 10;
pub const UART_COMPATIBLE: &str = "ns16550a";
/// The UART's `clock-frequency` (QEMU's 3.6864 MHz: 115200 baud at divisor 2).
pub const UART_CLOCK_HZ: u32 = 3_686_400;

/// virtio-mmio transports: `VIRTIO_COUNT` slots of `VIRTIO_SIZE` from `VIRTIO_BASE`, slot `i`
/// on PLIC source `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_BASE: u64 = 0x1000_1000;
pub const VIRTIO_SIZE: u64 = 0x1000;
pub const VIRTIO_COUNT: u32 = 8;
pub const VIRTIO_IRQ_BASE: u32 = 1;

/// Base address of virtio-mmio slot `i`.
pub const fn virtio_base(i: u32) -> u64 {
    VIRTIO_BASE + VIRTIO_SIZE * i as u64
}

/// PLIC source of virtio-mmio slot `i`.
pub const fn virtio_irq(i: u32) -> u32 {
    VIRTIO_IRQ_BASE + i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_does_not_overlap() {
        let mut ranges = vec![
            (TEST_BASE, TEST_SIZE),
            (PLIC_BASE, PLIC_SIZE),
            (UART_BASE, UART_SIZE),
        ];
        for i in 0..VIRTIO_COUNT {
            ranges.push((virtio_base(i), VIRTIO_SIZE));
        }
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:x?}");
        }
        assert_eq!(virtio_base(7), 0x1000_8000);
        assert_eq!(virtio_irq(7), 8);
        let mut irqs: Vec<u32> = (0..VIRTIO_COUNT).map(virtio_irq).collect();
        irqs.push(UART_IRQ);
        irqs.sort();
        irqs.dedup();
        assert_eq!(irqs.len(), VIRTIO_COUNT as usize + 1);
        assert!(irqs.iter().all(|&i| i > 0 && i < PLIC_NUM_SOURCES));
    }
}
