//! apt with a private configuration kept in the image cache.
//!
//! Nothing of the host's apt setup is read or changed: `APT_CONFIG` points at a private
//! `apt.conf` that replaces `/etc/apt/apt.conf` and `/etc/apt/apt.conf.d` (so host settings
//! such as disabled `Check-Valid-Until` or docker-clean hooks do not apply), and every
//! directory apt uses is passed with `-o`: sources list, lists, archives, an always-empty dpkg
//! status (so dependencies are resolved as for an empty system), and riscv64 as the only
//! architecture. Signature checks stay on: the source line names the keyring with
//! `signed-by=`, and apt verifies the `InRelease` signature and every package hash.
//!
//! Layout under `<cache>/apt/`:
//! ```text
//! apt.conf            private APT_CONFIG
//! etc/sources.list    deb [arch=riscv64 signed-by=KEYRING] MIRROR SUITE main
//! etc/*.d/            empty parts directories
//! lists/              package lists (apt-get update, at most once a day)
//! cache/archives/     downloaded .deb files (kept: a second build downloads nothing)
//! state/status        empty dpkg status
//! update-stamp        when and for which source line the lists were last updated
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// How long package lists are used before `apt-get update` runs again.
pub const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// A package version chosen by apt.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    pub arch: String,
}

impl PackageRef {
    /// The file name apt gives the downloaded package (`:` in versions becomes `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            quote(&self.name),
            quote(&self.version),
            quote(&self.arch)
        )
    }
}

/// apt's QuoteString(s, "_:") as used for archive file names.
fn quote(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b == b'_' || b == b':' || b == b'%' || b <= 0x20 || b >= 0x7f {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Parses the `Inst` lines of `apt-get -s install`:
/// `Inst libc6 (2.41-12 Debian:13.0/stable [riscv64])`.
pub fn parse_simulation(out: &str) -> Vec<PackageRef> {
    let mut pkgs = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(' ') else {
            continue;
        };
        // An upgrade looks like "Inst foo [old] (new ...)": take the parenthesised part.
        let Some(open) = rest.find('(') else {
            continue;
        };
        let inner = &rest[open + 1..];
        let inner = inner.split(')').next().unwrap_or(inner);
        let Some(version) = inner.split_whitespace().next() else {
            continue;
        };
        let arch = match (inner.rfind('['), inner.rfind(']')) {
            (Some(a), Some(b)) if a < b => &inner[a + 1..b],
            _ => continue,
        };
        pkgs.push(PackageRef {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
        });
    }
    pkgs
}

/// The package names apt's error output says it cannot find.
pub fn unknown_packages(stderr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in stderr.lines() {
        let line = line.trim();
        let name = if let Some(n) = line.strip_prefix("E: Unable to locate package ") {
            Some(n.trim())
        } else if let Some(rest) = line.strip_prefix("E: Package '") {
            // "E: Package 'foo' has no installation candidate"
            rest.split_once('\'').map(|(n, _)| n)
        } else if let Some(rest) = line.strip_prefix("E: Couldn't find any package by ") {
            // "... by glob 'foo'" / "... by regex 'foo'"
            rest.split('\'').nth(1)
        } else {
            None
        };
        if let Some(n) = name {
            if !n.is_empty() && !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
    }
    names
}

/// Checks a Debian package name (policy 5.6.1: `[a-z0-9][a-z0-9+.-]+`).
pub fn check_package_name(name: &str) -> Result<(), &'static str> {
    let b = name.as_bytes();
    if b.len() < 2 {
        return Err("Debian package names have at least two characters");
    }
    if !(b[0].is_ascii_lowercase() || b[0].is_ascii_digit()) {
        return Err("a Debian package name starts with a lowercase letter or a digit");
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(&c))
    {
        return Err("a Debian package name has only lowercase letters, digits, '+', '-' and '.'");
    }
    Ok(())
}

/// Where apt's own output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AptOutput {
    /// apt's progress goes to our stderr as it happens (its live progress bar when stderr is a
    /// terminal); its warnings are reported through the progress callback.
    Stream,
    /// Everything is captured; shown only in error messages.
    Quiet,
}

pub struct CmdResult {
    pub ok: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl CmdResult {
    /// The lines of stderr (and stdout, when captured) worth showing in an error.
    pub fn message(&self) -> String {
        let mut lines: Vec<&str> = self
            .stderr
            .lines()
            .chain(self.stdout.lines())
            .map(str::trim_end)
            .filter(|l| l.starts_with("E:") || l.starts_with("W:") || l.starts_with("Err:"))
            .collect();
        if lines.is_empty() {
            lines = self
                .stderr
                .lines()
                .chain(self.stdout.lines())
                .filter(|l| !l.trim().is_empty())
                .collect();
            let n = lines.len();
            lines = lines.split_off(n.saturating_sub(15));
        }
        let mut msg = format!("apt-get {}", self.status);
        for l in lines {
            msg.push_str("\n    ");
            msg.push_str(l);
        }
        msg
    }
}

/// A private apt setup under `<cache>/apt`.
pub struct Apt {
    pub dir: PathBuf,
    pub archives: PathBuf,
    apt_conf: PathBuf,
    opts: Vec<String>,
    pub source_line: String,
    output: AptOutput,
}

impl Apt {
    /// Creates (or refreshes) the private configuration.
    pub fn prepare(
        cache: &Path,
        mirror: &str,
        suite: &str,
        keyring: &Path,
        output: AptOutput,
    ) -> io::Result<Apt> {
        let dir = cache.join("apt");
        let etc = dir.join("etc");
        for d in [
            etc.join("apt.conf.d"),
            etc.join("sources.list.d"),
            etc.join("preferences.d"),
            etc.join("trusted.gpg.d"),
            dir.join("lists/partial"),
            dir.join("cache/archives/partial"),
            dir.join("state"),
            dir.join("log"),
        ] {
            std::fs::create_dir_all(&d)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", d.display())))?;
        }
        let source_line = format!(
            "deb [arch=riscv64 signed-by={}] {mirror} {suite} main",
            keyring.display()
        );
        write_if_changed(&etc.join("sources.list"), &format!("{source_line}\n"))?;
        // Always empty: dependencies resolve as for a system with nothing installed.
        write_if_changed(&dir.join("state/status"), "")?;
        let apt_conf = dir.join("apt.conf");
        write_if_changed(
            &apt_conf,
            &format!(
                "// Private apt configuration of vmk image build: keeps the host's\n\
                 // /etc/apt/apt.conf and apt.conf.d out.\n\
                 Dir::Etc::main \"/dev/null\";\n\
                 Dir::Etc::parts \"{}\";\n",
                etc.join("apt.conf.d").display()
            ),
        )?;
        let d = |p: &str| dir.join(p).display().to_string();
        let mut opts = vec![
            format!("Dir::Etc::sourcelist={}", d("etc/sources.list")),
            format!("Dir::Etc::sourceparts={}", d("etc/sources.list.d")),
            format!("Dir::Etc::preferences={}", d("etc/preferences")),
            format!("Dir::Etc::preferencesparts={}", d("etc/preferences.d")),
            format!("Dir::Etc::trusted={}", d("etc/trusted.gpg")),
            format!("Dir::Etc::trustedparts={}", d("etc/trusted.gpg.d")),
            format!("Dir::State={}", d("state")),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::State::status={}", d("state/status")),
            format!("Dir::Cache={}", d("cache")),
            format!("Dir::Log={}", d("log")),
            "APT::Architecture=riscv64".into(),
            "APT::Architectures::=riscv64".into(),
            "APT::Install-Recommends=false".into(),
            "APT::Install-Suggests=false".into(),
            "Acquire::Languages=none".into(),
        ];
        // As root apt downloads as the `_apt` user, which cannot enter a cache under /root;
        // download as root instead (signatures and hashes are checked all the same).
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            opts.push("APT::Sandbox::User=root".into());
        }
        Ok(Apt {
            archives: dir.join("cache/archives"),
            dir,
            apt_conf,
            opts,
            source_line,
            output,
        })
    }

    fn stamp_path(&self) -> PathBuf {
        self.dir.join("update-stamp")
    }

    /// The age of the package lists, if they exist and were fetched for the current source
    /// line.
    pub fn lists_age(&self) -> Option<Duration> {
        let stamp = std::fs::read_to_string(self.stamp_path()).ok()?;
        if stamp.trim() != self.source_line {
            return None;
        }
        let has_packages = std::fs::read_dir(self.dir.join("lists"))
            .ok()?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if !has_packages {
            return None;
        }
        let mtime = std::fs::metadata(self.stamp_path()).ok()?.modified().ok()?;
        Some(SystemTime::now().duration_since(mtime).unwrap_or_default())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.env("APT_CONFIG", &self.apt_conf);
        // apt-get must not ask questions or start a pager.
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd.stdin(Stdio::null());
        for o in &self.opts {
            cmd.arg("-o").arg(o);
        }
        if self.output == AptOutput::Quiet {
            cmd.arg("-q");
        }
        cmd.args(args);
        cmd
    }

    /// The command line of an apt-get call, for progress output.
    pub fn describe(&self, args: &[&str]) -> String {
        format!(
            "APT_CONFIG={} apt-get -o {} {}",
            self.apt_conf.display(),
            self.opts.join(" -o "),
            args.join(" ")
        )
    }

    /// Runs apt-get. `capture` forces stdout to be captured (for parsing).
    fn run(&self, args: &[&str], cwd: Option<&Path>, capture: bool) -> io::Result<CmdResult> {
        let mut cmd = self.command(args);
        if let Some(c) = cwd {
            cmd.current_dir(c);
        }
        cmd.stderr(Stdio::piped());
        if capture || self.output == AptOutput::Quiet {
            cmd.stdout(Stdio::piped());
        } else {
            // apt's progress goes to our stderr, live.
            use std::os::fd::AsFd;
            let err = io::stderr().as_fd().try_clone_to_owned()?;
            cmd.stdout(Stdio::from(err));
        }
        let out = cmd.spawn()?.wait_with_output()?;
        Ok(CmdResult {
            ok: out.status.success(),
            status: match out.status.code() {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".to_string(),
            },
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    pub fn update(&self) -> io::Result<CmdResult> {
        let r = self.run(&["update"], None, false)?;
        // apt-get update exits 0 even when some index could not be fetched or verified
        // (those are "W:" lines); only a clean run counts.
        let failed = r.stderr.lines().any(|l| {
            l.starts_with("E:")
                || l.starts_with("W: Failed to fetch")
                || l.starts_with("W: GPG error")
                || l.starts_with("W: Some index files failed")
        });
        if r.ok && !failed {
            std::fs::write(self.stamp_path(), format!("{}\n", self.source_line))?;
        }
        Ok(CmdResult {
            ok: r.ok && !failed,
            ..r
        })
    }

    /// What `apt-get install` would install on an empty system, without downloading.
    pub fn simulate_install(
        &self,
        packages: &[String],
    ) -> io::Result<(CmdResult, Vec<PackageRef>)> {
        let mut args = vec!["-s", "install"];
        args.extend(packages.iter().map(String::as_str));
        let r = self.run(&args, None, true)?;
        let pkgs = if r.ok {
            parse_simulation(&r.stdout)
        } else {
            Vec::new()
        };
        Ok((r, pkgs))
    }

    /// Packages whose .deb is not in the archive cache yet.
    pub fn missing(&self, pkgs: &[PackageRef]) -> Vec<PackageRef> {
        pkgs.iter()
            .filter(|p| !self.archives.join(p.deb_file_name()).is_file())
            .cloned()
            .collect()
    }

    /// Downloads exactly these package versions into the archive cache (`apt-get download`
    /// verifies each file's hash against the signed package lists).
    pub fn download(&self, pkgs: &[PackageRef]) -> io::Result<CmdResult> {
        let specs: Vec<String> = pkgs
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        let mut args = vec!["download"];
        args.extend(specs.iter().map(String::as_str));
        self.run(&args, Some(&self.archives), false)
    }
}

fn write_if_changed(path: &Path, content: &str) -> io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    std::fs::write(path, content)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_lines_are_parsed() {
        let out = "NOTE: This is only a simulation!\n\
            Inst readline-common (8.2-6 Debian:13.8/stable [all])\n\
            Inst busybox-static (1:1.37.0-6+b9 Debian:13.8/stable [riscv64])\n\
            Inst libgcc-s1 (14.2.0-19 Debian:13.8/stable [riscv64]) []\n\
            Inst foo [1.0] (2.0 Debian:13.8/stable [riscv64])\n\
            Conf libc6 (2.41-12 Debian:13.8/stable [riscv64])\n";
        let p = parse_simulation(out);
        assert_eq!(p.len(), 4);
        assert_eq!(
            p[1],
            PackageRef {
                name: "busybox-static".into(),
                version: "1:1.37.0-6+b9".into(),
                arch: "riscv64".into()
            }
        );
        assert_eq!(p[0].arch, "all");
        assert_eq!(p[2].name, "libgcc-s1");
        assert_eq!(p[3].version, "2.0");
    }

    #[test]
    fn deb_file_names_match_apt() {
        let p = PackageRef {
            name: "busybox-static".into(),
            version: "1:1.37.0-6+b9".into(),
            arch: "riscv64".into(),
        };
        assert_eq!(
            p.deb_file_name(),
            "busybox-static_1%3a1.37.0-6+b9_riscv64.deb"
        );
    }

    #[test]
    fn unknown_package_errors_name_the_package() {
        let err = "Reading package lists...\n\
            E: Unable to locate package no-such-pkg\n\
            E: Package 'virtual-thing' has no installation candidate\n\
            E: Couldn't find any package by glob 'x*'\n";
        assert_eq!(
            unknown_packages(err),
            vec!["no-such-pkg", "virtual-thing", "x*"]
        );
        assert!(unknown_packages("E: Some other error\n").is_empty());
    }

    #[test]
    fn package_names_are_checked() {
        assert!(check_package_name("sqlite3").is_ok());
        assert!(check_package_name("libstdc++6").is_ok());
        assert!(check_package_name("g++-14").is_ok());
        assert!(check_package_name("-oDebug::x=1").is_err());
        assert!(check_package_name("Foo").is_err());
        assert!(check_package_name("a").is_err());
        assert!(check_package_name("foo bar").is_err());
        assert!(check_package_name("foo/bar").is_err());
    }
}
