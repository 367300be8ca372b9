//! Fuzz target: see `vmk_vmdk::fuzzing::grain_table` (a unit test runs the same function over
//! mutated inputs with a fixed seed).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmk_vmdk::fuzzing::grain_table(data);
});
