//! Times and sizes for people.

/// A wall-clock time, seconds since the Unix epoch, as UTC `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(unix_secs: u64) -> String {
    // Days to civil date (Howard Hinnant's algorithm): one function instead of a date crate.
    let days = (unix_secs / 86400) as i64;
    let secs = unix_secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// [`utc`] of a time in milliseconds since the epoch.
pub fn utc_ms(unix_ms: u64) -> String {
    utc(unix_ms / 1000)
}

/// A size in binary units with one decimal: `512 B`, `1.5 GiB`.
pub fn size(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < U.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        // Checked against GNU `date -u -d @SECS`.
        assert_eq!(utc(1_796_947_199), "2026-12-10 23:59:59 UTC");
        assert_eq!(utc_ms(4_102_444_800_999), "2100-01-01 00:00:00 UTC");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(10 << 30), "10.0 GiB");
        assert_eq!(size(u64::MAX), "16777216.0 TiB");
    }
}
