//! On-disk structures of a hosted sparse extent ("Virtual Disk Format 1.1", VMware): the
//! 512-byte header, stream markers and grain table entries. Pure functions over bytes, so the
//! fuzz targets can drive them.
//!
//! Header layout (little-endian, packed):
//!
//! | byte | field |
//! |---|---|
//! | 0 | magic `"KDMV"` (0x564d444b) |
//! | 4 | version (1, 2 with zeroed-grain GTEs, 3 for streamOptimized / change tracking) |
//! | 8 | flags: bit 0 newline test, 1 redundant grain directory, 2 zeroed-grain GTEs, 16 compressed grains, 17 markers |
//! | 12 | capacity (sectors) |
//! | 20 | grain size (sectors) |
//! | 28 | descriptor offset (sectors, 0 = none) |
//! | 36 | descriptor size (sectors) |
//! | 44 | grain table entries per grain table (512) |
//! | 48 | redundant grain directory offset (sectors) |
//! | 56 | grain directory offset (sectors; all ones = in the footer) |
//! | 64 | overhead: sectors in front of the first grain |
//! | 72 | uncleanShutdown |
//! | 73 | `'\n' ' ' '\r' '\n'` |
//! | 77 | compression algorithm (0 none, 1 deflate) |

use crate::error::{HeaderProblem, TableProblem};

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// `"KDMV"` read as a little-endian u32.
pub const MAGIC: u32 = 0x564d_444b;
/// `"COWD"`: the ESX 2 / VMFS sparse format, which vmk does not read.
pub const COWD_MAGIC: u32 = 0x4457_4f43;
pub const FLAG_NL_DETECT: u32 = 1 << 0;
pub const FLAG_RGD: u32 = 1 << 1;
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
pub const FLAG_COMPRESSED: u32 = 1 << 16;
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `gdOffset` value meaning "the grain directory is found through the footer".
pub const GD_AT_END: u64 = u64::MAX;
pub const COMPRESSION_DEFLATE: u16 = 1;
/// A grain table entry meaning "this grain reads as zeros" (with [`FLAG_ZERO_GRAIN`]).
pub const GTE_ZEROED: u32 = 1;

/// Largest grain vmk accepts: 65536 sectors (32 MiB).
pub const MAX_GRAIN_SECTORS: u64 = 1 << 16;
/// Largest capacity of one sparse extent: grain pointers are 32-bit sector numbers.
pub const MAX_SPARSE_SECTORS: u64 = 1 << 32;
/// Largest embedded descriptor vmk reads.
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

/// Stream marker types.
pub const MARKER_EOS: u32 = 0;
pub const MARKER_GT: u32 = 1;
pub const MARKER_GD: u32 = 2;
pub const MARKER_FOOTER: u32 = 3;

/// Byte offsets of the header fields, for error messages.
pub mod field {
    pub const MAGIC: u64 = 0;
    pub const VERSION: u64 = 4;
    pub const FLAGS: u64 = 8;
    pub const CAPACITY: u64 = 12;
    pub const GRAIN_SIZE: u64 = 20;
    pub const DESCRIPTOR_OFFSET: u64 = 28;
    pub const NUM_GTES: u64 = 44;
    pub const RGD_OFFSET: u64 = 48;
    pub const GD_OFFSET: u64 = 56;
    pub const OVERHEAD: u64 = 64;
    pub const UNCLEAN: u64 = 72;
    pub const NL_CHARS: u64 = 73;
    pub const COMPRESS: u64 = 77;
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// A decoded sparse extent header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    /// Sectors.
    pub capacity: u64,
    /// Sectors.
    pub grain_size: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub num_gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub overhead: u64,
    pub unclean_shutdown: bool,
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Decodes and checks the fields that do not depend on the file around the header.
    /// Errors carry the byte offset of the field.
    pub fn decode(b: &[u8]) -> Result<SparseHeader, (u64, HeaderProblem)> {
        if b.len() < SECTOR as usize {
            return Err((
                0,
                HeaderProblem::Truncated {
                    file_len: b.len() as u64,
                },
            ));
        }
        let magic = le32(b, 0);
        if magic != MAGIC {
            return Err((field::MAGIC, HeaderProblem::BadMagic(magic)));
        }
        let h = SparseHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain_size: le64(b, 20),
            descriptor_offset: le64(b, 28),
            descriptor_size: le64(b, 36),
            num_gtes_per_gt: le32(b, 44),
            rgd_offset: le64(b, 48),
            gd_offset: le64(b, 56),
            overhead: le64(b, 64),
            unclean_shutdown: b[72] != 0,
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        };
        if !(1..=3).contains(&h.version) {
            return Err((field::VERSION, HeaderProblem::UnsupportedVersion(h.version)));
        }
        if h.flags & FLAG_NL_DETECT != 0 && b[73..77] != *b"\n \r\n" {
            return Err((field::NL_CHARS, HeaderProblem::TextModeTransfer));
        }
        if h.grain_size == 0 {
            return Err((field::GRAIN_SIZE, HeaderProblem::GrainSizeZero));
        }
        if !h.grain_size.is_power_of_two() {
            return Err((
                field::GRAIN_SIZE,
                HeaderProblem::GrainSizeNotPowerOfTwo(h.grain_size),
            ));
        }
        if h.grain_size > MAX_GRAIN_SECTORS {
            return Err((
                field::GRAIN_SIZE,
                HeaderProblem::GrainSizeTooLarge(h.grain_size),
            ));
        }
        if h.num_gtes_per_gt == 0 || h.num_gtes_per_gt > 65536 {
            return Err((
                field::NUM_GTES,
                HeaderProblem::BadGtesPerGt(h.num_gtes_per_gt),
            ));
        }
        if h.capacity > MAX_SPARSE_SECTORS {
            return Err((field::CAPACITY, HeaderProblem::CapacityTooLarge(h.capacity)));
        }
        match h.compress_algorithm {
            0 | COMPRESSION_DEFLATE => {}
            a => return Err((field::COMPRESS, HeaderProblem::UnsupportedCompression(a))),
        }
        if (h.flags & FLAG_COMPRESSED != 0) != (h.compress_algorithm == COMPRESSION_DEFLATE) {
            return Err((
                field::FLAGS,
                HeaderProblem::CompressionMismatch {
                    flags: h.flags,
                    algorithm: h.compress_algorithm,
                },
            ));
        }
        Ok(h)
    }

    /// Checks the fields that point into the file against its length. The grain directory
    /// must already be the real one (from the footer when `gd_offset` was [`GD_AT_END`]).
    pub fn validate(&self, file_len: u64) -> Result<(), (u64, HeaderProblem)> {
        let file_sectors = file_len / SECTOR;
        if self.descriptor_offset != 0 {
            if self.descriptor_size > MAX_DESCRIPTOR_BYTES / SECTOR {
                return Err((
                    field::DESCRIPTOR_OFFSET,
                    HeaderProblem::DescriptorTooLarge(self.descriptor_size),
                ));
            }
            // A descriptor area may run into a short file: QEMU truncates images to their
            // metadata, and the descriptor is text that ends at its first NUL. Only its start
            // must be inside the file.
            if self.descriptor_offset >= file_sectors {
                return Err((
                    field::DESCRIPTOR_OFFSET,
                    HeaderProblem::DescriptorBeyondEof {
                        sector: self.descriptor_offset,
                        sectors: self.descriptor_size,
                        file_len,
                    },
                ));
            }
        }
        let entries = self.gd_entries();
        let gd_bytes = entries * 4;
        if self.gd_offset == GD_AT_END {
            return Err((
                field::GD_OFFSET,
                HeaderProblem::BadFooter("the footer's grain directory offset is also \"at end\""),
            ));
        }
        if entries > 0 && self.gd_offset == 0 {
            return Err((field::GD_OFFSET, HeaderProblem::GdInHeader(0)));
        }
        if entries > 0 && !fits(self.gd_offset, gd_bytes, file_len) {
            return Err((
                field::GD_OFFSET,
                HeaderProblem::GdBeyondEof {
                    sector: self.gd_offset,
                    entries,
                    file_len,
                },
            ));
        }
        if self.has_rgd() && entries > 0 && !fits(self.rgd_offset, gd_bytes, file_len) {
            return Err((
                field::RGD_OFFSET,
                HeaderProblem::RgdBeyondEof {
                    sector: self.rgd_offset,
                    entries,
                    file_len,
                },
            ));
        }
        if self.overhead > file_sectors {
            return Err((
                field::OVERHEAD,
                HeaderProblem::OverheadBeyondEof {
                    sectors: self.overhead,
                    file_len,
                },
            ));
        }
        Ok(())
    }

    /// Encodes the header sector.
    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = self.unclean_shutdown as u8;
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Grain directory entries: one per grain table, enough for the capacity.
    pub fn gd_entries(&self) -> u64 {
        let per_gt = self
            .grain_size
            .saturating_mul(self.num_gtes_per_gt as u64)
            .max(1);
        self.capacity.div_ceil(per_gt)
    }

    /// Sectors a grain table occupies on disk.
    pub fn gt_sectors(&self) -> u64 {
        (self.num_gtes_per_gt as u64 * 4).div_ceil(SECTOR)
    }

    pub fn has_rgd(&self) -> bool {
        self.flags & FLAG_RGD != 0 && self.rgd_offset != 0
    }

    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    pub fn zero_grain(&self) -> bool {
        self.flags & FLAG_ZERO_GRAIN != 0
    }

    /// First sector a grain may start at.
    pub fn first_data_sector(&self) -> u64 {
        self.overhead.max(1)
    }
}

/// True when `bytes` bytes at `sector` lie inside a file of `file_len` bytes.
fn fits(sector: u64, bytes: u64, file_len: u64) -> bool {
    sector
        .checked_mul(SECTOR)
        .and_then(|o| o.checked_add(bytes))
        .is_some_and(|end| end <= file_len)
}

/// A metadata marker of a streamOptimized image (the sector in front of a grain table, grain
/// directory or footer, or the end-of-stream sector).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetadataMarker {
    pub num_sectors: u64,
    pub size: u32,
    pub kind: u32,
}

impl MetadataMarker {
    pub fn decode(b: &[u8]) -> Option<MetadataMarker> {
        if b.len() < 16 {
            return None;
        }
        Some(MetadataMarker {
            num_sectors: le64(b, 0),
            size: le32(b, 8),
            kind: le32(b, 12),
        })
    }

    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..16].copy_from_slice(&self.kind.to_le_bytes());
        b
    }
}

/// The 12 bytes in front of a compressed grain: its first virtual sector and the length of
/// the deflate data that follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrainMarker {
    pub lba: u64,
    pub size: u32,
}

impl GrainMarker {
    pub const LEN: usize = 12;

    pub fn decode(b: &[u8]) -> Option<GrainMarker> {
        if b.len() < Self::LEN {
            return None;
        }
        Some(GrainMarker {
            lba: le64(b, 0),
            size: le32(b, 8),
        })
    }

    pub fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..8].copy_from_slice(&self.lba.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b
    }
}

/// What a grain table entry means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gte {
    /// Never written: reads as zeros, or from the parent of a delta disk.
    Unallocated,
    /// Reads as zeros, also in a delta disk.
    Zero,
    /// The grain (or its compressed marker) starts at this sector of the extent file.
    Data(u64),
}

/// The limits a grain table entry is checked against.
#[derive(Clone, Copy, Debug)]
pub struct GteRules {
    pub zero_grain: bool,
    pub first_data_sector: u64,
    pub file_len: u64,
}

impl GteRules {
    pub fn for_header(h: &SparseHeader, file_len: u64) -> GteRules {
        GteRules {
            zero_grain: h.zero_grain(),
            first_data_sector: h.first_data_sector(),
            file_len,
        }
    }

    /// Classifies one entry. A grain must start inside the file; like QEMU, vmk reads the
    /// part of a last grain that lies past the end of the file as zeros.
    pub fn classify(&self, v: u32) -> Result<Gte, TableProblem> {
        let s = v as u64;
        match v {
            0 => Ok(Gte::Unallocated),
            GTE_ZEROED if self.zero_grain => Ok(Gte::Zero),
            _ if s < self.first_data_sector => Err(TableProblem::IntoMetadata {
                sector: s,
                first_data_sector: self.first_data_sector,
            }),
            _ if s * SECTOR >= self.file_len => Err(TableProblem::BeyondEof {
                sector: s,
                file_len: self.file_len,
            }),
            _ => Ok(Gte::Data(s)),
        }
    }
}

/// Decodes a little-endian array of u32 (a grain directory or table).
pub fn decode_u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Encodes u32s little-endian.
pub fn encode_u32s(v: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decodes a whole grain table and classifies every entry: the parser the `grain_table` fuzz
/// target drives. Returns the entries, or the index and problem of the first bad one.
pub fn parse_grain_table(b: &[u8], rules: &GteRules) -> Result<Vec<Gte>, (u64, TableProblem)> {
    decode_u32s(b)
        .into_iter()
        .enumerate()
        .map(|(i, v)| rules.classify(v).map_err(|p| (i as u64, p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SparseHeader {
        SparseHeader {
            version: 1,
            flags: FLAG_NL_DETECT | FLAG_RGD,
            capacity: 2048,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 21,
            gd_offset: 30,
            overhead: 128,
            unclean_shutdown: false,
            compress_algorithm: 0,
        }
    }

    #[test]
    fn round_trip() {
        let h = header();
        assert_eq!(SparseHeader::decode(&h.encode()), Ok(h.clone()));
        assert_eq!(h.validate(128 * 512), Ok(()));
        assert_eq!(h.gd_entries(), 1);
        assert_eq!(h.gt_sectors(), 4);
    }

    #[test]
    fn precise_errors() {
        let mut b = header().encode();
        b[0] = b'X';
        assert!(matches!(
            SparseHeader::decode(&b),
            Err((0, HeaderProblem::BadMagic(_)))
        ));
        let mut h = header();
        h.grain_size = 96;
        assert_eq!(
            SparseHeader::decode(&h.encode()),
            Err((20, HeaderProblem::GrainSizeNotPowerOfTwo(96)))
        );
        let mut h = header();
        h.version = 4;
        assert_eq!(
            SparseHeader::decode(&h.encode()),
            Err((4, HeaderProblem::UnsupportedVersion(4)))
        );
        let mut b = header().encode();
        b[75] = b'\n';
        assert_eq!(
            SparseHeader::decode(&b),
            Err((73, HeaderProblem::TextModeTransfer))
        );
        let mut h = header();
        h.gd_offset = 1000;
        assert!(matches!(
            h.validate(128 * 512),
            Err((56, HeaderProblem::GdBeyondEof { .. }))
        ));
    }

    #[test]
    fn gte_rules() {
        let r = GteRules {
            zero_grain: true,
            first_data_sector: 128,
            file_len: 256 * 512,
        };
        assert_eq!(r.classify(0), Ok(Gte::Unallocated));
        assert_eq!(r.classify(1), Ok(Gte::Zero));
        assert_eq!(r.classify(128), Ok(Gte::Data(128)));
        assert!(matches!(
            r.classify(256),
            Err(TableProblem::BeyondEof { .. })
        ));
        assert!(matches!(
            r.classify(5),
            Err(TableProblem::IntoMetadata { .. })
        ));
        let r = GteRules {
            zero_grain: false,
            ..r
        };
        assert!(matches!(
            r.classify(1),
            Err(TableProblem::IntoMetadata { .. })
        ));
    }
}
