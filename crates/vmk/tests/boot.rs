//! Boots Debian's riscv64 kernel with a vmk-built initrd through `vmk run` and checks what the
//! guest prints on its console. Builds the image on first use (needs Debian's mirror); the
//! package cache is shared with `vmk image build` ($VMK_CACHE or ~/.cache/vmk).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;

const SCRIPT: &str = r#"
echo "guest-test: uname: $(uname -a)"
cat /proc/cpuinfo
echo "guest-test: sha256: $(dd if=/dev/zero bs=1M count=32 2>/dev/null | sha256sum)"
status=0
for w in $(cat /proc/cmdline); do
    case "$w" in vmk.status=*) status="${w#vmk.status=}" ;; esac
done
exit "$status"
"#;

fn image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::build_image("boot-test", SCRIPT, &[]))
}

fn boot(status: u8) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(["run", "--memory", "512M", "--image"])
        .arg(image())
        .args([
            "--append",
            &format!("console=ttyS0 earlycon=sbi vmk.status={status}"),
        ])
        .output()
        .expect("run vmk run");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        console.contains("vmk-guest: ready"),
        "no ready line; console:\n{console}\nstderr:\n{stderr}"
    );
    (out.status.code(), console)
}

fn sha256_of_zeros(len: usize) -> String {
    // The host's sha256sum is the oracle for what the guest computes.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {len} /dev/zero | sha256sum"))
        .output()
        .expect("run sha256sum on the host");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn debian_guest_boots_runs_script_and_reports_status() {
    let (code, console) = boot(3);
    let uname = console
        .lines()
        .find(|l| l.starts_with("guest-test: uname: "))
        .unwrap_or_else(|| panic!("no uname line:\n{console}"));
    assert!(uname.contains("riscv64"), "{uname}");
    assert!(uname.contains(" 6.12."), "{uname}");
    assert!(
        console.contains("isa\t\t: rv64imafdc_zicntr_zicsr_zifencei"),
        "/proc/cpuinfo does not show the vCPU's ISA:\n{console}"
    );
    assert!(console.contains("mmu\t\t: sv48"), "{console}");
    let want = sha256_of_zeros(32 << 20);
    assert_eq!(want.len(), 64);
    assert!(
        console.contains(&format!("guest-test: sha256: {want}  -")),
        "guest sha256 of 32 MiB of zeros is not {want}:\n{console}"
    );
    assert!(console.contains("vmk-guest: exit-status 3"), "{console}");
    assert_eq!(code, Some(3), "vmk run must exit with the guest's status");
}

#[test]
fn clean_poweroff_exits_zero() {
    let (code, console) = boot(0);
    assert!(console.contains("vmk-guest: exit-status 0"), "{console}");
    assert!(console.contains("reboot: Power down"), "{console}");
    assert_eq!(code, Some(0));
}
