//! The runtime side of the host network: the `vmk_vswitch` switches built from the
//! configuration, kept in step with it by every change (validated, applied to the live
//! switches, then persisted), and their state and counters as the API shows them.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmk_api::model::{validate_name, HostError, NicDrops, NicMetrics};
use vmk_api::network::{
    check_ifname, NetworkInfo, PortGroupDef, PortGroupInfo, PortGroupUpdate, PortStatus,
    UplinkDropCounts, UplinkKind, UplinkSpec, UplinkStatus, VSwitchDef, VSwitchInfo, VSwitchUpdate,
};
use vmk_vswitch::{MacAddr, MacAllocator, PortStats, SwitchConfig, UplinkIo, VSwitch};

use super::config::{self, NetworkConfig, UplinkDef};
use super::validate::{check_mtu, check_teaming, invalid, pg_config, switch_error, teaming};
use crate::host_api::NetworkApi;

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

pub(super) struct State {
    pub(super) cfg: NetworkConfig,
    pub(super) switches: BTreeMap<String, VSwitch>,
    /// Uplinks that could not be opened, with the reason.
    pub(super) uplink_errors: BTreeMap<String, String>,
    pub(super) macs: MacAllocator,
    /// Who holds each MAC in use: (VM, NIC index).
    pub(super) owners: HashMap<MacAddr, (String, u32)>,
}

/// The host's network (see the module docs).
pub struct Network {
    /// Where the configuration is persisted (None: in memory only).
    path: Option<PathBuf>,
    opener: UplinkOpener,
    pub(super) st: Mutex<State>,
}

// Every update of the state is completed before anything can panic (vmk_base::lock's policy).
pub(super) use vmk_base::lock;

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
    pub(super) fn switch(&self, name: &str) -> Result<&VSwitch, HostError> {
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

    pub(super) fn portgroup(&self, name: &str) -> Result<&PortGroupDef, HostError> {
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
        let cfg = config::load(path)?;
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
        config::save(path, &st.cfg)
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

/// What the API's network routes see of it (see [`NetworkApi`]).
impl NetworkApi for Network {
    fn info(&self) -> NetworkInfo {
        Network::info(self)
    }
    fn vswitches(&self) -> Vec<VSwitchInfo> {
        Network::vswitches(self)
    }
    fn vswitch(&self, name: &str) -> Result<VSwitchInfo, HostError> {
        Network::vswitch(self, name)
    }
    fn add_vswitch(&self, def: VSwitchDef) -> Result<VSwitchInfo, HostError> {
        Network::add_vswitch(self, def)
    }
    fn update_vswitch(&self, name: &str, u: VSwitchUpdate) -> Result<VSwitchInfo, HostError> {
        Network::update_vswitch(self, name, u)
    }
    fn remove_vswitch(&self, name: &str) -> Result<(), HostError> {
        Network::remove_vswitch(self, name)
    }
    fn add_uplink(&self, vswitch: &str, spec: UplinkSpec) -> Result<VSwitchInfo, HostError> {
        Network::add_uplink(self, vswitch, spec)
    }
    fn remove_uplink(&self, vswitch: &str, name: &str) -> Result<VSwitchInfo, HostError> {
        Network::remove_uplink(self, vswitch, name)
    }
    fn portgroups(&self) -> Vec<PortGroupInfo> {
        Network::portgroups(self)
    }
    fn portgroup(&self, name: &str) -> Result<PortGroupInfo, HostError> {
        Network::portgroup(self, name)
    }
    fn add_portgroup(&self, def: PortGroupDef) -> Result<PortGroupInfo, HostError> {
        Network::add_portgroup(self, def)
    }
    fn update_portgroup(&self, name: &str, u: PortGroupUpdate) -> Result<PortGroupInfo, HostError> {
        Network::update_portgroup(self, name, u)
    }
    fn remove_portgroup(&self, name: &str) -> Result<(), HostError> {
        Network::remove_portgroup(self, name)
    }
}
