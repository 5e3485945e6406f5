//! The `e2b` provider: sandboxes on E2B (or anything speaking its API, such as the emulator),
//! reached over the control-plane REST API and each sandbox's envd daemon.
//!
//! This module owns configuration, the shared HTTP client, the per-sandbox envd access tokens
//! and the mapping of every transport or HTTP failure to a classified `ProviderError`. It never
//! retries, never sleeps on `Retry-After` (it only reports it), and never logs secrets such as
//! the API key or access tokens.

pub mod connect;
mod control;
mod envd;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::{Provider, ProviderError, RunOutput, RunSpec, SandboxInfo, SandboxSpec};

pub use control::SandboxDetail;
#[doc(hidden)] // for the fuzz targets in `fuzz/`
pub use envd::ProcessStream;

/// The envd port inside every sandbox; also the value of the `E2b-Sandbox-Port` routing header.
pub const ENVD_PORT: u16 = 49983;
/// Metadata key naming the sandwarden instance that created a sandbox.
pub const INSTANCE_METADATA_KEY: &str = "sandwarden_instance";

/// How to reach E2B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bConfig {
    /// Control-plane base URL.
    pub api_url: String,
    /// When set, every envd request goes to this base URL with the routing headers, instead of
    /// `https://49983-{id}.{domain}` (used for the emulator and for E2B's shared sandbox host).
    pub sandbox_url: Option<String>,
    pub api_key: String,
    pub domain: String,
    /// Bound on one control-plane or envd request; a command's own timeout is added for runs.
    pub request_timeout: Duration,
    /// This sandwarden instance; stored in every sandbox's metadata and used to filter `list`.
    pub instance: String,
}

impl Default for E2bConfig {
    fn default() -> Self {
        E2bConfig {
            api_url: "https://api.e2b.app".to_string(),
            sandbox_url: None,
            api_key: String::new(),
            domain: "e2b.app".to_string(),
            request_timeout: Duration::from_secs(60),
            instance: String::new(),
        }
    }
}

/// What envd calls need to know about a sandbox, learned from create/connect/get.
#[derive(Debug, Clone, Default)]
struct Access {
    token: Option<String>,
    domain: Option<String>,
}

pub struct E2bProvider {
    cfg: E2bConfig,
    http: reqwest::Client,
    access: Mutex<HashMap<String, Access>>,
}

impl E2bProvider {
    pub fn new(cfg: E2bConfig) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            // Bounded separately from the request so a dead host fails fast as transient.
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
            // Small request writes must never wait for a delayed ACK (Nagle).
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ProviderError::permanent(format!("build e2b http client: {e}")))?;
        Ok(E2bProvider {
            cfg,
            http,
            access: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &E2bConfig {
        &self.cfg
    }

    fn remember(&self, id: &str, token: Option<String>, domain: Option<String>) {
        let mut map = self.access.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(id.to_string(), Access { token, domain });
    }

    fn forget(&self, id: &str) {
        let mut map = self.access.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }

    /// Drop what we know of a sandbox once a call proved it gone, so the map doesn't grow
    /// with sandboxes that expired instead of being killed through us.
    fn forget_if_gone<T>(&self, id: &str, r: Result<T, ProviderError>) -> Result<T, ProviderError> {
        if let Err(e) = &r
            && e.sandbox_gone()
        {
            self.forget(id);
        }
        r
    }

    fn known_access(&self, id: &str) -> Option<Access> {
        let map = self.access.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).cloned()
    }

    /// The envd access for `sandbox`, fetched from the control plane when this process did not
    /// create it (e.g. after a restart), since envd refuses calls without the token.
    async fn access_for(&self, sandbox: &str) -> Result<Access, ProviderError> {
        if let Some(a) = self.known_access(sandbox) {
            return Ok(a);
        }
        let detail = self.get(sandbox).await?;
        let access = Access {
            token: detail.envd_access_token,
            domain: detail.domain,
        };
        self.remember(sandbox, access.token.clone(), access.domain.clone());
        Ok(access)
    }

    /// Base URL of envd for a sandbox.
    fn envd_base(&self, sandbox: &str, access: &Access) -> String {
        match &self.cfg.sandbox_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let domain = access.domain.as_deref().unwrap_or(&self.cfg.domain);
                format!("https://{ENVD_PORT}-{sandbox}.{domain}")
            }
        }
    }

    /// An envd request with routing and auth headers.
    fn envd_request(
        &self,
        method: reqwest::Method,
        sandbox: &str,
        access: &Access,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.envd_base(sandbox, access));
        let mut rb = self
            .http
            .request(method, url)
            .header("E2b-Sandbox-Id", sandbox)
            .header("E2b-Sandbox-Port", ENVD_PORT.to_string())
            .timeout(self.cfg.request_timeout);
        if let Some(token) = &access.token {
            rb = rb.header("X-Access-Token", token);
        }
        rb
    }

    fn api_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.cfg.api_url.trim_end_matches('/'));
        self.http
            .request(method, url)
            .header("X-API-Key", &self.cfg.api_key)
            .timeout(self.cfg.request_timeout)
    }
}

/// Map a transport-level failure (no HTTP status) to a category.
pub(crate) fn transport_error(what: &str, e: reqwest::Error) -> ProviderError {
    // reqwest's Display hides the cause ("error sending request"); the source says why.
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_timeout() {
        ProviderError::timeout(format!("{what} timed out: {detail}"))
    } else if e.is_builder() {
        ProviderError::permanent(format!("{what} could not be built: {detail}"))
    } else {
        // Refused, reset, closed early, DNS, TLS, truncated bodies: all worth another try.
        ProviderError::transient(format!("{what} failed: {detail}"))
    }
}

/// The response's `Retry-After`, in either of its forms.
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::retry::parse_retry_after(v, crate::clock::now_ms()))
}

/// Read a failed response into a classified error; `Retry-After` is parsed for 429s.
pub(crate) async fn status_error(what: &str, resp: reqwest::Response) -> ProviderError {
    let status = resp.status().as_u16();
    let retry_after = retry_after(&resp);
    let body = resp.text().await.unwrap_or_default();
    classify_status(what, status, &body, retry_after)
}

/// `from_status` keeps the status and category; the `what` context is folded into the body it
/// summarizes, because `ProviderError` has no other way to carry both.
pub(crate) fn classify_status(
    what: &str,
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
) -> ProviderError {
    let summary = super::error::summarize_body(body);
    let wrapped = serde_json::json!({ "message": format!("{what}: {summary}") }).to_string();
    ProviderError::from_status(status, &wrapped, retry_after)
}

/// Whole seconds for the wire, rounded up so a sub-second timeout never becomes 0 (a 400).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

fn metadata_with_instance(spec: &SandboxSpec, instance: &str) -> BTreeMap<String, String> {
    let mut m = spec.metadata.clone();
    if !instance.is_empty() {
        m.insert(INSTANCE_METADATA_KEY.to_string(), instance.to_string());
    }
    m
}

#[async_trait::async_trait]
impl Provider for E2bProvider {
    async fn health(&self, sandbox: &str) -> Result<(), ProviderError> {
        self.check_health(sandbox).await
    }

    fn name(&self) -> &'static str {
        "e2b"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        let metadata = metadata_with_instance(spec, &self.cfg.instance);
        let created = self.create_sandbox(spec, &metadata).await?;
        Ok(created.sandbox_id)
    }

    async fn write_file(
        &self,
        sandbox: &str,
        path: &str,
        content: &[u8],
    ) -> Result<(), ProviderError> {
        let r = self.upload(sandbox, path, content).await;
        self.forget_if_gone(sandbox, r)
    }

    async fn run(&self, sandbox: &str, spec: &RunSpec) -> Result<RunOutput, ProviderError> {
        let r = self.start_process(sandbox, spec).await;
        self.forget_if_gone(sandbox, r)
    }

    async fn read_file(
        &self,
        sandbox: &str,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        let r = self.download(sandbox, path, max).await;
        self.forget_if_gone(sandbox, r)
    }

    async fn kill(&self, sandbox: &str) -> Result<(), ProviderError> {
        self.kill_sandbox(sandbox).await
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, ProviderError> {
        self.list_running().await
    }

    fn can_pause(&self) -> bool {
        true
    }

    fn idempotent_create(&self) -> bool {
        true
    }

    async fn pause(&self, sandbox: &str) -> Result<(), ProviderError> {
        match self.pause_sandbox(sandbox).await {
            // 409 "already paused" is what pause wanted.
            Err(e) if e.status() == Some(409) && e.message().contains("already paused") => Ok(()),
            r => r,
        }
    }

    async fn resume(&self, sandbox: &str, timeout: Duration) -> Result<(), ProviderError> {
        let r = self.connect(sandbox, timeout).await.map(|_| ());
        self.forget_if_gone(sandbox, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envd_urls_follow_the_sandbox_domain_unless_overridden() {
        let p = E2bProvider::new(E2bConfig::default()).unwrap();
        let none = Access::default();
        assert_eq!(p.envd_base("iabc", &none), "https://49983-iabc.e2b.app");
        let custom = Access {
            token: None,
            domain: Some("eu.example".into()),
        };
        assert_eq!(
            p.envd_base("iabc", &custom),
            "https://49983-iabc.eu.example"
        );
        let cfg = E2bConfig {
            sandbox_url: Some("http://127.0.0.1:9/".into()),
            ..E2bConfig::default()
        };
        let p = E2bProvider::new(cfg).unwrap();
        assert_eq!(p.envd_base("iabc", &custom), "http://127.0.0.1:9");
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(300)), 300);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }
}
