//! Sandbox sessions: a kept sandbox serves later jobs of its owner, and dies with its lifetime.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use sandwarden::Runtime;
use sandwarden::job::JobStatus;
use serde_json::json;

use crate::support::{MemProvider, Service, paused_settings, run_spec, run_to_end};

#[tokio::test]
async fn a_kept_sandbox_serves_its_owners_next_job() {
    let svc = Service::start(|_| {}).await;
    let first = svc
        .submit(json!({"user_id": "s-1", "sandbox": {"keep": true},
            "steps": [{"write_file": {"path": "state.txt", "content": "from job one\n"}}]}))
        .await;
    let job = svc.wait(&first).await;
    assert_eq!(job["status"], "completed", "{job}");
    let sandbox = job["result"]["sandbox_id"]
        .as_str()
        .expect("a kept sandbox's id is returned")
        .to_string();

    let second = svc
        .submit(json!({"user_id": "s-1", "sandbox_id": sandbox, "steps": [{"run": {"cmd": "cat state.txt"}}]}))
        .await;
    let job = svc.wait(&second).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["steps"][0]["stdout"], "from job one\n");

    let stranger = svc
        .submit(json!({"user_id": "s-2", "sandbox_id": sandbox, "steps": [{"run": {"cmd": "cat state.txt"}}]}))
        .await;
    let job = svc.wait(&stranger).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another user"),
        "{job}"
    );

    let (_, reg) = svc.get("/v1/admin/sandboxes").await;
    let entry = reg["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == sandbox.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        entry["state"], "killed",
        "the second job did not keep it: {entry}"
    );
    let again = svc
        .submit(
            json!({"user_id": "s-1", "sandbox_id": sandbox, "steps": [{"run": {"cmd": "true"}}]}),
        )
        .await;
    assert_eq!(svc.wait(&again).await["status"], "failed");
}

#[tokio::test(start_paused = true)]
async fn kept_sandboxes_die_at_the_end_of_their_lifetime_and_survive_restarts_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemProvider::default());
    let spec = sandwarden::job::spec::parse(
        br#"{"user_id":"s","sandbox":{"keep":true,"timeout":"10m"},"steps":[{"run":{"cmd":"x"}}]}"#,
        &Default::default(),
    )
    .unwrap();
    {
        let rt = Runtime::start_with_provider(paused_settings(dir.path()), mem.clone())
            .await
            .unwrap();
        let id = rt.submit(spec).await.unwrap().0.id;
        let job = rt
            .wait(&id, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(mem.live(), 1);
        rt.shutdown().await.unwrap();
    }
    // The orphan reaper at start leaves a live session alone.
    let rt = Runtime::start_with_provider(paused_settings(dir.path()), mem.clone())
        .await
        .unwrap();
    assert_eq!(mem.live(), 1, "a live kept sandbox is not an orphan");
    tokio::time::sleep(Duration::from_secs(16 * 60)).await;
    assert_eq!(mem.live(), 0, "the reaper killed it after its lifetime");
    let reg = rt.sandboxes().unwrap();
    assert_eq!(reg.len(), 1);
    assert_eq!(reg[0].state, "killed");
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_kept_sandbox_is_paused_and_the_next_job_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemProvider::default());
    let mut settings = paused_settings(dir.path());
    settings.health.idle_pause_after = Duration::from_secs(10 * 60);
    let rt = Runtime::start_with_provider(settings, mem.clone())
        .await
        .unwrap();
    let keep = sandwarden::job::spec::parse(
        br#"{"user_id":"s","sandbox":{"keep":true,"timeout":"2h"},"steps":[{"write_file":{"path":"a.txt","content":"kept"}}]}"#,
        &Default::default(),
    )
    .unwrap();
    let job = run_to_end(&rt, keep).await;
    assert_eq!(job.status, JobStatus::Completed);
    let sandbox = job.result.unwrap().sandbox_id.unwrap();
    let state = |rt: &sandwarden::RuntimeHandle| {
        let reg = rt.sandboxes().unwrap();
        let s = reg.iter().find(|s| s.id == sandbox).unwrap().clone();
        (s.state, s.in_use_by)
    };

    // Idle for less than 10 minutes: the auto_pause runs (every 5) leave it alone.
    tokio::time::sleep(Duration::from_secs(9 * 60)).await;
    assert_eq!(mem.pauses.load(Ordering::SeqCst), 0);
    assert_eq!(state(&rt).0, "live");

    // Past 10 idle minutes, the next run (at most 5 later, on the wall clock's 5-minute marks,
    // and started within the monitor's 15 s tick) pauses it.
    tokio::time::sleep(Duration::from_secs(6 * 60 + 30)).await;
    assert_eq!(mem.pauses.load(Ordering::SeqCst), 1);
    assert!(mem.paused.lock().unwrap().contains(&sandbox));
    assert_eq!(state(&rt), ("paused".to_string(), vec![]));
    // Paused stays paused: later runs do not pause it again.
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    assert_eq!(mem.pauses.load(Ordering::SeqCst), 1);

    // The next job resumes it first (the provider refuses calls on a paused sandbox) and
    // finds its files.
    let next = sandwarden::job::spec::parse(
        format!(r#"{{"user_id":"s","sandbox_id":"{sandbox}","sandbox":{{"keep":true}},"steps":[{{"read_file":{{"path":"a.txt"}}}}]}}"#).as_bytes(),
        &Default::default(),
    )
    .unwrap();
    let job = run_to_end(&rt, next).await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(
        job.result.unwrap().steps[0].content.as_deref(),
        Some("kept")
    );
    assert_eq!(mem.resumes.load(Ordering::SeqCst), 1);
    assert!(mem.paused.lock().unwrap().is_empty());
    assert_eq!(state(&rt), ("live".to_string(), vec![]));

    // Used again just now: idle time starts over.
    tokio::time::sleep(Duration::from_secs(6 * 60)).await;
    assert_eq!(mem.pauses.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    assert_eq!(mem.pauses.load(Ordering::SeqCst), 2);
    assert_eq!(state(&rt).0, "paused");
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_a_running_job_uses_is_not_paused_and_a_pause_cut_short_is_settled_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemProvider::default());
    let now = sandwarden::clock::now_ms();
    let record = |id: &str, state: &str, in_use_by: Vec<String>, idle_ms: u64| {
        sandwarden::store::SandboxRecord {
            id: id.into(),
            owner: "s".into(),
            created_by: "j0".into(),
            last_job: "j0".into(),
            created_at_ms: now - idle_ms,
            last_used_ms: now - idle_ms,
            expires_at_ms: now + 3_600_000,
            state: state.into(),
            in_use_by,
        }
    };
    {
        let store = sandwarden::store::Store::open_with_inline_flush(dir.path()).unwrap();
        let mut running = sandwarden::job::Job::new(1, run_spec("x"), now);
        running.status = JobStatus::Running;
        store.insert_job(&running).unwrap();
        let idle = 5 * 60_000;
        // In use by a running job; left by a run that no longer runs; used a moment ago.
        store
            .put_sandbox(&record("busy", "live", vec![running.id.clone()], idle))
            .unwrap();
        store
            .put_sandbox(&record("stale", "live", vec!["j-gone".into()], idle))
            .unwrap();
        store
            .put_sandbox(&record("recent", "live", vec![], 1000))
            .unwrap();
        for id in ["busy", "stale", "recent"] {
            mem.create_with_id(id);
        }
        let outcome =
            sandwarden::health::pause_idle(mem.as_ref(), &store, Duration::from_secs(60)).await;
        assert_eq!(outcome, "ok: paused 1");
        let state = |id: &str| store.get_sandbox(id).unwrap().unwrap();
        assert_eq!(state("busy").state, "live", "in use by a running job");
        assert_eq!(state("recent").state, "live", "used a moment ago");
        assert_eq!(state("stale").state, "paused");
        assert!(state("stale").in_use_by.is_empty());
        assert_eq!(
            mem.paused.lock().unwrap().iter().collect::<Vec<_>>(),
            ["stale"]
        );
        // A process that stopped between "pausing" and the provider's answer.
        store
            .put_sandbox(&record("cut", "pausing", vec![], 0))
            .unwrap();
        store.flush().await.unwrap();
    }
    let rt = Runtime::start_with_provider(paused_settings(dir.path()), mem.clone())
        .await
        .unwrap();
    let cut = rt
        .sandboxes()
        .unwrap()
        .into_iter()
        .find(|s| s.id == "cut")
        .unwrap();
    assert_eq!(cut.state, "paused", "a pause cut short is taken as done");
    rt.shutdown().await.unwrap();
}
