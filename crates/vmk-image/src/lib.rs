//! Builds vmk guest images from Debian trixie riscv64 packages.
//!
//! An image is a directory with three files:
//! - `vmlinux`: the kernel as a flat, uncompressed RISC-V Linux `Image` (the boot-header format
//!   of Documentation/arch/riscv/boot-image-header.rst; Debian's has an EFI stub folded into the
//!   header). A loader copies it to RAM at `text_offset` (2 MiB) from a 2 MiB-aligned base,
//!   reserves `image_size` bytes, and jumps to its first byte with a0 = hart id and a1 = the
//!   device tree address.
//! - `initrd.img`: a gzip-compressed newc cpio: busybox, the requested packages with their
//!   dependencies, the kernel modules for virtio-mmio block/net/balloon and ext4 (decompressed),
//!   and `/init` (see [`initscript`] for the console protocol).
//! - `image.toml`: what was built (kernel version and header fields, packages, modules, and
//!   the default kernel command line).
//!
//! Packages are fetched with apt under a private configuration in the cache directory (see
//! [`apt`]); nothing on the host is changed. Tools needed on the host: `apt-get` and
//! `dpkg-deb`.

pub mod apt;
pub mod cpio;
pub mod deb;
pub mod initscript;
pub mod kernel;
pub mod modules;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use apt::{AptOutput, PackageRef};

/// Debian's archive (the default mirror).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The Debian release guests run.
pub const DEFAULT_SUITE: &str = "trixie";
/// The keyring with Debian's archive keys; bookworm's debian-archive-keyring
/// (2023.3+deb12u1 and later) already holds the trixie keys.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The kernel metapackage that points at the current trixie kernel.
pub const KERNEL_PACKAGE: &str = "linux-image-riscv64";
/// Always in the initrd.
pub const BASE_PACKAGES: &[&str] = &["busybox-static"];
/// Modules loaded at boot (with everything they need), unless built in.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_balloon",
    "ext4",
    // The power button (`vmk vm stop`): the virtio-input driver and /dev/input/event*.
    "virtio_input",
    "evdev",
];
/// The kernel command line written to image.toml.
pub const DEFAULT_APPEND: &str = "console=ttyS0 earlycon=sbi";

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Output directory (created if missing).
    pub out_dir: PathBuf,
    /// Extra Debian packages for the initrd (with their dependencies).
    pub packages: Vec<String>,
    /// A script run by /bin/sh after boot; the guest powers off when it ends.
    pub init_script: Option<PathBuf>,
    /// Cache of apt lists, downloaded packages and extracted kernels.
    pub cache_dir: PathBuf,
    /// Extra kernel modules to load at boot, besides [`DEFAULT_MODULES`].
    pub extra_modules: Vec<String>,
    pub mirror: String,
    pub suite: String,
    pub keyring: PathBuf,
    /// Run `apt-get update` even if the lists are less than a day old.
    pub refresh: bool,
    pub apt_output: AptOutput,
}

impl ImageOptions {
    /// Defaults: no extra packages, no init script, the default cache, the Debian mirror.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        ImageOptions {
            out_dir: out_dir.into(),
            packages: Vec::new(),
            init_script: None,
            cache_dir: default_cache_dir(),
            extra_modules: Vec::new(),
            mirror: DEFAULT_MIRROR.to_string(),
            suite: DEFAULT_SUITE.to_string(),
            keyring: PathBuf::from(DEFAULT_KEYRING),
            refresh: false,
            apt_output: AptOutput::Stream,
        }
    }
}

/// `$VMK_CACHE`, else `$XDG_CACHE_HOME/vmk`, else `~/.cache/vmk`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VMK_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("vmk");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache/vmk"),
        None => PathBuf::from(".vmk-cache"),
    }
}

/// Reports from a build, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A new step starts (1-based `index` of `total`).
    Step {
        index: usize,
        total: usize,
        name: String,
    },
    /// Detail about the current step.
    Detail(String),
    /// Something odd that does not stop the build.
    Warning(String),
}

/// What was built.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub kernel_path: PathBuf,
    pub initrd_path: PathBuf,
    pub manifest_path: PathBuf,
    /// `uname -r` of the guest kernel.
    pub kernel_version: String,
    pub kernel_package: PackageRef,
    pub kernel: KernelSummary,
    /// Packages unpacked into the initrd.
    pub packages: Vec<PackageRef>,
    /// Module paths under `/lib/modules/<version>`, in load order.
    pub modules: Vec<String>,
    /// Requested or needed modules that are built into the kernel.
    pub builtin_modules: Vec<String>,
    pub initrd_size: u64,
    pub initrd_uncompressed_size: u64,
    pub append: String,
    /// How many .deb files had to be downloaded (0 when all were cached).
    pub downloaded: usize,
    pub lists_updated: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelSummary {
    /// What DIR/vmlinux is.
    pub format: String,
    /// What the package shipped.
    pub source_format: String,
    pub size: u64,
    pub text_offset: u64,
    pub image_size: u64,
    pub efi_stub: bool,
}

/// Why a build failed. Each message says what failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid package name {name:?}: {reason}")]
    InvalidPackageName { name: String, reason: &'static str },
    #[error("cannot read init script {}: {source}; check the --init-script path", path.display())]
    InitScript { path: PathBuf, source: io::Error },
    #[error(
        "cannot write to output directory {}: {source}; choose a writable --out directory",
        path.display()
    )]
    OutDir { path: PathBuf, source: io::Error },
    #[error(
        "cannot use cache directory {}: {source}; set --cache or $VMK_CACHE to a writable \
         directory",
        path.display()
    )]
    Cache { path: PathBuf, source: io::Error },
    #[error(
        "cannot run {tool} ({source}); it is in Debian's {package} package: apt-get install \
         {package}"
    )]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        source: io::Error,
    },
    #[error(
        "no Debian archive keyring at {}; install debian-archive-keyring (bookworm's \
         2023.3+deb12u1 or later holds the trixie keys) or pass --keyring FILE",
        path.display()
    )]
    Keyring { path: PathBuf },
    #[error(
        "package {name:?} was not found in Debian {suite} (riscv64, main): check the spelling \
         (https://packages.debian.org/{suite}/{name}); if it is new, retry with --refresh"
    )]
    UnknownPackage { name: String, suite: String },
    #[error(
        "apt-get update of the Debian {suite} riscv64 package lists failed: {message}\n  \
         check network access to {mirror}, and that the keyring {} holds the {suite} archive \
         keys",
        keyring.display()
    )]
    AptUpdate {
        suite: String,
        mirror: String,
        keyring: PathBuf,
        message: String,
    },
    #[error("apt-get could not resolve the dependencies of {packages}: {message}")]
    AptResolve { packages: String, message: String },
    #[error(
        "apt-get failed to download {packages}: {message}\n  check network access to \
         {mirror}; if the mirror no longer has these versions, retry with --refresh"
    )]
    AptDownload {
        packages: String,
        mirror: String,
        message: String,
    },
    #[error("cannot unpack {}: {message}", deb.display())]
    Extract { deb: PathBuf, message: String },
    #[error("kernel package {package}: {message}")]
    Kernel { package: String, message: String },
    #[error("kernel modules of {version}: {message}")]
    Modules { version: String, message: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

const STEPS: usize = 8;

struct Reporter<'a> {
    progress: &'a mut dyn FnMut(Progress),
    step: usize,
}

impl Reporter<'_> {
    fn step(&mut self, name: impl Into<String>) {
        self.step += 1;
        (self.progress)(Progress::Step {
            index: self.step,
            total: STEPS,
            name: name.into(),
        });
    }
    fn detail(&mut self, s: impl Into<String>) {
        (self.progress)(Progress::Detail(s.into()));
    }
    fn warn(&mut self, s: impl Into<String>) {
        (self.progress)(Progress::Warning(s.into()));
    }
    /// Passes on what apt printed to stderr on success ("W:" and "N:" lines).
    fn apt_notes(&mut self, r: &apt::CmdResult) {
        for l in r.stderr.lines() {
            if l.starts_with("W:") || l.starts_with("N:") {
                self.warn(format!("apt-get: {l}"));
            }
        }
    }
}

/// Checks the options that can be checked without the network: package names, the init
/// script, the output directory. Returns the init script's contents.
pub fn validate(opts: &ImageOptions) -> Result<Option<Vec<u8>>, ImageError> {
    for p in &opts.packages {
        apt::check_package_name(p).map_err(|reason| ImageError::InvalidPackageName {
            name: p.clone(),
            reason,
        })?;
    }
    let script = match &opts.init_script {
        None => None,
        Some(path) => {
            let data = std::fs::read(path).map_err(|source| ImageError::InitScript {
                path: path.clone(),
                source,
            })?;
            Some(data)
        }
    };
    let out = &opts.out_dir;
    let out_err = |source| ImageError::OutDir {
        path: out.clone(),
        source,
    };
    std::fs::create_dir_all(out).map_err(out_err)?;
    let probe = out.join(format!(".vmk-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(out_err)?;
    let _ = std::fs::remove_file(&probe);
    if !opts.keyring.is_file() {
        return Err(ImageError::Keyring {
            path: opts.keyring.clone(),
        });
    }
    Ok(script)
}

fn check_tools() -> Result<(), ImageError> {
    for (tool, package) in [("apt-get", "apt"), ("dpkg-deb", "dpkg")] {
        std::process::Command::new(tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|source| ImageError::ToolMissing {
                tool,
                package,
                source,
            })?;
    }
    Ok(())
}

/// An exclusive lock on the cache, so that two builds do not unpack into it at once.
struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    fn acquire(cache: &Path, rep: &mut Reporter<'_>) -> Result<CacheLock, ImageError> {
        use std::os::fd::AsRawFd;
        let path = cache.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ImageError::Cache {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            rep.detail(format!(
                "waiting for another vmk image build to release {}",
                path.display()
            ));
            // SAFETY: as above.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(ImageError::Cache {
                    path,
                    source: io::Error::last_os_error(),
                });
            }
        }
        Ok(CacheLock { _file: f })
    }
}

fn names(pkgs: &[PackageRef]) -> String {
    let v: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
    v.join(" ")
}

fn resolve(
    apt: &apt::Apt,
    opts: &ImageOptions,
    wanted: &[String],
) -> Result<Vec<PackageRef>, ImageError> {
    let (r, pkgs) = apt
        .simulate_install(wanted)
        .map_err(|source| ImageError::ToolMissing {
            tool: "apt-get",
            package: "apt",
            source,
        })?;
    if !r.ok {
        if let Some(name) = apt::unknown_packages(&r.stderr).into_iter().next() {
            return Err(ImageError::UnknownPackage {
                name,
                suite: opts.suite.clone(),
            });
        }
        return Err(ImageError::AptResolve {
            packages: wanted.join(" "),
            message: r.message(),
        });
    }
    if pkgs.is_empty() {
        return Err(ImageError::AptResolve {
            packages: wanted.join(" "),
            message: "apt-get -s install listed no package to install".into(),
        });
    }
    Ok(pkgs)
}

/// Builds an image. `progress` receives step names and details as the build goes.
pub fn build_image(
    opts: &ImageOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ImageInfo, ImageError> {
    let started = Instant::now();
    let mut rep = Reporter { progress, step: 0 };
    let script = validate(opts)?;
    check_tools()?;
    let cache = &opts.cache_dir;
    std::fs::create_dir_all(cache.join("tmp")).map_err(|source| ImageError::Cache {
        path: cache.clone(),
        source,
    })?;
    let _lock = CacheLock::acquire(cache, &mut rep)?;

    // 1. Package lists.
    rep.step("Package lists");
    let apt = apt::Apt::prepare(
        cache,
        &opts.mirror,
        &opts.suite,
        &opts.keyring,
        opts.apt_output,
    )
    .map_err(|source| ImageError::Cache {
        path: cache.join("apt"),
        source,
    })?;
    rep.detail(format!(
        "private apt configuration in {}",
        apt.dir.display()
    ));
    rep.detail(format!("source: {}", apt.source_line));
    let age = apt.lists_age();
    let lists_updated = match age {
        Some(a) if !opts.refresh && a < apt::LISTS_MAX_AGE => {
            rep.detail(format!(
                "lists are {} min old; not updating (--refresh forces it)",
                a.as_secs() / 60
            ));
            false
        }
        _ => {
            rep.detail(apt.describe(&["update"]));
            let r = apt.update().map_err(|source| ImageError::ToolMissing {
                tool: "apt-get",
                package: "apt",
                source,
            })?;
            if !r.ok {
                let err = ImageError::AptUpdate {
                    suite: opts.suite.clone(),
                    mirror: opts.mirror.clone(),
                    keyring: opts.keyring.clone(),
                    message: r.message(),
                };
                // Stale but verified lists still serve a build from cached packages
                // (offline); an explicit --refresh must not silently fall back.
                match age {
                    Some(a) if !opts.refresh => {
                        rep.warn(format!(
                            "{err}\n  continuing with the lists from {} h ago",
                            a.as_secs() / 3600
                        ));
                        false
                    }
                    _ => return Err(err),
                }
            } else {
                rep.apt_notes(&r);
                true
            }
        }
    };

    // 2. Resolve.
    rep.step("Resolving packages");
    let kernel_set = resolve(&apt, opts, &[KERNEL_PACKAGE.to_string()])?;
    let kernel_pkg = kernel_set
        .iter()
        .find(|p| p.name.starts_with("linux-image-") && p.name != KERNEL_PACKAGE)
        .cloned()
        .ok_or_else(|| ImageError::Kernel {
            package: KERNEL_PACKAGE.into(),
            message: format!(
                "it depends on no linux-image-* package (apt would install: {})",
                names(&kernel_set)
            ),
        })?;
    rep.detail(format!(
        "kernel: {} {}",
        kernel_pkg.name, kernel_pkg.version
    ));
    let mut wanted: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
    for p in &opts.packages {
        if !wanted.contains(p) && p != KERNEL_PACKAGE {
            wanted.push(p.clone());
        }
    }
    let mut packages = resolve(&apt, opts, &wanted)?;
    // A kernel pulled in as a dependency would drag its whole module tree into the initrd.
    packages.retain(|p| !p.name.starts_with("linux-image-"));
    packages.sort();
    rep.detail(format!(
        "initrd: {} packages for {}",
        packages.len(),
        wanted.join(" ")
    ));

    // 3. Download.
    rep.step("Downloading packages");
    let mut all = packages.clone();
    all.push(kernel_pkg.clone());
    let missing = apt.missing(&all);
    if missing.is_empty() {
        rep.detail(format!(
            "all {} packages are cached in {}",
            all.len(),
            apt.archives.display()
        ));
    } else {
        rep.detail(format!(
            "{} of {} packages to download into {}",
            missing.len(),
            all.len(),
            apt.archives.display()
        ));
        let r = apt
            .download(&missing)
            .map_err(|source| ImageError::ToolMissing {
                tool: "apt-get",
                package: "apt",
                source,
            })?;
        if !r.ok {
            return Err(ImageError::AptDownload {
                packages: names(&missing),
                mirror: opts.mirror.clone(),
                message: r.message(),
            });
        }
        rep.apt_notes(&r);
        let still = apt.missing(&missing);
        if !still.is_empty() {
            return Err(ImageError::AptDownload {
                packages: names(&still),
                mirror: opts.mirror.clone(),
                message: format!(
                    "apt-get reported success but {} is not in {}",
                    still
                        .iter()
                        .map(|p| p.deb_file_name())
                        .collect::<Vec<_>>()
                        .join(", "),
                    apt.archives.display()
                ),
            });
        }
    }

    // 4. Kernel.
    rep.step("Unpacking the kernel");
    let kernel_root = unpack_kernel(cache, &apt, &kernel_pkg, &mut rep)?;
    let (kernel_file, kernel_version) =
        find_kernel(&kernel_root).map_err(|message| ImageError::Kernel {
            package: kernel_pkg.name.clone(),
            message,
        })?;
    let raw = std::fs::read(&kernel_file).map_err(io_err("cannot read kernel", &kernel_file))?;
    let image = kernel::prepare_kernel(raw).map_err(|m| ImageError::Kernel {
        package: kernel_pkg.name.clone(),
        message: format!("{}: {m}", kernel_file.display()),
    })?;
    rep.detail(format!(
        "{} ({}), {} bytes, text_offset {:#x}, image_size {:#x}",
        kernel_file.display(),
        image.source_format,
        image.data.len(),
        image.text_offset,
        image.image_size
    ));

    // 5. Modules.
    rep.step("Selecting kernel modules");
    let mod_dir = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| kernel_root.join(d).join(&kernel_version))
        .find(|d| d.is_dir())
        .ok_or_else(|| ImageError::Modules {
            version: kernel_version.clone(),
            message: format!("no lib/modules/{kernel_version} in {}", kernel_pkg.name),
        })?;
    let mod_err = |message| ImageError::Modules {
        version: kernel_version.clone(),
        message,
    };
    let mut tree = modules::ModuleTree::open(&mod_dir, &kernel_version).map_err(mod_err)?;
    let mut wanted_mods: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    wanted_mods.extend(opts.extra_modules.iter().cloned());
    let selection = tree.select(&wanted_mods).map_err(mod_err)?;
    for w in &selection.warnings {
        rep.warn(w.clone());
    }
    if !selection.builtin.is_empty() {
        rep.detail(format!("built in: {}", selection.builtin.join(" ")));
    }
    rep.detail(format!(
        "load order: {}",
        selection
            .modules
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // 6. Staging root.
    rep.step("Unpacking packages into the initrd root");
    let staging = tempfile::Builder::new()
        .prefix("staging-")
        .tempdir_in(cache.join("tmp"))
        .map_err(|source| ImageError::Cache {
            path: cache.join("tmp"),
            source,
        })?;
    let root = staging.path();
    rep.detail(format!(
        "dpkg-deb -x of {} packages into {}",
        packages.len(),
        root.display()
    ));
    for p in &packages {
        let deb = apt.archives.join(p.deb_file_name());
        deb::extract(&deb, root).map_err(|message| ImageError::Extract {
            deb: deb.clone(),
            message,
        })?;
    }
    let dropped = deb::merge_usr(root).map_err(io_err("cannot merge /usr in", root))?;
    for d in dropped {
        rep.warn(format!("/{d} is also in /usr; kept /usr/{d}"));
    }
    deb::prune(root).map_err(io_err("cannot prune", root))?;
    populate_root(
        root,
        &kernel_version,
        &selection,
        script.as_deref(),
        &tree_builtin(&mod_dir),
    )
    .map_err(io_err("cannot populate the initrd root", root))?;
    if !root.join("usr/bin/busybox").is_file() {
        return Err(ImageError::Extract {
            deb: apt.archives.join("busybox-static"),
            message: "busybox-static did not provide /usr/bin/busybox".into(),
        });
    }

    // 7. Initrd.
    rep.step("Writing initrd.img");
    let initrd_path = opts.out_dir.join("initrd.img");
    let (initrd_uncompressed_size, skipped) = write_initrd(root, &initrd_path)?;
    for s in skipped {
        rep.warn(format!(
            "/{s} is not a file, directory or symlink; left out"
        ));
    }
    let initrd_size = std::fs::metadata(&initrd_path)
        .map_err(io_err("cannot stat", &initrd_path))?
        .len();
    rep.detail(format!(
        "{}: {} bytes ({} uncompressed)",
        initrd_path.display(),
        initrd_size,
        initrd_uncompressed_size
    ));
    drop(staging);

    // 8. Kernel and manifest.
    rep.step("Writing vmlinux and image.toml");
    let kernel_path = opts.out_dir.join("vmlinux");
    write_atomic(&kernel_path, &image.data)?;
    let kernel = KernelSummary {
        format: "riscv-image".into(),
        source_format: image.source_format.clone(),
        size: image.data.len() as u64,
        text_offset: image.text_offset,
        image_size: image.image_size,
        efi_stub: image.efi_stub,
    };
    let info = ImageInfo {
        manifest_path: opts.out_dir.join("image.toml"),
        kernel_path,
        initrd_path,
        kernel_version,
        kernel_package: kernel_pkg,
        kernel,
        packages,
        modules: selection.modules.iter().map(|m| m.path.clone()).collect(),
        builtin_modules: selection.builtin.clone(),
        initrd_size,
        initrd_uncompressed_size,
        append: DEFAULT_APPEND.into(),
        downloaded: missing.len(),
        lists_updated,
    };
    let manifest = render_manifest(opts, &info, script.is_some())?;
    write_atomic(&info.manifest_path, manifest.as_bytes())?;
    rep.detail(format!("done in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(info)
}

fn tree_builtin(mod_dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(mod_dir.join("modules.builtin")).ok()
}

/// Unpacks the kernel package once into `<cache>/kernels/<deb name>/`.
fn unpack_kernel(
    cache: &Path,
    apt: &apt::Apt,
    pkg: &PackageRef,
    rep: &mut Reporter<'_>,
) -> Result<PathBuf, ImageError> {
    let file = pkg.deb_file_name();
    let stem = file.strip_suffix(".deb").unwrap_or(&file);
    let kernels = cache.join("kernels");
    let dest = kernels.join(stem);
    if dest.join(".complete").is_file() {
        rep.detail(format!("cached in {}", dest.display()));
        return Ok(dest);
    }
    let cache_err = |source| ImageError::Cache {
        path: kernels.clone(),
        source,
    };
    std::fs::create_dir_all(&kernels).map_err(cache_err)?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(cache_err)?;
    }
    let tmp = tempfile::Builder::new()
        .prefix("unpack-")
        .tempdir_in(&kernels)
        .map_err(cache_err)?;
    let deb = apt.archives.join(&file);
    rep.detail(format!("dpkg-deb -x {}", deb.display()));
    deb::extract(&deb, tmp.path()).map_err(|message| ImageError::Extract {
        deb: deb.clone(),
        message,
    })?;
    std::fs::write(tmp.path().join(".complete"), b"").map_err(cache_err)?;
    let tmp = tmp.keep();
    std::fs::rename(&tmp, &dest).map_err(cache_err)?;
    Ok(dest)
}

/// Finds the kernel in /boot; returns it and its version.
fn find_kernel(root: &Path) -> Result<(PathBuf, String), String> {
    let boot = root.join("boot");
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(&boot).map_err(|e| format!("cannot list {}: {e}", boot.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        for prefix in ["vmlinux-", "vmlinuz-", "Image-"] {
            if let Some(v) = name.strip_prefix(prefix) {
                found.push((e.path(), v.to_string()));
            }
        }
    }
    found.sort();
    found
        .into_iter()
        .next()
        .ok_or_else(|| format!("no vmlinux-*, vmlinuz-* or Image-* in {}", boot.display()))
}

/// Adds /init, the init script, modules and the skeleton to the staging root.
fn populate_root(
    root: &Path,
    kernel_version: &str,
    selection: &modules::Selection,
    script: Option<&[u8]>,
    modules_builtin: &Option<Vec<u8>>,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let write_mode = |rel: &str, data: &[u8], mode: u32| -> io::Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, data)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
    };
    for d in ["dev", "proc", "sys", "run", "root", "etc", "vmk"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))?;
    if std::fs::symlink_metadata(root.join("usr/bin/sh")).is_err() {
        std::fs::create_dir_all(root.join("usr/bin"))?;
        std::os::unix::fs::symlink("busybox", root.join("usr/bin/sh"))?;
    }
    if !root.join("etc/passwd").exists() {
        write_mode("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    }
    if !root.join("etc/group").exists() {
        write_mode("etc/group", b"root:x:0:\n", 0o644)?;
    }
    let moddir = format!("usr/lib/modules/{kernel_version}");
    for m in &selection.modules {
        write_mode(&format!("{moddir}/{}", m.path), &m.data, 0o644)?;
    }
    write_mode(
        &format!("{moddir}/modules.dep"),
        modules::render_modules_dep(&selection.modules).as_bytes(),
        0o644,
    )?;
    write_mode(
        &format!("{moddir}/modules.alias"),
        modules::render_modules_alias(&selection.modules).as_bytes(),
        0o644,
    )?;
    if let Some(b) = modules_builtin {
        write_mode(&format!("{moddir}/modules.builtin"), b, 0o644)?;
    }
    let cfg = initscript::InitConfig {
        kernel_version: kernel_version.to_string(),
        modules: selection.modules.iter().map(|m| m.path.clone()).collect(),
        has_init_script: script.is_some(),
    };
    write_mode("init", initscript::render_init(&cfg).as_bytes(), 0o755)?;
    if let Some(s) = script {
        write_mode(initscript::INIT_SCRIPT_PATH, s, 0o755)?;
    }
    Ok(())
}

/// Writes the gzip-compressed newc archive of `root` (plus /dev/console) atomically.
/// Returns the uncompressed size and the entries skipped.
pub fn write_initrd(root: &Path, path: &Path) -> Result<(u64, Vec<String>), ImageError> {
    let tmp = tmp_path(path);
    let result = (|| -> io::Result<(u64, Vec<String>)> {
        let f = std::fs::File::create(&tmp)?;
        let gz = flate2::write::GzEncoder::new(io::BufWriter::new(f), flate2::Compression::new(6));
        let mut w = cpio::CpioWriter::new(gz);
        let skipped = w.tree(root)?;
        // The kernel opens /dev/console for init's stdio before /init mounts devtmpfs.
        w.char_device(b"dev/console", 0o600, 5, 1)?;
        w.char_device(b"dev/null", 0o666, 1, 3)?;
        let size = w.bytes_written();
        let gz = w.finish()?;
        let mut bw = gz.finish()?;
        bw.flush()?;
        bw.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok((size, skipped))
    })();
    match result {
        Ok(r) => {
            std::fs::rename(&tmp, path).map_err(|source| ImageError::OutDir {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(r)
        }
        Err(source) => {
            let _ = std::fs::remove_file(&tmp);
            Err(ImageError::Io {
                what: "cannot write initrd".into(),
                path: path.to_path_buf(),
                source,
            })
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes a small file of the image (the manifest) durably, whole or not at all.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    vmk_base::fs::write_atomic(path, data, 0o644).map_err(|source| ImageError::OutDir {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(serde::Serialize)]
struct Manifest<'a> {
    /// Format version of this file.
    format: u32,
    suite: &'a str,
    arch: &'a str,
    mirror: &'a str,
    kernel: ManifestKernel<'a>,
    initrd: ManifestInitrd<'a>,
    boot: ManifestBoot<'a>,
    packages: Vec<ManifestPackage<'a>>,
}

#[derive(serde::Serialize)]
struct ManifestKernel<'a> {
    file: &'a str,
    version: &'a str,
    package: &'a str,
    package_version: &'a str,
    #[serde(flatten)]
    summary: &'a KernelSummary,
}

#[derive(serde::Serialize)]
struct ManifestInitrd<'a> {
    file: &'a str,
    format: &'a str,
    size: u64,
    uncompressed_size: u64,
    init_script: bool,
    /// Under `/lib/modules/<version>`, in load order.
    modules: &'a [String],
    builtin_modules: &'a [String],
}

#[derive(serde::Serialize)]
struct ManifestBoot<'a> {
    append: &'a str,
    ready_line: &'a str,
    exit_status_prefix: &'a str,
}

#[derive(serde::Serialize)]
struct ManifestPackage<'a> {
    name: &'a str,
    version: &'a str,
    arch: &'a str,
}

fn render_manifest(
    opts: &ImageOptions,
    info: &ImageInfo,
    init_script: bool,
) -> Result<String, ImageError> {
    let m = Manifest {
        format: 1,
        suite: &opts.suite,
        arch: "riscv64",
        mirror: &opts.mirror,
        kernel: ManifestKernel {
            file: "vmlinux",
            version: &info.kernel_version,
            package: &info.kernel_package.name,
            package_version: &info.kernel_package.version,
            summary: &info.kernel,
        },
        initrd: ManifestInitrd {
            file: "initrd.img",
            format: "newc cpio, gzip",
            size: info.initrd_size,
            uncompressed_size: info.initrd_uncompressed_size,
            init_script,
            modules: &info.modules,
            builtin_modules: &info.builtin_modules,
        },
        boot: ManifestBoot {
            append: &info.append,
            ready_line: initscript::READY_LINE,
            exit_status_prefix: initscript::EXIT_STATUS_PREFIX,
        },
        packages: info
            .packages
            .iter()
            .map(|p| ManifestPackage {
                name: &p.name,
                version: &p.version,
                arch: &p.arch,
            })
            .collect(),
    };
    let body = toml::to_string_pretty(&m).map_err(|e| ImageError::Io {
        what: "cannot render".into(),
        path: info.manifest_path.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(format!(
        "# vmk guest image, written by `vmk image build`.\n\
         # vmlinux: flat RISC-V Linux Image (load at a 2 MiB-aligned RAM base + text_offset,\n\
         #          reserve image_size bytes, enter at its first byte with a0=hartid, a1=dtb).\n\
         # initrd.img: gzip-compressed newc cpio; /init prints ready_line on the console,\n\
         #          runs the init script if any, prints exit_status_prefix + status, powers off.\n\
         {body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_is_gzipped_newc_with_console() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("init"), "#!/bin/busybox sh\n").unwrap();
        let out = t.path().join("initrd.img");
        let (size, skipped) = write_initrd(&root, &out).unwrap();
        assert!(skipped.is_empty());
        let gz = std::fs::read(&out).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        assert!(raw.len() as u64 > size);
        let e = cpio::read_newc(&raw).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "init", "dev/console", "dev/null"]);
        assert!(!t.path().join("initrd.img.tmp").exists());
    }

    #[test]
    fn manifest_is_valid_toml() {
        let opts = ImageOptions::new("/tmp/x");
        let info = ImageInfo {
            kernel_path: "/tmp/x/vmlinux".into(),
            initrd_path: "/tmp/x/initrd.img".into(),
            manifest_path: "/tmp/x/image.toml".into(),
            kernel_version: "6.12.1-riscv64".into(),
            kernel_package: PackageRef {
                name: "linux-image-6.12.1-riscv64".into(),
                version: "6.12.1-1".into(),
                arch: "riscv64".into(),
            },
            kernel: KernelSummary {
                format: "riscv-image".into(),
                source_format: "flat Image".into(),
                size: 10,
                text_offset: 0x200000,
                image_size: 20,
                efi_stub: true,
            },
            packages: vec![PackageRef {
                name: "busybox-static".into(),
                version: "1:1.37.0-6".into(),
                arch: "riscv64".into(),
            }],
            modules: vec!["kernel/fs/ext4/ext4.ko".into()],
            builtin_modules: vec![],
            initrd_size: 1,
            initrd_uncompressed_size: 2,
            append: DEFAULT_APPEND.into(),
            downloaded: 0,
            lists_updated: false,
        };
        let text = render_manifest(&opts, &info, true).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["kernel"]["version"].as_str(), Some("6.12.1-riscv64"));
        assert_eq!(v["kernel"]["text_offset"].as_integer(), Some(0x200000));
        assert_eq!(
            v["boot"]["append"].as_str(),
            Some("console=ttyS0 earlycon=sbi")
        );
        assert_eq!(v["packages"][0]["version"].as_str(), Some("1:1.37.0-6"));
        assert_eq!(v["initrd"]["init_script"].as_bool(), Some(true));
    }
}
