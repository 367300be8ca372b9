//! A hostile driver and a host pressing the power button against virtio-input on
//! virtio-mmio: arbitrary register and config-space accesses, event and status buffers,
//! guest memory contents and resets. The decoding and the invariants live in
//! `vmk_devices::virtio::input_fuzzing`, which a unit test also runs with a fixed seed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmk_devices::virtio::input_fuzzing::virtio_input_queue(data);
});
