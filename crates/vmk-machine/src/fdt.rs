//! The flattened device tree a guest kernel boots with.

use crate::layout;
use vm_fdt::FdtWriter;

/// What the device tree describes.
#[derive(Debug, Clone)]
pub struct FdtConfig {
    pub cpus: u32,
    pub ram_base: u64,
    pub ram_size: u64,
    pub bootargs: String,
    pub initrd: Option<(u64, u64)>,
    pub timebase_hz: u32,
    /// virtio-mmio devices: (base address, PLIC source).
    pub virtio: Vec<(u64, u32)>,
}

/// Extensions the vCPU implements, exactly (see vmk-cpu).
pub const ISA_EXTENSIONS: &[&str] = &[
    "i",
    "m",
    "a",
    "f",
    "d",
    "c",
    "zicntr",
    "zicsr",
    "zifencei",
    "zihintpause",
];
pub const ISA_STRING: &str = "rv64imafdc_zicntr_zicsr_zifencei_zihintpause";

const PHANDLE_PLIC: u32 = 1;
fn intc_phandle(cpu: u32) -> u32 {
    100 + cpu
}

pub fn build(cfg: &FdtConfig) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "vmk,virt")?;
    f.property_string("model", "vmk virtual machine")?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", &cfg.bootargs)?;
    f.property_string(
        "stdout-path",
        &format!("/soc/serial@{:x}", layout::UART_BASE),
    )?;
    if let Some((start, end)) = cfg.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    f.end_node(chosen)?;

    let mem = f.begin_node(&format!("memory@{:x}", cfg.ram_base))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[cfg.ram_base, cfg.ram_size])?;
    f.end_node(mem)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    f.property_u32("timebase-frequency", cfg.timebase_hz)?;
    for cpu in 0..cfg.cpus {
        let c = f.begin_node(&format!("cpu@{cpu:x}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_u32("reg", cpu)?;
        f.property_string("status", "okay")?;
        f.property_string("compatible", "riscv")?;
        f.property_string("riscv,isa", ISA_STRING)?;
        f.property_string("riscv,isa-base", "rv64i")?;
        f.property_string_list(
            "riscv,isa-extensions",
            ISA_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        )?;
        f.property_string("mmu-type", "riscv,sv48")?;
        let intc = f.begin_node("interrupt-controller")?;
        f.property_u32("#interrupt-cells", 1)?;
        f.property_null("interrupt-controller")?;
        f.property_string("compatible", "riscv,cpu-intc")?;
        f.property_phandle(intc_phandle(cpu))?;
        f.end_node(intc)?;
        f.end_node(c)?;
    }
    f.end_node(cpus)?;

    let soc = f.begin_node("soc")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "simple-bus")?;
    f.property_null("ranges")?;

    let plic = f.begin_node(&format!("interrupt-controller@{:x}", layout::PLIC_BASE))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    f.property_array_u64("reg", &[layout::PLIC_BASE, layout::PLIC_SIZE])?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_u32("#address-cells", 0)?;
    f.property_null("interrupt-controller")?;
    f.property_u32("riscv,ndev", layout::PLIC_SOURCES - 1)?;
    // Contexts: 2*hart = M-mode external, 2*hart+1 = S-mode external (as QEMU virt).
    let mut ext = Vec::new();
    for cpu in 0..cfg.cpus {
        ext.extend_from_slice(&[intc_phandle(cpu), 11, intc_phandle(cpu), 9]);
    }
    f.property_array_u32("interrupts-extended", &ext)?;
    f.property_phandle(PHANDLE_PLIC)?;
    f.end_node(plic)?;

    let uart = f.begin_node(&format!("serial@{:x}", layout::UART_BASE))?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[layout::UART_BASE, layout::UART_SIZE])?;
    f.property_u32("clock-frequency", 3_686_400)?;
    f.property_u32("interrupt-parent", PHANDLE_PLIC)?;
    f.property_u32("interrupts", layout::UART_IRQ)?;
    f.end_node(uart)?;

    for (base, irq) in &cfg.virtio {
        let v = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &[*base, layout::VIRTIO_STRIDE])?;
        f.property_u32("interrupt-parent", PHANDLE_PLIC)?;
        f.property_u32("interrupts", *irq)?;
        f.end_node(v)?;
    }

    f.end_node(soc)?;
    f.end_node(root)?;
    f.finish()
}
