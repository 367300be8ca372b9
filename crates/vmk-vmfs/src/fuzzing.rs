//! Entry points for fuzzing (`fuzz/`) and for the seeded mutation tests: everything a host
//! or fsck does with a volume it did not write must end in `Ok` or a clear error, never a
//! panic, a hang or an out-of-bounds access.

use std::sync::OnceLock;

use crate::device::MemDevice;
use crate::fs::{CreateOptions, Datastore, MountOptions};
use crate::fsck::{self, FsckOptions};
use crate::{FileOptions, LockMode};

/// Size of the template volume (the smallest that holds the fixed regions comfortably).
pub const TEMPLATE_SIZE: usize = 48 << 20;

/// A small volume with a few directories, a small file, a multi-block file with holes, an
/// eager-zeroed file and a directory of directories.
pub fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dev = MemDevice::new(TEMPLATE_SIZE);
        let opts = CreateOptions {
            label: "fuzz".into(),
            block_size: 1 << 20,
            renew_ms: 50,
            lease_timeout_ms: 400,
            io_timeout_ms: 5,
        };
        let build = || -> crate::Result<()> {
            Datastore::create(Box::new(dev.clone()), &opts)?;
            let ds = Datastore::mount(
                Box::new(dev.clone()),
                &MountOptions {
                    host_id: Some(1),
                    sync: false,
                    who: "fuzz".into(),
                },
            )?;
            ds.mkdir("/a")?;
            ds.mkdir("/a/b")?;
            let mut f = ds.create_file("/a/small", &FileOptions::default())?;
            f.write_at(b"small file", 0)?;
            f.close()?;
            let mut f = ds.create_file("/a/b/big", &FileOptions::default())?;
            f.write_at(&[7u8; 70_000], 0)?;
            f.write_at(&[9u8; 5000], 3 << 20)?;
            f.close()?;
            ds.create_file(
                "/eager",
                &FileOptions {
                    size: 2 << 20,
                    eager_zeroed: true,
                },
            )?
            .close()?;
            ds.mkdir("/many")?;
            for i in 0..20 {
                ds.mkdir(&format!("/many/d{i}"))?;
            }
            ds.unmount()
        };
        // The template is built by this crate's own code on a fresh device: an error here
        // is a bug, reported as an empty image (which every exercise rejects).
        match build() {
            Ok(()) => dev.snapshot(),
            Err(e) => {
                eprintln!("vmk-vmfs fuzzing template: {e}");
                Vec::new()
            }
        }
    })
}

/// Applies `(offset, byte)` edits (offsets taken modulo the image size) to a copy of `img`.
pub fn mutate(img: &[u8], edits: &[(u32, u8)]) -> Vec<u8> {
    let mut v = img.to_vec();
    if v.is_empty() {
        return v;
    }
    for &(o, b) in edits {
        let i = o as usize % v.len();
        v[i] = b;
    }
    v
}

/// Opens `image` read-only and reads everything reachable, then runs fsck (check, then
/// repair on a copy, then check again). Returns a short summary; panics only on a bug.
pub fn exercise(image: &[u8]) -> String {
    let mut out = String::new();
    let dev = MemDevice::from_vec(image.to_vec());
    if let Ok(ds) = Datastore::open_read_only(Box::new(dev.clone())) {
        let _ = ds.df();
        let _ = ds.hosts();
        walk(&ds, "/", 0, &mut out);
    }
    match fsck::check(Box::new(dev.clone()), &FsckOptions::default()) {
        Ok(r) => out.push_str(&format!("fsck: {} findings\n", r.findings.len())),
        Err(e) => out.push_str(&format!("fsck: {e}\n")),
    }
    out
}

/// Like [`exercise`], then repairs the image and checks that a second fsck finds nothing
/// it could repair.
pub fn exercise_repair(image: &[u8]) -> Result<(), String> {
    let dev = MemDevice::from_vec(image.to_vec());
    let Ok(_) = fsck::check(
        Box::new(dev.clone()),
        &FsckOptions {
            repair: true,
            verbose: false,
        },
    ) else {
        return Ok(());
    };
    match fsck::check(Box::new(dev.clone()), &FsckOptions::default()) {
        Ok(r) if r.findings.iter().all(|f| f.what.contains("root directory")) => Ok(()),
        Ok(r) => Err(format!("after repair:\n{r}")),
        Err(e) => Err(format!("after repair: {e}")),
    }
}

fn walk(ds: &Datastore, path: &str, depth: usize, out: &mut String) {
    if depth > 8 {
        return;
    }
    let Ok(list) = ds.list(path) else { return };
    for e in list {
        let p = format!("{}/{}", path.trim_end_matches('/'), e.name);
        out.push_str(&p);
        out.push('\n');
        if e.stat.is_dir {
            walk(ds, &p, depth + 1, out);
        } else if let Ok(mut f) = ds.open_file(&p, LockMode::SharedRead) {
            let mut b = vec![0u8; (f.len().min(8 << 20)) as usize];
            let _ = f.read_at(&mut b, 0);
        }
    }
}
