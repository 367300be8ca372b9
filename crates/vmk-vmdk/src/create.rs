//! Making new disks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT};
use crate::disk::{random_cid, set_geometry, write_file_atomic};
use crate::error::VmdkError;
use crate::file::{CrashSwitch, ImageFile};
use crate::format::{
    encode_u32s, SparseHeader, FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN, MAX_SPARSE_SECTORS,
    SECTOR,
};
use crate::storage::Store;
use crate::{CreateOptions, OpenMode, Subformat, Vmdk};

/// Sectors reserved for an embedded descriptor (at least), as VMware and QEMU do.
const EMBEDDED_DESCRIPTOR_SECTORS: u64 = 20;
const GTES_PER_GT: u64 = 512;

/// `dir/stem` and `.ext` of a disk path, for naming its extent files.
pub(crate) fn name_parts(path: &Path) -> (PathBuf, String, String) {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_else(|| ".vmdk".into());
    (dir, stem, ext)
}

/// A new descriptor for `opts` (extents added by the caller).
pub(crate) fn new_descriptor(
    opts: &CreateOptions,
    size: u64,
    parent: Option<(u32, String)>,
) -> Descriptor {
    let heads = opts.adapter_type.heads();
    let mut d = Descriptor {
        version: 1,
        cid: random_cid(),
        parent_cid: parent.as_ref().map_or(NO_PARENT, |p| p.0),
        create_type: opts.subformat,
        parent_hint: parent.map(|p| p.1),
        extents: Vec::new(),
        other: vec![("encoding".into(), "\"UTF-8\"".into())],
        ddb: vec![
            ("ddb.virtualHWVersion".into(), opts.hw_version.to_string()),
            ("ddb.geometry.cylinders".into(), "0".into()),
            ("ddb.geometry.heads".into(), heads.to_string()),
            ("ddb.geometry.sectors".into(), "63".into()),
            ("ddb.adapterType".into(), opts.adapter_type.as_str().into()),
        ],
    };
    set_geometry(&mut d, size);
    d
}

pub(crate) fn check_grain(grain: u64) -> Result<(), VmdkError> {
    if !grain.is_power_of_two() || !(4096..=1 << 20).contains(&grain) {
        return Err(VmdkError::InvalidArgument(format!(
            "grain size {grain} is not a power of two from 4 KiB to 1 MiB"
        )));
    }
    Ok(())
}

/// Creates the files of a new disk.
pub(crate) fn create(path: &Path, opts: &CreateOptions, store: &Store) -> Result<(), VmdkError> {
    let f = opts.subformat;
    if f == Subformat::StreamOptimized {
        return Err(VmdkError::InvalidArgument(
            "streamOptimized disks are written by convert (they are read-only once made)".into(),
        ));
    }
    check_grain(opts.grain_size)?;
    if exists(store, path) {
        return Err(VmdkError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let parent = match &opts.parent {
        None => None,
        Some(p) => {
            if !f.is_sparse() {
                return Err(VmdkError::InvalidArgument(format!(
                    "a delta disk must be sparse, not {f}"
                )));
            }
            let hint = p.to_string_lossy().into_owned();
            let resolved = if p.is_absolute() {
                p.clone()
            } else {
                path.parent().unwrap_or(Path::new(".")).join(p)
            };
            let pd = Vmdk::open_store(&resolved, OpenMode::ReadOnly, store)?;
            Some((pd.desc.cid, hint, pd.size()))
        }
    };
    let size = match (opts.size, &parent) {
        (0, Some(p)) => p.2,
        (s, _) => s,
    };
    if size == 0 || !size.is_multiple_of(SECTOR) {
        return Err(VmdkError::InvalidArgument(format!(
            "size {size} is not a positive multiple of 512 bytes"
        )));
    }
    let split = opts.split_size;
    if f.is_split()
        && (split == 0
            || !split.is_multiple_of(opts.grain_size)
            || split > MAX_SPARSE_SECTORS * SECTOR)
    {
        return Err(VmdkError::InvalidArgument(format!(
            "split size {split} is not a positive multiple of the grain size ({}) up to 2 TiB",
            opts.grain_size
        )));
    }
    if f == Subformat::MonolithicSparse && size > MAX_SPARSE_SECTORS * SECTOR {
        return Err(VmdkError::InvalidArgument(format!(
            "a monolithicSparse disk holds at most 2 TiB, not {size} bytes; use twoGbMaxExtentSparse"
        )));
    }
    let mut desc = new_descriptor(opts, size, parent.map(|p| (p.0, p.1)));
    let crash = CrashSwitch::new();
    let mut made: Vec<PathBuf> = Vec::new();
    let r = make_files(path, opts, size, &mut desc, &crash, &mut made, store);
    if r.is_err() {
        for p in made.iter().rev() {
            let _ = match store {
                Some(st) => st.remove(p),
                None => std::fs::remove_file(p),
            };
        }
    }
    r
}

fn exists(store: &Store, path: &Path) -> bool {
    match store {
        Some(st) => st.exists(path),
        None => path.exists(),
    }
}

fn make_files(
    path: &Path,
    opts: &CreateOptions,
    size: u64,
    desc: &mut Descriptor,
    crash: &Arc<CrashSwitch>,
    made: &mut Vec<PathBuf>,
    store: &Store,
) -> Result<(), VmdkError> {
    let (dir, stem, ext) = name_parts(path);
    let grain_sectors = opts.grain_size / SECTOR;
    let line = |kind, sectors, file: String| ExtentLine {
        access: Access::ReadWrite,
        sectors,
        kind,
        file,
        offset: 0,
        line: 0,
    };
    match opts.subformat {
        Subformat::MonolithicSparse => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            desc.extents
                .push(line(ExtentType::Sparse, size / SECTOR, name));
            let text = desc.render();
            made.push(path.to_path_buf());
            let f = write_sparse_extent(
                path,
                size / SECTOR,
                grain_sectors,
                Some(&text),
                opts.zeroed_grain,
                crash,
                store,
            );
            if let Err(VmdkError::AlreadyExists { .. }) = &f {
                made.pop();
            }
            f?;
            return Ok(());
        }
        Subformat::MonolithicFlat | Subformat::Vmfs => {
            let name = format!("{stem}-flat{ext}");
            let p = dir.join(&name);
            let f = ImageFile::create_on(store, &p, size, crash)?;
            made.push(p);
            f.set_len(size)?;
            let kind = if opts.subformat == Subformat::Vmfs {
                ExtentType::Vmfs
            } else {
                ExtentType::Flat
            };
            desc.extents.push(line(kind, size / SECTOR, name));
        }
        Subformat::TwoGbMaxExtentSparse | Subformat::TwoGbMaxExtentFlat => {
            let sparse = opts.subformat == Subformat::TwoGbMaxExtentSparse;
            let mut left = size;
            let mut idx = 1;
            while left > 0 {
                let n = left.min(opts.split_size);
                let name = format!("{stem}-{}{idx:03}{ext}", if sparse { 's' } else { 'f' });
                let p = dir.join(&name);
                if sparse {
                    let r = write_sparse_extent(
                        &p,
                        n / SECTOR,
                        grain_sectors,
                        None,
                        opts.zeroed_grain,
                        crash,
                        store,
                    );
                    if !matches!(r, Err(VmdkError::AlreadyExists { .. })) {
                        made.push(p);
                    }
                    r?;
                    desc.extents
                        .push(line(ExtentType::Sparse, n / SECTOR, name));
                } else {
                    let f = ImageFile::create_on(store, &p, n, crash)?;
                    made.push(p);
                    f.set_len(n)?;
                    desc.extents.push(line(ExtentType::Flat, n / SECTOR, name));
                }
                left -= n;
                idx += 1;
            }
        }
        Subformat::StreamOptimized => unreachable!("refused by create"),
    }
    // The descriptor file last: without it the disk does not exist.
    if exists(store, path) {
        return Err(VmdkError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    made.push(path.to_path_buf());
    if store.is_none() {
        return write_file_atomic(path, desc.render().as_bytes(), crash);
    }
    // On a storage: a new file (created exclusively, so nobody else made one meanwhile).
    let f = ImageFile::create_on(store, path, 0, crash)?;
    f.write_at(0, desc.render().as_bytes(), "writing the descriptor")?;
    f.sync()
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
