//! Boots a kernel with the console on stdout: `boot KERNEL [INITRD] [CMDLINE]`.
use std::io::Write;
use std::sync::Arc;
use vmk_machine::{Console, Vm, VmConfig};

struct Stdout;
impl Console for Stdout {
    fn write(&self, b: &[u8]) {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(b);
        let _ = o.flush();
    }
}

fn main() {
    let mut a = std::env::args().skip(1);
    let kernel = a.next().expect("usage: boot KERNEL [INITRD] [CMDLINE]");
    let initrd = a.next().filter(|s| !s.is_empty());
    let cmdline = a
        .next()
        .unwrap_or_else(|| "console=ttyS0 earlycon=sbi".into());
    let vm = Vm::new(VmConfig {
        cpus: std::env::var("CPUS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        memory: 512 << 20,
        kernel: kernel.into(),
        initrd: initrd.map(Into::into),
        cmdline,
        console: Arc::new(Stdout),
        disks: Vec::new(),
        nics: Vec::new(),
        fault_on_console: None,
    })
    .unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let t = std::time::Instant::now();
    let counter = vm.instret_counter();
    std::thread::spawn(move || {
        let mut last = 0;
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let n: u64 = counter().iter().sum();
            eprintln!("[vmk] {:.1} guest MIPS", (n - last) as f64 / 1e6);
            last = n;
        }
    });
    let o = vm.run();
    eprintln!("\n[vmk] {o:?} after {:.1} s", t.elapsed().as_secs_f64());
}
