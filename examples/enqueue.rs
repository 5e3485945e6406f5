//! Durable enqueue throughput of the embedded runtime: jobs acknowledged (written and fsynced)
//! per second, with 1 submitter (one fsync per job, the baseline) and with 64 concurrent
//! submitters sharing fsyncs through the group commit, measured in the same run.
//!
//! `cargo run --release --example enqueue -- [JOBS]` (default 5000). The jobs run against a
//! no-op provider so that the figure is the queue's, not the sandboxes'.

use std::sync::Arc;
use std::time::Instant;

use sandwarden::provider::noop::NoopProvider;
use sandwarden::{Runtime, Settings};

async fn measure(jobs: usize, submitters: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let rt =
        Runtime::start_with_provider(Settings::with_data_dir(dir.path()), Arc::new(NoopProvider))
            .await
            .unwrap();
    let spec = sandwarden::job::spec::parse(
        br#"{"user_id":"bench","steps":[{"run":{"cmd":"true"}}]}"#,
        &Default::default(),
    )
    .unwrap();
    let started = Instant::now();
    let per = jobs / submitters;
    let tasks: Vec<_> = (0..submitters)
        .map(|_| {
            let rt = rt.clone();
            let spec = spec.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    rt.submit(spec.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (per * submitters) as f64 / started.elapsed().as_secs_f64();
    rt.shutdown().await.unwrap();
    rate
}

#[tokio::main]
async fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000);
    let baseline = measure(jobs / 10, 1).await;
    let grouped = measure(jobs, 64).await;
    println!("durable enqueue, 1 submitter (fsync per job): {baseline:.0} jobs/s");
    println!("durable enqueue, 64 submitters (group commit): {grouped:.0} jobs/s");
    println!("ratio: {:.1}x", grouped / baseline);
}
