//! Running the `vmk` binary from a test: what the CLI tests without a daemon share.

use std::process::{Command, Output};

/// Runs `vmk ARGS` and returns what it did.
pub fn vmk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(args)
        .output()
        .expect("run vmk")
}

/// Runs `vmk ARGS`, which must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = vmk(args);
    assert!(
        out.status.success(),
        "vmk {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
