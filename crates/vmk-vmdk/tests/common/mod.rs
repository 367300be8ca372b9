//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use vmk_vmdk::Vmdk;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "vmk-vmdk-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: reproducible pseudo-random data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// The path of `qemu-img`, or None (then the interop tests are skipped, except under CI,
/// where they fail: CI must have it).
pub fn qemu_img() -> Option<&'static str> {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some("qemu-img");
    }
    if std::env::var_os("CI").is_some() {
        panic!("qemu-img is not installed (Debian package qemu-utils); CI runs the interop tests");
    }
    eprintln!("qemu-img not found: skipping the QEMU interop test (install qemu-utils)");
    None
}

/// Runs qemu-img with `args`; panics with its output on failure.
pub fn qemu(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-img {args:?} failed:\n{text}");
    text
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Writes `data` at `off` in a plain file (the expected contents).
pub fn raw_write(path: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open raw");
    f.write_all_at(data, off).expect("write raw");
}

pub fn raw_file(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create raw");
    f.set_len(size).expect("size raw");
}

/// First data offset at or after `off` in `f` (SEEK_DATA), `None` if only holes follow.
fn next_data(f: &std::fs::File, off: u64) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: lseek on an open file.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        None
    } else {
        Some(r as u64)
    }
}

/// Compares the whole disk with the plain file `expected`, skipping ranges that are
/// known zeros on the disk and holes in the file.
pub fn assert_same(d: &mut Vmdk, expected: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(expected).expect("open expected");
    let len = f.metadata().expect("stat").len();
    assert_eq!(d.size(), len, "disk size");
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let (kind, n) = d
            .block_status(off, (a.len() as u64).min(len - off))
            .expect("block status");
        let n = n as usize;
        let holes = next_data(&f, off).is_none_or(|x| x >= off + n as u64);
        if kind == vmk_vmdk::BlockKind::Zero && holes {
            off += n as u64;
            continue;
        }
        d.read_at(off, &mut a[..n]).expect("read disk");
        f.read_exact_at(&mut b[..n], off).expect("read expected");
        if a[..n] != b[..n] {
            let i = (0..n).find(|&i| a[i] != b[i]).unwrap_or(0);
            panic!("disk differs from expected at byte {}", off + i as u64);
        }
        off += n as u64;
    }
}

/// A plain file of `size` bytes with random data in some 1 MiB-aligned stretches and holes
/// elsewhere, returned as bytes too.
pub fn random_raw(path: &Path, size: u64, seed: u64) {
    let mut rng = Rng(seed);
    raw_file(path, size);
    let mut off = 0;
    while off < size {
        let n = (256 << 10).min(size - off);
        match rng.below(4) {
            0 | 1 => raw_write(path, off, &rng.bytes(n as usize)),
            2 => {
                // Part data, part zeros inside one stretch.
                let k = rng.below(n) as usize;
                raw_write(path, off + (n - k as u64) / 2, &rng.bytes(k));
            }
            _ => {}
        }
        off += n;
    }
}
