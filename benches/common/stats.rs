//! Percentiles and millisecond formatting for the latency benchmarks.

use std::time::Duration;

/// The `p` quantile (0..=1) of `v`, which it sorts.
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
