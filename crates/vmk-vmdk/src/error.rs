//! Errors. Each one says what is wrong, where (file, byte offset or descriptor line) and, where
//! there is something to do about it, what.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Shown after corruption errors.
const REPAIR_HINT: &str = "run `vmk disk check --repair` on the image, or restore it from a copy";

/// An error of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmdkError {
    /// The operating system refused a read, write, open or sync.
    #[error("{}: I/O error while {doing} (byte {offset}): {source}", path.display())]
    Io {
        path: PathBuf,
        doing: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// The file is neither a hosted sparse extent nor a text descriptor.
    #[error("{}: not a VMDK image: {why}", path.display())]
    NotVmdk { path: PathBuf, why: String },

    /// A field of a sparse extent header (or of the footer of a streamOptimized image).
    #[error("{}: bad sparse extent header: {problem} (field at byte {offset}); {}", path.display(), problem.advice())]
    BadHeader {
        path: PathBuf,
        offset: u64,
        problem: HeaderProblem,
    },

    /// A descriptor line. `line` counts from 1; 0 means "the descriptor as a whole".
    #[error("{}: descriptor line {line}: {problem}: {text:?}", path.display())]
    BadDescriptor {
        path: PathBuf,
        line: usize,
        text: String,
        problem: DescriptorProblem,
    },

    /// An extent file named by the descriptor cannot be opened.
    #[error("{}: descriptor line {line} names extent file {} which cannot be opened: {source}; \
             the extent files must stay next to the descriptor, under the names it gives",
            descriptor.display(), extent.display())]
    MissingExtent {
        descriptor: PathBuf,
        line: usize,
        extent: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An entry of a grain directory or grain table.
    #[error("{}: {table} entry {index} (byte {offset}): {problem}; {REPAIR_HINT}", path.display())]
    BadTable {
        path: PathBuf,
        table: TableKind,
        offset: u64,
        index: u64,
        problem: TableProblem,
    },

    /// A compressed grain of a streamOptimized image.
    #[error("{}: compressed grain at byte {offset}: {problem}; the image is damaged, restore it from a copy", path.display())]
    BadGrain {
        path: PathBuf,
        offset: u64,
        problem: String,
    },

    /// A read or write outside the disk.
    #[error("I/O of {len} bytes at byte {offset} is outside the disk of {capacity} bytes")]
    OutOfRange {
        offset: u64,
        len: u64,
        capacity: u64,
    },

    /// A valid VMDK feature that vmk does not implement.
    #[error("{}: {what} is not supported; {hint}", path.display())]
    Unsupported {
        path: PathBuf,
        what: String,
        hint: String,
    },

    /// A write to a disk (or extent) that cannot be written.
    #[error("{}: cannot write: {why}", path.display())]
    ReadOnly { path: PathBuf, why: String },

    /// Another process (or another open in this one) has the image open for writing, or this
    /// one wants to write an image that is open elsewhere.
    #[error("{}: the image is in use (locked by another open); close the VM or tool that uses it", path.display())]
    Locked { path: PathBuf },

    /// A file of a [`crate::Storage`] (a datastore) is opened elsewhere in a conflicting
    /// mode; `why` is the storage's account of who holds it and since when.
    #[error("{}: {why}", path.display())]
    InUse { path: PathBuf, why: String },

    /// A delta disk whose parent changed after the delta was made.
    #[error("{}: parentCID is {expected:08x} but the parent {} has CID {found:08x}: the parent \
             was modified after this disk was created on top of it, so this disk's contents are \
             no longer valid; restore the parent or discard this disk",
            path.display(), parent.display())]
    ParentCidMismatch {
        path: PathBuf,
        parent: PathBuf,
        expected: u32,
        found: u32,
    },

    /// [`crate::CreateOptions`] or an argument that cannot be honoured.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// `create` or `convert` would overwrite a file.
    #[error("{}: already exists; remove it first or choose another name", path.display())]
    AlreadyExists { path: PathBuf },

    /// A sparse extent reached the 2 TiB its 32-bit sector pointers can address.
    #[error("{}: the sparse extent is full (grain pointers are 32-bit sector numbers, 2 TiB); \
             convert the disk to a twoGbMaxExtentSparse or flat subformat", path.display())]
    ExtentFull { path: PathBuf },

    /// The disk failed earlier (an I/O error in the middle of an update) and refuses more
    /// writes until it is reopened.
    #[error("{}: an earlier write failed, so the image may hold half-done updates; close it and run `vmk disk check --repair`", path.display())]
    Poisoned { path: PathBuf },
}

impl VmdkError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        doing: &'static str,
        offset: u64,
        source: io::Error,
    ) -> Self {
        VmdkError::Io {
            path: path.into(),
            doing,
            offset,
            source,
        }
    }
}

/// For block device backends that speak `io::Error`: I/O errors keep their kind, the rest
/// map to the nearest kind and keep the full message.
impl From<VmdkError> for io::Error {
    fn from(e: VmdkError) -> io::Error {
        let kind = match &e {
            VmdkError::Io { source, .. } => source.kind(),
            VmdkError::OutOfRange { .. } | VmdkError::InvalidArgument(_) => {
                io::ErrorKind::InvalidInput
            }
            VmdkError::ReadOnly { .. } => io::ErrorKind::PermissionDenied,
            VmdkError::Locked { .. } | VmdkError::InUse { .. } => io::ErrorKind::WouldBlock,
            VmdkError::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            VmdkError::MissingExtent { source, .. } => source.kind(),
            VmdkError::Unsupported { .. } => io::ErrorKind::Unsupported,
            VmdkError::ExtentFull { .. } => io::ErrorKind::StorageFull,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// What is wrong with a sparse extent header.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderProblem {
    /// The file is shorter than the header.
    Truncated {
        file_len: u64,
    },
    BadMagic(u32),
    UnsupportedVersion(u32),
    /// The four newline-detection bytes were changed, as a text-mode transfer does.
    TextModeTransfer,
    GrainSizeZero,
    GrainSizeNotPowerOfTwo(u64),
    GrainSizeTooLarge(u64),
    BadGtesPerGt(u32),
    CapacityTooLarge(u64),
    UnsupportedCompression(u16),
    /// Compression flag and algorithm disagree.
    CompressionMismatch {
        flags: u32,
        algorithm: u16,
    },
    DescriptorBeyondEof {
        sector: u64,
        sectors: u64,
        file_len: u64,
    },
    DescriptorTooLarge(u64),
    GdBeyondEof {
        sector: u64,
        entries: u64,
        file_len: u64,
    },
    RgdBeyondEof {
        sector: u64,
        entries: u64,
        file_len: u64,
    },
    /// The grain directory would overlap the header sector.
    GdInHeader(u64),
    OverheadBeyondEof {
        sectors: u64,
        file_len: u64,
    },
    /// `gdOffset` is "at end" but the file has no valid footer.
    BadFooter(&'static str),
}

impl HeaderProblem {
    fn advice(&self) -> &'static str {
        match self {
            HeaderProblem::BadMagic(_) | HeaderProblem::Truncated { .. } => {
                "the file is not a hosted sparse VMDK extent"
            }
            HeaderProblem::TextModeTransfer => {
                "the file was copied in text mode (FTP ASCII?), which damages it: copy it again in binary mode"
            }
            HeaderProblem::UnsupportedVersion(_)
            | HeaderProblem::UnsupportedCompression(_)
            | HeaderProblem::GrainSizeTooLarge(_)
            | HeaderProblem::BadGtesPerGt(_)
            | HeaderProblem::CapacityTooLarge(_) => {
                "vmk cannot use this extent (convert it with another tool, or restore it from a copy)"
            }
            _ => "the image is truncated or damaged: restore it from a copy",
        }
    }
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderProblem::Truncated { file_len } => {
                write!(f, "the file is {file_len} bytes, shorter than the 512-byte header")
            }
            HeaderProblem::BadMagic(m) => {
                write!(f, "magic number is {m:#010x}, expected 0x564d444b (\"KDMV\")")
            }
            HeaderProblem::UnsupportedVersion(v) => write!(f, "version {v} (vmk reads versions 1, 2 and 3)"),
            HeaderProblem::TextModeTransfer => write!(f, "the newline-detection bytes are not \"\\n \\r\\n\""),
            HeaderProblem::GrainSizeZero => write!(f, "grain size is 0"),
            HeaderProblem::GrainSizeNotPowerOfTwo(g) => {
                write!(f, "grain size of {g} sectors is not a power of two")
            }
            HeaderProblem::GrainSizeTooLarge(g) => {
                write!(f, "grain size of {g} sectors is above the limit of 65536 sectors (32 MiB)")
            }
            HeaderProblem::BadGtesPerGt(n) => {
                write!(f, "{n} entries per grain table (must be 1..=65536)")
            }
            HeaderProblem::CapacityTooLarge(c) => {
                write!(f, "capacity of {c} sectors is above the 2 TiB limit of a sparse extent")
            }
            HeaderProblem::UnsupportedCompression(a) => {
                write!(f, "compression algorithm {a} (only 1, deflate, exists)")
            }
            HeaderProblem::CompressionMismatch { flags, algorithm } => write!(
                f,
                "flags {flags:#x} and compression algorithm {algorithm} disagree about compression"
            ),
            HeaderProblem::DescriptorBeyondEof {
                sector,
                sectors,
                file_len,
            } => write!(
                f,
                "embedded descriptor at sector {sector} ({sectors} sectors) ends beyond the end of the file ({file_len} bytes)"
            ),
            HeaderProblem::DescriptorTooLarge(s) => {
                write!(f, "embedded descriptor of {s} sectors is larger than 1 MiB")
            }
            HeaderProblem::GdBeyondEof {
                sector,
                entries,
                file_len,
            } => write!(
                f,
                "grain directory at sector {sector} ({entries} entries) ends beyond the end of the file ({file_len} bytes)"
            ),
            HeaderProblem::RgdBeyondEof {
                sector,
                entries,
                file_len,
            } => write!(
                f,
                "redundant grain directory at sector {sector} ({entries} entries) ends beyond the end of the file ({file_len} bytes)"
            ),
            HeaderProblem::GdInHeader(s) => write!(f, "grain directory at sector {s} overlaps the header"),
            HeaderProblem::OverheadBeyondEof { sectors, file_len } => write!(
                f,
                "metadata area of {sectors} sectors is longer than the file ({file_len} bytes)"
            ),
            HeaderProblem::BadFooter(what) => write!(f, "streamOptimized footer: {what}"),
        }
    }
}

/// What is wrong with a descriptor line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DescriptorProblem {
    /// The descriptor is longer than vmk reads (1 MiB).
    TooLarge(usize),
    NotUtf8,
    /// A line that is neither a comment, `key=value`, nor an extent line.
    Syntax,
    BadVersion(String),
    BadCid(String),
    UnknownCreateType(String),
    UnsupportedCreateType(String),
    MissingCreateType,
    BadExtent(&'static str),
    UnsupportedExtentType(String),
    NoExtents,
    /// `parentCID` names a parent but there is no `parentFileNameHint`.
    MissingParentHint,
    /// The descriptor does not fit in the space the sparse header reserves for it.
    DoesNotFit {
        len: usize,
        space: u64,
    },
}

impl fmt::Display for DescriptorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescriptorProblem::TooLarge(n) => write!(f, "descriptor of {n} bytes is larger than 1 MiB"),
            DescriptorProblem::NotUtf8 => write!(f, "not UTF-8 text"),
            DescriptorProblem::Syntax => write!(
                f,
                "expected `key=value`, an extent line (`RW <sectors> SPARSE|FLAT|VMFS|ZERO \"file\" [offset]`) or a `#` comment"
            ),
            DescriptorProblem::BadVersion(v) => write!(f, "descriptor version {v:?} (vmk reads 1, 2 and 3)"),
            DescriptorProblem::BadCid(v) => write!(f, "CID {v:?} is not a 32-bit hexadecimal number"),
            DescriptorProblem::UnknownCreateType(t) => write!(
                f,
                "unknown createType {t:?} (known: monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized, vmfs)"
            ),
            DescriptorProblem::UnsupportedCreateType(t) => {
                write!(f, "createType {t:?} is not supported by vmk")
            }
            DescriptorProblem::MissingCreateType => write!(f, "no createType line"),
            DescriptorProblem::BadExtent(why) => write!(f, "bad extent line: {why}"),
            DescriptorProblem::UnsupportedExtentType(t) => {
                write!(f, "extent type {t:?} is not supported by vmk (SPARSE, FLAT, VMFS and ZERO are)")
            }
            DescriptorProblem::NoExtents => write!(f, "no extent lines"),
            DescriptorProblem::MissingParentHint => {
                write!(f, "parentCID names a parent but there is no parentFileNameHint line")
            }
            DescriptorProblem::DoesNotFit { len, space } => write!(
                f,
                "the descriptor ({len} bytes) does not fit in the {space} bytes the header reserves for it"
            ),
        }
    }
}

/// Which table a [`VmdkError::BadTable`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    GrainDirectory,
    RedundantGrainDirectory,
    GrainTable,
    RedundantGrainTable,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableKind::GrainDirectory => "grain directory",
            TableKind::RedundantGrainDirectory => "redundant grain directory",
            TableKind::GrainTable => "grain table",
            TableKind::RedundantGrainTable => "redundant grain table",
        })
    }
}

/// What is wrong with a grain directory or grain table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableProblem {
    /// Points at (or runs past) the end of the file.
    BeyondEof { sector: u64, file_len: u64 },
    /// Points into the header and metadata area in front of the first grain.
    IntoMetadata { sector: u64, first_data_sector: u64 },
    /// Points into the header sector.
    IntoHeader { sector: u64 },
}

impl fmt::Display for TableProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableProblem::BeyondEof { sector, file_len } => write!(
                f,
                "points to sector {sector}, beyond the end of the file ({file_len} bytes)"
            ),
            TableProblem::IntoMetadata {
                sector,
                first_data_sector,
            } => write!(
                f,
                "points to sector {sector}, inside the metadata area (grains start at sector {first_data_sector})"
            ),
            TableProblem::IntoHeader { sector } => {
                write!(f, "points to sector {sector}, the header")
            }
        }
    }
}
