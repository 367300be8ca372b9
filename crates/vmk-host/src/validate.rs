//! Checks a VM definition before the host stores or runs it. Every refusal is a
//! [`HostError::Invalid`] that names the field, the value and what is allowed.

use std::collections::HashSet;
use std::path::Path;

use crate::machine::{IMAGE_INITRD, IMAGE_KERNEL};
use vmk_api::model::{validate_name, HostError, Shares, VmDefinition};

/// vCPUs of one VM (vmk-machine's limit: one PLIC context pair per hart, 64 harts).
pub const MAX_CPUS: u32 = 64;
/// virtio-blk serials are at most 20 bytes (the GET_ID buffer).
pub const SERIAL_MAX: usize = 20;
/// Longest kernel command line (Linux's COMMAND_LINE_SIZE on RISC-V).
pub const APPEND_MAX: usize = 1024;
/// Custom shares, as ESX allows.
pub const SHARES_MAX: u32 = 1_000_000;
/// Longest `test_fault_on_console` text.
const FAULT_TEXT_MAX: usize = 256;
/// Whether this build can run `test_fault_on_console`: vmk-machine has the hook only with
/// the cargo feature `test-hooks` (`Vm::new` refuses it otherwise), so a host without it
/// refuses the field at create instead of storing a VM that can never start.
pub const TEST_HOOKS: bool = cfg!(feature = "test-hooks");

/// What the host has, for the checks that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Logical CPUs of the host.
    pub cpus: u32,
    /// Physical memory of the host, in bytes.
    pub memory: u64,
    /// Whether test hooks (`test_fault_on_console`) are accepted: [`TEST_HOOKS`].
    pub test_hooks: bool,
}

fn invalid<T>(msg: String) -> Result<T, HostError> {
    Err(HostError::Invalid(msg))
}

/// Checks a virtio-blk serial (shared with `vmk run --disk`).
pub fn check_disk_serial(serial: &str) -> Result<(), String> {
    if serial.len() > SERIAL_MAX {
        return Err(format!(
            "disk serial '{serial}' is {} bytes; virtio-blk serials are at most {SERIAL_MAX}",
            serial.len()
        ));
    }
    Ok(())
}

fn show(p: &Path) -> String {
    p.display().to_string().escape_default().to_string()
}

/// `path` must be absolute and an existing regular file (following symlinks).
fn check_file(what: &str, path: &Path) -> Result<(), HostError> {
    if !path.is_absolute() {
        return invalid(format!(
            "{what} '{}' is a relative path: give an absolute path (the host does not run \
             in your working directory)",
            show(path)
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => invalid(format!("{what} '{}' is not a regular file", show(path))),
        Err(e) => invalid(format!(
            "{what} '{}' cannot be used: {e} (the file must exist on the host and be \
             readable by the host)",
            show(path)
        )),
    }
}

/// A MAC address `xx:xx:xx:xx:xx:xx` (hex, `:` or `-`), unicast and not all zero.
pub fn check_mac(mac: &str) -> Result<[u8; 6], String> {
    let bad = |why: &str| {
        Err(format!(
            "MAC address '{}': {why} (example: 02:00:00:12:34:56)",
            mac.escape_default()
        ))
    };
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6 {
        return bad("needs six hex octets separated by ':'");
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return bad("each octet is two hex digits");
        }
        *o = match u8::from_str_radix(p, 16) {
            Ok(v) => v,
            Err(_) => return bad("not hexadecimal"),
        };
    }
    if out[0] & 1 != 0 {
        return bad("a multicast address cannot be a NIC's address (the first octet must be even)");
    }
    if out == [0; 6] {
        return bad("all zero");
    }
    Ok(out)
}

fn check_shares(what: &str, s: &Shares) -> Result<(), HostError> {
    if let Shares::Custom(n) = s {
        if *n == 0 || *n > SHARES_MAX {
            return invalid(format!(
                "{what} {n}: custom shares are 1 to {SHARES_MAX} (or low, normal, high)"
            ));
        }
    }
    Ok(())
}

/// Checks everything about `def` that can be checked before running it: names, sizes
/// against vmk's and the host's limits, the files it boots and attaches, resources.
pub fn validate_definition(def: &VmDefinition, host: &HostLimits) -> Result<(), HostError> {
    validate_name("VM", &def.name)?;
    let name = &def.name;
    if def.cpus == 0 || def.cpus > MAX_CPUS {
        return invalid(format!(
            "VM '{name}': cpus = {}: a VM has 1 to {MAX_CPUS} vCPUs",
            def.cpus
        ));
    }
    let mem = def.memory.0;
    let (min, max) = (
        vmk_machine::layout::MIN_RAM,
        vmk_machine::layout::MAX_RAM.min(host.memory),
    );
    if mem < min {
        return invalid(format!(
            "VM '{name}': memory = {mem} bytes is too small: at least {} MiB",
            min >> 20
        ));
    }
    if mem > max {
        let why = if max == host.memory {
            format!("more than this host's memory ({} MiB)", host.memory >> 20)
        } else {
            format!("more than a VM can have ({} GiB)", max >> 30)
        };
        return invalid(format!("VM '{name}': memory = {} MiB is {why}", mem >> 20));
    }

    // Boot: exactly one of image and kernel.
    let b = &def.boot;
    match (&b.image, &b.kernel) {
        (Some(_), Some(_)) => {
            return invalid(format!(
                "VM '{name}': boot has both an image and a kernel: give one (an image \
                 directory from `vmk image build`, or kernel [+ initrd])"
            ))
        }
        (None, None) => {
            return invalid(format!(
                "VM '{name}': boot needs an image directory (boot.image) or a kernel \
                 (boot.kernel)"
            ))
        }
        (Some(dir), None) => {
            if b.initrd.is_some() {
                return invalid(format!(
                    "VM '{name}': boot.initrd is only for boot.kernel; an image has its own \
                     {IMAGE_INITRD}"
                ));
            }
            if !dir.is_absolute() {
                return invalid(format!(
                    "VM '{name}': boot.image '{}' is a relative path: give an absolute path",
                    show(dir)
                ));
            }
            if !dir.is_dir() {
                return invalid(format!(
                    "VM '{name}': boot.image '{}' is not a directory (build one with `vmk \
                     image build --out DIR`)",
                    show(dir)
                ));
            }
            check_file(
                &format!("VM '{name}': the image's kernel"),
                &dir.join(IMAGE_KERNEL),
            )?;
            check_file(
                &format!("VM '{name}': the image's initrd"),
                &dir.join(IMAGE_INITRD),
            )?;
        }
        (None, Some(k)) => {
            check_file(&format!("VM '{name}': boot.kernel"), k)?;
            if let Some(i) = &b.initrd {
                check_file(&format!("VM '{name}': boot.initrd"), i)?;
            }
        }
    }
    if let Some(a) = &b.append {
        if a.len() > APPEND_MAX {
            return invalid(format!(
                "VM '{name}': boot.append is {} bytes; a kernel command line is at most \
                 {APPEND_MAX}",
                a.len()
            ));
        }
        if a.contains('\0') {
            return invalid(format!("VM '{name}': boot.append contains a NUL byte"));
        }
    }

    // Disks.
    let slots = vmk_machine::layout::VIRTIO_SLOTS as usize;
    if def.disks.len() > slots {
        return invalid(format!(
            "VM '{name}': {} disks: a VM has at most {slots}",
            def.disks.len()
        ));
    }
    let mut seen = HashSet::new();
    for (i, d) in def.disks.iter().enumerate() {
        // `[ds] dir/file.vmdk`: on a datastore, which the host checks (runtime: it knows
        // what is mounted); here only the syntax and duplicates.
        if let Some(p) = vmk_machine::datastore::DsPath::from_path(&d.path) {
            let p = p.map_err(|e| HostError::Invalid(format!("VM '{name}': disk {i}: {e}")))?;
            if !seen.insert(std::path::PathBuf::from(p.to_string())) {
                return invalid(format!("VM '{name}': disk {i} '{p}' is attached twice"));
            }
            if let Some(s) = &d.serial {
                check_disk_serial(s)
                    .map_err(|e| HostError::Invalid(format!("VM '{name}': {e}")))?;
            }
            continue;
        }
        check_file(&format!("VM '{name}': disk {i}"), &d.path)?;
        if let Some(s) = &d.serial {
            check_disk_serial(s).map_err(|e| HostError::Invalid(format!("VM '{name}': {e}")))?;
        }
        // The same file twice would be written through two caches: refuse, also through
        // symlinks and `..`.
        let real = std::fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone());
        if !seen.insert(real.clone()) {
            return invalid(format!(
                "VM '{name}': disk {i} '{}' is attached twice (as '{}')",
                show(&d.path),
                show(&real)
            ));
        }
    }

    // NICs (connected to their port groups at start). They share the virtio-mmio slots
    // with the disks.
    if def.disks.len() + def.nics.len() > slots {
        return invalid(format!(
            "VM '{name}': {} disks and {} NICs: a VM has at most {slots} virtio devices in \
             all",
            def.disks.len(),
            def.nics.len()
        ));
    }
    let mut macs = HashSet::new();
    for (i, n) in def.nics.iter().enumerate() {
        validate_name(&format!("VM '{name}': NIC {i} port group"), &n.portgroup)?;
        if let Some(m) = &n.mac {
            let mac = check_mac(m)
                .map_err(|e| HostError::Invalid(format!("VM '{name}': NIC {i}: {e}")))?;
            if !macs.insert(mac) {
                return invalid(format!(
                    "VM '{name}': NIC {i}: MAC address {m} is used twice"
                ));
            }
        }
    }

    // Resources.
    const CPU_MHZ_MAX: u64 = 10_000_000;
    let r = &def.resources;
    check_shares(&format!("VM '{name}': resources.cpu_shares"), &r.cpu_shares)?;
    check_shares(&format!("VM '{name}': resources.mem_shares"), &r.mem_shares)?;
    // Bounds that also keep every value storable (TOML integers are i64).
    for (field, v) in [
        ("cpu_reservation_mhz", Some(r.cpu_reservation_mhz)),
        ("cpu_limit_mhz", r.cpu_limit_mhz),
    ] {
        if let Some(v) = v.filter(|v| *v > CPU_MHZ_MAX) {
            return invalid(format!(
                "VM '{name}': resources.{field} = {v} is more than {CPU_MHZ_MAX} MHz"
            ));
        }
    }
    if let Some(l) = r.mem_limit.filter(|l| l.0 > vmk_machine::layout::MAX_RAM) {
        return invalid(format!(
            "VM '{name}': resources.mem_limit ({} GiB) is more than a VM can have ({} GiB); \
             leave it out for no limit",
            l.0 >> 30,
            vmk_machine::layout::MAX_RAM >> 30
        ));
    }
    if let Some(l) = r.cpu_limit_mhz {
        if r.cpu_reservation_mhz > l {
            return invalid(format!(
                "VM '{name}': resources.cpu_reservation_mhz ({}) is more than \
                 resources.cpu_limit_mhz ({l})",
                r.cpu_reservation_mhz
            ));
        }
        if l == 0 {
            return invalid(format!(
                "VM '{name}': resources.cpu_limit_mhz = 0 would never run the VM (leave it \
                 out for no limit)"
            ));
        }
    }
    if let Some(aff) = &r.cpu_affinity {
        if aff.is_empty() {
            return invalid(format!(
                "VM '{name}': resources.cpu_affinity is empty (leave it out to allow any CPU)"
            ));
        }
        let mut seen = HashSet::new();
        for &c in aff {
            if c >= host.cpus {
                return invalid(format!(
                    "VM '{name}': resources.cpu_affinity: CPU {c} does not exist (this host \
                     has CPUs 0 to {})",
                    host.cpus.saturating_sub(1)
                ));
            }
            if !seen.insert(c) {
                return invalid(format!(
                    "VM '{name}': resources.cpu_affinity lists CPU {c} twice"
                ));
            }
        }
    }
    if r.mem_reservation.0 > mem {
        return invalid(format!(
            "VM '{name}': resources.mem_reservation ({} MiB) is more than the VM's memory \
             ({} MiB)",
            r.mem_reservation.0 >> 20,
            mem >> 20
        ));
    }
    if let Some(l) = r.mem_limit {
        if r.mem_reservation.0 > l.0 {
            return invalid(format!(
                "VM '{name}': resources.mem_reservation ({} MiB) is more than \
                 resources.mem_limit ({} MiB)",
                r.mem_reservation.0 >> 20,
                l.0 >> 20
            ));
        }
    }
    if let Some(t) = &def.test_fault_on_console {
        if !host.test_hooks {
            return invalid(format!(
                "VM '{name}': test_fault_on_console is a test hook; this build of vmk was \
                 made without the test-hooks feature and cannot run it (remove the field)"
            ));
        }
        if t.is_empty() || t.len() > FAULT_TEXT_MAX {
            return invalid(format!(
                "VM '{name}': test_fault_on_console must be 1 to {FAULT_TEXT_MAX} bytes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{def, kernel};
    use std::path::PathBuf;
    use vmk_api::model::{ByteSize, DiskDef, NicDef, ShareLevel};

    const HOST: HostLimits = HostLimits {
        cpus: 4,
        memory: 8 << 30,
        test_hooks: true,
    };

    /// Asserts that `def` is refused with a message containing every one of `words`.
    fn refused(d: &VmDefinition, words: &[&str]) {
        match validate_definition(d, &HOST) {
            Err(HostError::Invalid(m)) => {
                for w in words {
                    assert!(m.contains(w), "'{m}' lacks '{w}'");
                }
            }
            other => panic!("{:?} accepted or wrong error: {other:?}", d),
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        base: VmDefinition,
        image: PathBuf,
        disk: PathBuf,
        root: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let k = kernel(tmp.path(), "k", |a| {
            a.idle();
        });
        let image = tmp.path().join("img");
        std::fs::create_dir(&image).unwrap();
        std::fs::write(image.join("vmlinux"), b"k").unwrap();
        std::fs::write(image.join("initrd.img"), b"i").unwrap();
        let disk = tmp.path().join("d.img");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        Fixture {
            root: tmp.path().to_path_buf(),
            base: def("ok", &k),
            _tmp: tmp,
            image,
            disk,
        }
    }

    #[test]
    fn good_definitions_pass() {
        let f = fixture();
        validate_definition(&f.base, &HOST).unwrap();
        let mut d = f.base.clone();
        d.boot = Boot {
            image: Some(f.image.clone()),
            append: Some("console=ttyS0".into()),
            ..Boot::default()
        };
        d.cpus = 64;
        d.memory = ByteSize(8 << 30);
        d.disks = vec![DiskDef {
            path: f.disk.clone(),
            read_only: true,
            serial: Some("x".repeat(20)),
        }];
        d.nics = vec![NicDef {
            portgroup: "VM-Network".into(),
            mac: Some("02:00:00:aa:bb:cc".into()),
        }];
        d.resources.cpu_shares = Shares::Custom(1_000_000);
        d.resources.mem_shares = Shares::Level(ShareLevel::High);
        d.resources.cpu_reservation_mhz = 500;
        d.resources.cpu_limit_mhz = Some(500);
        d.resources.cpu_affinity = Some(vec![0, 3]);
        d.resources.mem_reservation = ByteSize(1 << 30);
        d.resources.mem_limit = Some(ByteSize(1 << 30));
        validate_definition(&d, &HOST).unwrap();
    }

    use vmk_api::model::Boot;

    #[test]
    fn each_rule_refuses_with_a_precise_message() {
        let f = fixture();
        let with = |g: &dyn Fn(&mut VmDefinition)| {
            let mut d = f.base.clone();
            g(&mut d);
            d
        };
        // Names: path traversal and friends never reach the filesystem.
        for bad in ["../etc", "a/b", "", ".x", "-x", "a\0b", "/abs"] {
            refused(&with(&|d| d.name = bad.into()), &["VM name"]);
        }
        refused(&with(&|d| d.cpus = 0), &["cpus = 0", "1 to 64"]);
        refused(&with(&|d| d.cpus = 65), &["cpus = 65"]);
        refused(
            &with(&|d| d.memory = ByteSize(1 << 20)),
            &["too small", "16 MiB"],
        );
        refused(
            &with(&|d| d.memory = ByteSize(9 << 30)),
            &["more than this host's memory (8192 MiB)"],
        );
        refused(
            &with(&|d| d.memory = ByteSize(u64::MAX)),
            &["more than this host's memory"],
        );
        let big = HostLimits {
            cpus: 4,
            memory: u64::MAX,
            test_hooks: true,
        };
        let d = with(&|d| d.memory = ByteSize(2 << 40));
        assert!(
            matches!(validate_definition(&d, &big), Err(HostError::Invalid(m)) if m.contains("more than a VM can have (1024 GiB)"))
        );
        // Boot.
        refused(
            &with(&|d| d.boot.image = Some(f.image.clone())),
            &["both an image and a kernel"],
        );
        refused(&with(&|d| d.boot = Boot::default()), &["boot needs"]);
        refused(
            &with(&|d| d.boot.kernel = Some("vmlinux".into())),
            &["'vmlinux' is a relative path"],
        );
        refused(
            &with(&|d| d.boot.kernel = Some(f.root.join("nope"))),
            &["boot.kernel", "nope", "No such file"],
        );
        refused(
            &with(&|d| d.boot.kernel = Some(f.root.clone())),
            &["not a regular file"],
        );
        refused(
            &with(&|d| d.boot.initrd = Some(f.root.join("missing.img"))),
            &["boot.initrd", "missing.img"],
        );
        let image = |g: &dyn Fn(&mut Boot)| {
            with(&|d| {
                d.boot = Boot {
                    image: Some(f.image.clone()),
                    ..Boot::default()
                };
                g(&mut d.boot)
            })
        };
        refused(
            &image(&|b| b.initrd = Some(f.disk.clone())),
            &["boot.initrd is only for boot.kernel"],
        );
        refused(
            &image(&|b| b.image = Some(f.disk.clone())),
            &["is not a directory"],
        );
        refused(
            &image(&|b| b.image = Some(f.root.clone())),
            &["the image's kernel", "vmlinux"],
        );
        refused(
            &image(&|b| b.image = Some("img".into())),
            &["relative path"],
        );
        refused(
            &image(&|b| b.append = Some("x".repeat(1025))),
            &["1025 bytes", "at most 1024"],
        );
        refused(&image(&|b| b.append = Some("a\0b".into())), &["NUL"]);
        // Disks.
        let disk = |p: &Path, serial: Option<&str>| DiskDef {
            path: p.to_path_buf(),
            read_only: false,
            serial: serial.map(String::from),
        };
        refused(
            &with(&|d| d.disks = vec![disk(&f.disk, Some(&"s".repeat(21)))]),
            &["21 bytes", "at most 20"],
        );
        refused(
            &with(&|d| d.disks = vec![disk(&f.disk, None), disk(&f.disk, None)]),
            &["disk 1", "attached twice"],
        );
        let dotted = f.root.join("img/../d.img");
        refused(
            &with(&|d| d.disks = vec![disk(&f.disk, None), disk(&dotted, None)]),
            &["attached twice"],
        );
        refused(
            &with(&|d| d.disks = vec![disk(Path::new("d.img"), None)]),
            &["disk 0", "relative path"],
        );
        refused(
            &with(&|d| d.disks = vec![disk(&f.root.join("none.vmdk"), None)]),
            &["disk 0", "none.vmdk"],
        );
        refused(
            &with(&|d| d.disks = (0..9).map(|_| disk(&f.disk, None)).collect()),
            &["9 disks", "at most 8"],
        );
        // NICs.
        let nic = |pg: &str, mac: Option<&str>| NicDef {
            portgroup: pg.into(),
            mac: mac.map(String::from),
        };
        for (mac, why) in [
            ("01:00:5e:00:00:01", "multicast"),
            ("00:00:00:00:00:00", "all zero"),
            ("02:00:00:00:00", "six hex octets"),
            ("02:00:00:00:00:zz", "not hexadecimal"),
            ("2:00:00:00:00:001", "two hex digits"),
        ] {
            refused(&with(&|d| d.nics = vec![nic("net", Some(mac))]), &[why]);
        }
        refused(
            &with(&|d| {
                d.nics = vec![
                    nic("net", Some("02:00:00:00:00:01")),
                    nic("net", Some("02-00-00-00-00-01")),
                ]
            }),
            &["used twice"],
        );
        refused(
            &with(&|d| d.nics = vec![nic("../x", None)]),
            &["port group"],
        );
        refused(
            &with(&|d| {
                d.disks = vec![disk(&f.disk, None)];
                d.nics = (0..8).map(|_| nic("net", None)).collect();
            }),
            &["1 disks and 8 NICs", "at most 8 virtio devices"],
        );
        // Resources.
        refused(
            &with(&|d| d.resources.cpu_shares = Shares::Custom(0)),
            &["cpu_shares 0", "1 to 1000000"],
        );
        refused(
            &with(&|d| d.resources.mem_shares = Shares::Custom(1_000_001)),
            &["mem_shares"],
        );
        refused(
            &with(&|d| {
                d.resources.cpu_reservation_mhz = 2000;
                d.resources.cpu_limit_mhz = Some(1000);
            }),
            &["cpu_reservation_mhz (2000) is more than", "(1000)"],
        );
        refused(
            &with(&|d| d.resources.cpu_limit_mhz = Some(0)),
            &["cpu_limit_mhz = 0"],
        );
        // Beyond what TOML (i64) can store: refused up front, never a failed write.
        refused(
            &with(&|d| d.resources.cpu_reservation_mhz = 1 << 63),
            &["cpu_reservation_mhz = 9223372036854775808 is more than"],
        );
        refused(
            &with(&|d| d.resources.cpu_limit_mhz = Some(u64::MAX)),
            &["cpu_limit_mhz"],
        );
        refused(
            &with(&|d| d.resources.mem_limit = Some(ByteSize(1 << 63))),
            &["mem_limit", "more than a VM can have"],
        );
        refused(
            &with(&|d| d.resources.cpu_affinity = Some(vec![4])),
            &["CPU 4 does not exist", "0 to 3"],
        );
        refused(
            &with(&|d| d.resources.cpu_affinity = Some(vec![1, 1])),
            &["twice"],
        );
        refused(
            &with(&|d| d.resources.cpu_affinity = Some(vec![])),
            &["empty"],
        );
        refused(
            &with(&|d| d.resources.mem_reservation = ByteSize(32 << 20)),
            &["mem_reservation (32 MiB) is more than the VM's memory (16 MiB)"],
        );
        refused(
            &with(&|d| {
                d.resources.mem_reservation = ByteSize(8 << 20);
                d.resources.mem_limit = Some(ByteSize(4 << 20));
            }),
            &["more than resources.mem_limit"],
        );
        refused(
            &with(&|d| d.test_fault_on_console = Some(String::new())),
            &["test_fault_on_console"],
        );
        // A build without test hooks refuses the hook itself, whatever its text.
        let release = HostLimits {
            test_hooks: false,
            ..HOST
        };
        let d = with(&|d| d.test_fault_on_console = Some("BOOM".into()));
        assert!(validate_definition(&d, &HOST).is_ok());
        assert!(
            matches!(validate_definition(&d, &release), Err(HostError::Invalid(m)) if m.contains("test_fault_on_console is a test hook; this build"))
        );
    }
}
