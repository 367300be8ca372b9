//! Uplinks: how a vSwitch reaches the physical network.
//!
//! - [`TapUplink`]: a TAP device vmk creates (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`), for
//!   the admin to bridge or move into a network namespace.
//! - [`PacketUplink`]: an `AF_PACKET` socket bound to an existing host interface, in
//!   promiscuous mode (frames for the VMs' MACs must reach it).
//! - [`MemoryUplink`]: frames in memory and a link switch, for tests.
//!
//! Both host uplinks are a few `libc` calls (open + `TUNSETIFF`; `socket` + `bind` +
//! `setsockopt`). The `tun`/`tun-tap` crates wrap the first for async runtimes or not at
//! all maintained, and no crate covers the second with VLAN reconstruction, so vmk makes
//! these calls itself rather than pull a dependency for a fraction of it.
//!
//! Link state (teaming failover) is read from `/sys/class/net/IF/operstate` and `carrier`.
//! A TAP moved into another network namespace is no longer visible there; it is then
//! taken to be up (its traffic still flows through the file descriptor).

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// An uplink's I/O: what the switch sends to and receives from the physical network.
pub trait UplinkIo: Send + Sync {
    /// The uplink's name (the host interface's, for host uplinks).
    fn name(&self) -> &str;
    /// Sends one frame. Must not block for long (the caller is forwarding).
    fn send(&self, frame: &[u8]) -> io::Result<()>;
    /// Waits up to `timeout` for a frame and copies it into `buf`; Ok(None) on timeout.
    fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>>;
    /// Whether the link is up (teaming fails over when it is not).
    fn link_up(&self) -> bool;
}

/// The link state of host interface `ifname` from sysfs: Some(up) if the interface is
/// visible in this network namespace's sysfs.
pub fn sysfs_link_up(ifname: &str) -> Option<bool> {
    let base = std::path::Path::new("/sys/class/net").join(ifname);
    let oper = std::fs::read_to_string(base.join("operstate")).ok()?;
    match oper.trim() {
        // "unknown": drivers without operstate (TAP does report it).
        "up" | "unknown" => {
            // carrier reads fail (EINVAL) while the interface is administratively down.
            let carrier = std::fs::read_to_string(base.join("carrier")).ok();
            Some(carrier.is_some_and(|c| c.trim() == "1"))
        }
        _ => Some(false),
    }
}

fn check_ifname(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "`{name}` is not a valid interface name: 1 to {} characters, no `/`, spaces or NUL",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Waits until `fd` is readable or `timeout` passes.
fn poll_readable(fd: i32, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one pollfd we own.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    if r > 0 && p.revents & (libc::POLLERR | libc::POLLNVAL) != 0 && p.revents & libc::POLLIN == 0 {
        return Err(io::Error::other(format!("poll: revents {:#x}", p.revents)));
    }
    Ok(r > 0)
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A TAP device created by vmk. The interface exists while this value lives (it is not
/// persistent); bring it up and bridge it, or move it into a network namespace.
pub struct TapUplink {
    name: String,
    fd: OwnedFd,
}

impl TapUplink {
    /// Creates TAP interface `name` (needs CAP_NET_ADMIN).
    pub fn create(name: &str) -> io::Result<TapUplink> {
        let cname = check_ifname(name)?;
        let path = c"/dev/net/tun";
        // SAFETY: open with a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open /dev/net/tun to create TAP {name}: {e} (is the tun module loaded, and does vmk have CAP_NET_ADMIN?)"),
            ));
        }
        // SAFETY: fd was just opened and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain data; all zeros is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(cname.as_bytes_with_nul()) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq we own.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create TAP {name}: {e} (needs CAP_NET_ADMIN; the name may be taken by a non-TAP interface)"),
            ));
        }
        Ok(TapUplink {
            name: name.to_string(),
            fd,
        })
    }
}

impl UplinkIo for TapUplink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: write from a slice we own to our fd.
        let r = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        if !poll_readable(self.fd.as_raw_fd(), timeout)? {
            return Ok(None);
        }
        // SAFETY: read into a buffer we own.
        let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // EIO: the interface is down; the monitor sees that through the link state.
            if would_block(&e) || e.raw_os_error() == Some(libc::EIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as usize))
    }

    fn link_up(&self) -> bool {
        sysfs_link_up(&self.name).unwrap_or(true)
    }
}

/// An `AF_PACKET` socket on an existing host interface: frames for the VMs are received
/// in promiscuous mode, frames from them are sent as they are. VLAN tags that the kernel
/// took off into packet metadata are put back.
pub struct PacketUplink {
    name: String,
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketUplink {
    /// Opens an uplink on host interface `ifname` (needs CAP_NET_RAW).
    pub fn open(ifname: &str) -> io::Result<PacketUplink> {
        let cname = check_ifname(ifname)?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no host interface {ifname} (see `ip link`)"),
            ));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open a packet socket for {ifname}: {e} (needs CAP_NET_RAW)"),
            ));
        }
        // SAFETY: fd was just created and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        // SAFETY: sockaddr_ll is plain data; all zeros is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: bind with a sockaddr_ll of the right length.
        let r = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot bind a packet socket to {ifname}: {e}"),
            ));
        }
        let set = |level: i32, opt: i32, val: &[u8], what: &str| -> io::Result<()> {
            // SAFETY: setsockopt with a buffer and its length.
            let r =
                unsafe { libc::setsockopt(raw, level, opt, val.as_ptr().cast(), val.len() as u32) };
            if r < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("{ifname}: cannot set {what}: {e}"),
                ));
            }
            Ok(())
        };
        // SAFETY: packet_mreq is plain data; all zeros is valid.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = ifindex;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: viewing a plain struct as bytes for setsockopt.
        let mreq_bytes = unsafe {
            std::slice::from_raw_parts(
                (&mreq as *const libc::packet_mreq).cast::<u8>(),
                std::mem::size_of::<libc::packet_mreq>(),
            )
        };
        set(
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            mreq_bytes,
            "promiscuous mode",
        )?;
        let one = 1i32.to_ne_bytes();
        set(
            libc::SOL_PACKET,
            libc::PACKET_AUXDATA,
            &one,
            "PACKET_AUXDATA",
        )?;
        // Our own transmissions (and the host's) must not come back as received frames.
        set(
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
            "PACKET_IGNORE_OUTGOING",
        )?;
        Ok(PacketUplink {
            name: ifname.to_string(),
            fd,
            ifindex,
        })
    }

    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }
}

impl UplinkIo for PacketUplink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: send from a slice we own.
        let r = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        if buf.len() < 18 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "receive buffer too small",
            ));
        }
        if !poll_readable(self.fd.as_raw_fd(), timeout)? {
            return Ok(None);
        }
        // Receive 4 bytes in, so a VLAN tag can be put back in front of the EtherType.
        let (head, body) = buf.split_at_mut(4);
        let mut iov = libc::iovec {
            iov_base: body.as_mut_ptr().cast(),
            iov_len: body.len(),
        };
        let mut cmsg = [0u64; 16];
        // SAFETY: msghdr is plain data; all zeros is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        // SAFETY: recvmsg into buffers we own, described by msg.
        let r = unsafe {
            libc::recvmsg(
                self.fd.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if would_block(&e) {
                return Ok(None);
            }
            return Err(e);
        }
        let len = (r as usize).min(body.len());
        let mut vlan: Option<(u16, u16)> = None;
        // SAFETY: walking the control messages the kernel wrote into `cmsg`, with the
        // CMSG_* helpers, within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 || aux.tp_vlan_tci != 0 {
                        let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                            aux.tp_vlan_tpid
                        } else {
                            0x8100
                        };
                        vlan = Some((tpid, aux.tp_vlan_tci));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        match vlan {
            Some((tpid, tci)) if len >= 12 => {
                // Move the two MACs 4 bytes forward and put the tag after them.
                let _ = head;
                buf.copy_within(4..16, 0);
                buf[12..14].copy_from_slice(&tpid.to_be_bytes());
                buf[14..16].copy_from_slice(&tci.to_be_bytes());
                Ok(Some(len + 4))
            }
            _ => {
                buf.copy_within(4..4 + len, 0);
                Ok(Some(len))
            }
        }
    }

    fn link_up(&self) -> bool {
        sysfs_link_up(&self.name).unwrap_or(false)
    }
}

/// An uplink in memory: what the switch sends is collected, what the test injects is
/// received, and the link is up or down as the test says.
pub struct MemoryUplink {
    name: String,
    link: AtomicBool,
    inbox: Mutex<VecDeque<Vec<u8>>>,
    cv: Condvar,
    sent: Mutex<Vec<Vec<u8>>>,
}

impl MemoryUplink {
    pub fn new(name: &str) -> MemoryUplink {
        MemoryUplink {
            name: name.to_string(),
            link: AtomicBool::new(true),
            inbox: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            sent: Mutex::new(Vec::new()),
        }
    }

    /// A frame arrives from the "physical network".
    pub fn inject(&self, frame: &[u8]) {
        self.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(frame.to_vec());
        self.cv.notify_one();
    }

    /// Frames the switch sent out so far (taken).
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_link(&self, up: bool) {
        self.link.store(up, Ordering::SeqCst);
    }
}

impl UplinkIo for MemoryUplink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        if !self.link.load(Ordering::SeqCst) {
            return Err(io::Error::other("link down"));
        }
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(frame.to_vec());
        Ok(())
    }

    fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let q = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let (mut q, _) = self
            .cv
            .wait_timeout_while(q, timeout, |q| q.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        match q.pop_front() {
            Some(f) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(Some(n))
            }
            None => Ok(None),
        }
    }

    fn link_up(&self) -> bool {
        self.link.load(Ordering::SeqCst)
    }
}
