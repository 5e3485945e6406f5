//! Sandbox sessions: a kept sandbox serves later jobs of its owner, and dies with its lifetime.

use std::sync::Arc;
use std::time::Duration;

use sandwarden::Runtime;
use sandwarden::job::JobStatus;
use serde_json::json;

use crate::support::{MemProvider, Service, paused_settings};

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
