//! Opens a VM's virtual disks: VMDK images through vmk-vmdk, anything else as a raw image
//! (detected as QEMU probes: the sparse magic or a text descriptor means VMDK).

use crate::config::{DiskSpec, VmError};
use std::io;
use vmk_devices::{BlockBackend, RawFileBackend};
use vmk_vmdk::{detect_format, DiskFormat, OpenMode, Vmdk};

fn disk_err(spec: &DiskSpec, what: impl std::fmt::Display) -> VmError {
    VmError::Devices(format!("disk {}: {what}", spec.path.display()))
}

/// A VMDK as a virtio-blk backend.
struct VmdkBackend(Vmdk);

impl BlockBackend for VmdkBackend {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Ok(self.0.read_at(offset, buf)?)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        Ok(self.0.write_at(offset, buf)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(self.0.flush()?)
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        Ok(self.0.discard(offset, len)?)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        Ok(self.0.write_zeroes(offset, len)?)
    }
}

pub fn open(spec: &DiskSpec) -> Result<Box<dyn BlockBackend>, VmError> {
    let mode = if spec.read_only {
        OpenMode::ReadOnly
    } else {
        OpenMode::ReadWrite
    };
    // On a datastore: a VMDK whose files the datastore locks (see `crate::datastore`).
    if let Some(st) = &spec.storage {
        let vmdk = Vmdk::open_on(st.0.clone(), &spec.path, mode).map_err(|e| disk_err(spec, e))?;
        return Ok(Box::new(VmdkBackend(vmdk)));
    }
    let format = detect_format(&spec.path).map_err(|e| {
        disk_err(
            spec,
            format!("{e}; create one with `vmk disk create` or check the path and permissions"),
        )
    })?;
    match format {
        DiskFormat::Vmdk => {
            let vmdk = Vmdk::open(&spec.path, mode).map_err(|e| disk_err(spec, e))?;
            Ok(Box::new(VmdkBackend(vmdk)))
        }
        DiskFormat::Raw => {
            let raw = RawFileBackend::open(&spec.path, spec.read_only)
                .map_err(|e| disk_err(spec, format!("{e}; check the path and permissions")))?;
            Ok(Box::new(raw))
        }
    }
}
