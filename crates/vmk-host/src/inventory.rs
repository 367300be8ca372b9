//! The inventory on disk: one directory per VM under `<host dir>/vms/`.
//!
//! ```text
//! <dir>/vms/<name>/vm.toml        the definition (VmDefinition as TOML), written atomically
//! <dir>/vms/<name>/state.toml     last exit, start/end times, boots (PersistedState)
//! <dir>/vms/<name>/console.log    the serial console, 1 MiB, then console.log.1
//! ```
//!
//! Directory names are VM names, which [`vmk_api::model::validate_name`] restricts to
//! `[A-Za-z0-9._-]` (no `/`, no leading `.`), so a name never leaves `vms/`. Loading checks
//! the directory name the same way and requires it to equal the definition's name.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vmk_api::model::{validate_name, ExitInfo, VmDefinition};

pub const VMS_DIR: &str = "vms";
pub const DEFINITION_FILE: &str = "vm.toml";
pub const STATE_FILE: &str = "state.toml";
pub const CONSOLE_LOG: &str = "console.log";

/// What the host remembers about a VM's runs across its own restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistedState {
    pub last_exit: Option<ExitInfo>,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub boots: u64,
    /// The MACs the VM's NICs had at their last start (generated ones stay the same
    /// across restarts of the VM and of the host).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nic_macs: Vec<String>,
}

/// A definition the host could not load (reported by `Host::inventory_errors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryError {
    pub path: PathBuf,
    pub message: String,
}

/// Creates `path` (and parents) with mode 0700 if missing.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// The directory of VM `name` (which must be valid: checked here again, as a last line).
pub fn vm_dir(root: &Path, name: &str) -> io::Result<PathBuf> {
    validate_name("VM", name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(root.join(VMS_DIR).join(name))
}

/// Writes a file of the inventory whole or not at all, durably, private to the host (0600).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    vmk_base::fs::write_atomic(path, data, 0o600)
}

/// The definition as stored.
pub fn definition_to_toml(def: &VmDefinition) -> Result<String, String> {
    toml::to_string(def).map_err(|e| format!("cannot write VM '{}' as TOML: {e}", def.name))
}

/// Parses a stored definition; the message names the file and the problem.
pub fn definition_from_toml(path: &Path, text: &str) -> Result<VmDefinition, String> {
    toml::from_str(text).map_err(|e| {
        format!(
            "{}: not a valid VM definition: {}",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

/// Writes a VM's definition (creating its directory).
pub fn save_definition(root: &Path, def: &VmDefinition) -> io::Result<PathBuf> {
    let dir = vm_dir(root, &def.name)?;
    // Serialized before anything is created, so a definition TOML cannot hold leaves nothing
    // behind; a new directory is removed again if the write fails (a full disk).
    let text = definition_to_toml(def).map_err(io::Error::other)?;
    let fresh = !dir.exists();
    create_private_dir(&dir)?;
    if let Err(e) = write_atomic(&dir.join(DEFINITION_FILE), text.as_bytes()) {
        if fresh {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return Err(e);
    }
    Ok(dir)
}

pub fn save_state(dir: &Path, st: &PersistedState) -> io::Result<()> {
    let text = toml::to_string(st).map_err(io::Error::other)?;
    write_atomic(&dir.join(STATE_FILE), text.as_bytes())
}

/// A VM's state file; a missing one is a fresh state, a corrupt one is reported and
/// replaced by a fresh state (it holds history only, nothing a VM needs to run).
pub fn load_state(dir: &Path) -> PersistedState {
    let mut st = read_state(dir);
    // A run that started after the last recorded end never ended here: the host went away
    // while the VM ran (killed, crashed, power loss). Its last exit is the host's doing, not
    // the previous run's.
    if let Some(start) = st.started_at {
        if st.ended_at.is_none_or(|end| end < start) {
            st.last_exit = Some(ExitInfo::Killed);
            st.ended_at = None;
        }
    }
    st
}

fn read_state(dir: &Path) -> PersistedState {
    let path = dir.join(STATE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(
                "ignoring {}: {} (the VM's run history starts afresh)",
                path.display(),
                e.to_string().trim_end()
            );
            PersistedState::default()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => PersistedState::default(),
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", path.display());
            PersistedState::default()
        }
    }
}

/// A loaded VM: its directory, definition and state.
#[derive(Debug, Clone)]
pub struct LoadedVm {
    pub dir: PathBuf,
    pub definition: VmDefinition,
    pub state: PersistedState,
}

/// Loads every VM under `<root>/vms`, sorted by name. A VM that cannot be loaded is skipped
/// and reported in the second list (the host runs the others).
pub fn load_all(root: &Path) -> io::Result<(Vec<LoadedVm>, Vec<InventoryError>)> {
    let vms = root.join(VMS_DIR);
    create_private_dir(&vms)?;
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for entry in std::fs::read_dir(&vms)? {
        let entry = entry?;
        let dir = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            errors.push(InventoryError {
                path: dir,
                message: "the directory name is not UTF-8, so it is not a VM name".into(),
            });
            continue;
        };
        if name.starts_with('.') {
            continue; // temporary or hidden files
        }
        if let Err(e) = validate_name("VM", name) {
            errors.push(InventoryError {
                path: dir,
                message: e.to_string(),
            });
            continue;
        }
        if !entry.file_type()?.is_dir() {
            errors.push(InventoryError {
                path: dir,
                message: "not a directory".into(),
            });
            continue;
        }
        let path = dir.join(DEFINITION_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(InventoryError {
                    path,
                    message: format!("cannot read the VM definition: {e}"),
                });
                continue;
            }
        };
        let definition = match definition_from_toml(&path, &text) {
            Ok(d) => d,
            Err(message) => {
                errors.push(InventoryError { path, message });
                continue;
            }
        };
        if definition.name != name {
            errors.push(InventoryError {
                message: format!(
                    "{}: the definition's name '{}' is not its directory's name '{name}'",
                    path.display(),
                    definition.name.escape_default()
                ),
                path,
            });
            continue;
        }
        let state = load_state(&dir);
        ok.push(LoadedVm {
            dir,
            definition,
            state,
        });
    }
    ok.sort_by(|a, b| a.definition.name.cmp(&b.definition.name));
    Ok((ok, errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmk_api::model::*;

    fn full() -> VmDefinition {
        VmDefinition {
            name: "db.prod_2".into(),
            cpus: 4,
            memory: ByteSize(2 << 30),
            autostart: true,
            boot: Boot {
                kernel: Some("/boot/Image".into()),
                initrd: Some("/boot/initrd.img".into()),
                append: Some("console=ttyS0 root=/dev/vda".into()),
                image: None,
            },
            disks: vec![
                DiskDef {
                    path: "/vmfs/db.vmdk".into(),
                    read_only: false,
                    serial: Some("db0".into()),
                },
                DiskDef {
                    path: "/vmfs/iso.img".into(),
                    read_only: true,
                    serial: None,
                },
            ],
            nics: vec![NicDef {
                portgroup: "VM-Network".into(),
                mac: Some("02:00:00:00:00:01".into()),
            }],
            resources: Resources {
                cpu_shares: Shares::Custom(2000),
                cpu_reservation_mhz: 100,
                cpu_limit_mhz: Some(2000),
                cpu_affinity: Some(vec![0, 1]),
                mem_shares: Shares::Level(ShareLevel::High),
                mem_reservation: ByteSize(1 << 30),
                mem_limit: None,
            },
            test_fault_on_console: Some("BOOM".into()),
        }
    }

    #[test]
    fn definitions_round_trip_through_toml() {
        let p = Path::new("/x/vm.toml");
        for def in [full(), crate::testutil::def("min", Path::new("/k"))] {
            let text = definition_to_toml(&def).unwrap();
            assert_eq!(definition_from_toml(p, &text).unwrap(), def, "{text}");
        }
        let text = definition_to_toml(&full()).unwrap();
        assert!(
            text.contains("[[disk]]") && text.contains("[[nic]]"),
            "{text}"
        );
        assert!(text.contains("cpu_shares = 2000") && text.contains("mem_shares = \"high\""));
        // Hand-written: sizes with units, defaults for what is left out.
        let d = definition_from_toml(
            p,
            "name = \"w\"\nmemory = \"256M\"\n[boot]\nimage = \"/img\"\n",
        )
        .unwrap();
        assert_eq!(
            (d.cpus, d.memory, d.autostart),
            (1, ByteSize(256 << 20), false)
        );
        assert_eq!(d.resources, Resources::default());
    }

    #[test]
    fn bad_toml_is_refused_with_the_file_and_the_field() {
        let p = Path::new("/inv/vms/w/vm.toml");
        for (text, words) in [
            (
                "name = \"w\"\ncolour = \"red\"\n[boot]\nimage = \"/i\"\n",
                &["/inv/vms/w/vm.toml", "unknown field", "colour"][..],
            ),
            (
                "name = \"w\"\n[boot]\nimage = \"/i\"\nflavour = 1\n",
                &["unknown field", "flavour"],
            ),
            (
                "name = \"w\"\n[boot]\n[resources]\ncpu_shares = \"lots\"\n",
                &["cpu_shares"],
            ),
            ("name = \"w\"\nmemory = \"12Q\"\n[boot]\n", &["suffix"]),
            ("name = \"w\"\ncpus = -1\n[boot]\n", &["cpus"]),
            ("cpus = 2\n[boot]\n", &["missing field", "name"]),
            ("name = \"w\"\n[boot\n", &["vm.toml"]),
        ] {
            let e = definition_from_toml(p, text).unwrap_err();
            for w in words {
                assert!(e.contains(w), "{text:?}: '{e}' lacks '{w}'");
            }
        }
    }

    #[test]
    fn atomic_writes_and_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = save_definition(tmp.path(), &full()).unwrap();
        assert_eq!(dir, tmp.path().join("vms/db.prod_2"));
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["vm.toml"], "no temporary file left");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("vm.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_state(&dir), PersistedState::default());
        let st = PersistedState {
            last_exit: Some(ExitInfo::Crashed {
                reason: "vCPU 0 panicked: \"quoted\"\nnewline".into(),
            }),
            started_at: Some(1),
            ended_at: Some(2),
            boots: 3,
            nic_macs: vec!["02:56:4b:00:00:01".into()],
        };
        save_state(&dir, &st).unwrap();
        assert_eq!(load_state(&dir), st);
        let (vms, errs) = load_all(tmp.path()).unwrap();
        assert!(errs.is_empty());
        assert_eq!(vms.len(), 1);
        assert_eq!(vms[0].definition, full());
        assert_eq!(vms[0].state, st);
        // A name that is not a VM name never becomes a path.
        assert!(vm_dir(tmp.path(), "../../etc").is_err());
        // A run the host never saw end (the host was killed): reported as killed.
        let running = PersistedState {
            last_exit: Some(ExitInfo::PoweredOff { status: 0 }),
            started_at: Some(200),
            ended_at: Some(100),
            boots: 2,
            nic_macs: Vec::new(),
        };
        save_state(&dir, &running).unwrap();
        let loaded = load_state(&dir);
        assert_eq!(loaded.last_exit, Some(ExitInfo::Killed));
        assert_eq!(
            (loaded.started_at, loaded.ended_at, loaded.boots),
            (Some(200), None, 2)
        );
    }
}
