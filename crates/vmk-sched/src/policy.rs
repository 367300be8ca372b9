//! The scheduling policy as a state machine over explicit time: which task a CPU runs next,
//! for how long, and what a wake-up does. No threads and no clock here, so the tests can
//! drive it through hours of simulated contention in milliseconds (`sim` tests) and check
//! fairness to the nanosecond. `worker.rs` puts it behind one mutex and runs it.
//!
//! The algorithm (see docs/architecture.md, "The CPU scheduler"):
//! - **Groups** (VMs) share CPU in proportion to their shares: each group has a virtual time
//!   that advances by `used / shares`; a CPU runs the eligible group with the smallest one
//!   (weighted fair queuing, as ESX and CFS do). A group that was idle comes back at the
//!   smallest virtual time of the busy groups, so it cannot bank CPU while idle: idle groups'
//!   shares go to the busy ones.
//! - **Reservations** come first: a group that has not yet received its reserved rate
//!   (a token bucket refilled at the reservation) is picked before groups that are only
//!   entitled by shares.
//! - **Limits** are a token bucket refilled at the limit; a group without tokens is not
//!   eligible (its ready vCPUs are *limited*, esxtop's MLMTD) until it has some.
//! - **Within a group** (a VM's vCPUs) the vCPU with the least progress runs first, and a
//!   vCPU more than the skew threshold ahead of a sibling that is ready but not running is
//!   *co-stopped* (relaxed co-scheduling, ESX 4+). vCPUs waiting in the guest (WFI) do not
//!   count toward skew.
//! - **Placement**: a task that becomes ready goes to an idle CPU allowed by its affinity,
//!   preferring a whole idle core over a sibling of a busy one and its group's NUMA home node;
//!   a CPU leaves a task to a better-placed idle CPU. With no idle CPU, a woken task whose
//!   group is far enough behind preempts the CPU running the group furthest ahead.

use std::collections::HashMap;

use crate::topology::Topology;

/// Nanoseconds since the scheduler's epoch.
pub type Ns = u64;

/// Virtual time per nanosecond of CPU at one share: `used_ns * VT_SCALE / shares`.
const VT_SCALE: u128 = 1 << 20;

/// Token buckets hold at most this much time at their rate (a burst allowance).
const LIMIT_BURST_NS: u64 = 20_000_000;

/// The shortest slice a limit or the skew bound cuts a quantum to.
const MIN_SLICE_NS: u64 = 500_000;
const RESERVATION_BURST_NS: u64 = 100_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// Tunables of the policy.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Longest slice a task runs before the CPU picks again.
    pub quantum_ns: Ns,
    /// Largest lead of a vCPU over a ready sibling before it is co-stopped.
    pub skew_ns: Ns,
    /// How far (in CPU time at the woken group's shares) a woken group must be behind a
    /// running one to preempt it.
    pub wakeup_granularity_ns: Ns,
    /// MHz of one logical CPU: converts reservations and limits to CPU fractions.
    pub cpu_mhz: u64,
    /// Pack ready tasks onto as few CPUs as the load allows (low-power): the lowest-numbered
    /// idle CPU first, a busy core's sibling before an idle core, so the other CPUs stay
    /// idle (and can sleep deeper).
    pub pack: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            quantum_ns: 10_000_000,
            skew_ns: 3_000_000,
            wakeup_granularity_ns: 1_000_000,
            cpu_mhz: 1000,
            pack: false,
        }
    }
}

/// A group's resource settings (a VM's `[resources]`, in scheduler units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupParams {
    /// Proportional share of the group (ESX: per-vCPU shares times the vCPUs).
    pub shares: u32,
    /// Guaranteed CPU, in MHz.
    pub reservation_mhz: u64,
    /// Most CPU, in MHz; `None` = unlimited.
    pub limit_mhz: Option<u64>,
    /// The logical CPUs (OS ids) its tasks may run on; `None` = all.
    pub affinity: Option<Vec<u32>>,
}

impl Default for GroupParams {
    fn default() -> Self {
        GroupParams {
            shares: 1000,
            reservation_mhz: 0,
            limit_mhz: None,
            affinity: None,
        }
    }
}

/// What a task is doing, for accounting (esxtop's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcctState {
    Run,
    Ready,
    CoStop,
    Limited,
    Wait,
    /// Finished: accrues nothing.
    Done,
}

/// Accumulated time per state, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskTimes {
    /// Running (CPU time of the worker while it ran the task).
    pub used: Ns,
    pub ready: Ns,
    pub costop: Ns,
    pub limited: Ns,
    pub wait: Ns,
    /// Slices run.
    pub slices: u64,
    /// Times it moved to another logical CPU than the one it last ran on.
    pub migrations: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Running { cpu: usize },
    Wait { until: Option<Ns> },
    Done,
}

#[derive(Debug)]
struct Task {
    group: GroupId,
    state: State,
    /// A wake-up arrived while it ran: a `Wait` at the end of the slice becomes `Ready`.
    woken: bool,
    /// CPU time run while not idle: orders siblings and measures skew.
    progress: Ns,
    acct: AcctState,
    acct_since: Ns,
    times: TaskTimes,
    last_cpu: Option<usize>,
}

#[derive(Debug)]
struct Bucket {
    /// CPU fraction in millionths.
    rate_ppm: u64,
    tokens: i64,
    stamp: Ns,
    cap: i64,
}

impl Bucket {
    fn new(rate_ppm: u64, burst_ns: Ns, now: Ns) -> Bucket {
        let cap = (rate_ppm as u128 * burst_ns as u128 / 1_000_000) as i64;
        Bucket {
            rate_ppm,
            tokens: cap,
            stamp: now,
            cap,
        }
    }
    fn refill(&mut self, now: Ns) {
        if now > self.stamp {
            let add = ((now - self.stamp) as u128 * self.rate_ppm as u128 / 1_000_000) as i64;
            self.tokens = self.tokens.saturating_add(add).min(self.cap);
            self.stamp = now;
        }
    }
    /// When the tokens will be positive again.
    fn refill_at(&self) -> Ns {
        if self.tokens > 0 || self.rate_ppm == 0 {
            return self.stamp;
        }
        let need = (-self.tokens) as u128 + 1;
        self.stamp + (need * 1_000_000).div_ceil(self.rate_ppm as u128) as u64
    }
}

#[derive(Debug)]
struct Group {
    params: GroupParams,
    /// Index set of allowed CPUs (scheduler CPU indexes), from the affinity.
    allowed: Vec<bool>,
    vtime: u128,
    limit: Option<Bucket>,
    reservation: Option<Bucket>,
    home_node: u32,
    tasks: Vec<TaskId>,
    /// The tasks it was admitted for (its reservation is checked against them).
    vcpus: usize,
    /// Tasks Ready or Running.
    active: usize,
}

/// One logical CPU the scheduler runs on.
#[derive(Debug)]
struct Cpu {
    id: u32,
    core: usize,
    node: u32,
    running: Option<TaskId>,
    /// The worker is parked, waiting for work.
    idle: bool,
    used: Ns,
}

/// What the caller must do after a policy call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wake the (idle) worker of this CPU: it has work.
    Unpark(usize),
    /// End the slice on this CPU early (its task is kicked).
    Preempt(usize),
}

/// A slice to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub task: TaskId,
    /// End of the slice.
    pub until: Ns,
}

/// How a slice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceEnd {
    /// The task can run more.
    Ready,
    /// The task waits for a wake-up or until the time.
    Wait(Option<Ns>),
    /// The task has finished.
    Done,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "a CPU reservation of {want} MHz does not fit: the host has {capacity} MHz \
         ({cpus} CPUs x {mhz} MHz) and {reserved} MHz of it are reserved by running VMs \
         ({free} MHz free); lower the reservation or stop a VM that reserves CPU"
    )]
    ReservationDoesNotFit {
        want: u64,
        capacity: u64,
        reserved: u64,
        free: u64,
        cpus: usize,
        mhz: u64,
    },
    #[error(
        "a CPU reservation of {want} MHz is more than {vcpus} vCPU(s) can use \
         ({vcpus} x {mhz} MHz = {max} MHz)"
    )]
    ReservationTooLarge {
        want: u64,
        vcpus: usize,
        mhz: u64,
        max: u64,
    },
    #[error("CPU affinity {0}: none of these CPUs is one vmk schedules on (it uses {1})")]
    NoAllowedCpu(String, String),
    #[error("shares must be at least 1")]
    ZeroShares,
    #[error("a CPU limit of 0 MHz would never run the VM")]
    ZeroLimit,
    #[error("no such group {0:?}")]
    NoGroup(GroupId),
}

/// The policy's whole state.
#[derive(Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    cpus: Vec<Cpu>,
    nodes: Vec<u32>,
    groups: HashMap<GroupId, Group>,
    tasks: HashMap<TaskId, Task>,
    next_id: u64,
}

impl Policy {
    pub fn new(topology: &Topology, cfg: PolicyConfig) -> Policy {
        let cpus = topology
            .cpus
            .iter()
            .map(|c| Cpu {
                id: c.id,
                core: c.core,
                node: c.node,
                running: None,
                // Workers start looking for work.
                idle: true,
                used: 0,
            })
            .collect();
        let mut nodes: Vec<u32> = topology.cpus.iter().map(|c| c.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        Policy {
            cfg,
            cpus,
            nodes,
            groups: HashMap::new(),
            tasks: HashMap::new(),
            next_id: 1,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Low-power placement on or off (see [`PolicyConfig::pack`]).
    pub fn set_pack(&mut self, pack: bool) {
        self.cfg.pack = pack;
    }

    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// The OS id of scheduler CPU `i`.
    pub fn cpu_id(&self, i: usize) -> u32 {
        self.cpus[i].id
    }

    /// Host CPU capacity in MHz.
    pub fn capacity_mhz(&self) -> u64 {
        self.cpus.len() as u64 * self.cfg.cpu_mhz
    }

    /// MHz reserved by the groups that exist.
    pub fn reserved_mhz(&self) -> u64 {
        self.groups.values().map(|g| g.params.reservation_mhz).sum()
    }

    /// CPU time each CPU has spent running tasks.
    pub fn cpu_used(&self) -> Vec<(u32, Ns)> {
        self.cpus.iter().map(|c| (c.id, c.used)).collect()
    }

    /// Checks `params` for a group of `vcpus` tasks, `except` being a group it replaces.
    pub fn check(
        &self,
        params: &GroupParams,
        vcpus: usize,
        except: Option<GroupId>,
    ) -> Result<Vec<bool>, PolicyError> {
        if params.shares == 0 {
            return Err(PolicyError::ZeroShares);
        }
        if params.limit_mhz == Some(0) {
            return Err(PolicyError::ZeroLimit);
        }
        let allowed: Vec<bool> = match &params.affinity {
            None => vec![true; self.cpus.len()],
            Some(ids) => self.cpus.iter().map(|c| ids.contains(&c.id)).collect(),
        };
        if !allowed.iter().any(|&a| a) {
            let ids = params.affinity.clone().unwrap_or_default();
            return Err(PolicyError::NoAllowedCpu(
                crate::topology::format_cpu_list(&ids),
                crate::topology::format_cpu_list(
                    &self.cpus.iter().map(|c| c.id).collect::<Vec<_>>(),
                ),
            ));
        }
        let want = params.reservation_mhz;
        if want > 0 {
            let usable = vcpus.min(allowed.iter().filter(|&&a| a).count()).max(1);
            let max = usable as u64 * self.cfg.cpu_mhz;
            if want > max {
                return Err(PolicyError::ReservationTooLarge {
                    want,
                    vcpus: usable,
                    mhz: self.cfg.cpu_mhz,
                    max,
                });
            }
            let reserved: u64 = self
                .groups
                .iter()
                .filter(|(id, _)| Some(**id) != except)
                .map(|(_, g)| g.params.reservation_mhz)
                .sum();
            let capacity = self.capacity_mhz();
            if reserved + want > capacity {
                return Err(PolicyError::ReservationDoesNotFit {
                    want,
                    capacity,
                    reserved,
                    free: capacity.saturating_sub(reserved),
                    cpus: self.cpus.len(),
                    mhz: self.cfg.cpu_mhz,
                });
            }
        }
        Ok(allowed)
    }

    fn rate_ppm(&self, mhz: u64) -> u64 {
        mhz.saturating_mul(1_000_000) / self.cfg.cpu_mhz.max(1)
    }

    /// Admits a group (admission control on its reservation).
    pub fn add_group(
        &mut self,
        params: GroupParams,
        vcpus: usize,
        now: Ns,
    ) -> Result<GroupId, PolicyError> {
        let allowed = self.check(&params, vcpus, None)?;
        let id = GroupId(self.next_id);
        self.next_id += 1;
        let home_node = self.choose_home(&allowed);
        let vtime = self.min_active_vtime(None).unwrap_or(0);
        let g = Group {
            limit: params
                .limit_mhz
                .map(|l| Bucket::new(self.rate_ppm(l), LIMIT_BURST_NS, now)),
            reservation: (params.reservation_mhz > 0).then(|| {
                Bucket::new(
                    self.rate_ppm(params.reservation_mhz),
                    RESERVATION_BURST_NS,
                    now,
                )
            }),
            params,
            allowed,
            vtime,
            home_node,
            tasks: Vec::new(),
            vcpus,
            active: 0,
        };
        self.groups.insert(id, g);
        Ok(id)
    }

    /// Changes a group's settings at once (a running VM's shares, limit, affinity).
    pub fn set_params(
        &mut self,
        id: GroupId,
        params: GroupParams,
        now: Ns,
    ) -> Result<Vec<Action>, PolicyError> {
        let vcpus = self.groups.get(&id).ok_or(PolicyError::NoGroup(id))?.vcpus;
        let allowed = self.check(&params, vcpus, Some(id))?;
        let limit = params
            .limit_mhz
            .map(|l| Bucket::new(self.rate_ppm(l), LIMIT_BURST_NS, now));
        let reservation = (params.reservation_mhz > 0).then(|| {
            Bucket::new(
                self.rate_ppm(params.reservation_mhz),
                RESERVATION_BURST_NS,
                now,
            )
        });
        let home_node = self.choose_home(&allowed);
        let g = self.groups.get_mut(&id).ok_or(PolicyError::NoGroup(id))?;
        g.params = params;
        g.allowed = allowed;
        g.limit = limit;
        g.reservation = reservation;
        g.home_node = home_node;
        // Tasks running where they may no longer run end their slice now; ready ones may
        // have new places to go.
        let tasks = g.tasks.clone();
        let mut actions = Vec::new();
        for t in tasks {
            match self.tasks.get(&t).map(|t| t.state) {
                Some(State::Running { cpu }) if !self.groups[&id].allowed[cpu] => {
                    actions.push(Action::Preempt(cpu));
                }
                Some(State::Ready) => actions.extend(self.place(t)),
                _ => {}
            }
        }
        Ok(actions)
    }

    pub fn group_params(&self, id: GroupId) -> Option<&GroupParams> {
        self.groups.get(&id).map(|g| &g.params)
    }

    pub fn home_node(&self, id: GroupId) -> Option<u32> {
        self.groups.get(&id).map(|g| g.home_node)
    }

    /// Removes a group whose tasks are all done.
    pub fn remove_group(&mut self, id: GroupId) {
        if let Some(g) = self.groups.remove(&id) {
            for t in g.tasks {
                self.tasks.remove(&t);
            }
        }
    }

    /// The node with the fewest groups homed on it among those with allowed CPUs.
    fn choose_home(&self, allowed: &[bool]) -> u32 {
        let mut best: Option<(usize, u32)> = None;
        for &n in &self.nodes {
            if !self
                .cpus
                .iter()
                .zip(allowed)
                .any(|(c, &a)| a && c.node == n)
            {
                continue;
            }
            let load = self.groups.values().filter(|g| g.home_node == n).count();
            if best.is_none_or(|(l, _)| load < l) {
                best = Some((load, n));
            }
        }
        best.map_or(0, |(_, n)| n)
    }

    /// Adds a ready task to a group.
    pub fn add_task(
        &mut self,
        group: GroupId,
        now: Ns,
    ) -> Result<(TaskId, Vec<Action>), PolicyError> {
        let progress = self.min_sibling_progress(group, None).unwrap_or(0);
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(PolicyError::NoGroup(group))?;
        let id = TaskId(self.next_id);
        self.next_id += 1;
        g.tasks.push(id);
        self.tasks.insert(
            id,
            Task {
                group,
                state: State::Wait { until: None },
                woken: false,
                progress,
                acct: AcctState::Wait,
                acct_since: now,
                times: TaskTimes::default(),
                last_cpu: None,
            },
        );
        let actions = self.wake(id, now);
        Ok((id, actions))
    }

    pub fn times(&self, task: TaskId, now: Ns) -> Option<TaskTimes> {
        self.tasks.get(&task).map(|t| {
            let mut times = t.times;
            // The open interval counts too (not for Run: used is CPU time, added at the end
            // of the slice).
            let d = now.saturating_sub(t.acct_since);
            match t.acct {
                AcctState::Run => {}
                AcctState::Ready => times.ready += d,
                AcctState::CoStop => times.costop += d,
                AcctState::Limited => times.limited += d,
                AcctState::Wait => times.wait += d,
                AcctState::Done => {}
            }
            times
        })
    }

    pub fn is_done(&self, task: TaskId) -> bool {
        self.tasks.get(&task).is_none_or(|t| t.state == State::Done)
    }

    pub fn group_done(&self, group: GroupId) -> bool {
        self.groups
            .get(&group)
            .is_none_or(|g| g.tasks.iter().all(|t| self.is_done(*t)))
    }

    fn set_acct(&mut self, id: TaskId, s: AcctState, now: Ns) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if t.acct == s {
            return;
        }
        let d = now.saturating_sub(t.acct_since);
        match t.acct {
            AcctState::Run => {}
            AcctState::Ready => t.times.ready += d,
            AcctState::CoStop => t.times.costop += d,
            AcctState::Limited => t.times.limited += d,
            AcctState::Wait => t.times.wait += d,
            AcctState::Done => {}
        }
        t.acct = s;
        t.acct_since = now;
    }

    /// The smallest virtual time among groups with ready or running tasks.
    fn min_active_vtime(&self, except: Option<GroupId>) -> Option<u128> {
        self.groups
            .iter()
            .filter(|(id, g)| g.active > 0 && Some(**id) != except)
            .map(|(_, g)| g.vtime)
            .min()
    }

    /// The least progress among a group's ready or running tasks other than `except`.
    fn min_sibling_progress(&self, group: GroupId, except: Option<TaskId>) -> Option<Ns> {
        let g = self.groups.get(&group)?;
        g.tasks
            .iter()
            .filter(|&&t| Some(t) != except)
            .filter_map(|t| self.tasks.get(t))
            .filter(|t| matches!(t.state, State::Ready | State::Running { .. }))
            .map(|t| t.progress)
            .min()
    }

    /// The least progress among a group's *ready, not running* tasks other than `except`:
    /// the laggards a leader must not run too far ahead of.
    fn min_ready_sibling_progress(&self, group: GroupId, except: TaskId) -> Option<Ns> {
        let g = self.groups.get(&group)?;
        g.tasks
            .iter()
            .filter(|&&t| t != except)
            .filter_map(|t| self.tasks.get(t))
            .filter(|t| t.state == State::Ready)
            .map(|t| t.progress)
            .min()
    }

    /// How far `task` may still run before it leads a ready sibling by the skew threshold
    /// (`None`: no ready sibling, no bound).
    fn skew_room(&self, task: TaskId) -> Option<i64> {
        let t = self.tasks.get(&task)?;
        let laggard = self.min_ready_sibling_progress(t.group, task)?;
        Some(laggard as i64 + self.cfg.skew_ns as i64 - t.progress as i64)
    }

    /// Makes a waiting task ready (a device interrupt, an IPI, a timer, a start); a task
    /// that is running keeps running and will not wait at the end of its slice.
    pub fn wake(&mut self, id: TaskId, now: Ns) -> Vec<Action> {
        let Some(t) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        match t.state {
            State::Wait { .. } => {}
            State::Running { .. } => {
                t.woken = true;
                return Vec::new();
            }
            State::Ready | State::Done => return Vec::new(),
        }
        let group = t.group;
        // No banking: a task coming back from idle starts level with its busy siblings, and
        // a group coming back from idle level with the busy groups.
        if let Some(p) = self.min_sibling_progress(group, Some(id)) {
            let t = self.tasks.get_mut(&id).expect("task exists");
            t.progress = t.progress.max(p);
        }
        let was_idle = self.groups.get(&group).is_some_and(|g| g.active == 0);
        if was_idle {
            if let Some(v) = self.min_active_vtime(Some(group)) {
                let quantum = self.cfg.quantum_ns;
                if let Some(g) = self.groups.get_mut(&group) {
                    // Half a quantum of credit (as CFS's sleeper credit): enough to preempt
                    // a busy group at once (latency), too little to bank CPU.
                    let credit = (quantum / 2) as u128 * VT_SCALE / g.params.shares as u128;
                    g.vtime = g.vtime.max(v.saturating_sub(credit));
                }
            }
        }
        if let Some(t) = self.tasks.get_mut(&id) {
            t.state = State::Ready;
        }
        if let Some(g) = self.groups.get_mut(&group) {
            g.active += 1;
        }
        self.set_acct(id, AcctState::Ready, now);
        let mut actions = self.place(id);
        if actions.is_empty() {
            actions.extend(self.preempt_for(id));
        }
        actions
    }

    /// Every logical CPU of physical core `core` is idle (parked, running nothing).
    fn core_idle(&self, core: usize) -> bool {
        self.cpus
            .iter()
            .all(|o| o.core != core || (o.idle && o.running.is_none()))
    }

    /// An idle CPU for a ready task, best first: allowed, on a whole idle core, on the
    /// group's home node, the CPU it last ran on (warm caches).
    fn best_idle_cpu(&self, id: TaskId) -> Option<usize> {
        let t = self.tasks.get(&id)?;
        let g = self.groups.get(&t.group)?;
        let mut best: Option<(u32, usize)> = None;
        for (i, c) in self.cpus.iter().enumerate() {
            if !c.idle || !g.allowed[i] {
                continue;
            }
            let core_idle = self.core_idle(c.core);
            let score = if self.cfg.pack {
                // Fill busy cores and low-numbered CPUs first; the first idle CPU in
                // order wins a tie (strict `>` below).
                (!core_idle) as u32 * 4 + (c.node == g.home_node) as u32 * 2
            } else {
                (core_idle as u32) * 4
                    + (c.node == g.home_node) as u32 * 2
                    + (t.last_cpu == Some(i)) as u32
            };
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }

    fn place(&self, id: TaskId) -> Vec<Action> {
        match self.best_idle_cpu(id) {
            Some(c) => vec![Action::Unpark(c)],
            None => Vec::new(),
        }
    }

    /// With no idle CPU: the CPU to preempt for a woken task, if its group is far enough
    /// behind (or has reserved CPU owed to it) compared with the one running there.
    fn preempt_for(&self, id: TaskId) -> Vec<Action> {
        let Some(t) = self.tasks.get(&id) else {
            return Vec::new();
        };
        let Some(g) = self.groups.get(&t.group) else {
            return Vec::new();
        };
        if g.limit.as_ref().is_some_and(|b| b.tokens <= 0) {
            return Vec::new();
        }
        let owed = g.reservation.as_ref().is_some_and(|b| b.tokens > 0);
        let gran = self.cfg.wakeup_granularity_ns as u128 * VT_SCALE / g.params.shares as u128;
        let mut victim: Option<(u128, usize)> = None;
        for (i, c) in self.cpus.iter().enumerate() {
            if !g.allowed[i] {
                continue;
            }
            let Some(r) = c.running.and_then(|r| self.tasks.get(&r)) else {
                continue;
            };
            if r.group == t.group {
                continue;
            }
            let Some(rg) = self.groups.get(&r.group) else {
                continue;
            };
            let r_owed = rg.reservation.as_ref().is_some_and(|b| b.tokens > 0);
            let behind = rg.vtime > g.vtime + gran;
            if (owed || behind) && !r_owed {
                let key = if owed && !r_owed { u128::MAX } else { rg.vtime };
                if victim.is_none_or(|(k, _)| key > k) {
                    victim = Some((key, i));
                }
            }
        }
        victim
            .map(|(_, i)| vec![Action::Preempt(i)])
            .unwrap_or_default()
    }

    /// Moves waits whose time has come to ready; refills buckets. (The scheduler's timer
    /// calls it at [`Policy::next_event`]; every pick calls it too.)
    pub fn tick(&mut self, now: Ns) -> Vec<Action> {
        let mut unlimited = Vec::new();
        for (id, g) in self.groups.iter_mut() {
            if let Some(b) = &mut g.limit {
                let was_limited = b.tokens <= 0;
                b.refill(now);
                if was_limited && b.tokens > 0 && g.active > 0 {
                    unlimited.push(*id);
                }
            }
            if let Some(b) = &mut g.reservation {
                b.refill(now);
            }
        }
        let mut actions = Vec::new();
        // A group whose limit held it back may run again: its ready tasks need a CPU.
        for id in unlimited {
            let ready: Vec<TaskId> = self.groups[&id]
                .tasks
                .iter()
                .copied()
                .filter(|t| self.tasks.get(t).is_some_and(|t| t.state == State::Ready))
                .collect();
            for t in ready {
                actions.extend(self.place(t));
            }
        }
        let due: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Wait { until: Some(u) } if u <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            actions.extend(self.wake(id, now));
        }
        actions
    }

    /// Whether `cpu` should leave ready task `id` to an idle CPU that is a better place for
    /// it (a whole idle core when `cpu`'s sibling is busy, or its home node).
    fn better_elsewhere(&self, cpu: usize, id: TaskId) -> Option<usize> {
        let best = self.best_idle_cpu(id)?;
        if best == cpu {
            return None;
        }
        let t = self.tasks.get(&id)?;
        let g = self.groups.get(&t.group)?;
        let c = &self.cpus[cpu];
        let b = &self.cpus[best];
        let sibling_busy = self
            .cpus
            .iter()
            .enumerate()
            .any(|(i, o)| i != cpu && o.core == c.core && o.running.is_some());
        let best_core_idle = self.core_idle(b.core);
        let home_better = c.node != g.home_node && b.node == g.home_node;
        if self.cfg.pack {
            // Packing: leave it to an idle sibling of a busy core when this core is idle,
            // else to a lower-numbered CPU (each step moves toward fewer, lower CPUs, so
            // two CPUs never hand a task back and forth).
            let best_core_busy = !best_core_idle;
            let moves =
                (best_core_busy && !sibling_busy) || (best_core_busy == sibling_busy && best < cpu);
            return moves.then_some(best);
        }
        ((sibling_busy && best_core_idle) || home_better).then_some(best)
    }

    /// The next slice for `cpu`, or `None` (the CPU goes idle; see [`Policy::next_event`]).
    /// Also returns actions for other CPUs (wake-ups whose time came, better placements).
    pub fn pick(&mut self, cpu: usize, now: Ns) -> (Option<Pick>, Vec<Action>) {
        let mut actions = self.tick(now);
        // Refresh the accounting state of every ready task (ready, co-stopped, limited)
        // and choose: reservation owed first, then the smallest group virtual time; within
        // the group the least progress.
        let ready: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state == State::Ready)
            .map(|(id, _)| *id)
            .collect();
        let mut best: Option<((bool, u128, Ns, u64), TaskId)> = None;
        for id in ready {
            let (group, progress) = {
                let t = &self.tasks[&id];
                (t.group, t.progress)
            };
            let g = &self.groups[&group];
            let limited = g.limit.as_ref().is_some_and(|b| b.tokens <= 0);
            let costop = !limited && self.skew_room(id).is_some_and(|r| r <= 0);
            let state = if limited {
                AcctState::Limited
            } else if costop {
                AcctState::CoStop
            } else {
                AcctState::Ready
            };
            self.set_acct(id, state, now);
            if state != AcctState::Ready {
                continue;
            }
            let g = &self.groups[&group];
            if !g.allowed[cpu] {
                // Not ours: make sure an idle CPU that may run it looks (its affinity
                // changed, or it became ready while only this CPU was awake).
                actions.extend(self.place(id));
                continue;
            }
            if let Some(other) = self.better_elsewhere(cpu, id) {
                actions.push(Action::Unpark(other));
                continue;
            }
            let owed = g.reservation.as_ref().is_some_and(|b| b.tokens > 0);
            let key = (!owed, g.vtime, progress, id.0);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, id));
            }
        }
        let Some((_, id)) = best else {
            return (None, actions);
        };

        // The slice: a quantum, cut short by the limit's tokens and the skew bound.
        let mut len = self.cfg.quantum_ns as i64;
        let group = self.tasks[&id].group;
        if let Some(b) = &self.groups[&group].limit {
            // Not shorter than MIN_SLICE: the overrun is a debt the bucket carries, so the
            // limit holds on average without slices too short to be worth a switch.
            len = len.min(b.tokens.max(MIN_SLICE_NS as i64));
        }
        if let Some(room) = self.skew_room(id) {
            len = len.min(room.max(MIN_SLICE_NS as i64));
        }
        let t = self.tasks.get_mut(&id).expect("picked task exists");
        if t.last_cpu.is_some_and(|l| l != cpu) {
            t.times.migrations += 1;
        }
        t.state = State::Running { cpu };
        t.last_cpu = Some(cpu);
        t.times.slices += 1;
        self.cpus[cpu].running = Some(id);
        self.cpus[cpu].idle = false;
        self.set_acct(id, AcctState::Run, now);
        (
            Some(Pick {
                task: id,
                until: now + len as u64,
            }),
            actions,
        )
    }

    /// Ends the slice running on `cpu`: charges `used` nanoseconds of CPU to the task and
    /// its group and moves the task on as `end` says.
    pub fn end_slice(&mut self, cpu: usize, used: Ns, end: SliceEnd, now: Ns) -> Vec<Action> {
        let Some(id) = self.cpus[cpu].running.take() else {
            return Vec::new();
        };
        self.cpus[cpu].used += used;
        let Some(t) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        t.times.used += used;
        t.progress += used;
        let woken = std::mem::take(&mut t.woken);
        let group = t.group;
        let end = match end {
            SliceEnd::Wait(_) if woken => SliceEnd::Ready,
            e => e,
        };
        if let Some(g) = self.groups.get_mut(&group) {
            g.vtime += used as u128 * VT_SCALE / g.params.shares.max(1) as u128;
            if let Some(b) = &mut g.limit {
                b.refill(now);
                b.tokens -= used as i64;
            }
            if let Some(b) = &mut g.reservation {
                b.refill(now);
                b.tokens = (b.tokens - used as i64).max(0);
            }
        }
        let t = self.tasks.get_mut(&id).expect("task exists");
        match end {
            SliceEnd::Ready => {
                t.state = State::Ready;
                self.set_acct(id, AcctState::Ready, now);
                Vec::new()
            }
            SliceEnd::Wait(until) => {
                t.state = State::Wait { until };
                if let Some(g) = self.groups.get_mut(&group) {
                    g.active -= 1;
                }
                self.set_acct(id, AcctState::Wait, now);
                // A ready sibling held back by this one's lead may run now.
                self.unpark_for_group(group)
            }
            SliceEnd::Done => {
                t.state = State::Done;
                if let Some(g) = self.groups.get_mut(&group) {
                    g.active -= 1;
                }
                self.set_acct(id, AcctState::Done, now);
                self.unpark_for_group(group)
            }
        }
    }

    fn unpark_for_group(&self, group: GroupId) -> Vec<Action> {
        let Some(g) = self.groups.get(&group) else {
            return Vec::new();
        };
        g.tasks
            .iter()
            .filter(|t| self.tasks.get(t).is_some_and(|t| t.state == State::Ready))
            .flat_map(|t| self.place(*t))
            .take(1)
            .collect()
    }

    /// Marks `cpu` idle; returns when it must look again even if nobody wakes it (the
    /// earliest timed wait or limit refill), `None` = only a wake-up.
    pub fn idle(&mut self, cpu: usize) -> Option<Ns> {
        self.cpus[cpu].idle = true;
        self.next_event()
    }

    pub fn busy(&mut self, cpu: usize) {
        self.cpus[cpu].idle = false;
    }

    /// The earliest time something becomes ready without a wake-up.
    pub fn next_event(&self) -> Option<Ns> {
        let waits = self.tasks.values().filter_map(|t| match t.state {
            State::Wait { until } => until,
            _ => None,
        });
        let refills = self.groups.values().filter_map(|g| {
            let b = g.limit.as_ref()?;
            (g.active > 0 && b.tokens <= 0).then(|| b.refill_at())
        });
        // A co-stopped task becomes runnable when its laggard runs, which is an event of
        // its own; a reservation owed changes priority only, not readiness.
        waits.chain(refills).min()
    }

    /// The task running on `cpu`.
    pub fn running(&self, cpu: usize) -> Option<TaskId> {
        self.cpus[cpu].running
    }

    /// The group of a task.
    pub fn group_of(&self, task: TaskId) -> Option<GroupId> {
        self.tasks.get(&task).map(|t| t.group)
    }

    pub fn is_idle(&self, cpu: usize) -> bool {
        self.cpus[cpu].idle
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
