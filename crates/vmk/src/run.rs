//! `vmk run`: boots one VM in the foreground with its serial console on the terminal.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Args;
use vmk_api::model::{
    parse_size, Boot, ByteSize, DatastoreConfig, DiskDef, ExitInfo, Resources, VmDefinition,
};
use vmk_host::console::StatusWatcher;
use vmk_host::datastores::Datastores;
use vmk_machine::{Console, Vm};

use crate::error::CmdError;
use crate::term::RawMode;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A built image directory (vmlinux, initrd.img, image.toml). Without --image and
    /// --kernel, the default image is used, built on first use.
    #[arg(long, value_name = "DIR", conflicts_with = "kernel")]
    pub image: Option<PathBuf>,
    /// Kernel: a RISC-V Linux Image or an RV64 ELF.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (replaces the image's default).
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,
    /// A virtual disk (VMDK or raw file), seen by the guest as /dev/vda, /dev/vdb, ... in
    /// the order given. Options: `readonly`, `serial=S` (at most 20 bytes).
    #[arg(long = "disk", value_name = "PATH[,readonly][,serial=S]", value_parser = parse_disk)]
    pub disks: Vec<DiskDef>,
    /// A datastore for disks named '[NAME] dir/file.vmdk': its volume (file, block device,
    /// nbd:HOST:PORT, nbd+unix:SOCKET), mounted while the VM runs. `host-id=N` picks the
    /// host ID on the volume (default: the first free one).
    #[arg(long = "datastore", value_name = "NAME=DEV[,host-id=N]", value_parser = parse_datastore)]
    pub datastores: Vec<DatastoreConfig>,
}

/// Parses `NAME=DEV[,host-id=N]`.
pub fn parse_datastore(s: &str) -> Result<DatastoreConfig, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("--datastore '{s}': give NAME=DEV (example: ds1=/srv/ds1.img)"))?;
    let (dev, host_id) = match rest.rsplit_once(",host-id=") {
        Some((dev, h)) => (
            dev,
            Some(
                h.parse::<u32>()
                    .map_err(|_| format!("--datastore '{s}': host-id '{h}' is not a number"))?,
            ),
        ),
        None => (rest, None),
    };
    if name.is_empty() || dev.is_empty() {
        return Err(format!("--datastore '{s}': give NAME=DEV"));
    }
    Ok(DatastoreConfig {
        name: name.to_string(),
        device: dev.to_string(),
        host_id,
    })
}

/// Parses `PATH[,readonly][,serial=S]`.
pub fn parse_disk(s: &str) -> Result<DiskDef, String> {
    let mut parts = s.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err("--disk needs a path: --disk PATH[,readonly][,serial=S]".into());
    }
    let mut spec = DiskDef {
        path: PathBuf::from(path),
        read_only: false,
        serial: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "readonly" || opt == "ro" => spec.read_only = true,
            Some(("serial", v)) => {
                vmk_host::validate::check_disk_serial(v)?;
                spec.serial = Some(v.to_string());
            }
            _ => {
                return Err(format!(
                    "unknown disk option '{opt}' in '{s}' (known: readonly, serial=S)"
                ))
            }
        }
    }
    Ok(spec)
}

/// Console on stdout that also watches for the image's exit-status line (the same watcher
/// as the host's).
struct Terminal {
    watcher: Mutex<StatusWatcher>,
}

impl Console for Terminal {
    fn write(&self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
        self.watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .feed(bytes);
    }
}

fn default_image_dir() -> PathBuf {
    vmk_image::default_cache_dir()
        .join("images")
        .join("default")
}

fn ensure_default_image(dir: &Path) -> Result<(), CmdError> {
    if dir.join("vmlinux").exists() && dir.join("initrd.img").exists() {
        return Ok(());
    }
    eprintln!(
        "vmk: building the default Debian guest image in {} (first use; cached afterwards)",
        dir.display()
    );
    let opts = vmk_image::ImageOptions::new(dir);
    vmk_image::build_image(&opts, &mut |p| match p {
        vmk_image::Progress::Step { index, total, name } => {
            eprintln!("==> [{index}/{total}] {name}")
        }
        vmk_image::Progress::Warning(w) => eprintln!("    warning: {w}"),
        vmk_image::Progress::Detail(_) => {}
    })?;
    Ok(())
}

pub fn run(args: RunArgs) -> Result<i32, CmdError> {
    let image = match (&args.image, &args.kernel) {
        (None, None) => {
            let dir = default_image_dir();
            ensure_default_image(&dir)?;
            Some(dir)
        }
        (image, _) => image.clone(),
    };
    // The host's definition → machine step, so `vmk run` boots exactly what a host VM with
    // the same settings would.
    let def = VmDefinition {
        name: "vmk-run".into(),
        cpus: args.cpus,
        memory: ByteSize(args.memory),
        autostart: false,
        boot: Boot {
            image,
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            append: args.append.clone(),
        },
        disks: args.disks.clone(),
        nics: Vec::new(),
        resources: Resources::default(),
        test_fault_on_console: None,
    };
    let console = Arc::new(Terminal {
        watcher: Mutex::new(StatusWatcher::new()),
    });
    let mut cfg = vmk_host::machine::vm_config(&def, console.clone())?;
    // Mounted before the VM and unmounted after it (dropped after `vm`).
    let datastores = Datastores::mount_all(&args.datastores);
    if let Some(bad) = datastores.status().iter().find(|d| d.error.is_some()) {
        return Err(format!(
            "datastore '{}' ({}): {}",
            bad.name,
            bad.device,
            bad.error.as_deref().unwrap_or_default()
        )
        .into());
    }
    datastores.attach(&def, &mut cfg)?;
    let vm = Vm::new(cfg)?;
    let raw = RawMode::enable();
    if raw.is_some() {
        eprint!("vmk: console attached; Ctrl-A x quits\r\n");
    }
    let input = vm.uart();
    let stop = vm.stopper();
    let interactive = raw.is_some();
    // Console input. The thread is left blocked on stdin when the VM ends; the process exits.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        let mut ctrl_a = false;
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut out = Vec::with_capacity(n);
            for &b in &buf[..n] {
                if interactive && ctrl_a {
                    ctrl_a = false;
                    match b {
                        b'x' | b'X' => {
                            stop();
                            return;
                        }
                        0x01 => out.push(0x01),
                        _ => {}
                    }
                } else if interactive && b == 0x01 {
                    ctrl_a = true;
                } else {
                    out.push(b);
                }
            }
            input.push_input(&out);
        }
    });
    let outcome = vm.run();
    drop(raw);
    let guest_status = console
        .watcher
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .status();
    match vmk_host::machine::exit_info(&outcome, guest_status) {
        Some(ExitInfo::PoweredOff { status }) => Ok(status),
        None => {
            eprintln!("vmk: the guest reset; the VM is stopped");
            Ok(0)
        }
        Some(ExitInfo::Killed) => {
            eprintln!("vmk: VM stopped");
            Ok(0)
        }
        Some(ExitInfo::Crashed { reason }) => Err(format!("the VM crashed: {reason}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = parse_disk("/tmp/a.vmdk,readonly,serial=abc").unwrap();
        assert_eq!(d.path, PathBuf::from("/tmp/a.vmdk"));
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("abc"));
        assert!(!parse_disk("x.img").unwrap().read_only);
        assert!(parse_disk("").unwrap_err().contains("needs a path"));
        assert!(parse_disk("x,bogus")
            .unwrap_err()
            .contains("unknown disk option 'bogus'"));
        assert!(parse_disk("x,serial=123456789012345678901")
            .unwrap_err()
            .contains("at most 20"));
    }

    #[test]
    fn datastore_options() {
        let d = parse_disk("[ds1] vm1/disk.vmdk,readonly").unwrap();
        assert_eq!(d.path, PathBuf::from("[ds1] vm1/disk.vmdk"));
        assert!(d.read_only);
        let c = parse_datastore("ds1=/srv/ds1.img").unwrap();
        assert_eq!(
            (c.name.as_str(), c.device.as_str(), c.host_id),
            ("ds1", "/srv/ds1.img", None)
        );
        let c = parse_datastore("ds2=nbd:10.0.0.1:10809,host-id=7").unwrap();
        assert_eq!(
            (c.device.as_str(), c.host_id),
            ("nbd:10.0.0.1:10809", Some(7))
        );
        assert!(parse_datastore("ds1").unwrap_err().contains("NAME=DEV"));
        assert!(parse_datastore("ds1=x,host-id=seven")
            .unwrap_err()
            .contains("not a number"));
    }
}
