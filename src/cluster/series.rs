//! A node's recent history for the operations console: at every node heartbeat a [`Sample`]
//! of its own metrics (rates over the beat, latency percentiles of the beat's observations),
//! the last 15 minutes kept in memory and carried in the node's registry entry, so that the
//! console can chart every node (docs/PROTOCOL.md, "Operations console").

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Metric};

use crate::hub::ConnectionCounts;
use crate::metrics::Metrics;
pub use crate::store::nodes::Sample;

/// How far back the series goes.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// The counters' values at the last sample, to take differences from.
#[derive(Default)]
struct Totals {
    messages_in: u64,
    messages_out: u64,
    authentications: u64,
    auth_failures: BTreeMap<String, u64>,
    ticket_rejections: BTreeMap<String, u64>,
    fanout: Vec<(f64, u64)>,
    event_lag: Vec<(f64, u64)>,
}

pub struct Series {
    capacity: usize,
    state: Mutex<Sampled>,
}

#[derive(Default)]
struct Sampled {
    /// When the last sample was taken, and the counters then.
    last: Option<(Instant, Totals)>,
    samples: VecDeque<Sample>,
}

impl Series {
    /// A series sampled every `step`.
    pub fn new(step: Duration) -> Self {
        let step = step.max(Duration::from_secs(1));
        Series {
            capacity: (WINDOW.as_secs() / step.as_secs()).max(1) as usize,
            state: Mutex::default(),
        }
    }

    /// Takes a sample (the first call only sets the baseline, and returns `None`).
    pub fn sample(&self, metrics: &Metrics, counts: ConnectionCounts) -> Option<Sample> {
        let now = Instant::now();
        let totals = Totals {
            messages_in: metrics.messages_in.get(),
            messages_out: metrics.messages_out.get(),
            authentications: metrics.authentications.get(),
            auth_failures: by_label(&metrics.auth_failures),
            ticket_rejections: by_label(&metrics.tickets_rejected),
            fanout: buckets(&metrics.broadcast_fanout_seconds),
            event_lag: buckets(&metrics.bus_lag_seconds),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Sampled { last, samples } = &mut *state;
        let previous = last.replace((now, totals));
        let ((then, before), (_, after)) = (previous?, last.as_ref()?);
        let secs = now.duration_since(then).as_secs_f64().max(0.001);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let rates = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            a.iter()
                .map(|(label, n)| (label.clone(), rate(*n, b.get(label).copied().unwrap_or(0))))
                .filter(|(_, per_sec)| *per_sec > 0.0)
                .collect()
        };
        let sample = Sample {
            t: crate::clock::unix_now() as i64,
            connections: counts.total as u64,
            authenticated: counts.authenticated as u64,
            messages_in_per_sec: rate(after.messages_in, before.messages_in),
            messages_out_per_sec: rate(after.messages_out, before.messages_out),
            authentications_per_sec: rate(after.authentications, before.authentications),
            auth_failures_per_sec: rates(&after.auth_failures, &before.auth_failures),
            ticket_rejections_per_sec: rates(&after.ticket_rejections, &before.ticket_rejections),
            fanout_p50_ms: quantile(&after.fanout, &before.fanout, 0.5),
            fanout_p99_ms: quantile(&after.fanout, &before.fanout, 0.99),
            event_lag_p50_ms: quantile(&after.event_lag, &before.event_lag, 0.5),
            event_lag_p99_ms: quantile(&after.event_lag, &before.event_lag, 0.99),
            outbox_lag_ms: (metrics.outbox_lease_held.get() == 1)
                .then(|| metrics.outbox_lag_seconds.get() * 1000.0),
        };
        samples.push_back(sample.clone());
        while samples.len() > self.capacity {
            samples.pop_front();
        }
        Some(sample)
    }

    /// The samples in memory, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.samples.iter().cloned().collect()
    }

    /// How many samples the window holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

fn by_label(counters: &prometheus::IntCounterVec) -> BTreeMap<String, u64> {
    counters
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter_map(|metric| {
            let label = metric.get_label().first()?.value().to_owned();
            Some((label, metric.get_counter().get_value() as u64))
        })
        .collect()
}

/// A histogram's cumulative bucket counts, by upper bound (seconds).
fn buckets(histogram: &prometheus::Histogram) -> Vec<(f64, u64)> {
    histogram
        .metric()
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect()
}

/// The `q` quantile, in milliseconds, of the observations between two readings of a
/// histogram, interpolated within its bucket as Prometheus' `histogram_quantile` does.
fn quantile(after: &[(f64, u64)], before: &[(f64, u64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .enumerate()
        .map(|(i, (bound, n))| (*bound, n.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect();
    let total = counts.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0_u64);
    for (bound, cumulative) in counts {
        if cumulative as f64 >= rank {
            let within = (cumulative - lower.1).max(1) as f64;
            let seconds = lower.0 + (bound - lower.0) * ((rank - lower.1 as f64) / within);
            return Some(seconds * 1000.0);
        }
        lower = (bound, cumulative);
    }
    // Above the last bound (observations in the +Inf bucket): the last bound is what is known.
    Some(lower.0 * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: usize) -> ConnectionCounts {
        ConnectionCounts {
            total,
            authenticated: total,
            unauthenticated: 0,
        }
    }

    #[test]
    fn samples_hold_rates_and_percentiles_of_their_interval_only() {
        let metrics = Metrics::new();
        let series = Series::new(Duration::from_secs(5));
        metrics.messages_out.inc_by(1_000);
        metrics.broadcast_fanout_seconds.observe(2.0);
        assert_eq!(series.sample(&metrics, counts(0)), None, "a baseline first");

        metrics.messages_out.inc_by(500);
        metrics.auth_failures.with_label_values(&["4401"]).inc_by(3);
        for _ in 0..99 {
            metrics.broadcast_fanout_seconds.observe(0.003);
        }
        metrics.broadcast_fanout_seconds.observe(0.2);
        let sample = series.sample(&metrics, counts(7)).unwrap();
        assert_eq!(sample.connections, 7);
        assert!(sample.messages_out_per_sec > 0.0);
        assert_eq!(sample.auth_failures_per_sec.len(), 1);
        assert!(sample.auth_failures_per_sec["4401"] > 0.0);
        let p50 = sample.fanout_p50_ms.unwrap();
        assert!(
            (2.5..=5.0).contains(&p50),
            "{p50}: within the 2.5-5 ms bucket"
        );
        let p99 = sample.fanout_p99_ms.unwrap();
        assert!(
            p99 <= 5.0,
            "{p99}: the 2 s before the baseline is not in it"
        );
        assert_eq!(sample.event_lag_p50_ms, None, "nothing observed");
        assert_eq!(series.samples(), vec![sample]);
    }

    #[test]
    fn the_window_keeps_fifteen_minutes() {
        let metrics = Metrics::new();
        let series = Series::new(Duration::from_secs(5));
        assert_eq!(series.capacity(), 180);
        for _ in 0..200 {
            series.sample(&metrics, counts(1));
        }
        assert_eq!(series.samples().len(), 180);
    }
}
