//! Submit-to-start latency of the embedded runtime at a steady arrival rate with idle workers
//! (issue 9's target: p99 at most 5 ms at 500 jobs/s).
//!
//! Jobs (one no-op `run` step, no-op provider) are submitted open-loop: a tokio interval ticks
//! at the rate and every tick spawns one `submit`, whether or not earlier ones have been
//! acknowledged, so a slow acknowledgement cannot slow the arrivals down and hide itself. Each
//! `submit` returns only once the job is fsynced (the library's contract).
//!
//! Reported, as p50 / p99 / p99.9 / max:
//! - ack: from calling `submit` to its return (durable acknowledgement);
//! - start (records): `started_at_ms - created_at_ms` from the stored jobs (ms resolution);
//! - start (client): from calling `submit` to receiving the job's `running` event, µs.
//!
//! `cargo run --release --example latency -- [RATE] [SECONDS] [WORKERS]` (500, 10, 4).

#[path = "../benches/support/noop_runtime.rs"]
mod noop_runtime;
#[path = "../benches/support/stats.rs"]
mod stats;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sandwarden::job::JobStatus;
use tokio::sync::broadcast::error::RecvError;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn line_ms(label: &str, mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    let p99 = stats::percentile(&v, 99.0);
    println!(
        "{label:<26} p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  max {:>7.3} ms  (n={})",
        ms(stats::percentile(&v, 50.0)),
        ms(p99),
        ms(stats::percentile(&v, 99.9)),
        ms(v.last().copied().unwrap_or_default()),
        v.len()
    );
    p99
}

#[tokio::main]
async fn main() {
    let rate = noop_runtime::arg(1, 500u64);
    let seconds = noop_runtime::arg(2, 10u64);
    let workers = noop_runtime::arg(3, 4usize);
    let jobs = (rate * seconds) as usize;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let (rt, spec) = noop_runtime::start(dir.path(), workers).await;

    // When each job's `running` event arrived (first one only: a job starts once here).
    let mut events = rt.subscribe();
    let watcher = tokio::spawn(async move {
        let mut started: HashMap<String, Instant> = HashMap::with_capacity(jobs);
        let mut ended = 0usize;
        let mut lagged = false;
        loop {
            match events.recv().await {
                Ok(ev) if ev.status == JobStatus::Running => {
                    started.entry(ev.id).or_insert_with(Instant::now);
                }
                Ok(ev) if ev.status.is_terminal() => {
                    ended += 1;
                    if ended == jobs {
                        break;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => lagged = true,
                Err(RecvError::Closed) => break,
            }
        }
        (started, lagged)
    });

    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let mut submits = Vec::with_capacity(jobs);
    let began = Instant::now();
    for _ in 0..jobs {
        tick.tick().await;
        let rt = rt.clone();
        let spec = spec.clone();
        submits.push(tokio::spawn(async move {
            let sent = Instant::now();
            let (job, _) = rt.submit(spec).await.expect("submit");
            (job.id, sent, sent.elapsed())
        }));
    }
    let offered = jobs as f64 / began.elapsed().as_secs_f64();
    let mut acks = Vec::with_capacity(jobs);
    let mut sent_at = HashMap::with_capacity(jobs);
    for s in submits {
        let (id, sent, ack) = s.await.expect("a submit task");
        acks.push(ack);
        sent_at.insert(id, sent);
    }
    let (started, lagged) = tokio::time::timeout(Duration::from_secs(120), watcher)
        .await
        .expect("every job ends within two minutes")
        .expect("the watcher");

    let mut from_records = Vec::with_capacity(jobs);
    let mut completed = 0;
    for id in sent_at.keys() {
        let job = rt.get(id).expect("get").expect("a stored job");
        completed += usize::from(job.status == JobStatus::Completed);
        if let Some(start) = job.started_at_ms {
            from_records.push(Duration::from_millis(
                start.saturating_sub(job.created_at_ms),
            ));
        }
    }
    let from_client: Vec<Duration> = sent_at
        .iter()
        .filter_map(|(id, sent)| {
            started
                .get(id)
                .map(|at| at.saturating_duration_since(*sent))
        })
        .collect();
    rt.shutdown().await.expect("shutdown");

    println!(
        "latency: {jobs} jobs at {rate}/s (offered {offered:.0}/s) for {seconds} s, {workers} idle workers, no-op provider, {} cores; completed {completed}/{jobs}{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if lagged {
            " (event reader lagged: client start times incomplete)"
        } else {
            ""
        }
    );
    line_ms("submit ack (fsynced)", acks);
    let p99 = line_ms("submit-to-start, records", from_records);
    line_ms("submit-to-start, client", from_client);
    println!(
        "target submit-to-start p99 <= 5 ms: {}",
        if p99 <= Duration::from_millis(5) {
            "met"
        } else {
            "missed"
        }
    );
}
