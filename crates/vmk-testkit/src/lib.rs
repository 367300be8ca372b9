//! What vmk's tests share, instead of a copy per crate: an RV64 instruction encoder
//! ([`rv64`]) and network namespaces with veth pairs and TAP devices ([`netns`]).
//!
//! Dev-only: a `[dev-dependencies]` entry of the crates whose tests use it, never a
//! dependency of a product crate. It depends on no vmk crate, so that the tests of
//! `vmk-cpu` can use it without building a second copy of `vmk-cpu`.

pub mod netns;
pub mod rv64;
