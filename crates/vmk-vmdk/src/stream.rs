//! Writing streamOptimized images, in the layout VMware's OVF export makes: header (grain
//! directory "at end"), embedded descriptor, then in disk order the non-zero grains, each a
//! 12-byte marker (LBA, size) and its deflate (zlib) stream padded to a sector, each grain
//! table after its grains (marker sector + table), the grain directory (marker + table),
//! the footer (marker + a copy of the header that gives the directory's offset) and the
//! end-of-stream marker.

use std::path::Path;
use std::sync::Arc;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::error::VmdkError;
use crate::file::{CrashSwitch, ImageFile};
use crate::format::{
    encode_u32s, GrainMarker, MetadataMarker, SparseHeader, COMPRESSION_DEFLATE, FLAG_COMPRESSED,
    FLAG_MARKERS, FLAG_NL_DETECT, GD_AT_END, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT,
    SECTOR,
};

const GTES: u64 = 512;

pub(crate) struct StreamWriter {
    f: ImageFile,
    hdr: SparseHeader,
    grain: u64,
    gd: Vec<u32>,
    gt: Vec<u32>,
    /// The grain directory index of `gt`.
    cur: u64,
    /// Grains up to this one are written.
    next_grain: u64,
    pos: u64,
    z: Compress,
    out: Vec<u8>,
}

impl StreamWriter {
    /// Starts a stream of `capacity` bytes with `descriptor` embedded.
    pub(crate) fn create(
        path: &Path,
        capacity: u64,
        grain: u64,
        descriptor: &str,
        crash: &Arc<CrashSwitch>,
    ) -> Result<StreamWriter, VmdkError> {
        let f = ImageFile::create(path, crash)?;
        let grain_sectors = grain / SECTOR;
        let sectors = capacity / SECTOR;
        let desc_sectors = (descriptor.len() as u64).div_ceil(SECTOR).max(1);
        let hdr = SparseHeader {
            version: 3,
            flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: sectors,
            grain_size: grain_sectors,
            descriptor_offset: 1,
            descriptor_size: desc_sectors,
            num_gtes_per_gt: GTES as u32,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: (1 + desc_sectors).div_ceil(grain_sectors) * grain_sectors,
            unclean_shutdown: false,
            compress_algorithm: COMPRESSION_DEFLATE,
        };
        f.write_at(0, &hdr.encode(), "writing the header")?;
        let mut d = descriptor.as_bytes().to_vec();
        d.resize((desc_sectors * SECTOR) as usize, 0);
        f.write_at(SECTOR, &d, "writing the embedded descriptor")?;
        let n = hdr.gd_entries() as usize;
        Ok(StreamWriter {
            pos: hdr.overhead * SECTOR,
            f,
            hdr,
            grain,
            gd: vec![0; n],
            gt: vec![0; GTES as usize],
            cur: 0,
            next_grain: 0,
            z: Compress::new(Compression::default(), true),
            out: Vec::new(),
        })
    }

    /// Writes grain `g` (grains in increasing order; `data` at most a grain).
    pub(crate) fn write_grain(&mut self, g: u64, data: &[u8]) -> Result<(), VmdkError> {
        if g < self.next_grain || data.len() as u64 > self.grain {
            return Err(VmdkError::InvalidArgument(format!(
                "stream grains must come in order, whole: grain {g} after {}",
                self.next_grain
            )));
        }
        let gdi = g / GTES;
        if gdi != self.cur {
            self.finish_table()?;
            self.cur = gdi;
        }
        self.deflate(data)?;
        let marker = GrainMarker {
            lba: g * self.hdr.grain_size,
            size: self.out.len() as u32,
        };
        let mut buf = Vec::with_capacity(self.out.len() + 524);
        buf.extend_from_slice(&marker.encode());
        buf.extend_from_slice(&self.out);
        buf.resize(
            (buf.len() as u64).div_ceil(SECTOR) as usize * SECTOR as usize,
            0,
        );
        self.f
            .write_at(self.pos, &buf, "writing a compressed grain")?;
        self.gt[(g % GTES) as usize] = (self.pos / SECTOR) as u32;
        self.pos += buf.len() as u64;
        self.next_grain = g + 1;
        Ok(())
    }

    fn deflate(&mut self, data: &[u8]) -> Result<(), VmdkError> {
        self.z.reset();
        self.out.clear();
        self.out.reserve(data.len() + data.len() / 8 + 256);
        loop {
            let done = self.z.total_in() as usize;
            let st = self
                .z
                .compress_vec(&data[done..], &mut self.out, FlushCompress::Finish)
                .map_err(|e| {
                    VmdkError::io(
                        &self.f.path,
                        "compressing a grain",
                        self.pos,
                        std::io::Error::other(e),
                    )
                })?;
            if st == Status::StreamEnd {
                return Ok(());
            }
            let more = self.out.capacity().max(4096);
            self.out.reserve(more);
        }
    }

    fn marker(&mut self, num_sectors: u64, kind: u32) -> Result<(), VmdkError> {
        let m = MetadataMarker {
            num_sectors,
            size: 0,
            kind,
        };
        self.f
            .write_at(self.pos, &m.encode(), "writing a stream marker")?;
        self.pos += SECTOR;
        Ok(())
    }

    /// Writes the current grain table if it maps anything.
    fn finish_table(&mut self) -> Result<(), VmdkError> {
        if self.gt.iter().all(|&v| v == 0) {
            return Ok(());
        }
        let sectors = self.hdr.gt_sectors();
        self.marker(sectors, MARKER_GT)?;
        let mut b = encode_u32s(&self.gt);
        b.resize((sectors * SECTOR) as usize, 0);
        self.f.write_at(self.pos, &b, "writing a grain table")?;
        self.gd[self.cur as usize] = (self.pos / SECTOR) as u32;
        self.pos += sectors * SECTOR;
        self.gt.fill(0);
        Ok(())
    }

    /// Writes the last grain table, the grain directory, the footer and the end-of-stream
    /// marker, and syncs.
    pub(crate) fn finish(mut self) -> Result<(), VmdkError> {
        self.finish_table()?;
        let gd_sectors = (self.gd.len() as u64 * 4).div_ceil(SECTOR).max(1);
        self.marker(gd_sectors, MARKER_GD)?;
        let gd_at = self.pos / SECTOR;
        let mut b = encode_u32s(&self.gd);
        b.resize((gd_sectors * SECTOR) as usize, 0);
        self.f
            .write_at(self.pos, &b, "writing the grain directory")?;
        self.pos += gd_sectors * SECTOR;
        self.marker(1, MARKER_FOOTER)?;
        let mut footer = self.hdr.clone();
        footer.gd_offset = gd_at;
        self.f
            .write_at(self.pos, &footer.encode(), "writing the footer")?;
        self.pos += SECTOR;
        self.marker(0, MARKER_EOS)?;
        self.f.sync()
    }
}
