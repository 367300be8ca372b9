//! Making new disks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT};
use crate::disk::{random_cid, set_geometry, write_file_atomic};
use crate::error::VmdkError;
use crate::file::{CrashSwitch, ImageFile};
use crate::format::{MAX_SPARSE_SECTORS, SECTOR};
use crate::sparse::write_sparse_extent;
use crate::storage::{Storage, Store};
use crate::{CreateOptions, OpenMode, Subformat, Vmdk};

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

impl Vmdk {
    /// Creates a disk (all its files; none may exist) and opens it read-write.
    pub fn create(path: &Path, opts: &crate::CreateOptions) -> Result<Vmdk, VmdkError> {
        create(path, opts, &None)?;
        Vmdk::open(path, OpenMode::ReadWrite)
    }

    /// [`Vmdk::create`] on `storage`. Flat extents are created with their full size as the
    /// storage's size hint (a datastore may allocate them eagerly), sparse ones grow.
    pub fn create_on(
        storage: Arc<dyn Storage>,
        path: &Path,
        opts: &crate::CreateOptions,
    ) -> Result<Vmdk, VmdkError> {
        let store = Some(storage);
        create(path, opts, &store)?;
        Vmdk::open_store(path, OpenMode::ReadWrite, &store)
    }
}
