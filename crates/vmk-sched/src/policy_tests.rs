//! The policy driven through simulated time: exact fairness, limits, reservations, co-stop
//! and placement, without threads or a clock.

use super::*;
use crate::topology::Topology;

const MS: Ns = 1_000_000;
const S: Ns = 1_000_000_000;

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Always has work.
    Busy,
    /// Runs `run` ns of CPU, then waits `sleep` ns, again and again.
    Periodic { run: Ns, sleep: Ns },
}

struct SimTask {
    behaviour: Behaviour,
    /// CPU still to run before the next wait (Periodic).
    left: Ns,
    /// Wake-up time of a periodic task's wait.
    wake_at: Option<Ns>,
    /// Times from a wake-up to the start of the next slice.
    latencies: Vec<Ns>,
    woken_at: Option<Ns>,
    cpus_seen: Vec<usize>,
}

struct Sim {
    p: Policy,
    now: Ns,
    slices: Vec<Option<(TaskId, Ns, Ns)>>,
    /// CPUs whose worker is parked (it picks again only when unparked), as in worker.rs;
    /// all at first, as on a running host whose workers found nothing to do.
    parked: Vec<bool>,
    tasks: HashMap<TaskId, SimTask>,
    preempts: u64,
}

impl Sim {
    fn new(topology: Topology, cfg: PolicyConfig) -> Sim {
        let n = topology.cpus.len();
        Sim {
            p: Policy::new(&topology, cfg),
            now: 0,
            slices: vec![None; n],
            parked: vec![true; n],
            tasks: HashMap::new(),
            preempts: 0,
        }
    }

    fn cpus(n: u32) -> Sim {
        Sim::new(
            Topology::synthetic(1, n, 1),
            PolicyConfig {
                cpu_mhz: 1000,
                ..Default::default()
            },
        )
    }

    fn group(&mut self, params: GroupParams, behaviours: &[Behaviour]) -> (GroupId, Vec<TaskId>) {
        let g = self
            .p
            .add_group(params, behaviours.len(), self.now)
            .unwrap();
        let mut ids = Vec::new();
        for &b in behaviours {
            let (id, actions) = self.p.add_task(g, self.now).unwrap();
            self.apply(actions);
            let left = match b {
                Behaviour::Busy => Ns::MAX,
                Behaviour::Periodic { run, .. } => run,
            };
            self.tasks.insert(
                id,
                SimTask {
                    behaviour: b,
                    left,
                    wake_at: None,
                    latencies: Vec::new(),
                    woken_at: Some(self.now),
                    cpus_seen: Vec::new(),
                },
            );
            ids.push(id);
        }
        (g, ids)
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            if let Action::Preempt(c) = a {
                if self.slices[c].is_some() {
                    self.preempts += 1;
                    self.end(c, SliceEnd::Ready);
                }
            }
            // Unpark: as the worker does, the CPU is claimed (no longer idle) until it
            // picks; idle CPUs pick at every step anyway.
            if let Action::Unpark(c) = a {
                if self.p.is_idle(c) {
                    self.p.busy(c);
                    self.parked[c] = false;
                }
            }
        }
    }

    fn end(&mut self, c: usize, end: SliceEnd) {
        let (id, start, _) = self.slices[c].take().unwrap();
        let used = self.now - start;
        let st = self.tasks.get_mut(&id).unwrap();
        if st.left != Ns::MAX {
            st.left -= used.min(st.left);
        }
        let actions = self.p.end_slice(c, used, end, self.now);
        self.apply(actions);
    }

    fn run(&mut self, dur: Ns) {
        let end_at = self.now + dur;
        while self.now < end_at {
            // External wake-ups due now.
            let due: Vec<TaskId> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.wake_at.is_some_and(|w| w <= self.now))
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                let t = self.tasks.get_mut(&id).unwrap();
                t.wake_at = None;
                t.woken_at = Some(self.now);
                if let Behaviour::Periodic { run, .. } = t.behaviour {
                    t.left = run;
                }
                let a = self.p.wake(id, self.now);
                self.apply(a);
            }
            // The timer thread: timed waits and limit refills.
            let actions = self.p.tick(self.now);
            self.apply(actions);
            // CPUs without a slice that are awake pick (until none changes: a pick can
            // unpark another CPU).
            for _ in 0..4 {
                for c in 0..self.slices.len() {
                    if self.slices[c].is_none() && !self.parked[c] {
                        let (pick, actions) = self.p.pick(c, self.now);
                        if let Some(pk) = pick {
                            let st = self.tasks.get_mut(&pk.task).unwrap();
                            if let Some(w) = st.woken_at.take() {
                                st.latencies.push(self.now - w);
                            }
                            st.cpus_seen.push(c);
                            self.slices[c] = Some((pk.task, self.now, pk.until));
                        } else {
                            self.p.idle(c);
                            self.parked[c] = true;
                        }
                        self.apply(actions);
                    }
                }
            }
            // Next event: a slice ends (its time or the task's work), a wake-up, a timer.
            let mut next = end_at;
            for (id, start, until) in self.slices.iter().flatten() {
                let left = self.tasks[id].left;
                next = next
                    .min(*until)
                    .min(start.saturating_add(left).max(self.now + 1));
            }
            for t in self.tasks.values() {
                if let Some(w) = t.wake_at {
                    next = next.min(w);
                }
            }
            if let Some(e) = self.p.next_event() {
                next = next.min(e.max(self.now + 1));
            }
            self.now = next.max(self.now + 1);
            for c in 0..self.slices.len() {
                let Some((id, start, until)) = self.slices[c] else {
                    continue;
                };
                let t = &self.tasks[&id];
                let done_work = t.left != Ns::MAX && self.now - start >= t.left;
                if done_work {
                    let Behaviour::Periodic { sleep, .. } = t.behaviour else {
                        unreachable!()
                    };
                    let wake = self.now + sleep;
                    self.tasks.get_mut(&id).unwrap().wake_at = Some(wake);
                    self.end(c, SliceEnd::Wait(None));
                } else if self.now >= until {
                    self.end(c, SliceEnd::Ready);
                }
            }
        }
        // Close the running slices so that the accounting is complete at `now`.
        for c in 0..self.slices.len() {
            if self.slices[c].is_some() {
                self.end(c, SliceEnd::Ready);
            }
        }
    }

    fn times(&self, id: TaskId) -> TaskTimes {
        self.p.times(id, self.now).unwrap()
    }

    fn used(&self, ids: &[TaskId]) -> Ns {
        ids.iter().map(|&i| self.times(i).used).sum()
    }
}

fn pinned(cpu: u32, shares: u32) -> GroupParams {
    GroupParams {
        shares,
        affinity: Some(vec![cpu]),
        ..Default::default()
    }
}

fn ratio(a: Ns, b: Ns) -> f64 {
    a as f64 / b as f64
}

#[test]
fn shares_2_to_1_on_one_cpu() {
    let mut sim = Sim::cpus(2);
    let (_, a) = sim.group(pinned(0, 2000), &[Behaviour::Busy]);
    let (_, b) = sim.group(pinned(0, 1000), &[Behaviour::Busy]);
    sim.run(10 * S);
    let r = ratio(sim.used(&a), sim.used(&b));
    assert!((r - 2.0).abs() < 0.02, "2:1 shares gave {r:.4}");
    // All of CPU 0, none of CPU 1; the smaller share waited in the ready queue.
    assert!(sim.used(&a) + sim.used(&b) >= 10 * S - MS);
    assert_eq!(sim.p.cpu_used()[1].1, 0);
    let rb = sim.times(b[0]).ready;
    assert!(rb > 6 * S && rb < 7 * S, "ready {rb}");
}

#[test]
fn shares_4_2_1_on_one_cpu_and_on_two() {
    let mut sim = Sim::cpus(2);
    let g: Vec<_> = [4000, 2000, 1000]
        .iter()
        .map(|&s| sim.group(pinned(0, s), &[Behaviour::Busy]).1)
        .collect();
    sim.run(7 * S);
    let u: Vec<f64> = g.iter().map(|t| sim.used(t) as f64 / S as f64).collect();
    for (got, want) in u.iter().zip([4.0, 2.0, 1.0]) {
        assert!((got - want).abs() / want < 0.02, "{u:?}");
    }
    // On two CPUs a 1-vCPU VM cannot use more than one: 4/7 of 2 CPUs is more than that,
    // so it gets one CPU and the others share the second 2:1.
    let mut sim = Sim::cpus(2);
    let g: Vec<_> = [4000, 2000, 1000]
        .iter()
        .map(|&s| {
            sim.group(
                GroupParams {
                    shares: s,
                    ..Default::default()
                },
                &[Behaviour::Busy],
            )
            .1
        })
        .collect();
    sim.run(6 * S);
    let u: Vec<f64> = g.iter().map(|t| sim.used(t) as f64 / S as f64).collect();
    for (got, want) in u.iter().zip([6.0, 4.0, 2.0]) {
        assert!((got - want).abs() / want < 0.03, "{u:?}");
    }
}

#[test]
fn idle_shares_go_to_busy_groups_and_are_not_banked() {
    let mut sim = Sim::cpus(1);
    let (_, a) = sim.group(pinned(0, 1000), &[Behaviour::Busy]);
    // B has 3x the shares but wants 1 ms every 100 ms.
    let (_, b) = sim.group(
        pinned(0, 3000),
        &[Behaviour::Periodic {
            run: MS,
            sleep: 99 * MS,
        }],
    );
    sim.run(5 * S);
    let (ua, ub) = (sim.used(&a), sim.used(&b));
    assert!(ub <= 51 * MS, "B used {ub}");
    assert!(ua + ub >= 5 * S - MS, "the CPU idled");
    // B's wake-ups preempt A at once: its vtime is behind.
    let lat = &sim.tasks[&b[0]].latencies;
    assert!(lat.iter().skip(1).all(|&l| l == 0), "latencies {lat:?}");
}

#[test]
fn a_group_back_from_idle_gets_its_share_not_a_burst() {
    let mut sim = Sim::cpus(1);
    let (_, a) = sim.group(pinned(0, 1000), &[Behaviour::Busy]);
    let (_, b) = sim.group(
        pinned(0, 1000),
        &[Behaviour::Periodic {
            run: 10 * MS,
            sleep: 5 * S,
        }],
    );
    sim.run(3 * S);
    // B now becomes busy: from here on the two split 1:1, B does not catch up on the
    // seconds it slept.
    sim.tasks.get_mut(&b[0]).unwrap().behaviour = Behaviour::Busy;
    sim.tasks.get_mut(&b[0]).unwrap().left = Ns::MAX;
    sim.tasks.get_mut(&b[0]).unwrap().wake_at = Some(sim.now);
    let (a0, b0) = (sim.used(&a), sim.used(&b));
    sim.run(S);
    let (da, db) = (sim.used(&a) - a0, sim.used(&b) - b0);
    let r = ratio(db, da);
    assert!((r - 1.0).abs() < 0.05, "after idle: {da} vs {db}");
}

#[test]
fn limit_caps_an_idle_host() {
    let mut sim = Sim::cpus(2);
    let (_, a) = sim.group(
        GroupParams {
            limit_mhz: Some(500),
            ..Default::default()
        },
        &[Behaviour::Busy],
    );
    sim.run(10 * S);
    let f = sim.used(&a) as f64 / (10 * S) as f64;
    assert!((f - 0.5).abs() < 0.01, "limited to half a CPU, used {f:.4}");
    let lim = sim.times(a[0]).limited;
    assert!(lim > 4 * S, "limited time {lim}");
    // A 2-vCPU VM limited to 1500 MHz on 2 CPUs: 1.5 CPUs.
    let mut sim = Sim::cpus(2);
    let (_, a) = sim.group(
        GroupParams {
            limit_mhz: Some(1500),
            ..Default::default()
        },
        &[Behaviour::Busy, Behaviour::Busy],
    );
    sim.run(10 * S);
    let f = sim.used(&a) as f64 / (10 * S) as f64;
    assert!((f - 1.5).abs() < 0.02, "used {f:.4} CPUs");
}

#[test]
fn reservation_is_guaranteed_under_contention() {
    let mut sim = Sim::cpus(1);
    let (_, a) = sim.group(
        GroupParams {
            shares: 1000,
            reservation_mhz: 800,
            affinity: Some(vec![0]),
            ..Default::default()
        },
        &[Behaviour::Busy],
    );
    let (_, b) = sim.group(pinned(0, 8000), &[Behaviour::Busy]);
    sim.run(10 * S);
    let fa = sim.used(&a) as f64 / (10 * S) as f64;
    assert!(fa >= 0.79, "reserved 80% got {fa:.4}");
    assert!(sim.used(&b) > S);
}

#[test]
fn admission_control() {
    let mut p = Policy::new(
        &Topology::synthetic(1, 2, 1),
        PolicyConfig {
            cpu_mhz: 2000,
            ..Default::default()
        },
    );
    let r = |mhz| GroupParams {
        reservation_mhz: mhz,
        ..Default::default()
    };
    p.add_group(r(3000), 2, 0).unwrap();
    let e = p.add_group(r(1500), 2, 0).unwrap_err();
    assert!(
        matches!(e, PolicyError::ReservationDoesNotFit { free: 1000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("1000 MHz free"), "{e}");
    let e = p.add_group(r(2500), 1, 0).unwrap_err();
    assert!(matches!(e, PolicyError::ReservationTooLarge { .. }), "{e}");
    p.add_group(r(1000), 1, 0).unwrap();
    assert_eq!(p.reserved_mhz(), 4000);
    let e = p
        .add_group(
            GroupParams {
                affinity: Some(vec![7]),
                ..Default::default()
            },
            1,
            0,
        )
        .unwrap_err();
    assert!(e.to_string().contains("CPU affinity 7"), "{e}");
}

#[test]
fn siblings_stay_within_the_skew_bound() {
    let mut sim = Sim::cpus(2);
    let (_, v) = sim.group(GroupParams::default(), &[Behaviour::Busy; 4]);
    let skew = sim.p.config().skew_ns;
    let q = sim.p.config().quantum_ns;
    for _ in 0..200 {
        sim.run(7 * MS);
        let used: Vec<Ns> = v.iter().map(|&t| sim.times(t).used).collect();
        let spread = used.iter().max().unwrap() - used.iter().min().unwrap();
        assert!(spread <= skew + q / 4, "spread {spread} of {used:?}");
    }
    // Each ran half the time (4 on 2 CPUs); the other half was co-stop or ready.
    for &t in &v {
        let tt = sim.times(t);
        assert!(
            (tt.used as f64 / sim.now as f64 - 0.5).abs() < 0.02,
            "{tt:?}"
        );
        assert!(tt.costop + tt.ready > sim.now / 3, "{tt:?}");
    }
}

#[test]
fn a_leader_is_co_stopped_while_another_vm_runs_the_laggards_cpu() {
    // A 2-vCPU VM on 1 CPU next to a busy 1-vCPU VM: its vCPUs alternate, neither gets
    // more than the skew ahead, and the leader accrues co-stop.
    let mut sim = Sim::cpus(1);
    let (_, v) = sim.group(pinned(0, 2000), &[Behaviour::Busy, Behaviour::Busy]);
    let (_, o) = sim.group(pinned(0, 1000), &[Behaviour::Busy]);
    sim.run(3 * S);
    let (a, b) = (sim.times(v[0]), sim.times(v[1]));
    assert!(
        a.used.abs_diff(b.used) <= sim.p.config().skew_ns + MS,
        "{a:?} {b:?}"
    );
    assert!(a.costop + b.costop > 0, "{a:?} {b:?}");
    let r = ratio(sim.used(&v), sim.used(&o));
    assert!((r - 2.0).abs() < 0.05, "2:1 gave {r}");
}

#[test]
fn placement_prefers_idle_cores_and_home_nodes() {
    // 2 sockets x 4 cores x 2 threads; CPU n and n+8 are siblings; CPUs 4-7, 12-15 node 1.
    let topo = Topology::synthetic(2, 4, 2);
    let mut sim = Sim::new(topo.clone(), PolicyConfig::default());
    let mut all = Vec::new();
    for _ in 0..8 {
        let (_, t) = sim.group(GroupParams::default(), &[Behaviour::Busy]);
        all.extend(t);
    }
    sim.run(50 * MS);
    // 8 busy vCPUs on 8 cores: never two on one core.
    let mut cores: Vec<usize> = all
        .iter()
        .map(|t| topo.cpus[*sim.tasks[t].cpus_seen.last().unwrap()].core)
        .collect();
    cores.sort_unstable();
    cores.dedup();
    assert_eq!(cores.len(), 8, "two vCPUs share a core: {cores:?}");
    // Groups alternate home nodes (fewest homed first) and run on them.
    for t in &all {
        let g = sim.p.group_of(*t).unwrap();
        let home = sim.p.home_node(g).unwrap();
        for &c in &sim.tasks[t].cpus_seen {
            assert_eq!(topo.cpus[c].node, home, "task {t:?} ran off its home node");
        }
    }
}

#[test]
fn affinity_is_respected_and_changes_at_once() {
    let topo = Topology::synthetic(2, 4, 2);
    let mut sim = Sim::new(topo, PolicyConfig::default());
    let (g, t) = sim.group(
        GroupParams {
            affinity: Some(vec![3, 11]),
            ..Default::default()
        },
        &[Behaviour::Busy, Behaviour::Busy, Behaviour::Busy],
    );
    sim.run(200 * MS);
    for id in &t {
        assert!(sim.tasks[id].cpus_seen.iter().all(|&c| c == 3 || c == 11));
    }
    // Three vCPUs on two allowed CPUs: about 2/3 of the time each.
    let used = sim.used(&t) as f64 / (200 * MS) as f64;
    assert!((used - 2.0).abs() < 0.02, "{used}");
    let actions = sim
        .p
        .set_params(
            g,
            GroupParams {
                affinity: Some(vec![0]),
                ..Default::default()
            },
            sim.now,
        )
        .unwrap();
    sim.apply(actions);
    for id in &t {
        sim.tasks.get_mut(id).unwrap().cpus_seen.clear();
    }
    sim.run(100 * MS);
    for id in &t {
        assert!(
            sim.tasks[id].cpus_seen.iter().all(|&c| c == 0),
            "{:?}",
            sim.tasks[id].cpus_seen
        );
    }
}

#[test]
fn wait_and_timers() {
    let mut sim = Sim::cpus(1);
    let (_, t) = sim.group(
        GroupParams::default(),
        &[Behaviour::Periodic {
            run: MS,
            sleep: 9 * MS,
        }],
    );
    sim.run(S);
    let tt = sim.times(t[0]);
    assert!(
        (tt.used as f64 - 100.0 * MS as f64).abs() < 2.0 * MS as f64,
        "{tt:?}"
    );
    assert!(tt.wait > 880 * MS, "{tt:?}");
    assert_eq!(tt.ready, 0, "{tt:?}");
}

#[test]
fn a_running_task_leaves_a_cpu_its_new_affinity_excludes() {
    let mut p = Policy::new(&Topology::synthetic(1, 2, 1), PolicyConfig::default());
    let g = p.add_group(GroupParams::default(), 1, 0).unwrap();
    let (t, _) = p.add_task(g, 0).unwrap();
    let (pick, _) = p.pick(1, 0);
    assert_eq!(pick.map(|p| p.task), Some(t));
    let a = p
        .set_params(
            g,
            GroupParams {
                affinity: Some(vec![0]),
                ..Default::default()
            },
            MS,
        )
        .unwrap();
    assert_eq!(a, [Action::Preempt(1)]);
    p.end_slice(1, MS, SliceEnd::Ready, MS);
    assert_eq!(p.pick(1, MS).0, None);
    assert_eq!(p.pick(0, MS).0.map(|p| p.task), Some(t));
}

#[test]
fn timed_waits_end_by_themselves() {
    let mut p = Policy::new(&Topology::synthetic(1, 1, 1), PolicyConfig::default());
    let g = p.add_group(GroupParams::default(), 1, 0).unwrap();
    let (t, _) = p.add_task(g, 0).unwrap();
    assert!(p.pick(0, 0).0.is_some());
    p.end_slice(0, MS, SliceEnd::Wait(Some(5 * MS)), MS);
    assert_eq!(p.pick(0, 2 * MS).0, None);
    assert_eq!(p.idle(0), Some(5 * MS));
    assert_eq!(p.pick(0, 5 * MS).0.map(|p| p.task), Some(t));
    // A wake-up while it runs: a wait at the end of the slice is no wait.
    p.wake(t, 6 * MS);
    p.end_slice(0, MS, SliceEnd::Wait(None), 6 * MS);
    assert_eq!(p.pick(0, 6 * MS).0.map(|p| p.task), Some(t));
    p.end_slice(0, MS, SliceEnd::Done, 7 * MS);
    assert!(p.is_done(t) && p.group_done(g));
    assert_eq!(p.next_event(), None);
}

#[test]
fn low_power_packs_onto_the_first_cpus() {
    // 1 socket x 4 cores x 2 threads: CPUs n and n+4 are siblings.
    let topo = Topology::synthetic(1, 4, 2);
    let mut sim = Sim::new(topo.clone(), PolicyConfig::default());
    sim.p.set_pack(true);
    let mut all = Vec::new();
    for _ in 0..2 {
        let (_, t) = sim.group(GroupParams::default(), &[Behaviour::Busy]);
        all.extend(t);
    }
    sim.run(50 * MS);
    // Two busy vCPUs on one core's two threads (CPU 0 and its sibling 4), not on two cores.
    let mut cpus: Vec<usize> = all
        .iter()
        .flat_map(|t| sim.tasks[t].cpus_seen.clone())
        .collect();
    cpus.sort_unstable();
    cpus.dedup();
    assert_eq!(cpus, [0, 4], "packed onto {cpus:?}");
    // Spread (the default): two cores.
    let mut sim = Sim::new(topo.clone(), PolicyConfig::default());
    let mut all = Vec::new();
    for _ in 0..2 {
        let (_, t) = sim.group(GroupParams::default(), &[Behaviour::Busy]);
        all.extend(t);
    }
    sim.run(50 * MS);
    let cores: Vec<usize> = all
        .iter()
        .map(|t| topo.cpus[*sim.tasks[t].cpus_seen.last().unwrap()].core)
        .collect();
    assert_ne!(cores[0], cores[1]);
}
