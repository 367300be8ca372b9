//! vmk-vmfs (being written).
