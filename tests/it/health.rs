//! The health monitor: schedules on a simulated day, a missed schedule at start, the health
//! report for each cause, and Sentry alerts through the sentry crate's test transport.

use std::sync::Arc;
use std::time::Duration;

use sandwarden::Runtime;
use sandwarden::provider::faults::Faults;
use sandwarden::ratelimit::policy::Operation;
use sandwarden::runtime::BreakerAction;

use crate::support::{MemProvider, fail_every_call, mem_runtime, paused_settings, run_spec};

/// Run the health check now and return its report.
async fn checked(rt: &sandwarden::RuntimeHandle) -> sandwarden::health::HealthReport {
    rt.run_task("health").await.unwrap().unwrap();
    rt.health().await.unwrap()
}

async fn runs(rt: &sandwarden::RuntimeHandle, name: &str) -> u64 {
    rt.tasks()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap()
        .runs
}

#[tokio::test(start_paused = true)]
async fn every_schedule_fires_at_its_times_over_a_simulated_day() {
    let dir = tempfile::tempdir().unwrap();
    let rt = mem_runtime(dir.path()).await;
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let (health, sweep, limits, jobs) = (
        runs(&rt, "health").await,
        runs(&rt, "queue_sweep").await,
        runs(&rt, "ratelimit_cleanup").await,
        runs(&rt, "job_cleanup").await,
    );
    // Every 5 min, every 2 min, hourly, daily at 02:00 (each +-1 for where the day starts).
    assert!((287..=289).contains(&health), "health ran {health} times");
    assert!(
        (719..=721).contains(&sweep),
        "queue_sweep ran {sweep} times"
    );
    assert!(
        (23..=25).contains(&limits),
        "ratelimit_cleanup ran {limits} times"
    );
    assert_eq!(jobs, 1, "job_cleanup ran {jobs} times");
    for five_minutely in ["sandbox_reaper", "auto_pause"] {
        let n = runs(&rt, five_minutely).await;
        assert!((287..=289).contains(&n), "{five_minutely} ran {n} times");
    }
    let tasks = rt.tasks().await.unwrap();
    let cleanup = tasks.iter().find(|t| t.name == "job_cleanup").unwrap();
    let last = cleanup.last.as_ref().unwrap();
    assert!(last.outcome.starts_with("ok"), "{last:?}");
    assert_eq!(
        (last.at_ms / 60_000) % 1440,
        120,
        "job_cleanup runs at 02:00 UTC"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_schedule_missed_while_down_runs_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let rt = mem_runtime(dir.path()).await;
        rt.run_task("ratelimit_cleanup").await.unwrap().unwrap();
        rt.shutdown().await.unwrap();
    }
    // Down for two hours: two hourly runs were missed.
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let rt = mem_runtime(dir.path()).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        runs(&rt, "ratelimit_cleanup").await,
        1,
        "the missed task runs once at start, not once per miss"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_health_report_follows_each_cause_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = paused_settings(dir.path());
    settings.ratelimit.limits.insert(Operation::Create, 2);
    let rt = Runtime::start_with_provider(settings, Arc::new(MemProvider::default()))
        .await
        .unwrap();
    let r = checked(&rt).await;
    assert_eq!(r.status, "healthy", "{r:?}");

    rt.breaker_control(BreakerAction::Open).await.unwrap();
    let r = checked(&rt).await;
    assert_eq!(r.status, "unhealthy", "{r:?}");
    assert!(
        r.reasons
            .iter()
            .any(|x| x.contains("circuit breaker is forced open")),
        "{r:?}"
    );
    rt.breaker_control(BreakerAction::Reset).await.unwrap();
    assert_eq!(checked(&rt).await.status, "healthy");

    for i in 0..2 {
        let id = rt.submit(run_spec(&format!("q{i}"))).await.unwrap().0.id;
        rt.wait(&id, Duration::from_secs(30)).await.unwrap();
    }
    let r = checked(&rt).await;
    assert_eq!(r.status, "degraded", "{r:?}");
    assert!(
        r.reasons
            .iter()
            .any(|x| x.contains("sandbox_create at 100")),
        "{r:?}"
    );

    fail_every_call(&rt, 503);
    let r = checked(&rt).await;
    assert_eq!(r.status, "unhealthy", "{r:?}");
    assert!(!r.provider_reachable);
    rt.faults().set(Faults::default());

    // An hour later the quota window has freed.
    tokio::time::sleep(Duration::from_secs(3601)).await;
    let r = checked(&rt).await;
    assert_eq!(r.status, "healthy", "{r:?}");
    assert_eq!(r.workers_alive, Some(r.workers_configured));
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn sentry_gets_one_event_per_incident() {
    let transport = sentry::test::TestTransport::new();
    let _guard = sentry::init(sentry::ClientOptions {
        dsn: Some("https://public@sentry.invalid/1".parse().unwrap()),
        transport: Some(Arc::new(transport.clone())),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut settings = paused_settings(dir.path());
    settings.ratelimit.limits.insert(Operation::Run, 20);
    let rt = Runtime::start_with_provider(settings, Arc::new(MemProvider::default()))
        .await
        .unwrap();

    // 19 of 20 runs: 95 % passes the 90 % mark once.
    for i in 0..19 {
        let id = rt.submit(run_spec(&format!("s{i}"))).await.unwrap().0.id;
        rt.wait(&id, Duration::from_secs(30)).await.unwrap();
    }
    // An outage opens the breaker; a probe a minute later fails.
    fail_every_call(&rt, 503);
    for i in 0..3 {
        rt.submit(run_spec(&format!("o{i}"))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(rt.breaker().await.unwrap().state, "open");
    tokio::time::sleep(Duration::from_secs(45)).await;
    rt.shutdown().await.unwrap();

    let events = transport.fetch_and_clear_events();
    let of = |alert: &str| {
        events
            .iter()
            .filter(|e| e.tags.get("alert").map(String::as_str) == Some(alert))
            .collect::<Vec<_>>()
    };
    let rate = of("rate_usage");
    assert_eq!(rate.len(), 1, "{events:#?}");
    assert_eq!(rate[0].level, sentry::Level::Warning);
    assert_eq!(
        rate[0].tags.get("operation").map(String::as_str),
        Some("command_run")
    );
    let opened = of("breaker_opened");
    assert_eq!(opened.len(), 1, "{events:#?}");
    assert_eq!(opened[0].level, sentry::Level::Error);
    assert_eq!(
        opened[0].tags.get("provider").map(String::as_str),
        Some("mem")
    );
    assert!(opened[0].extra.contains_key("consecutive_failures"));
    let probes = of("probe_failed");
    assert!(!probes.is_empty(), "{events:#?}");
    assert!(probes.iter().all(|e| e.level == sentry::Level::Error));
}

#[tokio::test(start_paused = true)]
async fn a_hung_worker_is_replaced_and_its_job_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = paused_settings(dir.path());
    settings.workers = 1;
    settings.hung_grace = Duration::from_secs(60);
    let rt = Runtime::start_with_provider(settings, Arc::new(MemProvider::default()))
        .await
        .unwrap();
    rt.faults().stall_next_jobs(1);
    let id = rt.submit(run_spec("stuck once")).await.unwrap().0.id;
    // Time bound of this job: 30 s look for earlier sandboxes + 60 s create + 120 s run + 30 s
    // clean-up = 240 s; hung after 240 s + 60 s grace.
    tokio::time::sleep(Duration::from_secs(290)).await;
    let r = checked(&rt).await;
    assert_eq!(r.status, "healthy", "still within its bound: {r:?}");
    assert_eq!(
        rt.get(&id).unwrap().unwrap().status,
        sandwarden::job::JobStatus::Running
    );

    tokio::time::sleep(Duration::from_secs(20)).await;
    let r = checked(&rt).await;
    assert_eq!(r.status, "degraded", "{r:?}");
    assert!(
        r.reasons
            .iter()
            .any(|x| x.contains("replaced 1 hung worker(s)") && x.contains(&id)),
        "{r:?}"
    );
    let job = rt
        .wait(&id, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, sandwarden::job::JobStatus::Completed);
    assert_eq!(job.attempts.len(), 2, "{:?}", job.attempts);
    assert_eq!(job.attempts[0].outcome.as_deref(), Some("interrupted"));
    assert!(
        job.attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("hung and was replaced")),
        "{:?}",
        job.attempts[0]
    );
    // The replacement takes work, and the next check finds the pool whole again.
    let next = rt.submit(run_spec("after")).await.unwrap().0.id;
    let done = rt.wait(&next, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.unwrap().status, sandwarden::job::JobStatus::Completed);
    let r = checked(&rt).await;
    assert_eq!(r.status, "healthy", "{r:?}");
    assert_eq!(r.workers_alive, Some(1));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_stall_fault_is_set_and_shown_through_the_admin_api() {
    let svc = crate::support::Service::start(|_| {}).await;
    let put = |body: serde_json::Value| {
        let (http, url) = (
            reqwest::Client::new(),
            format!("{}/v1/admin/faults", svc.url),
        );
        async move {
            let r = http.put(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = put(serde_json::json!({"enabled": false, "stall_jobs": 2})).await;
    assert_eq!(
        (status, &body["stall_jobs"]),
        (200, &serde_json::json!(2)),
        "{body}"
    );
    assert_eq!(svc.get("/v1/admin/faults").await.1["stall_jobs"], 2);
    assert_eq!(svc.rt.faults().stalls_left(), 2);
    let (status, body) = put(serde_json::json!({"enabled": false, "stall_jobs": -1})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "stall_jobs", "{body}");
    let (_, body) = put(serde_json::json!({"enabled": false})).await;
    assert_eq!(body["stall_jobs"], 0, "setting faults without it clears it");
}
