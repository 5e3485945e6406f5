//! Cost per provider call of its event: the metrics (a counter and a latency histogram) and
//! the log line, with the log filtered out (the default `info` level) and written (`debug`,
//! as JSON and as key=value text, to a sink), against a bare no-op in the same run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sandwarden::metrics::Metrics;
use tracing_subscriber::EnvFilter;

fn subscriber(level: &str, json: bool) -> tracing::Dispatch {
    let b = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(level))
        .with_writer(std::io::sink);
    if json {
        tracing::Dispatch::new(b.json().finish())
    } else {
        tracing::Dispatch::new(b.finish())
    }
}

fn events(c: &mut Criterion) {
    let mut g = c.benchmark_group("event");
    let took = Duration::from_micros(1500);
    g.bench_function("bare_noop", |b| {
        b.iter(|| black_box(1u64) + black_box(2u64))
    });
    let m = Metrics::default();
    g.bench_function("metrics_only", |b| {
        b.iter(|| m.provider_call(black_box("sandbox_run"), "ok", took))
    });
    for (name, level, json) in [
        ("metrics_and_log_filtered_out", "info", false),
        ("metrics_and_log_text", "debug", false),
        ("metrics_and_log_json", "debug", true),
    ] {
        let dispatch = subscriber(level, json);
        tracing::dispatcher::with_default(&dispatch, || {
            g.bench_function(name, |b| {
                b.iter(|| m.provider_call_event(black_box("sandbox_run"), 1, "ok", None, took))
            });
        });
    }
    g.finish();
}

criterion_group!(benches, events);
criterion_main!(benches);
