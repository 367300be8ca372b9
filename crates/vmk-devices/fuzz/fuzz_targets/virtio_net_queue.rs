//! A hostile driver and a busy network against virtio-net on virtio-mmio: arbitrary
//! register accesses, transmit chains, receive buffers, frames from the host of any length,
//! control commands, guest memory contents and resets. The decoding and the invariants live
//! in `vmk_devices::virtio::net_fuzzing`, which a unit test also runs with a fixed seed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmk_devices::virtio::net_fuzzing::virtio_net_queue(data);
});
