//! Test helpers: tiny bare-metal guests (a RISC-V Linux Image header around a few hand-
//! assembled instructions) so lifecycle tests run in milliseconds without Debian, and
//! definitions pointing at them.

use std::path::{Path, PathBuf};

use vmk_api::model::{Boot, ByteSize, VmDefinition};

const T0: u32 = 5;
const T1: u32 = 6;
const UART: u32 = 0x1000_0000;
const TEST_DEV: u32 = 0x10_0000;

/// A little RV64 assembler: just what the test guests need.
#[derive(Default)]
pub struct Asm {
    code: Vec<u32>,
}

impl Asm {
    fn here(&self) -> usize {
        self.code.len()
    }
    fn i(&mut self, op: u32, f3: u32, rd: u32, rs1: u32, imm: i32) -> &mut Self {
        self.code
            .push(((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op);
        self
    }
    fn lui(&mut self, rd: u32, imm20: u32) -> &mut Self {
        self.code.push((imm20 << 12) | (rd << 7) | 0x37);
        self
    }
    /// rd = v (v < 2^31).
    pub fn li(&mut self, rd: u32, v: u32) -> &mut Self {
        let upper = (v + 0x800) >> 12;
        let lower = v.wrapping_sub(upper << 12) as i32;
        if upper != 0 {
            self.lui(rd, upper);
            self.i(0x13, 0, rd, rd, lower)
        } else {
            self.i(0x13, 0, rd, 0, lower)
        }
    }
    fn store(&mut self, f3: u32, rs2: u32, rs1: u32) -> &mut Self {
        self.code
            .push((rs2 << 20) | (rs1 << 15) | (f3 << 12) | 0x23);
        self
    }
    fn jump_to(&mut self, target: usize) -> &mut Self {
        let off = (target as i64 - self.here() as i64) * 4;
        let imm = off as u32;
        let enc = ((imm >> 20) & 1) << 31
            | ((imm >> 1) & 0x3ff) << 21
            | ((imm >> 11) & 1) << 20
            | ((imm >> 12) & 0xff) << 12
            | 0x6f;
        self.code.push(enc);
        self
    }
    fn beq_to(&mut self, rs1: u32, rs2: u32, target: usize) -> &mut Self {
        let off = (target as i64 - self.here() as i64) * 4;
        let imm = off as u32;
        let enc = ((imm >> 12) & 1) << 31
            | ((imm >> 5) & 0x3f) << 25
            | (rs2 << 20)
            | (rs1 << 15)
            | ((imm >> 1) & 0xf) << 8
            | ((imm >> 11) & 1) << 7
            | 0x63;
        self.code.push(enc);
        self
    }
    /// Writes `text` to the UART byte by byte.
    pub fn print(&mut self, text: &str) -> &mut Self {
        self.lui(T0, UART >> 12);
        for b in text.bytes() {
            self.i(0x13, 0, T1, 0, b as i32);
            self.store(0, T1, T0);
        }
        self
    }
    /// Idles forever (WFI: the vCPU thread sleeps instead of spinning).
    pub fn idle(&mut self) -> &mut Self {
        let top = self.here();
        self.code.push(0x1050_0073);
        self.jump_to(top)
    }
    /// Echoes console input back, forever. It polls the UART every 10 ms: a WFI woken by
    /// the SBI timer (sie.STIE on, interrupts off), as a guest must, since a WFI with no
    /// enabled interrupt may sleep for ever (it does on vmk's scheduler, as on QEMU).
    pub fn echo(&mut self) -> &mut Self {
        const A0: u32 = 10;
        const A6: u32 = 16;
        const A7: u32 = 17;
        const T3: u32 = 28;
        self.li(T3, 0x20);
        self.code
            .push((0x104 << 20) | (T3 << 15) | (2 << 12) | 0x73); // csrs sie, t3: STIE
        self.lui(T0, UART >> 12);
        let top = self.here();
        self.code.push((0xc01 << 20) | (2 << 12) | (A0 << 7) | 0x73); // rdtime a0
        self.li(T3, 100_000); // 10 ms at the 10 MHz timebase
        self.code.push((T3 << 20) | (A0 << 15) | (A0 << 7) | 0x33); // add a0, a0, t3
        self.li(A7, 0x5449_4d45); // SBI TIME extension
        self.li(A6, 0); // set_timer
        self.code.push(0x0000_0073); // ecall
        self.code.push(0x1050_0073); // wfi
        self.i(0x03, 4, T1, T0, 5); // lbu t1, 5(t0): LSR
        self.i(0x13, 7, T1, T1, 1); // andi t1, t1, 1: data ready
        self.beq_to(T1, 0, top);
        self.i(0x03, 4, T1, T0, 0); // lbu t1, 0(t0): RBR
        self.store(0, T1, T0); // sb t1, 0(t0): THR
        self.jump_to(top)
    }
    /// Powers off through the test device with exit code `code`.
    pub fn poweroff(&mut self, code: u16) -> &mut Self {
        self.lui(T0, TEST_DEV >> 12);
        self.li(T1, ((code as u32) << 16) | 0x5555);
        self.store(2, T1, T0);
        self.idle()
    }
    /// Resets (reboots) through the test device.
    pub fn reboot(&mut self) -> &mut Self {
        self.lui(T0, TEST_DEV >> 12);
        self.li(T1, 0x7777);
        self.store(2, T1, T0);
        self.idle()
    }
    /// A flat RISC-V Linux Image: a jump over the 64-byte header, then the code.
    pub fn image(&self) -> Vec<u8> {
        let mut d = vec![0u8; 64];
        d[0..4].copy_from_slice(&0x0400_006fu32.to_le_bytes()); // j +64
        d[48..53].copy_from_slice(b"RISCV");
        d[56..60].copy_from_slice(b"RSC\x05");
        for w in &self.code {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d
    }
}

/// Writes the program built by `f` as a kernel file in `dir`.
pub fn kernel(dir: &Path, name: &str, f: impl FnOnce(&mut Asm)) -> PathBuf {
    let mut a = Asm::default();
    f(&mut a);
    let path = dir.join(format!("{name}.Image"));
    std::fs::write(&path, a.image()).expect("write test kernel");
    path
}

/// A 16 MiB, 1-vCPU definition booting `kernel`.
pub fn def(name: &str, kernel: &Path) -> VmDefinition {
    VmDefinition {
        name: name.into(),
        cpus: 1,
        memory: ByteSize(16 << 20),
        autostart: false,
        boot: Boot {
            kernel: Some(kernel.to_path_buf()),
            ..Boot::default()
        },
        disks: vec![],
        nics: vec![],
        resources: Default::default(),
        test_fault_on_console: None,
    }
}
