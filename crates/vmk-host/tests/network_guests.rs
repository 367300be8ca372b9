//! The host network with Debian guests, through the real host (`runtime::Host` in
//! process, network configured through its `Network`, VMs with `[[nic]]`s), against
//! network namespaces the test makes:
//!
//! - `uplink_security_and_vlans` (3 guests): a VM reaches a TCP server and answers pings in
//!   a namespace through a TAP uplink; a↔b unicast traffic never shows on the TAP (a raw
//!   capture in the namespace); forged transmits = reject drops frames a guest sends with
//!   another source MAC (a macvlan in the guest), counted as `forged`, and after the
//!   policy is switched to accept (live, on the running VM) they reach the namespace;
//!   a promiscuous port group's VM sees a↔b traffic only while promiscuous = accept; a VM
//!   on VLAN 4095 that tags its own frames (eth0.10) reaches a VM on the VLAN 10 port group.
//! - `shaping_and_teaming` (1 guest): iperf3 from the guest to the namespace through a
//!   port group shaped at 8 Mbit/s stays within ±10 %; with two TAP uplinks (active and
//!   standby, bridged to a namespace) taking the active one down during a ping moves the
//!   traffic to the standby, losing at most a few pings.
//!
//! The guests synchronize with the test through a TCP "barrier" server in the namespace:
//! a guest connects and sends a line naming the step it finished; the test checks what it
//! wants, maybe changes the network, and then the server answers, which lets the guest go
//! on.
//!
//! Needs root, iproute2 and (for shaping) iperf3 on the host; without them the tests say
//! SKIPPED and pass. The image (busybox, iperf3; modules 8021q and macvlan) is built on
//! first use from Debian's mirror or the warm cache in ~/.cache/vmk.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmk_api::model::*;
use vmk_api::network::*;
use vmk_host::host_api::HostApi;
use vmk_host::runtime::Host;
use vmk_testkit::netns::{self, ip, link_up, Netns};

const SCRIPT: &str = r#"
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
role=$(arg vmk.role); ns=$(arg vmk.ns); peer=$(arg vmk.peer)
say() { echo "vmk-net: $*"; }
# Tells the test's barrier server in the namespace that step $1 is done and waits for its
# answer. nc's stdin is a FIFO a background writer holds open (busybox nc would stop at
# the end of its input before the answer comes); only nc is waited for.
sync() {
    rm -f /tmp/sync; mkfifo /tmp/sync
    (echo "$1"; exec sleep 600) > /tmp/sync &
    w=$!
    r=$(nc "$ns" 7000 < /tmp/sync)
    kill "$w" 2>/dev/null
    say "sync $1 -> $r"
}
waitping() {
    i=0
    while ! ping -c 1 -W 1 "$1" >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -ge 900 ] && { say "$1 unreachable"; return 1; }
    done
    return 0
}
ip addr show eth0 | grep inet
case "$role" in
a)
    waitping "$ns" && ping -c 3 -W 5 "$ns" >/dev/null && say "host ping ok"
    sync hello
    waitping "$peer" && ping -c 3 -W 5 "$peer" >/dev/null && say "peer ping ok"
    dd if=/dev/zero bs=1k count=200 2>/dev/null | nc "$peer" 5001
    sync sent1
    dd if=/dev/zero bs=1k count=200 2>/dev/null | nc "$peer" 5001
    sync sent2
    # Frames with another source MAC: a macvlan on eth0 with its own address.
    ip link add link eth0 name mv0 address 02:00:00:00:99:01 type macvlan mode private
    ip addr add "$(arg vmk.forged_ip)" dev mv0
    ip link set mv0 up
    ping -c 3 -W 1 -I mv0 "$ns" >/dev/null 2>&1 || say "forged ping failed"
    sync forged1
    ping -c 3 -W 1 -I mv0 "$ns" >/dev/null 2>&1
    sync forged2
    ;;
b)
    ip addr add "$(arg vmk.ip1)" dev eth1 && ip link set eth1 up
    # Receives a's two transfers.
    mkfifo /tmp/never; exec 3<>/tmp/never
    for i in 1 2; do nc -l -p 5001 <&3 > /dev/null; done
    ;;
c)
    # VLAN 4095: the guest tags its own frames.
    ip link add link eth0 name eth0.10 type vlan id 10
    ip addr add "$(arg vmk.vlan_ip)" dev eth0.10
    ip link set eth0.10 up
    waitping "$peer" && ping -c 3 -W 5 "$peer" >/dev/null && say "vlan ping ok"
    ;;
s)
    # Shaping: iperf3 to the namespace for 10 s.
    waitping "$ns" && say "host ping ok"
    iperf3 -c "$ns" -t 10 -f k > /tmp/iperf 2>&1
    say "iperf $(grep -E 'receiver$' /tmp/iperf | tail -1)"
    sync iperf
    # Teaming: a ping to the namespace behind the teamed uplinks, while the test fails
    # the active uplink.
    ip addr add "$(arg vmk.ip1)" dev eth1 && ip link set eth1 up
    waitping "$(arg vmk.team_peer)" && say "team ping ok"
    sync team-start
    ping -c 15 -W 1 "$(arg vmk.team_peer)" > /tmp/ping 2>&1
    say "failover ping $(grep 'packets transmitted' /tmp/ping || tail -3 /tmp/ping | tr '\n' ' ')"
    sync team-done
    ;;
esac
say "done"
sleep 600
"#;

/// Root, /dev/net/tun and `needs`; without them the tests say SKIPPED (and fail in CI).
fn can_run(needs: &[&str]) -> bool {
    netns::can_run("the network guest tests", needs)
}

fn image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let image = vmk_testkit::image::build(tmp, "host-net", Some(SCRIPT), |opts| {
            opts.packages = vec!["iperf3".into()];
            opts.extra_modules = vec!["8021q".into(), "macvlan".into()];
        });
        image.dir
    })
}

/// The barrier server: each connection sends a step name; the step goes to the test,
/// which answers through `go` when the guest may continue.
struct Barrier {
    steps: Receiver<String>,
    go: Sender<String>,
}

impl Barrier {
    fn start(ns: &Netns, addr: &str) -> Barrier {
        let (step_tx, steps) = mpsc::channel::<String>();
        let (go, go_rx) = mpsc::channel::<String>();
        let addr = format!("{addr}:7000");
        let (ready_tx, ready) = mpsc::channel();
        ns.spawn(move || {
            let l = TcpListener::bind(&addr).expect("bind the barrier");
            let _ = ready_tx.send(());
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let mut line = String::new();
                if BufReader::new(&c).read_line(&mut line).is_err() {
                    continue;
                }
                if step_tx.send(line.trim().to_string()).is_err() {
                    return;
                }
                let Ok(answer) = go_rx.recv() else { return };
                let _ = writeln!(c, "{answer}");
            }
        });
        ready.recv().expect("the barrier listens");
        Barrier { steps, go }
    }

    /// Waits for step `want` (the guest's steps come in order: another one is a bug).
    fn wait(&self, want: &str, h: &Host, timeout: Duration) {
        match self.steps.recv_timeout(timeout) {
            Ok(s) if s == want => {}
            Ok(s) => panic!("step '{s}' while waiting for '{want}'\n{}", consoles(h)),
            Err(_) => panic!("no step '{want}' within {timeout:?}\n{}", consoles(h)),
        }
    }

    fn answer(&self, s: &str) {
        self.go.send(s.to_string()).expect("the barrier runs");
    }
}

fn consoles(h: &Host) -> String {
    let mut s = String::new();
    for vm in h.list() {
        let log = h.console_log(&vm.name, 6000).unwrap_or_default();
        s += &format!("---- {} ----\n{}\n", vm.name, String::from_utf8_lossy(&log));
    }
    s
}

fn console(h: &Host, vm: &str) -> String {
    String::from_utf8_lossy(&h.console_log(vm, 1 << 20).unwrap_or_default()).into_owned()
}

/// Waits until VM `vm`'s console has a line starting with `vmk-net: <prefix>`.
fn wait_line(h: &Host, vm: &str, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let want = format!("vmk-net: {prefix}");
    loop {
        if let Some(l) = console(h, vm).lines().find(|l| l.starts_with(&want)) {
            return l.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{vm}: no '{want}' within {timeout:?}\n{}",
            consoles(h)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Frames seen on an interface in a namespace (raw AF_PACKET capture), until stopped.
struct Capture {
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl Capture {
    fn start(ns: &Netns, ifname: &str) -> Capture {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s, ifname) = (frames.clone(), stop.clone(), ifname.to_string());
        let (ready_tx, ready) = mpsc::channel();
        ns.spawn(move || {
            // SAFETY: plain socket calls on a descriptor this thread owns; buffers are
            // valid for their lengths.
            unsafe {
                let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
                assert!(
                    fd >= 0,
                    "packet socket: {}",
                    std::io::Error::last_os_error()
                );
                let name = std::ffi::CString::new(ifname).expect("ifname");
                let idx = libc::if_nametoindex(name.as_ptr());
                assert!(idx > 0, "no interface {name:?} in the namespace");
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto as u16;
                sll.sll_ifindex = idx as i32;
                let r = libc::bind(
                    fd,
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 200_000,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                let _ = ready_tx.send(());
                let mut buf = vec![0u8; 65536];
                while !s.load(Ordering::SeqCst) {
                    let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                    if n > 0 {
                        f.lock().unwrap().push(buf[..n as usize].to_vec());
                    }
                }
                libc::close(fd);
            }
        });
        ready.recv().expect("the capture runs");
        Capture { frames, stop }
    }

    fn frames(&self) -> Vec<Vec<u8>> {
        self.frames.lock().unwrap().clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// IPv4 source and destination of an (untagged) Ethernet frame.
fn ipv4(frame: &[u8]) -> Option<([u8; 4], [u8; 4])> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let s = frame[26..30].try_into().ok()?;
    let d = frame[30..34].try_into().ok()?;
    Some((s, d))
}

fn guest(name: &str, append: &str, nics: &[&str]) -> VmDefinition {
    VmDefinition {
        name: name.into(),
        cpus: 1,
        memory: ByteSize(256 << 20),
        autostart: false,
        boot: Boot {
            image: Some(image().to_path_buf()),
            append: Some(format!("console=ttyS0 earlycon=sbi quiet {append}")),
            ..Boot::default()
        },
        disks: vec![],
        nics: nics
            .iter()
            .map(|pg| NicDef {
                portgroup: pg.to_string(),
                mac: None,
            })
            .collect(),
        resources: Resources::default(),
        test_fault_on_console: None,
    }
}

fn open(dir: &Path) -> Arc<Host> {
    Host::open(&HostConfig {
        dir: dir.to_path_buf(),
        ..HostConfig::default()
    })
    .expect("open the host")
}

fn portgroup(name: &str, sw: &str, vlan: u16) -> PortGroupDef {
    PortGroupDef {
        name: name.into(),
        vswitch: sw.into(),
        vlan,
        security: SecurityDef::default(),
        shaping: None,
    }
}

fn vswitch(name: &str) -> VSwitchDef {
    VSwitchDef {
        name: name.into(),
        mtu: 1500,
        teaming: TeamingDef::default(),
    }
}

/// The counters of VM `vm`'s NIC `nic`.
fn nic(h: &Host, vm: &str, i: usize) -> NicMetrics {
    h.vm_metrics(vm).expect("metrics").nics[i].clone()
}

const BOOT: Duration = Duration::from_secs(600);

#[test]
fn uplink_security_and_vlans() {
    if !can_run(&["ip"]) {
        return;
    }
    image();
    let tmp = tempfile::tempdir().unwrap();
    let h = open(&tmp.path().join("host"));
    let net = h.network().expect("the host has a network");
    // Addresses unlikely to meet anything else on this machine (the namespace is ours
    // anyway).
    let sub = 100 + (std::process::id() % 100) as u8;
    let addr = |i: u8| format!("10.{sub}.0.{i}");
    let tap = format!("vmkt{}", std::process::id() % 100_000);

    net.add_vswitch(vswitch("sw0")).unwrap();
    net.add_uplink(
        "sw0",
        UplinkSpec {
            name: tap.clone(),
            kind: UplinkKind::Tap,
        },
    )
    .unwrap();
    net.add_portgroup(portgroup("lan", "sw0", 0)).unwrap();
    net.add_portgroup(portgroup("v10", "sw0", 10)).unwrap();
    net.add_portgroup(portgroup("trunk", "sw0", 4095)).unwrap();

    let ns = Netns::new("nh");
    ns.move_in(&tap);
    ns.ip(&["addr", "add", &format!("{}/24", addr(1)), "dev", &tap]);
    ns.ip(&["link", "set", &tap, "up"]);
    let capture = Capture::start(&ns, &tap);
    let barrier = Barrier::start(&ns, &addr(1));

    let a = guest(
        "a",
        &format!(
            "vmk.ip={}/24 vmk.role=a vmk.ns={} vmk.peer={} vmk.forged_ip={}/24",
            addr(2),
            addr(1),
            addr(3),
            addr(12)
        ),
        &["lan"],
    );
    let b = guest(
        "b",
        &format!(
            "vmk.ip={}/24 vmk.role=b vmk.ns={} vmk.ip1=10.{sub}.10.3/24",
            addr(3),
            addr(1)
        ),
        &["lan", "v10"],
    );
    let c = guest(
        "c",
        &format!(
            "vmk.ip={}/24 vmk.role=c vmk.ns={} vmk.peer=10.{sub}.10.3 vmk.vlan_ip=10.{sub}.10.4/24",
            addr(4),
            addr(1)
        ),
        &["trunk"],
    );
    for d in [a, b, c] {
        h.create(d).unwrap();
    }
    for vm in ["a", "b", "c"] {
        let info = h.start(vm).unwrap();
        eprintln!("{vm}: NICs {:?}", info.nics);
    }
    let mac_a = h.info("a").unwrap().nics[0].mac.clone();

    // (a) a reaches the namespace: ping and TCP.
    barrier.wait("hello", &h, BOOT);
    let a_tx0 = nic(&h, "a", 0).tx_frames;
    let c_rx0 = nic(&h, "c", 0).rx_frames;
    barrier.answer("hello-from-ns");
    wait_line(&h, "a", "host ping ok", BOOT);
    wait_line(&h, "a", "sync hello -> hello-from-ns", BOOT);

    // (b) promiscuous reject: c (VGT, so on VLAN 0 too) gets none of a's transfer to b.
    barrier.wait("sent1", &h, BOOT);
    wait_line(&h, "a", "peer ping ok", BOOT);
    let a_tx1 = nic(&h, "a", 0).tx_frames;
    let c_rx1 = nic(&h, "c", 0).rx_frames;
    let (a_tx1, c_rx1, a_base, c_base) = (a_tx1 - a_tx0, c_rx1 - c_rx0, a_tx1, c_rx1);
    assert!(a_tx1 > 100, "a sent {a_tx1} frames");
    net.update_portgroup(
        "trunk",
        PortGroupUpdate {
            promiscuous: Some(Policy::Accept),
            ..Default::default()
        },
    )
    .unwrap();
    barrier.answer("ok");
    barrier.wait("sent2", &h, BOOT);
    let a_tx2 = nic(&h, "a", 0).tx_frames - a_base;
    let c_rx2 = nic(&h, "c", 0).rx_frames - c_base;
    eprintln!(
        "promiscuous reject: c received {c_rx1} frames while a sent {a_tx1} (pings and 200 KiB \
         to b); accept: c received {c_rx2} while a sent {a_tx2}"
    );
    // With accept, c's port gets every frame a sends to b (and b's answers); with reject
    // only broadcasts (ARP) and c's own VLAN 10 traffic.
    assert!(c_rx2 * 10 >= a_tx2 * 9, "accept: {c_rx2} of {a_tx2}");
    assert!(
        c_rx1 * 4 < a_tx1,
        "reject: c got {c_rx1} frames (a sent {a_tx1})"
    );
    net.update_portgroup(
        "trunk",
        PortGroupUpdate {
            promiscuous: Some(Policy::Reject),
            ..Default::default()
        },
    )
    .unwrap();

    // (a) a↔b unicast never reached the uplink: no IPv4 frame between them on the TAP.
    let (ia, ib) = ([10, sub, 0, 2], [10, sub, 0, 3]);
    let frames = capture.frames();
    let between = frames
        .iter()
        .filter_map(|f| ipv4(f))
        .filter(|&(s, d)| (s, d) == (ia, ib) || (s, d) == (ib, ia))
        .count();
    let from_a = frames
        .iter()
        .filter_map(|f| ipv4(f))
        .filter(|&(s, d)| (s, d) == (ia, [10, sub, 0, 1]))
        .count();
    eprintln!(
        "TAP capture: {} frames, {from_a} IPv4 a→namespace, {between} IPv4 a↔b",
        frames.len()
    );
    assert!(from_a > 3, "the capture works: it saw a's pings and TCP");
    assert_eq!(between, 0, "a↔b traffic appeared on the uplink");
    barrier.answer("ok");

    // (b) forged transmits = reject: mv0's frames (source 02:00:00:00:99:01) are dropped.
    barrier.wait("forged1", &h, BOOT);
    let forged_mac = [0x02, 0, 0, 0, 0x99, 0x01];
    let seen_forged = |frames: &[Vec<u8>]| {
        frames
            .iter()
            .filter(|f| f.len() >= 12 && f[6..12] == forged_mac)
            .count()
    };
    let m = nic(&h, "a", 0);
    assert!(
        console(&h, "a").contains("vmk-net: forged ping failed"),
        "{}",
        console(&h, "a")
    );
    assert!(m.drop_reasons.forged >= 1, "{m:?}");
    assert_eq!(seen_forged(&capture.frames()), 0);
    let forged_before = m.drop_reasons.forged;
    // Accept, live: the next frames pass and reach the namespace.
    net.update_portgroup(
        "lan",
        PortGroupUpdate {
            forged_transmits: Some(Policy::Accept),
            ..Default::default()
        },
    )
    .unwrap();
    barrier.answer("ok");
    barrier.wait("forged2", &h, BOOT);
    let m = nic(&h, "a", 0);
    let through = seen_forged(&capture.frames());
    eprintln!(
        "forged transmits: reject dropped {forged_before} frames (none on the TAP); accept let \
         {through} through"
    );
    assert!(through >= 1, "accept let no forged frame through");
    assert_eq!(m.drop_reasons.forged, forged_before, "{m:?}");
    // The API's counters and /metrics carry it.
    let prom = vmk_host::api::prometheus::render(&h.metrics());
    let line = format!(
        "vmk_vm_nic_dropped_frames_total{{vm=\"a\",nic=\"0\",portgroup=\"lan\",reason=\"forged\"}} {forged_before}"
    );
    assert!(prom.contains(&line), "no '{line}' in\n{prom}");
    assert!(net
        .info()
        .ports
        .iter()
        .any(|p| p.name == "a/eth0" && p.counters.mac == mac_a));
    barrier.answer("ok");

    // (c) c tags VLAN 10 itself (portgroup 4095) and reaches b's NIC on VLAN 10 (VST).
    wait_line(&h, "c", "vlan ping ok", BOOT);
    assert!(nic(&h, "b", 1).rx_frames >= 3);

    for vm in ["a", "b", "c"] {
        h.poweroff(vm).unwrap();
    }
    h.shutdown(Duration::from_secs(5));
}

#[test]
fn shaping_and_teaming() {
    if !can_run(&["ip", "iperf3"]) {
        return;
    }
    image();
    let tmp = tempfile::tempdir().unwrap();
    let h = open(&tmp.path().join("host"));
    let net = h.network().expect("the host has a network");
    let pid = std::process::id();
    let sub = 100 + (pid % 100) as u8;
    let tap = format!("vmks{}", pid % 100_000);
    let (t1, t2) = (
        format!("vmka{}", pid % 100_000),
        format!("vmkb{}", pid % 100_000),
    );
    let (br, veth, vpeer) = (
        format!("vmkbr{}", pid % 100_000),
        format!("vmkv{}", pid % 100_000),
        format!("vmkp{}", pid % 100_000),
    );
    const RATE: u64 = 8_000_000;

    // sw0: the shaped port group, its uplink a TAP in the namespace.
    net.add_vswitch(vswitch("sw0")).unwrap();
    net.add_uplink(
        "sw0",
        UplinkSpec {
            name: tap.clone(),
            kind: UplinkKind::Tap,
        },
    )
    .unwrap();
    let mut shaped = portgroup("shaped", "sw0", 0);
    shaped.shaping = Some(ShapingDef {
        average_bps: RATE,
        peak_bps: RATE,
        burst_bytes: 16 << 10,
    });
    net.add_portgroup(shaped).unwrap();
    // sw1: two TAP uplinks, active and standby, bridged (root namespace) to a veth whose
    // other end is in the namespace.
    net.add_vswitch(VSwitchDef {
        name: "sw1".into(),
        mtu: 1500,
        teaming: TeamingDef {
            active: vec![t1.clone()],
            standby: vec![t2.clone()],
            failback: true,
        },
    })
    .unwrap();
    for t in [&t1, &t2] {
        net.add_uplink(
            "sw1",
            UplinkSpec {
                name: t.clone(),
                kind: UplinkKind::Tap,
            },
        )
        .unwrap();
    }
    net.add_portgroup(portgroup("team", "sw1", 0)).unwrap();

    let mut ns = Netns::new("nt");
    ns.move_in(&tap);
    ns.ip(&["addr", "add", &format!("10.{sub}.0.1/24"), "dev", &tap]);
    ns.ip(&["link", "set", &tap, "up"]);
    ip(&["link", "add", &br, "type", "bridge"]);
    ns.remove_on_drop(&br);
    ns.veth(&veth, &vpeer);
    ns.ip(&["addr", "add", &format!("10.{sub}.1.1/24"), "dev", &vpeer]);
    ns.ip(&["link", "set", &vpeer, "up"]);
    for l in [&t1, &t2, &veth] {
        ip(&["link", "set", l, "master", &br]);
        link_up(l, true);
    }
    link_up(&br, true);
    let barrier = Barrier::start(&ns, &format!("10.{sub}.0.1"));
    let mut iperf = Command::new("ip")
        .args(["netns", "exec", ns.name(), "iperf3", "-s", "-1", "-B"])
        .arg(format!("10.{sub}.0.1"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start iperf3 -s in the namespace");

    h.create(guest(
        "s",
        &format!(
            "vmk.ip=10.{sub}.0.2/24 vmk.role=s vmk.ns=10.{sub}.0.1 vmk.ip1=10.{sub}.1.2/24 \
             vmk.team_peer=10.{sub}.1.1"
        ),
        &["shaped", "team"],
    ))
    .unwrap();
    h.start("s").unwrap();

    // (d) shaping: the sender's rate within ±10 % of 8 Mbit/s.
    barrier.wait("iperf", &h, BOOT);
    let _ = iperf.wait();
    let line = wait_line(&h, "s", "iperf", BOOT);
    // "[  5]   0.00-10.00  sec  9.6 MBytes  8012 Kbits/sec    0   sender"
    let kbps: f64 = line
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "Kbits/sec")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no rate in '{line}'"));
    let m = nic(&h, "s", 0);
    eprintln!(
        "shaping at {} kbit/s: iperf3 measured {kbps} kbit/s ({line}); throttled {} frames",
        RATE / 1000,
        m.throttled
    );
    let want = RATE as f64 / 1000.0;
    assert!(
        (kbps - want).abs() <= want * 0.10,
        "iperf3 {kbps} kbit/s is not within 10 % of {want}"
    );
    assert!(m.throttled > 0, "{m:?}");
    barrier.answer("ok");

    // (e) teaming: the ping runs (15 × 1 s); after ~4 s the active uplink goes down.
    barrier.wait("team-start", &h, BOOT);
    let in_use = |name: &str| {
        net.vswitch("sw1")
            .unwrap()
            .uplinks
            .iter()
            .find(|u| u.name == name)
            .is_some_and(|u| u.in_use)
    };
    assert!(in_use(&t1) && !in_use(&t2));
    barrier.answer("ok");
    std::thread::sleep(Duration::from_secs(4));
    let t2_tx = net.vswitch("sw1").unwrap().uplinks[1].tx_frames;
    link_up(&t1, false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !in_use(&t2) {
        assert!(Instant::now() < deadline, "no failover to {t2}");
        std::thread::sleep(Duration::from_millis(50));
    }
    barrier.wait("team-done", &h, BOOT);
    let line = wait_line(&h, "s", "failover ping", BOOT);
    // "15 packets transmitted, 14 packets received, 6% packet loss"
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let [sent, got, ..] = nums[..] else {
        panic!("no ping summary in '{line}'\n{}", consoles(&h));
    };
    let t2_after = net.vswitch("sw1").unwrap().uplinks[1].tx_frames;
    eprintln!(
        "teaming: {line}; the standby uplink sent {} frames after the failover",
        t2_after - t2_tx
    );
    assert_eq!(sent, 15, "{line}");
    assert!(sent - got <= 3, "lost {} pings: {line}", sent - got);
    assert!(t2_after - t2_tx >= 5, "the standby carried the traffic");
    barrier.answer("ok");
    h.poweroff("s").unwrap();
    h.shutdown(Duration::from_secs(5));
}
