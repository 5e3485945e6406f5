//! Calls to a sandbox's envd daemon: file upload and download, the health probe, and running
//! a command through the server-streaming `process.Process/Start` Connect RPC.
//!
//! This module owns the envd wire types and the decoding of the process event stream. It never
//! talks to the control plane except through `access_for` (to learn a token it lacks), never
//! retries, and never keeps more than `max_output` bytes of a command's stdout or stderr.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use futures::StreamExt;
use serde::Deserialize;

use super::connect::{Decoder, FLAG_END_STREAM, encode};
use super::{Access, E2bProvider, classify_status, transport_error};
use crate::provider::{ProviderError, RunOutput, RunSpec};

/// Linux user for file and process calls; E2B templates run jobs as `user`.
const USER: &str = "user";
const HOME: &str = "/home/user";

/// Standard and URL-safe alphabets, padding optional: proto3 JSON allows either form.
const B64_STD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const B64_URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartResponse {
    event: Option<ProcessEvent>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProcessEvent {
    start: Option<serde_json::Value>,
    data: Option<DataEvent>,
    end: Option<EndEvent>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DataEvent {
    stdout: Option<String>,
    stderr: Option<String>,
    pty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct EndEvent {
    /// Absent when 0 (proto3 JSON omits defaults).
    exit_code: i32,
    exited: bool,
    status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EndStream {
    error: Option<ConnectError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConnectError {
    code: String,
    message: String,
}

/// Accumulates one of stdout/stderr up to the cap.
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capped {
    fn push(&mut self, chunk: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// The text, still within `cap` bytes: each invalid UTF-8 byte becomes a three-byte
    /// U+FFFD, so the lossy text can be longer than the bytes kept; it is cut on a character.
    fn into_text(self, cap: usize) -> (String, bool) {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        if text.len() <= cap {
            return (text, self.truncated);
        }
        let mut end = cap;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        (text, true)
    }
}

impl E2bProvider {
    /// `GET /health` on envd; 204 (or any 2xx) means the daemon answers.
    pub async fn check_health(&self, sandbox: &str) -> Result<(), ProviderError> {
        let access = self.access_for(sandbox).await?;
        let resp = self
            .envd_request(reqwest::Method::GET, sandbox, &access, "/health")
            .send()
            .await
            .map_err(|e| transport_error("envd health check", e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(envd_status_error("envd health check", resp).await)
    }

    pub(super) async fn upload(
        &self,
        sandbox: &str,
        path: &str,
        content: &[u8],
    ) -> Result<(), ProviderError> {
        let access = self.access_for(sandbox).await?;
        // Multipart works on every envd version; octet-stream needs envd >= 0.5.7.
        let boundary = format!("sandwarden-{}", hex::encode(rand::random::<[u8; 12]>()));
        let body = multipart_body(&boundary, path, content);
        let resp = self
            .envd_request(reqwest::Method::POST, sandbox, &access, "/files")
            .query(&[("path", path), ("username", USER)])
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error("upload file", e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(envd_status_error(&format!("upload {path:?}"), resp).await)
    }

    pub(super) async fn download(
        &self,
        sandbox: &str,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        let access = self.access_for(sandbox).await?;
        let resp = self
            .envd_request(reqwest::Method::GET, sandbox, &access, "/files")
            .query(&[("path", path), ("username", USER)])
            .send()
            .await
            .map_err(|e| transport_error("download file", e))?;
        if !resp.status().is_success() {
            return Err(envd_status_error(&format!("download {path:?}"), resp).await);
        }
        let too_big = || {
            ProviderError::permanent(format!(
                "read {path:?}: file is larger than the {max} byte limit"
            ))
        };
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_big());
        }
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport_error("download file body", e))?;
            if out.len() + chunk.len() > max {
                return Err(too_big());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    pub(super) async fn start_process(
        &self,
        sandbox: &str,
        spec: &RunSpec,
    ) -> Result<RunOutput, ProviderError> {
        let access = self.access_for(sandbox).await?;
        // envd kills the process at Connect-Timeout-Ms; our own deadline adds the request
        // timeout on top so a server that never answers still ends as a timeout here.
        let overall = spec.timeout + self.cfg.request_timeout;
        match tokio::time::timeout(overall, self.run_stream(sandbox, &access, spec, overall)).await
        {
            Ok(result) => result,
            Err(_) => Err(ProviderError::timeout(format!(
                "command timed out after {}",
                humantime::format_duration(spec.timeout)
            ))),
        }
    }

    async fn run_stream(
        &self,
        sandbox: &str,
        access: &Access,
        spec: &RunSpec,
        overall: Duration,
    ) -> Result<RunOutput, ProviderError> {
        let request = serde_json::json!({
            "process": {
                "cmd": "/bin/bash",
                "args": ["-l", "-c", spec.cmd],
                "envs": spec.env,
                "cwd": HOME,
            },
            // Absent means true on the server, and a command reading stdin would then hang.
            "stdin": false,
        });
        let envelope = encode(0, request.to_string().as_bytes());
        let resp = self
            .envd_request(
                reqwest::Method::POST,
                sandbox,
                access,
                "/process.Process/Start",
            )
            .timeout(overall)
            .header(reqwest::header::CONTENT_TYPE, "application/connect+json")
            .header("Connect-Protocol-Version", "1")
            .header(
                "Connect-Timeout-Ms",
                spec.timeout.as_millis().max(1).to_string(),
            )
            .header(reqwest::header::AUTHORIZATION, basic_user())
            .body(envelope)
            .send()
            .await
            .map_err(|e| transport_error("start command", e))?;
        if !resp.status().is_success() {
            return Err(envd_status_error("start command", resp).await);
        }

        let mut events = ProcessStream::new(spec.max_output, spec.timeout);
        let mut stream = resp.bytes_stream();
        loop {
            let chunk = match stream.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    if events.has_ended() {
                        break; // the result is complete; losing only the trailer is harmless
                    }
                    return Err(transport_error("command output stream", e));
                }
                None => break,
            };
            if let Some(result) = events.push(&chunk) {
                return result;
            }
        }
        events.closed()
    }
}

/// The decoding of a `process.Process/Start` response body into a command's output.
///
/// Plain data with no I/O, so that every byte sequence a server could send can be tested
/// without one: push chunks as they arrive until `push` gives the result, or call `closed` when
/// the body ends first. Output past `max_output` bytes per stream is dropped and marked.
#[doc(hidden)] // public only for the fuzz targets in `fuzz/`
pub struct ProcessStream {
    decoder: Decoder,
    stdout: Capped,
    stderr: Capped,
    end: Option<EndEvent>,
    started: bool,
    max_output: usize,
    step_timeout: Duration,
}

impl ProcessStream {
    pub fn new(max_output: usize, step_timeout: Duration) -> Self {
        ProcessStream {
            decoder: Decoder::new(),
            stdout: Capped::default(),
            stderr: Capped::default(),
            end: None,
            started: false,
            max_output,
            step_timeout,
        }
    }

    /// Feed the next chunk of the body; `Some` once the command's result (or a stream error)
    /// is known, after which the rest of the body is of no interest.
    pub fn push(&mut self, chunk: &[u8]) -> Option<Result<RunOutput, ProviderError>> {
        self.decoder.push(chunk);
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(e) => {
                    return Some(Err(ProviderError::transient(format!(
                        "command output stream: {e}"
                    ))));
                }
            };
            if frame.flags & FLAG_END_STREAM != 0 {
                let trailer: EndStream = serde_json::from_slice(&frame.payload).unwrap_or_default();
                if let Some(err) = trailer.error {
                    return Some(Err(connect_error(err, self.step_timeout)));
                }
                return Some(self.finish());
            }
            if let Err(e) = self.event(&frame.payload) {
                return Some(Err(e));
            }
        }
    }

    fn event(&mut self, payload: &[u8]) -> Result<(), ProviderError> {
        let msg: StartResponse = serde_json::from_slice(payload).map_err(|e| {
            ProviderError::transient(format!("command output stream has a bad event: {e}"))
        })?;
        let Some(event) = msg.event else {
            return Ok(());
        };
        if event.start.is_some() {
            self.started = true;
        }
        if let Some(data) = event.data {
            // A pty merges both streams; we never ask for one, but count it as stdout.
            for text in [data.stdout, data.pty].into_iter().flatten() {
                self.stdout.push(&decode_b64(&text)?, self.max_output);
            }
            if let Some(text) = data.stderr {
                self.stderr.push(&decode_b64(&text)?, self.max_output);
            }
        }
        if let Some(e) = event.end {
            self.end = Some(e);
        }
        Ok(())
    }

    /// Whether the command's end event has arrived (only the trailer may be missing).
    pub fn has_ended(&self) -> bool {
        self.end.is_some()
    }

    /// The body ended without an end-of-stream frame.
    pub fn closed(mut self) -> Result<RunOutput, ProviderError> {
        if self.end.is_some() {
            return self.finish();
        }
        Err(ProviderError::transient(format!(
            "command output stream ended before the command finished ({})",
            if self.started {
                "after it started"
            } else {
                "before it started"
            }
        )))
    }

    fn finish(&mut self) -> Result<RunOutput, ProviderError> {
        finish(
            self.end.take(),
            std::mem::take(&mut self.stdout),
            std::mem::take(&mut self.stderr),
            self.max_output,
        )
    }
}

fn finish(
    end: Option<EndEvent>,
    stdout: Capped,
    stderr: Capped,
    max_output: usize,
) -> Result<RunOutput, ProviderError> {
    let Some(end) = end else {
        return Err(ProviderError::transient(
            "command output stream closed cleanly without an end event",
        ));
    };
    let exit_code = if end.exited || end.exit_code != 0 {
        end.exit_code
    } else {
        signal_exit_code(&end.status).unwrap_or(end.exit_code)
    };
    let (stdout, out_cut) = stdout.into_text(max_output);
    let (stderr, err_cut) = stderr.into_text(max_output);
    Ok(RunOutput {
        stdout,
        stderr,
        exit_code,
        truncated: out_cut || err_cut,
    })
}

/// `128 + signal` for Go's `signal: killed` style status, as a shell would report it.
fn signal_exit_code(status: &str) -> Option<i32> {
    let name = status.strip_prefix("signal: ")?;
    let num = match name {
        "hangup" => 1,
        "interrupt" => 2,
        "quit" => 3,
        "aborted" => 6,
        "killed" => 9,
        "segmentation fault" => 11,
        "broken pipe" => 13,
        "terminated" => 15,
        "CPU time limit exceeded" => 24,
        "file size limit exceeded" => 25,
        _ => return None,
    };
    Some(128 + num)
}

fn connect_error(err: ConnectError, step_timeout: Duration) -> ProviderError {
    let msg = format!(
        "command failed with connect error {}: {}",
        err.code, err.message
    );
    match err.code.as_str() {
        "deadline_exceeded" => ProviderError::timeout(format!(
            "command timed out after {} ({})",
            humantime::format_duration(step_timeout),
            err.message
        )),
        "resource_exhausted" => ProviderError::rate_limited(msg, None),
        "unavailable" | "aborted" | "internal" | "unknown" | "data_loss" | "canceled" => {
            let lower = err.message.to_ascii_lowercase();
            let e = ProviderError::transient(msg);
            if lower.contains("sandbox") && lower.contains("not found") {
                e.with_sandbox_gone()
            } else {
                e
            }
        }
        _ => ProviderError::permanent(msg),
    }
}

fn decode_b64(text: &str) -> Result<Vec<u8>, ProviderError> {
    B64_STD
        .decode(text)
        .or_else(|_| B64_URL.decode(text))
        .map_err(|e| ProviderError::transient(format!("command output is not valid base64: {e}")))
}

fn basic_user() -> String {
    format!(
        "Basic {}",
        general_purpose::STANDARD.encode(format!("{USER}:"))
    )
}

/// An envd error: a 502 whose body says the sandbox was not found means it is gone for good.
async fn envd_status_error(what: &str, resp: reqwest::Response) -> ProviderError {
    let status = resp.status().as_u16();
    let retry_after = super::retry_after(&resp);
    let body = resp.text().await.unwrap_or_default();
    let e = classify_status(what, status, &body, retry_after);
    let lower = body.to_ascii_lowercase();
    if status == 502 && lower.contains("sandbox") && lower.contains("not found") {
        e.with_sandbox_gone()
    } else {
        e
    }
}

fn multipart_body(boundary: &str, path: &str, content: &[u8]) -> Vec<u8> {
    // The filename carries the path too, as the SDKs do; quotes would end the parameter.
    let filename = path.replace(['"', '\r', '\n'], "_");
    let mut body = Vec::with_capacity(content.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_event_defaults_and_signals() {
        let out = finish(
            Some(EndEvent::default()),
            Capped::default(),
            Capped::default(),
            16,
        )
        .unwrap();
        assert_eq!(out.exit_code, 0);
        let killed = EndEvent {
            status: "signal: killed".into(),
            ..Default::default()
        };
        let out = finish(Some(killed), Capped::default(), Capped::default(), 16).unwrap();
        assert_eq!(out.exit_code, 137);
    }

    #[test]
    fn capped_output_marks_truncation() {
        let mut c = Capped::default();
        c.push(b"abc", 4);
        c.push(b"def", 4);
        assert_eq!(c.bytes, b"abcd");
        assert!(c.truncated);
    }

    #[test]
    fn base64_accepts_both_alphabets() {
        assert_eq!(decode_b64("aGkK").unwrap(), b"hi\n");
        assert_eq!(decode_b64("_-8").unwrap(), vec![0xff, 0xef]);
    }

    #[test]
    fn connect_errors_classify() {
        let e = |code: &str, m: &str| {
            connect_error(
                ConnectError {
                    code: code.into(),
                    message: m.into(),
                },
                Duration::from_secs(1),
            )
        };
        assert_eq!(e("deadline_exceeded", "x").category().as_str(), "timeout");
        assert_eq!(e("unavailable", "x").category().as_str(), "transient");
        assert!(e("unavailable", "The sandbox was not found").sandbox_gone());
        assert_eq!(e("invalid_argument", "x").category().as_str(), "permanent");
    }
}
