//! Unpacking .deb files into a staging root, and the merged-/usr layout.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// `dpkg-deb -x DEB ROOT`: unpacks the package's files (no maintainer scripts run).
pub fn extract(deb: &Path, root: &Path) -> Result<(), String> {
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dpkg-deb -x {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Directories that are symlinks into /usr on a merged-/usr system (Debian since bookworm).
const MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Moves any top-level `bin`, `sbin`, `lib*` directories into `usr/` and replaces them with
/// symlinks (`bin -> usr/bin`), as on an installed Debian system, so that paths like
/// `/lib/ld-linux-riscv64-lp64d.so.1` and `/bin/sh` resolve. `bin`, `sbin` and `lib` are
/// always created. Where a file exists in both places, the one under `usr/` wins; the names
/// of such dropped files are returned.
pub fn merge_usr(root: &Path) -> io::Result<Vec<String>> {
    let mut dropped = Vec::new();
    for d in MERGED {
        let top = root.join(d);
        let usr = root.join("usr").join(d);
        let meta = std::fs::symlink_metadata(&top);
        match meta {
            Ok(m) if m.file_type().is_symlink() => continue,
            Ok(m) if m.is_dir() => {
                std::fs::create_dir_all(&usr)?;
                merge_dir(&top, &usr, d, &mut dropped)?;
                std::fs::remove_dir_all(&top)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is a file, not a directory", top.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !["bin", "sbin", "lib"].contains(d) && !usr.is_dir() {
                    continue;
                }
                std::fs::create_dir_all(&usr)?;
            }
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(format!("usr/{d}"), &top)?;
    }
    Ok(dropped)
}

fn merge_dir(from: &Path, to: &Path, rel: &str, dropped: &mut Vec<String>) -> io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let name = format!("{rel}/{}", e.file_name().to_string_lossy());
        let src_dir = e.file_type()?.is_dir();
        match std::fs::symlink_metadata(&dst) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => std::fs::rename(&src, &dst)?,
            Err(err) => return Err(err),
            Ok(m) if m.is_dir() && src_dir => merge_dir(&src, &dst, &name, dropped)?,
            Ok(_) => dropped.push(name),
        }
    }
    Ok(())
}

/// Documentation that is of no use in a guest initrd.
pub const PRUNED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/bug",
];

/// Removes [`PRUNED`] directories.
pub fn prune(root: &Path) -> io::Result<()> {
    for p in PRUNED {
        let path = root.join(p);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_usr_moves_and_links() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::write(r.join("bin/tool"), "x").unwrap();
        std::fs::create_dir_all(r.join("lib/riscv64-linux-gnu")).unwrap();
        std::fs::write(r.join("lib/riscv64-linux-gnu/libx.so"), "l").unwrap();
        std::fs::create_dir_all(r.join("usr/lib/riscv64-linux-gnu")).unwrap();
        std::fs::write(r.join("usr/lib/riscv64-linux-gnu/liby.so"), "y").unwrap();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/tool"), "usr wins").unwrap();
        let dropped = merge_usr(r).unwrap();
        assert_eq!(dropped, vec!["bin/tool"]);
        for d in ["bin", "sbin", "lib"] {
            assert_eq!(
                std::fs::read_link(r.join(d)).unwrap(),
                Path::new(&format!("usr/{d}"))
            );
        }
        assert!(!r.join("lib64").exists());
        assert_eq!(
            std::fs::read_to_string(r.join("bin/tool")).unwrap(),
            "usr wins"
        );
        assert!(r.join("lib/riscv64-linux-gnu/libx.so").is_file());
        assert!(r.join("lib/riscv64-linux-gnu/liby.so").is_file());
        // Idempotent.
        assert!(merge_usr(r).unwrap().is_empty());
    }
}
