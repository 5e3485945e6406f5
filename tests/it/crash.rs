//! Durability of the real binary: SIGKILL under load loses no accepted job.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &std::path::Path) -> Proc {
    start_with(data_dir, &[])
}

/// Start the real binary on 127.0.0.1:0 with extra `SANDWARDEN_*` settings.
pub fn start_with(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandwarden"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "4",
        "--data-dir",
    ])
    .arg(data_dir)
    .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sandwarden");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Proc {
        url: format!("http://{addr}"),
        child,
    }
}

/// Long-poll a job until it ends; fails if it is lost (404) or still not ended at `deadline`.
async fn wait_ended(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    deadline: Instant,
) -> serde_json::Value {
    loop {
        let r = http
            .get(format!("{url}/v1/jobs/{id}?wait=30s"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "job {id} was lost");
        let job: serde_json::Value = r.json().await.unwrap();
        if job["status"] != "pending" && job["status"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} is stuck: {job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_200_jobs_in_flight_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut proc = start(dir.path());
    let mut accepted = Vec::new();
    for i in 0..200 {
        let r = http
            .post(format!("{}/v1/jobs", proc.url))
            .json(&json!({"user_id": "crash", "steps": [{"run": {"cmd": format!("sleep 0.05; echo {i}")}}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        accepted.push((i, body["id"].as_str().unwrap().to_string()));
    }
    // Some jobs are running and most are pending when the process dies.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proc.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = proc.child.wait();
    drop(proc);

    let proc = start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, id) in &accepted {
        let job = wait_ended(&http, &proc.url, id, deadline).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["result"]["steps"][0]["stdout"], format!("{i}\n"));
    }
    eprintln!(
        "crash test: 200 jobs, kill and recovery in {:.1?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_scheduled_retrying_and_session_jobs_in_the_mix_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // One provider call in five fails (503), so jobs retry; the breaker recovers quickly.
    let env = [
        ("SANDWARDEN_FAULTS__ENABLED", "true"),
        ("SANDWARDEN_FAULTS__ERROR_RATE", "0.2"),
        ("SANDWARDEN_FAULTS__STATUS", "503"),
        ("SANDWARDEN_BREAKER__OPEN_TIMEOUT", "1s"),
        ("SANDWARDEN_RETRY__BASE", "50ms"),
        ("SANDWARDEN_ADMIN_TOKEN", "crash-token"),
    ];
    let proc = start_with(dir.path(), &env);
    let mut accepted = Vec::new();
    for i in 0..120 {
        let job = match i % 3 {
            0 => {
                json!({"user_id": "mix", "delay": "1s", "steps": [{"run": {"cmd": format!("echo {i}")}}]})
            }
            1 => {
                json!({"user_id": "mix", "sandbox": {"keep": true}, "steps": [{"run": {"cmd": format!("echo {i}")}}]})
            }
            _ => {
                json!({"user_id": "mix", "steps": [{"run": {"cmd": format!("sleep 0.02; echo {i}")}}]})
            }
        };
        let r = http
            .post(format!("{}/v1/jobs", proc.url))
            .json(&job)
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 201 | 202), "{}", r.status());
        let body: serde_json::Value = r.json().await.unwrap();
        accepted.push((i, body["id"].as_str().unwrap().to_string()));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proc.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(proc);

    let proc = start_with(dir.path(), &env);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut kept: Vec<String> = Vec::new();
    for (i, id) in &accepted {
        let job = wait_ended(&http, &proc.url, id, deadline).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["result"]["steps"][0]["stdout"], format!("{i}\n"));
        if i % 3 == 1 {
            let sandbox = job["result"]["sandbox_id"].as_str();
            let sandbox =
                sandbox.unwrap_or_else(|| panic!("a kept sandbox's id is returned: {job}"));
            kept.push(sandbox.to_string());
        }
    }
    // Sessions made before or after the crash are live, not reaped as orphans.
    let reg: serde_json::Value = http
        .get(format!("{}/v1/admin/sandboxes", proc.url))
        .bearer_auth("crash-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let live: Vec<&str> = reg["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "live")
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    for id in &kept {
        assert!(
            live.contains(&id.as_str()),
            "kept sandbox {id} is not live: {reg}"
        );
    }
    assert_eq!(kept.len(), 40);
}
