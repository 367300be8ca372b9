//! The network's configuration as stored in `<host dir>/network.toml`: read at host start,
//! written (atomically) after every change.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vmk_api::model::HostError;
use vmk_api::network::{PortGroupDef, UplinkKind, VSwitchDef};

use crate::inventory::write_atomic;

/// The network configuration's file in the host directory.
pub const NETWORK_FILE: &str = "network.toml";

/// An uplink of a vSwitch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkDef {
    /// The TAP device's or host interface's name.
    pub name: String,
    pub vswitch: String,
    pub kind: UplinkKind,
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

/// Reads the configuration at `path` (None, or no file there: an empty network).
pub(super) fn load(path: Option<&Path>) -> Result<NetworkConfig, HostError> {
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
    Ok(cfg)
}

/// Writes the configuration to `path` (atomically). A failure leaves the live network
/// changed but says that the change will not survive a restart.
pub(super) fn save(path: &Path, cfg: &NetworkConfig) -> Result<(), HostError> {
    let text = toml::to_string(cfg)
        .map_err(|e| HostError::Internal(format!("cannot write the network as TOML: {e}")))?;
    write_atomic(path, text.as_bytes()).map_err(|e| {
        HostError::Internal(format!(
            "the change is live but could not be saved to {}: {e} (it will be lost at \
             the next host start)",
            path.display()
        ))
    })
}
