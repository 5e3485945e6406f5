//! `run_script` and `AdminClient` against the fake API: outputs, one-line errors, 401, unreachable.

use sandwarden::cli::client::{AdminClient, ClientError};
use sandwarden::cli::repl::{parse, run_command, run_script};

async fn script(base: &str, token: Option<&str>, text: &str) -> (usize, String) {
    let client = AdminClient::new(base, token.map(str::to_string));
    let mut out = Vec::new();
    let failed = run_script(&client, text.as_bytes(), &mut out)
        .await
        .unwrap();
    (failed, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn a_bad_command_in_the_middle_prints_one_error_and_the_script_goes_on() {
    let base = super::fake::start().await;
    let text = "status\nbreaker\nfrobnicate now\nqueue pause\nqueue\njobs --status dead\n\
                # a comment\n\njob show job-nope\nfaults set error_rate=0.5 status=503 latency=100ms\n\
                limits\ncleanup\njob retry job-dead-1\njobs --user u-2\nquit\nstatus\n";
    let (failed, out) = script(&base, Some(super::fake::TOKEN), text).await;
    assert_eq!(failed, 2, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        [
            "error: line 3: unknown command \"frobnicate\"; type `help` for the list",
            "error: line 9: not found: job job-nope",
        ],
        "{out}"
    );
    for want in [
        &format!("service  ok at {base}"),
        "breaker  closed (0 consecutive failures)",
        "breaker (local): closed",
        "queue paused: running jobs go on, no new job starts",
        "queue: paused, 0 pending, 0 running, 1 dead, oldest pending 4s",
        "job-dead-1  dead       u-1             0/1  2023-11-14T22:13:20Z",
        "faults: on, error_rate 0.5, status 503, latency 100ms (injected 0, passed 7)",
        "create_sandbox          3/10         7    30%  ok ",
        "live sandboxes 1 of 8",
        "removed 3 ended jobs",
        "job-dead-1: pending (retried)",
        "job-done-2  completed  u-2",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // `quit` ends the script: the status after it does not run.
    assert_eq!(out.matches("service  ok").count(), 1, "{out}");
}

#[tokio::test]
async fn without_the_token_admin_commands_say_unauthorized() {
    let base = super::fake::start().await;
    let (failed, out) = script(&base, None, "breaker\njobs --user u-1\nqueue\n").await;
    assert_eq!(failed, 2, "{out}");
    assert!(
        out.contains("error: line 1: unauthorized: check the admin token\n"),
        "{out}"
    );
    assert!(
        out.contains("error: line 3: unauthorized: check the admin token\n"),
        "{out}"
    );
    assert!(
        out.contains("job-dead-1"),
        "user endpoints need no token: {out}"
    );
    let (_, out) = script(&base, Some("wrong"), "cleanup\n").await;
    assert_eq!(out, "error: line 1: unauthorized: check the admin token\n");
}

#[tokio::test]
async fn an_unreachable_service_is_one_line() {
    let base = super::fake::unreachable_url();
    let (failed, out) = script(&base, Some(super::fake::TOKEN), "status\nhelp\nbreaker\n").await;
    assert_eq!(failed, 2);
    assert!(
        out.starts_with(&format!(
            "error: line 1: service unreachable at {base}\ncommands:\n"
        )),
        "{out}"
    );
    assert!(
        out.ends_with(&format!("error: line 3: service unreachable at {base}\n")),
        "{out}"
    );
    let client = AdminClient::new(base.clone(), None);
    let e = client.health().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }));
}

#[tokio::test]
async fn api_errors_show_the_service_message_and_ids_are_remembered() {
    let base = super::fake::start().await;
    let client = AdminClient::new(base, Some(super::fake::TOKEN.into()));
    let e = client.user_jobs(&Default::default()).await.unwrap_err();
    assert_eq!(e.to_string(), "user_id: is required");
    let e = client.cancel("job-done-2").await.unwrap_err();
    assert_eq!(e.to_string(), "job job-done-2 has already ended");
    let mut out = Vec::new();
    let ids = run_command(&client, &parse("jobs").unwrap(), &mut out)
        .await
        .unwrap();
    assert_eq!(ids, ["job-done-2", "job-dead-1"]);
    let mut out = Vec::new();
    run_command(&client, &parse("job show job-dead-1").unwrap(), &mut out)
        .await
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(shown["status"], "dead");
    let mut out = Vec::new();
    run_command(&client, &parse("faults off").unwrap(), &mut out)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "faults: off (injected 0, passed 7)\n"
    );
}
