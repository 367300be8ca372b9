//! The `vmk` binary: argument handling and error messages (no network needed).

use std::process::Command;

fn vmk(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmk"))
        .args(args)
        .output()
        .expect("run vmk");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_image_build() {
    let (code, out, _) = vmk(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("image"), "{out}");
    let (code, out, _) = vmk(&["image", "build", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--out",
        "--package",
        "--init-script",
        "--cache",
        "--refresh",
    ] {
        assert!(out.contains(flag), "{flag} missing from:\n{out}");
    }
}

#[test]
fn out_is_required() {
    let (code, _, err) = vmk(&["image", "build"]);
    assert_eq!(code, 2);
    assert!(err.contains("--out"), "{err}");
}

#[test]
fn missing_init_script_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let script = t.path().join("missing.sh");
    let cache = t.path().join("cache");
    let (code, _, err) = vmk(&[
        "image",
        "build",
        "--out",
        out.to_str().unwrap(),
        "--init-script",
        script.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("vmk: error: cannot read init script"),
        "{err}"
    );
    assert!(err.contains("missing.sh"), "{err}");
}

#[test]
fn unwritable_out_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = file.join("out");
    let cache = t.path().join("cache");
    let (code, _, err) = vmk(&[
        "image",
        "build",
        "--out",
        out.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot write to output directory"), "{err}");
    assert!(err.contains("file/out"), "{err}");
}

#[test]
fn bad_package_name_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let cache = t.path().join("cache");
    let (code, _, err) = vmk(&[
        "image",
        "build",
        "--out",
        out.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--package",
        "Not_A_Package",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid package name \"Not_A_Package\""),
        "{err}"
    );
}

#[test]
fn vm_commands_explain_a_missing_host() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("none.sock");
    let (code, _, err) = vmk(&["vm", "list", "--socket", sock.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("vmk: error: cannot connect to the vmk host at"),
        "{err}"
    );
    assert!(
        err.contains("none.sock") && err.contains("vmk host start"),
        "{err}"
    );
    let (code, _, err) = vmk(&["vm", "info", "../etc", "--socket", sock.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("VM name '../etc'"), "{err}");
    let (code, _, err) = vmk(&["host", "info", "--url", "http://127.0.0.1:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("--url needs --token-file"), "{err}");
}

#[test]
fn host_start_checks_its_config() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("host.toml");
    std::fs::write(&cfg, "socket = 5\n").unwrap();
    let (code, _, err) = vmk(&["host", "start", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("host config") && err.contains("socket"),
        "{err}"
    );
}

#[test]
fn vm_edit_and_set_explain_themselves() {
    let (code, out, _) = vmk(&["vm", "set", "--help"]);
    assert_eq!(code, 0);
    for key in ["cpus", "memory", "autostart", "append", "vmk vm edit"] {
        assert!(out.contains(key), "{key} missing from:\n{out}");
    }
    let (code, out, _) = vmk(&["vm", "edit", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("stopped") && out.contains("renamed"), "{out}");
    // Nothing to set: a usage error before any connection.
    let (code, _, err) = vmk(&["vm", "set", "web1"]);
    assert_eq!(code, 2);
    assert!(err.contains("KEY=VALUE"), "{err}");
}
