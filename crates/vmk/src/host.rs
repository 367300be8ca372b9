//! `vmk host ...`: run the host daemon in the foreground, and ask a running host about
//! itself. Also the connection options every API client command shares ([`ConnArgs`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use vmk_api::client::Client;
use vmk_api::model::{HostConfig, HostInfo};
use vmk_host::host_api::HostApi;
use vmk_host::runtime::Host;

use crate::error::CmdError;
use crate::fmt::{fmt_bytes, fmt_duration};

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Run the host in the foreground: every VM of the machine, the inventory and the API
    /// (Unix socket, optionally TCP). Stops on SIGINT or SIGTERM.
    ///
    /// Its configuration is the global --config FILE (or VMK_CONFIG): TOML with dir,
    /// socket, [tcp] listen and token_file, [[datastore]]. Without it: inventory in
    /// /var/lib/vmk, API on /run/vmk/vmk.sock, no TCP.
    ///
    /// The log (VM lifecycle, warnings, errors) goes to stderr, one line per event with
    /// time, level and module. VMK_LOG filters it: default info; VMK_LOG=warn for less,
    /// VMK_LOG=debug or VMK_LOG=info,vmk_host=debug for more.
    Start,
    /// Show the running host: CPUs, memory, VMs, uptime.
    Info {
        #[command(flatten)]
        conn: ConnArgs,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set the host's power policy: high-performance, balanced or low-power. It sets the
    /// cpufreq governor (performance, schedutil, powersave) of the CPUs vmk uses where the
    /// host exposes cpufreq, and low-power packs vCPUs onto as few CPUs as the load allows.
    /// Lasts until the host stops (the host config's [cpu] power sets it at start).
    Power {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(value_parser = ["high-performance", "balanced", "low-power"])]
        policy: String,
    },
}

/// Where the host's API is. The Unix socket unless --url is given; the socket is, first
/// found: --socket, VMK_SOCKET, the `socket` of the host configuration given by the global
/// --config FILE or VMK_CONFIG (the file `vmk host start --config FILE` runs with), and
/// the host's default /run/vmk/vmk.sock (a host started without --config has no
/// configuration file, so there is no default configuration path to read).
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// The host's API socket [default: the `socket` of --config FILE, else
    /// /run/vmk/vmk.sock].
    #[arg(long, value_name = "PATH", env = "VMK_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
    /// The host's TCP API, http://HOST:PORT, instead of the socket (needs --token-file).
    /// Takes precedence over --socket, so that a VMK_SOCKET in the environment does not
    /// get in the way.
    #[arg(long, value_name = "URL", global = true)]
    pub url: Option<String>,
    /// A file holding the TCP API's bearer token.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The host configuration (the global --config / VMK_CONFIG, filled in by `main`).
    #[arg(skip)]
    pub config: Option<PathBuf>,
}

impl ConnArgs {
    pub fn client(&self) -> Result<Client, CmdError> {
        match (&self.url, &self.token_file) {
            (Some(url), Some(token)) => Ok(Client::tcp_with_token_file(url, token)?),
            (Some(_), None) => {
                Err("--url needs --token-file (the file with the host's API token)".into())
            }
            (None, Some(_)) => {
                Err("--token-file goes with --url (the Unix socket needs no token)".into())
            }
            (None, None) => Ok(Client::unix(self.socket_path()?)),
        }
    }

    /// The API socket: --socket or VMK_SOCKET, else the configuration's `socket` (its
    /// default when the file has none), else the host's default.
    pub fn socket_path(&self) -> Result<PathBuf, CmdError> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        match &self.config {
            Some(c) => Ok(load_config(Some(c))
                .map_err(|e| {
                    format!(
                        "{e} (the host configuration named by --config or VMK_CONFIG, read \
                         for its `socket`; or give the socket with --socket)"
                    )
                })?
                .socket),
            None => Ok(vmk_api::model::default_socket()),
        }
    }
}

/// Runs `cmd`; `config` is the global --config (or VMK_CONFIG).
pub fn run(cmd: HostCommand, config: Option<&Path>) -> Result<(), CmdError> {
    match cmd {
        HostCommand::Start => start(config),
        HostCommand::Power { conn, policy } => {
            let policy: vmk_api::model::PowerPolicy =
                serde_json::from_value(serde_json::Value::String(policy.clone()))
                    .map_err(|e| format!("power policy {policy}: {e}"))?;
            let info = conn.client()?.set_power_policy(policy)?;
            writeln!(std::io::stdout().lock(), "power: {}", info.cpu.power_note)?;
            Ok(())
        }
        HostCommand::Info { conn, json } => {
            let info = conn.client()?.host_info()?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
            } else {
                out.write_all(format_info(&info).as_bytes())?;
            }
            Ok(())
        }
    }
}

/// The host configuration: the file's, or the defaults.
pub fn load_config(path: Option<&Path>) -> Result<HostConfig, CmdError> {
    let Some(path) = path else {
        return Ok(HostConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the host config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("host config {}: {e}", path.display()).into())
}

/// How long `vmk host start` gives running VMs to shut down when it is stopped (the power
/// button, all VMs at once), before powering off what is left.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

fn start(config: Option<&Path>) -> Result<(), CmdError> {
    let cfg = load_config(config)?;
    let host = Host::open(&cfg)?;
    for e in host.inventory_errors() {
        eprintln!(
            "vmk: warning: VM definition {} not loaded: {} (fix or remove the file; the other VMs are up)",
            e.path.display(),
            e.message
        );
    }
    let tcp = cfg
        .tcp
        .as_ref()
        .map(|t| format!(" and on TCP {}", t.listen))
        .unwrap_or_default();
    eprintln!(
        "vmk: host in {} serving the API on {}{tcp}; SIGINT or SIGTERM stops it",
        cfg.dir.display(),
        cfg.socket.display()
    );
    let api: Arc<dyn HostApi> = host.clone();
    let served = vmk_host::api::serve(api, &cfg, vmk_host::api::termination_signal());
    eprintln!(
        "vmk: host stopping: shutting down running VMs (powered off after {} s)",
        SHUTDOWN_TIMEOUT.as_secs()
    );
    host.shutdown(SHUTDOWN_TIMEOUT);
    served?;
    eprintln!("vmk: host stopped");
    Ok(())
}

pub fn format_info(h: &HostInfo) -> String {
    let mut out = format!(
        "host:      {}\nversion:   {}\ncpus:      {}\nmemory:    {}\nvms:       {} ({} running)\nuptime:    {}\ndirectory: {}\n",
        h.hostname,
        h.version,
        h.cpus,
        fmt_bytes(h.memory),
        h.vms,
        h.vms_running,
        fmt_duration(h.uptime_secs),
        h.dir.display()
    );
    // ---- CPU ----
    let c = &h.cpu;
    if c.cpu_mhz > 0 {
        out.push_str(&format!(
            "cpu_mhz:   {} ({} CPUs scheduled: {}; {} cores x {} threads, {} NUMA node{})
             cpu:       capacity {} MHz, reserved {} MHz; scheduler {}; edition {} (at most {} vCPUs per VM)
",
            c.cpu_mhz,
            c.cpus.len(),
            vmk_sched::topology::format_cpu_list(&c.cpus),
            c.cores,
            c.threads_per_core,
            c.numa_nodes,
            if c.numa_nodes == 1 { "" } else { "s" },
            c.capacity_mhz,
            c.reserved_mhz,
            c.scheduler,
            c.edition,
            c.max_vcpus_per_vm
        ));
        if !c.power_note.is_empty() {
            out.push_str(&format!("power:     {}\n", c.power_note));
        }
    }
    // ---- datastores ----
    for d in &h.datastores {
        let state = match (&d.error, d.host_id) {
            (Some(e), _) => format!("ERROR: {e}"),
            (None, Some(id)) => format!("{} as host {id}", d.state),
            (None, None) => d.state.clone(),
        };
        out.push_str(&format!("datastore: [{}] {} ({state})\n", d.name, d.device));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_config(None).unwrap(), HostConfig::default());
        let p = dir.path().join("host.toml");
        std::fs::write(
            &p,
            "dir = \"/srv/vmk\"\n[tcp]\nlisten = \"127.0.0.1:7480\"\ntoken_file = \"/etc/vmk/token\"\n",
        )
        .unwrap();
        let cfg = load_config(Some(&p)).unwrap();
        assert_eq!(cfg.dir, PathBuf::from("/srv/vmk"));
        assert_eq!(cfg.socket, vmk_api::model::default_socket());
        assert_eq!(cfg.tcp.unwrap().listen, "127.0.0.1:7480");

        std::fs::write(&p, "dri = \"/srv\"\n").unwrap();
        let e = load_config(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("host.toml") && e.contains("unknown field `dri`"),
            "{e}"
        );
        let e = load_config(Some(&dir.path().join("none.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the host config"), "{e}");
    }

    #[test]
    fn info_shows_datastores() {
        let h = HostInfo {
            hostname: "h".into(),
            version: "0".into(),
            cpus: 1,
            memory: 1 << 30,
            vms: 0,
            vms_running: 0,
            uptime_secs: 1,
            dir: "/v".into(),
            datastores: vec![
                vmk_api::model::DatastoreStatus {
                    name: "ds1".into(),
                    device: "/srv/ds1.img".into(),
                    state: "mounted".into(),
                    host_id: Some(2),
                    error: None,
                },
                vmk_api::model::DatastoreStatus {
                    name: "ds2".into(),
                    device: "/srv/none.img".into(),
                    state: "error".into(),
                    host_id: None,
                    error: Some("cannot open /srv/none.img".into()),
                },
            ],
            cpu: vmk_api::model::CpuInfo {
                cpu_mhz: 2596,
                cpus: vec![0, 1, 2, 3, 6],
                capacity_mhz: 5 * 2596,
                reserved_mhz: 500,
                scheduler: "vmk".into(),
                edition: "standard".into(),
                max_vcpus_per_vm: 4,
                cores: 5,
                threads_per_core: 1,
                numa_nodes: 1,
                power_policy: "low-power".into(),
                power_note: "low-power: cpufreq governor powersave on CPUs 0-3,6".into(),
            },
        };
        let s = format_info(&h);
        assert!(
            s.contains(
                "cpu_mhz:   2596 (5 CPUs scheduled: 0-3,6; 5 cores x 1 threads, 1 NUMA node)\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("power:     low-power: cpufreq governor powersave on CPUs 0-3,6\n"),
            "{s}"
        );
        assert!(
            s.contains("capacity 12980 MHz, reserved 500 MHz; scheduler vmk; edition standard (at most 4 vCPUs per VM)"),
            "{s}"
        );
        assert!(
            s.contains("datastore: [ds1] /srv/ds1.img (mounted as host 2)"),
            "{s}"
        );
        assert!(
            s.contains("datastore: [ds2] /srv/none.img (ERROR: cannot open /srv/none.img)"),
            "{s}"
        );
    }

    #[test]
    fn connection_options() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef\n").unwrap();
        let c = ConnArgs {
            socket: None,
            url: None,
            token_file: None,
            config: None,
        };
        assert_eq!(
            c.client().unwrap().endpoint(),
            &vmk_api::client::Endpoint::Unix("/run/vmk/vmk.sock".into())
        );
        let url_only = ConnArgs {
            url: Some("http://127.0.0.1:1".into()),
            ..c.clone()
        };
        assert!(url_only
            .client()
            .unwrap_err()
            .to_string()
            .contains("--token-file"));
        // --url wins over a socket (from VMK_SOCKET, say).
        let both = ConnArgs {
            socket: Some("/s.sock".into()),
            url: Some("http://127.0.0.1:7480".into()),
            token_file: Some(token.clone()),
            config: None,
        };
        assert!(matches!(
            both.client().unwrap().endpoint(),
            vmk_api::client::Endpoint::Tcp { .. }
        ));
        let token_only = ConnArgs {
            token_file: Some("/t".into()),
            ..c
        };
        assert!(token_only
            .client()
            .unwrap_err()
            .to_string()
            .contains("goes with --url"));
    }

    /// The socket: --socket / VMK_SOCKET first, then the configuration's `socket`, then
    /// the default; a configuration that cannot be read is an error naming it.
    #[test]
    fn socket_from_the_host_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("host.toml");
        std::fs::write(&cfg, "socket = \"/srv/vmk/api.sock\"\n").unwrap();
        let c = |socket: Option<&str>, config: Option<&Path>| ConnArgs {
            socket: socket.map(PathBuf::from),
            url: None,
            token_file: None,
            config: config.map(Path::to_path_buf),
        };
        let sock = |c: ConnArgs| c.socket_path().unwrap();
        assert_eq!(
            sock(c(None, Some(&cfg))),
            PathBuf::from("/srv/vmk/api.sock")
        );
        assert_eq!(
            sock(c(Some("/s.sock"), Some(&cfg))),
            PathBuf::from("/s.sock")
        );
        assert_eq!(sock(c(None, None)), vmk_api::model::default_socket());
        // A configuration without `socket`: the host's default, as the host would use.
        let bare = dir.path().join("bare.toml");
        std::fs::write(&bare, "dir = \"/srv/vmk\"\n").unwrap();
        assert_eq!(sock(c(None, Some(&bare))), vmk_api::model::default_socket());
        let e = c(None, Some(&dir.path().join("none.toml")))
            .client()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("none.toml") && e.contains("--config or VMK_CONFIG"),
            "{e}"
        );
    }
}
