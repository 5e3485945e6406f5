//! End-to-end job throughput of the embedded runtime, the sandwarden side of the BullMQ peer
//! benchmark (`bench/peer.sh`): N jobs submitted by 64 concurrent submitters (each `submit`
//! returns only once the job is fsynced, the library's contract), run by C workers against a
//! no-op provider, timed from the first submit to the last completion. So the figure is the
//! queue's (durable accept, dispatch, lease, state transitions, events), not the sandboxes'.
//!
//! It also prints the submit-to-start latency (p50/p99 of `started_at_ms - created_at_ms` read
//! back from the stored jobs after the run; millisecond resolution).
//!
//! `cargo run --release --example throughput -- [JOBS] [WORKERS]` (defaults 20000 and 8).
//! Output: `sandwarden: N jobs, C workers, X jobs/s`, then a latency line.

#[path = "../benches/support/noop_runtime.rs"]
mod noop_runtime;
#[path = "../benches/support/stats.rs"]
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sandwarden::job::JobStatus;
use tokio::sync::broadcast::error::RecvError;

const SUBMITTERS: usize = 64;

#[tokio::main]
async fn main() {
    let jobs = noop_runtime::arg(1, 20_000usize);
    let workers = noop_runtime::arg(2, 8usize);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let (rt, spec) = noop_runtime::start(dir.path(), workers).await;

    // Count terminal transitions from the event stream, subscribed before the first submit.
    // The stream is a bounded broadcast: if this reader lags it may miss events, and then the
    // end is found by waiting on every job id instead (slower to notice, never wrong).
    let mut events = rt.subscribe();
    let watcher = tokio::spawn(async move {
        let mut ended = 0usize;
        loop {
            match events.recv().await {
                Ok(ev) if ev.status.is_terminal() => {
                    ended += 1;
                    if ended == jobs {
                        return Some(Instant::now());
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return None,
            }
        }
    });

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|_| {
            let rt = rt.clone();
            let spec = spec.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < jobs {
                    let (job, _) = rt.submit(spec.clone()).await.expect("submit");
                    ids.push(job.id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(jobs);
    for s in submitters {
        ids.extend(s.await.expect("a submitter"));
    }
    let submitted = started.elapsed();

    let finished = match watcher.await.expect("the watcher") {
        Some(at) => at,
        None => {
            eprintln!("sandwarden: event stream lagged; waiting on each job instead");
            for id in &ids {
                rt.wait(id, Duration::from_secs(600)).await.expect("wait");
            }
            Instant::now()
        }
    };
    let elapsed = finished.duration_since(started).as_secs_f64();

    let mut latencies = Vec::with_capacity(ids.len());
    let mut completed = 0usize;
    for id in &ids {
        let job = rt.get(id).expect("get").expect("a stored job");
        if job.status == JobStatus::Completed {
            completed += 1;
        }
        if let Some(start) = job.started_at_ms {
            latencies.push(start.saturating_sub(job.created_at_ms));
        }
    }
    latencies.sort_unstable();
    rt.shutdown().await.expect("shutdown");

    println!(
        "sandwarden: {} jobs, {workers} workers, {:.0} jobs/s",
        ids.len(),
        ids.len() as f64 / elapsed
    );
    println!(
        "sandwarden: submit-to-start p50 {} ms, p99 {} ms; completed {completed}/{}; all submits acknowledged after {:.2} s, all done after {elapsed:.2} s",
        stats::percentile(&latencies, 50.0),
        stats::percentile(&latencies, 99.0),
        ids.len(),
        submitted.as_secs_f64(),
    );
}
