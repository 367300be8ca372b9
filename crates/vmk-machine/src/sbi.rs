//! The SBI (v2.0) served by the hypervisor to S-mode guests: Base, TIME, IPI, RFENCE, HSM,
//! SRST, DBCN and the legacy extensions.

pub const SBI_SUCCESS: i64 = 0;
pub const SBI_ERR_FAILED: i64 = -1;
pub const SBI_ERR_NOT_SUPPORTED: i64 = -2;
pub const SBI_ERR_INVALID_PARAM: i64 = -3;
pub const SBI_ERR_INVALID_ADDRESS: i64 = -5;
pub const SBI_ERR_ALREADY_AVAILABLE: i64 = -6;

pub const EXT_BASE: u64 = 0x10;
pub const EXT_TIME: u64 = 0x5449_4d45;
pub const EXT_IPI: u64 = 0x0073_5049;
pub const EXT_RFENCE: u64 = 0x5246_4e43;
pub const EXT_HSM: u64 = 0x0048_534d;
pub const EXT_SRST: u64 = 0x5352_5354;
pub const EXT_DBCN: u64 = 0x4442_434e;

/// SBI implementation ID for vmk (outside the ranges the SBI spec has assigned).
pub const IMPL_ID: u64 = 0x0076_6d6b;
pub const SPEC_VERSION: u64 = 2 << 24;

/// What an SBI call asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemRequest {
    Shutdown,
    Reboot,
}

/// The machine services an SBI call needs.
pub trait SbiHost {
    fn hart_count(&self) -> u64;
    fn set_timer(&mut self, deadline: u64);
    fn send_ipi(&mut self, hart: u64);
    fn remote_fence_i(&mut self, hart: u64);
    /// Flush the TLBs of the given harts (or more) and wait until done.
    fn remote_sfence_vma(&mut self, harts: &[u64]);
    /// 0 started, 1 stopped, 2 start pending, 3 stop pending.
    fn hart_status(&self, hart: u64) -> u64;
    /// Start a stopped hart. Err(SBI error) when it is not stopped.
    fn hart_start(&mut self, hart: u64, start_addr: u64, opaque: u64) -> Result<(), i64>;
    /// Stop the calling hart after this call returns.
    fn hart_stop_self(&mut self);
    fn system(&mut self, req: SystemRequest);
    fn console_write(&mut self, bytes: &[u8]);
    fn console_read_byte(&mut self) -> Option<u8>;
    /// Guest physical memory access for DBCN.
    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> bool;
    fn write_guest(&self, gpa: u64, buf: &[u8]) -> bool;
    /// Whether `[gpa, gpa + len)` is guest RAM.
    fn is_ram(&self, gpa: u64, len: u64) -> bool;
}

/// Result in a0 (error) and a1 (value).
pub struct SbiRet {
    pub error: i64,
    pub value: u64,
}

fn ret(error: i64, value: u64) -> SbiRet {
    SbiRet { error, value }
}

fn ok(value: u64) -> SbiRet {
    ret(SBI_SUCCESS, value)
}

/// Expands an SBI hart mask into hart IDs. `Err` for IDs beyond the machine.
fn harts_of(host: &dyn SbiHost, mask: u64, base: u64) -> Result<Vec<u64>, i64> {
    let n = host.hart_count();
    if base == u64::MAX {
        return Ok((0..n).collect());
    }
    let mut v = Vec::new();
    for bit in 0..64 {
        if mask & (1 << bit) != 0 {
            let h = base.checked_add(bit).ok_or(SBI_ERR_INVALID_PARAM)?;
            if h >= n {
                return Err(SBI_ERR_INVALID_PARAM);
            }
            v.push(h);
        }
    }
    Ok(v)
}

/// Serves one SBI call. `a` are a0..a5, `fid` is a6 and `eid` a7. Legacy calls return
/// `error` only (in a0); the caller writes a1 only for v0.2+ extensions (`eid >= 0x10`).
pub fn handle(host: &mut dyn SbiHost, hart: u64, eid: u64, fid: u64, a: [u64; 6]) -> SbiRet {
    match eid {
        // Legacy extensions (v0.1).
        0x00 => {
            host.set_timer(a[0]);
            ok(0)
        }
        0x01 => {
            host.console_write(&[a[0] as u8]);
            ok(0)
        }
        0x02 => match host.console_read_byte() {
            Some(b) => ret(b as i64, 0),
            None => ret(-1, 0),
        },
        0x03 => ok(0), // clear_ipi: the guest clears sip.SSIP itself
        0x04..=0x07 => {
            // The legacy calls pass a pointer to the hart mask.
            let mut m = [0u8; 8];
            let mask = if a[0] == 0 {
                u64::MAX
            } else if host.read_guest(a[0], &mut m) {
                u64::from_le_bytes(m)
            } else {
                return ret(SBI_ERR_INVALID_ADDRESS, 0);
            };
            let n = host.hart_count();
            let targets: Vec<u64> = (0..n.min(64)).filter(|h| mask & (1 << h) != 0).collect();
            match eid {
                0x04 => targets.iter().for_each(|h| host.send_ipi(*h)),
                0x05 => targets.iter().for_each(|h| host.remote_fence_i(*h)),
                _ => host.remote_sfence_vma(&targets),
            }
            ok(0)
        }
        0x08 => {
            host.system(SystemRequest::Shutdown);
            ok(0)
        }
        EXT_BASE => match fid {
            0 => ok(SPEC_VERSION),
            1 => ok(IMPL_ID),
            2 => ok(1),
            3 => {
                let supported = matches!(
                    a[0],
                    EXT_BASE | EXT_TIME | EXT_IPI | EXT_RFENCE | EXT_HSM | EXT_SRST | EXT_DBCN
                ) || a[0] <= 0x08;
                ok(supported as u64)
            }
            4..=6 => ok(0), // mvendorid, marchid, mimpid
            _ => ret(SBI_ERR_NOT_SUPPORTED, 0),
        },
        EXT_TIME if fid == 0 => {
            host.set_timer(a[0]);
            ok(0)
        }
        EXT_IPI if fid == 0 => match harts_of(host, a[0], a[1]) {
            Ok(hs) => {
                hs.iter().for_each(|h| host.send_ipi(*h));
                ok(0)
            }
            Err(e) => ret(e, 0),
        },
        EXT_RFENCE if fid <= 6 => match harts_of(host, a[0], a[1]) {
            Ok(hs) => {
                match fid {
                    0 => hs.iter().for_each(|h| host.remote_fence_i(*h)),
                    1 | 2 => host.remote_sfence_vma(&hs),
                    // Hypervisor-extension fences: we have no H extension.
                    _ => return ret(SBI_ERR_NOT_SUPPORTED, 0),
                }
                ok(0)
            }
            Err(e) => ret(e, 0),
        },
        EXT_HSM => match fid {
            0 => {
                if a[0] >= host.hart_count() {
                    return ret(SBI_ERR_INVALID_PARAM, 0);
                }
                match host.hart_start(a[0], a[1], a[2]) {
                    Ok(()) => ok(0),
                    Err(e) => ret(e, 0),
                }
            }
            1 => {
                host.hart_stop_self();
                ok(0)
            }
            2 => {
                if a[0] >= host.hart_count() {
                    return ret(SBI_ERR_INVALID_PARAM, 0);
                }
                ok(host.hart_status(a[0]))
            }
            3 => {
                // Retentive suspend behaves like WFI, which the guest may always do; the
                // non-retentive kind is not offered.
                match a[0] {
                    0 => ok(0),
                    0x8000_0000 => ret(SBI_ERR_NOT_SUPPORTED, 0),
                    _ => ret(SBI_ERR_INVALID_PARAM, 0),
                }
            }
            _ => ret(SBI_ERR_NOT_SUPPORTED, 0),
        },
        EXT_SRST if fid == 0 => {
            if a[0] > 2 {
                return ret(SBI_ERR_INVALID_PARAM, 0);
            }
            if a[1] > 1 && a[1] < 0xe000_0000 {
                return ret(SBI_ERR_INVALID_PARAM, 0);
            }
            match a[0] {
                0 => host.system(SystemRequest::Shutdown),
                1 | 2 => host.system(SystemRequest::Reboot),
                _ => return ret(SBI_ERR_NOT_SUPPORTED, 0),
            }
            ok(0)
        }
        EXT_DBCN => match fid {
            0 | 1 => {
                let len = a[0].min(1 << 16) as usize;
                let gpa = a[1];
                if a[2] != 0 {
                    return ret(SBI_ERR_INVALID_PARAM, 0);
                }
                let mut buf = vec![0u8; len];
                if fid == 0 {
                    if !host.read_guest(gpa, &mut buf) {
                        return ret(SBI_ERR_INVALID_PARAM, 0);
                    }
                    host.console_write(&buf);
                    ok(len as u64)
                } else {
                    if !host.is_ram(gpa, len as u64) {
                        return ret(SBI_ERR_INVALID_PARAM, 0);
                    }
                    let mut n = 0;
                    while n < len {
                        match host.console_read_byte() {
                            Some(b) => {
                                buf[n] = b;
                                n += 1;
                            }
                            None => break,
                        }
                    }
                    if !host.write_guest(gpa, &buf[..n]) {
                        return ret(SBI_ERR_INVALID_PARAM, 0);
                    }
                    ok(n as u64)
                }
            }
            2 => {
                host.console_write(&[a[0] as u8]);
                ok(0)
            }
            _ => ret(SBI_ERR_NOT_SUPPORTED, 0),
        },
        _ => {
            let _ = hart;
            ret(SBI_ERR_NOT_SUPPORTED, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        timer: Option<u64>,
        ipis: Vec<u64>,
        out: Vec<u8>,
        system: Option<SystemRequest>,
        mem: Vec<u8>,
    }

    impl SbiHost for Fake {
        fn hart_count(&self) -> u64 {
            2
        }
        fn set_timer(&mut self, d: u64) {
            self.timer = Some(d);
        }
        fn send_ipi(&mut self, h: u64) {
            self.ipis.push(h);
        }
        fn remote_fence_i(&mut self, _: u64) {}
        fn remote_sfence_vma(&mut self, _: &[u64]) {}
        fn hart_status(&self, h: u64) -> u64 {
            if h == 0 {
                0
            } else {
                1
            }
        }
        fn hart_start(&mut self, h: u64, _: u64, _: u64) -> Result<(), i64> {
            if h == 0 {
                Err(SBI_ERR_ALREADY_AVAILABLE)
            } else {
                Ok(())
            }
        }
        fn hart_stop_self(&mut self) {}
        fn system(&mut self, r: SystemRequest) {
            self.system = Some(r);
        }
        fn console_write(&mut self, b: &[u8]) {
            self.out.extend_from_slice(b);
        }
        fn console_read_byte(&mut self) -> Option<u8> {
            None
        }
        fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> bool {
            let Some(end) = (gpa as usize).checked_add(buf.len()) else {
                return false;
            };
            match self.mem.get(gpa as usize..end) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
        fn write_guest(&self, _: u64, _: &[u8]) -> bool {
            true
        }
        fn is_ram(&self, gpa: u64, len: u64) -> bool {
            gpa.checked_add(len)
                .is_some_and(|e| e <= self.mem.len() as u64)
        }
    }

    #[test]
    fn base_and_probe() {
        let mut f = Fake::default();
        assert_eq!(handle(&mut f, 0, EXT_BASE, 0, [0; 6]).value, SPEC_VERSION);
        assert_eq!(
            handle(&mut f, 0, EXT_BASE, 3, [EXT_HSM, 0, 0, 0, 0, 0]).value,
            1
        );
        assert_eq!(
            handle(&mut f, 0, EXT_BASE, 3, [0x1234_5678, 0, 0, 0, 0, 0]).value,
            0
        );
        let r = handle(&mut f, 0, 0x0a00_0000, 0, [0; 6]);
        assert_eq!(r.error, SBI_ERR_NOT_SUPPORTED);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut f = Fake::default();
        // IPI to a hart that does not exist.
        let r = handle(&mut f, 0, EXT_IPI, 0, [1 << 5, 0, 0, 0, 0, 0]);
        assert_eq!(r.error, SBI_ERR_INVALID_PARAM);
        assert!(f.ipis.is_empty());
        // Broadcast
        assert_eq!(
            handle(&mut f, 0, EXT_IPI, 0, [0, u64::MAX, 0, 0, 0, 0]).error,
            0
        );
        assert_eq!(f.ipis, vec![0, 1]);
        // Mask base overflow.
        let r = handle(&mut f, 0, EXT_IPI, 0, [2, u64::MAX - 1, 0, 0, 0, 0]);
        assert_eq!(r.error, SBI_ERR_INVALID_PARAM);
        // DBCN write from unmapped memory.
        let r = handle(&mut f, 0, EXT_DBCN, 0, [16, 0xdead_0000, 0, 0, 0, 0]);
        assert_eq!(r.error, SBI_ERR_INVALID_PARAM);
        // SRST with a reserved type.
        let r = handle(&mut f, 0, EXT_SRST, 0, [7, 0, 0, 0, 0, 0]);
        assert_eq!(r.error, SBI_ERR_INVALID_PARAM);
        assert_eq!(f.system, None);
        // Start an already started hart / a hart beyond the machine.
        let r = handle(&mut f, 0, EXT_HSM, 0, [0, 0x8020_0000, 0, 0, 0, 0]);
        assert_eq!(r.error, SBI_ERR_ALREADY_AVAILABLE);
        let r = handle(&mut f, 0, EXT_HSM, 0, [9, 0x8020_0000, 0, 0, 0, 0]);
        assert_eq!(r.error, SBI_ERR_INVALID_PARAM);
    }

    #[test]
    fn console_and_reset() {
        let mut f = Fake {
            mem: b"hello".to_vec(),
            ..Fake::default()
        };
        let r = handle(&mut f, 0, EXT_DBCN, 0, [5, 0, 0, 0, 0, 0]);
        assert_eq!((r.error, r.value), (0, 5));
        handle(&mut f, 0, 0x01, 0, [b'!' as u64, 0, 0, 0, 0, 0]);
        assert_eq!(f.out, b"hello!");
        handle(&mut f, 0, EXT_TIME, 0, [12345, 0, 0, 0, 0, 0]);
        assert_eq!(f.timer, Some(12345));
        handle(&mut f, 0, EXT_SRST, 0, [0, 0, 0, 0, 0, 0]);
        assert_eq!(f.system, Some(SystemRequest::Shutdown));
    }
}
