//! `vmk disk ...`: virtual disks, in the spirit of vmkfstools.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use vmk_vmdk::{convert, CreateOptions, OpenMode, Subformat, Target, Vmdk};

use crate::CmdError;
use vmk_host::model::parse_size;

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Create a VMDK virtual disk.
    Create(CreateArgs),
    /// Show a disk's format, size, extents and allocation.
    Info { path: PathBuf },
    /// Check a VMDK for what a crash can leave (leaked grains, stale redundant tables).
    Check {
        path: PathBuf,
        /// Repair what can be repaired.
        #[arg(long)]
        repair: bool,
    },
    /// Copy a disk to another format (VMDK subformats or raw), skipping unallocated space.
    Convert(ConvertArgs),
    /// Grow a VMDK to a new size.
    Grow {
        path: PathBuf,
        /// New size, e.g. 20G.
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub path: PathBuf,
    /// Size, e.g. 10G.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// monolithicSparse (default), monolithicFlat, twoGbMaxExtentSparse,
    /// twoGbMaxExtentFlat, streamOptimized.
    #[arg(long = "type", default_value = "monolithicSparse", value_parser = parse_subformat)]
    pub subformat: Subformat,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// Target VMDK subformat; `raw` for a plain image file.
    #[arg(long = "type", default_value = "monolithicSparse")]
    pub target: String,
}

fn parse_subformat(s: &str) -> Result<Subformat, String> {
    s.parse::<Subformat>().map_err(|e| e.to_string())
}

pub fn run(cmd: DiskCommand) -> Result<(), CmdError> {
    match cmd {
        DiskCommand::Create(a) => {
            let disk = Vmdk::create(&a.path, &CreateOptions::new(a.size, a.subformat))?;
            let info = disk.info();
            disk.close()?;
            println!(
                "created {} ({}, {} bytes)",
                a.path.display(),
                info.subformat,
                info.capacity
            );
        }
        DiskCommand::Info { path } => {
            let mut disk = Vmdk::open(&path, OpenMode::ReadOnly)?;
            let allocated = disk.allocated_grains()?;
            let info = disk.info();
            println!("{info:#?}");
            println!("allocated grains: {allocated}");
        }
        DiskCommand::Check { path, repair } => {
            let report = Vmdk::check(&path, repair)?;
            println!("{report}");
            if report.unrepaired().next().is_some() {
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
            let target = if a.target.eq_ignore_ascii_case("raw") {
                Target::Raw
            } else {
                Target::Vmdk(CreateOptions::new(0, parse_subformat(&a.target)?))
            };
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
        DiskCommand::Grow { path, size } => {
            let mut disk = Vmdk::open(&path, OpenMode::ReadWrite)?;
            disk.grow(size)?;
            disk.close()?;
            println!("{} is now {size} bytes", path.display());
        }
    }
    Ok(())
}
