//! `vmk host start` as a child process for the end-to-end tests, driven with the `vmk` CLI
//! over its socket. Shared by `host.rs` and `datastore_disks.rs`; each uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts a host whose directory and socket are in `dir`, with `extra_config` appended
    /// to its host.toml, and waits up to `startup` for its socket.
    pub fn start(dir: &Path, extra_config: &str, startup: Duration) -> Daemon {
        std::fs::create_dir_all(dir).expect("host dir");
        let socket = dir.join("vmk.sock");
        // A host killed with -9 leaves its socket behind.
        let _ = std::fs::remove_file(&socket);
        let config = dir.join("host.toml");
        std::fs::write(
            &config,
            format!(
                "dir = \"{}\"\nsocket = \"{}\"\n{extra_config}",
                dir.join("host").display(),
                socket.display()
            ),
        )
        .expect("write host.toml");
        // One log per start: a test may restart the host on the same directory.
        let log = dir.join(format!(
            "host-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_vmk"))
            .args(["host", "start", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            )
            .spawn()
            .expect("spawn vmk host start");
        let d = Daemon { child, socket, log };
        let t = Instant::now();
        while !d.socket.exists() {
            assert!(
                t.elapsed() < startup,
                "the host did not create its socket; its log:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `vmk ARGS --socket S`; panics with the output unless it succeeds.
    pub fn vmk(&self, args: &[&str]) -> String {
        let out = self.vmk_raw(args);
        assert!(
            out.status.success(),
            "vmk {args:?} failed: {}\n{}\nhost log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn vmk_raw(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vmk"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run vmk")
    }

    /// `vmk vm info NAME --json`.
    pub fn info(&self, name: &str) -> Value {
        serde_json::from_str(&self.vmk(&["vm", "info", name, "--json"])).expect("info JSON")
    }

    /// The last MiB of the VM's console log.
    pub fn console(&self, name: &str) -> String {
        let c = vmk_api::client::Client::unix(&self.socket);
        String::from_utf8_lossy(&c.console_log(name, 1 << 20).expect("console log")).into_owned()
    }

    pub fn wait_console(&self, name: &str, text: &str, timeout: Duration) {
        let t = Instant::now();
        while !self.console(name).contains(text) {
            assert!(
                t.elapsed() < timeout,
                "VM {name} did not print {text:?} in {timeout:?}; console:\n{}\nhost log:\n{}",
                self.console(name),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until every VM in `names` is stopped or crashed; returns their `vm info`.
    pub fn wait_ended(&self, names: &[&str], timeout: Duration) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let infos: Vec<Value> = names.iter().map(|n| self.info(n)).collect();
            if infos
                .iter()
                .all(|v| v["state"] == "stopped" || v["state"] == "crashed")
            {
                return infos;
            }
            let states: Vec<&Value> = infos.iter().map(|v| &v["state"]).collect();
            assert!(
                t.elapsed() < timeout,
                "VMs {names:?} still running after {timeout:?}: {states:?}; console of the \
                 first:\n{}\nhost log:\n{}",
                self.console(names[0]),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGTERM, as systemd stops it; the daemon must exit 0 and remove its socket.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                assert!(st.success(), "host exited {st}; log:\n{}", self.log_text());
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the host did not exit after SIGTERM; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!self.socket.exists(), "socket left behind");
    }
}

impl Drop for Daemon {
    /// SIGKILL: what a test that drops a daemon means (and cleanup after a failed test).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
