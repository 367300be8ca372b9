//! `check`: finds (and repairs) what a crash can leave in an image, and reports other
//! damage it finds on the way. See the crate documentation for the write order it relies on.

use std::fmt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::descriptor::NO_PARENT;
use crate::disk::{open_parts, store_descriptor, Kind};
use crate::error::VmdkError;
use crate::file::CrashSwitch;
use crate::format::{decode_u32s, encode_u32s, Gte, SECTOR};
use crate::sparse::SparseExtent;
use crate::storage::{Storage, Store};
use crate::{OpenMode, Vmdk};

/// What `check` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// uncleanShutdown was set: the disk was not closed.
    UncleanShutdown,
    /// Space in a sparse extent no table points to.
    LeakedSpace,
    /// Redundant grain directory or table entries that differ from the primary ones.
    StaleRedundantCopy,
    /// Directory or table entries that point outside the file or into its metadata.
    BadEntry,
    /// Two table entries pointing to the same grain.
    CrossLinkedGrain,
    /// The descriptor's extent size differs from the sparse header's capacity.
    SizeMismatch,
    /// A flat extent file shorter than its extent (the rest reads as zeros).
    ShortFlatExtent,
    /// The parent of a delta disk cannot be opened or has another CID.
    Parent,
}

/// One thing `check` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub path: PathBuf,
    /// Byte offset in `path` of the (first) place concerned.
    pub offset: Option<u64>,
    pub message: String,
    pub repaired: bool,
    /// Informational only: nothing in the disk's data or tables is wrong. Today this is
    /// uncleanShutdown on a disk whose tables are consistent, which `qemu-img check` calls
    /// clean too (a disk is left so by every crash of a process that had it open).
    pub notice: bool,
}

/// The result of [`Vmdk::check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// Unreferenced bytes found in sparse extents.
    pub leaked_bytes: u64,
    /// Of those, bytes at the ends of files that repair truncated.
    pub reclaimed_bytes: u64,
    /// Redundant directory and table entries that differed from the primary ones.
    pub stale_redundant_entries: u64,
    /// Directory and table entries that pointed outside the file or into metadata.
    pub bad_entries: u64,
    /// uncleanShutdown was set.
    pub unclean_shutdown: bool,
}

impl CheckReport {
    /// Nothing found, not even a notice.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// What is still wrong or still set (after a repair: what it could not repair),
    /// notices included.
    pub fn unrepaired(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.repaired)
    }

    /// What is still wrong, notices left out: the disk has problems if this is not empty.
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.unrepaired().filter(|f| !f.notice)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for x in &self.findings {
            write!(f, "{}", x.path.display())?;
            if let Some(o) = x.offset {
                write!(f, " (byte {o})")?;
            }
            writeln!(
                f,
                ": {}{}{}",
                if x.notice { "notice: " } else { "" },
                x.message,
                if x.repaired { " [repaired]" } else { "" }
            )?;
        }
        if self.findings.iter().all(|x| x.notice) {
            writeln!(f, "no problems found")?;
        }
        Ok(())
    }
}

struct Ctx<'a> {
    rep: &'a mut CheckReport,
    repair: bool,
}

impl Ctx<'_> {
    fn add(
        &mut self,
        kind: FindingKind,
        path: &Path,
        offset: Option<u64>,
        message: String,
        repaired: bool,
    ) {
        self.rep.findings.push(Finding {
            kind,
            path: path.to_path_buf(),
            offset,
            message,
            repaired,
            notice: false,
        });
    }
}

/// A growable bitmap.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] >> (i % 64) & 1 == 1;
        self.0[w] |= 1 << (i % 64);
        was
    }

    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
}

pub(crate) fn check(path: &Path, repair: bool, store: &Store) -> Result<CheckReport, VmdkError> {
    let crash = CrashSwitch::new();
    let mut parts = open_parts(path, repair, false, &crash, store)?;
    let mut rep = CheckReport::default();
    let mut ctx = Ctx {
        rep: &mut rep,
        repair,
    };
    let mut desc_dirty = false;
    for e in &mut parts.extents {
        match &mut e.kind {
            Kind::Sparse(sp) => {
                if sp.unclean_at_open {
                    ctx.rep.unclean_shutdown = true;
                }
                check_sparse(sp, &mut ctx)?;
                if let Some(l) = e.line {
                    let line = &mut parts.desc.extents[l];
                    if line.sectors != sp.hdr.capacity {
                        let msg = format!(
                            "the descriptor (line {}) gives the extent {} sectors, its header {} (an interrupted grow?)",
                            line.line, line.sectors, sp.hdr.capacity
                        );
                        let fix = repair && parts.desc_loc != crate::disk::DescLoc::None;
                        if fix {
                            line.sectors = sp.hdr.capacity;
                            desc_dirty = true;
                        }
                        ctx.add(FindingKind::SizeMismatch, &parts.path, None, msg, fix);
                    }
                }
            }
            Kind::Flat { f, offset } => {
                let len = f.len()?;
                let need = *offset + e.size;
                if len < need {
                    let msg = format!(
                        "the flat extent file is {len} bytes, shorter than the {need} bytes its extent needs (the rest reads as zeros)"
                    );
                    if repair {
                        f.set_len(need)?;
                    }
                    ctx.add(
                        FindingKind::ShortFlatExtent,
                        &e.path,
                        Some(len),
                        msg,
                        repair,
                    );
                }
            }
            Kind::Zero => {}
        }
    }
    if parts.desc.parent_cid != NO_PARENT {
        let hint = parts.desc.parent_hint.clone().unwrap_or_default();
        let p = Path::new(&hint);
        let ppath = if p.is_absolute() {
            p.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).join(p)
        };
        match Vmdk::open_store(&ppath, OpenMode::ReadOnly, store) {
            Err(e) => ctx.add(
                FindingKind::Parent,
                path,
                None,
                format!("the parent cannot be opened: {e}"),
                false,
            ),
            Ok(pd) if pd.desc.cid != parts.desc.parent_cid => ctx.add(
                FindingKind::Parent,
                path,
                None,
                format!(
                    "parentCID is {:08x} but the parent {} has CID {:08x}: the parent was changed after this disk was made on it",
                    parts.desc.parent_cid,
                    ppath.display(),
                    pd.desc.cid
                ),
                false,
            ),
            Ok(_) => {}
        }
    }
    if desc_dirty {
        store_descriptor(
            &parts.path,
            parts.desc_loc,
            &parts.desc,
            &mut parts.extents,
            &crash,
            parts.desc_file.as_ref(),
        )?;
    }
    if ctx.rep.unclean_shutdown {
        // The flag alone says only that a process had the disk open when it died; with
        // nothing else found the tables are consistent and the disk reads as it was left.
        let consistent = ctx.rep.findings.is_empty();
        let message = if consistent {
            "uncleanShutdown is set: the disk was not closed cleanly, but its grain tables are consistent; a repair only clears the flag"
        } else {
            "uncleanShutdown is set: the disk was not closed cleanly"
        };
        ctx.add(
            FindingKind::UncleanShutdown,
            path,
            Some(crate::format::field::UNCLEAN),
            message.into(),
            repair,
        );
        if let Some(f) = ctx.rep.findings.last_mut() {
            f.notice = consistent;
        }
    }
    if repair {
        for e in &mut parts.extents {
            match &mut e.kind {
                Kind::Sparse(sp) => {
                    sp.f.sync()?;
                    sp.set_unclean(false)?;
                }
                Kind::Flat { f, .. } => f.sync()?,
                Kind::Zero => {}
            }
        }
    }
    Ok(rep)
}

fn check_sparse(sp: &mut SparseExtent, ctx: &mut Ctx<'_>) -> Result<(), VmdkError> {
    let path = sp.f.path.clone();
    let compressed = sp.hdr.compressed();
    let fix = ctx.repair && !compressed;
    let gt_bytes = sp.hdr.gt_sectors() * SECTOR;
    let gtes = sp.gtes as usize;
    let grain = sp.grain;
    let base = sp.hdr.overhead * SECTOR;
    let orig_len = sp.file_len;
    let mut used = Bits::default();
    let mut starts = Bits::default();
    let mark = |used: &mut Bits, off: u64, len: u64| {
        let end = off.saturating_add(len).min(orig_len);
        if end <= base || len == 0 {
            return;
        }
        let first = off.max(base);
        for u in (first - base) / grain..(end - base).div_ceil(grain) {
            used.set(u);
        }
    };
    let n = sp.gd.len();
    // A directory in the data area was relocated by a grow, with room for the largest
    // extent.
    let dir_bytes = |at: u64| {
        if at >= base {
            sp.max_dir_entries().max(n) as u64 * 4
        } else {
            n as u64 * 4
        }
    };
    mark(
        &mut used,
        sp.hdr.gd_offset * SECTOR,
        dir_bytes(sp.hdr.gd_offset * SECTOR),
    );
    if sp.rgd.is_some() {
        mark(
            &mut used,
            sp.hdr.rgd_offset * SECTOR,
            dir_bytes(sp.hdr.rgd_offset * SECTOR),
        );
    }
    let rules = sp.rules();
    let (mut bad, mut stale, mut cross) = (0u64, 0u64, 0u64);
    let (mut first_bad, mut first_stale, mut first_cross) = (None, None, None);
    let read_table = |sp: &SparseExtent, v: u32| -> Result<Vec<u32>, VmdkError> {
        let mut b = vec![0u8; gtes * 4];
        sp.f.read_at(v as u64 * SECTOR, &mut b, "reading a grain table")?;
        Ok(decode_u32s(&b))
    };
    for i in 0..n {
        let p = sp.gd[i];
        let r = sp.rgd.as_ref().map(|r| r[i]);
        let p_bad = sp.table_ptr_problem(p).is_some();
        let r_bad = r.is_some_and(|r| sp.table_ptr_problem(r).is_some());
        let gd_at = sp.hdr.gd_offset * SECTOR + i as u64 * 4;
        let rgd_at = sp.hdr.rgd_offset * SECTOR + i as u64 * 4;
        // The primary table, and where its entries come from.
        let mut table: Option<Vec<u32>> = None;
        let mut table_at: Option<u32> = None;
        if p_bad {
            bad += 1;
            first_bad.get_or_insert(gd_at);
            if let Some(rv) = r.filter(|&rv| rv != 0 && !r_bad) {
                // Restore the primary table from the redundant one.
                let t = read_table(sp, rv)?;
                if fix {
                    let at = sp.append_table(&t)?;
                    sp.f.write_at(gd_at, &at.to_le_bytes(), "repairing the grain directory")?;
                    sp.gd[i] = at;
                    table_at = Some(at);
                }
                table = Some(t);
            } else if fix {
                sp.f.write_at(gd_at, &0u32.to_le_bytes(), "repairing the grain directory")?;
                sp.gd[i] = 0;
            }
        } else if p != 0 {
            table = Some(read_table(sp, p)?);
            table_at = Some(p);
        }
        // The redundant table.
        let mut rtable: Option<Vec<u32>> = None;
        let mut rtable_at: Option<u32> = None;
        if let Some(rv) = r {
            if r_bad || (rv != 0) != table.is_some() {
                stale += 1;
                first_stale.get_or_insert(rgd_at);
                if fix {
                    let new = match &table {
                        Some(t) => sp.append_table(t)?,
                        None => 0,
                    };
                    sp.f.write_at(
                        rgd_at,
                        &new.to_le_bytes(),
                        "repairing the redundant grain directory",
                    )?;
                    if let Some(rg) = &mut sp.rgd {
                        rg[i] = new;
                    }
                    if new != 0 {
                        rtable_at = Some(new);
                        rtable = table.clone();
                    }
                }
            } else if rv != 0 {
                rtable = Some(read_table(sp, rv)?);
                rtable_at = Some(rv);
            }
        }
        let Some(mut t) = table else { continue };
        let mut t_dirty = false;
        let mut r_dirty = false;
        for j in 0..gtes {
            let e = t[j];
            let ok = rules.classify(e).is_ok();
            let re = rtable.as_ref().map(|rt| rt[j]);
            let new = if ok {
                e
            } else {
                bad += 1;
                if first_bad.is_none() {
                    first_bad = table_at.map(|a| a as u64 * SECTOR + j as u64 * 4);
                }
                re.filter(|&a| a != e && rules.classify(a).is_ok())
                    .unwrap_or(0)
            };
            if new != e {
                t[j] = new;
                t_dirty = true;
            }
            if let (Some(rt), Some(re)) = (&mut rtable, re) {
                if re != new {
                    // The same bad value in both copies is one bad entry, not a stale one.
                    if ok || re != e {
                        stale += 1;
                        if first_stale.is_none() {
                            first_stale = rtable_at.map(|a| a as u64 * SECTOR + j as u64 * 4);
                        }
                    }
                    rt[j] = new;
                    r_dirty = true;
                }
            }
            if let Ok(Gte::Data(s)) = rules.classify(new) {
                let off = s * SECTOR;
                if !compressed {
                    if off >= base
                        && (off - base).is_multiple_of(grain)
                        && starts.set((off - base) / grain)
                    {
                        cross += 1;
                        first_cross.get_or_insert(off);
                    }
                    mark(&mut used, off, grain);
                }
            }
        }
        if fix && t_dirty {
            if let Some(a) = table_at {
                sp.f.write_at(
                    a as u64 * SECTOR,
                    &encode_u32s(&t),
                    "repairing a grain table",
                )?;
            }
        }
        if fix && r_dirty {
            if let (Some(a), Some(rt)) = (rtable_at, &rtable) {
                sp.f.write_at(
                    a as u64 * SECTOR,
                    &encode_u32s(rt),
                    "repairing a redundant grain table",
                )?;
            }
        }
        if let Some(a) = table_at {
            mark(&mut used, a as u64 * SECTOR, gt_bytes);
        }
        if let Some(a) = rtable_at {
            mark(&mut used, a as u64 * SECTOR, gt_bytes);
        }
    }
    ctx.rep.bad_entries += bad;
    ctx.rep.stale_redundant_entries += stale;
    if bad > 0 {
        ctx.add(
            FindingKind::BadEntry,
            &path,
            first_bad,
            format!("{bad} grain directory or table entries point outside the file or into its metadata (cleared or restored from the redundant copy)"),
            fix,
        );
    }
    if stale > 0 {
        ctx.add(
            FindingKind::StaleRedundantCopy,
            &path,
            first_stale,
            format!(
                "{stale} redundant grain directory or table entries differ from the primary ones"
            ),
            fix,
        );
    }
    if cross > 0 {
        ctx.add(
            FindingKind::CrossLinkedGrain,
            &path,
            first_cross,
            format!("{cross} grains are pointed to by more than one table entry; copy the disk's data out and restore it"),
            false,
        );
    }
    if compressed {
        return Ok(());
    }
    // Leaks: grain-sized units of the data area nothing points to. Tables appended by the
    // repair above lie past the original end and are not counted.
    let units = orig_len.saturating_sub(base).div_ceil(grain);
    let last_used = (0..units).rev().find(|&u| used.get(u));
    let keep = match last_used {
        Some(u) => (base + (u + 1) * grain).min(orig_len),
        None => base.min(orig_len),
    };
    let tail = orig_len - keep;
    let middle: u64 = (0..last_used.map_or(0, |u| u + 1))
        .filter(|&u| !used.get(u))
        .count() as u64
        * grain;
    ctx.rep.leaked_bytes += tail + middle;
    if tail > 0 {
        let appended = sp.file_len > orig_len;
        let can = fix && !appended;
        if can {
            sp.truncate(keep)?;
            ctx.rep.reclaimed_bytes += tail;
        }
        ctx.add(
            FindingKind::LeakedSpace,
            &path,
            Some(keep),
            format!("{tail} bytes at the end of the file are not referenced by any grain table (grains of an interrupted write)"),
            can,
        );
    }
    if middle > 0 {
        ctx.add(
            FindingKind::LeakedSpace,
            &path,
            None,
            format!("{middle} bytes inside the file are not referenced by any grain table; `vmk disk convert` makes a compact copy"),
            false,
        );
    }
    Ok(())
}

impl Vmdk {
    /// Checks the disk at `path` (which must not be open elsewhere) and, with `repair`,
    /// repairs what a crash can leave: see [`CheckReport`] and the crate documentation.
    pub fn check(path: &Path, repair: bool) -> Result<CheckReport, VmdkError> {
        check(path, repair, &None)
    }

    /// [`Vmdk::check`] of a disk on `storage`.
    pub fn check_on(
        storage: Arc<dyn Storage>,
        path: &Path,
        repair: bool,
    ) -> Result<CheckReport, VmdkError> {
        check(path, repair, &Some(storage))
    }
}
