//! The host network as the API shows it: vSwitches, port groups and uplinks as the admin
//! configures them (the bodies of `POST` and `PATCH` requests), and their state and counters
//! now (the answers of `GET /v1/network`, `/v1/vswitches`, `/v1/portgroups`).
//!
//! Names: vSwitches, port groups and uplinks are host-wide names checked like VM names
//! ([`validate_name`]); a port group belongs to one vSwitch but its name is unique on the
//! host, since VM definitions refer to port groups by name alone. An uplink's name is a
//! host interface name (the TAP device vmk creates, or the interface an AF_PACKET uplink
//! opens), so it is at most 15 bytes (Linux's IFNAMSIZ - 1): [`check_ifname`].

use serde::{Deserialize, Serialize};

use crate::model::{validate_name, HostError, NicMetrics};

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
    /// Whether this is [`Policy::Accept`].
    pub fn accept(self) -> bool {
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

/// Checks an uplink (interface) name: a valid name of at most 15 bytes.
pub fn check_ifname(name: &str) -> Result<(), HostError> {
    validate_name("uplink", name)?;
    if name.len() > IFNAME_MAX {
        return Err(HostError::Invalid(format!(
            "uplink name '{name}' is {} bytes; interface names have at most {IFNAME_MAX}",
            name.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        check_ifname("tap0").unwrap();
        check_ifname(&"x".repeat(IFNAME_MAX)).unwrap();
        assert_eq!(
            check_ifname(&"x".repeat(IFNAME_MAX + 1))
                .unwrap_err()
                .http_status(),
            400
        );
        assert!(check_ifname("a/b").is_err());
    }

    #[test]
    fn policies() {
        assert_eq!("ACCEPT".parse::<Policy>(), Ok(Policy::Accept));
        assert!(Policy::Accept.accept() && !Policy::Reject.accept());
        assert!("maybe".parse::<Policy>().is_err());
    }
}
