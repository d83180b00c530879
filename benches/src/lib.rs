//! Throughput harness helpers: medians, rates, and running DPDK's own `dpdk-testpmd` as the
//! baseline in the same run. The benchmarks are the binaries in `src/bin`.
use std::time::Duration;

pub mod baseline;
pub mod harness;
pub mod report;

/// Median of a list of samples (NaN-free), or 0 for none.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Per-second rates from cumulative counters sampled once a second; the first `warmup`
/// samples are dropped.
pub fn rates(samples: &[(Duration, u64)], warmup: usize) -> Vec<f64> {
    samples
        .windows(2)
        .skip(warmup)
        .map(|w| (w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0).as_secs_f64())
        .collect()
}

/// Extracts the `Rx-pps:` values testpmd prints with `--stats-period`.
pub fn testpmd_rx_pps(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let i = l.find("Rx-pps:")?;
            l[i + 7..].split_whitespace().next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_rates() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let s = [
            (Duration::from_secs(0), 0),
            (Duration::from_secs(1), 100),
            (Duration::from_secs(2), 300),
        ];
        assert_eq!(rates(&s, 0), vec![100.0, 200.0]);
        assert_eq!(rates(&s, 1), vec![200.0]);
    }

    #[test]
    fn parses_testpmd_stats() {
        let out = "  ######################## NIC statistics for port 0  ########################\n  RX-packets: 123  RX-missed: 0  RX-bytes:  7872\n  Throughput (since last show)\n  Rx-pps:     12345678          Rx-bps:   6320987136\n  Tx-pps:     12345678          Tx-bps:   6320987136\n";
        assert_eq!(testpmd_rx_pps(out), vec![12345678.0]);
    }
}
