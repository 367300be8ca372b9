//! VM disks as the host sees them: the form a disk path is stored in.
//!
//! The *stored* path ([`normalize_disk_path`]) is what the user wrote, made tidy: `.` and
//! `..` resolved, the user's symlinks kept (a symlink the user chose, e.g. to move disks
//! without editing VMs, keeps working).

use std::path::{Component, Path, PathBuf};

use vmk_machine::datastore::DsPath;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
