//! `GET /metrics`: the host's and every VM's counters in the Prometheus text exposition
//! format (version 0.0.4): `# HELP` and `# TYPE` before each family, all samples of a family
//! together, label values escaped.

use std::fmt::Write;

use vmk_api::model::{HostMetrics, VcpuMetrics, VmMetrics, VmState};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: counters and byte counts are integers, seconds are fractional.
enum Value {
    Int(u64),
    Float(f64),
}

fn secs(ns: u64) -> Value {
    Value::Float(ns as f64 / 1e9)
}

struct Family<'a> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, Value)>,
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, labels: Vec<(&'static str, String)>, v: Value) {
        self.samples.push((labels, v));
    }
}

impl Drop for Family<'_> {
    /// Writes the family when it is complete (a family with no samples is left out).
    fn drop(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let out = &mut *self.out;
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, v) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, val)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(val));
                }
                out.push('}');
            }
            let _ = match v {
                Value::Int(n) => writeln!(out, " {n}"),
                Value::Float(f) => writeln!(out, " {f}"),
            };
        }
    }
}

fn family<'a>(
    out: &'a mut String,
    name: &'static str,
    kind: &'static str,
    help: &'static str,
) -> Family<'a> {
    Family {
        name,
        kind,
        help,
        samples: Vec::new(),
        out,
    }
}

const STATES: [(VmState, &str); 5] = [
    (VmState::Stopped, "stopped"),
    (VmState::Starting, "starting"),
    (VmState::Running, "running"),
    (VmState::Stopping, "stopping"),
    (VmState::Crashed, "crashed"),
];

/// One counter per VM and disk.
fn disk_family(
    out: &mut String,
    vms: &[VmMetrics],
    name: &'static str,
    help: &'static str,
    get: fn(&vmk_api::model::DiskMetrics) -> u64,
) {
    let mut f = family(out, name, "counter", help);
    for vm in vms {
        for (i, d) in vm.disks.iter().enumerate() {
            f.sample(
                vec![
                    ("vm", vm.name.clone()),
                    ("disk", i.to_string()),
                    ("path", d.path.to_string_lossy().into_owned()),
                ],
                Value::Int(get(d)),
            );
        }
    }
}

/// One counter per VM and NIC.
fn nic_family(
    out: &mut String,
    vms: &[VmMetrics],
    name: &'static str,
    help: &'static str,
    get: fn(&vmk_api::model::NicMetrics) -> u64,
) {
    let mut f = family(out, name, "counter", help);
    for vm in vms {
        for (i, n) in vm.nics.iter().enumerate() {
            f.sample(
                vec![("vm", vm.name.clone()), ("nic", i.to_string())],
                Value::Int(get(n)),
            );
        }
    }
}

/// Renders the metrics.
pub fn render(m: &HostMetrics) -> String {
    let mut out = String::new();
    let o = &mut out;
    let h = &m.host;
    family(
        o,
        "vmk_host_info",
        "gauge",
        "The host's name and vmk version (always 1).",
    )
    .sample(
        vec![
            ("hostname", h.hostname.clone()),
            ("version", h.version.clone()),
        ],
        Value::Int(1),
    );
    family(o, "vmk_host_cpus", "gauge", "Logical CPUs of the host.")
        .sample(vec![], Value::Int(h.cpus.into()));
    family(o, "vmk_host_memory_bytes", "gauge", "Memory of the host.")
        .sample(vec![], Value::Int(h.memory));
    family(
        o,
        "vmk_host_uptime_seconds",
        "gauge",
        "Seconds since the host started.",
    )
    .sample(vec![], Value::Int(h.uptime_secs));
    family(o, "vmk_host_vms", "gauge", "VMs defined on the host.")
        .sample(vec![], Value::Int(h.vms.into()));
    family(
        o,
        "vmk_host_vms_running",
        "gauge",
        "VMs running on the host.",
    )
    .sample(vec![], Value::Int(h.vms_running.into()));
    family(
        o,
        "vmk_host_resident_memory_bytes",
        "gauge",
        "Resident memory of the host process (all VMs included).",
    )
    .sample(vec![], Value::Int(m.rss));
    family(
        o,
        "vmk_host_cpu_seconds_total",
        "counter",
        "CPU time used by the host process (all VMs included).",
    )
    .sample(vec![], secs(m.cpu_time_ns));

    {
        let mut f = family(
            o,
            "vmk_vm_state",
            "gauge",
            "The VM's state: 1 for the current state, 0 for the others.",
        );
        for vm in &m.vms {
            for (state, label) in STATES {
                f.sample(
                    vec![("vm", vm.name.clone()), ("state", label.to_string())],
                    Value::Int((vm.state == state).into()),
                );
            }
        }
    }
    {
        let mut f = family(
            o,
            "vmk_vm_vcpus",
            "gauge",
            "vCPUs of the VM's current or last run.",
        );
        for vm in &m.vms {
            f.sample(
                vec![("vm", vm.name.clone())],
                Value::Int(vm.vcpus.len() as u64),
            );
        }
    }
    {
        let mut f = family(
            o,
            "vmk_vm_vcpu_cpu_seconds_total",
            "counter",
            "Host CPU time the vCPU ran (esxtop's used).",
        );
        for vm in &m.vms {
            for (i, c) in vm.vcpus.iter().enumerate() {
                f.sample(
                    vec![("vm", vm.name.clone()), ("vcpu", i.to_string())],
                    secs(c.cpu_time_ns),
                );
            }
        }
    }
    // The scheduler's other states of a vCPU, as esxtop shows them.
    type Field = fn(&VcpuMetrics) -> u64;
    let states: [(&str, &str, Field); 4] = [
        (
            "vmk_vm_vcpu_ready_seconds_total",
            "Time the vCPU was ready to run but not running (esxtop %RDY).",
            |c| c.ready_ns,
        ),
        (
            "vmk_vm_vcpu_costop_seconds_total",
            "Time the vCPU was held back by co-scheduling (esxtop %CSTP).",
            |c| c.costop_ns,
        ),
        (
            "vmk_vm_vcpu_wait_seconds_total",
            "Time the vCPU was idle in the guest (esxtop %WAIT).",
            |c| c.wait_ns,
        ),
        (
            "vmk_vm_vcpu_limited_seconds_total",
            "Time the vCPU was ready but held back by the VM's CPU limit (esxtop %MLMTD).",
            |c| c.limited_ns,
        ),
    ];
    for (name, help, get) in states {
        let mut f = family(o, name, "counter", help);
        for vm in &m.vms {
            for (i, c) in vm.vcpus.iter().enumerate() {
                f.sample(
                    vec![("vm", vm.name.clone()), ("vcpu", i.to_string())],
                    secs(get(c)),
                );
            }
        }
    }
    {
        let mut f = family(
            o,
            "vmk_pcpu_used_seconds_total",
            "counter",
            "Time the logical CPU ran vCPUs (vmk's scheduler).",
        );
        for p in &m.pcpus {
            f.sample(vec![("cpu", p.cpu.to_string())], secs(p.used_ns));
        }
    }
    {
        let mut f = family(
            o,
            "vmk_vm_vcpu_instructions_total",
            "counter",
            "Guest instructions retired by the vCPU.",
        );
        for vm in &m.vms {
            for (i, c) in vm.vcpus.iter().enumerate() {
                f.sample(
                    vec![("vm", vm.name.clone()), ("vcpu", i.to_string())],
                    Value::Int(c.instret),
                );
            }
        }
    }
    {
        let mut f = family(
            o,
            "vmk_vm_memory_configured_bytes",
            "gauge",
            "Guest memory the VM is configured with.",
        );
        for vm in &m.vms {
            f.sample(
                vec![("vm", vm.name.clone())],
                Value::Int(vm.memory_configured),
            );
        }
    }
    {
        let mut f = family(
            o,
            "vmk_vm_memory_touched_bytes",
            "gauge",
            "Guest memory backed by host memory (touched by the guest).",
        );
        for vm in &m.vms {
            f.sample(vec![("vm", vm.name.clone())], Value::Int(vm.memory_touched));
        }
    }
    let vms = &m.vms;
    disk_family(
        o,
        vms,
        "vmk_vm_disk_read_ops_total",
        "Disk read requests.",
        |d| d.read_ops,
    );
    disk_family(
        o,
        vms,
        "vmk_vm_disk_read_bytes_total",
        "Bytes read from the disk.",
        |d| d.read_bytes,
    );
    disk_family(
        o,
        vms,
        "vmk_vm_disk_write_ops_total",
        "Disk write requests.",
        |d| d.write_ops,
    );
    disk_family(
        o,
        vms,
        "vmk_vm_disk_write_bytes_total",
        "Bytes written to the disk.",
        |d| d.write_bytes,
    );
    disk_family(
        o,
        vms,
        "vmk_vm_disk_flush_ops_total",
        "Disk flush requests.",
        |d| d.flush_ops,
    );
    disk_family(
        o,
        vms,
        "vmk_vm_disk_errors_total",
        "Disk requests that failed.",
        |d| d.errors,
    );
    nic_family(
        o,
        vms,
        "vmk_vm_nic_rx_frames_total",
        "Frames received by the NIC.",
        |n| n.rx_frames,
    );
    nic_family(
        o,
        vms,
        "vmk_vm_nic_rx_bytes_total",
        "Bytes received by the NIC.",
        |n| n.rx_bytes,
    );
    nic_family(
        o,
        vms,
        "vmk_vm_nic_tx_frames_total",
        "Frames sent by the NIC.",
        |n| n.tx_frames,
    );
    nic_family(
        o,
        vms,
        "vmk_vm_nic_tx_bytes_total",
        "Bytes sent by the NIC.",
        |n| n.tx_bytes,
    );
    nic_family(
        o,
        vms,
        "vmk_vm_nic_drops_total",
        "Frames the NIC dropped.",
        |n| n.drops,
    );
    nic_family(
        o,
        vms,
        "vmk_vm_nic_throttled_total",
        "Frames the NIC's egress traffic shaping delayed.",
        |n| n.throttled,
    );
    {
        let mut f = family(
            o,
            "vmk_vm_nic_dropped_frames_total",
            "counter",
            "Frames dropped at the NIC's vSwitch port, by reason.",
        );
        for vm in vms {
            for (i, n) in vm.nics.iter().enumerate() {
                let d = &n.drop_reasons;
                for (reason, v) in [
                    ("forged", d.forged),
                    ("mac_changed", d.mac_changed),
                    ("vlan", d.vlan),
                    ("oversize", d.oversize),
                    ("malformed", d.malformed),
                    ("queue_full", d.queue_full),
                    ("no_destination", d.no_destination),
                ] {
                    f.sample(
                        vec![
                            ("vm", vm.name.clone()),
                            ("nic", i.to_string()),
                            ("portgroup", n.portgroup.clone()),
                            ("reason", reason.to_string()),
                        ],
                        Value::Int(v),
                    );
                }
            }
        }
    }
    out
}

/// The host network's uplinks (vNIC ports are in [`render`], per VM): appended to
/// `/metrics` when the host has a network.
pub fn render_network(n: &vmk_api::network::NetworkInfo) -> String {
    let mut out = String::new();
    let o = &mut out;
    let uplinks: Vec<&vmk_api::network::UplinkStatus> =
        n.vswitches.iter().flat_map(|s| &s.uplinks).collect();
    let labels = |u: &vmk_api::network::UplinkStatus| {
        vec![("vswitch", u.vswitch.clone()), ("uplink", u.name.clone())]
    };
    type Get = fn(&vmk_api::network::UplinkStatus) -> u64;
    let gauges: [(&'static str, &'static str, Get); 2] = [
        (
            "vmk_uplink_link_up",
            "1 if the uplink's link is up (and it is attached).",
            |u| u.link_up.into(),
        ),
        (
            "vmk_uplink_in_use",
            "1 if the uplink carries traffic now (teaming).",
            |u| u.in_use.into(),
        ),
    ];
    for (name, help, get) in gauges {
        let mut f = family(o, name, "gauge", help);
        for u in &uplinks {
            f.sample(labels(u), Value::Int(get(u)));
        }
    }
    let counters: [(&'static str, &'static str, Get); 4] = [
        (
            "vmk_uplink_rx_frames_total",
            "Frames received from the uplink.",
            |u| u.rx_frames,
        ),
        (
            "vmk_uplink_rx_bytes_total",
            "Bytes received from the uplink.",
            |u| u.rx_bytes,
        ),
        (
            "vmk_uplink_tx_frames_total",
            "Frames sent out the uplink.",
            |u| u.tx_frames,
        ),
        (
            "vmk_uplink_tx_bytes_total",
            "Bytes sent out the uplink.",
            |u| u.tx_bytes,
        ),
    ];
    for (name, help, get) in counters {
        let mut f = family(o, name, "counter", help);
        for u in &uplinks {
            f.sample(labels(u), Value::Int(get(u)));
        }
    }
    let mut f = family(
        o,
        "vmk_uplink_dropped_frames_total",
        "counter",
        "Frames dropped at the uplink, by reason.",
    );
    for u in &uplinks {
        let d = &u.drops;
        for (reason, v) in [
            ("oversize", d.oversize),
            ("malformed", d.malformed),
            ("looped", d.looped),
            ("send_errors", d.send_errors),
        ] {
            let mut l = labels(u);
            l.push(("reason", reason.to_string()));
            f.sample(l, Value::Int(v));
        }
    }
    drop(f);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmk_api::model::{CpuInfo, DiskMetrics, HostInfo, PcpuMetrics};

    #[test]
    fn uplinks() {
        use crate::network::{memory_uplink_opener, Network};
        use vmk_api::network::*;
        let n = Network::open(None, memory_uplink_opener()).unwrap().0;
        n.add_vswitch(VSwitchDef {
            name: "sw0".into(),
            mtu: 1500,
            teaming: TeamingDef::default(),
        })
        .unwrap();
        n.add_uplink(
            "sw0",
            UplinkSpec {
                name: "t0".into(),
                kind: UplinkKind::Tap,
            },
        )
        .unwrap();
        let text = render_network(&n.info());
        for line in [
            "# TYPE vmk_uplink_link_up gauge",
            "vmk_uplink_link_up{vswitch=\"sw0\",uplink=\"t0\"} 1",
            "vmk_uplink_in_use{vswitch=\"sw0\",uplink=\"t0\"} 1",
            "vmk_uplink_tx_frames_total{vswitch=\"sw0\",uplink=\"t0\"} 0",
            "vmk_uplink_dropped_frames_total{vswitch=\"sw0\",uplink=\"t0\",reason=\"looped\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no '{line}' in\n{text}");
        }
        assert_eq!(text.matches("# TYPE").count(), 7);
    }

    fn sample() -> HostMetrics {
        HostMetrics {
            host: HostInfo {
                hostname: "h\"1".into(),
                version: "0.1.0".into(),
                cpus: 2,
                memory: 1 << 30,
                vms: 1,
                vms_running: 1,
                uptime_secs: 5,
                dir: "/var/lib/vmk".into(),
                datastores: Vec::new(),
                cpu: CpuInfo::default(),
            },
            rss: 4096,
            cpu_time_ns: 1_500_000_000,
            vms: vec![VmMetrics {
                name: "web".into(),
                state: VmState::Running,
                vcpus: vec![
                    VcpuMetrics {
                        cpu_time_ns: 2_000_000_000,
                        instret: 7,
                        ready_ns: 500_000_000,
                        costop_ns: 250_000_000,
                        ..Default::default()
                    },
                    VcpuMetrics::default(),
                ],
                memory_configured: 512 << 20,
                memory_touched: 100,
                disks: vec![DiskMetrics {
                    path: "/d/a\\b\n\"c\".vmdk".into(),
                    read_ops: 3,
                    ..Default::default()
                }],
                nics: vec![],
            }],
            pcpus: vec![PcpuMetrics {
                cpu: 1,
                used_ns: 3_000_000_000,
            }],
        }
    }

    #[test]
    fn exposition_format() {
        let text = render(&sample());
        assert!(text.contains("vmk_host_info{hostname=\"h\\\"1\",version=\"0.1.0\"} 1\n"));
        assert!(text.contains("vmk_host_cpu_seconds_total 1.5\n"));
        assert!(text.contains("vmk_vm_vcpu_cpu_seconds_total{vm=\"web\",vcpu=\"0\"} 2\n"));
        assert!(text.contains("vmk_vm_vcpu_instructions_total{vm=\"web\",vcpu=\"0\"} 7\n"));
        assert!(text.contains("vmk_vm_vcpu_ready_seconds_total{vm=\"web\",vcpu=\"0\"} 0.5\n"));
        assert!(text.contains("vmk_vm_vcpu_costop_seconds_total{vm=\"web\",vcpu=\"0\"} 0.25\n"));
        assert!(text.contains("vmk_vm_vcpu_limited_seconds_total{vm=\"web\",vcpu=\"1\"} 0\n"));
        assert!(text.contains("vmk_pcpu_used_seconds_total{cpu=\"1\"} 3\n"));
        assert!(text.contains("vmk_vm_state{vm=\"web\",state=\"running\"} 1\n"));
        assert!(text.contains("vmk_vm_state{vm=\"web\",state=\"stopped\"} 0\n"));
        assert!(text.contains(
            "vmk_vm_disk_read_ops_total{vm=\"web\",disk=\"0\",path=\"/d/a\\\\b\\n\\\"c\\\".vmdk\"} 3\n"
        ));
        // No NICs: no NIC families at all (empty families are left out).
        assert!(!text.contains("vmk_vm_nic"));
        // Every family has HELP then TYPE, and its samples follow without interruption.
        let mut seen = std::collections::HashSet::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                current = rest.split(' ').next().unwrap();
                assert!(seen.insert(current.to_string()), "{current} twice");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                assert_eq!(it.next(), Some(current));
                assert!(matches!(it.next(), Some("gauge" | "counter")));
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample outside its family: {line}");
            }
        }
    }
}
