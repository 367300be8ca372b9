//! Opens a VM's virtual disks: VMDK images through vmk-vmdk, anything else as a raw image.

use crate::vm::{DiskSpec, VmError};
use vmk_devices::{BlockBackend, RawFileBackend};

fn disk_err(spec: &DiskSpec, what: impl std::fmt::Display) -> VmError {
    VmError::Devices(format!("disk {}: {what}", spec.path.display()))
}

pub fn open(spec: &DiskSpec) -> Result<Box<dyn BlockBackend>, VmError> {
    let raw = RawFileBackend::open(&spec.path, spec.read_only).map_err(|e| {
        disk_err(
            spec,
            format!("{e}; create one with `vmk disk create` or check the path and permissions"),
        )
    })?;
    Ok(Box::new(raw))
}
