//! VMDK virtual disks ("Virtual Disk Format 1.1", VMware), as the backing store of vmk's
//! virtio-blk devices and of `vmk disk ...`.
//!
//! # Subformats
//!
//! | [`Subformat`] | files | read | write |
//! |---|---|---|---|
//! | `monolithicSparse` | one hosted sparse extent with the descriptor embedded | yes | yes |
//! | `monolithicFlat` | descriptor + `NAME-flat.vmdk` | yes | yes |
//! | `twoGbMaxExtentSparse` | descriptor + `NAME-s001.vmdk`... sparse extents of at most 2047 MiB | yes | yes |
//! | `twoGbMaxExtentFlat` | descriptor + `NAME-f001.vmdk`... plain files of at most 2047 MiB | yes | yes |
//! | `streamOptimized` | one sparse extent of deflate-compressed grains | yes | by [`convert`] |
//! | `vmfs` | descriptor + `NAME-flat.vmdk` (ESX flat disk) | yes | yes |
//!
//! A hosted sparse extent is a 512-byte header ([`format::SparseHeader`]), an optional
//! embedded descriptor, the redundant grain directory with its grain tables, the grain
//! directory with its grain tables, then grains (64 KiB by default). Each grain table maps 512
//! grains; each entry is the sector of the grain in the file, 0 for "never written" (reads as
//! zeros, or from the parent of a delta disk) or 1 for "zeroed" (reads as zeros even in a
//! delta disk; images with the zeroed-grain flag). vmk creates all grain tables up front, as
//! VMware and QEMU do (they stay holes in the file until written), and appends grains at the
//! end of the file. It also reads and writes images whose tables are made lazily.
//!
//! Delta disks: a sparse disk whose descriptor has a `parentCID` other than `ffffffff` and a
//! `parentFileNameHint` reads never-written grains from its parent, which is opened read-only.
//! Its `parentCID` must equal the parent's `CID` ([`VmdkError::ParentCidMismatch`] if not).
//! A disk's `CID` changes to a new random value the first time it is modified after it is
//! opened, so a child notices when its parent was written to.
//!
//! # Using a disk from vCPU threads
//!
//! [`Vmdk`] is `Send` and not internally synchronized: put it behind a `Mutex`. Every
//! operation takes `&mut self` (reads too: they fill the grain table cache). Reads and writes
//! take any offset and length inside [`Vmdk::size`].
//!
//! Writes never read-modify-write a grain: grain-aligned parts go straight to the file
//! (consecutive new grains in one `pwrite`), and a partial write to a never-written grain
//! writes only its bytes, into a new grain past the end of the file whose rest reads as
//! zeros. Only a delta disk copies the rest of such a grain from its parent.
//! Grain tables are cached (8 MiB per extent, least recently used out), so a lookup costs
//! no I/O in the steady state.
//!
//! # Crash consistency
//!
//! vmk orders its writes so that the files are consistent after the vmk process dies at
//! any point (every write it issued before that reached the page cache, none after):
//!
//! 1. grain data (a new grain is written whole, at the end of the file);
//! 2. then the grain table entries that point to it, then the same entries in the redundant
//!    grain table;
//! 3. for a grain table that did not exist: the whole table, the whole redundant table, then
//!    the grain directory entry, then the redundant directory entry;
//! 4. before the first change after opening, the descriptor with a new `CID`; when opened
//!    read-write, `uncleanShutdown` is set (and synced) in every sparse header, and
//!    [`Vmdk::close`] (or dropping the disk) syncs and clears it.
//!
//! A write that is interrupted therefore leaves, at worst:
//!
//! - **leaked grains**: grain data at the end of the file that no table points to (the
//!   crash came before step 2). The guest never saw that write complete, so nothing is lost.
//!   [`Vmdk::check`] reports them, and `repair` truncates them off. (Space that no table
//!   points to in the middle of a file, which vmk itself never leaves, is reported; only
//!   [`convert`] reclaims it.)
//! - **a stale redundant directory or table**: the primary entry was written, its redundant
//!   copy not. `check` reports the differing entries and `repair` copies the primary ones
//!   over.
//! - with a host crash (power loss) rather than a process crash, the page cache may reach
//!   the disk in any order, and only what was written before the last [`Vmdk::flush`] is
//!   durable (as with a disk's volatile write cache; guests flush when they need to). A
//!   table entry can then point past the end of the file, where the grain never arrived:
//!   reading it reports [`VmdkError::BadTable`], and `repair` clears the entry (the grain
//!   reads as never written, which is what the unflushed write may legitimately leave).
//!
//! The rule `repair` follows for tables: the primary copy wins, and is copied over the
//! redundant one; only a primary entry that points outside the file (or into the metadata)
//! is replaced, by its redundant copy when that one is valid, else by 0. Grains pointed to
//! twice are reported, not repaired.
//! - growing ([`Vmdk::grow`]) writes the new tables and directories, syncs, then switches
//!   the header over; a crash before that leaves only unreferenced space (truncated by
//!   `repair`), and a crash between the header and the descriptor leaves a descriptor whose
//!   extent size is behind the header, which `check` reports and `repair` rewrites.
//!
//! Opening an image whose `uncleanShutdown` is set works ([`VmdkInfo::unclean_shutdown`]
//! says so); run [`Vmdk::check`] on it, with `repair`, when it is not in use. When the flag
//! is all that `check` finds, it is a notice ([`Finding::notice`]), not a problem
//! ([`CheckReport::problems`]): `qemu-img check` calls such a disk clean too.
//!
//! # Locking
//!
//! Opening takes an advisory `flock` on every extent file: exclusive for
//! [`OpenMode::ReadWrite`] (and `check` with repair), shared otherwise; a conflict is
//! [`VmdkError::Locked`]. QEMU uses other locks (OFD byte ranges) and does not see these.
//!
//! # Errors
//!
//! Every [`VmdkError`] names the file and the byte offset (descriptor: the line) of what is
//! wrong, and no input makes this crate panic: the header, descriptor and grain table
//! parsers are fuzzed (the `fuzzing` module, built for tests and the `fuzzing` feature; `fuzz/`).

mod check;
mod convert;
#[cfg(test)]
mod crash_tests;
mod create;
pub mod descriptor;
mod disk;
mod error;
mod file;
pub mod format;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod sparse;
pub mod storage;
#[cfg(test)]
mod storage_tests;
mod stream;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use check::{CheckReport, Finding, FindingKind};
pub use convert::{convert, detect_format, DiskFormat, Target};
pub use disk::{BlockKind, Vmdk};
pub use error::{DescriptorProblem, HeaderProblem, TableKind, TableProblem, VmdkError};
pub use storage::{Storage, StorageFile};

/// The `createType` of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subformat {
    MonolithicSparse,
    MonolithicFlat,
    TwoGbMaxExtentSparse,
    TwoGbMaxExtentFlat,
    StreamOptimized,
    /// An ESX flat disk: descriptor and one `VMFS` extent.
    Vmfs,
}

impl Subformat {
    /// All subformats.
    pub const ALL: [Subformat; 6] = [
        Subformat::MonolithicSparse,
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentSparse,
        Subformat::TwoGbMaxExtentFlat,
        Subformat::StreamOptimized,
        Subformat::Vmfs,
    ];

    /// The `createType` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
            Subformat::Vmfs => "vmfs",
        }
    }

    /// Parses a `createType` string (exact spelling).
    pub fn from_create_type(s: &str) -> Option<Subformat> {
        Subformat::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// True for the subformats whose data lives in sparse extents.
    pub fn is_sparse(self) -> bool {
        matches!(
            self,
            Subformat::MonolithicSparse
                | Subformat::TwoGbMaxExtentSparse
                | Subformat::StreamOptimized
        )
    }

    /// True for the subformats split in extents of at most 2047 MiB.
    pub fn is_split(self) -> bool {
        matches!(
            self,
            Subformat::TwoGbMaxExtentSparse | Subformat::TwoGbMaxExtentFlat
        )
    }
}

impl fmt::Display for Subformat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Subformat {
    type Err = VmdkError;

    /// Parses a `createType` (case-insensitive, as a command line argument).
    fn from_str(s: &str) -> Result<Subformat, VmdkError> {
        Subformat::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                VmdkError::InvalidArgument(format!(
                    "unknown subformat {s:?} (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized, vmfs)"
                ))
            })
    }
}

/// How to open a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    ReadOnly,
    ReadWrite,
}

/// The `ddb.adapterType` of a disk: the controller the disk was made for. It only chooses
/// the geometry written in the descriptor; vmk attaches every disk through virtio-blk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterType {
    Ide,
    BusLogic,
    LsiLogic,
    LsiLogicSas,
    Pvscsi,
    LegacyEsx,
}

impl AdapterType {
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterType::Ide => "ide",
            AdapterType::BusLogic => "buslogic",
            AdapterType::LsiLogic => "lsilogic",
            AdapterType::LsiLogicSas => "lsisas1068",
            AdapterType::Pvscsi => "pvscsi",
            AdapterType::LegacyEsx => "legacyESX",
        }
    }

    /// Heads of the geometry VMware writes for this adapter.
    pub(crate) fn heads(self) -> u64 {
        if self == AdapterType::Ide {
            16
        } else {
            255
        }
    }
}

impl FromStr for AdapterType {
    type Err = VmdkError;

    fn from_str(s: &str) -> Result<AdapterType, VmdkError> {
        [
            AdapterType::Ide,
            AdapterType::BusLogic,
            AdapterType::LsiLogic,
            AdapterType::LsiLogicSas,
            AdapterType::Pvscsi,
            AdapterType::LegacyEsx,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            VmdkError::InvalidArgument(format!(
                "unknown adapter type {s:?} (ide, buslogic, lsilogic, lsisas1068, pvscsi, legacyESX)"
            ))
        })
    }
}

/// Default grain size: 64 KiB.
pub const DEFAULT_GRAIN_SIZE: u64 = 64 << 10;
/// Default (and VMware's) largest extent of the twoGbMaxExtent subformats: 2047 MiB.
pub const DEFAULT_SPLIT_SIZE: u64 = 2047 << 20;

/// What [`Vmdk::create`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    /// Capacity in bytes, a multiple of 512. 0 with a `parent`: the parent's size.
    pub size: u64,
    pub subformat: Subformat,
    /// Grain size of sparse extents in bytes: a power of two from 4 KiB to 1 MiB.
    pub grain_size: u64,
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion`.
    pub hw_version: u32,
    /// Use zeroed-grain entries (header version 2), so that `write_zeroes` on whole grains
    /// of a delta disk costs no data. QEMU reads and writes them; very old VMware products
    /// may not.
    pub zeroed_grain: bool,
    /// Make a delta disk on top of this VMDK (sparse subformats only). A relative path is
    /// relative to the new disk's directory and is stored as given.
    pub parent: Option<PathBuf>,
    /// Largest extent of the twoGbMaxExtent subformats, a multiple of the grain size.
    pub split_size: u64,
}

impl CreateOptions {
    /// Options for a disk of `size` bytes in `subformat`, defaults otherwise.
    pub fn new(size: u64, subformat: Subformat) -> CreateOptions {
        CreateOptions {
            size,
            subformat,
            ..CreateOptions::default()
        }
    }
}

impl Default for CreateOptions {
    fn default() -> CreateOptions {
        CreateOptions {
            size: 0,
            subformat: Subformat::MonolithicSparse,
            grain_size: DEFAULT_GRAIN_SIZE,
            adapter_type: AdapterType::LsiLogic,
            hw_version: 4,
            zeroed_grain: true,
            parent: None,
            split_size: DEFAULT_SPLIT_SIZE,
        }
    }
}

/// What kind of storage an extent is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    Sparse,
    /// Sparse with compressed grains (streamOptimized).
    Compressed,
    Flat,
    Zero,
}

/// One extent of a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentInfo {
    /// The extent file (the descriptor's path for a ZERO extent).
    pub path: PathBuf,
    pub kind: ExtentKind,
    /// Disk byte offset where the extent starts.
    pub start: u64,
    /// Bytes of the disk it holds.
    pub size: u64,
    /// Grain size in bytes (sparse extents).
    pub grain_size: Option<u64>,
    /// Length of the file.
    pub file_size: u64,
    /// Bytes the file occupies on the host.
    pub allocated_bytes: u64,
    pub writable: bool,
}

/// What [`Vmdk::info`] tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmdkInfo {
    /// The path the disk was opened by (descriptor or monolithic file).
    pub path: PathBuf,
    pub subformat: Subformat,
    /// Bytes.
    pub capacity: u64,
    /// Grain size of the first sparse extent.
    pub grain_size: Option<u64>,
    pub extents: Vec<ExtentInfo>,
    pub cid: u32,
    /// `ffffffff` without parent.
    pub parent_cid: u32,
    /// The parent's path, for a delta disk.
    pub parent: Option<PathBuf>,
    /// Bytes all extent files occupy on the host.
    pub allocated_bytes: u64,
    pub read_only: bool,
    /// uncleanShutdown was set when the disk was opened: run [`Vmdk::check`].
    pub unclean_shutdown: bool,
    pub adapter_type: Option<String>,
    pub hw_version: Option<String>,
}
