//! `vmk vswitch|portgroup|uplink|network ...`: the host's network, through its API.
//! Each command is a function of a [`Client`] and an output (tested against the fake host).

use std::io::Write;

use clap::{Args, Subcommand};
use vmk_api::client::Client;
use vmk_api::network::{
    NetworkInfo, Policy, PortGroupDef, PortGroupInfo, PortGroupUpdate, SecurityDef, ShapingDef,
    TeamingDef, UplinkKind, UplinkSpec, VSwitchDef, VSwitchInfo, VSwitchUpdate,
};

use crate::error::CmdError;
use crate::host::ConnArgs;

#[derive(Debug, Args)]
pub struct VSwitchArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub cmd: VSwitchCommand,
}

#[derive(Debug, Subcommand)]
pub enum VSwitchCommand {
    /// Add a vSwitch.
    Add {
        name: String,
        /// Largest frame payload, 68 to 9000.
        #[arg(long, default_value_t = 1500)]
        mtu: u16,
        /// Active uplinks, in order (comma-separated; default: every uplink).
        #[arg(long, value_delimiter = ',', value_name = "UPLINKS")]
        active: Vec<String>,
        /// Standby uplinks, in order (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "UPLINKS")]
        standby: Vec<String>,
        /// Keep traffic on a standby uplink after the active one recovers.
        #[arg(long)]
        no_failback: bool,
    },
    /// Change a vSwitch's MTU or teaming (what is not given stays).
    Set {
        name: String,
        #[arg(long)]
        mtu: Option<u16>,
        /// Active uplinks, in order (comma-separated); replaces the teaming policy.
        #[arg(long, value_delimiter = ',', value_name = "UPLINKS")]
        active: Option<Vec<String>>,
        /// Standby uplinks, in order (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "UPLINKS")]
        standby: Option<Vec<String>>,
        /// Failback: yes or no.
        #[arg(long, value_name = "yes|no")]
        failback: Option<YesNo>,
    },
    /// List the vSwitches with their uplinks and port groups.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a vSwitch (its port groups must be removed first; its uplinks go with it).
    Remove { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum YesNo {
    Yes,
    No,
}

#[derive(Debug, Args)]
pub struct PortGroupArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub cmd: PortGroupCommand,
}

/// Security policy and shaping options shared by `add` and `set`.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Promiscuous mode: accept or reject.
    #[arg(long, value_name = "accept|reject")]
    promiscuous: Option<Policy>,
    /// MAC address changes: accept or reject.
    #[arg(long, value_name = "accept|reject")]
    mac_changes: Option<Policy>,
    /// Forged transmits: accept or reject.
    #[arg(long, value_name = "accept|reject")]
    forged_transmits: Option<Policy>,
    /// Egress traffic shaping: average bit/s, peak bit/s, burst bytes (suffixes k, M, G
    /// for the rates, K, M for the burst), e.g. 8M,10M,64K.
    #[arg(long, value_name = "AVG,PEAK,BURST", value_parser = parse_shaping)]
    shaping: Option<ShapingDef>,
}

#[derive(Debug, Subcommand)]
pub enum PortGroupCommand {
    /// Add a port group to a vSwitch.
    Add {
        name: String,
        #[arg(long)]
        vswitch: String,
        /// 0 untagged, 1 to 4094 (the switch tags), 4095 (the guests tag).
        #[arg(long, default_value_t = 0)]
        vlan: u16,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Change a port group's VLAN, security policy or shaping; running VMs follow at once.
    Set {
        name: String,
        #[arg(long)]
        vlan: Option<u16>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Turn traffic shaping off.
        #[arg(long, conflicts_with = "shaping")]
        no_shaping: bool,
    },
    /// List the port groups.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a port group (no running VM may be connected to it).
    Remove { name: String },
}

#[derive(Debug, Args)]
pub struct UplinkArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub cmd: UplinkCommand,
}

#[derive(Debug, Subcommand)]
pub enum UplinkCommand {
    /// Add an uplink to a vSwitch: a TAP device vmk creates (--tap NAME) or an existing
    /// host interface (--interface IF, AF_PACKET).
    Add {
        #[arg(long)]
        vswitch: String,
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with = "interface",
            required_unless_present = "interface"
        )]
        tap: Option<String>,
        #[arg(long, value_name = "IF")]
        interface: Option<String>,
    },
    /// Remove an uplink from its vSwitch.
    Remove {
        #[arg(long)]
        vswitch: String,
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct NetworkArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
}

/// A rate in bit/s: a number with an optional k, M or G (decimal, as network rates are).
fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
        Some('g' | 'G') => (&s[..s.len() - 1], 1_000_000_000),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a rate in bit/s (examples: 8M, 500k, 1G)"))
}

/// `AVG,PEAK,BURST`: rates in bit/s (k, M, G decimal), burst in bytes (K, M binary).
pub fn parse_shaping(s: &str) -> Result<ShapingDef, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [avg, peak, burst] = parts[..] else {
        return Err(format!(
            "'{s}': give average,peak,burst, e.g. 8M,10M,64K (bit/s, bit/s, bytes)"
        ));
    };
    Ok(ShapingDef {
        average_bps: parse_rate(avg)?,
        peak_bps: parse_rate(peak)?,
        burst_bytes: vmk_api::model::parse_size(burst)?,
    })
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Accept => "accept",
        Policy::Reject => "reject",
    }
}

pub fn run_vswitch(args: VSwitchArgs) -> Result<(), CmdError> {
    let c = args.conn.client()?;
    vswitch(&c, args.cmd, &mut std::io::stdout().lock())
}

pub fn vswitch(c: &Client, cmd: VSwitchCommand, out: &mut dyn Write) -> Result<(), CmdError> {
    match cmd {
        VSwitchCommand::Add {
            name,
            mtu,
            active,
            standby,
            no_failback,
        } => {
            let s = c.add_vswitch(&VSwitchDef {
                name,
                mtu,
                teaming: TeamingDef {
                    active,
                    standby,
                    failback: !no_failback,
                },
            })?;
            writeln!(out, "vSwitch {}: added (MTU {})", s.name, s.mtu)?;
        }
        VSwitchCommand::Set {
            name,
            mtu,
            active,
            standby,
            failback,
        } => {
            let teaming = if active.is_some() || standby.is_some() || failback.is_some() {
                let cur = c
                    .vswitches()?
                    .into_iter()
                    .find(|s| s.name == name)
                    .map(|s| s.teaming)
                    .unwrap_or_default();
                Some(TeamingDef {
                    active: active.unwrap_or(cur.active),
                    standby: standby.unwrap_or(cur.standby),
                    failback: failback.map_or(cur.failback, |f| f == YesNo::Yes),
                })
            } else {
                None
            };
            let s = c.update_vswitch(&name, &VSwitchUpdate { mtu, teaming })?;
            writeln!(out, "vSwitch {}: updated", s.name)?;
        }
        VSwitchCommand::List { json } => {
            let list = c.vswitches()?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                out.write_all(format_vswitches(&list).as_bytes())?;
            }
        }
        VSwitchCommand::Remove { name } => {
            c.remove_vswitch(&name)?;
            writeln!(out, "vSwitch {name}: removed")?;
        }
    }
    Ok(())
}

pub fn format_vswitches(list: &[VSwitchInfo]) -> String {
    let mut s = String::new();
    for v in list {
        let t = &v.teaming;
        s += &format!(
            "{}  mtu {}  port groups: {}\n",
            v.name,
            v.mtu,
            if v.portgroups.is_empty() {
                "-".to_string()
            } else {
                v.portgroups.join(", ")
            }
        );
        if !t.active.is_empty() || !t.standby.is_empty() {
            s += &format!(
                "  teaming: active {}  standby {}  failback {}\n",
                t.active.join(","),
                t.standby.join(","),
                if t.failback { "yes" } else { "no" }
            );
        }
        for u in &v.uplinks {
            let kind = match u.kind {
                UplinkKind::Tap => "tap",
                UplinkKind::Packet => "packet",
            };
            let state = match (&u.error, u.link_up, u.in_use) {
                (Some(e), _, _) => format!("error: {e}"),
                (None, false, _) => "link down".into(),
                (None, true, true) => "up, in use".into(),
                (None, true, false) => "up, standby".into(),
            };
            s += &format!(
                "  uplink {} ({kind}): {state}  rx {} frames  tx {} frames\n",
                u.name, u.rx_frames, u.tx_frames
            );
        }
    }
    s
}

pub fn run_portgroup(args: PortGroupArgs) -> Result<(), CmdError> {
    let c = args.conn.client()?;
    portgroup(&c, args.cmd, &mut std::io::stdout().lock())
}

pub fn portgroup(c: &Client, cmd: PortGroupCommand, out: &mut dyn Write) -> Result<(), CmdError> {
    match cmd {
        PortGroupCommand::Add {
            name,
            vswitch,
            vlan,
            policy,
        } => {
            let d = SecurityDef::default();
            let p = c.add_portgroup(&PortGroupDef {
                name,
                vswitch,
                vlan,
                security: SecurityDef {
                    promiscuous: policy.promiscuous.unwrap_or(d.promiscuous),
                    mac_changes: policy.mac_changes.unwrap_or(d.mac_changes),
                    forged_transmits: policy.forged_transmits.unwrap_or(d.forged_transmits),
                },
                shaping: policy.shaping,
            })?;
            writeln!(
                out,
                "port group {}: added to vSwitch {} (VLAN {})",
                p.config.name, p.config.vswitch, p.config.vlan
            )?;
        }
        PortGroupCommand::Set {
            name,
            vlan,
            policy,
            no_shaping,
        } => {
            let p = c.update_portgroup(
                &name,
                &PortGroupUpdate {
                    vlan,
                    promiscuous: policy.promiscuous,
                    mac_changes: policy.mac_changes,
                    forged_transmits: policy.forged_transmits,
                    shaping: policy.shaping,
                    no_shaping,
                },
            )?;
            writeln!(out, "port group {}: updated", p.config.name)?;
        }
        PortGroupCommand::List { json } => {
            let list = c.portgroups()?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                out.write_all(format_portgroups(&list).as_bytes())?;
            }
        }
        PortGroupCommand::Remove { name } => {
            c.remove_portgroup(&name)?;
            writeln!(out, "port group {name}: removed")?;
        }
    }
    Ok(())
}

pub fn format_portgroups(list: &[PortGroupInfo]) -> String {
    let mut s = format!(
        "{:<16} {:<12} {:>5} {:>5} {:<8} {:<8} {:<8} SHAPING\n",
        "NAME", "VSWITCH", "VLAN", "PORTS", "PROMISC", "MACCHG", "FORGED"
    );
    for p in list {
        let c = &p.config;
        let shaping = c.shaping.map_or("-".to_string(), |x| {
            format!(
                "{}/{} bit/s, {} B",
                x.average_bps, x.peak_bps, x.burst_bytes
            )
        });
        s += &format!(
            "{:<16} {:<12} {:>5} {:>5} {:<8} {:<8} {:<8} {shaping}\n",
            c.name,
            c.vswitch,
            c.vlan,
            p.ports,
            policy_name(c.security.promiscuous),
            policy_name(c.security.mac_changes),
            policy_name(c.security.forged_transmits),
        );
    }
    s
}

pub fn run_uplink(args: UplinkArgs) -> Result<(), CmdError> {
    let c = args.conn.client()?;
    uplink(&c, args.cmd, &mut std::io::stdout().lock())
}

pub fn uplink(c: &Client, cmd: UplinkCommand, out: &mut dyn Write) -> Result<(), CmdError> {
    match cmd {
        UplinkCommand::Add {
            vswitch,
            tap,
            interface,
        } => {
            let spec = match (tap, interface) {
                (Some(name), None) => UplinkSpec {
                    name,
                    kind: UplinkKind::Tap,
                },
                (None, Some(name)) => UplinkSpec {
                    name,
                    kind: UplinkKind::Packet,
                },
                _ => return Err("give --tap NAME or --interface IF".into()),
            };
            let name = spec.name.clone();
            c.add_uplink(&vswitch, &spec)?;
            writeln!(out, "uplink {name}: added to vSwitch {vswitch}")?;
        }
        UplinkCommand::Remove { vswitch, name } => {
            c.remove_uplink(&vswitch, &name)?;
            writeln!(out, "uplink {name}: removed from vSwitch {vswitch}")?;
        }
    }
    Ok(())
}

pub fn run_network(args: NetworkArgs) -> Result<(), CmdError> {
    let c = args.conn.client()?;
    let n = c.network()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&n)?)?;
    } else {
        out.write_all(format_network(&n).as_bytes())?;
    }
    Ok(())
}

/// The vSwitches, then every connected port with its counters.
pub fn format_network(n: &NetworkInfo) -> String {
    let mut s = format_vswitches(&n.vswitches);
    s += &format!(
        "\n{:<16} {:<14} {:<17} {:>9} {:>9} {:>7} {:>7} {:>7}\n",
        "PORT", "PORTGROUP", "MAC", "TX", "RX", "DROPS", "FORGED", "THROTL"
    );
    for p in &n.ports {
        let c = &p.counters;
        s += &format!(
            "{:<16} {:<14} {:<17} {:>9} {:>9} {:>7} {:>7} {:>7}\n",
            p.name,
            c.portgroup,
            c.mac,
            c.tx_frames,
            c.rx_frames,
            c.drops,
            c.drop_reasons.forged,
            c.throttled
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vmk_api::model::HostConfig;
    use vmk_host::fake::{FakeHost, TestServer};

    #[test]
    fn shaping_parses() {
        assert_eq!(
            parse_shaping("8M,10M,64K"),
            Ok(ShapingDef {
                average_bps: 8_000_000,
                peak_bps: 10_000_000,
                burst_bytes: 64 << 10
            })
        );
        assert!(parse_shaping("8M,10M").is_err());
        assert!(parse_shaping("x,1,1").unwrap_err().contains("not a rate"));
    }

    #[test]
    fn commands_against_the_fake_host() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HostConfig {
            dir: dir.path().join("host"),
            socket: dir.path().join("s.sock"),
            ..HostConfig::default()
        };
        let server = TestServer::start(Arc::new(FakeHost::default()), &cfg).unwrap();
        let c = Client::unix(server.socket());
        let mut out = Vec::new();
        vswitch(
            &c,
            VSwitchCommand::Add {
                name: "sw0".into(),
                mtu: 9000,
                active: vec!["t0".into()],
                standby: vec!["t1".into()],
                no_failback: true,
            },
            &mut out,
        )
        .unwrap();
        let e = vswitch(
            &c,
            VSwitchCommand::Add {
                name: "sw1".into(),
                mtu: 10000,
                active: vec![],
                standby: vec![],
                no_failback: false,
            },
            &mut out,
        )
        .unwrap_err();
        assert!(e.to_string().contains("MTU 10000"), "{e}");
        uplink(
            &c,
            UplinkCommand::Add {
                vswitch: "sw0".into(),
                tap: Some("t0".into()),
                interface: None,
            },
            &mut out,
        )
        .unwrap();
        let policy = PolicyArgs {
            promiscuous: Some(Policy::Accept),
            mac_changes: None,
            forged_transmits: None,
            shaping: Some(parse_shaping("8M,8M,16K").unwrap()),
        };
        portgroup(
            &c,
            PortGroupCommand::Add {
                name: "web".into(),
                vswitch: "sw0".into(),
                vlan: 10,
                policy: policy.clone(),
            },
            &mut out,
        )
        .unwrap();
        let e = portgroup(
            &c,
            PortGroupCommand::Set {
                name: "web".into(),
                vlan: Some(4096),
                policy: PolicyArgs {
                    promiscuous: None,
                    shaping: None,
                    ..policy
                },
                no_shaping: true,
            },
            &mut out,
        )
        .unwrap_err();
        assert!(e.to_string().contains("VLAN 4096"), "{e}");
        out.clear();
        portgroup(&c, PortGroupCommand::List { json: false }, &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains("web") && text.contains("accept") && text.contains("8000000/8000000"),
            "{text}"
        );
        out.clear();
        vswitch(&c, VSwitchCommand::List { json: false }, &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("sw0  mtu 9000  port groups: web"), "{text}");
        assert!(text.contains("uplink t0 (tap)"), "{text}");
        assert!(text.contains("failback no"), "{text}");
        portgroup(
            &c,
            PortGroupCommand::Remove { name: "web".into() },
            &mut out,
        )
        .unwrap();
        vswitch(&c, VSwitchCommand::Remove { name: "sw0".into() }, &mut out).unwrap();
        assert!(c.vswitches().unwrap().is_empty());
    }
}
