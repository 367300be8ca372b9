//! The vmk host's REST API as Rust types, and a small blocking client for it.
//!
//! - [`model`]: VM definitions (the role of ESX's .vmx), states, metrics, errors, the
//!   request bodies of the VM routes, and the host's configuration file.
//! - [`network`]: vSwitches, port groups and uplinks: configuration and state.
//! - [`client`]: a blocking HTTP/1.1 client over the host's Unix socket or TCP (bearer
//!   token), what the `vmk` CLI uses.
//!
//! The server is `vmk_host::api`; `docs/api/openapi.json` describes every route and schema.
//! This crate has no async runtime and no server: it depends on serde, serde_json,
//! thiserror and httparse only.

pub mod client;
pub mod model;
pub mod network;
