//! virtio-blk (virtio 1.2 §5.2), device id 2, one request queue.
//!
//! Requests: IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES (with `unmap`); anything else
//! completes with `VIRTIO_BLK_S_UNSUPP`, as do DISCARD / WRITE_ZEROES when their feature was
//! not negotiated and segments with unknown flags (or `unmap` on a discard).
//!
//! A request is a descriptor chain: a 16-byte device-readable header (type u32, reserved
//! u32, sector u64), data (device-readable for OUT / DISCARD / WRITE_ZEROES, device-writable
//! for IN / GET_ID) and a status byte, the last byte of the device-writable part. Framing is
//! free: any split of these over descriptors works. A request whose header is short or
//! unreadable, whose data is not a multiple of 512 bytes (IN / OUT), whose buffers are not
//! guest RAM, or that reaches past the capacity completes with `VIRTIO_BLK_S_IOERR`, as does
//! every write to a read-only disk (no data is written). A chain without a device-writable
//! byte in RAM cannot be completed: the device goes to DEVICE_NEEDS_RESET.
//!
//! Durability: with `VIRTIO_BLK_F_FLUSH` negotiated (Linux always does) the disk is a
//! write-back cache and FLUSH makes writes stable (`fdatasync` for a file). If the driver
//! did not accept F_FLUSH, every write is flushed before it completes (write-through, as
//! virtio 1.2 §5.2.6.2 requires). Whatever the driver does, the device flushes the backend
//! when it is reset and when it is dropped, so a guest that never flushes loses nothing once
//! the VM stops cleanly.
//!
//! Data moves through a 64 KiB bounce buffer (guest memory is a page map, not one host
//! slice), so a request of any size uses bounded host memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vmk_memory::GuestMemory;

use super::{device_type, GuestBuffers, Queue, QueueError, VirtioDevice};

pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// `unmap` flag of a DISCARD / WRITE_ZEROES segment.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Length of the GET_ID string.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header (type, reserved, sector).
const HEADER_LEN: u64 = 16;
/// Size of one DISCARD / WRITE_ZEROES segment.
const SEGMENT_LEN: u64 = 16;
const BOUNCE_LEN: usize = 64 << 10;

/// Per-segment and per-request limits advertised for DISCARD and WRITE_ZEROES.
const MAX_DISCARD_SECTORS: u32 = 1 << 22; // 2 GiB
const MAX_DISCARD_SEG: u32 = 32;
/// Discard granularity advertised to the guest: 4 KiB, the host file system block.
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// Size of the configuration space presented (through `secure_erase_sector_alignment`).
const CONFIG_LEN: usize = 72;

/// What a virtio-blk disk is stored in.
pub trait BlockBackend: Send {
    /// Size in bytes. The disk's capacity is this rounded down to 512-byte sectors.
    fn size(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every completed write stable.
    fn flush(&mut self) -> io::Result<()>;
    /// The range's contents are no longer needed (they may read back as anything).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// The range reads back as zeros.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// The range reads back as zeros, and its storage may be released. Default:
    /// [`write_zeroes`](Self::write_zeroes).
    fn write_zeroes_unmap(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "beyond the end of the disk")
}

fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(out_of_range()),
    }
}

/// Writes zeros over `[offset, offset + len)` with `write_at`, 64 KiB at a time.
fn write_zeroes_by_writing(
    b: &mut (impl BlockBackend + ?Sized),
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let zeros = vec![0u8; BOUNCE_LEN.min(usize::try_from(len).unwrap_or(BOUNCE_LEN))];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        b.write_at(offset + done, &zeros[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// A raw disk image in a host file (or a host block device): `pread`/`pwrite`,
/// `fdatasync` on flush, `fallocate` hole punching / zero ranges where the host file system
/// has them, writing zeros where it does not.
#[derive(Debug)]
pub struct RawFileBackend {
    file: File,
    size: u64,
}

impl RawFileBackend {
    /// Opens `path` read-write, or read-only when `read_only`.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::new(file)
    }

    /// Uses an open file; its size is taken now (block devices too).
    pub fn new(mut file: File) -> io::Result<Self> {
        use std::io::Seek;
        let size = file.seek(io::SeekFrom::End(0))?;
        Ok(RawFileBackend { file, size })
    }

    #[cfg(target_os = "linux")]
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(out_of_range());
        };
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Punches a hole (reads back as zeros); Err if the host cannot.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (offset, len);
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// Zeroes a range keeping it allocated; Err if the host cannot.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            self.fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (offset, len);
            Err(io::ErrorKind::Unsupported.into())
        }
    }
}

impl BlockBackend for RawFileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        if len == 0 || self.punch_hole(offset, len).is_ok() {
            return Ok(());
        }
        write_zeroes_by_writing(self, offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        if len == 0 || self.zero_range(offset, len).is_ok() || self.punch_hole(offset, len).is_ok()
        {
            return Ok(());
        }
        write_zeroes_by_writing(self, offset, len)
    }

    fn write_zeroes_unmap(&mut self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        // A punched hole of a regular file reads back as zeros.
        if len == 0 || self.punch_hole(offset, len).is_ok() || self.zero_range(offset, len).is_ok()
        {
            return Ok(());
        }
        write_zeroes_by_writing(self, offset, len)
    }
}

/// A disk in host memory (scratch disks, tests). Discard zeros the range.
#[derive(Debug, Clone, Default)]
pub struct VecBackend {
    pub data: Vec<u8>,
    /// How many times `flush` was called.
    pub flushes: u64,
}

impl VecBackend {
    pub fn new(data: Vec<u8>) -> Self {
        VecBackend { data, flushes: 0 }
    }

    fn range(&mut self, offset: u64, len: u64) -> io::Result<&mut [u8]> {
        check_range(self.data.len() as u64, offset, len)?;
        // In range of a Vec, so both fit in usize.
        Ok(&mut self.data[offset as usize..(offset + len) as usize])
    }
}

impl BlockBackend for VecBackend {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.copy_from_slice(self.range(offset, buf.len() as u64)?);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.range(offset, buf.len() as u64)?.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.range(offset, len)?.fill(0);
        Ok(())
    }
}

/// How a virtio-blk device presents its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Offer VIRTIO_BLK_F_RO and fail every write.
    pub read_only: bool,
    /// The GET_ID string (Linux: `/sys/block/vdX/serial`); at most 20 bytes are used.
    pub serial: String,
    /// QueueNumMax of the request queue (a power of two, at most 32768).
    pub queue_size: u16,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            read_only: false,
            serial: String::new(),
            queue_size: 256,
        }
    }
}

/// Request counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkStats {
    pub requests: u64,
    /// Read requests (VIRTIO_BLK_T_IN), whatever their status.
    pub reads: u64,
    /// Write requests (VIRTIO_BLK_T_OUT), whatever their status.
    pub writes: u64,
    pub ok: u64,
    pub ioerr: u64,
    pub unsupp: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub flushes: u64,
    /// Backend flushes that failed on reset or drop (nobody else can be told).
    pub flush_errors: u64,
}

/// A virtio block device. Put it behind a [`super::VirtioMmio`].
pub struct VirtioBlk {
    backend: Box<dyn BlockBackend>,
    config: BlockConfig,
    /// Capacity in 512-byte sectors.
    capacity: u64,
    offered: u64,
    /// Negotiated features (valid once activated).
    features: u64,
    bounce: Vec<u8>,
    stats: BlkStats,
}

impl VirtioBlk {
    pub fn new(backend: Box<dyn BlockBackend>, config: BlockConfig) -> Self {
        let capacity = backend.size() / SECTOR_SIZE;
        let mut offered = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
        if config.read_only {
            offered |= VIRTIO_BLK_F_RO;
        } else {
            offered |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        VirtioBlk {
            backend,
            config,
            capacity,
            offered,
            features: 0,
            bounce: vec![0; BOUNCE_LEN],
            stats: BlkStats::default(),
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    pub fn backend(&self) -> &dyn BlockBackend {
        &*self.backend
    }

    pub fn backend_mut(&mut self) -> &mut dyn BlockBackend {
        &mut *self.backend
    }

    /// Flushes the backend (what reset and drop do).
    pub fn flush_backend(&mut self) -> io::Result<()> {
        self.backend.flush()
    }

    fn queue_max_size(&self) -> u16 {
        Queue::new(self.config.queue_size).max_size()
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let put32 = |c: &mut [u8; CONFIG_LEN], at: usize, v: u32| {
            c[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // size_max (8) unused: no F_SIZE_MAX.
        put32(
            &mut c,
            12,
            u32::from(self.queue_max_size().saturating_sub(2).max(1)),
        ); // seg_max
           // geometry (16..20) unused.
        put32(&mut c, 20, SECTOR_SIZE as u32); // blk_size
                                               // topology (24..32), writeback (32), unused0 (33) unused.
        c[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        put32(&mut c, 36, MAX_DISCARD_SECTORS);
        put32(&mut c, 40, MAX_DISCARD_SEG);
        put32(&mut c, 44, DISCARD_SECTOR_ALIGNMENT);
        put32(&mut c, 48, MAX_DISCARD_SECTORS); // max_write_zeroes_sectors
        put32(&mut c, 52, MAX_DISCARD_SEG); // max_write_zeroes_seg
        c[56] = 1; // write_zeroes_may_unmap
        c
    }

    fn writeback(&self) -> bool {
        self.features & VIRTIO_BLK_F_FLUSH != 0
    }

    /// After a write: in write-through mode, make it stable before it completes.
    fn write_done(&mut self) -> u8 {
        if !self.writeback() {
            self.stats.flushes += 1;
            if self.backend.flush().is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
        }
        VIRTIO_BLK_S_OK
    }

    /// Byte offset of `sector` if `[sector, sector + len bytes)` lies within the disk.
    fn disk_range(&self, sector: u64, len: u64) -> Option<u64> {
        let off = sector.checked_mul(SECTOR_SIZE)?;
        let end = off.checked_add(len)?;
        (end <= self.capacity * SECTOR_SIZE).then_some(off)
    }

    /// Serves one chain; returns the used length, or an error if no status can be written.
    fn serve(
        &mut self,
        chain: &super::DescriptorChain,
        mem: &GuestMemory,
    ) -> Result<u32, QueueError> {
        let out = chain.readable();
        let inb = chain.writable();
        let Some(status_at) = inb.len().checked_sub(1) else {
            return Err(QueueError::NoStatus);
        };
        let data_in = inb.slice(0, status_at).unwrap_or_default();
        match inb.slice(status_at, 1) {
            Some(s) if s.in_ram(mem) => {}
            _ => return Err(QueueError::NoStatus),
        }
        self.stats.requests += 1;
        let (status, written) = self.request(&out, &data_in, mem);
        match status {
            VIRTIO_BLK_S_OK => self.stats.ok += 1,
            VIRTIO_BLK_S_UNSUPP => self.stats.unsupp += 1,
            _ => self.stats.ioerr += 1,
        }
        inb.write(mem, status_at, &[status])
            .map_err(|_| QueueError::NoStatus)?;
        // The chain is < 4 GiB, so this fits.
        Ok(u32::try_from(written + 1).unwrap_or(u32::MAX))
    }

    /// Executes a request: (status, bytes written to `data_in`).
    fn request(
        &mut self,
        out: &GuestBuffers,
        data_in: &GuestBuffers,
        mem: &GuestMemory,
    ) -> (u8, u64) {
        let mut hdr = [0u8; HEADER_LEN as usize];
        if out.len() < HEADER_LEN || out.read(mem, 0, &mut hdr).is_err() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = hdr;
        let ty = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let data_out = out
            .slice(HEADER_LEN, out.len() - HEADER_LEN)
            .unwrap_or_default();
        match ty {
            VIRTIO_BLK_T_IN => {
                self.stats.reads += 1;
                self.read(sector, data_in, mem)
            }
            VIRTIO_BLK_T_OUT => {
                self.stats.writes += 1;
                (self.write(sector, &data_out, mem), 0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.stats.flushes += 1;
                match self.backend.flush() {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_GET_ID => self.get_id(data_in, mem),
            VIRTIO_BLK_T_DISCARD if self.features & VIRTIO_BLK_F_DISCARD != 0 => {
                (self.discard_or_zero(false, &data_out, mem), 0)
            }
            VIRTIO_BLK_T_WRITE_ZEROES if self.features & VIRTIO_BLK_F_WRITE_ZEROES != 0 => {
                (self.discard_or_zero(true, &data_out, mem), 0)
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    fn read(&mut self, sector: u64, data: &GuestBuffers, mem: &GuestMemory) -> (u8, u64) {
        let len = data.len();
        let Some(mut off) = self.disk_range(sector, len) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        if !len.is_multiple_of(SECTOR_SIZE) || !data.in_ram(mem) {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let mut written = 0u64;
        for &(addr, seg_len) in data.segments() {
            let mut done = 0u64;
            while done < seg_len {
                let n = (seg_len - done).min(BOUNCE_LEN as u64) as usize;
                let buf = &mut self.bounce[..n];
                if self.backend.read_at(off, buf).is_err() || mem.write(addr + done, buf).is_err() {
                    return (VIRTIO_BLK_S_IOERR, written);
                }
                done += n as u64;
                off += n as u64;
                written += n as u64;
                self.stats.bytes_read += n as u64;
            }
        }
        (VIRTIO_BLK_S_OK, written)
    }

    fn write(&mut self, sector: u64, data: &GuestBuffers, mem: &GuestMemory) -> u8 {
        let len = data.len();
        let Some(mut off) = self.disk_range(sector, len) else {
            return VIRTIO_BLK_S_IOERR;
        };
        if self.config.read_only || !len.is_multiple_of(SECTOR_SIZE) || !data.in_ram(mem) {
            return VIRTIO_BLK_S_IOERR;
        }
        for &(addr, seg_len) in data.segments() {
            let mut done = 0u64;
            while done < seg_len {
                let n = (seg_len - done).min(BOUNCE_LEN as u64) as usize;
                let buf = &mut self.bounce[..n];
                if mem.read(addr + done, buf).is_err() || self.backend.write_at(off, buf).is_err() {
                    return VIRTIO_BLK_S_IOERR;
                }
                done += n as u64;
                off += n as u64;
                self.stats.bytes_written += n as u64;
            }
        }
        self.write_done()
    }

    fn get_id(&mut self, data: &GuestBuffers, mem: &GuestMemory) -> (u8, u64) {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        let s = self.config.serial.as_bytes();
        let n = s.len().min(VIRTIO_BLK_ID_BYTES);
        id[..n].copy_from_slice(&s[..n]);
        let len = data.len().min(VIRTIO_BLK_ID_BYTES as u64) as usize;
        match data.write(mem, 0, &id[..len]) {
            Ok(()) => (VIRTIO_BLK_S_OK, len as u64),
            Err(_) => (VIRTIO_BLK_S_IOERR, 0),
        }
    }

    fn discard_or_zero(&mut self, zero: bool, data: &GuestBuffers, mem: &GuestMemory) -> u8 {
        if self.config.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        let len = data.len();
        let count = len / SEGMENT_LEN;
        if len == 0 || !len.is_multiple_of(SEGMENT_LEN) || count > u64::from(MAX_DISCARD_SEG) {
            return VIRTIO_BLK_S_IOERR;
        }
        let mut raw = vec![0u8; len as usize];
        if data.read(mem, 0, &mut raw).is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
        let mut segs = Vec::new();
        for s in raw.chunks_exact(SEGMENT_LEN as usize) {
            let (sector, rest) = s.split_at(8);
            let (num, flags) = rest.split_at(4);
            let sector = u64::from_le_bytes(sector.try_into().unwrap_or_default());
            let num = u32::from_le_bytes(num.try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(flags.try_into().unwrap_or_default());
            // Unknown flags, or unmap on a discard: unsupported (virtio 1.2 §5.2.6.2).
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
                || (!zero && flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0)
            {
                return VIRTIO_BLK_S_UNSUPP;
            }
            segs.push((sector, num, flags));
        }
        let mut ranges = Vec::new();
        for (sector, num, flags) in segs {
            let bytes = u64::from(num) * SECTOR_SIZE;
            match self.disk_range(sector, bytes) {
                Some(off) if num <= MAX_DISCARD_SECTORS => ranges.push((off, bytes, flags)),
                _ => return VIRTIO_BLK_S_IOERR,
            }
        }
        for (off, bytes, flags) in ranges {
            let r = if !zero {
                self.backend.discard(off, bytes)
            } else if flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
                self.backend.write_zeroes_unmap(off, bytes)
            } else {
                self.backend.write_zeroes(off, bytes)
            };
            if r.is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
        }
        self.write_done()
    }
}

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn device_features(&self) -> u64 {
        self.offered
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.queue_max_size()]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, features: u64) -> Result<(), QueueError> {
        self.features = features;
        Ok(())
    }

    fn reset(&mut self) {
        self.features = 0;
        if self.backend.flush().is_err() {
            self.stats.flush_errors += 1;
        }
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<(), QueueError> {
        while let Some(chain) = queue.pop(mem)? {
            let used = self.serve(&chain, mem)?;
            queue.add_used(mem, chain.head(), used)?;
        }
        Ok(())
    }
}

impl Drop for VirtioBlk {
    fn drop(&mut self) {
        if self.backend.flush().is_err() {
            self.stats.flush_errors += 1;
        }
    }
}
