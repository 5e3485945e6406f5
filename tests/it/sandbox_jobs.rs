//! Jobs submitted through the API against isolated local sandboxes: the network a job asks
//! for, templates with seeded files and read-only tools, and the resource bounds a hostile job
//! runs into (`resource_limit`), after which the service takes the next job as usual.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sandwarden::provider::Network;
use sandwarden::provider::template::Template;
use serde_json::{Value, json};

use crate::support::Service;

fn job(sandbox: Value, cmd: &str) -> Value {
    json!({"user_id": "u", "sandbox": sandbox, "steps": [{"run": {"cmd": cmd, "timeout": "30s"}}]})
}

fn error_category(done: &Value) -> &str {
    done["error"]["category"].as_str().unwrap_or_default()
}

/// A directory the sandbox's unprivileged user can reach.
fn open_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

async fn next_job_is_fine(s: &Service) {
    let done = s
        .wait(&s.submit(job(json!({}), "echo still-fine")).await)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["steps"][0]["stdout"], "still-fine\n");
}

#[tokio::test]
async fn network_is_chosen_per_job_and_template_and_recorded() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = Service::start(|st| {
        st.set_template(
            "online",
            Template {
                network: Some(Network::Host),
                ..Template::default()
            },
        );
    })
    .await;
    let connect = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('CONNECTED')\""
    );

    // The default: no network. The connection fails and the record says so.
    let id = s.submit(job(json!({}), &connect)).await;
    let done = s.wait(&id).await;
    assert_eq!(done["spec"]["sandbox"]["network"], "none", "{done}");
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(error_category(&done), "command_failed", "{done}");
    assert!(listener.accept().is_err(), "a connection reached the host");

    // The job asks for the host's network: it connects.
    let id = s.submit(job(json!({"network": "host"}), &connect)).await;
    let done = s.wait(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["steps"][0]["stdout"], "CONNECTED\n");
    assert!(
        listener.accept().is_ok(),
        "no connection reached the listener"
    );
    let (status, record) = s.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(record["spec"]["sandbox"]["network"], "host", "{record}");

    // A template with network, and a job that overrides its template.
    let done = s
        .wait(&s.submit(job(json!({"template": "online"}), &connect)).await)
        .await;
    assert_eq!(done["spec"]["sandbox"]["network"], "host", "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    let done = s
        .wait(
            &s.submit(job(
                json!({"template": "online", "network": "none"}),
                &connect,
            ))
            .await,
        )
        .await;
    assert_eq!(done["spec"]["sandbox"]["network"], "none", "{done}");
    assert_eq!(done["status"], "failed", "{done}");

    // A bad value is refused, naming the field.
    let (status, body) = s
        .post("/v1/jobs", &job(json!({"network": "wifi"}), "true"))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "sandbox.network", "{body}");
}

#[tokio::test]
async fn templates_seed_files_and_mount_read_only_tools() {
    let templates = open_dir();
    let seed = templates.path().join("pyproj");
    std::fs::create_dir_all(seed.join("src")).unwrap();
    std::fs::write(seed.join("src/main.py"), "print('from the template')\n").unwrap();
    let tools = open_dir();
    let tool_dir = tools.path().join("mytool");
    std::fs::create_dir(&tool_dir).unwrap();
    std::fs::set_permissions(&tool_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tool = tool_dir.join("greet");
    std::fs::write(&tool, "#!/bin/sh\necho hello from the tool\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (templates_dir, tool_path) = (templates.path().to_path_buf(), tool_dir.clone());
    let s = Service::start(move |st| {
        st.templates_dir = Some(templates_dir);
        st.set_template(
            "pyproj",
            Template {
                tools: vec![tool_path],
                network: None,
            },
        );
    })
    .await;
    let t = tool_dir.display();
    let cmd = format!(
        "python3 src/main.py && {t}/greet && if touch {t}/new 2>/dev/null; then echo WROTE; else echo READ-ONLY; fi"
    );
    let done = s
        .wait(&s.submit(job(json!({"template": "pyproj"}), &cmd)).await)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["steps"][0]["stdout"], "from the template\nhello from the tool\nREAD-ONLY\n",
        "{done}"
    );
    assert!(!Path::new(&tool_dir.join("new")).exists());
    // The template itself is untouched by what its sandboxes do.
    let done = s
        .wait(
            &s.submit(job(json!({"template": "pyproj"}), "rm src/main.py && ls"))
                .await,
        )
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(seed.join("src/main.py").exists());
    // `base` needs no directory; other names do.
    let done = s
        .wait(&s.submit(job(json!({}), "ls -A | wc -l")).await)
        .await;
    assert_eq!(done["result"]["steps"][0]["stdout"], "0\n", "{done}");
    let done = s
        .wait(&s.submit(job(json!({"template": "rustlang"}), "true")).await)
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(error_category(&done), "permanent", "{done}");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"rustlang\""),
        "{done}"
    );
}

#[tokio::test]
async fn a_fork_bomb_fails_with_resource_limit() {
    let s = Service::start(|st| st.local.processes = 64).await;
    for bomb in [
        // The classic: its top level returns at once; what it leaves runs into the limit
        // within the grace the step's leftovers get.
        "bomb() { bomb | bomb & }; bomb",
        // A bomb that keeps its step alive.
        "bomb() { bomb | bomb & }; bomb; sleep 5",
        // Children that never exit, until the limit.
        "while :; do sleep 1000 & done",
    ] {
        let done = s.wait(&s.submit(job(json!({}), bomb)).await).await;
        assert_eq!(done["status"], "failed", "{bomb}: {done}");
        assert_eq!(error_category(&done), "resource_limit", "{bomb}: {done}");
        assert!(
            done["error"]["message"]
                .as_str()
                .unwrap()
                .contains("64 processes"),
            "{done}"
        );
        next_job_is_fine(&s).await;
    }
}

#[tokio::test]
async fn allocating_past_the_memory_limit_fails_with_resource_limit() {
    let s = Service::start(|st| st.local.memory_bytes = 96 << 20).await;
    for hog in [
        "python3 -c 'x = bytearray(512 << 20); print(len(x))'",
        // Buffers an endless line.
        "tail /dev/zero",
    ] {
        let done = s.wait(&s.submit(job(json!({}), hog)).await).await;
        assert_eq!(done["status"], "failed", "{hog}: {done}");
        assert_eq!(error_category(&done), "resource_limit", "{hog}: {done}");
        assert!(
            done["error"]["message"]
                .as_str()
                .unwrap()
                .contains("memory limit"),
            "{done}"
        );
    }
    // Below the limit, memory is there to use.
    let done = s
        .wait(
            &s.submit(job(
                json!({}),
                "python3 -c 'x = bytearray(32 << 20); print(len(x))'",
            ))
            .await,
        )
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    next_job_is_fine(&s).await;
}

#[tokio::test]
async fn disk_use_past_the_bound_fails_with_resource_limit() {
    let s = Service::start(|st| {
        st.local.disk_bytes = 4 << 20;
        st.max_body_bytes = 8 << 20;
    })
    .await;
    // Many files, each under the file size limit.
    let done = s
        .wait(
            &s.submit(job(
                json!({}),
                "for i in 1 2 3 4 5 6 7 8; do head -c 1000000 /dev/urandom > f$i; done",
            ))
            .await,
        )
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(error_category(&done), "resource_limit", "{done}");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk limit"),
        "{done}"
    );
    // A writer that would go on forever is stopped while it runs.
    let started = std::time::Instant::now();
    let done = s
        .wait(
            &s.submit(job(
                json!({}),
                "i=0; while :; do i=$((i+1)); head -c 100000 /dev/urandom > f$i; done",
            ))
            .await,
        )
        .await;
    assert_eq!(error_category(&done), "resource_limit", "{done}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // A write_file step that would pass the bound is refused before it writes.
    let big = "x".repeat(600_000);
    let body = json!({"user_id": "u", "steps": [
        {"write_file": {"path": "a.txt", "content": big}},
        {"write_file": {"path": "b.txt", "content": big}},
        {"write_file": {"path": "c.txt", "content": big}},
        {"write_file": {"path": "d.txt", "content": big}},
        {"write_file": {"path": "e.txt", "content": big}},
        {"write_file": {"path": "f.txt", "content": big}},
        {"write_file": {"path": "g.txt", "content": big}},
        {"write_file": {"path": "h.txt", "content": big}},
    ]});
    let (status, body) = s.post("/v1/jobs", &body).await;
    assert_eq!(status, 201, "{body}");
    let done = s.wait(body["id"].as_str().unwrap()).await;
    assert_eq!(error_category(&done), "resource_limit", "{done}");
    assert!(done["error"]["step"].as_u64().unwrap() >= 5, "{done}");
    next_job_is_fine(&s).await;
}
