//! `vmk datastore ...`: VMFS-style datastores (crate `vmk-vmfs`).
//!
//! A datastore lives on DEV: a file, a block device, `nbd:HOST:PORT` (an NBD export over
//! TCP) or `nbd+unix:SOCKET`. Every command that names a file or directory inside it (ls,
//! mkdir, rm, cp) takes `DEV:/path`, as scp does; `ls DEV` lists the root. The older
//! `ls|mkdir|rm DEV PATH` is still accepted, since a DEV without `:/` cannot be confused
//! with the new form.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use vmk_vmfs::fsck::{self, FsckOptions};
use vmk_vmfs::{
    BlockDevice, CreateOptions, Datastore, FileOptions, LockMode, MountOptions, VmfsError,
};

use crate::error::CmdError;
use vmk_api::model::parse_size;

#[derive(Debug, Subcommand)]
pub enum DatastoreCommand {
    /// Format DEV as a new datastore (everything on it is lost).
    Create(CreateArgs),
    /// Show the volume header and the hosts in its heartbeat region.
    Info { dev: String },
    /// List a directory: DEV:/path, or DEV for the root (e.g. `vmk datastore ls ds.img:/vm1`).
    ///
    /// Columns: T (d directory, e eager-zeroed file, - file), SIZE and ALLOCATED in bytes,
    /// MODIFIED, NAME (directories end in /).
    Ls {
        /// DEV:/path, or DEV alone for the root.
        #[arg(value_name = "DEV:/PATH")]
        target: String,
        /// The older form `ls DEV PATH`.
        #[arg(hide = true)]
        path: Option<String>,
        #[command(flatten)]
        mount: MountArgs,
    },
    /// Make a directory (-p: and its parents), e.g. `vmk datastore mkdir ds.img:/vm1`.
    Mkdir {
        #[arg(value_name = "DEV:/PATH")]
        target: String,
        /// The older form `mkdir DEV PATH`.
        #[arg(hide = true)]
        path: Option<String>,
        #[arg(short = 'p', long)]
        parents: bool,
        #[command(flatten)]
        mount: MountArgs,
    },
    /// Remove a file or an empty directory, e.g. `vmk datastore rm ds.img:/vm1/old.vmdk`.
    Rm {
        #[arg(value_name = "DEV:/PATH")]
        target: String,
        /// The older form `rm DEV PATH`.
        #[arg(hide = true)]
        path: Option<String>,
        #[command(flatten)]
        mount: MountArgs,
    },
    /// Copy a file into or out of a datastore, with progress.
    ///
    /// The datastore side is DEV:/path, e.g. `vmk datastore cp disk.vmdk ds.img:/vm1/disk.vmdk`
    /// or `vmk datastore cp ds.img:/vm1/disk.vmdk copy.vmdk`. Copying into an existing
    /// directory keeps the file's name. Zero blocks are not written (the copy stays thin).
    Cp {
        src: String,
        dst: String,
        /// Allocate and zero the whole file first (eager-zeroed), as multi-writer disks need.
        #[arg(long)]
        eager_zeroed: bool,
        #[command(flatten)]
        mount: MountArgs,
    },
    /// Space used and free.
    Df { dev: String },
    /// Check every invariant of the volume; --repair fixes what it can (all hosts unmounted).
    Fsck {
        dev: String,
        #[arg(long)]
        repair: bool,
    },
    /// Mount DEV read-only on DIR with FUSE (browse it with ls, cp, sha256sum...), in the
    /// foreground until `umount DIR` or Ctrl-C. Takes no host ID and no locks.
    Mount { dev: String, dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub dev: String,
    #[arg(long, default_value = "datastore")]
    pub label: String,
    /// File block size: 1M, 2M, 4M or 8M.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub block_size: u64,
    /// Create (or grow) DEV as a sparse file of this size first, e.g. 100G.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// A host whose heartbeat has not changed for this long is dead (ms).
    #[arg(long, default_value_t = 16000)]
    pub lease_timeout_ms: u32,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Host ID (1..=32) to mount as; default: the first free heartbeat slot.
    #[arg(long)]
    pub host_id: Option<u32>,
}

/// Opens DEV: a file or block device, `nbd:HOST:PORT[/EXPORT]` or `nbd+unix:SOCKET`.
pub fn open_dev(spec: &str, read_only: bool) -> Result<Box<dyn BlockDevice>, VmfsError> {
    vmk_vmfs::open_device(spec, read_only)
}

fn mount(dev: &str, m: &MountArgs) -> Result<Datastore, CmdError> {
    let opts = MountOptions {
        host_id: m.host_id,
        ..MountOptions::default()
    };
    Ok(Datastore::mount(open_dev(dev, false)?, &opts)?)
}

fn read_only(dev: &str) -> Result<Datastore, CmdError> {
    Ok(Datastore::open_read_only(open_dev(dev, true)?)?)
}

/// Splits `DEV:/path` (a file or directory in a datastore); `None` for a local file or a
/// bare DEV.
pub fn split_ds_path(s: &str) -> Option<(&str, &str)> {
    let skip = if s.starts_with("nbd+unix:") {
        "nbd+unix:".len()
    } else {
        0
    };
    let i = s[skip..].find(":/")? + skip;
    Some((&s[..i], &s[i + 1..]))
}

/// The `vmk datastore ls` table: a header, then a line per entry.
fn format_listing(entries: &[vmk_vmfs::DirListing]) -> String {
    // The MODIFIED column is as wide as a formatted time.
    let w = vmk_vmfs::format::fmt_time(0).len();
    let mut out = format!(
        "T {:>14} {:>14} {:<w$}  NAME\n",
        "SIZE", "ALLOCATED", "MODIFIED"
    );
    for e in entries {
        let kind = if e.stat.is_dir {
            "d"
        } else if e.stat.eager_zeroed {
            "e"
        } else {
            "-"
        };
        out += &format!(
            "{kind} {:>14} {:>14} {:<w$}  {}{}\n",
            e.stat.size,
            e.stat.allocated,
            vmk_vmfs::format::fmt_time(e.stat.mtime_ms),
            e.name,
            if e.stat.is_dir { "/" } else { "" }
        );
    }
    out
}

/// The DEV and path of `ls|mkdir|rm`: `DEV:/path`, or the older `DEV PATH`; a bare DEV
/// is the root for `ls` (`root`) and an error otherwise.
fn ds_target<'a>(
    cmd: &str,
    target: &'a str,
    path: Option<&'a str>,
    root: bool,
) -> Result<(&'a str, &'a str), CmdError> {
    match (split_ds_path(target), path) {
        (Some(dp), None) => Ok(dp),
        (None, Some(p)) => Ok((target, p)),
        (None, None) if root => Ok((target, "/")),
        (None, None) => Err(format!(
            "{cmd} needs a path in the datastore: `vmk datastore {cmd} DEV:/PATH`, e.g. {target}:/vm1"
        )
        .into()),
        (Some(_), Some(p)) => Err(format!(
            "{target} already names a path in the datastore; {p:?} is one too many: \
             use `vmk datastore {cmd} DEV:/PATH`"
        )
        .into()),
    }
}

/// A size for people: `1.5 GiB`.
pub(crate) fn human(n: u64) -> String {
    vmk_base::fmt::size(n)
}

struct Progress {
    start: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last: Instant::now(),
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
    fn show(&mut self, done: u64, total: u64) {
        if self.last.elapsed().as_millis() >= 200 || done == total {
            self.last = Instant::now();
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            let bar = "#".repeat((pct / 4) as usize);
            let end = if self.tty && done != total {
                "\r"
            } else {
                "\n"
            };
            let rate =
                done as f64 / self.start.elapsed().as_secs_f64().max(1e-3) / (1 << 20) as f64;
            eprint!(
                "copying [{bar:<25}] {pct:3}% {} / {} MiB, {rate:.0} MiB/s{end}",
                done >> 20,
                total >> 20
            );
            let _ = std::io::stderr().flush();
        }
    }
}

const CHUNK: usize = 4 << 20;

pub fn run(cmd: DatastoreCommand) -> Result<(), CmdError> {
    match cmd {
        DatastoreCommand::Create(a) => {
            if let Some(size) = a.size {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&a.dev)?;
                if f.metadata()?.len() < size {
                    f.set_len(size)?;
                }
            }
            let opts = CreateOptions {
                label: a.label,
                block_size: a.block_size,
                lease_timeout_ms: a.lease_timeout_ms,
                // Renew 8 times per lease; the I/O bound (and the mount delay, twice it) 1/16.
                renew_ms: (a.lease_timeout_ms / 8).max(1),
                io_timeout_ms: (a.lease_timeout_ms / 16).max(1),
            };
            let info = Datastore::create(open_dev(&a.dev, false)?, &opts)?;
            println!(
                "created datastore {:?} ({}) on {}: {}, block size {}, {} resource clusters, {} inodes",
                info.label,
                info.uuid,
                a.dev,
                human(info.volume_size),
                human(info.block_size),
                info.resource_clusters,
                info.inodes
            );
        }
        DatastoreCommand::Info { dev } => {
            let ds = read_only(&dev)?;
            let i = ds.info();
            println!("label:             {}", i.label);
            println!("uuid:              {}", i.uuid);
            println!("format version:    {}", i.version);
            println!("created:           {}", i.created);
            println!(
                "size:              {} ({} bytes)",
                human(i.volume_size),
                i.volume_size
            );
            println!("block size:        {}", human(i.block_size));
            println!("sub-block size:    {}", human(i.sub_block_size));
            println!("resource clusters: {}", i.resource_clusters);
            println!("blocks:            {}", i.blocks);
            println!("sub-blocks:        {}", i.sub_blocks);
            println!("inodes:            {}", i.inodes);
            println!("max file size:     {}", human(i.max_file_size));
            println!(
                "heartbeat:         renew every {} ms, dead after {} ms, I/O timeout {} ms",
                i.renew_ms, i.lease_timeout_ms, i.io_timeout_ms
            );
            let hosts = ds.hosts()?;
            if hosts.is_empty() {
                println!("hosts:             none has mounted it");
            }
            for h in hosts {
                println!(
                    "host {:2}:           {} (generation {}, {}, last renewal {})",
                    h.host, h.state, h.generation, h.who, h.last_renewal
                );
            }
        }
        DatastoreCommand::Ls {
            target,
            path,
            mount: m,
        } => {
            let (dev, path) = ds_target("ls", &target, path.as_deref(), true)?;
            let ds = mount(dev, &m)?;
            print!("{}", format_listing(&ds.list(path)?));
            ds.unmount()?;
        }
        DatastoreCommand::Mkdir {
            target,
            path,
            parents,
            mount: m,
        } => {
            let (dev, path) = ds_target("mkdir", &target, path.as_deref(), false)?;
            let ds = mount(dev, &m)?;
            if parents {
                ds.mkdir_all(path)?;
            } else {
                ds.mkdir(path)?;
            }
            ds.unmount()?;
        }
        DatastoreCommand::Rm {
            target,
            path,
            mount: m,
        } => {
            let (dev, path) = ds_target("rm", &target, path.as_deref(), false)?;
            let ds = mount(dev, &m)?;
            ds.remove(path)?;
            ds.unmount()?;
        }
        DatastoreCommand::Cp {
            src,
            dst,
            eager_zeroed,
            mount: m,
        } => match (split_ds_path(&src), split_ds_path(&dst)) {
            (None, Some((dev, path))) => copy_in(Path::new(&src), dev, path, eager_zeroed, &m)?,
            (Some((dev, path)), None) => copy_out(dev, path, Path::new(&dst), &m)?,
            _ => {
                return Err("cp copies between a local file and DEV:/PATH in a datastore (exactly one side names a datastore)".into());
            }
        },
        DatastoreCommand::Df { dev } => {
            let ds = read_only(&dev)?;
            let u = ds.df()?;
            let used = (u.blocks - u.free_blocks) * u.block_size;
            println!("{:>14} {:>14} {:>14} {:>5}", "size", "used", "free", "use%");
            println!(
                "{:>14} {:>14} {:>14} {:>4}%",
                human(u.blocks * u.block_size),
                human(used),
                human(u.free_blocks * u.block_size),
                (u.blocks - u.free_blocks) * 100 / u.blocks.max(1)
            );
            println!(
                "inodes: {} used of {}; sub-blocks: {} used of {}",
                u.inodes - u.free_inodes,
                u.inodes,
                u.sub_blocks - u.free_sub_blocks,
                u.sub_blocks
            );
        }
        DatastoreCommand::Mount { dev, dir } => crate::datastore_fuse::mount(&dev, &dir)?,
        DatastoreCommand::Fsck { dev, repair } => {
            let report = fsck::check(
                open_dev(&dev, !repair)?,
                &FsckOptions {
                    repair,
                    verbose: true,
                },
            )?;
            println!("{report}");
            if report.unrepaired().next().is_some() {
                return Err(format!(
                    "{dev} has problems{}",
                    if repair {
                        " that could not be repaired"
                    } else {
                        "; run `vmk datastore fsck --repair` with every host unmounted"
                    }
                )
                .into());
            }
        }
    }
    Ok(())
}

fn copy_in(src: &Path, dev: &str, path: &str, eager: bool, m: &MountArgs) -> Result<(), CmdError> {
    let mut input = std::fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let total = input.metadata()?.len();
    let ds = mount(dev, m)?;
    let mut path = path.to_string();
    if ds.stat(&path).map(|s| s.is_dir).unwrap_or(false) {
        let name = src
            .file_name()
            .ok_or("the source has no file name")?
            .to_string_lossy();
        path = format!("{}/{name}", path.trim_end_matches('/'));
    }
    let mut f = ds.create_file(
        &path,
        &FileOptions {
            size: if eager { total } else { 0 },
            eager_zeroed: eager,
        },
    )?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    let mut p = Progress::new();
    while off < total {
        let n = (total - off).min(CHUNK as u64) as usize;
        input.read_exact(&mut buf[..n])?;
        // Thin copy: all-zero chunks stay holes.
        if eager || buf[..n].iter().any(|&b| b != 0) {
            f.write_at(&buf[..n], off)?;
        }
        off += n as u64;
        p.show(off, total);
    }
    f.set_len(total)?;
    f.close()?;
    ds.unmount()?;
    println!(
        "copied {} -> {dev}:{path} ({})",
        src.display(),
        human(total)
    );
    Ok(())
}

fn copy_out(dev: &str, path: &str, dst: &Path, m: &MountArgs) -> Result<(), CmdError> {
    let ds = mount(dev, m)?;
    let mut f = ds.open_file(path, LockMode::SharedRead)?;
    let total = f.len();
    let mut dst = PathBuf::from(dst);
    if dst.is_dir() {
        let name = path.rsplit('/').next().unwrap_or("file");
        dst = dst.join(name);
    }
    let mut out = std::fs::File::create(&dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    let mut p = Progress::new();
    while off < total {
        let n = f.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        off += n as u64;
        p.show(off, total);
    }
    out.sync_data()?;
    f.close()?;
    ds.unmount()?;
    println!(
        "copied {dev}:{path} -> {} ({})",
        dst.display(),
        human(total)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ds_paths() {
        assert_eq!(split_ds_path("vol.img:/a/b"), Some(("vol.img", "/a/b")));
        assert_eq!(
            split_ds_path("nbd:127.0.0.1:10809:/x"),
            Some(("nbd:127.0.0.1:10809", "/x"))
        );
        assert_eq!(
            split_ds_path("nbd+unix:/tmp/s:/x"),
            Some(("nbd+unix:/tmp/s", "/x"))
        );
        assert_eq!(split_ds_path("local.vmdk"), None);
    }

    #[test]
    fn listing_has_a_header_over_its_columns() {
        let entry =
            |name: &str, is_dir: bool, eager_zeroed: bool, size: u64| vmk_vmfs::DirListing {
                name: name.into(),
                stat: vmk_vmfs::Stat {
                    inum: 1,
                    is_dir,
                    size,
                    allocated: size,
                    eager_zeroed,
                    mtime_ms: 1_700_000_000_000,
                },
            };
        let t = format_listing(&[
            entry("vm1", true, false, 0),
            entry("disk-flat.vmdk", false, true, 1 << 30),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "T           SIZE      ALLOCATED MODIFIED                 NAME",
                "d              0              0 2023-11-14 22:13:20 UTC  vm1/",
                "e     1073741824     1073741824 2023-11-14 22:13:20 UTC  disk-flat.vmdk",
            ]
        );
        // The header's names start over their columns' text or right edges.
        assert_eq!(lines[0].find("NAME"), lines[1].find("vm1/"));
        assert_eq!(lines[0].find("MODIFIED"), lines[1].find("2023"));
        assert_eq!(
            lines[0].find("SIZE").map(|i| i + 4),
            lines[1].find(" 0 ").map(|i| i + 2)
        );
        // An empty directory: the header alone.
        assert_eq!(format_listing(&[]).lines().count(), 1);
    }

    #[test]
    fn ds_targets() {
        assert_eq!(
            ds_target("ls", "v.img:/a", None, true).unwrap(),
            ("v.img", "/a")
        );
        assert_eq!(
            ds_target("ls", "v.img", None, true).unwrap(),
            ("v.img", "/")
        );
        assert_eq!(
            ds_target("rm", "v.img", Some("/a"), false).unwrap(),
            ("v.img", "/a")
        );
        let e = ds_target("rm", "v.img", None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("DEV:/PATH"), "{e}");
        let e = ds_target("ls", "v.img:/a", Some("/b"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("DEV:/PATH"), "{e}");
    }
}
