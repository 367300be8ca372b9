//! A hostile driver against virtio-blk on virtio-mmio: arbitrary register accesses, guest
//! memory contents (descriptor tables, rings, indirect tables, buffers) and requests. The
//! decoding and the invariants live in `vmk_devices::virtio::fuzzing`, which a unit test
//! also runs with a fixed seed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmk_devices::virtio::fuzzing::virtio_blk_queue(data);
});
