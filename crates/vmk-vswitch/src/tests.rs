//! Switch behaviour with vNIC ports driven directly and [`MemoryUplink`]s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::{build, tag, EthHeader};
use crate::*;

const ETHERTYPE_TEST: u16 = 0x88b5;

fn mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0x56, 0x4b, 0, 0, n])
}

fn ext(n: u8) -> MacAddr {
    MacAddr([0x02, 0xee, 0, 0, 0, n])
}

fn switch() -> VSwitch {
    VSwitch::new("vs0", SwitchConfig::default()).unwrap()
}

fn pg(vlan: u16) -> PortGroupConfig {
    PortGroupConfig {
        vlan,
        ..Default::default()
    }
}

fn f(dst: MacAddr, src: MacAddr, tag_byte: u8) -> Vec<u8> {
    build(dst, src, ETHERTYPE_TEST, &[tag_byte; 46])
}

fn drain(p: &VnicPort) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| p.recv()).collect()
}

fn uplink(sw: &VSwitch, name: &str) -> Arc<MemoryUplink> {
    let u = Arc::new(MemoryUplink::new(name));
    sw.add_uplink(u.clone()).unwrap();
    u
}

#[test]
fn unicast_goes_to_the_destination_only() {
    let sw = switch();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    let b = sw.add_vnic("vm", "b", mac(2)).unwrap();
    let c = sw.add_vnic("vm", "c", mac(3)).unwrap();
    let up = uplink(&sw, "up0");
    let fr = f(mac(2), mac(1), 1);
    assert_eq!(a.send(&fr), TxOutcome::Sent);
    assert_eq!(drain(&b), vec![fr.clone()]);
    assert!(drain(&c).is_empty());
    assert!(drain(&a).is_empty(), "never back to the sender");
    assert!(
        up.take_sent().is_empty(),
        "local traffic stays off the uplink"
    );
    let s = a.stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (1, fr.len() as u64));
    let s = b.stats();
    assert_eq!((s.rx_frames, s.rx_bytes), (1, fr.len() as u64));
    // Unknown unicast: out the uplink, to no vNIC.
    a.send(&f(ext(9), mac(1), 2));
    assert_eq!(up.take_sent().len(), 1);
    assert!(drain(&b).is_empty() && drain(&c).is_empty());
}

#[test]
fn broadcast_is_flooded_within_its_vlan_only() {
    let sw = switch();
    sw.add_portgroup("v10", pg(10)).unwrap();
    sw.add_portgroup("v20", pg(20)).unwrap();
    sw.add_portgroup("trunk", pg(VLAN_VGT)).unwrap();
    let a = sw.add_vnic("v10", "a", mac(1)).unwrap();
    let b = sw.add_vnic("v10", "b", mac(2)).unwrap();
    let c = sw.add_vnic("v20", "c", mac(3)).unwrap();
    let t = sw.add_vnic("trunk", "t", mac(4)).unwrap();
    let up = uplink(&sw, "up0");
    let bc = f(MacAddr::BROADCAST, mac(1), 7);
    a.send(&bc);
    assert_eq!(drain(&b), vec![bc.clone()], "same VLAN, untagged");
    assert!(drain(&c).is_empty(), "other VLAN");
    assert_eq!(drain(&t), vec![tag(&bc, 10)], "VGT port sees it tagged");
    assert_eq!(
        up.take_sent(),
        vec![tag(&bc, 10)],
        "VST: tagged to the uplink"
    );
    // Multicast likewise.
    let mc = f(MacAddr([0x01, 0, 0x5e, 0, 0, 1]), mac(3), 8);
    c.send(&mc);
    assert!(drain(&a).is_empty() && drain(&b).is_empty());
    assert_eq!(drain(&t), vec![tag(&mc, 20)]);
}

#[test]
fn vst_tags_to_uplinks_and_untags_to_vms() {
    let sw = switch();
    sw.add_portgroup("v10", pg(10)).unwrap();
    let a = sw.add_vnic("v10", "a", mac(1)).unwrap();
    let up = uplink(&sw, "up0");
    // From the VM: tagged on the wire.
    let out = f(ext(1), mac(1), 1);
    a.send(&out);
    assert_eq!(up.take_sent(), vec![tag(&out, 10)]);
    // From the wire tagged 10: untagged to the VM.
    let inb = f(mac(1), ext(1), 2);
    sw.receive_from_uplink("up0", &tag(&inb, 10)).unwrap();
    assert_eq!(drain(&a), vec![inb.clone()]);
    // Tagged 11 or untagged: not this VM's VLAN.
    sw.receive_from_uplink("up0", &tag(&inb, 11)).unwrap();
    sw.receive_from_uplink("up0", &inb).unwrap();
    assert!(drain(&a).is_empty());
    // A guest may not tag outside VGT.
    assert_eq!(a.send(&tag(&out, 10)), TxOutcome::Dropped);
    assert_eq!(a.stats().drops.vlan, 1);
    assert!(up.take_sent().is_empty());
}

#[test]
fn vgt_guests_tag_and_reach_the_right_vlan() {
    let sw = switch();
    sw.add_portgroup("trunk", pg(VLAN_VGT)).unwrap();
    sw.add_portgroup("v10", pg(10)).unwrap();
    sw.add_portgroup("v20", pg(20)).unwrap();
    sw.add_portgroup("plain", pg(0)).unwrap();
    let t = sw.add_vnic("trunk", "t", mac(1)).unwrap();
    let a = sw.add_vnic("v10", "a", mac(2)).unwrap();
    let b = sw.add_vnic("v20", "b", mac(3)).unwrap();
    let p = sw.add_vnic("plain", "p", mac(4)).unwrap();
    let up = uplink(&sw, "up0");
    // The trunk guest talks to a on VLAN 10: a gets it untagged, b nothing.
    let to_a = f(mac(2), mac(1), 1);
    assert_eq!(t.send(&tag(&to_a, 10)), TxOutcome::Sent);
    assert_eq!(drain(&a), vec![to_a.clone()]);
    assert!(drain(&b).is_empty());
    // Tagged 20 for a's MAC: a is not on VLAN 20, so it goes to the uplink, tagged 20.
    t.send(&tag(&to_a, 20));
    assert!(drain(&a).is_empty());
    assert_eq!(up.take_sent(), vec![tag(&to_a, 20)]);
    // Untagged from the trunk is VLAN 0.
    let to_p = f(mac(4), mac(1), 2);
    t.send(&to_p);
    assert_eq!(drain(&p), vec![to_p]);
    // Replies come back to the trunk guest tagged with their VLAN.
    let from_b = f(mac(1), mac(3), 3);
    b.send(&from_b);
    assert_eq!(drain(&t), vec![tag(&from_b, 20)]);
    // VLAN 4095 on the wire is invalid.
    assert_eq!(t.send(&tag(&to_a, VLAN_VGT)), TxOutcome::Dropped);
    assert_eq!(t.stats().drops.vlan, 1);
}

#[test]
fn forged_transmits_reject_drops_and_counts() {
    let sw = switch();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    let b = sw.add_vnic("vm", "b", mac(2)).unwrap();
    let spoofed = f(mac(2), mac(9), 1);
    assert_eq!(a.send(&spoofed), TxOutcome::Dropped);
    assert_eq!(a.stats().drops.forged, 1);
    assert_eq!(a.stats().tx_frames, 0);
    assert!(drain(&b).is_empty());
    // Accept, applied live.
    let mut cfg = sw.portgroup("vm").unwrap();
    cfg.security.forged_transmits = true;
    sw.set_portgroup("vm", cfg).unwrap();
    assert_eq!(a.send(&spoofed), TxOutcome::Sent);
    assert_eq!(drain(&b), vec![spoofed]);
    assert_eq!(a.stats().drops.forged, 1);
}

#[test]
fn promiscuous_accept_sees_the_vlan_reject_does_not() {
    let sw = switch();
    sw.add_portgroup("vm", pg(5)).unwrap();
    sw.add_portgroup("spy", pg(5)).unwrap();
    sw.add_portgroup("other", pg(6)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    let b = sw.add_vnic("vm", "b", mac(2)).unwrap();
    let spy = sw.add_vnic("spy", "spy", mac(3)).unwrap();
    let far = sw.add_vnic("other", "far", mac(4)).unwrap();
    let _up = uplink(&sw, "up0");
    let fr = f(mac(2), mac(1), 1);
    a.send(&fr);
    assert_eq!(drain(&b).len(), 1);
    assert!(drain(&spy).is_empty(), "reject: only its own traffic");
    for name in ["spy", "other"] {
        let mut cfg = sw.portgroup(name).unwrap();
        cfg.security.promiscuous = true;
        sw.set_portgroup(name, cfg).unwrap();
    }
    a.send(&fr);
    assert_eq!(drain(&b).len(), 1);
    assert_eq!(
        drain(&spy),
        vec![fr.clone()],
        "accept: sees others' unicast"
    );
    assert!(drain(&far).is_empty(), "but only on its VLAN");
    // Frames from the wire for unknown MACs too.
    let wire = f(ext(2), ext(1), 2);
    sw.receive_from_uplink("up0", &tag(&wire, 5)).unwrap();
    assert_eq!(drain(&spy), vec![wire]);
    assert!(drain(&a).is_empty() && drain(&b).is_empty());
}

#[test]
fn mac_changes_reject_drops_inbound_frames() {
    let sw = switch();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    let b = sw.add_vnic("vm", "b", mac(2)).unwrap();
    // The guest of b changes its MAC (control queue ADDR_SET).
    b.set_effective_mac(mac(20)).unwrap();
    assert_eq!(b.effective_mac(), mac(20));
    assert_eq!(b.mac(), mac(2));
    a.send(&f(mac(20), mac(1), 1));
    a.send(&f(MacAddr::BROADCAST, mac(1), 2));
    assert!(drain(&b).is_empty());
    assert_eq!(b.stats().drops.mac_changed, 2);
    // Forged-transmit checks use the effective MAC.
    assert_eq!(b.send(&f(mac(1), mac(20), 3)), TxOutcome::Sent);
    assert_eq!(b.send(&f(mac(1), mac(2), 3)), TxOutcome::Dropped);
    // Accept: frames for the new MAC arrive.
    let mut cfg = sw.portgroup("vm").unwrap();
    cfg.security.mac_changes = true;
    sw.set_portgroup("vm", cfg).unwrap();
    let fr = f(mac(20), mac(1), 4);
    a.send(&fr);
    assert_eq!(drain(&b), vec![fr]);
    // Back to the configured MAC: fine under reject as well.
    cfg.security.mac_changes = false;
    sw.set_portgroup("vm", cfg).unwrap();
    b.set_effective_mac(mac(2)).unwrap();
    a.send(&f(mac(2), mac(1), 5));
    assert_eq!(drain(&b).len(), 1);
    // Another port's MAC cannot be taken.
    let e = b.set_effective_mac(mac(1)).unwrap_err();
    assert!(e.to_string().contains("already used by port a"), "{e}");
}

#[test]
fn duplicate_macs_and_bad_configuration_are_refused_clearly() {
    let sw = switch();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let _a = sw.add_vnic("vm", "web/eth0", mac(1)).unwrap();
    let e = sw.add_vnic("vm", "db/eth0", mac(1)).unwrap_err();
    assert!(
        e.to_string()
            .contains("02:56:4b:00:00:01 is already used by port web/eth0"),
        "{e}"
    );
    let e = sw.add_vnic("nope", "x", mac(2)).unwrap_err();
    assert!(
        e.to_string().contains("no port group named nope")
            && e.to_string().contains("existing: vm"),
        "{e}"
    );
    assert!(matches!(
        sw.add_vnic("vm", "x", MacAddr::BROADCAST),
        Err(SwitchError::BadMac { .. })
    ));
    assert!(matches!(
        sw.add_portgroup("vm", pg(0)),
        Err(SwitchError::DuplicatePortGroup { .. })
    ));
    let e = sw.add_portgroup("bad", pg(4096)).unwrap_err();
    assert!(e.to_string().contains("4095 (guest tagging)"), "{e}");
    let e = sw.remove_portgroup("vm").unwrap_err();
    assert!(e.to_string().contains("1 port(s)"), "{e}");
    assert!(VSwitch::new(
        "big",
        SwitchConfig {
            mtu: 9001,
            ..Default::default()
        }
    )
    .is_err());
    assert!(VSwitch::new(
        "jumbo",
        SwitchConfig {
            mtu: 9000,
            ..Default::default()
        }
    )
    .is_ok());
    let e = sw
        .set_teaming(TeamingPolicy {
            active: vec!["a".into()],
            standby: vec!["a".into()],
            failback: true,
        })
        .unwrap_err();
    assert!(e.to_string().contains("listed twice"), "{e}");
    // A port's MAC is free again once it is gone.
    drop(_a);
    let _again = sw.add_vnic("vm", "db/eth0", mac(1)).unwrap();
    assert_eq!(sw.portgroups()[0].ports, 1);
}

#[test]
fn frames_over_the_mtu_are_dropped_and_counted() {
    let sw = switch();
    sw.add_portgroup("vm", pg(0)).unwrap();
    sw.add_portgroup("trunk", pg(VLAN_VGT)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    let b = sw.add_vnic("vm", "b", mac(2)).unwrap();
    let t = sw.add_vnic("trunk", "t", mac(3)).unwrap();
    let _up = uplink(&sw, "up0");
    let fit = build(mac(2), mac(1), 0x0800, &[0; 1500]);
    let big = build(mac(2), mac(1), 0x0800, &[0; 1501]);
    assert_eq!(a.send(&fit), TxOutcome::Sent);
    assert_eq!(a.send(&big), TxOutcome::Dropped);
    assert_eq!(a.stats().drops.oversize, 1);
    assert_eq!(drain(&b).len(), 1);
    // The tag does not count against the MTU.
    let tagged = tag(&build(mac(2), mac(3), 0x0800, &[0; 1500]), 0);
    assert_eq!(t.send(&tagged), TxOutcome::Sent);
    assert_eq!(drain(&b).len(), 1);
    // From the wire.
    sw.receive_from_uplink("up0", &build(mac(2), ext(1), 0x0800, &[0; 1501]))
        .unwrap();
    assert!(drain(&b).is_empty());
    assert_eq!(sw.uplinks()[0].stats.drops.oversize, 1);
    // Jumbo frames on a 9000 switch; raising the MTU applies at once.
    sw.set_mtu(9000).unwrap();
    let jumbo = build(mac(2), mac(1), 0x0800, &[0; 9000]);
    assert_eq!(a.send(&jumbo), TxOutcome::Sent);
    assert_eq!(drain(&b), vec![jumbo]);
    assert_eq!(
        a.send(&build(mac(2), mac(1), 0x0800, &[0; 9001])),
        TxOutcome::Dropped
    );
    assert_eq!(a.stats().drops.oversize, 2);
    // Runts without an Ethernet header.
    assert_eq!(a.send(&[0; 10]), TxOutcome::Dropped);
    assert_eq!(a.stats().drops.malformed, 1);
}

#[test]
fn macs_behind_uplinks_are_learned_and_age_out() {
    let sw = VSwitch::new(
        "vs0",
        SwitchConfig {
            mac_ageing: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .unwrap();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap(); // port 0: team uplink u0
    let u0 = uplink(&sw, "u0");
    let u1 = uplink(&sw, "u1");
    // X talks from behind u1.
    sw.receive_from_uplink("u1", &f(MacAddr::BROADCAST, ext(7), 1))
        .unwrap();
    let learned = sw.learned_macs();
    assert_eq!(learned.len(), 1);
    assert_eq!(
        (learned[0].mac, learned[0].uplink.as_str(), learned[0].vlan),
        (ext(7), "u1", 0)
    );
    // Port 0's broadcast filter is u0: a broadcast from u1 is not delivered to a.
    assert!(drain(&a).is_empty());
    // a → X goes out u1, where X is.
    a.send(&f(ext(7), mac(1), 2));
    assert_eq!(u1.take_sent().len(), 1);
    assert!(u0.take_sent().is_empty());
    // Unknown MACs go out a's team uplink.
    a.send(&f(ext(8), mac(1), 3));
    assert_eq!(u0.take_sent().len(), 1);
    // After the ageing time, X is forgotten.
    std::thread::sleep(Duration::from_millis(400));
    assert!(sw.learned_macs().is_empty());
    a.send(&f(ext(7), mac(1), 4));
    assert_eq!(u0.take_sent().len(), 1);
    assert!(u1.take_sent().is_empty());
}

#[test]
fn uplink_frames_never_go_to_another_uplink() {
    let sw = switch();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    let u0 = uplink(&sw, "u0");
    let u1 = uplink(&sw, "u1");
    for fr in [
        f(MacAddr::BROADCAST, ext(1), 1),
        f(MacAddr([0x01, 0, 0x5e, 0, 0, 9]), ext(1), 2),
        f(ext(2), ext(1), 3),
        f(mac(1), ext(1), 4),
    ] {
        sw.receive_from_uplink("u0", &fr).unwrap();
        sw.receive_from_uplink("u1", &fr).unwrap();
    }
    assert!(u0.take_sent().is_empty() && u1.take_sent().is_empty());
    // a got the broadcast and multicast once (from its own uplink u0) and the unicast
    // from both.
    assert_eq!(drain(&a).len(), 4);
    // Our own MAC coming back from the wire is a loop: dropped.
    sw.receive_from_uplink("u0", &f(MacAddr::BROADCAST, mac(1), 5))
        .unwrap();
    assert!(drain(&a).is_empty());
    assert_eq!(sw.uplinks()[0].stats.drops.looped, 1);
}

#[test]
fn teaming_fails_over_and_back() {
    let sw = switch();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    let u0 = uplink(&sw, "u0");
    let u1 = uplink(&sw, "u1");
    sw.set_teaming(TeamingPolicy {
        active: vec!["u0".into()],
        standby: vec!["u1".into()],
        failback: true,
    })
    .unwrap();
    let send = || a.send(&f(ext(1), mac(1), 0));
    let sent = || (u0.take_sent().len(), u1.take_sent().len());
    send();
    assert_eq!(sent(), (1, 0));
    u0.set_link(false);
    sw.poll_links();
    assert_eq!(sw.ports()[0].uplink.as_deref(), Some("u1"));
    send();
    assert_eq!(sent(), (0, 1), "failed over to the standby");
    u0.set_link(true);
    sw.poll_links();
    send();
    assert_eq!(sent(), (1, 0), "failback");
    // Without failback the standby keeps the traffic until it fails.
    sw.set_teaming(TeamingPolicy {
        active: vec!["u0".into()],
        standby: vec!["u1".into()],
        failback: false,
    })
    .unwrap();
    u0.set_link(false);
    sw.poll_links();
    u0.set_link(true);
    sw.poll_links();
    send();
    assert_eq!(sent(), (0, 1), "no failback");
    let info = sw.uplinks();
    assert!(!info[0].in_use && info[1].in_use && info[0].link_up);
    u1.set_link(false);
    sw.poll_links();
    send();
    assert_eq!(sent(), (1, 0));
    // Both down: nowhere to go, counted.
    u0.set_link(false);
    sw.poll_links();
    send();
    assert_eq!(sent(), (0, 0));
    assert_eq!(a.stats().drops.no_destination, 1);
}

#[test]
fn teaming_balances_by_originating_port_and_the_monitor_polls_links() {
    let sw = VSwitch::new(
        "vs0",
        SwitchConfig {
            link_poll: Duration::from_millis(20),
            ..Default::default()
        },
    )
    .unwrap();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let ports: Vec<VnicPort> = (0..4)
        .map(|i| sw.add_vnic("vm", &format!("p{i}"), mac(i + 1)).unwrap())
        .collect();
    let u0 = uplink(&sw, "u0");
    let u1 = uplink(&sw, "u1");
    for (i, p) in ports.iter().enumerate() {
        p.send(&f(ext(1), mac(i as u8 + 1), 0));
    }
    assert_eq!((u0.take_sent().len(), u1.take_sent().len()), (2, 2));
    // The monitor thread notices a link going down by itself.
    u1.set_link(false);
    let t = Instant::now();
    while sw.uplinks()[1].in_use {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "monitor did not fail over"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for (i, p) in ports.iter().enumerate() {
        p.send(&f(ext(1), mac(i as u8 + 1), 0));
    }
    assert_eq!((u0.take_sent().len(), u1.take_sent().len()), (4, 0));
}

#[test]
fn uplink_receive_thread_delivers_to_vnics() {
    let sw = switch();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    let notified = Arc::new(AtomicUsize::new(0));
    let n = notified.clone();
    a.set_notify(Some(Arc::new(move || {
        n.fetch_add(1, Ordering::SeqCst);
    })));
    let u = uplink(&sw, "u0");
    let fr = f(mac(1), ext(1), 1);
    u.inject(&fr);
    u.inject(&fr);
    let t = Instant::now();
    while a.pending() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "frames did not arrive"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(drain(&a), vec![fr.clone(), fr]);
    // Notified when the queue became non-empty (once, or twice if drained between).
    assert!((1..=2).contains(&notified.load(Ordering::SeqCst)));
    sw.remove_uplink("u0").unwrap();
    assert!(sw.uplinks().is_empty());
}

#[test]
fn a_full_receive_queue_drops_and_counts() {
    let sw = VSwitch::new(
        "vs0",
        SwitchConfig {
            rx_queue_len: 4,
            ..Default::default()
        },
    )
    .unwrap();
    sw.add_portgroup("vm", pg(0)).unwrap();
    let a = sw.add_vnic("vm", "a", mac(1)).unwrap();
    let b = sw.add_vnic("vm", "b", mac(2)).unwrap();
    for i in 0..10 {
        a.send(&f(mac(2), mac(1), i));
    }
    assert_eq!(b.pending(), 4);
    assert_eq!(b.stats().drops.queue_full, 6);
    assert_eq!(b.stats().rx_frames, 4);
    // The oldest frames are kept, in order.
    let got = drain(&b);
    assert_eq!(got[0][14], 0);
    assert_eq!(got[3][14], 3);
}

/// Shaping with the real clock: a sender that always has a frame ready, waits as long as
/// the switch says when throttled, and sends for ~2 s. The rate must come out within
/// ±10% of the average (after the burst). This checks that the port applies its
/// shaper correctly, not how fast anything is.
#[test]
fn egress_shaping_holds_the_average_rate() {
    let sw = switch();
    let avg = 40_000_000u64; // 40 Mbit/s = 5 MB/s
    sw.add_portgroup(
        "shaped",
        PortGroupConfig {
            vlan: 0,
            shaping: Some(ShapingPolicy {
                average_bps: avg,
                peak_bps: 2 * avg,
                burst_bytes: 50_000,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let a = sw.add_vnic("shaped", "a", mac(1)).unwrap();
    let b = sw.add_vnic("shaped", "b", mac(2)).unwrap();
    let fr = build(mac(2), mac(1), 0x0800, &[0; 1486]); // 1500 bytes
    let start = Instant::now();
    let run = Duration::from_secs(2);
    let mut throttled = 0;
    while start.elapsed() < run {
        match a.send(&fr) {
            TxOutcome::Sent => {
                let _ = b.recv();
            }
            TxOutcome::Throttled(d) => {
                throttled += 1;
                std::thread::sleep(d);
            }
            TxOutcome::Dropped => panic!("shaping must not drop"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = a.stats().tx_bytes as f64;
    let rate = (bytes - 50_000.0) * 8.0 / secs;
    let ratio = rate / avg as f64;
    eprintln!(
        "shaped rate {:.2} Mbit/s over {secs:.2} s, {throttled} delays",
        rate / 1e6
    );
    assert!((0.9..=1.1).contains(&ratio), "rate {rate} vs average {avg}");
    assert!(throttled > 0 && a.stats().throttled > 0);
    // Shaping off (live): no delays.
    sw.set_portgroup("shaped", pg(0)).unwrap();
    for _ in 0..1000 {
        assert_eq!(a.send(&fr), TxOutcome::Sent);
    }
}

#[test]
fn header_parsing_of_tagged_frames() {
    let fr = tag(&f(mac(1), mac(2), 0), 4094);
    let h = EthHeader::parse(&fr).unwrap();
    assert_eq!(h.vid(), Some(4094));
}
