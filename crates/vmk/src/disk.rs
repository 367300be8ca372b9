//! `vmk disk ...`: virtual disks, in the spirit of vmkfstools.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use vmk_machine::datastore::{DatastoreStorage, DsPath};
use vmk_vmdk::descriptor::NO_PARENT;
use vmk_vmdk::{convert, CreateOptions, ExtentKind, OpenMode, Subformat, Target, Vmdk, VmdkInfo};
use vmk_vmfs::{Datastore, MountOptions};

use crate::datastore::human;
use crate::error::CmdError;
use vmk_api::model::parse_size;

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Create a VMDK virtual disk (on a datastore: '[DS] dir/disk.vmdk' with
    /// --datastore-device).
    Create(CreateArgs),
    /// Show a disk's format, size, extents and allocation.
    ///
    /// --json prints one JSON object with these keys (stable; sizes in bytes, null where
    /// the disk has no such thing): path, format ("vmdk"), create_type, virtual_size,
    /// disk_size (space all its files take on the host), allocated_grains, grain_size,
    /// adapter_type, hw_version, cid and parent_cid (8 hex digits, as in the descriptor;
    /// parent_cid "ffffffff" without parent), parent, unclean_shutdown, and extents: a list
    /// of objects with path, type ("sparse", "compressed", "flat" or "zero"), start and size
    /// (the part of the disk it holds), file_size, disk_size, grain_size.
    Info {
        path: PathBuf,
        /// Print JSON for scripts instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ds: DsArgs,
    },
    /// Check a VMDK for what a crash can leave (leaked grains, stale redundant tables).
    Check {
        path: PathBuf,
        /// Repair what can be repaired.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        ds: DsArgs,
    },
    /// Copy a disk to another format (VMDK subformats or raw), skipping unallocated space.
    ///
    /// Without --type the target format comes from DST's extension, as with qemu-img:
    /// .raw and .img make a raw image, .vmdk a monolithicSparse VMDK; any other name
    /// needs --type.
    Convert(ConvertArgs),
    /// Grow a VMDK to a new size.
    Grow {
        path: PathBuf,
        /// New size, e.g. 20G.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        ds: DsArgs,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub path: PathBuf,
    /// Size, e.g. 10G.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// monolithicSparse (default), monolithicFlat, twoGbMaxExtentSparse,
    /// twoGbMaxExtentFlat, vmfs; on a datastore also eagerZeroedThick (a flat disk
    /// whose blocks are allocated and zeroed now).
    #[arg(long = "type", default_value = "monolithicSparse", value_parser = parse_create_type)]
    pub subformat: CreateType,
    #[command(flatten)]
    pub ds: DsArgs,
}

/// How to reach the datastore of a `[DS] dir/file.vmdk` path from the command line.
#[derive(Debug, Clone, Args)]
pub struct DsArgs {
    /// The datastore's volume (file, block device, nbd:HOST:PORT or nbd+unix:SOCKET), for
    /// a PATH of the form '[DS] dir/file.vmdk'. Mounted for this command only; a disk that
    /// a running host's VM has open is refused as locked.
    #[arg(long, value_name = "DEV")]
    pub datastore_device: Option<String>,
    /// Host ID on the datastore (default: the first free one).
    #[arg(long, requires = "datastore_device")]
    pub host_id: Option<u32>,
}

/// `--type`: a VMDK subformat, or eagerZeroedThick (a flat disk eagerly allocated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateType {
    pub subformat: Subformat,
    pub eager_zeroed: bool,
}

fn parse_create_type(s: &str) -> Result<CreateType, String> {
    if s.eq_ignore_ascii_case("eagerZeroedThick") || s.eq_ignore_ascii_case("eagerZeroed") {
        return Ok(CreateType {
            subformat: Subformat::Vmfs,
            eager_zeroed: true,
        });
    }
    Ok(CreateType {
        subformat: parse_subformat(s)?,
        eager_zeroed: false,
    })
}

/// The datastore of `path` when it is `[DS] dir/file`: mounted from `--datastore-device`.
/// `None` for a host path.
fn ds_storage(path: &Path, a: &DsArgs) -> Result<Option<DatastoreStorage>, CmdError> {
    let Some(p) = DsPath::from_path(path) else {
        if a.datastore_device.is_some() {
            return Err(format!(
                "--datastore-device is for a datastore path '[DS] dir/file.vmdk', not {}",
                path.display()
            )
            .into());
        }
        return Ok(None);
    };
    let p = p?;
    let Some(dev) = &a.datastore_device else {
        return Err(format!(
            "{p} is on datastore '{}': give its volume with --datastore-device DEV",
            p.datastore
        )
        .into());
    };
    let ds = Datastore::mount(
        vmk_vmfs::open_device(dev, false)?,
        &MountOptions {
            host_id: a.host_id,
            ..MountOptions::default()
        },
    )
    .map_err(|e| format!("datastore '{}' ({dev}): {e}", p.datastore))?;
    Ok(Some(DatastoreStorage::new(&p.datastore, Arc::new(ds))))
}

/// Unmounts after the command, reporting a failure (the heartbeat slot stays "mounted"
/// until the lease times out otherwise).
fn unmount(st: Option<DatastoreStorage>) -> Result<(), CmdError> {
    if let Some(st) = st {
        let ds = st.datastore().clone();
        drop(st);
        if let Ok(ds) = Arc::try_unwrap(ds) {
            ds.unmount()?;
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// Target VMDK subformat, or `raw` for a plain image file (default: from DST's
    /// extension, .raw/.img: raw, .vmdk: monolithicSparse).
    #[arg(long = "type")]
    pub target: Option<String>,
}

/// What `convert` writes: `--type` when given, else what DST's extension says. A VMDK
/// written into `out.raw` (the old default) surprised qemu-img users, so an extension that
/// says nothing is refused rather than guessed.
fn convert_target(dst: &Path, ty: Option<&str>) -> Result<Target, CmdError> {
    let ty = match ty {
        Some(t) => t.to_string(),
        None => {
            let ext = dst
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            match ext.as_deref() {
                Some("raw" | "img") => "raw".into(),
                Some("vmdk") => Subformat::MonolithicSparse.as_str().into(),
                _ => {
                    return Err(format!(
                        "cannot tell the target format from the name {}: give --type raw or \
                         --type monolithicSparse (or another VMDK subformat), or name the \
                         output .raw, .img or .vmdk",
                        dst.display()
                    )
                    .into())
                }
            }
        }
    };
    Ok(if ty.eq_ignore_ascii_case("raw") {
        Target::Raw
    } else {
        Target::Vmdk(CreateOptions::new(0, parse_subformat(&ty)?))
    })
}

fn parse_subformat(s: &str) -> Result<Subformat, String> {
    s.parse::<Subformat>().map_err(|e| e.to_string())
}

pub fn run(cmd: DiskCommand) -> Result<(), CmdError> {
    match cmd {
        DiskCommand::Create(a) => {
            let opts = CreateOptions::new(a.size, a.subformat.subformat);
            let st = ds_storage(&a.path, &a.ds)?;
            let disk = match &st {
                Some(st) => {
                    let st = st.clone().with_eager_zeroed(a.subformat.eager_zeroed);
                    if a.subformat.eager_zeroed {
                        eprintln!(
                            "allocating and zeroing {} MiB on the datastore...",
                            a.size >> 20
                        );
                    }
                    Vmdk::create_on(Arc::new(st), &a.path, &opts)?
                }
                None if a.subformat.eager_zeroed => {
                    return Err("--type eagerZeroedThick is for disks on a datastore; on the                                 host use monolithicFlat"
                        .into())
                }
                None => Vmdk::create(&a.path, &opts)?,
            };
            let info = disk.info();
            disk.close()?;
            unmount(st)?;
            println!(
                "created {} ({}{}, {} bytes)",
                a.path.display(),
                info.subformat,
                if a.subformat.eager_zeroed {
                    ", eager-zeroed"
                } else {
                    ""
                },
                info.capacity
            );
        }
        DiskCommand::Info { path, json, ds } => {
            let st = ds_storage(&path, &ds)?;
            let mut disk = match &st {
                Some(st) => Vmdk::open_on(Arc::new(st.clone()), &path, OpenMode::ReadOnly)?,
                None => Vmdk::open(&path, OpenMode::ReadOnly)?,
            };
            let allocated = disk.allocated_grains()?;
            let info = disk.info();
            drop(disk);
            unmount(st)?;
            if json {
                println!("{:#}", info_json(&info, allocated));
            } else {
                print!("{}", info_table(&info, allocated));
            }
        }
        DiskCommand::Check { path, repair, ds } => {
            let st = ds_storage(&path, &ds)?;
            let report = match &st {
                Some(st) => Vmdk::check_on(Arc::new(st.clone()), &path, repair)?,
                None => Vmdk::check(&path, repair)?,
            };
            unmount(st)?;
            print!("{report}");
            if !repair && report.unrepaired().any(|f| f.notice) {
                println!(
                    "run `vmk disk check --repair` to clear the flag (with no VM using the disk)"
                );
            }
            // Notices (uncleanShutdown on consistent tables) are not problems: qemu-img
            // check calls such a disk clean too.
            if report.problems().next().is_some() {
                return Err(format!(
                    "{} has problems{}",
                    path.display(),
                    if repair {
                        " that could not be repaired"
                    } else {
                        "; run `vmk disk check --repair`"
                    }
                )
                .into());
            }
        }
        DiskCommand::Convert(a) => {
            let target = convert_target(&a.dst, a.target.as_deref())?;
            let start = Instant::now();
            let mut last = Instant::now();
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            convert(&a.src, &a.dst, &target, &mut |done, total| {
                if last.elapsed().as_millis() >= 200 || done == total {
                    last = Instant::now();
                    let pct = (done * 100).checked_div(total).unwrap_or(100);
                    let bar = "#".repeat((pct / 4) as usize);
                    let end = if tty && done != total { "\r" } else { "\n" };
                    eprint!(
                        "converting [{bar:<25}] {pct:3}% {} / {} MiB{end}",
                        done >> 20,
                        total >> 20
                    );
                    let _ = std::io::stderr().flush();
                }
            })?;
            println!(
                "converted {} -> {} in {:.1} s",
                a.src.display(),
                a.dst.display(),
                start.elapsed().as_secs_f64()
            );
        }
        DiskCommand::Grow { path, size, ds } => {
            let st = ds_storage(&path, &ds)?;
            let mut disk = match &st {
                Some(st) => Vmdk::open_on(Arc::new(st.clone()), &path, OpenMode::ReadWrite)?,
                None => Vmdk::open(&path, OpenMode::ReadWrite)?,
            };
            disk.grow(size)?;
            disk.close()?;
            unmount(st)?;
            println!("{} is now {size} bytes", path.display());
        }
    }
    Ok(())
}

fn extent_type(k: ExtentKind) -> &'static str {
    match k {
        ExtentKind::Sparse => "sparse",
        ExtentKind::Compressed => "compressed",
        ExtentKind::Flat => "flat",
        ExtentKind::Zero => "zero",
    }
}

/// `vmk disk info`: what `qemu-img info` shows, plus the VMDK's own fields.
fn info_table(i: &VmdkInfo, allocated_grains: u64) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("image", i.path.display().to_string()),
        ("file format", "vmdk".into()),
        ("create type", i.subformat.to_string()),
        (
            "virtual size",
            format!("{} ({} bytes)", human(i.capacity), i.capacity),
        ),
        (
            "disk size",
            format!("{} (on the host, all its files)", human(i.allocated_bytes)),
        ),
    ];
    if let Some(g) = i.grain_size {
        rows.push(("grain size", format!("{} ({g} bytes)", human(g))));
        rows.push((
            "allocated",
            format!(
                "{allocated_grains} grains ({})",
                human(allocated_grains.saturating_mul(g))
            ),
        ));
    }
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    rows.push(("adapter type", or_none(&i.adapter_type)));
    rows.push(("hardware version", or_none(&i.hw_version)));
    rows.push(("CID", format!("{:08x}", i.cid)));
    rows.push((
        "parent CID",
        if i.parent_cid == NO_PARENT {
            format!("{:08x} (no parent)", i.parent_cid)
        } else {
            format!("{:08x}", i.parent_cid)
        },
    ));
    if let Some(p) = &i.parent {
        rows.push(("parent", p.display().to_string()));
    }
    if i.unclean_shutdown {
        rows.push((
            "unclean shutdown",
            "yes: not closed cleanly; see `vmk disk check`".into(),
        ));
    }
    let mut out = String::new();
    for (k, v) in rows {
        out += &format!("{:<18}{v}\n", format!("{k}:"));
    }
    out += "extents:\n";
    let mut t = vec![[
        "#".to_string(),
        "type".into(),
        "start".into(),
        "size".into(),
        "file size".into(),
        "disk size".into(),
        "file".into(),
    ]];
    for (n, e) in i.extents.iter().enumerate() {
        t.push([
            n.to_string(),
            extent_type(e.kind).into(),
            human(e.start),
            human(e.size),
            human(e.file_size),
            human(e.allocated_bytes),
            e.path.display().to_string(),
        ]);
    }
    let mut w = [0usize; 7];
    for r in &t {
        for (c, v) in r.iter().enumerate() {
            w[c] = w[c].max(v.len());
        }
    }
    for r in &t {
        let mut line = format!("  {:>w0$}  {:<w1$}", r[0], r[1], w0 = w[0], w1 = w[1]);
        for c in 2..6 {
            line += &format!("  {:>w$}", r[c], w = w[c]);
        }
        line += &format!("  {}", r[6]);
        out += line.trim_end();
        out += "\n";
    }
    out
}

/// `vmk disk info --json`: the keys documented on `DiskCommand::Info`.
fn info_json(i: &VmdkInfo, allocated_grains: u64) -> serde_json::Value {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let extents: Vec<serde_json::Value> = i
        .extents
        .iter()
        .map(|e| {
            serde_json::json!({
                "path": path(&e.path),
                "type": extent_type(e.kind),
                "start": e.start,
                "size": e.size,
                "file_size": e.file_size,
                "disk_size": e.allocated_bytes,
                "grain_size": e.grain_size,
            })
        })
        .collect();
    serde_json::json!({
        "path": path(&i.path),
        "format": "vmdk",
        "create_type": i.subformat.as_str(),
        "virtual_size": i.capacity,
        "disk_size": i.allocated_bytes,
        "allocated_grains": allocated_grains,
        "grain_size": i.grain_size,
        "adapter_type": i.adapter_type,
        "hw_version": i.hw_version,
        "cid": format!("{:08x}", i.cid),
        "parent_cid": format!("{:08x}", i.parent_cid),
        "parent": i.parent.as_deref().map(path),
        "unclean_shutdown": i.unclean_shutdown,
        "extents": extents,
    })
}
