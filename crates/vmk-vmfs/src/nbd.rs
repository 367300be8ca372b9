//! A minimal NBD client ([`NbdDevice`]): the fixed newstyle handshake, `NBD_OPT_GO`, and
//! `READ`/`WRITE`/`FLUSH`/`DISC` with simple replies, one request at a time.
//!
//! Written here rather than taken from a crate: the NBD client crates on crates.io are
//! either servers, async (tokio) or kernel-`nbd`-device wrappers; the part a datastore host
//! needs is ~200 lines of a well-specified protocol (the NBD protocol document).
//!
//! The export must be served with one cache for all clients (`qemu-nbd --shared=N` does:
//! one process, one block layer), and this client caches nothing, so every host sees
//! every completed write.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

use crate::device::BlockDevice;
use crate::error::{Result, VmfsError};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Requests are split so one never exceeds what servers accept (32 MiB is common).
const MAX_REQ: usize = 8 << 20;

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

struct Conn {
    s: Box<dyn Stream>,
    handle: u64,
}

/// An NBD export as a [`BlockDevice`].
pub struct NbdDevice {
    conn: Mutex<Conn>,
    size: u64,
    read_only: bool,
    name: String,
}

fn io_err(what: impl Into<String>) -> std::io::Error {
    std::io::Error::other(what.into())
}

fn open_err(name: &str, e: impl std::fmt::Display) -> VmfsError {
    VmfsError::Open(format!("NBD {name}: {e}"))
}

impl NbdDevice {
    /// Connects to `host:port` and opens export `export` ("" = the default export).
    pub fn connect_tcp(addr: &str, export: &str) -> Result<NbdDevice> {
        let s = TcpStream::connect(addr).map_err(|e| open_err(addr, e))?;
        let _ = s.set_nodelay(true);
        Self::handshake(Box::new(s), format!("nbd://{addr}/{export}"), export)
    }

    /// Connects to a Unix socket (`qemu-nbd -k PATH`).
    pub fn connect_unix(path: &Path, export: &str) -> Result<NbdDevice> {
        let s = UnixStream::connect(path).map_err(|e| open_err(&path.display().to_string(), e))?;
        Self::handshake(
            Box::new(s),
            format!("nbd+unix://{}/{export}", path.display()),
            export,
        )
    }

    fn handshake(mut s: Box<dyn Stream>, name: String, export: &str) -> Result<NbdDevice> {
        let e = |x: std::io::Error| open_err(&name, x);
        let mut b8 = [0u8; 8];
        s.read_exact(&mut b8).map_err(e)?;
        if u64::from_be_bytes(b8) != NBDMAGIC {
            return Err(open_err(&name, "not an NBD server (bad magic)"));
        }
        s.read_exact(&mut b8).map_err(e)?;
        if u64::from_be_bytes(b8) != IHAVEOPT {
            return Err(open_err(
                &name,
                "the server speaks only the old-style handshake",
            ));
        }
        let mut b2 = [0u8; 2];
        s.read_exact(&mut b2).map_err(e)?;
        let hflags = u16::from_be_bytes(b2);
        if hflags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(open_err(
                &name,
                "the server does not support the fixed newstyle handshake",
            ));
        }
        let cflags = (hflags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)) as u32;
        s.write_all(&cflags.to_be_bytes()).map_err(e)?;
        // NBD_OPT_GO: export name, no information requests.
        let mut data = Vec::new();
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut req = Vec::new();
        req.extend_from_slice(&IHAVEOPT.to_be_bytes());
        req.extend_from_slice(&OPT_GO.to_be_bytes());
        req.extend_from_slice(&(data.len() as u32).to_be_bytes());
        req.extend_from_slice(&data);
        s.write_all(&req).map_err(e)?;
        let mut size = None;
        let mut tflags = 0u16;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).map_err(e)?;
            let magic = u64::from_be_bytes(h[0..8].try_into().unwrap_or([0; 8]));
            let rtype = u32::from_be_bytes(h[12..16].try_into().unwrap_or([0; 4]));
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap_or([0; 4])) as usize;
            if magic != REPLY_MAGIC {
                return Err(open_err(&name, "bad option reply magic"));
            }
            if len > 1 << 20 {
                return Err(open_err(&name, format!("option reply of {len} bytes")));
            }
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).map_err(e)?;
            if rtype & 0x8000_0000 != 0 {
                return Err(open_err(
                    &name,
                    format!(
                        "export {export:?} refused (NBD error {:#x}: {})",
                        rtype,
                        String::from_utf8_lossy(&payload)
                    ),
                ));
            }
            match rtype {
                REP_INFO
                    if len >= 12 && u16::from_be_bytes([payload[0], payload[1]]) == INFO_EXPORT =>
                {
                    size = Some(u64::from_be_bytes(
                        payload[2..10].try_into().unwrap_or([0; 8]),
                    ));
                    tflags = u16::from_be_bytes([payload[10], payload[11]]);
                }
                REP_ACK => break,
                _ => {}
            }
        }
        let size =
            size.ok_or_else(|| open_err(&name, "the server did not tell the export size"))?;
        Ok(NbdDevice {
            conn: Mutex::new(Conn { s, handle: 0 }),
            size,
            read_only: tflags & TFLAG_READ_ONLY != 0,
            name,
        })
    }

    fn request(
        &self,
        cmd: u16,
        offset: u64,
        len: u32,
        wdata: Option<&[u8]>,
        rdata: Option<&mut [u8]>,
    ) -> std::io::Result<()> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        c.handle += 1;
        let handle = c.handle;
        let mut req = Vec::with_capacity(28 + wdata.map_or(0, |d| d.len()));
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        if let Some(d) = wdata {
            req.extend_from_slice(d);
        }
        c.s.write_all(&req)?;
        if cmd == CMD_DISC {
            return Ok(());
        }
        let mut h = [0u8; 16];
        c.s.read_exact(&mut h)?;
        let magic = u32::from_be_bytes(h[0..4].try_into().unwrap_or([0; 4]));
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap_or([0; 4]));
        let rh = u64::from_be_bytes(h[8..16].try_into().unwrap_or([0; 8]));
        if magic != SIMPLE_REPLY_MAGIC || rh != handle {
            return Err(io_err(format!(
                "NBD protocol error: reply magic {magic:#x} handle {rh} (expected {handle})"
            )));
        }
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err as i32));
        }
        if let Some(d) = rdata {
            c.s.read_exact(d)?;
        }
        Ok(())
    }
}

impl BlockDevice for NbdDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_REQ);
            self.request(
                CMD_READ,
                offset + done as u64,
                n as u32,
                None,
                Some(&mut buf[done..done + n]),
            )?;
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.read_only {
            return Err(io_err("the NBD export is read-only"));
        }
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_REQ);
            self.request(
                CMD_WRITE,
                offset + done as u64,
                n as u32,
                Some(&buf[done..done + n]),
                None,
            )?;
            done += n;
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.request(CMD_FLUSH, 0, 0, None, None)
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn name(&self) -> String {
        self.name.clone()
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        let _ = self.request(CMD_DISC, 0, 0, None, None);
    }
}
