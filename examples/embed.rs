//! Embedding sandwarden in another tokio application, without its HTTP server: start the whole
//! supervision tree, submit a job, follow its events, read its output, look at the breaker, and
//! stop cleanly.
//!
//! `cargo run --example embed`

use std::time::Duration;

use sandwarden::job::JobStatus;
use sandwarden::job::spec::{SpecDefaults, parse};
use sandwarden::{Runtime, Settings};

/// The whole example; returns what the job printed.
pub async fn run() -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    // Built-in defaults (local provider, isolated sandboxes) with the store in `dir`.
    let runtime = Runtime::start(Settings::with_data_dir(dir.path())).await?;

    let mut events = runtime.subscribe();
    let spec = parse(
        br#"{"user_id": "embedder", "steps": [
              {"write_file": {"path": "hello.txt", "content": "hello from an embedded runtime\n"}},
              {"run": {"cmd": "cat hello.txt"}}]}"#,
        &SpecDefaults::default(),
    )?;
    let (job, _) = runtime.submit(spec).await?;
    println!("submitted {} ({})", job.id, job.status.as_str());

    // Transitions arrive as events; `wait` is the simple way to block until the end.
    let follow = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            println!("event: {} is {}", event.id, event.status.as_str());
            if event.status.is_terminal() {
                break;
            }
        }
    });
    let done = runtime
        .wait(&job.id, Duration::from_secs(60))
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {} vanished", job.id))?;
    let _ = tokio::time::timeout(Duration::from_secs(5), follow).await;
    anyhow::ensure!(
        done.status == JobStatus::Completed,
        "job ended {}: {:?}",
        done.status.as_str(),
        done.error
    );
    let stdout = done
        .result
        .and_then(|r| r.steps.get(1).and_then(|s| s.stdout.clone()))
        .unwrap_or_default();
    print!("output: {stdout}");

    let breaker = runtime.breaker().await?;
    println!(
        "breaker: {} ({} consecutive failures)",
        breaker.state, breaker.consecutive_failures
    );
    runtime.shutdown().await?;
    Ok(stdout)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await.map(|_| ())
}
