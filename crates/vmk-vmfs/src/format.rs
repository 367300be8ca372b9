//! The on-disk format. `docs/vmfs-format.md` describes every structure; this file is the
//! code of that document. All integers are little-endian.
//!
//! Every structure starts with the same 24-byte header: an 8-byte magic naming its kind, the
//! crc32c of the structure (computed with the crc field zero), the format version and the
//! structure's own byte offset in the volume (so a write that landed in the wrong place, or a
//! stale copy, does not pass for the real thing). Metadata that is changed through the
//! journal comes in 4 KiB pages; heartbeat slots and lock records are 512-byte sectors,
//! each written by one host only (see `paxos.rs`).

use crate::error::{corrupt, Result, VmfsError};

pub const PAGE: usize = 4096;
pub const SECTOR: usize = 512;
pub const SUB_BLOCK: u64 = 64 << 10;
pub const PAGES_PER_SUB: usize = (SUB_BLOCK as usize) / PAGE;
pub const MAX_HOSTS: u32 = 32;
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 24;

pub const MAGIC_VOLUME: &[u8; 8] = b"VMKVMFS1";
pub const MAGIC_HEARTBEAT: &[u8; 8] = b"VMFSHBT1";
pub const MAGIC_LEADER: &[u8; 8] = b"VMFSLEAD";
pub const MAGIC_DBLOCK: &[u8; 8] = b"VMFSDBLK";
pub const MAGIC_CLUSTER: &[u8; 8] = b"VMFSRCLU";
pub const MAGIC_INODE: &[u8; 8] = b"VMFSINOD";
pub const MAGIC_POINTER: &[u8; 8] = b"VMFSPTRS";
pub const MAGIC_DIR: &[u8; 8] = b"VMFSDIRP";
pub const MAGIC_JDESC: &[u8; 8] = b"VMFSJTXN";
pub const MAGIC_JDONE: &[u8; 8] = b"VMFSJDON";

/// Number of address slots in an inode.
pub const INODE_ADDRS: usize = 256;
/// Block addresses in one 4 KiB pointer page.
pub const PTRS_PER_PAGE: usize = (PAGE - 64) / 4;
/// Block addresses in one pointer block (a sub-block of 16 pointer pages).
pub const PTRS_PER_PB: u64 = (PTRS_PER_PAGE * PAGES_PER_SUB) as u64;
/// A block address with this bit is allocated but never written: it reads as zeros.
pub const UNWRITTEN: u32 = 1 << 31;
/// Directory entries per 4 KiB directory page, and their size.
pub const DIRENT_LEN: usize = 128;
pub const DIRENTS_PER_PAGE: usize = 31;
pub const NAME_MAX: usize = DIRENT_LEN - 12;
/// Journal: a descriptor page, a done page, then the images.
pub const JOURNAL_TARGETS_MAX: usize = (PAGE - 64) / 8;
/// One lock: the leader sector, then one sector per host (index = host ID).
pub const LOCK_SECTORS: u64 = 1 + MAX_HOSTS as u64;
pub const LOCK_AREA: u64 = LOCK_SECTORS * SECTOR as u64;
pub const ROOT_INODE: u32 = 1;

pub fn get_u8(b: &[u8], o: usize) -> u8 {
    b[o]
}
pub fn get_u16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub fn get_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub fn get_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
pub fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

fn crc_of(buf: &[u8]) -> u32 {
    let c = crc32c::crc32c(&buf[..8]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &buf[12..])
}

/// Writes the common header (magic, version, offset) and the checksum. Call last.
pub fn seal(buf: &mut [u8], magic: &[u8; 8], offset: u64) {
    buf[..8].copy_from_slice(magic);
    put_u32(buf, 12, VERSION);
    put_u64(buf, 16, offset);
    let c = crc_of(buf);
    put_u32(buf, 8, c);
}

/// Checks the common header of a structure read from `offset`.
pub fn verify(buf: &[u8], magic: &[u8; 8], offset: u64, what: &'static str) -> Result<()> {
    if &buf[..8] != magic {
        return Err(corrupt(
            what,
            offset,
            format!(
                "bad magic {:?} (expected {:?})",
                String::from_utf8_lossy(&buf[..8]),
                String::from_utf8_lossy(magic)
            ),
        ));
    }
    let want = get_u32(buf, 8);
    let got = crc_of(buf);
    if want != got {
        return Err(corrupt(
            what,
            offset,
            format!("checksum mismatch (stored {want:#010x}, computed {got:#010x})"),
        ));
    }
    let v = get_u32(buf, 12);
    if v != VERSION {
        return Err(corrupt(
            what,
            offset,
            format!("unsupported format version {v}"),
        ));
    }
    let at = get_u64(buf, 16);
    if at != offset {
        return Err(corrupt(
            what,
            offset,
            format!("structure says it belongs at offset {at:#x} (misdirected or stale write)"),
        ));
    }
    Ok(())
}

pub fn bit(map: &[u8], i: usize) -> bool {
    map[i / 8] & (1 << (i % 8)) != 0
}
pub fn set_bit(map: &mut [u8], i: usize, v: bool) {
    if v {
        map[i / 8] |= 1 << (i % 8);
    } else {
        map[i / 8] &= !(1 << (i % 8));
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Formats a wall-clock time in ms since the epoch as UTC `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_time(ms: u64) -> String {
    vmk_base::fmt::utc_ms(ms)
}

/// Where everything is. Computed from a few parameters, so the header cannot point anywhere
/// it likes: the stored offsets must equal the computed ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub volume_size: u64,
    pub block_size: u64,
    /// Blocks, sub-blocks and inodes per resource cluster.
    pub bpc: u32,
    pub spc: u32,
    pub ipc: u32,
    pub nclusters: u32,
    pub journal_size: u64,
    pub hb_off: u64,
    pub journal_off: u64,
    pub lock_off: u64,
    pub map_off: u64,
    pub inode_off: u64,
    pub sub_off: u64,
    pub block_off: u64,
    pub end: u64,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

pub const HB_OFF: u64 = 64 << 10;
pub const JOURNAL_OFF: u64 = 1 << 20;
pub const DEFAULT_JOURNAL: u64 = 1 << 20;
pub const MAX_PER_CLUSTER: u32 = 4096;

impl Geometry {
    /// The layout for given parameters (no checks beyond overflow).
    pub fn layout(
        volume_size: u64,
        block_size: u64,
        bpc: u32,
        spc: u32,
        ipc: u32,
        nclusters: u32,
        journal_size: u64,
    ) -> Option<Geometry> {
        let n = nclusters as u64;
        let journal_off = JOURNAL_OFF;
        let lock_off = align_up(
            journal_off.checked_add(journal_size.checked_mul(MAX_HOSTS as u64)?)?,
            PAGE as u64,
        );
        let nlocks = n
            .checked_add(n.checked_mul(ipc as u64)?)?
            .checked_add(MAX_HOSTS as u64)?;
        let map_off = align_up(
            lock_off.checked_add(nlocks.checked_mul(LOCK_AREA)?)?,
            PAGE as u64,
        );
        let inode_off = map_off.checked_add(n.checked_mul(PAGE as u64)?)?;
        let sub_off = align_up(
            inode_off.checked_add(n.checked_mul(ipc as u64)?.checked_mul(PAGE as u64)?)?,
            SUB_BLOCK,
        );
        let block_off = align_up(
            sub_off.checked_add(n.checked_mul(spc as u64)?.checked_mul(SUB_BLOCK)?)?,
            block_size,
        );
        let end = block_off.checked_add(n.checked_mul(bpc as u64)?.checked_mul(block_size)?)?;
        Some(Geometry {
            volume_size,
            block_size,
            bpc,
            spc,
            ipc,
            nclusters,
            journal_size,
            hb_off: HB_OFF,
            journal_off,
            lock_off,
            map_off,
            inode_off,
            sub_off,
            block_off,
            end,
        })
    }

    /// Chooses the parameters for a new volume of `volume_size` bytes.
    pub fn plan(volume_size: u64, block_size: u64) -> Result<Geometry> {
        if ![1u64 << 20, 2 << 20, 4 << 20, 8 << 20].contains(&block_size) {
            return Err(VmfsError::Invalid(format!(
                "block size {block_size} is not 1M, 2M, 4M or 8M"
            )));
        }
        // Aim for at least 64 resource clusters, so 32 hosts each find clusters of their own.
        let est_blocks = volume_size / block_size;
        let mut bpc = 4u32;
        while bpc < MAX_PER_CLUSTER && (est_blocks / (bpc as u64 * 2)) >= 64 {
            bpc *= 2;
        }
        let per_mib = (block_size >> 20) as u32;
        // One inode per MiB of file space (up to a cap), half as many sub-blocks.
        // Each inode costs a 16.5 KiB lock area (a sector per host for Disk Paxos), so the
        // count is capped: at most 128 inodes per cluster.
        let ipc = (bpc * per_mib).clamp(16, 128);
        let spc = (ipc / 2).max(4);
        let cost = Geometry::layout(u64::MAX / 4, block_size, bpc, spc, ipc, 1, DEFAULT_JOURNAL)
            .and_then(|g| {
                let g0 =
                    Geometry::layout(u64::MAX / 4, block_size, bpc, spc, ipc, 0, DEFAULT_JOURNAL)?;
                Some(g.end - g0.end)
            })
            .ok_or_else(|| VmfsError::Invalid("volume geometry overflows".into()))?;
        let mut n = (volume_size / cost).min(u32::MAX as u64 / MAX_PER_CLUSTER as u64) as u32;
        loop {
            if n == 0 {
                let min = Geometry::layout(0, block_size, bpc, spc, ipc, 1, DEFAULT_JOURNAL)
                    .map(|g| g.end)
                    .unwrap_or(0);
                return Err(VmfsError::Invalid(format!(
                    "a volume of {volume_size} bytes is too small for block size {} MiB (minimum {} MiB)",
                    block_size >> 20,
                    min.div_ceil(1 << 20)
                )));
            }
            let g = Geometry::layout(volume_size, block_size, bpc, spc, ipc, n, DEFAULT_JOURNAL)
                .ok_or_else(|| VmfsError::Invalid("volume geometry overflows".into()))?;
            if g.end <= volume_size {
                return Ok(g);
            }
            n -= 1;
        }
    }

    pub fn nblocks(&self) -> u64 {
        self.nclusters as u64 * self.bpc as u64
    }
    pub fn nsubs(&self) -> u64 {
        self.nclusters as u64 * self.spc as u64
    }
    pub fn ninodes(&self) -> u64 {
        self.nclusters as u64 * self.ipc as u64
    }
    pub fn nlocks(&self) -> u64 {
        self.nclusters as u64 + self.ninodes() + MAX_HOSTS as u64
    }
    pub fn max_file_size(&self) -> u64 {
        INODE_ADDRS as u64 * PTRS_PER_PB * self.block_size
    }
    pub fn hb_slot(&self, host: u32) -> u64 {
        self.hb_off + (host as u64 - 1) * SECTOR as u64
    }
    pub fn journal(&self, host: u32) -> u64 {
        self.journal_off + (host as u64 - 1) * self.journal_size
    }
    pub fn journal_pages_max(&self) -> usize {
        ((self.journal_size as usize / PAGE) - 2).min(JOURNAL_TARGETS_MAX)
    }
    pub fn lock(&self, id: LockId) -> u64 {
        let idx = match id {
            LockId::Cluster(c) => c as u64,
            LockId::Inode(i) => self.nclusters as u64 + i as u64,
            LockId::Journal(h) => self.nclusters as u64 + self.ninodes() + (h as u64 - 1),
        };
        self.lock_off + idx * LOCK_AREA
    }
    pub fn lock_index(&self, id: LockId) -> u32 {
        ((self.lock(id) - self.lock_off) / LOCK_AREA) as u32
    }
    pub fn map(&self, cluster: u32) -> u64 {
        self.map_off + cluster as u64 * PAGE as u64
    }
    pub fn inode(&self, inum: u32) -> u64 {
        self.inode_off + inum as u64 * PAGE as u64
    }
    pub fn sub(&self, s: u32) -> u64 {
        self.sub_off + s as u64 * SUB_BLOCK
    }
    pub fn block(&self, b: u32) -> u64 {
        self.block_off + b as u64 * self.block_size
    }
    pub fn block_cluster(&self, b: u32) -> u32 {
        b / self.bpc
    }
    pub fn sub_cluster(&self, s: u32) -> u32 {
        s / self.spc
    }
    pub fn inode_cluster(&self, i: u32) -> u32 {
        i / self.ipc
    }
}

/// The resources locked by Disk Paxos leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockId {
    Cluster(u32),
    Inode(u32),
    /// Held by whoever replays a dead host's journal.
    Journal(u32),
}

/// The volume header (page at offset 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeHeader {
    pub uuid: [u8; 16],
    pub label: String,
    pub created_ms: u64,
    pub renew_ms: u32,
    pub lease_timeout_ms: u32,
    pub io_timeout_ms: u32,
    pub geo: Geometry,
}

pub const LABEL_MAX: usize = 64;

impl VolumeHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        let g = &self.geo;
        put_u32(&mut b, 24, g.block_size as u32);
        put_u32(&mut b, 28, SUB_BLOCK as u32);
        b[32..48].copy_from_slice(&self.uuid);
        let l = self.label.as_bytes();
        let n = l.len().min(LABEL_MAX);
        b[48..48 + n].copy_from_slice(&l[..n]);
        put_u64(&mut b, 112, g.volume_size);
        put_u64(&mut b, 120, self.created_ms);
        put_u32(&mut b, 128, g.nclusters);
        put_u32(&mut b, 132, g.bpc);
        put_u32(&mut b, 136, g.spc);
        put_u32(&mut b, 140, g.ipc);
        put_u32(&mut b, 144, g.journal_size as u32);
        put_u32(&mut b, 148, MAX_HOSTS);
        put_u32(&mut b, 152, self.renew_ms);
        put_u32(&mut b, 156, self.lease_timeout_ms);
        put_u32(&mut b, 160, self.io_timeout_ms);
        for (i, v) in [
            g.hb_off,
            g.journal_off,
            g.lock_off,
            g.map_off,
            g.inode_off,
            g.sub_off,
            g.block_off,
        ]
        .into_iter()
        .enumerate()
        {
            put_u64(&mut b, 168 + 8 * i, v);
        }
        seal(&mut b, MAGIC_VOLUME, 0);
        b
    }

    /// Decodes and validates the header of a device of `device_size` bytes.
    pub fn decode(b: &[u8], device_size: u64) -> Result<VolumeHeader> {
        if b.len() < PAGE {
            return Err(VmfsError::NotVmfs("shorter than a volume header".into()));
        }
        if &b[..8] != MAGIC_VOLUME {
            return Err(VmfsError::NotVmfs(format!(
                "bad magic {:?} at offset 0 (expected {:?}); create one with `vmk datastore create`",
                String::from_utf8_lossy(&b[..8]),
                String::from_utf8_lossy(MAGIC_VOLUME)
            )));
        }
        verify(b, MAGIC_VOLUME, 0, "volume header")?;
        let bad = |p: String| corrupt("volume header", 0, p);
        let block_size = get_u32(b, 24) as u64;
        if ![1u64 << 20, 2 << 20, 4 << 20, 8 << 20].contains(&block_size) {
            return Err(bad(format!(
                "block size {block_size} is not 1, 2, 4 or 8 MiB"
            )));
        }
        if get_u32(b, 28) as u64 != SUB_BLOCK {
            return Err(bad(format!(
                "sub-block size {} is not 64 KiB",
                get_u32(b, 28)
            )));
        }
        if get_u32(b, 148) != MAX_HOSTS {
            return Err(bad(format!(
                "max hosts {} is not {MAX_HOSTS}",
                get_u32(b, 148)
            )));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[32..48]);
        let lb = &b[48..48 + LABEL_MAX];
        let ll = lb.iter().position(|&c| c == 0).unwrap_or(LABEL_MAX);
        let label = std::str::from_utf8(&lb[..ll])
            .map_err(|_| bad("label is not UTF-8".into()))?
            .to_string();
        let volume_size = get_u64(b, 112);
        let (nclusters, bpc, spc, ipc) = (
            get_u32(b, 128),
            get_u32(b, 132),
            get_u32(b, 136),
            get_u32(b, 140),
        );
        for (name, v) in [("blocks", bpc), ("sub-blocks", spc), ("inodes", ipc)] {
            if v == 0 || v > MAX_PER_CLUSTER {
                return Err(bad(format!(
                    "{name} per cluster {v} is not in 1..={MAX_PER_CLUSTER}"
                )));
            }
        }
        if nclusters == 0 {
            return Err(bad("no resource clusters".into()));
        }
        let journal_size = get_u32(b, 144) as u64;
        if journal_size < 8 * PAGE as u64 || !journal_size.is_multiple_of(PAGE as u64) {
            return Err(bad(format!(
                "journal size {journal_size} is not a multiple of 4 KiB of at least 32 KiB"
            )));
        }
        let geo = Geometry::layout(
            volume_size,
            block_size,
            bpc,
            spc,
            ipc,
            nclusters,
            journal_size,
        )
        .ok_or_else(|| bad("geometry overflows".into()))?;
        let stored: Vec<u64> = (0..7).map(|i| get_u64(b, 168 + 8 * i)).collect();
        let want = [
            geo.hb_off,
            geo.journal_off,
            geo.lock_off,
            geo.map_off,
            geo.inode_off,
            geo.sub_off,
            geo.block_off,
        ];
        if stored != want {
            return Err(bad(format!(
                "region offsets {stored:x?} do not match the geometry ({want:x?})"
            )));
        }
        if geo.end > volume_size {
            return Err(bad(format!(
                "the regions end at {:#x}, past the volume size {volume_size:#x}",
                geo.end
            )));
        }
        if volume_size > device_size {
            return Err(bad(format!(
                "volume size {volume_size} is larger than the device ({device_size} bytes): truncated copy?"
            )));
        }
        if geo.nblocks() >= UNWRITTEN as u64 {
            return Err(bad("too many blocks".into()));
        }
        let renew_ms = get_u32(b, 152);
        let lease_timeout_ms = get_u32(b, 156);
        let io_timeout_ms = get_u32(b, 160);
        if renew_ms == 0
            || io_timeout_ms == 0
            || lease_timeout_ms < 2 * renew_ms + 2 * io_timeout_ms
        {
            return Err(bad(format!(
                "timeouts renew {renew_ms} ms, io {io_timeout_ms} ms, lease {lease_timeout_ms} ms are unsafe (need lease >= 2*renew + 2*io)"
            )));
        }
        Ok(VolumeHeader {
            uuid,
            label,
            created_ms: get_u64(b, 120),
            renew_ms,
            lease_timeout_ms,
            io_timeout_ms,
            geo,
        })
    }
}

/// A host's heartbeat slot (delta lease), a sector in the heartbeat region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HbSlot {
    pub host: u32,
    /// 0: never used; 1: mounted; 2: cleanly unmounted.
    pub state: u32,
    pub generation: u64,
    pub instance: [u8; 16],
    pub timestamp: u64,
    pub wall_ms: u64,
    pub mounted_ms: u64,
    pub who: String,
}

pub const HB_EMPTY: u32 = 0;
pub const HB_LIVE: u32 = 1;
pub const HB_CLEAN: u32 = 2;

impl HbSlot {
    pub fn encode(&self, offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR];
        put_u32(&mut b, 24, self.host);
        put_u32(&mut b, 28, self.state);
        put_u64(&mut b, 32, self.generation);
        b[40..56].copy_from_slice(&self.instance);
        put_u64(&mut b, 56, self.timestamp);
        put_u64(&mut b, 64, self.wall_ms);
        put_u64(&mut b, 72, self.mounted_ms);
        let w = self.who.as_bytes();
        let n = w.len().min(64);
        b[80..80 + n].copy_from_slice(&w[..n]);
        seal(&mut b, MAGIC_HEARTBEAT, offset);
        b
    }
    pub fn decode(b: &[u8], offset: u64, host: u32) -> Result<HbSlot> {
        if is_zero(b) {
            return Ok(HbSlot {
                host,
                ..Default::default()
            });
        }
        verify(b, MAGIC_HEARTBEAT, offset, "heartbeat slot")?;
        let s = HbSlot {
            host: get_u32(b, 24),
            state: get_u32(b, 28),
            generation: get_u64(b, 32),
            instance: b[40..56].try_into().unwrap_or([0; 16]),
            timestamp: get_u64(b, 56),
            wall_ms: get_u64(b, 64),
            mounted_ms: get_u64(b, 72),
            who: String::from_utf8_lossy(&b[80..144])
                .trim_end_matches('\0')
                .to_string(),
        };
        if s.host != host || s.state > HB_CLEAN {
            return Err(corrupt(
                "heartbeat slot",
                offset,
                format!("slot of host {host} says host {} state {}", s.host, s.state),
            ));
        }
        Ok(s)
    }
}

/// The leader record of a lock (sector 0 of its lock area).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leader {
    pub lock: u32,
    /// 0: free.
    pub owner: u32,
    pub owner_gen: u64,
    pub lver: u64,
    pub since_ms: u64,
    /// 1: held exclusively; 2: held for a moment to register a shared mode.
    pub mode: u8,
}

pub const LEADER_EXCLUSIVE: u8 = 1;
pub const LEADER_TRANSIENT: u8 = 2;

impl Leader {
    pub fn encode(&self, offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR];
        put_u32(&mut b, 24, self.lock);
        put_u32(&mut b, 28, self.owner);
        put_u64(&mut b, 32, self.owner_gen);
        put_u64(&mut b, 40, self.lver);
        put_u64(&mut b, 48, self.since_ms);
        b[56] = self.mode;
        seal(&mut b, MAGIC_LEADER, offset);
        b
    }
    pub fn decode(b: &[u8], offset: u64, lock: u32) -> Result<Leader> {
        if is_zero(b) {
            return Ok(Leader {
                lock,
                ..Default::default()
            });
        }
        verify(b, MAGIC_LEADER, offset, "lock leader record")?;
        let l = Leader {
            lock: get_u32(b, 24),
            owner: get_u32(b, 28),
            owner_gen: get_u64(b, 32),
            lver: get_u64(b, 40),
            since_ms: get_u64(b, 48),
            mode: b[56],
        };
        if l.lock != lock || l.owner > MAX_HOSTS || l.mode > LEADER_TRANSIENT {
            return Err(corrupt(
                "lock leader record",
                offset,
                format!(
                    "lock {lock} record says lock {} owner host {}",
                    l.lock, l.owner
                ),
            ));
        }
        Ok(l)
    }
}

/// A host's Disk Paxos block for one lock (sector `host` of its lock area), plus its
/// shared-mode block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DBlock {
    pub lock: u32,
    pub host: u32,
    pub lver: u64,
    pub mbal: u64,
    pub bal: u64,
    pub inp_owner: u32,
    pub inp_gen: u64,
    pub inp_since_ms: u64,
    /// 0: none; 2: shared read-only; 3: multi-writer.
    pub share_mode: u8,
    pub share_gen: u64,
    pub share_since_ms: u64,
}

pub const SHARE_NONE: u8 = 0;
pub const SHARE_READ: u8 = 2;
pub const SHARE_MULTI: u8 = 3;

impl DBlock {
    pub fn encode(&self, offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR];
        put_u32(&mut b, 24, self.lock);
        put_u32(&mut b, 28, self.host);
        put_u64(&mut b, 32, self.lver);
        put_u64(&mut b, 40, self.mbal);
        put_u64(&mut b, 48, self.bal);
        put_u32(&mut b, 56, self.inp_owner);
        put_u64(&mut b, 64, self.inp_gen);
        put_u64(&mut b, 72, self.inp_since_ms);
        b[80] = self.share_mode;
        put_u64(&mut b, 88, self.share_gen);
        put_u64(&mut b, 96, self.share_since_ms);
        seal(&mut b, MAGIC_DBLOCK, offset);
        b
    }
    pub fn decode(b: &[u8], offset: u64, lock: u32, host: u32) -> Result<DBlock> {
        if is_zero(b) {
            return Ok(DBlock {
                lock,
                host,
                ..Default::default()
            });
        }
        verify(b, MAGIC_DBLOCK, offset, "lock paxos block")?;
        let d = DBlock {
            lock: get_u32(b, 24),
            host: get_u32(b, 28),
            lver: get_u64(b, 32),
            mbal: get_u64(b, 40),
            bal: get_u64(b, 48),
            inp_owner: get_u32(b, 56),
            inp_gen: get_u64(b, 64),
            inp_since_ms: get_u64(b, 72),
            share_mode: b[80],
            share_gen: get_u64(b, 88),
            share_since_ms: get_u64(b, 96),
        };
        if d.lock != lock
            || d.host != host
            || d.inp_owner > MAX_HOSTS
            || ![SHARE_NONE, SHARE_READ, SHARE_MULTI].contains(&d.share_mode)
        {
            return Err(corrupt(
                "lock paxos block",
                offset,
                format!(
                    "block of host {host} for lock {lock} says host {} lock {} owner {} share mode {}",
                    d.host, d.lock, d.inp_owner, d.share_mode
                ),
            ));
        }
        Ok(d)
    }
}

/// A resource cluster's map: which of its blocks, sub-blocks and inodes are in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMap {
    pub cluster: u32,
    pub blocks: Vec<u8>,
    pub subs: Vec<u8>,
    pub inodes: Vec<u8>,
}

pub const MAP_BLOCKS_AT: usize = 64;
pub const MAP_SUBS_AT: usize = 64 + 512;
pub const MAP_INODES_AT: usize = 64 + 1024;

impl ClusterMap {
    pub fn new(cluster: u32) -> ClusterMap {
        ClusterMap {
            cluster,
            blocks: vec![0; 512],
            subs: vec![0; 512],
            inodes: vec![0; 512],
        }
    }
    pub fn count(map: &[u8], n: u32) -> u32 {
        (0..n as usize).filter(|&i| !bit(map, i)).count() as u32
    }
    pub fn encode(&self, g: &Geometry) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        put_u32(&mut b, 24, self.cluster);
        put_u32(&mut b, 28, Self::count(&self.blocks, g.bpc));
        put_u32(&mut b, 32, Self::count(&self.subs, g.spc));
        put_u32(&mut b, 36, Self::count(&self.inodes, g.ipc));
        b[MAP_BLOCKS_AT..MAP_BLOCKS_AT + 512].copy_from_slice(&self.blocks);
        b[MAP_SUBS_AT..MAP_SUBS_AT + 512].copy_from_slice(&self.subs);
        b[MAP_INODES_AT..MAP_INODES_AT + 512].copy_from_slice(&self.inodes);
        seal(&mut b, MAGIC_CLUSTER, g.map(self.cluster));
        b
    }
    pub fn decode(b: &[u8], g: &Geometry, cluster: u32) -> Result<ClusterMap> {
        let off = g.map(cluster);
        verify(b, MAGIC_CLUSTER, off, "resource cluster map")?;
        let m = ClusterMap {
            cluster: get_u32(b, 24),
            blocks: b[MAP_BLOCKS_AT..MAP_BLOCKS_AT + 512].to_vec(),
            subs: b[MAP_SUBS_AT..MAP_SUBS_AT + 512].to_vec(),
            inodes: b[MAP_INODES_AT..MAP_INODES_AT + 512].to_vec(),
        };
        if m.cluster != cluster {
            return Err(corrupt(
                "resource cluster map",
                off,
                format!("map of cluster {cluster} says cluster {}", m.cluster),
            ));
        }
        // Bits past the cluster's size would be blocks outside the volume.
        for (name, map, n) in [
            ("block", &m.blocks, g.bpc),
            ("sub-block", &m.subs, g.spc),
            ("inode", &m.inodes, g.ipc),
        ] {
            if let Some(i) = (n as usize..4096).find(|&i| bit(map, i)) {
                return Err(corrupt(
                    "resource cluster map",
                    off,
                    format!("{name} bit {i} is set but the cluster has only {n} {name}s (points outside the volume)"),
                ));
            }
        }
        Ok(m)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Free = 0,
    File = 1,
    Dir = 2,
}

/// How an inode addresses its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrMode {
    /// `addrs[0]` is a sub-block holding bytes 0..64 KiB (small files and directories).
    Small = 0,
    /// `addrs[i]` is a pointer block (sub-block) mapping file blocks
    /// `i * PTRS_PER_PB ..`.
    Blocks = 1,
}

pub const FLAG_EAGER: u8 = 1;

/// An inode (file descriptor), one page in the inode table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub inum: u32,
    pub generation: u32,
    pub kind: Kind,
    pub mode: AddrMode,
    pub flags: u8,
    pub nlink: u32,
    pub size: u64,
    pub ctime_ms: u64,
    pub mtime_ms: u64,
    pub parent: u32,
    pub addrs: Vec<u32>,
}

impl Inode {
    pub fn free(inum: u32, generation: u32) -> Inode {
        Inode {
            inum,
            generation,
            kind: Kind::Free,
            mode: AddrMode::Small,
            flags: 0,
            nlink: 0,
            size: 0,
            ctime_ms: 0,
            mtime_ms: 0,
            parent: 0,
            addrs: vec![0; INODE_ADDRS],
        }
    }
    pub fn encode(&self, g: &Geometry) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        put_u32(&mut b, 24, self.inum);
        put_u32(&mut b, 28, self.generation);
        b[32] = self.kind as u8;
        b[33] = self.mode as u8;
        b[34] = self.flags;
        put_u32(&mut b, 36, self.nlink);
        put_u64(&mut b, 40, self.size);
        put_u64(&mut b, 48, self.ctime_ms);
        put_u64(&mut b, 56, self.mtime_ms);
        put_u32(&mut b, 64, self.parent);
        for (i, a) in self.addrs.iter().enumerate() {
            put_u32(&mut b, 128 + 4 * i, *a);
        }
        seal(&mut b, MAGIC_INODE, g.inode(self.inum));
        b
    }
    pub fn decode(b: &[u8], g: &Geometry, inum: u32) -> Result<Inode> {
        let off = g.inode(inum);
        if is_zero(b) {
            return Ok(Inode::free(inum, 0));
        }
        verify(b, MAGIC_INODE, off, "inode")?;
        let bad = |p: String| corrupt("inode", off, p);
        let kind = match b[32] {
            0 => Kind::Free,
            1 => Kind::File,
            2 => Kind::Dir,
            k => return Err(bad(format!("inode {inum}: unknown type {k}"))),
        };
        let mode = match b[33] {
            0 => AddrMode::Small,
            1 => AddrMode::Blocks,
            m => return Err(bad(format!("inode {inum}: unknown addressing mode {m}"))),
        };
        let ino = Inode {
            inum: get_u32(b, 24),
            generation: get_u32(b, 28),
            kind,
            mode,
            flags: b[34],
            nlink: get_u32(b, 36),
            size: get_u64(b, 40),
            ctime_ms: get_u64(b, 48),
            mtime_ms: get_u64(b, 56),
            parent: get_u32(b, 64),
            addrs: (0..INODE_ADDRS).map(|i| get_u32(b, 128 + 4 * i)).collect(),
        };
        if ino.inum != inum {
            return Err(bad(format!("inode {inum} says it is inode {}", ino.inum)));
        }
        if ino.size > g.max_file_size() {
            return Err(bad(format!(
                "inode {inum}: size {} is larger than the maximum file size",
                ino.size
            )));
        }
        if ino.mode == AddrMode::Small && ino.size > SUB_BLOCK {
            return Err(bad(format!(
                "inode {inum}: small file of {} bytes (more than a sub-block)",
                ino.size
            )));
        }
        if ino.parent as u64 >= g.ninodes() {
            return Err(bad(format!(
                "inode {inum}: parent {} outside the inode table",
                ino.parent
            )));
        }
        // Every address must be inside the volume: a hostile inode must not make us read or
        // write elsewhere.
        for (i, &a) in ino.addrs.iter().enumerate() {
            if a != 0 && (a as u64 >= g.nsubs() || (ino.mode == AddrMode::Small && i > 0)) {
                return Err(bad(format!(
                    "inode {inum}: address {i} = sub-block {a} is outside the sub-block area"
                )));
            }
        }
        Ok(ino)
    }
}

/// A page of a pointer block: block addresses of `PTRS_PER_PAGE` consecutive file blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointerPage {
    pub inum: u32,
    pub generation: u32,
    pub first: u64,
    pub ptrs: Vec<u32>,
}

impl PointerPage {
    pub fn encode(&self, offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        put_u32(&mut b, 24, self.inum);
        put_u32(&mut b, 28, self.generation);
        put_u64(&mut b, 32, self.first);
        for (i, p) in self.ptrs.iter().enumerate() {
            put_u32(&mut b, 64 + 4 * i, *p);
        }
        seal(&mut b, MAGIC_POINTER, offset);
        b
    }
    /// `None` for an all-zero page (no blocks mapped yet).
    pub fn decode(
        b: &[u8],
        g: &Geometry,
        offset: u64,
        inum: u32,
        generation: u32,
        first: u64,
    ) -> Result<PointerPage> {
        if is_zero(b) {
            return Ok(PointerPage {
                inum,
                generation,
                first,
                ptrs: vec![0; PTRS_PER_PAGE],
            });
        }
        verify(b, MAGIC_POINTER, offset, "pointer block page")?;
        let p = PointerPage {
            inum: get_u32(b, 24),
            generation: get_u32(b, 28),
            first: get_u64(b, 32),
            ptrs: (0..PTRS_PER_PAGE).map(|i| get_u32(b, 64 + 4 * i)).collect(),
        };
        if (p.inum, p.generation, p.first) != (inum, generation, first) {
            return Err(corrupt(
                "pointer block page",
                offset,
                format!(
                    "belongs to inode {} generation {} block {} (expected inode {inum} generation {generation} block {first})",
                    p.inum, p.generation, p.first
                ),
            ));
        }
        for (i, &a) in p.ptrs.iter().enumerate() {
            if (a & !UNWRITTEN) as u64 >= g.nblocks() || (a != 0 && a & !UNWRITTEN == 0) {
                return Err(corrupt(
                    "pointer block page",
                    offset,
                    format!("entry {i} = block {} is outside the volume", a & !UNWRITTEN),
                ));
            }
        }
        Ok(p)
    }
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub inum: u32,
    pub generation: u32,
    pub kind: Kind,
    pub name: String,
}

/// A 4 KiB page of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirPage {
    pub dir: u32,
    pub generation: u32,
    pub index: u32,
    pub entries: Vec<Option<DirEntry>>,
}

impl DirPage {
    pub fn empty(dir: u32, generation: u32, index: u32) -> DirPage {
        DirPage {
            dir,
            generation,
            index,
            entries: vec![None; DIRENTS_PER_PAGE],
        }
    }
    pub fn encode(&self, offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        put_u32(&mut b, 24, self.dir);
        put_u32(&mut b, 28, self.generation);
        put_u32(&mut b, 32, self.index);
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(e) = e {
                let o = 64 + i * DIRENT_LEN;
                put_u32(&mut b, o, e.inum);
                put_u32(&mut b, o + 4, e.generation);
                b[o + 8] = e.kind as u8;
                let n = e.name.len().min(NAME_MAX);
                b[o + 9] = n as u8;
                put_u16(&mut b, o + 10, 0);
                b[o + 12..o + 12 + n].copy_from_slice(&e.name.as_bytes()[..n]);
            }
        }
        seal(&mut b, MAGIC_DIR, offset);
        b
    }
    pub fn decode(
        b: &[u8],
        g: &Geometry,
        offset: u64,
        dir: u32,
        generation: u32,
        index: u32,
    ) -> Result<DirPage> {
        if is_zero(b) {
            return Ok(DirPage::empty(dir, generation, index));
        }
        verify(b, MAGIC_DIR, offset, "directory page")?;
        let bad = |p: String| corrupt("directory page", offset, p);
        let (d, gen, idx) = (get_u32(b, 24), get_u32(b, 28), get_u32(b, 32));
        if (d, gen, idx) != (dir, generation, index) {
            return Err(bad(format!(
                "belongs to directory inode {d} generation {gen} page {idx} (expected {dir} generation {generation} page {index})"
            )));
        }
        let mut entries = Vec::with_capacity(DIRENTS_PER_PAGE);
        for i in 0..DIRENTS_PER_PAGE {
            let o = 64 + i * DIRENT_LEN;
            let inum = get_u32(b, o);
            if inum == 0 {
                entries.push(None);
                continue;
            }
            if inum as u64 >= g.ninodes() {
                return Err(bad(format!(
                    "entry {i}: inode {inum} is outside the inode table"
                )));
            }
            let kind = match b[o + 8] {
                1 => Kind::File,
                2 => Kind::Dir,
                k => return Err(bad(format!("entry {i}: unknown type {k}"))),
            };
            let n = b[o + 9] as usize;
            let name = std::str::from_utf8(
                b.get(o + 12..o + 12 + n)
                    .filter(|_| n <= NAME_MAX)
                    .ok_or_else(|| bad(format!("entry {i}: name length {n}")))?,
            )
            .map_err(|_| bad(format!("entry {i}: name is not UTF-8")))?;
            if let Err(reason) = check_name(name) {
                return Err(bad(format!("entry {i}: name {name:?}: {reason}")));
            }
            entries.push(Some(DirEntry {
                inum,
                generation: get_u32(b, o + 4),
                kind,
                name: name.to_string(),
            }));
        }
        Ok(DirPage {
            dir,
            generation,
            index,
            entries,
        })
    }
}

/// The rules for a name in a directory.
pub fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > NAME_MAX {
        return Err("longer than 116 bytes");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are reserved");
    }
    if name.contains('/') {
        return Err("contains `/`");
    }
    if name.chars().any(|c| c == '\0' || c.is_control()) {
        return Err("contains a control character");
    }
    Ok(())
}

/// The journal's transaction descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalDesc {
    pub host: u32,
    pub seq: u64,
    pub images_crc: u32,
    pub targets: Vec<u64>,
}

impl JournalDesc {
    pub fn encode(&self, offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        put_u32(&mut b, 24, self.host);
        put_u32(&mut b, 28, self.targets.len() as u32);
        put_u64(&mut b, 32, self.seq);
        put_u32(&mut b, 40, self.images_crc);
        for (i, t) in self.targets.iter().enumerate() {
            put_u64(&mut b, 64 + 8 * i, *t);
        }
        seal(&mut b, MAGIC_JDESC, offset);
        b
    }
    pub fn decode(b: &[u8], offset: u64, host: u32) -> Result<Option<JournalDesc>> {
        if is_zero(b) {
            return Ok(None);
        }
        verify(b, MAGIC_JDESC, offset, "journal transaction")?;
        let n = get_u32(b, 28) as usize;
        if n > JOURNAL_TARGETS_MAX || get_u32(b, 24) != host {
            return Err(corrupt(
                "journal transaction",
                offset,
                format!("host {} with {n} pages", get_u32(b, 24)),
            ));
        }
        Ok(Some(JournalDesc {
            host,
            seq: get_u64(b, 32),
            images_crc: get_u32(b, 40),
            targets: (0..n).map(|i| get_u64(b, 64 + 8 * i)).collect(),
        }))
    }
}

/// The journal's "done" record: transactions up to `done_seq` are in place.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JournalDone {
    pub host: u32,
    pub done_seq: u64,
    pub replayed_by: u32,
}

impl JournalDone {
    pub fn encode(&self, offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        put_u32(&mut b, 24, self.host);
        put_u64(&mut b, 32, self.done_seq);
        put_u32(&mut b, 40, self.replayed_by);
        seal(&mut b, MAGIC_JDONE, offset);
        b
    }
    pub fn decode(b: &[u8], offset: u64, host: u32) -> Result<JournalDone> {
        if is_zero(b) {
            return Ok(JournalDone {
                host,
                ..Default::default()
            });
        }
        verify(b, MAGIC_JDONE, offset, "journal done record")?;
        Ok(JournalDone {
            host: get_u32(b, 24),
            done_seq: get_u64(b, 32),
            replayed_by: get_u32(b, 40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_level_of_pointer_blocks_reaches_2_tib_at_1_mib() {
        let g = Geometry::plan(1 << 30, 1 << 20).unwrap();
        assert!(g.max_file_size() >= 2 << 40, "{}", g.max_file_size());
        assert_eq!(PTRS_PER_PB, 16128);
    }

    #[test]
    fn plan_fits_and_roundtrips() {
        for (size, bs) in [
            (64u64 << 20, 1u64 << 20),
            (1 << 30, 1 << 20),
            (10 << 30, 8 << 20),
            (3 << 40, 1 << 20),
        ] {
            let g = Geometry::plan(size, bs).unwrap();
            assert!(g.end <= size);
            let h = VolumeHeader {
                uuid: [7; 16],
                label: "x".into(),
                created_ms: 1,
                renew_ms: 200,
                lease_timeout_ms: 2000,
                io_timeout_ms: 100,
                geo: g,
            };
            let b = h.encode();
            assert_eq!(VolumeHeader::decode(&b, size).unwrap(), h);
        }
        assert!(Geometry::plan(1 << 20, 1 << 20).is_err());
    }

    #[test]
    fn time_format() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_time(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    }
}
