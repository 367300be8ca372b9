//! The vmk host: one process that owns every VM of the machine (ESX's VMkernel + hostd).
//!
//! Layers, bottom up:
//! - [`vmk_api`] (its own crate): the API's types (VM definitions, states, metrics, the
//!   network) and its blocking client; [`host_api`]: the [`host_api::HostApi`] trait,
//!   everything the REST API (and so the CLI) can ask of a host.
//! - [`machine`], [`console`]: definition → machine configuration, outcome → exit, and the
//!   console watcher; shared with `vmk run`.
//! - [`validate`], [`inventory`]: checks of definitions, and the inventory on disk.
//! - [`datastores`]: the datastores the host mounts, for disks named `[ds] dir/file.vmdk`.
//! - [`disks`]: the stored form of disk paths, and which VM holds a disk.
//! - [`network`]: vSwitches, port groups and uplinks (persisted), VM NICs' MACs and ports.
//! - [`runtime`]: the real host behind `HostApi` (inventory on disk, VM threads,
//!   consoles, metrics).
//! - [`api`]: the REST API (JSON over a Unix socket, optionally TCP + bearer token),
//!   a thin translation of HTTP to `HostApi` calls; `vmk_api::client` is its blocking
//!   client (what the `vmk` CLI uses).
//! - `fake` (feature `fake`, tests only): an in-memory `HostApi` and an in-process server.

pub mod api;
pub mod console;
pub mod cpu;
pub mod datastores;
pub mod disks;
#[cfg(feature = "fake")]
pub mod fake;
pub mod host_api;
pub mod inventory;
pub mod machine;
pub mod network;
pub mod runtime;
pub mod sysinfo;
pub mod validate;

#[cfg(test)]
mod testutil;
