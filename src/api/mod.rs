//! The HTTP API (axum): job endpoints, admin endpoints and `/healthz`.
//!
//! Handlers translate between JSON and `RuntimeHandle` calls and nothing more: no decision is
//! made here. Every error is `{"error": {"code", "message", "field"}}` with a 4xx/5xx status;
//! bodies over the configured size get 413.

mod caller;
mod error;

use caller::Caller;

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub use error::ApiError;

use crate::job::{JobStatus, spec};
use crate::provider::faults::Faults;
use crate::runtime::{BreakerAction, RuntimeHandle};

/// The longest `?wait=` a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Every admin route (method, path under /v1/admin); all of them require the admin token.
/// `router` registers exactly these, and a test walks this list.
pub const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/breaker"),
    ("POST", "/breaker/reset"),
    ("POST", "/breaker/open"),
    ("GET", "/faults"),
    ("PUT", "/faults"),
    ("GET", "/queue"),
    ("POST", "/queue/pause"),
    ("POST", "/queue/resume"),
    ("GET", "/jobs"),
    ("POST", "/jobs/{id}/retry"),
    ("POST", "/cleanup"),
    ("GET", "/ratelimits"),
    ("GET", "/health"),
    ("GET", "/tasks"),
    ("POST", "/tasks/{name}/run"),
    ("GET", "/sandboxes"),
];

pub fn router(rt: RuntimeHandle) -> Router {
    let limit = rt.settings().max_body_bytes;
    let admin = Router::new()
        .route("/breaker", get(breaker_get))
        .route("/breaker/reset", post(breaker_reset))
        .route("/breaker/open", post(breaker_open))
        .route("/faults", get(faults_get).put(faults_put))
        .route("/queue", get(queue_stats))
        .route("/queue/pause", post(queue_pause))
        .route("/queue/resume", post(queue_resume))
        .route("/jobs", get(admin_jobs))
        .route("/jobs/{id}/retry", post(admin_retry))
        .route("/cleanup", post(admin_cleanup))
        .route("/ratelimits", get(ratelimits))
        .route("/health", get(health))
        .route("/tasks", get(tasks))
        .route("/sandboxes", get(sandboxes))
        .route("/tasks/{name}/run", post(run_task))
        .route_layer(middleware::from_fn_with_state(rt.clone(), require_admin));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/admin", get(dashboard))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/users/{id}/notifications", get(notifications))
        .route(
            "/v1/users/{id}/notifications/read",
            post(notifications_read),
        )
        .route("/v1/events", get(events))
        .nest("/v1/admin", admin)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(rt)
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    rt: RuntimeHandle,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(rt))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint")
}

/// The operator dashboard: one self-contained page (no external assets); it asks for the admin
/// token and sends it on every admin call, so the page itself needs none.
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

/// Prometheus metrics: counters and histograms, plus gauges read from published state now.
/// Open unless `api.metrics_require_token` is set.
async fn metrics(
    State(rt): State<RuntimeHandle>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if rt.settings().metrics_require_token {
        check_admin(&rt, &headers)?;
    }
    let mut gauges: Vec<(&'static str, &'static str, crate::metrics::Labels, f64)> = Vec::new();
    if let Ok(b) = rt.breaker().await {
        gauges.push((
            "sandwarden_breaker_state",
            "1 for the circuit breaker's current state.",
            vec![("provider", b.provider.clone()), ("state", b.state.into())],
            1.0,
        ));
        gauges.push((
            "sandwarden_breaker_consecutive_failures",
            "Consecutive counted failures.",
            vec![("provider", b.provider)],
            f64::from(b.consecutive_failures),
        ));
    }
    let census = rt.census()?;
    for status in [
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
        "dead",
    ] {
        let n = census.by_status.get(status).copied().unwrap_or(0);
        gauges.push((
            "sandwarden_queue_depth",
            "Jobs by status.",
            vec![("status", status.into())],
            n as f64,
        ));
    }
    if let Ok(l) = rt.limits().await {
        for op in &l.operations {
            if let Some(pct) = op.percent_used {
                gauges.push((
                    "sandwarden_rate_usage_ratio",
                    "Share of the operation's limit used in the current window.",
                    vec![("operation", op.operation.into())],
                    pct / 100.0,
                ));
            }
        }
        gauges.push((
            "sandwarden_live_sandboxes",
            "Live sandboxes.",
            vec![],
            f64::from(l.live_sandboxes),
        ));
    }
    if let Ok(n) = rt.pool_size().await {
        gauges.push((
            "sandwarden_workers_alive",
            "Sandbox workers alive.",
            vec![],
            n as f64,
        ));
    }
    let text = rt.metrics().render(&gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Ready to take jobs (the actor tree is up); 503 while it starts, restarts or stops.
async fn readyz(State(rt): State<RuntimeHandle>) -> Response {
    if rt.ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the service is starting or restarting",
        )
        .into_response()
    }
}

async fn health(State(rt): State<RuntimeHandle>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::to_value(rt.health().await?).expect("report serializes"),
    ))
}

async fn sandboxes(State(rt): State<RuntimeHandle>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({"sandboxes": rt.sandboxes()?})))
}

async fn tasks(State(rt): State<RuntimeHandle>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({"tasks": rt.tasks().await?})))
}

async fn run_task(
    State(rt): State<RuntimeHandle>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match rt.run_task(&name).await? {
        Ok(run) => Ok(Json(serde_json::to_value(run).expect("run serializes"))),
        Err(why) => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", why)),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "body_too_large",
                "request body exceeds the configured limit",
            )
        } else {
            ApiError::new(status, "bad_body", e.body_text())
        }
    })
}

async fn submit(
    State(rt): State<RuntimeHandle>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let spec = spec::parse(&body, &rt.settings().job_defaults).map_err(ApiError::from)?;
    caller.may_act_for(&spec.user_id)?;
    let (job, created) = rt.submit(spec).await?;
    // 202: accepted, but it waits (provider down, dispatch paused) — the reason says why.
    let status = match (created, job.reason.is_some()) {
        (false, _) => StatusCode::OK,
        (true, true) => StatusCode::ACCEPTED,
        (true, false) => StatusCode::CREATED,
    };
    let mut body = json!({"id": job.id, "status": job.status.as_str(), "created": created});
    if let Some(reason) = &job.reason {
        body["reason"] = json!(reason);
    }
    Ok((
        status,
        [(header::LOCATION, format!("/v1/jobs/{}", job.id))],
        Json(body),
    )
        .into_response())
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

async fn get_job(
    State(rt): State<RuntimeHandle>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let job = match q.wait {
        Some(w) => {
            let d = humantime::parse_duration(&w).map_err(|e| {
                ApiError::field(
                    "invalid_field",
                    "wait",
                    format!("{w:?} is not a duration like \"30s\": {e}"),
                )
            })?;
            if d > MAX_WAIT {
                return Err(ApiError::field(
                    "invalid_field",
                    "wait",
                    "must be at most 5m",
                ));
            }
            rt.wait(&id, d).await?
        }
        None => rt.get(&id)?,
    };
    match job.filter(|j| caller.sees(&j.spec.user_id)) {
        Some(job) => Ok(Json(job).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {id} was not found"),
        )),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    user_id: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list(
    State(rt): State<RuntimeHandle>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = q
        .user_id
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::field("invalid_field", "user_id", "is required"))?;
    caller.may_act_for(&user)?;
    let (status, limit) = status_and_limit(&q)?;
    let page = rt.list(&user, status, limit, q.cursor.as_deref())?;
    Ok(Json(
        json!({"jobs": page.jobs, "next_cursor": page.next_cursor}),
    ))
}

/// The `status` and `limit` query parameters of job lists, checked.
fn status_and_limit(q: &ListQuery) -> Result<(Option<JobStatus>, usize), ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::field("invalid_field", "status", format!("unknown status {s:?}"))
        })?),
    };
    let limit = match q.limit.as_deref() {
        None => 50,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "invalid_field",
                    "limit",
                    "must be a number from 1 to 500",
                ));
            }
        },
    };
    Ok((status, limit))
}

async fn cancel(
    State(rt): State<RuntimeHandle>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let owner = rt.get(&id)?.map(|j| j.spec.user_id);
    if !owner.is_some_and(|u| caller.sees(&u)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {id} was not found"),
        ));
    }
    let job = rt.cancel(&id).await?;
    Ok(Json(json!({"id": job.id, "status": job.status.as_str()})))
}

#[derive(Deserialize)]
struct FeedQuery {
    unread: Option<bool>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn notifications(
    State(rt): State<RuntimeHandle>,
    caller: Caller,
    Path(user): Path<String>,
    Query(q): Query<FeedQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.may_act_for(&user)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field(
            "invalid_field",
            "limit",
            "must be a number from 1 to 500",
        ));
    }
    let (list, next) =
        rt.notifications(&user, q.unread.unwrap_or(false), limit, q.cursor.as_deref())?;
    Ok(Json(json!({"notifications": list, "next_cursor": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

async fn notifications_read(
    State(rt): State<RuntimeHandle>,
    caller: Caller,
    Path(user): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.may_act_for(&user)?;
    let body = body_or_error(body)?;
    let b: ReadBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::field(
            "invalid_field",
            "",
            format!("expected {{\"ids\": [...]}} or {{\"all\": true}}: {e}"),
        )
    })?;
    let ids = match (b.ids, b.all) {
        (Some(ids), false) => Some(ids),
        (None, true) => None,
        _ => {
            return Err(ApiError::field(
                "invalid_field",
                "ids",
                "give either ids or all: true",
            ));
        }
    };
    let changed = rt.mark_read(&user, ids.as_deref())?;
    Ok(Json(json!({"marked_read": changed})))
}

#[derive(Deserialize)]
struct EventsQuery {
    user_id: Option<String>,
}

/// Server-sent events: the user's notifications as they are made.
async fn events(
    State(rt): State<RuntimeHandle>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let user = q
        .user_id
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::field("invalid_field", "user_id", "is required"))?;
    caller.may_act_for(&user)?;
    let rx = rt.subscribe_notifications();
    let stream = futures::stream::unfold((rx, user), |(mut rx, user)| async move {
        loop {
            match rx.recv().await {
                Ok(n) if n.user_id == user => {
                    let event = Event::default()
                        .event(n.kind.clone())
                        .id(n.id.clone())
                        .json_data(&n)
                        .ok()?;
                    return Some((Ok::<_, std::convert::Infallible>(event), (rx, user)));
                }
                Ok(_) => continue,
                // A slow reader missed some; the feed endpoint has them all.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream.boxed())
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn require_admin(
    State(rt): State<RuntimeHandle>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_admin(&rt, req.headers())?;
    Ok(next.run(req).await)
}

/// Refuse unless the request carries the admin token (when one is set).
fn check_admin(rt: &RuntimeHandle, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if let Some(token) = &rt.settings().admin_token {
        let given = caller::bearer(headers);
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin token is required (Authorization: Bearer <token>)",
            ));
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

async fn breaker_get(State(rt): State<RuntimeHandle>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::to_value(rt.breaker().await?).expect("view serializes"),
    ))
}

async fn breaker_reset(
    State(rt): State<RuntimeHandle>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let v = rt.breaker_control(BreakerAction::Reset).await?;
    Ok(Json(serde_json::to_value(v).expect("view serializes")))
}

async fn breaker_open(
    State(rt): State<RuntimeHandle>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let v = rt.breaker_control(BreakerAction::Open).await?;
    Ok(Json(serde_json::to_value(v).expect("view serializes")))
}

async fn ratelimits(State(rt): State<RuntimeHandle>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::to_value(rt.limits().await?).expect("view serializes"),
    ))
}

async fn queue_pause(State(rt): State<RuntimeHandle>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({"paused": rt.set_paused(true).await?})))
}

async fn queue_resume(
    State(rt): State<RuntimeHandle>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({"paused": rt.set_paused(false).await?})))
}

async fn admin_retry(
    State(rt): State<RuntimeHandle>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job = rt.retry(&id).await?;
    Ok(Json(json!({"id": job.id, "status": job.status.as_str()})))
}

async fn admin_cleanup(
    State(rt): State<RuntimeHandle>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({"removed": rt.cleanup().await?})))
}

async fn admin_jobs(
    State(rt): State<RuntimeHandle>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (status, limit) = status_and_limit(&q)?;
    let page = rt.list_all(status, limit, q.cursor.as_deref())?;
    Ok(Json(
        json!({"jobs": page.jobs, "next_cursor": page.next_cursor}),
    ))
}

async fn queue_stats(State(rt): State<RuntimeHandle>) -> Result<Json<serde_json::Value>, ApiError> {
    let s = rt.stats().await?;
    let census = rt.census()?;
    let now = crate::clock::now_ms();
    Ok(Json(json!({
        "by_status": census.by_status,
        "oldest_pending_age_ms": census.oldest_pending_ms.map(|t| now.saturating_sub(t)),
        "completed_last_minute": census.finished_since,
        "ready": s.ready, "leased": s.leased, "running": s.running,
        "idle_workers": s.idle_workers, "paused": s.paused, "ramp_limit": s.ramp_limit,
    })))
}

fn faults_json(rt: &RuntimeHandle) -> serde_json::Value {
    let f = rt.faults().get();
    let now = crate::clock::now_ms();
    json!({
        "enabled": f.enabled,
        "error_rate": f.error_rate,
        "status": f.status,
        "retry_after": f.retry_after.map(|d| humantime::format_duration(d).to_string()),
        "latency": humantime::format_duration(f.latency).to_string(),
        "outage": f.outage_until_ms.filter(|t| *t > now)
            .map(|t| humantime::format_duration(Duration::from_millis(t - now)).to_string()),
        "injected": rt.faults().injected(),
        "passed": rt.faults().passed(),
        "stall_jobs": rt.faults().stalls_left(),
    })
}

async fn faults_get(State(rt): State<RuntimeHandle>) -> Json<serde_json::Value> {
    Json(faults_json(&rt))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsBody {
    enabled: bool,
    #[serde(default)]
    error_rate: f64,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    retry_after: Option<String>,
    #[serde(default)]
    latency: Option<String>,
    #[serde(default)]
    outage: Option<String>,
    /// The next N job runs stall their worker (for the hung-worker watchdog).
    #[serde(default)]
    stall_jobs: u64,
}

async fn faults_put(
    State(rt): State<RuntimeHandle>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body_or_error(body)?;
    let mut de = serde_json::Deserializer::from_slice(&body);
    let b: FaultsBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        ApiError::field(
            "invalid_field",
            if field == "." { "" } else { &field },
            e.into_inner().to_string(),
        )
    })?;
    if !(0.0..=1.0).contains(&b.error_rate) {
        return Err(ApiError::field(
            "invalid_field",
            "error_rate",
            "must be between 0.0 and 1.0",
        ));
    }
    let status = b.status.unwrap_or(503);
    if !(400..=599).contains(&status) {
        return Err(ApiError::field(
            "invalid_field",
            "status",
            "must be an HTTP error status (400 to 599)",
        ));
    }
    let dur = |field: &str, v: &Option<String>| -> Result<Option<Duration>, ApiError> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(t) => humantime::parse_duration(t).map(Some).map_err(|e| {
                ApiError::field(
                    "invalid_field",
                    field,
                    format!("{t:?} is not a duration: {e}"),
                )
            }),
        }
    };
    let faults = Faults {
        enabled: b.enabled,
        error_rate: b.error_rate,
        status,
        retry_after: dur("retry_after", &b.retry_after)?,
        latency: dur("latency", &b.latency)?.unwrap_or_default(),
        outage_until_ms: dur("outage", &b.outage)?
            .map(|d| crate::clock::now_ms() + d.as_millis() as u64),
    };
    rt.faults().set(faults);
    rt.faults().stall_next_jobs(b.stall_jobs);
    Ok(Json(faults_json(&rt)))
}
