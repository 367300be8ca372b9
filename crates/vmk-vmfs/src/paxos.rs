//! On-disk locks: a Disk Paxos lease per resource (Gafni & Lamport, "Disk Paxos"; the
//! variant sanlock uses), correct on storage with plain reads and writes.
//!
//! A lock area is a leader sector plus one sector ("dblock") per host; each host writes only
//! its own dblock. To take the lock at version `lver + 1` (the leader says `lver`, and is
//! free or owned by a dead host), a host runs one ballot with a ballot number `mbal` larger
//! than any it has seen (unique: `k * 64 + host`):
//!
//! 1. write its dblock with `mbal`; read all dblocks; abort if any has a larger `mbal` for
//!    this version (or a later version exists);
//! 2. pick the value (owner, generation, time) of the dblock with the highest `bal` for this
//!    version, or its own if none; write its dblock with `bal = mbal` and that value; read
//!    all; abort on a larger `mbal`;
//! 3. the value is chosen. Disk Paxos guarantees every ballot of this version that gets
//!    here chose the same value, so exactly one host owns version `lver + 1`. The owner
//!    writes the leader (a copy of the decision, for cheap reads).
//!
//! Aborted ballots back off for a random time and start again from the leader. An owner is
//! alive while its delta lease is ([`crate::lease`]); a dead owner's lock is taken by the next
//! ballot, after its journal has been replayed ([`Locks::recover_host`]).
//!
//! Shared modes (as sanlock's shared leases): a host holding the leader writes a mode in its
//! own dblock (shared read-only or multi-writer) and then releases the leader. An exclusive
//! owner checks, once it holds the leader, that no live host has a mode set (and gives the
//! leader back if one has); a shared acquirer checks that no live host has the other mode.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{LockMode, Result, VmfsError};
use crate::format::*;
use crate::lease::{HostState, Liveness};
use crate::volume::Volume;

/// A lock this host holds.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub id: LockId,
    pub mode: LockMode,
    pub lver: u64,
}

/// Someone else has it.
#[derive(Clone, Debug)]
pub(crate) struct Busy {
    pub owner: u32,
    pub mode: LockMode,
    pub since_ms: u64,
    /// Held for a moment only (registering a shared mode): worth retrying at once.
    pub transient: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Value {
    owner: u32,
    gen: u64,
    since: u64,
}

pub(crate) struct Locks {
    pub vol: Arc<Volume>,
    pub host: u32,
    pub gen: u64,
    pub live: Arc<Liveness>,
    /// Locks held by this process (other threads of the same host must not get them too:
    /// on disk they all look like this host).
    held: Mutex<HashSet<LockId>>,
}

fn alive(s: HostState) -> bool {
    matches!(s, HostState::Alive | HostState::Unknown)
}

fn share_of(mode: LockMode) -> u8 {
    match mode {
        LockMode::Exclusive => SHARE_NONE,
        LockMode::SharedRead => SHARE_READ,
        LockMode::MultiWriter => SHARE_MULTI,
    }
}

fn mode_of_share(s: u8) -> LockMode {
    if s == SHARE_MULTI {
        LockMode::MultiWriter
    } else {
        LockMode::SharedRead
    }
}

impl Locks {
    pub fn new(vol: Arc<Volume>, host: u32, gen: u64, live: Arc<Liveness>) -> Locks {
        Locks {
            vol,
            host,
            gen,
            live,
            held: Mutex::new(HashSet::new()),
        }
    }

    pub fn read_area(&self, id: LockId) -> Result<(Leader, Vec<DBlock>)> {
        read_area(&self.vol, id)
    }

    fn write_dblock(&self, id: LockId, d: &DBlock) -> Result<()> {
        let off = self.vol.geo.lock(id) + self.host as u64 * SECTOR as u64;
        self.vol.write(off, &d.encode(off))
    }

    fn write_leader(&self, id: LockId, l: &Leader) -> Result<()> {
        let off = self.vol.geo.lock(id);
        self.vol.write(off, &l.encode(off))
    }

    /// One attempt to take `id` in `mode`: `Ok(Err(busy))` if a live host has it.
    pub fn try_acquire(
        &self,
        id: LockId,
        mode: LockMode,
    ) -> Result<std::result::Result<Held, Busy>> {
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.contains(&id) {
                return Ok(Err(Busy {
                    owner: self.host,
                    mode: LockMode::Exclusive,
                    since_ms: now_ms(),
                    transient: true,
                }));
            }
            held.insert(id);
        }
        let r = self.acquire_inner(id, mode);
        if !matches!(r, Ok(Ok(_))) {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        r
    }

    fn acquire_inner(&self, id: LockId, mode: LockMode) -> Result<std::result::Result<Held, Busy>> {
        let lock = self.vol.geo.lock_index(id);
        let mut rng = fastrand_seed(self.host);
        for attempt in 0..400u32 {
            if attempt > 0 {
                // Random backoff so two hosts that keep aborting each other's ballots desync.
                let ms = 1 + (xorshift(&mut rng) % (2 + attempt.min(20) as u64 * 2));
                std::thread::sleep(Duration::from_millis(ms));
            }
            let (leader, dbs) = self.read_area(id)?;
            if leader.owner != 0 {
                if leader.owner == self.host && leader.owner_gen == self.gen {
                    // A leader we wrote and whose release was lost (we are not holding it in
                    // this process): it is ours to take again.
                } else {
                    let st = self.live.state(leader.owner, leader.owner_gen);
                    if alive(st) {
                        return Ok(Err(Busy {
                            owner: leader.owner,
                            mode: LockMode::Exclusive,
                            since_ms: leader.since_ms,
                            transient: leader.mode == LEADER_TRANSIENT,
                        }));
                    }
                    if !matches!(id, LockId::Journal(_)) {
                        self.recover_host(leader.owner, leader.owner_gen)?;
                    }
                }
            }
            let lver = leader.lver + 1;
            if dbs.iter().any(|d| d.lver > lver) {
                continue;
            }
            let value = Value {
                owner: self.host,
                gen: self.gen,
                since: now_ms(),
            };
            let Some(chosen) = self.ballot(id, lock, lver, value, &dbs)? else {
                continue;
            };
            if chosen.owner == self.host && chosen.gen == self.gen {
                let lead = Leader {
                    lock,
                    owner: self.host,
                    owner_gen: self.gen,
                    lver,
                    since_ms: chosen.since,
                    mode: if mode == LockMode::Exclusive {
                        LEADER_EXCLUSIVE
                    } else {
                        LEADER_TRANSIENT
                    },
                };
                self.write_leader(id, &lead)?;
                let (_, dbs) = self.read_area(id)?;
                for d in &dbs {
                    if d.host == self.host || d.share_mode == SHARE_NONE {
                        continue;
                    }
                    let compatible = mode != LockMode::Exclusive && d.share_mode == share_of(mode);
                    if !compatible && alive(self.live.state(d.host, d.share_gen)) {
                        self.write_leader(
                            id,
                            &Leader {
                                owner: 0,
                                owner_gen: 0,
                                mode: 0,
                                ..lead.clone()
                            },
                        )?;
                        return Ok(Err(Busy {
                            owner: d.host,
                            mode: mode_of_share(d.share_mode),
                            since_ms: d.share_since_ms,
                            transient: false,
                        }));
                    }
                }
                if mode != LockMode::Exclusive {
                    let mut mine = dbs[self.host as usize - 1].clone();
                    mine.share_mode = share_of(mode);
                    mine.share_gen = self.gen;
                    mine.share_since_ms = chosen.since;
                    self.write_dblock(id, &mine)?;
                    self.write_leader(
                        id,
                        &Leader {
                            owner: 0,
                            owner_gen: 0,
                            mode: 0,
                            ..lead
                        },
                    )?;
                }
                return Ok(Ok(Held { id, mode, lver }));
            }
            let st = self.live.state(chosen.owner, chosen.gen);
            if alive(st) {
                return Ok(Err(Busy {
                    owner: chosen.owner,
                    mode: LockMode::Exclusive,
                    since_ms: chosen.since,
                    transient: false,
                }));
            }
            // The winner died before writing the leader: write it for them (unless someone
            // already moved on), then take the lock over on the next round.
            let (now, _) = self.read_area(id)?;
            if now.lver < lver {
                self.write_leader(
                    id,
                    &Leader {
                        lock,
                        owner: chosen.owner,
                        owner_gen: chosen.gen,
                        lver,
                        since_ms: chosen.since,
                        mode: LEADER_EXCLUSIVE,
                    },
                )?;
            }
        }
        Err(VmfsError::Invalid(format!(
            "lock {id:?}: gave up after 400 contended Disk Paxos ballots (too many hosts racing for it?)"
        )))
    }

    /// One ballot for version `lver`: the chosen value, or `None` if aborted.
    fn ballot(
        &self,
        id: LockId,
        lock: u32,
        lver: u64,
        value: Value,
        dbs: &[DBlock],
    ) -> Result<Option<Value>> {
        let me = self.host;
        let max_mbal = dbs
            .iter()
            .filter(|d| d.lver == lver)
            .map(|d| d.mbal)
            .max()
            .unwrap_or(0);
        let mbal = (max_mbal / 64 + 1) * 64 + me as u64;
        let mut my = dbs[me as usize - 1].clone();
        my.lock = lock;
        my.host = me;
        if my.lver != lver {
            my.bal = 0;
            my.inp_owner = 0;
            my.inp_gen = 0;
            my.inp_since_ms = 0;
        }
        my.lver = lver;
        my.mbal = mbal;
        self.write_dblock(id, &my)?;
        let conflict = |ds: &[DBlock]| {
            ds.iter()
                .any(|d| d.host != me && (d.lver > lver || (d.lver == lver && d.mbal > mbal)))
        };
        let (_, d1) = self.read_area(id)?;
        if conflict(&d1) {
            return Ok(None);
        }
        let chosen = d1
            .iter()
            .filter(|d| d.lver == lver && d.bal > 0 && d.inp_owner != 0)
            .max_by_key(|d| d.bal)
            .map(|d| Value {
                owner: d.inp_owner,
                gen: d.inp_gen,
                since: d.inp_since_ms,
            })
            .unwrap_or(value);
        my.bal = mbal;
        my.inp_owner = chosen.owner;
        my.inp_gen = chosen.gen;
        my.inp_since_ms = chosen.since;
        self.write_dblock(id, &my)?;
        let (_, d2) = self.read_area(id)?;
        if conflict(&d2) {
            return Ok(None);
        }
        Ok(Some(chosen))
    }

    /// Takes `id`, waiting while a live host holds it, up to `timeout`.
    pub fn acquire_wait(
        &self,
        id: LockId,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<std::result::Result<Held, Busy>> {
        let start = Instant::now();
        loop {
            match self.try_acquire(id, mode)? {
                Ok(h) => return Ok(Ok(h)),
                Err(b) if start.elapsed() >= timeout => return Ok(Err(b)),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    pub fn release(&self, h: &Held) -> Result<()> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&h.id);
        let (leader, dbs) = self.read_area(h.id)?;
        match h.mode {
            LockMode::Exclusive => {
                if leader.owner == self.host
                    && leader.owner_gen == self.gen
                    && leader.lver == h.lver
                {
                    self.write_leader(
                        h.id,
                        &Leader {
                            owner: 0,
                            owner_gen: 0,
                            mode: 0,
                            ..leader
                        },
                    )?;
                    Ok(())
                } else {
                    Err(VmfsError::LeaseLost {
                        host: self.host,
                        why: format!(
                            "lock {:?} was taken over by host {} (we were considered dead)",
                            h.id, leader.owner
                        ),
                    })
                }
            }
            _ => {
                let mut mine = dbs[self.host as usize - 1].clone();
                mine.lock = self.vol.geo.lock_index(h.id);
                mine.host = self.host;
                mine.share_mode = SHARE_NONE;
                mine.share_gen = 0;
                self.write_dblock(h.id, &mine)
            }
        }
    }

    /// Replays the journal of `host` (dead in generation `gen`) under its journal lock, so
    /// that its half-done metadata changes are finished before its locks are taken.
    pub fn recover_host(&self, host: u32, gen: u64) -> Result<()> {
        if host == 0 || host > MAX_HOSTS {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.vol.hdr.lease_timeout_ms as u64 * 3);
        let held = match self.acquire_wait(LockId::Journal(host), LockMode::Exclusive, timeout)? {
            Ok(h) => h,
            Err(b) => {
                return Err(VmfsError::Locked {
                    what: format!("the journal of dead host {host}"),
                    host: b.owner,
                    mode: b.mode,
                    since: fmt_time(b.since_ms),
                })
            }
        };
        let r = (|| {
            let slot = crate::lease::read_slot(&self.vol, host)?;
            // A newer instance of that host replays its own journal at mount, holding this
            // lock; once it runs, the journal holds its transactions, not the dead one's.
            if slot.state == HB_LIVE && slot.generation != gen {
                return Ok(());
            }
            self.vol.replay(host, self.host).map(|_| ())
        })();
        let rel = self.release(&held);
        r.and(rel)
    }
}

pub(crate) fn read_area(vol: &Volume, id: LockId) -> Result<(Leader, Vec<DBlock>)> {
    let g = &vol.geo;
    let base = g.lock(id);
    let lock = g.lock_index(id);
    vol.read_decode(base, LOCK_AREA as usize, |b| {
        let leader = Leader::decode(&b[..SECTOR], base, lock)?;
        let mut dbs = Vec::with_capacity(MAX_HOSTS as usize);
        for h in 1..=MAX_HOSTS {
            let o = h as usize * SECTOR;
            dbs.push(DBlock::decode(&b[o..o + SECTOR], base + o as u64, lock, h)?);
        }
        Ok((leader, dbs))
    })
}

fn fastrand_seed(host: u32) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ ((host as u64) << 32) ^ (std::process::id() as u64) | 1
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}
