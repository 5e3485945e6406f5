//! `submit --wait` against the fake API, `show_job` and `list_jobs`.

use sandwarden::cli::client::{AdminClient, JobQuery};
use sandwarden::cli::submit::{Progress, list_jobs, show_job, submit, submit_with};

fn job_file(dir: &tempfile::TempDir, body: &str) -> std::path::PathBuf {
    let p = dir.path().join("job.json");
    std::fs::write(&p, body).unwrap();
    p
}

const JOB: &str =
    r#"{"user_id":"u-9","steps":[{"run":{"cmd":"echo a"}},{"run":{"cmd":"echo b"}}]}"#;

#[tokio::test]
async fn submit_wait_follows_pending_running_completed_and_exits_0() {
    let base = super::fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = job_file(&dir, JOB);
    let mut out = Vec::new();
    let code = submit(&base, None, &path, true, &mut out).await.unwrap();
    let s = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{s}");
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "job-new-1");
    // Not a terminal: one plain line per status change.
    assert!(
        lines[1].starts_with("job-new-1: running (step 0/2, "),
        "{s}"
    );
    assert!(
        lines[2].starts_with("job-new-1: completed (step 2/2, "),
        "{s}"
    );
    assert_eq!(
        &lines[3..],
        [
            "step 1 run exit 0 (3ms)",
            "  stdout:",
            "    out 0",
            "step 2 run exit 0 (3ms)",
            "  stdout:",
            "    out 1"
        ]
    );
}

#[tokio::test]
async fn live_progress_is_one_updating_line() {
    let base = super::fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = job_file(&dir, JOB);
    let client = AdminClient::new(base, None);
    let mut out = Vec::new();
    let code = submit_with(&client, &path, true, Progress::Live, &mut out)
        .await
        .unwrap();
    let s = String::from_utf8(out).unwrap();
    assert_eq!(code, 0);
    assert!(
        s.starts_with("job-new-1\n\r\x1b[K/ job-new-1 submitted  step 0/0  0.0s"),
        "{s:?}"
    );
    assert!(s.contains(" job-new-1 running  step 1/2  "), "{s:?}");
    assert!(s.contains("\r\x1b[Kjob-new-1: completed after "), "{s:?}");
    // Everything before the final line is on one terminal line.
    let before_final = s.split("job-new-1: completed").next().unwrap();
    assert_eq!(before_final.matches('\n').count(), 1, "{s:?}");
}

#[tokio::test]
async fn without_wait_prints_the_id_and_bad_files_are_named() {
    let base = super::fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    assert_eq!(
        submit(&base, None, &job_file(&dir, JOB), false, &mut out)
            .await
            .unwrap(),
        0
    );
    assert_eq!(String::from_utf8(out).unwrap(), "job-new-1\n");
    let bad = job_file(&dir, "{\"steps\": [");
    let e = submit(&base, None, &bad, false, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("job file {} is not valid JSON: ", bad.display())),
        "{e}"
    );
    let empty = job_file(&dir, r#"{"steps": []}"#);
    let e = submit(&base, None, &empty, false, &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "steps: must have at least one step");
    let e = submit(
        &super::fake::unreachable_url(),
        None,
        &empty,
        false,
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("service unreachable at http://127.0.0.1:"),
        "{e}"
    );
}

#[tokio::test]
async fn show_and_list_jobs() {
    let base = super::fake::start().await;
    let client = AdminClient::new(base, Some(super::fake::TOKEN.into()));
    let mut out = Vec::new();
    assert_eq!(show_job(&client, "job-dead-1", &mut out).await.unwrap(), 1);
    let s = String::from_utf8(out).unwrap();
    assert!(
        s.starts_with("job-dead-1: dead\n  user      u-1\n  created   2023-11-14T22:13:20Z\n"),
        "{s}"
    );
    let e = show_job(&client, "job-x", &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "not found: job job-x");
    let mut out = Vec::new();
    let q = JobQuery {
        status: Some("completed".into()),
        ..Default::default()
    };
    list_jobs(&client, &q, &mut out).await.unwrap();
    let s = String::from_utf8(out).unwrap();
    assert!(
        s.contains("job-done-2  completed") && !s.contains("job-dead-1"),
        "{s}"
    );
}
