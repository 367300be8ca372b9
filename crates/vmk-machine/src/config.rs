//! What a VM is made of (its configuration: kernel, memory, disks, NICs) and how building
//! or running one fails: the types every other module of the crate shares, below them all.

use std::path::PathBuf;
use std::sync::Arc;

use vmk_devices::virtio::NetBackend;

use crate::loader::LoadError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("guest memory: {0}")]
    Memory(#[from] vmk_memory::MemError),
    #[error("memory size {0} MiB is too small: a Linux guest needs at least {1} MiB")]
    MemoryTooSmall(u64, u64),
    #[error("memory size {0} GiB is more than a VM can have ({1} GiB)")]
    MemoryTooLarge(u64, u64),
    #[error("--cpus {0}: a VM has 1 to 64 vCPUs")]
    BadCpuCount(u32),
    #[error("device tree: {0}")]
    Fdt(String),
    #[error("devices: {0}")]
    Devices(String),
    #[error(
        "fault_on_console is a test hook; this build was made without the test-hooks \
         feature and refuses it (remove it from the VM's configuration)"
    )]
    FaultInjectionUnavailable,
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest powered off; `code` is the test device's exit code (0 for SBI shutdown).
    PowerOff {
        code: i32,
    },
    Reboot,
    /// The guest could not go on (architected error the guest did not handle).
    Crashed(String),
    /// The host asked it to stop.
    Stopped,
}

/// Where the guest console goes and comes from.
pub trait Console: Send + Sync {
    fn write(&self, bytes: &[u8]);
}

/// A virtual disk to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    /// virtio-blk serial (GET_ID), at most 20 bytes.
    pub serial: Option<String>,
    /// Where `path` is: `None` for the host's file system, or the storage (a mounted
    /// datastore) a `[ds] dir/file.vmdk` path is on. Disks on a storage must be VMDKs.
    pub storage: Option<DiskStorage>,
}

/// The storage of a [`DiskSpec`]; equal when it is the same storage object.
#[derive(Clone, Debug)]
pub struct DiskStorage(pub Arc<dyn vmk_vmdk::Storage>);

impl PartialEq for DiskStorage {
    fn eq(&self, other: &DiskStorage) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DiskStorage {}

/// A virtual NIC to attach: a virtio-net device in front of `backend`, typically a
/// `vmk_vswitch::VnicPort` (which gives the MAC and MTU the guest sees).
pub struct NicSpec {
    pub backend: Box<dyn NetBackend>,
    /// Names the NIC's I/O thread and its bus entry, e.g. `web1-eth0`.
    pub name: String,
}

impl std::fmt::Debug for NicSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.backend.mac();
        f.debug_struct("NicSpec")
            .field("name", &self.name)
            .field(
                "mac",
                &format_args!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                ),
            )
            .finish()
    }
}

pub struct VmConfig {
    pub cpus: u32,
    pub memory: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub console: Arc<dyn Console>,
    /// Disks, attached as virtio-blk devices in this order.
    pub disks: Vec<DiskSpec>,
    /// NICs, attached as virtio-net devices in this order after the disks (the guest's
    /// eth0, eth1, ...).
    pub nics: Vec<NicSpec>,
    /// Test-only fault hook (cargo feature `test-hooks`): the UART model panics when the
    /// guest's console output contains this text, to show that a device-model bug ends only
    /// its own VM. Builds without the feature refuse it
    /// ([`VmError::FaultInjectionUnavailable`]).
    pub fault_on_console: Option<String>,
}
