//! The MMIO bus: guest physical ranges → devices.

use std::sync::{Arc, Mutex};

use vmk_memory::MmioRange;

use crate::{lock, DeviceError, MmioDevice};

/// A device as the bus holds it: shared, so several vCPU threads can dispatch to it, and so
/// the machine can keep its own handle (e.g. `Arc<Mutex<Uart>>` coerces to this).
pub type SharedDevice = Arc<Mutex<dyn MmioDevice>>;

struct Entry {
    base: u64,
    /// Exclusive end; `base < end`.
    end: u64,
    name: String,
    dev: SharedDevice,
}

/// Maps `[base, base + len)` ranges of guest physical addresses to devices.
///
/// Built once when the machine is set up (`register` takes `&mut self`), then shared read-only
/// by the vCPU threads (`read` / `write` take `&self`; put the bus in an `Arc`). Each device
/// has its own lock, so accesses to different devices run in parallel.
#[derive(Default)]
pub struct MmioBus {
    /// Sorted by base, non-overlapping.
    entries: Vec<Entry>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for e in &self.entries {
            l.entry(&format_args!("{} [{:#x}, {:#x})", e.name, e.base, e.end));
        }
        l.finish()
    }
}

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `dev`. `name` is used in error messages and
    /// [`MmioBus::device_at`]. Fails if the range is empty, wraps around the address space, or
    /// overlaps a range already registered.
    pub fn register(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        dev: SharedDevice,
    ) -> Result<(), DeviceError> {
        if len == 0 {
            return Err(DeviceError::EmptyRange {
                name: name.to_string(),
                base,
            });
        }
        let end = base
            .checked_add(len)
            .ok_or_else(|| DeviceError::RangeOverflow {
                name: name.to_string(),
                base,
                len,
            })?;
        // First entry that ends after our base: the only one that can overlap from below or
        // at our base; entries after it start at or after its end.
        let idx = self.entries.partition_point(|e| e.end <= base);
        if let Some(other) = self.entries.get(idx) {
            if other.base < end {
                return Err(DeviceError::Overlap {
                    name: name.to_string(),
                    base,
                    end,
                    other: other.name.clone(),
                    other_base: other.base,
                    other_end: other.end,
                });
            }
        }
        self.entries.insert(
            idx,
            Entry {
                base,
                end,
                name: name.to_string(),
                dev,
            },
        );
        Ok(())
    }

    /// The entry whose range holds all of `[addr, addr + size)`.
    fn find(&self, addr: u64, size: u8) -> Option<&Entry> {
        let idx = self.entries.partition_point(|e| e.end <= addr);
        let e = self.entries.get(idx)?;
        let last = addr.checked_add(u64::from(size.max(1)) - 1)?;
        (e.base <= addr && last < e.end).then_some(e)
    }

    /// A load from guest physical `addr`. `None` when no device covers all of
    /// `[addr, addr + size)` (the access straddles a device end, or nothing is there): the
    /// machine reports that to the guest as an access fault.
    pub fn read(&self, addr: u64, size: u8) -> Option<u64> {
        let e = self.find(addr, size)?;
        let v = lock(&e.dev).read(addr - e.base, size);
        Some(v)
    }

    /// A store to guest physical `addr`. Returns whether a device covered all of
    /// `[addr, addr + size)`.
    pub fn write(&self, addr: u64, size: u8, value: u64) -> bool {
        match self.find(addr, size) {
            Some(e) => {
                lock(&e.dev).write(addr - e.base, size, value);
                true
            }
            None => false,
        }
    }

    /// The registered ranges, sorted by base: what `GuestMemory::new` needs as MMIO holes.
    pub fn ranges(&self) -> Vec<MmioRange> {
        self.entries
            .iter()
            .map(|e| MmioRange {
                base: e.base,
                size: e.end - e.base,
            })
            .collect()
    }

    /// Name, base and length of the device that holds `addr`, if any.
    pub fn device_at(&self, addr: u64) -> Option<(&str, u64, u64)> {
        self.find(addr, 1)
            .map(|e| (e.name.as_str(), e.base, e.end - e.base))
    }

    /// [`MmioDevice::bad_accesses`] of every device, with its name (for diagnostics).
    pub fn bad_accesses(&self) -> Vec<(String, u64)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), lock(&e.dev).bad_accesses()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access; reads return `offset * 0x100 + size`.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, u8, Option<u64>)>,
    }

    impl MmioDevice for Probe {
        fn read(&mut self, offset: u64, size: u8) -> u64 {
            self.last = Some((offset, size, None));
            offset * 0x100 + u64::from(size)
        }
        fn write(&mut self, offset: u64, size: u8, value: u64) {
            self.last = Some((offset, size, Some(value)));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn dispatches_relative_offsets() {
        let a = probe();
        let b = probe();
        let mut bus = MmioBus::new();
        bus.register("a", 0x1000, 0x100, a.clone()).unwrap();
        bus.register("b", 0x2000, 0x1000, b.clone()).unwrap();
        assert_eq!(bus.read(0x1010, 4), Some(0x1004));
        assert_eq!(a.lock().unwrap().last, Some((0x10, 4, None)));
        assert!(bus.write(0x2ff8, 8, 0xdead));
        assert_eq!(b.lock().unwrap().last, Some((0xff8, 8, Some(0xdead))));
        assert_eq!(bus.device_at(0x2fff), Some(("b", 0x2000, 0x1000)));
    }

    #[test]
    fn misses_and_straddles_are_not_dispatched() {
        let a = probe();
        let mut bus = MmioBus::new();
        bus.register("a", 0x1000, 0x100, a.clone()).unwrap();
        assert_eq!(bus.read(0xfff, 1), None);
        assert_eq!(bus.read(0x1100, 1), None);
        assert_eq!(bus.read(0x10fc, 8), None, "straddles the end");
        assert!(!bus.write(0x10ff, 2, 0));
        assert_eq!(bus.read(u64::MAX, 8), None);
        assert_eq!(a.lock().unwrap().last, None);
        assert_eq!(bus.read(0x10f8, 8), Some(0xf808));
    }

    #[test]
    fn rejects_overlaps_with_a_clear_error() {
        let mut bus = MmioBus::new();
        bus.register("uart", 0x1000_0000, 0x100, probe()).unwrap();
        bus.register("virtio0", 0x1000_1000, 0x1000, probe())
            .unwrap();
        let err = bus.register("bad", 0x1000_00f0, 0x20, probe()).unwrap_err();
        assert!(matches!(err, DeviceError::Overlap { ref other, .. } if other == "uart"));
        let msg = err.to_string();
        assert!(
            msg.contains("bad") && msg.contains("uart") && msg.contains("0x10000100"),
            "{msg}"
        );
        // Covering a whole existing range, or starting inside the later one.
        assert!(bus.register("big", 0x0, 0x2000_0000, probe()).is_err());
        assert!(bus.register("in", 0x1000_1fff, 1, probe()).is_err());
        // Adjacent ranges are fine.
        bus.register("gap", 0x1000_0100, 0xf00, probe()).unwrap();
        assert!(matches!(
            bus.register("empty", 0x5000, 0, probe()),
            Err(DeviceError::EmptyRange { .. })
        ));
        assert!(matches!(
            bus.register("wrap", u64::MAX, 2, probe()),
            Err(DeviceError::RangeOverflow { .. })
        ));
        let r = bus.ranges();
        assert_eq!(
            r,
            vec![
                MmioRange {
                    base: 0x1000_0000,
                    size: 0x100
                },
                MmioRange {
                    base: 0x1000_0100,
                    size: 0xf00
                },
                MmioRange {
                    base: 0x1000_1000,
                    size: 0x1000
                },
            ]
        );
    }

    #[test]
    fn registration_order_does_not_matter() {
        let mut bus = MmioBus::new();
        for (i, base) in [0x5000u64, 0x1000, 0x3000, 0x2000, 0x4000]
            .iter()
            .enumerate()
        {
            bus.register(&format!("d{i}"), *base, 0x1000, probe())
                .unwrap();
        }
        let bases: Vec<u64> = bus.ranges().iter().map(|r| r.base).collect();
        assert_eq!(bases, vec![0x1000, 0x2000, 0x3000, 0x4000, 0x5000]);
        assert_eq!(bus.device_at(0x3abc).map(|d| d.0), Some("d2"));
        assert!(bus.register("x", 0x2800, 0x1000, probe()).is_err());
    }

    #[test]
    fn shared_between_threads() {
        let a = probe();
        let mut bus = MmioBus::new();
        bus.register("a", 0x1000, 0x100, a).unwrap();
        let bus = Arc::new(bus);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let bus = bus.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        assert!(bus.write(0x1000 + (i % 0x100), 1, i));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
