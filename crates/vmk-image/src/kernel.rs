//! The kernel image: turning what a Debian kernel package ships in `/boot` into a flat RISC-V
//! Linux `Image` that a loader can copy to RAM and jump to.
//!
//! Debian trixie's riscv64 package ships `/boot/vmlinux-<version>`, which despite its name is
//! not an ELF file but the flat, uncompressed `Image` with an EFI stub: a PE/COFF header is
//! folded into the 64-byte RISC-V boot header (`MZ` at offset 0 decodes as a harmless
//! instruction, the PE header follows at offset 0x40). Such an image is used as is. A
//! gzip-compressed `Image` (`Image.gz`) or an EFI zboot image (`MZ` + `zimg`) is
//! decompressed first.
//!
//! The boot header (Documentation/arch/riscv/boot-image-header.rst):
//! ```text
//! 0x00 u32 code0        0x04 u32 code1
//! 0x08 u64 text_offset  (image load offset from the start of RAM, little endian)
//! 0x10 u64 image_size   (effective image size, including bss)
//! 0x18 u64 flags        0x20 u32 version   0x24 u32 res1   0x28 u64 res2
//! 0x30 u64 magic        ("RISCV\0\0\0", deprecated)
//! 0x38 u32 magic2       ("RSC\x05")
//! 0x3c u32 res3         (offset of the PE header, when there is an EFI stub)
//! ```

use std::io::Read;

/// A flat RISC-V Linux `Image`.
#[derive(Debug, Clone)]
pub struct KernelImage {
    pub data: Vec<u8>,
    pub text_offset: u64,
    pub image_size: u64,
    pub header_version: u32,
    /// Whether the image carries an EFI stub (PE header).
    pub efi_stub: bool,
    /// What the package shipped, e.g. "flat Image (EFI stub)" or "gzip-compressed Image".
    pub source_format: String,
}

const RISCV_MAGIC: &[u8; 8] = b"RISCV\0\0\0";
const RISCV_MAGIC2: &[u8; 4] = b"RSC\x05";

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// Parses the boot header of a flat `Image`.
pub fn parse_image(data: Vec<u8>, source_format: String) -> Result<KernelImage, String> {
    if data.len() < 64 {
        return Err(format!(
            "{} bytes is too short for a kernel Image",
            data.len()
        ));
    }
    let has_magic = &data[0x30..0x38] == RISCV_MAGIC || &data[0x38..0x3c] == RISCV_MAGIC2;
    if !has_magic {
        return Err(
            "no RISC-V Image header magic (\"RISCV\" at 0x30 / \"RSC\\x05\" at 0x38)".into(),
        );
    }
    let text_offset = u64_at(&data, 0x08).unwrap_or(0);
    let image_size = u64_at(&data, 0x10).unwrap_or(0);
    let header_version = u32_at(&data, 0x20).unwrap_or(0);
    let efi_stub = &data[0..2] == b"MZ";
    if image_size != 0 && image_size < data.len() as u64 {
        return Err(format!(
            "header image_size {image_size} is smaller than the file ({} bytes)",
            data.len()
        ));
    }
    Ok(KernelImage {
        data,
        text_offset,
        image_size,
        header_version,
        efi_stub,
        source_format,
    })
}

/// Turns the kernel file shipped by a package into a flat `Image`.
pub fn prepare_kernel(raw: Vec<u8>) -> Result<KernelImage, String> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot gunzip the kernel: {e}"))?;
        return parse_image(out, "gzip-compressed Image".into());
    }
    if raw.starts_with(b"MZ") && raw.get(4..8) == Some(b"zimg") {
        let offset = u32_at(&raw, 8).ok_or("truncated zboot header")? as usize;
        let size = u32_at(&raw, 12).ok_or("truncated zboot header")? as usize;
        let comp_field = raw.get(24..56).ok_or("truncated zboot header")?;
        let comp: String = comp_field
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| b as char)
            .collect();
        let payload = raw
            .get(offset..offset.saturating_add(size))
            .ok_or("EFI zboot payload lies outside the file")?;
        let mut out = Vec::new();
        match comp.as_str() {
            "gzip" => {
                flate2::read::GzDecoder::new(payload)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("cannot gunzip the EFI zboot payload: {e}"))?;
            }
            "xzkern" | "xz" => {
                xz2::read::XzDecoder::new(payload)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("cannot unxz the EFI zboot payload: {e}"))?;
            }
            other => {
                return Err(format!(
                    "EFI zboot kernel compressed with {other:?}: only gzip and xz are supported"
                ))
            }
        }
        return parse_image(out, format!("EFI zboot ({comp}) Image"));
    }
    if raw.starts_with(b"\x7fELF") {
        return Err(
            "the kernel is an ELF vmlinux, not a bootable Image; a package that ships the \
             Image (arch/riscv/boot/Image) is needed"
                .into(),
        );
    }
    let efi = raw.starts_with(b"MZ");
    parse_image(
        raw,
        if efi {
            "flat Image (EFI stub)".into()
        } else {
            "flat Image".into()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fake_image(len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len];
        d[0..2].copy_from_slice(b"MZ");
        d[0x08..0x10].copy_from_slice(&0x20_0000u64.to_le_bytes());
        d[0x10..0x18].copy_from_slice(&(len as u64 * 2).to_le_bytes());
        d[0x20..0x24].copy_from_slice(&2u32.to_le_bytes());
        d[0x30..0x38].copy_from_slice(RISCV_MAGIC);
        d[0x38..0x3c].copy_from_slice(RISCV_MAGIC2);
        d
    }

    #[test]
    fn flat_image_is_used_as_is() {
        let k = prepare_kernel(fake_image(4096)).unwrap();
        assert_eq!(k.text_offset, 0x20_0000);
        assert_eq!(k.image_size, 8192);
        assert!(k.efi_stub);
        assert_eq!(k.data.len(), 4096);
        assert_eq!(k.source_format, "flat Image (EFI stub)");
    }

    #[test]
    fn gzip_image_is_decompressed() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&fake_image(4096)).unwrap();
        let k = prepare_kernel(enc.finish().unwrap()).unwrap();
        assert_eq!(k.data.len(), 4096);
        assert_eq!(k.source_format, "gzip-compressed Image");
    }

    #[test]
    fn zboot_gzip_is_decompressed() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&fake_image(4096)).unwrap();
        let payload = enc.finish().unwrap();
        let mut f = vec![0u8; 0x100];
        f[0..2].copy_from_slice(b"MZ");
        f[4..8].copy_from_slice(b"zimg");
        f[8..12].copy_from_slice(&0x100u32.to_le_bytes());
        f[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        f[24..28].copy_from_slice(b"gzip");
        f.extend_from_slice(&payload);
        let k = prepare_kernel(f).unwrap();
        assert_eq!(k.data.len(), 4096);
    }

    #[test]
    fn elf_and_garbage_are_rejected() {
        let mut elf = vec![0u8; 128];
        elf[0..4].copy_from_slice(b"\x7fELF");
        assert!(prepare_kernel(elf).unwrap_err().contains("ELF"));
        assert!(prepare_kernel(vec![0u8; 128])
            .unwrap_err()
            .contains("magic"));
        assert!(prepare_kernel(vec![1, 2, 3]).is_err());
    }
}
