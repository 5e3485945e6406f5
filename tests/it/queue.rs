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
