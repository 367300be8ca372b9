//! What vmk's tests share, instead of a copy per crate: an RV64 instruction encoder
//! ([`rv64`]), network namespaces with veth pairs and TAP devices ([`netns`]), and, with the
//! feature `image`, guest images built for a test binary (`image`).
//!
//! Dev-only: a `[dev-dependencies]` entry of the crates whose tests use it, never a
//! dependency of a product crate. By default it depends on no vmk crate, so that the tests
//! of `vmk-cpu` (and of any crate `vmk-image` depends on) can use it without building a
//! second copy of their own crate; the feature `image` adds `vmk-image`.

pub mod netns;
pub mod rv64;

#[cfg(feature = "image")]
pub mod image;
