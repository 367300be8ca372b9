//! Helpers shared by the guest tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds a guest image named `name` in the test target dir with `vmk image build`: the init
/// script `script` and the extra Debian `packages`. Needs Debian's mirror (or a warm cache).
pub fn build_image(name: &str, script: &str, packages: &[&str]) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join(format!("{name}-image"));
    let script_path = tmp.join(format!("{name}-script.sh"));
    std::fs::write(&script_path, script).expect("write init script");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmk"));
    cmd.args(["image", "build", "--quiet", "--out"])
        .arg(&dir)
        .arg("--init-script")
        .arg(&script_path);
    for p in packages {
        cmd.args(["--package", p]);
    }
    let out = cmd.output().expect("run vmk image build");
    assert!(
        out.status.success(),
        "vmk image build failed (needs network access to deb.debian.org):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}
