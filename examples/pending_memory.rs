//! Resident memory of the embedded runtime holding N pending jobs (dispatch paused, so they all
//! stay in the queue), against the same process before any job was submitted. Then the time
//! the runtime takes to start again on that store (it checks every job record at open and
//! reclaims running ones), against its start on the empty store in the same run.
//!
//! `cargo run --release --example pending_memory -- [N]` (default 100000)

use std::sync::Arc;

use sandwarden::{Runtime, Settings};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let start = || async {
        let t = std::time::Instant::now();
        let rt = Runtime::start_with_provider(
            Settings::with_data_dir(dir.path()),
            Arc::new(sandwarden::provider::local::LocalProvider::new(
                dir.path().join("sandboxes"),
                Default::default(),
            )?),
        )
        .await?;
        anyhow::Ok((rt, t.elapsed()))
    };
    let (rt, empty_start) = start().await?;
    rt.set_paused(true).await?;
    let before = rss_kib();
    let spec = sandwarden::job::spec::parse(
        br#"{"user_id":"mem","steps":[{"run":{"cmd":"true"}}]}"#,
        &Default::default(),
    )?;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let rt = rt.clone();
            let spec = spec.clone();
            tokio::spawn(async move {
                for _ in 0..n / 64 {
                    rt.submit(spec.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let pending = rt.stats().await?.ready;
    let after = rss_kib();
    println!("pending jobs: {pending}");
    println!(
        "RSS before: {} MiB, with them pending: {} MiB",
        before / 1024,
        after / 1024
    );
    rt.shutdown().await?;
    drop(rt);
    let (rt, full_start) = start().await?;
    println!(
        "start: {:.0} ms on the empty store, {:.0} ms with them pending ({:.1}x)",
        empty_start.as_secs_f64() * 1e3,
        full_start.as_secs_f64() * 1e3,
        full_start.as_secs_f64() / empty_start.as_secs_f64()
    );
    rt.shutdown().await?;
    Ok(())
}
