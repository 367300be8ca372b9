//! What a host is asked and what it answers: VM definitions, states, metrics and errors.
//! The REST API serializes these types as JSON; VM definitions are also stored as TOML in
//! the host's inventory, and [`HostConfig`] is the host's own configuration file (which
//! also tells clients where the API's socket is).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;

/// Longest VM name.
pub const NAME_MAX: usize = 64;

/// Checks a VM (or other inventory object) name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not
/// starting with `.` or `-`. Names become directory names, so nothing else gets through.
pub fn validate_name(kind: &str, name: &str) -> Result<(), HostError> {
    let bad = |why: &str| {
        Err(HostError::Invalid(format!(
            "{kind} name '{}': {why} (use 1 to {NAME_MAX} letters, digits, '.', '_' or '-', \
             not starting with '.' or '-')",
            name.escape_default()
        )))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > NAME_MAX {
        return bad("too long");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("bad first character");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character '{}' is not allowed",
            c.escape_default()
        ));
    }
    Ok(())
}

/// Parses sizes like `512M`, `2G`, `65536K` or plain bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(format!(
                        "unknown size suffix '{c}' in '{s}' (use K, M, G or T)"
                    ))
                }
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 512M, 2G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// For optional fields of API input: absent means the default, `null` is refused (the
/// document says the field is a string or an integer, not that it may be null).
pub fn no_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(v) => Ok(Some(v)),
        None => Err(serde::de::Error::custom(
            "null is not allowed here: leave the field out for its default",
        )),
    }
}

/// A size in bytes; written as an integer or a string with a K/M/G/T suffix (`"512M"`).
/// Serialized as an integer number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// ESX-style shares: a level or a custom number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", untagged)]
pub enum Shares {
    Level(ShareLevel),
    Custom(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareLevel {
    Low,
    Normal,
    High,
}

impl Default for Shares {
    fn default() -> Self {
        Shares::Level(ShareLevel::Normal)
    }
}

/// Resource settings. The CPU settings are enforced by vmk's scheduler (and may be changed
/// while the VM runs); the memory settings are stored and validated, and enforced once
/// memory overcommit lands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// Per vCPU: low 500, normal 1000, high 2000, or a number (the VM's shares are that
    /// times its vCPUs).
    pub cpu_shares: Shares,
    /// Guaranteed host CPU, in MHz of one host core.
    pub cpu_reservation_mhz: u64,
    /// Most host CPU the VM may use, in MHz; none = unlimited.
    pub cpu_limit_mhz: Option<u64>,
    /// Host CPUs the vCPUs may run on; none = any.
    pub cpu_affinity: Option<Vec<u32>>,
    pub mem_shares: Shares,
    pub mem_reservation: ByteSize,
    pub mem_limit: Option<ByteSize>,
}

/// What the VM boots: a built image directory, or a kernel (+ initrd).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// An image directory from `vmk image build` (vmlinux, initrd.img).
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub image: Option<PathBuf>,
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub kernel: Option<PathBuf>,
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; default: the image's.
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub append: Option<String>,
}

/// A virtual disk (VMDK or raw file), attached as virtio-blk in definition order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDef {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// virtio-blk serial, at most 20 bytes.
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub serial: Option<String>,
}

/// A virtual NIC: attached to a port of its port group's vSwitch while the VM runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicDef {
    pub portgroup: String,
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac: Option<String>,
}

/// A VM's definition: the role of ESX's .vmx. Stored as `vm.toml` in the inventory, sent as
/// JSON to `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    pub name: String,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Started when the host starts.
    #[serde(default)]
    pub autostart: bool,
    pub boot: Boot,
    #[serde(default, rename = "disk", skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskDef>,
    #[serde(default, rename = "nic", skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicDef>,
    #[serde(default)]
    pub resources: Resources,
    /// Test-only fault hook: the VM's UART model panics when the guest's console output
    /// contains this text (a device-model bug on demand). Only hosts built with the cargo
    /// feature `test-hooks` (the tests') accept it; the product refuses it at create. Not
    /// in docs/api/openapi.json: it is no part of the API clients use.
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub test_fault_on_console: Option<String>,
}

fn default_cpus() -> u32 {
    1
}

fn default_memory() -> ByteSize {
    ByteSize(512 << 20)
}

/// The host's own configuration (`vmk host start --config FILE`, TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Inventory (one directory per VM: vm.toml, state, console.log).
    #[serde(default = "default_host_dir")]
    pub dir: PathBuf,
    /// The API's Unix socket (created mode 0600).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Optional remote API over TCP; every request needs the bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpApiConfig>,
    // ---- datastores ----
    /// Datastores the host mounts at start (`[[datastore]]`); VM disks name them as
    /// `[NAME] dir/file.vmdk`.
    #[serde(default, rename = "datastore", skip_serializing_if = "Vec::is_empty")]
    pub datastores: Vec<DatastoreConfig>,
    // ---- CPU ----
    /// The licence edition: caps the vCPUs of a VM (standard 4, enterprise-plus 8,
    /// unlimited 64, vmk's maximum).
    #[serde(default)]
    pub edition: Edition,
    /// How vmk uses the host's CPUs (`[cpu]`).
    #[serde(default)]
    pub cpu: CpuConfig,
}

/// The licence edition (the seed's vSMP caps per VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Edition {
    Standard,
    EnterprisePlus,
    #[default]
    Unlimited,
}

impl Edition {
    /// Most vCPUs one VM may have.
    pub fn max_vcpus(self) -> u32 {
        match self {
            Edition::Standard => 4,
            Edition::EnterprisePlus => 8,
            Edition::Unlimited => 64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Edition::Standard => "standard",
            Edition::EnterprisePlus => "enterprise-plus",
            Edition::Unlimited => "unlimited",
        }
    }
}

/// The host's `[cpu]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// MHz of one logical CPU (reservations and limits are in MHz); default: the host's
    /// (cpufreq's maximum, else /proc/cpuinfo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mhz: Option<u64>,
    /// The logical CPUs vmk schedules on (one worker each); default: all online CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<u32>>,
    /// `vmk` (vmk's scheduler, the default) or `threads` (one thread per vCPU, Linux
    /// schedules; the baseline of `bench/sched.sh`, resource settings other than affinity
    /// are not applied).
    #[serde(default)]
    pub scheduler: SchedulerKind,
    /// The power policy at start (`PUT /v1/host/power` changes it).
    #[serde(default)]
    pub power: PowerPolicy,
}

/// The host's power policy (ESX's): it sets the Linux cpufreq governor of the CPUs vmk
/// uses where the host lets it, and low-power packs vCPUs onto fewer CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerPolicy {
    HighPerformance,
    #[default]
    Balanced,
    LowPower,
}

impl PowerPolicy {
    pub fn name(self) -> &'static str {
        match self {
            PowerPolicy::HighPerformance => "high-performance",
            PowerPolicy::Balanced => "balanced",
            PowerPolicy::LowPower => "low-power",
        }
    }

    /// The cpufreq governor it sets.
    pub fn governor(self) -> &'static str {
        match self {
            PowerPolicy::HighPerformance => "performance",
            PowerPolicy::Balanced => "schedutil",
            PowerPolicy::LowPower => "powersave",
        }
    }
}

/// `PUT /v1/host/power`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    pub policy: PowerPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    #[default]
    Vmk,
    Threads,
}

// ---- datastores ----

/// A datastore the host mounts (`vmk datastore create` made it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreConfig {
    /// The name disk paths use: `[NAME] dir/file.vmdk`.
    pub name: String,
    /// The volume: a file, a block device, `nbd:HOST:PORT[/EXPORT]` or `nbd+unix:SOCKET`.
    pub device: String,
    /// Host ID on the volume (1..=32; every host sharing it needs its own). Default: the
    /// first free heartbeat slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<u32>,
}

/// A configured datastore as the host sees it (`host info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatastoreStatus {
    pub name: String,
    pub device: String,
    /// `mounted`, or `error` (see `error`: the host runs without it).
    pub state: String,
    /// The host ID this host has on the volume, when mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpApiConfig {
    /// Address to listen on, e.g. `127.0.0.1:7480`.
    pub listen: String,
    /// A file holding the bearer token (one line); it must not be readable by others.
    pub token_file: PathBuf,
}

pub fn default_host_dir() -> PathBuf {
    PathBuf::from("/var/lib/vmk")
}

pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/vmk/vmk.sock")
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            dir: default_host_dir(),
            socket: default_socket(),
            tcp: None,
            datastores: Vec::new(),
            edition: Edition::default(),
            cpu: CpuConfig::default(),
        }
    }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Defined, not running (never started, powered off, or stopped).
    Stopped,
    /// Being assembled (kernel loading, devices opening).
    Starting,
    Running,
    /// A graceful stop was requested; powered off at the deadline.
    Stopping,
    /// Ended by a fault (see `last_exit`); can be started again.
    Crashed,
}

/// How the last run of a VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ExitInfo {
    /// The guest powered off; `status` is its exit status (the image's init script).
    PoweredOff { status: i32 },
    /// Powered off by the host (poweroff, or a stop that reached its timeout).
    Killed,
    /// A fault ended it: a vmk bug caught in a device or vCPU, or an unhandled guest error.
    Crashed { reason: String },
}

/// A VM as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub definition: VmDefinition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
    /// Unix time (seconds) the current or last run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// Unix time (seconds) the last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// Runs since the VM was defined (guest reboots count).
    pub boots: u64,
    /// The NICs' MAC addresses (given, or generated at the first start and kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<VmNicInfo>,
}

/// A VM's NIC as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNicInfo {
    pub portgroup: String,
    /// The MAC the NIC has (or will have at its first start).
    pub mac: String,
    /// Generated by vmk (stable across restarts), not given in the definition.
    pub generated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub version: String,
    /// Host CPUs (logical).
    pub cpus: u32,
    /// Host memory in bytes.
    pub memory: u64,
    pub vms: u32,
    pub vms_running: u32,
    pub uptime_secs: u64,
    /// The host directory (inventory, console logs).
    pub dir: PathBuf,
    /// The configured datastores, mounted or not (and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datastores: Vec<DatastoreStatus>,
    /// How vmk shares the CPUs out.
    #[serde(default)]
    pub cpu: CpuInfo,
}

/// The host's CPUs as vmk's scheduler sees them (`host info`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuInfo {
    /// MHz of one logical CPU (measured or from the host config).
    pub cpu_mhz: u64,
    /// The logical CPUs vmk schedules on.
    pub cpus: Vec<u32>,
    /// Usable CPUs x `cpu_mhz`.
    pub capacity_mhz: u64,
    /// MHz reserved by running VMs.
    pub reserved_mhz: u64,
    /// `vmk` or `threads`.
    pub scheduler: String,
    /// The licence edition and the vCPUs it allows per VM.
    pub edition: String,
    pub max_vcpus_per_vm: u32,
    /// Physical cores, logical CPUs per core, NUMA nodes.
    pub cores: u32,
    pub threads_per_core: u32,
    pub numa_nodes: u32,
    /// The power policy in force, and what it did to the host (the cpufreq governor it
    /// set, or why it could not).
    pub power_policy: String,
    pub power_note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VcpuMetrics {
    /// Host CPU time this vCPU ran, in nanoseconds (esxtop's used).
    pub cpu_time_ns: u64,
    /// Guest instructions retired.
    pub instret: u64,
    /// Ready to run but not running (%RDY), in nanoseconds.
    #[serde(default)]
    pub ready_ns: u64,
    /// Held back by co-scheduling (%CSTP).
    #[serde(default)]
    pub costop_ns: u64,
    /// Idle in the guest (%WAIT).
    #[serde(default)]
    pub wait_ns: u64,
    /// Ready but held back by the VM's CPU limit (%MLMTD).
    #[serde(default)]
    pub limited_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiskMetrics {
    pub path: PathBuf,
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub flush_ops: u64,
    pub errors: u64,
}

/// Counters of a VM's NIC: its vSwitch port (frames the guest sent are `tx`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NicMetrics {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames dropped at the port, all reasons.
    pub drops: u64,
    // ---- network (vSwitch port) ----
    /// The port group the NIC is connected to.
    #[serde(default)]
    pub portgroup: String,
    /// The NIC's MAC address.
    #[serde(default)]
    pub mac: String,
    /// Frames traffic shaping delayed (not dropped).
    #[serde(default)]
    pub throttled: u64,
    /// `drops` by reason.
    #[serde(default)]
    pub drop_reasons: NicDrops,
}

/// Frames dropped at a vNIC's switch port, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NicDrops {
    /// Sent with another source MAC while forged transmits = reject.
    pub forged: u64,
    /// For a guest that changed its MAC while MAC address changes = reject.
    pub mac_changed: u64,
    /// Tagged by the guest on a port group that does not allow it.
    pub vlan: u64,
    /// Larger than the vSwitch MTU.
    pub oversize: u64,
    pub malformed: u64,
    /// The guest did not take frames fast enough.
    pub queue_full: u64,
    /// Nowhere to go (no uplink, unknown destination).
    pub no_destination: u64,
}

impl NicDrops {
    pub fn total(&self) -> u64 {
        self.forged
            + self.mac_changed
            + self.vlan
            + self.oversize
            + self.malformed
            + self.queue_full
            + self.no_destination
    }
}

/// Counters of one VM (of its current or last run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMetrics {
    pub name: String,
    pub state: VmState,
    pub vcpus: Vec<VcpuMetrics>,
    pub memory_configured: u64,
    /// Guest RAM the guest has touched (host memory actually backing it), in bytes.
    pub memory_touched: u64,
    pub disks: Vec<DiskMetrics>,
    pub nics: Vec<NicMetrics>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMetrics {
    pub host: HostInfo,
    /// The host process's resident memory, in bytes.
    pub rss: u64,
    /// The host process's CPU time, in nanoseconds.
    pub cpu_time_ns: u64,
    pub vms: Vec<VmMetrics>,
    /// Per logical CPU vmk schedules on: the time it ran vCPUs.
    #[serde(default)]
    pub pcpus: Vec<PcpuMetrics>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PcpuMetrics {
    pub cpu: u32,
    pub used_ns: u64,
}

/// A request the host refuses or cannot carry out. Messages say what, where and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request makes no sense in the VM's current state.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

impl HostError {
    /// The HTTP status the API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            HostError::NotFound(_) => 404,
            HostError::AlreadyExists(_) | HostError::Conflict(_) => 409,
            HostError::Invalid(_) => 400,
            HostError::Internal(_) => 500,
        }
    }
}

// ---- requests ----

/// `POST /v1/vms/{name}/stop` without a body waits this long before powering off.
pub const STOP_TIMEOUT_DEFAULT_SECS: u64 = 30;
/// Longest stop timeout a request may ask for.
pub const STOP_TIMEOUT_MAX_SECS: u64 = 3600;
/// The `Upgrade` protocol name of the interactive console
/// (`GET /v1/vms/{name}/console`).
pub const CONSOLE_PROTOCOL: &str = "vmk-console";

/// The body of `POST /v1/vms/{name}/stop`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Seconds the guest gets to shut down before it is powered off.
    #[serde(
        default,
        deserialize_with = "crate::model::no_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web1", "a", "db.prod_2-x", &"x".repeat(64)] {
            assert!(validate_name("VM", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "../etc",
            "a\\b",
            "a b",
            "a\0b",
            "é",
            &"x".repeat(65),
        ] {
            let e = validate_name("VM", bad).unwrap_err();
            assert_eq!(e.http_status(), 400, "{bad}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").unwrap_err().contains("suffix"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }
}
