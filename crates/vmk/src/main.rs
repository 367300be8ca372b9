//! `vmk`: the command line of the vmk hypervisor.
//!
//! Each top-level subcommand lives in its own module and exposes a clap `Subcommand` (or
//! `Args`) type and a `run` function; `main` only parses and dispatches. Add `run`, `disk`,
//! `host`, `vm`, ... as further variants of [`Command`].

mod datastore;
mod disk;
mod image;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The error type of every subcommand: printed as `vmk: error: ...`, exit status 1.
pub type CmdError = Box<dyn std::error::Error>;

#[derive(Debug, Parser)]
#[command(
    name = "vmk",
    version,
    about = "vmk: a hypervisor running Debian riscv64 Linux guests on a software RISC-V CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build guest images (kernel + initrd) from Debian packages.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Create, inspect, check, convert and grow virtual disks (VMDK, raw).
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Boot a VM in the foreground, its serial console on the terminal (Ctrl-A x quits).
    ///
    /// Exits with the guest's exit status (the image's init script) when it powers off.
    Run(run::RunArgs),
    /// VMFS-style datastores shared by up to 32 hosts: create, info, ls, cp, rm, mkdir, df, fsck.
    #[command(subcommand)]
    Datastore(datastore::DatastoreCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd).map(|()| 0),
        Command::Run(args) => run::run(args),
        Command::Disk(cmd) => disk::run(cmd).map(|()| 0),
        Command::Datastore(cmd) => datastore::run(cmd).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("vmk: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn image_build_parses() {
        let cli = Cli::try_parse_from([
            "vmk",
            "image",
            "build",
            "--out",
            "/tmp/x",
            "--package",
            "fio",
            "-p",
            "sqlite3",
            "--init-script",
            "s.sh",
            "--cache",
            "/tmp/c",
        ])
        .unwrap();
        let Command::Image(image::ImageCommand::Build(args)) = cli.command else {
            panic!("not an image command");
        };
        assert_eq!(args.packages, vec!["fio", "sqlite3"]);
        assert_eq!(args.out, std::path::PathBuf::from("/tmp/x"));
        assert!(
            Cli::try_parse_from(["vmk", "image", "build"]).is_err(),
            "--out is required"
        );
    }
}
