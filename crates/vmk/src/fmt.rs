//! Formatting shared by the host, VM and top views: states, sizes, durations, times,
//! exits.

use vmk_api::model::{ExitInfo, VmState};

pub fn state_name(s: VmState) -> &'static str {
    match s {
        VmState::Stopped => "stopped",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Stopping => "stopping",
        VmState::Crashed => "crashed",
    }
}

/// Bytes in binary units: `512M`, `1.5G`, `4096` below 1 KiB... (`K` from 1024 up).
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (size, unit) in UNITS {
        if n >= size {
            // (Not is_multiple_of: the workspace's rust-version is older.)
            let whole = n / size;
            return if whole * size == n {
                format!("{whole}{unit}")
            } else {
                format!("{:.1}{unit}", n as f64 / size as f64)
            };
        }
    }
    n.to_string()
}

/// A duration as its two largest units: `3d 4h`, `2h 05m`, `5m 03s`, `42s`.
pub fn fmt_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_time(unix: u64) -> String {
    vmk_base::fmt::utc(unix)
}

pub fn fmt_exit(e: &ExitInfo) -> String {
    match e {
        ExitInfo::PoweredOff { status } => format!("exit status {status}"),
        ExitInfo::Killed => "powered off by the host".into(),
        ExitInfo::Crashed { reason } => format!("crashed: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_bytes(512 << 20), "512M");
        assert_eq!(fmt_bytes(3 << 29), "1.5G");
        assert_eq!(fmt_bytes(1000), "1000");
        assert_eq!(fmt_bytes(2 << 40), "2T");
        assert_eq!(fmt_duration(42), "42s");
        assert_eq!(fmt_duration(303), "5m 03s");
        assert_eq!(fmt_duration(7500), "2h 05m");
        assert_eq!(fmt_duration(3 * 86400 + 4 * 3600 + 5), "3d 4h");
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_time(951_825_600), "2000-02-29 12:00:00 UTC");
        assert_eq!(fmt_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(
            fmt_exit(&ExitInfo::Crashed {
                reason: "uart panicked".into()
            }),
            "crashed: uart panicked"
        );
    }
}
