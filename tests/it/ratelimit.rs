//! The rate limiter end to end, on tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use sandwarden::Runtime;
use sandwarden::job::JobStatus;
use sandwarden::provider::faults::Faults;
use sandwarden::ratelimit::policy::Operation;

use crate::support::{MemProvider, op_usage, paused_settings, run_spec};

#[tokio::test(start_paused = true)]
async fn a_spent_create_quota_leaves_jobs_pending_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = paused_settings(dir.path());
    settings.ratelimit.limits.insert(Operation::Create, 5);
    let mem = Arc::new(MemProvider::default());
    let rt = Runtime::start_with_provider(settings, mem.clone())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(rt.submit(run_spec(&format!("j{i}"))).await.unwrap().0.id);
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let jobs: Vec<_> = ids.iter().map(|id| rt.get(id).unwrap().unwrap()).collect();
    let completed = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Completed)
        .count();
    let pending: Vec<_> = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Pending)
        .collect();
    assert_eq!(completed, 5, "{jobs:#?}");
    assert_eq!(pending.len(), 3);
    for j in &pending {
        let reason = j.reason.as_deref().unwrap_or("");
        assert!(
            reason.contains("sandbox_create quota reached (5/5"),
            "{reason}"
        );
        assert!(
            j.run_at_ms > sandwarden::clock::now_ms(),
            "it waits for capacity to free"
        );
    }
    assert!(
        jobs.iter()
            .all(|j| j.status != JobStatus::Failed && j.status != JobStatus::Dead)
    );
    let create = op_usage(&rt, "sandbox_create").await;
    assert_eq!(
        (create.count, create.limit, create.state),
        (5, Some(5), "blocked")
    );
    let view = rt.limits().await.unwrap();
    assert!(view.recent_events.iter().any(|e| e.kind == "warning"));
    assert_eq!(
        view.recent_events
            .iter()
            .filter(|e| e.kind == "warning")
            .count(),
        1,
        "warned once per crossing"
    );

    // An hour later the window frees and the rest run by themselves.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    for id in &ids {
        let job = rt
            .wait(id, Duration::from_secs(120))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_holds_the_operation_for_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemProvider::default());
    let rt = Runtime::start_with_provider(paused_settings(dir.path()), mem.clone())
        .await
        .unwrap();
    rt.faults().set(Faults {
        enabled: true,
        error_rate: 1.0,
        status: 429,
        retry_after: Some(Duration::from_secs(7)),
        ..Default::default()
    });
    let first = rt.submit(run_spec("a")).await.unwrap().0.id;
    // Let the first create hit the 429, then let the provider recover.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rt.faults().injected(), 1);
    // The limiter records the 429's time exactly; the test's own clock reading would not be
    // (the paused clock may move while the store fsyncs).
    let create = op_usage(&rt, "sandbox_create").await;
    let cooldown_until = create.cooldown_until_ms.expect("a cool-down after the 429");
    rt.faults().set(Faults::default());
    let second = rt.submit(run_spec("b")).await.unwrap().0.id;
    for id in [&first, &second] {
        let job = rt.wait(id, Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    }
    let times = mem.create_times.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    for t in times {
        assert!(
            t >= cooldown_until,
            "a create went out {} ms before the cool-down ended",
            cooldown_until - t
        );
    }
    assert_eq!(
        rt.faults().injected(),
        1,
        "nothing else was sent during the cool-down"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn usage_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || {
        let mut s = paused_settings(dir.path());
        s.ratelimit.limits.insert(Operation::Create, 3);
        s
    };
    {
        let rt = Runtime::start_with_provider(settings(), Arc::new(MemProvider::default()))
            .await
            .unwrap();
        for i in 0..3 {
            let id = rt.submit(run_spec(&format!("r{i}"))).await.unwrap().0.id;
            rt.wait(&id, Duration::from_secs(30)).await.unwrap();
        }
        rt.shutdown().await.unwrap();
    }
    let rt = Runtime::start_with_provider(settings(), Arc::new(MemProvider::default()))
        .await
        .unwrap();
    let create = op_usage(&rt, "sandbox_create").await;
    assert_eq!(
        create.count, 3,
        "a restart must not hand out a fresh window"
    );
    assert_eq!(create.remaining, Some(0));
    let id = rt.submit(run_spec("after")).await.unwrap().0.id;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rt.get(&id).unwrap().unwrap().status, JobStatus::Pending);
    rt.shutdown().await.unwrap();
}
