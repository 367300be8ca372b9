//! What the REST API server asks of a host: the [`HostApi`] trait (and [`NetworkApi`] for
//! the network routes), in terms of the API's types ([`vmk_api`]). The real host
//! ([`crate::runtime::Host`]) and the test double (`fake`) implement them.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use vmk_api::model::{
    ExitInfo, HostError, HostInfo, HostMetrics, PowerPolicy, VmDefinition, VmInfo, VmMetrics,
};
use vmk_api::network::{
    NetworkInfo, PortGroupDef, PortGroupInfo, PortGroupUpdate, UplinkSpec, VSwitchDef, VSwitchInfo,
    VSwitchUpdate,
};

/// What an attached console receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// Bytes the guest wrote to its serial console.
    Output(Vec<u8>),
    /// The run ended (the attachment ends with it).
    Ended(ExitInfo),
}

/// Sends bytes to a guest's serial console.
pub type ConsoleInput = Box<dyn Fn(&[u8]) + Send + Sync>;

/// An interactive console: recent history, then live output; input goes to the guest UART.
pub struct ConsoleAttachment {
    /// The last bytes of output before attaching (so the user sees the current prompt).
    pub history: Vec<u8>,
    pub events: Receiver<ConsoleEvent>,
    /// Sends bytes to the guest's serial console.
    pub input: ConsoleInput,
}

/// Everything the REST API (and so the CLI) can ask of a host. Calls may block briefly
/// (file I/O); none waits for a guest. Lifecycle calls return the VM's new state.
pub trait HostApi: Send + Sync {
    fn host_info(&self) -> HostInfo;
    fn list(&self) -> Vec<VmInfo>;
    fn info(&self, name: &str) -> Result<VmInfo, HostError>;
    /// Defines a VM (validated, persisted). Does not start it.
    fn create(&self, def: VmDefinition) -> Result<VmInfo, HostError>;
    /// Replaces the definition of a stopped (or crashed) VM named `name`, with the checks of
    /// [`HostApi::create`]; `def.name` must be `name` (no renaming). The VM's state, last exit
    /// and run history are kept. Refused (`Conflict`) while it is starting, running or
    /// stopping.
    fn update(&self, name: &str, def: VmDefinition) -> Result<VmInfo, HostError>;
    /// Removes a VM's definition and logs; refused unless it is stopped or crashed.
    fn delete(&self, name: &str) -> Result<(), HostError>;
    fn start(&self, name: &str) -> Result<VmInfo, HostError>;
    /// Asks the guest to shut down; powers the VM off if it has not after `timeout`.
    fn stop(&self, name: &str, timeout: Duration) -> Result<VmInfo, HostError>;
    /// Powers the VM off now.
    fn poweroff(&self, name: &str) -> Result<VmInfo, HostError>;
    /// Powers a running VM off and starts it again.
    fn reset(&self, name: &str) -> Result<VmInfo, HostError>;
    fn console_attach(&self, name: &str) -> Result<ConsoleAttachment, HostError>;
    /// The last `max` bytes of the VM's console log.
    fn console_log(&self, name: &str, max: usize) -> Result<Vec<u8>, HostError>;
    fn vm_metrics(&self, name: &str) -> Result<VmMetrics, HostError>;
    fn metrics(&self) -> HostMetrics;
    /// Sets the host's power policy (cpufreq governor where the host allows, packing for
    /// low-power); `host_info().cpu` says what it did.
    fn set_power_policy(&self, policy: PowerPolicy) -> Result<HostInfo, HostError> {
        Err(HostError::Invalid(format!(
            "this host cannot set a power policy ({} asked)",
            policy.name()
        )))
    }
    /// The host's network (vSwitches, port groups, uplinks), if it has one: the API's
    /// network routes manage it directly.
    fn network(&self) -> Option<&dyn NetworkApi> {
        None
    }
}

/// The host's network as the API manages it: vSwitches, their uplinks and port groups.
/// Changes apply at once (to running VMs' ports too) and persist.
pub trait NetworkApi: Send + Sync {
    /// The whole network: vSwitches, port groups and every VM port's counters.
    fn info(&self) -> NetworkInfo;
    fn vswitches(&self) -> Vec<VSwitchInfo>;
    fn vswitch(&self, name: &str) -> Result<VSwitchInfo, HostError>;
    fn add_vswitch(&self, def: VSwitchDef) -> Result<VSwitchInfo, HostError>;
    /// Changes a vSwitch's MTU or teaming.
    fn update_vswitch(&self, name: &str, u: VSwitchUpdate) -> Result<VSwitchInfo, HostError>;
    /// Removes a vSwitch without port groups (its uplinks go with it).
    fn remove_vswitch(&self, name: &str) -> Result<(), HostError>;
    fn add_uplink(&self, vswitch: &str, spec: UplinkSpec) -> Result<VSwitchInfo, HostError>;
    fn remove_uplink(&self, vswitch: &str, name: &str) -> Result<VSwitchInfo, HostError>;
    fn portgroups(&self) -> Vec<PortGroupInfo>;
    fn portgroup(&self, name: &str) -> Result<PortGroupInfo, HostError>;
    fn add_portgroup(&self, def: PortGroupDef) -> Result<PortGroupInfo, HostError>;
    /// Changes a port group's VLAN, security or shaping; running VMs' ports follow.
    fn update_portgroup(&self, name: &str, u: PortGroupUpdate) -> Result<PortGroupInfo, HostError>;
    /// Removes a port group without connected ports.
    fn remove_portgroup(&self, name: &str) -> Result<(), HostError>;
}
