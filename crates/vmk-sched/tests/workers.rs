//! The scheduler on real threads: many tasks on few workers, waits and wake-ups, timers,
//! affinity on a made-up topology, the thread-per-task baseline.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmk_sched::{GroupParams, Mode, SchedConfig, Scheduler, Slice, Task, Topology, Yield};

fn config(topology: Topology, mode: Mode) -> SchedConfig {
    SchedConfig {
        topology,
        cpu_mhz: 1000,
        quantum: Duration::from_millis(5),
        skew: Duration::from_millis(3),
        pin: false,
        mode,
    }
}

/// Spins `work` iterations in total, in slices; records the worker threads it ran on.
struct Spinner {
    left: u64,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Task for Spinner {
    fn run(&mut self, slice: &Slice) -> Yield {
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.seen.lock().unwrap().push(name);
        while self.left > 0 {
            for _ in 0..1000 {
                std::hint::black_box(self.left);
            }
            self.left -= 1;
            if slice.over() {
                return Yield::Ready;
            }
        }
        Yield::Done
    }
}

#[test]
fn two_hundred_tasks_on_two_workers() {
    let s = Scheduler::new(config(Topology::synthetic(1, 2, 1), Mode::Scheduler)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut groups = Vec::new();
    for _ in 0..100 {
        let g = s.add_group(GroupParams::default(), 2).unwrap();
        for i in 0..2 {
            g.spawn(
                &format!("t{i}"),
                Box::new(Spinner {
                    left: 200,
                    seen: seen.clone(),
                }),
                None,
            )
            .unwrap();
        }
        groups.push(g);
    }
    for g in &groups {
        g.join();
        for t in g.times() {
            assert!(t.used > 0 && t.slices >= 1, "{t:?}");
        }
    }
    let mut names = seen.lock().unwrap().clone();
    names.sort();
    names.dedup();
    assert_eq!(names, ["vmk-cpu0", "vmk-cpu1"]);
    let used: u64 = s.cpu_stats().iter().map(|c| c.used_ns).sum();
    assert!(used > 0);
}

/// Waits until woken, `rounds` times, counting the wake-ups it saw.
struct Sleeper {
    rounds: usize,
    woke: Arc<AtomicUsize>,
    timed: Option<Duration>,
}

impl Task for Sleeper {
    fn run(&mut self, _slice: &Slice) -> Yield {
        if self.rounds == 0 {
            return Yield::Done;
        }
        self.rounds -= 1;
        self.woke.fetch_add(1, Ordering::SeqCst);
        Yield::Wait(self.timed.map(|d| Instant::now() + d))
    }
}

#[test]
fn waits_end_with_a_wake_up_or_their_time() {
    for mode in [Mode::Scheduler, Mode::ThreadPerTask] {
        let s = Scheduler::new(config(Topology::synthetic(1, 2, 1), mode)).unwrap();
        let g = s.add_group(GroupParams::default(), 2).unwrap();
        let woke = Arc::new(AtomicUsize::new(0));
        let h = g
            .spawn(
                "sleeper",
                Box::new(Sleeper {
                    rounds: 3,
                    woke: woke.clone(),
                    timed: None,
                }),
                None,
            )
            .unwrap();
        // It runs once and waits; only wake-ups bring it back.
        let t0 = Instant::now();
        while woke.load(Ordering::SeqCst) < 1 {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            woke.load(Ordering::SeqCst),
            1,
            "{mode:?}: ran without a wake-up"
        );
        for n in 2..=3 {
            h.wake();
            while woke.load(Ordering::SeqCst) < n {
                assert!(t0.elapsed() < Duration::from_secs(5), "{mode:?}");
                std::thread::yield_now();
            }
        }
        h.wake();
        h.join();
        let t = h.times();
        assert!(t.wait >= 40_000_000, "{mode:?}: {t:?}");
        // A timed wait ends by itself.
        let woke = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let h = g
            .spawn(
                "timed",
                Box::new(Sleeper {
                    rounds: 3,
                    woke: woke.clone(),
                    timed: Some(Duration::from_millis(20)),
                }),
                None,
            )
            .unwrap();
        h.join();
        assert!(t0.elapsed() >= Duration::from_millis(60), "{mode:?}");
        assert_eq!(woke.load(Ordering::SeqCst), 3);
    }
}

/// Busy until told to stop; counts its slices.
struct Busy {
    stop: Arc<AtomicUsize>,
    spins: Arc<AtomicU64>,
    cpus: Arc<Mutex<Vec<String>>>,
}

impl Task for Busy {
    fn run(&mut self, slice: &Slice) -> Yield {
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.cpus.lock().unwrap().push(name);
        loop {
            if self.stop.load(Ordering::SeqCst) != 0 {
                return Yield::Done;
            }
            self.spins.fetch_add(1, Ordering::Relaxed);
            if slice.over() {
                return Yield::Ready;
            }
        }
    }
}

#[test]
fn affinity_on_a_made_up_topology_and_changed_while_running() {
    // 2 sockets x 2 cores x 2 threads = 8 workers on this small machine, unpinned.
    let s = Scheduler::new(config(Topology::synthetic(2, 2, 2), Mode::Scheduler)).unwrap();
    let g = s
        .add_group(
            GroupParams {
                affinity: Some(vec![5]),
                ..Default::default()
            },
            1,
        )
        .unwrap();
    let stop = Arc::new(AtomicUsize::new(0));
    let cpus = Arc::new(Mutex::new(Vec::new()));
    g.spawn(
        "busy",
        Box::new(Busy {
            stop: stop.clone(),
            spins: Arc::new(AtomicU64::new(0)),
            cpus: cpus.clone(),
        }),
        None,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let before: Vec<String> = std::mem::take(&mut *cpus.lock().unwrap());
    assert!(!before.is_empty());
    assert!(before.iter().all(|n| n == "vmk-cpu5"), "{before:?}");
    g.set_params(GroupParams {
        affinity: Some(vec![2]),
        ..Default::default()
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let after: Vec<String> = cpus.lock().unwrap().clone();
    assert!(after.iter().skip(1).all(|n| n == "vmk-cpu2"), "{after:?}");
    stop.store(1, Ordering::SeqCst);
    g.join();
}

/// A timed wait ends at its time even when the only CPU is busy with another task: the
/// timer preempts, it does not wait for the busy task's slice to end (50 ms here).
#[test]
fn timers_preempt_a_busy_cpu() {
    let mut cfg = config(Topology::synthetic(1, 1, 1), Mode::Scheduler);
    cfg.quantum = Duration::from_millis(50);
    let s = Scheduler::new(cfg).unwrap();
    let g = s.add_group(GroupParams::default(), 1).unwrap();
    let stop = Arc::new(AtomicUsize::new(0));
    let spins = Arc::new(AtomicU64::new(0));
    let busy = Busy {
        stop: stop.clone(),
        spins: spins.clone(),
        cpus: Arc::new(Mutex::new(Vec::new())),
    };
    let kick_stop = stop.clone();
    // The busy task ends its slice when kicked (a vCPU: HartHandle::kick).
    let kicked = Arc::new(AtomicUsize::new(0));
    let k = kicked.clone();
    g.spawn(
        "busy",
        Box::new(busy),
        Some(Arc::new(move || {
            k.fetch_add(1, Ordering::SeqCst);
        })),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let g2 = s.add_group(GroupParams::default(), 1).unwrap();
    let woke = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let h = g2
        .spawn(
            "timed",
            Box::new(Sleeper {
                rounds: 20,
                woke: woke.clone(),
                timed: Some(Duration::from_millis(2)),
            }),
            None,
        )
        .unwrap();
    h.join();
    let took = t0.elapsed();
    kick_stop.store(1, Ordering::SeqCst);
    g.join();
    // 20 waits of 2 ms; waiting for slice ends instead would take about 20 x 50 ms.
    assert!(
        took < Duration::from_millis(500),
        "20 timed waits took {took:?}"
    );
    assert!(
        kicked.load(Ordering::SeqCst) >= 10,
        "the busy task was not preempted"
    );
    assert!(spins.load(Ordering::Relaxed) > 0);
}

/// A limited task alone on an idle scheduler gets its share and no more, and comes back
/// after each refill without anyone waking it (the timer does).
#[test]
fn a_limited_task_runs_at_its_limit_on_an_idle_host() {
    let s = Scheduler::new(config(Topology::synthetic(1, 2, 1), Mode::Scheduler)).unwrap();
    let g = s
        .add_group(
            GroupParams {
                limit_mhz: Some(250),
                ..Default::default()
            },
            1,
        )
        .unwrap();
    let stop = Arc::new(AtomicUsize::new(0));
    let h = g
        .spawn(
            "capped",
            Box::new(Busy {
                stop: stop.clone(),
                spins: Arc::new(AtomicU64::new(0)),
                cpus: Arc::new(Mutex::new(Vec::new())),
            }),
            None,
        )
        .unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let t = h.times();
    let wall = t0.elapsed().as_nanos() as f64;
    stop.store(1, Ordering::SeqCst);
    g.join();
    // A quarter of a CPU (250 of 1000 MHz), within the first burst's allowance.
    let f = t.used as f64 / wall;
    assert!((0.2..0.33).contains(&f), "used {f:.3} of a CPU: {t:?}");
    // Much of the rest it was held back by the limit (the rest: wake-ups after a refill,
    // and on a busy test host the time Linux ran something else on the worker's CPU).
    assert!(t.limited as f64 > 0.15 * wall, "{t:?}");
}
