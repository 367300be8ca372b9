//! The text descriptor: a separate `.vmdk` file for flat and split disks, or embedded in the
//! sparse extent of a monolithicSparse or streamOptimized disk.
//!
//! ```text
//! # Disk DescriptorFile
//! version=1
//! CID=2e5d1a37
//! parentCID=ffffffff
//! createType="twoGbMaxExtentSparse"
//!
//! # Extent description
//! RW 4192256 SPARSE "disk-s001.vmdk"
//! RW 2048 SPARSE "disk-s002.vmdk"
//!
//! # The Disk Data Base
//! #DDB
//! ddb.adapterType = "lsilogic"
//! ```
//!
//! CID rules: `CID` is a random content id that changes the first time a disk is modified
//! after it is opened; `parentCID` is `ffffffff` for a disk without parent, else the CID its
//! parent had when this delta disk was created. A parent whose CID no longer matches was
//! changed underneath its child, and the child is refused.

use std::fmt::Write as _;

use crate::error::DescriptorProblem;
use crate::Subformat;

/// `parentCID` of a disk without parent.
pub const NO_PARENT: u32 = 0xffff_ffff;

/// An access mode of an extent line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
    NoAccess,
}

impl Access {
    fn parse(s: &str) -> Option<Access> {
        match s {
            "RW" => Some(Access::ReadWrite),
            "RDONLY" => Some(Access::ReadOnly),
            "NOACCESS" => Some(Access::NoAccess),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// The type of an extent line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentType {
    /// A hosted sparse extent file (with its own header).
    Sparse,
    /// A plain file, from a sector offset on.
    Flat,
    /// A flat extent on VMFS (a plain file, offset 0).
    Vmfs,
    /// No file: reads as zeros.
    Zero,
}

impl ExtentType {
    fn as_str(self) -> &'static str {
        match self {
            ExtentType::Sparse => "SPARSE",
            ExtentType::Flat => "FLAT",
            ExtentType::Vmfs => "VMFS",
            ExtentType::Zero => "ZERO",
        }
    }
}

/// One extent line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    pub access: Access,
    /// Size in sectors.
    pub sectors: u64,
    pub kind: ExtentType,
    /// File name as written (relative to the descriptor's directory unless absolute); empty
    /// for ZERO extents.
    pub file: String,
    /// Start of the extent in a FLAT file, in sectors.
    pub offset: u64,
    /// Line number in the parsed text (from 1), 0 for lines made by vmk.
    pub line: usize,
}

/// A parsed descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub version: u32,
    pub cid: u32,
    pub parent_cid: u32,
    pub create_type: Subformat,
    pub parent_hint: Option<String>,
    pub extents: Vec<ExtentLine>,
    /// Other `key=value` lines of the header section, in order, values as written.
    pub other: Vec<(String, String)>,
    /// `ddb.*` entries, in order, values without quotes.
    pub ddb: Vec<(String, String)>,
}

/// A descriptor parse error: line (from 1; 0 for the whole text), the line's text, problem.
pub type ParseError = (usize, String, DescriptorProblem);

fn unquote(v: &str) -> &str {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

fn parse_cid(v: &str) -> Option<u32> {
    let v = unquote(v);
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    u32::from_str_radix(v, 16).ok()
}

/// createType values that exist but that vmk does not read.
const UNSUPPORTED_CREATE_TYPES: &[&str] = &[
    "vmfsSparse",
    "vmfsThin",
    "vmfsPreallocated",
    "vmfsEagerZeroedThick",
    "vmfsRaw",
    "vmfsRDM",
    "vmfsRawDeviceMap",
    "vmfsPassthroughRawDeviceMap",
    "seSparse",
    "fullDevice",
    "partitionedDevice",
    "monolithicSparseVmfs",
    "custom",
];

impl Descriptor {
    /// Parses descriptor text (up to its first NUL byte).
    pub fn parse(bytes: &[u8]) -> Result<Descriptor, ParseError> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let bytes = &bytes[..end];
        if bytes.len() as u64 > crate::format::MAX_DESCRIPTOR_BYTES {
            return Err((0, String::new(), DescriptorProblem::TooLarge(bytes.len())));
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let good = &bytes[..e.valid_up_to()];
                let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
                let start = good.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                let stop = bytes[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| start + p);
                let shown = String::from_utf8_lossy(&bytes[start..stop]).into_owned();
                return Err((line, shown, DescriptorProblem::NotUtf8));
            }
        };
        let mut d = Descriptor {
            version: 1,
            cid: 0xffff_fffe,
            parent_cid: NO_PARENT,
            create_type: Subformat::MonolithicSparse,
            parent_hint: None,
            extents: Vec::new(),
            other: Vec::new(),
            ddb: Vec::new(),
        };
        let mut have_type = false;
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |p: DescriptorProblem| (n, raw.trim_end_matches('\r').to_string(), p);
            let first = line.split_ascii_whitespace().next().unwrap_or("");
            if let Some(access) = Access::parse(first) {
                let mut e = parse_extent(line, access).map_err(err)?;
                e.line = n;
                d.extents.push(e);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(DescriptorProblem::Syntax));
            };
            let key = key.trim();
            let value = value.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(err(DescriptorProblem::Syntax));
            }
            match key {
                "version" => {
                    d.version = match unquote(value).parse::<u32>() {
                        Ok(v @ 1..=3) => v,
                        _ => return Err(err(DescriptorProblem::BadVersion(value.to_string()))),
                    }
                }
                "CID" => {
                    d.cid = parse_cid(value)
                        .ok_or_else(|| err(DescriptorProblem::BadCid(value.to_string())))?
                }
                "parentCID" => {
                    d.parent_cid = parse_cid(value)
                        .ok_or_else(|| err(DescriptorProblem::BadCid(value.to_string())))?
                }
                "createType" => {
                    let t = unquote(value);
                    d.create_type = match Subformat::from_create_type(t) {
                        Some(s) => s,
                        None if UNSUPPORTED_CREATE_TYPES.contains(&t) => {
                            return Err(err(DescriptorProblem::UnsupportedCreateType(
                                t.to_string(),
                            )))
                        }
                        None => {
                            return Err(err(DescriptorProblem::UnknownCreateType(t.to_string())))
                        }
                    };
                    have_type = true;
                }
                "parentFileNameHint" => d.parent_hint = Some(unquote(value).to_string()),
                k if k.starts_with("ddb.") => {
                    d.ddb.push((k.to_string(), unquote(value).to_string()))
                }
                k => d.other.push((k.to_string(), value.to_string())),
            }
        }
        if !have_type {
            return Err((0, String::new(), DescriptorProblem::MissingCreateType));
        }
        if d.extents.is_empty() {
            return Err((0, String::new(), DescriptorProblem::NoExtents));
        }
        if d.parent_cid != NO_PARENT && d.parent_hint.is_none() {
            return Err((0, String::new(), DescriptorProblem::MissingParentHint));
        }
        Ok(d)
    }

    /// Renders the descriptor in the layout VMware and QEMU write: QEMU finds `CID` with a
    /// plain substring search, so the `CID=` line comes before anything else containing
    /// "CID", and `createType` and `parentFileNameHint` are written without spaces.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# Disk DescriptorFile\n");
        let _ = writeln!(s, "version={}", self.version);
        let _ = writeln!(s, "CID={:08x}", self.cid);
        let _ = writeln!(s, "parentCID={:08x}", self.parent_cid);
        for (k, v) in &self.other {
            let _ = writeln!(s, "{k}={v}");
        }
        let _ = writeln!(s, "createType=\"{}\"", self.create_type.as_str());
        if let Some(h) = &self.parent_hint {
            let _ = writeln!(s, "parentFileNameHint=\"{h}\"");
        }
        s.push_str("\n# Extent description\n");
        for e in &self.extents {
            let _ = write!(s, "{} {} {}", e.access.as_str(), e.sectors, e.kind.as_str());
            if e.kind != ExtentType::Zero || !e.file.is_empty() {
                let _ = write!(s, " \"{}\"", e.file);
            }
            if e.kind == ExtentType::Flat {
                let _ = write!(s, " {}", e.offset);
            }
            s.push('\n');
        }
        s.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in &self.ddb {
            let _ = writeln!(s, "{k} = \"{v}\"");
        }
        s
    }

    /// A `ddb.*` value.
    pub fn ddb(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or adds) a `ddb.*` value.
    pub fn set_ddb(&mut self, key: &str, value: String) {
        match self.ddb.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.ddb.push((key.to_string(), value)),
        }
    }
}

fn parse_extent(line: &str, access: Access) -> Result<ExtentLine, DescriptorProblem> {
    let bad = DescriptorProblem::BadExtent;
    let rest = line[access.as_str().len()..].trim_start();
    let (size, rest) = rest
        .split_once(char::is_whitespace)
        .ok_or(bad("expected `ACCESS SECTORS TYPE \"FILE\"`"))?;
    let sectors: u64 = size
        .parse()
        .map_err(|_| bad("the size is not a decimal number of sectors"))?;
    if sectors == 0 {
        return Err(bad("the size is 0 sectors"));
    }
    if sectors > 1 << 48 {
        return Err(bad("the size is larger than 128 PiB"));
    }
    let rest = rest.trim_start();
    let (kind_s, rest) = match rest.split_once(char::is_whitespace) {
        Some((k, r)) => (k, r.trim_start()),
        None => (rest, ""),
    };
    let kind = match kind_s {
        "SPARSE" => ExtentType::Sparse,
        "FLAT" => ExtentType::Flat,
        "VMFS" => ExtentType::Vmfs,
        "ZERO" => ExtentType::Zero,
        "VMFSSPARSE" | "SESPARSE" | "VMFSRDM" | "VMFSRAW" => {
            return Err(DescriptorProblem::UnsupportedExtentType(kind_s.to_string()))
        }
        _ => return Err(bad("the type must be SPARSE, FLAT, VMFS or ZERO")),
    };
    let (file, rest) = if rest.is_empty() {
        if kind != ExtentType::Zero {
            return Err(bad("the file name is missing"));
        }
        (String::new(), "")
    } else {
        let Some(r) = rest.strip_prefix('"') else {
            return Err(bad("the file name must be in double quotes"));
        };
        let Some(close) = r.find('"') else {
            return Err(bad("the file name has no closing quote"));
        };
        (r[..close].to_string(), r[close + 1..].trim())
    };
    if kind != ExtentType::Zero && file.is_empty() {
        return Err(bad("the file name is empty"));
    }
    let offset = if rest.is_empty() {
        0
    } else {
        if kind != ExtentType::Flat {
            return Err(bad("only FLAT extents take an offset"));
        }
        let o: u64 = rest
            .parse()
            .map_err(|_| bad("the offset is not a decimal number of sectors"))?;
        if o > 1 << 48 {
            return Err(bad("the offset is larger than 128 PiB"));
        }
        o
    };
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
        line: 0,
    })
}

/// Text naming a createType (or starting like a descriptor), possibly padded with NULs (as
/// qemu-img convert leaves it): anything else with NUL bytes is a binary image.
pub(crate) fn looks_like_descriptor(buf: &[u8]) -> bool {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let (text, pad) = buf.split_at(end);
    pad.iter().all(|&b| b == 0)
        && !text.is_empty()
        && (text.starts_with(b"# Disk DescriptorFile")
            || text.windows(10).any(|w| w == b"createType"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: &str = "# Disk DescriptorFile\nversion=1\nCID=a1787386\nparentCID=ffffffff\n\
        createType=\"twoGbMaxExtentSparse\"\n\n# Extent description\n\
        RW 4194304 SPARSE \"t-s001.vmdk\"\nRW 2097152 SPARSE \"t-s002.vmdk\"\n\n\
        # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n";

    #[test]
    fn parses_qemu_output_and_round_trips() {
        let d = Descriptor::parse(QEMU.as_bytes()).unwrap();
        assert_eq!(d.cid, 0xa1787386);
        assert_eq!(d.parent_cid, NO_PARENT);
        assert_eq!(d.create_type, Subformat::TwoGbMaxExtentSparse);
        assert_eq!(d.extents.len(), 2);
        assert_eq!(d.extents[1].sectors, 2097152);
        assert_eq!(d.extents[1].file, "t-s002.vmdk");
        assert_eq!(d.extents[1].line, 9);
        assert_eq!(d.ddb("ddb.adapterType"), Some("ide"));
        let again = Descriptor::parse(d.render().as_bytes()).unwrap();
        let strip = |mut d: Descriptor| {
            d.extents.iter_mut().for_each(|e| e.line = 0);
            d
        };
        assert_eq!(strip(again), strip(d));
    }

    #[test]
    fn crlf_and_flat_offset() {
        let t = "version=1\r\nCID=1\r\nparentCID=ffffffff\r\ncreateType=\"monolithicFlat\"\r\n\
                 RW 100 FLAT \"a b.vmdk\" 7\r\n";
        let d = Descriptor::parse(t.as_bytes()).unwrap();
        assert_eq!(d.extents[0].file, "a b.vmdk");
        assert_eq!(d.extents[0].offset, 7);
    }

    #[test]
    fn precise_errors() {
        let bad = |t: &str| Descriptor::parse(t.as_bytes()).unwrap_err();
        let base = "version=1\nCID=1\ncreateType=\"monolithicFlat\"\n";
        let (line, _, p) = bad(&format!("{base}RW 100 FLAT a.vmdk 0\n"));
        assert_eq!(
            (line, p),
            (
                4,
                DescriptorProblem::BadExtent("the file name must be in double quotes")
            )
        );
        let (line, text, p) = bad("version=1\ncreateType=\"bogus\"\nRW 1 FLAT \"a\" 0\n");
        assert_eq!((line, text.as_str()), (2, "createType=\"bogus\""));
        assert_eq!(p, DescriptorProblem::UnknownCreateType("bogus".into()));
        let (line, _, p) = bad(&format!("{base}this is not a line\n"));
        assert_eq!((line, p), (4, DescriptorProblem::Syntax));
        let (line, _, p) = bad("CID=xyz\n");
        assert_eq!((line, p), (1, DescriptorProblem::BadCid("xyz".into())));
        let (_, _, p) = bad(&format!("{base}RW 100 VMFSSPARSE \"a\"\n"));
        assert_eq!(
            p,
            DescriptorProblem::UnsupportedExtentType("VMFSSPARSE".into())
        );
        let (line, _, p) = bad(base);
        assert_eq!((line, p), (0, DescriptorProblem::NoExtents));
        let (_, _, p) =
            bad("version=1\nparentCID=1234\ncreateType=\"monolithicSparse\"\nRW 1 SPARSE \"x\"\n");
        assert_eq!(p, DescriptorProblem::MissingParentHint);
        let (line, _, p) = Descriptor::parse(b"version=1\nCID=\xff\xfe\n").unwrap_err();
        assert_eq!((line, p), (2, DescriptorProblem::NotUtf8));
    }
}
