//! Counters and latency histograms, rendered in the Prometheus text format at `/metrics`.
//!
//! One `Metrics` per runtime, shared by the actors that count what happens (provider calls in
//! the worker, job transitions in the queue, breaker transitions, limiter decisions,
//! notifications). Gauges (breaker state, queue depth, rate usage, live sandboxes) are not
//! stored here: they are read from published state when the endpoint is scraped. Counting
//! takes one short mutex; nothing here blocks on I/O.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Label pairs, in a fixed order per metric.
pub type Labels = Vec<(&'static str, String)>;

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
}

/// Help text of every counter and histogram.
const HELP: &[(&str, &str, &str)] = &[
    (
        "sandwarden_provider_calls_total",
        "counter",
        "Provider calls by operation and outcome (ok or error category).",
    ),
    (
        "sandwarden_provider_call_duration_seconds",
        "histogram",
        "Provider call latency by operation.",
    ),
    (
        "sandwarden_job_transitions_total",
        "counter",
        "Job state changes by new status.",
    ),
    (
        "sandwarden_breaker_transitions_total",
        "counter",
        "Circuit breaker transitions by new state.",
    ),
    (
        "sandwarden_ratelimit_decisions_total",
        "counter",
        "Rate limiter decisions by operation and decision.",
    ),
    (
        "sandwarden_notifications_total",
        "counter",
        "Notifications by kind.",
    ),
];

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: Labels) {
        *self
            .counters
            .lock()
            .expect("metrics lock")
            .entry((name, labels))
            .or_default() += 1;
    }

    pub fn observe(&self, name: &'static str, labels: Labels, value: Duration) {
        let secs = value.as_secs_f64();
        let mut h = self.histograms.lock().expect("metrics lock");
        let h = h.entry((name, labels)).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// One provider call as an event: logged (debug level, key=value or JSON) and counted.
    /// `attempt` is 1 for the first try; `error` is the failure's message.
    pub fn provider_call_event(
        &self,
        operation: &'static str,
        attempt: u32,
        outcome: &'static str,
        error: Option<&str>,
        took: Duration,
    ) {
        tracing::debug!(
            operation,
            attempt,
            outcome,
            duration_us = took.as_micros() as u64,
            error,
            "provider call"
        );
        self.provider_call(operation, outcome, took);
    }

    /// One provider call: its outcome (`ok` or the error category) and latency.
    pub fn provider_call(&self, operation: &'static str, outcome: &'static str, took: Duration) {
        self.inc(
            "sandwarden_provider_calls_total",
            vec![("operation", operation.into()), ("outcome", outcome.into())],
        );
        self.observe(
            "sandwarden_provider_call_duration_seconds",
            vec![("operation", operation.into())],
            took,
        );
    }

    /// A counter's current value (tests, the dashboard).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let c = self.counters.lock().expect("metrics lock");
        c.iter()
            .filter(|((n, l), _)| {
                *n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// The Prometheus text exposition, with `gauges` (name, help, labels, value) appended.
    pub fn render(&self, gauges: &[(&'static str, &'static str, Labels, f64)]) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().expect("metrics lock").clone();
        let histograms = self.histograms.lock().expect("metrics lock").clone();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, labels), v) in counters.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", fmt_labels(labels, None));
            }
            for ((n, labels), h) in histograms.iter().filter(|((n, _), _)| n == name) {
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{n}_bucket{} {}",
                        fmt_labels(labels, Some(&bound.to_string())),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{n}_bucket{} {}",
                    fmt_labels(labels, Some("+Inf")),
                    h.count
                );
                let _ = writeln!(out, "{n}_sum{} {}", fmt_labels(labels, None), h.sum);
                let _ = writeln!(out, "{n}_count{} {}", fmt_labels(labels, None), h.count);
            }
        }
        let mut last = "";
        for (name, help, labels, value) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", fmt_labels(labels, None));
        }
        out
    }
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.provider_call("sandbox_create", "ok", Duration::from_millis(3));
        m.provider_call("sandbox_create", "ok", Duration::from_millis(30));
        m.provider_call("sandbox_create", "transient", Duration::from_millis(3));
        let text = m.render(&[(
            "sandwarden_queue_depth",
            "Jobs by status.",
            vec![("status", "pending".into())],
            4.0,
        )]);
        assert!(
            text.contains(
                "sandwarden_provider_calls_total{operation=\"sandbox_create\",outcome=\"ok\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "sandwarden_provider_calls_total{operation=\"sandbox_create\",outcome=\"transient\"} 1"
        ));
        assert!(text.contains("sandwarden_provider_call_duration_seconds_bucket{operation=\"sandbox_create\",le=\"0.005\"} 2"), "{text}");
        assert!(text.contains(
            "sandwarden_provider_call_duration_seconds_count{operation=\"sandbox_create\"} 3"
        ));
        assert!(text.contains(
            "# TYPE sandwarden_queue_depth gauge\nsandwarden_queue_depth{status=\"pending\"} 4"
        ));
        assert_eq!(
            m.counter("sandwarden_provider_calls_total", &[("outcome", "ok")]),
            2
        );
    }
}
