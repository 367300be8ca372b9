//! VM disks as the host sees them: the form a disk path is stored in, and which VM holds a
//! disk (one VM per disk; read-only disks may be shared by VMs that all attach them
//! read-only).
//!
//! Two spellings of a path are handled differently on purpose:
//! - the *stored* path ([`normalize_disk_path`]) is what the user wrote, made tidy: `.` and
//!   `..` resolved, the user's symlinks kept (a symlink the user chose, e.g. to move disks
//!   without editing VMs, keeps working);
//! - the *identity* of a disk ([`DiskKey`]) is the canonical path (every symlink and `..`
//!   resolved by the file system), because "is this the same file" is what the one-VM-per-
//!   disk rule needs: `/vms/a/../disks/d.vmdk` and a symlink to it are one disk.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use vmk_machine::datastore::DsPath;

use vmk_api::model::{DiskDef, VmDefinition};

/// `p` as the host stores it.
///
/// - A datastore path `[ds] dir//x/./y.vmdk` becomes `[ds] dir/x/y.vmdk` (the datastore's
///   own path rules; a malformed one is returned unchanged for validation to refuse).
/// - A relative host path is returned unchanged (validation refuses it: the host does not
///   run in the user's directory).
/// - An absolute host path has `.` and empty components dropped and each `..` resolved:
///   lexically (drop the previous component) when that component is not a symlink, else
///   by canonicalising the path up to it first, because `link/..` is the parent of the
///   link's *target*, not the directory holding the link. Other symlinks are kept.
pub fn normalize_disk_path(p: &Path) -> PathBuf {
    if let Some(ds) = DsPath::from_path(p) {
        return match ds {
            Ok(ds) => match vmk_vmfs::parse_path(&ds.path) {
                Ok(parts) => PathBuf::from(format!("[{}] {}", ds.datastore, parts.join("/"))),
                Err(_) => p.to_path_buf(),
            },
            Err(_) => p.to_path_buf(),
        };
    }
    if !p.is_absolute() {
        return p.to_path_buf();
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                let is_link = std::fs::symlink_metadata(&out)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                if is_link {
                    if let Ok(real) = std::fs::canonicalize(&out) {
                        out = real;
                    }
                }
                // `/..` is `/`.
                out.pop();
            }
            Component::Normal(s) => out.push(s),
        }
    }
    out
}

/// What makes two disk paths the same disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiskKey {
    /// A host file by its canonical path (symlinks and `..` resolved by the file system).
    File(PathBuf),
    /// A file on a datastore: the datastore's name and the path's components.
    Datastore { name: String, path: Vec<String> },
}

impl DiskKey {
    /// The key of a disk path; `None` for a path that names nothing usable (a malformed
    /// datastore path, a relative path): validation refuses those.
    pub fn of(p: &Path) -> Option<DiskKey> {
        if let Some(ds) = DsPath::from_path(p) {
            let ds = ds.ok()?;
            let path = vmk_vmfs::parse_path(&ds.path).ok()?;
            return Some(DiskKey::Datastore {
                name: ds.datastore,
                path,
            });
        }
        if !p.is_absolute() {
            return None;
        }
        // A file that cannot be resolved now (gone, no permission) is compared as written,
        // normalised: its VM cannot start anyway, and the message says why.
        Some(DiskKey::File(
            std::fs::canonicalize(p).unwrap_or_else(|_| normalize_disk_path(p)),
        ))
    }

    /// The canonical path shown in messages when it differs from what the user wrote.
    fn shown(&self) -> OsString {
        match self {
            DiskKey::File(p) => p.as_os_str().to_owned(),
            DiskKey::Datastore { name, path } => format!("[{name}] {}", path.join("/")).into(),
        }
    }
}

/// A disk of one VM that another VM also has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskClash {
    /// The index of the disk in the VM that asked.
    pub disk: usize,
    /// The disk's path as that VM names it.
    pub path: PathBuf,
    /// The VM that has it.
    pub holder: String,
    /// The path as the holder names it.
    pub holder_path: PathBuf,
}

impl DiskClash {
    /// "disk 0 '/d/a.vmdk' is VM 'web1''s disk (as '/d/link.vmdk', the same file ...)".
    pub fn describe(&self) -> String {
        let same = if self.path == self.holder_path {
            String::new()
        } else {
            let key = DiskKey::of(&self.path)
                .map(|k| k.shown())
                .unwrap_or_default();
            format!(
                " (as '{}'; both are {})",
                self.holder_path.display(),
                Path::new(&key).display()
            )
        };
        format!(
            "disk {} '{}' is a disk of VM '{}'{same}",
            self.disk,
            self.path.display(),
            self.holder
        )
    }
}

/// Whether two attachments of one disk conflict: only read-only ones may share.
fn conflicts(a: &DiskDef, b: &DiskDef) -> bool {
    !(a.read_only && b.read_only)
}

/// The first disk of `def` that one of `others` (name, definition) also has, in a way that
/// conflicts (either side writable). `def`'s own entry in `others` is skipped by name.
pub fn find_clash<'a>(
    def: &VmDefinition,
    others: impl IntoIterator<Item = (&'a str, &'a VmDefinition)>,
) -> Option<DiskClash> {
    let mine: Vec<(usize, &DiskDef, DiskKey)> = def
        .disks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| DiskKey::of(&d.path).map(|k| (i, d, k)))
        .collect();
    if mine.is_empty() {
        return None;
    }
    for (name, other) in others {
        if name == def.name {
            continue;
        }
        for od in &other.disks {
            let Some(ok) = DiskKey::of(&od.path) else {
                continue;
            };
            if let Some((i, d, _)) = mine.iter().find(|(_, d, k)| *k == ok && conflicts(d, od)) {
                return Some(DiskClash {
                    disk: *i,
                    path: d.path.clone(),
                    holder: name.to_string(),
                    holder_path: od.path.clone(),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::def;

    #[test]
    fn paths_are_normalised_keeping_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        // Canonical root: the temp dir itself may be behind a symlink.
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(root.join("vms/web1")).unwrap();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::fs::create_dir(root.join("disks")).unwrap();
        std::fs::write(root.join("disks/a.vmdk"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("real/sub"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(root.join("disks"), root.join("dl")).unwrap();
        let n = |s: &str| normalize_disk_path(&root.join(s));
        assert_eq!(n("vms/../disks/a.vmdk"), root.join("disks/a.vmdk"));
        assert_eq!(
            n("vms/web1/./../../disks//a.vmdk"),
            root.join("disks/a.vmdk")
        );
        // A symlink the user names is kept...
        assert_eq!(n("dl/a.vmdk"), root.join("dl/a.vmdk"));
        // ... but `link/..` is the parent of its target, as the kernel resolves it.
        assert_eq!(n("link/../x.vmdk"), root.join("real/x.vmdk"));
        assert_eq!(
            normalize_disk_path(Path::new("/../../x")),
            PathBuf::from("/x")
        );
        assert_eq!(
            normalize_disk_path(Path::new("rel/../x")),
            PathBuf::from("rel/../x")
        );
        assert_eq!(
            normalize_disk_path(Path::new("[ds1]  /vm1//./disk.vmdk")),
            PathBuf::from("[ds1] vm1/disk.vmdk")
        );
        assert_eq!(
            normalize_disk_path(Path::new("[ds1 vm1/disk.vmdk")),
            PathBuf::from("[ds1 vm1/disk.vmdk")
        );
    }

    #[test]
    fn clashes_by_canonical_path_and_datastore_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("disks")).unwrap();
        std::fs::write(root.join("disks/a.vmdk"), b"x").unwrap();
        std::fs::write(root.join("disks/b.vmdk"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("disks/a.vmdk"), root.join("alias.vmdk")).unwrap();
        let k = root.join("k");
        let with = |name: &str, disks: &[(&Path, bool)]| {
            let mut d = def(name, &k);
            d.disks = disks
                .iter()
                .map(|(p, ro)| DiskDef {
                    path: p.to_path_buf(),
                    read_only: *ro,
                    serial: None,
                })
                .collect();
            d
        };
        let a = root.join("disks/a.vmdk");
        let b = root.join("disks/b.vmdk");
        let web1 = with("web1", &[(&b, false), (&a, false)]);
        let alias = root.join("alias.vmdk");
        let web2 = with("web2", &[(&alias, false)]);
        let c = find_clash(&web2, [("web1", &web1)]).expect("same file through a symlink");
        assert_eq!((c.disk, c.holder.as_str()), (0, "web1"));
        assert_eq!(c.holder_path, a);
        let msg = c.describe();
        assert!(
            msg.contains("disk 0 '") && msg.contains("alias.vmdk' is a disk of VM 'web1'"),
            "{msg}"
        );
        assert!(msg.contains("a.vmdk"), "{msg}");
        // Itself (by name) does not count; another file does not clash.
        assert_eq!(find_clash(&web1, [("web1", &web1)]), None);
        let web3 = with("web3", &[(&root.join("disks/../disks/b.vmdk"), false)]);
        assert_eq!(find_clash(&web3, [("web2", &web2)]), None);
        assert_eq!(find_clash(&web3, [("web1", &web1)]).unwrap().disk, 0);
        // Read-only attachments share; a writer does not share with a reader.
        let ro1 = with("ro1", &[(&a, true)]);
        let ro2 = with("ro2", &[(&alias, true)]);
        assert_eq!(find_clash(&ro2, [("ro1", &ro1)]), None);
        assert_eq!(find_clash(&ro2, [("web1", &web1)]).unwrap().holder, "web1");
        // Datastore disks: by datastore name and path.
        let ds = |name: &str, p: &str| {
            let mut d = def(name, &k);
            d.disks = vec![DiskDef {
                path: p.into(),
                read_only: false,
                serial: None,
            }];
            d
        };
        let d1 = ds("d1", "[ds1] vm1/disk.vmdk");
        assert_eq!(
            find_clash(&ds("d2", "[ds1] /vm1//disk.vmdk"), [("d1", &d1)])
                .unwrap()
                .holder,
            "d1"
        );
        assert_eq!(
            find_clash(&ds("d3", "[ds2] vm1/disk.vmdk"), [("d1", &d1)]),
            None
        );
        assert_eq!(
            find_clash(&ds("d4", "[ds1] vm2/disk.vmdk"), [("d1", &d1)]),
            None
        );
    }
}
