//! The vmk host: one process that owns every VM of the machine (ESX's VMkernel + hostd).
//!
//! Layers, bottom up:
//! - [`model`]: the VM definition (the role of ESX's .vmx), states, metrics and the
//!   [`model::HostApi`] trait: everything the REST API and the CLI can ask of a host.
//! - `runtime` (to come): the real host behind `HostApi` (inventory on disk, VM threads,
//!   consoles, metrics).
//! - [`api`]: the REST API (JSON over a Unix socket, optionally TCP + bearer token),
//!   a thin translation of HTTP to `HostApi` calls; [`client`] is its blocking client
//!   (what the `vmk` CLI uses).
//! - `fake` (feature `fake`, tests only): an in-memory `HostApi` and an in-process server.

pub mod api;
pub mod client;
#[cfg(feature = "fake")]
pub mod fake;
pub mod model;
