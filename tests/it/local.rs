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

#[tokio::test]
async fn a_hostile_job_cannot_read_host_files_or_reach_the_network() {
    let svc = Service::start(|_| {}).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let data_dir = svc.rt.data_dir().canonicalize().unwrap();
    let cmd = format!(
        "cat /etc/passwd; echo ---; ls {data} 2>&1; echo ---; \
         python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)' 2>&1 | tail -1; \
         echo ---; touch /usr/evil 2>&1",
        data = data_dir.display()
    );
    let id = svc
        .submit(json!({"user_id": "u", "steps": [{"run": {"cmd": cmd}}]}))
        .await;
    let job = svc.wait(&id).await;
    let out = job["result"]["steps"][0]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{job}");
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert_ne!(parts[0], host_passwd, "the host's /etc/passwd is visible");
    assert!(
        parts[1].contains("No such file"),
        "the service's data directory is visible: {}",
        parts[1]
    );
    assert!(
        parts[2].contains("Error"),
        "the sandbox reached a host listener: {}",
        parts[2]
    );
    assert!(
        listener.accept().is_err(),
        "a connection arrived from the sandbox"
    );
    assert!(
        parts[3].contains("Read-only") || parts[3].contains("Permission denied"),
        "{}",
        parts[3]
    );
    assert!(!std::path::Path::new("/usr/evil").exists());
}

#[tokio::test]
async fn a_fork_bomb_is_contained_and_the_next_job_runs() {
    let svc = Service::start(|s| s.local.processes = 64).await;
    let id = svc
        .submit(json!({"user_id": "u", "steps": [{"run": {"cmd": "bomb654() { bomb654 | bomb654 & }; bomb654; wait", "timeout": "5s"}}]}))
        .await;
    let job = svc.wait(&id).await;
    // The bomb hits the process limit; its top level may still exit 0 once forks fail, so the
    // checks are what a user notices: it ended within its timeout, nothing of it survives, and
    // the service runs the next job.
    assert!(
        job["status"] == "completed" || job["status"] == "failed",
        "{job}"
    );
    // The namespace's processes are killed when its init exits; the kernel reaps them promptly.
    let mut left = crate::support::processes_matching("bomb654");
    for _ in 0..40 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        left = crate::support::processes_matching("bomb654");
    }
    assert!(left.is_empty(), "fork bomb processes survived: {left:?}");
    let next = svc
        .submit(json!({"user_id": "u", "steps": [{"run": {"cmd": "echo still here"}}]}))
        .await;
    let job = svc.wait(&next).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["steps"][0]["stdout"], "still here\n");
}

#[tokio::test]
async fn cancelling_a_running_job_kills_its_command() {
    let svc = Service::start(|_| {}).await;
    let id = svc
        .submit(json!({"user_id": "u", "steps": [{"run": {"cmd": "sleep 987659"}}]}))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while svc.get(&format!("/v1/jobs/{id}")).await.1["status"] != "running" {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = svc.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let job = svc.wait(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let mut left = crate::support::processes_matching("sleep 987659");
    for _ in 0..40 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        left = crate::support::processes_matching("sleep 987659");
    }
    assert!(left.is_empty(), "the cancelled command survived: {left:?}");
}

/// State letter of a process (`R`, `S`, `T` for stopped, ...), from /proc.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[tokio::test]
async fn a_paused_local_sandbox_stops_its_processes_keeps_its_files_and_refuses_work() {
    use sandwarden::provider::local::{LocalLimits, LocalProvider};
    use sandwarden::provider::{Provider, RunSpec, SandboxSpec};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(LocalProvider::new(dir.path(), LocalLimits::default()).unwrap());
    let spec = SandboxSpec {
        template: "base".into(),
        timeout: Duration::from_secs(60),
        env: Default::default(),
        metadata: Default::default(),
        network: Default::default(),
    };
    let id = p.create(&spec).await.unwrap();
    p.write_file(&id, "kept.txt", b"kept").await.unwrap();
    let run = |cmd: &str| RunSpec {
        cmd: cmd.into(),
        timeout: Duration::from_secs(30),
        env: Default::default(),
        max_output: 1 << 16,
    };
    // A step in flight when the pause comes: its processes are stopped, not killed.
    // A marker no other run of this test shares, and the sleep itself (not its shell).
    let marker = format!("sleep 97{}", std::process::id());
    let step = {
        let (p, id, spec) = (p.clone(), id.clone(), run(&format!("{marker}; echo woke")));
        tokio::spawn(async move { p.run(&id, &spec).await })
    };
    let pid = loop {
        let found = processes_matching(&marker).into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == marker)
        });
        if let Some(pid) = found {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(p.can_pause());
    p.pause(&id).await.unwrap();
    p.pause(&id).await.unwrap(); // pausing a paused sandbox succeeds
    // The target stops itself when it is next scheduled, which takes a while on a busy host.
    let mut state = process_state(pid);
    for _ in 0..500 {
        if state == Some('T') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        state = process_state(pid);
    }
    assert_eq!(state, Some('T'), "the running command was stopped");
    for refused in [
        p.run(&id, &run("true")).await.map(|_| ()),
        p.write_file(&id, "x", b"x").await,
        p.read_file(&id, "kept.txt", 100).await.map(|_| ()),
    ] {
        let e = refused.unwrap_err();
        assert!(e.message().contains("is paused"), "{e}");
    }
    p.resume(&id, Duration::from_secs(60)).await.unwrap();
    assert_ne!(process_state(pid), Some('T'), "resumed");
    assert_eq!(p.read_file(&id, "kept.txt", 100).await.unwrap(), b"kept");
    // Killing a sandbox ends what runs in it, stopped or not.
    p.pause(&id).await.unwrap();
    p.kill(&id).await.unwrap();
    let ended = step.await.unwrap().unwrap();
    assert_eq!(ended.exit_code, 128 + 9, "killed by SIGKILL: {ended:?}");
    assert!(!ended.stdout.contains("woke"));
    // The sleep is reaped by whoever adopted it, on a busy host a moment later.
    for _ in 0..500 {
        if processes_matching(&marker).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(processes_matching(&marker).is_empty());
}
