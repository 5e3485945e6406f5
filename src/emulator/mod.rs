//! An E2B-compatible emulator: the control-plane REST API and envd on one HTTP port, backed by
//! `LocalProvider` (a sandbox is a directory, commands are real processes), with fault
//! injection for resilience tests.
//!
//! This module owns startup and shutdown, the front door that every request passes through
//! (classification into an endpoint name, fault injection, call counting, API-key and envd
//! token checks) and the expiry reaper. It must never listen anywhere but the address it is
//! given (tests give 127.0.0.1:0), never run a command outside a sandbox directory, and never
//! be used as a real sandbox: processes run with the emulator's own privileges.

mod control;
mod envd;
pub mod faults;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use faults::{BodyShape, Decision, EndpointStats, FaultAction, FaultController, FaultRule};
use state::{Registry, Sandbox};

/// Where and how to run the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    /// Sandbox directories live under here.
    pub data_dir: PathBuf,
    /// When set, control-plane calls must send `X-API-Key` with this value.
    pub api_key: Option<String>,
}

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("emulator could not bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("emulator could not create its data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Emulator;

/// A running emulator; dropping it stops the server (prefer `shutdown().await`).
pub struct EmulatorHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// State shared by every handler.
pub(crate) struct Shared {
    pub(crate) api_key: Option<String>,
    pub(crate) registry: Registry,
    pub(crate) faults: FaultController,
}

/// The envd target of a request, found by the front door and handed to envd handlers.
#[derive(Debug, Clone)]
pub(crate) struct EnvdCtx {
    pub(crate) sandbox: Sandbox,
}

/// Tells a process stream to cut the connection after this many frames.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamCut(pub(crate) u32);

impl Emulator {
    pub async fn start(cfg: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        let root = cfg.data_dir.join("sandboxes");
        let local = crate::provider::local::LocalProvider::new(&root, Default::default()).map_err(
            |source| EmulatorError::DataDir {
                path: root.clone(),
                source,
            },
        )?;
        let shared = Arc::new(Shared {
            api_key: cfg.api_key,
            registry: Registry::new(local, root),
            faults: FaultController::new(),
        });
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: cfg.listen,
                source,
            })?;

        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(state::reaper(shared.clone(), stopped.clone()));
        let app = router(shared.clone());
        let mut stop_rx = stopped;
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            use axum::serve::ListenerExt as _;
            // Command streams are many small writes; with Nagle each one after the first can
            // wait ~40 ms for the client's delayed ACK.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "emulator server ended with an error");
            }
        });
        Ok(EmulatorHandle {
            addr,
            shared,
            stop,
            server: Some(server),
        })
    }
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: use it as both the API URL and the sandbox URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn faults(&self) -> FaultController {
        self.shared.faults.clone()
    }

    /// Ids of the sandboxes the emulator holds (running or paused).
    pub fn sandbox_ids(&self) -> Vec<String> {
        self.shared.registry.ids()
    }

    /// Stop accepting requests, kill every sandbox's processes, and wait (briefly) for
    /// in-flight requests to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.shared.registry.kill_all_processes();
        if let Some(server) = self.server.take() {
            // Long command streams would otherwise hold graceful shutdown open.
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            server.abort();
            self.shared.registry.kill_all_processes();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        // control plane
        .route("/sandboxes", post(control::create).get(control::list_v1))
        .route(
            "/v2/sandboxes",
            get(control::list_v2).post(control::create_v2),
        )
        .route("/v2/sandboxes/{id}/connect", post(control::connect))
        .route(
            "/sandboxes/{id}",
            get(control::get_one).delete(control::kill),
        )
        .route("/sandboxes/{id}/timeout", post(control::set_timeout))
        .route("/sandboxes/{id}/pause", post(control::pause))
        .route("/sandboxes/{id}/resume", post(control::resume))
        .route("/sandboxes/{id}/connect", post(control::connect))
        // shared by both surfaces; the handler tells them apart
        .route("/health", get(health))
        // envd
        .route("/files", get(envd::download).post(envd::upload))
        .route("/process.Process/Start", post(envd::process_start))
        .route(
            "/filesystem.Filesystem/{method}",
            post(envd::filesystem_rpc),
        )
        // emulator control, exempt from faults and auth
        .route(
            "/_emulator/faults",
            get(get_faults).put(put_faults).delete(delete_faults),
        )
        .route("/_emulator/stats", get(get_stats))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            front_door,
        ))
        .with_state(shared)
}

async fn health(ctx: Option<axum::Extension<EnvdCtx>>) -> Response {
    match ctx {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        // The real API answers 200 text despite its spec saying 204.
        None => (StatusCode::OK, "Health check successful").into_response(),
    }
}

async fn fallback(ctx: Option<axum::Extension<EnvdCtx>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if ctx.is_some() {
        return connect_error(
            StatusCode::NOT_FOUND,
            "unimplemented",
            &format!("{path} is not implemented"),
        );
    }
    api_error(
        StatusCode::NOT_FOUND,
        &format!("{path} is not an endpoint of this emulator"),
    )
}

async fn get_faults(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.faults.rules()).into_response()
}

async fn put_faults(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<Vec<FaultRule>>(&body) {
        Ok(rules) => {
            // A misspelt endpoint would silently never fire; refuse it instead.
            if let Some(bad) = rules
                .iter()
                .filter_map(|r| r.endpoint.as_deref())
                .find(|e| !faults::ENDPOINTS.contains(e))
            {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "fault rule endpoint {bad:?} is not one of {:?}",
                        faults::ENDPOINTS
                    ),
                );
            }
            s.faults.set(rules);
            axum::Json(s.faults.rules()).into_response()
        }
        Err(e) => api_error(
            StatusCode::BAD_REQUEST,
            &format!("fault rules are not valid: {e}"),
        ),
    }
}

async fn delete_faults(State(s): State<Arc<Shared>>) -> Response {
    s.faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_stats(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.faults.stats()).into_response()
}

/// The sandbox an envd request is for: the `E2b-Sandbox-Id` header, or a Host of the form
/// `49983-{id}.{anything}` as the per-sandbox proxy hostnames have.
fn envd_target(headers: &HeaderMap) -> Option<String> {
    if let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        return Some(id.to_string());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let first = host.split('.').next()?;
    let (port, rest) = first.split_once('-')?;
    if port != "49983" || rest.is_empty() || !host.contains('.') {
        return None;
    }
    // Legacy hosts append `-{clientID}`; only the first two parts matter.
    Some(rest.split('-').next().unwrap_or(rest).to_string())
}

fn endpoint_name(method: &axum::http::Method, path: &str, envd: bool) -> &'static str {
    use axum::http::Method;
    if envd {
        return match (method, path) {
            (&Method::GET, "/health") => "envd_health",
            (&Method::GET, "/files") => "files_read",
            (&Method::POST, "/files") => "files_write",
            (&Method::POST, "/process.Process/Start") => "process_start",
            (_, p) if p.starts_with("/process.Process/") => "process_rpc",
            (_, p) if p.starts_with("/filesystem.Filesystem/") => "filesystem_rpc",
            _ => "other",
        };
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (&Method::POST, ["sandboxes"] | ["v2", "sandboxes"]) => "create",
        (&Method::GET, ["sandboxes"]) => "list",
        (&Method::GET, ["v2", "sandboxes"]) => "list_v2",
        (&Method::GET, ["sandboxes", _]) => "get",
        (&Method::DELETE, ["sandboxes", _]) => "kill",
        (&Method::POST, ["sandboxes", _, "timeout"]) => "set_timeout",
        (&Method::POST, ["sandboxes", _, "pause"]) => "pause",
        (&Method::POST, ["sandboxes", _, "resume"]) => "resume",
        (&Method::POST, ["sandboxes", _, "connect"] | ["v2", "sandboxes", _, "connect"]) => {
            "connect"
        }
        (&Method::GET, ["health"]) => "api_health",
        _ => "other",
    }
}

/// Every request passes here: faults first (they model the network and edge, which act before
/// any auth), then auth, then the handler.
async fn front_door(State(s): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_emulator/") {
        return next.run(req).await;
    }
    let target = envd_target(req.headers());
    let endpoint = endpoint_name(req.method(), &path, target.is_some());
    let decision = s.faults.decide(endpoint);
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    match decision.action {
        None => {}
        Some(FaultAction::Latency { .. }) => {}
        Some(FaultAction::Status {
            status,
            body,
            message,
        }) => {
            return fault_response(status, body, message, target.as_deref());
        }
        Some(FaultAction::RateLimit { retry_after_secs }) => {
            let mut resp = api_error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
        Some(FaultAction::Drop) => return dropped_connection(),
        Some(FaultAction::DropMidStream { after_frames }) => {
            if endpoint != "process_start" {
                return dropped_connection();
            }
            req.extensions_mut().insert(StreamCut(after_frames));
        }
    }

    match target {
        Some(id) => {
            let Some(sandbox) = s.registry.running(&id) else {
                return sandbox_not_found(&id);
            };
            if let Err(e) = envd_auth(&sandbox, req.headers(), &path) {
                return e.into_response();
            }
            req.extensions_mut().insert(EnvdCtx { sandbox });
        }
        None => {
            if let Err(e) = api_auth(s.api_key.as_deref(), req.headers()) {
                return e.into_response();
            }
        }
    }
    next.run(req).await
}

fn api_auth(expected: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let Some(got) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            String::from("authorization header is missing"),
        ));
    };
    if !got.starts_with("e2b_") {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            String::from("authorization header is malformed"),
        ));
    }
    if got != expected {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            String::from(
                "Invalid API key, please visit https://e2b.dev/docs/api-key for more information.\nCannot get the team for the given API key",
            ),
        ));
    }
    Ok(())
}

fn envd_auth(sandbox: &Sandbox, headers: &HeaderMap, path: &str) -> Result<(), ApiError> {
    let Some(token) = &sandbox.access_token else {
        return Ok(());
    };
    if path == "/health" {
        return Ok(());
    }
    let got = headers.get("x-access-token").and_then(|v| v.to_str().ok());
    let message = match got {
        Some(t) if t == token => return Ok(()),
        Some(_) if path == "/files" => "access token present in header but does not match",
        None if path == "/files" => "missing signature query parameter",
        _ => {
            "unauthorized access, please provide a valid access token or method signing if supported"
        }
    };
    Err(ApiError(StatusCode::UNAUTHORIZED, message.to_string()))
}

/// An error answer built before a handler has a response to return; small, unlike `Response`.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: &str) -> Self {
        ApiError(status, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        api_error(self.0, &self.1)
    }
}

/// The control-plane / envd HTTP error body: `{"code": <status>, "message": ...}`.
pub(crate) fn api_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "code": status.as_u16(), "message": message });
    (status, axum::Json(body)).into_response()
}

/// A unary Connect error: the code is a string, unlike the REST body.
pub(crate) fn connect_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "code": code, "message": message });
    (status, axum::Json(body)).into_response()
}

/// What the sandbox proxy answers for an unknown, killed or expired sandbox.
pub(crate) fn sandbox_not_found(id: &str) -> Response {
    let body = serde_json::json!({
        "sandboxId": id,
        "message": "The sandbox was not found",
        "code": 502,
    });
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

fn fault_response(
    status: u16,
    shape: BodyShape,
    message: Option<String>,
    envd: Option<&str>,
) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = code.canonical_reason().unwrap_or("Error");
    match shape {
        BodyShape::Json => {
            let (default_message, error_code) = match status {
                500 => (
                    "Failed to place sandbox: sandbox creation failed on 1 node(s), please retry; if the problem persists, contact us",
                    Some("sandbox_create_failed"),
                ),
                503 => (
                    "Failed to place sandbox: not enough capacity for the requested resources right now, please retry shortly",
                    Some("sandbox_capacity_unavailable"),
                ),
                504 => (
                    "Failed to place sandbox: placement timed out, please retry",
                    Some("sandbox_placement_timeout"),
                ),
                _ => (reason, None),
            };
            let mut body = serde_json::json!({
                "code": status,
                "message": message.unwrap_or_else(|| default_message.to_string()),
            });
            if let (Some(ec), None) = (error_code, envd) {
                body["error_code"] = serde_json::Value::from(ec);
            }
            (code, axum::Json(body)).into_response()
        }
        BodyShape::Html => {
            let text = message.unwrap_or_else(|| format!("{status} {reason}"));
            let html = format!(
                "<html>\r\n<head><title>{text}</title></head>\r\n<body>\r\n<center><h1>{text}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            );
            (code, [(header::CONTENT_TYPE, "text/html")], html).into_response()
        }
        BodyShape::Text => {
            let text = message.unwrap_or_else(|| "upstream request timeout".to_string());
            (code, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
        }
    }
}

/// A response whose body fails before its first byte: hyper then closes the connection
/// without having written the status line, which the client sees as a connection dropped
/// with no response.
fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::other(
            "emulator fault: dropped connection",
        ))
    });
    Response::new(Body::from_stream(failing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envd_requests_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("49983-iabc.e2b.app"));
        assert_eq!(envd_target(&h).as_deref(), Some("iabc"));
        h.insert(
            header::HOST,
            HeaderValue::from_static("49983-iabc-6532622b.e2b.dev"),
        );
        assert_eq!(envd_target(&h).as_deref(), Some("iabc"));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:4000"));
        assert_eq!(envd_target(&h), None);
        h.insert("e2b-sandbox-id", HeaderValue::from_static("ixyz"));
        assert_eq!(envd_target(&h).as_deref(), Some("ixyz"));
    }

    #[test]
    fn endpoints_are_named() {
        use axum::http::Method;
        assert_eq!(endpoint_name(&Method::POST, "/sandboxes", false), "create");
        assert_eq!(
            endpoint_name(&Method::DELETE, "/sandboxes/iabc", false),
            "kill"
        );
        assert_eq!(endpoint_name(&Method::GET, "/health", true), "envd_health");
        assert_eq!(endpoint_name(&Method::GET, "/health", false), "api_health");
        assert_eq!(
            endpoint_name(&Method::POST, "/process.Process/Start", true),
            "process_start"
        );
    }
}
