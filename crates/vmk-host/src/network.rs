//! The host's network: vSwitches, port groups and uplinks as the admin configured them
//! (persisted in `<host dir>/network.toml`, so changes through the API survive restarts),
//! the `vmk_vswitch` objects built from that configuration, and the MACs and ports of the
//! VMs' NICs.
//!
//! Names: vSwitches, port groups and uplinks are host-wide names checked like VM names
//! ([`validate_name`]); a port group belongs to one vSwitch but its name is unique on the
//! host, since VM definitions refer to port groups by name alone. An uplink's name is a
//! host interface name (the TAP device vmk creates, or the interface an AF_PACKET uplink
//! opens), so it is at most 15 bytes (Linux's IFNAMSIZ - 1).
//!
//! Every change is validated, applied to the live switches (so a port group's new policy
//! applies to the ports of running VMs from their next frame on) and then written to
//! `network.toml` atomically. At host start the configuration is rebuilt; an uplink that
//! cannot be opened (a TAP without CAP_NET_ADMIN, a missing interface) is logged and shown
//! with its error in the network info, and the rest of the network comes up.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use vmk_vswitch::{
    MacAddr, MacAllocator, PortGroupConfig, PortId, PortStats, SecurityPolicy, ShapingPolicy,
    SwitchConfig, TeamingPolicy, UplinkIo, VSwitch, VnicPort, MAX_MTU, MIN_MTU, VLAN_VGT,
};

use crate::inventory::write_atomic;
use crate::model::{validate_name, HostError, NicDef, NicDrops, NicMetrics};

/// The network configuration's file in the host directory.
pub const NETWORK_FILE: &str = "network.toml";
/// Longest uplink (host interface) name.
pub const IFNAME_MAX: usize = 15;

/// Accept or reject, as ESX's security policy says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Accept,
    #[default]
    Reject,
}

impl Policy {
    fn accept(self) -> bool {
        self == Policy::Accept
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s.to_ascii_lowercase().as_str() {
            "accept" => Ok(Policy::Accept),
            "reject" => Ok(Policy::Reject),
            _ => Err(format!("'{s}' is not a policy (use accept or reject)")),
        }
    }
}

/// A port group's security policy (default: everything rejected, as ESX).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityDef {
    /// Accept: a port sees every frame on its VLAN.
    pub promiscuous: Policy,
    /// Reject: frames to a port whose guest changed its MAC are dropped.
    pub mac_changes: Policy,
    /// Reject: frames a port sends with another source MAC are dropped.
    pub forged_transmits: Policy,
}

/// Egress traffic shaping of each port of a port group (token buckets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingDef {
    /// Long-term rate, bit/s.
    pub average_bps: u64,
    /// Highest rate in a burst, bit/s (at least the average).
    pub peak_bps: u64,
    /// Bytes a burst may send above the average rate.
    pub burst_bytes: u64,
}

/// NIC teaming of a vSwitch's uplinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamingDef {
    /// Uplinks that carry traffic, in order (with `standby`, empty: every uplink).
    #[serde(default)]
    pub active: Vec<String>,
    /// Uplinks that take over, in order, from failed active ones.
    #[serde(default)]
    pub standby: Vec<String>,
    /// A recovered active uplink takes the traffic back.
    #[serde(default = "yes")]
    pub failback: bool,
}

fn yes() -> bool {
    true
}

impl Default for TeamingDef {
    fn default() -> Self {
        TeamingDef {
            active: Vec::new(),
            standby: Vec::new(),
            failback: true,
        }
    }
}

fn default_mtu() -> u16 {
    1500
}

/// A vSwitch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VSwitchDef {
    pub name: String,
    /// Largest frame payload, 68..=9000.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    #[serde(default)]
    pub teaming: TeamingDef,
}

/// A port group: VLAN (0 untagged, 1–4094 VST, 4095 guest tagging), security, shaping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortGroupDef {
    pub name: String,
    pub vswitch: String,
    #[serde(default)]
    pub vlan: u16,
    #[serde(default)]
    pub security: SecurityDef,
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub shaping: Option<ShapingDef>,
}

/// What an uplink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkKind {
    /// A TAP device vmk creates with the uplink's name.
    Tap,
    /// An AF_PACKET socket on the existing host interface of that name.
    Packet,
}

/// An uplink of a vSwitch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkDef {
    /// The TAP device's or host interface's name.
    pub name: String,
    pub vswitch: String,
    pub kind: UplinkKind,
}

/// The body of `POST /v1/vswitches/{vswitch}/uplinks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSpec {
    pub name: String,
    pub kind: UplinkKind,
}

/// The body of `PATCH /v1/vswitches/{vswitch}`: what to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VSwitchUpdate {
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtu: Option<u16>,
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub teaming: Option<TeamingDef>,
}

/// The body of `PATCH /v1/portgroups/{portgroup}`: what to change (the rest stays).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortGroupUpdate {
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub vlan: Option<u16>,
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub promiscuous: Option<Policy>,
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac_changes: Option<Policy>,
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub forged_transmits: Option<Policy>,
    /// New shaping (replaces the old one).
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub shaping: Option<ShapingDef>,
    /// Turns shaping off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_shaping: bool,
}

/// The host's network configuration, as stored in `network.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default, rename = "vswitch", skip_serializing_if = "Vec::is_empty")]
    pub vswitches: Vec<VSwitchDef>,
    #[serde(default, rename = "portgroup", skip_serializing_if = "Vec::is_empty")]
    pub portgroups: Vec<PortGroupDef>,
    #[serde(default, rename = "uplink", skip_serializing_if = "Vec::is_empty")]
    pub uplinks: Vec<UplinkDef>,
}

/// Frames an uplink dropped, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UplinkDropCounts {
    pub oversize: u64,
    pub malformed: u64,
    /// Frames from the network with the source MAC of one of the switch's vNICs.
    pub looped: u64,
    pub send_errors: u64,
}

/// An uplink as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub name: String,
    pub vswitch: String,
    pub kind: UplinkKind,
    /// Opened and attached to the switch (false: see `error`).
    pub attached: bool,
    pub link_up: bool,
    /// Carries traffic now (teaming).
    pub in_use: bool,
    /// Why the uplink could not be opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: UplinkDropCounts,
}

/// A vSwitch as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VSwitchInfo {
    pub name: String,
    pub mtu: u16,
    pub teaming: TeamingDef,
    pub portgroups: Vec<String>,
    pub uplinks: Vec<UplinkStatus>,
}

/// A port group and how many ports it has now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortGroupInfo {
    pub config: PortGroupDef,
    pub ports: u32,
}

/// A connected vNIC port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    /// `<vm>/eth<N>`.
    pub name: String,
    pub vswitch: String,
    /// Its counters (the port group and MAC are in there).
    pub counters: NicMetrics,
    /// The MAC the guest uses now (differs from `counters.mac` after a MAC change).
    pub effective_mac: String,
    /// The uplink its traffic leaves by (teaming), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
}

/// `GET /v1/network`: the whole network of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub vswitches: Vec<VSwitchInfo>,
    pub portgroups: Vec<PortGroupInfo>,
    pub ports: Vec<PortStatus>,
}

/// Opens an uplink's I/O (the real host creates TAPs and AF_PACKET sockets; test doubles
/// use memory uplinks).
pub type UplinkOpener = Box<dyn Fn(&UplinkDef) -> io::Result<Arc<dyn UplinkIo>> + Send + Sync>;

/// The real uplinks: a TAP device or an AF_PACKET socket.
pub fn host_uplink_opener() -> UplinkOpener {
    Box::new(|u: &UplinkDef| -> io::Result<Arc<dyn UplinkIo>> {
        Ok(match u.kind {
            UplinkKind::Tap => Arc::new(vmk_vswitch::TapUplink::create(&u.name)?),
            UplinkKind::Packet => Arc::new(vmk_vswitch::PacketUplink::open(&u.name)?),
        })
    })
}

/// In-memory uplinks (tests and the fake host): no privileges needed.
pub fn memory_uplink_opener() -> UplinkOpener {
    Box::new(|u: &UplinkDef| -> io::Result<Arc<dyn UplinkIo>> {
        Ok(Arc::new(vmk_vswitch::MemoryUplink::new(&u.name)))
    })
}

struct State {
    cfg: NetworkConfig,
    switches: BTreeMap<String, VSwitch>,
    /// Uplinks that could not be opened, with the reason.
    uplink_errors: BTreeMap<String, String>,
    macs: MacAllocator,
    /// Who holds each MAC in use: (VM, NIC index).
    owners: HashMap<MacAddr, (String, u32)>,
}

/// The host's network (see the module docs).
pub struct Network {
    /// Where the configuration is persisted (None: in memory only).
    path: Option<PathBuf>,
    opener: UplinkOpener,
    st: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update of the state is completed before anything can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn invalid(msg: impl Into<String>) -> HostError {
    HostError::Invalid(msg.into())
}

fn switch_error(e: vmk_vswitch::SwitchError) -> HostError {
    use vmk_vswitch::SwitchError as E;
    match e {
        E::PortGroupInUse { .. } | E::DuplicateMac { .. } => HostError::Conflict(e.to_string()),
        E::DuplicatePortGroup { .. } | E::DuplicateUplink { .. } => {
            HostError::AlreadyExists(e.to_string())
        }
        E::Thread { .. } => HostError::Internal(e.to_string()),
        _ => HostError::Invalid(e.to_string()),
    }
}

fn check_mtu(switch: &str, mtu: u16) -> Result<(), HostError> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(invalid(format!(
            "vSwitch '{switch}': MTU {mtu} is out of range; use {MIN_MTU} to {MAX_MTU}"
        )));
    }
    Ok(())
}

fn check_vlan(pg: &str, vlan: u16) -> Result<(), HostError> {
    if vlan > VLAN_VGT {
        return Err(invalid(format!(
            "port group '{pg}': VLAN {vlan} is out of range; use 0 (untagged), 1 to 4094 \
             (the switch tags) or 4095 (the guests tag)"
        )));
    }
    Ok(())
}

/// Checks an uplink (interface) name: a valid name of at most 15 bytes.
pub fn check_ifname(name: &str) -> Result<(), HostError> {
    validate_name("uplink", name)?;
    if name.len() > IFNAME_MAX {
        return Err(invalid(format!(
            "uplink name '{name}' is {} bytes; interface names have at most {IFNAME_MAX}",
            name.len()
        )));
    }
    Ok(())
}

fn shaping(pg: &str, s: &Option<ShapingDef>) -> Result<Option<ShapingPolicy>, HostError> {
    let Some(s) = s else { return Ok(None) };
    let p = ShapingPolicy {
        average_bps: s.average_bps,
        peak_bps: s.peak_bps,
        burst_bytes: s.burst_bytes,
    };
    p.validate()
        .map_err(|e| invalid(format!("port group '{pg}': {e}")))?;
    Ok(Some(p))
}

fn pg_config(d: &PortGroupDef) -> Result<PortGroupConfig, HostError> {
    check_vlan(&d.name, d.vlan)?;
    Ok(PortGroupConfig {
        vlan: d.vlan,
        security: SecurityPolicy {
            promiscuous: d.security.promiscuous.accept(),
            mac_changes: d.security.mac_changes.accept(),
            forged_transmits: d.security.forged_transmits.accept(),
        },
        shaping: shaping(&d.name, &d.shaping)?,
    })
}

fn teaming(t: &TeamingDef) -> TeamingPolicy {
    TeamingPolicy {
        active: t.active.clone(),
        standby: t.standby.clone(),
        failback: t.failback,
    }
}

fn check_teaming(switch: &str, t: &TeamingDef) -> Result<(), HostError> {
    let mut seen = std::collections::HashSet::new();
    for n in t.active.iter().chain(&t.standby) {
        check_ifname(n)?;
        if !seen.insert(n) {
            return Err(invalid(format!(
                "teaming of vSwitch '{switch}': uplink '{n}' is listed twice; list each \
                 uplink once, as active or standby"
            )));
        }
    }
    Ok(())
}

/// The counters of a port as the API shows them.
pub fn nic_metrics(portgroup: &str, mac: &str, s: &PortStats) -> NicMetrics {
    let d = &s.drops;
    let drops = NicDrops {
        forged: d.forged,
        mac_changed: d.mac_changed,
        vlan: d.vlan,
        oversize: d.oversize,
        malformed: d.malformed,
        queue_full: d.queue_full,
        no_destination: d.no_destination,
    };
    NicMetrics {
        rx_frames: s.rx_frames,
        rx_bytes: s.rx_bytes,
        tx_frames: s.tx_frames,
        tx_bytes: s.tx_bytes,
        drops: drops.total(),
        portgroup: portgroup.to_string(),
        mac: mac.to_string(),
        throttled: s.throttled,
        drop_reasons: drops,
    }
}

impl State {
    fn switch(&self, name: &str) -> Result<&VSwitch, HostError> {
        self.switches.get(name).ok_or_else(|| {
            let have: Vec<&str> = self.switches.keys().map(String::as_str).collect();
            HostError::NotFound(format!(
                "no vSwitch named '{name}' on this host (existing: {}; add one with `vmk \
                 vswitch add NAME`)",
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ))
        })
    }

    fn portgroup(&self, name: &str) -> Result<&PortGroupDef, HostError> {
        self.cfg
            .portgroups
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                let have: Vec<&str> = self
                    .cfg
                    .portgroups
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect();
                HostError::NotFound(format!(
                    "no port group named '{name}' on this host (existing: {}; add one with \
                     `vmk portgroup add NAME --vswitch S`)",
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                ))
            })
    }

    fn attach_uplink(&mut self, u: &UplinkDef, opener: &UplinkOpener) -> Result<(), String> {
        let sw = self
            .switches
            .get(&u.vswitch)
            .ok_or_else(|| format!("vSwitch '{}' does not exist", u.vswitch))?;
        let io = opener(u).map_err(|e| match u.kind {
            UplinkKind::Tap => format!(
                "cannot create TAP device '{}': {e} (vmk needs CAP_NET_ADMIN and \
                 /dev/net/tun; an existing non-TAP interface of that name also prevents it)",
                u.name
            ),
            UplinkKind::Packet => format!(
                "cannot open an AF_PACKET socket on interface '{}': {e} (does the interface \
                 exist in vmk's network namespace? vmk needs CAP_NET_RAW)",
                u.name
            ),
        })?;
        sw.add_uplink(io).map_err(|e| e.to_string())
    }
}

impl Network {
    /// The network of a host whose configuration is in `path` (None: in memory), with
    /// uplinks opened by `opener`. Returns the problems met building it (each logged by
    /// the caller): uplinks that could not be opened, invalid entries skipped.
    pub fn open(
        path: Option<&Path>,
        opener: UplinkOpener,
    ) -> Result<(Network, Vec<String>), HostError> {
        let cfg = match path {
            None => NetworkConfig::default(),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => toml::from_str(&text).map_err(|e| {
                    HostError::Internal(format!(
                        "{}: not a valid network configuration: {} (fix it, or move it away \
                         to start with no network)",
                        p.display(),
                        e.to_string().trim_end()
                    ))
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => NetworkConfig::default(),
                Err(e) => {
                    return Err(HostError::Internal(format!(
                        "cannot read {}: {e}",
                        p.display()
                    )))
                }
            },
        };
        let net = Network {
            path: path.map(Path::to_path_buf),
            opener,
            st: Mutex::new(State {
                cfg: NetworkConfig::default(),
                switches: BTreeMap::new(),
                uplink_errors: BTreeMap::new(),
                macs: MacAllocator::new(),
                owners: HashMap::new(),
            }),
        };
        let mut problems = Vec::new();
        {
            let mut st = lock(&net.st);
            for s in cfg.vswitches {
                let name = s.name.clone();
                if let Err(e) = net.add_vswitch_locked(&mut st, s) {
                    problems.push(format!("vSwitch '{name}' skipped: {e}"));
                }
            }
            for p in cfg.portgroups {
                let name = p.name.clone();
                if let Err(e) = net.add_portgroup_locked(&mut st, p) {
                    problems.push(format!("port group '{name}' skipped: {e}"));
                }
            }
            for u in cfg.uplinks {
                let name = u.name.clone();
                match net.add_uplink_locked(&mut st, u) {
                    Err(e) => problems.push(format!("uplink '{name}' skipped: {e}")),
                    Ok(Some(why)) => problems.push(format!("uplink '{name}': {why}")),
                    Ok(None) => {}
                }
            }
        }
        Ok((net, problems))
    }

    /// Writes the configuration (atomically). A failure leaves the live network changed
    /// but says that the change will not survive a restart.
    fn persist(&self, st: &State) -> Result<(), HostError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = toml::to_string(&st.cfg)
            .map_err(|e| HostError::Internal(format!("cannot write the network as TOML: {e}")))?;
        write_atomic(path, text.as_bytes()).map_err(|e| {
            HostError::Internal(format!(
                "the change is live but could not be saved to {}: {e} (it will be lost at \
                 the next host start)",
                path.display()
            ))
        })
    }

    pub fn config(&self) -> NetworkConfig {
        lock(&self.st).cfg.clone()
    }

    // ---- vSwitches ------------------------------------------------------------------

    fn add_vswitch_locked(&self, st: &mut State, s: VSwitchDef) -> Result<(), HostError> {
        validate_name("vSwitch", &s.name)?;
        check_mtu(&s.name, s.mtu)?;
        check_teaming(&s.name, &s.teaming)?;
        if st.switches.contains_key(&s.name) {
            return Err(HostError::AlreadyExists(format!(
                "a vSwitch named '{}' already exists",
                s.name
            )));
        }
        let sw = VSwitch::new(
            &s.name,
            SwitchConfig {
                mtu: s.mtu,
                ..SwitchConfig::default()
            },
        )
        .map_err(switch_error)?;
        sw.set_teaming(teaming(&s.teaming)).map_err(switch_error)?;
        st.switches.insert(s.name.clone(), sw);
        st.cfg.vswitches.push(s);
        Ok(())
    }

    pub fn add_vswitch(&self, s: VSwitchDef) -> Result<VSwitchInfo, HostError> {
        let mut st = lock(&self.st);
        let name = s.name.clone();
        self.add_vswitch_locked(&mut st, s)?;
        self.persist(&st)?;
        Self::vswitch_info(&st, &name)
    }

    pub fn update_vswitch(&self, name: &str, u: VSwitchUpdate) -> Result<VSwitchInfo, HostError> {
        let mut st = lock(&self.st);
        let sw = st.switch(name)?.clone();
        if let Some(mtu) = u.mtu {
            check_mtu(name, mtu)?;
        }
        if let Some(t) = &u.teaming {
            check_teaming(name, t)?;
        }
        if let Some(mtu) = u.mtu {
            sw.set_mtu(mtu).map_err(switch_error)?;
        }
        if let Some(t) = &u.teaming {
            sw.set_teaming(teaming(t)).map_err(switch_error)?;
        }
        if let Some(def) = st.cfg.vswitches.iter_mut().find(|s| s.name == name) {
            if let Some(mtu) = u.mtu {
                def.mtu = mtu;
            }
            if let Some(t) = u.teaming {
                def.teaming = t;
            }
        }
        self.persist(&st)?;
        Self::vswitch_info(&st, name)
    }

    /// Removes a vSwitch without port groups (its uplinks go with it).
    pub fn remove_vswitch(&self, name: &str) -> Result<(), HostError> {
        let mut st = lock(&self.st);
        let sw = st.switch(name)?.clone();
        let pgs: Vec<&str> = st
            .cfg
            .portgroups
            .iter()
            .filter(|p| p.vswitch == name)
            .map(|p| p.name.as_str())
            .collect();
        if !pgs.is_empty() {
            return Err(HostError::Conflict(format!(
                "vSwitch '{name}' still has port groups ({}); remove them first",
                pgs.join(", ")
            )));
        }
        for u in sw.uplinks() {
            let _ = sw.remove_uplink(&u.name);
        }
        st.cfg.uplinks.retain(|u| u.vswitch != name);
        let names: Vec<String> = st.uplink_errors.keys().cloned().collect();
        for n in names {
            if !st.cfg.uplinks.iter().any(|u| u.name == n) {
                st.uplink_errors.remove(&n);
            }
        }
        st.switches.remove(name);
        st.cfg.vswitches.retain(|s| s.name != name);
        self.persist(&st)
    }

    fn vswitch_info(st: &State, name: &str) -> Result<VSwitchInfo, HostError> {
        let sw = st.switch(name)?;
        let def = st
            .cfg
            .vswitches
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| HostError::Internal(format!("vSwitch '{name}' has no definition")))?;
        let live: BTreeMap<String, vmk_vswitch::UplinkInfo> = sw
            .uplinks()
            .into_iter()
            .map(|u| (u.name.clone(), u))
            .collect();
        let uplinks = st
            .cfg
            .uplinks
            .iter()
            .filter(|u| u.vswitch == name)
            .map(|u| {
                let l = live.get(&u.name);
                let s = l.map(|l| l.stats).unwrap_or_default();
                UplinkStatus {
                    name: u.name.clone(),
                    vswitch: u.vswitch.clone(),
                    kind: u.kind,
                    attached: l.is_some(),
                    link_up: l.is_some_and(|l| l.link_up),
                    in_use: l.is_some_and(|l| l.in_use),
                    error: st.uplink_errors.get(&u.name).cloned(),
                    rx_frames: s.rx_frames,
                    rx_bytes: s.rx_bytes,
                    tx_frames: s.tx_frames,
                    tx_bytes: s.tx_bytes,
                    drops: UplinkDropCounts {
                        oversize: s.drops.oversize,
                        malformed: s.drops.malformed,
                        looped: s.drops.looped,
                        send_errors: s.drops.send_errors,
                    },
                }
            })
            .collect();
        Ok(VSwitchInfo {
            name: def.name,
            mtu: def.mtu,
            teaming: def.teaming,
            portgroups: st
                .cfg
                .portgroups
                .iter()
                .filter(|p| p.vswitch == name)
                .map(|p| p.name.clone())
                .collect(),
            uplinks,
        })
    }

    pub fn vswitch(&self, name: &str) -> Result<VSwitchInfo, HostError> {
        validate_name("vSwitch", name)?;
        Self::vswitch_info(&lock(&self.st), name)
    }

    pub fn vswitches(&self) -> Vec<VSwitchInfo> {
        let st = lock(&self.st);
        st.switches
            .keys()
            .filter_map(|n| Self::vswitch_info(&st, n).ok())
            .collect()
    }

    // ---- port groups ----------------------------------------------------------------

    fn add_portgroup_locked(&self, st: &mut State, p: PortGroupDef) -> Result<(), HostError> {
        validate_name("port group", &p.name)?;
        validate_name("vSwitch", &p.vswitch)?;
        let cfg = pg_config(&p)?;
        if let Some(other) = st.cfg.portgroups.iter().find(|x| x.name == p.name) {
            return Err(HostError::AlreadyExists(format!(
                "a port group named '{}' already exists (on vSwitch '{}'); port group names \
                 are unique on the host",
                p.name, other.vswitch
            )));
        }
        let sw = st.switch(&p.vswitch)?;
        sw.add_portgroup(&p.name, cfg).map_err(switch_error)?;
        st.cfg.portgroups.push(p);
        Ok(())
    }

    pub fn add_portgroup(&self, p: PortGroupDef) -> Result<PortGroupInfo, HostError> {
        let mut st = lock(&self.st);
        let name = p.name.clone();
        self.add_portgroup_locked(&mut st, p)?;
        self.persist(&st)?;
        Self::portgroup_info(&st, &name)
    }

    /// Changes a port group's VLAN, security or shaping; the ports of running VMs follow
    /// from their next frame on.
    pub fn update_portgroup(
        &self,
        name: &str,
        u: PortGroupUpdate,
    ) -> Result<PortGroupInfo, HostError> {
        let mut st = lock(&self.st);
        let mut def = st.portgroup(name)?.clone();
        if u.shaping.is_some() && u.no_shaping {
            return Err(invalid(format!(
                "port group '{name}': give either shaping or no_shaping, not both"
            )));
        }
        if let Some(v) = u.vlan {
            def.vlan = v;
        }
        if let Some(p) = u.promiscuous {
            def.security.promiscuous = p;
        }
        if let Some(p) = u.mac_changes {
            def.security.mac_changes = p;
        }
        if let Some(p) = u.forged_transmits {
            def.security.forged_transmits = p;
        }
        if u.shaping.is_some() {
            def.shaping = u.shaping;
        }
        if u.no_shaping {
            def.shaping = None;
        }
        let cfg = pg_config(&def)?;
        st.switch(&def.vswitch)?
            .set_portgroup(name, cfg)
            .map_err(switch_error)?;
        if let Some(d) = st.cfg.portgroups.iter_mut().find(|p| p.name == name) {
            *d = def;
        }
        self.persist(&st)?;
        Self::portgroup_info(&st, name)
    }

    /// Removes a port group without connected ports (stopped VMs may still name it: they
    /// will not start until it exists again).
    pub fn remove_portgroup(&self, name: &str) -> Result<(), HostError> {
        let mut st = lock(&self.st);
        let def = st.portgroup(name)?.clone();
        st.switch(&def.vswitch)?
            .remove_portgroup(name)
            .map_err(|e| match e {
                vmk_vswitch::SwitchError::PortGroupInUse { ports, .. } => {
                    HostError::Conflict(format!(
                        "port group '{name}' has {ports} connected NIC(s) of running VMs; \
                         stop those VMs first (`vmk network` lists the ports)"
                    ))
                }
                e => switch_error(e),
            })?;
        st.cfg.portgroups.retain(|p| p.name != name);
        self.persist(&st)
    }

    fn portgroup_info(st: &State, name: &str) -> Result<PortGroupInfo, HostError> {
        let def = st.portgroup(name)?.clone();
        let ports = st
            .switches
            .get(&def.vswitch)
            .and_then(|sw| sw.portgroups().into_iter().find(|p| p.name == name))
            .map_or(0, |p| p.ports as u32);
        Ok(PortGroupInfo { config: def, ports })
    }

    pub fn portgroup(&self, name: &str) -> Result<PortGroupInfo, HostError> {
        validate_name("port group", name)?;
        Self::portgroup_info(&lock(&self.st), name)
    }

    pub fn portgroups(&self) -> Vec<PortGroupInfo> {
        let st = lock(&self.st);
        st.cfg
            .portgroups
            .iter()
            .filter_map(|p| Self::portgroup_info(&st, &p.name).ok())
            .collect()
    }

    /// Whether port group `name` exists (VM definitions are checked against it).
    pub fn check_portgroup(&self, name: &str) -> Result<(), HostError> {
        lock(&self.st).portgroup(name).map(|_| ())
    }

    // ---- uplinks --------------------------------------------------------------------

    /// Adds an uplink to the configuration and opens it. Ok(Some(reason)) when it is
    /// configured but could not be opened (at host start; at runtime that is an error).
    fn add_uplink_locked(&self, st: &mut State, u: UplinkDef) -> Result<Option<String>, HostError> {
        check_ifname(&u.name)?;
        st.switch(&u.vswitch)?;
        if let Some(other) = st.cfg.uplinks.iter().find(|x| x.name == u.name) {
            return Err(HostError::AlreadyExists(format!(
                "uplink '{}' already exists (on vSwitch '{}')",
                u.name, other.vswitch
            )));
        }
        let r = st.attach_uplink(&u, &self.opener);
        st.cfg.uplinks.push(u.clone());
        match r {
            Ok(()) => Ok(None),
            Err(why) => {
                st.uplink_errors.insert(u.name.clone(), why.clone());
                Ok(Some(why))
            }
        }
    }

    pub fn add_uplink(&self, vswitch: &str, spec: UplinkSpec) -> Result<VSwitchInfo, HostError> {
        validate_name("vSwitch", vswitch)?;
        let mut st = lock(&self.st);
        let u = UplinkDef {
            name: spec.name,
            vswitch: vswitch.to_string(),
            kind: spec.kind,
        };
        let name = u.name.clone();
        if let Some(why) = self.add_uplink_locked(&mut st, u)? {
            // Not kept: an uplink added now that cannot work is an error to fix first.
            st.cfg.uplinks.retain(|x| x.name != name);
            st.uplink_errors.remove(&name);
            return Err(invalid(why));
        }
        self.persist(&st)?;
        Self::vswitch_info(&st, vswitch)
    }

    pub fn remove_uplink(&self, vswitch: &str, name: &str) -> Result<VSwitchInfo, HostError> {
        validate_name("vSwitch", vswitch)?;
        check_ifname(name)?;
        let mut st = lock(&self.st);
        let sw = st.switch(vswitch)?.clone();
        if !st
            .cfg
            .uplinks
            .iter()
            .any(|u| u.name == name && u.vswitch == vswitch)
        {
            return Err(HostError::NotFound(format!(
                "vSwitch '{vswitch}' has no uplink named '{name}'"
            )));
        }
        // Not attached when it could not be opened at start: nothing to detach.
        let _ = sw.remove_uplink(name);
        st.cfg.uplinks.retain(|u| u.name != name);
        st.uplink_errors.remove(name);
        self.persist(&st)?;
        Self::vswitch_info(&st, vswitch)
    }

    // ---- VM NICs --------------------------------------------------------------------

    /// Takes the MACs of VM `vm`'s NICs for one power-on: the given MAC, else the one
    /// remembered from an earlier run (`remembered[i]`), else a generated one. Refuses a
    /// MAC another running VM holds (naming it) and port groups that do not exist.
    pub fn lease(
        self: &Arc<Self>,
        vm: &str,
        nics: &[NicDef],
        remembered: &[String],
    ) -> Result<NicLease, HostError> {
        let mut st = lock(&self.st);
        for (i, n) in nics.iter().enumerate() {
            st.portgroup(&n.portgroup).map_err(|e| {
                invalid(format!(
                    "VM '{vm}': NIC {i}: {e}; add the port group or change the VM's NIC"
                ))
            })?;
        }
        let mut taken: Vec<LeasedNic> = Vec::new();
        let release = |st: &mut State, taken: &[LeasedNic]| {
            for t in taken {
                st.macs.release(t.mac);
                st.owners.remove(&t.mac);
            }
        };
        for (i, n) in nics.iter().enumerate() {
            let idx = i as u32;
            let given = match &n.mac {
                Some(m) => Some(m.parse::<MacAddr>().map_err(|e| {
                    release(&mut st, &taken);
                    invalid(format!("VM '{vm}': NIC {i}: {}", e.0))
                })?),
                None => None,
            };
            let wanted = given.or_else(|| remembered.get(i).and_then(|m| m.parse().ok()));
            let mac = match wanted {
                Some(mac) => match st.macs.reserve(mac) {
                    Ok(mac) => mac,
                    Err(e) => {
                        let owner = st.owners.get(&mac).cloned();
                        if given.is_none() {
                            // A remembered generated MAC that another VM took meanwhile:
                            // generate a new one.
                            match st.macs.generate(vm, idx) {
                                Ok(m) => m,
                                Err(e) => {
                                    release(&mut st, &taken);
                                    return Err(invalid(format!("VM '{vm}': NIC {i}: {e}")));
                                }
                            }
                        } else {
                            release(&mut st, &taken);
                            return Err(HostError::Conflict(match owner {
                                Some((ovm, onic)) => format!(
                                    "VM '{vm}': NIC {i}: MAC address {mac} is in use by NIC \
                                     {onic} of running VM '{ovm}'; give this NIC another MAC \
                                     (or none, to have one generated) or stop '{ovm}'"
                                ),
                                None => format!("VM '{vm}': NIC {i}: {e}"),
                            }));
                        }
                    }
                },
                None => match st.macs.generate(vm, idx) {
                    Ok(m) => m,
                    Err(e) => {
                        release(&mut st, &taken);
                        return Err(invalid(format!("VM '{vm}': NIC {i}: {e}")));
                    }
                },
            };
            st.owners.insert(mac, (vm.to_string(), idx));
            taken.push(LeasedNic {
                portgroup: n.portgroup.clone(),
                mac,
            });
        }
        Ok(NicLease {
            net: self.clone(),
            vm: vm.to_string(),
            nics: taken,
        })
    }

    /// The counters of every connected vNIC port.
    pub fn ports(&self) -> Vec<PortStatus> {
        let st = lock(&self.st);
        let mut out = Vec::new();
        for (sname, sw) in &st.switches {
            for p in sw.ports() {
                out.push(PortStatus {
                    name: p.name.clone(),
                    vswitch: sname.clone(),
                    counters: nic_metrics(&p.portgroup, &p.mac.to_string(), &p.stats),
                    effective_mac: p.effective_mac.to_string(),
                    uplink: p.uplink.clone(),
                });
            }
        }
        out
    }

    pub fn info(&self) -> NetworkInfo {
        NetworkInfo {
            vswitches: self.vswitches(),
            portgroups: self.portgroups(),
            ports: self.ports(),
        }
    }
}

/// What a VM's info shows about its NICs: the given MAC, else the one remembered from an
/// earlier run, else the one the first start will generate (if it is free then).
pub fn vm_nic_info(
    vm: &str,
    nics: &[NicDef],
    remembered: &[String],
) -> Vec<crate::model::VmNicInfo> {
    nics.iter()
        .enumerate()
        .map(|(i, n)| crate::model::VmNicInfo {
            portgroup: n.portgroup.clone(),
            mac: n
                .mac
                .clone()
                .or_else(|| remembered.get(i).cloned())
                .unwrap_or_else(|| vmk_vswitch::generated_mac(vm, i as u32, 0).to_string()),
            generated: n.mac.is_none(),
        })
        .collect()
}

struct LeasedNic {
    portgroup: String,
    mac: MacAddr,
}

/// The MACs of one VM's NICs for one power-on; released when dropped.
pub struct NicLease {
    net: Arc<Network>,
    vm: String,
    nics: Vec<LeasedNic>,
}

/// A vNIC connected to its switch: the port (the machine's NIC backend) and a handle to
/// read its counters after the port is gone.
pub struct ConnectedNic {
    pub port: VnicPort,
    pub handle: PortHandle,
}

/// Reads a port's counters while it is connected.
#[derive(Clone)]
pub struct PortHandle {
    pub switch: VSwitch,
    pub id: PortId,
    pub portgroup: String,
    pub mac: MacAddr,
}

impl PortHandle {
    pub fn stats(&self) -> Option<PortStats> {
        self.switch.port_stats(self.id)
    }
}

impl NicLease {
    /// The leased MACs, in NIC order.
    pub fn macs(&self) -> Vec<String> {
        self.nics.iter().map(|n| n.mac.to_string()).collect()
    }

    /// Connects one port per NIC (port group as it is now: it may have been removed since
    /// the lease). Ports disconnect when dropped.
    pub fn connect(&self) -> Result<Vec<ConnectedNic>, String> {
        let st = lock(&self.net.st);
        let mut out = Vec::new();
        for (i, n) in self.nics.iter().enumerate() {
            let pg = st
                .portgroup(&n.portgroup)
                .map_err(|e| format!("NIC {i}: {e}"))?;
            let sw = st
                .switch(&pg.vswitch)
                .map_err(|e| format!("NIC {i}: {e}"))?;
            let port = sw
                .add_vnic(&n.portgroup, &format!("{}/eth{i}", self.vm), n.mac)
                .map_err(|e| format!("NIC {i}: {e}"))?;
            out.push(ConnectedNic {
                handle: PortHandle {
                    switch: sw.clone(),
                    id: port.id(),
                    portgroup: n.portgroup.clone(),
                    mac: n.mac,
                },
                port,
            });
        }
        Ok(out)
    }
}

impl Drop for NicLease {
    fn drop(&mut self) {
        let mut st = lock(&self.net.st);
        for n in &self.nics {
            st.macs.release(n.mac);
            st.owners.remove(&n.mac);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Arc<Network> {
        Arc::new(Network::open(None, memory_uplink_opener()).unwrap().0)
    }

    fn pg(name: &str, sw: &str, vlan: u16) -> PortGroupDef {
        PortGroupDef {
            name: name.into(),
            vswitch: sw.into(),
            vlan,
            security: SecurityDef::default(),
            shaping: None,
        }
    }

    fn vs(name: &str, mtu: u16) -> VSwitchDef {
        VSwitchDef {
            name: name.into(),
            mtu,
            teaming: TeamingDef::default(),
        }
    }

    #[test]
    fn hostile_configuration_is_refused() {
        let n = net();
        assert_eq!(
            n.add_vswitch(vs("sw0", 10000)).unwrap_err().http_status(),
            400
        );
        assert_eq!(
            n.add_vswitch(vs("a/b", 1500)).unwrap_err().http_status(),
            400
        );
        n.add_vswitch(vs("sw0", 9000)).unwrap();
        assert_eq!(
            n.add_vswitch(vs("sw0", 1500)).unwrap_err().http_status(),
            409
        );
        assert_eq!(
            n.add_portgroup(pg("p", "sw0", 4096))
                .unwrap_err()
                .http_status(),
            400
        );
        let e = n.add_portgroup(pg("p", "nope", 1)).unwrap_err();
        assert_eq!(e.http_status(), 404, "{e}");
        assert!(e.to_string().contains("sw0"), "{e}");
        n.add_portgroup(pg("p", "sw0", 4095)).unwrap();
        assert_eq!(
            n.add_portgroup(pg("p", "sw0", 1))
                .unwrap_err()
                .http_status(),
            409
        );
        let e = n
            .add_uplink(
                "sw0",
                UplinkSpec {
                    name: "x".repeat(16),
                    kind: UplinkKind::Tap,
                },
            )
            .unwrap_err();
        assert_eq!(e.http_status(), 400, "{e}");
        let e = n
            .update_portgroup(
                "p",
                PortGroupUpdate {
                    shaping: Some(ShapingDef {
                        average_bps: 10,
                        peak_bps: 5,
                        burst_bytes: 1,
                    }),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("peak"), "{e}");
        let e = n.remove_vswitch("sw0").unwrap_err();
        assert!(e.to_string().contains("port groups (p)"), "{e}");
    }

    #[test]
    fn macs_are_stable_unique_and_released() {
        let n = net();
        n.add_vswitch(vs("sw0", 1500)).unwrap();
        n.add_portgroup(pg("p", "sw0", 0)).unwrap();
        let nic = |mac: Option<&str>| NicDef {
            portgroup: "p".into(),
            mac: mac.map(String::from),
        };
        let a = n.lease("a", &[nic(None), nic(None)], &[]).unwrap();
        let macs = a.macs();
        assert_eq!(macs[0], vmk_vswitch::generated_mac("a", 0, 0).to_string());
        assert_ne!(macs[0], macs[1]);
        // The same MAC given to another VM is refused, naming the holder.
        let e = n.lease("b", &[nic(Some(&macs[1]))], &[]).err().unwrap();
        assert_eq!(e.http_status(), 409);
        assert!(e.to_string().contains("NIC 1 of running VM 'a'"), "{e}");
        let ports = a.connect().unwrap();
        assert_eq!(n.ports().len(), 2);
        assert_eq!(n.remove_portgroup("p").unwrap_err().http_status(), 409);
        drop(ports);
        drop(a);
        // Released: now b may have it, and a gets its MACs again.
        let b = n.lease("b", &[nic(Some(&macs[1]))], &[]).unwrap();
        drop(b);
        let a2 = n.lease("a", &[nic(None), nic(None)], &macs).unwrap();
        assert_eq!(a2.macs(), macs);
        let e = n
            .lease(
                "c",
                &[NicDef {
                    portgroup: "q".into(),
                    mac: None,
                }],
                &[],
            )
            .err()
            .unwrap();
        assert!(e.to_string().contains("no port group named 'q'"), "{e}");
    }

    #[test]
    fn configuration_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NETWORK_FILE);
        {
            let (n, problems) = Network::open(Some(&path), memory_uplink_opener()).unwrap();
            assert!(problems.is_empty());
            n.add_vswitch(vs("sw0", 9000)).unwrap();
            n.add_portgroup(pg("p", "sw0", 10)).unwrap();
            n.add_uplink(
                "sw0",
                UplinkSpec {
                    name: "up0".into(),
                    kind: UplinkKind::Packet,
                },
            )
            .unwrap();
            n.update_portgroup(
                "p",
                PortGroupUpdate {
                    forged_transmits: Some(Policy::Accept),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let (n, problems) = Network::open(Some(&path), memory_uplink_opener()).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let p = n.portgroup("p").unwrap().config;
        assert_eq!((p.vlan, p.security.forged_transmits), (10, Policy::Accept));
        let s = n.vswitch("sw0").unwrap();
        assert_eq!(s.mtu, 9000);
        assert_eq!(s.uplinks.len(), 1);
        assert!(s.uplinks[0].attached);
    }
}
