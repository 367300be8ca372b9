//! Kernel and initrd loading. Accepts a RISC-V Linux `Image` (flat, possibly with the EFI
//! stub's PE header in front) and ELF64 RISC-V kernels (vmlinux).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cannot read kernel {path}: {err}; check the path (build an image with `vmk image build`)"
    )]
    ReadKernel { path: String, err: std::io::Error },
    #[error("cannot read initrd {path}: {err}")]
    ReadInitrd { path: String, err: std::io::Error },
    #[error("kernel {path}: {what}")]
    BadKernel { path: String, what: String },
    #[error("{what} ({size} bytes) does not fit in guest RAM of {ram} MiB at {at:#x}; give the VM more memory with --memory")]
    TooBig {
        what: &'static str,
        size: u64,
        ram: u64,
        at: u64,
    },
}

/// A piece of the kernel file to copy into guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where it goes, as an offset from the RAM base.
    pub ram_offset: u64,
    pub file_offset: u64,
    pub len: u64,
}

/// A kernel ready to be copied into guest RAM (with [`copy_file`]).
#[derive(Debug)]
pub struct Kernel {
    pub segments: Vec<Segment>,
    /// Entry point as an offset from the RAM base.
    pub entry_offset: u64,
    /// Bytes of RAM the kernel occupies from the RAM base, including its bss.
    pub footprint: u64,
}

/// Offset from the RAM base where a flat RV64 Image goes when its header says 0: 2 MiB, the
/// alignment Linux requires for RV64.
const DEFAULT_TEXT_OFFSET: u64 = 0x20_0000;

/// How much of the kernel file is read to parse its headers (ELF program headers sit right
/// after the ELF header; a flat Image's header is 64 bytes).
const HEAD_LEN: u64 = 1 << 20;
/// Files are copied into guest RAM in pieces of this size: a kernel or initrd is never held
/// in host memory as a whole (a host running many VMs would keep the freed buffers).
const COPY_CHUNK: usize = 1 << 20;

/// Reads the kernel's headers and says what to copy where.
pub fn load_kernel(path: &Path) -> Result<Kernel, LoadError> {
    let p = path.display().to_string();
    let read_err = |err| LoadError::ReadKernel {
        path: p.clone(),
        err,
    };
    not_a_regular_file(path).map_err(read_err)?;
    let mut f = std::fs::File::open(path).map_err(read_err)?;
    let file_len = f.metadata().map_err(read_err)?.len();
    let mut head = Vec::new();
    f.by_ref()
        .take(HEAD_LEN)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    parse_kernel(&head, file_len).map_err(|what| LoadError::BadKernel { path: p, what })
}

/// Refuses what is not a regular file before opening it: opening a FIFO would block the
/// VM's start (and the host's lifecycle call) forever.
fn not_a_regular_file(path: &Path) -> std::io::Result<()> {
    if std::fs::metadata(path)?.is_file() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

/// The size of the initrd file.
pub fn initrd_len(path: &Path) -> Result<u64, LoadError> {
    not_a_regular_file(path)
        .and_then(|()| std::fs::metadata(path))
        .map(|m| m.len())
        .map_err(|err| LoadError::ReadInitrd {
            path: path.display().to_string(),
            err,
        })
}

/// Streams `len` bytes of `path` from `file_offset` to `sink(offset into the piece, bytes)`.
pub fn copy_file(
    path: &Path,
    file_offset: u64,
    len: u64,
    mut sink: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(file_offset))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(len).unwrap_or(COPY_CHUNK))];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).map_err(|e| {
            format!(
                "{}: reading {n} bytes at {}: {e} (did the file change?)",
                path.display(),
                file_offset + done
            )
        })?;
        sink(done, &buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Parses a kernel from `data`, the first bytes of a file of `file_len` bytes.
pub fn parse_kernel(data: &[u8], file_len: u64) -> Result<Kernel, String> {
    if data.len() < 64 || file_len < 64 {
        return Err(format!(
            "only {file_len} bytes: too short to be a kernel (truncated download?)"
        ));
    }
    if data.starts_with(b"\x7fELF") {
        return parse_elf(data, file_len);
    }
    if &data[56..60] == b"RSC\x05" || &data[48..53] == b"RISCV" {
        let text_offset = u64_at(data, 8).unwrap_or(0);
        let image_size = u64_at(data, 16).unwrap_or(0);
        let off = if text_offset == 0 {
            DEFAULT_TEXT_OFFSET
        } else {
            text_offset
        };
        if off % 0x1000 != 0 || off > 1 << 30 {
            return Err(format!("Image header has an unusable text_offset {off:#x}"));
        }
        let footprint = off
            .checked_add(image_size.max(file_len))
            .ok_or_else(|| format!("Image header image_size {image_size:#x} is implausible"))?;
        return Ok(Kernel {
            segments: vec![Segment {
                ram_offset: off,
                file_offset: 0,
                len: file_len,
            }],
            entry_offset: off,
            footprint,
        });
    }
    if data.starts_with(&[0x1f, 0x8b]) {
        return Err("is gzip-compressed; decompress it (vmlinuz) to a flat Image first".into());
    }
    if data.starts_with(b"MZ") {
        return Err("is a PE/EFI file without the RISC-V Image header (an EFI zboot kernel?); use the flat Image".into());
    }
    Err("neither a RISC-V Linux Image (no RSC\\x05 magic at offset 56) nor an ELF file".into())
}

fn parse_elf(d: &[u8], file_len: u64) -> Result<Kernel, String> {
    if d.get(4) != Some(&2) {
        return Err("is a 32-bit ELF; vmk runs RV64 kernels".into());
    }
    if d.get(5) != Some(&1) {
        return Err("is a big-endian ELF".into());
    }
    let machine = u16_at(d, 18).ok_or("ELF header truncated")?;
    if machine != 243 {
        return Err(format!(
            "is an ELF for machine {machine}, not RISC-V (243): wrong architecture"
        ));
    }
    let entry = u64_at(d, 24).ok_or("ELF header truncated")?;
    let phoff = u64_at(d, 32).ok_or("ELF header truncated")? as usize;
    let phentsize = u16_at(d, 54).ok_or("ELF header truncated")? as usize;
    let phnum = u16_at(d, 56).ok_or("ELF header truncated")? as usize;
    if phentsize < 56 {
        return Err(format!("ELF program header size {phentsize} is too small"));
    }
    let mut loads = Vec::new();
    for i in 0..phnum {
        let o = phoff
            .checked_add(i * phentsize)
            .ok_or("ELF program header offset overflows")?;
        let ty = u32_at(d, o)
            .ok_or("ELF program headers truncated (or beyond the first MiB of the file)")?;
        if ty != 1 {
            continue;
        }
        let off = u64_at(d, o + 8).ok_or("ELF program headers truncated")?;
        let vaddr = u64_at(d, o + 16).ok_or("ELF program headers truncated")?;
        let filesz = u64_at(d, o + 32).ok_or("ELF program headers truncated")?;
        let memsz = u64_at(d, o + 40).ok_or("ELF program headers truncated")?;
        off.checked_add(filesz)
            .filter(|e| *e <= file_len)
            .ok_or_else(|| {
                format!("ELF segment {i} lies beyond the end of the file (truncated?)")
            })?;
        if memsz < filesz {
            return Err(format!("ELF segment {i} has memsz < filesz"));
        }
        loads.push((vaddr, off, filesz, memsz));
    }
    let base = loads
        .iter()
        .map(|l| l.0)
        .min()
        .ok_or("ELF has no loadable segment")?;
    // Linux kernels are linked at a virtual address and relocate themselves: place the image
    // at the 2 MiB offset, keeping the segments' distances.
    let mut segments = Vec::new();
    let mut footprint = 0;
    for (i, (vaddr, file_offset, len, memsz)) in loads.into_iter().enumerate() {
        let rel = vaddr - base;
        if rel > 1 << 32 {
            return Err("ELF segments are spread over more than 4 GiB".into());
        }
        let end = DEFAULT_TEXT_OFFSET
            .checked_add(rel)
            .and_then(|v| v.checked_add(memsz))
            .ok_or_else(|| format!("ELF segment {i} size {memsz:#x} is too large"))?;
        footprint = footprint.max(end);
        segments.push(Segment {
            ram_offset: DEFAULT_TEXT_OFFSET + rel,
            file_offset,
            len,
        });
    }
    let entry_rel = entry
        .checked_sub(base)
        .filter(|e| *e < footprint)
        .ok_or("ELF entry point is outside its segments")?;
    Ok(Kernel {
        segments,
        entry_offset: DEFAULT_TEXT_OFFSET + entry_rel,
        footprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text_offset: u64) -> Vec<u8> {
        let mut d = vec![0u8; 4096];
        d[8..16].copy_from_slice(&text_offset.to_le_bytes());
        d[16..24].copy_from_slice(&8192u64.to_le_bytes());
        d[48..53].copy_from_slice(b"RISCV");
        d[56..60].copy_from_slice(b"RSC\x05");
        d
    }

    #[test]
    fn flat_image() {
        let k = parse_kernel(&image(0x20_0000), 4096).unwrap();
        assert_eq!(k.entry_offset, 0x20_0000);
        assert_eq!(k.footprint, 0x20_0000 + 8192);
    }

    #[test]
    fn bad_kernels_give_clear_errors() {
        assert!(parse_kernel(&[0u8; 10], 10)
            .unwrap_err()
            .contains("too short"));
        assert!(parse_kernel(&[0u8; 100], 100)
            .unwrap_err()
            .contains("neither"));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 62; // x86-64
        assert!(parse_kernel(&elf, elf.len() as u64)
            .unwrap_err()
            .contains("wrong architecture"));
        elf[18] = 243;
        elf[56] = 1; // one program header, but phentsize is 0
        assert!(parse_kernel(&elf, elf.len() as u64)
            .unwrap_err()
            .contains("too small"));
        let mut gz = vec![0u8; 100];
        gz[0] = 0x1f;
        gz[1] = 0x8b;
        assert!(parse_kernel(&gz, gz.len() as u64)
            .unwrap_err()
            .contains("gzip"));
        let mut img = image(0x123);
        img.truncate(64);
        assert!(parse_kernel(&img, img.len() as u64)
            .unwrap_err()
            .contains("text_offset"));
    }

    #[test]
    fn elf_segment_beyond_file_is_rejected() {
        let mut d = vec![0u8; 64 + 56];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[18] = 243;
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54] = 56;
        d[56] = 1;
        d[64] = 1; // PT_LOAD
        d[64 + 8..64 + 16].copy_from_slice(&0u64.to_le_bytes());
        d[64 + 32..64 + 40].copy_from_slice(&1_000_000u64.to_le_bytes());
        d[64 + 40..64 + 48].copy_from_slice(&1_000_000u64.to_le_bytes());
        assert!(parse_kernel(&d, d.len() as u64)
            .unwrap_err()
            .contains("beyond the end"));
    }
}
