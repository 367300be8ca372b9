//! The terminal: raw mode for interactive commands (`vmk run`, `vmk vm console`, `vmk vm top`).

/// Puts the terminal on stdin in raw mode while alive (keys arrive one by one, unechoed,
/// Ctrl-C included), restoring it on drop.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode, or `None` when stdin is not a terminal (then nothing changes).
    pub fn enable() -> Option<RawMode> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a zero-initialized termios, which
        // tcgetattr fills in before it is used.
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
            // Output post-processing stays on, so "\n" still starts a new line.
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
        // SAFETY: restores the attributes read in `enable` on the same fd.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}
