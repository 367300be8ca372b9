//! Egress traffic shaping of a port, as ESX does it: average bandwidth, peak bandwidth and
//! burst size, with two token buckets.
//!
//! - The *average* bucket fills at the average bandwidth and holds up to the burst size:
//!   over any long interval a port sends at most `average × time + burst`.
//! - The *peak* bucket fills at the peak bandwidth and holds one millisecond at peak (at
//!   least one maximum frame): a burst goes out no faster than the peak bandwidth.
//!
//! A frame conforms when both buckets hold its size; it then takes its size from both.
//! Otherwise the shaper says how long until it would conform, and the port delays the
//! frame (the virtio-net device keeps it and stops its TX queue until then), so shaping
//! slows the sender down instead of dropping.
//!
//! Time is passed in (nanoseconds from any fixed origin), so tests can drive the shaper
//! with a virtual clock.

use std::time::Duration;

/// A port's traffic shaping policy (ESX's "traffic shaping" of a port group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapingPolicy {
    /// Long-term rate, in bits per second.
    pub average_bps: u64,
    /// Highest rate during a burst, in bits per second (at least `average_bps`).
    pub peak_bps: u64,
    /// How many bytes may go above the average rate in a burst.
    pub burst_bytes: u64,
}

impl ShapingPolicy {
    /// Checks the policy: rates above zero, peak ≥ average.
    pub fn validate(&self) -> Result<(), String> {
        if self.average_bps == 0 || self.peak_bps == 0 {
            return Err("traffic shaping: average and peak bandwidth must be above 0 bit/s (leave shaping off for no limit)".into());
        }
        if self.peak_bps < self.average_bps {
            return Err(format!(
                "traffic shaping: peak bandwidth {} bit/s is below the average {} bit/s; peak must be at least the average",
                self.peak_bps, self.average_bps
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Bytes per nanosecond.
    rate: f64,
    depth: f64,
    tokens: f64,
}

impl Bucket {
    fn refill(&mut self, elapsed_ns: u64) {
        self.tokens = (self.tokens + self.rate * elapsed_ns as f64).min(self.depth);
    }

    /// Nanoseconds until the bucket holds `n` bytes.
    fn wait_for(&self, n: f64) -> f64 {
        if self.tokens >= n {
            0.0
        } else {
            (n - self.tokens) / self.rate
        }
    }
}

/// The two buckets of one port.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    policy: ShapingPolicy,
    avg: Bucket,
    peak: Bucket,
    last_ns: u64,
}

impl TokenBucket {
    /// A shaper for `policy` whose buckets start full, for frames up to `max_frame` bytes.
    pub fn new(policy: ShapingPolicy, max_frame: usize, now_ns: u64) -> TokenBucket {
        let max_frame = max_frame as f64;
        let avg_rate = policy.average_bps as f64 / 8e9;
        let peak_rate = policy.peak_bps.max(policy.average_bps) as f64 / 8e9;
        // A bucket smaller than a frame could never pass it.
        let avg_depth = (policy.burst_bytes as f64).max(max_frame);
        let peak_depth = (peak_rate * 1e6).max(max_frame);
        TokenBucket {
            policy,
            avg: Bucket {
                rate: avg_rate,
                depth: avg_depth,
                tokens: avg_depth,
            },
            peak: Bucket {
                rate: peak_rate,
                depth: peak_depth,
                tokens: peak_depth,
            },
            last_ns: now_ns,
        }
    }

    pub fn policy(&self) -> ShapingPolicy {
        self.policy
    }

    /// Takes `len` bytes if the frame conforms now; otherwise returns how long to wait.
    pub fn take(&mut self, len: usize, now_ns: u64) -> Result<(), Duration> {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.avg.refill(elapsed);
        self.peak.refill(elapsed);
        let n = len as f64;
        let wait = self.avg.wait_for(n).max(self.peak.wait_for(n));
        if wait <= 0.0 {
            self.avg.tokens -= n;
            self.peak.tokens -= n;
            Ok(())
        } else {
            // At least a microsecond: a retry sooner cannot succeed anyway.
            Err(Duration::from_nanos((wait.ceil() as u64).max(1_000)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender that always has a frame ready, driven by a virtual clock: sends whenever the
    /// shaper lets it, else waits exactly the time the shaper asks for.
    fn simulate(p: ShapingPolicy, frame: usize, secs: f64) -> (u64, Vec<(u64, u64)>) {
        let mut tb = TokenBucket::new(p, 1518, 0);
        let end = (secs * 1e9) as u64;
        let mut now = 0u64;
        let mut sent = 0u64;
        let mut log = Vec::new();
        while now < end {
            match tb.take(frame, now) {
                Ok(()) => {
                    sent += frame as u64;
                    log.push((now, sent));
                }
                Err(d) => now += d.as_nanos() as u64,
            }
        }
        (sent, log)
    }

    #[test]
    fn long_term_rate_is_the_average() {
        let p = ShapingPolicy {
            average_bps: 10_000_000,
            peak_bps: 50_000_000,
            burst_bytes: 100_000,
        };
        let (sent, _) = simulate(p, 1000, 5.0);
        // average × time + burst (+ one frame of rounding).
        let expect = 10e6 / 8.0 * 5.0 + 100_000.0;
        let ratio = sent as f64 / expect;
        assert!(
            (0.99..=1.01).contains(&ratio),
            "sent {sent}, expected {expect}"
        );
    }

    #[test]
    fn bursts_go_at_peak_then_settle_at_average() {
        let p = ShapingPolicy {
            average_bps: 8_000_000, // 1 MB/s
            peak_bps: 80_000_000,   // 10 MB/s
            burst_bytes: 1_000_000, // 1 MB
        };
        let (_, log) = simulate(p, 1000, 3.0);
        // The first 1 MB or so goes at ~10 MB/s: done after ~0.1 s, not 1 s.
        let t_1mb = log.iter().find(|&&(_, s)| s >= 1_000_000).unwrap().0;
        assert!(t_1mb < 130_000_000, "1 MB after {t_1mb} ns");
        assert!(t_1mb > 80_000_000, "faster than the peak: {t_1mb} ns");
        // Between 2 s and 3 s: the average.
        let at = |t: u64| log.iter().rev().find(|&&(n, _)| n <= t).unwrap().1;
        let rate = (at(3_000_000_000) - at(2_000_000_000)) as f64;
        assert!((rate / 1e6 - 1.0).abs() < 0.01, "{rate} B/s");
    }

    #[test]
    fn frames_larger_than_the_burst_still_pass() {
        let p = ShapingPolicy {
            average_bps: 1_000_000,
            peak_bps: 1_000_000,
            burst_bytes: 0,
        };
        let (sent, _) = simulate(p, 1500, 2.0);
        assert!(sent >= 1500 * 100, "{sent}");
    }

    #[test]
    fn policy_validation() {
        let mut p = ShapingPolicy {
            average_bps: 10,
            peak_bps: 5,
            burst_bytes: 0,
        };
        assert!(p.validate().unwrap_err().contains("below the average"));
        p.peak_bps = 0;
        assert!(p.validate().is_err());
        p.peak_bps = 10;
        p.validate().unwrap();
    }
}
