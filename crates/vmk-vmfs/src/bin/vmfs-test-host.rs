//! A test helper: one host of a multi-host test, as its own process (the tests in
//! `tests/multihost.rs` start many). Not a user tool; `vmk datastore` is.
//!
//! ```text
//! vmfs-test-host stress VOLUME HOST SECONDS SEED MANIFEST
//! vmfs-test-host writer VOLUME HOST PATH          (writes until killed; "ready" on stdout)
//! vmfs-test-host race VOLUME HOST ROUNDS START_MS PERIOD_MS
//! ```
//!
//! MANIFEST gets a line `NAME LEN CRC32C` for each file the stress host owns at the end,
//! also when it fails; the file of an operation that failed half-way is `NAME ?` (it may or
//! may not exist, with any contents).
//!
//! VOLUME is a file path, or `nbd:HOST:PORT` / `nbd+unix:SOCKET` for an NBD export.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmk_vmfs::{Datastore, FileOptions, LockMode, MountOptions, VmfsError};

fn mount(spec: &str, host: u32) -> Result<Datastore, VmfsError> {
    // No fdatasync: the hosts of a test share one page cache, and what is tested is a
    // process crash, which the page cache survives.
    Datastore::mount(
        vmk_vmfs::open_device(spec, false)?,
        &MountOptions {
            host_id: Some(host),
            sync: false,
            who: format!("test host {host}"),
        },
    )
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn fill(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for chunk in v.chunks_mut(8) {
        let x = rng.next().to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    v
}

fn stress(spec: &str, host: u32, secs: u64, seed: u64, manifest: &str) -> Result<String, String> {
    let ds = mount(spec, host).map_err(|e| format!("mount: {e}"))?;
    match ds.mkdir("/stress") {
        Ok(()) | Err(VmfsError::AlreadyExists(_)) => {}
        Err(e) => return Err(format!("mkdir: {e}")),
    }
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut next_id = 0u32;
    let start = Instant::now();
    let mut ops = [0u64; 7];
    let mut locked = 0u64;
    // The file an operation is changing, for the manifest if it fails half-way.
    let mut in_flight: Option<String> = None;
    while start.elapsed() < Duration::from_secs(secs) {
        let op = rng.below(100);
        let names: Vec<String> = model.keys().cloned().collect();
        let pick = |rng: &mut Rng| names.get(rng.below(names.len() as u64) as usize).cloned();
        let r: Result<(), VmfsError> = (|| {
            if op < 15 || names.is_empty() {
                if model.len() >= 4 {
                    return Ok(());
                }
                let name = format!("/stress/h{host}-{next_id}");
                next_id += 1;
                in_flight = Some(name.clone());
                let mut f = ds.create_file(&name, &FileOptions::default())?;
                let len = rng.below(100_000) as usize;
                let data = fill(&mut rng, len);
                f.write_at(&data, 0)?;
                f.close()?;
                model.insert(name, data);
                ops[0] += 1;
            } else if op < 40 {
                // extend
                let Some(name) = pick(&mut rng) else {
                    return Ok(());
                };
                let m = model.get_mut(&name).expect("picked");
                let len = if rng.below(4) == 0 {
                    rng.below(2 << 20)
                } else {
                    rng.below(200_000)
                } as usize;
                if m.len() + len > 4 << 20 {
                    return Ok(());
                }
                let data = fill(&mut rng, len);
                in_flight = Some(name.clone());
                let mut f = ds.open_file(&name, LockMode::Exclusive)?;
                f.write_at(&data, m.len() as u64)?;
                f.close()?;
                m.extend_from_slice(&data);
                ops[1] += 1;
            } else if op < 60 {
                // overwrite inside (maybe past the end, leaving a hole)
                let Some(name) = pick(&mut rng) else {
                    return Ok(());
                };
                let m = model.get_mut(&name).expect("picked");
                let off = rng.below(m.len() as u64 + 300_000) as usize;
                let len = rng.below(300_000) as usize;
                if off + len > 4 << 20 {
                    return Ok(());
                }
                let data = fill(&mut rng, len);
                in_flight = Some(name.clone());
                let mut f = ds.open_file(&name, LockMode::Exclusive)?;
                f.write_at(&data, off as u64)?;
                if rng.below(3) == 0 {
                    f.flush()?;
                }
                f.close()?;
                if m.len() < off + len {
                    m.resize(off + len, 0);
                }
                m[off..off + len].copy_from_slice(&data);
                ops[2] += 1;
            } else if op < 80 {
                // read back and compare
                let Some(name) = pick(&mut rng) else {
                    return Ok(());
                };
                let m = &model[&name];
                let mut f = ds.open_file(&name, LockMode::SharedRead)?;
                let mut got = vec![0u8; m.len() + 10];
                let n = f.read_at(&mut got, 0)?;
                f.close()?;
                if n != m.len() || crc32c::crc32c(&got[..n]) != crc32c::crc32c(m) {
                    return Err(VmfsError::Invalid(format!(
                        "{name}: read back {n} bytes that differ from the {} written",
                        m.len()
                    )));
                }
                ops[3] += 1;
            } else if op < 88 {
                // truncate
                let Some(name) = pick(&mut rng) else {
                    return Ok(());
                };
                let m = model.get_mut(&name).expect("picked");
                let n = rng.below(m.len() as u64 + 1) as usize;
                in_flight = Some(name.clone());
                let mut f = ds.open_file(&name, LockMode::Exclusive)?;
                f.set_len(n as u64)?;
                f.close()?;
                m.truncate(n);
                ops[4] += 1;
            } else if op < 95 {
                let Some(name) = pick(&mut rng) else {
                    return Ok(());
                };
                in_flight = Some(name.clone());
                ds.remove(&name)?;
                model.remove(&name);
                ops[5] += 1;
            } else {
                // read somebody else's file (shared with other readers, refused while written)
                let list = ds.list("/stress")?;
                if list.is_empty() {
                    return Ok(());
                }
                let e = &list[rng.below(list.len() as u64) as usize];
                match ds.open_file(&format!("/stress/{}", e.name), LockMode::SharedRead) {
                    Ok(mut f) => {
                        let mut b = vec![0u8; f.len().min(1 << 20) as usize];
                        f.read_at(&mut b, 0)?;
                        f.close()?;
                    }
                    Err(VmfsError::Locked { .. }) | Err(VmfsError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                ops[6] += 1;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {}
            // Another host reading our file right now (it refused before changing anything).
            Err(VmfsError::Locked { .. }) => locked += 1,
            Err(e) => {
                // The test checks the volume against the manifests after a failure too, to
                // tell a damaged volume from one host's wrong view of it.
                if let Some(name) = &in_flight {
                    model.remove(name);
                }
                write_manifest(manifest, &model, in_flight.as_deref())?;
                return Err(format!("host {host}: {e}"));
            }
        }
        in_flight = None;
    }
    write_manifest(manifest, &model, None)?;
    ds.unmount().map_err(|e| format!("unmount: {e}"))?;
    Ok(format!(
        "host {host}: create {} extend {} write {} verify {} truncate {} delete {} cross-read {} (busy {locked})",
        ops[0], ops[1], ops[2], ops[3], ops[4], ops[5], ops[6]
    ))
}

fn write_manifest(
    path: &str,
    model: &BTreeMap<String, Vec<u8>>,
    uncertain: Option<&str>,
) -> Result<(), String> {
    let mut out = String::new();
    for (name, data) in model {
        out.push_str(&format!(
            "{name} {} {:08x}\n",
            data.len(),
            crc32c::crc32c(data)
        ));
    }
    if let Some(name) = uncertain {
        out.push_str(&format!("{name} ?\n"));
    }
    std::fs::write(path, &out).map_err(|e| format!("{path}: {e}"))
}

fn writer(spec: &str, host: u32, path: &str) -> Result<String, String> {
    let ds = mount(spec, host).map_err(|e| format!("mount: {e}"))?;
    let mut f = ds
        .create_file(path, &FileOptions::default())
        .map_err(|e| e.to_string())?;
    let mut rng = Rng(host as u64 | 1);
    let block = fill(&mut rng, 256 << 10);
    let mut i = 0u64;
    loop {
        f.write_at(&block, (i % 64) * (256 << 10))
            .map_err(|e| e.to_string())?;
        if i % 4 == 3 {
            f.flush().map_err(|e| e.to_string())?;
            // Metadata traffic besides the file: small files come and go.
            let p = format!("/w{host}-{}", i % 8);
            let _ = ds.remove(&p);
            ds.create_file(
                &p,
                &FileOptions {
                    size: 70_000,
                    eager_zeroed: false,
                },
            )
            .and_then(|g| g.close())
            .map_err(|e| e.to_string())?;
        }
        if i == 8 {
            println!("ready");
            let _ = std::io::stdout().flush();
        }
        i += 1;
    }
}

fn race(
    spec: &str,
    host: u32,
    rounds: u64,
    start_ms: u64,
    period_ms: u64,
) -> Result<String, String> {
    let ds = mount(spec, host).map_err(|e| format!("mount: {e}"))?;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    let mut out = String::new();
    for r in 0..rounds {
        let t = start_ms + r * period_ms;
        while now_ms() < t {
            std::thread::sleep(Duration::from_micros(200));
        }
        match ds.open_file("/race.vmdk", LockMode::Exclusive) {
            Ok(f) => {
                let end = now_ms();
                // Hold it past the time the others try.
                while now_ms() < t + period_ms * 6 / 10 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                f.close().map_err(|e| e.to_string())?;
                out.push_str(&format!("{r} won {}\n", end - t));
            }
            Err(VmfsError::Locked { host: h, .. }) => out.push_str(&format!("{r} lost {h}\n")),
            Err(e) => return Err(format!("round {r}: {e}")),
        }
    }
    ds.unmount().map_err(|e| e.to_string())?;
    Ok(out)
}

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize| a.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let r = match a.get(1).map(String::as_str) {
        Some("stress") if a.len() == 7 => stress(&a[2], num(3) as u32, num(4), num(5), &a[6]),
        Some("writer") if a.len() == 5 => writer(&a[2], num(3) as u32, &a[4]),
        Some("race") if a.len() == 7 => race(&a[2], num(3) as u32, num(4), num(5), num(6)),
        _ => Err("usage: see the source of vmfs-test-host".into()),
    };
    match r {
        Ok(s) => {
            print!("{s}");
            if !s.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmfs-test-host: {e}");
            ExitCode::FAILURE
        }
    }
}
