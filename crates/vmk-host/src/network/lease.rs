//! The NICs of VMs: the MACs they get for a power-on (given, remembered or generated; one
//! holder per MAC while it runs), and their ports on the switches.

use std::sync::Arc;

use vmk_api::model::{HostError, NicDef, VmNicInfo};
use vmk_vswitch::{MacAddr, PortId, PortStats, VSwitch, VnicPort};

use super::switch::{lock, Network, State};
use super::validate::invalid;

impl Network {
    /// Takes the MACs of VM `vm`'s NICs for one power-on: the given MAC, else the one
    /// remembered from an earlier run (`remembered[i]`), else a generated one. Refuses a
    /// MAC another running VM holds (naming it) and port groups that do not exist.
    pub fn lease(
        self: &Arc<Self>,
        vm: &str,
        nics: &[NicDef],
        remembered: &[String],
    ) -> Result<NicLease, HostError> {
        let mut st = lock(&self.st);
        for (i, n) in nics.iter().enumerate() {
            st.portgroup(&n.portgroup).map_err(|e| {
                invalid(format!(
                    "VM '{vm}': NIC {i}: {e}; add the port group or change the VM's NIC"
                ))
            })?;
        }
        let mut taken: Vec<LeasedNic> = Vec::new();
        let release = |st: &mut State, taken: &[LeasedNic]| {
            for t in taken {
                st.macs.release(t.mac);
                st.owners.remove(&t.mac);
            }
        };
        for (i, n) in nics.iter().enumerate() {
            let idx = i as u32;
            let given = match &n.mac {
                Some(m) => Some(m.parse::<MacAddr>().map_err(|e| {
                    release(&mut st, &taken);
                    invalid(format!("VM '{vm}': NIC {i}: {}", e.0))
                })?),
                None => None,
            };
            let wanted = given.or_else(|| remembered.get(i).and_then(|m| m.parse().ok()));
            let mac = match wanted {
                Some(mac) => match st.macs.reserve(mac) {
                    Ok(mac) => mac,
                    Err(e) => {
                        let owner = st.owners.get(&mac).cloned();
                        if given.is_none() {
                            // A remembered generated MAC that another VM took meanwhile:
                            // generate a new one.
                            match st.macs.generate(vm, idx) {
                                Ok(m) => m,
                                Err(e) => {
                                    release(&mut st, &taken);
                                    return Err(invalid(format!("VM '{vm}': NIC {i}: {e}")));
                                }
                            }
                        } else {
                            release(&mut st, &taken);
                            return Err(HostError::Conflict(match owner {
                                Some((ovm, onic)) => format!(
                                    "VM '{vm}': NIC {i}: MAC address {mac} is in use by NIC \
                                     {onic} of running VM '{ovm}'; give this NIC another MAC \
                                     (or none, to have one generated) or stop '{ovm}'"
                                ),
                                None => format!("VM '{vm}': NIC {i}: {e}"),
                            }));
                        }
                    }
                },
                None => match st.macs.generate(vm, idx) {
                    Ok(m) => m,
                    Err(e) => {
                        release(&mut st, &taken);
                        return Err(invalid(format!("VM '{vm}': NIC {i}: {e}")));
                    }
                },
            };
            st.owners.insert(mac, (vm.to_string(), idx));
            taken.push(LeasedNic {
                portgroup: n.portgroup.clone(),
                mac,
            });
        }
        Ok(NicLease {
            net: self.clone(),
            vm: vm.to_string(),
            nics: taken,
        })
    }
}

/// What a VM's info shows about its NICs: the given MAC, else the one remembered from an
/// earlier run, else the one the first start will generate (if it is free then).
pub fn vm_nic_info(vm: &str, nics: &[NicDef], remembered: &[String]) -> Vec<VmNicInfo> {
    nics.iter()
        .enumerate()
        .map(|(i, n)| VmNicInfo {
            portgroup: n.portgroup.clone(),
            mac: n
                .mac
                .clone()
                .or_else(|| remembered.get(i).cloned())
                .unwrap_or_else(|| vmk_vswitch::generated_mac(vm, i as u32, 0).to_string()),
            generated: n.mac.is_none(),
        })
        .collect()
}

struct LeasedNic {
    portgroup: String,
    mac: MacAddr,
}

/// The MACs of one VM's NICs for one power-on; released when dropped.
pub struct NicLease {
    net: Arc<Network>,
    vm: String,
    nics: Vec<LeasedNic>,
}

/// A vNIC connected to its switch: the port (the machine's NIC backend) and a handle to
/// read its counters after the port is gone.
pub struct ConnectedNic {
    pub port: VnicPort,
    pub handle: PortHandle,
}

/// Reads a port's counters while it is connected.
#[derive(Clone)]
pub struct PortHandle {
    pub switch: VSwitch,
    pub id: PortId,
    pub portgroup: String,
    pub mac: MacAddr,
}

impl PortHandle {
    pub fn stats(&self) -> Option<PortStats> {
        self.switch.port_stats(self.id)
    }
}

impl NicLease {
    /// The leased MACs, in NIC order.
    pub fn macs(&self) -> Vec<String> {
        self.nics.iter().map(|n| n.mac.to_string()).collect()
    }

    /// Connects one port per NIC (port group as it is now: it may have been removed since
    /// the lease). Ports disconnect when dropped.
    pub fn connect(&self) -> Result<Vec<ConnectedNic>, String> {
        let st = lock(&self.net.st);
        let mut out = Vec::new();
        for (i, n) in self.nics.iter().enumerate() {
            let pg = st
                .portgroup(&n.portgroup)
                .map_err(|e| format!("NIC {i}: {e}"))?;
            let sw = st
                .switch(&pg.vswitch)
                .map_err(|e| format!("NIC {i}: {e}"))?;
            let port = sw
                .add_vnic(&n.portgroup, &format!("{}/eth{i}", self.vm), n.mac)
                .map_err(|e| format!("NIC {i}: {e}"))?;
            out.push(ConnectedNic {
                handle: PortHandle {
                    switch: sw.clone(),
                    id: port.id(),
                    portgroup: n.portgroup.clone(),
                    mac: n.mac,
                },
                port,
            });
        }
        Ok(out)
    }
}

impl Drop for NicLease {
    fn drop(&mut self) {
        let mut st = lock(&self.net.st);
        for n in &self.nics {
            st.macs.release(n.mac);
            st.owners.remove(&n.mac);
        }
    }
}
