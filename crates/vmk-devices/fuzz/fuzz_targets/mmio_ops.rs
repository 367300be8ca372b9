//! Arbitrary sequences of guest MMIO accesses, host input and interrupt lines against the
//! UART, the PLIC and the test device. The decoding and the invariants live in
//! `vmk_devices::fuzzing`, which a unit test also runs with a fixed seed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmk_devices::fuzzing::mmio_ops(data);
});
