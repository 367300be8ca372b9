//! The host's network: vSwitches, port groups and uplinks as the admin configured them
//! (persisted in `<host dir>/network.toml`, so changes through the API survive restarts),
//! the `vmk_vswitch` objects built from that configuration, and the MACs and ports of the
//! VMs' NICs. The API's types for all of it are in [`vmk_api::network`].
//!
//! Every change is validated, applied to the live switches (so a port group's new policy
//! applies to the ports of running VMs from their next frame on) and then written to
//! `network.toml` atomically. At host start the configuration is rebuilt; an uplink that
//! cannot be opened (a TAP without CAP_NET_ADMIN, a missing interface) is logged and shown
//! with its error in the network info, and the rest of the network comes up.
//!
//! By concern (each submodule uses only the ones before it):
//! - `validate`: checks beyond the API types, and API settings → `vmk_vswitch` policies;
//! - `config`: the configuration as stored in `network.toml`, read and written;
//! - `switch`: [`Network`], the live switches kept in step with the configuration, and the
//!   API's view of them ([`crate::host_api::NetworkApi`]);
//! - `lease`: VM NICs' MACs for a power-on ([`NicLease`]) and their switch ports.

mod config;
mod lease;
mod switch;
mod validate;

#[cfg(test)]
mod tests;

pub use config::{NetworkConfig, UplinkDef, NETWORK_FILE};
pub use lease::{vm_nic_info, ConnectedNic, NicLease, PortHandle};
pub use switch::{host_uplink_opener, memory_uplink_opener, nic_metrics, Network, UplinkOpener};
