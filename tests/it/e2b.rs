//! End-to-end tests of `E2bProvider` against the emulator over real loopback HTTP, including
//! injected faults and their classification, plus the official-SDK conformance script.
//!
//! Everything binds 127.0.0.1:0; nothing here sends traffic anywhere else. These tests use the
//! real clock because they do real socket I/O (a paused tokio clock would auto-advance while a
//! socket waits and fire client timeouts); durations are kept to a few hundred milliseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use sandwarden::emulator::{
    BodyShape, Emulator, EmulatorConfig, EmulatorHandle, FaultAction, FaultRule,
};
use sandwarden::provider::e2b::{E2bConfig, E2bProvider};
use sandwarden::provider::{ErrorCategory, Network, Provider, RunSpec, SandboxSpec};

use crate::support::run_to_end;

const KEY: &str = "e2b_0123456789abcdef";

struct Rig {
    _dir: tempfile::TempDir,
    emu: EmulatorHandle,
    p: E2bProvider,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(EmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        api_key: Some(KEY.to_string()),
    })
    .await
    .unwrap();
    let p = provider(&emu, KEY, "inst-a", Duration::from_secs(10));
    Rig { _dir: dir, emu, p }
}

fn provider(emu: &EmulatorHandle, key: &str, instance: &str, timeout: Duration) -> E2bProvider {
    E2bProvider::new(E2bConfig {
        api_url: emu.base_url(),
        sandbox_url: Some(emu.base_url()),
        api_key: key.to_string(),
        domain: "e2b.app".to_string(),
        request_timeout: timeout,
        instance: instance.to_string(),
    })
    .unwrap()
}

fn spec(meta: &[(&str, &str)]) -> SandboxSpec {
    SandboxSpec {
        template: "base".to_string(),
        timeout: Duration::from_secs(60),
        env: BTreeMap::from([("SANDBOX_VAR".to_string(), "from-create".to_string())]),
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        network: Network::Host,
    }
}

fn run(cmd: &str) -> RunSpec {
    RunSpec {
        cmd: cmd.to_string(),
        timeout: Duration::from_secs(10),
        env: BTreeMap::new(),
        max_output: 1 << 20,
    }
}

#[tokio::test]
async fn create_write_run_read_kill() {
    let r = rig().await;
    let id = r.p.create(&spec(&[("job", "1")])).await.unwrap();
    assert_eq!(id.len(), 21, "ids look like E2B's: {id}");
    r.p.write_file(&id, "/home/user/in/data.txt", b"hello from the job\n")
        .await
        .unwrap();
    r.p.check_health(&id).await.unwrap();

    let mut rs = run(
        "cat in/data.txt; echo \"$SANDBOX_VAR $STEP_VAR\"; echo oops >&2; \
                      pwd > where.txt; echo result > out.txt; exit 3",
    );
    rs.env
        .insert("STEP_VAR".to_string(), "from-step".to_string());
    let out = r.p.run(&id, &rs).await.unwrap();
    assert_eq!(out.stdout, "hello from the job\nfrom-create from-step\n");
    assert_eq!(out.stderr, "oops\n");
    assert_eq!(out.exit_code, 3);
    assert!(!out.truncated);

    assert_eq!(
        r.p.read_file(&id, "out.txt", 1024).await.unwrap(),
        b"result\n"
    );
    assert_eq!(
        r.p.read_file(&id, "/home/user/out.txt", 1024)
            .await
            .unwrap(),
        b"result\n"
    );
    let too_small = r.p.read_file(&id, "out.txt", 3).await.unwrap_err();
    assert_eq!(too_small.category(), ErrorCategory::Permanent);
    let missing = r.p.read_file(&id, "nope.txt", 1024).await.unwrap_err();
    assert_eq!(
        (missing.category(), missing.status()),
        (ErrorCategory::Permanent, Some(404))
    );
    assert!(!missing.sandbox_gone());

    let ok = r.p.run(&id, &run("true")).await.unwrap();
    assert_eq!((ok.exit_code, ok.stdout.as_str()), (0, ""));

    r.p.kill(&id).await.unwrap();
    assert!(r.emu.sandbox_ids().is_empty());
    r.emu.shutdown().await;
}

#[tokio::test]
async fn output_is_capped_and_marked_truncated() {
    let r = rig().await;
    let id = r.p.create(&spec(&[])).await.unwrap();
    let mut rs = run("head -c 100000 /dev/zero | tr '\\0' a; echo -n bb >&2");
    rs.max_output = 10;
    let out = r.p.run(&id, &rs).await.unwrap();
    assert_eq!(out.stdout, "aaaaaaaaaa");
    assert_eq!(out.stderr, "bb");
    assert!(out.truncated);
}

#[tokio::test]
async fn step_timeout_is_a_timeout() {
    let r = rig().await;
    let id = r.p.create(&spec(&[])).await.unwrap();
    let mut rs = run("sleep 30");
    rs.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let e = r.p.run(&id, &rs).await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Timeout, "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn server_errors_on_create_are_transient() {
    let r = rig().await;
    let faults = r.emu.faults();
    faults.fail_next("create", 1, 503);
    let e = r.p.create(&spec(&[])).await.unwrap_err();
    assert_eq!(
        (e.category(), e.status()),
        (ErrorCategory::Transient, Some(503))
    );
    assert!(e.message().contains("not enough capacity"), "{e}");

    faults.add(FaultRule {
        count: Some(1),
        ..FaultRule::new(
            Some("create"),
            FaultAction::Status {
                status: 502,
                body: BodyShape::Html,
                message: None,
            },
        )
    });
    let e = r.p.create(&spec(&[])).await.unwrap_err();
    assert_eq!(
        (e.category(), e.status()),
        (ErrorCategory::Transient, Some(502))
    );
    assert!(e.message().contains("502 Bad Gateway"), "{e}");

    faults.add(FaultRule {
        count: Some(1),
        ..FaultRule::new(
            Some("create"),
            FaultAction::Status {
                status: 504,
                body: BodyShape::Text,
                message: None,
            },
        )
    });
    let e = r.p.create(&spec(&[])).await.unwrap_err();
    assert_eq!(
        (e.category(), e.status()),
        (ErrorCategory::Transient, Some(504))
    );
    assert!(e.message().contains("upstream request timeout"), "{e}");

    // The next-N rules are used up: the fourth create succeeds.
    r.p.create(&spec(&[])).await.unwrap();
    let stats = faults.stats();
    assert_eq!(stats["create"].calls, 4);
    assert_eq!(stats["create"].faulted, 3);
}

#[tokio::test]
async fn rate_limit_carries_retry_after() {
    let r = rig().await;
    r.emu.faults().rate_limit_next("create", 1, 7);
    let e = r.p.create(&spec(&[])).await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(e.status(), Some(429));
}

#[tokio::test]
async fn dropped_connections_are_transient() {
    let r = rig().await;
    r.emu.faults().drop_next("create", 1);
    let e = r.p.create(&spec(&[])).await.unwrap_err();
    assert_eq!(
        (e.category(), e.status()),
        (ErrorCategory::Transient, None),
        "{e}"
    );
    r.p.create(&spec(&[])).await.unwrap();
}

#[tokio::test]
async fn stream_dropped_mid_command_is_transient() {
    let r = rig().await;
    let id = r.p.create(&spec(&[])).await.unwrap();
    // Two frames: the start event and the first output chunk, then the connection breaks.
    r.emu.faults().drop_stream_next(1, 2);
    let e =
        r.p.run(&id, &run("echo a; sleep 0.2; echo b; sleep 0.2; echo c"))
            .await
            .unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
    assert!(!e.sandbox_gone());
    let out = r.p.run(&id, &run("echo again")).await.unwrap();
    assert_eq!(out.stdout, "again\n");
}

#[tokio::test]
async fn kill_of_unknown_sandbox_is_ok() {
    let r = rig().await;
    r.p.kill("i0000000000000000000a").await.unwrap();
    let id = r.p.create(&spec(&[])).await.unwrap();
    r.p.kill(&id).await.unwrap();
    r.p.kill(&id).await.unwrap();
}

#[tokio::test]
async fn missing_or_wrong_api_key_is_permanent() {
    let r = rig().await;
    for key in ["", "e2b_ffff"] {
        let p = provider(&r.emu, key, "inst-a", Duration::from_secs(5));
        let e = p.create(&spec(&[])).await.unwrap_err();
        assert_eq!(
            (e.category(), e.status()),
            (ErrorCategory::Permanent, Some(401)),
            "{e}"
        );
    }
    let raw = reqwest::get(format!("{}/v2/sandboxes", r.emu.base_url()))
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"code": 401, "message": "authorization header is missing"})
    );
}

#[tokio::test]
async fn list_shows_this_instances_sandboxes_with_metadata() {
    let r = rig().await;
    let a = r.p.create(&spec(&[("job", "1")])).await.unwrap();
    let b = r.p.create(&spec(&[("job", "2")])).await.unwrap();
    let other = provider(&r.emu, KEY, "inst-b", Duration::from_secs(5));
    let c = other.create(&spec(&[("job", "3")])).await.unwrap();

    let mut listed = r.p.list().await.unwrap();
    listed.sort_by(|x, y| x.metadata["job"].cmp(&y.metadata["job"]));
    let ids: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    assert_eq!(listed[0].metadata["sandwarden_instance"], "inst-a");
    let now = sandwarden::clock::now_ms();
    assert!(listed[0].started_at_ms > now - 60_000 && listed[0].started_at_ms <= now + 1000);
    assert_eq!(
        other
            .list()
            .await
            .unwrap()
            .iter()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>(),
        [c]
    );

    // Pagination on the wire: one per page, linked by X-Next-Token.
    let http = reqwest::Client::new();
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = vec![("limit", "1".to_string())];
        if let Some(t) = &token {
            q.push(("nextToken", t.clone()));
        }
        let resp = http
            .get(format!("{}/v2/sandboxes", r.emu.base_url()))
            .header("X-API-Key", KEY)
            .query(&q)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-total-running"], "3");
        token = resp
            .headers()
            .get("x-next-token")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Vec<serde_json::Value> = resp.json().await.unwrap();
        assert_eq!(page.len(), 1);
        seen.push(page[0]["sandboxID"].as_str().unwrap().to_string());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn envd_after_kill_reports_sandbox_gone() {
    let r = rig().await;
    let id = r.p.create(&spec(&[])).await.unwrap();
    // Killed behind the provider's back (as by expiry), so it still holds the envd token and
    // the failure comes from envd's proxy: 502 "The sandbox was not found".
    let other = provider(&r.emu, KEY, "inst-a", Duration::from_secs(5));
    other.kill(&id).await.unwrap();
    let e = r.p.run(&id, &run("true")).await.unwrap_err();
    assert!(e.sandbox_gone(), "{e}");
    assert_eq!(e.status(), Some(502));
    assert_eq!(e.category(), ErrorCategory::Transient);
    // A provider that never saw the sandbox learns it is gone from the control plane (404).
    let fresh = provider(&r.emu, KEY, "inst-a", Duration::from_secs(5));
    let e = fresh.read_file(&id, "x", 10).await.unwrap_err();
    assert!(e.sandbox_gone(), "{e}");
    assert_eq!(e.status(), Some(404));
}

#[tokio::test]
async fn sandboxes_expire_after_their_timeout() {
    let r = rig().await;
    let mut s = spec(&[]);
    s.timeout = Duration::from_secs(1);
    let id = r.p.create(&s).await.unwrap();
    r.p.check_health(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = r.p.check_health(&id).await.unwrap_err();
    assert!(e.sandbox_gone(), "{e}");
    assert!(r.emu.sandbox_ids().is_empty());
}

#[tokio::test]
async fn timeout_pause_and_connect() {
    let r = rig().await;
    let id = r.p.create(&spec(&[])).await.unwrap();
    r.p.set_timeout(&id, Duration::from_secs(120))
        .await
        .unwrap();
    let before = r.p.get(&id).await.unwrap();
    assert_eq!(before.state.as_deref(), Some("running"));
    r.p.pause_sandbox(&id).await.unwrap();
    assert_eq!(r.p.get(&id).await.unwrap().state.as_deref(), Some("paused"));
    assert!(r.p.check_health(&id).await.unwrap_err().sandbox_gone());
    let e = r.p.pause_sandbox(&id).await.unwrap_err();
    assert_eq!(
        (e.category(), e.status()),
        (ErrorCategory::Permanent, Some(409))
    );
    // Through the provider trait, pausing a paused sandbox is not an error.
    assert!(r.p.can_pause());
    Provider::pause(&r.p, &id).await.unwrap();
    let resumed = r.p.connect(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(resumed.sandbox_id, id);
    r.p.check_health(&id).await.unwrap();
    assert_eq!(
        r.p.run(&id, &run("echo back")).await.unwrap().stdout,
        "back\n"
    );
    // Pause and resume through the trait: the files stay, commands run again.
    r.p.write_file(&id, "kept.txt", b"still here")
        .await
        .unwrap();
    Provider::pause(&r.p, &id).await.unwrap();
    assert_eq!(r.p.get(&id).await.unwrap().state.as_deref(), Some("paused"));
    Provider::resume(&r.p, &id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        r.p.run(&id, &run("cat kept.txt")).await.unwrap().stdout,
        "still here"
    );
    let e =
        r.p.set_timeout("i0000000000000000000b", Duration::from_secs(5))
            .await
            .unwrap_err();
    assert!(e.sandbox_gone());
}

#[tokio::test]
async fn envd_requires_the_access_token() {
    let r = rig().await;
    let id = r.p.create(&spec(&[])).await.unwrap();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/process.Process/Start", r.emu.base_url()))
        .header("E2b-Sandbox-Id", &id)
        .header("Content-Type", "application/connect+json")
        .body(vec![0, 0, 0, 0, 2, b'{', b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Health is exempt, as on real envd.
    let resp = http
        .get(format!("{}/health", r.emu.base_url()))
        .header("E2b-Sandbox-Id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    // Routing by the per-sandbox host name works too, as `49983-{id}.{domain}`.
    let resp = http
        .get(format!("{}/health", r.emu.base_url()))
        .header("Host", format!("49983-{id}.e2b.app"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = http
        .get(format!("{}/health", r.emu.base_url()))
        .header("Host", "49983-i0000000000000000000c.e2b.app")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "The sandbox was not found");
}

#[tokio::test]
async fn latency_beyond_request_timeout_is_a_timeout() {
    let r = rig().await;
    let impatient = provider(&r.emu, KEY, "inst-a", Duration::from_millis(200));
    r.emu
        .faults()
        .latency(Some("list_v2"), Duration::from_millis(600));
    let e = impatient.list().await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Timeout, "{e}");
}

#[tokio::test]
async fn outage_window_ends() {
    let r = rig().await;
    r.emu.faults().outage(Duration::from_millis(300));
    let e = r.p.create(&spec(&[])).await.unwrap_err();
    assert_eq!(
        (e.category(), e.status()),
        (ErrorCategory::Transient, Some(503))
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    r.p.create(&spec(&[])).await.unwrap();
}

#[tokio::test]
async fn faults_and_stats_over_http() {
    let r = rig().await;
    let http = reqwest::Client::new();
    let url = format!("{}/_emulator/faults", r.emu.base_url());
    let rules = serde_json::json!([
        {"endpoint": "kill", "action": {"kind": "status", "status": 500}, "count": 1},
        {"endpoint": "create", "action": {"kind": "rate_limit", "retry_after_secs": 3}, "count": 1}
    ]);
    let resp = http.put(&url).json(&rules).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let live: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(live.as_array().unwrap().len(), 2);

    let e = r.p.create(&spec(&[])).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    let id = r.p.create(&spec(&[])).await.unwrap();
    let e = r.p.kill(&id).await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Transient);
    r.p.kill(&id).await.unwrap();

    let stats: serde_json::Value = http
        .get(format!("{}/_emulator/stats", r.emu.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["create"]["calls"], 2);
    assert_eq!(stats["create"]["faulted"], 1);
    assert_eq!(stats["kill"]["calls"], 2);
    let bad = http.put(&url).body("{not json").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let typo = serde_json::json!([{"endpoint": "craete", "action": {"kind": "drop"}}]);
    assert_eq!(
        http.put(&url).json(&typo).send().await.unwrap().status(),
        400
    );
}

/// Runs `tests/sdk/conformance.py` with the official `e2b` Python SDK against the emulator.
/// The interpreter is `$E2B_SDK_PYTHON`, else `/work/scratch/venv/bin/python`; the test is
/// skipped (loudly) when neither exists, since the SDK is not a Rust dependency.
#[tokio::test]
async fn official_python_sdk_conforms() {
    // scripts/test installs the pinned SDK into .venv-sdk; a missing SDK is a failure, not a skip.
    let python = std::env::var("E2B_SDK_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-sdk/bin/python").to_string()
    });
    assert!(
        std::path::Path::new(&python).exists(),
        "no python with the e2b SDK at {python}: run ./scripts/test, which installs it"
    );
    let r = rig().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/conformance.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("E2B_API_URL", r.emu.base_url())
        .env("E2B_SANDBOX_URL", r.emu.base_url())
        .env("E2B_DOMAIN", "e2b.app")
        .env("E2B_API_KEY", KEY)
        .env_remove("E2B_DEBUG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("conformance script finished within 120s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "conformance failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("conformance: all checks passed"),
        "{stdout}"
    );
    assert!(
        r.emu.sandbox_ids().is_empty(),
        "the script kills its sandbox"
    );
}

/// The whole runtime with `provider = "e2b"` against the emulator over real HTTP.
async fn runtime_on_emulator(
    emu: &EmulatorHandle,
    dir: &std::path::Path,
) -> sandwarden::RuntimeHandle {
    let mut settings = sandwarden::Settings::with_data_dir(dir);
    settings.provider = sandwarden::config::ProviderKind::E2b;
    settings.e2b.api_url = emu.base_url();
    settings.e2b.sandbox_url = Some(emu.base_url());
    settings.e2b.api_key = Some(KEY.to_string());
    settings.retry.base = Duration::from_millis(20);
    settings.ratelimit.min_create_interval = None;
    sandwarden::Runtime::start(settings).await.unwrap()
}

fn hello_spec() -> sandwarden::job::JobSpec {
    sandwarden::job::spec::parse(
        br#"{"user_id":"u","steps":[
            {"write_file":{"path":"hello.txt","content":"hi from e2b\n"}},
            {"run":{"cmd":"cat hello.txt; echo done >&2"}},
            {"read_file":{"path":"hello.txt"}}]}"#,
        &Default::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn runtime_runs_the_hello_job_through_the_e2b_provider() {
    let r = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on_emulator(&r.emu, dir.path()).await;
    let job = run_to_end(&rt, hello_spec()).await;
    assert_eq!(job.status, sandwarden::job::JobStatus::Completed, "{job:?}");
    let steps = &job.result.as_ref().unwrap().steps;
    assert_eq!(steps[1].stdout.as_deref(), Some("hi from e2b\n"));
    assert_eq!(steps[1].stderr.as_deref(), Some("done\n"));
    assert_eq!(steps[2].content.as_deref(), Some("hi from e2b\n"));
    assert!(
        r.emu.sandbox_ids().is_empty(),
        "the job's sandbox was killed"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn runtime_retries_5xx_on_create_without_leaking_sandboxes() {
    let r = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on_emulator(&r.emu, dir.path()).await;
    r.emu.faults().fail_next("create", 2, 503);
    let job = run_to_end(&rt, hello_spec()).await;
    assert_eq!(job.status, sandwarden::job::JobStatus::Completed, "{job:?}");
    assert_eq!(
        r.emu.faults().calls("create"),
        3,
        "two failures, then success"
    );
    assert!(r.emu.sandbox_ids().is_empty(), "no sandbox leaked");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn runtime_retries_a_stream_dropped_mid_command() {
    let r = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on_emulator(&r.emu, dir.path()).await;
    r.emu.faults().drop_stream_next(1, 1);
    let job = run_to_end(&rt, hello_spec()).await;
    assert_eq!(job.status, sandwarden::job::JobStatus::Completed, "{job:?}");
    assert_eq!(r.emu.faults().calls("process_start"), 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn orphaned_sandboxes_of_this_instance_are_reaped_at_start() {
    let r = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let instance = {
        let rt = runtime_on_emulator(&r.emu, dir.path()).await;
        let id = rt.instance().to_string();
        rt.shutdown().await.unwrap();
        id
    };
    // A sandbox of ours that no job knows (as after a crash), and one of another installation.
    let ours = E2bProvider::new(E2bConfig {
        api_url: r.emu.base_url(),
        sandbox_url: Some(r.emu.base_url()),
        api_key: KEY.to_string(),
        instance: instance.clone(),
        ..Default::default()
    })
    .unwrap();
    let mut meta = BTreeMap::new();
    meta.insert(
        "sandwarden_job".to_string(),
        "job-00000000000000aa".to_string(),
    );
    let spec = SandboxSpec {
        template: "base".into(),
        timeout: Duration::from_secs(300),
        env: BTreeMap::new(),
        metadata: meta,
        network: Network::Host,
    };
    let orphan = ours.create(&spec).await.unwrap();
    let other = E2bProvider::new(E2bConfig {
        api_url: r.emu.base_url(),
        sandbox_url: Some(r.emu.base_url()),
        api_key: KEY.to_string(),
        instance: "someone-else".into(),
        ..Default::default()
    })
    .unwrap();
    let foreign = other.create(&spec).await.unwrap();

    let rt = runtime_on_emulator(&r.emu, dir.path()).await;
    let ids = r.emu.sandbox_ids();
    assert!(
        !ids.contains(&orphan),
        "the orphan survived the start: {ids:?}"
    );
    assert!(
        ids.contains(&foreign),
        "another installation's sandbox was killed"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unhealthy_new_sandbox_is_killed_and_replaced() {
    let r = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on_emulator(&r.emu, dir.path()).await;
    // One failed health check is asked again: the sandbox is kept.
    r.emu.faults().fail_next("envd_health", 1, 502);
    let job = run_to_end(&rt, hello_spec()).await;
    assert_eq!(job.status, sandwarden::job::JobStatus::Completed, "{job:?}");
    assert_eq!(r.emu.faults().calls("create"), 1);
    assert_eq!(r.emu.faults().calls("envd_health"), 2);
    // A sandbox that stays unhealthy (three checks) is killed and a new one made, though
    // creates are idempotent per job attempt.
    r.emu.faults().reset_stats();
    r.emu.faults().fail_next("envd_health", 3, 502);
    let job = run_to_end(&rt, hello_spec()).await;
    assert_eq!(job.status, sandwarden::job::JobStatus::Completed, "{job:?}");
    assert_eq!(
        r.emu.faults().calls("create"),
        2,
        "the unhealthy sandbox was replaced"
    );
    assert_eq!(
        r.emu.faults().calls("kill"),
        2,
        "the unhealthy one and the used one"
    );
    assert!(r.emu.sandbox_ids().is_empty(), "no sandbox leaked");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_scheduled_reaper_kills_orphans_but_not_running_jobs_sandboxes() {
    let r = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on_emulator(&r.emu, dir.path()).await;
    let ours = E2bProvider::new(E2bConfig {
        api_url: r.emu.base_url(),
        sandbox_url: Some(r.emu.base_url()),
        api_key: KEY.to_string(),
        instance: rt.instance().to_string(),
        ..Default::default()
    })
    .unwrap();
    // Tagged with a job the store does not know as running: an orphan.
    let mut meta = BTreeMap::new();
    meta.insert(
        "sandwarden_job".to_string(),
        "job-00000000000000bb".to_string(),
    );
    let spec = SandboxSpec {
        template: "base".into(),
        timeout: Duration::from_secs(300),
        env: BTreeMap::new(),
        metadata: meta,
        network: Network::Host,
    };
    let orphan = ours.create(&spec).await.unwrap();
    // A job that is running (a long command) keeps its sandbox.
    let long = sandwarden::job::spec::parse(
        br#"{"user_id":"u","steps":[{"run":{"cmd":"sleep 5"}}]}"#,
        &Default::default(),
    )
    .unwrap();
    let (job, _) = rt.submit(long).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rt.get(&job.id).unwrap().unwrap().status != sandwarden::job::JobStatus::Running
        || r.emu.sandbox_ids().len() < 2
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = rt.run_task("sandbox_reaper").await.unwrap().unwrap();
    assert!(run.outcome.contains("orphans killed 1"), "{run:?}");
    let ids = r.emu.sandbox_ids();
    assert!(!ids.contains(&orphan), "{ids:?}");
    assert_eq!(ids.len(), 1, "the running job's sandbox stays: {ids:?}");
    rt.cancel(&job.id).await.unwrap();
    rt.shutdown().await.unwrap();
}

/// Once the emulator has answered `endpoint` with a fault, plus a moment for the service to act.
async fn after_fault_on(emu: &EmulatorHandle, endpoint: &str) {
    while emu
        .faults()
        .stats()
        .get(endpoint)
        .is_none_or(|s| s.faulted == 0)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_429_from_one_sandbox_holds_that_call_only_and_one_from_the_api_holds_creates() {
    let r = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on_emulator(&r.emu, dir.path()).await;
    for endpoint in ["create", "process_start"] {
        r.emu.faults().reset_stats();
        r.emu.faults().add(FaultRule {
            count: Some(1),
            ..FaultRule::new(
                Some(endpoint),
                FaultAction::RateLimit {
                    retry_after_secs: 1,
                },
            )
        });
        let job = tokio::spawn({
            let rt = rt.clone();
            async move { run_to_end(&rt, hello_spec()).await }
        });
        after_fault_on(&r.emu, endpoint).await;
        // Within the 1 s Retry-After: the API's 429 holds every create; a sandbox agent's 429
        // holds only the call that got it (no cool-down for other sandboxes' runs).
        let (op, held) = match endpoint {
            "create" => ("sandbox_create", true),
            _ => ("command_run", false),
        };
        let usage = crate::support::op_usage(&rt, op).await;
        assert_eq!(usage.cooldown_until_ms.is_some(), held, "{usage:?}");
        let job = job.await.unwrap();
        assert_eq!(job.status, sandwarden::job::JobStatus::Completed, "{job:?}");
        assert_eq!(r.emu.faults().calls(endpoint), 2, "{endpoint} was retried");
    }
    rt.shutdown().await.unwrap();
}
