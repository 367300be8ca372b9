//! Checks of the network's configuration beyond what the API types say (MTU and VLAN
//! ranges, teaming lists, shaping rates), and its translation into the `vmk_vswitch`
//! policies; switch errors become [`HostError`]s with the API's status.

use vmk_api::model::HostError;
use vmk_api::network::{check_ifname, PortGroupDef, ShapingDef, TeamingDef};
use vmk_vswitch::{
    PortGroupConfig, SecurityPolicy, ShapingPolicy, TeamingPolicy, MAX_MTU, MIN_MTU, VLAN_VGT,
};

pub(super) fn invalid(msg: impl Into<String>) -> HostError {
    HostError::Invalid(msg.into())
}

pub(super) fn switch_error(e: vmk_vswitch::SwitchError) -> HostError {
    use vmk_vswitch::SwitchError as E;
    match e {
        E::PortGroupInUse { .. } | E::DuplicateMac { .. } => HostError::Conflict(e.to_string()),
        E::DuplicatePortGroup { .. } | E::DuplicateUplink { .. } => {
            HostError::AlreadyExists(e.to_string())
        }
        E::Thread { .. } => HostError::Internal(e.to_string()),
        _ => HostError::Invalid(e.to_string()),
    }
}

pub(super) fn check_mtu(switch: &str, mtu: u16) -> Result<(), HostError> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(invalid(format!(
            "vSwitch '{switch}': MTU {mtu} is out of range; use {MIN_MTU} to {MAX_MTU}"
        )));
    }
    Ok(())
}

pub(super) fn check_vlan(pg: &str, vlan: u16) -> Result<(), HostError> {
    if vlan > VLAN_VGT {
        return Err(invalid(format!(
            "port group '{pg}': VLAN {vlan} is out of range; use 0 (untagged), 1 to 4094 \
             (the switch tags) or 4095 (the guests tag)"
        )));
    }
    Ok(())
}

pub(super) fn shaping(
    pg: &str,
    s: &Option<ShapingDef>,
) -> Result<Option<ShapingPolicy>, HostError> {
    let Some(s) = s else { return Ok(None) };
    let p = ShapingPolicy {
        average_bps: s.average_bps,
        peak_bps: s.peak_bps,
        burst_bytes: s.burst_bytes,
    };
    p.validate()
        .map_err(|e| invalid(format!("port group '{pg}': {e}")))?;
    Ok(Some(p))
}

pub(super) fn pg_config(d: &PortGroupDef) -> Result<PortGroupConfig, HostError> {
    check_vlan(&d.name, d.vlan)?;
    Ok(PortGroupConfig {
        vlan: d.vlan,
        security: SecurityPolicy {
            promiscuous: d.security.promiscuous.accept(),
            mac_changes: d.security.mac_changes.accept(),
            forged_transmits: d.security.forged_transmits.accept(),
        },
        shaping: shaping(&d.name, &d.shaping)?,
    })
}

pub(super) fn teaming(t: &TeamingDef) -> TeamingPolicy {
    TeamingPolicy {
        active: t.active.clone(),
        standby: t.standby.clone(),
        failback: t.failback,
    }
}

pub(super) fn check_teaming(switch: &str, t: &TeamingDef) -> Result<(), HostError> {
    let mut seen = std::collections::HashSet::new();
    for n in t.active.iter().chain(&t.standby) {
        check_ifname(n)?;
        if !seen.insert(n) {
            return Err(invalid(format!(
                "teaming of vSwitch '{switch}': uplink '{n}' is listed twice; list each \
                 uplink once, as active or standby"
            )));
        }
    }
    Ok(())
}
