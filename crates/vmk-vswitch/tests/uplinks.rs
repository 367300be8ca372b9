//! Host uplinks against real kernel interfaces, in a network namespace the test makes:
//! a TAP uplink moved into the namespace, and an AF_PACKET uplink on one end of a veth
//! pair whose other end is in the namespace. Frames sent by a vNIC port appear on the
//! interface in the namespace (read with a raw socket there), frames sent there reach the
//! vNIC, VLAN tags survive, and taking the far end down is seen as link down.
//!
//! Needs root (CAP_NET_ADMIN) and `ip`; without them the tests say so and pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmk_testkit::netns::{self, ip, Netns};
use vmk_vswitch::frame::{build, tag, EthHeader};
use vmk_vswitch::*;

const ETHERTYPE_TEST: u16 = 0x88b5;

/// Root, /dev/net/tun and iproute2; without them the tests say SKIPPED (and fail in CI).
fn can_run() -> bool {
    netns::can_run("uplink tests", &["ip"])
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0x56, 0x4b, 0x77, 0, n])
}

fn ext(n: u8) -> MacAddr {
    MacAddr([0x02, 0xee, 0x77, 0, 0, n])
}

fn test_frame(dst: MacAddr, src: MacAddr, marker: u8) -> Vec<u8> {
    build(dst, src, ETHERTYPE_TEST, &[marker; 60])
}

/// In the namespace: waits up to 10 s for a test frame with `marker` on `ifname`.
fn capture(ns: &Netns, ifname: &str, marker: u8) -> std::thread::JoinHandle<Option<Vec<u8>>> {
    let ifname = ifname.to_string();
    ns.spawn(move || {
        let sock = PacketUplink::open(&ifname).expect("raw socket in the namespace");
        let mut buf = vec![0u8; 65536];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(n)) = sock.recv(&mut buf, Duration::from_millis(100)) {
                let f = &buf[..n];
                if f.len() >= 20 && f[f.len() - 1] == marker && f[f.len() - 2] == marker {
                    return Some(f.to_vec());
                }
            }
        }
        None
    })
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `frame` from the vNIC until the capture thread has it.
fn send_until_seen(
    port: &VnicPort,
    frame: &[u8],
    cap: std::thread::JoinHandle<Option<Vec<u8>>>,
) -> Vec<u8> {
    while !cap.is_finished() {
        assert_eq!(port.send(frame), TxOutcome::Sent);
        std::thread::sleep(Duration::from_millis(50));
    }
    cap.join()
        .unwrap()
        .expect("the frame did not appear in the namespace")
}

/// From the namespace, sends `frame` on `ifname` until the vNIC has received it.
fn inject_until_received(ns: &Netns, ifname: &str, frame: Vec<u8>, port: &VnicPort) -> Vec<u8> {
    let ifname = ifname.to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let t = ns.spawn(move || {
        let sock = PacketUplink::open(&ifname).expect("raw socket in the namespace");
        let start = Instant::now();
        while !s.load(std::sync::atomic::Ordering::SeqCst)
            && start.elapsed() < Duration::from_secs(10)
        {
            sock.send(&frame).expect("send in the namespace");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let start = Instant::now();
    let got = loop {
        if let Some(f) = port.recv() {
            break Some(f);
        }
        if start.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    t.join().unwrap();
    got.expect("the frame from the namespace did not reach the vNIC")
}

#[test]
fn tap_uplink_in_a_network_namespace() {
    if !can_run() {
        return;
    }
    let mut ns = Netns::new("tap");
    let tap = format!("vkt{}", std::process::id() % 100_000);
    let sw = VSwitch::new("vs-tap", SwitchConfig::default()).unwrap();
    sw.add_portgroup("vm", PortGroupConfig::default()).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    sw.add_uplink(Arc::new(TapUplink::create(&tap).unwrap()))
        .unwrap();
    ns.remove_on_drop(&tap);
    // The admin's part: move it into the namespace and bring it up.
    ns.move_in(&tap);
    ns.ip(&["link", "set", &tap, "up"]);
    wait("the TAP uplink in use", || sw.uplinks()[0].in_use);
    // vNIC → TAP.
    let out = test_frame(ext(1), mac(1), 0xa1);
    let seen = send_until_seen(&a, &out, capture(&ns, &tap, 0xa1));
    assert_eq!(seen, out);
    // TAP → vNIC.
    let inb = test_frame(mac(1), ext(1), 0xa2);
    assert_eq!(inject_until_received(&ns, &tap, inb.clone(), &a), inb);
    let s = sw.uplinks()[0].stats;
    assert!(s.tx_frames >= 1 && s.rx_frames >= 1, "{s:?}");
    assert_eq!(sw.learned_macs()[0].mac, ext(1));
}

#[test]
fn packet_uplink_on_a_veth_pair() {
    if !can_run() {
        return;
    }
    let mut ns = Netns::new("pkt");
    let id = std::process::id() % 100_000;
    let (near, far) = (format!("vka{id}"), format!("vkb{id}"));
    ns.veth(&near, &far);
    ip(&["link", "set", &near, "up"]);
    ns.ip(&["link", "set", &far, "up"]);
    let sw = VSwitch::new("vs-pkt", SwitchConfig::default()).unwrap();
    sw.add_portgroup(
        "v10",
        PortGroupConfig {
            vlan: 10,
            ..Default::default()
        },
    )
    .unwrap();
    let a = sw.add_vnic("v10", "a", mac(2)).unwrap();
    sw.add_uplink(Arc::new(PacketUplink::open(&near).unwrap()))
        .unwrap();
    wait("the veth uplink up", || sw.uplinks()[0].in_use);
    // vNIC → wire, tagged with the port group's VLAN (VST).
    let out = test_frame(ext(2), mac(2), 0xb1);
    let seen = send_until_seen(&a, &out, capture(&ns, &far, 0xb1));
    assert_eq!(EthHeader::parse(&seen).unwrap().vid(), Some(10));
    assert_eq!(seen, tag(&out, 10));
    // Wire → vNIC: the tag (taken off by the kernel into packet metadata) is put back
    // and recognised; the VM gets the frame untagged.
    let inb = test_frame(mac(2), ext(2), 0xb2);
    assert_eq!(inject_until_received(&ns, &far, tag(&inb, 10), &a), inb);
    // Taking the far end down takes our link down: teaming sees it.
    ns.ip(&["link", "set", &far, "down"]);
    wait("link down", || !sw.uplinks()[0].link_up);
    assert!(!sw.uplinks()[0].in_use);
    ns.ip(&["link", "set", &far, "up"]);
    wait("link up again", || sw.uplinks()[0].in_use);
}
