//! The file system's public face: [`Datastore`] (create, mount, files and directories,
//! volume-wide operations). The metadata operations it is made of are in `inner.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::device::{BlockDevice, Dev};
use crate::error::{LockMode, Result, VmfsError};
use crate::file::{FileOptions, VmfsFile};
use crate::format::*;
use crate::inner::{locked, parse_path, Host, Inner, Stat};
use crate::lease::{self, Heartbeat, HostState, Liveness};
use crate::paxos::Locks;
use crate::volume::{Fence, Volume};

/// Parameters of a new volume.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub label: String,
    /// 1, 2, 4 or 8 MiB.
    pub block_size: u64,
    /// How often a host renews its heartbeat.
    pub renew_ms: u32,
    /// A host whose heartbeat has not changed for this long is dead.
    pub lease_timeout_ms: u32,
    /// The longest a single I/O may take (the fencing margin).
    pub io_timeout_ms: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            label: "datastore".into(),
            block_size: 1 << 20,
            renew_ms: 2000,
            lease_timeout_ms: 16000,
            io_timeout_ms: 1000,
        }
    }
}

/// How this host mounts a volume.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// 1..=32; `None` picks the first slot that is free or cleanly unmounted.
    pub host_id: Option<u32>,
    /// fdatasync at every journal commit point and on [`VmfsFile::flush`]. Turning it off
    /// survives a process crash (the page cache keeps what was written) but not a power loss.
    pub sync: bool,
    /// Shown to other hosts (`info`).
    pub who: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            host_id: None,
            sync: true,
            who: default_who(),
        }
    }
}

fn default_who() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{} pid {}", host.trim(), std::process::id())
}

/// What `info` shows.
#[derive(Clone, Debug)]
pub struct VolumeInfo {
    pub uuid: String,
    pub label: String,
    pub version: u32,
    pub created: String,
    pub volume_size: u64,
    pub block_size: u64,
    pub sub_block_size: u64,
    pub resource_clusters: u32,
    pub blocks: u64,
    pub sub_blocks: u64,
    pub inodes: u64,
    pub max_file_size: u64,
    pub renew_ms: u32,
    pub lease_timeout_ms: u32,
    pub io_timeout_ms: u32,
}

/// Space use (`df`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub blocks: u64,
    pub free_blocks: u64,
    pub sub_blocks: u64,
    pub free_sub_blocks: u64,
    pub inodes: u64,
    pub free_inodes: u64,
    pub block_size: u64,
}

/// A heartbeat slot as seen by this host.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub host: u32,
    pub state: &'static str,
    pub generation: u64,
    pub who: String,
    pub last_renewal: String,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirListing {
    pub name: String,
    pub stat: Stat,
}

/// A mounted datastore. Cheap to share between threads (`&self` everywhere).
pub struct Datastore {
    pub(crate) inner: Arc<Inner>,
}

impl Datastore {
    /// Formats `dev` as a new volume (all of it). Everything on it is lost.
    pub fn create(dev: Box<dyn BlockDevice>, opts: &CreateOptions) -> Result<VolumeInfo> {
        if opts.label.len() > LABEL_MAX || opts.label.contains('\0') {
            return Err(VmfsError::Invalid(format!(
                "label {:?} is longer than {LABEL_MAX} bytes",
                opts.label
            )));
        }
        let dev = Dev { inner: dev };
        let geo = Geometry::plan(dev.size(), opts.block_size)?;
        let hdr = VolumeHeader {
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            label: opts.label.clone(),
            created_ms: now_ms(),
            renew_ms: opts.renew_ms,
            lease_timeout_ms: opts.lease_timeout_ms,
            io_timeout_ms: opts.io_timeout_ms,
            geo: geo.clone(),
        };
        let enc = hdr.encode();
        // Validates the timeouts the same way a mount will.
        VolumeHeader::decode(&enc, dev.size())?;
        // First make the old header unrecognizable, so a crash during create leaves no
        // half-new volume that mounts.
        dev.write(&vec![0u8; PAGE], 0)?;
        dev.flush()?;
        // Zero every structure that "all zeros" means "empty" for: heartbeat, journals,
        // locks, inodes. Old contents (a previous volume) must not pass for live records.
        let zero = vec![0u8; 1 << 20];
        let zero_range = |start: u64, end: u64| -> Result<()> {
            let mut o = start;
            while o < end {
                let n = ((end - o) as usize).min(zero.len());
                dev.write(&zero[..n], o)?;
                o += n as u64;
            }
            Ok(())
        };
        zero_range(PAGE as u64, geo.journal_off)?;
        for h in 1..=MAX_HOSTS {
            zero_range(geo.journal(h), geo.journal(h) + 2 * PAGE as u64)?;
        }
        zero_range(geo.lock_off, geo.map_off)?;
        zero_range(geo.inode_off, geo.sub_off)?;
        for c in 0..geo.nclusters {
            let mut m = ClusterMap::new(c);
            if c == 0 {
                // Block 0, sub-block 0 and inode 0 are never used (0 means "none"); inode 1
                // is the root directory.
                set_bit(&mut m.blocks, 0, true);
                set_bit(&mut m.subs, 0, true);
                set_bit(&mut m.inodes, 0, true);
                set_bit(&mut m.inodes, ROOT_INODE as usize, true);
            }
            dev.write(&m.encode(&geo), geo.map(c))?;
        }
        let now = now_ms();
        let root = Inode {
            kind: Kind::Dir,
            generation: 1,
            nlink: 1,
            ctime_ms: now,
            mtime_ms: now,
            parent: ROOT_INODE,
            ..Inode::free(ROOT_INODE, 1)
        };
        dev.write(&root.encode(&geo), geo.inode(ROOT_INODE))?;
        dev.flush()?;
        dev.write(&enc, 0)?;
        dev.flush()?;
        Ok(info_of(&hdr))
    }

    fn open_volume(
        dev: Box<dyn BlockDevice>,
        sync: bool,
        fence: Option<Arc<Fence>>,
    ) -> Result<Volume> {
        let dev = Dev { inner: dev };
        let mut b = vec![0u8; PAGE];
        if dev.size() < PAGE as u64 {
            return Err(VmfsError::NotVmfs(format!(
                "{} is smaller than a volume header",
                dev.name()
            )));
        }
        dev.read(&mut b, 0)?;
        let hdr = VolumeHeader::decode(&b, dev.size())?;
        let geo = hdr.geo.clone();
        Ok(Volume {
            dev,
            hdr,
            geo,
            sync,
            fence,
        })
    }

    /// Opens a volume without joining it: no heartbeat, no locks, no writes. Reads are
    /// lock-free (what another host is changing right now may look inconsistent).
    pub fn open_read_only(dev: Box<dyn BlockDevice>) -> Result<Datastore> {
        let vol = Self::open_volume(dev, false, None)?;
        Ok(Datastore {
            inner: Arc::new(Inner {
                vol: Arc::new(vol),
                host: None,
                seq: Mutex::new(0),
            }),
        })
    }

    /// Joins the volume as a host: takes a heartbeat slot (waits up to the lease timeout if
    /// the slot looks in use), replays this host ID's journal, starts renewing.
    pub fn mount(dev: Box<dyn BlockDevice>, opts: &MountOptions) -> Result<Datastore> {
        let probe = Self::open_volume(dev, opts.sync, None)?;
        let candidates: Vec<u32> = match opts.host_id {
            Some(h) if (1..=MAX_HOSTS).contains(&h) => vec![h],
            Some(h) => return Err(VmfsError::Invalid(format!("host ID {h} is not in 1..=32"))),
            None => {
                let mut v = Vec::new();
                for h in 1..=MAX_HOSTS {
                    if let Ok(s) = lease::read_slot(&probe, h) {
                        if s.state != HB_LIVE {
                            v.push(h);
                        }
                    }
                }
                v
            }
        };
        let mut vol = probe;
        for &h in &candidates {
            let fence = Arc::new(Fence::new(h));
            vol.fence = Some(fence.clone());
            match lease::acquire_slot(&vol, h, &opts.who, &fence) {
                Ok((gen, instance)) => {
                    return Self::finish_mount(vol, h, gen, instance, fence, &opts.who)
                }
                Err(VmfsError::HostIdInUse { .. }) if opts.host_id.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(VmfsError::NoFreeHostId)
    }

    fn finish_mount(
        vol: Volume,
        h: u32,
        gen: u64,
        instance: [u8; 16],
        fence: Arc<Fence>,
        who: &str,
    ) -> Result<Datastore> {
        let vol = Arc::new(vol);
        let live = Arc::new(Liveness::new(vol.hdr.lease_timeout_ms));
        live.scan(&vol)?;
        let hb = Heartbeat::start(vol.clone(), fence.clone(), live.clone(), h, gen, instance);
        let locks = Locks::new(vol.clone(), h, gen, live.clone());
        // Our own journal: a previous instance of this host ID may have died mid-commit.
        // Another host may be replaying it right now (it found that instance dead), so take
        // the journal lock, waiting for them.
        let wait = Duration::from_millis(vol.hdr.lease_timeout_ms as u64 * 3);
        let held = match locks.acquire_wait(LockId::Journal(h), LockMode::Exclusive, wait)? {
            Ok(held) => held,
            Err(b) => {
                return Err(VmfsError::Locked {
                    what: format!("the journal of host {h}"),
                    host: b.owner,
                    mode: b.mode,
                    since: fmt_time(b.since_ms),
                })
            }
        };
        vol.replay(h, h)?;
        locks.release(&held)?;
        let seq = vol.journal_seq(h)?;
        let host = Host {
            id: h,
            locks,
            live,
            fence,
            hb: Mutex::new(Some(hb)),
            instance,
            who: who.to_string(),
        };
        Ok(Datastore {
            inner: Arc::new(Inner {
                vol,
                host: Some(host),
                seq: Mutex::new(seq),
            }),
        })
    }

    /// The host ID this datastore is mounted as (`None` when read-only).
    pub fn host_id(&self) -> Option<u32> {
        self.inner.host.as_ref().map(|h| h.id)
    }

    /// Leaves the volume: marks the heartbeat slot cleanly unmounted. Files must be closed
    /// first (open ones keep their locks until the lease times out).
    pub fn unmount(self) -> Result<()> {
        self.inner.unmount()
    }

    pub fn info(&self) -> VolumeInfo {
        info_of(&self.inner.vol.hdr)
    }

    /// The heartbeat slots, with this host's view of their liveness.
    pub fn hosts(&self) -> Result<Vec<HostInfo>> {
        let vol = &self.inner.vol;
        let mut v = Vec::new();
        for h in 1..=MAX_HOSTS {
            let s = match lease::read_slot(vol, h) {
                Ok(s) => s,
                Err(e) => {
                    v.push(HostInfo {
                        host: h,
                        state: "corrupt",
                        generation: 0,
                        who: e.to_string(),
                        last_renewal: String::new(),
                    });
                    continue;
                }
            };
            if s.state == HB_EMPTY {
                continue;
            }
            let state = match (&self.inner.host, s.state) {
                (_, HB_CLEAN) => "unmounted",
                (Some(me), _) if me.id == h => "alive (this host)",
                (Some(me), _) => match me.live.state(h, s.generation) {
                    HostState::Alive => "alive",
                    HostState::Unknown => "mounted (liveness not known yet)",
                    HostState::Dead => "dead (heartbeat stopped)",
                    HostState::Gone => "gone",
                },
                (None, _) => "mounted",
            };
            v.push(HostInfo {
                host: h,
                state,
                generation: s.generation,
                who: s.who,
                last_renewal: fmt_time(s.wall_ms),
            });
        }
        Ok(v)
    }

    pub fn df(&self) -> Result<Usage> {
        let vol = &self.inner.vol;
        let g = &vol.geo;
        let mut u = Usage {
            blocks: g.nblocks(),
            sub_blocks: g.nsubs(),
            inodes: g.ninodes(),
            block_size: g.block_size,
            ..Default::default()
        };
        for c in 0..g.nclusters {
            let m = vol.read_map(c)?;
            u.free_blocks += ClusterMap::count(&m.blocks, g.bpc) as u64;
            u.free_sub_blocks += ClusterMap::count(&m.subs, g.spc) as u64;
            u.free_inodes += ClusterMap::count(&m.inodes, g.ipc) as u64;
        }
        Ok(u)
    }

    /// Size and allocation of `path`, read without its lock (another host may be changing
    /// it: the answer is one consistent snapshot).
    pub fn stat(&self, path: &str) -> Result<Stat> {
        let ino = self.inner.resolve(path)?;
        let (_, st) = self.inner.read_unlocked(ino.inum, |now, cache| {
            if now.kind == Kind::Free || now.generation != ino.generation {
                return Err(VmfsError::NotFound(path.to_string()));
            }
            self.inner.stat_of(now, cache)
        })?;
        Ok(st)
    }

    /// The entries of a directory with their stat, read without locks.
    pub fn list(&self, path: &str) -> Result<Vec<DirListing>> {
        let inner = &self.inner;
        let dir = inner.resolve(path)?;
        if dir.kind != Kind::Dir {
            return Err(VmfsError::NotADirectory(path.to_string()));
        }
        let (_, entries) = inner.read_unlocked(dir.inum, |now, cache| {
            if now.kind != Kind::Dir || now.generation != dir.generation {
                return Err(VmfsError::NotFound(path.to_string()));
            }
            inner.read_dir(now, cache)
        })?;
        let mut v = Vec::new();
        for (_, _, e) in entries {
            let st = inner.read_unlocked(e.inum, |ino, cache| {
                if ino.kind == Kind::Free || ino.generation != e.generation {
                    return Ok(None);
                }
                inner.stat_of(ino, cache).map(Some)
            });
            match st {
                Ok((_, Some(stat))) => v.push(DirListing { name: e.name, stat }),
                // Deleted (and maybe reused) since the directory was read.
                Ok((_, None)) => {}
                // An inode that never reads back whole is skipped, as it always was; fsck
                // reports it.
                Err(VmfsError::Corrupt { what: "inode", .. }) => {}
                Err(err) => return Err(err),
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub fn mkdir(&self, path: &str) -> Result<()> {
        self.inner.create_node(path, Kind::Dir, false).map(|_| ())
    }

    /// Creates every missing directory of `path`.
    pub fn mkdir_all(&self, path: &str) -> Result<()> {
        let comps = parse_path(path)?;
        let mut p = String::new();
        for c in comps {
            p.push('/');
            p.push_str(&c);
            match self.mkdir(&p) {
                Ok(()) | Err(VmfsError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates a file and opens it exclusively. `opts.size` bytes are allocated and zeroed
    /// now for an eager-zeroed file; a thin file gets its blocks on first write.
    pub fn create_file(&self, path: &str, opts: &FileOptions) -> Result<VmfsFile> {
        let (inum, held) = self
            .inner
            .create_node(path, Kind::File, opts.eager_zeroed)?;
        let Some(held) = held else {
            return Err(VmfsError::ReadOnly);
        };
        let ino = self.inner.vol.read_inode(inum)?;
        let mut f = VmfsFile::new(
            self.inner.clone(),
            path.to_string(),
            ino,
            Some(held),
            LockMode::Exclusive,
        );
        if opts.size > 0 {
            if let Err(e) = f.set_len(opts.size) {
                let _ = f.close();
                let _ = self.remove(path);
                return Err(e);
            }
        }
        Ok(f)
    }

    /// Opens a file: [`LockMode::Exclusive`] to write (one host at a time),
    /// [`LockMode::SharedRead`] to read (many hosts), [`LockMode::MultiWriter`] for
    /// cooperating writers of an eager-zeroed file. A conflict is [`VmfsError::Locked`].
    pub fn open_file(&self, path: &str, mode: LockMode) -> Result<VmfsFile> {
        let inner = &self.inner;
        let ino = inner.resolve(path)?;
        if ino.kind == Kind::Dir {
            return Err(VmfsError::IsADirectory(path.to_string()));
        }
        let Some(host) = &inner.host else {
            if mode != LockMode::SharedRead {
                return Err(VmfsError::ReadOnly);
            }
            return Ok(VmfsFile::new(
                inner.clone(),
                path.to_string(),
                ino,
                None,
                mode,
            ));
        };
        if mode == LockMode::MultiWriter && ino.flags & FLAG_EAGER == 0 {
            return Err(VmfsError::Invalid(format!(
                "{path}: multi-writer opens need an eager-zeroed file (writers must not allocate)"
            )));
        }
        // Someone registering a shared mode holds the leader for a moment: wait that out.
        let held = match host.locks.acquire_wait(
            LockId::Inode(ino.inum),
            mode,
            Duration::from_millis(0),
        )? {
            Ok(h) => h,
            Err(b) if b.transient => match host.locks.acquire_wait(
                LockId::Inode(ino.inum),
                mode,
                Duration::from_millis(500),
            )? {
                Ok(h) => h,
                Err(b) => return Err(locked(path, &b)),
            },
            Err(b) => return Err(locked(path, &b)),
        };
        // Re-read under the lock: the file may have been deleted (and the inode reused) since
        // the lookup.
        let check = || -> Result<Inode> {
            let now = inner.vol.read_inode(ino.inum)?;
            if now.kind != Kind::File || now.generation != ino.generation {
                return Err(VmfsError::NotFound(path.to_string()));
            }
            Ok(now)
        };
        match check() {
            Ok(now) => Ok(VmfsFile::new(
                inner.clone(),
                path.to_string(),
                now,
                Some(held),
                mode,
            )),
            Err(e) => {
                let _ = host.locks.release(&held);
                Err(e)
            }
        }
    }

    /// Removes a file (blocks freed) or an empty directory. A file opened by another live
    /// host is [`VmfsError::Locked`].
    pub fn remove(&self, path: &str) -> Result<()> {
        let inner = &self.inner;
        let ino = inner.resolve(path)?;
        if parse_path(path)?.is_empty() {
            return Err(VmfsError::Invalid(
                "the root directory cannot be removed".into(),
            ));
        }
        if ino.kind == Kind::File {
            let mut f = self.open_file(path, LockMode::Exclusive)?;
            f.set_len(0)?;
            f.flush()?;
            let held = f.take_lock();
            let r = inner.unlink(path, ino.inum, ino.generation);
            if let (Some(h), Some(host)) = (held, &inner.host) {
                // After unlink the inode may already be reused by someone; releasing our
                // lease on it is still right (we own that version).
                let _ = host.locks.release(&h);
            }
            r
        } else {
            inner.unlink(path, ino.inum, ino.generation)
        }
    }

    /// Breaks into a dead host's state now rather than when one of its locks is needed:
    /// replays its journal. Fails if the host is not known to be dead.
    pub fn recover_host(&self, host: u32) -> Result<()> {
        let me = self.inner.host()?;
        let s = lease::read_slot(&self.inner.vol, host)?;
        match me.live.state(host, s.generation) {
            HostState::Dead | HostState::Gone => me.locks.recover_host(host, s.generation),
            st => Err(VmfsError::Invalid(format!(
                "host {host} is not dead ({st:?})"
            ))),
        }
    }
}

impl Drop for Datastore {
    fn drop(&mut self) {
        if Arc::strong_count(&self.inner) == 1 {
            let _ = self.inner.unmount();
        }
    }
}

fn info_of(h: &VolumeHeader) -> VolumeInfo {
    let g = &h.geo;
    VolumeInfo {
        uuid: uuid::Uuid::from_bytes(h.uuid).to_string(),
        label: h.label.clone(),
        version: VERSION,
        created: fmt_time(h.created_ms),
        volume_size: g.volume_size,
        block_size: g.block_size,
        sub_block_size: SUB_BLOCK,
        resource_clusters: g.nclusters,
        blocks: g.nblocks(),
        sub_blocks: g.nsubs(),
        inodes: g.ninodes(),
        max_file_size: g.max_file_size(),
        renew_ms: h.renew_ms,
        lease_timeout_ms: h.lease_timeout_ms,
        io_timeout_ms: h.io_timeout_ms,
    }
}
