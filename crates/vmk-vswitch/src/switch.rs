//! The virtual switch: vNIC ports grouped in port groups, uplinks with teaming, and the
//! forwarding path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmk_devices::virtio::{NetBackend, RxNotify, TxOutcome};

use crate::frame::{self, EthHeader, ETH_HLEN};
use crate::shaper::{ShapingPolicy, TokenBucket};
use crate::uplink::UplinkIo;
use crate::MacAddr;

/// VLAN ID of a port group whose guests tag their own frames (Virtual Guest Tagging).
pub const VLAN_VGT: u16 = 4095;
/// Largest MTU of a vSwitch (jumbo frames), as ESX.
pub const MAX_MTU: u16 = 9000;
/// Smallest MTU (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

use vmk_base::{lock, read, write};

/// Settings of a vSwitch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Largest payload of a frame (without the Ethernet header and VLAN tag), 68..=9000.
    pub mtu: u16,
    /// How long a MAC learned behind an uplink is remembered without traffic from it.
    pub mac_ageing: Duration,
    /// Frames a vNIC port holds for its guest while the guest has no receive buffers;
    /// more are dropped (counted as `queue_full`).
    pub rx_queue_len: usize,
    /// How often uplink link states are polled (teaming failover).
    pub link_poll: Duration,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            mtu: 1500,
            mac_ageing: Duration::from_secs(300),
            rx_queue_len: 1024,
            link_poll: Duration::from_millis(100),
        }
    }
}

/// ESX's security policy of a port group; `true` is Accept, `false` Reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SecurityPolicy {
    /// Accept: a port sees every frame on its VLAN. Reject: only frames for its MAC,
    /// broadcast and multicast.
    pub promiscuous: bool,
    /// Reject: once the guest's effective MAC differs from the configured one, the switch
    /// drops every frame to the port.
    pub mac_changes: bool,
    /// Reject: frames from the port whose source MAC is not the port's effective MAC are
    /// dropped (counted as `forged`).
    pub forged_transmits: bool,
}

/// A port group: a VLAN, a security policy and traffic shaping for its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortGroupConfig {
    /// 0: untagged; 1..=4094: the switch tags to the uplinks and untags to the VMs (VST);
    /// 4095 ([`VLAN_VGT`]): the guests tag, any VLAN passes.
    pub vlan: u16,
    pub security: SecurityPolicy,
    /// Egress shaping of each port (traffic from the VM into the switch); None: no limit.
    pub shaping: Option<ShapingPolicy>,
}

/// NIC teaming of a vSwitch's uplinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamingPolicy {
    /// Uplinks that carry traffic, in order. Empty (with `standby` empty): every uplink is
    /// active, in the order they were added.
    pub active: Vec<String>,
    /// Uplinks that take over, in order, from active ones whose link is down.
    pub standby: Vec<String>,
    /// When a failed active uplink comes back, it takes over again from the standby
    /// (true), or the standby keeps the traffic until it fails itself (false).
    pub failback: bool,
}

impl Default for TeamingPolicy {
    fn default() -> Self {
        TeamingPolicy {
            active: Vec::new(),
            standby: Vec::new(),
            failback: true,
        }
    }
}

/// Errors of switch management (configuration, never traffic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    #[error("vSwitch {switch}: MTU {mtu} is out of range; use {MIN_MTU}..={MAX_MTU}")]
    BadMtu { switch: String, mtu: u16 },
    #[error("port group {portgroup}: VLAN {vlan} is out of range; use 0 (untagged), 1..=4094 (VST) or 4095 (guest tagging)")]
    BadVlan { portgroup: String, vlan: u16 },
    #[error("vSwitch {switch} already has a port group named {portgroup}")]
    DuplicatePortGroup { switch: String, portgroup: String },
    #[error(
        "vSwitch {switch} has no port group named {portgroup}; add it first (existing: {existing})"
    )]
    NoPortGroup {
        switch: String,
        portgroup: String,
        existing: String,
    },
    #[error(
        "port group {portgroup} still has {ports} port(s) connected; disconnect their NICs first"
    )]
    PortGroupInUse { portgroup: String, ports: usize },
    #[error("MAC address {mac} is already used by port {port} on vSwitch {switch}; every vNIC needs its own MAC")]
    DuplicateMac {
        switch: String,
        mac: MacAddr,
        port: String,
    },
    #[error("MAC address {mac} is a group or all-zero address; a vNIC needs a unicast MAC")]
    BadMac { mac: MacAddr },
    #[error("vSwitch {switch} already has an uplink named {uplink}")]
    DuplicateUplink { switch: String, uplink: String },
    #[error("vSwitch {switch} has no uplink named {uplink}")]
    NoUplink { switch: String, uplink: String },
    #[error("teaming of vSwitch {switch}: uplink {uplink} is listed twice; list each uplink once, as active or standby")]
    TeamingDuplicate { switch: String, uplink: String },
    #[error("port group {portgroup}: {message}")]
    BadShaping { portgroup: String, message: String },
    #[error("cannot start a thread for uplink {uplink}: {message}")]
    Thread { uplink: String, message: String },
}

/// Identifies a vNIC port on its switch; also what teaming balances on ("originating
/// virtual port").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

/// Frames dropped at a vNIC port, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortDrops {
    /// Sent with a source MAC other than the port's (forged transmits = reject).
    pub forged: u64,
    /// For a port whose guest changed its MAC (MAC address changes = reject).
    pub mac_changed: u64,
    /// Tagged by a guest outside a VGT port group, or with VLAN 4095.
    pub vlan: u64,
    /// Longer than the vSwitch MTU.
    pub oversize: u64,
    /// Shorter than an Ethernet header.
    pub malformed: u64,
    /// For the guest while its receive queue was full.
    pub queue_full: u64,
    /// Unicast to an unknown MAC with no uplink to send it to.
    pub no_destination: u64,
}

/// Counters of a vNIC port. `tx` is what the port sent into the switch (the VM's
/// transmit), `rx` what the switch delivered to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Times traffic shaping delayed a frame (nothing is dropped by shaping).
    pub throttled: u64,
    pub drops: PortDrops,
}

#[derive(Default)]
struct PortCounters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    throttled: AtomicU64,
    forged: AtomicU64,
    mac_changed: AtomicU64,
    vlan: AtomicU64,
    oversize: AtomicU64,
    malformed: AtomicU64,
    queue_full: AtomicU64,
    no_destination: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl PortCounters {
    fn snapshot(&self) -> PortStats {
        PortStats {
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            throttled: get(&self.throttled),
            drops: PortDrops {
                forged: get(&self.forged),
                mac_changed: get(&self.mac_changed),
                vlan: get(&self.vlan),
                oversize: get(&self.oversize),
                malformed: get(&self.malformed),
                queue_full: get(&self.queue_full),
                no_destination: get(&self.no_destination),
            },
        }
    }
}

/// Frames dropped at an uplink, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkDrops {
    /// Received frames longer than the vSwitch MTU.
    pub oversize: u64,
    /// Received frames shorter than an Ethernet header, or tagged with VLAN 4095.
    pub malformed: u64,
    /// Received frames whose source MAC belongs to a vNIC of this switch (our own frames
    /// reflected by the physical network).
    pub looped: u64,
    /// Frames the host would not take (socket buffer full, interface down).
    pub send_errors: u64,
}

/// Counters of an uplink: `rx` from the physical network, `tx` to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: UplinkDrops,
}

#[derive(Default)]
struct UplinkCounters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    oversize: AtomicU64,
    malformed: AtomicU64,
    looped: AtomicU64,
    send_errors: AtomicU64,
}

impl UplinkCounters {
    fn snapshot(&self) -> UplinkStats {
        UplinkStats {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            drops: UplinkDrops {
                oversize: get(&self.oversize),
                malformed: get(&self.malformed),
                looped: get(&self.looped),
                send_errors: get(&self.send_errors),
            },
        }
    }
}

/// A vNIC port's state in the switch.
struct Port {
    id: PortId,
    name: String,
    portgroup: String,
    configured_mac: MacAddr,
    /// The guest's current MAC (changed through the virtio-net control queue).
    effective_mac: Mutex<MacAddr>,
    rxq: Mutex<VecDeque<Vec<u8>>>,
    rxq_cap: usize,
    notify: Mutex<Option<RxNotify>>,
    shaper: Mutex<Option<TokenBucket>>,
    counters: PortCounters,
}

impl Port {
    fn effective_mac(&self) -> MacAddr {
        *lock(&self.effective_mac)
    }

    /// Queues a frame for the guest; wakes the device if the queue was empty.
    fn push(&self, frame: Vec<u8>) {
        let len = frame.len();
        let was_empty = {
            let mut q = lock(&self.rxq);
            if q.len() >= self.rxq_cap {
                inc(&self.counters.queue_full);
                return;
            }
            q.push_back(frame);
            q.len() == 1
        };
        inc(&self.counters.rx_frames);
        add(&self.counters.rx_bytes, len);
        if was_empty {
            // Clone out of the lock: the notifier may run the device's receive path,
            // which pops from `rxq`.
            let n = lock(&self.notify).clone();
            if let Some(n) = n {
                n();
            }
        }
    }
}

struct UplinkPort {
    name: String,
    io: Arc<dyn UplinkIo>,
    link_up: AtomicBool,
    stop: AtomicBool,
    counters: UplinkCounters,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl UplinkPort {
    fn send(&self, frame: &[u8]) {
        match self.io.send(frame) {
            Ok(()) => {
                inc(&self.counters.tx_frames);
                add(&self.counters.tx_bytes, frame.len());
            }
            Err(_) => inc(&self.counters.send_errors),
        }
    }
}

struct Learned {
    uplink: String,
    seen: Instant,
}

struct State {
    cfg: SwitchConfig,
    portgroups: BTreeMap<String, PortGroupConfig>,
    ports: BTreeMap<PortId, Arc<Port>>,
    /// Effective and configured MACs of the ports.
    by_mac: HashMap<MacAddr, PortId>,
    uplinks: Vec<Arc<UplinkPort>>,
    teaming: TeamingPolicy,
    /// Uplinks carrying traffic now, in teaming order.
    in_use: Vec<Arc<UplinkPort>>,
    next_port: u32,
    monitor: bool,
}

impl State {
    fn member(pg: &PortGroupConfig, vlan: u16) -> bool {
        pg.vlan == VLAN_VGT || pg.vlan == vlan
    }

    /// The uplink teaming gives a port (load balancing by originating virtual port).
    fn team_uplink(&self, port: PortId) -> Option<&Arc<UplinkPort>> {
        if self.in_use.is_empty() {
            return None;
        }
        self.in_use.get(port.0 as usize % self.in_use.len())
    }

    fn uplink(&self, name: &str) -> Option<&Arc<UplinkPort>> {
        self.uplinks.iter().find(|u| u.name == name)
    }

    /// Recomputes the uplinks in use from the teaming policy and the link states.
    fn recompute_team(&mut self, fresh: bool) {
        let (active, standby): (Vec<String>, Vec<String>) =
            if self.teaming.active.is_empty() && self.teaming.standby.is_empty() {
                (
                    self.uplinks.iter().map(|u| u.name.clone()).collect(),
                    Vec::new(),
                )
            } else {
                (self.teaming.active.clone(), self.teaming.standby.clone())
            };
        let up = |n: &String| {
            self.uplink(n)
                .filter(|u| u.link_up.load(Ordering::SeqCst))
                .cloned()
        };
        let target = active.len();
        let mut in_use: Vec<Arc<UplinkPort>> = Vec::new();
        if !self.teaming.failback && !fresh {
            // Keep what carries traffic now while its link is up.
            for u in &self.in_use {
                let listed = active.contains(&u.name) || standby.contains(&u.name);
                if listed && u.link_up.load(Ordering::SeqCst) && self.uplink(&u.name).is_some() {
                    in_use.push(u.clone());
                }
            }
        }
        for n in active.iter().chain(standby.iter()) {
            if in_use.len() >= target {
                break;
            }
            if let Some(u) = up(n) {
                if !in_use.iter().any(|x| Arc::ptr_eq(x, &u)) {
                    in_use.push(u);
                }
            }
        }
        self.in_use = in_use;
    }
}

struct Inner {
    name: String,
    state: RwLock<State>,
    fdb: Mutex<HashMap<(u16, MacAddr), Learned>>,
    clock: Instant,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for u in &st.uplinks {
            u.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// Where a frame entered the switch.
#[derive(Clone, Copy)]
enum Source<'a> {
    Port(&'a Port),
    Uplink(&'a UplinkPort),
}

/// A virtual switch. Cloning gives another handle to the same switch.
#[derive(Clone)]
pub struct VSwitch {
    inner: Arc<Inner>,
}

/// A port group as [`VSwitch::portgroups`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroupInfo {
    pub name: String,
    pub config: PortGroupConfig,
    pub ports: usize,
}

/// A vNIC port as [`VSwitch::ports`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub id: PortId,
    pub name: String,
    pub portgroup: String,
    pub mac: MacAddr,
    pub effective_mac: MacAddr,
    /// The uplink teaming assigns the port now.
    pub uplink: Option<String>,
    pub stats: PortStats,
}

/// An uplink as [`VSwitch::uplinks`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkInfo {
    pub name: String,
    pub link_up: bool,
    /// Carries traffic now (active, or a standby that took over).
    pub in_use: bool,
    pub stats: UplinkStats,
}

/// A MAC learned behind an uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedMac {
    pub vlan: u16,
    pub mac: MacAddr,
    pub uplink: String,
    pub age: Duration,
}

impl VSwitch {
    /// A switch named `name` (used in errors and thread names).
    pub fn new(name: &str, cfg: SwitchConfig) -> Result<VSwitch, SwitchError> {
        check_mtu(name, cfg.mtu)?;
        Ok(VSwitch {
            inner: Arc::new(Inner {
                name: name.to_string(),
                state: RwLock::new(State {
                    cfg,
                    portgroups: BTreeMap::new(),
                    ports: BTreeMap::new(),
                    by_mac: HashMap::new(),
                    uplinks: Vec::new(),
                    teaming: TeamingPolicy::default(),
                    in_use: Vec::new(),
                    next_port: 0,
                    monitor: false,
                }),
                fdb: Mutex::new(HashMap::new()),
                clock: Instant::now(),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn config(&self) -> SwitchConfig {
        read(&self.inner.state).cfg.clone()
    }

    pub fn mtu(&self) -> u16 {
        read(&self.inner.state).cfg.mtu
    }

    /// Changes the MTU (frames in flight are checked against the new one; guests see the
    /// MTU their device was created with until they are restarted).
    pub fn set_mtu(&self, mtu: u16) -> Result<(), SwitchError> {
        check_mtu(&self.inner.name, mtu)?;
        write(&self.inner.state).cfg.mtu = mtu;
        Ok(())
    }

    // ---- port groups ----------------------------------------------------------------

    pub fn add_portgroup(&self, name: &str, cfg: PortGroupConfig) -> Result<(), SwitchError> {
        check_portgroup(name, &cfg)?;
        let mut st = write(&self.inner.state);
        if st.portgroups.contains_key(name) {
            return Err(SwitchError::DuplicatePortGroup {
                switch: self.inner.name.clone(),
                portgroup: name.to_string(),
            });
        }
        st.portgroups.insert(name.to_string(), cfg);
        Ok(())
    }

    /// Changes a port group's VLAN, security policy or shaping; its ports follow from
    /// their next frame on.
    pub fn set_portgroup(&self, name: &str, cfg: PortGroupConfig) -> Result<(), SwitchError> {
        check_portgroup(name, &cfg)?;
        let mut st = write(&self.inner.state);
        let e = self.no_portgroup(&st, name);
        match st.portgroups.get_mut(name) {
            Some(pg) => {
                *pg = cfg;
                Ok(())
            }
            None => Err(e),
        }
    }

    pub fn portgroup(&self, name: &str) -> Option<PortGroupConfig> {
        read(&self.inner.state).portgroups.get(name).copied()
    }

    /// Removes a port group without ports.
    pub fn remove_portgroup(&self, name: &str) -> Result<(), SwitchError> {
        let mut st = write(&self.inner.state);
        if !st.portgroups.contains_key(name) {
            return Err(self.no_portgroup(&st, name));
        }
        let ports = st.ports.values().filter(|p| p.portgroup == name).count();
        if ports > 0 {
            return Err(SwitchError::PortGroupInUse {
                portgroup: name.to_string(),
                ports,
            });
        }
        st.portgroups.remove(name);
        Ok(())
    }

    pub fn portgroups(&self) -> Vec<PortGroupInfo> {
        let st = read(&self.inner.state);
        st.portgroups
            .iter()
            .map(|(n, c)| PortGroupInfo {
                name: n.clone(),
                config: *c,
                ports: st.ports.values().filter(|p| &p.portgroup == n).count(),
            })
            .collect()
    }

    fn no_portgroup(&self, st: &State, name: &str) -> SwitchError {
        let existing: Vec<&str> = st.portgroups.keys().map(String::as_str).collect();
        SwitchError::NoPortGroup {
            switch: self.inner.name.clone(),
            portgroup: name.to_string(),
            existing: if existing.is_empty() {
                "none".into()
            } else {
                existing.join(", ")
            },
        }
    }

    // ---- ports ----------------------------------------------------------------------

    /// Connects a vNIC with MAC `mac` to port group `portgroup`. The port goes away when
    /// the returned handle is dropped.
    pub fn add_vnic(
        &self,
        portgroup: &str,
        name: &str,
        mac: MacAddr,
    ) -> Result<VnicPort, SwitchError> {
        if !mac.is_valid_unicast() {
            return Err(SwitchError::BadMac { mac });
        }
        let mut st = write(&self.inner.state);
        if !st.portgroups.contains_key(portgroup) {
            return Err(self.no_portgroup(&st, portgroup));
        }
        if let Some(other) = st.by_mac.get(&mac) {
            let port = st
                .ports
                .get(other)
                .map_or_else(|| format!("{other:?}"), |p| p.name.clone());
            return Err(SwitchError::DuplicateMac {
                switch: self.inner.name.clone(),
                mac,
                port,
            });
        }
        let id = PortId(st.next_port);
        st.next_port = st.next_port.wrapping_add(1);
        let port = Arc::new(Port {
            id,
            name: name.to_string(),
            portgroup: portgroup.to_string(),
            configured_mac: mac,
            effective_mac: Mutex::new(mac),
            rxq: Mutex::new(VecDeque::new()),
            rxq_cap: st.cfg.rx_queue_len.max(1),
            notify: Mutex::new(None),
            shaper: Mutex::new(None),
            counters: PortCounters::default(),
        });
        st.ports.insert(id, port.clone());
        st.by_mac.insert(mac, id);
        Ok(VnicPort {
            inner: self.inner.clone(),
            port,
        })
    }

    pub fn ports(&self) -> Vec<PortInfo> {
        let st = read(&self.inner.state);
        st.ports
            .values()
            .map(|p| PortInfo {
                id: p.id,
                name: p.name.clone(),
                portgroup: p.portgroup.clone(),
                mac: p.configured_mac,
                effective_mac: p.effective_mac(),
                uplink: st.team_uplink(p.id).map(|u| u.name.clone()),
                stats: p.counters.snapshot(),
            })
            .collect()
    }

    pub fn port_stats(&self, id: PortId) -> Option<PortStats> {
        read(&self.inner.state)
            .ports
            .get(&id)
            .map(|p| p.counters.snapshot())
    }

    // ---- uplinks --------------------------------------------------------------------

    /// Adds an uplink and starts its receive thread (and, with the first uplink, the
    /// switch's link monitor).
    pub fn add_uplink(&self, io: Arc<dyn UplinkIo>) -> Result<(), SwitchError> {
        let name = io.name().to_string();
        let up = Arc::new(UplinkPort {
            name: name.clone(),
            link_up: AtomicBool::new(io.link_up()),
            io,
            stop: AtomicBool::new(false),
            counters: UplinkCounters::default(),
            thread: Mutex::new(None),
        });
        let start_monitor = {
            let mut st = write(&self.inner.state);
            if st.uplink(&name).is_some() {
                return Err(SwitchError::DuplicateUplink {
                    switch: self.inner.name.clone(),
                    uplink: name,
                });
            }
            st.uplinks.push(up.clone());
            st.recompute_team(true);
            !std::mem::replace(&mut st.monitor, true)
        };
        let weak = Arc::downgrade(&self.inner);
        let u = up.clone();
        let t = thread::Builder::new()
            .name(format!("uplink-{name}"))
            .spawn(move || uplink_rx_loop(weak, u));
        match t {
            Ok(t) => *lock(&up.thread) = Some(t),
            Err(e) => {
                let _ = self.remove_uplink(&name);
                return Err(SwitchError::Thread {
                    uplink: name,
                    message: e.to_string(),
                });
            }
        }
        if start_monitor {
            let weak = Arc::downgrade(&self.inner);
            let r = thread::Builder::new()
                .name(format!("vswitch-{}", self.inner.name))
                .spawn(move || monitor_loop(weak));
            if let Err(e) = r {
                write(&self.inner.state).monitor = false;
                return Err(SwitchError::Thread {
                    uplink: name,
                    message: format!("link monitor: {e}"),
                });
            }
        }
        Ok(())
    }

    /// Removes an uplink and stops its receive thread.
    pub fn remove_uplink(&self, name: &str) -> Result<(), SwitchError> {
        let up = {
            let mut st = write(&self.inner.state);
            let Some(i) = st.uplinks.iter().position(|u| u.name == name) else {
                return Err(SwitchError::NoUplink {
                    switch: self.inner.name.clone(),
                    uplink: name.to_string(),
                });
            };
            let up = st.uplinks.remove(i);
            st.recompute_team(true);
            up
        };
        lock(&self.inner.fdb).retain(|_, l| l.uplink != name);
        up.stop.store(true, Ordering::SeqCst);
        let t = lock(&up.thread).take();
        if let Some(t) = t {
            if t.thread().id() != thread::current().id() {
                let _ = t.join();
            }
        }
        Ok(())
    }

    pub fn uplinks(&self) -> Vec<UplinkInfo> {
        let st = read(&self.inner.state);
        st.uplinks
            .iter()
            .map(|u| UplinkInfo {
                name: u.name.clone(),
                link_up: u.link_up.load(Ordering::SeqCst),
                in_use: st.in_use.iter().any(|x| Arc::ptr_eq(x, u)),
                stats: u.counters.snapshot(),
            })
            .collect()
    }

    /// Sets the teaming policy. Uplinks named here that do not exist yet take part once
    /// they are added.
    pub fn set_teaming(&self, policy: TeamingPolicy) -> Result<(), SwitchError> {
        let mut seen = std::collections::HashSet::new();
        for n in policy.active.iter().chain(&policy.standby) {
            if !seen.insert(n) {
                return Err(SwitchError::TeamingDuplicate {
                    switch: self.inner.name.clone(),
                    uplink: n.clone(),
                });
            }
        }
        let mut st = write(&self.inner.state);
        st.teaming = policy;
        st.recompute_team(true);
        Ok(())
    }

    pub fn teaming(&self) -> TeamingPolicy {
        read(&self.inner.state).teaming.clone()
    }

    /// Reads every uplink's link state now and fails over or back as the teaming policy
    /// says (the link monitor thread does this every `link_poll`).
    pub fn poll_links(&self) {
        self.inner.poll_links();
    }

    /// The MACs learned behind uplinks (expired ones are not listed).
    pub fn learned_macs(&self) -> Vec<LearnedMac> {
        let ageing = read(&self.inner.state).cfg.mac_ageing;
        let fdb = lock(&self.inner.fdb);
        let mut v: Vec<LearnedMac> = fdb
            .iter()
            .filter(|(_, l)| l.seen.elapsed() < ageing)
            .map(|(&(vlan, mac), l)| LearnedMac {
                vlan,
                mac,
                uplink: l.uplink.clone(),
                age: l.seen.elapsed(),
            })
            .collect();
        v.sort_by_key(|l| (l.vlan, l.mac));
        v
    }

    /// A frame received on uplink `uplink` (what its receive thread calls; tests call it
    /// directly).
    pub fn receive_from_uplink(&self, uplink: &str, frame: &[u8]) -> Result<(), SwitchError> {
        let up = read(&self.inner.state).uplink(uplink).cloned();
        match up {
            Some(u) => {
                self.inner.uplink_ingress(&u, frame);
                Ok(())
            }
            None => Err(SwitchError::NoUplink {
                switch: self.inner.name.clone(),
                uplink: uplink.to_string(),
            }),
        }
    }
}

fn check_mtu(switch: &str, mtu: u16) -> Result<(), SwitchError> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(SwitchError::BadMtu {
            switch: switch.to_string(),
            mtu,
        });
    }
    Ok(())
}

fn check_portgroup(name: &str, cfg: &PortGroupConfig) -> Result<(), SwitchError> {
    if cfg.vlan > VLAN_VGT {
        return Err(SwitchError::BadVlan {
            portgroup: name.to_string(),
            vlan: cfg.vlan,
        });
    }
    if let Some(s) = &cfg.shaping {
        s.validate().map_err(|message| SwitchError::BadShaping {
            portgroup: name.to_string(),
            message,
        })?;
    }
    Ok(())
}

fn uplink_rx_loop(weak: Weak<Inner>, up: Arc<UplinkPort>) {
    // Room for anything a host interface hands up, GRO'd super-frames included (they are
    // then dropped as oversize, not truncated).
    let mut buf = vec![0u8; 65536 + 4];
    while !up.stop.load(Ordering::SeqCst) {
        match up.io.recv(&mut buf, Duration::from_millis(100)) {
            Ok(Some(n)) => {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.uplink_ingress(&up, &buf[..n.min(buf.len())]);
            }
            Ok(None) => {
                if weak.strong_count() == 0 {
                    return;
                }
            }
            Err(_) => {
                // The interface went away or is down: count and keep trying (it may come
                // back); the link monitor moves traffic meanwhile.
                inc(&up.counters.malformed);
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn monitor_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        inner.poll_links();
        inner.age_fdb();
        let poll = read(&inner.state).cfg.link_poll;
        drop(inner);
        thread::sleep(poll.max(Duration::from_millis(10)));
    }
}

impl Inner {
    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    fn poll_links(&self) {
        let uplinks = read(&self.state).uplinks.clone();
        let mut changed = false;
        for u in &uplinks {
            let up = u.io.link_up();
            if u.link_up.swap(up, Ordering::SeqCst) != up {
                changed = true;
            }
        }
        if changed {
            write(&self.state).recompute_team(false);
        }
    }

    fn age_fdb(&self) {
        let ageing = read(&self.state).cfg.mac_ageing;
        lock(&self.fdb).retain(|_, l| l.seen.elapsed() < ageing);
    }

    /// A frame from a vNIC port (the guest's transmit).
    fn port_ingress(&self, port: &Port, frame: &[u8]) -> TxOutcome {
        let c = &port.counters;
        let Some(hdr) = EthHeader::parse(frame) else {
            inc(&c.malformed);
            return TxOutcome::Dropped;
        };
        let st = read(&self.state);
        let Some(pg) = st.portgroups.get(&port.portgroup).copied() else {
            // Port groups with ports cannot be removed; never happens.
            inc(&c.no_destination);
            return TxOutcome::Dropped;
        };
        if !pg.security.forged_transmits && hdr.src != port.effective_mac() {
            inc(&c.forged);
            return TxOutcome::Dropped;
        }
        let untagged;
        let (vlan, body): (u16, &[u8]) = if pg.vlan == VLAN_VGT {
            match hdr.vid() {
                Some(VLAN_VGT) => {
                    inc(&c.vlan);
                    return TxOutcome::Dropped;
                }
                Some(v) => {
                    untagged = frame::untag(frame);
                    (v, &untagged)
                }
                None => (0, frame),
            }
        } else if hdr.tci.is_some() {
            // Only VGT port groups let guests tag.
            inc(&c.vlan);
            return TxOutcome::Dropped;
        } else {
            (pg.vlan, frame)
        };
        if body.len() > usize::from(st.cfg.mtu) + ETH_HLEN {
            inc(&c.oversize);
            return TxOutcome::Dropped;
        }
        {
            let mut sh = lock(&port.shaper);
            match pg.shaping {
                Some(policy) => {
                    let now = self.now_ns();
                    let tb = match sh.as_mut() {
                        Some(tb) if tb.policy() == policy => tb,
                        _ => sh.insert(TokenBucket::new(policy, usize::from(MAX_MTU) + 18, now)),
                    };
                    if let Err(wait) = tb.take(frame.len(), now) {
                        inc(&c.throttled);
                        return TxOutcome::Throttled(wait);
                    }
                }
                None => *sh = None,
            }
        }
        inc(&c.tx_frames);
        add(&c.tx_bytes, frame.len());
        let hdr = EthHeader { tci: None, ..hdr };
        self.forward(st, Source::Port(port), vlan, body, &hdr);
        TxOutcome::Sent
    }

    /// A frame from an uplink (the physical network).
    fn uplink_ingress(&self, up: &UplinkPort, frame: &[u8]) {
        let c = &up.counters;
        inc(&c.rx_frames);
        add(&c.rx_bytes, frame.len());
        let Some(hdr) = EthHeader::parse(frame) else {
            inc(&c.malformed);
            return;
        };
        let untagged;
        let (vlan, body): (u16, &[u8]) = match hdr.vid() {
            Some(VLAN_VGT) => {
                inc(&c.malformed);
                return;
            }
            Some(v) => {
                untagged = frame::untag(frame);
                (v, &untagged)
            }
            None => (0, frame),
        };
        let st = read(&self.state);
        if body.len() > usize::from(st.cfg.mtu) + ETH_HLEN {
            inc(&c.oversize);
            return;
        }
        if st.by_mac.contains_key(&hdr.src) {
            // One of our own vNICs' frames coming back from the physical network: a
            // loop (or a spoofer); never deliver it.
            inc(&c.looped);
            return;
        }
        if hdr.src.is_valid_unicast() {
            let mut fdb = lock(&self.fdb);
            let now = Instant::now();
            match fdb.get_mut(&(vlan, hdr.src)) {
                Some(l) if l.uplink == up.name => l.seen = now,
                _ => {
                    fdb.insert(
                        (vlan, hdr.src),
                        Learned {
                            uplink: up.name.clone(),
                            seen: now,
                        },
                    );
                }
            }
        }
        let hdr = EthHeader { tci: None, ..hdr };
        self.forward(st, Source::Uplink(up), vlan, body, &hdr);
    }

    /// Delivers an untagged frame on `vlan` from `src` to its destinations. Never sends a
    /// frame back where it came from, and never from one uplink to another.
    fn forward(
        &self,
        st: RwLockReadGuard<'_, State>,
        src: Source<'_>,
        vlan: u16,
        frame: &[u8],
        hdr: &EthHeader,
    ) {
        let src_port = match src {
            Source::Port(p) => Some(p.id),
            Source::Uplink(_) => None,
        };
        // (port, its port group) to deliver to.
        let mut to_ports: Vec<(Arc<Port>, PortGroupConfig)> = Vec::new();
        let mut to_uplink: Option<Arc<UplinkPort>> = None;
        let candidate = |p: &Arc<Port>| -> Option<PortGroupConfig> {
            if Some(p.id) == src_port {
                return None;
            }
            st.portgroups
                .get(&p.portgroup)
                .filter(|pg| State::member(pg, vlan))
                .copied()
        };
        if hdr.dst.is_multicast() {
            for p in st.ports.values() {
                let Some(pg) = candidate(p) else { continue };
                if let Source::Uplink(u) = src {
                    // Reverse filter, as ESX: a broadcast from the physical network is
                    // delivered only to ports that use that uplink, so several uplinks
                    // in one broadcast domain do not deliver copies.
                    if st.team_uplink(p.id).map(|x| x.name.as_str()) != Some(u.name.as_str()) {
                        continue;
                    }
                }
                to_ports.push((p.clone(), pg));
            }
            if let Source::Port(p) = src {
                to_uplink = st.team_uplink(p.id).cloned();
            }
        } else {
            let local = st
                .by_mac
                .get(&hdr.dst)
                .and_then(|id| st.ports.get(id))
                .filter(|p| p.effective_mac() == hdr.dst || p.configured_mac == hdr.dst);
            let mut delivered_locally = false;
            if let Some(p) = local {
                if let Some(pg) = candidate(p) {
                    to_ports.push((p.clone(), pg));
                    delivered_locally = true;
                }
            }
            if !delivered_locally && local.is_none_or(|p| Some(p.id) != src_port) {
                if let Source::Port(p) = src {
                    // Unknown here: out the uplink it was learned behind if that one
                    // carries traffic, else the port's team uplink.
                    let learned = lock(&self.fdb)
                        .get(&(vlan, hdr.dst))
                        .filter(|l| l.seen.elapsed() < st.cfg.mac_ageing)
                        .map(|l| l.uplink.clone());
                    to_uplink = learned
                        .and_then(|n| st.in_use.iter().find(|u| u.name == n).cloned())
                        .or_else(|| st.team_uplink(p.id).cloned());
                }
            }
            // Promiscuous ports on the VLAN see a copy.
            for p in st.ports.values() {
                if to_ports.iter().any(|(q, _)| q.id == p.id) {
                    continue;
                }
                if let Some(pg) = candidate(p) {
                    if pg.security.promiscuous {
                        to_ports.push((p.clone(), pg));
                    }
                }
            }
            if to_ports.is_empty() && to_uplink.is_none() {
                if let Source::Port(p) = src {
                    inc(&p.counters.no_destination);
                }
            }
        }
        drop(st);
        for (p, pg) in to_ports {
            if !pg.security.mac_changes && p.effective_mac() != p.configured_mac {
                inc(&p.counters.mac_changed);
                continue;
            }
            let out = if pg.vlan == VLAN_VGT && vlan != 0 {
                frame::tag(frame, vlan)
            } else {
                frame.to_vec()
            };
            p.push(out);
        }
        if let Some(u) = to_uplink {
            if vlan != 0 {
                u.send(&frame::tag(frame, vlan));
            } else {
                u.send(frame);
            }
        }
    }

    /// The guest of `port` changed its MAC.
    fn set_effective_mac(&self, port: &Port, mac: MacAddr) -> Result<(), SwitchError> {
        if !mac.is_valid_unicast() {
            return Err(SwitchError::BadMac { mac });
        }
        let mut st = write(&self.state);
        if let Some(other) = st.by_mac.get(&mac) {
            if *other != port.id {
                let name = st
                    .ports
                    .get(other)
                    .map_or_else(String::new, |p| p.name.clone());
                return Err(SwitchError::DuplicateMac {
                    switch: self.name.clone(),
                    mac,
                    port: name,
                });
            }
        }
        let old = std::mem::replace(&mut *lock(&port.effective_mac), mac);
        if old != port.configured_mac {
            st.by_mac.remove(&old);
        }
        st.by_mac.insert(mac, port.id);
        Ok(())
    }

    fn remove_port(&self, port: &Port) {
        let mut st = write(&self.state);
        st.ports.remove(&port.id);
        st.by_mac.remove(&port.configured_mac);
        let eff = port.effective_mac();
        if st.by_mac.get(&eff) == Some(&port.id) {
            st.by_mac.remove(&eff);
        }
    }
}

/// A vNIC's port on a vSwitch: what a virtio-net device sends into and receives from
/// (it implements [`NetBackend`]). Dropping it disconnects the port.
pub struct VnicPort {
    inner: Arc<Inner>,
    port: Arc<Port>,
}

impl VnicPort {
    pub fn id(&self) -> PortId {
        self.port.id
    }

    pub fn name(&self) -> &str {
        &self.port.name
    }

    pub fn portgroup(&self) -> &str {
        &self.port.portgroup
    }

    /// The configured MAC.
    pub fn mac(&self) -> MacAddr {
        self.port.configured_mac
    }

    /// The guest's MAC now (the configured one unless the guest changed it).
    pub fn effective_mac(&self) -> MacAddr {
        self.port.effective_mac()
    }

    /// The guest sends a frame (Ethernet header onwards).
    pub fn send(&self, frame: &[u8]) -> TxOutcome {
        self.inner.port_ingress(&self.port, frame)
    }

    /// The next frame for the guest.
    pub fn recv(&self) -> Option<Vec<u8>> {
        lock(&self.port.rxq).pop_front()
    }

    /// Frames waiting for the guest.
    pub fn pending(&self) -> usize {
        lock(&self.port.rxq).len()
    }

    pub fn stats(&self) -> PortStats {
        self.port.counters.snapshot()
    }

    /// The guest uses `mac` from now on (refused if another port has it).
    pub fn set_effective_mac(&self, mac: MacAddr) -> Result<(), SwitchError> {
        self.inner.set_effective_mac(&self.port, mac)
    }

    /// The function called when frames start waiting for the guest.
    pub fn set_notify(&self, notify: Option<RxNotify>) {
        *lock(&self.port.notify) = notify;
    }
}

impl std::fmt::Debug for VnicPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VnicPort")
            .field("switch", &self.inner.name)
            .field("id", &self.port.id)
            .field("name", &self.port.name)
            .field("mac", &self.port.configured_mac)
            .finish()
    }
}

impl std::fmt::Debug for VSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VSwitch")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Drop for VnicPort {
    fn drop(&mut self) {
        self.inner.remove_port(&self.port);
    }
}

impl NetBackend for VnicPort {
    fn mac(&self) -> [u8; 6] {
        self.port.configured_mac.0
    }

    fn mtu(&self) -> u16 {
        read(&self.inner.state).cfg.mtu
    }

    fn transmit(&mut self, frame: &[u8]) -> TxOutcome {
        self.send(frame)
    }

    fn receive(&mut self) -> Option<Vec<u8>> {
        self.recv()
    }

    fn set_rx_notify(&mut self, notify: RxNotify) {
        self.set_notify(Some(notify));
    }

    fn set_mac(&mut self, mac: [u8; 6]) -> bool {
        self.set_effective_mac(MacAddr(mac)).is_ok()
    }
}
