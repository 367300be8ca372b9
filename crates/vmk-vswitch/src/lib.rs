//! vmk's virtual switch: the software Ethernet switch inside the host that VMs' virtual
//! NICs plug into, with the host's NICs (or TAP devices) as uplinks to the outside.
//!
//! - A [`VSwitch`] has an MTU (up to 9000) and named port groups
//!   ([`PortGroupConfig`]): a VLAN (0 untagged, 1–4094 tagged by the switch, 4095 tagged
//!   by the guests), ESX's security policy ([`SecurityPolicy`]: promiscuous mode, MAC
//!   address changes, forged transmits) and egress traffic shaping ([`ShapingPolicy`]).
//!   Policy changes apply to connected ports at once.
//! - A vNIC connects with [`VSwitch::add_vnic`] and gets a [`VnicPort`], which is the
//!   [`vmk_devices::virtio::NetBackend`] of its virtio-net device. MACs are unique on a
//!   switch; [`MacAllocator`] generates stable, unique MACs for a host.
//! - Uplinks ([`UplinkIo`]: [`TapUplink`], [`PacketUplink`], [`MemoryUplink`]) are teamed
//!   ([`TeamingPolicy`]): ordered active and standby lists, failover on link down,
//!   optional failback, and load balancing by originating port.
//!
//! Forwarding: a frame to a vNIC's MAC on the same VLAN goes to that vNIC only; broadcast
//! and multicast go to every port on the VLAN and (from a vNIC) out the vNIC's uplink;
//! unknown unicast from a vNIC goes out the uplink its MAC was learned behind (or the
//! vNIC's uplink). Frames from an uplink never go out another uplink, and a vNIC's own
//! frames coming back from the physical network are dropped, so the switch cannot make a
//! loop. See `docs/network.md` for the whole design.

pub mod frame;
mod mac;
mod shaper;
mod switch;
mod uplink;

pub use mac::{generated_mac, MacAddr, MacAllocator, MacError, ParseMacError, VMK_MAC_PREFIX};
pub use shaper::{ShapingPolicy, TokenBucket};
pub use switch::{
    LearnedMac, PortDrops, PortGroupConfig, PortGroupInfo, PortId, PortInfo, PortStats,
    SecurityPolicy, SwitchConfig, SwitchError, TeamingPolicy, UplinkDrops, UplinkInfo, UplinkStats,
    VSwitch, VnicPort, MAX_MTU, MIN_MTU, VLAN_VGT,
};
pub use uplink::{sysfs_link_up, MemoryUplink, PacketUplink, TapUplink, UplinkIo};
pub use vmk_devices::virtio::TxOutcome;

#[cfg(test)]
mod tests;
