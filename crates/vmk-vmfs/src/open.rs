//! Volumes by the names users give them: above both kinds of device (files and NBD).

use std::path::Path;

use crate::device::{BlockDevice, FileDevice};
use crate::error::Result;
use crate::nbd::NbdDevice;

/// Opens a volume named the way users name it (the CLI's DEV, the host configuration's
/// `device`): a file or block device, `nbd:HOST:PORT[/EXPORT]` or `nbd+unix:SOCKET`.
pub fn open_device(spec: &str, read_only: bool) -> Result<Box<dyn BlockDevice>> {
    if let Some(rest) = spec.strip_prefix("nbd+unix:") {
        return Ok(Box::new(NbdDevice::connect_unix(rest.as_ref(), "")?));
    }
    if let Some(rest) = spec.strip_prefix("nbd:") {
        let (addr, export) = rest.split_once('/').unwrap_or((rest, ""));
        return Ok(Box::new(NbdDevice::connect_tcp(addr, export)?));
    }
    Ok(Box::new(FileDevice::open(Path::new(spec), read_only)?))
}
