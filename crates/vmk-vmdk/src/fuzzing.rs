//! The logic of the fuzz targets in `fuzz/fuzz_targets/`, here so that a unit test runs it
//! too (over mutated inputs with a fixed seed). Each function takes arbitrary bytes and
//! panics only if the code under test breaks an invariant (or panics itself).
//!
//! Running a target needs a nightly toolchain: `cargo +nightly fuzz run header` in
//! `crates/vmk-vmdk` (with cargo-fuzz installed); the targets are `header`, `descriptor`,
//! `grain_table` and `image`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::descriptor::Descriptor;
use crate::format::{
    parse_grain_table, GrainMarker, Gte, GteRules, MetadataMarker, SparseHeader, SECTOR,
};
use crate::{CreateOptions, OpenMode, Subformat, Vmdk};

/// A sparse extent header: decoding and validating never panics, and what decodes survives
/// an encode/decode round trip. Bytes 512..520, when present, give the file length.
pub fn header(data: &[u8]) {
    let file_len = match data.get(512..520) {
        Some(b) => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        None => data.len() as u64,
    };
    if let Ok(h) = SparseHeader::decode(data) {
        let _ = h.validate(file_len);
        let _ = (h.gd_entries(), h.gt_sectors(), h.first_data_sector());
        let again = SparseHeader::decode(&h.encode());
        assert_eq!(again, Ok(h), "a decoded header must survive a round trip");
    }
    let _ = MetadataMarker::decode(data);
    let _ = GrainMarker::decode(data);
}

fn without_lines(mut d: Descriptor) -> Descriptor {
    d.extents.iter_mut().for_each(|e| e.line = 0);
    d
}

/// A text descriptor: parsing never panics, and what parses renders to text that parses
/// to the same descriptor.
pub fn descriptor(data: &[u8]) {
    if let Ok(d) = Descriptor::parse(data) {
        let text = d.render();
        let again = Descriptor::parse(text.as_bytes())
            .unwrap_or_else(|e| panic!("rendered descriptor does not parse: {e:?}\n{text}"));
        assert_eq!(
            without_lines(again),
            without_lines(d),
            "descriptor round trip\n{text}"
        );
    }
}

/// A grain table: byte 0 bit 0 = zeroed-grain flag, bytes 1..5 the first data sector,
/// 5..13 the file length, the rest the table. Every entry classifies without panicking,
/// and data entries lie inside the file, after the metadata.
pub fn grain_table(data: &[u8]) {
    if data.len() < 13 {
        return;
    }
    let rules = GteRules {
        zero_grain: data[0] & 1 != 0,
        first_data_sector: u32::from_le_bytes([data[1], data[2], data[3], data[4]]) as u64,
        file_len: u64::from_le_bytes([
            data[5], data[6], data[7], data[8], data[9], data[10], data[11], data[12],
        ]),
    };
    let table = &data[13..];
    if let Ok(entries) = parse_grain_table(table, &rules) {
        for e in entries {
            if let Gte::Data(s) = e {
                assert!(s >= rules.first_data_sector.max(1));
                assert!(s.saturating_mul(SECTOR) < rules.file_len);
            }
        }
    }
}

/// A small monolithicSparse image (1 MiB, 4 KiB grains, a few grains written).
fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let p = scratch("template");
        let _ = std::fs::remove_file(&p);
        let mut o = CreateOptions::new(1 << 20, Subformat::MonolithicSparse);
        o.grain_size = 4096;
        let mut d = Vmdk::create(&p, &o).expect("the fuzz template image can be created");
        for (i, off) in [0u64, 8192, 65536, 500_000, (1 << 20) - 4096]
            .into_iter()
            .enumerate()
        {
            d.write_at(off, &[i as u8 + 1; 4096])
                .expect("template write");
        }
        d.close().expect("template close");
        let b = std::fs::read(&p).expect("template read");
        let _ = std::fs::remove_file(&p);
        b
    })
}

fn scratch(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "vmk-vmdk-fuzz-{}-{}-{what}.vmdk",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A whole image: the input is a list of (offset: u16 little-endian, byte) edits applied to a
/// small valid image, plus an optional length cut (first two bytes, when odd). Opening,
/// reading everything, checking, repairing and writing never panic.
pub fn image(data: &[u8]) {
    let mut img = template().to_vec();
    let mut edits = data;
    if let [a, b, rest @ ..] = data {
        if a & 1 == 1 {
            let cut = u16::from_le_bytes([*a, *b]) as usize * 8;
            img.truncate(img.len().saturating_sub(cut));
        }
        edits = rest;
    }
    for e in edits.chunks_exact(3) {
        let off = u16::from_le_bytes([e[0], e[1]]) as usize;
        if let Some(b) = img.get_mut(off) {
            *b = e[2];
        }
    }
    let p = scratch("image");
    if std::fs::write(&p, &img).is_err() {
        return;
    }
    if let Ok(mut d) = Vmdk::open(&p, OpenMode::ReadOnly) {
        let _ = d.info();
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0;
        while off < d.size().min(16 << 20) {
            let n = (buf.len() as u64).min(d.size() - off) as usize;
            if d.read_at(off, &mut buf[..n]).is_err() {
                break;
            }
            off += n as u64;
        }
    }
    let _ = Vmdk::check(&p, false);
    let _ = Vmdk::check(&p, true);
    if let Ok(mut d) = Vmdk::open(&p, OpenMode::ReadWrite) {
        let size = d.size();
        if size > 0 {
            let _ = d.write_at(0, &[0xa5; 5000][..size.min(5000) as usize]);
            let _ = d.write_zeroes(0, size.min(8192));
            let _ = d.write_at(size - size.min(100), &vec![1; size.min(100) as usize]);
        }
        let _ = d.grow(size + (1 << 20));
        let _ = d.close();
    }
    let _ = std::fs::remove_file(&p);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*, fixed seed: the same inputs every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, base: &[u8], alphabet: &[&[u8]]) -> Vec<u8> {
        let mut v = base.to_vec();
        for _ in 0..1 + rng.below(6) {
            let at = if v.is_empty() { 0 } else { rng.below(v.len()) };
            match rng.below(6) {
                0 if !v.is_empty() => v[at] = rng.next() as u8,
                1 if !v.is_empty() => v[at] ^= 1 << rng.below(8),
                2 => {
                    let tok = alphabet[rng.below(alphabet.len())];
                    v.splice(at..at, tok.iter().copied());
                }
                3 if !v.is_empty() => {
                    let n = rng.below(16).min(v.len() - at);
                    v.drain(at..at + n);
                }
                4 if v.len() >= 8 => {
                    let at = rng.below(v.len() - 7);
                    let val = match rng.below(4) {
                        0 => 0u64,
                        1 => u64::MAX,
                        2 => 1 << rng.below(64),
                        _ => rng.next(),
                    };
                    v[at..at + 8].copy_from_slice(&val.to_le_bytes());
                }
                _ => v.truncate(at),
            }
        }
        v
    }

    fn valid_header() -> Vec<u8> {
        let h = crate::sparse::sparse_layout(1 << 21, 128, 300, true);
        let mut v = h.encode().to_vec();
        v.extend_from_slice(&(1u64 << 20).to_le_bytes());
        v
    }

    #[test]
    fn header_survives_mutations() {
        let mut rng = Rng(0x5eed_0001);
        let base = valid_header();
        header(&base);
        for _ in 0..20_000 {
            header(&mutate(&mut rng, &base, &[b"KDMV", b"\n \r\n", &[0xff; 8]]));
        }
    }

    #[test]
    fn descriptor_survives_mutations() {
        let mut rng = Rng(0x5eed_0002);
        let mut o = CreateOptions::new(10 << 30, Subformat::TwoGbMaxExtentSparse);
        o.parent = Some("base.vmdk".into());
        let mut d = crate::create::new_descriptor(&o, 10 << 30, Some((0x1234, "base.vmdk".into())));
        for (i, kind) in [
            crate::descriptor::ExtentType::Sparse,
            crate::descriptor::ExtentType::Flat,
            crate::descriptor::ExtentType::Zero,
        ]
        .into_iter()
        .enumerate()
        {
            d.extents.push(crate::descriptor::ExtentLine {
                access: crate::descriptor::Access::ReadWrite,
                sectors: 4192256,
                kind,
                file: format!("d-s{i:03}.vmdk"),
                offset: 0,
                line: 0,
            });
        }
        let base = d.render().into_bytes();
        descriptor(&base);
        let alphabet: &[&[u8]] = &[
            b"\n",
            b"\r\n",
            b"\"",
            b"=",
            b" ",
            b"#",
            b"RW ",
            b"RDONLY ",
            b"NOACCESS ",
            b"SPARSE",
            b"FLAT",
            b"ZERO",
            b"VMFS",
            b"createType=",
            b"CID=",
            b"parentCID=",
            b"version=",
            b"ddb.x = ",
            b"18446744073709551616",
            b"4294967295",
            b"\0",
            b"\xff",
            b"\xc3\xa9",
            b"monolithicFlat",
            b"streamOptimized",
            b"vmfsSparse",
            b"parentFileNameHint=",
        ];
        for _ in 0..20_000 {
            descriptor(&mutate(&mut rng, &base, alphabet));
        }
    }

    #[test]
    fn grain_table_survives_random_input() {
        let mut rng = Rng(0x5eed_0003);
        for _ in 0..5_000 {
            let n = rng.below(2100);
            let mut v: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            if v.len() >= 13 && rng.below(2) == 0 {
                v[1..5].copy_from_slice(&(rng.below(300) as u32).to_le_bytes());
                v[5..13].copy_from_slice(&((rng.below(1 << 20) as u64) << 9).to_le_bytes());
                for c in v[13..].chunks_exact_mut(4) {
                    if rng.below(2) == 0 {
                        c.copy_from_slice(&(rng.below(2000) as u32).to_le_bytes());
                    }
                }
            }
            grain_table(&v);
        }
    }

    #[test]
    fn image_survives_mutations() {
        let mut rng = Rng(0x5eed_0004);
        let len = template().len();
        image(&[]);
        for round in 0..300 {
            let mut v = Vec::new();
            v.extend_from_slice(&[rng.below(2) as u8, rng.next() as u8]);
            for _ in 0..1 + rng.below(8) {
                // Aim most edits at the header, descriptor and tables.
                let off = if round % 3 == 0 {
                    rng.below(len)
                } else {
                    rng.below(len.min(40 * 512))
                };
                v.extend_from_slice(&(off as u16).to_le_bytes());
                v.push(rng.next() as u8);
            }
            image(&v);
        }
    }
}
