//! A fake sandwarden API on 127.0.0.1:0 for the CLI tests: the same routes and JSON shapes,
//! admin routes behind `Bearer secret`, and submitted jobs that advance pending -> running ->
//! completed one step per poll.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

pub const TOKEN: &str = "secret";

#[derive(Default)]
pub struct Fake {
    jobs: BTreeMap<String, Value>,
    next: u32,
    paused: bool,
    breaker: &'static str,
    faults: Value,
}

type Shared = Arc<Mutex<Fake>>;

fn err(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message, "field": field}})),
    )
        .into_response()
}

fn job(id: &str, status: &str, user: &str) -> Value {
    json!({"id": id, "status": status, "spec": {"user_id": user, "steps": [{"run": {"cmd": "true"}}]},
        "created_at_ms": 1_700_000_000_000u64, "updated_at_ms": 1_700_000_000_000u64,
        "run_at_ms": 1_700_000_000_000u64, "attempts": []})
}

/// Serve the fake API; returns its base URL.
pub async fn start() -> String {
    let mut fake = Fake {
        breaker: "closed",
        faults: json!({"enabled": false, "error_rate": 0.0, "status": 503,
        "retry_after": null, "latency": "0s", "outage": null, "injected": 0, "passed": 7}),
        ..Fake::default()
    };
    fake.jobs
        .insert("job-dead-1".into(), job("job-dead-1", "dead", "u-1"));
    fake.jobs
        .insert("job-done-2".into(), job("job-done-2", "completed", "u-2"));
    let state: Shared = Arc::new(Mutex::new(fake));
    let admin = Router::new()
        .route("/breaker", get(breaker))
        .route("/breaker/reset", post(breaker_reset))
        .route("/breaker/open", post(breaker_open))
        .route("/faults", get(faults).put(faults_put))
        .route("/queue", get(queue))
        .route("/queue/pause", post(pause))
        .route("/queue/resume", post(resume))
        .route("/jobs", get(admin_jobs))
        .route("/jobs/{id}/retry", post(retry))
        .route("/cleanup", post(|| async { Json(json!({"removed": 3})) }))
        .route("/ratelimits", get(ratelimits))
        .route_layer(middleware::from_fn(require_admin));
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .nest("/v1/admin", admin)
        .fallback(|| async { err(StatusCode::NOT_FOUND, "not_found", "no such endpoint", None) })
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A base URL where nothing listens.
pub fn unreachable_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

async fn require_admin(req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if !ok {
        return err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required (Authorization: Bearer <token>)",
            None,
        );
    }
    next.run(req).await
}

fn breaker_view(s: &Fake) -> Value {
    json!({"provider": "local", "state": s.breaker, "consecutive_failures": 0, "failure_rate": 0.25,
        "opened_at_ms": null, "next_probe_at_ms": null, "probes_in_flight": 0, "last_error": null,
        "transitions": [{"from": "closed", "to": "open", "at_ms": 1_700_000_000_000u64, "consecutive_failures": 5, "reason": "5 failures"}]})
}

async fn breaker(State(s): State<Shared>) -> Json<Value> {
    Json(breaker_view(&s.lock().unwrap()))
}

async fn breaker_reset(State(s): State<Shared>) -> Json<Value> {
    let mut s = s.lock().unwrap();
    s.breaker = "closed";
    Json(breaker_view(&s))
}

async fn breaker_open(State(s): State<Shared>) -> Json<Value> {
    let mut s = s.lock().unwrap();
    s.breaker = "forced_open";
    Json(breaker_view(&s))
}

async fn faults(State(s): State<Shared>) -> Json<Value> {
    Json(s.lock().unwrap().faults.clone())
}

async fn faults_put(State(s): State<Shared>, Json(b): Json<Value>) -> Response {
    let rate = b.get("error_rate").and_then(Value::as_f64).unwrap_or(0.0);
    if !(0.0..=1.0).contains(&rate) {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "must be between 0.0 and 1.0",
            Some("error_rate"),
        );
    }
    let mut s = s.lock().unwrap();
    s.faults["enabled"] = b["enabled"].clone();
    s.faults["error_rate"] = json!(rate);
    s.faults["status"] = json!(b.get("status").and_then(Value::as_u64).unwrap_or(503));
    s.faults["latency"] = json!(b.get("latency").and_then(Value::as_str).unwrap_or("0s"));
    s.faults["outage"] = b.get("outage").cloned().unwrap_or(Value::Null);
    Json(s.faults.clone()).into_response()
}

async fn queue(State(s): State<Shared>) -> Json<Value> {
    let s = s.lock().unwrap();
    let mut by = BTreeMap::new();
    for j in s.jobs.values() {
        *by.entry(j["status"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    Json(
        json!({"by_status": by, "oldest_pending_age_ms": 4200, "completed_last_minute": 1,
        "ready": 0, "leased": 0, "running": 0, "idle_workers": 4, "paused": s.paused}),
    )
}

async fn pause(State(s): State<Shared>) -> Json<Value> {
    s.lock().unwrap().paused = true;
    Json(json!({"paused": true}))
}

async fn resume(State(s): State<Shared>) -> Json<Value> {
    s.lock().unwrap().paused = false;
    Json(json!({"paused": false}))
}

async fn ratelimits() -> Json<Value> {
    Json(
        json!({"operations": [{"operation": "create_sandbox", "count": 3, "limit": 10, "remaining": 7,
        "percent_used": 30.0, "state": "ok", "resets_at_ms": 1_700_000_060_000u64, "cooldown_until_ms": null}],
        "live_sandboxes": 1, "max_concurrent_sandboxes": 8,
        "recent_events": [{"at_ms": 1_700_000_000_000u64, "kind": "warning", "operation": "create_sandbox", "used": 8, "limit": 10}]}),
    )
}

fn page(
    s: &Fake,
    user: Option<&str>,
    q: &BTreeMap<String, String>,
) -> Result<Value, Box<Response>> {
    let status = q.get("status");
    if let Some(st) = status
        && ![
            "pending",
            "running",
            "completed",
            "failed",
            "cancelled",
            "dead",
        ]
        .contains(&st.as_str())
    {
        return Err(Box::new(err(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            &format!("unknown status {st:?}"),
            Some("status"),
        )));
    }
    let limit = q
        .get("limit")
        .map_or(50, |l| l.parse::<usize>().unwrap_or(0));
    let jobs: Vec<Value> = s
        .jobs
        .values()
        .rev()
        .filter(|j| status.is_none_or(|st| j["status"] == json!(st)))
        .filter(|j| user.is_none_or(|u| j["spec"]["user_id"] == json!(u)))
        .take(limit)
        .cloned()
        .collect();
    Ok(json!({"jobs": jobs, "next_cursor": null}))
}

async fn list(State(s): State<Shared>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let Some(user) = q.get("user_id") else {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "is required",
            Some("user_id"),
        );
    };
    match page(&s.lock().unwrap(), Some(user), &q) {
        Ok(p) => Json(p).into_response(),
        Err(e) => *e,
    }
}

async fn admin_jobs(
    State(s): State<Shared>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    match page(&s.lock().unwrap(), None, &q) {
        Ok(p) => Json(p).into_response(),
        Err(e) => *e,
    }
}

async fn submit(State(s): State<Shared>, Json(spec): Json<Value>) -> Response {
    if spec
        .get("steps")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "must have at least one step",
            Some("steps"),
        );
    }
    let mut s = s.lock().unwrap();
    s.next += 1;
    let id = format!("job-new-{}", s.next);
    let mut j = job(&id, "pending", spec["user_id"].as_str().unwrap_or("u"));
    j["spec"] = spec;
    s.jobs.insert(id.clone(), j);
    (
        StatusCode::CREATED,
        Json(json!({"id": id, "status": "pending", "created": true})),
    )
        .into_response()
}

/// Each read of a submitted job moves it on: pending -> running -> one step done -> ... -> completed.
async fn get_job(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if q.contains_key("wait") {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    let mut s = s.lock().unwrap();
    let Some(j) = s.jobs.get_mut(&id) else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("job {id} was not found"),
            None,
        );
    };
    if id.starts_with("job-new-") {
        let total = j["spec"]["steps"].as_array().map_or(0, Vec::len);
        match j["status"].as_str().unwrap() {
            "pending" => {
                j["status"] = json!("running");
                j["result"] = json!({"steps": []});
            }
            "running" => {
                let steps = j["result"]["steps"].as_array_mut().unwrap();
                let n = steps.len();
                steps.push(json!({"index": n, "kind": "run", "stdout": format!("out {n}\n"), "stderr": "", "exit_code": 0, "duration_ms": 3}));
                if n + 1 == total {
                    j["status"] = json!("completed");
                }
            }
            _ => {}
        }
    }
    Json(j.clone()).into_response()
}

async fn cancel(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let mut s = s.lock().unwrap();
    let Some(j) = s.jobs.get_mut(&id) else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("job {id} was not found"),
            None,
        );
    };
    if j["status"] != json!("pending") && j["status"] != json!("running") {
        return err(
            StatusCode::CONFLICT,
            "conflict",
            &format!("job {id} has already ended"),
            None,
        );
    }
    j["status"] = json!("cancelled");
    Json(json!({"id": id, "status": "cancelled"})).into_response()
}

async fn retry(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let mut s = s.lock().unwrap();
    let Some(j) = s.jobs.get_mut(&id) else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("job {id} was not found"),
            None,
        );
    };
    j["status"] = json!("pending");
    Json(json!({"id": id, "status": "pending"})).into_response()
}
