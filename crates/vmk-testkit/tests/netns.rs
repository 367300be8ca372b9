//! The namespace helpers against the kernel: a veth pair's far end is seen inside the
//! namespace (and not outside), a thread spawned there sees it, and dropping the namespace
//! removes it and the near end. Needs root and iproute2 (SKIPPED without, fails in CI).

use std::ffi::CString;
use std::process::Command;

use vmk_testkit::netns::{self, Netns};

/// The interface index of `ifname` in the calling thread's network namespace (0: none).
fn ifindex(ifname: &str) -> u32 {
    let c = CString::new(ifname).unwrap();
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn veth_pair_into_a_namespace_and_cleanup() {
    if !netns::can_run("the netns helper tests", &["ip"]) {
        return;
    }
    let id = std::process::id() % 100_000;
    let (near, far) = (format!("vtkn{id}"), format!("vtkf{id}"));
    let mut ns = Netns::new("testkit");
    let name = ns.name().to_string();
    assert!(netns_exists(&name), "{name} not in `ip netns list`");
    ns.veth(&near, &far);
    assert_ne!(ifindex(&near), 0, "the near end is in the root namespace");
    assert_eq!(ifindex(&far), 0, "the far end left the root namespace");
    ns.ip(&["link", "set", &far, "up"]);
    let far2 = far.clone();
    let inside = ns
        .spawn(move || (ifindex(&far2), ifindex("lo")))
        .join()
        .unwrap();
    assert_ne!(inside.0, 0, "the far end is inside the namespace");
    assert_ne!(inside.1, 0, "loopback inside the namespace");
    drop(ns);
    assert!(!netns_exists(&name), "{name} still exists after drop");
    assert_eq!(ifindex(&near), 0, "the near end is gone after drop");
}
