//! An open file on the datastore: [`VmfsFile`].
//!
//! Data is not journaled: it goes straight to its block. A thin file gets blocks on first
//! write, in batches (past the end of a write at the end of the file, [`PREALLOC`] blocks
//! growing with the file up to [`PREALLOC_MAX`], so sequential writers do not pay a lock and
//! a journal commit per block). A new block is
//! recorded as *unwritten* (reads as zeros) in the same transaction that allocates it;
//! the first write to it writes the whole block (data plus zeros), and clearing the
//! unwritten flag is metadata that is committed lazily (on [`VmfsFile::flush`], on close, or
//! when enough has piled up): a crash before that makes the block read as zeros again, which
//! is what an unflushed write may leave. The size is committed the same way.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::{LockMode, Result, VmfsError};
use crate::format::*;
use crate::inner::{Inner, PtrCache, Res, Stat, UNLOCKED_READ_ATTEMPTS};
use crate::paxos::Held;

/// Blocks allocated ahead of a write that extends a file, at least...
pub const PREALLOC: u64 = 16;
/// ...and at most: ahead grows with the file (as many blocks as it has), so a long
/// sequential write commits O(log size) allocation transactions instead of one per
/// PREALLOC blocks (each commit syncs the volume, which also forces out the data written so
/// far in small pieces). Blocks never written are given back at close.
pub const PREALLOC_MAX: u64 = 512;
/// Most blocks allocated or freed in one transaction.
const CHUNK: usize = 96;
/// Commit lazily changed pointer pages when this many are dirty.
const DIRTY_MAX: usize = 32;

/// How to create a file.
#[derive(Clone, Debug, Default)]
pub struct FileOptions {
    /// Initial size (thin: a hole; eager-zeroed: allocated and zeroed now).
    pub size: u64,
    /// Allocate and zero every block up front (and when the file grows): no allocation on
    /// the write path, and the only kind of file multi-writer opens accept.
    pub eager_zeroed: bool,
}

/// A file opened on a [`crate::Datastore`]: positioned reads and writes, like a disk.
pub struct VmfsFile {
    ds: Arc<Inner>,
    path: String,
    ino: Inode,
    held: Option<Held>,
    mode: LockMode,
    cache: PtrCache,
    dirty_ptrs: BTreeSet<(usize, usize)>,
    dirty_inode: bool,
    data_written: bool,
}

impl VmfsFile {
    pub(crate) fn new(
        ds: Arc<Inner>,
        path: String,
        ino: Inode,
        held: Option<Held>,
        mode: LockMode,
    ) -> VmfsFile {
        // Pointer pages read under the file's lock are checked strictly (see `PtrCache`).
        let cache = if held.is_some() {
            PtrCache::locked()
        } else {
            PtrCache::default()
        };
        VmfsFile {
            ds,
            path,
            ino,
            held,
            mode,
            cache,
            dirty_ptrs: BTreeSet::new(),
            dirty_inode: false,
            data_written: false,
        }
    }

    pub fn len(&self) -> u64 {
        self.ino.size
    }

    pub fn is_empty(&self) -> bool {
        self.ino.size == 0
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn mode(&self) -> LockMode {
        self.mode
    }

    pub fn stat(&self) -> Result<Stat> {
        if self.held.is_some() {
            return self.ds.stat_of(&self.ino, &mut PtrCache::locked());
        }
        let (_, st) = self.ds.read_unlocked(self.ino.inum, |now, cache| {
            self.check_same_file(now)?;
            self.ds.stat_of(now, cache)
        })?;
        Ok(st)
    }

    /// Without the lock (a read-only datastore) the file may have been removed, and its
    /// inode reused, since it was opened.
    fn check_same_file(&self, now: &Inode) -> Result<()> {
        if now.kind != Kind::File || now.generation != self.ino.generation {
            return Err(VmfsError::NotFound(format!(
                "{} (removed since it was opened)",
                self.path
            )));
        }
        Ok(())
    }

    pub(crate) fn take_lock(&mut self) -> Option<Held> {
        self.held.take()
    }

    fn bs(&self) -> u64 {
        self.ds.vol.geo.block_size
    }

    fn need(&self, needs: &'static str, ok: bool) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(VmfsError::WrongMode {
                what: self.path.clone(),
                mode: self.mode,
                needs,
            })
        }
    }

    /// Reads up to `buf.len()` bytes at `off`; returns how many (0 at or past the end).
    pub fn read_at(&mut self, buf: &mut [u8], off: u64) -> Result<usize> {
        if self.held.is_some() {
            return self.read_mapped(buf, off);
        }
        // No lock (a read-only datastore): the writer may free and reuse pointer blocks
        // under us. A pointer page that fails its checks means the file changed: read its
        // inode again and start over (data blocks carry no owner to check; a read-only
        // view of a file being written may see some old and some new data).
        let mut attempt = 0;
        loop {
            match self.read_mapped(buf, off) {
                Err(VmfsError::Corrupt { .. }) if attempt < UNLOCKED_READ_ATTEMPTS => {
                    attempt += 1;
                    let now = self.ds.vol.read_inode(self.ino.inum)?;
                    self.check_same_file(&now)?;
                    self.ino = now;
                    self.cache.clear();
                    std::thread::sleep(std::time::Duration::from_millis(attempt.min(10) as u64));
                }
                r => return r,
            }
        }
    }

    fn read_mapped(&mut self, buf: &mut [u8], off: u64) -> Result<usize> {
        if off >= self.ino.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.ino.size - off) as usize;
        let seg = match self.ino.mode {
            AddrMode::Small => SUB_BLOCK,
            AddrMode::Blocks => self.bs(),
        };
        let mut done = 0usize;
        // Consecutive segments that are consecutive on the device are read in one call.
        let mut run: Option<(u64, usize, usize)> = None; // (device offset, buf start, len)
        while done < n {
            let pos = off + done as u64;
            let len = ((seg - pos % seg) as usize).min(n - done);
            match self.ds.map(&self.ino, pos, &mut self.cache)? {
                Some((d, false)) => match &mut run {
                    Some((rd, rs, rl)) if *rd + *rl as u64 == d && *rs + *rl == done => *rl += len,
                    _ => {
                        if let Some((rd, rs, rl)) = run.take() {
                            self.ds.vol.dev.read(&mut buf[rs..rs + rl], rd)?;
                        }
                        run = Some((d, done, len));
                    }
                },
                _ => buf[done..done + len].fill(0),
            }
            done += len;
        }
        if let Some((rd, rs, rl)) = run {
            self.ds.vol.dev.read(&mut buf[rs..rs + rl], rd)?;
        }
        Ok(n)
    }

    /// Writes all of `buf` at `off`, growing the file (thin: allocating blocks) as needed.
    pub fn write_at(&mut self, buf: &[u8], off: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = off
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.ds.vol.geo.max_file_size())
            .ok_or(VmfsError::FileTooBig {
                size: off.saturating_add(buf.len() as u64),
                max: self.ds.vol.geo.max_file_size(),
            })?;
        match self.mode {
            LockMode::Exclusive => {}
            LockMode::SharedRead => self.need("an exclusive or multi-writer open", false)?,
            LockMode::MultiWriter => {
                if end > self.ino.size {
                    return Err(VmfsError::Invalid(format!(
                        "{}: a multi-writer open cannot grow the file ({} bytes)",
                        self.path, self.ino.size
                    )));
                }
            }
        }
        if self.ino.mode == AddrMode::Small {
            if end <= SUB_BLOCK {
                return self.write_small(buf, off, end);
            }
            self.grow_to_blocks()?;
        }
        if self.mode == LockMode::Exclusive {
            self.ensure_allocated(off, end, false)?;
        }
        let bs = self.bs();
        let g = self.ds.vol.geo.clone();
        let mut done = 0usize;
        let mut run: Option<(u64, usize, usize)> = None;
        while done < buf.len() {
            let pos = off + done as u64;
            let len = ((bs - pos % bs) as usize).min(buf.len() - done);
            let fb = pos / bs;
            let e = self
                .ds
                .ptr_entry(&self.ino, fb, &mut self.cache)?
                .ok_or_else(|| {
                    VmfsError::Invalid(format!(
                        "{}: block {fb} is not allocated (multi-writer files must be eager-zeroed)",
                        self.path
                    ))
                })?;
            let dev_off = g.block(e & !UNWRITTEN) + pos % bs;
            let whole = e & UNWRITTEN == 0 || len as u64 == bs;
            if whole {
                match &mut run {
                    Some((rd, rs, rl)) if *rd + *rl as u64 == dev_off && *rs + *rl == done => {
                        *rl += len
                    }
                    _ => {
                        if let Some((rd, rs, rl)) = run.take() {
                            self.ds.vol.write(rd, &buf[rs..rs + rl])?;
                        }
                        run = Some((dev_off, done, len));
                    }
                }
            } else {
                // First write to part of an unwritten block: the rest must read as zeros.
                let mut blk = vec![0u8; bs as usize];
                let at = (pos % bs) as usize;
                blk[at..at + len].copy_from_slice(&buf[done..done + len]);
                self.ds.vol.write(g.block(e & !UNWRITTEN), &blk)?;
            }
            if e & UNWRITTEN != 0 {
                if let Some((rd, rs, rl)) = run.take() {
                    // The data must be on the device before the flag says it is there.
                    self.ds.vol.write(rd, &buf[rs..rs + rl])?;
                }
                self.set_entry(fb, e & !UNWRITTEN)?;
            }
            done += len;
        }
        if let Some((rd, rs, rl)) = run {
            self.ds.vol.write(rd, &buf[rs..rs + rl])?;
        }
        self.data_written = true;
        if end > self.ino.size {
            self.ino.size = end;
            self.dirty_inode = true;
        }
        if self.dirty_ptrs.len() >= DIRTY_MAX {
            self.commit_meta()?;
        }
        Ok(())
    }

    fn set_entry(&mut self, fb: u64, v: u32) -> Result<()> {
        let pb = (fb / PTRS_PER_PB) as usize;
        let rem = (fb % PTRS_PER_PB) as usize;
        let pg = rem / PTRS_PER_PAGE;
        self.cache.page(&self.ds, &self.ino, pb, pg)?;
        if let Some(p) = self.cache.get_mut(pb, pg) {
            p.ptrs[rem % PTRS_PER_PAGE] = v;
        }
        self.dirty_ptrs.insert((pb, pg));
        Ok(())
    }

    fn write_small(&mut self, buf: &[u8], off: u64, end: u64) -> Result<()> {
        let g = self.ds.vol.geo.clone();
        if self.ino.addrs[0] == 0 {
            if self.mode != LockMode::Exclusive {
                return Err(VmfsError::Invalid(format!("{}: not allocated", self.path)));
            }
            let mut data = vec![0u8; SUB_BLOCK as usize];
            data[off as usize..end as usize].copy_from_slice(buf);
            let ds = self.ds.clone();
            let base = self.ino.clone();
            let ino = ds.op(|op| {
                let mut ino = base.clone();
                let s = op.alloc(Res::Sub, Some(g.inode_cluster(ino.inum)))?;
                // Data first: the sub-block is ours only once the transaction commits.
                op.vol().write(g.sub(s), &data)?;
                ino.addrs[0] = s;
                ino.size = ino.size.max(end);
                ino.mtime_ms = now_ms();
                op.put_inode(&ino);
                Ok(ino)
            })?;
            self.ino = ino;
            self.dirty_inode = false;
            return Ok(());
        }
        self.ds.vol.write(g.sub(self.ino.addrs[0]) + off, buf)?;
        self.data_written = true;
        if end > self.ino.size {
            self.ino.size = end;
            self.dirty_inode = true;
        }
        Ok(())
    }

    /// A small file outgrows its sub-block: its data moves to a block.
    fn grow_to_blocks(&mut self) -> Result<()> {
        self.commit_meta()?;
        let g = self.ds.vol.geo.clone();
        let ds = self.ds.clone();
        let base = self.ino.clone();
        let eager = base.flags & FLAG_EAGER != 0;
        let ino = ds.op(|op| {
            let mut ino = base.clone();
            let s = op.alloc(Res::Sub, Some(g.inode_cluster(ino.inum)))?;
            op.zero_sub(s)?;
            let mut ptrs = vec![0u32; PTRS_PER_PAGE];
            if ino.addrs[0] != 0 || eager {
                let b = op.alloc(Res::Block, None)?;
                let mut blk = vec![0u8; g.block_size as usize];
                if ino.addrs[0] != 0 {
                    op.vol()
                        .dev
                        .read(&mut blk[..SUB_BLOCK as usize], g.sub(ino.addrs[0]))?;
                    op.free(Res::Sub, ino.addrs[0])?;
                }
                op.vol().write(g.block(b), &blk)?;
                ptrs[0] = b;
            }
            let pp = PointerPage {
                inum: ino.inum,
                generation: ino.generation,
                first: 0,
                ptrs,
            };
            let off = op.vol().ptr_page_offset(s, 0);
            op.put(off, pp.encode(off));
            ino.mode = AddrMode::Blocks;
            ino.addrs = vec![0; INODE_ADDRS];
            ino.addrs[0] = s;
            op.put_inode(&ino);
            Ok(ino)
        })?;
        self.ino = ino;
        self.cache.clear();
        self.dirty_inode = false;
        Ok(())
    }

    /// Allocates the holes among the blocks of `[off, end)` (plus some ahead when the write
    /// extends the file). `eager`: zero them and record them as written.
    fn ensure_allocated(&mut self, off: u64, end: u64, eager: bool) -> Result<()> {
        let bs = self.bs();
        let first = off / bs;
        let last = (end - 1) / bs;
        let mut holes = Vec::new();
        for fb in first..=last {
            if self.ds.ptr_entry(&self.ino, fb, &mut self.cache)?.is_none() {
                holes.push(fb);
            }
        }
        if holes.is_empty() {
            return Ok(());
        }
        let required = holes.len();
        if !eager && last + 1 >= self.ino.size.div_ceil(bs) {
            let max_fb = self.ds.vol.geo.max_file_size() / bs;
            let ahead = (last + 1).clamp(PREALLOC, PREALLOC_MAX);
            for fb in last + 1..(last + 1 + ahead).min(max_fb) {
                if self.ds.ptr_entry(&self.ino, fb, &mut self.cache)?.is_none() {
                    holes.push(fb);
                }
            }
        }
        let mut r = Ok(());
        for chunk in holes.chunks(CHUNK) {
            r = self.alloc_chunk(chunk, eager);
            if r.is_err() {
                break;
            }
        }
        if let (Err(VmfsError::NoSpace { .. }), true) = (&r, holes.len() > required) {
            // Not enough room to allocate ahead: just what this write needs.
            let mut need = Vec::new();
            for &fb in &holes[..required] {
                if self.ds.ptr_entry(&self.ino, fb, &mut self.cache)?.is_none() {
                    need.push(fb);
                }
            }
            for chunk in need.chunks(CHUNK) {
                self.alloc_chunk(chunk, eager)?;
            }
            return Ok(());
        }
        r
    }

    fn alloc_chunk(&mut self, fbs: &[u64], eager: bool) -> Result<()> {
        // Lazily changed pages go into this transaction too (they are re-read from the cache).
        let g = self.ds.vol.geo.clone();
        let ds = self.ds.clone();
        let base = self.ino.clone();
        let dirty: Vec<(usize, usize)> = self.dirty_ptrs.iter().copied().collect();
        let cache = &mut self.cache;
        let (ino, pages) = ds.op(|op| {
            let mut ino = base.clone();
            let mut pages: std::collections::BTreeMap<(usize, usize), PointerPage> =
                std::collections::BTreeMap::new();
            for &(pb, pg) in &dirty {
                pages.insert((pb, pg), cache.page(&ds, &ino, pb, pg)?.clone());
            }
            let mut hint = None;
            for &fb in fbs {
                let pb = (fb / PTRS_PER_PB) as usize;
                let rem = (fb % PTRS_PER_PB) as usize;
                let pg = rem / PTRS_PER_PAGE;
                if ino.addrs[pb] == 0 {
                    let s = op.alloc(Res::Sub, Some(g.inode_cluster(ino.inum)))?;
                    op.zero_sub(s)?;
                    ino.addrs[pb] = s;
                    for p in 0..PAGES_PER_SUB {
                        let first = pb as u64 * PTRS_PER_PB + (p * PTRS_PER_PAGE) as u64;
                        cache.insert(
                            pb,
                            p,
                            PointerPage {
                                inum: ino.inum,
                                generation: ino.generation,
                                first,
                                ptrs: vec![0; PTRS_PER_PAGE],
                            },
                        );
                    }
                }
                if let std::collections::btree_map::Entry::Vacant(v) = pages.entry((pb, pg)) {
                    v.insert(cache.page(&ds, &ino, pb, pg)?.clone());
                }
                let b = op.alloc(Res::Block, hint)?;
                hint = Some(g.block_cluster(b));
                let entry = if eager {
                    op.zero_block(b)?;
                    b
                } else {
                    b | UNWRITTEN
                };
                if let Some(p) = pages.get_mut(&(pb, pg)) {
                    p.ptrs[rem % PTRS_PER_PAGE] = entry;
                }
            }
            for (&(pb, pg), p) in &pages {
                let off = op.vol().ptr_page_offset(ino.addrs[pb], pg);
                op.put(off, p.encode(off));
            }
            op.put_inode(&ino);
            Ok((ino, pages))
        })?;
        self.ino = ino;
        for ((pb, pg), p) in pages {
            self.cache.insert(pb, pg, p);
        }
        self.dirty_ptrs.clear();
        self.dirty_inode = false;
        Ok(())
    }

    /// Commits the lazily changed metadata (unwritten flags cleared, size, mtime).
    fn commit_meta(&mut self) -> Result<()> {
        if !self.dirty_inode && self.dirty_ptrs.is_empty() {
            return Ok(());
        }
        if self.held.is_none() {
            return Err(VmfsError::ReadOnly);
        }
        if self.data_written && self.ds.vol.sync {
            // The data must be durable before the metadata that makes it visible.
            self.ds.vol.dev.flush()?;
        }
        if self.data_written {
            self.ino.mtime_ms = now_ms();
        }
        let mut pages = Vec::new();
        for &(pb, pg) in &self.dirty_ptrs {
            let p = self.cache.page(&self.ds, &self.ino, pb, pg)?;
            let off = self.ds.vol.ptr_page_offset(self.ino.addrs[pb], pg);
            pages.push((off, p.encode(off)));
        }
        let ino = self.ino.clone();
        self.ds.op(|op| {
            for (off, img) in &pages {
                op.put(*off, img.clone());
            }
            op.put_inode(&ino);
            Ok(())
        })?;
        self.dirty_ptrs.clear();
        self.dirty_inode = false;
        Ok(())
    }

    /// Makes every completed write durable (data, then the metadata that points to it).
    pub fn flush(&mut self) -> Result<()> {
        if self.mode == LockMode::SharedRead {
            return Ok(());
        }
        if self.mode == LockMode::MultiWriter {
            return self.ds.vol.flush();
        }
        self.commit_meta()?;
        if self.data_written {
            self.ds.vol.flush()?;
            self.data_written = false;
        }
        Ok(())
    }

    /// Sets the size. Growing a thin file leaves a hole; an eager-zeroed file allocates and
    /// zeroes the new blocks. Shrinking frees whole blocks past the end (in several
    /// transactions for a large file, from the end) and zeroes the rest of the last block.
    pub fn set_len(&mut self, n: u64) -> Result<()> {
        self.need("an exclusive open", self.mode == LockMode::Exclusive)?;
        let max = self.ds.vol.geo.max_file_size();
        if n > max {
            return Err(VmfsError::FileTooBig { size: n, max });
        }
        let eager = self.ino.flags & FLAG_EAGER != 0;
        if n >= self.ino.size {
            if self.ino.mode == AddrMode::Small && n > SUB_BLOCK {
                self.grow_to_blocks()?;
            }
            if eager && n > 0 {
                if self.ino.mode == AddrMode::Small {
                    if self.ino.addrs[0] == 0 {
                        self.write_small(&[0], 0, 1)?;
                    }
                } else {
                    self.ensure_allocated(0, n, true)?;
                }
            }
            self.ino.size = n;
            self.dirty_inode = true;
            return self.commit_meta();
        }
        self.commit_meta()?;
        let g = self.ds.vol.geo.clone();
        if self.ino.mode == AddrMode::Small {
            if self.ino.addrs[0] != 0 {
                self.ds.vol.write(
                    g.sub(self.ino.addrs[0]) + n,
                    &vec![0u8; (SUB_BLOCK - n) as usize],
                )?;
            }
            self.ino.size = n;
            self.dirty_inode = true;
            return self.commit_meta();
        }
        let keep = n.div_ceil(g.block_size);
        self.free_from(keep, n)?;
        // Bytes past the new end inside the last block must read as zeros if it grows again.
        if !n.is_multiple_of(g.block_size) {
            if let Some(e) = self.ds.ptr_entry(&self.ino, keep - 1, &mut self.cache)? {
                if e & UNWRITTEN == 0 {
                    let at = n % g.block_size;
                    self.ds
                        .vol
                        .write(g.block(e) + at, &vec![0u8; (g.block_size - at) as usize])?;
                }
            }
        }
        self.ino.size = n;
        self.dirty_inode = true;
        self.commit_meta()
    }

    /// Frees every block of file block index >= `keep` and the pointer blocks past it; the
    /// size goes down to `n` step by step, never below what is still allocated.
    fn free_from(&mut self, keep: u64, n: u64) -> Result<()> {
        let mut victims = Vec::new(); // (fb, pb, pg, idx, block)
        let first_pb = (keep / PTRS_PER_PB) as usize;
        for pb in (first_pb..INODE_ADDRS).rev() {
            if self.ino.addrs[pb] == 0 {
                continue;
            }
            for pg in (0..PAGES_PER_SUB).rev() {
                let page = self.cache.page(&self.ds, &self.ino, pb, pg)?;
                for i in (0..PTRS_PER_PAGE).rev() {
                    let fb = page.first + i as u64;
                    if fb >= keep && page.ptrs[i] != 0 {
                        victims.push((fb, pb, pg, i, page.ptrs[i] & !UNWRITTEN));
                    }
                }
            }
        }
        self.free_entries(&victims, Some(n))?;
        // Pointer blocks wholly past the end, now empty.
        let pbs: Vec<usize> = (0..INODE_ADDRS)
            .filter(|&pb| self.ino.addrs[pb] != 0 && pb as u64 * PTRS_PER_PB >= keep)
            .collect();
        for chunk in pbs.chunks(CHUNK) {
            let ds = self.ds.clone();
            let base = self.ino.clone();
            let ino = ds.op(|op| {
                let mut ino = base.clone();
                for &pb in chunk {
                    op.free(Res::Sub, ino.addrs[pb])?;
                    ino.addrs[pb] = 0;
                }
                op.put_inode(&ino);
                Ok(ino)
            })?;
            self.ino = ino;
            for &pb in chunk {
                for pg in 0..PAGES_PER_SUB {
                    self.cache.pages_remove(pb, pg);
                }
            }
        }
        Ok(())
    }

    /// Frees the blocks of `victims` (highest file block first) in chunked transactions,
    /// clearing their pointers. `shrink_to`: the size also goes down with each chunk, to the
    /// start of the lowest block freed so far, but not below this.
    fn free_entries(
        &mut self,
        victims: &[(u64, usize, usize, usize, u32)],
        shrink_to: Option<u64>,
    ) -> Result<()> {
        let bs = self.bs();
        for chunk in victims.chunks(CHUNK) {
            let ds = self.ds.clone();
            let base = self.ino.clone();
            let cache = &mut self.cache;
            let lowest = chunk.last().map(|v| v.0).unwrap_or(0);
            let (ino, pages) = ds.op(|op| {
                let mut ino = base.clone();
                let mut pages: std::collections::BTreeMap<(usize, usize), PointerPage> =
                    std::collections::BTreeMap::new();
                for &(_, pb, pg, i, b) in chunk {
                    if let std::collections::btree_map::Entry::Vacant(v) = pages.entry((pb, pg)) {
                        v.insert(cache.page(&ds, &ino, pb, pg)?.clone());
                    }
                    if let Some(p) = pages.get_mut(&(pb, pg)) {
                        p.ptrs[i] = 0;
                    }
                    op.free(Res::Block, b)?;
                }
                for (&(pb, pg), p) in &pages {
                    let off = op.vol().ptr_page_offset(ino.addrs[pb], pg);
                    op.put(off, p.encode(off));
                }
                if let Some(n) = shrink_to {
                    ino.size = ino.size.min((lowest * bs).max(n));
                }
                op.put_inode(&ino);
                Ok((ino, pages))
            })?;
            self.ino = ino;
            for ((pb, pg), p) in pages {
                self.cache.insert(pb, pg, p);
            }
        }
        Ok(())
    }

    /// Blocks allocated ahead and never written go back to the free pool (a thin file keeps
    /// only what was written). Only pages this open has looked at can have them.
    fn trim_unwritten(&mut self) -> Result<()> {
        let mut victims = Vec::new();
        for ((pb, pg), page) in self.cache.iter() {
            for (i, &e) in page.ptrs.iter().enumerate() {
                if e & UNWRITTEN != 0 {
                    victims.push((page.first + i as u64, *pb, *pg, i, e & !UNWRITTEN));
                }
            }
        }
        victims.sort_by_key(|v| std::cmp::Reverse(v.0));
        self.free_entries(&victims, None)
    }

    /// Flushes, gives back blocks allocated ahead and never written, and releases the lock.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        if self.held.is_none() {
            return Ok(());
        }
        let mut r = Ok(());
        if self.mode == LockMode::Exclusive {
            r = self.flush();
            if r.is_ok() && self.ino.mode == AddrMode::Blocks {
                r = self.trim_unwritten();
            }
        } else if self.mode == LockMode::MultiWriter {
            r = self.flush();
        }
        let Some(held) = self.held.take() else {
            return r;
        };
        let rel = match &self.ds.host {
            Some(h) => h.locks.release(&held),
            None => Ok(()),
        };
        r.and(rel)
    }
}

impl Drop for VmfsFile {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

impl std::fmt::Debug for VmfsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmfsFile")
            .field("path", &self.path)
            .field("size", &self.ino.size)
            .field("mode", &self.mode)
            .finish()
    }
}
