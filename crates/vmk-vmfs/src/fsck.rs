//! `fsck`: checks every invariant of a volume, and repairs what it can.
//!
//! Checked: the header; heartbeat slots, journals and every lock record decode; pending
//! journal transactions (the rest is checked as if they had been replayed: their pages are
//! laid over the volume in memory); every cluster map, inode, pointer page and directory
//! page decodes; every block, sub-block and inode is owned at most once; the cluster maps
//! mark exactly what is owned (plus the reserved block 0, sub-block 0, inodes 0 and 1); the
//! directory tree from the root is loop-free, every entry names a live inode of the right
//! type and generation, names are unique in a directory, link counts and parent pointers
//! are right, and no inode is in use without being in the tree.
//!
//! Repair needs the volume unmounted everywhere (it checks that no heartbeat changes for a
//! lease timeout). It replays pending journals, zeroes garbage heartbeat and lock sectors,
//! drops directory entries that point nowhere (or make a loop), frees orphans and unreadable
//! inodes, clears pointers to blocks already owned by another file, fixes link counts and
//! parents, and rewrites the cluster maps from what is owned. Repairs are written in place,
//! not journaled: run it again if it is interrupted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::device::{BlockDevice, Dev};
use crate::error::{Result, VmfsError};
use crate::format::*;
use crate::volume::Volume;

#[derive(Clone, Debug, Default)]
pub struct FsckOptions {
    pub repair: bool,
    /// Progress messages (stderr in the CLI).
    pub verbose: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub what: String,
    pub repaired: bool,
}

#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub findings: Vec<Finding>,
    pub files: u64,
    pub dirs: u64,
    pub blocks_used: u64,
    pub sub_blocks_used: u64,
    /// Hosts whose slot says mounted (crashed or still running).
    pub mounted_hosts: Vec<u32>,
    /// Locks whose leader names a host that is not mounted any more (harmless: taken over
    /// by the next host that needs them).
    pub stale_locks: u64,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
    pub fn unrepaired(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.repaired)
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} files, {} directories, {} blocks and {} sub-blocks in use",
            self.files, self.dirs, self.blocks_used, self.sub_blocks_used
        )?;
        if !self.mounted_hosts.is_empty() {
            writeln!(
                f,
                "hosts with a mounted heartbeat slot: {:?}",
                self.mounted_hosts
            )?;
        }
        if self.stale_locks > 0 {
            writeln!(
                f,
                "{} locks held by hosts that are gone (taken over when needed)",
                self.stale_locks
            )?;
        }
        if self.findings.is_empty() {
            write!(f, "clean")
        } else {
            for x in &self.findings {
                writeln!(
                    f,
                    "{}{}",
                    x.what,
                    if x.repaired { " [repaired]" } else { "" }
                )?;
            }
            write!(f, "{} problems", self.findings.len())
        }
    }
}

struct Ctx {
    vol: Volume,
    repair: bool,
    verbose: bool,
    /// Pages as they will be (pending journals, repairs): read through this.
    overlay: BTreeMap<u64, Vec<u8>>,
    report: FsckReport,
}

impl Ctx {
    fn find(&mut self, what: String) {
        let repaired = self.repair;
        self.report.findings.push(Finding { what, repaired });
    }
    fn find_unrepairable(&mut self, what: String) {
        self.report.findings.push(Finding {
            what,
            repaired: false,
        });
    }
    fn page(&self, off: u64) -> Result<Vec<u8>> {
        match self.overlay.get(&off) {
            Some(p) => Ok(p.clone()),
            None => self.vol.read_vec(off, PAGE),
        }
    }
    fn put(&mut self, off: u64, img: Vec<u8>) {
        if self.repair {
            self.overlay.insert(off, img);
        }
    }
    fn progress(&self, s: &str) {
        if self.verbose {
            tracing::info!("fsck: {s}");
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    Reserved,
    Inode(u32),
}

/// Checks (and with `repair`, repairs) the volume on `dev`.
pub fn check(dev: Box<dyn BlockDevice>, opts: &FsckOptions) -> Result<FsckReport> {
    let dev = Dev { inner: dev };
    let mut hb = vec![0u8; PAGE];
    if dev.size() < PAGE as u64 {
        return Err(VmfsError::NotVmfs(format!(
            "{} is smaller than a volume header",
            dev.name()
        )));
    }
    dev.read(&mut hb, 0)?;
    let hdr = VolumeHeader::decode(&hb, dev.size())?;
    let geo = hdr.geo.clone();
    let vol = Volume {
        dev,
        hdr,
        geo,
        sync: true,
        fence: None,
    };
    let mut cx = Ctx {
        vol,
        repair: opts.repair,
        verbose: opts.verbose,
        overlay: BTreeMap::new(),
        report: FsckReport::default(),
    };
    check_hosts(&mut cx)?;
    check_journals(&mut cx)?;
    check_locks(&mut cx)?;
    check_tree(&mut cx)?;
    if cx.repair {
        cx.progress(&format!("writing {} repaired pages", cx.overlay.len()));
        for (off, img) in std::mem::take(&mut cx.overlay) {
            cx.vol.dev.write(&img, off)?;
        }
        cx.vol.dev.flush()?;
        for h in 1..=MAX_HOSTS {
            if let Ok(Some((desc, _))) = cx.vol.pending_txn(h) {
                let d = cx.vol.geo.journal(h) + PAGE as u64;
                cx.vol.dev.write(
                    &JournalDone {
                        host: h,
                        done_seq: desc.seq,
                        replayed_by: 0,
                    }
                    .encode(d),
                    d,
                )?;
            }
        }
        cx.vol.dev.flush()?;
    }
    Ok(cx.report)
}

fn check_hosts(cx: &mut Ctx) -> Result<()> {
    let g = cx.vol.geo.clone();
    let mut live = Vec::new();
    for h in 1..=MAX_HOSTS {
        let off = g.hb_slot(h);
        let b = cx.vol.read_vec(off, SECTOR)?;
        match HbSlot::decode(&b, off, h) {
            Ok(s) if s.state == HB_LIVE => live.push((h, s)),
            Ok(_) => {}
            Err(e) => {
                cx.find(format!("heartbeat slot of host {h}: {e}"));
                if cx.repair {
                    cx.vol.dev.write(&[0u8; SECTOR], off)?;
                }
            }
        }
    }
    cx.report.mounted_hosts = live.iter().map(|(h, _)| *h).collect();
    if cx.repair && !live.is_empty() {
        // Offline repair: every host that says "mounted" must be dead.
        let wait = Duration::from_millis(cx.vol.hdr.lease_timeout_ms as u64);
        cx.progress(&format!(
            "hosts {:?} say they are mounted: watching their heartbeats for {} ms",
            cx.report.mounted_hosts,
            wait.as_millis()
        ));
        let start = Instant::now();
        while start.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(cx.vol.hdr.renew_ms as u64));
            for (h, s) in &live {
                let now = crate::lease::read_slot(&cx.vol, *h)?;
                if now.timestamp != s.timestamp || now.instance != s.instance {
                    return Err(VmfsError::InUse {
                        host: *h,
                        waited_ms: start.elapsed().as_millis() as u64,
                    });
                }
            }
        }
    }
    Ok(())
}

fn check_journals(cx: &mut Ctx) -> Result<()> {
    for h in 1..=MAX_HOSTS {
        match cx.vol.pending_txn(h) {
            Ok(None) => {}
            Ok(Some((desc, imgs))) if imgs.is_empty() => {
                // Torn descriptor/images: never committed, nothing was written in place.
                let _ = desc;
            }
            Ok(Some((desc, imgs))) => {
                cx.report.findings.push(Finding {
                    what: format!(
                        "journal of host {h}: transaction {} ({} pages) not replayed yet (checked as if replayed)",
                        desc.seq,
                        imgs.len()
                    ),
                    repaired: cx.repair,
                });
                for (t, img) in desc.targets.iter().zip(imgs) {
                    cx.overlay.insert(*t, img);
                }
            }
            Err(e) => {
                cx.find(format!("journal of host {h}: {e}"));
                if cx.repair {
                    let j = cx.vol.geo.journal(h);
                    cx.vol.dev.write(&vec![0u8; 2 * PAGE], j)?;
                }
            }
        }
    }
    Ok(())
}

fn check_locks(cx: &mut Ctx) -> Result<()> {
    let g = cx.vol.geo.clone();
    let n = g.nlocks();
    cx.progress(&format!("checking {n} lock records"));
    let slots: HashMap<u32, HbSlot> = (1..=MAX_HOSTS)
        .filter_map(|h| crate::lease::read_slot(&cx.vol, h).ok().map(|s| (h, s)))
        .collect();
    let per_read = 64u64;
    let mut i = 0u64;
    while i < n {
        let cnt = per_read.min(n - i);
        let base = g.lock_off + i * LOCK_AREA;
        let buf = cx.vol.read_vec(base, (cnt * LOCK_AREA) as usize)?;
        for k in 0..cnt {
            let lock = (i + k) as u32;
            let area = base + k * LOCK_AREA;
            for s in 0..LOCK_SECTORS {
                let o = ((k * LOCK_AREA) + s * SECTOR as u64) as usize;
                let b = &buf[o..o + SECTOR];
                let off = area + s * SECTOR as u64;
                let r = if s == 0 {
                    Leader::decode(b, off, lock).map(|l| {
                        if l.owner != 0 {
                            let gone = slots.get(&l.owner).is_none_or(|sl| {
                                sl.state != HB_LIVE || sl.generation != l.owner_gen
                            });
                            if gone {
                                cx.report.stale_locks += 1;
                            }
                        }
                    })
                } else {
                    DBlock::decode(b, off, lock, s as u32).map(|_| ())
                };
                if let Err(e) = r {
                    cx.find(format!("lock {lock}: {e}"));
                    if cx.repair {
                        // A lock record starts from zero (free) again; the owner, if any, is
                        // dead (repair runs offline).
                        cx.vol.dev.write(&[0u8; SECTOR], off)?;
                    }
                }
            }
        }
        i += cnt;
    }
    Ok(())
}

struct InodeInfo {
    ino: Inode,
    blocks: Vec<(u64, usize, usize, u32)>, // (page offset, page index in pb, slot, block)
}

fn check_tree(cx: &mut Ctx) -> Result<()> {
    let g = cx.vol.geo.clone();
    // 1. cluster maps
    let mut maps: Vec<Option<ClusterMap>> = Vec::new();
    for c in 0..g.nclusters {
        let off = g.map(c);
        match ClusterMap::decode(&cx.page(off)?, &g, c) {
            Ok(m) => maps.push(Some(m)),
            Err(e) => {
                cx.find(format!("{e} (rebuilt from the inodes)"));
                maps.push(None);
            }
        }
    }
    // 2. inodes
    cx.progress(&format!("checking {} inodes", g.ninodes()));
    let mut inodes: BTreeMap<u32, InodeInfo> = BTreeMap::new();
    for i in 1..g.ninodes() as u32 {
        let off = g.inode(i);
        let b = cx.page(off)?;
        match Inode::decode(&b, &g, i) {
            Ok(ino) if ino.kind != Kind::Free => {
                inodes.insert(
                    i,
                    InodeInfo {
                        ino,
                        blocks: Vec::new(),
                    },
                );
            }
            Ok(_) => {}
            Err(e) => {
                cx.find(format!("{e} (freed)"));
                cx.put(off, Inode::free(i, 0).encode(&g));
            }
        }
    }
    // 3. the tree, from the root
    let mut reached: HashMap<u32, u32> = HashMap::new(); // inum -> references
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    match inodes.get(&ROOT_INODE) {
        Some(r) if r.ino.kind == Kind::Dir => {}
        _ => {
            cx.find_unrepairable(
                "the root directory (inode 1) is missing or not a directory".into(),
            );
            return Ok(());
        }
    }
    reached.insert(ROOT_INODE, 1);
    parent_of.insert(ROOT_INODE, ROOT_INODE);
    let mut queue = VecDeque::from([ROOT_INODE]);
    let mut visited_dirs: HashSet<u32> = HashSet::new();
    // Storage of each inode is collected first (pointer pages), then directories are read.
    let mut owner_blocks: HashMap<u32, Owner> = HashMap::new();
    let mut owner_subs: HashMap<u32, Owner> = HashMap::new();
    owner_blocks.insert(0, Owner::Reserved);
    owner_subs.insert(0, Owner::Reserved);
    let inums: Vec<u32> = inodes.keys().copied().collect();
    for i in inums {
        collect_storage(cx, &mut inodes, i, &mut owner_blocks, &mut owner_subs)?;
    }
    while let Some(d) = queue.pop_front() {
        if !visited_dirs.insert(d) {
            continue;
        }
        let dir = inodes[&d].ino.clone();
        if !dir.size.is_multiple_of(PAGE as u64) {
            cx.find(format!(
                "directory inode {d}: size {} is not a whole number of pages",
                dir.size
            ));
        }
        let mut names: HashSet<String> = HashSet::new();
        for p in 0..(dir.size / PAGE as u64) as u32 {
            let Some(off) = dir_page_offset(cx, &dir, p)? else {
                continue;
            };
            let mut page = match DirPage::decode(&cx.page(off)?, &g, off, d, dir.generation, p) {
                Ok(page) => page,
                Err(e) => {
                    cx.find(format!("{e} (its entries are dropped)"));
                    let empty = DirPage::empty(d, dir.generation, p);
                    cx.put(off, empty.encode(off));
                    continue;
                }
            };
            let mut changed = false;
            for slot in 0..DIRENTS_PER_PAGE {
                let Some(e) = page.entries[slot].clone() else {
                    continue;
                };
                let target = inodes.get(&e.inum).map(|t| (t.ino.kind, t.ino.generation));
                let problem = match target {
                    None => Some("names an inode that is free or unreadable".to_string()),
                    Some((k, gen)) if k != e.kind || gen != e.generation => Some(format!(
                        "says {:?} generation {}, the inode is {k:?} generation {gen}",
                        e.kind, e.generation
                    )),
                    _ if !names.insert(e.name.clone()) => Some("duplicate name".into()),
                    _ if e.kind == Kind::Dir
                        && (reached.contains_key(&e.inum) || e.inum == ROOT_INODE) =>
                    {
                        Some("a second link to a directory (a loop or a hard link)".into())
                    }
                    _ if reached.contains_key(&e.inum) => Some("a second link to a file".into()),
                    _ => None,
                };
                if let Some(p) = problem {
                    cx.find(format!(
                        "directory inode {d}, entry {:?} -> inode {}: {p} (entry removed)",
                        e.name, e.inum
                    ));
                    page.entries[slot] = None;
                    changed = true;
                    continue;
                }
                reached.insert(e.inum, 1);
                parent_of.insert(e.inum, d);
                if e.kind == Kind::Dir {
                    queue.push_back(e.inum);
                }
            }
            if changed {
                cx.put(off, page.encode(off));
            }
        }
    }
    // 4. per inode: reachability, links, parents
    let inums: Vec<u32> = inodes.keys().copied().collect();
    for i in inums {
        let info = &inodes[&i];
        let mut ino = info.ino.clone();
        if !reached.contains_key(&i) {
            cx.find(format!(
                "inode {i} ({:?}, {} bytes) is in use but in no directory (freed)",
                ino.kind, ino.size
            ));
            cx.put(g.inode(i), Inode::free(i, ino.generation).encode(&g));
            // Its storage is not owned any more.
            owner_blocks.retain(|_, o| *o != Owner::Inode(i));
            owner_subs.retain(|_, o| *o != Owner::Inode(i));
            inodes.remove(&i);
            continue;
        }
        let mut fix = false;
        if ino.nlink != 1 {
            cx.find(format!(
                "inode {i}: link count {} (1 link found)",
                ino.nlink
            ));
            ino.nlink = 1;
            fix = true;
        }
        if ino.kind == Kind::Dir && parent_of.get(&i) != Some(&ino.parent) {
            let p = parent_of.get(&i).copied().unwrap_or(ROOT_INODE);
            cx.find(format!(
                "directory inode {i}: parent says {} but it is in directory {p}",
                ino.parent
            ));
            ino.parent = p;
            fix = true;
        }
        match ino.kind {
            Kind::File => cx.report.files += 1,
            Kind::Dir => cx.report.dirs += 1,
            Kind::Free => {}
        }
        if fix {
            cx.put(g.inode(i), ino.encode(&g));
        }
    }
    // 5. cluster maps against ownership
    cx.report.blocks_used = owner_blocks.len() as u64 - 1;
    cx.report.sub_blocks_used = owner_subs.len() as u64 - 1;
    for c in 0..g.nclusters {
        let mut want = ClusterMap::new(c);
        for i in 0..g.bpc {
            set_bit(
                &mut want.blocks,
                i as usize,
                owner_blocks.contains_key(&(c * g.bpc + i)),
            );
        }
        for i in 0..g.spc {
            set_bit(
                &mut want.subs,
                i as usize,
                owner_subs.contains_key(&(c * g.spc + i)),
            );
        }
        for i in 0..g.ipc {
            let inum = c * g.ipc + i;
            set_bit(
                &mut want.inodes,
                i as usize,
                inum <= ROOT_INODE || inodes.contains_key(&inum),
            );
        }
        let Some(have) = &maps[c as usize] else {
            cx.put(g.map(c), want.encode(&g));
            continue;
        };
        let mut diffs = Vec::new();
        for (name, h, w, per, base) in [
            ("block", &have.blocks, &want.blocks, g.bpc, c * g.bpc),
            ("sub-block", &have.subs, &want.subs, g.spc, c * g.spc),
            ("inode", &have.inodes, &want.inodes, g.ipc, c * g.ipc),
        ] {
            for i in 0..per as usize {
                match (bit(h, i), bit(w, i)) {
                    (true, false) => diffs.push(format!(
                        "{name} {} marked in use but owned by nobody (leaked)",
                        base + i as u32
                    )),
                    (false, true) => {
                        diffs.push(format!("{name} {} in use but marked free", base + i as u32))
                    }
                    _ => {}
                }
            }
        }
        if !diffs.is_empty() {
            let more = if diffs.len() > 5 {
                format!(" and {} more", diffs.len() - 5)
            } else {
                String::new()
            };
            diffs.truncate(5);
            cx.find(format!("resource cluster {c}: {}{more}", diffs.join("; ")));
            cx.put(g.map(c), want.encode(&g));
        }
    }
    Ok(())
}

fn dir_page_offset(cx: &mut Ctx, dir: &Inode, p: u32) -> Result<Option<u64>> {
    let g = &cx.vol.geo;
    let pos = p as u64 * PAGE as u64;
    match dir.mode {
        AddrMode::Small => {
            Ok((dir.addrs[0] != 0 && pos < SUB_BLOCK).then(|| g.sub(dir.addrs[0]) + pos))
        }
        AddrMode::Blocks => {
            let fb = pos / g.block_size;
            let pb = (fb / PTRS_PER_PB) as usize;
            if pb >= INODE_ADDRS || dir.addrs[pb] == 0 {
                return Ok(None);
            }
            let rem = (fb % PTRS_PER_PB) as usize;
            let off = g.sub(dir.addrs[pb]) + ((rem / PTRS_PER_PAGE) * PAGE) as u64;
            let first = pb as u64 * PTRS_PER_PB + ((rem / PTRS_PER_PAGE) * PTRS_PER_PAGE) as u64;
            let Ok(pp) =
                PointerPage::decode(&cx.page(off)?, g, off, dir.inum, dir.generation, first)
            else {
                return Ok(None);
            };
            let e = pp.ptrs[rem % PTRS_PER_PAGE];
            Ok((e != 0).then(|| g.block(e & !UNWRITTEN) + pos % g.block_size))
        }
    }
}

/// Records the storage of inode `i`, repairing double ownership and unreadable pointer
/// pages.
fn collect_storage(
    cx: &mut Ctx,
    inodes: &mut BTreeMap<u32, InodeInfo>,
    i: u32,
    owner_blocks: &mut HashMap<u32, Owner>,
    owner_subs: &mut HashMap<u32, Owner>,
) -> Result<()> {
    let g = cx.vol.geo.clone();
    let mut ino = inodes[&i].ino.clone();
    let mut ino_changed = false;
    let mut blocks = Vec::new();
    let nsubs = match ino.mode {
        AddrMode::Small => 1,
        AddrMode::Blocks => INODE_ADDRS,
    };
    for pb in 0..nsubs {
        let s = ino.addrs[pb];
        if s == 0 {
            continue;
        }
        if let Some(o) = owner_subs.get(&s) {
            cx.find(format!(
                "inode {i}: sub-block {s} is also owned by {o:?} (pointer cleared)"
            ));
            ino.addrs[pb] = 0;
            ino_changed = true;
            continue;
        }
        owner_subs.insert(s, Owner::Inode(i));
        if ino.mode == AddrMode::Small {
            continue;
        }
        for pg in 0..PAGES_PER_SUB {
            let off = g.sub(s) + (pg * PAGE) as u64;
            let first = pb as u64 * PTRS_PER_PB + (pg * PTRS_PER_PAGE) as u64;
            let mut pp =
                match PointerPage::decode(&cx.page(off)?, &g, off, i, ino.generation, first) {
                    Ok(pp) => pp,
                    Err(e) => {
                        cx.find(format!("{e} (cleared: those blocks become holes)"));
                        let empty = PointerPage {
                            inum: i,
                            generation: ino.generation,
                            first,
                            ptrs: vec![0; PTRS_PER_PAGE],
                        };
                        cx.put(off, empty.encode(off));
                        continue;
                    }
                };
            let mut changed = false;
            for k in 0..PTRS_PER_PAGE {
                let e = pp.ptrs[k];
                if e == 0 {
                    continue;
                }
                let b = e & !UNWRITTEN;
                if let Some(o) = owner_blocks.get(&b) {
                    cx.find(format!("inode {i}: block {b} (file block {}) is also owned by {o:?} (pointer cleared)", first + k as u64));
                    pp.ptrs[k] = 0;
                    changed = true;
                    continue;
                }
                owner_blocks.insert(b, Owner::Inode(i));
                blocks.push((off, pg, k, b));
            }
            if changed {
                cx.put(off, pp.encode(off));
            }
        }
    }
    if ino_changed {
        cx.put(g.inode(i), ino.encode(&g));
    }
    if let Some(info) = inodes.get_mut(&i) {
        info.ino = ino;
        info.blocks = blocks;
    }
    Ok(())
}
