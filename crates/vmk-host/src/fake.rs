//! Test doubles (feature `fake`): [`FakeHost`], an in-memory [`HostApi`] with the real
//! state rules but no guests, and [`TestServer`], the API served in-process on a thread.
//! The API's tests and the CLI's tests use them to exercise HTTP and formatting without
//! booting anything; the guest end-to-end tests use the real host.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmk_api::model::{
    validate_name, CpuInfo, DiskMetrics, ExitInfo, HostConfig, HostError, HostInfo, HostMetrics,
    NicMetrics, PowerPolicy, VcpuMetrics, VmDefinition, VmInfo, VmMetrics, VmState,
};

use crate::api::{ApiError, Server};
use crate::host_api::{ConsoleAttachment, ConsoleEvent, HostApi, NetworkApi};
use crate::network::{memory_uplink_opener, vm_nic_info, Network};

/// The fake host's CPUs and memory (what definitions are checked against).
pub const FAKE_CPUS: u32 = 8;
pub const FAKE_MEMORY: u64 = 16 << 30;

struct FakeVm {
    info: VmInfo,
    metrics: VmMetrics,
    log: Vec<u8>,
    /// Everything typed into the console, in order.
    input: Arc<Mutex<Vec<u8>>>,
    consoles: Vec<Sender<ConsoleEvent>>,
    /// While stopping: when the guest will have shut down, and whether that is the guest
    /// finishing (true) or the timeout powering it off (false).
    stop_at: Option<(Instant, bool)>,
}

/// An in-memory host. A graceful stop completes `stop_delay` after it was asked (the
/// "guest" shuts down), or at the timeout if that is shorter (then the VM is killed).
pub struct FakeHost {
    vms: Mutex<BTreeMap<String, FakeVm>>,
    started: Instant,
    stop_delay: Duration,
    /// A real network with in-memory uplinks (no privileges needed).
    net: Arc<Network>,
    power: Mutex<PowerPolicy>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

use vmk_base::lock;

fn not_found(name: &str) -> HostError {
    HostError::NotFound(format!(
        "VM '{name}' does not exist (`vmk vm list` shows the VMs)"
    ))
}

impl FakeVm {
    /// Completes a graceful stop whose time has come.
    fn settle(&mut self) {
        if let Some((at, guest)) = self.stop_at {
            if Instant::now() >= at {
                self.end(if guest {
                    ExitInfo::PoweredOff { status: 0 }
                } else {
                    ExitInfo::Killed
                });
            }
        }
    }

    fn end(&mut self, exit: ExitInfo) {
        self.info.state = VmState::Stopped;
        self.metrics.state = VmState::Stopped;
        self.info.ended_at = Some(now_unix());
        self.stop_at = None;
        for c in self.consoles.drain(..) {
            let _ = c.send(ConsoleEvent::Ended(exit.clone()));
        }
        self.info.last_exit = Some(exit);
    }

    fn running(&mut self) {
        self.info.state = VmState::Running;
        self.metrics.state = VmState::Running;
        self.info.started_at = Some(now_unix());
        self.info.boots += 1;
        self.metrics.vcpus = vec![VcpuMetrics::default(); self.info.definition.cpus as usize];
    }

    fn conflict(&self, what: &str) -> HostError {
        let name = &self.info.name;
        let state = format!("{:?}", self.info.state).to_lowercase();
        HostError::Conflict(format!("cannot {what} VM '{name}': it is {state}"))
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new(Duration::from_millis(100))
    }
}

impl FakeHost {
    pub fn new(stop_delay: Duration) -> FakeHost {
        FakeHost {
            vms: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            stop_delay,
            net: Arc::new(
                Network::open(None, memory_uplink_opener())
                    .map(|(n, _)| n)
                    .unwrap_or_else(|e| panic!("the fake host's network: {e}")),
            ),
            power: Mutex::new(PowerPolicy::default()),
        }
    }

    fn with_vm<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut FakeVm) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        let mut vms = lock(&self.vms);
        let vm = vms.get_mut(name).ok_or_else(|| not_found(name))?;
        vm.settle();
        f(vm)
    }

    /// The guest writes `bytes` to its console (logged and sent to attached consoles).
    pub fn guest_output(&self, name: &str, bytes: &[u8]) -> Result<(), HostError> {
        self.with_vm(name, |vm| {
            vm.log.extend_from_slice(bytes);
            vm.consoles
                .retain(|c| c.send(ConsoleEvent::Output(bytes.to_vec())).is_ok());
            Ok(())
        })
    }

    /// Everything typed into the VM's console so far.
    pub fn guest_input(&self, name: &str) -> Result<Vec<u8>, HostError> {
        self.with_vm(name, |vm| Ok(lock(&vm.input).clone()))
    }

    /// The guest powers off by itself with `status`.
    pub fn guest_poweroff(&self, name: &str, status: i32) -> Result<(), HostError> {
        self.with_vm(name, |vm| {
            if vm.info.state != VmState::Running {
                return Err(vm.conflict("power off the guest of"));
            }
            vm.end(ExitInfo::PoweredOff { status });
            Ok(())
        })
    }

    /// The VM crashes with `reason`.
    pub fn crash(&self, name: &str, reason: &str) -> Result<(), HostError> {
        self.with_vm(name, |vm| {
            vm.end(ExitInfo::Crashed {
                reason: reason.into(),
            });
            vm.info.state = VmState::Crashed;
            vm.metrics.state = VmState::Crashed;
            Ok(())
        })
    }

    /// The running VM does work: vCPU `vcpu` uses `cpu_ns` of host CPU and retires
    /// `instret` instructions; its first disk does `ops` reads of `bytes` in total.
    pub fn work(
        &self,
        name: &str,
        vcpu: usize,
        cpu_ns: u64,
        instret: u64,
        disk: (u64, u64),
    ) -> Result<(), HostError> {
        self.with_vm(name, |vm| {
            let c = vm
                .metrics
                .vcpus
                .get_mut(vcpu)
                .ok_or_else(|| HostError::Invalid(format!("no vCPU {vcpu}")))?;
            c.cpu_time_ns += cpu_ns;
            c.instret += instret;
            vm.metrics.memory_touched =
                (vm.metrics.memory_touched + (1 << 20)).min(vm.metrics.memory_configured);
            if let Some(d) = vm.metrics.disks.first_mut() {
                d.read_ops += disk.0;
                d.read_bytes += disk.1;
            }
            Ok(())
        })
    }

    fn check(def: &VmDefinition) -> Result<(), HostError> {
        validate_name("VM", &def.name)?;
        let name = &def.name;
        if def.cpus == 0 || def.cpus > FAKE_CPUS {
            return Err(HostError::Invalid(format!(
                "VM '{name}': cpus {} is out of range (1 to {FAKE_CPUS}, the host's CPUs)",
                def.cpus
            )));
        }
        if def.memory.0 < 16 << 20 || def.memory.0 > FAKE_MEMORY {
            return Err(HostError::Invalid(format!(
                "VM '{name}': memory {} is out of range (16 MiB to the host's {FAKE_MEMORY})",
                def.memory.0
            )));
        }
        if def.boot.image.is_none() && def.boot.kernel.is_none() {
            return Err(HostError::Invalid(format!(
                "VM '{name}': boot needs an image or a kernel"
            )));
        }
        Ok(())
    }
}

impl HostApi for FakeHost {
    fn host_info(&self) -> HostInfo {
        let mut vms = lock(&self.vms);
        vms.values_mut().for_each(FakeVm::settle);
        HostInfo {
            hostname: "fake".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            cpus: FAKE_CPUS,
            memory: FAKE_MEMORY,
            vms: vms.len() as u32,
            vms_running: vms
                .values()
                .filter(|v| v.info.state == VmState::Running)
                .count() as u32,
            uptime_secs: self.started.elapsed().as_secs(),
            dir: "/var/lib/vmk-fake".into(),
            datastores: Vec::new(),
            cpu: CpuInfo {
                cpu_mhz: 2000,
                cpus: (0..FAKE_CPUS).collect(),
                capacity_mhz: 2000 * FAKE_CPUS as u64,
                scheduler: "vmk".into(),
                edition: "unlimited".into(),
                max_vcpus_per_vm: 64,
                cores: FAKE_CPUS,
                threads_per_core: 1,
                numa_nodes: 1,
                power_policy: lock(&self.power).name().to_string(),
                power_note: "the fake host has no cpufreq".into(),
                ..Default::default()
            },
        }
    }

    fn list(&self) -> Vec<VmInfo> {
        let mut vms = lock(&self.vms);
        vms.values_mut()
            .map(|v| {
                v.settle();
                v.info.clone()
            })
            .collect()
    }

    fn info(&self, name: &str) -> Result<VmInfo, HostError> {
        self.with_vm(name, |vm| Ok(vm.info.clone()))
    }

    fn create(&self, def: VmDefinition) -> Result<VmInfo, HostError> {
        FakeHost::check(&def)?;
        let mut vms = lock(&self.vms);
        if vms.contains_key(&def.name) {
            return Err(HostError::AlreadyExists(format!(
                "VM '{}' already exists; delete it first or pick another name",
                def.name
            )));
        }
        let info = VmInfo {
            name: def.name.clone(),
            state: VmState::Stopped,
            last_exit: None,
            started_at: None,
            ended_at: None,
            boots: 0,
            nics: vm_nic_info(&def.name, &def.nics, &[]),
            definition: def.clone(),
        };
        let metrics = VmMetrics {
            name: def.name.clone(),
            state: VmState::Stopped,
            vcpus: vec![],
            memory_configured: def.memory.0,
            memory_touched: 0,
            disks: def
                .disks
                .iter()
                .map(|d| DiskMetrics {
                    path: d.path.clone(),
                    ..DiskMetrics::default()
                })
                .collect(),
            nics: vec![NicMetrics::default(); def.nics.len()],
        };
        vms.insert(
            def.name.clone(),
            FakeVm {
                info: info.clone(),
                metrics,
                log: Vec::new(),
                input: Arc::default(),
                consoles: Vec::new(),
                stop_at: None,
            },
        );
        Ok(info)
    }

    fn update(&self, name: &str, def: VmDefinition) -> Result<VmInfo, HostError> {
        self.with_vm(name, |vm| {
            if def.name != name {
                return Err(HostError::Invalid(format!(
                    "the definition's name '{}' is not the VM's name '{name}': a VM cannot \
                     be renamed",
                    def.name
                )));
            }
            FakeHost::check(&def)?;
            if !matches!(vm.info.state, VmState::Stopped | VmState::Crashed) {
                let state = format!("{:?}", vm.info.state).to_lowercase();
                return Err(HostError::Conflict(format!(
                    "VM '{name}' is {state}: its definition can only be changed while it is \
                     stopped; stop it first"
                )));
            }
            vm.info.nics = vm_nic_info(&def.name, &def.nics, &[]);
            vm.metrics.memory_configured = def.memory.0;
            vm.metrics.disks = def
                .disks
                .iter()
                .map(|d| DiskMetrics {
                    path: d.path.clone(),
                    ..DiskMetrics::default()
                })
                .collect();
            vm.metrics.nics = vec![NicMetrics::default(); def.nics.len()];
            vm.info.definition = def;
            Ok(vm.info.clone())
        })
    }

    fn delete(&self, name: &str) -> Result<(), HostError> {
        let mut vms = lock(&self.vms);
        let vm = vms.get_mut(name).ok_or_else(|| not_found(name))?;
        vm.settle();
        if !matches!(vm.info.state, VmState::Stopped | VmState::Crashed) {
            return Err(vm.conflict("delete"));
        }
        vms.remove(name);
        Ok(())
    }

    fn start(&self, name: &str) -> Result<VmInfo, HostError> {
        self.with_vm(name, |vm| {
            if !matches!(vm.info.state, VmState::Stopped | VmState::Crashed) {
                return Err(vm.conflict("start"));
            }
            vm.running();
            vm.metrics.memory_touched = 0;
            Ok(vm.info.clone())
        })
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<VmInfo, HostError> {
        let delay = self.stop_delay;
        self.with_vm(name, |vm| {
            if vm.info.state != VmState::Running {
                return Err(vm.conflict("stop"));
            }
            vm.info.state = VmState::Stopping;
            vm.metrics.state = VmState::Stopping;
            vm.stop_at = Some((Instant::now() + delay.min(timeout), delay <= timeout));
            Ok(vm.info.clone())
        })
    }

    fn poweroff(&self, name: &str) -> Result<VmInfo, HostError> {
        self.with_vm(name, |vm| {
            if !matches!(vm.info.state, VmState::Running | VmState::Stopping) {
                return Err(vm.conflict("power off"));
            }
            vm.end(ExitInfo::Killed);
            Ok(vm.info.clone())
        })
    }

    fn reset(&self, name: &str) -> Result<VmInfo, HostError> {
        self.with_vm(name, |vm| {
            if vm.info.state != VmState::Running {
                return Err(vm.conflict("reset"));
            }
            vm.running();
            Ok(vm.info.clone())
        })
    }

    fn console_attach(&self, name: &str) -> Result<ConsoleAttachment, HostError> {
        self.with_vm(name, |vm| {
            if vm.info.state != VmState::Running {
                return Err(vm.conflict("attach to the console of"));
            }
            let (tx, rx) = std::sync::mpsc::channel();
            vm.consoles.push(tx);
            let input = vm.input.clone();
            Ok(ConsoleAttachment {
                history: vm.log[vm.log.len().saturating_sub(4096)..].to_vec(),
                events: rx,
                input: Box::new(move |b: &[u8]| lock(&input).extend_from_slice(b)),
            })
        })
    }

    fn console_log(&self, name: &str, max: usize) -> Result<Vec<u8>, HostError> {
        self.with_vm(name, |vm| {
            Ok(vm.log[vm.log.len().saturating_sub(max)..].to_vec())
        })
    }

    fn vm_metrics(&self, name: &str) -> Result<VmMetrics, HostError> {
        self.with_vm(name, |vm| Ok(vm.metrics.clone()))
    }

    fn metrics(&self) -> HostMetrics {
        let host = self.host_info();
        let vms = lock(&self.vms);
        HostMetrics {
            host,
            rss: 64 << 20,
            cpu_time_ns: vms
                .values()
                .flat_map(|v| &v.metrics.vcpus)
                .map(|c| c.cpu_time_ns)
                .sum(),
            vms: vms.values().map(|v| v.metrics.clone()).collect(),
            pcpus: Vec::new(),
        }
    }

    fn network(&self) -> Option<&dyn NetworkApi> {
        Some(&*self.net)
    }

    fn set_power_policy(&self, policy: PowerPolicy) -> Result<HostInfo, HostError> {
        *lock(&self.power) = policy;
        Ok(self.host_info())
    }
}

/// The API served on its own thread and runtime until dropped.
pub struct TestServer {
    socket: std::path::PathBuf,
    tcp: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ApiError>>>,
}

impl TestServer {
    /// Binds (errors come back here) and serves `host` as configured by `cfg`.
    pub fn start(host: Arc<dyn HostApi>, cfg: &HostConfig) -> Result<TestServer, ApiError> {
        Self::start_with_body_timeout(host, cfg, crate::api::BODY_READ_TIMEOUT)
    }

    /// [`TestServer::start`] with another request body timeout (tests of the bound use a
    /// short one).
    pub fn start_with_body_timeout(
        host: Arc<dyn HostApi>,
        cfg: &HostConfig,
        body_timeout: Duration,
    ) -> Result<TestServer, ApiError> {
        let mut server = Server::bind(host, cfg)?;
        server.set_body_read_timeout(body_timeout);
        let socket = server.socket_path().to_path_buf();
        let tcp = server.tcp_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|source| ApiError::Io {
                    what: "cannot start a tokio runtime".into(),
                    source,
                })?;
            let result = runtime.block_on(server.run(async {
                let _ = stopped.await;
            }));
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        });
        Ok(TestServer {
            socket,
            tcp,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp
    }

    /// Shuts the server down and returns how serving ended.
    pub fn stop(mut self) -> Result<(), ApiError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ApiError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(ApiError::Refused("the API server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
