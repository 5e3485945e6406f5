//! Emulated envd handlers: `/files` download and upload, `process.Process/Start` (a real
//! process whose output is streamed as Connect envelopes), and a few filesystem RPCs.
//!
//! This module owns the envd wire shapes on the server side. It never reaches outside the
//! sandbox directory: file paths go through `LocalProvider` (which confines them) or through
//! `resolve`, which refuses `..` and absolute paths outside `/home/user`. Every process it
//! starts runs in its own process group, registered with the sandbox so a kill ends it, and is
//! killed when its deadline passes or its client goes away.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::{EnvdCtx, Shared, StreamCut, api_error, connect_error};
use crate::provider::Provider;
use crate::provider::e2b::connect::{Decoder, FLAG_END_STREAM, encode};

const HOME: &str = "/home/user";
const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The largest file the emulator serves or accepts.
const MAX_FILE: usize = 256 << 20;
/// A command without `Connect-Timeout-Ms` still ends eventually.
const MAX_COMMAND: Duration = Duration::from_secs(3600);
/// Frames buffered between a process and a slow client before the reader waits.
const STREAM_BUFFER: usize = 64;

#[derive(Deserialize)]
pub(super) struct FileQuery {
    path: Option<String>,
}

/// The absolute in-sandbox path for a request path (relative paths are under `/home/user`).
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{HOME}/{path}")
    }
}

/// Map an in-sandbox path to the host, refusing anything outside `/home/user`.
fn resolve(dir: &Path, path: &str) -> Option<PathBuf> {
    let abs = absolute(path);
    let rest = abs.strip_prefix(HOME)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let mut out = dir.to_path_buf();
    for c in Path::new(rest.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    // A symlink inside the sandbox must not lead out of it.
    if let (Ok(real), Ok(root)) = (out.canonicalize(), dir.canonicalize())
        && !real.starts_with(&root)
    {
        return None;
    }
    Some(out)
}

pub(super) async fn download(
    State(s): State<Arc<Shared>>,
    Extension(ctx): Extension<EnvdCtx>,
    Query(q): Query<FileQuery>,
) -> Response {
    let Some(path) = q.path.filter(|p| !p.is_empty()) else {
        return api_error(StatusCode::BAD_REQUEST, "path query parameter is required");
    };
    let abs = absolute(&path);
    if resolve(&ctx.sandbox.dir, &path).is_some_and(|p| p.is_dir()) {
        return api_error(
            StatusCode::BAD_REQUEST,
            &format!("path '{abs}' is a directory"),
        );
    }
    match s
        .registry
        .local()
        .read_file(&ctx.sandbox.local_id, &path, MAX_FILE)
        .await
    {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) if e.message().contains("no such file") => api_error(
            StatusCode::NOT_FOUND,
            &format!("path '{abs}' does not exist"),
        ),
        Err(e) => api_error(StatusCode::BAD_REQUEST, e.message()),
    }
}

pub(super) async fn upload(
    State(s): State<Arc<Shared>>,
    Extension(ctx): Extension<EnvdCtx>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> Response {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut files: Vec<(String, Bytes)> = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = match Multipart::from_request(req, &()).await {
            Ok(m) => m,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("error parsing multipart form: {e}"),
                );
            }
        };
        loop {
            match multipart.next_field().await {
                Ok(Some(field)) => {
                    if field.name() != Some("file") {
                        continue;
                    }
                    let path = q
                        .path
                        .clone()
                        .filter(|p| !p.is_empty())
                        .or_else(|| field.file_name().map(str::to_string));
                    let Some(path) = path else {
                        return api_error(
                            StatusCode::BAD_REQUEST,
                            "file part has no path and no filename",
                        );
                    };
                    if files.iter().any(|(p, _)| *p == path) {
                        return api_error(
                            StatusCode::BAD_REQUEST,
                            &format!("cannot upload multiple files to the same path '{path}'"),
                        );
                    }
                    match field.bytes().await {
                        Ok(b) => files.push((path, b)),
                        Err(e) => {
                            return api_error(
                                StatusCode::BAD_REQUEST,
                                &format!("error reading file part: {e}"),
                            );
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return api_error(
                        StatusCode::BAD_REQUEST,
                        &format!("error parsing multipart form: {e}"),
                    );
                }
            }
        }
    } else if content_type.starts_with("application/octet-stream") {
        let Some(path) = q.path.clone().filter(|p| !p.is_empty()) else {
            return api_error(
                StatusCode::BAD_REQUEST,
                "path query parameter is required for raw body upload",
            );
        };
        match axum::body::to_bytes(req.into_body(), MAX_FILE).await {
            Ok(b) => files.push((path, b)),
            Err(e) => {
                return api_error(StatusCode::BAD_REQUEST, &format!("error reading body: {e}"));
            }
        }
    } else {
        return api_error(
            StatusCode::BAD_REQUEST,
            &format!("unsupported content type '{content_type}'"),
        );
    }
    let mut written = Vec::new();
    for (path, bytes) in files {
        if let Err(e) = s
            .registry
            .local()
            .write_file(&ctx.sandbox.local_id, &path, &bytes)
            .await
        {
            return api_error(StatusCode::BAD_REQUEST, e.message());
        }
        let abs = absolute(&path);
        let name = abs.rsplit('/').next().unwrap_or_default().to_string();
        written.push(json!({ "path": abs, "name": name, "type": "file" }));
    }
    axum::Json(written).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StartRequest {
    /// `stdin` is ignored: stdin is never wired (SendInput is not emulated).
    process: ProcessConfig,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: HashMap<String, String>,
    cwd: Option<String>,
}

/// The stream ends with only an `EndStreamResponse` carrying this error.
fn stream_error(code: &str, message: &str) -> Response {
    let trailer = json!({ "error": { "code": code, "message": message } });
    streaming_response(Body::from(encode(
        FLAG_END_STREAM,
        trailer.to_string().as_bytes(),
    )))
}

fn streaming_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/connect+json")],
        body,
    )
        .into_response()
}

fn event_frame(event: Value) -> Bytes {
    Bytes::from(encode(0, json!({ "event": event }).to_string().as_bytes()))
}

pub(super) async fn process_start(
    State(s): State<Arc<Shared>>,
    Extension(ctx): Extension<EnvdCtx>,
    cut: Option<Extension<StreamCut>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/connect+json") {
        return connect_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unknown",
            &format!("content type {content_type:?} is not application/connect+json"),
        );
    }
    let mut decoder = Decoder::new();
    decoder.push(&body);
    let request: StartRequest = match decoder.next_frame() {
        Ok(Some(frame)) => match serde_json::from_slice(&frame.payload) {
            Ok(r) => r,
            Err(e) => {
                return stream_error(
                    "invalid_argument",
                    &format!("start request is not valid: {e}"),
                );
            }
        },
        Ok(None) => {
            return stream_error("invalid_argument", "start request envelope is incomplete");
        }
        Err(e) => return stream_error("invalid_argument", &e),
    };
    let timeout = headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(MAX_COMMAND)
        .min(MAX_COMMAND);
    let keepalive = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs);

    let cwd = request
        .process
        .cwd
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| HOME.to_string());
    let Some(cwd_host) = resolve(&ctx.sandbox.dir, &cwd).filter(|p| p.is_dir()) else {
        return stream_error(
            "invalid_argument",
            &format!("invalid cwd '{cwd}': not a directory inside the sandbox"),
        );
    };
    let mut cmd = tokio::process::Command::new(&request.process.cmd);
    cmd.args(&request.process.args)
        .current_dir(&cwd_host)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("HOME", &ctx.sandbox.dir)
        .env("USER", "user")
        .env("LANG", "C.UTF-8")
        .envs(&ctx.sandbox.env_vars)
        .envs(&request.process.envs)
        // Stdin is never wired: `stdin: true` would need SendInput, which is not emulated.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return stream_error("invalid_argument", &format!("error starting process: {e}")),
    };
    let pid = child.id().unwrap_or(0);
    s.registry.add_process(&ctx.sandbox.id, pid as i32);

    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let _ = tx.try_send(event_frame(json!({ "start": { "pid": pid } })));
    let stdout = child
        .stdout
        .take()
        .map(|r| tokio::spawn(pump(r, "stdout", tx.clone())));
    let stderr = child
        .stderr
        .take()
        .map(|r| tokio::spawn(pump(r, "stderr", tx.clone())));
    let shared = s.clone();
    let sandbox_id = ctx.sandbox.id.clone();
    tokio::spawn(async move {
        let guard = GroupGuard(pid as i32);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ping = keepalive.map(tokio::time::interval);
        let status = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                _ = &mut deadline => break None,
                _ = tx.closed() => {
                    // The client went away: nobody will read the result.
                    drop(guard);
                    shared.registry.remove_process(&sandbox_id, pid as i32);
                    return;
                }
                _ = async { match ping.as_mut() { Some(p) => { p.tick().await; } None => std::future::pending().await } } => {
                    let _ = tx.send(event_frame(json!({ "keepalive": {} }))).await;
                }
            }
        };
        // Orphans left by the command die with it, as in LocalProvider.
        drop(guard);
        shared.registry.remove_process(&sandbox_id, pid as i32);
        for reader in [stdout, stderr].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        let frames = match status {
            None => vec![Bytes::from(encode(
                FLAG_END_STREAM,
                json!({ "error": { "code": "deadline_exceeded", "message": "context deadline exceeded" } })
                    .to_string()
                    .as_bytes(),
            ))],
            Some(Err(e)) => vec![Bytes::from(encode(
                FLAG_END_STREAM,
                json!({ "error": { "code": "internal", "message": format!("error waiting for process: {e}") } })
                    .to_string()
                    .as_bytes(),
            ))],
            Some(Ok(status)) => vec![event_frame(json!({ "end": end_event(status) })), Bytes::from(encode(FLAG_END_STREAM, b"{}"))],
        };
        for f in frames {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    });

    let frames = tokio_stream_from(rx);
    let body = match cut {
        Some(Extension(StreamCut(after))) => {
            let limited = frames.take(after as usize).map(Ok::<Bytes, std::io::Error>);
            let broken = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other(
                    "emulator fault: stream dropped mid-output",
                ))
            });
            Body::from_stream(limited.chain(broken))
        }
        None => Body::from_stream(frames.map(Ok::<Bytes, std::io::Error>)),
    };
    streaming_response(body)
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `ProcessEvent.end` as envd builds it: default-valued fields are omitted.
fn end_event(status: std::process::ExitStatus) -> Value {
    use std::os::unix::process::ExitStatusExt;
    let mut end = serde_json::Map::new();
    match (status.code(), status.signal()) {
        (Some(code), _) => {
            if code != 0 {
                end.insert("exitCode".into(), json!(code));
                end.insert("error".into(), json!(format!("exit status {code}")));
            }
            end.insert("exited".into(), json!(true));
            end.insert("status".into(), json!(format!("exit status {code}")));
        }
        (None, Some(sig)) => {
            let name = match sig {
                9 => "killed".to_string(),
                15 => "terminated".to_string(),
                2 => "interrupt".to_string(),
                other => format!("signal {other}"),
            };
            end.insert("exitCode".into(), json!(-1));
            end.insert("status".into(), json!(format!("signal: {name}")));
            end.insert("error".into(), json!(format!("signal: {name}")));
        }
        (None, None) => {}
    }
    Value::Object(end)
}

async fn pump(mut r: impl AsyncRead + Unpin, stream: &'static str, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let frame = event_frame(json!({ "data": { stream: B64.encode(&buf[..n]) } }));
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.0 > 0 {
            // ESRCH (group already empty) is the normal case.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PathRequest {
    path: String,
    depth: Option<u32>,
}

fn entry_info(abs: &str, host: &Path) -> Option<Value> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(host).ok()?;
    let kind = if meta.is_dir() {
        "FILE_TYPE_DIRECTORY"
    } else if meta.file_type().is_symlink() {
        "FILE_TYPE_SYMLINK"
    } else {
        "FILE_TYPE_FILE"
    };
    let modified = meta
        .modified()
        .ok()
        .map(|t| humantime::format_rfc3339_nanos(t).to_string())
        .unwrap_or_default();
    Some(json!({
        "name": abs.rsplit('/').next().unwrap_or_default(),
        "type": kind,
        "path": abs,
        "size": meta.len().to_string(),
        "mode": meta.permissions().mode() & 0o777,
        "permissions": format!("{:o}", meta.permissions().mode() & 0o777),
        "owner": "user",
        "group": "user",
        "modifiedTime": modified,
        "metadata": BTreeMap::<String, String>::new(),
    }))
}

/// `Stat`, `ListDir`, `MakeDir` and `Remove` over the sandbox directory (unary Connect JSON).
pub(super) async fn filesystem_rpc(
    Extension(ctx): Extension<EnvdCtx>,
    axum::extract::Path(method): axum::extract::Path<String>,
    body: Bytes,
) -> Response {
    let req: PathRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return connect_error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                &format!("request is not valid: {e}"),
            );
        }
    };
    let abs = absolute(&req.path);
    let Some(host) = resolve(&ctx.sandbox.dir, &req.path) else {
        return connect_error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            &format!("path '{abs}' is outside the sandbox"),
        );
    };
    let not_found = || {
        connect_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("path not found: {abs}"),
        )
    };
    match method.as_str() {
        "Stat" => match entry_info(&abs, &host) {
            Some(e) => axum::Json(json!({ "entry": e })).into_response(),
            None => not_found(),
        },
        "ListDir" => {
            let _depth = req.depth;
            let Ok(read) = std::fs::read_dir(&host) else {
                return if host.exists() {
                    connect_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_argument",
                        &format!("path is not a directory: {abs}"),
                    )
                } else {
                    not_found()
                };
            };
            let mut entries: Vec<Value> = read
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    entry_info(&format!("{}/{name}", abs.trim_end_matches('/')), &e.path())
                })
                .collect();
            entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            axum::Json(json!({ "entries": entries })).into_response()
        }
        "MakeDir" => {
            if host.exists() {
                return connect_error(
                    StatusCode::CONFLICT,
                    "already_exists",
                    &format!("directory already exists: {abs}"),
                );
            }
            match std::fs::create_dir_all(&host) {
                Ok(()) => axum::Json(json!({ "entry": entry_info(&abs, &host) })).into_response(),
                Err(e) => connect_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &format!("error creating directory: {e}"),
                ),
            }
        }
        "Remove" => {
            let meta = match std::fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(_) => return not_found(),
            };
            let removed = if meta.is_dir() {
                std::fs::remove_dir_all(&host)
            } else {
                std::fs::remove_file(&host)
            };
            match removed {
                Ok(()) => axum::Json(json!({})).into_response(),
                Err(e) => connect_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &format!("error removing file: {e}"),
                ),
            }
        }
        other => connect_error(
            StatusCode::NOT_FOUND,
            "unimplemented",
            &format!("filesystem.Filesystem/{other} is not implemented"),
        ),
    }
}
