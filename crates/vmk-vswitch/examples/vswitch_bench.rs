//! Forwarding-rate benchmark (used by `bench/vswitch.sh`).
//!
//! `vswitch_bench vmk --size N --secs S`: a vSwitch with two vNIC ports; one thread sends
//! N-byte frames from port A to port B's MAC as fast as it can, another drains B. Prints
//! the frames per second that reached B.
//!
//! `vswitch_bench af-packet --size N --secs S --tx IF --rx IF`: the same through the
//! kernel: an AF_PACKET socket sends N-byte frames into interface `tx`, and the frames
//! arriving at `rx` are counted from `/sys/class/net/RX/statistics/rx_packets` (run it
//! in a network namespace where `tx` and `rx` are veth ends attached to a Linux bridge).
//!
//! Output: one line `frames_per_sec=F sent=N delivered=M secs=S`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmk_vswitch::frame::build;
use vmk_vswitch::*;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = arg(&args, "--size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let secs: f64 = arg(&args, "--secs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let run = Duration::from_secs_f64(secs);
    match args.get(1).map(String::as_str) {
        Some("vmk") => vmk(size.max(14), run),
        Some("af-packet") => {
            let tx = arg(&args, "--tx").expect("--tx IF");
            let rx = arg(&args, "--rx").expect("--rx IF");
            af_packet(size.max(14), run, &tx, &rx)
        }
        _ => {
            eprintln!("usage: vswitch_bench vmk|af-packet --size N --secs S [--tx IF --rx IF]");
            std::process::exit(2);
        }
    }
}

fn report(sent: u64, delivered: u64, secs: f64) {
    println!(
        "frames_per_sec={:.0} sent={sent} delivered={delivered} secs={secs:.2}",
        delivered as f64 / secs
    );
}

fn vmk(size: usize, run: Duration) {
    let sw = VSwitch::new(
        "bench",
        SwitchConfig {
            mtu: 9000,
            rx_queue_len: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    sw.add_portgroup("pg", PortGroupConfig::default()).unwrap();
    let ma = MacAddr([2, 0x56, 0x4b, 0, 0, 1]);
    let mb = MacAddr([2, 0x56, 0x4b, 0, 0, 2]);
    let a = sw.add_vnic("pg", "a", ma).unwrap();
    let b = Arc::new(sw.add_vnic("pg", "b", mb).unwrap());
    let frame = build(mb, ma, 0x88b5, &vec![0xab; size - 14]);
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let (s, g, bb) = (stop.clone(), got.clone(), b.clone());
    let drainer = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let mut n = 0;
            while bb.recv().is_some() {
                n += 1;
            }
            if n == 0 {
                std::thread::yield_now();
            }
            g.fetch_add(n, Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < run {
        for _ in 0..256 {
            a.send(&frame);
        }
        sent += 256;
    }
    let secs = start.elapsed().as_secs_f64();
    // Frames that reached B's port (delivered into its queue) in the interval.
    let delivered = b.stats().rx_frames;
    stop.store(true, Ordering::Relaxed);
    drainer.join().unwrap();
    report(sent, delivered, secs);
}

fn rx_packets(ifname: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/rx_packets"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("cannot read rx_packets of {ifname} (run inside its network namespace)")
        })
}

fn af_packet(size: usize, run: Duration, tx: &str, rx: &str) {
    let sock = PacketUplink::open(tx).expect("packet socket");
    let frame = build(
        MacAddr([2, 0xee, 0, 0, 0, 2]),
        MacAddr([2, 0xee, 0, 0, 0, 1]),
        0x88b5,
        &vec![0xab; size - 14],
    );
    let before = rx_packets(rx);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < run {
        for _ in 0..256 {
            if sock.send(&frame).is_ok() {
                sent += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    report(sent, rx_packets(rx) - before, secs);
}
