//! Copying a disk into another format.

use std::path::{Path, PathBuf};

use crate::create;
use crate::descriptor::{looks_like_descriptor, Access, ExtentLine, ExtentType};
use crate::disk::BlockKind;
use crate::error::VmdkError;
use crate::file::{CrashSwitch, ImageFile};
use crate::format::{COWD_MAGIC, MAGIC, SECTOR};
use crate::stream::StreamWriter;
use crate::{CreateOptions, OpenMode, Subformat, Vmdk};

/// A disk image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// A plain file holding the disk's bytes.
    Raw,
    Vmdk,
}

/// What [`convert`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A plain file of the disk's size (sparse: zero ranges are holes).
    Raw,
    /// A VMDK; `size` 0 means the source's size (rounded up to 512 bytes), a larger size
    /// pads with zeros. Every subformat, streamOptimized included.
    Vmdk(CreateOptions),
}

/// Tells a VMDK (sparse extent magic `KDMV`/`COWD`, or a text descriptor) from a raw image,
/// as QEMU probes: anything else is raw.
pub fn detect_format(path: &Path) -> Result<DiskFormat, VmdkError> {
    let f = ImageFile::open(path, false, &CrashSwitch::new())
        .map_err(|e| VmdkError::io(path, "opening the image", 0, e))?;
    let len = f.len()?;
    let mut head = vec![0u8; len.min(4) as usize];
    f.read_at(0, &mut head, "reading the first bytes")?;
    if head.len() >= 4 {
        let m = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if m == MAGIC || m == COWD_MAGIC {
            return Ok(DiskFormat::Vmdk);
        }
    }
    if len <= crate::format::MAX_DESCRIPTOR_BYTES {
        let mut all = vec![0u8; len as usize];
        f.read_at(0, &mut all, "reading the file")?;
        if looks_like_descriptor(&all) {
            return Ok(DiskFormat::Vmdk);
        }
    }
    Ok(DiskFormat::Raw)
}

enum Source {
    Raw { f: ImageFile, len: u64 },
    Disk(Box<Vmdk>),
}

impl Source {
    fn size(&self) -> u64 {
        match self {
            Source::Raw { len, .. } => *len,
            Source::Disk(d) => d.size(),
        }
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> Result<(), VmdkError> {
        match self {
            Source::Raw { f, .. } => f.read_at(off, buf, "reading the source"),
            Source::Disk(d) => {
                let n = d.size().saturating_sub(off).min(buf.len() as u64) as usize;
                buf[n..].fill(0);
                if n > 0 {
                    d.read_at(off, &mut buf[..n])?;
                }
                Ok(())
            }
        }
    }

    /// Known-zero prefix of `[off, off + len)`, or 0.
    fn zeros(&mut self, off: u64, len: u64) -> Result<u64, VmdkError> {
        match self {
            Source::Raw { f, len: size } => {
                if off >= *size {
                    return Ok(len);
                }
                Ok(match f.next_data(off) {
                    Some(d) => d.saturating_sub(off).min(len),
                    None => len,
                })
            }
            Source::Disk(d) => {
                if off >= d.size() {
                    return Ok(len);
                }
                match d.block_status(off, len)? {
                    (BlockKind::Zero, n) => Ok(n),
                    (BlockKind::Data, _) => Ok(0),
                }
            }
        }
    }
}

enum Sink {
    Raw(ImageFile),
    Disk(Box<Vmdk>),
    Stream(Box<StreamWriter>, u64),
}

impl Sink {
    fn write(&mut self, off: u64, data: &[u8]) -> Result<(), VmdkError> {
        match self {
            Sink::Raw(f) => f.write_at(off, data, "writing the copy"),
            Sink::Disk(d) => d.write_at(off, data),
            Sink::Stream(w, grain) => {
                let mut pos = 0;
                while pos < data.len() {
                    let n = (*grain as usize).min(data.len() - pos);
                    w.write_grain((off + pos as u64) / *grain, &data[pos..pos + n])?;
                    pos += n;
                }
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<(), VmdkError> {
        match self {
            Sink::Raw(f) => f.sync(),
            Sink::Disk(d) => d.close(),
            Sink::Stream(w, _) => w.finish(),
        }
    }
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a | x) == 0
}

/// Copies the disk `src` (VMDK of any subformat, delta disks flattened, or a raw file) to a
/// new `dst` in `target`'s format. Zero and never-written ranges are not written (they stay
/// holes or unallocated grains), so the copy is also a compaction. `progress(done, total)`
/// is called as it goes. On failure the files made so far are removed.
pub fn convert(
    src: &Path,
    dst: &Path,
    target: &Target,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), VmdkError> {
    let mut source = match detect_format(src)? {
        DiskFormat::Vmdk => Source::Disk(Box::new(Vmdk::open(src, OpenMode::ReadOnly)?)),
        DiskFormat::Raw => {
            let f = ImageFile::open(src, false, &CrashSwitch::new())
                .map_err(|e| VmdkError::io(src, "opening the source", 0, e))?;
            let len = f.len()?;
            Source::Raw { f, len }
        }
    };
    let crash = CrashSwitch::new();
    let src_size = source.size();
    let mut made: Vec<PathBuf> = Vec::new();
    let (sink, size, unit) = match target {
        Target::Raw => {
            let f = ImageFile::create(dst, &crash)?;
            made.push(dst.to_path_buf());
            f.set_len(src_size)?;
            (Sink::Raw(f), src_size, 64 << 10)
        }
        Target::Vmdk(opts) => {
            if opts.parent.is_some() {
                return Err(VmdkError::InvalidArgument(
                    "convert writes whole disks, not delta disks: leave `parent` empty".into(),
                ));
            }
            let rounded = src_size.div_ceil(SECTOR) * SECTOR;
            let size = if opts.size == 0 { rounded } else { opts.size };
            if size < src_size || size == 0 || !size.is_multiple_of(SECTOR) {
                return Err(VmdkError::InvalidArgument(format!(
                    "target size {size} must be a positive multiple of 512 bytes of at least the source's {src_size}"
                )));
            }
            let mut o = opts.clone();
            o.size = size;
            if o.subformat == Subformat::StreamOptimized {
                create::check_grain(o.grain_size)?;
                let name = dst
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut desc = create::new_descriptor(&o, size, None);
                desc.extents.push(ExtentLine {
                    access: Access::ReadWrite,
                    sectors: size / SECTOR,
                    kind: ExtentType::Sparse,
                    file: name,
                    offset: 0,
                    line: 0,
                });
                let w = StreamWriter::create(dst, size, o.grain_size, &desc.render(), &crash)?;
                made.push(dst.to_path_buf());
                (Sink::Stream(Box::new(w), o.grain_size), size, o.grain_size)
            } else {
                let d = Vmdk::create(dst, &o)?;
                made.push(dst.to_path_buf());
                made.extend(d.info().extents.into_iter().map(|e| e.path));
                let unit = if o.subformat.is_sparse() {
                    o.grain_size
                } else {
                    64 << 10
                };
                (Sink::Disk(Box::new(d)), size, unit)
            }
        }
    };
    let r = copy(&mut source, sink, size, unit, progress);
    if r.is_err() {
        for p in made {
            let _ = std::fs::remove_file(p);
        }
    }
    r
}

fn copy(
    source: &mut Source,
    mut sink: Sink,
    size: u64,
    unit: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), VmdkError> {
    let chunk = (1u64 << 20).max(unit) / unit * unit;
    let mut buf = vec![0u8; chunk as usize];
    let mut off = 0u64;
    while off < size {
        progress(off, size);
        let n = chunk.min(size - off);
        let z = source.zeros(off, n)?;
        let skip = if off + z >= size {
            size - off
        } else {
            z / unit * unit
        };
        if skip > 0 {
            off += skip;
            continue;
        }
        let b = &mut buf[..n as usize];
        source.read_at(off, b)?;
        // Write runs of non-zero units.
        let mut run: Option<(usize, usize)> = None;
        let mut p = 0usize;
        while p < b.len() {
            let q = (p + unit as usize).min(b.len());
            if is_zero(&b[p..q]) {
                if let Some((s, e)) = run.take() {
                    sink.write(off + s as u64, &b[s..e])?;
                }
            } else {
                run = match run {
                    Some((s, _)) => Some((s, q)),
                    None => Some((p, q)),
                };
            }
            p = q;
        }
        if let Some((s, e)) = run {
            sink.write(off + s as u64, &b[s..e])?;
        }
        off += n;
    }
    sink.finish()?;
    progress(size, size);
    Ok(())
}
