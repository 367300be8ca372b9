//! The network's tests: hostile configuration, MAC leases, persistence.

use std::sync::Arc;

use vmk_api::model::NicDef;
use vmk_api::network::*;

use super::config::NETWORK_FILE;
use super::switch::{memory_uplink_opener, Network};

fn net() -> Arc<Network> {
    Arc::new(Network::open(None, memory_uplink_opener()).unwrap().0)
}

fn pg(name: &str, sw: &str, vlan: u16) -> PortGroupDef {
    PortGroupDef {
        name: name.into(),
        vswitch: sw.into(),
        vlan,
        security: SecurityDef::default(),
        shaping: None,
    }
}

fn vs(name: &str, mtu: u16) -> VSwitchDef {
    VSwitchDef {
        name: name.into(),
        mtu,
        teaming: TeamingDef::default(),
    }
}

#[test]
fn hostile_configuration_is_refused() {
    let n = net();
    assert_eq!(
        n.add_vswitch(vs("sw0", 10000)).unwrap_err().http_status(),
        400
    );
    assert_eq!(
        n.add_vswitch(vs("a/b", 1500)).unwrap_err().http_status(),
        400
    );
    n.add_vswitch(vs("sw0", 9000)).unwrap();
    assert_eq!(
        n.add_vswitch(vs("sw0", 1500)).unwrap_err().http_status(),
        409
    );
    assert_eq!(
        n.add_portgroup(pg("p", "sw0", 4096))
            .unwrap_err()
            .http_status(),
        400
    );
    let e = n.add_portgroup(pg("p", "nope", 1)).unwrap_err();
    assert_eq!(e.http_status(), 404, "{e}");
    assert!(e.to_string().contains("sw0"), "{e}");
    n.add_portgroup(pg("p", "sw0", 4095)).unwrap();
    assert_eq!(
        n.add_portgroup(pg("p", "sw0", 1))
            .unwrap_err()
            .http_status(),
        409
    );
    let e = n
        .add_uplink(
            "sw0",
            UplinkSpec {
                name: "x".repeat(16),
                kind: UplinkKind::Tap,
            },
        )
        .unwrap_err();
    assert_eq!(e.http_status(), 400, "{e}");
    let e = n
        .update_portgroup(
            "p",
            PortGroupUpdate {
                shaping: Some(ShapingDef {
                    average_bps: 10,
                    peak_bps: 5,
                    burst_bytes: 1,
                }),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("peak"), "{e}");
    let e = n.remove_vswitch("sw0").unwrap_err();
    assert!(e.to_string().contains("port groups (p)"), "{e}");
}

#[test]
fn macs_are_stable_unique_and_released() {
    let n = net();
    n.add_vswitch(vs("sw0", 1500)).unwrap();
    n.add_portgroup(pg("p", "sw0", 0)).unwrap();
    let nic = |mac: Option<&str>| NicDef {
        portgroup: "p".into(),
        mac: mac.map(String::from),
    };
    let a = n.lease("a", &[nic(None), nic(None)], &[]).unwrap();
    let macs = a.macs();
    assert_eq!(macs[0], vmk_vswitch::generated_mac("a", 0, 0).to_string());
    assert_ne!(macs[0], macs[1]);
    // The same MAC given to another VM is refused, naming the holder.
    let e = n.lease("b", &[nic(Some(&macs[1]))], &[]).err().unwrap();
    assert_eq!(e.http_status(), 409);
    assert!(e.to_string().contains("NIC 1 of running VM 'a'"), "{e}");
    let ports = a.connect().unwrap();
    assert_eq!(n.ports().len(), 2);
    assert_eq!(n.remove_portgroup("p").unwrap_err().http_status(), 409);
    drop(ports);
    drop(a);
    // Released: now b may have it, and a gets its MACs again.
    let b = n.lease("b", &[nic(Some(&macs[1]))], &[]).unwrap();
    drop(b);
    let a2 = n.lease("a", &[nic(None), nic(None)], &macs).unwrap();
    assert_eq!(a2.macs(), macs);
    let e = n
        .lease(
            "c",
            &[NicDef {
                portgroup: "q".into(),
                mac: None,
            }],
            &[],
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("no port group named 'q'"), "{e}");
}

#[test]
fn configuration_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(NETWORK_FILE);
    {
        let (n, problems) = Network::open(Some(&path), memory_uplink_opener()).unwrap();
        assert!(problems.is_empty());
        n.add_vswitch(vs("sw0", 9000)).unwrap();
        n.add_portgroup(pg("p", "sw0", 10)).unwrap();
        n.add_uplink(
            "sw0",
            UplinkSpec {
                name: "up0".into(),
                kind: UplinkKind::Packet,
            },
        )
        .unwrap();
        n.update_portgroup(
            "p",
            PortGroupUpdate {
                forged_transmits: Some(Policy::Accept),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let (n, problems) = Network::open(Some(&path), memory_uplink_opener()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let p = n.portgroup("p").unwrap().config;
    assert_eq!((p.vlan, p.security.forged_transmits), (10, Policy::Accept));
    let s = n.vswitch("sw0").unwrap();
    assert_eq!(s.mtu, 9000);
    assert_eq!(s.uplinks.len(), 1);
    assert!(s.uplinks[0].attached);
}
