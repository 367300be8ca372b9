//! Throughput against a plain file: `cargo test --release -p vmk-vmdk --test speed --
//! --ignored --nocapture`. Not run by default (timings are noise in a debug build).

mod common;

use std::os::unix::fs::FileExt;
use std::time::Instant;

use common::{Rng, TempDir};
use vmk_vmdk::{CreateOptions, OpenMode, Subformat, Vmdk};

const SIZE: u64 = 64 << 20;

fn mbps(bytes: u64, t: Instant) -> f64 {
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

#[test]
#[ignore]
fn sequential_64mib_vs_raw() {
    let t = TempDir::new("speed");
    let data = Rng(1).bytes(SIZE as usize);
    for chunk in [4096usize, 64 << 10, 1 << 20] {
        // Raw file.
        let raw = t.join(&format!("r{chunk}.raw"));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&raw)
            .unwrap();
        let w = Instant::now();
        for (i, c) in data.chunks(chunk).enumerate() {
            f.write_all_at(c, (i * chunk) as u64).unwrap();
        }
        f.sync_data().unwrap();
        let raw_w = mbps(SIZE, w);
        let mut buf = vec![0u8; chunk];
        let r = Instant::now();
        for i in 0..SIZE as usize / chunk {
            f.read_exact_at(&mut buf, (i * chunk) as u64).unwrap();
        }
        let raw_r = mbps(SIZE, r);
        for sub in [Subformat::MonolithicSparse, Subformat::MonolithicFlat] {
            let path = t.join(&format!("v{chunk}{sub}.vmdk"));
            let mut d = Vmdk::create(&path, &CreateOptions::new(SIZE, sub)).unwrap();
            let w = Instant::now();
            for (i, c) in data.chunks(chunk).enumerate() {
                d.write_at((i * chunk) as u64, c).unwrap();
            }
            d.flush().unwrap();
            let vw = mbps(SIZE, w);
            d.close().unwrap();
            let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
            let r = Instant::now();
            for i in 0..SIZE as usize / chunk {
                d.read_at((i * chunk) as u64, &mut buf).unwrap();
            }
            let vr = mbps(SIZE, r);
            assert!(buf[..] == data[SIZE as usize - chunk..]);
            println!(
                "{chunk:>8} B chunks, {sub:>16}: write {vw:7.0} MB/s (raw {raw_w:7.0}), read {vr:7.0} MB/s (raw {raw_r:7.0})"
            );
        }
    }
}
