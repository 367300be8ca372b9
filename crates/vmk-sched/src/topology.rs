//! The host's CPU topology: logical CPUs, the cores and packages they belong to, NUMA nodes
//! and their distances. Read from sysfs, or made up for tests (a 2-socket, 2-node,
//! hyper-threaded host on a 2-CPU test machine).

use std::path::Path;

/// One logical CPU (a hardware thread): the scheduler's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalCpu {
    /// The OS's CPU number (what affinity lists name).
    pub id: u32,
    /// Index of its physical core in [`Topology::cores`]: logical CPUs with the same core are
    /// hyper-thread siblings.
    pub core: usize,
    /// Physical package (socket).
    pub package: u32,
    /// NUMA node.
    pub node: u32,
}

/// What the scheduler knows about the host's CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub cpus: Vec<LogicalCpu>,
    /// Number of physical cores (`LogicalCpu::core` indexes them).
    pub cores: usize,
    /// NUMA node ids, ascending.
    pub nodes: Vec<u32>,
    /// `distances[i][j]`: the ACPI SLIT distance from `nodes[i]` to `nodes[j]` (10 = local).
    pub distances: Vec<Vec<u32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("reading the CPU topology from {path}: {msg}")]
    Sysfs { path: String, msg: String },
    #[error("the host has no online CPUs in {0}")]
    NoCpus(String),
}

impl Topology {
    /// The running host's topology from `/sys/devices/system` (online CPUs only).
    pub fn from_host() -> Result<Topology, TopologyError> {
        Self::from_sysfs(Path::new("/sys/devices/system"))
    }

    /// The topology under a sysfs `devices/system` directory (a copy of one in tests).
    pub fn from_sysfs(root: &Path) -> Result<Topology, TopologyError> {
        let read = |p: &Path| -> Result<String, TopologyError> {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| TopologyError::Sysfs {
                    path: p.display().to_string(),
                    msg: e.to_string(),
                })
        };
        let online_path = root.join("cpu/online");
        let online = parse_cpu_list(&read(&online_path)?).map_err(|msg| TopologyError::Sysfs {
            path: online_path.display().to_string(),
            msg,
        })?;
        if online.is_empty() {
            return Err(TopologyError::NoCpus(online_path.display().to_string()));
        }
        // Nodes: each node directory lists its CPUs; no node directories = one node 0.
        let mut node_of = std::collections::HashMap::new();
        let mut nodes = Vec::new();
        if let Ok(rd) = std::fs::read_dir(root.join("node")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(n) = name
                    .strip_prefix("node")
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let list = read(&e.path().join("cpulist"))?;
                for c in parse_cpu_list(&list).map_err(|msg| TopologyError::Sysfs {
                    path: e.path().join("cpulist").display().to_string(),
                    msg,
                })? {
                    node_of.insert(c, n);
                }
                nodes.push(n);
            }
        }
        nodes.sort_unstable();
        if nodes.is_empty() {
            nodes.push(0);
        }
        let mut distances = Vec::new();
        for &n in &nodes {
            let p = root.join(format!("node/node{n}/distance"));
            let row: Vec<u32> = match std::fs::read_to_string(&p) {
                Ok(s) => s
                    .split_whitespace()
                    .filter_map(|d| d.parse().ok())
                    .collect(),
                Err(_) => Vec::new(),
            };
            // A missing or short row: local 10, remote 20 (the ACPI defaults).
            distances.push(if row.len() == nodes.len() {
                row
            } else {
                nodes
                    .iter()
                    .map(|&m| if m == n { 10 } else { 20 })
                    .collect()
            });
        }
        let mut cores: Vec<(u32, u32)> = Vec::new(); // (package, core_id)
        let mut cpus = Vec::new();
        for id in online {
            let t = root.join(format!("cpu/cpu{id}/topology"));
            let package = read(&t.join("physical_package_id"))
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .map_or(0, |p| p.max(0) as u32);
            let core_id = read(&t.join("core_id"))
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .map_or(id, |c| c.max(0) as u32);
            let key = (package, core_id);
            let core = match cores.iter().position(|&k| k == key) {
                Some(i) => i,
                None => {
                    cores.push(key);
                    cores.len() - 1
                }
            };
            cpus.push(LogicalCpu {
                id,
                core,
                package,
                node: node_of.get(&id).copied().unwrap_or(nodes[0]),
            });
        }
        Ok(Topology {
            cpus,
            cores: cores.len(),
            nodes,
            distances,
        })
    }

    /// A made-up host: `sockets` x `cores` x `threads` logical CPUs numbered in the order
    /// Linux numbers them on most x86 hosts (all first threads, then all second threads),
    /// one NUMA node per socket (distance 10 local, 21 remote).
    pub fn synthetic(sockets: u32, cores: u32, threads: u32) -> Topology {
        let ncores = (sockets * cores) as usize;
        let mut cpus = Vec::new();
        for t in 0..threads {
            for s in 0..sockets {
                for c in 0..cores {
                    let core = (s * cores + c) as usize;
                    cpus.push(LogicalCpu {
                        id: t * sockets * cores + s * cores + c,
                        core,
                        package: s,
                        node: s,
                    });
                }
            }
        }
        cpus.sort_by_key(|c| c.id);
        let nodes: Vec<u32> = (0..sockets).collect();
        let distances = nodes
            .iter()
            .map(|&a| {
                nodes
                    .iter()
                    .map(|&b| if a == b { 10 } else { 21 })
                    .collect()
            })
            .collect();
        Topology {
            cpus,
            cores: ncores,
            nodes,
            distances,
        }
    }

    /// Only the listed logical CPUs (those vmk may use); unknown ids are an error.
    pub fn restrict(&self, ids: &[u32]) -> Result<Topology, String> {
        let mut cpus = Vec::new();
        for &id in ids {
            match self.cpus.iter().find(|c| c.id == id) {
                Some(c) if !cpus.contains(c) => cpus.push(*c),
                Some(_) => return Err(format!("CPU {id} is listed twice")),
                None => {
                    return Err(format!(
                        "CPU {id} is not an online CPU of this host (it has {})",
                        format_cpu_list(&self.cpus.iter().map(|c| c.id).collect::<Vec<_>>())
                    ))
                }
            }
        }
        if cpus.is_empty() {
            return Err("the list of CPUs is empty".into());
        }
        Ok(Topology {
            cpus,
            ..self.clone()
        })
    }

    /// Logical CPUs per physical core (1 without hyper-threading).
    pub fn threads_per_core(&self) -> usize {
        let mut per = vec![0usize; self.cores];
        for c in &self.cpus {
            per[c.core] += 1;
        }
        per.into_iter().max().unwrap_or(1).max(1)
    }
}

/// MHz of the host's CPUs: cpufreq's maximum where the host exposes it, else what
/// /proc/cpuinfo says, else 1000.
pub fn host_cpu_mhz() -> u64 {
    if let Ok(khz) =
        std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    {
        if let Ok(k) = khz.trim().parse::<u64>() {
            if k >= 1000 {
                return k / 1000;
            }
        }
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .filter(|&m| m >= 1.0)
        .map_or(1000, |m| m.round() as u64)
}

/// Online CPUs as Linux counts them (at least 1).
pub fn online_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: u32 = a.parse().map_err(|_| format!("bad CPU list {s:?}"))?;
        let b: u32 = b.parse().map_err(|_| format!("bad CPU list {s:?}"))?;
        if b < a || b - a > 65535 {
            return Err(format!("bad CPU range {part:?} in {s:?}"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// Formats CPU ids as a kernel CPU list (`0-3,8`).
pub fn format_cpu_list(ids: &[u32]) -> String {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n").unwrap(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("5").unwrap(), [5]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert_eq!(format_cpu_list(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
    }

    #[test]
    fn synthetic_two_sockets_ht() {
        let t = Topology::synthetic(2, 4, 2);
        assert_eq!(t.cpus.len(), 16);
        assert_eq!(t.cores, 8);
        assert_eq!(t.threads_per_core(), 2);
        // CPU 0 and CPU 8 are siblings (Linux numbering); CPU 4 is on socket/node 1.
        assert_eq!(t.cpus[0].core, t.cpus[8].core);
        assert_ne!(t.cpus[0].core, t.cpus[1].core);
        assert_eq!(t.cpus[4].node, 1);
        assert_eq!(t.cpus[12].node, 1);
        assert_eq!(t.distances, vec![vec![10, 21], vec![21, 10]]);
    }

    #[test]
    fn reads_a_sysfs_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let w = |p: &str, s: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w("cpu/online", "0-3\n");
        for (cpu, core) in [(0, 0), (1, 1), (2, 0), (3, 1)] {
            w(
                &format!("cpu/cpu{cpu}/topology/core_id"),
                &format!("{core}\n"),
            );
            w(&format!("cpu/cpu{cpu}/topology/physical_package_id"), "0\n");
        }
        w("node/node0/cpulist", "0-1\n");
        w("node/node0/distance", "10 20\n");
        w("node/node1/cpulist", "2-3\n");
        w("node/node1/distance", "20 10\n");
        let t = Topology::from_sysfs(root).unwrap();
        assert_eq!(t.cores, 2);
        assert_eq!(t.cpus[0].core, t.cpus[2].core);
        assert_eq!(t.nodes, [0, 1]);
        assert_eq!(t.cpus[3].node, 1);
        assert_eq!(t.distances[0], [10, 20]);
        assert!(t.restrict(&[0, 9]).unwrap_err().contains("CPU 9"));
        assert_eq!(t.restrict(&[2]).unwrap().cpus.len(), 1);
    }

    #[test]
    fn this_host() {
        let t = Topology::from_host().unwrap();
        assert!(!t.cpus.is_empty());
        assert_eq!(t.distances.len(), t.nodes.len());
    }
}
