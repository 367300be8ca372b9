//! [`Vmdk`]: an open disk.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT};
use crate::error::{DescriptorProblem, VmdkError};
use crate::file::{CrashSwitch, ImageFile, Lock};
use crate::format::{COWD_MAGIC, MAGIC, MAX_DESCRIPTOR_BYTES, SECTOR};
use crate::sparse::{SparseExtent, Src};
use crate::storage::{Storage, Store};
use crate::{ExtentInfo, ExtentKind, OpenMode, Subformat, VmdkInfo, DEFAULT_SPLIT_SIZE};

/// Deepest chain of delta disks vmk follows.
const MAX_PARENT_DEPTH: usize = 32;

/// Where the descriptor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DescLoc {
    /// In the sparse extent of extent 0.
    Embedded,
    /// In its own file (the path the disk was opened by).
    File,
    /// Nowhere: a sparse extent opened directly, without an embedded descriptor.
    None,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Sparse(Box<SparseExtent>),
    Flat { f: ImageFile, offset: u64 },
    Zero,
}

#[derive(Debug)]
pub(crate) struct Extent {
    /// Disk byte offset of the extent.
    pub(crate) start: u64,
    /// Bytes.
    pub(crate) size: u64,
    pub(crate) kind: Kind,
    pub(crate) path: PathBuf,
    pub(crate) writable: bool,
    /// Index of the descriptor extent line (None: synthesized).
    pub(crate) line: Option<usize>,
}

/// What opening the files of a disk yields (shared by [`Vmdk::open`] and `check`).
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) path: PathBuf,
    pub(crate) desc: Descriptor,
    pub(crate) desc_loc: DescLoc,
    pub(crate) extents: Vec<Extent>,
    pub(crate) subformat: Subformat,
    /// The descriptor file, kept open (and so locked) on a [`Storage`].
    pub(crate) desc_file: Option<ImageFile>,
}

/// An open VMDK disk. See the [crate documentation](crate) for the format, the write order
/// and the locking.
#[derive(Debug)]
pub struct Vmdk {
    pub(crate) path: PathBuf,
    writable: bool,
    pub(crate) desc: Descriptor,
    desc_loc: DescLoc,
    pub(crate) extents: Vec<Extent>,
    capacity: u64,
    parent: Option<Box<Vmdk>>,
    parent_path: Option<PathBuf>,
    subformat: Subformat,
    cid_updated: bool,
    unclean_at_open: bool,
    /// A write failed half-way: leave uncleanShutdown set.
    failed: bool,
    closed: bool,
    pub(crate) crash: Arc<CrashSwitch>,
    /// Where the files are (`None`: the host's file system).
    store: Store,
    /// The descriptor file on a storage, held open so that it stays locked with the extents
    /// and is rewritten in place (a storage has no rename).
    desc_file: Option<ImageFile>,
}

fn resolve(desc_path: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        desc_path.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// A descriptor for a sparse extent that has none.
fn synthesized(file: &Path, sectors: u64, subformat: Subformat) -> Descriptor {
    Descriptor {
        version: 1,
        cid: 0xffff_fffe,
        parent_cid: NO_PARENT,
        create_type: subformat,
        parent_hint: None,
        extents: vec![ExtentLine {
            access: Access::ReadWrite,
            sectors,
            kind: ExtentType::Sparse,
            file: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            offset: 0,
            line: 0,
        }],
        other: Vec::new(),
        ddb: Vec::new(),
    }
}

fn bad_descriptor(path: &Path, (line, text, problem): crate::descriptor::ParseError) -> VmdkError {
    VmdkError::BadDescriptor {
        path: path.to_path_buf(),
        line,
        text,
        problem,
    }
}

/// Opens the files of the disk at `path`. `strict`: validate every grain directory entry.
pub(crate) fn open_parts(
    path: &Path,
    writable: bool,
    strict: bool,
    crash: &Arc<CrashSwitch>,
    store: &Store,
) -> Result<Parts, VmdkError> {
    let lock = if writable {
        Lock::Exclusive
    } else {
        Lock::Shared
    };
    let f = ImageFile::open_on(store, path, writable, crash)?
        .map_err(|e| VmdkError::io(path, "opening the image", 0, e))?;
    let len = f.len()?;
    let mut head = [0u8; 4];
    if len >= 4 {
        f.read_exact_at(0, &mut head, "reading the first sector")?;
    }
    let magic = u32::from_le_bytes(head);
    if magic == MAGIC {
        f.lock(lock)?;
        let sp = SparseExtent::open(f, strict)?;
        let subformat = if sp.hdr.compressed() {
            Subformat::StreamOptimized
        } else {
            Subformat::MonolithicSparse
        };
        let mut desc_loc = DescLoc::None;
        let mut desc = synthesized(path, sp.hdr.capacity, subformat);
        if sp.hdr.descriptor_offset != 0 {
            let at = sp.hdr.descriptor_offset * SECTOR;
            let n = (sp.hdr.descriptor_size * SECTOR).min(sp.file_len.saturating_sub(at));
            let mut buf = vec![0u8; n as usize];
            sp.f.read_at(at, &mut buf, "reading the embedded descriptor")?;
            if buf.iter().any(|b| !b.is_ascii_whitespace() && *b != 0) {
                desc = Descriptor::parse(&buf).map_err(|e| bad_descriptor(path, e))?;
                desc.create_type = subformat;
            }
            desc_loc = DescLoc::Embedded;
        }
        let line = if desc.extents.is_empty() {
            None
        } else {
            Some(0)
        };
        let extent = Extent {
            start: 0,
            size: sp.capacity(),
            writable,
            kind: Kind::Sparse(Box::new(sp)),
            path: path.to_path_buf(),
            line,
        };
        return Ok(Parts {
            path: path.to_path_buf(),
            desc,
            desc_loc,
            extents: vec![extent],
            subformat,
            desc_file: None,
        });
    }
    if magic == COWD_MAGIC {
        return Err(VmdkError::Unsupported {
            path: path.to_path_buf(),
            what: "a VMFS sparse (\"COWD\") extent".into(),
            hint: "convert the disk on ESX to a flat or hosted sparse disk first".into(),
        });
    }
    if len > MAX_DESCRIPTOR_BYTES {
        return Err(VmdkError::NotVmdk {
            path: path.to_path_buf(),
            why: format!(
                "no sparse extent header (\"KDMV\") and, at {len} bytes, too large to be a text descriptor"
            ),
        });
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(0, &mut buf, "reading the descriptor")?;
    let text = crate::descriptor::looks_like_descriptor(&buf);
    if !text {
        return Err(VmdkError::NotVmdk {
            path: path.to_path_buf(),
            why: format!(
                "it starts with {:02x?}, not the sparse extent magic \"KDMV\", and is not a text descriptor",
                &buf[..buf.len().min(4)]
            ),
        });
    }
    let desc = Descriptor::parse(&buf).map_err(|e| bad_descriptor(path, e))?;
    let mut extents = Vec::with_capacity(desc.extents.len());
    let mut start = 0u64;
    for (i, line) in desc.extents.iter().enumerate() {
        let ew = writable && line.access == Access::ReadWrite;
        if line.access == Access::NoAccess {
            return Err(VmdkError::Unsupported {
                path: path.to_path_buf(),
                what: format!("the NOACCESS extent on descriptor line {}", line.line),
                hint: "vmk reads only RW and RDONLY extents".into(),
            });
        }
        let epath = if line.kind == ExtentType::Zero {
            path.to_path_buf()
        } else {
            resolve(path, &line.file)
        };
        let open = |w: bool| -> Result<ImageFile, VmdkError> {
            let f = ImageFile::open_on(store, &epath, w, crash)?.map_err(|source| {
                VmdkError::MissingExtent {
                    descriptor: path.to_path_buf(),
                    line: line.line,
                    extent: epath.clone(),
                    source,
                }
            })?;
            f.lock(if w { Lock::Exclusive } else { Lock::Shared })?;
            Ok(f)
        };
        let (kind, size) = match line.kind {
            ExtentType::Zero => (Kind::Zero, line.sectors * SECTOR),
            ExtentType::Sparse => {
                let sp = SparseExtent::open(open(ew)?, strict)?;
                let size = sp.capacity();
                (Kind::Sparse(Box::new(sp)), size)
            }
            ExtentType::Flat | ExtentType::Vmfs => (
                Kind::Flat {
                    f: open(ew)?,
                    offset: line.offset * SECTOR,
                },
                line.sectors * SECTOR,
            ),
        };
        extents.push(Extent {
            start,
            size,
            kind,
            path: epath,
            writable: ew,
            line: Some(i),
        });
        start = start
            .checked_add(size)
            .ok_or_else(|| VmdkError::BadDescriptor {
                path: path.to_path_buf(),
                line: line.line,
                text: String::new(),
                problem: DescriptorProblem::BadExtent("the extents add up to more than 2^64 bytes"),
            })?;
    }
    Ok(Parts {
        path: path.to_path_buf(),
        subformat: desc.create_type,
        desc,
        desc_loc: DescLoc::File,
        extents,
        desc_file: f.on_store().then_some(f),
    })
}

/// A random CID, never one of the reserved values.
fn new_cid(old: u32) -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        let cid = h.finish() as u32;
        if cid != old && cid < 0xffff_fffe {
            return cid;
        }
    }
}

pub(crate) fn random_cid() -> u32 {
    new_cid(0xffff_ffff)
}

/// Writes `text` to `path` through a temporary file and a rename, so that a crash leaves the
/// old or the new descriptor.
pub(crate) fn write_file_atomic(
    path: &Path,
    text: &[u8],
    crash: &CrashSwitch,
) -> Result<(), VmdkError> {
    if !crash.pass() {
        return Ok(());
    }
    // 0o644 before the umask, as a plain file create gives.
    vmk_base::fs::write_atomic(path, text, 0o644)
        .map_err(|e| VmdkError::io(path, "replacing the descriptor", 0, e))?;
    Ok(())
}

/// Replaces the contents of a descriptor file on a storage, which has no rename: one write
/// of the whole text (a descriptor is a few hundred bytes, one sector or a few; a CID change
/// keeps its length), then the length, then a flush. A process crash cannot tear a single
/// write; a power loss in the middle may, as it may for any in-place update.
fn rewrite_in_place(f: &ImageFile, text: &[u8]) -> Result<(), VmdkError> {
    f.write_at(0, text, "rewriting the descriptor")?;
    if f.len()? != text.len() as u64 {
        f.set_len(text.len() as u64)?;
    }
    f.sync()
}

/// Writes the descriptor where it lives.
pub(crate) fn store_descriptor(
    path: &Path,
    loc: DescLoc,
    desc: &Descriptor,
    extents: &mut [Extent],
    crash: &CrashSwitch,
    desc_file: Option<&ImageFile>,
) -> Result<(), VmdkError> {
    let text = desc.render();
    match loc {
        DescLoc::None => Ok(()),
        DescLoc::File => match desc_file {
            Some(f) => rewrite_in_place(f, text.as_bytes()),
            None => write_file_atomic(path, text.as_bytes(), crash),
        },
        DescLoc::Embedded => {
            let Some(Extent {
                kind: Kind::Sparse(sp),
                ..
            }) = extents.first_mut()
            else {
                return Ok(());
            };
            let space = sp.hdr.descriptor_size * SECTOR;
            if text.len() as u64 > space {
                return Err(VmdkError::BadDescriptor {
                    path: path.to_path_buf(),
                    line: 0,
                    text: String::new(),
                    problem: DescriptorProblem::DoesNotFit {
                        len: text.len(),
                        space,
                    },
                });
            }
            let mut buf = text.into_bytes();
            buf.resize(space as usize, 0);
            sp.f.write_at(
                sp.hdr.descriptor_offset * SECTOR,
                &buf,
                "writing the embedded descriptor",
            )
        }
    }
}

/// Sets the geometry entries of the DDB for `bytes`, when the descriptor has geometry.
pub(crate) fn set_geometry(desc: &mut Descriptor, bytes: u64) {
    let heads: u64 = desc
        .ddb("ddb.geometry.heads")
        .and_then(|h| h.parse().ok())
        .filter(|&h| h > 0)
        .unwrap_or(16);
    let sectors: u64 = desc
        .ddb("ddb.geometry.sectors")
        .and_then(|h| h.parse().ok())
        .filter(|&h| h > 0)
        .unwrap_or(63);
    let cyl = (bytes / SECTOR / (heads * sectors)).min(65535);
    desc.set_ddb("ddb.geometry.cylinders", cyl.to_string());
}

/// What a range of a disk reads as, from [`Vmdk::block_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// May hold data.
    Data,
    /// Known to read as zeros (never written without parent, zeroed grains, ZERO extents,
    /// holes in flat extent files).
    Zero,
}

impl Vmdk {
    /// Opens the disk whose descriptor (or monolithic sparse file) is `path`. Read-write
    /// opens set uncleanShutdown in every sparse extent until [`Vmdk::close`]. Delta disks
    /// open their parents read-only.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Vmdk, VmdkError> {
        Vmdk::open_at_depth(path, mode, 0, &None)
    }

    /// Opens the disk at `path` on `storage` (its extents and parent too): see
    /// [`crate::storage`]. Every file stays open, and so locked, until the disk is closed.
    pub fn open_on(
        storage: Arc<dyn Storage>,
        path: &Path,
        mode: OpenMode,
    ) -> Result<Vmdk, VmdkError> {
        Vmdk::open_at_depth(path, mode, 0, &Some(storage))
    }

    pub(crate) fn open_store(
        path: &Path,
        mode: OpenMode,
        store: &Store,
    ) -> Result<Vmdk, VmdkError> {
        Vmdk::open_at_depth(path, mode, 0, store)
    }

    fn open_at_depth(
        path: &Path,
        mode: OpenMode,
        depth: usize,
        store: &Store,
    ) -> Result<Vmdk, VmdkError> {
        let crash = CrashSwitch::new();
        let writable = mode == OpenMode::ReadWrite;
        let parts = open_parts(path, writable, true, &crash, store)?;
        if writable {
            for e in &parts.extents {
                if let Kind::Sparse(sp) = &e.kind {
                    if sp.hdr.compressed() {
                        return Err(VmdkError::ReadOnly {
                            path: e.path.clone(),
                            why: "streamOptimized (compressed) extents are read-only in vmk; \
                                  convert the disk to monolithicSparse to write to it"
                                .into(),
                        });
                    }
                    if sp.hdr.version == 3 {
                        return Err(VmdkError::ReadOnly {
                            path: e.path.clone(),
                            why: "sparse header version 3 (changed block tracking) extents are \
                                  opened read-only, as QEMU does"
                                .into(),
                        });
                    }
                }
            }
        }
        let (parent, parent_path) = if parts.desc.parent_cid != NO_PARENT {
            let hint = parts.desc.parent_hint.clone().unwrap_or_default();
            let ppath = resolve(path, &hint);
            if depth >= MAX_PARENT_DEPTH {
                return Err(VmdkError::Unsupported {
                    path: path.to_path_buf(),
                    what: format!("a chain of more than {MAX_PARENT_DEPTH} delta disks"),
                    hint: "the parentFileNameHint lines may form a loop".into(),
                });
            }
            let p = Vmdk::open_at_depth(&ppath, OpenMode::ReadOnly, depth + 1, store)?;
            if p.desc.cid != parts.desc.parent_cid {
                return Err(VmdkError::ParentCidMismatch {
                    path: path.to_path_buf(),
                    parent: ppath,
                    expected: parts.desc.parent_cid,
                    found: p.desc.cid,
                });
            }
            (Some(Box::new(p)), Some(ppath))
        } else {
            (None, None)
        };
        let capacity = parts.extents.last().map_or(0, |e| e.start + e.size);
        let unclean_at_open = parts
            .extents
            .iter()
            .any(|e| matches!(&e.kind, Kind::Sparse(sp) if sp.unclean_at_open));
        let mut disk = Vmdk {
            path: parts.path,
            writable,
            desc: parts.desc,
            desc_loc: parts.desc_loc,
            extents: parts.extents,
            capacity,
            parent,
            parent_path,
            subformat: parts.subformat,
            cid_updated: false,
            unclean_at_open,
            failed: false,
            closed: false,
            crash,
            store: store.clone(),
            desc_file: parts.desc_file,
        };
        if writable {
            for e in &mut disk.extents {
                if let Kind::Sparse(sp) = &mut e.kind {
                    sp.set_unclean(true)?;
                }
            }
        }
        Ok(disk)
    }

    /// Capacity in bytes.
    pub fn size(&self) -> u64 {
        self.capacity
    }

    fn range(&self, offset: u64, len: u64) -> Result<(), VmdkError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(VmdkError::OutOfRange {
                offset,
                len,
                capacity: self.capacity,
            }),
        }
    }

    /// The extent holding disk offset `off` (< capacity).
    fn extent_at(&self, off: u64) -> usize {
        self.extents.partition_point(|e| e.start + e.size <= off)
    }

    /// Reads `buf.len()` bytes at `offset`. Never-written and zeroed grains read as zeros
    /// (never-written ones from the parent of a delta disk).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VmdkError> {
        self.range(offset, buf.len() as u64)?;
        let Vmdk {
            extents, parent, ..
        } = self;
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let i = extents.partition_point(|e| e.start + e.size <= off);
            let e = &mut extents[i];
            let rel = off - e.start;
            let n = ((e.size - rel) as usize).min(buf.len() - pos);
            let piece = &mut buf[pos..pos + n];
            match &mut e.kind {
                Kind::Sparse(sp) => sp.read(rel, piece, parent, e.start)?,
                Kind::Flat { f, offset } => {
                    f.read_at(*offset + rel, piece, "reading a flat extent")?
                }
                Kind::Zero => piece.fill(0),
            }
            pos += n;
        }
        Ok(())
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), VmdkError> {
        self.modify(offset, buf.len() as u64, Src::Data(buf))
    }

    /// Makes `len` bytes at `offset` read as zeros. Whole grains that hold data get a hole
    /// punched in the file; never-written grains stay so (in a delta disk they become
    /// zeroed-grain entries, or zero grains without that flag).
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), VmdkError> {
        self.modify(offset, len, Src::Zeros)
    }

    /// Tells the disk that `len` bytes at `offset` are no longer needed: whole grains (and
    /// flat extent ranges) that hold data get a hole punched in the file, and read as zeros
    /// afterwards; everything else is left as it is.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), VmdkError> {
        self.modify(offset, len, Src::Discard)
    }

    fn modify(&mut self, offset: u64, len: u64, src: Src<'_>) -> Result<(), VmdkError> {
        if !self.writable {
            return Err(VmdkError::ReadOnly {
                path: self.path.clone(),
                why: "the disk was opened read-only".into(),
            });
        }
        self.range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let r = self.modify_inner(offset, len, src);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn modify_inner(&mut self, offset: u64, len: u64, src: Src<'_>) -> Result<(), VmdkError> {
        self.touch()?;
        let Vmdk {
            extents, parent, ..
        } = self;
        let mut pos = 0u64;
        while pos < len {
            let off = offset + pos;
            let i = extents.partition_point(|e| e.start + e.size <= off);
            let e = &mut extents[i];
            let rel = off - e.start;
            let n = (e.size - rel).min(len - pos);
            let sub = match src {
                Src::Data(b) => Src::Data(&b[pos as usize..(pos + n) as usize]),
                s => s,
            };
            if !e.writable {
                return Err(VmdkError::ReadOnly {
                    path: e.path.clone(),
                    why: "the descriptor makes this extent read-only".into(),
                });
            }
            match &mut e.kind {
                Kind::Sparse(sp) => sp.write(rel, n, sub, parent, e.start)?,
                Kind::Flat { f, offset } => match sub {
                    Src::Data(b) => f.write_at(*offset + rel, b, "writing a flat extent")?,
                    Src::Zeros | Src::Discard => f.zero_range(*offset + rel, n)?,
                },
                Kind::Zero => {
                    return Err(VmdkError::ReadOnly {
                        path: e.path.clone(),
                        why: "a ZERO extent has no storage".into(),
                    })
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Gives the disk a new CID before its first change since it was opened.
    fn touch(&mut self) -> Result<(), VmdkError> {
        if self.cid_updated {
            return Ok(());
        }
        self.desc.cid = new_cid(self.desc.cid);
        store_descriptor(
            &self.path,
            self.desc_loc,
            &self.desc,
            &mut self.extents,
            &self.crash,
            self.desc_file.as_ref(),
        )?;
        self.cid_updated = true;
        Ok(())
    }

    /// Makes everything written so far durable (fdatasync of every extent file).
    pub fn flush(&mut self) -> Result<(), VmdkError> {
        if !self.writable {
            return Ok(());
        }
        for e in &self.extents {
            match &e.kind {
                Kind::Sparse(sp) => sp.f.sync()?,
                Kind::Flat { f, .. } => f.sync()?,
                Kind::Zero => {}
            }
        }
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), VmdkError> {
        self.closed = true;
        if !self.writable {
            return Ok(());
        }
        self.flush()?;
        if self.failed || self.crash.crashed() {
            return Ok(());
        }
        for e in &mut self.extents {
            if let Kind::Sparse(sp) = &mut e.kind {
                sp.set_unclean(false)?;
            }
        }
        Ok(())
    }

    /// Flushes and clears uncleanShutdown (unless a write failed). Dropping a disk does the
    /// same but cannot report errors.
    pub fn close(mut self) -> Result<(), VmdkError> {
        self.shutdown()
    }

    /// Grows the disk to `new_size` bytes (a multiple of 512; shrinking is refused). Sparse
    /// extents get new grain tables, flat extents grow their files, and split subformats
    /// fill their last extent up to the split size and then add extent files.
    pub fn grow(&mut self, new_size: u64) -> Result<(), VmdkError> {
        if !self.writable {
            return Err(VmdkError::ReadOnly {
                path: self.path.clone(),
                why: "the disk was opened read-only".into(),
            });
        }
        if !new_size.is_multiple_of(SECTOR) {
            return Err(VmdkError::InvalidArgument(format!(
                "new size {new_size} is not a multiple of 512 bytes"
            )));
        }
        if new_size < self.capacity {
            return Err(VmdkError::InvalidArgument(format!(
                "new size {new_size} is smaller than the disk ({} bytes): shrinking is not supported",
                self.capacity
            )));
        }
        if new_size == self.capacity {
            return Ok(());
        }
        if self.extents.is_empty() {
            return Err(VmdkError::Unsupported {
                path: self.path.clone(),
                what: "growing a disk without extents".into(),
                hint: "create a new disk".into(),
            });
        }
        let r = self.touch().and_then(|()| self.grow_inner(new_size));
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn grow_inner(&mut self, new_size: u64) -> Result<(), VmdkError> {
        let split = self.subformat.is_split();
        let max = if split {
            if self.extents.len() >= 2 {
                self.extents[0].size
            } else {
                DEFAULT_SPLIT_SIZE.max(self.extents[0].size)
            }
        } else {
            u64::MAX
        };
        let mut remaining = new_size - self.capacity;
        let last = self.extents.len() - 1;
        {
            let e = &mut self.extents[last];
            let by = remaining.min(max.saturating_sub(e.size));
            if by > 0 {
                let new = e.size + by;
                match &mut e.kind {
                    Kind::Sparse(sp) => sp.grow(new / SECTOR)?,
                    Kind::Flat { f, offset } => {
                        if f.len()? < *offset + new {
                            f.set_len(*offset + new)?;
                        }
                    }
                    Kind::Zero => {}
                }
                e.size = new;
                if let Some(l) = e.line {
                    self.desc.extents[l].sectors = new / SECTOR;
                }
                remaining -= by;
            }
        }
        while remaining > 0 {
            let size = remaining.min(max);
            self.add_extent(size)?;
            remaining -= size;
        }
        self.capacity = new_size;
        set_geometry(&mut self.desc, new_size);
        store_descriptor(
            &self.path,
            self.desc_loc,
            &self.desc,
            &mut self.extents,
            &self.crash,
            self.desc_file.as_ref(),
        )
    }

    /// Adds an extent file of `size` bytes like the last one (split subformats).
    fn add_extent(&mut self, size: u64) -> Result<(), VmdkError> {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk".into());
        let idx = self.extents.len() + 1;
        let last = &self.extents[self.extents.len() - 1];
        let start = last.start + last.size;
        let (kind, grain, zero) = match &last.kind {
            Kind::Sparse(sp) => (ExtentType::Sparse, sp.grain, sp.hdr.zero_grain()),
            _ => (ExtentType::Flat, 0, false),
        };
        let name = format!(
            "{stem}-{}{idx:03}.vmdk",
            if kind == ExtentType::Sparse { 's' } else { 'f' }
        );
        let epath = resolve(&self.path, &name);
        let f = if kind == ExtentType::Sparse {
            crate::sparse::write_sparse_extent(
                &epath,
                size / SECTOR,
                grain / SECTOR,
                None,
                zero,
                &self.crash,
                &self.store,
            )?
        } else {
            let f = ImageFile::create_on(&self.store, &epath, size, &self.crash)?;
            f.set_len(size)?;
            f
        };
        f.lock(Lock::Exclusive)?;
        let kind_rt = if kind == ExtentType::Sparse {
            Kind::Sparse(Box::new(SparseExtent::open(f, true)?))
        } else {
            Kind::Flat { f, offset: 0 }
        };
        self.desc.extents.push(ExtentLine {
            access: Access::ReadWrite,
            sectors: size / SECTOR,
            kind,
            file: name,
            offset: 0,
            line: 0,
        });
        self.extents.push(Extent {
            start,
            size,
            kind: kind_rt,
            path: epath,
            writable: true,
            line: Some(self.desc.extents.len() - 1),
        });
        Ok(())
    }

    /// What the `len` (at most) bytes at `offset` hold: returns the kind and how many bytes
    /// from `offset` share it (at least 1 unless `len` is 0).
    pub fn block_status(&mut self, offset: u64, len: u64) -> Result<(BlockKind, u64), VmdkError> {
        if offset >= self.capacity {
            return Err(VmdkError::OutOfRange {
                offset,
                len,
                capacity: self.capacity,
            });
        }
        let i = self.extent_at(offset);
        let Vmdk {
            extents, parent, ..
        } = self;
        let e = &mut extents[i];
        let rel = offset - e.start;
        let max = len.min(e.size - rel);
        match &mut e.kind {
            Kind::Zero => Ok((BlockKind::Zero, max)),
            Kind::Flat { f, offset } => {
                let at = *offset + rel;
                Ok(match f.next_data(at) {
                    None => (BlockKind::Zero, max),
                    Some(d) if d > at => (BlockKind::Zero, (d - at).min(max)),
                    Some(_) => (
                        BlockKind::Data,
                        f.next_hole(at).saturating_sub(at).clamp(1, max),
                    ),
                })
            }
            Kind::Sparse(sp) => {
                let (st, n) = sp.status(rel, max)?;
                match st {
                    Some(true) => Ok((BlockKind::Zero, n)),
                    Some(false) => Ok((BlockKind::Data, n)),
                    None => match parent {
                        Some(p) if offset < p.size() => {
                            p.block_status(offset, n.min(p.size() - offset))
                        }
                        _ => Ok((BlockKind::Zero, n)),
                    },
                }
            }
        }
    }

    /// What the disk is.
    pub fn info(&self) -> VmdkInfo {
        let mut extents = Vec::new();
        let mut grain_size = None;
        for e in &self.extents {
            let (kind, f, grain) = match &e.kind {
                Kind::Sparse(sp) => (
                    if sp.hdr.compressed() {
                        ExtentKind::Compressed
                    } else {
                        ExtentKind::Sparse
                    },
                    Some(&sp.f),
                    Some(sp.grain),
                ),
                Kind::Flat { f, .. } => (ExtentKind::Flat, Some(f), None),
                Kind::Zero => (ExtentKind::Zero, None, None),
            };
            grain_size = grain_size.or(grain);
            extents.push(ExtentInfo {
                path: e.path.clone(),
                kind,
                start: e.start,
                size: e.size,
                grain_size: grain,
                file_size: f.and_then(|f| f.len().ok()).unwrap_or(0),
                allocated_bytes: f.map_or(0, |f| f.allocated()),
                writable: e.writable,
            });
        }
        let desc_bytes = if let Some(f) = &self.desc_file {
            f.allocated()
        } else if self.desc_loc == DescLoc::File {
            std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        VmdkInfo {
            path: self.path.clone(),
            subformat: self.subformat,
            capacity: self.capacity,
            grain_size,
            allocated_bytes: extents.iter().map(|e| e.allocated_bytes).sum::<u64>() + desc_bytes,
            extents,
            cid: self.desc.cid,
            parent_cid: self.desc.parent_cid,
            parent: self.parent_path.clone(),
            read_only: !self.writable,
            unclean_shutdown: self.unclean_at_open,
            adapter_type: self.desc.ddb("ddb.adapterType").map(str::to_string),
            hw_version: self.desc.ddb("ddb.virtualHWVersion").map(str::to_string),
        }
    }

    /// Grains with data in the sparse extents (not counting the parent).
    pub fn allocated_grains(&mut self) -> Result<u64, VmdkError> {
        let mut n = 0;
        for e in &mut self.extents {
            if let Kind::Sparse(sp) = &mut e.kind {
                n += sp.allocated_grains()?;
            }
        }
        Ok(n)
    }

    /// Test hook: lets `n` more writes reach the files, then drops all writes and syncs, as
    /// if the host had died there.
    #[cfg(test)]
    pub(crate) fn crash_after(&self, n: u64) {
        self.crash.arm(n);
    }
}

impl Drop for Vmdk {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.shutdown();
        }
    }
}
