//! The metadata core under [`crate::Datastore`] and [`crate::VmfsFile`]: this host's
//! state on the volume ([`Inner`]), the short metadata operations ([`Op`]: take the locks,
//! read fresh metadata, change it in one journal transaction, release), path lookup, and
//! how readers follow an inode's pointers (with its lock, or validated without it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{corrupt, under_lock, LockMode, Result, VmfsError};
use crate::format::*;
use crate::lease::{self, Heartbeat, Liveness};
use crate::paxos::{Held, Locks};
use crate::volume::{Fence, Txn, Volume};

/// How often a lock-free read is tried before a change that never settles, or a check that
/// keeps failing, is reported (pauses grow from 1 to 10 ms: about 0.15 s in all).
pub(crate) const UNLOCKED_READ_ATTEMPTS: u32 = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub inum: u32,
    pub is_dir: bool,
    pub size: u64,
    /// Bytes of blocks and sub-blocks allocated to the data.
    pub allocated: u64,
    pub eager_zeroed: bool,
    pub mtime_ms: u64,
}

pub(crate) struct Host {
    pub id: u32,
    pub locks: Locks,
    pub live: Arc<Liveness>,
    pub fence: Arc<Fence>,
    pub hb: Mutex<Option<Heartbeat>>,
    pub instance: [u8; 16],
    pub who: String,
}

pub(crate) struct Inner {
    pub vol: Arc<Volume>,
    pub host: Option<Host>,
    /// The journal holds one transaction at a time: commits are serialized per host.
    pub seq: Mutex<u64>,
}

/// Splits a datastore path (`/dir/name`, `dir/name`) into checked components.
pub fn parse_path(path: &str) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for c in path.split('/') {
        if c.is_empty() || c == "." {
            continue;
        }
        check_name(c).map_err(|reason| VmfsError::InvalidName {
            name: c.to_string(),
            reason,
        })?;
        v.push(c.to_string());
    }
    Ok(v)
}

pub(crate) fn locked(path: &str, b: &crate::paxos::Busy) -> VmfsError {
    VmfsError::Locked {
        what: path.to_string(),
        host: b.owner,
        mode: b.mode,
        since: fmt_time(b.since_ms),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Res {
    Block,
    Sub,
    Inode,
}

impl Res {
    fn name(self) -> &'static str {
        match self {
            Res::Block => "blocks",
            Res::Sub => "sub-blocks",
            Res::Inode => "inodes",
        }
    }
    fn per(self, g: &Geometry) -> u32 {
        match self {
            Res::Block => g.bpc,
            Res::Sub => g.spc,
            Res::Inode => g.ipc,
        }
    }
    fn bits(self, m: &mut ClusterMap) -> &mut Vec<u8> {
        match self {
            Res::Block => &mut m.blocks,
            Res::Sub => &mut m.subs,
            Res::Inode => &mut m.inodes,
        }
    }
}

/// One metadata operation in progress: the locks it holds, the cluster maps it loaded, the
/// pages it will commit.
pub(crate) struct Op<'a> {
    ds: &'a Inner,
    held: Vec<Held>,
    maps: BTreeMap<u32, ClusterMap>,
    dirty_maps: BTreeSet<u32>,
    pub txn: Txn,
    /// A lock we must wait for was busy: start the operation again later.
    retry: bool,
}

impl<'a> Op<'a> {
    fn host(&self) -> &'a Host {
        // Ops are only created by `Inner::op`, which checks there is a host.
        self.ds.host.as_ref().expect("op without a host")
    }

    /// Takes `id` for the rest of the operation. `wait`: a busy lock makes the whole
    /// operation retry (short-term holders); otherwise it is the caller's error.
    pub fn lock(&mut self, id: LockId, what: &str, wait: bool) -> Result<()> {
        match self.host().locks.try_acquire(id, LockMode::Exclusive)? {
            Ok(h) => {
                self.held.push(h);
                Ok(())
            }
            Err(b) => {
                self.retry |= wait || b.transient;
                Err(locked(what, &b))
            }
        }
    }

    /// Takes `id` and hands it to the caller (kept after the operation).
    pub fn lock_keep(&mut self, id: LockId, what: &str) -> Result<Held> {
        self.lock(id, what, true)?;
        Ok(self.held.pop().expect("just pushed"))
    }

    /// Locks and loads cluster `c`'s map. `Ok(false)`: busy and `!wait`.
    fn cluster(&mut self, c: u32, wait: bool) -> Result<bool> {
        if self.maps.contains_key(&c) {
            return Ok(true);
        }
        match self
            .host()
            .locks
            .try_acquire(LockId::Cluster(c), LockMode::Exclusive)?
        {
            Ok(h) => {
                self.held.push(h);
                let m = self.ds.vol.read_map(c)?;
                self.maps.insert(c, m);
                Ok(true)
            }
            Err(b) if wait => {
                self.retry = true;
                Err(locked(&format!("resource cluster {c}"), &b))
            }
            Err(_) => Ok(false),
        }
    }

    /// Allocates one block, sub-block or inode, from a cluster near `hint` or this host's
    /// own part of the volume.
    pub fn alloc(&mut self, r: Res, hint: Option<u32>) -> Result<u32> {
        let g = &self.ds.vol.geo;
        let per = r.per(g);
        let n = g.nclusters;
        // Clusters we already hold first.
        let held: Vec<u32> = self.maps.keys().copied().collect();
        let affinity = ((self.host().id - 1) as u64 * n as u64 / MAX_HOSTS as u64) as u32;
        let start = hint.unwrap_or(affinity) % n;
        let mut busy = false;
        let mut bad = None;
        for c in held.into_iter().chain((0..n).map(|i| (start + i) % n)) {
            if !self.maps.contains_key(&c) {
                // A lock-free look first: no point locking a full cluster.
                match self.ds.vol.read_map(c) {
                    Ok(mut m) => {
                        if ClusterMap::count(r.bits(&mut m), per) == 0 {
                            continue;
                        }
                    }
                    Err(e) => {
                        bad = Some(e);
                        continue;
                    }
                }
                if !self.cluster(c, false)? {
                    busy = true;
                    continue;
                }
            }
            let Some(m) = self.maps.get_mut(&c) else {
                continue;
            };
            let bits = r.bits(m);
            if let Some(i) = (0..per as usize).find(|&i| !bit(bits, i)) {
                set_bit(bits, i, true);
                self.dirty_maps.insert(c);
                return Ok(c * per + i as u32);
            }
        }
        if busy {
            self.retry = true;
        }
        Err(bad.unwrap_or(VmfsError::NoSpace { what: r.name() }))
    }

    /// Frees one block, sub-block or inode (waits for its cluster's lock).
    pub fn free(&mut self, r: Res, idx: u32) -> Result<()> {
        let g = &self.ds.vol.geo;
        let per = r.per(g);
        let c = idx / per;
        if c >= g.nclusters {
            return Err(corrupt(
                "resource cluster map",
                g.map_off,
                format!("freeing {} {idx}: outside the volume", r.name()),
            ));
        }
        self.cluster(c, true)?;
        let off = g.map(c);
        let m = self.maps.get_mut(&c).expect("cluster loaded");
        let bits = r.bits(m);
        let i = (idx % per) as usize;
        if !bit(bits, i) {
            // Freeing something free: the map and its owner disagree. Stop rather than
            // make it worse.
            return Err(corrupt(
                "resource cluster map",
                off,
                format!("{} {idx} is already free", r.name()),
            ));
        }
        set_bit(bits, i, false);
        self.dirty_maps.insert(c);
        Ok(())
    }

    pub fn put(&mut self, off: u64, img: Vec<u8>) {
        self.txn.put(off, img);
    }

    pub fn put_inode(&mut self, ino: &Inode) {
        let off = self.ds.vol.geo.inode(ino.inum);
        self.txn.put(off, ino.encode(&self.ds.vol.geo));
    }

    fn commit(&mut self) -> Result<()> {
        for c in std::mem::take(&mut self.dirty_maps) {
            let img = self.maps[&c].encode(&self.ds.vol.geo);
            self.txn.put(self.ds.vol.geo.map(c), img);
        }
        self.ds.commit_txn(&self.txn)
    }

    fn release_all(&mut self) {
        if let Some(h) = &self.ds.host {
            for held in self.held.drain(..).rev() {
                let _ = h.locks.release(&held);
            }
        }
    }

    /// Zeroes a newly allocated sub-block (pointer pages and directory pages that were
    /// never written must read as empty, not as what a deleted file left there).
    pub fn zero_sub(&self, s: u32) -> Result<()> {
        self.ds
            .vol
            .write(self.ds.vol.geo.sub(s), &vec![0u8; SUB_BLOCK as usize])
    }

    pub fn zero_block(&self, b: u32) -> Result<()> {
        let g = &self.ds.vol.geo;
        self.ds
            .vol
            .write(g.block(b), &vec![0u8; g.block_size as usize])
    }

    pub fn vol(&self) -> &'a Volume {
        &self.ds.vol
    }
}

impl Inner {
    pub fn host(&self) -> Result<&Host> {
        self.host.as_ref().ok_or(VmfsError::ReadOnly)
    }

    pub fn unmount(&self) -> Result<()> {
        let Some(h) = &self.host else { return Ok(()) };
        let hb = h.hb.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut hb) = hb else { return Ok(()) };
        hb.stop();
        h.fence.check()?;
        let off = self.vol.geo.hb_slot(h.id);
        let cur = lease::read_slot(&self.vol, h.id)?;
        if cur.instance != h.instance {
            return Ok(());
        }
        let slot = HbSlot {
            state: HB_CLEAN,
            timestamp: cur.timestamp + 1,
            wall_ms: now_ms(),
            who: h.who.clone(),
            ..cur
        };
        self.vol.write(off, &slot.encode(off))?;
        self.vol.flush()
    }

    /// Runs a metadata operation, starting it again (after a random pause) while a lock it
    /// must wait for is busy.
    pub fn op<T>(&self, mut f: impl FnMut(&mut Op) -> Result<T>) -> Result<T> {
        self.host()?;
        let deadline =
            Instant::now() + Duration::from_millis(self.vol.hdr.lease_timeout_ms as u64 * 5);
        let mut n = 0u64;
        loop {
            let mut op = Op {
                ds: self,
                held: Vec::new(),
                maps: BTreeMap::new(),
                dirty_maps: BTreeSet::new(),
                txn: Txn::default(),
                retry: false,
            };
            let r = f(&mut op).and_then(|v| op.commit().map(|()| v));
            let retry = op.retry;
            op.release_all();
            match r {
                Err(_) if retry && Instant::now() < deadline => {
                    n += 1;
                    let jitter = (std::process::id() as u64 * 7
                        + n * 13
                        + Instant::now().elapsed().subsec_nanos() as u64)
                        % 10;
                    std::thread::sleep(Duration::from_millis(1 + jitter + n.min(20) * 2));
                }
                r => return r,
            }
        }
    }

    pub fn commit_txn(&self, txn: &Txn) -> Result<()> {
        if txn.pages.is_empty() {
            return Ok(());
        }
        let host = self.host()?;
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        self.vol.commit(host.id, *seq, txn)
    }

    /// Reads what hangs off inode `inum` without its lock: runs `f` on a snapshot of the
    /// inode and keeps the result only if the inode still reads the same afterwards.
    ///
    /// Why: a lock-free reader (lookups, listings, stat, a read-only datastore) follows the
    /// inode's pointers while the owner may free what they point to, and another host may
    /// reuse it at once (a freed pointer block becomes a small file's data). Freeing always
    /// changes the owner's inode in the same transaction, and nobody can reuse the block
    /// before that transaction is in place (the cluster lock is held until then), so an
    /// inode that reads the same before and after means the pages read in between were the
    /// inode's. A page that fails its checks, or an inode that changed, means "read again";
    /// only a check that keeps failing under an unchanged inode is reported (`Corrupt`).
    pub fn read_unlocked<T>(
        &self,
        inum: u32,
        mut f: impl FnMut(&Inode, &mut PtrCache) -> Result<T>,
    ) -> Result<(Inode, T)> {
        let mut last = None;
        for attempt in 0..UNLOCKED_READ_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(attempt.min(10) as u64));
            }
            let before = match self.vol.read_inode(inum) {
                Ok(i) => i,
                Err(e @ VmfsError::Corrupt { .. }) => {
                    // Torn by a concurrent rewrite, or damaged: read again.
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let r = f(&before, &mut PtrCache::default());
            let after = self.vol.read_inode(inum);
            match (r, after) {
                (Err(e @ VmfsError::Corrupt { .. }), _) => last = Some(e),
                (_, Err(e @ VmfsError::Corrupt { .. })) => last = Some(e),
                (_, Err(e)) => return Err(e),
                (r, Ok(after)) if after == before => return r.map(|v| (before, v)),
                (_, Ok(_)) => {
                    last = Some(VmfsError::Changing {
                        what: format!("inode {inum}"),
                        attempts: UNLOCKED_READ_ATTEMPTS,
                    })
                }
            }
        }
        Err(last.unwrap_or(VmfsError::Changing {
            what: format!("inode {inum}"),
            attempts: UNLOCKED_READ_ATTEMPTS,
        }))
    }

    /// Where byte `off` of `ino`'s data is: `(device offset, unwritten)`; `None` for a hole.
    pub fn map(&self, ino: &Inode, off: u64, cache: &mut PtrCache) -> Result<Option<(u64, bool)>> {
        let g = &self.vol.geo;
        match ino.mode {
            AddrMode::Small => {
                if off >= SUB_BLOCK || ino.addrs[0] == 0 {
                    return Ok(None);
                }
                Ok(Some((g.sub(ino.addrs[0]) + off, false)))
            }
            AddrMode::Blocks => {
                let fb = off / g.block_size;
                let Some(e) = self.ptr_entry(ino, fb, cache)? else {
                    return Ok(None);
                };
                Ok(Some((
                    g.block(e & !UNWRITTEN) + off % g.block_size,
                    e & UNWRITTEN != 0,
                )))
            }
        }
    }

    /// The pointer entry of file block `fb` (0 = hole → `None`).
    pub fn ptr_entry(&self, ino: &Inode, fb: u64, cache: &mut PtrCache) -> Result<Option<u32>> {
        let pb = (fb / PTRS_PER_PB) as usize;
        if pb >= INODE_ADDRS || ino.addrs[pb] == 0 {
            return Ok(None);
        }
        let rem = (fb % PTRS_PER_PB) as usize;
        let page = cache.page(self, ino, pb, rem / PTRS_PER_PAGE)?;
        let e = page.ptrs[rem % PTRS_PER_PAGE];
        Ok(if e == 0 { None } else { Some(e) })
    }

    pub fn resolve(&self, path: &str) -> Result<Inode> {
        let comps = parse_path(path)?;
        let mut cur = self.vol.read_inode(ROOT_INODE)?;
        if cur.kind != Kind::Dir {
            return Err(corrupt(
                "inode",
                self.vol.geo.inode(ROOT_INODE),
                "the root inode is not a directory",
            ));
        }
        for (i, c) in comps.iter().enumerate() {
            if cur.kind != Kind::Dir {
                return Err(VmfsError::NotADirectory(format!(
                    "/{}",
                    comps[..i].join("/")
                )));
            }
            let (_, found) = self.read_unlocked(cur.inum, |dir, cache| {
                if dir.kind != Kind::Dir || dir.generation != cur.generation {
                    return Err(VmfsError::NotFound(path.to_string()));
                }
                self.find(dir, c, cache)
            })?;
            let Some((_, _, e)) = found else {
                return Err(VmfsError::NotFound(path.to_string()));
            };
            let next = self.vol.read_inode(e.inum)?;
            if next.kind == Kind::Free || next.generation != e.generation {
                return Err(VmfsError::NotFound(path.to_string()));
            }
            cur = next;
        }
        Ok(cur)
    }

    /// Offset of directory page `p`.
    pub fn dir_page_offset(
        &self,
        dir: &Inode,
        p: u32,
        cache: &mut PtrCache,
    ) -> Result<Option<u64>> {
        Ok(self
            .map(dir, p as u64 * PAGE as u64, cache)?
            .map(|(o, _)| o))
    }

    pub fn read_dir_page(&self, dir: &Inode, p: u32, cache: &mut PtrCache) -> Result<DirPage> {
        match self.dir_page_offset(dir, p, cache)? {
            None => Ok(DirPage::empty(dir.inum, dir.generation, p)),
            Some(off) => self
                .vol
                .read_decode(off, PAGE, |b| {
                    DirPage::decode(b, &self.vol.geo, off, dir.inum, dir.generation, p)
                })
                .map_err(|e| cache.checked(e, dir)),
        }
    }

    /// Every entry: (page, slot, entry). `cache` says whether the caller holds the
    /// directory's lock (see [`PtrCache::locked`]).
    pub fn read_dir(
        &self,
        dir: &Inode,
        cache: &mut PtrCache,
    ) -> Result<Vec<(u32, usize, DirEntry)>> {
        let mut v = Vec::new();
        for p in 0..(dir.size / PAGE as u64) as u32 {
            let page = self.read_dir_page(dir, p, cache)?;
            for (i, e) in page.entries.into_iter().enumerate() {
                if let Some(e) = e {
                    v.push((p, i, e));
                }
            }
        }
        Ok(v)
    }

    pub fn find(
        &self,
        dir: &Inode,
        name: &str,
        cache: &mut PtrCache,
    ) -> Result<Option<(u32, usize, DirEntry)>> {
        Ok(self
            .read_dir(dir, cache)?
            .into_iter()
            .find(|(_, _, e)| e.name == name))
    }

    /// `cache` says whether the caller holds the inode's lock; without it, call this
    /// inside [`Inner::read_unlocked`].
    pub fn stat_of(&self, ino: &Inode, cache: &mut PtrCache) -> Result<Stat> {
        let g = &self.vol.geo;
        let allocated = match ino.mode {
            AddrMode::Small => {
                if ino.addrs[0] != 0 {
                    SUB_BLOCK
                } else {
                    0
                }
            }
            AddrMode::Blocks => {
                let mut n = 0u64;
                let nfb = ino.size.div_ceil(g.block_size);
                let mut fb = 0;
                while fb < nfb {
                    let pb = (fb / PTRS_PER_PB) as usize;
                    if pb >= INODE_ADDRS {
                        break;
                    }
                    if ino.addrs[pb] == 0 {
                        fb = (pb as u64 + 1) * PTRS_PER_PB;
                        continue;
                    }
                    if self.ptr_entry(ino, fb, cache)?.is_some() {
                        n += 1;
                    }
                    fb += 1;
                }
                n * g.block_size
            }
        };
        Ok(Stat {
            inum: ino.inum,
            is_dir: ino.kind == Kind::Dir,
            size: ino.size,
            allocated,
            eager_zeroed: ino.flags & FLAG_EAGER != 0,
            mtime_ms: ino.mtime_ms,
        })
    }

    fn parent_of(&self, path: &str) -> Result<(Inode, String, String)> {
        let mut comps = parse_path(path)?;
        let Some(name) = comps.pop() else {
            return Err(VmfsError::Invalid(format!(
                "{path:?} names the root directory"
            )));
        };
        let ppath = format!("/{}", comps.join("/"));
        let dir = self.resolve(&ppath)?;
        if dir.kind != Kind::Dir {
            return Err(VmfsError::NotADirectory(ppath));
        }
        Ok((dir, name, ppath))
    }

    /// Creates a file or directory; for a file, returns its lock (held exclusively).
    pub fn create_node(&self, path: &str, kind: Kind, eager: bool) -> Result<(u32, Option<Held>)> {
        let (pdir, name, ppath) = self.parent_of(path)?;
        let mut keep: Option<Held> = None;
        let r = self.op(|op| {
            if let Some(h) = keep.take() {
                let _ = self.host()?.locks.release(&h);
            }
            op.lock(LockId::Inode(pdir.inum), &ppath, true)?;
            let mut dir = self.vol.read_inode(pdir.inum)?;
            if dir.kind != Kind::Dir || dir.generation != pdir.generation {
                return Err(VmfsError::NotFound(ppath.clone()));
            }
            if self.find(&dir, &name, &mut PtrCache::locked())?.is_some() {
                return Err(VmfsError::AlreadyExists(path.to_string()));
            }
            let hint = Some(self.vol.geo.inode_cluster(dir.inum));
            let inum = op.alloc(Res::Inode, if kind == Kind::Dir { hint } else { None })?;
            let old = self.vol.read_inode(inum)?;
            if old.kind != Kind::Free {
                return Err(corrupt(
                    "inode",
                    self.vol.geo.inode(inum),
                    format!("inode {inum} is free in its cluster map but in use"),
                ));
            }
            if kind == Kind::File {
                keep = Some(op.lock_keep(LockId::Inode(inum), path)?);
            }
            let now = now_ms();
            let ino = Inode {
                kind,
                generation: old.generation.wrapping_add(1).max(1),
                nlink: 1,
                ctime_ms: now,
                mtime_ms: now,
                parent: dir.inum,
                flags: if eager { FLAG_EAGER } else { 0 },
                ..Inode::free(inum, 0)
            };
            op.put_inode(&ino);
            self.dir_add(
                op,
                &mut dir,
                DirEntry {
                    inum,
                    generation: ino.generation,
                    kind,
                    name: name.clone(),
                },
            )?;
            dir.mtime_ms = now;
            op.put_inode(&dir);
            Ok(inum)
        });
        match r {
            Ok(inum) => Ok((inum, keep)),
            Err(e) => {
                if let (Some(h), Ok(host)) = (keep, self.host()) {
                    let _ = host.locks.release(&h);
                }
                Err(e)
            }
        }
    }

    /// Adds an entry to `dir` (whose lock the op holds), growing it if full.
    fn dir_add(&self, op: &mut Op, dir: &mut Inode, e: DirEntry) -> Result<()> {
        let mut cache = PtrCache::locked();
        let npages = (dir.size / PAGE as u64) as u32;
        for p in 0..npages {
            let mut page = self.read_dir_page(dir, p, &mut cache)?;
            if let Some(slot) = page.entries.iter().position(|s| s.is_none()) {
                page.entries[slot] = Some(e);
                let off = self.dir_page_offset(dir, p, &mut cache)?.ok_or_else(|| {
                    corrupt(
                        "inode",
                        self.vol.geo.inode(dir.inum),
                        "directory page without storage",
                    )
                })?;
                op.put(off, page.encode(off));
                return Ok(());
            }
        }
        // Grow by one page.
        let g = &self.vol.geo;
        let p = npages;
        let pos = p as u64 * PAGE as u64;
        if pos + PAGE as u64 > g.max_file_size() {
            return Err(VmfsError::FileTooBig {
                size: pos,
                max: g.max_file_size(),
            });
        }
        if dir.mode == AddrMode::Small && pos < SUB_BLOCK {
            if dir.addrs[0] == 0 {
                let s = op.alloc(Res::Sub, Some(g.inode_cluster(dir.inum)))?;
                op.zero_sub(s)?;
                dir.addrs[0] = s;
            }
        } else {
            if dir.mode == AddrMode::Small {
                self.dir_to_blocks(op, dir, &mut cache)?;
            }
            let fb = pos / g.block_size;
            let pb = (fb / PTRS_PER_PB) as usize;
            if pb >= INODE_ADDRS {
                return Err(VmfsError::FileTooBig {
                    size: pos,
                    max: g.max_file_size(),
                });
            }
            if dir.addrs[pb] == 0 {
                let s = op.alloc(Res::Sub, Some(g.inode_cluster(dir.inum)))?;
                op.zero_sub(s)?;
                dir.addrs[pb] = s;
            }
            if self.ptr_entry(dir, fb, &mut cache)?.is_none() {
                let b = op.alloc(Res::Block, None)?;
                op.zero_block(b)?;
                let rem = (fb % PTRS_PER_PB) as usize;
                let mut page = cache.page(self, dir, pb, rem / PTRS_PER_PAGE)?.clone();
                page.ptrs[rem % PTRS_PER_PAGE] = b;
                let off = self.vol.ptr_page_offset(dir.addrs[pb], rem / PTRS_PER_PAGE);
                op.put(off, page.encode(off));
                cache.insert(pb, rem / PTRS_PER_PAGE, page);
            }
        }
        dir.size += PAGE as u64;
        let mut page = DirPage::empty(dir.inum, dir.generation, p);
        page.entries[0] = Some(e);
        let off = self.dir_page_offset(dir, p, &mut cache)?.ok_or_else(|| {
            corrupt(
                "inode",
                g.inode(dir.inum),
                "new directory page without storage",
            )
        })?;
        op.put(off, page.encode(off));
        Ok(())
    }

    /// A directory outgrew its sub-block: move its 16 pages into a block.
    fn dir_to_blocks(&self, op: &mut Op, dir: &mut Inode, cache: &mut PtrCache) -> Result<()> {
        let g = &self.vol.geo;
        let b = op.alloc(Res::Block, None)?;
        op.zero_block(b)?;
        let s = op.alloc(Res::Sub, Some(g.inode_cluster(dir.inum)))?;
        op.zero_sub(s)?;
        for p in 0..PAGES_PER_SUB as u32 {
            let page = self.read_dir_page(dir, p, cache)?;
            let off = g.block(b) + p as u64 * PAGE as u64;
            op.put(off, page.encode(off));
        }
        let old = dir.addrs[0];
        let mut ptrs = vec![0u32; PTRS_PER_PAGE];
        ptrs[0] = b;
        let pp = PointerPage {
            inum: dir.inum,
            generation: dir.generation,
            first: 0,
            ptrs,
        };
        let off = self.vol.ptr_page_offset(s, 0);
        op.put(off, pp.encode(off));
        // The transaction is not on disk yet: later lookups in this operation must see the
        // new pointer page (the other 15 pages of the zeroed sub-block read as empty).
        cache.clear();
        cache.insert(0, 0, pp);
        dir.mode = AddrMode::Blocks;
        dir.addrs = vec![0; INODE_ADDRS];
        dir.addrs[0] = s;
        if old != 0 {
            op.free(Res::Sub, old)?;
        }
        Ok(())
    }

    /// Removes `path` (inode `inum` generation `gen`) from its directory and frees the
    /// inode and what is left of its storage (a file was truncated to 0 before).
    pub fn unlink(&self, path: &str, inum: u32, gen: u32) -> Result<()> {
        let (pdir, name, ppath) = self.parent_of(path)?;
        self.op(|op| {
            op.lock(LockId::Inode(pdir.inum), &ppath, true)?;
            let dir = self.vol.read_inode(pdir.inum)?;
            if dir.kind != Kind::Dir || dir.generation != pdir.generation {
                return Err(VmfsError::NotFound(ppath.clone()));
            }
            let mut cache = PtrCache::locked();
            let Some((p, slot, e)) = self.find(&dir, &name, &mut cache)? else {
                return Err(VmfsError::NotFound(path.to_string()));
            };
            if e.inum != inum || e.generation != gen {
                return Err(VmfsError::NotFound(path.to_string()));
            }
            let ino = self.vol.read_inode(inum)?;
            if ino.generation != gen || ino.kind == Kind::Free {
                return Err(VmfsError::NotFound(path.to_string()));
            }
            if ino.kind == Kind::Dir {
                op.lock(LockId::Inode(inum), path, false)?;
                if !self.read_dir(&ino, &mut PtrCache::locked())?.is_empty() {
                    return Err(VmfsError::DirectoryNotEmpty(path.to_string()));
                }
            }
            // Storage left: a small file's sub-block, a directory's pages, pointer blocks.
            self.free_all(op, &ino)?;
            let mut page = self.read_dir_page(&dir, p, &mut cache)?;
            page.entries[slot] = None;
            let off = self.dir_page_offset(&dir, p, &mut cache)?.ok_or_else(|| {
                corrupt(
                    "inode",
                    self.vol.geo.inode(dir.inum),
                    "directory page without storage",
                )
            })?;
            op.put_inode(&Inode::free(inum, gen));
            op.put(off, page.encode(off));
            let mut dir = dir;
            dir.mtime_ms = now_ms();
            op.put_inode(&dir);
            op.free(Res::Inode, inum)?;
            Ok(())
        })
    }

    /// Frees every block and sub-block of `ino` (small enough to fit one transaction: files
    /// are truncated to 0 first, so only directories have blocks here).
    fn free_all(&self, op: &mut Op, ino: &Inode) -> Result<()> {
        match ino.mode {
            AddrMode::Small => {
                if ino.addrs[0] != 0 {
                    op.free(Res::Sub, ino.addrs[0])?;
                }
            }
            AddrMode::Blocks => {
                let mut cache = PtrCache::locked();
                for pb in 0..INODE_ADDRS {
                    if ino.addrs[pb] == 0 {
                        continue;
                    }
                    for pg in 0..PAGES_PER_SUB {
                        let page = cache.page(self, ino, pb, pg)?.clone();
                        for &e in &page.ptrs {
                            if e != 0 {
                                op.free(Res::Block, e & !UNWRITTEN)?;
                            }
                        }
                    }
                    op.free(Res::Sub, ino.addrs[pb])?;
                }
            }
        }
        Ok(())
    }
}

/// Pointer pages read for one inode, and whether the reader holds that inode's lock.
///
/// Every page reached through an inode is checked to be what the inode says (magic,
/// owner inode and generation, and which file block or directory page it is: see
/// `docs/vmfs-format.md`, "Following pointers"). What a failed check means depends on the
/// lock: without it the owner may have freed and reused the block since the inode was
/// read, and the caller reads again ([`Inner::read_unlocked`]); with it nobody else may
/// have changed anything, so it is reported as a bug ([`VmfsError::Inconsistent`]).
#[derive(Default)]
pub(crate) struct PtrCache {
    pages: std::collections::HashMap<(usize, usize), PointerPage>,
    locked: bool,
}

impl PtrCache {
    /// A cache for a reader that holds the inode's lock.
    pub fn locked() -> PtrCache {
        PtrCache {
            locked: true,
            ..Default::default()
        }
    }

    /// What a failed check of a structure reached from `ino` means for this reader.
    pub fn checked(&self, e: VmfsError, ino: &Inode) -> VmfsError {
        checked(self.locked, e, ino)
    }

    pub fn page(
        &mut self,
        inner: &Inner,
        ino: &Inode,
        pb: usize,
        pg: usize,
    ) -> Result<&PointerPage> {
        let locked = self.locked;
        match self.pages.entry((pb, pg)) {
            std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let p = inner
                    .vol
                    .read_ptr_page(ino, pb, pg)
                    .map_err(|e| checked(locked, e, ino))?;
                Ok(v.insert(p))
            }
        }
    }
    pub fn insert(&mut self, pb: usize, pg: usize, p: PointerPage) {
        self.pages.insert((pb, pg), p);
    }
    pub fn get_mut(&mut self, pb: usize, pg: usize) -> Option<&mut PointerPage> {
        self.pages.get_mut(&(pb, pg))
    }
    pub fn clear(&mut self) {
        self.pages.clear();
    }
    pub fn iter(&self) -> impl Iterator<Item = (&(usize, usize), &PointerPage)> {
        self.pages.iter()
    }
}

fn checked(locked: bool, e: VmfsError, ino: &Inode) -> VmfsError {
    if locked {
        under_lock(e, || {
            format!(
                "the lock of inode {} (generation {})",
                ino.inum, ino.generation
            )
        })
    } else {
        e
    }
}

impl PtrCache {
    pub fn pages_remove(&mut self, pb: usize, pg: usize) {
        self.pages.remove(&(pb, pg));
    }
}
