//! Kernel modules: which ones the guest needs, in which order to load them, and their
//! decompressed contents.
//!
//! Debian's kernel package does not ship `modules.dep` (its postinst runs `depmod`), so the
//! dependencies are read from each module's own `.modinfo` section (`depends=`, the list that
//! `modpost` computed from symbol references at build time and that `depmod` would write to
//! `modules.dep`, plus `softdep=`). When a kernel tree does ship `modules.dep`, its hard
//! dependencies are used instead. Only the modules in the closure are ever decompressed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a module needs loaded around it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModDeps {
    /// Loaded before the module: its hard dependencies, then its `softdep` "pre:" entries.
    pub pre: Vec<String>,
    /// Loaded after the module (`softdep` "post:").
    pub post: Vec<String>,
}

/// The fields of a module's `.modinfo` section that the image builder uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: Option<String>,
    pub depends: Vec<String>,
    pub softdep_pre: Vec<String>,
    pub softdep_post: Vec<String>,
    pub aliases: Vec<String>,
    pub vermagic: Option<String>,
}

/// The canonical name of a module given a name or a path: the file name without `.ko` and
/// compression suffix, with `-` turned into `_` (as the kernel and kmod do).
pub fn module_name(name_or_path: &str) -> String {
    let base = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    let base = [".xz", ".gz", ".zst"]
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    let base = base.strip_suffix(".ko").unwrap_or(base);
    base.replace('-', "_")
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for raw in section.split(|&b| b == 0) {
        let Ok(entry) = std::str::from_utf8(raw) else {
            continue;
        };
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(value.to_string()),
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(module_name),
            ),
            "softdep" => {
                let (pre, post) = parse_softdep(value);
                info.softdep_pre.extend(pre);
                info.softdep_post.extend(post);
            }
            "alias" => info.aliases.push(value.to_string()),
            "vermagic" => info.vermagic = Some(value.to_string()),
            _ => {}
        }
    }
    info
}

/// Parses a softdep value such as `pre: crc32c ghash post: foo`.
pub fn parse_softdep(value: &str) -> (Vec<String>, Vec<String>) {
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    let mut target: Option<&mut Vec<String>> = None;
    for word in value.split_whitespace() {
        match word {
            "pre:" => target = Some(&mut pre),
            "post:" => target = Some(&mut post),
            w => {
                if let Some(t) = target.as_mut() {
                    t.push(w.to_string());
                }
            }
        }
    }
    (pre, post)
}

/// Reads the `.modinfo` section of an (uncompressed) ELF kernel module.
pub fn modinfo_from_elf(data: &[u8]) -> Result<ModInfo, String> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(data).map_err(|e| format!("not an ELF module: {e}"))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| "no .modinfo section".to_string())?;
    let bytes = section
        .data()
        .map_err(|e| format!("unreadable .modinfo section: {e}"))?;
    Ok(parse_modinfo(bytes))
}

/// One line of `modules.dep`: the module's path (relative to the modules directory) and the
/// names of the modules it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    pub path: String,
    pub deps: Vec<String>,
}

/// Parses `modules.dep` (`path: dep-path dep-path ...` per line) into a map keyed by module
/// name.
pub fn parse_modules_dep(text: &str) -> Result<BTreeMap<String, DepEntry>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, deps) = line
            .split_once(':')
            .ok_or_else(|| format!("modules.dep line {}: no ':' in {line:?}", i + 1))?;
        let path = path.trim();
        if path.is_empty() {
            return Err(format!("modules.dep line {}: empty module path", i + 1));
        }
        out.insert(
            module_name(path),
            DepEntry {
                path: path.to_string(),
                deps: deps.split_whitespace().map(module_name).collect(),
            },
        );
    }
    Ok(out)
}

/// Parses `modules.builtin` (one path per line) into module names.
pub fn parse_modules_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// Parses `modules.builtin.modinfo` (NUL-separated `module.key=value`) into the aliases of
/// built-in modules, alias -> module name.
pub fn parse_builtin_aliases(data: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for raw in data.split(|&b| b == 0) {
        let Ok(entry) = std::str::from_utf8(raw) else {
            continue;
        };
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        if let Some(module) = key.strip_suffix(".alias") {
            out.insert(value.to_string(), module_name(module));
        }
    }
    out
}

/// Computes the load order of `roots` and everything they need: every module comes after its
/// `pre` dependencies and before its `post` ones, each module once. `deps` is asked once per
/// module; cycles (which `depmod` would reject) are broken rather than looping.
pub fn load_order<E>(
    roots: &[String],
    mut deps: impl FnMut(&str) -> Result<ModDeps, E>,
) -> Result<Vec<String>, E> {
    #[derive(PartialEq)]
    enum State {
        Visiting,
        Done,
    }
    fn visit<E>(
        name: &str,
        deps: &mut dyn FnMut(&str) -> Result<ModDeps, E>,
        state: &mut BTreeMap<String, State>,
        order: &mut Vec<String>,
    ) -> Result<(), E> {
        if state.contains_key(name) {
            return Ok(());
        }
        state.insert(name.to_string(), State::Visiting);
        let d = deps(name)?;
        for p in &d.pre {
            visit(p, deps, state, order)?;
        }
        order.push(name.to_string());
        state.insert(name.to_string(), State::Done);
        for p in &d.post {
            visit(p, deps, state, order)?;
        }
        Ok(())
    }
    let mut state = BTreeMap::new();
    let mut order = Vec::new();
    for r in roots {
        visit(r, &mut deps, &mut state, &mut order)?;
    }
    debug_assert!(state.values().all(|s| *s == State::Done));
    Ok(order)
}

/// How a requested module name resolved against a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Module(String),
    Builtin(String),
    NotFound,
}

/// A module selected for the initrd.
#[derive(Debug, Clone)]
pub struct SelectedModule {
    pub name: String,
    /// Path relative to the modules directory, without compression suffix
    /// (e.g. `kernel/fs/ext4/ext4.ko`).
    pub path: String,
    pub data: Vec<u8>,
    pub info: ModInfo,
}

/// The result of [`ModuleTree::select`].
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// In load order.
    pub modules: Vec<SelectedModule>,
    /// Requested or needed names that are built into the kernel.
    pub builtin: Vec<String>,
    pub warnings: Vec<String>,
}

/// The `lib/modules/<version>` directory of an extracted kernel package.
pub struct ModuleTree {
    dir: PathBuf,
    version: String,
    /// name -> path relative to `dir` (with compression suffix)
    files: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
    builtin_aliases: BTreeMap<String, String>,
    modules_dep: Option<BTreeMap<String, DepEntry>>,
    loaded: BTreeMap<String, (Vec<u8>, ModInfo)>,
}

impl ModuleTree {
    pub fn open(dir: &Path, version: &str) -> Result<Self, String> {
        let mut files = BTreeMap::new();
        let kernel_dir = dir.join("kernel");
        walk_modules(&kernel_dir, "kernel", &mut files)
            .map_err(|e| format!("cannot list {}: {e}", kernel_dir.display()))?;
        let builtin = match std::fs::read_to_string(dir.join("modules.builtin")) {
            Ok(t) => parse_modules_builtin(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(format!("cannot read modules.builtin: {e}")),
        };
        let builtin_aliases = match std::fs::read(dir.join("modules.builtin.modinfo")) {
            Ok(d) => parse_builtin_aliases(&d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read modules.builtin.modinfo: {e}")),
        };
        let modules_dep = match std::fs::read_to_string(dir.join("modules.dep")) {
            Ok(t) => Some(parse_modules_dep(&t)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read modules.dep: {e}")),
        };
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            version: version.to_string(),
            files,
            builtin,
            builtin_aliases,
            modules_dep,
            loaded: BTreeMap::new(),
        })
    }

    /// Resolves a module name or alias. Aliases of loadable modules are searched among the
    /// modules whose name contains the alias's stem (`crypto-crc32c` -> `*crc32c*`), which is
    /// how crypto and filesystem aliases are named.
    pub fn resolve(&mut self, name: &str) -> Result<Vec<Resolved>, String> {
        let norm = module_name(name);
        if self.files.contains_key(&norm) {
            return Ok(vec![Resolved::Module(norm)]);
        }
        if self.builtin.contains(&norm) {
            return Ok(vec![Resolved::Builtin(norm)]);
        }
        if let Some(m) = self.builtin_aliases.get(name) {
            return Ok(vec![Resolved::Builtin(m.clone())]);
        }
        let stem = ["crypto-", "fs-", "net-pf-", "devname:"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .unwrap_or(name);
        let stem = module_name(stem);
        let candidates: Vec<String> = self
            .files
            .keys()
            .filter(|k| k.contains(&stem))
            .cloned()
            .collect();
        let mut found = Vec::new();
        for c in candidates {
            let info = &self.load(&c)?.1;
            if info.aliases.iter().any(|a| a == name) {
                found.push(Resolved::Module(c));
            }
        }
        if found.is_empty() {
            found.push(Resolved::NotFound);
        }
        Ok(found)
    }

    fn load(&mut self, name: &str) -> Result<&(Vec<u8>, ModInfo), String> {
        if !self.loaded.contains_key(name) {
            let rel = self
                .files
                .get(name)
                .ok_or_else(|| format!("module {name} not found"))?;
            let path = self.dir.join(rel);
            let data = read_module(&path)?;
            let info = modinfo_from_elf(&data).map_err(|e| format!("{}: {e}", path.display()))?;
            if let Some(v) = &info.vermagic {
                if v.split_whitespace().next() != Some(self.version.as_str()) {
                    return Err(format!(
                        "{} was built for kernel {v:?}, not {}",
                        path.display(),
                        self.version
                    ));
                }
            }
            self.loaded.insert(name.to_string(), (data, info));
        }
        self.loaded
            .get(name)
            .ok_or_else(|| format!("module {name} not found"))
    }

    /// Selects `wanted` and everything it depends on. A wanted name that is neither a module
    /// nor built in is an error; an unresolvable softdep only a warning (softdeps are
    /// optional by definition).
    pub fn select(&mut self, wanted: &[String]) -> Result<Selection, String> {
        let mut sel = Selection::default();
        let mut roots = Vec::new();
        for w in wanted {
            for r in self.resolve(w)? {
                match r {
                    Resolved::Module(m) => roots.push(m),
                    Resolved::Builtin(m) => sel.builtin.push(m),
                    Resolved::NotFound => {
                        return Err(format!(
                            "kernel module {w:?} is neither a loadable module nor built into \
                             kernel {}",
                            self.version
                        ))
                    }
                }
            }
        }
        let mut warnings = Vec::new();
        let mut builtin_deps = Vec::new();
        let order = load_order(&roots, |name| -> Result<ModDeps, String> {
            let info = self.load(name)?.1.clone();
            let mut d = ModDeps::default();
            let hard = match &self.modules_dep {
                Some(dep) => dep.get(name).map(|e| e.deps.clone()).unwrap_or_default(),
                None => info.depends.clone(),
            };
            for h in hard {
                if self.files.contains_key(&h) {
                    d.pre.push(h);
                } else if self.builtin.contains(&h) {
                    builtin_deps.push(h);
                } else {
                    return Err(format!(
                        "module {name} depends on {h}, which this kernel lacks"
                    ));
                }
            }
            for (soft, list) in [
                (&info.softdep_pre, &mut d.pre),
                (&info.softdep_post, &mut d.post),
            ] {
                for s in soft {
                    for r in self.resolve(s)? {
                        match r {
                            Resolved::Module(m) => list.push(m),
                            Resolved::Builtin(m) => builtin_deps.push(m),
                            Resolved::NotFound => warnings.push(format!(
                                "softdep {s:?} of module {name} not found in kernel {}; skipped",
                                self.version
                            )),
                        }
                    }
                }
            }
            Ok(d)
        })?;
        sel.warnings = warnings;
        for b in builtin_deps {
            if !sel.builtin.contains(&b) {
                sel.builtin.push(b);
            }
        }
        for name in order {
            let rel = self.files.get(&name).cloned().unwrap_or_default();
            let (data, info) = self.load(&name)?.clone();
            let path = [".xz", ".gz", ".zst"]
                .iter()
                .find_map(|s| rel.strip_suffix(s))
                .unwrap_or(&rel)
                .to_string();
            sel.modules.push(SelectedModule {
                name,
                path,
                data,
                info,
            });
        }
        Ok(sel)
    }
}

fn walk_modules(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let child = format!("{rel}/{name}");
        if e.file_type()?.is_dir() {
            walk_modules(&e.path(), &child, out)?;
        } else if name.contains(".ko") {
            out.entry(module_name(&name)).or_insert(child);
        }
    }
    Ok(())
}

/// Reads a module file, decompressing `.ko.xz` and `.ko.gz`.
pub fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot decompress {}: {e}", path.display()))?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot decompress {}: {e}", path.display()))?;
    } else if name.ends_with(".zst") {
        return Err(format!(
            "{}: zstd-compressed modules are not supported (Debian's kernels use xz)",
            path.display()
        ));
    } else {
        out = raw;
    }
    Ok(out)
}

/// `modules.dep` text for the selected modules (paths relative to the modules directory), so
/// that `modprobe` inside the guest finds them too.
pub fn render_modules_dep(sel: &[SelectedModule]) -> String {
    let paths: BTreeMap<&str, &str> = sel
        .iter()
        .map(|m| (m.name.as_str(), m.path.as_str()))
        .collect();
    let mut out = String::new();
    for m in sel {
        out.push_str(&m.path);
        out.push(':');
        for d in &m.info.depends {
            if let Some(p) = paths.get(d.as_str()) {
                out.push(' ');
                out.push_str(p);
            }
        }
        out.push('\n');
    }
    out
}

/// `modules.alias` text for the selected modules.
pub fn render_modules_alias(sel: &[SelectedModule]) -> String {
    let mut out = String::new();
    for m in sel {
        for a in &m.info.aliases {
            out.push_str(&format!("alias {a} {}\n", m.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SAMPLE_DEP: &str = "\
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
kernel/drivers/virtio/virtio_mmio.ko.xz:
kernel/drivers/some/vfio-pci.ko.xz: kernel/drivers/vfio/vfio.ko.xz
kernel/drivers/vfio/vfio.ko.xz:
";

    fn order_from_dep(dep: &BTreeMap<String, DepEntry>, roots: &[&str]) -> Vec<String> {
        let roots: Vec<String> = roots.iter().map(|s| s.to_string()).collect();
        load_order(&roots, |n| -> Result<ModDeps, String> {
            let e = dep.get(n).ok_or(format!("unknown {n}"))?;
            Ok(ModDeps {
                pre: e.deps.clone(),
                post: vec![],
            })
        })
        .unwrap()
    }

    fn pos(v: &[String], n: &str) -> usize {
        v.iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} missing from {v:?}"))
    }

    #[test]
    fn closure_from_modules_dep() {
        let dep = parse_modules_dep(SAMPLE_DEP).unwrap();
        assert_eq!(dep["ext4"].path, "kernel/fs/ext4/ext4.ko.xz");
        assert_eq!(dep["ext4"].deps, ["jbd2", "mbcache", "crc16"]);
        assert_eq!(dep["vfio_pci"].deps, ["vfio"], "'-' normalises to '_'");
        let order = order_from_dep(&dep, &["virtio_mmio", "virtio_blk", "virtio_net", "ext4"]);
        assert_eq!(order.len(), 9);
        assert!(pos(&order, "failover") < pos(&order, "net_failover"));
        assert!(pos(&order, "net_failover") < pos(&order, "virtio_net"));
        for d in ["jbd2", "mbcache", "crc16"] {
            assert!(pos(&order, d) < pos(&order, "ext4"));
        }
        assert!(!order.contains(&"vfio".to_string()));
        // Each module once, even when needed twice.
        let order = order_from_dep(&dep, &["virtio_net", "net_failover", "failover"]);
        assert_eq!(order, ["failover", "net_failover", "virtio_net"]);
    }

    #[test]
    fn closure_survives_cycles_and_reports_errors() {
        let order = load_order(&["a".to_string()], |n| -> Result<ModDeps, String> {
            Ok(ModDeps {
                pre: match n {
                    "a" => vec!["b".into()],
                    "b" => vec!["a".into()],
                    _ => vec![],
                },
                post: if n == "a" { vec!["c".into()] } else { vec![] },
            })
        })
        .unwrap();
        assert_eq!(order, ["b", "a", "c"]);
        let err = load_order(&["x".to_string()], |n| -> Result<ModDeps, String> {
            Err(format!("no {n}"))
        });
        assert_eq!(err.unwrap_err(), "no x");
    }

    #[test]
    fn bad_modules_dep_is_rejected() {
        assert!(parse_modules_dep("kernel/a.ko kernel/b.ko\n").is_err());
        assert!(parse_modules_dep(": kernel/b.ko\n").is_err());
        assert!(parse_modules_dep("\n# comment\n").unwrap().is_empty());
    }

    #[test]
    fn modinfo_fields() {
        let info = parse_modinfo(
            b"license=GPL\0softdep=pre: crypto-crc32c post: foo-bar\0alias=fs-ext4\0\
              alias=ext3\0depends=jbd2,mbcache,crc16\0name=ext4\0vermagic=6.12.1 SMP mod_unload\0\0",
        );
        assert_eq!(info.name.as_deref(), Some("ext4"));
        assert_eq!(info.depends, ["jbd2", "mbcache", "crc16"]);
        assert_eq!(info.softdep_pre, ["crypto-crc32c"]);
        assert_eq!(info.softdep_post, ["foo-bar"]);
        assert_eq!(info.aliases, ["fs-ext4", "ext3"]);
        assert!(parse_modinfo(b"depends=\0").depends.is_empty());
        assert_eq!(
            parse_softdep("pre: a b post: c pre: d"),
            (vec!["a".into(), "b".into(), "d".into()], vec!["c".into()])
        );
    }

    #[test]
    fn names_and_builtins() {
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko.xz"),
            "virtio_net"
        );
        assert_eq!(module_name("vfio-pci.ko"), "vfio_pci");
        assert_eq!(module_name("ext4"), "ext4");
        let b = parse_modules_builtin("kernel/drivers/virtio/virtio.ko\nkernel/x/a-b.ko\n\n");
        assert!(b.contains("virtio") && b.contains("a_b"));
        let a =
            parse_builtin_aliases(b"crc32c_riscv.alias=crypto-crc32c\0crc32c_riscv.license=GPL\0");
        assert_eq!(
            a.get("crypto-crc32c").map(String::as_str),
            Some("crc32c_riscv")
        );
    }

    /// A minimal relocatable ELF64 with only a .modinfo section.
    fn fake_ko(modinfo: &str) -> Vec<u8> {
        let info = modinfo.replace(';', "\0").into_bytes();
        let shstr = b"\0.modinfo\0.shstrtab\0";
        let info_off = 64u64;
        let shstr_off = info_off + info.len() as u64;
        let shoff = (shstr_off + shstr.len() as u64 + 7) & !7;
        let mut d = Vec::new();
        d.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
        d.extend_from_slice(&243u16.to_le_bytes()); // EM_RISCV
        d.extend_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(&0u64.to_le_bytes()); // entry
        d.extend_from_slice(&0u64.to_le_bytes()); // phoff
        d.extend_from_slice(&shoff.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes()); // flags
        for v in [64u16, 0, 0, 64, 3, 2] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(&info);
        d.extend_from_slice(shstr);
        d.resize(shoff as usize, 0);
        let sh = |d: &mut Vec<u8>, name: u32, ty: u32, off: u64, size: u64| {
            d.extend_from_slice(&name.to_le_bytes());
            d.extend_from_slice(&ty.to_le_bytes());
            d.extend_from_slice(&0u64.to_le_bytes()); // flags
            d.extend_from_slice(&0u64.to_le_bytes()); // addr
            d.extend_from_slice(&off.to_le_bytes());
            d.extend_from_slice(&size.to_le_bytes());
            d.extend_from_slice(&[0; 8]); // link, info
            d.extend_from_slice(&1u64.to_le_bytes()); // align
            d.extend_from_slice(&0u64.to_le_bytes()); // entsize
        };
        sh(&mut d, 0, 0, 0, 0);
        sh(&mut d, 1, 1, info_off, info.len() as u64);
        sh(&mut d, 10, 3, shstr_off, shstr.len() as u64);
        d
    }

    fn put_module(dir: &Path, rel: &str, modinfo: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(&fake_ko(modinfo)).unwrap();
        std::fs::write(p, enc.finish().unwrap()).unwrap();
    }

    #[test]
    fn module_tree_selects_the_closure() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let vm = "vermagic=6.1-test SMP";
        put_module(
            d,
            "kernel/fs/ext4/ext4.ko.xz",
            &format!("name=ext4;depends=jbd2,crc16;softdep=pre: crypto-crc32c;{vm}"),
        );
        put_module(
            d,
            "kernel/fs/jbd2/jbd2.ko.xz",
            &format!("name=jbd2;depends=;{vm}"),
        );
        put_module(
            d,
            "kernel/lib/crc16.ko.xz",
            &format!("name=crc16;depends=;{vm}"),
        );
        put_module(
            d,
            "kernel/crypto/crc32c_generic.ko.xz",
            &format!("name=crc32c_generic;alias=crypto-crc32c;alias=crc32c;depends=;{vm}"),
        );
        put_module(
            d,
            "kernel/lib/libcrc32c.ko.xz",
            &format!("name=libcrc32c;depends=;{vm}"),
        );
        put_module(
            d,
            "kernel/drivers/virtio/virtio_mmio.ko.xz",
            &format!("name=virtio_mmio;depends=;softdep=post: no-such-thing;{vm}"),
        );
        put_module(
            d,
            "kernel/drivers/other/wrong.ko.xz",
            "name=wrong;vermagic=5.0 SMP",
        );
        std::fs::write(
            d.join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\n",
        )
        .unwrap();

        let mut tree = ModuleTree::open(d, "6.1-test").unwrap();
        let wanted: Vec<String> = ["virtio_mmio", "virtio", "ext4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let sel = tree.select(&wanted).unwrap();
        let names: Vec<&str> = sel.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["virtio_mmio", "jbd2", "crc16", "crc32c_generic", "ext4"]
        );
        assert_eq!(sel.builtin, ["virtio"]);
        assert_eq!(sel.warnings.len(), 1, "{:?}", sel.warnings);
        assert!(sel.warnings[0].contains("no-such-thing"));
        assert_eq!(sel.modules[4].path, "kernel/fs/ext4/ext4.ko");
        assert!(sel.modules[4].data.starts_with(b"\x7fELF"), "decompressed");
        let dep = render_modules_dep(&sel.modules);
        assert!(
            dep.contains("kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n")
        );
        assert!(render_modules_alias(&sel.modules).contains("alias crypto-crc32c crc32c_generic\n"));

        let err = tree.select(&["nope".to_string()]).unwrap_err();
        assert!(
            err.contains("\"nope\"") && err.contains("6.1-test"),
            "{err}"
        );
        let err = tree.select(&["wrong".to_string()]).unwrap_err();
        assert!(err.contains("built for kernel"), "{err}");
    }
}
