//! Sequential write and read of one file on a datastore vs the same on a plain file, in one
//! run (`bench/vmfs.sh` runs it). 1 MiB requests, write ends with a flush (fdatasync).
//!
//!     cargo run --release -p vmk-vmfs --example vmfs_seqbench -- DIR SIZE_MIB

use std::os::unix::fs::FileExt;
use std::time::Instant;

use vmk_vmfs::{CreateOptions, Datastore, FileDevice, FileOptions, LockMode, MountOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(a.get(1).ok_or("usage: vmfs_seqbench DIR SIZE_MIB")?);
    let mib: u64 = a
        .get(2)
        .ok_or("usage: vmfs_seqbench DIR SIZE_MIB")?
        .parse()?;
    let size = mib << 20;
    let buf: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 + 3) as u8).collect();
    let mut rbuf = vec![0u8; 1 << 20];
    let mbps = |bytes: u64, t: Instant| bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();

    // Plain file.
    let plain = dir.join("plain.bin");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&plain)?;
    // Each phase starts with nothing dirty from the one before.
    drop_caches();
    let t = Instant::now();
    for i in 0..mib {
        f.write_all_at(&buf, i << 20)?;
    }
    f.sync_data()?;
    let pw = mbps(size, t);
    let cold = drop_caches();
    let t = Instant::now();
    for i in 0..mib {
        f.read_exact_at(&mut rbuf, i << 20)?;
    }
    let pr = mbps(size, t);
    drop(f);
    std::fs::remove_file(&plain)?;

    // Datastore on a file of the same kind.
    let vol = dir.join("vmfs.img");
    let vf = std::fs::File::create(&vol)?;
    vf.set_len(size + size / 8 + (256 << 20))?;
    drop(vf);
    Datastore::create(
        Box::new(FileDevice::open(&vol, false)?),
        &CreateOptions {
            renew_ms: 200,
            lease_timeout_ms: 2000,
            io_timeout_ms: 100,
            ..Default::default()
        },
    )?;
    let ds = Datastore::mount(
        Box::new(FileDevice::open(&vol, false)?),
        &MountOptions {
            host_id: Some(1),
            ..Default::default()
        },
    )?;
    let mut f = ds.create_file("/bench.vmdk", &FileOptions::default())?;
    drop_caches();
    let t = Instant::now();
    for i in 0..mib {
        f.write_at(&buf, i << 20)?;
    }
    f.flush()?;
    let vw = mbps(size, t);
    f.close()?;
    let mut f = ds.open_file("/bench.vmdk", LockMode::SharedRead)?;
    drop_caches();
    let t = Instant::now();
    for i in 0..mib {
        f.read_at(&mut rbuf, i << 20)?;
    }
    let vr = mbps(size, t);
    assert_eq!(rbuf, buf);
    f.close()?;
    ds.unmount()?;
    std::fs::remove_file(&vol)?;
    println!(
        "{mib} MiB, 1 MiB requests, reads {} | plain file | datastore | datastore/plain",
        if cold {
            "from the disk (page cache dropped)"
        } else {
            "from the page cache (run as root to drop it)"
        }
    );
    println!(
        "sequential write + fdatasync | {pw:.0} MiB/s | {vw:.0} MiB/s | {:.2}",
        vw / pw
    );
    println!(
        "sequential read | {pr:.0} MiB/s | {vr:.0} MiB/s | {:.2}",
        vr / pr
    );
    Ok(())
}

/// Writes dirty pages back and drops the page cache (root only), so that reads come from the
/// device for both sides instead of measuring memory copies. Returns whether it worked.
fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}
