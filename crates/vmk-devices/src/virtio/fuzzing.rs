//! The logic of the `virtio_blk_queue` fuzz target
//! (`fuzz/fuzz_targets/virtio_blk_queue.rs`), here so that a unit test runs it too.
//!
//! [`virtio_blk_queue`] decodes a byte string into a sequence of operations by a hostile
//! driver against a virtio-blk device on the virtio-mmio transport, in 64 KiB of guest RAM
//! over a 64 KiB disk: register accesses (any offset, size and value, mostly the ones that
//! matter), a Linux-like probe with a random feature subset and queue size, well-formed
//! block requests (direct or indirect, sometimes with one field corrupted), raw descriptor
//! and ring writes, arbitrary guest memory writes, interrupt handling, backend failures,
//! resets. It panics if the device panics or breaks an invariant:
//! - the interrupt line is high exactly when InterruptStatus is non-zero;
//! - FEATURES_OK is only ever set with VERSION_1 and a subset of the offered features, and
//!   DRIVER_OK only with FEATURES_OK;
//! - the device writes guest memory only inside the used ring and the device-writable
//!   buffers of the descriptor table and its indirect tables (checked whenever those do not
//!   overlap the rings or tables themselves), and the used ring grows by at most the number
//!   of chains taken, with heads inside the queue;
//! - the backend is never accessed beyond the disk, never written when read-only, and
//!   never touched in DEVICE_NEEDS_RESET;
//! - a request that completed alone with status OK moved the right bytes.
//!
//! Running it: `cargo +nightly fuzz run virtio_blk_queue` in `crates/vmk-devices` (see
//! [`crate::fuzzing`] for the build without cargo-fuzz).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use super::harness::{read_le, Checked, Coverage, FuzzBench, QState, Regs, RAM_BASE};
use super::{features, status, BlockBackend, BlockConfig, VecBackend, VirtioBlk, VirtioMmio};
use crate::fuzzing::Reader;

const RAM_SIZE: u64 = 0x1_0000;
const DESC: u64 = RAM_BASE;
const AVAIL: u64 = RAM_BASE + 0x1000;
const USED: u64 = RAM_BASE + 0x2000;
const INDIRECT: u64 = RAM_BASE + 0x3000;
const DATA: u64 = RAM_BASE + 0x4000;
const DATA_SIZE: u64 = RAM_SIZE - 0x4000;
const DISK_SIZE: u64 = 0x1_0000;

/// Counters the backend shares with the rig.
#[derive(Default)]
struct BackendLog {
    reads: AtomicU64,
    writes: AtomicU64,
    fail: AtomicBool,
}

/// A [`VecBackend`] that asserts the device stays within the disk and respects read-only,
/// and can be made to fail.
struct CheckedBackend {
    inner: VecBackend,
    read_only: bool,
    log: Arc<BackendLog>,
}

impl CheckedBackend {
    fn check(&self, offset: u64, len: u64, write: bool) -> io::Result<()> {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= DISK_SIZE),
            "backend access {offset:#x}+{len:#x} beyond the disk"
        );
        assert!(!(write && self.read_only), "write to a read-only disk");
        let c = if write {
            &self.log.writes
        } else {
            &self.log.reads
        };
        c.fetch_add(1, Ordering::SeqCst);
        if self.log.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
}

impl BlockBackend for CheckedBackend {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len() as u64, false)?;
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check(offset, buf.len() as u64, true)?;
        self.inner.write_at(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.log.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected failure"));
        }
        self.inner.flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len, true)?;
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len, true)?;
        self.inner.write_zeroes(offset, len)
    }
}

/// What the operations reached, so the unit test can tell that pseudo-random input got
/// the device into interesting states.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub ops: usize,
    pub cov: Coverage,
    pub status_ok: usize,
    pub status_ioerr: usize,
    pub status_unsupp: usize,
    pub data_verified: usize,
    pub indirect: usize,
}

/// Registers a hostile driver mostly pokes, and some it rarely should.
const REGS: [u64; 26] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0c0, 0x0fc,
];

struct Rig {
    h: FuzzBench<VirtioBlk>,
    log: Arc<BackendLog>,
    read_only: bool,
    /// Next descriptor index the structured requests use.
    next_desc: u16,
    seen: Seen,
}

impl Checked for Rig {
    type Device = VirtioBlk;

    /// Runs one device operation and checks the invariants around it: the transport's
    /// ([`FuzzBench::checked`]), then the disk's and the used ring's.
    fn access(&mut self, f: impl FnOnce(&mut VirtioMmio<Self::Device>) -> u64) -> u64 {
        let writes0 = self.log.writes.load(Ordering::SeqCst);
        let reads0 = self.log.reads.load(Ordering::SeqCst);
        let step = self.h.checked(Vec::new(), f);
        let (Some(q0), Some(q1)) = (step.q0[0], step.q1[0]) else {
            panic!("virtio-blk has no queue 0");
        };
        // A device that needs a reset stays off its queues and its disk.
        if step.status0 & status::DEVICE_NEEDS_RESET != 0 && step.status1 != 0 {
            assert_eq!(q0.next_used, q1.next_used, "used ring moved in NEEDS_RESET");
            assert_eq!(writes0, self.log.writes.load(Ordering::SeqCst));
            assert_eq!(reads0, self.log.reads.load(Ordering::SeqCst));
        }
        // Used ring growth.
        if q0.ready && q1.ready {
            let used = q1.next_used.wrapping_sub(q0.next_used);
            let taken = q1.next_avail.wrapping_sub(q0.next_avail);
            assert!(used <= taken, "{used} used for {taken} taken");
            for i in 0..used {
                let slot = u64::from(q0.next_used.wrapping_add(i)) % q1.size;
                let at = q1.used + 4 + 8 * slot - RAM_BASE;
                let id = read_le(&step.after, at, 4);
                assert!(id < q1.size, "used id {id} in a queue of {}", q1.size);
            }
        }
        step.value
    }
}

impl Rig {
    fn new(r: &mut Reader) -> Rig {
        let read_only = r.chance(32);
        let log = Arc::new(BackendLog::default());
        let disk: Vec<u8> = (0..DISK_SIZE).map(|i| (i * 31 / 7) as u8).collect();
        let backend = CheckedBackend {
            inner: VecBackend::new(disk),
            read_only,
            log: log.clone(),
        };
        let queue_size = [256, 16, 4, 1][usize::from(r.u8() % 4)];
        let blk = VirtioBlk::new(
            Box::new(backend),
            BlockConfig {
                read_only,
                serial: "fuzz-serial".into(),
                queue_size,
            },
        );
        Rig {
            h: FuzzBench::new(blk, RAM_SIZE, 1),
            log,
            read_only,
            next_desc: 0,
            seen: Seen::default(),
        }
    }

    fn qstate(&self) -> QState {
        match self.h.qstate(0) {
            Some(q) => q,
            None => panic!("virtio-blk has no queue 0"),
        }
    }

    fn write_mem(&self, addr: u64, data: &[u8]) {
        self.h.write_mem(addr, data);
    }

    /// Linux's probe: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queue 0, DRIVER_OK,
    /// with fuzz-chosen deviations.
    fn standard_init(&mut self, r: &mut Reader) {
        self.mmio_write(0x70, 4, 0);
        self.mmio_write(0x70, 4, 1);
        self.mmio_write(0x70, 4, 3);
        let offered = self.offered_features();
        let mut want = offered & (u64::from(r.u32()) << 32 | u64::from(r.u32()));
        if r.chance(224) {
            want |= features::VIRTIO_F_VERSION_1;
        }
        if r.chance(16) {
            want |= 1 << (r.u8() % 64);
        }
        self.write_driver_features(want);
        self.mmio_write(0x70, 4, 0xb);
        self.mmio_read(0x70, 4);
        self.mmio_write(0x30, 4, 0);
        let max = self.mmio_read(0x34, 4);
        let size = match r.u8() % 8 {
            0 => 1,
            1 => 2,
            2 => 4,
            3 | 4 => 16,
            5 => max,
            6 => 3,
            _ => 1 << (r.u8() % 10),
        }
        .min(if r.chance(8) { u64::MAX } else { max });
        self.mmio_write(0x38, 4, size);
        let mut addrs = [DESC, AVAIL, USED];
        if r.chance(16) {
            let i = usize::from(r.u8() % 3);
            addrs[i] = match r.u8() % 3 {
                0 => addrs[i] + 1,
                1 => RAM_BASE + RAM_SIZE - 8,
                _ => r.u64(),
            };
        }
        self.write_queue_rings(addrs[0], addrs[1], addrs[2]);
        self.mmio_write(0x44, 4, 1);
        self.mmio_write(0x70, 4, 0xf);
        self.next_desc = 0;
    }

    /// A block request laid out like Linux's virtio_blk does (header, data, status), direct
    /// or through an indirect table, sometimes corrupted; then a kick.
    fn request(&mut self, r: &mut Reader) {
        let q = self.qstate();
        let size = q.size.clamp(1, 256) as u16;
        let ty = match r.u8() % 10 {
            0..=2 => VIRTIO_BLK_T_IN,
            3..=5 => VIRTIO_BLK_T_OUT,
            6 => VIRTIO_BLK_T_FLUSH,
            7 => VIRTIO_BLK_T_GET_ID,
            8 => [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES][usize::from(r.u8() & 1)],
            _ => r.u32() % 20,
        };
        let sector = if r.chance(16) {
            r.u64()
        } else {
            u64::from(r.u8() % 136)
        };
        // Data: 0..=2 segments of whole sectors (sometimes not).
        let nseg = usize::from(r.u8() % 3);
        let mut segs = Vec::new();
        let mut at = DATA + 0x100;
        for _ in 0..nseg {
            let len = if r.chance(16) {
                u64::from(r.u16() % 2048)
            } else {
                512 * u64::from(r.u8() % 8 + 1)
            };
            if at + len > DATA + DATA_SIZE {
                break;
            }
            segs.push((at, len));
            at += len + 16;
        }
        let data_writable = matches!(ty, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
        if matches!(ty, VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) {
            // Segment records instead of sectors of data.
            segs.clear();
            let n = u64::from(r.u8() % 3 + 1);
            let mut rec = Vec::new();
            for _ in 0..n {
                rec.extend_from_slice(&u64::from(r.u8() % 140).to_le_bytes());
                rec.extend_from_slice(&u32::from(r.u8() % 16).to_le_bytes());
                let flags = if r.chance(32) {
                    r.u32()
                } else {
                    u32::from(r.u8() & 1)
                };
                rec.extend_from_slice(&flags.to_le_bytes());
            }
            self.write_mem(DATA + 0x100, &rec);
            segs.push((DATA + 0x100, rec.len() as u64));
        }
        if ty == VIRTIO_BLK_T_OUT {
            for &(a, l) in &segs {
                let seed = r.u8();
                let fill: Vec<u8> = (0..l)
                    .map(|i| (i as u8).wrapping_mul(seed | 1) ^ seed)
                    .collect();
                self.write_mem(a, &fill);
            }
        }
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&ty.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        self.write_mem(DATA, &hdr);
        let status_addr = DATA + 0x80;
        self.write_mem(status_addr, &[0xff]);
        // (addr, len, flags) of the chain.
        let mut chain: Vec<(u64, u32, u16)> = vec![(DATA, 16, 0)];
        for &(a, l) in &segs {
            chain.push((a, l as u32, if data_writable { 2 } else { 0 }));
        }
        chain.push((status_addr, 1, 2));
        let mut corrupt = r.chance(24);
        if corrupt {
            // One hostile field.
            let i = usize::from(r.u8()) % chain.len();
            match r.u8() % 5 {
                0 => chain[i].0 = r.u64(),
                1 => chain[i].1 = r.u32(),
                2 => chain[i].1 = 0,
                3 => chain[i].2 ^= 1 << (r.u8() % 3),
                _ => chain[i].0 = RAM_BASE + RAM_SIZE - u64::from(r.u8() % 4),
            }
        }
        let indirect = r.chance(64);
        let head = self.next_desc % size;
        if indirect {
            self.seen.indirect += 1;
            self.h.write_indirect(INDIRECT, &chain);
            let len = if r.chance(8) {
                corrupt = true;
                r.u32()
            } else {
                16 * chain.len() as u32
            };
            self.write_desc(DESC, head, INDIRECT, len, 4, 0);
            self.next_desc = self.next_desc.wrapping_add(1);
        } else {
            self.h.write_chain(DESC, self.next_desc, size, &chain);
            self.next_desc = self.next_desc.wrapping_add(chain.len() as u16);
        }
        // Publish: the ring slot, then the index, where the driver would put them.
        self.h.publish(q.avail, size, head);
        let used0 = q.next_used;
        self.mmio_write(0x50, 4, 0);
        let q1 = self.qstate();
        if !(q.ready && q1.ready && q1.next_used.wrapping_sub(used0) == 1) {
            return;
        }
        // Exactly our request completed: check its status and data.
        let mut st = [0u8; 1];
        let _ = self.h.b.mem.read(status_addr, &mut st);
        let status = st[0];
        match status {
            0 => self.seen.status_ok += 1,
            1 => self.seen.status_ioerr += 1,
            2 => self.seen.status_unsupp += 1,
            // A corrupted chain may put the status elsewhere.
            _ => return,
        }
        if status != 0 || corrupt || self.log.fail.load(Ordering::SeqCst) {
            return;
        }
        if matches!(ty, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT) && !segs.is_empty() {
            let mut off = sector * 512;
            let mut d = self.h.b.lock();
            for &(a, l) in &segs {
                let mut guest = vec![0u8; l as usize];
                let mut disk = vec![0u8; l as usize];
                let _ = self.h.b.mem.read(a, &mut guest);
                if d.device_mut()
                    .backend_mut()
                    .read_at(off, &mut disk)
                    .is_err()
                {
                    panic!("request OK but the disk range is unreadable");
                }
                assert!(guest == disk, "type {ty} sector {sector}: data mismatch");
                off += l;
            }
            assert!(
                !(ty == VIRTIO_BLK_T_OUT && self.read_only),
                "write OK on RO disk"
            );
            self.seen.data_verified += 1;
        }
    }

    fn write_desc(&self, table: u64, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.h.write_desc(table, idx, addr, len, flags, next);
    }

    fn step(&mut self, r: &mut Reader) {
        // A driver that broke the device usually resets it and starts over.
        if self.h.b.lock().status() & status::DEVICE_NEEDS_RESET != 0 && r.chance(128) {
            self.standard_init(r);
            return;
        }
        match r.u8() % 32 {
            0..=2 => {
                let off = if r.chance(224) {
                    REGS[usize::from(r.u8()) % REGS.len()]
                } else {
                    u64::from(r.u16() % 0x200)
                };
                let size = if r.chance(240) { 4 } else { r.u8() % 9 };
                let v = match r.u8() % 4 {
                    0 => u64::from(r.u8() % 4),
                    1 => 1 << (r.u8() % 32),
                    2 => u64::from(r.u8()),
                    _ => r.u64(),
                };
                self.mmio_write(off, size, v);
            }
            3 => {
                let off = if r.chance(224) {
                    REGS[usize::from(r.u8()) % REGS.len()]
                } else {
                    u64::from(r.u16() % 0x200)
                };
                let size = if r.chance(240) { 4 } else { r.u8() % 9 };
                self.mmio_read(off, size);
            }
            4 => self.standard_init(r),
            5..=14 | 28..=31 => self.request(r),
            15 => {
                let table = if r.chance(192) { DESC } else { INDIRECT };
                let idx = u16::from(r.u8());
                let addr = match r.u8() % 4 {
                    0 => r.u64(),
                    1 => DESC + u64::from(r.u16() % 0x4000),
                    _ => DATA + u64::from(r.u16()) % DATA_SIZE,
                };
                let len = if r.chance(64) {
                    r.u32()
                } else {
                    u32::from(r.u16() % 4096)
                };
                let flags = u16::from(r.u8() % 8);
                let next = u16::from(r.u8());
                self.write_desc(table, idx, addr, len, flags, next);
            }
            16 => {
                let q = self.qstate();
                let size = q.size.clamp(1, 256);
                let mut idx = [0u8; 2];
                let _ = self.h.b.mem.read(AVAIL + 2, &mut idx);
                let idx = u16::from_le_bytes(idx);
                let head = if r.chance(224) {
                    u16::from(r.u8()) % size as u16
                } else {
                    r.u16()
                };
                self.write_mem(AVAIL + 4 + 2 * (u64::from(idx) % size), &head.to_le_bytes());
                let new = if r.chance(232) {
                    idx.wrapping_add(1)
                } else {
                    r.u16()
                };
                self.write_mem(AVAIL + 2, &new.to_le_bytes());
            }
            17 | 18 => {
                let v = if r.chance(224) { 0 } else { r.u64() };
                self.mmio_write(0x50, 4, v);
            }
            19..=21 => {
                // Interrupt handler: read, ack (usually all of it).
                let st = self.mmio_read(0x60, 4);
                let ack = if r.chance(224) { st } else { u64::from(r.u8()) };
                self.mmio_write(0x64, 4, ack);
            }
            22 => {
                let off = u64::from(r.u16()) % RAM_SIZE;
                let n = usize::from(r.u8() % 32);
                let bytes: Vec<u8> = (0..n).map(|_| r.u8()).collect();
                self.write_mem(RAM_BASE + off, &bytes);
            }
            23 => {
                let q = self.qstate();
                let size = q.size.clamp(1, 256);
                if r.u8() & 1 == 0 {
                    // used_event
                    let v = r.u16();
                    self.write_mem(AVAIL + 4 + 2 * size, &v.to_le_bytes());
                } else {
                    let v = u16::from(r.u8() & 1);
                    self.write_mem(AVAIL, &v.to_le_bytes());
                }
            }
            24 => {
                let f = r.chance(64);
                self.log.fail.store(f, Ordering::SeqCst);
            }
            25 | 26 => {
                let off = 0x100 + u64::from(r.u8());
                let size = [1, 2, 4, 8, 3][usize::from(r.u8() % 5)];
                if r.chance(240) {
                    self.mmio_read(off, size);
                } else {
                    self.mmio_write(off, size, r.u64());
                }
            }
            _ => match r.u8() % 3 {
                0 => self.mmio_write(0x70, 4, 0),
                1 => {
                    self.access(|d| {
                        d.config_changed();
                        0
                    });
                }
                _ => {
                    self.access(|d| {
                        d.process_queue(0);
                        0
                    });
                }
            },
        }
    }
}

/// Runs the operations encoded in `data` against a fresh device and returns how many there
/// were; panics on a device panic or a broken invariant.
pub fn virtio_blk_queue(data: &[u8]) -> usize {
    run(data).ops
}

pub(crate) fn run(data: &[u8]) -> Seen {
    let mut r = Reader { data, pos: 0 };
    let mut rig = Rig::new(&mut r);
    // Most inputs start from a working device.
    if r.chance(200) {
        rig.standard_init(&mut r);
    }
    while !r.done() {
        rig.step(&mut r);
        rig.seen.ops += 1;
    }
    // The device is dropped with the rig (a flush); that must not panic either.
    rig.seen.cov = std::mem::take(&mut rig.h.cov);
    rig.seen
}
