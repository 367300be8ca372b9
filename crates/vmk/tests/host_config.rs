//! The CLI finds the API socket of a host started with `--config FILE` through the same
//! file: `vmk --config FILE vm ...` or `VMK_CONFIG=FILE`, with --socket and VMK_SOCKET
//! first. A real `vmk host start` process, no guests.

mod daemon;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use daemon::Daemon;

/// `vmk ARGS` with `env` set and neither VMK_SOCKET nor VMK_CONFIG inherited.
fn vmk(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmk"));
    c.args(args)
        .env_remove("VMK_SOCKET")
        .env_remove("VMK_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run vmk")
}

fn text(o: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_cli_reads_the_socket_from_the_host_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(tmp.path(), "", Duration::from_secs(30));
    let config = tmp.path().join("host.toml");
    let cfg = config.to_str().expect("UTF-8 temp path");
    for (args, env) in [
        (&["--config", cfg, "vm", "list"][..], &[][..]),
        (&["vm", "list", "--config", cfg], &[]),
        (&["vm", "list"], &[("VMK_CONFIG", config.as_path())]),
    ] {
        let o = vmk(args, env);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("no VMs"),
            "{args:?}: {}",
            text(&o)
        );
    }
    let o = vmk(&["--config", cfg, "host", "info"], &[]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("directory:"),
        "{}",
        text(&o)
    );
    // --socket and VMK_SOCKET come before the configuration.
    let nowhere = tmp.path().join("nowhere.sock");
    let o = vmk(
        &["vm", "list"],
        &[("VMK_CONFIG", config.as_path()), ("VMK_SOCKET", &nowhere)],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nowhere.sock"),
        "{}",
        text(&o)
    );
    let o = vmk(
        &[
            "--config",
            cfg,
            "vm",
            "list",
            "--socket",
            nowhere.to_str().unwrap_or(""),
        ],
        &[],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let o = vmk(
        &["vm", "list", "--socket", d.socket.to_str().unwrap_or("")],
        &[("VMK_CONFIG", &tmp.path().join("missing.toml"))],
    );
    assert!(o.status.success(), "--socket needs no config: {}", text(&o));
    // A configuration that cannot be read says which and why.
    let o = vmk(
        &["vm", "list"],
        &[("VMK_CONFIG", &tmp.path().join("missing.toml"))],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("missing.toml") && err.contains("VMK_CONFIG"),
        "{}",
        text(&o)
    );
    d.stop();
}
