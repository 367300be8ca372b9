//! `vmk image ...`: guest images.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use vmk_image::{AptOutput, ImageOptions, Progress};

use crate::error::CmdError;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build DIR/vmlinux, DIR/initrd.img and DIR/image.toml from Debian trixie riscv64.
    ///
    /// The initrd holds busybox, the given packages with their dependencies, the virtio-mmio
    /// block/net/balloon and ext4 modules, and an /init that prints `vmk-guest: ready`, runs
    /// the init script (then prints `vmk-guest: exit-status N` and powers off) or else a
    /// shell on the console.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A Debian package to include with its dependencies (repeatable).
    #[arg(long = "package", short = 'p', value_name = "NAME")]
    pub packages: Vec<String>,
    /// A shell script run by /bin/sh after boot; its exit status is reported on the console.
    #[arg(long, value_name = "FILE")]
    pub init_script: Option<PathBuf>,
    /// Cache of apt lists, packages and kernels [default: $VMK_CACHE or ~/.cache/vmk].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// A further kernel module to load at boot, with its dependencies (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// Update the package lists even if they are less than a day old.
    #[arg(long)]
    pub refresh: bool,
    /// Debian mirror.
    #[arg(long, value_name = "URL", default_value = vmk_image::DEFAULT_MIRROR)]
    pub mirror: String,
    /// Keyring holding the Debian trixie archive keys.
    #[arg(long, value_name = "FILE", default_value = vmk_image::DEFAULT_KEYRING)]
    pub keyring: PathBuf,
    /// Print only step names and the result (no apt output, no details).
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(cmd: ImageCommand) -> Result<(), CmdError> {
    match cmd {
        ImageCommand::Build(args) => build(args),
    }
}

fn build(args: BuildArgs) -> Result<(), CmdError> {
    let mut opts = ImageOptions::new(&args.out);
    opts.packages = args.packages;
    opts.init_script = args.init_script;
    if let Some(c) = args.cache {
        opts.cache_dir = c;
    }
    opts.extra_modules = args.modules;
    opts.refresh = args.refresh;
    opts.mirror = args.mirror;
    opts.keyring = args.keyring;
    opts.apt_output = if args.quiet {
        AptOutput::Quiet
    } else {
        AptOutput::Stream
    };
    let quiet = args.quiet;
    let info = vmk_image::build_image(&opts, &mut |p| match p {
        Progress::Step { index, total, name } => eprintln!("==> [{index}/{total}] {name}"),
        Progress::Detail(d) if !quiet => eprintln!("    {d}"),
        Progress::Detail(_) => {}
        Progress::Warning(w) => eprintln!("    warning: {w}"),
    })?;
    println!(
        "kernel  {} ({} {}, Linux {}, flat RISC-V Image, {} bytes)",
        info.kernel_path.display(),
        info.kernel_package.name,
        info.kernel_package.version,
        info.kernel_version,
        info.kernel.size
    );
    println!(
        "initrd  {} ({} bytes, {} packages, {} modules)",
        info.initrd_path.display(),
        info.initrd_size,
        info.packages.len(),
        info.modules.len()
    );
    println!("image   {}", info.manifest_path.display());
    println!("append  {}", info.append);
    Ok(())
}
