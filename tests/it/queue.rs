//! Queue order, supervision and lease recovery, with in-memory providers.

use std::sync::Arc;
use std::time::Duration;

use sandwarden::job::JobStatus;
use sandwarden::{Runtime, Settings};
use serde_json::json;

use crate::support::{GateProvider, MemProvider, Service, run_job, run_spec};

#[tokio::test]
async fn priority_order_then_fifo_within_a_priority() {
    let mem = Arc::new(MemProvider::default());
    let gate = Arc::new(GateProvider::new(mem.clone(), true));
    let svc = Service::with_provider(gate.clone(), |s| s.workers = 1).await;
    // The first job occupies the only worker (held at create) while the rest queue up.
    let blocker = svc.submit(run_job("u", "blocker")).await;
    let mut expected_tail = Vec::new();
    let mut submitted = Vec::new();
    for (name, prio) in [
        ("l1", "low"),
        ("n1", "normal"),
        ("h1", "high"),
        ("l2", "low"),
        ("h2", "high"),
        ("n2", "normal"),
    ] {
        let id = svc
            .submit(json!({"user_id": "u", "priority": prio, "steps": [{"run": {"cmd": name}}]}))
            .await;
        submitted.push((name, id));
    }
    for want in ["h1", "h2", "n1", "n2", "l1", "l2"] {
        expected_tail.push(
            submitted
                .iter()
                .find(|(n, _)| *n == want)
                .unwrap()
                .1
                .clone(),
        );
    }
    gate.open();
    for (_, id) in &submitted {
        assert_eq!(svc.wait(id).await["status"], "completed");
    }
    let order = mem.creates.lock().unwrap().clone();
    assert_eq!(order[0], blocker);
    assert_eq!(order[1..].to_vec(), expected_tail);
}

#[tokio::test]
async fn a_worker_panic_is_survived_and_the_job_completes() {
    let mem = Arc::new(MemProvider::default());
    let gate = Arc::new(GateProvider::new(mem.clone(), false));
    gate.panic_next(1);
    let svc = Service::with_provider(gate.clone(), |s| s.workers = 2).await;
    let id = svc.submit(run_job("u", "echo ok")).await;
    let job = svc.wait(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job}");
    assert_eq!(attempts[0]["outcome"], "interrupted");
    assert_eq!(attempts[1]["outcome"], "completed");
    assert_eq!(
        svc.rt.pool_size().await.unwrap(),
        2,
        "the crashed worker was replaced"
    );
    // The pool still takes work.
    let again = svc.submit(run_job("u", "echo again")).await;
    assert_eq!(svc.wait(&again).await["status"], "completed");
    assert_eq!(mem.live(), 0, "no sandbox left behind");
}

#[tokio::test]
async fn a_restart_storm_stops_the_runtime_with_a_reason() {
    let mem = Arc::new(MemProvider::default());
    let gate = Arc::new(GateProvider::new(mem.clone(), false));
    gate.panic_next(1000);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::with_data_dir(dir.path());
    settings.workers = 2;
    settings.restart_limit = 3;
    settings.restart_window = Duration::from_secs(60);
    settings.max_attempts = 1000;
    let rt = Runtime::start_with_provider(settings, gate).await.unwrap();
    let spec = run_spec("boom");
    rt.submit(spec).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), rt.stopped())
        .await
        .expect("the runtime should stop");
    let reason = stopped.unwrap_err();
    assert!(reason.contains("restart storm"), "{reason}");
}

#[tokio::test]
async fn interrupted_jobs_are_re_leased_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = run_spec("x");
    let id = {
        let mem = Arc::new(MemProvider::default());
        let gate = Arc::new(GateProvider::new(mem, true));
        let rt = Runtime::start_with_provider(Settings::with_data_dir(dir.path()), gate)
            .await
            .unwrap();
        let (job, _) = rt.submit(spec).await.unwrap();
        // Wait until it is running (held at create), then stop the process's tree.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rt.get(&job.id).unwrap().unwrap().status != JobStatus::Running {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rt.shutdown().await.unwrap();
        job.id
    };
    let mem = Arc::new(MemProvider::default());
    let rt = Runtime::start_with_provider(Settings::with_data_dir(dir.path()), mem)
        .await
        .unwrap();
    let job = rt
        .wait(&id, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.attempts.len(), 2);
    assert_eq!(job.attempts[0].outcome.as_deref(), Some("interrupted"));
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn transient_failures_end_in_dead_letters_that_an_admin_can_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::support::paused_settings(dir.path());
    settings.max_attempts = 2;
    // Keep the breaker out of it so that every run reaches the provider.
    settings.breaker.failure_threshold = 1000;
    let rt = Runtime::start_with_provider(settings, Arc::new(MemProvider::default()))
        .await
        .unwrap();
    rt.faults().set(sandwarden::provider::faults::Faults {
        enabled: true,
        error_rate: 1.0,
        status: 503,
        ..Default::default()
    });
    let id = rt.submit(run_spec("doomed")).await.unwrap().0.id;
    let job = rt
        .wait(&id, Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Dead, "{job:?}");
    assert_eq!(job.attempts.len(), 2);
    assert_eq!(job.attempts[0].outcome.as_deref(), Some("requeued"));
    assert_eq!(job.error.as_ref().unwrap().category, "transient");
    let dead = rt.list_all(Some(JobStatus::Dead), 10, None).unwrap();
    assert_eq!(dead.jobs.len(), 1);

    rt.faults().set(Default::default());
    let retried = rt.retry(&id).await.unwrap();
    assert_eq!(retried.status, JobStatus::Pending);
    let job = rt
        .wait(&id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    assert_eq!(job.attempts.len(), 3, "the history is kept");
    assert!(
        rt.retry(&id).await.is_err(),
        "a completed job is not retried"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn paused_dispatch_holds_jobs_until_resumed_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let rt = Runtime::start_with_provider(
            crate::support::paused_settings(dir.path()),
            Arc::new(MemProvider::default()),
        )
        .await
        .unwrap();
        assert!(rt.set_paused(true).await.unwrap());
        let id = rt.submit(run_spec("held")).await.unwrap().0.id;
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(rt.get(&id).unwrap().unwrap().status, JobStatus::Pending);
        rt.shutdown().await.unwrap();
        id
    };
    let rt = Runtime::start_with_provider(
        crate::support::paused_settings(dir.path()),
        Arc::new(MemProvider::default()),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        rt.get(&id).unwrap().unwrap().status,
        JobStatus::Pending,
        "pause survives a restart"
    );
    assert!(rt.stats().await.unwrap().paused);
    assert!(!rt.set_paused(false).await.unwrap());
    let job = rt
        .wait(&id, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn delayed_jobs_wait_for_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemProvider::default());
    let rt = Runtime::start_with_provider(crate::support::paused_settings(dir.path()), mem.clone())
        .await
        .unwrap();
    let spec = sandwarden::job::spec::parse(
        br#"{"user_id":"u","delay":"10m","steps":[{"run":{"cmd":"later"}}]}"#,
        &Default::default(),
    )
    .unwrap();
    let later = rt.submit(spec).await.unwrap().0.id;
    let now = rt.submit(run_spec("now")).await.unwrap().0.id;
    assert_eq!(
        rt.wait(&now, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Completed
    );
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    assert_eq!(rt.get(&later).unwrap().unwrap().status, JobStatus::Pending);
    tokio::time::sleep(Duration::from_secs(6 * 60)).await;
    let job = rt
        .wait(&later, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert!(job.started_at_ms.unwrap() >= job.created_at_ms + 600_000);
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cleanup_removes_only_jobs_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::support::paused_settings(dir.path());
    settings.retention = Duration::from_secs(3600);
    // Only the explicit run below cleans up.
    for (name, cron) in settings.health.schedules.iter_mut() {
        if *name == "job_cleanup" {
            *cron = sandwarden::health::Cron::parse("0 0 1 1 *").unwrap();
        }
    }
    let rt = Runtime::start_with_provider(settings, Arc::new(MemProvider::default()))
        .await
        .unwrap();
    let old = rt.submit(run_spec("old")).await.unwrap().0.id;
    rt.wait(&old, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let fresh = rt.submit(run_spec("fresh")).await.unwrap().0.id;
    rt.wait(&fresh, Duration::from_secs(30)).await.unwrap();
    let held = {
        rt.set_paused(true).await.unwrap();
        rt.submit(run_spec("pending")).await.unwrap().0.id
    };
    let removed = rt.cleanup().await.unwrap();
    assert_eq!(removed, 1);
    assert!(rt.get(&old).unwrap().is_none(), "the old job is gone");
    assert!(
        rt.get(&fresh).unwrap().is_some(),
        "a job within retention stays"
    );
    assert!(
        rt.get(&held).unwrap().is_some(),
        "pending jobs are never cleaned up"
    );
    assert_eq!(
        rt.list("u", None, 10, None).unwrap().jobs.len(),
        2,
        "the user index follows"
    );
    rt.shutdown().await.unwrap();
}
