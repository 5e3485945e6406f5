//! The local provider through the whole service: timeouts, process groups, path confinement.

use serde_json::json;

use crate::support::{Service, processes_matching};

#[tokio::test]
async fn step_timeout_kills_the_whole_process_group() {
    let svc = Service::start(|_| {}).await;
    // A background child and a foreground sleep, each with a marker we can find in /proc.
    let id = svc
        .submit(json!({"user_id": "u", "steps": [{"run": {
            "cmd": "sleep 987651 & sleep 987652; echo never",
            "timeout": "1s"
        }}]}))
        .await;
    let job = svc.wait(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["category"], "timeout", "{job}");
    assert!(
        processes_matching("sleep 98765").is_empty(),
        "a process survived its step's timeout"
    );
}

#[tokio::test]
async fn background_children_do_not_outlive_a_finished_step() {
    let svc = Service::start(|_| {}).await;
    let id = svc
        .submit(json!({"user_id": "u", "steps": [{"run": {"cmd": "sleep 987653 & echo started"}}]}))
        .await;
    let job = svc.wait(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["steps"][0]["stdout"], "started\n");
    assert!(
        processes_matching("sleep 987653").is_empty(),
        "a background child survived"
    );
}

#[tokio::test]
async fn paths_outside_the_sandbox_are_refused() {
    let svc = Service::start(|_| {}).await;
    for (step, needle) in [
        (
            json!({"write_file": {"path": "../escape.txt", "content": "x"}}),
            "escapes the sandbox",
        ),
        (
            json!({"write_file": {"path": "/etc/sandwarden-test", "content": "x"}}),
            "outside the sandbox",
        ),
        (
            json!({"read_file": {"path": "/etc/passwd"}}),
            "outside the sandbox",
        ),
        (
            json!({"read_file": {"path": "a/../../../etc/passwd"}}),
            "escapes the sandbox",
        ),
    ] {
        let id = svc.submit(json!({"user_id": "u", "steps": [step]})).await;
        let job = svc.wait(&id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["category"], "permanent");
        assert!(
            job["error"]["message"].as_str().unwrap().contains(needle),
            "{job}"
        );
        assert_eq!(
            job["attempts"].as_array().unwrap().len(),
            1,
            "permanent errors are not retried"
        );
    }
    // A symlink made inside the sandbox that points out of it.
    let id = svc
        .submit(json!({"user_id": "u", "steps": [
            {"run": {"cmd": "ln -s /etc out"}},
            {"read_file": {"path": "out/hostname"}}
        ]}))
        .await;
    let job = svc.wait(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("symlink"),
        "{job}"
    );
    assert!(!std::path::Path::new("/etc/sandwarden-test").exists());
}

#[tokio::test]
async fn environment_is_scrubbed_and_job_env_passed() {
    // SAFETY of the test: the variable is only read by the child processes below.
    let svc = Service::start(|_| {}).await;
    let id = svc
        .submit(json!({"user_id": "u", "sandbox": {"env": {"GREETING": "hi"}},
            "steps": [{"run": {"cmd": "echo $GREETING; env | cut -d= -f1 | sort | tr '\\n' ' '"}}]}))
        .await;
    let job = svc.wait(&id).await;
    let out = job["result"]["steps"][0]["stdout"].as_str().unwrap();
    assert!(out.starts_with("hi\n"), "{out}");
    assert!(
        !out.contains("CARGO"),
        "the service's environment leaked: {out}"
    );
}
