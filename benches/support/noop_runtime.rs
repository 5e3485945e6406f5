//! The runtime the queue benchmarks share: the no-op provider, `workers` workers, the store in
//! `dir`, and the one-step job they all submit; and how they read their arguments.

use std::sync::Arc;

use sandwarden::config::IsolationKind;
use sandwarden::job::JobSpec;
use sandwarden::provider::noop::NoopProvider;
use sandwarden::{Runtime, RuntimeHandle, Settings};

/// The `n`-th command-line argument if it parses to a positive value, else `default`.
pub fn arg<T: std::str::FromStr + PartialOrd + Default>(n: usize, default: T) -> T {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .filter(|v| *v > T::default())
        .unwrap_or(default)
}

pub async fn start(dir: &std::path::Path, workers: usize) -> (RuntimeHandle, JobSpec) {
    let mut settings = Settings::with_data_dir(dir);
    settings.workers = workers;
    // Irrelevant with the no-op provider (nothing is spawned); set so that no probe can matter.
    settings.isolation = IsolationKind::None;
    let rt = Runtime::start_with_provider(settings, Arc::new(NoopProvider))
        .await
        .expect("the runtime starts");
    let spec = sandwarden::job::spec::parse(
        br#"{"user_id":"bench","steps":[{"run":{"cmd":"true"}}]}"#,
        &Default::default(),
    )
    .expect("a valid spec");
    (rt, spec)
}
