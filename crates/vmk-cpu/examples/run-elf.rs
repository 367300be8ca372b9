//! Runs a bare-metal riscv64 ELF on one hart with a UART at 0x1000_0000 and a test finisher at
//! 0x10_0000 (QEMU virt's addresses), then prints the exit code and guest MIPS.
//! Usage: cargo run --release -p vmk-cpu --example run-elf -- prog.elf
use object::{Object, ObjectSegment};
use std::io::Write;
use std::time::Instant;
use vmk_cpu::{Exit, GuestMemory, Hart, HartConfig, MmioRange, RamRange};

fn main() {
    let path = std::env::args().nth(1).expect("usage: run-elf PROG.elf");
    let data = std::fs::read(&path).expect("read ELF");
    let elf = object::File::parse(&*data).expect("parse ELF");
    let mem = GuestMemory::new(
        &[RamRange {
            base: 0x8000_0000,
            size: 128 << 20,
        }],
        &[
            MmioRange {
                base: 0x1000_0000,
                size: 0x100,
            },
            MmioRange {
                base: 0x10_0000,
                size: 0x1000,
            },
            MmioRange {
                base: 0x200_0000,
                size: 0x10000,
            },
        ],
    )
    .expect("memory");
    for seg in elf.segments() {
        let (off, len) = seg.file_range();
        mem.write(seg.address(), &data[off as usize..(off + len) as usize])
            .expect("load");
    }
    let mut hart = Hart::new(mem, HartConfig::default());
    hart.set_pc(elf.entry());
    let start = Instant::now();
    let code = loop {
        match hart.run(u64::MAX) {
            Exit::MmioWrite {
                addr: 0x1000_0000,
                value,
                ..
            } => {
                let _ = std::io::stdout().write_all(&[value as u8]);
            }
            Exit::MmioWrite {
                addr: 0x10_0000,
                value,
                ..
            } => {
                break if value & 0xffff == 0x5555 {
                    0
                } else {
                    (value >> 16) as i32
                };
            }
            Exit::MmioRead { addr, .. } => {
                hart.complete_mmio_read(if addr == 0x1000_0005 { 0x60 } else { 0 })
            }
            Exit::MmioWrite { .. } => {}
            e => {
                eprintln!("exit {e:?} at pc {:#x}", hart.pc());
                break 99;
            }
        }
    };
    let s = start.elapsed().as_secs_f64();
    eprintln!(
        "exit {code}: {} instructions in {s:.3} s = {:.1} MIPS",
        hart.instret(),
        hart.instret() as f64 / s / 1e6
    );
    std::process::exit(code);
}
