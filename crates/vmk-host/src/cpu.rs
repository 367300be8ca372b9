//! The host's CPU policy: its scheduler built from the host config's `[cpu]`, a VM's
//! `[resources]` turned into scheduler settings, the edition's vCPU cap, and `host info`'s
//! view of the CPUs. (The mechanism is `vmk-sched`; what a VM is entitled to is decided
//! here, where every VM is known.)

use std::path::Path;
use std::time::Duration;

use vmk_api::model::{
    CpuConfig, CpuInfo, Edition, HostError, PowerPolicy, Resources, SchedulerKind, ShareLevel,
    Shares, VmDefinition,
};
use vmk_sched::{GroupParams, Mode, SchedConfig, Scheduler, Topology};

/// ESX's per-vCPU CPU shares.
pub fn shares_per_vcpu(s: Shares) -> u32 {
    match s {
        Shares::Level(ShareLevel::Low) => 500,
        Shares::Level(ShareLevel::Normal) => 1000,
        Shares::Level(ShareLevel::High) => 2000,
        Shares::Custom(n) => n,
    }
}

/// A VM's scheduler settings from its definition.
pub fn group_params(cpus: u32, r: &Resources) -> GroupParams {
    GroupParams {
        shares: shares_per_vcpu(r.cpu_shares)
            .saturating_mul(cpus.max(1))
            .max(1),
        reservation_mhz: r.cpu_reservation_mhz,
        limit_mhz: r.cpu_limit_mhz,
        affinity: r.cpu_affinity.clone(),
    }
}

/// Refuses a VM with more vCPUs than the edition allows.
pub fn check_edition(def: &VmDefinition, edition: Edition) -> Result<(), HostError> {
    let max = edition.max_vcpus();
    if def.cpus > max {
        return Err(HostError::Invalid(format!(
            "VM '{}' has {} vCPUs: the {} edition allows at most {max} vCPUs per VM (host \
             config `edition`); give the VM at most {max} vCPUs or run the host with a \
             larger edition",
            def.name,
            def.cpus,
            edition.name()
        )));
    }
    Ok(())
}

/// The host's scheduler as `[cpu]` says.
pub fn scheduler(cfg: &CpuConfig) -> Result<(Scheduler, Topology), HostError> {
    let host = Topology::from_host().map_err(|e| HostError::Internal(e.to_string()))?;
    let topology = match &cfg.cpus {
        Some(ids) => host
            .restrict(ids)
            .map_err(|e| HostError::Invalid(format!("host config [cpu] cpus: {e}")))?,
        None => host,
    };
    let sched = Scheduler::new(SchedConfig {
        topology: topology.clone(),
        cpu_mhz: cfg.mhz.unwrap_or_else(vmk_sched::topology::host_cpu_mhz),
        quantum: Duration::from_millis(10),
        skew: Duration::from_millis(3),
        pin: true,
        mode: match cfg.scheduler {
            SchedulerKind::Vmk => Mode::Scheduler,
            SchedulerKind::Threads => Mode::ThreadPerTask,
        },
    })
    .map_err(|e| HostError::Internal(format!("cannot start the CPU scheduler: {e}")))?;
    Ok((sched, topology))
}

/// Applies a power policy to the CPUs vmk schedules on: the cpufreq governor where the
/// host exposes cpufreq and lets vmk write it, and packing for low-power. Returns what it
/// did, for `host info`.
pub fn apply_power(sched: &Scheduler, policy: PowerPolicy) -> String {
    apply_power_at(
        Path::new("/sys/devices/system/cpu"),
        sched.cpu_ids(),
        policy,
        || sched.set_pack(policy == PowerPolicy::LowPower),
    )
}

fn apply_power_at(
    root: &Path,
    cpus: &[u32],
    policy: PowerPolicy,
    set_pack: impl FnOnce(),
) -> String {
    set_pack();
    let pack = if policy == PowerPolicy::LowPower {
        "; vCPUs packed onto as few CPUs as the load allows"
    } else {
        ""
    };
    let want = policy.governor();
    let mut set = Vec::new();
    let mut problems = Vec::new();
    for &c in cpus {
        let dir = root.join(format!("cpu{c}/cpufreq"));
        let Ok(available) = std::fs::read_to_string(dir.join("scaling_available_governors")) else {
            continue;
        };
        // schedutil is not built into every kernel; ondemand is the older balanced one.
        let governor = [want, "ondemand"].into_iter().find(|g| {
            available.split_whitespace().any(|a| a == *g)
                && (*g == want || policy == PowerPolicy::Balanced)
        });
        match governor {
            Some(g) => match std::fs::write(dir.join("scaling_governor"), g) {
                Ok(()) => set.push((c, g)),
                Err(e) => problems.push(format!("CPU {c}: {e}")),
            },
            None => problems.push(format!(
                "CPU {c} has no {want} governor ({})",
                available.trim()
            )),
        }
    }
    if set.is_empty() && problems.is_empty() {
        return format!(
            "{}: cpufreq governor not set: this host exposes no cpufreq for its CPUs (as in \
             most virtual machines){pack}",
            policy.name()
        );
    }
    let mut note = String::new();
    if !set.is_empty() {
        let ids: Vec<u32> = set.iter().map(|(c, _)| *c).collect();
        note = format!(
            "{}: cpufreq governor {} on CPUs {}",
            policy.name(),
            set[0].1,
            vmk_sched::topology::format_cpu_list(&ids)
        );
    }
    if !problems.is_empty() {
        if note.is_empty() {
            note = format!("{}: cpufreq governor not set", policy.name());
        }
        note += &format!(" ({})", problems.join("; "));
    }
    note + pack
}

/// `host info`'s CPU section.
pub fn info(
    sched: &Scheduler,
    topology: &Topology,
    edition: Edition,
    power: &(PowerPolicy, String),
) -> CpuInfo {
    CpuInfo {
        cpu_mhz: sched.cpu_mhz(),
        cpus: sched.cpu_ids().to_vec(),
        capacity_mhz: sched.capacity_mhz(),
        reserved_mhz: sched.reserved_mhz(),
        scheduler: match sched.mode() {
            Mode::Scheduler => "vmk",
            Mode::ThreadPerTask => "threads",
        }
        .to_string(),
        edition: edition.name().to_string(),
        max_vcpus_per_vm: edition.max_vcpus(),
        cores: {
            let mut c: Vec<usize> = topology.cpus.iter().map(|c| c.core).collect();
            c.sort_unstable();
            c.dedup();
            c.len() as u32
        },
        threads_per_core: topology.threads_per_core() as u32,
        numa_nodes: {
            let mut n: Vec<u32> = topology.cpus.iter().map(|c| c.node).collect();
            n.sort_unstable();
            n.dedup();
            n.len() as u32
        },
        power_policy: power.0.name().to_string(),
        power_note: power.1.clone(),
    }
}

/// A scheduler refusal at start as the API reports it (see [`refusal_as`]).
pub fn refusal(vm: &str, e: vmk_sched::PolicyError) -> HostError {
    let msg = format!("VM '{vm}' cannot start: {e}; it stays stopped");
    refusal_as(&e, msg)
}

/// `msg` with the status of scheduler refusal `e`: a reservation that does not fit is a
/// conflict with what runs now; the rest is the definition's.
pub fn refusal_as(e: &vmk_sched::PolicyError, msg: String) -> HostError {
    match e {
        vmk_sched::PolicyError::ReservationDoesNotFit { .. } => HostError::Conflict(msg),
        _ => HostError::Invalid(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_scale_with_vcpus() {
        let r = Resources {
            cpu_shares: Shares::Level(ShareLevel::High),
            ..Default::default()
        };
        assert_eq!(group_params(4, &r).shares, 8000);
        let r = Resources {
            cpu_shares: Shares::Custom(300),
            cpu_limit_mhz: Some(1500),
            ..Default::default()
        };
        let p = group_params(2, &r);
        assert_eq!((p.shares, p.limit_mhz), (600, Some(1500)));
        assert_eq!(group_params(1, &Resources::default()).shares, 1000);
    }

    #[test]
    fn power_policy_sets_the_governor_where_it_can() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for c in [0, 1] {
            let dir = root.join(format!("cpu{c}/cpufreq"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("scaling_available_governors"),
                "performance powersave ondemand\n",
            )
            .unwrap();
            std::fs::write(dir.join("scaling_governor"), "powersave\n").unwrap();
        }
        let mut packed = None;
        let note = apply_power_at(root, &[0, 1], PowerPolicy::HighPerformance, || {
            packed = Some(false)
        });
        assert_eq!(
            note,
            "high-performance: cpufreq governor performance on CPUs 0-1"
        );
        let gov = std::fs::read_to_string(root.join("cpu1/cpufreq/scaling_governor")).unwrap();
        assert_eq!(gov, "performance");
        // No schedutil here: balanced takes ondemand.
        let note = apply_power_at(root, &[0, 1], PowerPolicy::Balanced, || {});
        assert_eq!(note, "balanced: cpufreq governor ondemand on CPUs 0-1");
        let note = apply_power_at(root, &[0], PowerPolicy::LowPower, || packed = Some(true));
        assert!(
            note.starts_with("low-power: cpufreq governor powersave on CPUs 0"),
            "{note}"
        );
        assert!(
            note.ends_with("packed onto as few CPUs as the load allows"),
            "{note}"
        );
        assert_eq!(packed, Some(true));
        // No cpufreq at all (this machine, most VMs): said so.
        let note = apply_power_at(&root.join("none"), &[0, 1], PowerPolicy::Balanced, || {});
        assert!(note.contains("exposes no cpufreq"), "{note}");
    }

    #[test]
    fn edition_caps() {
        let mut d: VmDefinition = serde_json::from_value(serde_json::json!(
            {"name": "big", "cpus": 5, "boot": {"kernel": "/k"}}
        ))
        .unwrap();
        let e = check_edition(&d, Edition::Standard)
            .unwrap_err()
            .to_string();
        assert!(e.contains("standard edition allows at most 4"), "{e}");
        check_edition(&d, Edition::EnterprisePlus).unwrap();
        d.cpus = 9;
        assert!(check_edition(&d, Edition::EnterprisePlus).is_err());
        check_edition(&d, Edition::Unlimited).unwrap();
    }
}
