//! Emulated E2B control-plane handlers: create, list (v1 and v2), get, kill, set timeout,
//! pause, resume and connect, with E2B's response shapes, status codes and error bodies.
//!
//! This module owns request validation and JSON shapes. It never runs processes or touches
//! files itself (the registry and `LocalProvider` do), and it never checks the API key (the
//! front door has by the time a handler runs).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::state::{NewSandbox, Sandbox, SandboxState};
use super::{ApiError, Shared, api_error};

/// The longest lifetime the emulated plan allows (E2B Pro: 24 hours).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The server default when a create omits `timeout`.
const DEFAULT_TIMEOUT_SECS: i64 = 15;
const CLIENT_ID: &str = "6532622b";
/// Recent enough that the SDKs enable every feature the emulator implements.
pub(crate) const ENVD_VERSION: &str = "0.5.7";
const PAGE_LIMIT: usize = 100;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<i64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    secure: Option<bool>,
    #[serde(default)]
    auto_pause: Option<bool>,
}

#[derive(Deserialize)]
struct TimeoutBody {
    timeout: Option<i64>,
}

fn validation(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        &format!(
            "validation error: error in openapi3filter.RequestError: request body has an error: {message}"
        ),
    )
}

fn not_found(id: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        &format!("Sandbox \"{id}\" doesn't exist or you don't have access to it"),
    )
}

/// Accept the legacy `{id}-{clientID}` form; more than one `-` is invalid.
fn sandbox_id(raw: &str) -> Result<String, ApiError> {
    let mut parts = raw.split('-');
    let id = parts.next().unwrap_or_default();
    let _client = parts.next();
    if parts.next().is_some()
        || id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "Invalid sandbox ID"));
    }
    Ok(id.to_string())
}

fn rfc3339(ms: u64) -> String {
    crate::clock::rfc3339(ms)
}

/// The `Sandbox` shape of create/connect/resume.
fn created_json(s: &Sandbox) -> Value {
    let mut v = json!({
        "templateID": s.template_id,
        "sandboxID": s.id,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
    });
    if let Some(alias) = &s.alias {
        v["alias"] = json!(alias);
    }
    if let Some(token) = &s.access_token {
        v["envdAccessToken"] = json!(token);
    }
    v
}

/// The `ListedSandbox` / `SandboxDetail` shape.
fn detail_json(s: &Sandbox, with_token: bool) -> Value {
    let mut v = json!({
        "templateID": s.template_id,
        "sandboxID": s.id,
        "clientID": CLIENT_ID,
        "startedAt": rfc3339(s.started_at_ms),
        "endAt": rfc3339(s.end_at_ms),
        "cpuCount": 2,
        "memoryMB": 512,
        "diskSizeMB": 2048,
        "metadata": s.metadata,
        "state": s.state.as_str(),
        "envdVersion": ENVD_VERSION,
        "volumeMounts": [],
    });
    if let Some(alias) = &s.alias {
        v["alias"] = json!(alias);
    }
    if with_token {
        if let Some(token) = &s.access_token {
            v["envdAccessToken"] = json!(token);
        }
        v["lifecycle"] = json!({
            "autoResume": false,
            "onTimeout": if s.auto_pause { "pause" } else { "kill" },
        });
    }
    v
}

fn check_timeout(secs: i64) -> Result<Duration, ApiError> {
    if secs <= 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Timeout must be greater than 0",
        ));
    }
    let d = Duration::from_secs(secs as u64);
    if d > MAX_TIMEOUT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            &format!(
                "Timeout cannot be greater than {} hours",
                MAX_TIMEOUT.as_secs() / 3600
            ),
        ));
    }
    Ok(d)
}

/// `POST /sandboxes`: `secure` is opt-in.
pub(super) async fn create(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    create_inner(&s, None, body, false).await
}

/// `POST /v2/sandboxes`, which SDK 2.63 uses: always secured, and an `Idempotency-Key` header
/// makes a repeated create return the sandbox the first one made.
pub(super) async fn create_v2(
    State(s): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    create_inner(&s, key, body, true).await
}

async fn create_inner(
    s: &Shared,
    idempotency_key: Option<String>,
    body: Bytes,
    v2: bool,
) -> Response {
    if let Some(key) = &idempotency_key
        && let Some(existing) = s.registry.by_idempotency_key(key)
    {
        return (StatusCode::CREATED, Json(created_json(&existing))).into_response();
    }
    let body: CreateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return validation(e).into_response(),
    };
    let Some(template_id) = body.template_id.filter(|t| !t.is_empty()) else {
        return validation("property \"templateID\" is missing").into_response();
    };
    let timeout = match check_timeout(body.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let new = NewSandbox {
        template_id,
        timeout,
        metadata: body.metadata.unwrap_or_default(),
        env_vars: body.env_vars.unwrap_or_default(),
        secure: v2 || body.secure.unwrap_or(false),
        auto_pause: body.auto_pause.unwrap_or(false),
    };
    match s.registry.create(new, idempotency_key).await {
        Ok(sandbox) => (StatusCode::CREATED, Json(created_json(&sandbox))).into_response(),
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Failed to create sandbox: {e}"),
        ),
    }
}

/// Decode a `metadata` filter: a query string whose keys and values are URL-encoded again.
fn metadata_filter(raw: Option<&String>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw else { return Ok(out) };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(k), percent_decode(v)) {
            (Some(k), Some(v)) => {
                out.insert(k, v);
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "Error parsing metadata",
                ));
            }
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn matches_metadata(s: &Sandbox, filter: &BTreeMap<String, String>) -> bool {
    filter.iter().all(|(k, v)| s.metadata.get(k) == Some(v))
}

pub(super) async fn list_v2(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let filter = match metadata_filter(q.get("metadata")) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let states: Vec<&str> = match q.get("state") {
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        None => vec!["running", "paused"],
    };
    if let Some(bad) = states.iter().find(|s| !matches!(**s, "running" | "paused")) {
        return api_error(StatusCode::BAD_REQUEST, &format!("Invalid state: {bad}"));
    }
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => PAGE_LIMIT,
        Some(Ok(n)) if (1..=PAGE_LIMIT).contains(&n) => n,
        Some(_) => return api_error(StatusCode::BAD_REQUEST, "limit must be between 1 and 100"),
    };
    let asc = match q.get("order").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return api_error(StatusCode::BAD_REQUEST, &format!("Invalid order: {other}"));
        }
    };
    let mut all: Vec<Sandbox> = s
        .registry
        .all()
        .into_iter()
        .filter(|sb| states.contains(&sb.state.as_str()) && matches_metadata(sb, &filter))
        .filter(|sb| {
            q.get("template")
                .is_none_or(|t| *t == sb.template_id || Some(t) == sb.alias.as_ref())
        })
        .collect();
    // Ties on start time are broken by id so pages are stable.
    all.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
    if !asc {
        all.reverse();
    }
    let total_running = all
        .iter()
        .filter(|sb| sb.state == SandboxState::Running)
        .count();
    let offset = match q.get("nextToken") {
        None => 0,
        Some(t) => match t.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return api_error(StatusCode::BAD_REQUEST, "Invalid next token"),
        },
    };
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|sb| detail_json(sb, false))
        .collect();
    let mut resp = Json(page).into_response();
    if offset + limit < all.len()
        && let Ok(v) = HeaderValue::from_str(&(offset + limit).to_string())
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    if let Ok(v) = HeaderValue::from_str(&total_running.to_string()) {
        resp.headers_mut().insert("x-total-running", v);
    }
    resp
}

pub(super) async fn list_v1(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let filter = match metadata_filter(q.get("metadata")) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let mut all: Vec<Sandbox> = s
        .registry
        .all()
        .into_iter()
        .filter(|sb| sb.state == SandboxState::Running && matches_metadata(sb, &filter))
        .collect();
    all.sort_by(|a, b| (b.started_at_ms, &b.id).cmp(&(a.started_at_ms, &a.id)));
    Json(
        all.iter()
            .map(|sb| detail_json(sb, false))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

pub(super) async fn get_one(State(s): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    let id = match sandbox_id(&raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match s.registry.get(&id) {
        Some(sb) => Json(detail_json(&sb, true)).into_response(),
        None => not_found(&id),
    }
}

pub(super) async fn kill(State(s): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    let id = match sandbox_id(&raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    if s.registry.kill(&id).await {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&id)
    }
}

fn parse_timeout_body(body: &Bytes) -> Result<i64, ApiError> {
    let parsed: TimeoutBody = serde_json::from_slice(body).map_err(validation)?;
    parsed
        .timeout
        .ok_or_else(|| validation("property \"timeout\" is missing"))
}

pub(super) async fn set_timeout(
    State(s): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    let id = match sandbox_id(&raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let secs = match parse_timeout_body(&body) {
        Ok(t) => t.max(0),
        Err(r) => return r.into_response(),
    };
    // Longer than the plan allows is clamped silently, as the real server does.
    let d = Duration::from_secs(secs as u64).min(MAX_TIMEOUT);
    let now = crate::clock::now_ms();
    match s.registry.update(&id, |sb| {
        if sb.state != SandboxState::Running {
            return Err(sb.state);
        }
        sb.end_at_ms = now + d.as_millis() as u64;
        Ok(())
    }) {
        None => not_found(&id),
        Some(Err(_)) => api_error(
            StatusCode::CONFLICT,
            &format!("Sandbox \"{id}\" is being paused"),
        ),
        Some(Ok(())) => StatusCode::NO_CONTENT.into_response(),
    }
}

pub(super) async fn pause(State(s): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    let id = match sandbox_id(&raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let now = crate::clock::now_ms();
    let outcome = s.registry.update(&id, |sb| {
        if sb.state == SandboxState::Paused {
            return false;
        }
        sb.state = SandboxState::Paused;
        sb.end_at_ms = now;
        true
    });
    match outcome {
        None => not_found(&id),
        Some(false) => api_error(
            StatusCode::CONFLICT,
            &format!("Error pausing sandbox - sandbox '{id}' is already paused"),
        ),
        Some(true) => {
            // A real pause freezes processes; the emulator cannot, so it ends them.
            s.registry.kill_processes(&id);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// Shared by `/connect` (running → 200, extend only; paused → 201) and the deprecated
/// `/resume` (paused → 201; running → 409).
async fn resume_like(s: &Shared, raw: &str, body: &Bytes, connect: bool) -> Response {
    let id = match sandbox_id(raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let secs = match parse_timeout_body(body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let d = match check_timeout(secs) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    let now = crate::clock::now_ms();
    let end = now + d.as_millis() as u64;
    let outcome = s.registry.update(&id, |sb| match sb.state {
        SandboxState::Running if connect => {
            sb.end_at_ms = sb.end_at_ms.max(end);
            Ok((StatusCode::OK, sb.clone()))
        }
        SandboxState::Running => Err(()),
        SandboxState::Paused => {
            sb.state = SandboxState::Running;
            sb.end_at_ms = end;
            Ok((StatusCode::CREATED, sb.clone()))
        }
    });
    match outcome {
        None => not_found(&id),
        Some(Err(())) => api_error(
            StatusCode::CONFLICT,
            &format!("Sandbox {id} can't be resumed, it's already running"),
        ),
        Some(Ok((status, sb))) => (status, Json(created_json(&sb))).into_response(),
    }
}

pub(super) async fn connect(
    State(s): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    resume_like(&s, &raw, &body, true).await
}

pub(super) async fn resume(
    State(s): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    resume_like(&s, &raw, &body, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filter_is_decoded_twice() {
        let raw = "sandwarden_instance=a%20b&job=42".to_string();
        let f = metadata_filter(Some(&raw)).unwrap();
        assert_eq!(
            f.get("sandwarden_instance").map(String::as_str),
            Some("a b")
        );
        assert_eq!(f.get("job").map(String::as_str), Some("42"));
    }

    #[test]
    fn legacy_ids_are_accepted() {
        assert_eq!(sandbox_id("iabc-6532622b").unwrap(), "iabc");
        assert!(sandbox_id("a-b-c").is_err());
        assert!(sandbox_id("ABC").is_err());
    }
}
