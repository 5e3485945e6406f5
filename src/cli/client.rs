//! The HTTP client for the service's API (`AdminClient`) and its one-line error (`ClientError`).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How long a plain request may take (a long-poll adds its own wait on top).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to the service failed; `Display` is one line meant for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("service unreachable at {url}")]
    Unreachable { url: String },
    #[error("request to {url} timed out")]
    TimedOut { url: String },
    #[error("unauthorized: check the admin token")]
    Unauthorized,
    #[error("not found: job {id}")]
    JobNotFound { id: String },
    /// The API's own error body, shown as `field: message` (or just `message`).
    #[error("{}", api_line(.field, .message))]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    #[error("unexpected response from {url}: {detail}")]
    BadResponse { url: String, detail: String },
}

fn api_line(field: &Option<String>, message: &str) -> String {
    match field {
        Some(f) if !f.is_empty() => format!("{f}: {message}"),
        _ => message.to_string(),
    }
}

/// A client for every endpoint of the service; admin calls send the bearer token when set.
#[derive(Debug, Clone)]
pub struct AdminClient {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

/// Filters of a job list; `None` leaves the service's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    pub user: Option<String>,
    pub status: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl AdminClient {
    /// A client for the service at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default();
        AdminClient {
            base: base.into().trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http,
        }
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/healthz", &[], None, None, None)
            .await
    }

    /// `POST /v1/jobs` with the job spec; answers `{"id","status","created"}`.
    pub async fn submit(&self, job: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, "/v1/jobs", &[], Some(job), None, None)
            .await
    }

    /// `GET /v1/jobs/{id}`, long-polling up to `wait` when given.
    pub async fn job(&self, id: &str, wait: Option<Duration>) -> Result<Value, ClientError> {
        let w = wait.map(|d| humantime::format_duration(d).to_string());
        let query: Vec<(&str, String)> = w.into_iter().map(|w| ("wait", w)).collect();
        let timeout = wait.map(|d| d + REQUEST_TIMEOUT);
        self.call(
            Method::GET,
            &format!("/v1/jobs/{}", seg(id)),
            &query,
            None,
            Some(id),
            timeout,
        )
        .await
    }

    /// `GET /v1/jobs?user_id=U...`: one user's jobs (`q.user` is required by the service).
    pub async fn user_jobs(&self, q: &JobQuery) -> Result<Value, ClientError> {
        let mut query = Vec::new();
        if let Some(u) = &q.user {
            query.push(("user_id", u.clone()));
        }
        push_filters(&mut query, q);
        self.call(Method::GET, "/v1/jobs", &query, None, None, None)
            .await
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/jobs/{}/cancel", seg(id));
        self.call(Method::POST, &path, &[], None, Some(id), None)
            .await
    }

    /// `GET /v1/admin/breaker`.
    pub async fn breaker(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/v1/admin/breaker", &[], None, None, None)
            .await
    }

    /// `POST /v1/admin/breaker/reset`.
    pub async fn breaker_reset(&self) -> Result<Value, ClientError> {
        let path = "/v1/admin/breaker/reset";
        self.call(Method::POST, path, &[], None, None, None).await
    }

    /// `POST /v1/admin/breaker/open`.
    pub async fn breaker_open(&self) -> Result<Value, ClientError> {
        let path = "/v1/admin/breaker/open";
        self.call(Method::POST, path, &[], None, None, None).await
    }

    /// `GET /v1/admin/ratelimits`.
    pub async fn ratelimits(&self) -> Result<Value, ClientError> {
        let path = "/v1/admin/ratelimits";
        self.call(Method::GET, path, &[], None, None, None).await
    }

    /// `GET /v1/admin/queue`.
    pub async fn queue(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/v1/admin/queue", &[], None, None, None)
            .await
    }

    /// `POST /v1/admin/queue/pause`; answers `{"paused":true}`.
    pub async fn queue_pause(&self) -> Result<Value, ClientError> {
        let path = "/v1/admin/queue/pause";
        self.call(Method::POST, path, &[], None, None, None).await
    }

    /// `POST /v1/admin/queue/resume`; answers `{"paused":false}`.
    pub async fn queue_resume(&self) -> Result<Value, ClientError> {
        let path = "/v1/admin/queue/resume";
        self.call(Method::POST, path, &[], None, None, None).await
    }

    /// `GET /v1/admin/jobs?status=S...`: every user's jobs (`q.user` is ignored).
    pub async fn admin_jobs(&self, q: &JobQuery) -> Result<Value, ClientError> {
        let mut query = Vec::new();
        push_filters(&mut query, q);
        self.call(Method::GET, "/v1/admin/jobs", &query, None, None, None)
            .await
    }

    /// `POST /v1/admin/jobs/{id}/retry`.
    pub async fn retry(&self, id: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/admin/jobs/{}/retry", seg(id));
        self.call(Method::POST, &path, &[], None, Some(id), None)
            .await
    }

    /// `POST /v1/admin/cleanup`; answers `{"removed":N}`.
    pub async fn cleanup(&self) -> Result<Value, ClientError> {
        let path = "/v1/admin/cleanup";
        self.call(Method::POST, path, &[], None, None, None).await
    }

    /// `GET /v1/admin/faults`.
    pub async fn faults(&self) -> Result<Value, ClientError> {
        let path = "/v1/admin/faults";
        self.call(Method::GET, path, &[], None, None, None).await
    }

    /// `PUT /v1/admin/faults` with `{"enabled",...}`.
    pub async fn set_faults(&self, body: &Value) -> Result<Value, ClientError> {
        let path = "/v1/admin/faults";
        self.call(Method::PUT, path, &[], Some(body), None, None)
            .await
    }

    /// One request; `job` names the job a 404 is about.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        job: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(timeout.unwrap_or(REQUEST_TIMEOUT));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport(e, &url))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.transport(e, &url))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| ClientError::BadResponse {
                url,
                detail: format!("body is not JSON ({e})"),
            });
        }
        Err(error_from(status, &text, job, &url))
    }

    fn transport(&self, e: reqwest::Error, url: &str) -> ClientError {
        if e.is_timeout() {
            ClientError::TimedOut {
                url: url.to_string(),
            }
        } else if e.is_connect() || e.is_request() {
            ClientError::Unreachable {
                url: self.base.clone(),
            }
        } else {
            ClientError::BadResponse {
                url: url.to_string(),
                detail: one_line(&e.to_string()),
            }
        }
    }
}

fn push_filters(query: &mut Vec<(&str, String)>, q: &JobQuery) {
    if let Some(s) = &q.status {
        query.push(("status", s.clone()));
    }
    if let Some(l) = q.limit {
        query.push(("limit", l.to_string()));
    }
    if let Some(c) = &q.cursor {
        query.push(("cursor", c.clone()));
    }
}

/// The error for a non-2xx answer with body `text`.
fn error_from(status: StatusCode, text: &str, job: Option<&str>, url: &str) -> ClientError {
    if status == StatusCode::UNAUTHORIZED {
        return ClientError::Unauthorized;
    }
    if status == StatusCode::NOT_FOUND
        && let Some(id) = job
    {
        return ClientError::JobNotFound { id: id.to_string() };
    }
    let body: Option<Value> = serde_json::from_str(text).ok();
    let err = body.as_ref().and_then(|b| b.get("error"));
    match err.and_then(|e| e.get("message")).and_then(Value::as_str) {
        Some(message) => {
            let e = err.expect("checked above");
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
            ClientError::Api {
                status: status.as_u16(),
                code: s("code").unwrap_or_default(),
                message: one_line(message),
                field: s("field"),
            }
        }
        None => ClientError::BadResponse {
            url: url.to_string(),
            detail: format!("http {}", status.as_u16()),
        },
    }
}

/// `id` as one URL path segment.
fn seg(id: &str) -> String {
    let mut s = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line() {
        let e = error_from(StatusCode::UNAUTHORIZED, "", None, "u");
        assert_eq!(e.to_string(), "unauthorized: check the admin token");
        let e = error_from(StatusCode::NOT_FOUND, "", Some("job-1"), "u");
        assert_eq!(e.to_string(), "not found: job job-1");
        let body =
            r#"{"error":{"code":"invalid_field","message":"must be\nsmall","field":"limit"}}"#;
        let e = error_from(StatusCode::BAD_REQUEST, body, None, "u");
        assert_eq!(e.to_string(), "limit: must be small");
        let e = error_from(StatusCode::BAD_GATEWAY, "<html>", None, "http://x/y");
        assert_eq!(
            e.to_string(),
            "unexpected response from http://x/y: http 502"
        );
    }

    #[test]
    fn ids_are_escaped_as_one_segment() {
        assert_eq!(seg("job-01"), "job-01");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
