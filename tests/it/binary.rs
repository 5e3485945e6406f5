//! The real binary under injected faults and quotas, over HTTP.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::crash::start_with;

async fn get(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn submit_n(http: &reqwest::Client, base: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = http
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"user_id": "e2e", "steps": [{"run": {"cmd": format!("echo {i}")}}]}))
            .send()
            .await
            .unwrap();
        // 201, or 202 once the breaker is open (accepted, but waiting).
        assert!(matches!(r.status().as_u16(), 201 | 202), "{}", r.status());
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outage_keeps_20_jobs_pending_until_faults_stop() {
    let dir = tempfile::tempdir().unwrap();
    let proc = start_with(
        dir.path(),
        &[
            ("SANDWARDEN_FAULTS__ENABLED", "true"),
            ("SANDWARDEN_FAULTS__ERROR_RATE", "1.0"),
            ("SANDWARDEN_FAULTS__STATUS", "503"),
            ("SANDWARDEN_BREAKER__OPEN_TIMEOUT", "2s"),
            ("SANDWARDEN_RETRY__BASE", "50ms"),
        ],
    );
    let http = reqwest::Client::new();
    let ids = submit_n(&http, &proc.url, 20).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&http, format!("{}/v1/admin/breaker", proc.url)).await["state"] != "open" {
        assert!(Instant::now() < deadline, "the breaker never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = get(&http, format!("{}/v1/admin/faults", proc.url)).await["injected"]
        .as_u64()
        .unwrap();
    // Two open periods of 2 s: at most one probe each.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let after = get(&http, format!("{}/v1/admin/faults", proc.url)).await["injected"]
        .as_u64()
        .unwrap();
    assert!(
        after - before <= 3,
        "{} calls reached the provider while the breaker was open",
        after - before
    );
    for id in &ids {
        let job = get(&http, format!("{}/v1/jobs/{id}", proc.url)).await;
        assert_eq!(job["status"], "pending", "{job}");
        assert!(
            job["reason"]
                .as_str()
                .unwrap()
                .contains("provider unavailable"),
            "{job}"
        );
    }
    let r = http
        .put(format!("{}/v1/admin/faults", proc.url))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for id in &ids {
        let job = get(&http, format!("{}/v1/jobs/{id}?wait=60s", proc.url)).await;
        assert_eq!(job["status"], "completed", "{job}");
    }
    assert_eq!(
        get(&http, format!("{}/v1/admin/breaker", proc.url)).await["state"],
        "closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_quota_of_5_completes_5_of_8_and_keeps_3_pending() {
    let dir = tempfile::tempdir().unwrap();
    let proc = start_with(
        dir.path(),
        &[("SANDWARDEN_RATELIMIT__LIMITS__SANDBOX_CREATE", "5")],
    );
    let http = reqwest::Client::new();
    let ids = submit_n(&http, &proc.url, 8).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs: Vec<Value> = futures::future::join_all(
            ids.iter()
                .map(|id| get(&http, format!("{}/v1/jobs/{id}", proc.url))),
        )
        .await;
        let completed = jobs.iter().filter(|j| j["status"] == "completed").count();
        let waiting: Vec<_> = jobs
            .iter()
            .filter(|j| {
                j["status"] == "pending"
                    && j["reason"].as_str().unwrap_or("").contains("quota reached")
            })
            .collect();
        assert!(jobs.iter().all(|j| j["status"] != "failed"), "{jobs:?}");
        if completed == 5 && waiting.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{jobs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let limits = get(&http, format!("{}/v1/admin/ratelimits", proc.url)).await;
    let create = limits["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operation"] == "sandbox_create")
        .unwrap()
        .clone();
    assert_eq!(create["count"], 5);
    assert_eq!(create["state"], "blocked");
}
