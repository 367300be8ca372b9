//! `vmk`: the command line of the vmk hypervisor.
//!
//! Each top-level subcommand lives in its own module and exposes a clap `Subcommand` (or
//! `Args`) type and a `run` function; `main` only parses and dispatches. Add `run`, `disk`,
//! `host`, `vm`, ... as further variants of [`Command`].

// The doc comments of the clap types are the `--help` texts, written for a terminal:
// `[boot]`, `[NAME]` and the like there are TOML tables and placeholders, not doc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod datastore;
mod datastore_fuse;
mod disk;
mod error;
mod fmt;
mod host;
mod image;
mod log;
mod net;
mod run;
mod term;
mod top;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vmk",
    version,
    about = "vmk: a hypervisor running Debian riscv64 Linux guests on a software RISC-V CPU"
)]
struct Cli {
    /// The host configuration (TOML): what `vmk host start` runs with, and where the
    /// other host commands (vm, vswitch, ...) find the host's API socket (its `socket`;
    /// --socket and VMK_SOCKET come first).
    #[arg(long, value_name = "FILE", env = "VMK_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Command {
    /// The connection options of a command that talks to a host's API.
    fn conn_mut(&mut self) -> Option<&mut host::ConnArgs> {
        match self {
            Command::Vm(a) => Some(&mut a.conn),
            Command::Host(
                host::HostCommand::Info { conn, .. } | host::HostCommand::Power { conn, .. },
            ) => Some(conn),
            Command::Vswitch(a) => Some(&mut a.conn),
            Command::Portgroup(a) => Some(&mut a.conn),
            Command::Uplink(a) => Some(&mut a.conn),
            Command::Network(a) => Some(&mut a.conn),
            Command::Host(host::HostCommand::Start)
            | Command::Image(_)
            | Command::Disk(_)
            | Command::Run(_)
            | Command::Datastore(_) => None,
        }
    }
}

/// Parses the command line; the global --config goes to the command's connection options.
fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cli = Cli::try_parse_from(args)?;
    let config = cli.config.clone();
    if let Some(conn) = cli.command.conn_mut() {
        conn.config = config;
    }
    Ok(cli)
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
    /// Run the host (every VM of the machine, its inventory and API), or ask it about itself.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// The host's VMs: create, list, info, start, stop, poweroff, reset, delete, console, top.
    Vm(vm::VmArgs),
    /// VMFS-style datastores shared by up to 32 hosts: create, info, ls, cp, rm, mkdir, df,
    /// fsck, mount (FUSE, read-only).
    #[command(subcommand)]
    Datastore(datastore::DatastoreCommand),
    /// The host's vSwitches: add, set (MTU, teaming), list, remove.
    Vswitch(net::VSwitchArgs),
    /// Port groups (VLAN, security policy, traffic shaping): add, set, list, remove.
    Portgroup(net::PortGroupArgs),
    /// vSwitch uplinks (TAP devices or host interfaces): add, remove.
    Uplink(net::UplinkArgs),
    /// The host's network: vSwitches, uplinks and every VM port's counters.
    Network(net::NetworkArgs),
}

fn main() -> ExitCode {
    let cli = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    log::init(matches!(
        cli.command,
        Command::Host(host::HostCommand::Start)
    ));
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd).map(|()| 0),
        Command::Run(args) => run::run(args),
        Command::Disk(cmd) => disk::run(cmd).map(|()| 0),
        Command::Host(cmd) => host::run(cmd, cli.config.as_deref()).map(|()| 0),
        Command::Vm(args) => vm::run(args).map(|()| 0),
        Command::Datastore(cmd) => datastore::run(cmd).map(|()| 0),
        Command::Vswitch(a) => net::run_vswitch(a).map(|()| 0),
        Command::Portgroup(a) => net::run_portgroup(a).map(|()| 0),
        Command::Uplink(a) => net::run_uplink(a).map(|()| 0),
        Command::Network(a) => net::run_network(a).map(|()| 0),
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

    #[test]
    fn host_and_vm_parse() {
        for args in [
            &["vmk", "host", "start", "--config", "/etc/vmk/host.toml"][..],
            &["vmk", "--config", "/etc/vmk/host.toml", "host", "start"],
        ] {
            let cli = parse(args).unwrap();
            assert!(matches!(
                cli.command,
                Command::Host(host::HostCommand::Start)
            ));
            assert_eq!(cli.config, Some(PathBuf::from("/etc/vmk/host.toml")));
        }
        assert!(Cli::try_parse_from(["vmk", "host", "start", "--socket", "/s"]).is_err());
        // Every API command gets the global --config, wherever it is given.
        for args in [
            &["vmk", "--config", "/h.toml", "vm", "list"][..],
            &["vmk", "vm", "list", "--config", "/h.toml"],
            &["vmk", "--config", "/h.toml", "host", "info"],
            &["vmk", "--config", "/h.toml", "vswitch", "list"],
            &["vmk", "--config", "/h.toml", "network"],
        ] {
            let mut cli = parse(args).unwrap();
            let conn = cli.command.conn_mut().expect("an API command");
            assert_eq!(conn.config, Some(PathBuf::from("/h.toml")), "{args:?}");
        }

        // Connection options go before or after the VM subcommand.
        for args in [
            &[
                "vmk",
                "vm",
                "--socket",
                "/tmp/s.sock",
                "stop",
                "web1",
                "--timeout",
                "5",
            ][..],
            &[
                "vmk",
                "vm",
                "stop",
                "web1",
                "--timeout",
                "5",
                "--socket",
                "/tmp/s.sock",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Vm(vm::VmArgs { conn, cmd }) = cli.command else {
                panic!("not a vm command");
            };
            assert_eq!(conn.socket, Some(std::path::PathBuf::from("/tmp/s.sock")));
            let vm::VmCommand::Stop {
                name,
                timeout,
                no_wait,
            } = cmd
            else {
                panic!("not vm stop");
            };
            assert_eq!((name.as_str(), timeout, no_wait), ("web1", Some(5), false));
        }
        let cli = Cli::try_parse_from([
            "vmk",
            "vm",
            "top",
            "-n",
            "3",
            "-d",
            "0.5",
            "--url",
            "http://10.0.0.1:7480",
            "--token-file",
            "/t",
        ])
        .unwrap();
        let Command::Vm(vm::VmArgs {
            conn,
            cmd: vm::VmCommand::Top(top),
        }) = cli.command
        else {
            panic!("not vm top");
        };
        assert_eq!(top.iterations, Some(3));
        assert_eq!(top.delay, std::time::Duration::from_millis(500));
        assert_eq!(conn.url.as_deref(), Some("http://10.0.0.1:7480"));
        for bad in [
            &["vmk", "vm", "start"][..],
            &["vmk", "vm", "stop", "web1", "--timeout", "soon"],
            &["vmk", "vm", "explode", "web1"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    /// The systemd unit's command line is one this CLI accepts.
    #[test]
    fn systemd_unit_runs_host_start() {
        let unit = include_str!("../../../dist/vmk.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart in dist/vmk.service");
        let args: Vec<&str> = exec.split_whitespace().collect();
        assert!(args[0].ends_with("/vmk"), "{exec}");
        let cli = Cli::try_parse_from(&args).unwrap();
        assert!(matches!(
            cli.command,
            Command::Host(host::HostCommand::Start)
        ));
    }
}
