//! Many hosts, one volume: separate processes (`vmfs-test-host`) mount one volume file.
//!
//! Default runs are short (CI); `VMFS_STRESS_SECS=60` runs the stress test longer.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmk_vmfs::fsck::{self, FsckOptions};
use vmk_vmfs::{
    CreateOptions, Datastore, FileDevice, FileOptions, LockMode, MountOptions, VmfsError,
};

const HOST: &str = env!("CARGO_BIN_EXE_vmfs-test-host");

/// Short timeouts so takeovers happen within a test: renew 200 ms, dead after 2 s.
fn test_opts() -> CreateOptions {
    CreateOptions {
        label: "multihost".into(),
        block_size: 1 << 20,
        renew_ms: 200,
        lease_timeout_ms: 2000,
        io_timeout_ms: 100,
    }
}

fn new_volume(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("vol.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    Datastore::create(Box::new(FileDevice::open(&p, false).unwrap()), &test_opts()).unwrap();
    p
}

fn dev(p: &Path) -> Box<FileDevice> {
    Box::new(FileDevice::open(p, false).unwrap())
}

fn fsck_clean(p: &Path) {
    let r = fsck::check(dev(p), &FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "fsck:\n{r}");
}

fn spawn(args: &[&str]) -> Child {
    Command::new(HOST)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the stress hosts; returns the failures (host and what it said).
fn stress(vol: &str, hosts: u32, secs: u64, dir: &Path) -> Vec<String> {
    let children: Vec<(u32, Child)> = (1..=hosts)
        .map(|h| {
            let m = dir.join(format!("manifest-{h}"));
            (
                h,
                spawn(&[
                    "stress",
                    vol,
                    &h.to_string(),
                    &secs.to_string(),
                    &(h as u64 * 7919).to_string(),
                    m.to_str().unwrap(),
                ]),
            )
        })
        .collect();
    let mut failed = Vec::new();
    for (h, c) in children {
        let out = c.wait_with_output().unwrap();
        let so = String::from_utf8_lossy(&out.stdout);
        eprint!("{so}");
        if !out.status.success() {
            failed.push(format!(
                "host {h}: {}{}",
                so,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    failed
}

/// After a stress run: the hosts' own verdicts, fsck of the volume and every manifest
/// against the files, all three reported together, so a failure says whether the volume
/// was damaged or only one host's view of it was wrong.
fn check_after_stress(img: &Path, hosts: u32, dir: &Path, failed: &[String]) {
    let fsck = match fsck::check(dev(img), &FsckOptions::default()) {
        Ok(r) if r.is_clean() => Ok(()),
        Ok(r) => Err(format!("fsck found problems:\n{r}")),
        Err(e) => Err(format!("fsck could not run: {e}")),
    };
    let manifests = verify_manifests(img, hosts, dir);
    match &manifests {
        Ok(n) => eprintln!("{n} surviving files verified"),
        Err(e) => eprintln!("manifests: {e}"),
    }
    assert!(
        failed.is_empty() && fsck.is_ok() && manifests.is_ok(),
        "hosts failed: {}\n{}\nfsck after the run: {}\nmanifests after the run: {}",
        failed.len(),
        failed.join("\n"),
        fsck.err().unwrap_or_else(|| "clean".into()),
        match manifests {
            Ok(n) => format!("all {n} files match"),
            Err(e) => e,
        }
    );
}

/// Every file in the manifests has the contents its host wrote, and nothing else is there
/// (a file a failed host was changing, `NAME ?`, may be there or not, with any contents).
/// Returns how many files were verified.
fn verify_manifests(img: &Path, hosts: u32, dir: &Path) -> Result<usize, String> {
    let ds = Datastore::open_read_only(dev(img)).map_err(|e| e.to_string())?;
    let mut want = BTreeMap::new();
    let mut maybe = Vec::new();
    for h in 1..=hosts {
        let m = dir.join(format!("manifest-{h}"));
        let text = std::fs::read_to_string(&m)
            .map_err(|e| format!("host {h} wrote no manifest ({}: {e})", m.display()))?;
        for line in text.lines() {
            let v: Vec<&str> = line.split(' ').collect();
            match v[..] {
                [name, "?"] => maybe.push(name.to_string()),
                [name, len, crc] => {
                    want.insert(
                        name.to_string(),
                        (
                            len.parse::<usize>().map_err(|e| format!("{line}: {e}"))?,
                            u32::from_str_radix(crc, 16).map_err(|e| format!("{line}: {e}"))?,
                        ),
                    );
                }
                _ => return Err(format!("{}: bad line {line:?}", m.display())),
            }
        }
    }
    let listed: Vec<String> = ds
        .list("/stress")
        .map_err(|e| format!("list /stress: {e}"))?
        .into_iter()
        .map(|e| format!("/stress/{}", e.name))
        .filter(|n| !maybe.contains(n))
        .collect();
    let wanted: Vec<String> = want.keys().cloned().collect();
    if listed != wanted {
        let extra: Vec<_> = listed.iter().filter(|n| !want.contains_key(*n)).collect();
        let missing: Vec<_> = wanted.iter().filter(|n| !listed.contains(n)).collect();
        return Err(format!(
            "surviving files differ: on the volume but in no manifest {extra:?}; in a manifest but not on the volume {missing:?}"
        ));
    }
    let mut bad = Vec::new();
    for (name, (len, crc)) in &want {
        let r = (|| -> Result<(), String> {
            let mut f = ds
                .open_file(name, LockMode::SharedRead)
                .map_err(|e| e.to_string())?;
            let mut b = vec![0u8; *len + 1];
            let n = f.read_at(&mut b, 0).map_err(|e| e.to_string())?;
            if n != *len {
                return Err(format!("{n} bytes, expected {len}"));
            }
            if crc32c::crc32c(&b[..n]) != *crc {
                return Err("contents differ from what its host wrote".into());
            }
            Ok(())
        })();
        if let Err(e) = r {
            bad.push(format!("{name}: {e}"));
        }
    }
    if !bad.is_empty() {
        return Err(bad.join("; "));
    }
    Ok(want.len())
}

fn secs(default: u64) -> u64 {
    std::env::var("VMFS_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn stress_32_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_volume(dir.path(), 3 << 30);
    let t = Instant::now();
    let failed = stress(img.to_str().unwrap(), 32, secs(6), dir.path());
    eprintln!("32 hosts ran in {:.1} s", t.elapsed().as_secs_f64());
    check_after_stress(&img, 32, dir.path(), &failed);
}

#[test]
fn kill_9_a_writer_then_take_over() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_volume(dir.path(), 512 << 20);
    let vol = img.to_str().unwrap();
    let mut w = spawn(&["writer", vol, "2", "/victim.vmdk"]);
    let mut line = String::new();
    BufReader::new(w.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let ds = Datastore::mount(
        dev(&img),
        &MountOptions {
            host_id: Some(1),
            sync: false,
            who: "test".into(),
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    match ds.open_file("/victim.vmdk", LockMode::Exclusive) {
        Err(VmfsError::Locked { host: 2, .. }) => {}
        other => panic!("expected locked by host 2, got {other:?}"),
    }
    w.kill().unwrap(); // SIGKILL
    w.wait().unwrap();
    let killed = Instant::now();
    let mut f = loop {
        match ds.open_file("/victim.vmdk", LockMode::Exclusive) {
            Ok(f) => break f,
            Err(VmfsError::Locked { host: 2, .. }) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("{e}"),
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "no takeover");
    };
    let took = killed.elapsed();
    eprintln!(
        "took over the dead writer's file {:.2} s after kill -9",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_millis(1500),
        "taken over before the lease timeout: {took:?}"
    );
    f.write_at(b"mine now", 0).unwrap();
    f.close().unwrap();
    // The other small files the writer had open or half-created can be removed too.
    for e in ds.list("/").unwrap() {
        if e.name.starts_with("w2-") {
            ds.remove(&format!("/{}", e.name)).unwrap();
        }
    }
    ds.unmount().unwrap();
    fsck_clean(&img);
}

#[test]
fn crash_in_the_middle_of_a_commit_is_replayed_by_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_volume(dir.path(), 256 << 20);
    let vol = img.to_str().unwrap();
    // The writer kills itself right after the Nth journal commit record is durable and
    // before the pages are written in place.
    let mut w = Command::new(HOST)
        .args(["writer", vol, "5", "/crash.vmdk"])
        .env("VMFS_TEST_KILL_AT_COMMIT", "12")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = w.wait().unwrap();
    assert!(!st.success());
    let before = fsck::check(dev(&img), &FsckOptions::default()).unwrap();
    assert!(
        before
            .findings
            .iter()
            .any(|f| f.what.contains("journal of host 5")),
        "{before}"
    );
    let ds = Datastore::mount(
        dev(&img),
        &MountOptions {
            host_id: Some(1),
            sync: false,
            who: "test".into(),
        },
    )
    .unwrap();
    let t = Instant::now();
    loop {
        match ds.recover_host(5) {
            Ok(()) => break,
            Err(_) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("{e}"),
        }
    }
    let f = ds.open_file("/crash.vmdk", LockMode::Exclusive).unwrap();
    f.close().unwrap();
    ds.unmount().unwrap();
    fsck_clean(&img);
}

#[test]
fn two_hosts_race_to_open_for_write() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_volume(dir.path(), 256 << 20);
    {
        let ds = Datastore::mount(
            dev(&img),
            &MountOptions {
                host_id: Some(9),
                sync: false,
                who: "test".into(),
            },
        )
        .unwrap();
        ds.create_file(
            "/race.vmdk",
            &FileOptions {
                size: 1 << 20,
                eager_zeroed: false,
            },
        )
        .unwrap()
        .close()
        .unwrap();
        ds.unmount().unwrap();
    }
    let rounds: u64 = std::env::var("VMFS_RACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let period = 120u64;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    let vol = img.to_str().unwrap();
    let a = spawn(&[
        "race",
        vol,
        "1",
        &rounds.to_string(),
        &start.to_string(),
        &period.to_string(),
    ]);
    let b = spawn(&[
        "race",
        vol,
        "2",
        &rounds.to_string(),
        &start.to_string(),
        &period.to_string(),
    ]);
    let outs: Vec<String> = [a, b]
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).to_string()
        })
        .collect();
    let mut wins = [0u64; 2];
    for r in 0..rounds {
        let won: Vec<bool> = outs
            .iter()
            .map(|o| {
                o.lines()
                    .find(|l| l.split(' ').next() == Some(&r.to_string()))
                    .unwrap_or("")
                    .contains("won")
            })
            .collect();
        assert_eq!(
            won.iter().filter(|&&w| w).count(),
            1,
            "round {r}: {won:?}\n{}\n{}",
            outs[0],
            outs[1]
        );
        wins[if won[0] { 0 } else { 1 }] += 1;
    }
    eprintln!(
        "{rounds} rounds: host 1 won {}, host 2 won {}",
        wins[0], wins[1]
    );
    fsck_clean(&img);
}

/// The stress test, shorter, over a `qemu-nbd --shared` export (the hosts talk NBD over a
/// Unix socket; qemu-nbd is the one cache they share). Skipped when qemu-nbd is missing.
#[test]
fn stress_over_nbd() {
    if Command::new("qemu-nbd").arg("--version").output().is_err() {
        // CI installs qemu-utils (scripts/deps): there a skip is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "qemu-nbd is missing; scripts/deps installs qemu-utils"
        );
        eprintln!("qemu-nbd not installed: skipped");
        return;
    }
    let hosts = 8u32;
    let dir = tempfile::tempdir().unwrap();
    let img = new_volume(dir.path(), 1 << 30);
    let sock = dir.path().join("nbd.sock");
    let mut server = Command::new("qemu-nbd")
        .args([
            "-f",
            "raw",
            "--persistent",
            "--shared",
            &(hosts + 2).to_string(),
            "-k",
        ])
        .arg(&sock)
        .arg(&img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let spec = format!("nbd+unix:{}", sock.display());
    let failed = stress(&spec, hosts, secs(3), dir.path());
    // Check through NBD too, then through the file (qemu-nbd has written everything back).
    let r = fsck::check(
        Box::new(vmk_vmfs::NbdDevice::connect_unix(&sock, "").unwrap()),
        &FsckOptions::default(),
    )
    .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    check_after_stress(&img, hosts, dir.path(), &failed);
    assert!(r.is_clean(), "fsck through NBD: {r}");
}
