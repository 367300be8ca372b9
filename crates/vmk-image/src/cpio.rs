//! A writer (and a reader, for checks) of the `newc` cpio format, the one format the Linux
//! kernel unpacks as an initramfs.
//!
//! The format is small (a 110-byte ASCII header, the name, the data, each padded to 4 bytes),
//! and writing it here rather than through a crate lets the image builder control every field
//! that matters for a reproducible initrd: owners are always root, inode numbers are
//! sequential instead of leaking the host's, device nodes (`/dev/console`) can be written
//! without creating them on the host (which needs root), and file data is streamed from disk
//! without ever holding the whole archive in memory.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

/// Streams `newc` entries into `W`.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
}

struct Header<'a> {
    name: &'a [u8],
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            offset: 0,
        }
    }

    /// Bytes written so far (uncompressed archive size).
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        if h.name.is_empty() || h.name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "invalid cpio entry name {:?}",
                    String::from_utf8_lossy(h.name)
                ),
            ));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = h.name.len() + 1;
        let fields = [
            ino,
            h.mode,
            0, // uid: everything in the initrd belongs to root
            0, // gid
            h.nlink,
            h.mtime,
            h.size,
            0, // devmajor
            0, // devminor
            h.rdev_major,
            h.rdev_minor,
            u32::try_from(namesize).map_err(|_| too_big("name", h.name))?,
            0, // check
        ];
        let mut buf = Vec::with_capacity(HEADER_LEN + namesize + 3);
        buf.extend_from_slice(MAGIC);
        for f in fields {
            buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        buf.extend_from_slice(h.name);
        buf.push(0);
        buf.resize(buf.len() + pad4(buf.len()), 0);
        self.write_raw(&buf)
    }

    fn write_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.offset += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = pad4(self.offset as usize);
        self.write_raw(&[0u8; 3][..n])
    }

    /// A directory; `perm` holds the permission bits (e.g. 0o755).
    pub fn dir(&mut self, name: &[u8], perm: u32, mtime: u32) -> io::Result<()> {
        self.header(&Header {
            name,
            mode: S_IFDIR | (perm & 0o7777),
            nlink: 2,
            mtime,
            size: 0,
            rdev_major: 0,
            rdev_minor: 0,
        })
    }

    /// A regular file of exactly `size` bytes read from `data`.
    pub fn file(
        &mut self,
        name: &[u8],
        perm: u32,
        mtime: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let size32 = u32::try_from(size).map_err(|_| too_big("file", name))?;
        self.header(&Header {
            name,
            mode: S_IFREG | (perm & 0o7777),
            nlink: 1,
            mtime,
            size: size32,
            rdev_major: 0,
            rdev_minor: 0,
        })?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        self.offset += copied;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} shrank while being archived ({copied} of {size} bytes)",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        self.pad()
    }

    /// A regular file from memory.
    pub fn file_bytes(
        &mut self,
        name: &[u8],
        perm: u32,
        mtime: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let mut r = data;
        self.file(name, perm, mtime, data.len() as u64, &mut r)
    }

    pub fn symlink(&mut self, name: &[u8], target: &[u8], mtime: u32) -> io::Result<()> {
        let size = u32::try_from(target.len()).map_err(|_| too_big("symlink", name))?;
        self.header(&Header {
            name,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            mtime,
            size,
            rdev_major: 0,
            rdev_minor: 0,
        })?;
        self.write_raw(target)?;
        self.pad()
    }

    pub fn char_device(
        &mut self,
        name: &[u8],
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.header(&Header {
            name,
            mode: S_IFCHR | (perm & 0o7777),
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev_major: major,
            rdev_minor: minor,
        })
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(&Header {
            name: TRAILER.as_bytes(),
            mode: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev_major: 0,
            rdev_minor: 0,
        })?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Archives the tree under `root` (not `root` itself), in sorted order so that every
    /// directory precedes its contents and the archive is reproducible. Returns the paths of
    /// entries skipped because they are neither directories, regular files nor symlinks.
    pub fn tree(&mut self, root: &Path) -> io::Result<Vec<String>> {
        let mut skipped = Vec::new();
        self.tree_rec(root, Vec::new(), &mut skipped)?;
        Ok(skipped)
    }

    fn tree_rec(
        &mut self,
        dir: &Path,
        prefix: Vec<u8>,
        skipped: &mut Vec<String>,
    ) -> io::Result<()> {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| with_path(e, dir))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| with_path(e, dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let mut name = prefix.clone();
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(entry.file_name().as_bytes());
            let meta = std::fs::symlink_metadata(&path).map_err(|e| with_path(e, &path))?;
            let mtime = u32::try_from(meta.mtime()).unwrap_or(0);
            let perm = meta.mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.dir(&name, perm, mtime)?;
                self.tree_rec(&path, name, skipped)?;
            } else if ft.is_file() {
                let mut f = std::fs::File::open(&path).map_err(|e| with_path(e, &path))?;
                self.file(&name, perm, mtime, meta.len(), &mut f)
                    .map_err(|e| with_path(e, &path))?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| with_path(e, &path))?;
                self.symlink(&name, target.as_os_str().as_bytes(), mtime)?;
            } else {
                skipped.push(String::from_utf8_lossy(&name).into_owned());
            }
        }
        Ok(())
    }
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn too_big(what: &str, name: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{what} {} is too large for a newc cpio archive (4 GiB limit)",
            String::from_utf8_lossy(name)
        ),
    )
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// One entry read back from a `newc` archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// File contents, or the target of a symlink.
    pub data: Vec<u8>,
}

impl CpioEntry {
    pub fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// Parses a whole (uncompressed) `newc` archive, up to its trailer.
pub fn read_newc(mut data: &[u8]) -> Result<Vec<CpioEntry>, String> {
    let mut out = Vec::new();
    let total = data.len();
    loop {
        let at = total - data.len();
        if data.len() < HEADER_LEN {
            return Err(format!("truncated cpio header at offset {at}"));
        }
        if &data[..6] != MAGIC {
            return Err(format!("bad cpio magic at offset {at}"));
        }
        let mut fields = [0u32; 13];
        for (i, f) in fields.iter_mut().enumerate() {
            let s = &data[6 + i * 8..14 + i * 8];
            let s = std::str::from_utf8(s).map_err(|_| format!("bad header at offset {at}"))?;
            *f = u32::from_str_radix(s, 16).map_err(|_| format!("bad header at offset {at}"))?;
        }
        let namesize = fields[11] as usize;
        let filesize = fields[6] as usize;
        let name_end = HEADER_LEN + namesize;
        let data_start = name_end + pad4(name_end);
        let data_end = data_start + filesize;
        if namesize == 0 || data.len() < data_end {
            return Err(format!("truncated cpio entry at offset {at}"));
        }
        let name = String::from_utf8_lossy(&data[HEADER_LEN..name_end - 1]).into_owned();
        if name == TRAILER {
            return Ok(out);
        }
        out.push(CpioEntry {
            name,
            mode: fields[1],
            uid: fields[2],
            gid: fields[3],
            nlink: fields[4],
            mtime: fields[5],
            rdev_major: fields[9],
            rdev_minor: fields[10],
            data: data[data_start..data_end].to_vec(),
        });
        let next = (data_end + pad4(data_end)).min(data.len());
        data = &data[next..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample_tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir_all(r.join("empty")).unwrap();
        std::fs::write(r.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            r.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        // Sizes around the 4-byte padding boundary.
        for n in 0..5 {
            std::fs::write(r.join(format!("f{n}")), vec![b'a' + n as u8; n]).unwrap();
        }
        std::fs::write(
            r.join("big"),
            (0..200_000u32).map(|i| i as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        t
    }

    #[test]
    fn round_trip_through_the_reader() {
        let t = sample_tree();
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.tree(t.path()).unwrap().is_empty());
        w.char_device(b"dev/console", 0o600, 5, 1).unwrap();
        let size = w.bytes_written();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.len() as u64 > size);
        let entries = read_newc(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "big",
                "bin",
                "empty",
                "f0",
                "f1",
                "f2",
                "f3",
                "f4",
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "dev/console"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("bin").kind(), S_IFLNK);
        assert_eq!(get("bin").data, b"usr/bin");
        assert_eq!(get("usr/bin").kind(), S_IFDIR);
        assert_eq!(get("usr/bin/tool").mode, S_IFREG | 0o4755);
        assert_eq!(get("usr/bin/tool").data, b"#!/bin/sh\necho hi\n");
        assert_eq!(get("f3").data, b"ddd");
        assert_eq!(get("big").data.len(), 200_000);
        assert_eq!(get("big").data[1000], (1000u32 % 256) as u8);
        let c = get("dev/console");
        assert_eq!((c.kind(), c.rdev_major, c.rdev_minor), (S_IFCHR, 5, 1));
        assert!(entries.iter().all(|e| e.uid == 0 && e.gid == 0));
        // Inode numbers are unique.
        let mut inos: Vec<u32> = Vec::new();
        let mut off = 0;
        while off + 14 <= bytes.len() && &bytes[off..off + 6] == MAGIC {
            let ino =
                u32::from_str_radix(std::str::from_utf8(&bytes[off + 6..off + 14]).unwrap(), 16)
                    .unwrap();
            inos.push(ino);
            let namesize = usize::from_str_radix(
                std::str::from_utf8(&bytes[off + 94..off + 102]).unwrap(),
                16,
            )
            .unwrap();
            let filesize =
                usize::from_str_radix(std::str::from_utf8(&bytes[off + 54..off + 62]).unwrap(), 16)
                    .unwrap();
            let d = off + HEADER_LEN + namesize;
            let d = d + pad4(d);
            off = d + filesize + pad4(d + filesize);
        }
        let n = inos.len();
        inos.sort();
        inos.dedup();
        assert_eq!(inos.len(), n);
    }

    /// GNU cpio, where the host has it, must unpack the archive to the same tree.
    #[test]
    fn host_cpio_extracts_it() {
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("host has no cpio; skipped (apt-get install cpio)");
            return;
        }
        let t = sample_tree();
        let mut w = CpioWriter::new(Vec::new());
        w.tree(t.path()).unwrap();
        let bytes = w.finish().unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(out.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        let o = out.path();
        assert_eq!(
            std::fs::read(o.join("usr/bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read_link(o.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(
            std::fs::read(o.join("big")).unwrap(),
            std::fs::read(t.path().join("big")).unwrap()
        );
        assert_eq!(std::fs::read(o.join("f0")).unwrap(), b"");
        assert!(o.join("empty").is_dir());
        let src_mtime = std::fs::metadata(t.path().join("f2")).unwrap().mtime();
        assert_eq!(std::fs::metadata(o.join("f2")).unwrap().mtime(), src_mtime);
    }

    #[test]
    fn bad_names_and_archives_are_rejected() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file_bytes(b"", 0o644, 0, b"x").is_err());
        assert!(w.file_bytes(b"a\0b", 0o644, 0, b"x").is_err());
        assert!(read_newc(b"070701").is_err());
        assert!(read_newc(&[b'x'; 200]).is_err());
        let mut w = CpioWriter::new(Vec::new());
        w.file_bytes(b"a", 0o644, 0, b"hello").unwrap();
        let bytes = w.finish().unwrap();
        assert!(
            read_newc(&bytes[..bytes.len() - 130]).is_err(),
            "no trailer"
        );
    }
}
