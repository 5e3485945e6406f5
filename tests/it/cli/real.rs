//! The CLI against the real service, so that the stand-in cannot drift from the API unnoticed.

use sandwarden::cli::client::AdminClient;
use sandwarden::cli::repl::run_script;
use sandwarden::cli::submit::{Progress, submit_with};

use crate::support::Service;

#[tokio::test]
async fn the_repl_script_and_submit_work_against_the_real_service() {
    let svc = Service::start(|s| s.admin_token = Some("t0ken".into())).await;
    let client = AdminClient::new(svc.url.clone(), Some("t0ken".into()));

    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.json");
    std::fs::write(
        &job,
        r#"{"user_id":"cli","steps":[{"run":{"cmd":"echo from-the-cli"}}]}"#,
    )
    .unwrap();
    let mut out = Vec::new();
    let code = submit_with(&client, &job, true, Progress::Plain, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("completed"), "{text}");
    assert!(text.contains("from-the-cli"), "{text}");

    let script = "status\nbreaker\nlimits\nqueue\nqueue pause\nqueue resume\njobs\njobs --user cli\nno-such-command\ncleanup\nfaults\n";
    let mut out = Vec::new();
    let failed = run_script(&client, script.as_bytes(), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(failed, 1, "only the bad command fails:\n{text}");
    let errors: Vec<_> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("no-such-command"), "{text}");
    assert!(text.contains("closed"), "{text}");
    assert!(text.contains("paused"), "{text}");
    assert!(
        text.matches("job-").count() >= 2,
        "the job shows in both listings:\n{text}"
    );

    let stranger = AdminClient::new(svc.url.clone(), None);
    let mut out = Vec::new();
    let failed = run_script(&stranger, "breaker\n".as_bytes(), &mut out)
        .await
        .unwrap();
    assert_eq!(failed, 1);
    assert!(String::from_utf8(out).unwrap().contains("unauthorized"));
}
