//! Crash consistency: a crash is simulated by letting the first `n` writes of an operation
//! through and dropping the rest (and every sync), for every `n`. After each, `check` must
//! find the damage, repair must leave a clean image (also for `qemu-img check`), data
//! written before the operation must read back unchanged, and every grain the operation
//! touched must read either as before or as after it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::check::FindingKind;
use crate::format::SECTOR;
use crate::{CreateOptions, OpenMode, Subformat, Vmdk};

const MIB: u64 = 1 << 20;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vmk-vmdk-crash-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn qemu_check(path: &Path) {
    let Ok(out) = Command::new("qemu-img")
        .args(["check", "-f", "vmdk"])
        .arg(path)
        .output()
    else {
        return; // qemu-img missing: the integration tests report that
    };
    assert!(
        out.status.success(),
        "qemu-img check after repair:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The operation that gets interrupted: new grains (partial at both ends), an overwrite of
/// allocated grains, zeroes over allocated grains.
fn operation(d: &mut Vmdk, base: u64) {
    let _ = d.write_at(base + 1000, &pattern(9, 300_000));
    let _ = d.write_at(200_000, &pattern(10, 100_000));
    let _ = d.write_zeroes(512 * 1024, 128 * 1024);
}

fn run(grain: u64, hide_table: Option<usize>, base: u64) -> (bool, bool) {
    let dir = Dir::new(&format!("g{grain}-{hide_table:?}"));
    let pristine = dir.0.join("pristine.vmdk");
    let mut o = CreateOptions::new(8 * MIB, Subformat::MonolithicSparse);
    o.grain_size = grain;
    let mut d = Vmdk::create(&pristine, &o).unwrap();
    d.write_at(0, &pattern(1, MIB as usize)).unwrap();
    d.close().unwrap();
    if let Some(k) = hide_table {
        // As if the image came from a tool that makes grain tables lazily.
        let mut b = std::fs::read(&pristine).unwrap();
        for field in [48usize, 56] {
            let dir = u64::from_le_bytes(b[field..field + 8].try_into().unwrap()) * SECTOR;
            let at = dir as usize + k * 4;
            b[at..at + 4].fill(0);
        }
        std::fs::write(&pristine, b).unwrap();
    }
    let mut before = vec![0u8; 8 * MIB as usize];
    Vmdk::open(&pristine, OpenMode::ReadOnly)
        .unwrap()
        .read_at(0, &mut before)
        .unwrap();
    // The operation's result and its number of writes, without a crash.
    let work = dir.0.join("work.vmdk");
    std::fs::copy(&pristine, &work).unwrap();
    let mut d = Vmdk::open(&work, OpenMode::ReadWrite).unwrap();
    d.crash_after(1 << 40);
    operation(&mut d, base);
    let writes = (1u64 << 40) - d.crash.remaining() as u64;
    d.crash.arm(u64::MAX >> 2);
    d.close().unwrap();
    let mut after = vec![0u8; 8 * MIB as usize];
    Vmdk::open(&work, OpenMode::ReadOnly)
        .unwrap()
        .read_at(0, &mut after)
        .unwrap();
    assert!(writes >= 6, "the operation takes {writes} writes");

    let (mut saw_leak, mut saw_stale) = (false, false);
    for n in 0..=writes {
        std::fs::copy(&pristine, &work).unwrap();
        let mut d = Vmdk::open(&work, OpenMode::ReadWrite).unwrap();
        d.crash_after(n);
        operation(&mut d, base);
        drop(d);
        let rep = Vmdk::check(&work, false).unwrap();
        assert!(rep.unclean_shutdown, "n={n}: {rep}");
        saw_leak |= rep
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::LeakedSpace);
        saw_stale |= rep
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::StaleRedundantCopy);
        for f in &rep.findings {
            assert!(
                matches!(
                    f.kind,
                    FindingKind::UncleanShutdown
                        | FindingKind::LeakedSpace
                        | FindingKind::StaleRedundantCopy
                ),
                "n={n}: a crash left {f:?}"
            );
            // The flag is a notice exactly when nothing else is wrong.
            assert_eq!(
                f.notice,
                f.kind == FindingKind::UncleanShutdown && rep.findings.len() == 1,
                "n={n}: {rep}"
            );
        }
        let notices = usize::from(rep.findings.len() == 1);
        assert_eq!(
            rep.problems().count(),
            rep.findings.len() - notices,
            "n={n}: {rep}"
        );
        let rep = Vmdk::check(&work, true).unwrap();
        assert_eq!(rep.unrepaired().count(), 0, "n={n}: {rep}");
        let rep = Vmdk::check(&work, false).unwrap();
        assert!(rep.is_clean(), "n={n}: after repair: {rep}");
        qemu_check(&work);
        let mut got = vec![0u8; 8 * MIB as usize];
        Vmdk::open(&work, OpenMode::ReadOnly)
            .unwrap()
            .read_at(0, &mut got)
            .unwrap();
        for (g, ((x, b), a)) in got
            .chunks(grain as usize)
            .zip(before.chunks(grain as usize))
            .zip(after.chunks(grain as usize))
            .enumerate()
        {
            assert!(
                x == b || x == a,
                "n={n}: grain {g} is neither as before nor as after"
            );
        }
        if n == writes {
            assert!(got == after, "all writes done: the result is complete");
        }
    }
    (saw_leak, saw_stale)
}

#[test]
fn crash_at_every_write_is_repairable() {
    let (leak, stale) = run(64 << 10, None, 5 * MIB);
    assert!(
        leak && stale,
        "the crashes left leaked grains ({leak}) and stale redundant tables ({stale})"
    );
}

#[test]
fn crash_while_making_a_grain_table_is_repairable() {
    // 4 KiB grains: a grain table covers 2 MiB; the write goes to the hidden fourth table.
    let (leak, stale) = run(4096, Some(3), 6 * MIB + MIB / 2);
    assert!(
        leak && stale,
        "the crashes left leaked grains ({leak}) and stale redundant tables ({stale})"
    );
}

/// A host crash can lose the file extension but keep the table entries (the page cache
/// reached the disk out of order, nothing was flushed): check clears the entries, and
/// everything else reads back.
#[test]
fn lost_file_extension_is_repairable() {
    let dir = Dir::new("lost");
    let path = dir.0.join("l.vmdk");
    let mut d = Vmdk::create(
        &path,
        &CreateOptions::new(8 * MIB, Subformat::MonolithicSparse),
    )
    .unwrap();
    d.write_at(0, &pattern(1, MIB as usize)).unwrap();
    d.flush().unwrap();
    d.write_at(4 * MIB, &pattern(2, 256 << 10)).unwrap();
    // The crash: the flag stays set, the last two grains never reached the file.
    d.crash_after(0);
    drop(d);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - (128 << 10))
        .unwrap();
    let mut b = vec![0u8; 256 << 10];
    let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    assert!(d.info().unclean_shutdown);
    assert!(matches!(
        d.read_at(4 * MIB, &mut b),
        Err(crate::VmdkError::BadTable { .. })
    ));
    drop(d);
    let rep = Vmdk::check(&path, true).unwrap();
    assert_eq!(rep.bad_entries, 2, "{rep}");
    assert_eq!(rep.unrepaired().count(), 0, "{rep}");
    assert!(Vmdk::check(&path, false).unwrap().is_clean());
    qemu_check(&path);
    let mut d = Vmdk::open(&path, OpenMode::ReadOnly).unwrap();
    d.read_at(4 * MIB, &mut b).unwrap();
    assert!(b[..128 << 10] == pattern(2, 256 << 10)[..128 << 10]);
    assert!(b[128 << 10..].iter().all(|&x| x == 0));
    let mut a = vec![0u8; MIB as usize];
    d.read_at(0, &mut a).unwrap();
    assert!(a == pattern(1, MIB as usize));
}

/// A crash in the middle of a grow leaves the old disk plus unreferenced space.
#[test]
fn crash_during_grow_is_repairable() {
    let dir = Dir::new("grow");
    let pristine = dir.0.join("p.vmdk");
    let mut o = CreateOptions::new(MIB, Subformat::MonolithicSparse);
    o.grain_size = 4096;
    let mut d = Vmdk::create(&pristine, &o).unwrap();
    d.write_at(0, &pattern(3, 300_000)).unwrap();
    d.close().unwrap();
    let work = dir.0.join("w.vmdk");
    for n in 0..12 {
        std::fs::copy(&pristine, &work).unwrap();
        let mut d = Vmdk::open(&work, OpenMode::ReadWrite).unwrap();
        d.crash_after(n);
        let _ = d.grow(300 * MIB);
        drop(d);
        let rep = Vmdk::check(&work, true).unwrap();
        assert_eq!(rep.unrepaired().count(), 0, "n={n}: {rep}");
        let rep = Vmdk::check(&work, false).unwrap();
        assert!(rep.is_clean(), "n={n}: {rep}");
        qemu_check(&work);
        let mut d = Vmdk::open(&work, OpenMode::ReadOnly).unwrap();
        assert!(
            d.size() == MIB || d.size() == 300 * MIB,
            "n={n}: size {}",
            d.size()
        );
        let mut b = vec![0u8; 300_000];
        d.read_at(0, &mut b).unwrap();
        assert!(b == pattern(3, 300_000), "n={n}");
    }
}
