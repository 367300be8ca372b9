//! Full builds against Debian's mirror (about 115 MB on the first run, cached after that in
//! the default cache, `$VMK_CACHE` or `~/.cache/vmk`), and a boot under QEMU when
//! `qemu-system-riscv64` is installed.
//!
//! Ignored by default; run with `cargo test -p vmk-image --test network -- --ignored`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmk_image::{build_image, AptOutput, ImageError, ImageOptions, Progress};

fn options(out: &std::path::Path) -> ImageOptions {
    let mut o = ImageOptions::new(out);
    o.apt_output = AptOutput::Quiet;
    o
}

fn log(p: Progress) {
    match p {
        Progress::Step { index, total, name } => eprintln!("[{index}/{total}] {name}"),
        Progress::Detail(d) => eprintln!("    {d}"),
        Progress::Warning(w) => eprintln!("    warning: {w}"),
    }
}

#[test]
#[ignore = "needs network access to deb.debian.org; not run by .ci/run or scripts/test"]
fn unknown_package_is_named() {
    let t = tempfile::tempdir().unwrap();
    let mut o = options(t.path());
    o.packages = vec!["sqlite3".into(), "vmk-no-such-package".into()];
    let e = build_image(&o, &mut log).expect_err("must fail");
    assert!(
        matches!(&e, ImageError::UnknownPackage { name, .. } if name == "vmk-no-such-package"),
        "{e:?}"
    );
    assert!(e
        .to_string()
        .contains("\"vmk-no-such-package\" was not found in Debian trixie"));
}

/// Runs QEMU until it exits or `limit` passes; returns the console output.
fn qemu(args: &[&str], limit: Duration) -> String {
    let mut child = Command::new("qemu-system-riscv64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-riscv64");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    reader.join().unwrap()
}

#[test]
#[ignore = "needs network access to deb.debian.org; not run by .ci/run or scripts/test"]
fn build_and_boot_with_sqlite3() {
    let t = tempfile::tempdir().unwrap();
    let script = t.path().join("script.sh");
    std::fs::write(
        &script,
        "uname -a\ncat /proc/cpuinfo\ndd if=/dev/zero bs=1M count=32 | sha256sum\n\
         sqlite3 :memory: 'select 6*7;'\nexit 3\n",
    )
    .unwrap();
    let out = t.path().join("img");
    let mut o = options(&out);
    o.packages = vec!["sqlite3".into()];
    o.init_script = Some(script);
    let info = build_image(&o, &mut log).expect("build");
    assert!(
        info.kernel_version.starts_with("6.12."),
        "{}",
        info.kernel_version
    );
    assert!(info.packages.iter().any(|p| p.name == "libc6"));
    assert!(info.modules.iter().any(|m| m.ends_with("/ext4.ko")));
    assert!(info.modules.iter().any(|m| m.ends_with("/virtio_mmio.ko")));
    let manifest = std::fs::read_to_string(out.join("image.toml")).unwrap();
    assert!(manifest.contains("append = \"console=ttyS0 earlycon=sbi\""));

    // The initrd has the ELF interpreter and sqlite3's libraries.
    let gz = std::fs::read(&info.initrd_path).unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    let entries = vmk_image::cpio::read_newc(&raw).unwrap();
    let has = |n: &str| entries.iter().any(|e| e.name == n);
    for n in [
        "init",
        "vmk/init-script",
        "usr/bin/busybox",
        "usr/bin/sqlite3",
        "usr/lib/ld-linux-riscv64-lp64d.so.1",
        "usr/lib/riscv64-linux-gnu/libsqlite3.so.0",
        "lib",
        "bin",
        "dev/console",
    ] {
        assert!(has(n), "initrd lacks {n}");
    }
    assert!(
        !entries.iter().any(|e| e.name.starts_with("boot/")),
        "no kernel in the initrd"
    );

    // A second build finds everything cached.
    let again = build_image(&o, &mut log).expect("cached build");
    assert_eq!(again.downloaded, 0);
    assert!(!again.lists_updated);

    if Command::new("qemu-system-riscv64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("qemu-system-riscv64 not installed; boot skipped");
        return;
    }
    let console = qemu(
        &[
            "-machine",
            "virt",
            "-m",
            "512M",
            "-nographic",
            "-kernel",
            info.kernel_path.to_str().unwrap(),
            "-initrd",
            info.initrd_path.to_str().unwrap(),
            "-append",
            "console=ttyS0",
        ],
        Duration::from_secs(300),
    );
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    let ok = lines.contains(&"vmk-guest: ready")
        && lines
            .iter()
            .any(|l| l.starts_with("Linux vmk 6.12.") && l.contains("riscv64"))
        && lines.contains(&"83ee47245398adee79bd9c0a8bc57b821e92aba10f5f9ade8a5d1fae4d8c4302  -")
        && lines.contains(&"42")
        && lines.contains(&"vmk-guest: exit-status 3");
    assert!(ok, "unexpected console output:\n{console}");
}
