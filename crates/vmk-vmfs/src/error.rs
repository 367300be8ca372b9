//! Errors: each says what is wrong, where (structure and byte offset) and what to do.

use std::fmt;

/// A lock mode, as shown in errors and `info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// One host reads and writes (and changes the allocation).
    Exclusive,
    /// Any number of hosts read; nobody writes.
    SharedRead,
    /// Any number of hosts read and write the data of a fully allocated (eager-zeroed)
    /// file; nobody changes its size or allocation.
    MultiWriter,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Exclusive => "exclusive",
            LockMode::SharedRead => "shared read-only",
            LockMode::MultiWriter => "multi-writer",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmfsError {
    #[error("{device}: I/O error {op} {len} bytes at offset {offset:#x}: {source}")]
    Io {
        device: String,
        op: &'static str,
        offset: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Open(String),
    #[error("not a vmk datastore: {0}")]
    NotVmfs(String),
    #[error("corrupt {what} at offset {offset:#x}: {problem}; run `vmk datastore fsck` (with --repair when no host has it mounted)")]
    Corrupt {
        what: &'static str,
        offset: u64,
        problem: String,
    },
    /// A structure reached through a pointer is not what the pointer's owner says it is,
    /// although this host holds the lock that keeps every other host from changing it.
    /// Under a valid lock that cannot come from another host's normal work: it is a bug
    /// (some host wrote metadata it did not own, or freed a block another could still
    /// reach), or damage to the volume. Distinct from [`VmfsError::Corrupt`] so it is never
    /// mistaken for a routine fsck case.
    #[error("BUG: {what} at offset {offset:#x} is not what it must be ({problem}), although this host holds {lock}, so no other host may change it. This is a bug in vmk (a host changed metadata it did not own, or freed a block another host could still reach) or damage to the volume: please report it with this message; `vmk datastore fsck` tells whether the volume itself is damaged")]
    Inconsistent {
        what: &'static str,
        offset: u64,
        problem: String,
        lock: String,
    },
    #[error("{what} changed on each of {attempts} lock-free reads (another host is changing it right now); try again")]
    Changing { what: String, attempts: u32 },
    #[error("{what}: locked {mode} by host {host} since {since}; it is released when host {host} closes it, or taken over once host {host} has been dead (no heartbeat) for the lease timeout")]
    Locked {
        what: String,
        host: u32,
        mode: LockMode,
        since: String,
    },
    #[error("host ID {host} is in use by another live host (its heartbeat is being renewed); choose another --host-id")]
    HostIdInUse { host: u32 },
    #[error("no free host ID: all 32 heartbeat slots are held by live hosts")]
    NoFreeHostId,
    #[error("host {host} lost its heartbeat lease ({why}); it stopped all writes to the volume: unmount and mount again")]
    LeaseLost { host: u32, why: String },
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("{0}: directory not empty")]
    DirectoryNotEmpty(String),
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no space left on the datastore: no free {what} in any resource cluster that is not locked by a live host")]
    NoSpace { what: &'static str },
    #[error("file too big: {size} bytes is more than the maximum file size {max} bytes for this block size")]
    FileTooBig { size: u64, max: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: opened {mode}; this operation needs {needs}")]
    WrongMode {
        what: String,
        mode: LockMode,
        needs: &'static str,
    },
    #[error("the datastore is opened read-only (no heartbeat, no locks); mount it with a host ID to change it")]
    ReadOnly,
    #[error("volume in use: host {host} is alive (its heartbeat changed during the last {waited_ms} ms); unmount it everywhere before an offline fsck --repair")]
    InUse { host: u32, waited_ms: u64 },
}

pub type Result<T> = std::result::Result<T, VmfsError>;

pub(crate) fn corrupt(what: &'static str, offset: u64, problem: impl Into<String>) -> VmfsError {
    VmfsError::Corrupt {
        what,
        offset,
        problem: problem.into(),
    }
}

/// What a failed check of a structure means when the reader holds `lock`: a
/// [`VmfsError::Corrupt`] becomes [`VmfsError::Inconsistent`] (no other host may have
/// changed it); other errors pass through.
pub(crate) fn under_lock(e: VmfsError, lock: impl FnOnce() -> String) -> VmfsError {
    match e {
        VmfsError::Corrupt {
            what,
            offset,
            problem,
        } => VmfsError::Inconsistent {
            what,
            offset,
            problem,
            lock: lock(),
        },
        e => e,
    }
}
