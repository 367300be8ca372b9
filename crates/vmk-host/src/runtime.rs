//! The real host behind [`HostApi`]: the inventory on disk, one set of threads per running
//! VM, consoles, lifecycle and metrics.
//!
//! # Threads of a VM
//! `start` spawns a *runner* thread (`vm-<name>`) that builds the machine (`Vm::new`, with
//! panics caught) and calls `Vm::run`, which starts one thread per vCPU. A console *pump*
//! thread per run carries console output to the log, the tail and attached consoles. When
//! `Vm::run` returns, the runner records how the run ended; on a guest reboot (or `reset`) it
//! builds a new machine and goes on (`boots` counts each). A crash (a panic in a device
//! model or vCPU, caught by vmk-machine, or a guest error) ends only that VM: it is marked
//! `crashed` with the reason in `last_exit`.
//!
//! # Lifecycle and locking
//! Each VM has an operation lock (`op`) that serializes lifecycle calls (start, stop,
//! poweroff, reset, update, delete), and a status lock (`st`, with a condition variable) that the
//! runner also takes to publish state changes. Lock order: a VM's `op`, then `start_gate`
//! (start only), then the host's VM map (lookups copy the entry out of the map before they
//! take `op`), then `st`, then the console hub; the runner takes `st` alone. So of two concurrent
//! `start`s one wins and the other sees `running` and gets `Conflict`. No call waits for a
//! guest: `start` waits for the machine to be built, `poweroff` and `reset` wait (bounded)
//! for the vCPU threads to end, `stop` returns at once with the VM `stopping`.
//!
//! # Graceful stop: the power button
//! Every machine has a power button (a virtio-input device with `KEY_POWER`,
//! `VmController::press_power_button`), which real distributions act on: systemd-logind
//! powers off, acpid runs its power-button action, and a vmk image's `/init` runs busybox
//! acpid, whose action ends the workload so that `/init` reports and powers off. `stop`
//! presses it at once and again every second until the VM has ended: a press
//! the guest's driver is not ready for (the guest is booting) waits in the device, and one
//! the guest had nobody listening for yet (its handler starts later in the boot) is
//! repeated, so a stop at any point of a guest's life is deferred, not lost. If the VM is
//! still running at the stop's timeout the host powers it off (`last_exit = killed`, shown
//! as "powered off by the host"): a guest that ignores the button, or has no driver for
//! it, is stopped at the timeout.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use vmk_devices::UartInput;
use vmk_machine::{Vm, VmController, VmOutcome, VmStats};

use crate::console::{ConsoleHub, Pump, LOG_LIMIT};
use crate::datastores::Datastores;
use crate::disks::{find_clash, normalize_disk_path};
use crate::host_api::{ConsoleAttachment, ConsoleInput, HostApi, NetworkApi};
use crate::inventory::{self, InventoryError, PersistedState};
use crate::machine;
use crate::network::{self, Network, NicLease, PortHandle};
use crate::sysinfo;
use crate::validate::{validate_definition, HostLimits};
use vmk_api::model::*;

/// How long `poweroff` and `reset` wait for the vCPU threads to end (they notice a stop
/// within one run slice; a disk request in flight finishes first).
const END_WAIT: Duration = Duration::from_secs(10);
/// Console input waits at most this long for room in the guest UART's receive FIFO.
const INPUT_WAIT: Duration = Duration::from_secs(1);
/// How often a stop presses the power button again while the guest is still running (a
/// guest whose handler was not running yet gets the next press).
const PRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Extra time `shutdown` gives VMs after the stop timeout before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The host's lock file in its directory (one host per directory).
const LOCK_FILE: &str = "host.lock";

/// The host's handles on one machine: its controller (no VM resources: weak) and its
/// console input.
struct MachineCtl {
    ctl: VmController,
    uart: UartInput,
}

impl MachineCtl {
    fn new(vm: &Vm) -> MachineCtl {
        MachineCtl {
            ctl: vm.controller(),
            uart: vm.uart(),
        }
    }
}

/// What the current lifecycle call asked of a running VM; read by the runner when a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    None,
    /// Graceful stop in progress (`stopping`).
    Stop,
    PowerOff,
    Reset,
}

struct VmStatus {
    def: VmDefinition,
    state: VmState,
    saved: PersistedState,
    /// The current machine (None when not running, and between the runs of a reboot).
    machine: Option<Arc<MachineCtl>>,
    /// Counts power-ons: a stop timer belongs to one session.
    session: u64,
    intent: Intent,
    /// Counters of the last machine, kept after it ended.
    last_stats: Option<VmStats>,
    deleted: bool,
    /// The NICs' switch ports of the current machine (their live counters).
    nic_ports: Vec<PortHandle>,
    /// The NICs' counters when the last machine ended.
    nic_last: Vec<NicMetrics>,
    /// The VM's scheduler group for the session (its admitted reservation); `None` when
    /// stopped. The runner drops it before the VM shows stopped.
    group: Option<Arc<vmk_sched::Group>>,
}

impl VmStatus {
    fn running(&self) -> bool {
        matches!(
            self.state,
            VmState::Starting | VmState::Running | VmState::Stopping
        )
    }
}

struct VmEntry {
    name: String,
    dir: PathBuf,
    op: Mutex<()>,
    st: Mutex<VmStatus>,
    changed: Condvar,
    console: Arc<ConsoleHub>,
}

// Every update of a VM's state is one assignment: the poison policy of vmk_base::lock holds.
use vmk_base::lock;

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl VmEntry {
    fn info(&self, st: &VmStatus) -> VmInfo {
        VmInfo {
            name: self.name.clone(),
            state: st.state,
            definition: st.def.clone(),
            last_exit: st.saved.last_exit.clone(),
            started_at: st.saved.started_at,
            ended_at: st.saved.ended_at,
            boots: st.saved.boots,
            nics: network::vm_nic_info(&self.name, &st.def.nics, &st.saved.nic_macs),
        }
    }

    /// Persists the run history (called with `st` held so a delete cannot interleave).
    fn persist(&self, st: &VmStatus) {
        if st.deleted {
            return;
        }
        if let Err(e) = inventory::save_state(&self.dir, &st.saved) {
            tracing::warn!(
                vm = %self.name,
                "cannot save {}: {e} (the state is kept in memory)",
                self.dir.join(inventory::STATE_FILE).display()
            );
        }
    }

    /// Waits until `done(st)` or `timeout`; returns the guard.
    fn wait_until<'a>(
        &'a self,
        mut st: MutexGuard<'a, VmStatus>,
        timeout: Duration,
        done: impl Fn(&VmStatus) -> bool,
    ) -> MutexGuard<'a, VmStatus> {
        let deadline = Instant::now() + timeout;
        while !done(&st) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st
    }

    fn not_running(&self, st: &VmStatus) -> HostError {
        HostError::Conflict(format!(
            "VM '{}' is not running (it is {}); start it first",
            self.name,
            state_name(st.state)
        ))
    }
}

fn state_name(s: VmState) -> &'static str {
    match s {
        VmState::Stopped => "stopped",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Stopping => "stopping",
        VmState::Crashed => "crashed",
    }
}

/// Why a machine could not be built.
enum BuildFailure {
    /// `Vm::new` refused (files, sizes, devices): the definition or the host's files.
    Refused(String),
    /// A panic (a vmk bug) or a host resource problem.
    Internal(String),
}

impl BuildFailure {
    fn reason(&self) -> &str {
        match self {
            BuildFailure::Refused(s) | BuildFailure::Internal(s) => s,
        }
    }
}

/// The vmk host: owns the inventory in its directory and every VM of it.
pub struct Host {
    dir: PathBuf,
    limits: HostLimits,
    started: Instant,
    vms: Mutex<BTreeMap<String, Arc<VmEntry>>>,
    errors: Mutex<Vec<InventoryError>>,
    shutting_down: AtomicBool,
    /// vSwitches, port groups, uplinks; the VMs' NICs connect to it.
    net: Arc<Network>,
    /// Held (flock) while the host lives: two hosts on one directory would corrupt it.
    _lock: File,
    // ---- datastores ----
    /// Mounted at open; unmounted when the host (and every VM's disk) is gone.
    datastores: Arc<Datastores>,
    /// Held by `start` from its disk checks until the VM is `starting`, so two VMs on one
    /// disk started at the same time cannot both pass the check. Lock order: a VM's `op`,
    /// then this, then the VM map, then `st`s (one at a time).
    start_gate: Mutex<()>,
    // ---- CPU ----
    /// Runs every vCPU of every VM (`cpu.rs` turns resource settings into its terms).
    sched: vmk_sched::Scheduler,
    topology: vmk_sched::Topology,
    edition: Edition,
    /// The power policy in force and what applying it did.
    power: Mutex<(PowerPolicy, String)>,
}

impl Host {
    /// Opens the host directory `cfg.dir` (created mode 0700 if missing), loads the
    /// inventory and starts the VMs marked `autostart`. A definition that cannot be loaded is
    /// skipped, logged, and reported by [`Host::inventory_errors`].
    pub fn open(cfg: &HostConfig) -> Result<Arc<Host>, HostError> {
        Self::open_with_limits(
            cfg,
            HostLimits {
                cpus: sysinfo::cpus(),
                memory: sysinfo::memory(),
                test_hooks: crate::validate::TEST_HOOKS,
            },
        )
    }

    /// [`Host::open`] with given host limits (tests use small ones).
    pub fn open_with_limits(cfg: &HostConfig, limits: HostLimits) -> Result<Arc<Host>, HostError> {
        let dir = &cfg.dir;
        inventory::create_private_dir(dir).map_err(|e| {
            HostError::Internal(format!(
                "cannot create the host directory {}: {e} (set `dir` in the host config to a \
                 writable directory)",
                dir.display()
            ))
        })?;
        let dir_lock = lock_dir(dir)?;
        let (loaded, errors) = inventory::load_all(dir).map_err(|e| {
            HostError::Internal(format!(
                "cannot read the inventory in {}: {e}",
                dir.join(inventory::VMS_DIR).display()
            ))
        })?;
        for e in &errors {
            tracing::warn!(
                "skipping the VM definition {}: {} (fix or remove it; the other VMs are loaded)",
                e.path.display(),
                e.message
            );
        }
        let (sched, topology) = crate::cpu::scheduler(&cfg.cpu)?;
        let power_note = crate::cpu::apply_power(&sched, cfg.cpu.power);
        tracing::info!("power policy {power_note}");
        // Before autostart: VMs may have their disks on datastores.
        let datastores = Arc::new(Datastores::mount_all(&cfg.datastores));
        let (net, problems) = Network::open(
            Some(&dir.join(network::NETWORK_FILE)),
            network::host_uplink_opener(),
        )?;
        for p in &problems {
            tracing::warn!("network: {p}");
        }
        let mut vms = BTreeMap::new();
        for l in loaded {
            let name = l.definition.name.clone();
            vms.insert(name.clone(), new_entry(name, l.dir, l.definition, l.state));
        }
        let host = Arc::new(Host {
            dir: dir.clone(),
            limits,
            started: Instant::now(),
            vms: Mutex::new(vms),
            errors: Mutex::new(errors),
            shutting_down: AtomicBool::new(false),
            net: Arc::new(net),
            _lock: dir_lock,
            datastores,
            start_gate: Mutex::new(()),
            sched,
            topology,
            edition: cfg.edition,
            power: Mutex::new((cfg.cpu.power, power_note)),
        });
        let autostart: Vec<String> = lock(&host.vms)
            .values()
            .filter(|e| lock(&e.st).def.autostart)
            .map(|e| e.name.clone())
            .collect();
        for name in autostart {
            if let Err(e) = host.start(&name) {
                tracing::error!(vm = %name, "autostart failed: {e}");
            }
        }
        Ok(host)
    }

    /// The host directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Definitions found in the inventory that could not be loaded (path and reason).
    pub fn inventory_errors(&self) -> Vec<InventoryError> {
        lock(&self.errors).clone()
    }

    /// Stops every running VM gracefully, in parallel, powering off at `timeout` what has
    /// not stopped, and waits for them to end. New starts are refused from now on.
    pub fn shutdown(&self, timeout: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let entries: Vec<Arc<VmEntry>> = lock(&self.vms).values().cloned().collect();
        for e in &entries {
            // Conflict = not running or already stopping: both fine here.
            let _ = self.stop_entry(e, timeout);
        }
        let deadline = Instant::now() + timeout + SHUTDOWN_GRACE;
        for e in &entries {
            let st = lock(&e.st);
            let left = deadline.saturating_duration_since(Instant::now());
            let st = e.wait_until(st, left, |s| !s.running());
            if st.running() {
                // E.g. a stop with a longer timeout was already under way: the host is going
                // away, so power the VM off (its disks are closed, its state recorded).
                drop(st);
                tracing::warn!(
                    vm = %e.name,
                    "did not end within {:?} of the shutdown; powering it off",
                    timeout + SHUTDOWN_GRACE
                );
                if let Ok(info) = self.poweroff_entry(e) {
                    if info.state != VmState::Stopped && info.state != VmState::Crashed {
                        tracing::error!(
                            vm = %e.name,
                            "still {:?} after its power-off; leaving it",
                            info.state
                        );
                    }
                }
            }
        }
    }

    fn entry(&self, name: &str) -> Result<Arc<VmEntry>, HostError> {
        validate_name("VM", name)?;
        lock(&self.vms).get(name).cloned().ok_or_else(|| {
            HostError::NotFound(format!(
                "no VM named '{name}' on this host (list them with `vmk vm list`)"
            ))
        })
    }

    /// Takes the operation lock of a VM that still exists.
    fn op<'a>(&self, e: &'a VmEntry) -> Result<MutexGuard<'a, ()>, HostError> {
        let g = lock(&e.op);
        if lock(&e.st).deleted {
            return Err(HostError::NotFound(format!(
                "VM '{}' was deleted meanwhile",
                e.name
            )));
        }
        Ok(g)
    }

    fn start_entry(&self, e: &Arc<VmEntry>) -> Result<VmInfo, HostError> {
        let _op = self.op(e)?;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(HostError::Conflict(format!(
                "the host is shutting down; VM '{}' was not started",
                e.name
            )));
        }
        // One VM per disk: refused while the VM is still stopped (nothing marked crashed).
        let _gate = lock(&self.start_gate);
        self.check_disks_free(e)?;
        let (def, lease) = {
            let mut st = lock(&e.st);
            match st.state {
                VmState::Stopped | VmState::Crashed => {}
                VmState::Stopping => {
                    return Err(HostError::Conflict(format!(
                        "VM '{}' is stopping; wait for it to stop or power it off, then start \
                         it",
                        e.name
                    )))
                }
                VmState::Starting | VmState::Running => {
                    return Err(HostError::Conflict(format!(
                        "VM '{}' is running; stop or power it off first",
                        e.name
                    )))
                }
            }
            // The edition's vCPU cap and the scheduler's admission control (a reservation
            // must fit beside the running VMs'), before anything changes.
            crate::cpu::check_edition(&st.def, self.edition)?;
            let group = self
                .sched
                .add_group(
                    crate::cpu::group_params(st.def.cpus, &st.def.resources),
                    st.def.cpus as usize,
                )
                .map_err(|err| match err {
                    vmk_sched::SchedError::Policy(p) => crate::cpu::refusal(&e.name, p),
                    other => HostError::Internal(format!("VM '{}': {other}", e.name)),
                })?;
            // The NICs' MACs for this power-on (refused: a MAC another running VM has, a
            // port group that does not exist), before anything changes.
            let lease = self.net.lease(&e.name, &st.def.nics, &st.saved.nic_macs)?;
            let macs = lease.macs();
            if st.saved.nic_macs != macs {
                st.saved.nic_macs = macs;
                e.persist(&st);
            }
            st.state = VmState::Starting;
            st.session += 1;
            st.intent = Intent::None;
            let group = Arc::new(group);
            st.group = Some(group.clone());
            e.changed.notify_all();
            (st.def.clone(), (lease, group))
        };
        let (lease, group) = lease;
        let (tx, rx) = mpsc::channel();
        let entry = e.clone();
        let ds = self.datastores.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vm-{}", e.name))
            .spawn(move || runner(entry, def, lease, group, tx, ds));
        if let Err(err) = spawned {
            let reason = format!("cannot start the VM's thread: {err}");
            finish_session(
                e,
                ExitInfo::Crashed {
                    reason: reason.clone(),
                },
                None,
            );
            return Err(HostError::Internal(format!("VM '{}': {reason}", e.name)));
        }
        match rx.recv() {
            Ok(Ok(())) => Ok(e.info(&lock(&e.st))),
            Ok(Err(BuildFailure::Refused(why))) => Err(HostError::Invalid(format!(
                "VM '{}' cannot start: {why} (it is marked crashed; fix the definition or \
                 its files and start it again)",
                e.name
            ))),
            Ok(Err(BuildFailure::Internal(why))) => Err(HostError::Internal(format!(
                "VM '{}' cannot start: {why} (it is marked crashed)",
                e.name
            ))),
            Err(_) => Err(HostError::Internal(format!(
                "VM '{}': its thread ended before the machine was built (see the host log)",
                e.name
            ))),
        }
    }

    /// Refuses to start `e` while a disk of it is in use: by a running VM of this host
    /// (named), or, for a disk on a datastore, by another host (the datastore's lock owner
    /// message). Read-only disks may be shared by VMs that all attach them read-only.
    ///
    /// The datastore check opens each datastore disk's descriptor with the lock the VM
    /// will take and closes it again; another host that takes the disk between this check
    /// and the VM's own open still makes the start fail (and the VM crashed), as before.
    fn check_disks_free(&self, e: &VmEntry) -> Result<(), HostError> {
        let def = lock(&e.st).def.clone();
        if def.disks.is_empty() {
            return Ok(());
        }
        // Entries first, then each status alone: `st`s are never held two at a time.
        let entries: Vec<Arc<VmEntry>> = lock(&self.vms).values().cloned().collect();
        let running: Vec<(String, VmDefinition)> = entries
            .iter()
            .filter(|o| o.name != e.name)
            .filter_map(|o| {
                let st = lock(&o.st);
                st.running().then(|| (o.name.clone(), st.def.clone()))
            })
            .collect();
        if let Some(c) = find_clash(&def, running.iter().map(|(n, d)| (n.as_str(), d))) {
            return Err(HostError::Conflict(format!(
                "VM '{}' cannot start: {}, which is running; stop or power off '{}' first (a \
                 disk is used by one VM at a time; only read-only disks are shared). '{}' \
                 stays {}",
                e.name,
                c.describe(),
                c.holder,
                e.name,
                state_name(lock(&e.st).state)
            )));
        }
        self.datastores.check_unlocked(&def).map_err(|err| {
            let why = format!(
                "VM '{}' cannot start: {err}; it stays {}",
                e.name,
                state_name(lock(&e.st).state)
            );
            match err {
                crate::datastores::DiskBusy::Locked(_) => HostError::Conflict(why),
                crate::datastores::DiskBusy::Unusable(_) => HostError::Invalid(why),
            }
        })
    }

    fn stop_entry(&self, e: &Arc<VmEntry>, timeout: Duration) -> Result<VmInfo, HostError> {
        let _op = self.op(e)?;
        let mut st = lock(&e.st);
        match st.state {
            VmState::Running | VmState::Starting => {}
            VmState::Stopping => {
                return Err(HostError::Conflict(format!(
                    "VM '{}' is already stopping; power it off to end it now",
                    e.name
                )))
            }
            VmState::Stopped | VmState::Crashed => return Err(e.not_running(&st)),
        }
        st.state = VmState::Stopping;
        st.intent = Intent::Stop;
        let session = st.session;
        e.changed.notify_all();
        let info = e.info(&st);
        drop(st);
        let entry = e.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("stop-{}", e.name))
            .spawn(move || graceful_stop(&entry, session, timeout));
        if let Err(err) = spawned {
            // No thread for the sequence: power off now rather than leave it `stopping`.
            tracing::error!(
                vm = %e.name,
                "cannot start the stop sequence ({err}); powering off"
            );
            let mut st = lock(&e.st);
            st.intent = Intent::PowerOff;
            if let Some(m) = &st.machine {
                m.ctl.stop();
            }
            drop(st);
        }
        Ok(info)
    }

    fn poweroff_entry(&self, e: &Arc<VmEntry>) -> Result<VmInfo, HostError> {
        let _op = self.op(e)?;
        let mut st = lock(&e.st);
        if !st.running() {
            return Err(e.not_running(&st));
        }
        st.intent = Intent::PowerOff;
        // Between the runs of a reboot there is no machine: the runner sees the intent.
        if let Some(m) = &st.machine {
            m.ctl.stop();
        }
        let st = e.wait_until(st, END_WAIT, |s| !s.running());
        Ok(e.info(&st))
    }

    fn reset_entry(&self, e: &Arc<VmEntry>) -> Result<VmInfo, HostError> {
        let _op = self.op(e)?;
        let mut st = lock(&e.st);
        match st.state {
            VmState::Running => {}
            VmState::Stopping => {
                return Err(HostError::Conflict(format!(
                    "VM '{}' is stopping; power it off and start it instead",
                    e.name
                )))
            }
            _ => return Err(e.not_running(&st)),
        }
        st.intent = Intent::Reset;
        let boots = st.saved.boots;
        if let Some(m) = &st.machine {
            m.ctl.stop();
        }
        let st = e.wait_until(st, END_WAIT, |s| s.saved.boots != boots || !s.running());
        Ok(e.info(&st))
    }

    /// Replaces the definition of a stopped or crashed VM (see [`HostApi::update`]). The
    /// operation lock is held throughout, so the VM cannot start meanwhile; the VM map is
    /// held from the disk check to the swap, as in `create`, so a concurrent create or
    /// update on the same disk sees this one.
    fn update_entry(&self, e: &Arc<VmEntry>, mut def: VmDefinition) -> Result<VmInfo, HostError> {
        if def.name != e.name {
            return Err(HostError::Invalid(format!(
                "the definition's name '{}' is not the VM's name '{}': a VM cannot be renamed \
                 (create a VM with the new name and delete '{}' instead)",
                def.name, e.name, e.name
            )));
        }
        let _op = self.op(e)?;
        for d in &mut def.disks {
            d.path = normalize_disk_path(&d.path);
        }
        {
            let st = lock(&e.st);
            // A running VM's CPU resource settings change at once; everything else waits
            // for a stop.
            if st.running() {
                let mut only_cpu = st.def.clone();
                only_cpu.resources.cpu_shares = def.resources.cpu_shares;
                only_cpu.resources.cpu_reservation_mhz = def.resources.cpu_reservation_mhz;
                only_cpu.resources.cpu_limit_mhz = def.resources.cpu_limit_mhz;
                only_cpu.resources.cpu_affinity = def.resources.cpu_affinity.clone();
                if only_cpu == def {
                    drop(st);
                    return self.update_cpu_live(e, def);
                }
            }
            match st.state {
                VmState::Stopped | VmState::Crashed => {}
                s => {
                    return Err(HostError::Conflict(format!(
                        "VM '{}' is {}: its definition can only be changed while it is \
                         stopped (except its CPU resource settings); stop it first (`vmk vm \
                         stop {}`), then edit it",
                        e.name,
                        state_name(s),
                        e.name
                    )))
                }
            }
        }
        self.check_new_definition(&def)?;
        let vms = lock(&self.vms);
        // One VM per disk among the other VMs defined here (as `create` checks).
        let defined: Vec<(String, VmDefinition)> = vms
            .values()
            .filter(|o| o.name != e.name)
            .map(|o| (o.name.clone(), lock(&o.st).def.clone()))
            .collect();
        if let Some(c) = find_clash(&def, defined.iter().map(|(n, d)| (n.as_str(), d))) {
            return Err(HostError::Conflict(format!(
                "VM '{}': {}; a disk is used by one VM at a time (only disks that every VM \
                 attaches read-only are shared): give '{}' its own disk (e.g. a copy), or \
                 delete '{}' first. The definition of '{}' is unchanged",
                def.name,
                c.describe(),
                def.name,
                c.holder,
                def.name
            )));
        }
        // Written atomically: a failure leaves the old definition on disk and in memory.
        inventory::save_definition(&self.dir, &def).map_err(|err| {
            HostError::Internal(format!(
                "cannot store the new definition of VM '{}' in {}: {err} (the old \
                 definition is kept)",
                def.name,
                e.dir.join(inventory::DEFINITION_FILE).display()
            ))
        })?;
        drop(vms);
        let mut st = lock(&e.st);
        st.def = def;
        e.changed.notify_all();
        Ok(e.info(&st))
    }

    /// Changes a running VM's CPU shares, reservation, limit and affinity (the rest of `def`
    /// is the running definition): the scheduler first (a reservation that no longer fits
    /// is refused and nothing changes), then the stored definition.
    fn update_cpu_live(&self, e: &Arc<VmEntry>, def: VmDefinition) -> Result<VmInfo, HostError> {
        validate_definition(&def, &self.limits)?;
        let group = lock(&e.st).group.clone();
        if let Some(g) = &group {
            g.set_params(crate::cpu::group_params(def.cpus, &def.resources))
                .map_err(|err| {
                    let msg = format!(
                        "VM '{}': the new CPU settings are refused: {err}; the running \
                         settings are unchanged",
                        e.name
                    );
                    crate::cpu::refusal_as(&err, msg)
                })?;
        }
        inventory::save_definition(&self.dir, &def).map_err(|err| {
            HostError::Internal(format!(
                "the new CPU settings of VM '{}' are in force but cannot be stored in {}: \
                 {err} (they last until the VM stops)",
                def.name,
                e.dir.join(inventory::DEFINITION_FILE).display()
            ))
        })?;
        let mut st = lock(&e.st);
        st.def = def;
        e.changed.notify_all();
        Ok(e.info(&st))
    }

    /// The checks of a definition that need no other VM: limits, datastores, port groups.
    fn check_new_definition(&self, def: &VmDefinition) -> Result<(), HostError> {
        validate_definition(def, &self.limits)?;
        crate::cpu::check_edition(def, self.edition)?;
        self.datastores.check_definition(def)?;
        for (i, n) in def.nics.iter().enumerate() {
            self.net.check_portgroup(&n.portgroup).map_err(|err| {
                HostError::Invalid(format!(
                    "VM '{}': NIC {i}: {err}; add the port group first or change the NIC",
                    def.name
                ))
            })?;
        }
        Ok(())
    }

    fn delete_entry(&self, e: &Arc<VmEntry>) -> Result<(), HostError> {
        let _op = self.op(e)?;
        let mut st = lock(&e.st);
        match st.state {
            VmState::Stopped | VmState::Crashed => {}
            VmState::Stopping => {
                return Err(HostError::Conflict(format!(
                    "VM '{}' is stopping; wait for it to stop (or power it off), then delete it",
                    e.name
                )))
            }
            _ => {
                return Err(HostError::Conflict(format!(
                    "VM '{}' is running; stop or power it off first",
                    e.name
                )))
            }
        }
        // Rename first (atomic): the VM is gone from the inventory even if removing its
        // files fails half-way (hidden directories are not loaded).
        let trash = self.dir.join(inventory::VMS_DIR).join(format!(
            ".deleted-{}-{}",
            e.name,
            sysinfo::unix_now()
        ));
        std::fs::rename(&e.dir, &trash).map_err(|err| {
            HostError::Internal(format!(
                "cannot delete VM '{}': renaming {} failed: {err}",
                e.name,
                e.dir.display()
            ))
        })?;
        st.deleted = true;
        e.changed.notify_all();
        drop(st);
        lock(&self.vms).remove(&e.name);
        if let Err(err) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(
                vm = %e.name,
                "deleted, but removing {} failed: {err} (remove it by hand)",
                trash.display()
            );
        }
        Ok(())
    }

    fn metrics_of(&self, e: &VmEntry) -> VmMetrics {
        // The machine's counters are read without holding `st`: reading a disk's counters
        // waits for its device, which a vCPU holds during a (possibly stalled) disk request,
        // and nothing else of this VM must wait for that.
        let machine = lock(&e.st).machine.clone();
        let live = machine.map(|m| m.ctl.stats());
        let st = lock(&e.st);
        let stats = live.or_else(|| st.last_stats.clone()).unwrap_or_default();
        VmMetrics {
            name: e.name.clone(),
            state: st.state,
            vcpus: stats
                .vcpus
                .iter()
                .map(|v| VcpuMetrics {
                    cpu_time_ns: v.cpu_time_ns,
                    instret: v.instret,
                    ready_ns: v.ready_ns,
                    costop_ns: v.costop_ns,
                    wait_ns: v.wait_ns,
                    limited_ns: v.limited_ns,
                })
                .collect(),
            memory_configured: st.def.memory.0,
            memory_touched: stats.memory_touched,
            disks: st
                .def
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let c = stats.disks.get(i).copied().unwrap_or_default();
                    DiskMetrics {
                        path: d.path.clone(),
                        read_ops: c.read_ops,
                        read_bytes: c.read_bytes,
                        write_ops: c.write_ops,
                        write_bytes: c.write_bytes,
                        flush_ops: c.flush_ops,
                        errors: c.errors,
                    }
                })
                .collect(),
            nics: if st.nic_ports.is_empty() {
                st.nic_last.clone()
            } else {
                nic_metrics_now(&st.nic_ports)
            },
        }
    }
}

/// The counters of connected NIC ports.
fn nic_metrics_now(ports: &[PortHandle]) -> Vec<NicMetrics> {
    ports
        .iter()
        .map(|p| {
            network::nic_metrics(
                &p.portgroup,
                &p.mac.to_string(),
                &p.stats().unwrap_or_default(),
            )
        })
        .collect()
}

impl Drop for Host {
    /// A host dropped without [`Host::shutdown`] powers its VMs off (it does not wait), so
    /// no VM outlives the host's inventory lock unnoticed.
    fn drop(&mut self) {
        for e in lock(&self.vms).values() {
            let mut st = lock(&e.st);
            if st.running() {
                st.intent = Intent::PowerOff;
                if let Some(m) = &st.machine {
                    m.ctl.stop();
                }
            }
        }
    }
}

fn lock_dir(dir: &Path) -> Result<File, HostError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| HostError::Internal(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock on a file descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(HostError::Conflict(format!(
            "the host directory {} is in use by another vmk host (lock {} is held); stop it \
             or give this host another directory",
            dir.display(),
            path.display()
        )));
    }
    Ok(f)
}

fn new_entry(name: String, dir: PathBuf, def: VmDefinition, saved: PersistedState) -> Arc<VmEntry> {
    let console = Arc::new(ConsoleHub::new(dir.join(inventory::CONSOLE_LOG)));
    Arc::new(VmEntry {
        name,
        dir,
        op: Mutex::new(()),
        st: Mutex::new(VmStatus {
            def,
            // Whatever ran before a host restart is not running now.
            state: VmState::Stopped,
            saved,
            machine: None,
            session: 0,
            intent: Intent::None,
            last_stats: None,
            deleted: false,
            nic_ports: Vec::new(),
            nic_last: Vec::new(),
            group: None,
        }),
        changed: Condvar::new(),
        console,
    })
}

/// Builds a machine for `def` whose console goes to `pump`, its disks on datastores opened
/// and its NICs connected to their port groups (returned: the ports' counter handles); panics are caught.
fn build(
    def: &VmDefinition,
    pump: &Pump,
    lease: &NicLease,
    ds: &Datastores,
) -> Result<(Vm, Vec<PortHandle>), BuildFailure> {
    let mut cfg = machine::vm_config(def, pump.sink()).map_err(BuildFailure::Refused)?;
    ds.attach(def, &mut cfg).map_err(BuildFailure::Refused)?;
    let connected = lease.connect().map_err(BuildFailure::Refused)?;
    let handles: Vec<PortHandle> = connected.iter().map(|c| c.handle.clone()).collect();
    cfg.nics = connected
        .into_iter()
        .enumerate()
        .map(|(i, c)| vmk_machine::NicSpec {
            backend: Box::new(c.port),
            name: format!("{}-eth{i}", def.name),
        })
        .collect();
    let mut vm = build_machine(cfg)?;
    // vCPU threads named `<vm>/vcpuN`.
    vm.set_name(&def.name);
    Ok((vm, handles))
}

fn build_machine(cfg: vmk_machine::VmConfig) -> Result<Vm, BuildFailure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Vm::new(cfg))) {
        Ok(Ok(vm)) => Ok(vm),
        Ok(Err(e @ vmk_machine::VmError::Memory(_))) => Err(BuildFailure::Internal(e.to_string())),
        Ok(Err(e)) => Err(BuildFailure::Refused(e.to_string())),
        Err(p) => Err(BuildFailure::Internal(format!(
            "building the machine panicked: {}",
            panic_message(&*p)
        ))),
    }
}

/// Ends a power-on session: final state, history saved, consoles told.
fn finish_session(e: &VmEntry, exit: ExitInfo, stats: Option<VmStats>) {
    let mut st = lock(&e.st);
    st.state = match exit {
        ExitInfo::Crashed { .. } => VmState::Crashed,
        _ => VmState::Stopped,
    };
    st.saved.last_exit = Some(exit.clone());
    st.saved.ended_at = Some(sysinfo::unix_now());
    st.machine = None;
    st.intent = Intent::None;
    // The reservation is released before the VM shows stopped.
    st.group = None;
    if stats.is_some() {
        st.last_stats = stats;
    }
    e.persist(&st);
    e.changed.notify_all();
    drop(st);
    match &exit {
        ExitInfo::Crashed { reason } => tracing::error!(vm = %e.name, "crashed: {reason}"),
        other => tracing::info!(vm = %e.name, "ended: {other:?}"),
    }
    // After the state change, so a console that sees Ended and asks finds it stopped.
    e.console.ended(&exit);
}

/// The runner thread of one power-on session: build, run, and again after a reboot.
/// `lease` holds the NICs' MACs for the whole session (reboots included). Everything the
/// session holds (the machine with its switch ports and disk locks, the MAC lease) is
/// released *before* the VM shows stopped: whoever waits for that may start this VM or
/// another on the same MAC or disk at once.
fn runner(
    e: Arc<VmEntry>,
    def: VmDefinition,
    lease: NicLease,
    group: Arc<vmk_sched::Group>,
    first: mpsc::Sender<Result<(), BuildFailure>>,
    ds: Arc<Datastores>,
) {
    // The session's group lives in the VM's status; the runner uses it through that (so
    // that finish_session releases it), and holds only a weak reference itself.
    let group = Arc::downgrade(&group);
    let mut first = Some(first);
    loop {
        let pump = match Pump::start(&e.name, e.console.clone()) {
            Ok(p) => p,
            Err(err) => {
                let f = BuildFailure::Internal(format!("cannot start the console thread: {err}"));
                drop(lease);
                finish_session(
                    &e,
                    ExitInfo::Crashed {
                        reason: f.reason().to_string(),
                    },
                    None,
                );
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(f));
                }
                return;
            }
        };
        let (vm, nic_ports) = match build(&def, &pump, &lease, &ds) {
            Ok(built) => built,
            Err(f) => {
                drop(pump);
                drop(lease);
                finish_session(
                    &e,
                    ExitInfo::Crashed {
                        reason: format!("cannot start: {}", f.reason()),
                    },
                    None,
                );
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(f));
                }
                return;
            }
        };
        let ctl = Arc::new(MachineCtl::new(&vm));
        {
            let mut st = lock(&e.st);
            st.machine = Some(ctl.clone());
            st.nic_ports = nic_ports;
            if st.state == VmState::Starting {
                st.state = VmState::Running;
            }
            st.saved.boots += 1;
            st.saved.started_at = Some(sysinfo::unix_now());
            tracing::info!(vm = %e.name, boot = st.saved.boots, "running");
            match st.intent {
                // A poweroff that came between the runs of a reboot.
                Intent::PowerOff => ctl.ctl.stop(),
                // This run is the reset.
                Intent::Reset => st.intent = Intent::None,
                // A stop that came between the runs of a reboot: the guest was going down
                // anyway, so the host ends the VM instead of booting it again.
                Intent::Stop => ctl.ctl.stop(),
                Intent::None => {}
            }
            e.persist(&st);
            e.changed.notify_all();
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        let outcome = match group.upgrade() {
            Some(g) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.run_in(g))),
            None => Ok(VmOutcome::Crashed(
                "the VM's CPU scheduler group is gone".into(),
            )),
        }
        .unwrap_or_else(|p| {
            VmOutcome::Crashed(format!(
                "the VM's run loop panicked: {}",
                panic_message(&*p)
            ))
        });
        // Everything the guest printed is delivered (and its status seen) before the end.
        let status = pump.finish();
        let stats = ctl.ctl.stats();
        let exit = machine::exit_info(&outcome, status);
        let restart = {
            let mut st = lock(&e.st);
            st.last_stats = Some(stats.clone());
            st.machine = None;
            // The ports go with the machine: keep their last counters.
            st.nic_last = nic_metrics_now(&st.nic_ports);
            st.nic_ports.clear();
            let restart = match (st.intent, &exit) {
                (_, Some(ExitInfo::Crashed { .. })) => false,
                (Intent::Reset, _) => true,
                (Intent::None, None) => true, // the guest rebooted
                _ => false,
            };
            if restart {
                e.changed.notify_all();
            }
            restart
        };
        if restart {
            continue;
        }
        // (The machine itself, with its switch ports and disks, ended with its run.)
        drop(ctl);
        drop(lease);
        // A reboot the host did not carry out (stop, poweroff) counts as a host power-off.
        finish_session(&e, exit.unwrap_or(ExitInfo::Killed), Some(stats));
        return;
    }
}

/// The graceful stop sequence of session `session` (see the module docs): the power
/// button, pressed again every [`PRESS_INTERVAL`] until the VM ends; a power-off at the
/// timeout.
fn graceful_stop(e: &VmEntry, session: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let ended = |s: &VmStatus| s.session != session || !s.running();
    loop {
        let st = lock(&e.st);
        if ended(&st) {
            return;
        }
        // Between the runs of a reboot there is no machine: the runner ends the VM.
        let machine = st.machine.clone();
        drop(st);
        if let Some(m) = machine {
            // Delivered or waiting for the guest's driver: either way the next press comes
            // after PRESS_INTERVAL if the guest is still up.
            let _ = m.ctl.press_power_button();
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let st = lock(&e.st);
        let st = e.wait_until(st, PRESS_INTERVAL.min(deadline - now), ended);
        if ended(&st) {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let mut st = lock(&e.st);
    if ended(&st) {
        return;
    }
    tracing::warn!(
        vm = %e.name,
        "did not stop within {:?} of the power button; powering it off",
        timeout
    );
    st.intent = Intent::PowerOff;
    if let Some(m) = &st.machine {
        m.ctl.stop();
    }
}

impl HostApi for Host {
    fn host_info(&self) -> HostInfo {
        // Entries are copied out first: the map is not held while waiting for a VM's status.
        let entries: Vec<Arc<VmEntry>> = lock(&self.vms).values().cloned().collect();
        let vms = entries.len();
        let running = entries.iter().filter(|e| lock(&e.st).running()).count();
        HostInfo {
            hostname: sysinfo::hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            cpus: self.limits.cpus,
            memory: self.limits.memory,
            vms: vms as u32,
            vms_running: running as u32,
            uptime_secs: self.started.elapsed().as_secs(),
            dir: self.dir.clone(),
            datastores: self.datastores.status(),
            cpu: crate::cpu::info(
                &self.sched,
                &self.topology,
                self.edition,
                &lock(&self.power),
            ),
        }
    }

    fn list(&self) -> Vec<VmInfo> {
        let entries: Vec<Arc<VmEntry>> = lock(&self.vms).values().cloned().collect();
        entries.iter().map(|e| e.info(&lock(&e.st))).collect()
    }

    fn info(&self, name: &str) -> Result<VmInfo, HostError> {
        let e = self.entry(name)?;
        let st = lock(&e.st);
        Ok(e.info(&st))
    }

    fn create(&self, mut def: VmDefinition) -> Result<VmInfo, HostError> {
        for d in &mut def.disks {
            d.path = normalize_disk_path(&d.path);
        }
        self.check_new_definition(&def)?;
        let mut vms = lock(&self.vms);
        if vms.contains_key(&def.name) {
            return Err(HostError::AlreadyExists(format!(
                "a VM named '{}' already exists; pick another name or delete it first",
                def.name
            )));
        }
        // One VM per disk, among every VM defined here (running or not). The map is held:
        // a concurrent create of another VM on the same disk waits and then sees this one.
        let defined: Vec<(String, VmDefinition)> = vms
            .values()
            .map(|o| (o.name.clone(), lock(&o.st).def.clone()))
            .collect();
        if let Some(c) = find_clash(&def, defined.iter().map(|(n, d)| (n.as_str(), d))) {
            return Err(HostError::Conflict(format!(
                "VM '{}': {}; a disk is used by one VM at a time (only disks that every VM \
                 attaches read-only are shared): give '{}' its own disk (e.g. a copy), or \
                 delete '{}' first",
                def.name,
                c.describe(),
                def.name,
                c.holder
            )));
        }
        let dir = inventory::vm_dir(&self.dir, &def.name)
            .map_err(|e| HostError::Invalid(e.to_string()))?;
        if dir.exists() {
            return Err(HostError::AlreadyExists(format!(
                "{} exists but holds no loadable VM (see the host log); remove it or pick \
                 another name",
                dir.display()
            )));
        }
        inventory::save_definition(&self.dir, &def).map_err(|e| {
            HostError::Internal(format!(
                "cannot store VM '{}' in {}: {e}",
                def.name,
                dir.display()
            ))
        })?;
        let e = new_entry(def.name.clone(), dir, def, PersistedState::default());
        let info = e.info(&lock(&e.st));
        vms.insert(e.name.clone(), e);
        Ok(info)
    }

    fn update(&self, name: &str, def: VmDefinition) -> Result<VmInfo, HostError> {
        let e = self.entry(name)?;
        self.update_entry(&e, def)
    }

    fn delete(&self, name: &str) -> Result<(), HostError> {
        let e = self.entry(name)?;
        self.delete_entry(&e)
    }

    fn start(&self, name: &str) -> Result<VmInfo, HostError> {
        let e = self.entry(name)?;
        self.start_entry(&e)
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<VmInfo, HostError> {
        let e = self.entry(name)?;
        self.stop_entry(&e, timeout)
    }

    fn poweroff(&self, name: &str) -> Result<VmInfo, HostError> {
        let e = self.entry(name)?;
        self.poweroff_entry(&e)
    }

    fn reset(&self, name: &str) -> Result<VmInfo, HostError> {
        let e = self.entry(name)?;
        self.reset_entry(&e)
    }

    fn console_attach(&self, name: &str) -> Result<ConsoleAttachment, HostError> {
        let e = self.entry(name)?;
        let st = lock(&e.st);
        if !st.running() {
            return Err(HostError::Conflict(format!(
                "VM '{}' is not running (it is {}); start it to attach its console, or read \
                 its console log",
                e.name,
                state_name(st.state)
            )));
        }
        // Under `st`, so the run cannot end between the check and the registration (the
        // runner changes the state, then sends Ended to every registered console).
        let (history, events) = e.console.attach();
        drop(st);
        let weak: Weak<VmEntry> = Arc::downgrade(&e);
        let input: ConsoleInput = Box::new(move |bytes: &[u8]| {
            let Some(e) = weak.upgrade() else { return };
            let machine = lock(&e.st).machine.clone();
            if let Some(m) = machine {
                // Bounded wait for the guest to read: the API thread never blocks forever.
                m.uart.push_input_timeout(bytes, INPUT_WAIT);
            }
        });
        Ok(ConsoleAttachment {
            history,
            events,
            input,
        })
    }

    fn console_log(&self, name: &str, max: usize) -> Result<Vec<u8>, HostError> {
        let e = self.entry(name)?;
        let max = max.min(2 * LOG_LIMIT as usize);
        e.console.log_tail(max).map_err(|err| {
            HostError::Internal(format!(
                "cannot read the console log of VM '{}' ({}): {err}",
                e.name,
                e.console.log_path().display()
            ))
        })
    }

    fn vm_metrics(&self, name: &str) -> Result<VmMetrics, HostError> {
        let e = self.entry(name)?;
        Ok(self.metrics_of(&e))
    }

    fn metrics(&self) -> HostMetrics {
        let entries: Vec<Arc<VmEntry>> = lock(&self.vms).values().cloned().collect();
        HostMetrics {
            host: self.host_info(),
            rss: sysinfo::rss(),
            cpu_time_ns: sysinfo::process_cpu_time_ns(),
            vms: entries.iter().map(|e| self.metrics_of(e)).collect(),
            pcpus: self
                .sched
                .cpu_stats()
                .into_iter()
                .map(|c| PcpuMetrics {
                    cpu: c.id,
                    used_ns: c.used_ns,
                })
                .collect(),
        }
    }

    fn network(&self) -> Option<&dyn NetworkApi> {
        Some(&*self.net)
    }

    fn set_power_policy(&self, policy: PowerPolicy) -> Result<HostInfo, HostError> {
        let note = crate::cpu::apply_power(&self.sched, policy);
        tracing::info!("power policy {note}");
        *lock(&self.power) = (policy, note);
        Ok(self.host_info())
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
