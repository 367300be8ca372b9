//! The host's datastores: mounted at start from the configuration (`[[datastore]]`), named
//! by VM disks as `[NAME] dir/file.vmdk`.
//!
//! A datastore that cannot be mounted (missing device, not a datastore, corrupt, host ID in
//! use) does not stop the host: it is logged, shown with its error in `host info`, and VMs
//! whose disks are on it are refused with that error when created or started.

use std::sync::Arc;

use vmk_machine::datastore::{DatastoreStorage, DsPath};
use vmk_machine::{DiskStorage, VmConfig};
use vmk_vmfs::{Datastore, LockMode, MountOptions, VmfsError};

use vmk_api::model::{DatastoreConfig, DatastoreStatus, HostError, VmDefinition};

struct Entry {
    cfg: DatastoreConfig,
    mounted: Result<DatastoreStorage, String>,
}

/// Every datastore of the host configuration, mounted or with the reason it is not.
#[derive(Default)]
pub struct Datastores {
    list: Vec<Entry>,
}

impl Datastores {
    /// Mounts every configured datastore (one after the other: each mount watches its
    /// heartbeat slot for a moment).
    pub fn mount_all(cfgs: &[DatastoreConfig]) -> Datastores {
        let mut list = Vec::new();
        for cfg in cfgs {
            let mounted = if list.iter().any(|e: &Entry| e.cfg.name == cfg.name) {
                Err(format!(
                    "another [[datastore]] of the host configuration is named '{}': names \
                     must be unique",
                    cfg.name
                ))
            } else {
                mount(cfg)
            };
            match &mounted {
                Ok(s) => tracing::info!(
                    datastore = %cfg.name,
                    "{} mounted as host {}",
                    cfg.device,
                    s.datastore().host_id().unwrap_or(0)
                ),
                Err(e) => tracing::error!(
                    datastore = %cfg.name,
                    "{} is not mounted: {e} (VMs with disks on it cannot start; fix it and \
                     restart the host)",
                    cfg.device
                ),
            }
            list.push(Entry {
                cfg: cfg.clone(),
                mounted,
            });
        }
        Datastores { list }
    }

    pub fn status(&self) -> Vec<DatastoreStatus> {
        self.list
            .iter()
            .map(|e| DatastoreStatus {
                name: e.cfg.name.clone(),
                device: e.cfg.device.clone(),
                state: if e.mounted.is_ok() {
                    "mounted"
                } else {
                    "error"
                }
                .into(),
                host_id: e
                    .mounted
                    .as_ref()
                    .ok()
                    .and_then(|s| s.datastore().host_id()),
                error: e.mounted.as_ref().err().cloned(),
            })
            .collect()
    }

    /// The mounted datastore `name`, or why there is none.
    pub fn storage(&self, name: &str) -> Result<&DatastoreStorage, String> {
        let Some(e) = self.list.iter().find(|e| e.cfg.name == name) else {
            let known: Vec<&str> = self.list.iter().map(|e| e.cfg.name.as_str()).collect();
            return Err(format!(
                "no datastore named '{name}' on this host (configured: {}); add a \
                 [[datastore]] with name and device to the host configuration",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        };
        e.mounted
            .as_ref()
            .map_err(|why| format!("datastore '{name}' is not mounted: {why}"))
    }

    /// Checks the datastore disks of `def`: the datastore is mounted and the file exists.
    pub fn check_definition(&self, def: &VmDefinition) -> Result<(), HostError> {
        for (i, d) in def.disks.iter().enumerate() {
            let Some(p) = DsPath::from_path(&d.path) else {
                continue;
            };
            let what = format!("VM '{}': disk {i} '{}'", def.name, d.path.display());
            let p = p.map_err(|e| HostError::Invalid(format!("{what}: {e}")))?;
            let st = self
                .storage(&p.datastore)
                .map_err(|e| HostError::Invalid(format!("{what}: {e}")))?;
            match st.datastore().stat(&format!("/{}", p.path)) {
                Ok(s) if !s.is_dir => {}
                Ok(_) => {
                    return Err(HostError::Invalid(format!("{what}: is a directory")));
                }
                Err(e) => {
                    return Err(HostError::Invalid(format!(
                        "{what}: {e} (create it with `vmk disk create --datastore-device DEV \
                         '{p}'`, or copy one in with `vmk datastore cp`)"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Checks that every datastore disk of `def` can be opened now with the lock its VM
    /// will take (exclusive, or shared read-only for a read-only disk): its descriptor is
    /// opened and closed again. Another host holding it is [`DiskBusy::Locked`] with the
    /// datastore's message (`locked exclusive by host H since T; ...`).
    pub fn check_unlocked(&self, def: &VmDefinition) -> Result<(), DiskBusy> {
        for (i, d) in def.disks.iter().enumerate() {
            let Some(p) = DsPath::from_path(&d.path) else {
                continue;
            };
            let what = format!("disk {i} '{}'", d.path.display());
            let p = p.map_err(|e| DiskBusy::Unusable(format!("{what}: {e}")))?;
            let st = self
                .storage(&p.datastore)
                .map_err(|e| DiskBusy::Unusable(format!("{what}: {e}")))?;
            let mode = if d.read_only {
                LockMode::SharedRead
            } else {
                LockMode::Exclusive
            };
            match st.datastore().open_file(&format!("/{}", p.path), mode) {
                Ok(f) => {
                    if let Err(e) = f.close() {
                        return Err(DiskBusy::Unusable(format!(
                            "{what}: releasing the lock after checking it failed: {e}"
                        )));
                    }
                }
                Err(e @ VmfsError::Locked { .. }) => {
                    return Err(DiskBusy::Locked(format!("{what}: {e}")))
                }
                Err(e) => return Err(DiskBusy::Unusable(format!("{what}: {e}"))),
            }
        }
        Ok(())
    }

    /// Gives the datastore disks of `cfg` (built from `def`) their storage.
    pub fn attach(&self, def: &VmDefinition, cfg: &mut VmConfig) -> Result<(), String> {
        for (d, spec) in def.disks.iter().zip(cfg.disks.iter_mut()) {
            let Some(p) = DsPath::from_path(&d.path) else {
                continue;
            };
            let p = p.map_err(|e| format!("disk {}: {e}", d.path.display()))?;
            let st = self
                .storage(&p.datastore)
                .map_err(|e| format!("disk {}: {e}", d.path.display()))?;
            spec.storage = Some(DiskStorage(Arc::new(st.clone())));
        }
        Ok(())
    }
}

/// Why a VM's datastore disk cannot be opened now ([`Datastores::check_unlocked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskBusy {
    /// Another host holds its lock (the datastore's message, naming the host).
    Locked(String),
    /// The datastore is not mounted, the file is missing, or the volume failed.
    Unusable(String),
}

impl std::fmt::Display for DiskBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskBusy::Locked(m) | DiskBusy::Unusable(m) => f.write_str(m),
        }
    }
}

fn mount(cfg: &DatastoreConfig) -> Result<DatastoreStorage, String> {
    let dev = vmk_vmfs::open_device(&cfg.device, false).map_err(|e| e.to_string())?;
    let ds = Datastore::mount(
        dev,
        &MountOptions {
            host_id: cfg.host_id,
            ..MountOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(DatastoreStorage::new(&cfg.name, Arc::new(ds)))
}
