//! Summaries of a run: latency percentiles from the histogram and the spread
//! of frames served per connection (the fairness numbers).

use hdrhistogram::Histogram;

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// Summarises a histogram of nanosecond latencies.
pub fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        p50_us: us(h.value_at_quantile(0.50)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        mean_us: h.mean() / 1000.0,
    }
}

/// Distribution of frames served per connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub min: u64,
    pub p1: u64,
    pub median: u64,
    pub max: u64,
    /// `max / min`; `None` when some connection got nothing.
    pub max_over_min: Option<f64>,
    /// Coefficient of variation: standard deviation / mean.
    pub cv: f64,
}

/// Summarises per-connection counts.
pub fn spread(counts: &[u64]) -> Spread {
    if counts.is_empty() {
        return Spread::default();
    }
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    // Nearest-rank percentile.
    let pct = |p: f64| sorted[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
    let mean = sorted.iter().sum::<u64>() as f64 / n as f64;
    let var = sorted
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let (min, max) = (sorted[0], sorted[n - 1]);
    Spread {
        min,
        p1: pct(1.0),
        median: pct(50.0),
        max,
        max_over_min: (min > 0).then(|| max as f64 / min as f64),
        cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
    }
}

/// Median of some values (mean of the middle two for an even count).
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn spread_of_counts() {
        let counts: Vec<u64> = (1..=100).collect();
        let s = spread(&counts);
        assert_eq!((s.min, s.p1, s.median, s.max), (1, 1, 50, 100));
        assert_eq!(s.max_over_min, Some(100.0));
        let even = spread(&[5, 5, 5]);
        assert_eq!(even.cv, 0.0);
        assert_eq!(spread(&[0, 3]).max_over_min, None);
    }

    #[test]
    fn latency_percentiles() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = latency(&h);
        assert!((l.p50_us - 500.0).abs() < 1.0);
        assert!((l.p99_us - 990.0).abs() < 1.0);
    }
}
