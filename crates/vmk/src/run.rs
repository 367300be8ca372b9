//! `vmk run`: boots one VM in the foreground with its serial console on the terminal.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use clap::Args;
use vmk_machine::{Console, Vm, VmConfig, VmOutcome};

use crate::CmdError;

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
    pub disks: Vec<vmk_machine::DiskSpec>,
}

/// Parses `PATH[,readonly][,serial=S]`.
pub fn parse_disk(s: &str) -> Result<vmk_machine::DiskSpec, String> {
    let mut parts = s.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err("--disk needs a path: --disk PATH[,readonly][,serial=S]".into());
    }
    let mut spec = vmk_machine::DiskSpec {
        path: PathBuf::from(path),
        read_only: false,
        serial: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "readonly" || opt == "ro" => spec.read_only = true,
            Some(("serial", v)) => {
                if v.len() > 20 {
                    return Err(format!(
                        "disk serial '{v}' is {} bytes; virtio-blk serials are at most 20",
                        v.len()
                    ));
                }
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

/// Parses sizes like `512M`, `2G`, `65536K` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(format!(
                        "unknown size suffix '{c}' in '{s}' (use K, M, G or T)"
                    ))
                }
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 512M, 2G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Console on stdout that also watches for the image's exit-status line.
struct Terminal {
    line: Mutex<Vec<u8>>,
    status: Arc<AtomicI32>,
}

const STATUS_PREFIX: &[u8] = b"vmk-guest: exit-status ";
const NO_STATUS: i32 = i32::MIN;

impl Console for Terminal {
    fn write(&self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if let Some(code) = parse_status(&line) {
                    self.status.store(code, Ordering::SeqCst);
                }
                line.clear();
            } else if line.len() < 4096 {
                line.push(b);
            }
        }
    }
}

/// The guest's exit status from a console line ending in `vmk-guest: exit-status N`.
fn parse_status(line: &[u8]) -> Option<i32> {
    let pos = line
        .windows(STATUS_PREFIX.len())
        .rposition(|w| w == STATUS_PREFIX)?;
    let rest = std::str::from_utf8(&line[pos + STATUS_PREFIX.len()..]).ok()?;
    rest.trim().parse().ok()
}

/// Puts the terminal in raw mode while alive (so keys go to the guest), restoring it on drop.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enable() -> Option<RawMode> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a properly sized termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            // Keep output post-processing so the host's newline handling stays sane.
            t.c_oflag |= libc::OPOST;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawMode { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enable`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
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
    let (kernel, initrd) = match (&args.image, &args.kernel) {
        (_, Some(k)) => (k.clone(), args.initrd.clone()),
        (Some(dir), None) => (dir.join("vmlinux"), Some(dir.join("initrd.img"))),
        (None, None) => {
            let dir = default_image_dir();
            ensure_default_image(&dir)?;
            (dir.join("vmlinux"), Some(dir.join("initrd.img")))
        }
    };
    let cmdline = args
        .append
        .clone()
        .unwrap_or_else(|| vmk_image::DEFAULT_APPEND.to_string());
    let status = Arc::new(AtomicI32::new(NO_STATUS));
    let console = Arc::new(Terminal {
        line: Mutex::new(Vec::new()),
        status: status.clone(),
    });
    let vm = Vm::new(VmConfig {
        cpus: args.cpus,
        memory: args.memory,
        kernel,
        initrd,
        cmdline,
        console,
        disks: args.disks.clone(),
        nics: Vec::new(),
        fault_on_console: None,
    })?;
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
    let guest_status = status.load(Ordering::SeqCst);
    match outcome {
        VmOutcome::PowerOff { code } => Ok(if guest_status != NO_STATUS {
            guest_status
        } else {
            code
        }),
        VmOutcome::Reboot => {
            eprintln!("vmk: the guest reset; the VM is stopped");
            Ok(0)
        }
        VmOutcome::Stopped => {
            eprintln!("vmk: VM stopped");
            Ok(0)
        }
        VmOutcome::Crashed(why) => Err(format!("the VM crashed: {why}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").unwrap_err().contains("suffix"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

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
    fn status_line() {
        assert_eq!(parse_status(b"vmk-guest: exit-status 3"), Some(3));
        assert_eq!(
            parse_status(b"no newline at endvmk-guest: exit-status 0"),
            Some(0)
        );
        assert_eq!(parse_status(b"vmk-guest: exit-status x"), None);
        assert_eq!(parse_status(b"vmk-guest: ready"), None);
    }
}
