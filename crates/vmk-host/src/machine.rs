//! From a VM definition to a `vmk_machine::VmConfig`, and from a `VmOutcome` to how the run
//! ended: the steps `vmk run` and the host share.

use std::path::PathBuf;
use std::sync::Arc;

use vmk_machine::{Console, DiskSpec, VmConfig, VmOutcome};

use vmk_api::model::{Boot, DiskDef, ExitInfo, VmDefinition};

/// The kernel of an image directory built by `vmk image build`.
pub const IMAGE_KERNEL: &str = "vmlinux";
/// The initrd of an image directory.
pub const IMAGE_INITRD: &str = "initrd.img";

/// What the machine loads: kernel, initrd, command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// Resolves `boot`: an image directory gives its vmlinux and initrd.img; the command line
/// defaults to the image's (`vmk_image::DEFAULT_APPEND`). With both an image and a kernel,
/// the kernel wins (validation refuses that combination for stored definitions).
pub fn boot_files(boot: &Boot) -> Result<BootFiles, String> {
    let (kernel, initrd) = match (&boot.kernel, &boot.image) {
        (Some(k), _) => (k.clone(), boot.initrd.clone()),
        (None, Some(dir)) => (
            dir.join(IMAGE_KERNEL),
            Some(
                boot.initrd
                    .clone()
                    .unwrap_or_else(|| dir.join(IMAGE_INITRD)),
            ),
        ),
        (None, None) => {
            return Err("nothing to boot: give an image directory or a kernel".into());
        }
    };
    let cmdline = boot
        .append
        .clone()
        .unwrap_or_else(|| vmk_image::DEFAULT_APPEND.to_string());
    Ok(BootFiles {
        kernel,
        initrd,
        cmdline,
    })
}

/// A definition's disk as the machine attaches it.
pub fn disk_spec(d: &DiskDef) -> DiskSpec {
    DiskSpec {
        path: d.path.clone(),
        read_only: d.read_only,
        serial: d.serial.clone(),
        // Datastore disks get their storage from the host's mounted datastores.
        storage: None,
    }
}

/// The machine configuration of `def`, its console going to `console` (with the test-only
/// fault hook, which release builds of vmk-machine refuse).
pub fn vm_config(def: &VmDefinition, console: Arc<dyn Console>) -> Result<VmConfig, String> {
    let boot = boot_files(&def.boot)?;
    Ok(VmConfig {
        cpus: def.cpus,
        memory: def.memory.0,
        kernel: boot.kernel,
        initrd: boot.initrd,
        cmdline: boot.cmdline,
        console,
        disks: def.disks.iter().map(disk_spec).collect(),
        fault_on_console: def.test_fault_on_console.clone(),
        // NICs need the host's vSwitches: the runtime attaches them (not `vmk run`).
        nics: Vec::new(),
    })
}

/// How a run ended, from the machine's outcome and the exit status the console showed.
/// `None` for a guest reboot (the VM goes on). A guest power-off reports the console's
/// status if the guest printed one, else the power-off device's code; a host stop is
/// `Killed`.
pub fn exit_info(outcome: &VmOutcome, console_status: Option<i32>) -> Option<ExitInfo> {
    match outcome {
        VmOutcome::PowerOff { code } => Some(ExitInfo::PoweredOff {
            status: console_status.unwrap_or(*code),
        }),
        VmOutcome::Reboot => None,
        VmOutcome::Stopped => Some(ExitInfo::Killed),
        VmOutcome::Crashed(reason) => Some(ExitInfo::Crashed {
            reason: reason.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmk_api::model::ByteSize;

    struct Null;
    impl Console for Null {
        fn write(&self, _: &[u8]) {}
    }

    #[test]
    fn image_and_kernel_boot() {
        let b = boot_files(&Boot {
            image: Some("/img".into()),
            ..Boot::default()
        })
        .unwrap();
        assert_eq!(b.kernel, PathBuf::from("/img/vmlinux"));
        assert_eq!(b.initrd, Some(PathBuf::from("/img/initrd.img")));
        assert_eq!(b.cmdline, vmk_image::DEFAULT_APPEND);
        let b = boot_files(&Boot {
            kernel: Some("/k".into()),
            append: Some("console=ttyS0 quiet".into()),
            ..Boot::default()
        })
        .unwrap();
        assert_eq!(b.kernel, PathBuf::from("/k"));
        assert_eq!(b.initrd, None);
        assert_eq!(b.cmdline, "console=ttyS0 quiet");
        assert!(boot_files(&Boot::default())
            .unwrap_err()
            .contains("nothing to boot"));
    }

    #[test]
    fn config_from_definition() {
        let def = VmDefinition {
            name: "a".into(),
            cpus: 2,
            memory: ByteSize(256 << 20),
            autostart: false,
            boot: Boot {
                image: Some("/img".into()),
                ..Boot::default()
            },
            disks: vec![DiskDef {
                path: "/d.vmdk".into(),
                read_only: true,
                serial: Some("s1".into()),
            }],
            nics: vec![],
            resources: Default::default(),
            test_fault_on_console: None,
        };
        let c = vm_config(&def, Arc::new(Null)).unwrap();
        assert_eq!((c.cpus, c.memory), (2, 256 << 20));
        assert_eq!(c.disks.len(), 1);
        assert!(c.disks[0].read_only);
        assert_eq!(c.disks[0].serial.as_deref(), Some("s1"));
    }

    #[test]
    fn outcomes() {
        let off = VmOutcome::PowerOff { code: 0 };
        assert_eq!(
            exit_info(&off, Some(7)),
            Some(ExitInfo::PoweredOff { status: 7 })
        );
        assert_eq!(
            exit_info(&VmOutcome::PowerOff { code: 3 }, None),
            Some(ExitInfo::PoweredOff { status: 3 })
        );
        assert_eq!(exit_info(&VmOutcome::Reboot, Some(1)), None);
        assert_eq!(
            exit_info(&VmOutcome::Stopped, Some(1)),
            Some(ExitInfo::Killed)
        );
        assert_eq!(
            exit_info(&VmOutcome::Crashed("x".into()), None),
            Some(ExitInfo::Crashed { reason: "x".into() })
        );
    }
}
