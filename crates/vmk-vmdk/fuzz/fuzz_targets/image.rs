//! Fuzz target: see `vmk_vmdk::fuzzing::image` (a unit test runs the same function over
//! mutated inputs with a fixed seed).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmk_vmdk::fuzzing::image(data);
});
