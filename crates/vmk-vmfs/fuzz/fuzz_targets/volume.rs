//! Mounts (read-only) and reads a mutated volume, then fscks it: any panic is a bug.
//!
//! The input is a list of 5-byte edits (4-byte little-endian offset, 1 byte value) applied
//! to a small template volume that has every kind of structure: byte-level fuzzing of a
//! 48 MiB image would spend its time in data blocks.
//!
//!     cargo +nightly fuzz run volume
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmk_vmfs::fuzzing;

fuzz_target!(|data: &[u8]| {
    let edits: Vec<(u32, u8)> = data
        .chunks_exact(5)
        .take(64)
        .map(|c| (u32::from_le_bytes([c[0], c[1], c[2], c[3]]), c[4]))
        .collect();
    let img = fuzzing::mutate(fuzzing::template(), &edits);
    let _ = fuzzing::exercise(&img);
});
