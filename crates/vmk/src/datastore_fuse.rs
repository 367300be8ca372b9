//! `vmk datastore mount DEV DIR`: a datastore as a read-only FUSE file system (crate
//! `fuser`, its pure-Rust mount: no libfuse), so that `ls`, `cp`, `sha256sum` and friends
//! can browse it.
//!
//! The volume is opened without joining it ([`Datastore::open_read_only`]: no heartbeat slot,
//! no locks, no writes), so it works next to running hosts without taking a host ID. The
//! price: a file that a host is writing right now may read inconsistently (as with any
//! lock-free reader); `vmk datastore cp` takes the shared lock instead.
//!
//! FUSE inode numbers are the datastore's inode numbers (the root is 1 in both); the path of
//! every inode the kernel has looked up is remembered, because the datastore's API is by
//! path.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};
use vmk_vmfs::{Datastore, LockMode, Stat, VmfsError, VmfsFile};

use crate::error::CmdError;

/// How long the kernel may cache attributes and entries: short, since hosts change the
/// volume under us.
const TTL: Duration = Duration::from_secs(1);

struct DsFs {
    ds: Datastore,
    /// inode → path (`/` for the root).
    paths: HashMap<u64, String>,
    files: HashMap<u64, VmfsFile>,
    next_fh: u64,
}

fn errno(e: &VmfsError) -> i32 {
    match e {
        VmfsError::NotFound(_) => libc::ENOENT,
        VmfsError::NotADirectory(_) => libc::ENOTDIR,
        VmfsError::IsADirectory(_) => libc::EISDIR,
        VmfsError::InvalidName { .. } => libc::EINVAL,
        VmfsError::Locked { .. } => libc::EBUSY,
        _ => libc::EIO,
    }
}

fn attr(s: &Stat) -> FileAttr {
    let t = UNIX_EPOCH + Duration::from_millis(s.mtime_ms);
    FileAttr {
        ino: s.inum as u64,
        size: s.size,
        blocks: s.allocated.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: if s.is_dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if s.is_dir { 0o555 } else { 0o444 },
        nlink: if s.is_dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

impl DsFs {
    fn stat(&mut self, path: &str) -> Result<FileAttr, i32> {
        let s = self.ds.stat(path).map_err(|e| errno(&e))?;
        self.paths.insert(s.inum as u64, path.to_string());
        Ok(attr(&s))
    }
}

impl Filesystem for DsFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(dir) = self.paths.get(&parent).cloned() else {
            return reply.error(libc::ENOENT);
        };
        match self.stat(&join(&dir, &name.to_string_lossy())) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let Some(path) = self.paths.get(&ino).cloned() else {
            return reply.error(libc::ENOENT);
        };
        match self.stat(&path) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(path) = self.paths.get(&ino).cloned() else {
            return reply.error(libc::ENOENT);
        };
        let list = match self.ds.list(&path) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut entries = vec![
            (ino, FileType::Directory, ".".to_string()),
            (ino, FileType::Directory, "..".to_string()),
        ];
        for e in list {
            self.paths.insert(e.stat.inum as u64, join(&path, &e.name));
            let kind = if e.stat.is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            entries.push((e.stat.inum as u64, kind, e.name));
        }
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, i as i64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        let Some(path) = self.paths.get(&ino).cloned() else {
            return reply.error(libc::ENOENT);
        };
        match self.ds.open_file(&path, LockMode::SharedRead) {
            Ok(f) => {
                self.next_fh += 1;
                self.files.insert(self.next_fh, f);
                reply.opened(self.next_fh, 0);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(f) = self.files.get_mut(&fh) else {
            return reply.error(libc::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        match f.read_at(&mut buf, offset.max(0) as u64) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.files.remove(&fh);
        reply.ok();
    }
}

/// Mounts DEV read-only on DIR and serves it until DIR is unmounted (`umount DIR`) or the
/// process is interrupted (which unmounts it).
pub fn mount(dev: &str, dir: &Path) -> Result<(), CmdError> {
    let ds = Datastore::open_read_only(vmk_vmfs::open_device(dev, true)?)?;
    let label = ds.info().label;
    let fs = DsFs {
        ds,
        paths: HashMap::from([(1, "/".to_string())]),
        files: HashMap::new(),
        next_fh: 0,
    };
    let opts = [
        MountOption::RO,
        MountOption::FSName(format!("vmk-datastore:{label}")),
        MountOption::Subtype("vmk".into()),
        MountOption::DefaultPermissions,
    ];
    let session = fuser::spawn_mount2(fs, dir, &opts).map_err(|e| {
        format!(
            "cannot mount {dev} on {}: {e} (FUSE needs /dev/fuse and root, or fusermount3 \
             from the fuse3 package)",
            dir.display()
        )
    })?;
    eprintln!(
        "vmk: datastore {label:?} ({dev}) mounted read-only on {}; `umount {}` or Ctrl-C \
         unmounts it",
        dir.display(),
        dir.display()
    );
    // Until the kernel ends the session (umount) or a signal asks us to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_flag(sig, stop.clone());
    }
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Dropping the session unmounts (when still mounted).
    drop(session);
    Ok(())
}

static STOP: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(s) = STOP.get() {
        s.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Sets `flag` when `sig` arrives (an async-signal-safe atomic store).
fn signal_flag(sig: libc::c_int, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let _ = STOP.set(flag);
    // SAFETY: installs a handler that only does an atomic store.
    unsafe {
        libc::signal(sig, on_signal as *const () as libc::sighandler_t);
    }
}
