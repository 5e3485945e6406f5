//! The chaos harness: the whole runtime with the `e2b` provider against the emulator over
//! loopback HTTP, with transient 5xx, 429s with `Retry-After` and one full outage injected,
//! while jobs arrive at a steady rate. It reports what became of every accepted job and how
//! many provider calls it took, for one protection level (`config::Protection`), so that the
//! full protection can be compared with the baselines in the same run.
//!
//! Used at a small size by the test suite (`tests/it/chaos.rs`) and at full size by
//! `bench/chaos.sh` (`cargo run --release --example chaos`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{Protection, ProviderKind};
use crate::emulator::faults::{FaultAction, FaultRule};
use crate::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use crate::job::{JobSpec, JobStatus};
use crate::{Runtime, Settings};

/// What to inject and how much work to send.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    pub protection: Protection,
    pub jobs: usize,
    /// Jobs submitted per second, evenly spaced.
    pub rate_per_sec: f64,
    /// Share of provider calls answered 503 outside the outage.
    pub error_rate: f64,
    /// Share of provider calls answered 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_rate: f64,
    pub retry_after_secs: u64,
    /// Every call fails (503) from `outage_at` after the first submit, for `outage_for`.
    pub outage_at: Duration,
    pub outage_for: Duration,
    pub workers: usize,
    /// Retry backoff base and cap, breaker open time (tuned to the plan's time scale).
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub open_timeout: Duration,
    /// Give up waiting for jobs to end this long after the last submit.
    pub drain_timeout: Duration,
}

impl ChaosPlan {
    /// The issue's full size: 1,000 jobs at 10/s, 20 % 5xx, 5 % 429, a 60 s outage at 20 s.
    pub fn full(protection: Protection) -> Self {
        ChaosPlan {
            protection,
            jobs: 1000,
            rate_per_sec: 10.0,
            error_rate: 0.20,
            rate_limit_rate: 0.05,
            retry_after_secs: 1,
            outage_at: Duration::from_secs(20),
            outage_for: Duration::from_secs(60),
            workers: 8,
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(2),
            open_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(300),
        }
    }

    /// A few seconds' worth, for the test suite.
    pub fn small(protection: Protection) -> Self {
        ChaosPlan {
            jobs: 160,
            rate_per_sec: 80.0,
            outage_at: Duration::from_millis(600),
            outage_for: Duration::from_millis(800),
            retry_base: Duration::from_millis(10),
            retry_cap: Duration::from_millis(100),
            open_timeout: Duration::from_millis(300),
            drain_timeout: Duration::from_secs(60),
            ..Self::full(protection)
        }
    }
}

/// What became of the jobs of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosReport {
    pub protection: Protection,
    pub accepted: usize,
    pub completed: usize,
    pub failed: usize,
    /// Accepted but not ended when the drain timeout passed.
    pub unfinished: usize,
    /// Accepted but absent from the store: must be 0.
    pub lost: usize,
    /// Calls that reached the emulator (faulted or not), and the calls one job needs when
    /// nothing fails (measured on a clean job before the run).
    pub provider_calls: u64,
    pub calls_per_clean_job: f64,
    /// Milliseconds from acceptance to the end, over completed jobs.
    pub completion_p50_ms: u64,
    pub completion_p99_ms: u64,
    pub by_error: BTreeMap<String, usize>,
    /// Calls (faulted or not) by emulator endpoint.
    pub calls_by_endpoint: BTreeMap<String, u64>,
}

impl ChaosReport {
    pub fn completed_ratio(&self) -> f64 {
        self.completed as f64 / self.accepted.max(1) as f64
    }

    /// Provider calls per accepted job.
    pub fn calls_per_job(&self) -> f64 {
        self.provider_calls as f64 / self.accepted.max(1) as f64
    }

    /// Provider calls made per call a job needs: 1.0 means no call was repeated.
    pub fn call_amplification(&self) -> f64 {
        self.calls_per_job() / self.calls_per_clean_job.max(1.0)
    }

    pub const HEADER: &str = "protection  accepted completed failed unfinished lost  calls/job amplification  p50 ms   p99 ms";

    pub fn row(&self) -> String {
        format!(
            "{:<11} {:>8} {:>9} {:>6} {:>10} {:>4} {:>10.2} {:>13.2} {:>8} {:>8}",
            self.protection.as_str(),
            self.accepted,
            self.completed,
            self.failed,
            self.unfinished,
            self.lost,
            self.calls_per_job(),
            self.call_amplification(),
            self.completion_p50_ms,
            self.completion_p99_ms
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("chaos: {0}")]
    Setup(String),
}

fn setup(e: impl std::fmt::Display) -> ChaosError {
    ChaosError::Setup(e.to_string())
}

/// E2B keys have this shape; the emulator checks it.
const API_KEY: &str = "e2b_0000000000c4a05";

/// The job every run submits: one command in a new sandbox.
fn job_spec() -> JobSpec {
    crate::job::spec::parse(
        br#"{"user_id":"chaos","steps":[{"run":{"cmd":"echo ok","timeout":"30s"}}]}"#,
        &Default::default(),
    )
    .expect("the chaos job is valid")
}

fn settings_for(plan: &ChaosPlan, emu: &EmulatorHandle, dir: &std::path::Path) -> Settings {
    let mut s = Settings::with_data_dir(dir);
    s.provider = ProviderKind::E2b;
    s.protection = plan.protection;
    s.e2b.api_url = emu.base_url();
    s.e2b.sandbox_url = Some(emu.base_url());
    s.e2b.api_key = Some(API_KEY.to_string());
    s.workers = plan.workers;
    s.retry.base = plan.retry_base;
    s.retry.cap = plan.retry_cap;
    s.breaker.open_timeout = plan.open_timeout;
    s.breaker.max_open_timeout = plan.open_timeout;
    s.ratelimit.min_create_interval = None;
    // Jobs are held through the outage, not spent on it.
    s.max_attempts = 1000;
    s
}

/// Run one plan with a fresh emulator and service under `work` (an empty directory) and report.
pub async fn run(plan: &ChaosPlan, work: &std::path::Path) -> Result<ChaosReport, ChaosError> {
    let emu = Emulator::start(EmulatorConfig {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        data_dir: work.join("emulator"),
        api_key: Some(API_KEY.to_string()),
    })
    .await
    .map_err(setup)?;
    let rt = Runtime::start(settings_for(plan, &emu, &work.join("service")))
        .await
        .map_err(setup)?;

    // Calibrate: the calls one job needs when nothing fails.
    let faults = emu.faults();
    faults.reset_stats();
    let (probe, _) = rt.submit(job_spec()).await.map_err(setup)?;
    let probe = rt
        .wait(&probe.id, Duration::from_secs(30))
        .await
        .map_err(setup)?;
    match probe {
        Some(j) if j.status == JobStatus::Completed => {}
        other => {
            return Err(setup(format!(
                "the calibration job did not complete: {:?}",
                other.map(|j| (j.status, j.error))
            )));
        }
    }
    let calls_per_clean_job = total_calls(&emu) as f64;
    faults.reset_stats();

    // 429 first: rules are tried in order and the first that fires wins, so the 5xx rule's
    // rate is raised to make its share of all calls `error_rate`.
    faults.add(FaultRule {
        rate: Some(plan.rate_limit_rate),
        ..FaultRule::new(
            None,
            FaultAction::RateLimit {
                retry_after_secs: plan.retry_after_secs,
            },
        )
    });
    faults.add(FaultRule {
        rate: Some((plan.error_rate / (1.0 - plan.rate_limit_rate)).min(1.0)),
        ..FaultRule::new(
            None,
            FaultAction::Status {
                status: 503,
                body: Default::default(),
                message: None,
            },
        )
    });
    let outage = {
        let (faults, at, for_) = (faults.clone(), plan.outage_at, plan.outage_for);
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            faults.add(FaultRule {
                duration: Some(for_),
                ..FaultRule::new(
                    None,
                    FaultAction::Status {
                        status: 503,
                        body: Default::default(),
                        message: Some("injected outage".into()),
                    },
                )
            });
        })
    };

    let mut accepted = Vec::with_capacity(plan.jobs);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate_per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..plan.jobs {
        tick.tick().await;
        match rt.submit(job_spec()).await {
            Ok((job, _)) => accepted.push(job.id),
            Err(e) => tracing::warn!(error = %e, "chaos: a submit was refused"),
        }
    }
    let _ = outage.await;

    let deadline = tokio::time::Instant::now() + plan.drain_timeout;
    let mut report = ChaosReport {
        protection: plan.protection,
        accepted: accepted.len(),
        completed: 0,
        failed: 0,
        unfinished: 0,
        lost: 0,
        provider_calls: 0,
        calls_per_clean_job,
        completion_p50_ms: 0,
        completion_p99_ms: 0,
        by_error: BTreeMap::new(),
        calls_by_endpoint: BTreeMap::new(),
    };
    let mut took = Vec::new();
    for id in &accepted {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match rt.wait(id, left).await.map_err(setup)? {
            None => report.lost += 1,
            Some(job) => match job.status {
                JobStatus::Completed => {
                    report.completed += 1;
                    let end = job.finished_at_ms.unwrap_or(job.created_at_ms);
                    took.push(end.saturating_sub(job.created_at_ms));
                }
                JobStatus::Failed | JobStatus::Dead | JobStatus::Cancelled => {
                    report.failed += 1;
                    let category = job.error.map_or_else(|| "none".into(), |e| e.category);
                    *report.by_error.entry(category).or_default() += 1;
                }
                JobStatus::Pending | JobStatus::Running => report.unfinished += 1,
            },
        }
    }
    report.provider_calls = total_calls(&emu);
    report.calls_by_endpoint = emu
        .faults()
        .stats()
        .into_iter()
        .map(|(endpoint, s)| (endpoint, s.calls))
        .collect();
    took.sort_unstable();
    let pct = |p: f64| -> u64 {
        if took.is_empty() {
            return 0;
        }
        took[((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1]
    };
    report.completion_p50_ms = pct(0.50);
    report.completion_p99_ms = pct(0.99);
    rt.shutdown().await.map_err(setup)?;
    emu.shutdown().await;
    Ok(report)
}

fn total_calls(emu: &EmulatorHandle) -> u64 {
    emu.faults().stats().values().map(|s| s.calls).sum()
}
