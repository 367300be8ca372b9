//! Two Debian guests in one process, each with a virtio-net NIC on one vSwitch port
//! group: they ping each other and copy a 20 MiB file over TCP (busybox nc); the sha256
//! matches. A third run puts them on different VLANs: they cannot reach each other.
//!
//! Needs the Debian guest image (built on first use from Debian's mirror or the warm apt
//! cache in ~/.cache/vmk).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmk_machine::{Console, NicSpec, Vm, VmConfig, VmOutcome};
use vmk_vswitch::{MacAllocator, PortGroupConfig, SwitchConfig, VSwitch};

/// The guest's script: wait until the peer answers pings, ping it, then (role `server`)
/// serve a file over TCP or (role `client`) fetch it and print its sha256.
const SCRIPT: &str = r#"
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
peer=$(arg vmk.peer); role=$(arg vmk.role); expect=$(arg vmk.expect)
ip -br addr show eth0
i=0
while ! ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge "${expect:-60}" ]; then echo "vmk-net: peer unreachable"; sleep 600; fi
done
ping -c 3 -W 5 "$peer" && echo "vmk-net: ping ok"
if [ "$role" = server ]; then
    # Receive: stdin must never reach EOF (busybox nc would half-close and the sender
    # stop early), so it reads from a FIFO nobody writes.
    mkfifo /tmp/never; exec 3<>/tmp/never
    nc -l -p 5001 <&3 > /tmp/got
    echo "vmk-net: received sha256 $(sha256sum /tmp/got | cut -d' ' -f1) bytes $(wc -c < /tmp/got)"
else
    dd if=/dev/urandom of=/tmp/data bs=1M count=20 2>/dev/null
    echo "vmk-net: sending sha256 $(sha256sum /tmp/data | cut -d' ' -f1)"
    # The receiver may not listen yet: retry until the connection is taken.
    i=0
    until nc "$peer" 5001 < /tmp/data; do
        i=$((i + 1)); [ "$i" -ge 120 ] && break
        sleep 1
    done
    echo "vmk-net: sent"
fi
sleep 600
"#;

#[derive(Default)]
struct Capture {
    text: Mutex<String>,
    name: String,
}

impl Console for Capture {
    fn write(&self, bytes: &[u8]) {
        let s = String::from_utf8_lossy(bytes);
        if std::env::var_os("VMK_TEST_CONSOLE").is_some() {
            eprint!("{s}");
        }
        self.text.lock().unwrap().push_str(&s);
    }
}

impl Capture {
    fn find(&self, prefix: &str) -> Option<String> {
        let t = self.text.lock().unwrap();
        t.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.trim().to_string())
    }
}

/// Built once per test process: the tests run in parallel, and two builds at once raced
/// (one truncated the script file while the other packed it, giving a guest with an empty
/// init script that exited 0 at once).
fn image() -> (PathBuf, PathBuf) {
    static IMAGE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let info = vmk_testkit::image::build(tmp, "net-guest", Some(SCRIPT), |_| {}).info;
            (info.kernel_path, info.initrd_path)
        })
        .clone()
}

struct Guest {
    console: Arc<Capture>,
    stop: Box<dyn Fn() + Send + Sync>,
    thread: std::thread::JoinHandle<VmOutcome>,
}

/// Boots guest `name` on port group `pg` with address `ip`; it pings `peer` (giving up
/// after `expect` tries) and then plays `role`.
#[allow(clippy::too_many_arguments)]
fn boot(
    sw: &VSwitch,
    macs: &mut MacAllocator,
    pg: &str,
    name: &str,
    ip: &str,
    peer: &str,
    role: &str,
    expect: u32,
) -> Guest {
    let (kernel, initrd) = image();
    let mac = macs.generate(name, 0).unwrap();
    let port = sw.add_vnic(pg, &format!("{name}/eth0"), mac).unwrap();
    let console = Arc::new(Capture {
        name: name.to_string(),
        ..Default::default()
    });
    let vm = Vm::new(VmConfig {
        cpus: 1,
        memory: 256 << 20,
        kernel,
        initrd: Some(initrd),
        cmdline: format!(
            "{} vmk.ip={ip}/24 vmk.peer={peer} vmk.role={role} vmk.expect={expect} quiet",
            vmk_image::DEFAULT_APPEND
        ),
        console: console.clone(),
        disks: Vec::new(),
        nics: vec![NicSpec {
            backend: Box::new(port),
            name: format!("{name}-eth0"),
        }],
        fault_on_console: None,
    })
    .unwrap();
    let stop = Box::new(vm.stopper());
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || vm.run())
        .unwrap();
    Guest {
        console,
        stop,
        thread,
    }
}

fn wait_for(guests: &[&Guest], prefix: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let found: Vec<Option<String>> = guests.iter().map(|g| g.console.find(prefix)).collect();
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
        if start.elapsed() > timeout {
            for g in guests {
                eprintln!(
                    "---- {} console ----\n{}",
                    g.console.name,
                    g.console.text.lock().unwrap()
                );
            }
            panic!("`{prefix}` not seen within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn end(g: Guest) {
    (g.stop)();
    let _ = g.thread.join();
}

#[test]
fn two_guests_ping_and_copy_a_file_over_tcp() {
    let sw = VSwitch::new("vs-guests", SwitchConfig::default()).unwrap();
    sw.add_portgroup("vm", PortGroupConfig::default()).unwrap();
    let mut macs = MacAllocator::new();
    let a = boot(
        &sw,
        &mut macs,
        "vm",
        "guest-a",
        "10.77.0.1",
        "10.77.0.2",
        "server",
        120,
    );
    let b = boot(
        &sw,
        &mut macs,
        "vm",
        "guest-b",
        "10.77.0.2",
        "10.77.0.1",
        "client",
        120,
    );
    wait_for(&[&a, &b], "vmk-net: ping ok", Duration::from_secs(240));
    let sent = wait_for(&[&b], "vmk-net: sending sha256", Duration::from_secs(60));
    let received = wait_for(&[&a], "vmk-net: received sha256", Duration::from_secs(300));
    let want = sent[0].split_whitespace().nth(3).unwrap().to_string();
    let got: Vec<&str> = received[0].split_whitespace().collect();
    assert_eq!(got[3], want, "sha256 of the copy");
    assert_eq!(got[5], (20 << 20).to_string(), "bytes copied");
    for p in sw.ports() {
        eprintln!("{} {}: {:?}", p.name, p.mac, p.stats);
        assert_eq!(p.stats.drops.forged, 0);
        assert!(p.stats.rx_frames > 1000 || p.stats.tx_frames > 1000);
    }
    end(a);
    end(b);
    assert!(sw.ports().is_empty(), "ports go away with their VMs");
}

#[test]
fn guests_on_different_vlans_cannot_reach_each_other() {
    let sw = VSwitch::new("vs-vlans", SwitchConfig::default()).unwrap();
    sw.add_portgroup(
        "v10",
        PortGroupConfig {
            vlan: 10,
            ..Default::default()
        },
    )
    .unwrap();
    sw.add_portgroup(
        "v20",
        PortGroupConfig {
            vlan: 20,
            ..Default::default()
        },
    )
    .unwrap();
    let mut macs = MacAllocator::new();
    let a = boot(
        &sw,
        &mut macs,
        "v10",
        "vlan-a",
        "10.78.0.1",
        "10.78.0.2",
        "server",
        15,
    );
    let b = boot(
        &sw,
        &mut macs,
        "v20",
        "vlan-b",
        "10.78.0.2",
        "10.78.0.1",
        "client",
        15,
    );
    wait_for(
        &[&a, &b],
        "vmk-net: peer unreachable",
        Duration::from_secs(240),
    );
    assert!(a.console.find("vmk-net: ping ok").is_none());
    let ports = sw.ports();
    // Each sent ARP requests that the other never received.
    assert!(
        ports
            .iter()
            .all(|p| p.stats.tx_frames > 0 && p.stats.rx_frames == 0),
        "{ports:?}"
    );
    end(a);
    end(b);
}
