//! A hosted sparse extent: header, grain directory (and its redundant copy), grain tables
//! (through a cache) and grains, plain or compressed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use flate2::{Decompress, FlushDecompress, Status};

use crate::error::{HeaderProblem, TableKind, TableProblem, VmdkError};
use crate::file::{CrashSwitch, ImageFile};
use crate::format::{
    self, decode_u32s, encode_u32s, GrainMarker, Gte, GteRules, MetadataMarker, SparseHeader,
    FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN, GD_AT_END, GTE_ZEROED, MARKER_EOS, MARKER_FOOTER,
    SECTOR,
};
use crate::storage::Store;
use crate::Vmdk;

/// Sectors reserved for an embedded descriptor (at least), as VMware and QEMU do.
const EMBEDDED_DESCRIPTOR_SECTORS: u64 = 20;
const GTES_PER_GT: u64 = 512;

/// Grain tables kept in memory per extent, at most this many bytes of them.
const CACHE_BYTES: usize = 8 << 20;

/// Least-recently-used cache of grain tables, keyed by grain directory index.
#[derive(Debug)]
struct GtCache {
    slots: Vec<Slot>,
    index: HashMap<u64, usize>,
    tick: u64,
    cap: usize,
}

#[derive(Debug)]
struct Slot {
    gdi: u64,
    used: u64,
    entries: Vec<u32>,
}

impl GtCache {
    fn new(gtes: u64) -> GtCache {
        GtCache {
            slots: Vec::new(),
            index: HashMap::new(),
            tick: 0,
            cap: (CACHE_BYTES / (gtes as usize * 4)).max(16),
        }
    }

    fn get(&mut self, gdi: u64) -> Option<usize> {
        let s = *self.index.get(&gdi)?;
        self.tick += 1;
        self.slots[s].used = self.tick;
        Some(s)
    }

    fn insert(&mut self, gdi: u64, entries: Vec<u32>) -> usize {
        self.tick += 1;
        let slot = Slot {
            gdi,
            used: self.tick,
            entries,
        };
        let s = if self.slots.len() < self.cap {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            let (s, _) = self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, sl)| sl.used)
                .expect("cache capacity is at least 16");
            self.index.remove(&self.slots[s].gdi);
            self.slots[s] = slot;
            s
        };
        self.index.insert(gdi, s);
        s
    }

    fn remove(&mut self, gdi: u64) {
        if let Some(s) = self.index.remove(&gdi) {
            // Keep the slot vector dense: mark the slot unused and reusable.
            self.slots[s].used = 0;
            self.slots[s].gdi = u64::MAX;
            self.slots[s].entries.clear();
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
    }
}

/// What a write does to the range it covers.
#[derive(Clone, Copy)]
pub(crate) enum Src<'a> {
    Data(&'a [u8]),
    /// Make the range read as zeros.
    Zeros,
    /// The guest no longer needs the range: free what can be freed, keep the rest.
    Discard,
}

/// The last decompressed grain of a compressed extent.
#[derive(Debug)]
struct Inflated {
    sector: u64,
    data: Vec<u8>,
}

/// One open hosted sparse extent.
#[derive(Debug)]
pub(crate) struct SparseExtent {
    pub(crate) f: ImageFile,
    /// The header in effect (the footer's, for a streamOptimized image).
    pub(crate) hdr: SparseHeader,
    /// The header sector as read, to rewrite it without touching bytes vmk does not know.
    raw_header: [u8; 512],
    /// Grain size in bytes.
    pub(crate) grain: u64,
    pub(crate) gtes: u64,
    pub(crate) gd: Vec<u32>,
    pub(crate) rgd: Option<Vec<u32>>,
    pub(crate) file_len: u64,
    /// Where the next grain goes: the end of the file, rounded up to a grain.
    next_free: u64,
    cache: GtCache,
    inflated: Option<Inflated>,
    /// The uncleanShutdown flag as found at open.
    pub(crate) unclean_at_open: bool,
}

impl SparseExtent {
    /// Opens the extent in `f`. `strict` validates every grain directory entry (`check`
    /// opens without, to report and repair them itself).
    pub(crate) fn open(f: ImageFile, strict: bool) -> Result<SparseExtent, VmdkError> {
        let file_len = f.len()?;
        let bad = |offset: u64, problem: HeaderProblem| VmdkError::BadHeader {
            path: f.path.clone(),
            offset,
            problem,
        };
        if file_len < SECTOR {
            return Err(bad(0, HeaderProblem::Truncated { file_len }));
        }
        let mut raw_header = [0u8; 512];
        f.read_exact_at(0, &mut raw_header, "reading the header")?;
        let primary = SparseHeader::decode(&raw_header).map_err(|(o, p)| bad(o, p))?;
        let hdr = if primary.gd_offset == GD_AT_END {
            read_footer(&f, file_len)?
        } else {
            primary.clone()
        };
        let field_base = if primary.gd_offset == GD_AT_END {
            (file_len / SECTOR * SECTOR).saturating_sub(1024)
        } else {
            0
        };
        hdr.validate(file_len)
            .map_err(|(o, p)| bad(field_base + o, p))?;
        let entries = hdr.gd_entries();
        let mut ext = SparseExtent {
            grain: hdr.grain_size * SECTOR,
            gtes: hdr.num_gtes_per_gt as u64,
            gd: Vec::new(),
            rgd: None,
            file_len,
            next_free: 0,
            cache: GtCache::new(hdr.num_gtes_per_gt as u64),
            inflated: None,
            unclean_at_open: primary.unclean_shutdown,
            hdr,
            raw_header,
            f,
        };
        ext.next_free = file_len.div_ceil(ext.grain) * ext.grain;
        ext.gd = ext.read_dir(ext.hdr.gd_offset, entries)?;
        if ext.hdr.has_rgd() {
            ext.rgd = Some(ext.read_dir(ext.hdr.rgd_offset, entries)?);
        }
        if strict {
            for i in 0..ext.gd.len() {
                ext.check_dir_entry(TableKind::GrainDirectory, i)?;
            }
            if ext.rgd.is_some() {
                for i in 0..ext.gd.len() {
                    ext.check_dir_entry(TableKind::RedundantGrainDirectory, i)?;
                }
            }
        }
        Ok(ext)
    }

    fn read_dir(&self, sector: u64, entries: u64) -> Result<Vec<u32>, VmdkError> {
        let mut buf = vec![0u8; entries as usize * 4];
        self.f
            .read_exact_at(sector * SECTOR, &mut buf, "reading the grain directory")?;
        Ok(decode_u32s(&buf))
    }

    /// Where a grain table may lie: after the header, inside the file.
    pub(crate) fn table_ptr_problem(&self, v: u32) -> Option<TableProblem> {
        let s = v as u64;
        if v == 0 {
            None
        } else if s * SECTOR + self.hdr.gt_sectors() * SECTOR > self.file_len {
            Some(TableProblem::BeyondEof {
                sector: s,
                file_len: self.file_len,
            })
        } else {
            None
        }
    }

    fn check_dir_entry(&self, kind: TableKind, i: usize) -> Result<(), VmdkError> {
        let (dir, base) = match kind {
            TableKind::RedundantGrainDirectory => {
                (self.rgd.as_deref().unwrap_or(&[]), self.hdr.rgd_offset)
            }
            _ => (&self.gd[..], self.hdr.gd_offset),
        };
        let Some(&v) = dir.get(i) else { return Ok(()) };
        match self.table_ptr_problem(v) {
            None => Ok(()),
            Some(problem) => Err(VmdkError::BadTable {
                path: self.f.path.clone(),
                table: kind,
                offset: base * SECTOR + i as u64 * 4,
                index: i as u64,
                problem,
            }),
        }
    }

    pub(crate) fn rules(&self) -> GteRules {
        GteRules::for_header(&self.hdr, self.file_len)
    }

    /// Capacity in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.hdr.capacity * SECTOR
    }

    /// Loads grain table `gdi` into the cache; `None` when the directory has no table for it.
    fn table(&mut self, gdi: u64) -> Result<Option<usize>, VmdkError> {
        if let Some(s) = self.cache.get(gdi) {
            return Ok(Some(s));
        }
        let p = self.gd[gdi as usize];
        if p == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; self.gtes as usize * 4];
        self.f
            .read_at(p as u64 * SECTOR, &mut buf, "reading a grain table")?;
        Ok(Some(self.cache.insert(gdi, decode_u32s(&buf))))
    }

    fn classify(&self, gdi: u64, i: u64, v: u32) -> Result<Gte, VmdkError> {
        self.rules()
            .classify(v)
            .map_err(|problem| VmdkError::BadTable {
                path: self.f.path.clone(),
                table: TableKind::GrainTable,
                offset: self.gd[gdi as usize] as u64 * SECTOR + i * 4,
                index: i,
                problem,
            })
    }

    /// The entry of grain `g` (grain index within the extent).
    pub(crate) fn lookup(&mut self, g: u64) -> Result<Gte, VmdkError> {
        let gdi = g / self.gtes;
        let i = g % self.gtes;
        let Some(s) = self.table(gdi)? else {
            return Ok(Gte::Unallocated);
        };
        let v = self.cache.slots[s].entries[i as usize];
        self.classify(gdi, i, v)
    }

    /// Reads `buf.len()` bytes at extent offset `rel`. Unallocated grains come from `parent`
    /// (at disk offset `base + rel`) or read as zeros.
    pub(crate) fn read(
        &mut self,
        rel: u64,
        buf: &mut [u8],
        parent: &mut Option<Box<Vmdk>>,
        base: u64,
    ) -> Result<(), VmdkError> {
        // Runs of contiguous pieces: (file offset or disk offset, position in buf, length).
        let mut run: Option<(u64, usize, usize)> = None;
        let mut prun: Option<(u64, usize, usize)> = None;
        let compressed = self.hdr.compressed();
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = rel + pos as u64;
            let g = off / self.grain;
            let in_g = off % self.grain;
            let n = ((self.grain - in_g) as usize).min(buf.len() - pos);
            let gte = self.lookup(g)?;
            match gte {
                Gte::Data(s) if !compressed => {
                    flush_parent(&mut prun, buf, parent)?;
                    let foff = s * SECTOR + in_g;
                    match &mut run {
                        Some((fo, bp, l)) if *fo + *l as u64 == foff && *bp + *l == pos => *l += n,
                        _ => {
                            self.flush_run(&mut run, buf)?;
                            run = Some((foff, pos, n));
                        }
                    }
                }
                Gte::Data(s) => {
                    flush_parent(&mut prun, buf, parent)?;
                    self.flush_run(&mut run, buf)?;
                    self.read_compressed(s, g, in_g as usize, &mut buf[pos..pos + n])?;
                }
                Gte::Zero => {
                    flush_parent(&mut prun, buf, parent)?;
                    self.flush_run(&mut run, buf)?;
                    buf[pos..pos + n].fill(0);
                }
                Gte::Unallocated => {
                    self.flush_run(&mut run, buf)?;
                    if parent.is_some() {
                        let voff = base + off;
                        match &mut prun {
                            Some((vo, bp, l)) if *vo + *l as u64 == voff && *bp + *l == pos => {
                                *l += n
                            }
                            _ => {
                                flush_parent(&mut prun, buf, parent)?;
                                prun = Some((voff, pos, n));
                            }
                        }
                    } else {
                        buf[pos..pos + n].fill(0);
                    }
                }
            }
            pos += n;
        }
        self.flush_run(&mut run, buf)?;
        flush_parent(&mut prun, buf, parent)
    }

    fn flush_run(
        &self,
        run: &mut Option<(u64, usize, usize)>,
        buf: &mut [u8],
    ) -> Result<(), VmdkError> {
        if let Some((fo, bp, l)) = run.take() {
            self.f.read_at(fo, &mut buf[bp..bp + l], "reading grains")?;
        }
        Ok(())
    }

    /// Reads from the decompressed grain `g` whose marker (or deflate data) is at `sector`.
    fn read_compressed(
        &mut self,
        sector: u64,
        g: u64,
        in_g: usize,
        out: &mut [u8],
    ) -> Result<(), VmdkError> {
        if self.inflated.as_ref().is_none_or(|c| c.sector != sector) {
            let data = self.inflate(sector, g)?;
            self.inflated = Some(Inflated { sector, data });
        }
        let c = self.inflated.as_ref().map(|c| &c.data[..]).unwrap_or(&[]);
        out.copy_from_slice(&c[in_g..in_g + out.len()]);
        Ok(())
    }

    fn inflate(&self, sector: u64, g: u64) -> Result<Vec<u8>, VmdkError> {
        let off = sector * SECTOR;
        let bad = |problem: String| VmdkError::BadGrain {
            path: self.f.path.clone(),
            offset: off,
            problem,
        };
        let limit = 2 * self.grain + 4096;
        let (data_off, len) = if self.hdr.flags & format::FLAG_MARKERS != 0 {
            let mut m = [0u8; GrainMarker::LEN];
            self.f.read_at(off, &mut m, "reading a grain marker")?;
            let Some(marker) = GrainMarker::decode(&m) else {
                return Err(bad("short grain marker".into()));
            };
            let want = g * self.hdr.grain_size;
            if marker.lba != want {
                return Err(bad(format!(
                    "the marker says sector {} but the grain table maps sector {want} here",
                    marker.lba
                )));
            }
            let size = marker.size as u64;
            if size == 0 || size > limit {
                return Err(bad(format!(
                    "compressed size {size} is 0 or above twice the grain size"
                )));
            }
            if off + GrainMarker::LEN as u64 + size > self.file_len {
                return Err(bad(format!(
                    "{size} bytes of compressed data run past the end of the file ({} bytes)",
                    self.file_len
                )));
            }
            (off + GrainMarker::LEN as u64, size)
        } else {
            (off, limit.min(self.file_len - off))
        };
        let mut input = vec![0u8; len as usize];
        self.f
            .read_at(data_off, &mut input, "reading a compressed grain")?;
        let mut out = vec![0u8; self.grain as usize];
        let mut z = Decompress::new(true);
        match z.decompress(&input, &mut out, FlushDecompress::Finish) {
            Ok(Status::StreamEnd) => Ok(out),
            Ok(_) => Err(bad(
                "the deflate stream is truncated or decompresses to more than a grain".into(),
            )),
            Err(e) => Err(bad(format!("deflate error: {e}"))),
        }
    }

    /// How many bytes from extent offset `rel` (at most `max`) share the state of the first
    /// one: (true, n) when they are known to read as zeros in this extent, (false, n) when
    /// they hold data, `None` when they are unallocated (parent or zeros).
    pub(crate) fn status(&mut self, rel: u64, max: u64) -> Result<(Option<bool>, u64), VmdkError> {
        let state = |g: Gte| match g {
            Gte::Data(_) => Some(false),
            Gte::Zero => Some(true),
            Gte::Unallocated => None,
        };
        let first = state(self.lookup(rel / self.grain)?);
        let mut n = (self.grain - rel % self.grain).min(max);
        while n < max {
            let g = (rel + n) / self.grain;
            if state(self.lookup(g)?) != first {
                break;
            }
            n = (n + self.grain).min(max);
        }
        Ok((first, n))
    }

    fn alloc_grain(&mut self) -> Result<u64, VmdkError> {
        self.alloc(self.grain)
    }

    /// Reserves `bytes` at the end of the file; the next grain starts on a grain boundary.
    fn alloc(&mut self, bytes: u64) -> Result<u64, VmdkError> {
        let off = self.next_free;
        let end = off + bytes;
        if end.div_ceil(SECTOR) > u32::MAX as u64 {
            return Err(VmdkError::ExtentFull {
                path: self.f.path.clone(),
            });
        }
        self.next_free = end.div_ceil(self.grain) * self.grain;
        self.file_len = self.file_len.max(end);
        Ok(off)
    }

    /// Applies `src` to `len` bytes at extent offset `rel`. Write order, per grain table:
    /// grain data, then the grain table entries, then the redundant grain table entries; a
    /// new grain table is written whole before the grain directory entry that points to it,
    /// then the redundant directory entry.
    pub(crate) fn write(
        &mut self,
        rel: u64,
        len: u64,
        src: Src<'_>,
        parent: &mut Option<Box<Vmdk>>,
        base: u64,
    ) -> Result<(), VmdkError> {
        let cover = self.grain * self.gtes;
        let mut pos = 0u64;
        while pos < len {
            let off = rel + pos;
            let gdi = off / cover;
            let seg = (len - pos).min((gdi + 1) * cover - off);
            let sub = match src {
                Src::Data(b) => Src::Data(&b[pos as usize..(pos + seg) as usize]),
                s => s,
            };
            let r = self.write_segment(gdi, off, seg, sub, parent, base);
            if r.is_err() {
                // The cached table may hold entries that never reached the disk.
                self.cache.remove(gdi);
            }
            r?;
            pos += seg;
        }
        Ok(())
    }

    fn write_segment(
        &mut self,
        gdi: u64,
        off: u64,
        len: u64,
        src: Src<'_>,
        parent: &mut Option<Box<Vmdk>>,
        base: u64,
    ) -> Result<(), VmdkError> {
        let (slot, new_table) = match self.table(gdi)? {
            Some(s) => (s, false),
            None => {
                if matches!(src, Src::Discard) || (matches!(src, Src::Zeros) && parent.is_none()) {
                    return Ok(());
                }
                (self.cache.insert(gdi, vec![0; self.gtes as usize]), true)
            }
        };
        let r = self.fill_segment(slot, gdi, off, len, src, parent, base);
        let (lo, hi) = r?;
        if lo > hi {
            if new_table {
                self.cache.remove(gdi);
            }
            return Ok(());
        }
        if new_table {
            self.write_new_table(slot, gdi)
        } else {
            let bytes = encode_u32s(&self.cache.slots[slot].entries[lo..=hi]);
            let at = self.gd[gdi as usize] as u64 * SECTOR + lo as u64 * 4;
            self.f.write_at(at, &bytes, "writing a grain table")?;
            if let Some(rgd) = &self.rgd {
                let r = rgd[gdi as usize];
                if r != 0 {
                    let at = r as u64 * SECTOR + lo as u64 * 4;
                    self.f
                        .write_at(at, &bytes, "writing a redundant grain table")?;
                }
            }
            Ok(())
        }
    }

    /// Writes the data of one grain table's range and updates the cached entries. Returns
    /// the range of entries it changed (lo > hi: none).
    #[allow(clippy::too_many_arguments)]
    fn fill_segment(
        &mut self,
        slot: usize,
        gdi: u64,
        off: u64,
        len: u64,
        src: Src<'_>,
        parent: &mut Option<Box<Vmdk>>,
        base: u64,
    ) -> Result<(usize, usize), VmdkError> {
        let grain = self.grain;
        let (mut lo, mut hi) = (usize::MAX, 0usize);
        // A run of data going to consecutive file offsets: (file offset, src pos, len).
        let mut run: Option<(u64, u64, u64)> = None;
        let mut gbuf: Vec<u8> = Vec::new();
        let mut pos = 0u64;
        while pos < len {
            let o = off + pos;
            let g = o / grain;
            let i = (g % self.gtes) as usize;
            let in_g = o % grain;
            let n = (grain - in_g).min(len - pos);
            let whole = in_g == 0 && n == grain;
            let v = self.cache.slots[slot].entries[i];
            let gte = self.classify(gdi, i as u64, v)?;
            let mut set = |entries: &mut Vec<u32>, v: u32| {
                entries[i] = v;
                lo = lo.min(i);
                hi = hi.max(i);
            };
            match (gte, src) {
                (Gte::Data(s), Src::Data(b)) => {
                    let foff = s * SECTOR + in_g;
                    match &mut run {
                        Some((fo, sp, l)) if *fo + *l == foff && *sp + *l == pos => *l += n,
                        _ => {
                            self.flush_write(&mut run, b)?;
                            run = Some((foff, pos, n));
                        }
                    }
                }
                (Gte::Data(s), Src::Zeros) => self.f.zero_range(s * SECTOR + in_g, n)?,
                (Gte::Data(s), Src::Discard) => {
                    if whole {
                        self.f.zero_range(s * SECTOR, grain)?;
                    }
                }
                (_, Src::Discard) | (Gte::Zero, Src::Zeros) => {}
                (Gte::Unallocated, Src::Zeros) if parent.is_none() => {}
                (Gte::Unallocated, Src::Zeros) if whole && self.hdr.zero_grain() => {
                    set(&mut self.cache.slots[slot].entries, GTE_ZEROED);
                }
                (gte, src) => {
                    // Allocate the grain at the end of the file.
                    let foff = self.alloc_grain()?;
                    match src {
                        Src::Data(b) if whole => match &mut run {
                            Some((fo, sp, l)) if *fo + *l == foff && *sp + *l == pos => *l += n,
                            _ => {
                                self.flush_write(&mut run, b)?;
                                run = Some((foff, pos, n));
                            }
                        },
                        _ if gte == Gte::Unallocated && parent.is_some() && !whole => {
                            // Copy on write: the rest of the grain comes from the parent.
                            if let Src::Data(b) = src {
                                self.flush_write(&mut run, b)?;
                            }
                            gbuf.resize(grain as usize, 0);
                            read_parent(parent, base + g * grain, &mut gbuf)?;
                            let piece = &mut gbuf[in_g as usize..(in_g + n) as usize];
                            match src {
                                Src::Data(b) => {
                                    piece.copy_from_slice(&b[pos as usize..(pos + n) as usize])
                                }
                                _ => piece.fill(0),
                            }
                            self.f.write_at(foff, &gbuf, "writing a grain")?;
                        }
                        _ => {
                            // The new grain lies past the end of the file, which reads as
                            // zeros: only the data needs writing, and the file is extended
                            // over the whole grain.
                            if let Src::Data(b) = src {
                                self.flush_write(&mut run, b)?;
                                let piece = &b[pos as usize..(pos + n) as usize];
                                self.f.write_at(foff + in_g, piece, "writing a grain")?;
                            }
                            if self.f.len()? < foff + grain {
                                self.f.set_len(foff + grain)?;
                            }
                        }
                    }
                    set(&mut self.cache.slots[slot].entries, (foff / SECTOR) as u32);
                }
            }
            pos += n;
        }
        if let Src::Data(b) = src {
            self.flush_write(&mut run, b)?;
        }
        Ok((lo, hi))
    }

    fn flush_write(&self, run: &mut Option<(u64, u64, u64)>, b: &[u8]) -> Result<(), VmdkError> {
        if let Some((fo, sp, l)) = run.take() {
            self.f
                .write_at(fo, &b[sp as usize..(sp + l) as usize], "writing grains")?;
        }
        Ok(())
    }

    /// Writes a grain table made in memory, its redundant copy, then the directory entries.
    fn write_new_table(&mut self, slot: usize, gdi: u64) -> Result<(), VmdkError> {
        let gt_bytes = self.hdr.gt_sectors() * SECTOR;
        let copies = if self.rgd.is_some() { 2 } else { 1 };
        let at = self.alloc(gt_bytes * copies)?;
        let mut bytes = encode_u32s(&self.cache.slots[slot].entries);
        bytes.resize(gt_bytes as usize, 0);
        self.f.write_at(at, &bytes, "writing a new grain table")?;
        if self.rgd.is_some() {
            self.f
                .write_at(at + gt_bytes, &bytes, "writing a new redundant grain table")?;
        }
        let gt = (at / SECTOR) as u32;
        self.f.write_at(
            self.hdr.gd_offset * SECTOR + gdi * 4,
            &gt.to_le_bytes(),
            "writing the grain directory",
        )?;
        self.gd[gdi as usize] = gt;
        if let Some(rgd) = &mut self.rgd {
            let rgt = ((at + gt_bytes) / SECTOR) as u32;
            self.f.write_at(
                self.hdr.rgd_offset * SECTOR + gdi * 4,
                &rgt.to_le_bytes(),
                "writing the redundant grain directory",
            )?;
            rgd[gdi as usize] = rgt;
        }
        Ok(())
    }

    /// Rewrites the header sector from `hdr` (keeping bytes vmk does not interpret).
    fn write_header(&mut self, hdr: &SparseHeader) -> Result<(), VmdkError> {
        let enc = hdr.encode();
        let mut raw = self.raw_header;
        raw[..79].copy_from_slice(&enc[..79]);
        self.f.write_at(0, &raw, "writing the header")?;
        self.raw_header = raw;
        Ok(())
    }

    /// Sets or clears uncleanShutdown and syncs.
    pub(crate) fn set_unclean(&mut self, unclean: bool) -> Result<(), VmdkError> {
        if self.raw_header[format::field::UNCLEAN as usize] == unclean as u8 {
            return Ok(());
        }
        self.f.write_at(
            format::field::UNCLEAN,
            &[unclean as u8],
            "writing uncleanShutdown",
        )?;
        self.raw_header[format::field::UNCLEAN as usize] = unclean as u8;
        self.f.sync()
    }

    /// Grows the extent to `sectors`: new grain tables (zeros) and, when the directories
    /// have no room, new directories go to the end of the file and are synced before the
    /// header that makes them live is written. A crash before the header write leaves only
    /// unreferenced space at the end of the file, which `check` truncates.
    pub(crate) fn grow(&mut self, sectors: u64) -> Result<(), VmdkError> {
        let mut h = self.hdr.clone();
        h.capacity = sectors;
        let old_n = self.gd.len();
        let new_n = h.gd_entries() as usize;
        if new_n > old_n {
            let gt_bytes = h.gt_sectors() * SECTOR;
            let copies = if self.rgd.is_some() { 2 } else { 1 };
            let add = (new_n - old_n) as u64;
            let tables = self.alloc(add * gt_bytes * copies)?;
            // A directory vmk relocated has room for the largest extent; one in its
            // original place has the rest of its last sector.
            let max_n = self.max_dir_entries();
            let room = if h.gd_offset >= h.overhead {
                max_n
            } else {
                old_n.div_ceil(128) * 128
            };
            let relocate = new_n > room;
            let dir_bytes = (max_n.max(new_n) as u64 * 4).div_ceil(SECTOR) * SECTOR;
            let gd_at = if relocate {
                self.alloc(dir_bytes)?
            } else {
                h.gd_offset * SECTOR
            };
            let rgd_at = match (&self.rgd, relocate) {
                (Some(_), true) => self.alloc(dir_bytes)?,
                _ => h.rgd_offset * SECTOR,
            };
            self.f.set_len(self.file_len)?;
            let mut gd = self.gd.clone();
            let mut rgd = self.rgd.clone();
            for k in 0..add {
                gd.push(((tables + k * gt_bytes) / SECTOR) as u32);
                if let Some(r) = &mut rgd {
                    r.push(((tables + (add + k) * gt_bytes) / SECTOR) as u32);
                }
            }
            let from = if relocate { 0 } else { old_n };
            self.f.write_at(
                gd_at + from as u64 * 4,
                &encode_u32s(&gd[from..]),
                "writing the grain directory",
            )?;
            if let Some(r) = &rgd {
                self.f.write_at(
                    rgd_at + from as u64 * 4,
                    &encode_u32s(&r[from..]),
                    "writing the redundant grain directory",
                )?;
            }
            self.f.sync()?;
            h.gd_offset = gd_at / SECTOR;
            if rgd.is_some() {
                h.rgd_offset = rgd_at / SECTOR;
            }
            self.write_header(&h)?;
            self.f.sync()?;
            self.gd = gd;
            self.rgd = rgd;
        } else {
            self.write_header(&h)?;
            self.f.sync()?;
        }
        self.hdr = h;
        self.cache.clear();
        Ok(())
    }

    /// Directory entries of an extent of the largest capacity (2 TiB).
    pub(crate) fn max_dir_entries(&self) -> usize {
        format::MAX_SPARSE_SECTORS.div_ceil(self.hdr.grain_size * self.gtes) as usize
    }

    /// Appends a grain table holding `entries` (for `check`); returns its sector.
    pub(crate) fn append_table(&mut self, entries: &[u32]) -> Result<u32, VmdkError> {
        let gt_bytes = self.hdr.gt_sectors() * SECTOR;
        let at = self.alloc(gt_bytes)?;
        let mut b = encode_u32s(entries);
        b.resize(gt_bytes as usize, 0);
        self.f.write_at(at, &b, "writing a grain table")?;
        Ok((at / SECTOR) as u32)
    }

    /// Cuts the file to `len` bytes (for `check`).
    pub(crate) fn truncate(&mut self, len: u64) -> Result<(), VmdkError> {
        self.f.set_len(len)?;
        self.file_len = len;
        self.next_free = len.div_ceil(self.grain) * self.grain;
        self.cache.clear();
        Ok(())
    }

    /// Bytes of grains allocated (grain table entries that point to data).
    pub(crate) fn allocated_grains(&mut self) -> Result<u64, VmdkError> {
        let mut n = 0;
        for gdi in 0..self.gd.len() as u64 {
            if let Some(s) = self.table(gdi)? {
                n += self.cache.slots[s]
                    .entries
                    .iter()
                    .filter(|&&v| v > 1)
                    .count() as u64;
            }
        }
        Ok(n)
    }
}

/// Reads the footer of a streamOptimized image: footer marker, footer header, end-of-stream
/// marker in the last three sectors.
fn read_footer(f: &ImageFile, file_len: u64) -> Result<SparseHeader, VmdkError> {
    let end = file_len / SECTOR * SECTOR;
    let bad = |offset: u64, what: &'static str| VmdkError::BadHeader {
        path: f.path.clone(),
        offset,
        problem: HeaderProblem::BadFooter(what),
    };
    if end < 4 * SECTOR {
        return Err(bad(
            format::field::GD_OFFSET,
            "the grain directory is at the end but the file is too short for a footer",
        ));
    }
    let at = end - 3 * SECTOR;
    let mut b = vec![0u8; 3 * SECTOR as usize];
    f.read_exact_at(at, &mut b, "reading the footer")?;
    let marker = MetadataMarker::decode(&b[..512]);
    if marker.is_none_or(|m| m.size != 0 || m.kind != MARKER_FOOTER) {
        return Err(bad(at, "no footer marker in the third-last sector"));
    }
    let eos = MetadataMarker::decode(&b[1024..]);
    if eos.is_none_or(|m| m.num_sectors != 0 || m.size != 0 || m.kind != MARKER_EOS) {
        return Err(bad(at + 1024, "no end-of-stream marker in the last sector"));
    }
    SparseHeader::decode(&b[512..1024]).map_err(|(o, problem)| VmdkError::BadHeader {
        path: f.path.clone(),
        offset: at + 512 + o,
        problem,
    })
}

fn flush_parent(
    prun: &mut Option<(u64, usize, usize)>,
    buf: &mut [u8],
    parent: &mut Option<Box<Vmdk>>,
) -> Result<(), VmdkError> {
    if let Some((vo, bp, l)) = prun.take() {
        read_parent(parent, vo, &mut buf[bp..bp + l])?;
    }
    Ok(())
}

/// Reads disk offset `off` of the parent; what lies beyond the parent's end reads as zeros.
pub(crate) fn read_parent(
    parent: &mut Option<Box<Vmdk>>,
    off: u64,
    buf: &mut [u8],
) -> Result<(), VmdkError> {
    match parent {
        None => buf.fill(0),
        Some(p) => {
            let cap = p.size();
            let n = if off >= cap {
                0
            } else {
                (cap - off).min(buf.len() as u64) as usize
            };
            if n > 0 {
                p.read_at(off, &mut buf[..n])?;
            }
            buf[n..].fill(0);
        }
    }
    Ok(())
}

/// Writes a new hosted sparse extent of `sectors` with all its grain tables (left as holes),
/// in the layout VMware and QEMU use: header, descriptor, redundant grain directory and
/// tables, grain directory and tables, grains from a grain boundary on.
pub(crate) fn write_sparse_extent(
    path: &Path,
    sectors: u64,
    grain_sectors: u64,
    descriptor: Option<&str>,
    zeroed_grain: bool,
    crash: &Arc<CrashSwitch>,
    store: &Store,
) -> Result<ImageFile, VmdkError> {
    // A sparse extent grows as grains are written: no size hint (thin on a datastore).
    let f = ImageFile::create_on(store, path, 0, crash)?;
    let h = sparse_layout(
        sectors,
        grain_sectors,
        descriptor.map_or(0, str::len),
        zeroed_grain,
    );
    let n = h.gd_entries();
    let gt_sectors = h.gt_sectors();
    f.write_at(0, &h.encode(), "writing the header")?;
    if let Some(text) = descriptor {
        let mut b = text.as_bytes().to_vec();
        b.resize((h.descriptor_size * SECTOR) as usize, 0);
        f.write_at(
            h.descriptor_offset * SECTOR,
            &b,
            "writing the embedded descriptor",
        )?;
    }
    let gd_sectors = (n * 4).div_ceil(SECTOR);
    let dir = |first_table: u64| -> Vec<u8> {
        let v: Vec<u32> = (0..n)
            .map(|i| (first_table + i * gt_sectors) as u32)
            .collect();
        encode_u32s(&v)
    };
    f.write_at(
        h.rgd_offset * SECTOR,
        &dir(h.rgd_offset + gd_sectors),
        "writing the redundant grain directory",
    )?;
    f.write_at(
        h.gd_offset * SECTOR,
        &dir(h.gd_offset + gd_sectors),
        "writing the grain directory",
    )?;
    f.set_len(h.overhead * SECTOR)?;
    f.sync()?;
    Ok(f)
}

/// The header of a new sparse extent.
pub(crate) fn sparse_layout(
    sectors: u64,
    grain_sectors: u64,
    descriptor_len: usize,
    zeroed_grain: bool,
) -> SparseHeader {
    let per_gt = GTES_PER_GT * grain_sectors;
    let n = sectors.div_ceil(per_gt);
    let gt_sectors = (GTES_PER_GT * 4).div_ceil(SECTOR);
    let gd_sectors = (n * 4).div_ceil(SECTOR);
    let (desc_off, desc_size) = if descriptor_len > 0 {
        (
            1,
            EMBEDDED_DESCRIPTOR_SECTORS.max((descriptor_len as u64).div_ceil(SECTOR) + 4),
        )
    } else {
        (0, 0)
    };
    let rgd = 1 + desc_size;
    let gd = rgd + gd_sectors + n * gt_sectors;
    let end = gd + gd_sectors + n * gt_sectors;
    SparseHeader {
        version: if zeroed_grain { 2 } else { 1 },
        flags: FLAG_NL_DETECT | FLAG_RGD | if zeroed_grain { FLAG_ZERO_GRAIN } else { 0 },
        capacity: sectors,
        grain_size: grain_sectors,
        descriptor_offset: desc_off,
        descriptor_size: desc_size,
        num_gtes_per_gt: GTES_PER_GT as u32,
        rgd_offset: rgd,
        gd_offset: gd,
        overhead: end.div_ceil(grain_sectors) * grain_sectors,
        unclean_shutdown: false,
        compress_algorithm: 0,
    }
}
