//! The job API over real HTTP with the local provider.

use serde_json::json;

use crate::support::{Service, run_job};

#[tokio::test]
async fn hello_job_returns_real_output() {
    let svc = Service::start(|_| {}).await;
    let id = svc
        .submit(json!({
            "user_id": "u-42",
            "steps": [
                {"write_file": {"path": "hello.txt", "content": "hello from a sandbox\n"}},
                {"run": {"cmd": "cat hello.txt; echo done >&2; exit 0"}},
                {"read_file": {"path": "hello.txt"}}
            ]
        }))
        .await;
    let job = svc.wait(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    let steps = &job["result"]["steps"];
    assert_eq!(steps[1]["stdout"], "hello from a sandbox\n");
    assert_eq!(steps[1]["stderr"], "done\n");
    assert_eq!(steps[1]["exit_code"], 0);
    assert_eq!(steps[2]["content"], "hello from a sandbox\n");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn failing_step_fails_the_job_and_keeps_its_output() {
    let svc = Service::start(|_| {}).await;
    let id = svc
        .submit(run_job("u", "echo partial; echo oops >&2; exit 3"))
        .await;
    let job = svc.wait(&id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["category"], "command_failed");
    assert_eq!(job["error"]["step"], 0);
    assert_eq!(job["result"]["steps"][0]["exit_code"], 3);
    assert_eq!(job["result"]["steps"][0]["stdout"], "partial\n");
    assert_eq!(job["result"]["steps"][0]["stderr"], "oops\n");
}

#[tokio::test]
async fn bad_input_gets_4xx_naming_the_field() {
    let svc = Service::start(|s| s.max_body_bytes = 4096).await;
    let (status, body) = svc.post_raw("/v1/jobs", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_json");

    let cases = [
        (
            json!({"user_id": "u", "priority": "urgent", "steps": [{"run": {"cmd": "x"}}]}),
            "priority",
        ),
        (
            json!({"user_id": "u", "steps": [{"run": {"cmd": "x", "timeout": "soon"}}]}),
            "steps[0].run.timeout",
        ),
        (json!({"user_id": "u", "steps": []}), "steps"),
        (
            json!({"user_id": "u", "steps": [{"write_file": {"path": "a"}}]}),
            "steps[0].write_file",
        ),
        (
            json!({"user_id": 7, "steps": [{"run": {"cmd": "x"}}]}),
            "user_id",
        ),
    ];
    for (body, field) in cases {
        let (status, reply) = svc.post("/v1/jobs", &body).await;
        assert!((400..500).contains(&status), "{body} -> {status}");
        assert_eq!(reply["error"]["field"], field, "{body} -> {reply}");
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }

    let big = "x".repeat(10_000);
    let (status, reply) = svc
        .post(
            "/v1/jobs",
            &json!({"user_id": "u", "steps": [{"write_file": {"path": "a", "content": big}}]}),
        )
        .await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["error"]["code"], "body_too_large");

    let (status, reply) = svc.get("/v1/jobs/job-ffffffffffffffff").await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"]["code"], "not_found");
    let (status, reply) = svc.get("/v1/jobs?status=pending").await;
    assert_eq!(status, 400);
    assert_eq!(reply["error"]["field"], "user_id");
    let (status, _) = svc.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn lists_are_per_user_newest_first_and_paginated() {
    let svc = Service::start(|_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(svc.submit(run_job("alice", "true")).await);
    }
    svc.submit(run_job("bob", "true")).await;
    for id in &ids {
        svc.wait(id).await;
    }
    let (_, page1) = svc.get("/v1/jobs?user_id=alice&limit=3").await;
    let got: Vec<_> = page1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = svc
        .get(&format!("/v1/jobs?user_id=alice&limit=3&cursor={cursor}"))
        .await;
    let got: Vec<_> = page2["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, vec![ids[1].clone(), ids[0].clone()]);
    assert!(page2["next_cursor"].is_null());
    let (_, done) = svc.get("/v1/jobs?user_id=alice&status=completed").await;
    assert_eq!(done["jobs"].as_array().unwrap().len(), 5);
    let (_, none) = svc.get("/v1/jobs?user_id=alice&status=failed").await;
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn idempotent_resubmission_returns_the_first_job() {
    let svc = Service::start(|_| {}).await;
    let job = json!({"user_id": "u", "idempotency_key": "p-7/build/193", "steps": [{"run": {"cmd": "true"}}]});
    let (s1, first) = svc.post("/v1/jobs", &job).await;
    let (s2, second) = svc.post("/v1/jobs", &job).await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["created"], false);
}

#[tokio::test]
async fn client_keys_bind_callers_to_their_user() {
    let svc = Service::with_provider(
        std::sync::Arc::new(crate::support::MemProvider::default()),
        |s| {
            s.admin_token = Some("admin-token".into());
            s.client_keys
                .insert("key-for-alice-0001".into(), "alice".into());
            s.client_keys
                .insert("key-for-bob-000001".into(), "bob".into());
        },
    )
    .await;
    let call = |method: reqwest::Method,
                path: &str,
                key: Option<&str>,
                body: Option<serde_json::Value>| {
        let mut req = svc.http.request(method, format!("{}{path}", svc.url));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let job = |user: &str| json!({"user_id": user, "steps": [{"run": {"cmd": "x"}}]});
    assert_eq!(
        call(reqwest::Method::POST, "/v1/jobs", None, Some(job("alice")))
            .await
            .0,
        401
    );
    assert_eq!(
        call(
            reqwest::Method::POST,
            "/v1/jobs",
            Some("wrong-key-000000000"),
            Some(job("alice"))
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(
            reqwest::Method::POST,
            "/v1/jobs",
            Some("key-for-bob-000001"),
            Some(job("alice"))
        )
        .await
        .0,
        403
    );
    let (status, body) = call(
        reqwest::Method::POST,
        "/v1/jobs",
        Some("key-for-alice-0001"),
        Some(job("alice")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/jobs/{id}?wait=10s");
    assert_eq!(
        call(
            reqwest::Method::GET,
            &path,
            Some("key-for-alice-0001"),
            None
        )
        .await
        .1["status"],
        "completed"
    );
    assert_eq!(
        call(
            reqwest::Method::GET,
            &path,
            Some("key-for-bob-000001"),
            None
        )
        .await
        .0,
        404,
        "another user's job is not confirmed"
    );
    assert_eq!(
        call(reqwest::Method::GET, &path, Some("admin-token"), None)
            .await
            .0,
        200,
        "the admin sees every job"
    );
    assert_eq!(
        call(
            reqwest::Method::GET,
            "/v1/jobs?user_id=alice",
            Some("key-for-bob-000001"),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            reqwest::Method::GET,
            "/v1/users/alice/notifications",
            Some("key-for-bob-000001"),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            reqwest::Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            Some("key-for-bob-000001"),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            reqwest::Method::GET,
            "/v1/jobs?user_id=alice",
            Some("key-for-alice-0001"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(reqwest::Method::GET, "/healthz", None, None).await.0,
        200,
        "probes stay open"
    );
}
