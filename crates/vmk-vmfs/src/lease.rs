//! Host liveness: delta leases in the heartbeat region (the algorithm of sanlock's delta
//! leases).
//!
//! Each host ID (1..=32) owns a 512-byte slot. Acquiring it: read the slot; if it says
//! "mounted", watch it for the lease timeout and give up if its timestamp changes (a live
//! host has it); write our record (new generation, random instance ID); wait twice the I/O
//! timeout; read it back: if it is still ours, nobody else raced us for it (a racer writes
//! within the I/O timeout of reading, so the later writer wins and the earlier one sees it).
//!
//! The holder renews every `renew_ms` (timestamp + 1), after checking the slot is still its
//! own. A host is **dead** for an observer when its timestamp has not changed for
//! `lease_timeout_ms` measured on the observer's own monotonic clock since the observer
//! first saw that value: no wall clocks are compared between hosts.
//!
//! Safety: a renewal that started at time t (holder's clock) lets the holder write until
//! t + lease_timeout - 2 * io_timeout ([`crate::volume::Fence`]); an observer first sees that
//! timestamp after t and declares death at the earliest lease_timeout after that, by which
//! time every write the holder issued has completed (I/O bounded by io_timeout).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Result, VmfsError};
use crate::format::*;
use crate::volume::{Fence, Volume};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Its heartbeat changed within the lease timeout.
    Alive,
    /// Not watched for a whole lease timeout yet: treated as alive.
    Unknown,
    /// Mounted, but the heartbeat has not changed for the lease timeout.
    Dead,
    /// Not mounted (never, cleanly unmounted, or that instance was replaced by a newer one).
    Gone,
}

#[derive(Clone, Default)]
struct Obs {
    slot: Option<HbSlot>,
    first_seen: Option<Instant>,
    changed: Option<Instant>,
}

/// What this host has seen of everybody's heartbeats.
pub(crate) struct Liveness {
    obs: Mutex<Vec<Obs>>,
    lease_timeout: Duration,
}

impl Liveness {
    pub fn new(lease_timeout_ms: u32) -> Liveness {
        Liveness {
            obs: Mutex::new(vec![Obs::default(); MAX_HOSTS as usize + 1]),
            lease_timeout: Duration::from_millis(lease_timeout_ms as u64),
        }
    }

    /// Reads the whole heartbeat region and records changes.
    pub fn scan(&self, vol: &Volume) -> Result<()> {
        let g = &vol.geo;
        let region = vol.read_vec(g.hb_off, SECTOR * MAX_HOSTS as usize)?;
        let now = Instant::now();
        let mut obs = self.obs.lock().unwrap_or_else(|p| p.into_inner());
        for h in 1..=MAX_HOSTS {
            let b = &region[(h as usize - 1) * SECTOR..h as usize * SECTOR];
            // A slot that fails its checksum is being rewritten (torn read) or garbage: it
            // does not count as a change either way.
            let Ok(slot) = HbSlot::decode(b, g.hb_slot(h), h) else {
                continue;
            };
            let o = &mut obs[h as usize];
            let changed = o.slot.as_ref().is_none_or(|s| {
                (s.timestamp, s.generation, s.instance, s.state)
                    != (slot.timestamp, slot.generation, slot.instance, slot.state)
            });
            if o.first_seen.is_none() {
                o.first_seen = Some(now);
            }
            if changed {
                o.changed = Some(now);
            }
            o.slot = Some(slot);
        }
        Ok(())
    }

    /// Is `host` in generation `gen` alive?
    pub fn state(&self, host: u32, gen: u64) -> HostState {
        let obs = self.obs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = obs.get(host as usize) else {
            return HostState::Gone;
        };
        let Some(s) = &o.slot else {
            return HostState::Unknown;
        };
        if s.generation < gen {
            // A lock record names a generation of `host` newer than the last slot we read:
            // it mounted after our last scan (slots are read every renewal). Not "gone": we
            // have not seen that instance yet. Taking it for gone let a host take a lock
            // that a just-mounted host had won a moment before (both opened a file
            // exclusively).
            return HostState::Unknown;
        }
        if s.state != HB_LIVE || s.generation != gen {
            return HostState::Gone;
        }
        let (Some(first), Some(changed)) = (o.first_seen, o.changed) else {
            return HostState::Unknown;
        };
        if changed.elapsed() >= self.lease_timeout {
            HostState::Dead
        } else if changed > first {
            HostState::Alive
        } else {
            HostState::Unknown
        }
    }

    pub fn slot(&self, host: u32) -> Option<HbSlot> {
        let obs = self.obs.lock().unwrap_or_else(|p| p.into_inner());
        obs.get(host as usize).and_then(|o| o.slot.clone())
    }
}

pub(crate) fn read_slot(vol: &Volume, host: u32) -> Result<HbSlot> {
    let off = vol.geo.hb_slot(host);
    vol.read_decode(off, SECTOR, |b| HbSlot::decode(b, off, host))
}

/// Acquires host ID `host`'s slot. Returns the new generation and instance ID.
pub(crate) fn acquire_slot(
    vol: &Volume,
    host: u32,
    who: &str,
    fence: &Fence,
) -> Result<(u64, [u8; 16])> {
    let h = &vol.hdr;
    let renew = Duration::from_millis(h.renew_ms as u64);
    let off = vol.geo.hb_slot(host);
    let first = read_slot(vol, host)?;
    if first.state == HB_LIVE {
        // Mounted by someone: alive unless the timestamp stays put for a lease timeout.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(h.lease_timeout_ms as u64) {
            std::thread::sleep(renew);
            let now = read_slot(vol, host)?;
            if (now.timestamp, now.instance, now.state)
                != (first.timestamp, first.instance, first.state)
            {
                return Err(VmfsError::HostIdInUse { host });
            }
        }
    }
    let instance = *uuid::Uuid::new_v4().as_bytes();
    let generation = first.generation + 1;
    let t0 = fence.now_ms();
    let mine = HbSlot {
        host,
        state: HB_LIVE,
        generation,
        instance,
        timestamp: 1,
        wall_ms: now_ms(),
        mounted_ms: now_ms(),
        who: who.to_string(),
    };
    vol.dev.write(&mine.encode(off), off)?;
    std::thread::sleep(Duration::from_millis(2 * h.io_timeout_ms as u64));
    let back = read_slot(vol, host)?;
    if back.instance != instance {
        return Err(VmfsError::HostIdInUse { host });
    }
    fence.extend(t0, grace_ms(vol));
    Ok((generation, instance))
}

/// How long after the start of a successful renewal this host may still write.
pub(crate) fn grace_ms(vol: &Volume) -> u64 {
    let h = &vol.hdr;
    (h.lease_timeout_ms as u64).saturating_sub(2 * h.io_timeout_ms as u64)
}

/// The renewal thread of a mounted host.
pub(crate) struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(
        vol: Arc<Volume>,
        fence: Arc<Fence>,
        live: Arc<Liveness>,
        host: u32,
        generation: u64,
        instance: [u8; 16],
    ) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vmfs-heartbeat-{host}"))
            .spawn(move || {
                let renew = Duration::from_millis(vol.hdr.renew_ms as u64);
                let off = vol.geo.hb_slot(host);
                let mut timestamp = 1u64;
                let mut next = Instant::now() + renew;
                while !st.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if next > now {
                        // Sleep in short steps so unmount does not wait a whole interval.
                        std::thread::sleep((next - now).min(Duration::from_millis(20)));
                        continue;
                    }
                    next += renew;
                    if next < Instant::now() {
                        next = Instant::now() + renew;
                    }
                    let t0 = fence.now_ms();
                    if fence.check().is_err() {
                        // Too late: others may already have declared us dead and taken our
                        // locks. Renewing now would bring a dead host back; stop for good.
                        fence.lose("the heartbeat could not be renewed within the lease".into());
                        return;
                    }
                    match read_slot(&vol, host) {
                        Ok(s) if s.instance == instance && s.generation == generation => {}
                        Ok(s) => {
                            fence.lose(format!(
                                "its heartbeat slot was taken by another instance (generation {}, {})",
                                s.generation, s.who
                            ));
                            return;
                        }
                        Err(_) => continue,
                    }
                    timestamp += 1;
                    let slot = HbSlot {
                        host,
                        state: HB_LIVE,
                        generation,
                        instance,
                        timestamp,
                        wall_ms: now_ms(),
                        mounted_ms: 0,
                        who: String::new(),
                    };
                    // Keep who/mounted from the slot as written at mount.
                    let slot = match live.slot(host) {
                        Some(s) if s.instance == instance => HbSlot { who: s.who, mounted_ms: s.mounted_ms, ..slot },
                        _ => slot,
                    };
                    if vol.dev.write(&slot.encode(off), off).is_ok() {
                        fence.extend(t0, grace_ms(&vol));
                    }
                    let _ = live.scan(&vol);
                }
            })
            .ok();
        Heartbeat { stop, thread }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop();
    }
}
