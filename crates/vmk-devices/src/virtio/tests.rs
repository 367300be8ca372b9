//! virtio-mmio + split queue + virtio-blk, driven by a fake driver that lays out its rings in
//! guest memory and programs the registers in the order Linux's `virtio_mmio` and
//! `virtio_blk` drivers do.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmk_memory::GuestMemory;

use super::blk::*;
use super::features::*;
use super::harness::{self, Bench, Regs, Vq, HOLE, RAM_BASE as RAM};
use super::status::*;
use super::*;
use crate::{IrqLine, LevelIrq, MmioDevice};

const RAM_SIZE: u64 = 1 << 20;
const DESC: u64 = RAM;
const AVAIL: u64 = RAM + 0x1000;
const USED: u64 = RAM + 0x2000;
const INDIRECT: u64 = RAM + 0x4000;
const HEAP: u64 = RAM + 0x1_0000;
const DISK_SECTORS: u64 = 2048; // 1 MiB
/// What untouched RAM holds.
const FILL: u8 = 0x5a;

/// A disk the test can look into while the device owns it.
#[derive(Clone, Default)]
struct SharedDisk {
    data: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
}

impl SharedDisk {
    fn new(sectors: u64) -> SharedDisk {
        let data = (0..sectors * 512)
            .map(|i| (i / 512) as u8 ^ (i as u8))
            .collect();
        SharedDisk {
            data: Arc::new(Mutex::new(data)),
            ..Default::default()
        }
    }

    fn bytes(&self, off: u64, len: u64) -> Vec<u8> {
        self.data.lock().unwrap()[off as usize..(off + len) as usize].to_vec()
    }

    fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    fn io(&self) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            Err(io::Error::other("injected"))
        } else {
            Ok(())
        }
    }
}

impl BlockBackend for SharedDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.io()?;
        let d = self.data.lock().unwrap();
        let end = offset as usize + buf.len();
        assert!(end <= d.len(), "device read past the disk");
        buf.copy_from_slice(&d[offset as usize..end]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.io()?;
        let mut d = self.data.lock().unwrap();
        let end = offset as usize + buf.len();
        assert!(end <= d.len(), "device wrote past the disk");
        d[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.io()
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.io()?;
        let mut d = self.data.lock().unwrap();
        assert!(offset + len <= d.len() as u64);
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

fn guest_memory() -> Arc<GuestMemory> {
    let mem = harness::guest_memory(RAM_SIZE, true);
    mem.write(RAM, &vec![FILL; RAM_SIZE as usize]).unwrap();
    mem
}

/// The result of one block request.
#[derive(Debug)]
struct Done {
    status: u8,
    data: Vec<u8>,
    used_len: u32,
}

/// A virtio driver as Linux's virtio_mmio + virtio_ring + virtio_blk behave: the bench's
/// registers, the split ring of [`Vq`], and what virtio_blk adds (EVENT_IDX kicks, a heap
/// for requests, indirect tables).
struct Driver {
    b: Bench<VirtioBlk>,
    disk: SharedDisk,
    vq: Vq,
    features: u64,
    /// avail_idx at the last kick_prepare (Linux: avail_idx_shadow - num_added).
    kicked_idx: u16,
    heap: u64,
    indirect_next: u64,
}

impl std::ops::Deref for Driver {
    type Target = Bench<VirtioBlk>;
    fn deref(&self) -> &Bench<VirtioBlk> {
        &self.b
    }
}

impl Driver {
    fn new(cfg: BlockConfig) -> Driver {
        Self::with_disk(cfg, SharedDisk::new(DISK_SECTORS))
    }

    fn with_disk(cfg: BlockConfig, disk: SharedDisk) -> Driver {
        let blk = VirtioBlk::new(Box::new(disk.clone()), cfg);
        Driver {
            b: Bench::new(blk, guest_memory()),
            disk,
            vq: Vq::new(0, DESC, AVAIL, USED, 0),
            features: 0,
            kicked_idx: 0,
            heap: HEAP,
            indirect_next: INDIRECT,
        }
    }

    fn add_status(&self, bit: u32) {
        let s = self.status();
        self.wr(0x70, s | bit);
    }

    /// vm_reset: write 0, wait for 0.
    fn reset(&mut self) {
        self.wr(0x70, 0);
        for _ in 0..10 {
            if self.status() == 0 {
                return;
            }
        }
        panic!("device did not reset");
    }

    /// vm_probe + register_virtio_device + virtio_dev_probe up to FEATURES_OK; returns
    /// whether the device kept FEATURES_OK.
    fn negotiate(&mut self, want: u64) -> bool {
        assert_eq!(self.rd(0x000), 0x7472_6976);
        assert_eq!(self.rd(0x004), 2);
        assert_eq!(self.rd(0x008), 2);
        self.rd(0x00c);
        self.reset();
        self.add_status(ACKNOWLEDGE);
        self.add_status(DRIVER);
        self.features = self.b.offered_features() & want;
        self.b.write_driver_features(self.features);
        self.add_status(FEATURES_OK);
        self.status() & FEATURES_OK != 0
    }

    /// vm_setup_vq for queue 0.
    fn setup_queue(&mut self, size: u16, desc: u64, avail: u64, used: u64) {
        self.wr(0x030, 0);
        assert_eq!(self.rd(0x044), 0, "queue already ready");
        let max = self.rd(0x034);
        assert!(max > 0);
        self.wr(0x038, u32::from(size));
        self.b.write_queue_rings(desc, avail, used);
        self.wr(0x044, 1);
        self.vq = Vq::new(0, desc, avail, used, size);
        self.kicked_idx = 0;
        // The driver's rings start zeroed.
        self.mem
            .write(avail, &vec![0; 6 + 2 * size as usize])
            .unwrap();
        self.mem
            .write(used, &vec![0; 6 + 8 * size as usize])
            .unwrap();
    }

    /// The whole probe with `want` features and a queue of `size`.
    fn init_with(&mut self, want: u64, size: u16) {
        assert!(self.negotiate(want), "FEATURES_OK refused");
        self.setup_queue(size, DESC, AVAIL, USED);
        self.add_status(DRIVER_OK);
        assert_eq!(
            self.status(),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        );
    }

    /// What Linux's virtio_blk takes of what vmk offers.
    fn init(&mut self) {
        self.init_with(u64::MAX, 128);
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.heap;
        self.heap = (self.heap + len + 15) & !15;
        assert!(self.heap < RAM + RAM_SIZE, "test heap exhausted");
        a
    }

    fn write_desc(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        harness::write_desc(&self.mem, table, i, addr, len, flags, next).unwrap();
    }

    fn u16_at(&self, a: u64) -> u16 {
        let mut b = [0u8; 2];
        self.mem.read(a, &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    fn set_u16(&self, a: u64, v: u16) {
        self.mem.write(a, &v.to_le_bytes()).unwrap();
    }

    /// Publishes head `head` in the available ring (virtqueue_add's last step).
    fn publish(&mut self, head: u16) {
        self.vq.publish(&self.b.mem, head);
    }

    /// virtqueue_add_split: a chain of (addr, len, device-writable) buffers, direct or
    /// through an indirect table. Returns the head.
    fn submit(&mut self, bufs: &[(u64, u32, bool)], indirect: bool) -> u16 {
        if indirect {
            let table = self.indirect_next;
            self.indirect_next += 16 * bufs.len() as u64;
            self.vq.add_indirect(&self.b.mem, table, bufs)
        } else {
            self.vq.add(&self.b.mem, bufs)
        }
    }

    /// virtqueue_kick: notifies unless the device suppressed it.
    fn kick(&mut self) -> bool {
        let new = self.vq.avail_idx;
        let old = self.kicked_idx;
        self.kicked_idx = new;
        let needed = if self.features & VIRTIO_F_RING_EVENT_IDX != 0 {
            let avail_event = self.u16_at(USED + 4 + 8 * u64::from(self.vq.size));
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.u16_at(USED) & 1 == 0
        };
        if needed {
            self.wr(0x050, 0);
        }
        needed
    }

    /// virtqueue_get_buf until empty, then re-enable callbacks: (head, len) in used order.
    fn take_used(&mut self) -> Vec<(u32, u32)> {
        let out = self.vq.take_used(&self.b.mem);
        // virtblk_done: virtqueue_enable_cb after draining the ring.
        self.enable_cb();
        out
    }

    /// vm_interrupt: read InterruptStatus, ack it.
    fn interrupt(&self) -> u32 {
        let s = self.rd(0x060);
        self.wr(0x064, s);
        s
    }

    /// virtqueue_enable_cb with EVENT_IDX: interrupt me at the next used buffer.
    fn enable_cb(&self) {
        self.set_u16(AVAIL + 4 + 2 * u64::from(self.vq.size), self.vq.last_used);
    }

    /// A virtio_blk request: header, data out (device-readable), `in_len` bytes in
    /// (device-writable), status; kicked and completed.
    fn blk(&mut self, ty: u32, sector: u64, out: &[u8], in_len: u32) -> Done {
        self.blk_with(ty, sector, out, in_len, false)
    }

    fn blk_with(&mut self, ty: u32, sector: u64, out: &[u8], in_len: u32, indirect: bool) -> Done {
        let hdr = self.header(ty, sector);
        let mut bufs = vec![(hdr, 16, false)];
        if !out.is_empty() {
            let a = self.alloc(out.len() as u64);
            self.mem.write(a, out).unwrap();
            bufs.push((a, out.len() as u32, false));
        }
        let data = self.alloc(u64::from(in_len));
        if in_len > 0 {
            bufs.push((data, in_len, true));
        }
        let st = self.status_byte();
        bufs.push((st, 1, true));
        self.run(&bufs, indirect, st, data, in_len)
    }

    fn header(&mut self, ty: u32, sector: u64) -> u64 {
        let a = self.alloc(16);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&ty.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(a, &h).unwrap();
        a
    }

    fn status_byte(&mut self) -> u64 {
        let a = self.alloc(1);
        self.mem.write(a, &[0xff]).unwrap();
        a
    }

    /// Submits `bufs`, kicks, expects exactly that chain back and acks the interrupt.
    fn run(
        &mut self,
        bufs: &[(u64, u32, bool)],
        indirect: bool,
        st: u64,
        data: u64,
        in_len: u32,
    ) -> Done {
        let head = self.submit(bufs, indirect);
        self.kick();
        let used = self.take_used();
        assert_eq!(used.len(), 1, "one request, one used element: {used:?}");
        assert_eq!(used[0].0, u32::from(head));
        let mut status = [0u8];
        self.mem.read(st, &mut status).unwrap();
        let mut out = vec![0u8; in_len as usize];
        self.mem.read(data, &mut out).unwrap();
        if self.irq.level() {
            self.interrupt();
        }
        assert!(!self.irq.level());
        Done {
            status: status[0],
            data: out,
            used_len: used[0].1,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.b.snapshot(RAM_SIZE)
    }

    fn needs_reset(&self) -> bool {
        self.status() & DEVICE_NEEDS_RESET != 0
    }
}

/// Asserts that between two snapshots only bytes inside `allowed` ranges changed.
fn assert_only_changed(before: &[u8], after: &[u8], allowed: &[(u64, u64)]) {
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        let addr = RAM + i as u64;
        if a != b {
            assert!(
                allowed.iter().any(|&(s, l)| addr >= s && addr < s + l),
                "{addr:#x} changed {a:#x} -> {b:#x} outside {allowed:x?}"
            );
        }
    }
}

fn used_ring(size: u16) -> (u64, u64) {
    (USED, 6 + 8 * u64::from(size))
}

fn sector_data(sector: u64, n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed ^ sector as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Transport: probe, registers, features, status

#[test]
fn probe_registers_and_config_space() {
    let d = Driver::new(BlockConfig {
        serial: "vmk-disk-0".into(),
        ..Default::default()
    });
    assert_eq!(d.rd(0x000), VIRTIO_MMIO_MAGIC);
    assert_eq!(d.rd(0x004), 2);
    assert_eq!(d.rd(0x008), 2);
    assert_eq!(d.rd(0x00c), VIRTIO_MMIO_VENDOR_ID);
    d.wr(0x014, 0);
    let lo = d.rd(0x010);
    d.wr(0x014, 1);
    let hi = d.rd(0x010);
    d.wr(0x014, 2);
    assert_eq!(d.rd(0x010), 0);
    let f = u64::from(hi) << 32 | u64::from(lo);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_F_RING_INDIRECT_DESC,
        VIRTIO_F_RING_EVENT_IDX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x} not offered");
    }
    assert_eq!(f & VIRTIO_BLK_F_RO, 0);
    assert_eq!(f & VIRTIO_F_RING_PACKED, 0);
    // Queue 0 of 256, no queue 1.
    d.wr(0x030, 0);
    assert_eq!(d.rd(0x034), 256);
    assert_eq!(d.rd(0x044), 0);
    d.wr(0x030, 1);
    assert_eq!(d.rd(0x034), 0);
    // No shared memory regions.
    d.wr(0x0ac, 0);
    assert_eq!(d.rd(0x0b0), u32::MAX);
    assert_eq!(d.rd(0x0b4), u32::MAX);
    assert_eq!(d.rd(0x0b8), u32::MAX);
    // Config space, as virtio_cread does it (64-bit fields as two 32-bit reads).
    let gen = d.rd(0x0fc);
    let cap = u64::from(d.rd(0x100)) | u64::from(d.rd(0x104)) << 32;
    assert_eq!(d.rd(0x0fc), gen);
    assert_eq!(cap, DISK_SECTORS);
    let dev = d.dev.lock().unwrap();
    let mut dev = dev;
    assert_eq!(dev.read(0x100, 8), DISK_SECTORS, "64-bit read");
    assert_eq!(dev.read(0x10c, 4), 254, "seg_max");
    assert_eq!(dev.read(0x114, 4), 512, "blk_size");
    assert_eq!(dev.read(0x124, 4), 1 << 22, "max_discard_sectors");
    assert_eq!(dev.read(0x128, 4), 32, "max_discard_seg");
    assert_eq!(dev.read(0x12c, 4), 8, "discard_sector_alignment");
    assert_eq!(dev.read(0x130, 4), 1 << 22, "max_write_zeroes_sectors");
    assert_eq!(dev.read(0x134, 4), 32, "max_write_zeroes_seg");
    assert_eq!(dev.read(0x138, 1), 1, "write_zeroes_may_unmap");
    assert_eq!(
        dev.read(0x101, 2),
        (DISK_SECTORS >> 8) & 0xffff,
        "unaligned"
    );
    assert_eq!(dev.read(0x1f0, 4), 0, "past the end");
    assert_eq!(dev.read(0xfff, 1), 0);
    assert_eq!(dev.bad_accesses(), 0);
}

#[test]
fn bad_register_accesses_are_counted_not_fatal() {
    let d = Driver::new(BlockConfig::default());
    let mut dev = d.dev.lock().unwrap();
    assert_eq!(dev.read(0x000, 8), 0, "64-bit register read");
    assert_eq!(dev.read(0x002, 4), 0, "misaligned");
    assert_eq!(dev.read(0x000, 1), 0, "byte read");
    assert_eq!(dev.read(0x038, 4), 0, "write-only QueueNum");
    assert_eq!(dev.read(0x0c0, 4), 0, "QueueReset without RING_RESET");
    dev.write(0x000, 4, 1); // read-only
    dev.write(0x070, 2, 1); // half-word Status
    dev.write(0x100, 3, 1); // odd config size
    assert_eq!(dev.bad_accesses(), 8);
    assert_eq!(dev.status(), 0);
    dev.write(0x070, 8, 0xff);
    assert_eq!(dev.status(), 0);
}

#[test]
fn feature_negotiation() {
    let mut d = Driver::new(BlockConfig::default());
    // No VERSION_1: refused (legacy drivers are not served).
    assert!(!d.negotiate(VIRTIO_BLK_F_FLUSH));
    assert_eq!(d.status() & FEATURES_OK, 0);
    // A feature that was not offered: refused.
    d.reset();
    d.add_status(ACKNOWLEDGE | DRIVER);
    d.wr(0x024, 1);
    d.wr(
        0x020,
        ((VIRTIO_F_VERSION_1 | VIRTIO_F_RING_PACKED) >> 32) as u32,
    );
    d.add_status(FEATURES_OK);
    assert_eq!(d.status() & FEATURES_OK, 0);
    // DriverFeatures before DRIVER is ignored.
    d.reset();
    d.wr(0x024, 1);
    d.wr(0x020, 1);
    d.add_status(ACKNOWLEDGE | DRIVER);
    d.add_status(FEATURES_OK);
    assert_eq!(d.status() & FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK does not stick.
    d.add_status(DRIVER_OK);
    assert_eq!(d.status() & DRIVER_OK, 0);
    // A good set sticks; later feature writes are ignored.
    assert!(d.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH));
    d.wr(0x024, 0);
    d.wr(0x020, 0xffff_ffff);
    assert_eq!(
        d.dev.lock().unwrap().driver_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH
    );
    // The driver cannot clear bits.
    d.wr(0x070, ACKNOWLEDGE);
    assert_eq!(d.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    // FAILED sticks and keeps the device off its queues.
    d.setup_queue(8, DESC, AVAIL, USED);
    d.add_status(FAILED);
    d.add_status(DRIVER_OK);
    let hdr = d.header(VIRTIO_BLK_T_FLUSH, 0);
    let st = d.status_byte();
    d.submit(&[(hdr, 16, false), (st, 1, true)], false);
    d.kick();
    assert!(d.take_used().is_empty());
}

#[test]
fn read_only_device_offers_ro() {
    let mut d = Driver::new(BlockConfig {
        read_only: true,
        ..Default::default()
    });
    d.init();
    assert_ne!(d.features & VIRTIO_BLK_F_RO, 0);
    assert_eq!(
        d.features & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
    let before = d.disk.bytes(0, 4096);
    let r = d.blk(VIRTIO_BLK_T_OUT, 0, &[0xee; 4096], 0);
    assert_eq!(r.status, VIRTIO_BLK_S_IOERR);
    assert_eq!(d.disk.bytes(0, 4096), before, "no data written");
    // Discard / write zeroes were not negotiated: unsupported.
    let seg = discard_seg(0, 8, 0);
    assert_eq!(
        d.blk(VIRTIO_BLK_T_DISCARD, 0, &seg, 0).status,
        VIRTIO_BLK_S_UNSUPP
    );
    assert_eq!(d.disk.bytes(0, 4096), before);
    // Reads and flushes work.
    let r = d.blk(VIRTIO_BLK_T_IN, 1, &[], 512);
    assert_eq!(r.status, VIRTIO_BLK_S_OK);
    assert_eq!(r.data, d.disk.bytes(512, 512));
    assert_eq!(d.blk(VIRTIO_BLK_T_FLUSH, 0, &[], 0).status, VIRTIO_BLK_S_OK);
}

// ---------------------------------------------------------------------------------------
// Requests

#[test]
fn write_then_read_back() {
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    let data = sector_data(10, 4096, 1);
    let w = d.blk(VIRTIO_BLK_T_OUT, 10, &data, 0);
    assert_eq!(w.status, VIRTIO_BLK_S_OK);
    assert_eq!(w.used_len, 1, "only the status byte is written");
    assert_eq!(d.disk.bytes(10 * 512, 4096), data);
    let r = d.blk(VIRTIO_BLK_T_IN, 10, &[], 4096);
    assert_eq!(r.status, VIRTIO_BLK_S_OK);
    assert_eq!(r.used_len, 4097);
    assert_eq!(r.data, data);
    // The last sector of the disk.
    let last = DISK_SECTORS - 1;
    let r = d.blk(VIRTIO_BLK_T_IN, last, &[], 512);
    assert_eq!(r.status, VIRTIO_BLK_S_OK);
    assert_eq!(r.data, d.disk.bytes(last * 512, 512));
    let stats = d.dev.lock().unwrap().device().stats();
    assert_eq!(stats.ok, 3);
    assert_eq!(stats.bytes_written, 4096);
    assert_eq!(stats.bytes_read, 4096 + 512);
    assert_eq!((stats.reads, stats.writes), (2, 1));
}

#[test]
fn interrupt_line_follows_interrupt_status() {
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    assert!(!d.irq.level());
    let hdr = d.header(VIRTIO_BLK_T_FLUSH, 0);
    let st = d.status_byte();
    d.submit(&[(hdr, 16, false), (st, 1, true)], false);
    assert!(d.kick());
    assert!(d.irq.level());
    assert_eq!(d.rd(0x060), interrupt::USED_BUFFER);
    // Acking another bit does nothing.
    d.wr(0x064, interrupt::CONFIG_CHANGE);
    assert!(d.irq.level());
    assert_eq!(d.interrupt(), interrupt::USED_BUFFER);
    assert!(!d.irq.level());
    assert_eq!(d.rd(0x060), 0);
    assert_eq!(d.take_used().len(), 1);
    assert_eq!(d.irq.rises(), 1);
}

#[test]
fn scattered_and_indirect_requests() {
    for indirect in [false, true] {
        let mut d = Driver::new(BlockConfig::default());
        d.init();
        assert_ne!(d.features & VIRTIO_F_RING_INDIRECT_DESC, 0);
        // OUT: header and data in separate buffers; data in three pieces, one across a
        // page boundary.
        let data = sector_data(3, 512 * 12, 9);
        let hdr = d.header(VIRTIO_BLK_T_OUT, 3);
        d.heap = (d.heap + 0xfff) & !0xfff;
        let a = d.alloc(512);
        let b = d.alloc(1024 + 0xe00) + 0xe00; // crosses into the next page
        let c = d.alloc(4608);
        d.mem.write(a, &data[..512]).unwrap();
        d.mem.write(b, &data[512..1536]).unwrap();
        d.mem.write(c, &data[1536..]).unwrap();
        let st = d.status_byte();
        let r = d.run(
            &[
                (hdr, 16, false),
                (a, 512, false),
                (b, 1024, false),
                (c, 4608, false),
                (st, 1, true),
            ],
            indirect,
            st,
            st,
            0,
        );
        assert_eq!(r.status, VIRTIO_BLK_S_OK);
        assert_eq!(d.disk.bytes(3 * 512, data.len() as u64), data);
        // IN into three pieces, header and status in one buffer each.
        let hdr = d.header(VIRTIO_BLK_T_IN, 3);
        let x = d.alloc(2048);
        let y = d.alloc(1024);
        let z = d.alloc(3072);
        let st = d.status_byte();
        let before = d.snapshot();
        let r = d.run(
            &[
                (hdr, 16, false),
                (x, 2048, true),
                (y, 1024, true),
                (z, 3072, true),
                (st, 1, true),
            ],
            indirect,
            st,
            st,
            0,
        );
        assert_eq!(r.status, VIRTIO_BLK_S_OK);
        assert_eq!(r.used_len, 6145);
        let mut back = vec![0u8; 6144];
        d.mem.read(x, &mut back[..2048]).unwrap();
        d.mem.read(y, &mut back[2048..3072]).unwrap();
        d.mem.read(z, &mut back[3072..]).unwrap();
        assert_eq!(back, data[..6144]);
        assert_only_changed(
            &before,
            &d.snapshot(),
            &[
                (x, 2048),
                (y, 1024),
                (z, 3072),
                (st, 1),
                used_ring(d.vq.size),
                (DESC, 0x1000),
                (AVAIL, 0x1000),
                (INDIRECT, 0x1000),
            ],
        );
    }
}

#[test]
fn header_status_framing_is_free() {
    // Header + data in one readable buffer, data + status in one writable buffer.
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    let data = sector_data(7, 1024, 3);
    let buf = d.alloc(16 + 1024);
    let mut h = vec![0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    h[8..].copy_from_slice(&7u64.to_le_bytes());
    h.extend_from_slice(&data);
    d.mem.write(buf, &h).unwrap();
    let st = d.status_byte();
    let r = d.run(&[(buf, 16 + 1024, false), (st, 1, true)], false, st, st, 0);
    assert_eq!(r.status, VIRTIO_BLK_S_OK);
    assert_eq!(d.disk.bytes(7 * 512, 1024), data);
    let hdr = d.header(VIRTIO_BLK_T_IN, 7);
    let inb = d.alloc(1025);
    d.mem.write(inb + 1024, &[0xff]).unwrap();
    let head = d.submit(&[(hdr, 16, false), (inb, 1025, true)], false);
    d.kick();
    assert_eq!(d.take_used(), vec![(u32::from(head), 1025)]);
    let mut back = vec![0u8; 1025];
    d.mem.read(inb, &mut back).unwrap();
    assert_eq!(back[..1024], data[..]);
    assert_eq!(back[1024], VIRTIO_BLK_S_OK);
}

fn discard_seg(sector: u64, num: u32, flags: u32) -> Vec<u8> {
    let mut v = sector.to_le_bytes().to_vec();
    v.extend_from_slice(&num.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v
}

#[test]
fn flush_get_id_and_unsupported_types() {
    let mut d = Driver::new(BlockConfig {
        serial: "vmk-serial-0123456789-too-long".into(),
        ..Default::default()
    });
    d.init();
    let f0 = d.disk.flushes();
    let r = d.blk(VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    assert_eq!((r.status, r.used_len), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(d.disk.flushes(), f0 + 1);
    let r = d.blk(VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!(r.status, VIRTIO_BLK_S_OK);
    assert_eq!(r.used_len, 21);
    assert_eq!(&r.data[..], b"vmk-serial-012345678");
    // A short serial is NUL padded; a short buffer gets only what fits.
    let mut d = Driver::new(BlockConfig {
        serial: "abc".into(),
        ..Default::default()
    });
    d.init();
    let r = d.blk(VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!(&r.data[..], b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    let before = d.snapshot();
    let r = d.blk(VIRTIO_BLK_T_GET_ID, 0, &[], 2);
    assert_eq!((r.status, r.used_len, &r.data[..]), (0, 3, &b"ab"[..]));
    let _ = before;
    for ty in [2, 3, 5, 10, 14, 15, 16, 0xdead_beef] {
        let r = d.blk(ty, 0, &[0; 512], 512);
        assert_eq!(r.status, VIRTIO_BLK_S_UNSUPP, "type {ty}");
        assert_eq!(r.used_len, 1);
    }
}

#[test]
fn discard_and_write_zeroes() {
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    let zero = vec![0u8; 4096];
    // Discard 8 sectors at 16 and 4 at 100 in one request.
    let mut segs = discard_seg(16, 8, 0);
    segs.extend(discard_seg(100, 4, 0));
    assert_eq!(
        d.blk(VIRTIO_BLK_T_DISCARD, 0, &segs, 0).status,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(d.disk.bytes(16 * 512, 4096), zero);
    assert_eq!(d.disk.bytes(100 * 512, 2048), zero[..2048]);
    assert_ne!(d.disk.bytes(24 * 512, 512), zero[..512]);
    // Write zeroes with and without unmap.
    for (s, flags) in [(200u64, 0u32), (300, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)] {
        let r = d.blk(VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard_seg(s, 8, flags), 0);
        assert_eq!(r.status, VIRTIO_BLK_S_OK);
        assert_eq!(d.disk.bytes(s * 512, 4096), zero);
    }
    let untouched = d.disk.bytes(400 * 512, 4096);
    // Unmap on a discard, unknown flags: unsupported, nothing done.
    let r = d.blk(VIRTIO_BLK_T_DISCARD, 0, &discard_seg(400, 8, 1), 0);
    assert_eq!(r.status, VIRTIO_BLK_S_UNSUPP);
    let r = d.blk(VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard_seg(400, 8, 2), 0);
    assert_eq!(r.status, VIRTIO_BLK_S_UNSUPP);
    // Past the end, too long, too many segments, ragged segment list, empty: IOERR.
    for segs in [
        discard_seg(DISK_SECTORS - 4, 8, 0),
        discard_seg(u64::MAX / 256, 8, 0),
        discard_seg(400, (1 << 22) + 1, 0),
        (0..33).flat_map(|i| discard_seg(400 + i, 1, 0)).collect(),
        discard_seg(400, 8, 0)[..12].to_vec(),
        Vec::new(),
    ] {
        let r = d.blk(VIRTIO_BLK_T_WRITE_ZEROES, 0, &segs, 0);
        assert_eq!(r.status, VIRTIO_BLK_S_IOERR, "{segs:?}");
    }
    assert_eq!(d.disk.bytes(400 * 512, 4096), untouched);
    // Without the features negotiated: unsupported.
    let mut d = Driver::new(BlockConfig::default());
    d.init_with(!(VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES), 16);
    for ty in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        let r = d.blk(ty, 0, &discard_seg(0, 8, 0), 0);
        assert_eq!(r.status, VIRTIO_BLK_S_UNSUPP);
    }
}

#[test]
fn bad_requests_fail_with_ioerr_and_touch_nothing_else() {
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    let disk = d.disk.bytes(0, DISK_SECTORS * 512);
    let cases: Vec<(&str, u32, u64, u32)> = vec![
        ("sector past the end", VIRTIO_BLK_T_IN, DISK_SECTORS, 512),
        ("runs past the end", VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 1024),
        (
            "sector * 512 overflows",
            VIRTIO_BLK_T_IN,
            u64::MAX / 256,
            512,
        ),
        ("sector u64::MAX", VIRTIO_BLK_T_OUT, u64::MAX, 512),
        ("not whole sectors", VIRTIO_BLK_T_IN, 0, 100),
        ("not whole sectors (write)", VIRTIO_BLK_T_OUT, 0, 513),
    ];
    for (what, ty, sector, len) in cases {
        let before = d.snapshot();
        let hdr = d.header(ty, sector);
        let data = d.alloc(u64::from(len));
        let st = d.status_byte();
        let w = ty == VIRTIO_BLK_T_IN;
        let before2 = d.snapshot();
        let r = d.run(
            &[(hdr, 16, false), (data, len, w), (st, 1, true)],
            false,
            st,
            data,
            0,
        );
        assert_eq!(r.status, VIRTIO_BLK_S_IOERR, "{what}");
        assert_eq!(r.used_len, 1, "{what}");
        assert_only_changed(
            &before2,
            &d.snapshot(),
            &[
                (st, 1),
                used_ring(d.vq.size),
                (DESC, 0x1000),
                (AVAIL, 0x1000),
            ],
        );
        let _ = before;
    }
    // Short header, zero-length header, header in an MMIO hole.
    for (hdr_addr, hdr_len) in [(None, 8u32), (None, 0), (Some(HOLE), 16)] {
        let hdr = hdr_addr.unwrap_or_else(|| d.header(VIRTIO_BLK_T_IN, 0));
        let data = d.alloc(512);
        let st = d.status_byte();
        let before = d.snapshot();
        let r = d.run(
            &[(hdr, hdr_len, false), (data, 512, true), (st, 1, true)],
            false,
            st,
            data,
            0,
        );
        assert_eq!(
            r.status, VIRTIO_BLK_S_IOERR,
            "header {hdr_addr:?}+{hdr_len}"
        );
        assert_only_changed(
            &before,
            &d.snapshot(),
            &[
                (st, 1),
                used_ring(d.vq.size),
                (DESC, 0x1000),
                (AVAIL, 0x1000),
            ],
        );
    }
    // Data into an MMIO hole, data running off the end of RAM, data at a wrapping address;
    // one good buffer first: nothing of it may be written either.
    for bad in [
        (HOLE, 512u32),
        (RAM + RAM_SIZE - 256, 512),
        (u64::MAX - 255, 512),
    ] {
        let hdr = d.header(VIRTIO_BLK_T_IN, 0);
        let good = d.alloc(512);
        let st = d.status_byte();
        let before = d.snapshot();
        let r = d.run(
            &[
                (hdr, 16, false),
                (good, 512, true),
                (bad.0, bad.1, true),
                (st, 1, true),
            ],
            false,
            st,
            good,
            0,
        );
        assert_eq!(r.status, VIRTIO_BLK_S_IOERR, "{bad:x?}");
        assert_only_changed(
            &before,
            &d.snapshot(),
            &[
                (st, 1),
                used_ring(d.vq.size),
                (DESC, 0x1000),
                (AVAIL, 0x1000),
            ],
        );
        // OUT from there: nothing reaches the disk.
        let hdr = d.header(VIRTIO_BLK_T_OUT, 0);
        let st = d.status_byte();
        let r = d.run(
            &[
                (hdr, 16, false),
                (good, 512, false),
                (bad.0, bad.1, false),
                (st, 1, true),
            ],
            false,
            st,
            st,
            0,
        );
        assert_eq!(r.status, VIRTIO_BLK_S_IOERR);
    }
    assert_eq!(d.disk.bytes(0, DISK_SECTORS * 512), disk, "disk untouched");
    assert!(!d.needs_reset());
    // Backend errors.
    d.disk.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        d.blk(VIRTIO_BLK_T_IN, 0, &[], 512).status,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        d.blk(VIRTIO_BLK_T_OUT, 0, &[1; 512], 0).status,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        d.blk(VIRTIO_BLK_T_FLUSH, 0, &[], 0).status,
        VIRTIO_BLK_S_IOERR
    );
    let r = d.blk(VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard_seg(0, 1, 0), 0);
    assert_eq!(r.status, VIRTIO_BLK_S_IOERR);
    d.disk.fail.store(false, Ordering::SeqCst);
    assert_eq!(d.blk(VIRTIO_BLK_T_IN, 0, &[], 512).status, VIRTIO_BLK_S_OK);
}

#[test]
fn large_request_through_the_bounce_buffer() {
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    let data = sector_data(0, 300 << 10, 5);
    assert_eq!(
        d.blk(VIRTIO_BLK_T_OUT, 64, &data, 0).status,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(d.disk.bytes(64 * 512, data.len() as u64), data);
    let r = d.blk(VIRTIO_BLK_T_IN, 64, &[], data.len() as u32);
    assert_eq!(r.status, VIRTIO_BLK_S_OK);
    assert!(r.data == data);
}

#[test]
fn direct_descriptors_then_an_indirect_one() {
    // virtio 1.2 §2.7.5.3.2: zero or more direct descriptors followed by one indirect one.
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    let hdr = d.header(VIRTIO_BLK_T_IN, 2);
    let data = d.alloc(1024);
    let st = d.status_byte();
    let table = INDIRECT + 0x800;
    d.write_desc(table, 0, data, 1024, 2 | 1, 1);
    d.write_desc(table, 1, st, 1, 2, 0);
    d.write_desc(DESC, 0, hdr, 16, 1, 1);
    d.write_desc(DESC, 1, table, 32, 4 | 2, 0); // WRITE on the pointer is ignored
    d.vq.free.retain(|&i| i > 1);
    d.vq.chains.insert(0, vec![0, 1]);
    d.publish(0);
    d.kick();
    assert_eq!(d.take_used(), vec![(0, 1025)]);
    let mut back = vec![0u8; 1024];
    d.mem.read(data, &mut back).unwrap();
    assert_eq!(back, d.disk.bytes(1024, 1024));
}

#[test]
fn write_through_when_flush_not_negotiated() {
    let mut d = Driver::new(BlockConfig::default());
    d.init_with(!VIRTIO_BLK_F_FLUSH, 16);
    let f0 = d.disk.flushes();
    assert_eq!(d.blk(VIRTIO_BLK_T_OUT, 0, &[1; 512], 0).status, 0);
    assert_eq!(d.disk.flushes(), f0 + 1, "each write is made stable");
    assert_eq!(d.blk(VIRTIO_BLK_T_IN, 0, &[], 512).status, 0);
    assert_eq!(d.disk.flushes(), f0 + 1, "reads are not flushed");
    // Write-back with F_FLUSH: only FLUSH flushes.
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    let f0 = d.disk.flushes();
    assert_eq!(d.blk(VIRTIO_BLK_T_OUT, 0, &[1; 512], 0).status, 0);
    assert_eq!(d.disk.flushes(), f0);
    assert_eq!(d.blk(VIRTIO_BLK_T_FLUSH, 0, &[], 0).status, 0);
    assert_eq!(d.disk.flushes(), f0 + 1);
}

// ---------------------------------------------------------------------------------------
// Notification suppression and indices

#[test]
fn event_idx_suppresses_used_notifications() {
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    assert_ne!(d.features & VIRTIO_F_RING_EVENT_IDX, 0);
    let flush = |d: &mut Driver| {
        let hdr = d.header(VIRTIO_BLK_T_FLUSH, 0);
        let st = d.status_byte();
        d.submit(&[(hdr, 16, false), (st, 1, true)], false);
        d.kick();
    };
    // The first completion always notifies.
    flush(&mut d);
    assert!(d.irq.level());
    d.interrupt();
    d.take_used();
    // used_event = 3: no interrupt until used.idx reaches 4.
    d.set_u16(AVAIL + 4 + 2 * u64::from(d.vq.size), 3);
    flush(&mut d);
    flush(&mut d);
    assert!(!d.irq.level(), "used.idx 3 has not passed used_event 3");
    assert_eq!(d.rd(0x060), 0);
    flush(&mut d);
    assert!(d.irq.level(), "used.idx 4 passed used_event 3");
    d.interrupt();
    assert_eq!(d.take_used().len(), 3);
    assert_eq!(d.irq.rises(), 2);
    // The device publishes where it wants the next kick: avail_event = its next index.
    assert_eq!(d.u16_at(USED + 4 + 8 * u64::from(d.vq.size)), 4);
    assert_eq!(d.u16_at(USED), 0, "used.flags stays 0");
}

#[test]
fn no_interrupt_flag_without_event_idx() {
    let mut d = Driver::new(BlockConfig::default());
    d.init_with(!VIRTIO_F_RING_EVENT_IDX, 16);
    d.set_u16(AVAIL, 1); // VIRTQ_AVAIL_F_NO_INTERRUPT
    let hdr = d.header(VIRTIO_BLK_T_FLUSH, 0);
    let st = d.status_byte();
    d.submit(&[(hdr, 16, false), (st, 1, true)], false);
    assert!(
        d.kick(),
        "without EVENT_IDX the device never suppresses kicks"
    );
    assert!(!d.irq.level());
    assert_eq!(d.take_used().len(), 1);
    d.set_u16(AVAIL, 0);
    let r = d.blk(VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    assert_eq!(r.status, 0);
    assert_eq!(d.irq.rises(), 1);
}

#[test]
fn indices_wrap_around() {
    for event_idx in [true, false] {
        let mut d = Driver::new(BlockConfig::default());
        let want = if event_idx {
            u64::MAX
        } else {
            !VIRTIO_F_RING_EVENT_IDX
        };
        d.init_with(want, 4);
        let hdr = d.header(VIRTIO_BLK_T_FLUSH, 0);
        let st = d.status_byte();
        let n = 65536 + 50;
        for i in 0..n {
            if event_idx {
                d.enable_cb();
            }
            d.mem.write(st, &[0xff]).unwrap();
            let head = d.submit(&[(hdr, 16, false), (st, 1, true)], i % 3 == 0);
            assert!(d.kick());
            assert!(d.irq.level(), "request {i}: interrupt");
            assert_eq!(d.interrupt(), interrupt::USED_BUFFER);
            assert_eq!(d.take_used(), vec![(u32::from(head), 1)], "request {i}");
            let mut s = [0u8];
            d.mem.read(st, &mut s).unwrap();
            assert_eq!(s[0], VIRTIO_BLK_S_OK);
            d.indirect_next = INDIRECT;
        }
        assert_eq!(d.u16_at(USED + 2), (n % 65536) as u16);
        assert_eq!(d.irq.rises(), n as u64);
        let dev = d.dev.lock().unwrap();
        assert_eq!(dev.queue(0).unwrap().next_avail(), (n % 65536) as u16);
        assert_eq!(dev.device().stats().ok, n as u64);
    }
}

#[test]
fn kicks_before_driver_ok_are_served_at_driver_ok() {
    let mut d = Driver::new(BlockConfig::default());
    assert!(d.negotiate(u64::MAX));
    d.setup_queue(16, DESC, AVAIL, USED);
    let hdr = d.header(VIRTIO_BLK_T_IN, 0);
    let data = d.alloc(512);
    let st = d.status_byte();
    let before = d.snapshot();
    d.submit(&[(hdr, 16, false), (data, 512, true), (st, 1, true)], false);
    d.wr(0x050, 0);
    let after_kick = d.snapshot();
    // Only the driver's own ring writes happened.
    assert_only_changed(&before, &after_kick, &[(DESC, 0x1000), (AVAIL, 0x1000)]);
    assert!(!d.irq.level());
    d.add_status(DRIVER_OK);
    assert_eq!(d.take_used().len(), 1);
    assert!(d.irq.level());
}

// ---------------------------------------------------------------------------------------
// Hostile chains and queues: DEVICE_NEEDS_RESET, never a panic, nothing written

/// Lays out a hostile situation with the driver, kicks, and checks the device went to
/// DEVICE_NEEDS_RESET with a config interrupt and touched no memory.
fn expect_needs_reset(
    what: &str,
    want: u64,
    expect: impl Fn(&QueueError) -> bool,
    setup: impl FnOnce(&mut Driver),
) {
    let mut d = Driver::new(BlockConfig::default());
    d.init_with(want, 16);
    let disk = d.disk.bytes(0, 64 << 10);
    setup(&mut d);
    let before = d.snapshot();
    d.wr(0x050, 0);
    let after = d.snapshot();
    assert!(d.needs_reset(), "{what}: no DEVICE_NEEDS_RESET");
    let err = d.dev.lock().unwrap().last_error().cloned();
    assert!(err.as_ref().is_some_and(&expect), "{what}: {err:?}");
    assert!(d.irq.level(), "{what}: no interrupt");
    assert_ne!(
        d.rd(0x060) & interrupt::CONFIG_CHANGE,
        0,
        "{what}: not a config interrupt"
    );
    // Nothing but (at most) avail_event in the used ring, and no used element.
    assert_eq!(d.u16_at(USED + 2), 0, "{what}: used.idx moved");
    assert_only_changed(&before, &after, &[(USED + 4 + 8 * 16, 2)]);
    assert_eq!(d.disk.bytes(0, 64 << 10), disk, "{what}: disk written");
    // Further kicks are ignored.
    d.interrupt();
    d.wr(0x050, 0);
    assert!(!d.irq.level(), "{what}");
    assert_eq!(before.len(), d.snapshot().len());
    // A reset brings the device back.
    d.init();
    let r = d.blk(VIRTIO_BLK_T_IN, 0, &[], 512);
    assert_eq!(r.status, VIRTIO_BLK_S_OK, "{what}: after reset");
    assert!(!d.needs_reset());
    eprintln!("{what}: {err:?}");
}

/// A well-formed IN request with its descriptors at 0, 1, 2 (header, data, status).
fn in_request(d: &mut Driver) -> (u64, u64, u64) {
    let hdr = d.header(VIRTIO_BLK_T_IN, 0);
    let data = d.alloc(512);
    let st = d.status_byte();
    d.write_desc(DESC, 0, hdr, 16, 1, 1);
    d.write_desc(DESC, 1, data, 512, 3, 2);
    d.write_desc(DESC, 2, st, 1, 2, 0);
    (hdr, data, st)
}

#[test]
fn hostile_chains_put_the_device_in_needs_reset() {
    let all = u64::MAX;
    expect_needs_reset(
        "head index >= queue size",
        all,
        |e| {
            matches!(
                e,
                QueueError::DescriptorIndex {
                    index: 16,
                    size: 16
                }
            )
        },
        |d| {
            in_request(d);
            d.publish(16);
        },
    );
    expect_needs_reset(
        "head index 0xffff",
        all,
        |e| matches!(e, QueueError::DescriptorIndex { index: 0xffff, .. }),
        |d| d.publish(0xffff),
    );
    expect_needs_reset(
        "next index >= queue size",
        all,
        |e| {
            matches!(
                e,
                QueueError::DescriptorIndex {
                    index: 99,
                    size: 16
                }
            )
        },
        |d| {
            in_request(d);
            d.write_desc(DESC, 1, RAM + 0x8000, 512, 3, 99);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "loop",
        all,
        |e| matches!(e, QueueError::ChainLoop { size: 16 }),
        |d| {
            in_request(d);
            d.write_desc(DESC, 2, RAM + 0x8000, 1, 3, 1);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "self loop",
        all,
        |e| matches!(e, QueueError::ChainLoop { .. }),
        |d| {
            d.write_desc(DESC, 5, RAM + 0x8000, 16, 1, 5);
            d.publish(5);
        },
    );
    expect_needs_reset(
        "indirect inside indirect",
        all,
        |e| matches!(e, QueueError::NestedIndirect),
        |d| {
            let t = INDIRECT;
            d.write_desc(t, 0, RAM + 0x8000, 16, 1, 1);
            d.write_desc(t, 1, INDIRECT + 0x100, 32, 4, 0);
            d.write_desc(DESC, 0, t, 32, 4, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "indirect with NEXT",
        all,
        |e| matches!(e, QueueError::IndirectWithNext),
        |d| {
            d.write_desc(DESC, 0, INDIRECT, 32, 4 | 1, 1);
            d.publish(0);
        },
    );
    for len in [0u32, 24, 17 * 16 * 16, !15] {
        expect_needs_reset(
            &format!("indirect table of {len} bytes"),
            all,
            |e| matches!(e, QueueError::IndirectTableLength { .. }),
            |d| {
                d.write_desc(DESC, 0, INDIRECT, len, 4, 0);
                d.publish(0);
            },
        );
    }
    expect_needs_reset(
        "indirect table outside RAM",
        all,
        |e| matches!(e, QueueError::Memory { .. }),
        |d| {
            d.write_desc(DESC, 0, RAM + RAM_SIZE - 16, 32, 4, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "indirect table at a wrapping address",
        all,
        |e| matches!(e, QueueError::Memory { .. }),
        |d| {
            d.write_desc(DESC, 0, u64::MAX - 15, 32, 4, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "loop inside an indirect table",
        all,
        |e| matches!(e, QueueError::ChainLoop { size: 2 }),
        |d| {
            d.write_desc(INDIRECT, 0, RAM + 0x8000, 16, 1, 1);
            d.write_desc(INDIRECT, 1, RAM + 0x8000, 16, 1, 0);
            d.write_desc(DESC, 0, INDIRECT, 32, 4, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "next past an indirect table",
        all,
        |e| matches!(e, QueueError::DescriptorIndex { index: 2, size: 2 }),
        |d| {
            d.write_desc(INDIRECT, 0, RAM + 0x8000, 16, 1, 2);
            d.write_desc(DESC, 0, INDIRECT, 32, 4, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "indirect not negotiated",
        !VIRTIO_F_RING_INDIRECT_DESC,
        |e| matches!(e, QueueError::IndirectNotNegotiated),
        |d| {
            d.write_desc(INDIRECT, 0, RAM + 0x8000, 16, 0, 0);
            d.write_desc(DESC, 0, INDIRECT, 16, 4, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "available index a queue and more ahead",
        all,
        |e| {
            matches!(
                e,
                QueueError::AvailIndex {
                    avail_idx: 17,
                    next_avail: 0,
                    size: 16
                }
            )
        },
        |d| {
            in_request(d);
            d.set_u16(AVAIL + 4, 0);
            d.set_u16(AVAIL + 2, 17);
        },
    );
    expect_needs_reset(
        "no device-writable status byte",
        all,
        |e| matches!(e, QueueError::NoStatus),
        |d| {
            let hdr = d.header(VIRTIO_BLK_T_OUT, 0);
            let data = d.alloc(512);
            d.write_desc(DESC, 0, hdr, 16, 1, 1);
            d.write_desc(DESC, 1, data, 512, 0, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "only a zero-length writable descriptor",
        all,
        |e| matches!(e, QueueError::NoStatus),
        |d| {
            let hdr = d.header(VIRTIO_BLK_T_FLUSH, 0);
            d.write_desc(DESC, 0, hdr, 16, 1, 1);
            d.write_desc(DESC, 1, RAM + 0x8000, 0, 2, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "status byte in an MMIO hole",
        all,
        |e| matches!(e, QueueError::NoStatus),
        |d| {
            in_request(d);
            d.write_desc(DESC, 2, HOLE, 1, 2, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "status byte past the end of RAM",
        all,
        |e| matches!(e, QueueError::NoStatus),
        |d| {
            in_request(d);
            d.write_desc(DESC, 2, RAM + RAM_SIZE, 1, 2, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "chain of more than 4 GiB",
        all,
        |e| matches!(e, QueueError::ChainTooBig),
        |d| {
            in_request(d);
            d.write_desc(DESC, 1, RAM + 0x8000, u32::MAX, 3, 2);
            d.write_desc(DESC, 2, RAM + 0x9000, 2, 2, 0);
            d.publish(0);
        },
    );
    expect_needs_reset(
        "readable after writable",
        all,
        |e| matches!(e, QueueError::ReadableAfterWritable),
        |d| {
            in_request(d);
            d.write_desc(DESC, 2, RAM + 0x9000, 1, 0, 0);
            d.publish(0);
        },
    );
}

#[test]
fn bad_queue_setup_puts_the_device_in_needs_reset() {
    let cases: [(&str, u16, u64, u64, u64); 7] = [
        ("size not a power of two", 12, DESC, AVAIL, USED),
        ("size above QueueNumMax", 512, DESC, AVAIL, USED),
        ("misaligned descriptor table", 16, DESC + 8, AVAIL, USED),
        ("misaligned used ring", 16, DESC, AVAIL, USED + 2),
        (
            "used ring past the end of RAM",
            16,
            DESC,
            AVAIL,
            RAM + RAM_SIZE - 64,
        ),
        ("available ring in an MMIO hole", 16, DESC, HOLE, USED),
        (
            "descriptor table at a wrapping address",
            16,
            !15,
            AVAIL,
            USED,
        ),
    ];
    for (what, size, desc, avail, used) in cases {
        let mut d = Driver::new(BlockConfig::default());
        assert!(d.negotiate(u64::MAX));
        let before = d.snapshot();
        d.wr(0x030, 0);
        d.wr(0x038, u32::from(size));
        for (reg, a) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
            d.wr(reg, a as u32);
            d.wr(reg + 4, (a >> 32) as u32);
        }
        d.wr(0x044, 1);
        assert!(d.needs_reset(), "{what}");
        assert_eq!(d.rd(0x044), 0, "{what}: queue not started");
        assert!(!d.irq.level(), "{what}: no interrupt before DRIVER_OK");
        d.add_status(DRIVER_OK);
        assert!(d.irq.level(), "{what}: config interrupt at DRIVER_OK");
        assert_eq!(d.rd(0x060), interrupt::CONFIG_CHANGE);
        d.wr(0x050, 0);
        assert_only_changed(&before, &d.snapshot(), &[]);
    }
    // Size 0 (never written by Linux, but a guest may).
    let mut d = Driver::new(BlockConfig::default());
    assert!(d.negotiate(u64::MAX));
    d.wr(0x038, 0);
    d.wr(0x044, 1);
    assert!(d.needs_reset());
}

#[test]
fn queue_registers_are_frozen_while_ready() {
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    d.wr(0x038, 4);
    d.wr(0x080, 0x1234_0000);
    d.wr(0x0a0, 0);
    {
        let dev = d.dev.lock().unwrap();
        let q = dev.queue(0).unwrap();
        assert_eq!((q.size(), q.desc_table(), q.used_ring()), (128, DESC, USED));
    }
    assert_eq!(d.blk(VIRTIO_BLK_T_IN, 0, &[], 512).status, 0);
    // Linux's vm_del_vq: QueueReady = 0 and read back.
    d.wr(0x030, 0);
    d.wr(0x044, 0);
    assert_eq!(d.rd(0x044), 0);
    // A stopped queue is not used.
    let hdr = d.header(VIRTIO_BLK_T_FLUSH, 0);
    let st = d.status_byte();
    d.submit(&[(hdr, 16, false), (st, 1, true)], false);
    d.wr(0x050, 0);
    assert!(d.take_used().is_empty());
}

// ---------------------------------------------------------------------------------------
// Reset, config changes, durability

#[test]
fn reset_drops_queue_state_and_flushes() {
    let mut d = Driver::new(BlockConfig::default());
    d.init();
    assert_eq!(d.blk(VIRTIO_BLK_T_OUT, 0, &[7; 512], 0).status, 0);
    let hdr = d.header(VIRTIO_BLK_T_FLUSH, 0);
    let st = d.status_byte();
    d.submit(&[(hdr, 16, false), (st, 1, true)], false);
    d.kick();
    assert!(d.irq.level());
    let f0 = d.disk.flushes();
    d.wr(0x070, 0);
    assert_eq!(d.status(), 0);
    assert!(!d.irq.level(), "reset lowers the line");
    assert_eq!(d.rd(0x060), 0);
    d.wr(0x030, 0);
    assert_eq!(d.rd(0x044), 0, "QueueReady cleared");
    assert_eq!(d.rd(0x034), 256);
    assert!(d.disk.flushes() > f0, "reset flushes the backend");
    {
        let dev = d.dev.lock().unwrap();
        let q = dev.queue(0).unwrap();
        assert_eq!((q.next_avail(), q.next_used(), q.desc_table()), (0, 0, 0));
        assert_eq!(dev.driver_features(), 0);
    }
    // Kicks after reset do nothing.
    d.wr(0x050, 0);
    assert!(!d.irq.level());
    // Linux re-probes: everything starts from index 0 again.
    d.init();
    assert_eq!(d.blk(VIRTIO_BLK_T_IN, 0, &[], 512).data, vec![7; 512]);
    assert_eq!(d.u16_at(USED + 2), 1);
}

#[test]
fn dropping_the_device_flushes_the_backend() {
    let disk = SharedDisk::new(64);
    let mut d = Driver::with_disk(BlockConfig::default(), disk.clone());
    d.init();
    assert_eq!(d.blk(VIRTIO_BLK_T_OUT, 0, &[9; 512], 0).status, 0);
    let f0 = disk.flushes();
    drop(d);
    assert!(disk.flushes() > f0, "drop flushes");
    assert_eq!(disk.bytes(0, 512), vec![9; 512]);
}

#[test]
fn config_change_notification() {
    let mut d = Driver::new(BlockConfig::default());
    let g0 = d.rd(0x0fc);
    d.dev.lock().unwrap().config_changed();
    assert_ne!(d.rd(0x0fc), g0);
    assert!(!d.irq.level(), "no notification before DRIVER_OK");
    d.init();
    let g1 = d.rd(0x0fc);
    d.dev.lock().unwrap().config_changed();
    assert_eq!(d.rd(0x0fc), g1.wrapping_add(1));
    assert!(d.irq.level());
    assert_eq!(d.interrupt(), interrupt::CONFIG_CHANGE);
    assert!(!d.irq.level());
}

#[test]
fn raw_file_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    let mut b = RawFileBackend::open(&path, false).unwrap();
    assert_eq!(b.size(), 1 << 20);
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
    b.write_at(4096, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    b.read_at(4096, &mut back).unwrap();
    assert_eq!(back, data);
    b.flush().unwrap();
    // Zeroing and discarding read back as zeros (hole punching or written zeros).
    b.write_zeroes(4096, 4096).unwrap();
    b.write_zeroes_unmap(8192, 8192).unwrap();
    b.discard(16384, 4096).unwrap();
    b.read_at(4096, &mut back).unwrap();
    assert!(back[..4096 * 4].iter().all(|&x| x == 0));
    assert_eq!(back[4096 * 4..], data[4096 * 4..]);
    // Unaligned ranges too.
    b.write_zeroes(4096 * 6 + 100, 50).unwrap();
    b.read_at(4096 * 6, &mut back[..4096]).unwrap();
    assert!(back[100..150].iter().all(|&x| x == 0));
    assert_eq!(back[150..4096], data[4096 * 5 + 150..4096 * 6]);
    // Out of range.
    assert!(b.read_at((1 << 20) - 10, &mut [0; 20]).is_err());
    assert!(b.write_at(u64::MAX - 2, &[0; 20]).is_err());
    assert!(b.discard(1 << 20, 1).is_err());
    assert!(b.write_zeroes(u64::MAX, 2).is_err());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        1 << 20,
        "size kept"
    );
    // Read-only: writes fail.
    let mut ro = RawFileBackend::open(&path, true).unwrap();
    ro.read_at(0, &mut [0; 512]).unwrap();
    assert!(ro.write_at(0, &[1; 512]).is_err());
    assert!(RawFileBackend::open(dir.path().join("missing"), false).is_err());
}

#[test]
fn raw_file_disk_keeps_data_across_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0u8; 256 << 10]).unwrap();
    let data = sector_data(0, 8192, 42);
    {
        let mem = guest_memory();
        let irq = Arc::new(LevelIrq::new());
        let blk = VirtioBlk::new(
            Box::new(RawFileBackend::open(&path, false).unwrap()),
            BlockConfig::default(),
        );
        assert_eq!(blk.capacity(), 512);
        let mut d = Driver::new(BlockConfig::default());
        d.b.mem = mem.clone();
        d.b.irq = irq.clone();
        d.b.dev = Arc::new(Mutex::new(VirtioMmio::new(
            blk,
            mem,
            irq as Arc<dyn IrqLine>,
        )));
        d.init();
        // The guest writes and never flushes.
        assert_eq!(d.blk(VIRTIO_BLK_T_OUT, 100, &data, 0).status, 0);
        assert_eq!(d.blk(VIRTIO_BLK_T_IN, 100, &[], 8192).data, data);
        assert_eq!(
            d.blk(VIRTIO_BLK_T_IN, 512, &[], 512).status,
            VIRTIO_BLK_S_IOERR
        );
    }
    let disk = std::fs::read(&path).unwrap();
    assert_eq!(disk[100 * 512..100 * 512 + 8192], data[..]);
}

#[test]
fn through_the_bus_and_the_plic() {
    use crate::layout::*;
    use crate::{context_for_hart, MmioBus, Plic};
    let lines: Vec<Arc<LevelIrq>> = (0..2).map(|_| Arc::new(LevelIrq::new())).collect();
    let ctx: Vec<Arc<dyn IrqLine>> = lines
        .iter()
        .map(|l| l.clone() as Arc<dyn IrqLine>)
        .collect();
    let plic = Plic::new(PLIC_NUM_SOURCES, ctx).unwrap();
    let mem = guest_memory();
    let disk = SharedDisk::new(64);
    let slot = 2;
    let irq: Arc<dyn IrqLine> = Arc::new(plic.source(virtio_irq(slot)).unwrap());
    let blk = VirtioBlk::new(Box::new(disk.clone()), BlockConfig::default());
    let dev = Arc::new(Mutex::new(VirtioMmio::new(blk, mem.clone(), irq)));
    let mut bus = MmioBus::new();
    bus.register("plic", PLIC_BASE, PLIC_SIZE, Arc::new(Mutex::new(plic)))
        .unwrap();
    bus.register("virtio-blk", virtio_base(slot), VIRTIO_SIZE, dev.clone())
        .unwrap();
    let base = virtio_base(slot);
    let s_ctx = u64::from(context_for_hart(0, true) as u32);
    let src = virtio_irq(slot);
    assert!(bus.write(PLIC_BASE + 4 * u64::from(src), 4, 1));
    assert!(bus.write(PLIC_BASE + 0x2000 + 0x80 * s_ctx, 4, 1 << src));
    assert_eq!(bus.read(base, 4), Some(0x7472_6976));
    // Drive it with the fake driver, whose registers go to the same device.
    let mut d = Driver::with_disk(BlockConfig::default(), disk);
    d.b.mem = mem;
    d.b.dev = dev;
    d.init();
    let hdr = d.header(VIRTIO_BLK_T_IN, 1);
    let data = d.alloc(512);
    let st = d.status_byte();
    d.submit(&[(hdr, 16, false), (data, 512, true), (st, 1, true)], false);
    d.kick();
    assert!(lines[1].level(), "S-mode context of hart 0 interrupted");
    let claim = PLIC_BASE + 0x20_0004 + 0x1000 * s_ctx;
    assert_eq!(bus.read(claim, 4), Some(u64::from(src)));
    // The handler: InterruptStatus, ACK, used ring, complete.
    assert_eq!(bus.read(base + 0x60, 4), Some(1));
    assert!(bus.write(base + 0x64, 4, 1));
    assert_eq!(d.take_used().len(), 1);
    assert!(bus.write(claim, 4, u64::from(src)));
    assert!(!lines[1].level());
    assert_eq!(bus.read(claim, 4), Some(0));
}

// ---------------------------------------------------------------------------------------
// The fuzz target's logic

use crate::fuzzing::Rng;

#[test]
fn pseudo_random_virtio_blk_queue() {
    let mut rng = Rng(0x0b1c_5eed_f00d_cafe);
    let mut total = [0usize; 10];
    for _ in 0..300 {
        let len = 64 + (rng.next() % 2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let s = fuzzing::run(&data);
        for (t, c) in total.iter_mut().zip([
            s.ops,
            s.cov.live,
            s.status_ok,
            s.status_ioerr,
            s.status_unsupp,
            s.cov.needs_reset,
            s.cov.interrupts,
            s.cov.memory_checks,
            s.data_verified,
            s.indirect,
        ]) {
            *t += c;
        }
    }
    eprintln!("ops, live, ok, ioerr, unsupp, needs_reset, interrupts, memory checks, verified, indirect: {total:?}");
    let [ops, live, ok, ioerr, unsupp, needs_reset, interrupts, checks, verified, indirect] = total;
    assert!(ops > 20_000, "{total:?}");
    assert!(live > 1_000, "{total:?}");
    assert!(ok > 300, "{total:?}");
    assert!(ioerr > 100, "{total:?}");
    assert!(unsupp > 20, "{total:?}");
    assert!(needs_reset > 100, "{total:?}");
    assert!(interrupts > 300, "{total:?}");
    assert!(checks > 300, "{total:?}");
    assert!(verified > 100, "{total:?}");
    assert!(indirect > 100, "{total:?}");
}

#[test]
fn fuzz_input_edge_cases() {
    assert_eq!(fuzzing::virtio_blk_queue(&[]), 0);
    fuzzing::virtio_blk_queue(&[0xff; 64]);
    fuzzing::virtio_blk_queue(&[0; 64]);
    let ramp: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    assert!(fuzzing::virtio_blk_queue(&ramp) > 10);
}
