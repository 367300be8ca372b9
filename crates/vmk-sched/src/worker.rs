//! Runs the policy on threads: one pinned worker per logical CPU, the policy and the idle
//! tasks behind one mutex (held for microseconds: picks, slice ends, wake-ups; never while a
//! task runs). Also the thread-per-task baseline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use vmk_base::lock;

use crate::policy::{Action, GroupId, Ns, Policy, PolicyConfig, SliceEnd, TaskId, TaskTimes};
use crate::{Kicker, Mode, SchedConfig, SchedError, Slice, Task, TaskHandle, Yield};

pub(crate) struct State {
    pub policy: Policy,
    /// Tasks not running now (a worker takes a task out for its slice).
    boxes: HashMap<TaskId, Box<dyn Task>>,
    kickers: HashMap<TaskId, Kicker>,
    /// Finished tasks being dropped (outside the lock); joiners wait for them too.
    finishing: std::collections::HashSet<TaskId>,
    /// When the timer thread wakes next (`Ns::MAX`: only when told). It keeps the time
    /// only while every CPU is busy; an idle worker keeps it itself (`park_until`).
    timer_at: Ns,
    /// Per CPU: when its parked worker wakes by itself (`Ns::MAX`: not parked, or only when
    /// unparked).
    park_until: Vec<Ns>,
    shutdown: bool,
}

struct WorkerSlot {
    thread: OnceLock<Thread>,
    preempt: AtomicBool,
}

pub(crate) struct Inner {
    pub mode: Mode,
    pub cpu_ids: Vec<u32>,
    pub cpu_mhz: u64,
    quantum: Duration,
    epoch: Instant,
    state: Mutex<State>,
    /// Signalled when a task finishes (joiners wait on it).
    done: Condvar,
    /// Wakes the timer thread when an earlier timed event is due than it sleeps for.
    timer: Condvar,
    workers: Vec<WorkerSlot>,
}

impl Inner {
    pub fn start(cfg: SchedConfig) -> Result<Arc<Inner>, SchedError> {
        let policy = Policy::new(
            &cfg.topology,
            PolicyConfig {
                quantum_ns: cfg.quantum.as_nanos() as Ns,
                skew_ns: cfg.skew.as_nanos() as Ns,
                cpu_mhz: cfg.cpu_mhz.max(1),
                ..Default::default()
            },
        );
        let cpu_ids: Vec<u32> = cfg.topology.cpus.iter().map(|c| c.id).collect();
        let n = if cfg.mode == Mode::Scheduler {
            cpu_ids.len()
        } else {
            0
        };
        let inner = Arc::new(Inner {
            mode: cfg.mode,
            cpu_ids: cpu_ids.clone(),
            cpu_mhz: cfg.cpu_mhz.max(1),
            quantum: cfg.quantum,
            epoch: Instant::now(),
            state: Mutex::new(State {
                policy,
                boxes: HashMap::new(),
                kickers: HashMap::new(),
                finishing: Default::default(),
                timer_at: Ns::MAX,
                park_until: vec![Ns::MAX; cpu_ids.len()],
                shutdown: false,
            }),
            done: Condvar::new(),
            timer: Condvar::new(),
            workers: (0..n)
                .map(|_| WorkerSlot {
                    thread: OnceLock::new(),
                    preempt: AtomicBool::new(false),
                })
                .collect(),
        });
        for (cpu, &id) in cpu_ids.iter().enumerate().take(n) {
            let w = Arc::downgrade(&inner);
            let pin = cfg.pin;
            let t = std::thread::Builder::new()
                .name(format!("vmk-cpu{id}"))
                .spawn(move || worker(w, cpu, id, pin))
                .map_err(|err| SchedError::Spawn { cpu: id, err })?;
            let _ = inner.workers[cpu].thread.set(t.thread().clone());
        }
        if n > 0 {
            let w = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("vmk-sched-timer".into())
                .spawn(move || timer(w))
                .map_err(|err| SchedError::Spawn { cpu: u32::MAX, err })?;
        }
        Ok(inner)
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn now(&self) -> Ns {
        self.epoch.elapsed().as_nanos() as Ns
    }

    fn ns_of(&self, t: Instant) -> Ns {
        t.saturating_duration_since(self.epoch).as_nanos() as Ns
    }

    fn instant_of(&self, ns: Ns) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// Makes sure someone wakes for the next timed event (a guest timer, a limit refill):
    /// an idle worker parked until then, or, when every CPU is busy, the timer thread. An
    /// idle host's guest timer so costs one thread wake-up (the worker's), not three.
    fn rearm(&self, st: &mut State) {
        let Some(next) = st.policy.next_event() else {
            return;
        };
        let idle: Vec<usize> = (0..self.workers.len())
            .filter(|&c| st.policy.is_idle(c))
            .collect();
        if idle.is_empty() {
            if next < st.timer_at {
                st.timer_at = next;
                self.timer.notify_one();
            }
        } else if idle.iter().all(|&c| st.park_until[c] > next) {
            // The idle workers would sleep past it: one looks again (and parks until then).
            let c = idle[0];
            st.park_until[c] = Ns::MAX;
            if let Some(t) = self.workers[c].thread.get() {
                t.unpark();
            }
        }
    }

    /// Carries out the policy's requests (under the state lock: both are cheap).
    fn apply(&self, st: &mut State, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Unpark(c) => {
                    // Claimed: further placements look for another idle CPU.
                    if st.policy.is_idle(c) {
                        st.policy.busy(c);
                        if let Some(t) = self.workers[c].thread.get() {
                            t.unpark();
                        }
                    }
                }
                Action::Preempt(c) => {
                    self.workers[c].preempt.store(true, Ordering::Relaxed);
                    if let Some(k) = st.policy.running(c).and_then(|t| st.kickers.get(&t)) {
                        k();
                    }
                }
            }
        }
    }

    pub fn spawn(
        self: &Arc<Self>,
        group: GroupId,
        name: &str,
        task: Box<dyn Task>,
        kick: Option<Kicker>,
    ) -> Result<TaskHandle, SchedError> {
        if self.mode == Mode::ThreadPerTask {
            return spawn_thread(self, group, name, task);
        }
        let mut st = self.lock();
        let now = self.now();
        let (id, actions) = st.policy.add_task(group, now)?;
        st.boxes.insert(id, task);
        if let Some(k) = kick {
            st.kickers.insert(id, k);
        }
        self.apply(&mut st, actions);
        self.rearm(&mut st);
        Ok(TaskHandle {
            kind: HandleKind::Sched {
                inner: Arc::downgrade(self),
                id,
                last: Arc::new(Mutex::new(TaskTimes::default())),
            },
        })
    }

    pub fn set_params(
        &self,
        group: GroupId,
        params: crate::GroupParams,
    ) -> Result<(), crate::PolicyError> {
        let mut st = self.lock();
        let now = self.now();
        let actions = st.policy.set_params(group, params, now)?;
        self.apply(&mut st, actions);
        self.rearm(&mut st);
        Ok(())
    }

    pub fn remove_group(&self, group: GroupId) {
        let mut st = self.lock();
        if st.policy.group_done(group) {
            st.policy.remove_group(group);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.state).shutdown = true;
        self.timer.notify_all();
        for w in &self.workers {
            if let Some(t) = w.thread.get() {
                t.unpark();
            }
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> Ns {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as Ns) * 1_000_000_000 + ts.tv_nsec as Ns
}

/// Pins the calling thread to the listed CPUs (a worker: its one CPU; a thread-per-task
/// thread: its VM's affinity).
fn pin_to(cpus: &[u32]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c as usize >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(std::io::Error::other(format!(
                "CPU {c} is beyond cpu_set_t"
            )));
        }
        // SAFETY: the index is checked against the set's size above.
        unsafe { libc::CPU_SET(c as usize, &mut set) };
    }
    // SAFETY: the set lives across the call; 0 = the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Linux delays a sleeping thread's wake-up by its timer slack (50 us by default); the
/// threads that keep guest timers (idle workers, the timer thread) ask for 1 us.
fn low_timer_slack() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes one integer argument and changes only the
    // calling thread's slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

fn worker(w: Weak<Inner>, cpu: usize, id: u32, pin: bool) {
    // An idle worker keeps the time for guest timers (see Inner::rearm).
    low_timer_slack();
    if pin {
        if let Err(e) = pin_to(&[id]) {
            // Still useful unpinned (a cpuset that excludes the CPU, a container).
            tracing::warn!("cannot pin the scheduler's worker of CPU {id}: {e}; it runs unpinned");
        }
    }
    loop {
        let Some(inner) = w.upgrade() else { return };
        let mut st = inner.lock();
        if st.shutdown {
            return;
        }
        let now = inner.now();
        let (pick, actions) = st.policy.pick(cpu, now);
        inner.apply(&mut st, actions);
        let Some(pick) = pick else {
            // Idle until a wake-up or a better placement unparks it, or until the next timed
            // event: an idle worker keeps the time (the timer thread only when all are busy).
            let next = st.policy.idle(cpu).unwrap_or(Ns::MAX);
            st.park_until[cpu] = next;
            drop(st);
            let timeout =
                (next != Ns::MAX).then(|| Duration::from_nanos(next.saturating_sub(inner.now())));
            drop(inner);
            match timeout {
                Some(t) if t.is_zero() => {}
                Some(t) => std::thread::park_timeout(t),
                None => std::thread::park(),
            }
            if let Some(inner) = w.upgrade() {
                let mut st = inner.lock();
                st.park_until[cpu] = Ns::MAX;
                st.policy.busy(cpu);
            }
            continue;
        };
        // Busy now: if that was the last idle CPU, the timer thread keeps the time.
        inner.rearm(&mut st);
        let Some(mut task) = st.boxes.remove(&pick.task) else {
            // Cannot happen (a picked task is not running elsewhere); end the slice.
            st.policy.end_slice(cpu, 0, SliceEnd::Done, now);
            continue;
        };
        let slot = &inner.workers[cpu];
        slot.preempt.store(false, Ordering::Relaxed);
        drop(st);
        let t0 = thread_cpu_ns();
        let slice = Slice {
            until: inner.instant_of(pick.until),
            preempt: &slot.preempt,
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run(&slice)));
        let used = thread_cpu_ns().saturating_sub(t0);
        let end = match r {
            Ok(Yield::Ready) => SliceEnd::Ready,
            Ok(Yield::Wait(until)) => SliceEnd::Wait(until.map(|u| inner.ns_of(u))),
            Ok(Yield::Done) | Err(_) => SliceEnd::Done,
        };
        let mut st = inner.lock();
        let now = inner.now();
        let finished = if end == SliceEnd::Done {
            st.kickers.remove(&pick.task);
            st.finishing.insert(pick.task);
            Some(task)
        } else {
            st.boxes.insert(pick.task, task);
            None
        };
        let actions = st.policy.end_slice(cpu, used, end, now);
        inner.apply(&mut st, actions);
        drop(st);
        if let Some(t) = finished {
            // Dropped outside the lock: a task's drop may free a VM's memory.
            drop(t);
            inner.lock().finishing.remove(&pick.task);
            inner.done.notify_all();
        }
    }
}

/// The scheduler's timer: at the earliest timed event (a vCPU's timer deadline, a limit's
/// refill) it makes the task ready, which unparks an idle CPU or preempts a busy one, as a
/// timer interrupt does in a kernel. So a guest timer fires on time even when every CPU is
/// busy, not at the next slice end.
fn timer(w: Weak<Inner>) {
    low_timer_slack();
    loop {
        let Some(inner) = w.upgrade() else { return };
        let mut st = inner.lock();
        loop {
            if st.shutdown {
                return;
            }
            let now = inner.now();
            let actions = st.policy.tick(now);
            inner.apply(&mut st, actions);
            // With an idle CPU, its worker keeps the time (see rearm).
            let all_busy = (0..inner.workers.len()).all(|c| !st.policy.is_idle(c));
            let next = if all_busy {
                st.policy.next_event().unwrap_or(Ns::MAX)
            } else {
                Ns::MAX
            };
            st.timer_at = next;
            if next <= now {
                continue;
            }
            let wait = if next == Ns::MAX {
                // Re-checks that the scheduler still exists now and then.
                Duration::from_secs(1)
            } else {
                Duration::from_nanos(next - now)
            };
            st = inner
                .timer
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if next == Ns::MAX && st.timer_at == Ns::MAX {
                break;
            }
        }
        drop(st);
        drop(inner);
    }
}

// ---- handles ----

#[derive(Clone)]
pub(crate) enum HandleKind {
    Sched {
        inner: Weak<Inner>,
        id: TaskId,
        /// The last accounting read, kept for when the scheduler has forgotten the task.
        last: Arc<Mutex<TaskTimes>>,
    },
    Thread(Arc<ThreadTask>),
}

pub(crate) fn wake(h: &HandleKind) {
    match h {
        HandleKind::Sched { inner, id, .. } => {
            if let Some(inner) = inner.upgrade() {
                let mut st = inner.lock();
                let now = inner.now();
                let actions = st.policy.wake(*id, now);
                inner.apply(&mut st, actions);
                inner.rearm(&mut st);
            }
        }
        HandleKind::Thread(t) => {
            let mut w = lock(&t.woken);
            *w = true;
            t.cv.notify_all();
        }
    }
}

pub(crate) fn times(h: &HandleKind) -> TaskTimes {
    match h {
        HandleKind::Sched { inner, id, last } => {
            let fresh = inner.upgrade().and_then(|inner| {
                let now = inner.now();
                inner.lock().policy.times(*id, now)
            });
            let mut l = lock(last);
            if let Some(t) = fresh {
                *l = t;
            }
            *l
        }
        HandleKind::Thread(t) => {
            let mut times = *lock(&t.times);
            // Linux's own run-queue wait is the baseline's ready time.
            if let Some(tid) = *lock(&t.tid) {
                if let Some(r) = schedstat_wait_ns(tid) {
                    times.ready = r;
                }
            }
            times
        }
    }
}

pub(crate) fn join(h: &HandleKind) {
    match h {
        HandleKind::Sched { inner, id, .. } => {
            let Some(inner) = inner.upgrade() else { return };
            let mut st = inner.lock();
            while !st.policy.is_done(*id) || st.finishing.contains(id) {
                st = inner.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            drop(st);
            // Keep the final accounting.
            times(h);
        }
        HandleKind::Thread(t) => {
            let mut d = lock(&t.done);
            while !*d {
                d = t.done_cv.wait(d).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

// ---- the thread-per-task baseline ----

pub(crate) struct ThreadTask {
    woken: Mutex<bool>,
    cv: Condvar,
    done: Mutex<bool>,
    done_cv: Condvar,
    times: Mutex<TaskTimes>,
    tid: Mutex<Option<i32>>,
}

fn schedstat_wait_ns(tid: i32) -> Option<Ns> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

fn spawn_thread(
    inner: &Arc<Inner>,
    group: GroupId,
    name: &str,
    mut task: Box<dyn Task>,
) -> Result<TaskHandle, SchedError> {
    let t = Arc::new(ThreadTask {
        woken: Mutex::new(false),
        cv: Condvar::new(),
        done: Mutex::new(false),
        done_cv: Condvar::new(),
        times: Mutex::new(TaskTimes::default()),
        tid: Mutex::new(None),
    });
    let affinity = inner
        .lock()
        .policy
        .group_params(group)
        .and_then(|p| p.affinity.clone());
    let quantum = inner.quantum;
    let tt = t.clone();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // SAFETY: gettid has no arguments and cannot fail.
            *lock(&tt.tid) = Some(unsafe { libc::gettid() });
            if let Some(a) = &affinity {
                // As before: a thread that cannot be pinned runs anywhere.
                let _ = pin_to(a);
            }
            let never = AtomicBool::new(false);
            loop {
                let t0 = thread_cpu_ns();
                let slice = Slice {
                    until: Instant::now() + quantum,
                    preempt: &never,
                };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run(&slice)));
                let used = thread_cpu_ns().saturating_sub(t0);
                {
                    let mut times = lock(&tt.times);
                    times.used += used;
                    times.slices += 1;
                }
                match r {
                    Ok(Yield::Ready) => {}
                    Ok(Yield::Wait(until)) => {
                        let w0 = Instant::now();
                        let mut w = lock(&tt.woken);
                        while !*w {
                            let left = match until {
                                Some(u) => match u.checked_duration_since(Instant::now()) {
                                    Some(d) if !d.is_zero() => d,
                                    _ => break,
                                },
                                None => Duration::from_secs(3600),
                            };
                            w = tt
                                .cv
                                .wait_timeout(w, left)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        *w = false;
                        drop(w);
                        lock(&tt.times).wait += w0.elapsed().as_nanos() as Ns;
                    }
                    Ok(Yield::Done) | Err(_) => break,
                }
            }
            drop(task);
            *lock(&tt.done) = true;
            tt.done_cv.notify_all();
        })
        .map_err(|err| SchedError::SpawnTask {
            name: name.to_string(),
            err,
        })?;
    Ok(TaskHandle {
        kind: HandleKind::Thread(t),
    })
}
