//! Network namespaces for tests that need real kernel interfaces: a namespace removed on
//! drop (with the root-namespace links the test made), veth pairs into it, TAP devices
//! moved into it, and threads that run inside it. Everything goes through iproute2's `ip`.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;

/// Whether this host can run namespace tests: root, `/dev/net/tun` and each of `tools`
/// (e.g. `["ip", "iperf3"]`). Where not, `what` (the tests, for the message) say SKIPPED
/// and the caller returns; under CI (`CI` set), where scripts/deps installs every tool and
/// the tests run as root, a missing piece fails the test instead.
pub fn can_run(what: &str, tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new(t)
                .arg(if *t == "ip" { "-V" } else { "--version" })
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if root && missing.is_empty() && Path::new("/dev/net/tun").exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} need root, /dev/net/tun and {tools:?} (missing: {missing:?}); scripts/deps \
         installs them"
    );
    eprintln!(
        "SKIPPED: {what} need root, /dev/net/tun and {tools:?} on the host (missing: \
         {missing:?})"
    );
    false
}

/// Runs `ip ARGS` in the root namespace; panics with its stderr unless it succeeds.
pub fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Sets a root-namespace link up or down.
pub fn link_up(ifname: &str, up: bool) {
    ip(&["link", "set", ifname, if up { "up" } else { "down" }]);
}

/// A network namespace `vmk-TAG-PID` with loopback up and IPv6 off (no router
/// solicitations or MLD on the test's interfaces), removed on drop together with the
/// root-namespace links given to [`Netns::remove_on_drop`].
pub struct Netns {
    name: String,
    links: Vec<String>,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("vmk-{tag}-{}", std::process::id());
        // Left over by an earlier run of this process id that was killed.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        for k in ["all", "default"] {
            let _ = Command::new("ip")
                .args(["netns", "exec", &name, "sysctl", "-qw"])
                .arg(format!("net.ipv6.conf.{k}.disable_ipv6=1"))
                .output();
        }
        let ns = Netns {
            name,
            links: Vec::new(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace (`ip -n NAME ARGS`); panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        ip(&a);
    }

    /// Deletes root-namespace link `ifname` when the namespace goes (a bridge, the near end
    /// of a veth pair); links inside the namespace go with it anyway.
    pub fn remove_on_drop(&mut self, ifname: &str) {
        self.links.push(ifname.to_string());
    }

    /// Moves link `ifname` (a TAP device an uplink made, a veth end) from the root
    /// namespace into this one. It arrives down and without addresses.
    pub fn move_in(&self, ifname: &str) {
        ip(&["link", "set", ifname, "netns", &self.name]);
    }

    /// A veth pair: `near` stays in the root namespace (IPv6 off, deleted on drop), `far`
    /// is moved into the namespace. Both are down.
    pub fn veth(&mut self, near: &str, far: &str) {
        let _ = Command::new("ip").args(["link", "del", near]).output();
        ip(&["link", "add", near, "type", "veth", "peer", "name", far]);
        self.remove_on_drop(near);
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{near}/disable_ipv6"), "1");
        self.move_in(far);
    }

    /// Runs `f` on a new thread inside the namespace (sockets it opens live there).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the netns");
            // SAFETY: setns on this thread with a namespace fd we hold open.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
