//! vmk's CPU scheduler: it shares the host's logical CPUs among all vCPUs of all VMs, as
//! ESX's VMkernel does, instead of leaving one thread per vCPU to Linux.
//!
//! - One **worker** thread per logical CPU vmk may use, pinned to it. A vCPU is a [`Task`]
//!   that a worker runs in slices ([`Task::run`] returns at the end of its [`Slice`], when the
//!   guest waits, or when it is done), so 200 vCPUs run on 2 threads on a 2-CPU host.
//! - Tasks belong to **groups** (a VM) with ESX resource settings ([`GroupParams`]: shares,
//!   reservation, limit, affinity), admitted by [`Scheduler::add_group`] (admission control
//!   on reservations) and changeable while they run ([`Group::set_params`]).
//! - A group's vCPUs are co-scheduled loosely (relaxed co-scheduling); placement knows
//!   hyper-thread siblings and NUMA nodes ([`topology`]).
//! - Each task's time is accounted as esxtop does: used, ready, co-stop, limited, wait
//!   ([`TaskTimes`]); each CPU's used time too.
//!
//! The policy itself (`policy.rs`) is a state machine over explicit time, tested by
//! simulation; this file and `worker.rs` run it on threads. [`Mode::ThreadPerTask`] is the
//! old one-thread-per-vCPU way, kept as the baseline `bench/sched.sh` compares against.

pub mod policy;
pub mod topology;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use policy::{GroupParams, PolicyError, TaskTimes};
pub use topology::{LogicalCpu, Topology};

/// How the scheduler runs tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// vmk's scheduler: pinned workers, vmk's policy.
    #[default]
    Scheduler,
    /// Baseline: one thread per task, Linux decides (resource settings other than affinity
    /// are not applied; `bench/sched.sh` puts the threads in cgroups).
    ThreadPerTask,
}

/// A scheduler's configuration.
#[derive(Debug, Clone)]
pub struct SchedConfig {
    /// The logical CPUs to run on (one worker each).
    pub topology: Topology,
    /// MHz of one logical CPU (reservations and limits are in MHz).
    pub cpu_mhz: u64,
    pub quantum: Duration,
    /// Co-scheduling skew threshold.
    pub skew: Duration,
    /// Pin each worker to its CPU (off for made-up topologies in tests).
    pub pin: bool,
    pub mode: Mode,
}

impl SchedConfig {
    /// Every online CPU of this host, pinned, at the host's MHz.
    pub fn host() -> Result<SchedConfig, topology::TopologyError> {
        Ok(SchedConfig {
            topology: Topology::from_host()?,
            cpu_mhz: topology::host_cpu_mhz(),
            quantum: Duration::from_millis(10),
            skew: Duration::from_millis(3),
            pin: true,
            mode: Mode::Scheduler,
        })
    }
}

/// Where a slice must end: the task checks [`Slice::over`] between units of work (a vCPU
/// after each `Hart::run`), and is kicked when the scheduler wants the CPU back sooner.
pub struct Slice<'a> {
    until: Instant,
    preempt: &'a AtomicBool,
}

impl Slice<'_> {
    /// The slice's time is up or the scheduler wants the CPU back.
    pub fn over(&self) -> bool {
        self.preempt.load(Ordering::Relaxed) || Instant::now() >= self.until
    }

    /// When the slice ends at the latest.
    pub fn until(&self) -> Instant {
        self.until
    }
}

/// What a task did with its slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Yield {
    /// It has more to do now (the slice ended).
    Ready,
    /// It waits for [`TaskHandle::wake`] or until the time (a vCPU in WFI: its timer).
    Wait(Option<Instant>),
    /// It has finished; it is dropped and never run again.
    Done,
}

/// Something a worker runs in slices: a vCPU.
pub trait Task: Send {
    /// Runs until the slice is over, the task waits, or it is done. A panic is caught and
    /// ends the task (a task that can report its own failure should catch it itself).
    fn run(&mut self, slice: &Slice) -> Yield;
}

/// Makes a running task return from [`Task::run`] soon (a vCPU: `HartHandle::kick`).
pub type Kicker = Arc<dyn Fn() + Send + Sync>;

/// Counters of one logical CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuStats {
    /// The OS's CPU id.
    pub id: u32,
    /// Time it ran tasks, in nanoseconds.
    pub used_ns: u64,
}

/// The scheduler. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<worker::Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("mode", &self.inner.mode)
            .field("cpus", &self.inner.cpu_ids)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("starting the scheduler's worker for CPU {cpu}: {err}")]
    Spawn { cpu: u32, err: std::io::Error },
    #[error("starting a thread for task {name}: {err}")]
    SpawnTask { name: String, err: std::io::Error },
}

impl Scheduler {
    /// Starts the workers.
    pub fn new(cfg: SchedConfig) -> Result<Scheduler, SchedError> {
        Ok(Scheduler {
            inner: worker::Inner::start(cfg)?,
        })
    }

    /// The process's scheduler on every host CPU, started on first use (for `vmk run` and
    /// tests; the host daemon makes its own from its configuration).
    pub fn global() -> &'static Scheduler {
        static GLOBAL: OnceLock<Scheduler> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let cfg = SchedConfig::host().unwrap_or_else(|_| SchedConfig {
                topology: Topology::synthetic(1, topology::online_cpus(), 1),
                cpu_mhz: topology::host_cpu_mhz(),
                quantum: Duration::from_millis(10),
                skew: Duration::from_millis(3),
                pin: false,
                mode: Mode::Scheduler,
            });
            match Scheduler::new(cfg) {
                Ok(s) => s,
                // Without a worker nothing could run: the process cannot go on.
                Err(e) => panic!("cannot start vmk's CPU scheduler: {e}"),
            }
        })
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The OS ids of the CPUs it runs on.
    pub fn cpu_ids(&self) -> &[u32] {
        &self.inner.cpu_ids
    }

    pub fn cpu_mhz(&self) -> u64 {
        self.inner.cpu_mhz
    }

    /// Usable CPUs x MHz.
    pub fn capacity_mhz(&self) -> u64 {
        self.inner.cpu_ids.len() as u64 * self.inner.cpu_mhz
    }

    /// MHz reserved by the groups that exist.
    pub fn reserved_mhz(&self) -> u64 {
        self.inner.lock().policy.reserved_mhz()
    }

    /// Checks that a group with `params` and `vcpus` tasks would be admitted now.
    pub fn check(&self, params: &GroupParams, vcpus: usize) -> Result<(), PolicyError> {
        self.inner
            .lock()
            .policy
            .check(params, vcpus, None)
            .map(|_| ())
    }

    /// Admits a group of (up to) `vcpus` tasks.
    pub fn add_group(&self, params: GroupParams, vcpus: usize) -> Result<Group, SchedError> {
        let id = {
            let mut st = self.inner.lock();
            let now = self.inner.now();
            st.policy.add_group(params.clone(), vcpus, now)?
        };
        Ok(Group {
            inner: self.inner.clone(),
            id,
            params: std::sync::Mutex::new(params),
            tasks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Low-power placement: pack vCPUs onto as few CPUs as the load allows.
    pub fn set_pack(&self, pack: bool) {
        self.inner.lock().policy.set_pack(pack);
    }

    /// Per logical CPU: the time it ran tasks.
    pub fn cpu_stats(&self) -> Vec<CpuStats> {
        self.inner
            .lock()
            .policy
            .cpu_used()
            .into_iter()
            .map(|(id, used_ns)| CpuStats { id, used_ns })
            .collect()
    }
}

/// A group of tasks (a VM's vCPUs) with its resource settings. Dropping it after
/// [`Group::join`] releases its reservation.
pub struct Group {
    inner: Arc<worker::Inner>,
    id: policy::GroupId,
    params: std::sync::Mutex<GroupParams>,
    tasks: std::sync::Mutex<Vec<TaskHandle>>,
}

impl Group {
    /// Adds a task; it is ready at once. `name` names its thread in
    /// [`Mode::ThreadPerTask`] (Linux's 15 bytes).
    pub fn spawn(
        &self,
        name: &str,
        task: Box<dyn Task>,
        kick: Option<Kicker>,
    ) -> Result<TaskHandle, SchedError> {
        let h = self.inner.spawn(self.id, name, task, kick)?;
        vmk_base::lock(&self.tasks).push(h.clone());
        Ok(h)
    }

    /// Changes shares, reservation, limit or affinity; takes effect at once.
    pub fn set_params(&self, params: GroupParams) -> Result<(), PolicyError> {
        self.inner.set_params(self.id, params.clone())?;
        *vmk_base::lock(&self.params) = params;
        Ok(())
    }

    pub fn params(&self) -> GroupParams {
        vmk_base::lock(&self.params).clone()
    }

    /// The group's NUMA home node.
    pub fn home_node(&self) -> u32 {
        self.inner.lock().policy.home_node(self.id).unwrap_or(0)
    }

    /// Waits until every task has finished.
    pub fn join(&self) {
        let tasks = vmk_base::lock(&self.tasks).clone();
        for t in tasks {
            t.join();
        }
    }

    /// Accounting of each task, in spawn order.
    pub fn times(&self) -> Vec<TaskTimes> {
        vmk_base::lock(&self.tasks)
            .iter()
            .map(TaskHandle::times)
            .collect()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.inner.remove_group(self.id);
    }
}

/// A handle on one task: wake it, read its accounting. Cheap to clone.
#[derive(Clone)]
pub struct TaskHandle {
    kind: worker::HandleKind,
}

impl TaskHandle {
    /// Makes a waiting task ready (an interrupt for a vCPU in WFI, an IPI, a start). A
    /// running task will not wait at the end of its slice. Cheap; callable from any thread,
    /// also from inside a task.
    pub fn wake(&self) {
        worker::wake(&self.kind)
    }

    /// Its time per state so far.
    pub fn times(&self) -> TaskTimes {
        worker::times(&self.kind)
    }

    /// Waits until the task has finished.
    pub fn join(&self) {
        worker::join(&self.kind)
    }
}
