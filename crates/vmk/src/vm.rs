//! `vmk vm ...`: the host's VMs, through its API. Each command is a function of a
//! [`Client`] and an output, so the tests run them against a fake host served in-process.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use vmk_api::client::{Client, Console};
use vmk_api::model::STOP_TIMEOUT_DEFAULT_SECS;
use vmk_api::model::{ShareLevel, Shares, VmDefinition, VmInfo, VmState};

use crate::error::CmdError;
use crate::fmt::{fmt_bytes, fmt_duration, fmt_exit, fmt_time, state_name};
use crate::host::ConnArgs;
use crate::term::RawMode;
use crate::top;

#[derive(Debug, Args)]
pub struct VmArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub cmd: VmCommand,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Define a VM from a TOML file (name, cpus, memory, [boot], [[disk]], ...). Relative
    /// paths in the file are relative to the file's directory.
    Create { file: PathBuf },
    /// Replace a stopped VM's definition with a TOML file (as `vmk vm create FILE` takes;
    /// relative paths are relative to the file's directory). The file's `name` must be NAME
    /// (VMs cannot be renamed). The VM keeps its state, last exit and console log. Print the
    /// current definition with `vmk vm info NAME --toml`.
    Edit { name: String, file: PathBuf },
    /// Change settings of a VM: `vmk vm set web1 cpus=4 memory=2G`.
    ///
    /// Keys: cpus (vCPUs), memory (512M, 2G, ...), autostart (true/false: start with the
    /// host), append (the kernel command line; empty for the image's default), and the CPU
    /// resources: cpu_shares (low, normal, high or shares per vCPU), cpu_reservation and
    /// cpu_limit (MHz, e.g. 1500 or 2.5GHz; cpu_limit=none), cpu_affinity (host CPUs, e.g.
    /// 0-3,6; any). The CPU resources of a running VM change at once
    /// (`vmk vm set web1 cpu_shares=high cpu_limit=1500`); other keys need a stopped VM.
    /// Other changes: `vmk vm edit NAME FILE`.
    #[command(verbatim_doc_comment)]
    Set {
        name: String,
        /// KEY=VALUE settings, applied together.
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// List the VMs: name, state, vCPUs, memory, how the last run ended.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a VM: its definition, state and last run.
    Info {
        name: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        /// Print only the definition, as TOML: a file for `vmk vm edit NAME FILE` (or
        /// `vmk vm create`).
        #[arg(long, conflicts_with = "json")]
        toml: bool,
    },
    /// Start a stopped or crashed VM.
    Start { name: String },
    /// Ask the guest to shut down; the host powers it off after the timeout. Waits until the
    /// VM is stopped unless --no-wait.
    Stop {
        name: String,
        /// Seconds the guest gets before it is powered off [default: 30].
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Return once the host has asked the guest (the VM is then stopping).
        #[arg(long)]
        no_wait: bool,
    },
    /// Power the VM off now (no shutdown in the guest).
    Poweroff { name: String },
    /// Power a running VM off and start it again.
    Reset { name: String },
    /// Delete a stopped VM's definition and logs.
    Delete { name: String },
    /// Attach to the VM's serial console (Ctrl-A d detaches; the VM keeps running).
    Console { name: String },
    /// Live per-VM CPU, instructions, memory and disk I/O, like esxtop (q quits). %USED is
    /// esxtop's: 100 = one host CPU (a VM with 2 busy vCPUs shows 200).
    Top(top::TopArgs),
}

pub fn run(args: VmArgs) -> Result<(), CmdError> {
    let c = args.conn.client()?;
    let mut stdout = std::io::stdout().lock();
    let out: &mut dyn Write = &mut stdout;
    match args.cmd {
        VmCommand::Create { file } => create(&c, &file, out),
        VmCommand::Edit { name, file } => edit(&c, &name, &file, out),
        VmCommand::Set { name, settings } => set(&c, &name, &settings, out),
        VmCommand::List { json } => list(&c, json, out),
        VmCommand::Info { name, json, toml } => info(&c, &name, json, toml, out),
        VmCommand::Start { name } => report(out, &c.start(&name)?),
        VmCommand::Stop {
            name,
            timeout,
            no_wait,
        } => stop(
            &c,
            &name,
            timeout.map(Duration::from_secs),
            !no_wait,
            Duration::from_millis(200),
            out,
        ),
        VmCommand::Poweroff { name } => report(out, &c.poweroff(&name)?),
        VmCommand::Reset { name } => report(out, &c.reset(&name)?),
        VmCommand::Delete { name } => {
            c.delete(&name)?;
            writeln!(out, "{name}: deleted")?;
            Ok(())
        }
        VmCommand::Console { name } => {
            drop(stdout);
            console(&c, &name)
        }
        VmCommand::Top(a) => top::run(&c, &a, out),
    }
}

/// Reads a VM definition (TOML), making relative paths relative to the file's directory.
pub fn load_definition(file: &Path) -> Result<VmDefinition, CmdError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the VM definition {}: {e}", file.display()))?;
    let mut def: VmDefinition =
        toml::from_str(&text).map_err(|e| format!("VM definition {}: {e}", file.display()))?;
    let base =
        std::path::absolute(file).map_err(|e| format!("cannot resolve {}: {e}", file.display()))?;
    let base = base.parent().unwrap_or(Path::new("/"));
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    for p in [
        &mut def.boot.image,
        &mut def.boot.kernel,
        &mut def.boot.initrd,
    ]
    .into_iter()
    .flatten()
    {
        resolve(p);
    }
    for d in &mut def.disks {
        // `[ds] dir/file.vmdk` is on a datastore, not relative to anything here.
        if vmk_machine::datastore::DsPath::from_path(&d.path).is_none() {
            resolve(&mut d.path);
        }
    }
    Ok(def)
}

fn create(c: &Client, file: &Path, out: &mut dyn Write) -> Result<(), CmdError> {
    let vm = c.create(&load_definition(file)?)?;
    writeln!(
        out,
        "{}: created ({}); start it with `vmk vm start {}`",
        vm.name,
        state_name(vm.state),
        vm.name
    )?;
    Ok(())
}

fn edit(c: &Client, name: &str, file: &Path, out: &mut dyn Write) -> Result<(), CmdError> {
    let def = load_definition(file)?;
    if def.name != name {
        return Err(format!(
            "{} defines VM '{}', not '{name}': a VM cannot be renamed; set `name = \"{name}\"` \
             in the file (to rename, create a VM with the new name and delete '{name}')",
            file.display(),
            def.name
        )
        .into());
    }
    let vm = c.update(name, &def)?;
    writeln!(
        out,
        "{name}: definition replaced from {} ({})",
        file.display(),
        state_name(vm.state)
    )?;
    Ok(())
}

/// The keys `vmk vm set` knows.
const SET_KEYS: &str = "cpus, memory, autostart, append, cpu_shares, cpu_reservation, \
                        cpu_limit, cpu_affinity";

/// Applies one `KEY=VALUE` of `vmk vm set` to `def`; returns what changed, for people.
fn apply_setting(def: &mut VmDefinition, setting: &str) -> Result<String, CmdError> {
    let (key, value) = setting.split_once('=').ok_or_else(|| {
        format!("'{setting}' is not KEY=VALUE (e.g. cpus=4, memory=2G; keys: {SET_KEYS})")
    })?;
    let (key, value) = (key.trim(), value.trim());
    Ok(match key {
        "cpus" => {
            let n: u32 = value
                .parse()
                .map_err(|_| format!("cpus={value}: not a number of vCPUs (e.g. cpus=4)"))?;
            let was = std::mem::replace(&mut def.cpus, n);
            format!("cpus {was} -> {n}")
        }
        "memory" => {
            let bytes = vmk_api::model::parse_size(value).map_err(|e| format!("memory: {e}"))?;
            let was = std::mem::replace(&mut def.memory.0, bytes);
            format!("memory {} -> {}", fmt_bytes(was), fmt_bytes(bytes))
        }
        "autostart" => {
            let on = match value.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => true,
                "false" | "no" | "off" | "0" => false,
                _ => {
                    return Err(format!(
                        "autostart={value}: say true or false (e.g. autostart=true)"
                    )
                    .into())
                }
            };
            let was = std::mem::replace(&mut def.autostart, on);
            format!("autostart {was} -> {on}")
        }
        "cpu_shares" => {
            let new = match value.to_ascii_lowercase().as_str() {
                "low" => Shares::Level(ShareLevel::Low),
                "normal" => Shares::Level(ShareLevel::Normal),
                "high" => Shares::Level(ShareLevel::High),
                n => Shares::Custom(n.parse().map_err(|_| {
                    format!(
                        "cpu_shares={value}: say low, normal, high or a number of shares per \
                         vCPU (e.g. cpu_shares=high)"
                    )
                })?),
            };
            let was = std::mem::replace(&mut def.resources.cpu_shares, new);
            format!("cpu_shares {} -> {}", fmt_shares(&was), fmt_shares(&new))
        }
        "cpu_reservation" | "cpu_reservation_mhz" => {
            let mhz = parse_mhz(key, value)?.unwrap_or(0);
            let was = std::mem::replace(&mut def.resources.cpu_reservation_mhz, mhz);
            format!("cpu_reservation {was} MHz -> {mhz} MHz")
        }
        "cpu_limit" | "cpu_limit_mhz" => {
            let mhz = parse_mhz(key, value)?;
            let show = |l: Option<u64>| l.map_or("none".to_string(), |l| format!("{l} MHz"));
            let was = std::mem::replace(&mut def.resources.cpu_limit_mhz, mhz);
            format!("cpu_limit {} -> {}", show(was), show(mhz))
        }
        "cpu_affinity" => {
            let new = match value.to_ascii_lowercase().as_str() {
                "" | "any" | "none" => None,
                list => Some(vmk_sched::topology::parse_cpu_list(list).map_err(|e| {
                    format!("cpu_affinity={value}: {e} (e.g. cpu_affinity=0-3,6, or any)")
                })?),
            };
            let show = |a: &Option<Vec<u32>>| match a {
                Some(a) => format!("{a:?}"),
                None => "any".to_string(),
            };
            let was = std::mem::replace(&mut def.resources.cpu_affinity, new);
            format!(
                "cpu_affinity {} -> {}",
                show(&was),
                show(&def.resources.cpu_affinity)
            )
        }
        "append" => {
            let new = (!value.is_empty()).then(|| value.to_string());
            let show = |a: &Option<String>| match a {
                Some(a) => format!("'{a}'"),
                None => "(the image's)".to_string(),
            };
            let was = std::mem::replace(&mut def.boot.append, new);
            format!("append {} -> {}", show(&was), show(&def.boot.append))
        }
        _ => {
            return Err(format!(
                "unknown setting '{key}' (keys: {SET_KEYS}; for other changes use `vmk vm edit \
                 NAME FILE`)"
            )
            .into())
        }
    })
}

/// A MHz value of `vm set`: a number (`1500`, `1500MHz`, `2.5GHz`), or none/unlimited.
fn parse_mhz(key: &str, value: &str) -> Result<Option<u64>, CmdError> {
    let v = value.trim().to_ascii_lowercase();
    if matches!(v.as_str(), "none" | "unlimited" | "") {
        return Ok(None);
    }
    let bad =
        || format!("{key}={value}: not a frequency (e.g. {key}=1500 for 1500 MHz, or 2.5GHz)");
    let mhz = if let Some(g) = v.strip_suffix("ghz") {
        g.trim().parse::<f64>().map_err(|_| bad())? * 1000.0
    } else {
        v.strip_suffix("mhz")
            .unwrap_or(&v)
            .trim()
            .parse::<f64>()
            .map_err(|_| bad())?
    };
    if !mhz.is_finite() || mhz < 0.0 {
        return Err(bad().into());
    }
    Ok(Some(mhz.round() as u64))
}

/// `vmk vm set`: reads the VM's definition, applies the settings and replaces it. (Two
/// concurrent changes of one VM: the last one wins.)
fn set(c: &Client, name: &str, settings: &[String], out: &mut dyn Write) -> Result<(), CmdError> {
    let mut def = c.info(name)?.definition;
    let changes = settings
        .iter()
        .map(|s| apply_setting(&mut def, s))
        .collect::<Result<Vec<_>, _>>()?;
    let vm = c.update(name, &def)?;
    writeln!(
        out,
        "{name}: {} ({})",
        changes.join(", "),
        state_name(vm.state)
    )?;
    Ok(())
}

fn list(c: &Client, json: bool, out: &mut dyn Write) -> Result<(), CmdError> {
    let vms = c.list()?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&vms)?)?;
    } else {
        out.write_all(format_list(&vms).as_bytes())?;
    }
    Ok(())
}

fn info(
    c: &Client,
    name: &str,
    json: bool,
    toml: bool,
    out: &mut dyn Write,
) -> Result<(), CmdError> {
    let vm = c.info(name)?;
    if toml {
        let text = toml::to_string(&vm.definition)
            .map_err(|e| format!("cannot write VM '{name}' as TOML: {e}"))?;
        out.write_all(text.as_bytes())?;
    } else if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&vm)?)?;
    } else {
        out.write_all(format_info(&vm, now_unix()).as_bytes())?;
    }
    Ok(())
}

fn report(out: &mut dyn Write, vm: &VmInfo) -> Result<(), CmdError> {
    writeln!(out, "{}: {}", vm.name, state_name(vm.state))?;
    Ok(())
}

/// Stops the VM; with `wait`, polls until it is stopped (or crashed). The host powers the
/// VM off at the timeout, so waiting longer than the timeout plus a margin means the host
/// is in trouble.
fn stop(
    c: &Client,
    name: &str,
    timeout: Option<Duration>,
    wait: bool,
    poll: Duration,
    out: &mut dyn Write,
) -> Result<(), CmdError> {
    let mut vm = c.stop(name, timeout)?;
    if !wait {
        return report(out, &vm);
    }
    let timeout = timeout.unwrap_or(Duration::from_secs(STOP_TIMEOUT_DEFAULT_SECS));
    let deadline = Instant::now() + timeout + Duration::from_secs(30);
    while !matches!(vm.state, VmState::Stopped | VmState::Crashed) {
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} is still {} {} s after the stop; see `vmk vm info {name}`, or \
                 `vmk vm poweroff {name}`",
                state_name(vm.state),
                (timeout + Duration::from_secs(30)).as_secs()
            )
            .into());
        }
        std::thread::sleep(poll);
        vm = c.info(name)?;
    }
    let exit = vm
        .last_exit
        .as_ref()
        .map(|e| format!(" ({})", fmt_exit(e)))
        .unwrap_or_default();
    writeln!(out, "{name}: {}{exit}", state_name(vm.state))?;
    Ok(())
}

/// Ctrl-A escapes typed into the console: Ctrl-A d detaches, Ctrl-A Ctrl-A types a Ctrl-A,
/// anything else after Ctrl-A is dropped.
#[derive(Default)]
struct Escape {
    pending: bool,
}

const CTRL_A: u8 = 0x01;

impl Escape {
    /// The bytes to send, and whether to detach (after sending them).
    fn filter(&mut self, keys: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(keys.len());
        for &k in keys {
            if self.pending {
                self.pending = false;
                match k {
                    b'd' | b'D' => return (out, true),
                    CTRL_A => out.push(CTRL_A),
                    _ => {}
                }
            } else if k == CTRL_A {
                self.pending = true;
            } else {
                out.push(k);
            }
        }
        (out, false)
    }
}

/// How an attached console ended.
#[derive(Debug, PartialEq, Eq)]
enum ConsoleEnd {
    Detached,
    /// The host closed it: the run ended (or the host stopped).
    Closed,
}

/// Copies the console to `out` and `keys` to the console until one side ends. With
/// `escapes`, Ctrl-A d detaches; otherwise keys go through untouched. When `keys` ends
/// the console stays attached (output keeps coming until the run ends).
fn carry(
    console: Console,
    mut keys: impl Read + Send + 'static,
    out: &mut dyn Write,
    escapes: bool,
) -> Result<ConsoleEnd, CmdError> {
    let (mut reader, mut writer) = console.split()?;
    let detached = Arc::new(AtomicBool::new(false));
    let flag = detached.clone();
    // Left blocked on stdin when the console closes first; the process exits after.
    std::thread::spawn(move || {
        let mut esc = Escape::default();
        let mut buf = [0u8; 1024];
        loop {
            let n = match keys.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let (bytes, detach) = if escapes {
                esc.filter(&buf[..n])
            } else {
                (buf[..n].to_vec(), false)
            };
            if writer.write_all(&bytes).is_err() {
                return;
            }
            if detach {
                flag.store(true, Ordering::SeqCst);
                let _ = writer.close();
                return;
            }
        }
    });
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
        }
    }
    Ok(if detached.load(Ordering::SeqCst) {
        ConsoleEnd::Detached
    } else {
        ConsoleEnd::Closed
    })
}

fn console(c: &Client, name: &str) -> Result<(), CmdError> {
    let conn = c.console(name)?;
    let raw = RawMode::enable();
    if raw.is_some() {
        eprint!("vmk: attached to {name}'s console; Ctrl-A d detaches\r\n");
    }
    let end = carry(
        conn,
        std::io::stdin(),
        &mut std::io::stdout().lock(),
        raw.is_some(),
    );
    drop(raw);
    match end? {
        ConsoleEnd::Detached => eprintln!("\nvmk: detached from {name} (it keeps running)"),
        ConsoleEnd::Closed => {
            let how = match c.info(name) {
                Ok(vm) => match (&vm.last_exit, vm.state) {
                    (Some(e), VmState::Stopped | VmState::Crashed) => fmt_exit(e),
                    (_, state) => state_name(state).to_string(),
                },
                Err(e) => e.to_string(),
            };
            eprintln!("\nvmk: {name}'s console closed: {how}");
        }
    }
    Ok(())
}

// ---- formatting ----

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// The `vmk vm list` table.
pub fn format_list(vms: &[VmInfo]) -> String {
    if vms.is_empty() {
        return "no VMs (define one with `vmk vm create FILE.toml`)\n".into();
    }
    let mut rows = vec![vec![
        "NAME".to_string(),
        "STATE".into(),
        "CPUS".into(),
        "MEMORY".into(),
        "LAST EXIT".into(),
    ]];
    for vm in vms {
        let mut exit = vm.last_exit.as_ref().map_or("-".into(), fmt_exit);
        if exit.chars().count() > 60 {
            exit = exit.chars().take(57).collect::<String>() + "...";
        }
        rows.push(vec![
            vm.name.clone(),
            state_name(vm.state).into(),
            vm.definition.cpus.to_string(),
            fmt_bytes(vm.definition.memory.0),
            exit,
        ]);
    }
    table(&rows)
}

fn fmt_shares(s: &Shares) -> String {
    match s {
        Shares::Level(l) => format!("{l:?}").to_lowercase(),
        Shares::Custom(n) => n.to_string(),
    }
}

/// The `vmk vm info` text. `now` (Unix seconds) gives the age of the current run.
pub fn format_info(vm: &VmInfo, now: u64) -> String {
    let d = &vm.definition;
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| lines.push((k.to_string(), v));
    add("name", vm.name.clone());
    let mut state = state_name(vm.state).to_string();
    if let (VmState::Running | VmState::Starting | VmState::Stopping, Some(t)) =
        (vm.state, vm.started_at)
    {
        state += &format!(" for {}", fmt_duration(now.saturating_sub(t)));
    }
    add("state", state);
    add("cpus", d.cpus.to_string());
    add("memory", fmt_bytes(d.memory.0));
    add("autostart", if d.autostart { "yes" } else { "no" }.into());
    let b = &d.boot;
    for (k, v) in [
        ("image", &b.image),
        ("kernel", &b.kernel),
        ("initrd", &b.initrd),
    ] {
        if let Some(p) = v {
            add(k, p.display().to_string());
        }
    }
    if let Some(a) = &b.append {
        add("append", a.clone());
    }
    for (i, disk) in d.disks.iter().enumerate() {
        let mut v = disk.path.display().to_string();
        if disk.read_only {
            v += ", read-only";
        }
        if let Some(s) = &disk.serial {
            v += &format!(", serial {s}");
        }
        add(&format!("disk {i}"), v);
    }
    for (i, nic) in d.nics.iter().enumerate() {
        // The host tells the MAC it gives a NIC without one (generated, stable).
        let mac = match (nic.mac.as_deref(), vm.nics.get(i)) {
            (Some(m), _) => format!(", mac {m}"),
            (None, Some(n)) => format!(", mac {} (generated)", n.mac),
            (None, None) => String::new(),
        };
        add(
            &format!("nic {i}"),
            format!("portgroup {}{mac}", nic.portgroup),
        );
    }
    let r = &d.resources;
    let opt = |v: Option<String>, none: &str| v.unwrap_or_else(|| none.to_string());
    // The memory settings are stored and validated, but nothing acts on them until memory
    // management exists: say so, rather than let them read as in force.
    const NOT_ENFORCED: &str = " (not enforced yet)";
    add(
        "cpu",
        format!(
            "shares {}, reservation {} MHz, limit {}, affinity {}",
            fmt_shares(&r.cpu_shares),
            r.cpu_reservation_mhz,
            opt(r.cpu_limit_mhz.map(|l| format!("{l} MHz")), "none"),
            opt(
                r.cpu_affinity.as_ref().map(|a| format!("{a:?}")),
                "any host CPU"
            ),
        ),
    );
    add(
        "mem",
        format!(
            "shares {}, reservation {}, limit {}{NOT_ENFORCED}",
            fmt_shares(&r.mem_shares),
            fmt_bytes(r.mem_reservation.0),
            opt(r.mem_limit.map(|l| fmt_bytes(l.0)), "none"),
        ),
    );
    add("boots", vm.boots.to_string());
    if let Some(t) = vm.started_at {
        add("started", fmt_time(t));
    }
    if let Some(t) = vm.ended_at {
        add("ended", fmt_time(t));
    }
    if let Some(e) = &vm.last_exit {
        add("last exit", fmt_exit(e));
    }
    if let Some(f) = &d.test_fault_on_console {
        add("test fault", format!("panic on console text {f:?}"));
    }
    // One width for every VM, so that the output of several reads as a table.
    lines
        .iter()
        .map(|(k, v)| format!("{:<11} {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vmk_api::model::HostConfig;
    use vmk_host::fake::{FakeHost, TestServer};

    struct Env {
        _dir: tempfile::TempDir,
        host: Arc<FakeHost>,
        _server: TestServer,
        c: Client,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HostConfig {
            dir: dir.path().join("inv"),
            socket: dir.path().join("vmk.sock"),
            tcp: None,
            ..HostConfig::default()
        };
        let host = Arc::new(FakeHost::new(Duration::from_millis(150)));
        let server = TestServer::start(host.clone(), &cfg).unwrap();
        let c = Client::unix(server.socket());
        Env {
            _dir: dir,
            host,
            _server: server,
            c,
        }
    }

    fn write_def(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"{name}\"\ncpus = 2\nmemory = \"256M\"\n\n[boot]\nimage = \"images/default\"\n\n[[disk]]\npath = \"/abs/d.vmdk\"\nread_only = true\n"
            ),
        )
        .unwrap();
        p
    }

    fn text(f: impl FnOnce(&mut dyn Write) -> Result<(), CmdError>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Resource settings are shown with what they do today: the CPU's are enforced, the
    /// memory's not yet.
    #[test]
    fn info_says_memory_resources_are_not_enforced_yet() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.toml");
        std::fs::write(
            &p,
            "name = \"db\"\ncpus = 2\nmemory = \"1G\"\n[boot]\nkernel = \"/k\"\n\
             [resources]\ncpu_shares = \"high\"\ncpu_limit_mhz = 2000\n\
             mem_reservation = \"256M\"\n",
        )
        .unwrap();
        let vm = VmInfo {
            name: "db".into(),
            state: VmState::Stopped,
            definition: load_definition(&p).unwrap(),
            last_exit: None,
            started_at: None,
            ended_at: None,
            boots: 0,
            nics: vec![],
        };
        let t = format_info(&vm, 0);
        let line = |k: &str| {
            t.lines()
                .find(|l| l.starts_with(k))
                .unwrap_or_else(|| panic!("no {k} in\n{t}"))
                .to_string()
        };
        assert_eq!(
            line("cpu:"),
            "cpu:        shares high, reservation 0 MHz, limit 2000 MHz, affinity any host CPU"
        );
        assert_eq!(
            line("mem:"),
            "mem:        shares normal, reservation 256M, limit none (not enforced yet)"
        );
    }

    #[test]
    fn definitions_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let def = load_definition(&write_def(dir.path(), "web1")).unwrap();
        assert_eq!(def.memory.0, 256 << 20);
        assert_eq!(def.boot.image, Some(dir.path().join("images/default")));
        assert_eq!(def.disks[0].path, PathBuf::from("/abs/d.vmdk"));

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "name = \"x\"\ncpus = \"two\"\n[boot]\n").unwrap();
        let e = load_definition(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("invalid type"), "{e}");
        std::fs::write(&bad, "name = \"x\"\ncolour = 1\n[boot]\n").unwrap();
        let e = load_definition(&bad).unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn create_list_info_lifecycle() {
        let env = env();
        let c = &env.c;
        let dir = tempfile::tempdir().unwrap();
        assert!(text(|o| list(c, false, o)).contains("no VMs"));
        let out = text(|o| create(c, &write_def(dir.path(), "web1"), o));
        assert_eq!(
            out,
            "web1: created (stopped); start it with `vmk vm start web1`\n"
        );
        let e = create(c, &write_def(dir.path(), "web1"), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");

        assert_eq!(text(|o| report(o, &c.start("web1")?)), "web1: running\n");
        let table = text(|o| list(c, false, o));
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines[0], "NAME  STATE    CPUS  MEMORY  LAST EXIT");
        assert_eq!(lines[1], "web1  running  2     256M    -");

        let info_text = text(|o| info(c, "web1", false, false, o));
        assert!(
            info_text.contains("state:      running for "),
            "{info_text}"
        );
        assert!(
            info_text.contains("disk 0:     /abs/d.vmdk, read-only"),
            "{info_text}"
        );
        let json: VmInfo =
            serde_json::from_str(&text(|o| info(c, "web1", true, false, o))).unwrap();
        assert_eq!(json.definition.cpus, 2);

        // Stop waits for the guest (the fake shuts down after 150 ms).
        let poll = Duration::from_millis(20);
        let out = text(|o| stop(c, "web1", None, true, poll, o));
        assert_eq!(out, "web1: stopped (exit status 0)\n");
        c.start("web1").unwrap();
        let out = text(|o| stop(c, "web1", None, false, poll, o));
        assert_eq!(out, "web1: stopping\n");
        let e = stop(c, "web1", None, true, poll, &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot stop VM 'web1': it is stopping"),
            "{e}"
        );
        std::thread::sleep(Duration::from_millis(200));
        c.start("web1").unwrap();
        // A timeout shorter than the guest needs: powered off.
        let out = text(|o| stop(c, "web1", Some(Duration::ZERO), true, poll, o));
        assert_eq!(out, "web1: stopped (powered off by the host)\n");
        let table = text(|o| list(c, false, o));
        assert!(
            table.contains("web1  stopped  2     256M    powered off by the host"),
            "{table}"
        );

        let e = c.info("nope").unwrap_err();
        assert!(e.to_string().contains("VM 'nope' does not exist"), "{e}");
        c.delete("web1").unwrap();
        assert!(text(|o| list(c, true, o)).trim() == "[]");
    }

    #[test]
    fn edit_and_set_change_a_stopped_vm() {
        let env = env();
        let c = &env.c;
        let dir = tempfile::tempdir().unwrap();
        create(c, &write_def(dir.path(), "web1"), &mut Vec::new()).unwrap();

        // edit: a new file, relative paths relative to it.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("web1.toml");
        std::fs::write(
            &file,
            "name = \"web1\"\ncpus = 4\nmemory = \"1G\"\n[boot]\nimage = \"img\"\n",
        )
        .unwrap();
        let out = text(|o| edit(c, "web1", &file, o));
        assert_eq!(
            out,
            format!(
                "web1: definition replaced from {} (stopped)\n",
                file.display()
            )
        );
        let d = c.info("web1").unwrap().definition;
        assert_eq!((d.cpus, d.memory.0), (4, 1 << 30));
        assert_eq!(d.boot.image, Some(sub.join("img")));
        assert!(d.disks.is_empty());

        // `info --toml` writes a file that `edit` takes back unchanged.
        let dumped = dir.path().join("dumped.toml");
        std::fs::write(&dumped, text(|o| info(c, "web1", false, true, o))).unwrap();
        assert_eq!(load_definition(&dumped).unwrap(), d);
        edit(c, "web1", &dumped, &mut Vec::new()).unwrap();
        assert_eq!(c.info("web1").unwrap().definition, d);

        // A file for another VM: refused before anything is sent, the VM unchanged.
        let other = write_def(dir.path(), "web2");
        let e = edit(c, "web1", &other, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("defines VM 'web2', not 'web1'"), "{e}");
        assert_eq!(c.info("web1").unwrap().definition.cpus, 4);

        // set: several keys at once.
        let out = text(|o| {
            set(
                c,
                "web1",
                &[
                    "cpus=2".into(),
                    "memory=512M".into(),
                    "autostart=true".into(),
                    "append=console=hvc0 quiet".into(),
                ],
                o,
            )
        });
        assert_eq!(
            out,
            "web1: cpus 4 -> 2, memory 1G -> 512M, autostart false -> true, append \
             (the image's) -> 'console=hvc0 quiet' (stopped)\n"
        );
        let d = c.info("web1").unwrap().definition;
        assert_eq!((d.cpus, d.memory.0, d.autostart), (2, 512 << 20, true));
        assert_eq!(d.boot.append.as_deref(), Some("console=hvc0 quiet"));

        // Bad settings are refused before anything is sent; the host refuses bad values.
        for (bad, want) in [
            ("cpus", "is not KEY=VALUE"),
            ("cpus=two", "not a number of vCPUs"),
            ("memory=2X", "unknown size suffix"),
            ("autostart=maybe", "say true or false"),
            ("colour=red", "unknown setting 'colour'"),
            ("cpus=99", "out of range"),
        ] {
            let e = set(c, "web1", &[bad.into()], &mut Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert_eq!(c.info("web1").unwrap().definition, d);

        // A running VM is refused with the host's message; it keeps its definition.
        c.start("web1").unwrap();
        let e = set(c, "web1", &["cpus=1".into()], &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is running") && e.contains("stop it first"),
            "{e}"
        );
        let e = edit(c, "web1", &file, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is running") && e.contains("stop it first"),
            "{e}"
        );
        assert_eq!(c.info("web1").unwrap().definition, d);
    }

    #[test]
    fn console_carries_keys_and_output_and_detaches() {
        let env = env();
        let c = &env.c;
        c.create(
            &load_definition(&write_def(tempfile::tempdir().unwrap().path(), "web1")).unwrap(),
        )
        .unwrap();
        c.start("web1").unwrap();
        env.host.guest_output("web1", b"login: ").unwrap();
        // The keys are typed once the prompt is on the screen. Ctrl-A Ctrl-A types one
        // Ctrl-A; Ctrl-A d detaches (what follows is not sent).
        let (keys, mut typing) = std::os::unix::net::UnixStream::pair().unwrap();
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let typist = std::thread::spawn(move || {
            seen.recv().unwrap();
            typing.write_all(b"root\r\x01\x01x\x01dnot sent").unwrap();
            typing
        });
        let mut out = Screen {
            shown: Vec::new(),
            prompt: Some(seen_tx),
        };
        let end = carry(c.console("web1").unwrap(), keys, &mut out, true).unwrap();
        drop(typist.join().unwrap());
        assert_eq!(end, ConsoleEnd::Detached);
        assert_eq!(out.shown, b"login: ");
        // The keys sent before detaching reach the guest (the host may read them after the
        // client has gone).
        let deadline = Instant::now() + Duration::from_secs(10);
        while env.host.guest_input("web1").unwrap() != b"root\r\x01x" {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                env.host.guest_input("web1")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(c.info("web1").unwrap().state, VmState::Running);

        // Without escapes (stdin not a terminal) keys pass untouched, and the console stays
        // attached after they end, until the run ends.
        let host = env.host.clone();
        let ender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            host.guest_output("web1", b"bye\n").unwrap();
            host.guest_poweroff("web1", 0).unwrap();
        });
        let mut out = Vec::new();
        let keys = Cursor::new(b"\x01d".to_vec());
        let end = carry(c.console("web1").unwrap(), keys, &mut out, false).unwrap();
        ender.join().unwrap();
        assert_eq!(end, ConsoleEnd::Closed);
        assert!(out.ends_with(b"bye\n"), "{out:?}");
        assert_eq!(env.host.guest_input("web1").unwrap(), b"root\r\x01x\x01d");
    }

    /// A terminal that says when the login prompt has been shown.
    struct Screen {
        shown: Vec<u8>,
        prompt: Option<std::sync::mpsc::Sender<()>>,
    }

    impl Write for Screen {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.shown.extend_from_slice(b);
            if self.shown.ends_with(b"login: ") {
                if let Some(tx) = self.prompt.take() {
                    let _ = tx.send(());
                }
            }
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn escapes_split_across_reads() {
        let mut e = Escape::default();
        assert_eq!(e.filter(b"ab\x01"), (b"ab".to_vec(), false));
        assert_eq!(e.filter(b"d"), (vec![], true));
        let mut e = Escape::default();
        assert_eq!(e.filter(b"\x01q\x01\x01"), (vec![CTRL_A], false));
    }
}

#[cfg(test)]
mod set_tests {
    use super::*;

    #[test]
    fn cpu_resource_settings() {
        let mut d: VmDefinition = serde_json::from_value(serde_json::json!(
            {"name": "w", "cpus": 2, "boot": {"kernel": "/k"}}
        ))
        .unwrap();
        let c = apply_setting(&mut d, "cpu_shares=high").unwrap();
        assert_eq!(c, "cpu_shares normal -> high");
        apply_setting(&mut d, "cpu_shares=750").unwrap();
        assert_eq!(d.resources.cpu_shares, Shares::Custom(750));
        apply_setting(&mut d, "cpu_limit=1500").unwrap();
        assert_eq!(d.resources.cpu_limit_mhz, Some(1500));
        apply_setting(&mut d, "cpu_limit=2.5GHz").unwrap();
        assert_eq!(d.resources.cpu_limit_mhz, Some(2500));
        let c = apply_setting(&mut d, "cpu_limit=none").unwrap();
        assert_eq!(c, "cpu_limit 2500 MHz -> none");
        apply_setting(&mut d, "cpu_reservation=800MHz").unwrap();
        assert_eq!(d.resources.cpu_reservation_mhz, 800);
        apply_setting(&mut d, "cpu_affinity=0-2,5").unwrap();
        assert_eq!(d.resources.cpu_affinity, Some(vec![0, 1, 2, 5]));
        apply_setting(&mut d, "cpu_affinity=any").unwrap();
        assert_eq!(d.resources.cpu_affinity, None);
        for bad in [
            "cpu_shares=lots",
            "cpu_limit=fast",
            "cpu_affinity=3-1",
            "cpu_limit=-5",
        ] {
            let e = apply_setting(&mut d, bad).unwrap_err().to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
        }
    }
}
