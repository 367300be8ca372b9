//! QEMU virt's test/finisher device (`sifive,test1`, `sifive,test0`, `syscon`).
//!
//! One register at offset 0. A 32-bit (or 16-bit) write of `(code << 16) | status` with
//! status `0x5555` asks for a power-off with exit code `code` (Linux's `syscon-poweroff`
//! writes plain 0x5555: code 0), `0x3333` for a power-off reporting failure `code`, `0x7777`
//! for a reset (Linux's `syscon-reboot`). Reads return 0. Other writes are ignored and counted.
//!
//! The request lands in a shared [`PowerState`] that the run loop polls (and that can call a
//! callback, e.g. to kick every vCPU out of `run`). The machine's SBI system-reset extension can
//! post to the same state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::{lock, MmioDevice};

const FINISHER_FAIL: u64 = 0x3333;
const FINISHER_PASS: u64 = 0x5555;
const FINISHER_RESET: u64 = 0x7777;

/// What the guest asked the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRequest {
    /// Power off; `code` is the exit status (0 for Linux's `poweroff`).
    Poweroff { code: u16 },
    /// Power off reporting a failure with `code`.
    Fail { code: u16 },
    /// Reset the machine.
    Reset,
}

type Callback = Box<dyn Fn(PowerRequest) + Send + Sync>;

/// The last power request of a VM, shared by the devices that post it and the run loop.
#[derive(Default)]
pub struct PowerState {
    flag: AtomicBool,
    request: Mutex<Option<PowerRequest>>,
    callback: Option<Callback>,
}

impl std::fmt::Debug for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerState")
            .field("request", &*lock(&self.request))
            .finish()
    }
}

impl PowerState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A state that also calls `callback` on every request (from the posting thread, e.g. a
    /// vCPU thread in the middle of an MMIO exit).
    pub fn with_callback(callback: impl Fn(PowerRequest) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(PowerState {
            callback: Some(Box::new(callback)),
            ..Self::default()
        })
    }

    /// Records `req`, replacing an earlier one not yet taken.
    pub fn request(&self, req: PowerRequest) {
        let mut r = lock(&self.request);
        *r = Some(req);
        self.flag.store(true, Ordering::SeqCst);
        drop(r);
        if let Some(cb) = &self.callback {
            cb(req);
        }
    }

    /// Whether a request is waiting: one atomic load, cheap enough for every run-loop turn.
    pub fn pending(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The waiting request, if any, without taking it.
    pub fn peek(&self) -> Option<PowerRequest> {
        *lock(&self.request)
    }

    /// Takes the waiting request (e.g. after a reset has been carried out).
    pub fn take(&self) -> Option<PowerRequest> {
        let mut r = lock(&self.request);
        self.flag.store(false, Ordering::SeqCst);
        r.take()
    }
}

/// The test/finisher device.
#[derive(Debug)]
pub struct SifiveTest {
    state: Arc<PowerState>,
    bad_accesses: u64,
}

impl SifiveTest {
    pub fn new(state: Arc<PowerState>) -> Self {
        SifiveTest {
            state,
            bad_accesses: 0,
        }
    }

    pub fn state(&self) -> &Arc<PowerState> {
        &self.state
    }
}

impl MmioDevice for SifiveTest {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset != 0 || !matches!(size, 2 | 4) {
            self.bad_accesses += 1;
        }
        0
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        if offset != 0 || !matches!(size, 2 | 4) {
            self.bad_accesses += 1;
            return;
        }
        let value = if size == 2 {
            value & 0xffff
        } else {
            value & 0xffff_ffff
        };
        let code = (value >> 16) as u16;
        let req = match value & 0xffff {
            FINISHER_PASS => PowerRequest::Poweroff { code },
            FINISHER_FAIL => PowerRequest::Fail { code },
            FINISHER_RESET => PowerRequest::Reset,
            _ => {
                self.bad_accesses += 1;
                return;
            }
        };
        self.state.request(req);
    }

    fn bad_accesses(&self) -> u64 {
        self.bad_accesses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_reset_and_fail() {
        let st = PowerState::new();
        let mut d = SifiveTest::new(st.clone());
        assert!(!st.pending());
        d.write(0, 4, 0x5555);
        assert!(st.pending());
        assert_eq!(st.peek(), Some(PowerRequest::Poweroff { code: 0 }));
        assert_eq!(st.take(), Some(PowerRequest::Poweroff { code: 0 }));
        assert!(!st.pending());
        assert_eq!(st.take(), None);
        d.write(0, 4, 0x7777);
        assert_eq!(st.take(), Some(PowerRequest::Reset));
        d.write(0, 4, (42 << 16) | 0x3333);
        assert_eq!(st.take(), Some(PowerRequest::Fail { code: 42 }));
        d.write(0, 2, 0x5555);
        assert_eq!(st.take(), Some(PowerRequest::Poweroff { code: 0 }));
        assert_eq!(d.read(0, 4), 0);
        assert_eq!(d.bad_accesses(), 0);
    }

    #[test]
    fn last_request_wins_and_callback_runs() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let st = PowerState::with_callback(move |r| s2.lock().unwrap().push(r));
        let mut d = SifiveTest::new(st.clone());
        d.write(0, 4, 0x7777);
        d.write(0, 4, 0x5555);
        assert_eq!(st.take(), Some(PowerRequest::Poweroff { code: 0 }));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![PowerRequest::Reset, PowerRequest::Poweroff { code: 0 }]
        );
    }

    #[test]
    fn other_writes_are_ignored_and_counted() {
        let st = PowerState::new();
        let mut d = SifiveTest::new(st.clone());
        d.write(0, 4, 0x1234);
        d.write(4, 4, 0x5555);
        d.write(0, 1, 0x55);
        d.write(0, 8, 0x5555);
        d.write(0, 2, 0x0001_3333); // 16-bit write: only the status half
        assert_eq!(st.take(), Some(PowerRequest::Fail { code: 0 }));
        assert_eq!(d.read(8, 4), 0);
        assert_eq!(d.bad_accesses(), 5);
    }
}
