//! E2B control-plane calls: create, get, list, kill, set timeout, pause, connect and resume.
//!
//! This module owns the REST wire types and their serde rules (camelCase, everything optional
//! on the way in, since the server omits absent optionals). It never talks to envd and never
//! retries; a 404 on a per-sandbox call is reported as "sandbox gone", except for kill, where
//! a sandbox that is already gone is success.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{E2bProvider, INSTANCE_METADATA_KEY, ceil_secs, status_error, transport_error};
use crate::provider::{ProviderError, SandboxInfo, SandboxSpec};

/// A cap on list pages, so that a server that always answers with a next token cannot keep
/// `list` looping forever.
const MAX_LIST_PAGES: usize = 1000;

#[derive(Serialize)]
struct NewSandbox<'a> {
    #[serde(rename = "templateID")]
    template_id: &'a str,
    timeout: u64,
    metadata: &'a BTreeMap<String, String>,
    #[serde(rename = "envVars")]
    env_vars: &'a BTreeMap<String, String>,
    secure: bool,
    allow_internet_access: bool,
}

/// The `Sandbox` (create/connect/resume) and `SandboxDetail`/`ListedSandbox` (get/list)
/// responses; one lenient type covers all of them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub alias: Option<String>,
    pub envd_version: String,
    pub envd_access_token: Option<String>,
    pub domain: Option<String>,
    /// RFC 3339; absent on create responses.
    pub started_at: Option<String>,
    pub end_at: Option<String>,
    /// `running` or `paused`; absent on create responses.
    pub state: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct TimeoutBody {
    timeout: u64,
}

impl E2bProvider {
    pub(super) async fn create_sandbox(
        &self,
        spec: &SandboxSpec,
        metadata: &BTreeMap<String, String>,
    ) -> Result<SandboxDetail, ProviderError> {
        let body = NewSandbox {
            template_id: &spec.template,
            // Always sent: the server default is 15 s, far shorter than any job expects.
            timeout: ceil_secs(spec.timeout),
            metadata,
            env_vars: &spec.env,
            secure: true,
            allow_internet_access: spec.network == crate::provider::Network::Host,
        };
        // v2 (what the official SDK uses) with an Idempotency-Key per job attempt: a create
        // repeated after an ambiguous failure returns the sandbox the first one made, if any.
        let mut rb = self
            .api_request(reqwest::Method::POST, "/v2/sandboxes")
            .json(&body);
        if let Some(key) = idempotency_key(metadata) {
            rb = rb.header("Idempotency-Key", key);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| transport_error("create sandbox", e))?;
        if !resp.status().is_success() {
            return Err(status_error("create sandbox", resp).await);
        }
        let created: SandboxDetail = resp
            .json()
            .await
            .map_err(|e| transport_error("read create sandbox response", e))?;
        if created.sandbox_id.is_empty() {
            return Err(ProviderError::transient(
                "create sandbox response has no sandboxID",
            ));
        }
        self.remember(
            &created.sandbox_id,
            created.envd_access_token.clone(),
            created.domain.clone(),
        );
        Ok(created)
    }

    /// `GET /sandboxes/{id}`; a 404 is "sandbox gone".
    pub async fn get(&self, sandbox: &str) -> Result<SandboxDetail, ProviderError> {
        let resp = self
            .api_request(reqwest::Method::GET, &format!("/sandboxes/{sandbox}"))
            .send()
            .await
            .map_err(|e| transport_error("get sandbox", e))?;
        if !resp.status().is_success() {
            return Err(gone_on_404(status_error("get sandbox", resp).await));
        }
        resp.json()
            .await
            .map_err(|e| transport_error("read get sandbox response", e))
    }

    /// `POST /sandboxes/{id}/timeout`: the sandbox now lives `timeout` from now (the server may
    /// clamp it to the plan's maximum).
    pub async fn set_timeout(&self, sandbox: &str, timeout: Duration) -> Result<(), ProviderError> {
        let resp = self
            .api_request(
                reqwest::Method::POST,
                &format!("/sandboxes/{sandbox}/timeout"),
            )
            .json(&TimeoutBody {
                timeout: ceil_secs(timeout),
            })
            .send()
            .await
            .map_err(|e| transport_error("set sandbox timeout", e))?;
        if !resp.status().is_success() {
            return Err(gone_on_404(status_error("set sandbox timeout", resp).await));
        }
        Ok(())
    }

    /// `POST /sandboxes/{id}/pause`.
    pub async fn pause_sandbox(&self, sandbox: &str) -> Result<(), ProviderError> {
        let resp = self
            .api_request(
                reqwest::Method::POST,
                &format!("/sandboxes/{sandbox}/pause"),
            )
            .send()
            .await
            .map_err(|e| transport_error("pause sandbox", e))?;
        if !resp.status().is_success() {
            return Err(gone_on_404(status_error("pause sandbox", resp).await));
        }
        Ok(())
    }

    /// `POST /sandboxes/{id}/connect`: resumes a paused sandbox or extends a running one, and
    /// refreshes the envd access token.
    pub async fn connect(
        &self,
        sandbox: &str,
        timeout: Duration,
    ) -> Result<SandboxDetail, ProviderError> {
        self.resume_like("connect", sandbox, timeout).await
    }

    /// The deprecated `POST /sandboxes/{id}/resume`, for servers without `/connect`.
    pub async fn resume(
        &self,
        sandbox: &str,
        timeout: Duration,
    ) -> Result<SandboxDetail, ProviderError> {
        self.resume_like("resume", sandbox, timeout).await
    }

    async fn resume_like(
        &self,
        verb: &str,
        sandbox: &str,
        timeout: Duration,
    ) -> Result<SandboxDetail, ProviderError> {
        let what = format!("{verb} sandbox");
        let resp = self
            .api_request(
                reqwest::Method::POST,
                &format!("/sandboxes/{sandbox}/{verb}"),
            )
            .json(&TimeoutBody {
                timeout: ceil_secs(timeout),
            })
            .send()
            .await
            .map_err(|e| transport_error(&what, e))?;
        if !resp.status().is_success() {
            return Err(gone_on_404(status_error(&what, resp).await));
        }
        let mut detail: SandboxDetail = resp.json().await.map_err(|e| transport_error(&what, e))?;
        if detail.sandbox_id.is_empty() {
            detail.sandbox_id = sandbox.to_string();
        }
        self.remember(
            sandbox,
            detail.envd_access_token.clone(),
            detail.domain.clone(),
        );
        Ok(detail)
    }

    pub(super) async fn kill_sandbox(&self, sandbox: &str) -> Result<(), ProviderError> {
        let resp = self
            .api_request(reqwest::Method::DELETE, &format!("/sandboxes/{sandbox}"))
            .send()
            .await
            .map_err(|e| transport_error("kill sandbox", e))?;
        let status = resp.status().as_u16();
        // 404: already gone, which is what kill wanted.
        if resp.status().is_success() || status == 404 {
            self.forget(sandbox);
            return Ok(());
        }
        Err(status_error("kill sandbox", resp).await)
    }

    /// Running sandboxes of this instance (all of them when `instance` is empty), across pages.
    pub(super) async fn list_running(&self) -> Result<Vec<SandboxInfo>, ProviderError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut query: Vec<(&str, String)> = vec![
                ("state", "running".to_string()),
                ("limit", "100".to_string()),
            ];
            if !self.cfg.instance.is_empty() {
                // The server takes one metadata parameter shaped like a query string.
                query.push((
                    "metadata",
                    format!(
                        "{INSTANCE_METADATA_KEY}={}",
                        form_encode(&self.cfg.instance)
                    ),
                ));
            }
            if let Some(token) = &next {
                query.push(("nextToken", token.clone()));
            }
            let resp = self
                .api_request(reqwest::Method::GET, "/v2/sandboxes")
                .query(&query)
                .send()
                .await
                .map_err(|e| transport_error("list sandboxes", e))?;
            if !resp.status().is_success() {
                return Err(status_error("list sandboxes", resp).await);
            }
            next = resp
                .headers()
                .get("x-next-token")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string);
            let page: Vec<SandboxDetail> = resp
                .json()
                .await
                .map_err(|e| transport_error("read sandbox list", e))?;
            out.extend(page.into_iter().map(|s| SandboxInfo {
                started_at_ms: s.started_at.as_deref().map(rfc3339_ms).unwrap_or(0),
                id: s.sandbox_id,
                metadata: s.metadata,
            }));
            if next.is_none() {
                return Ok(out);
            }
        }
        Err(ProviderError::transient(format!(
            "list sandboxes did not finish within {MAX_LIST_PAGES} pages"
        )))
    }
}

fn gone_on_404(e: ProviderError) -> ProviderError {
    if e.status() == Some(404) {
        e.with_sandbox_gone()
    } else {
        e
    }
}

/// The key that makes repeats of one job attempt's create return the same sandbox.
fn idempotency_key(metadata: &BTreeMap<String, String>) -> Option<String> {
    let job = metadata.get("sandwarden_job")?;
    let attempt = metadata.get("sandwarden_attempt")?;
    let instance = metadata
        .get(INSTANCE_METADATA_KEY)
        .map(String::as_str)
        .unwrap_or("");
    Some(format!("sandwarden:{instance}:{job}:{attempt}"))
}

/// Unix milliseconds of an RFC 3339 time; 0 when it does not parse.
fn rfc3339_ms(s: &str) -> u64 {
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Percent-encode a metadata key or value the way the SDK does before joining them.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_nanoseconds() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.500000000Z"), 1500);
        assert_eq!(rfc3339_ms("garbage"), 0);
    }

    #[test]
    fn create_response_with_only_required_fields_parses() {
        let d: SandboxDetail = serde_json::from_str(
            r#"{"templateID":"t","sandboxID":"iabc","clientID":"6532622b","envdVersion":"0.2.4"}"#,
        )
        .unwrap();
        assert_eq!(d.sandbox_id, "iabc");
        assert!(d.envd_access_token.is_none());
    }
}
