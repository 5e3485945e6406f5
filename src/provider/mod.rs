//! Sandbox providers: the `Provider` trait every backend implements, and the backends.
//!
//! A provider only knows how to do one call against one sandbox backend; it never retries,
//! never waits for a breaker or a limiter, and never touches the store. Those decisions belong
//! to the worker that calls it (see `pool::worker`). Every failure is a classified
//! `ProviderError`.

pub mod cgroups;
pub mod e2b;
pub mod error;
pub mod faults;
pub mod isolation;
pub mod local;
pub mod noop;
mod paths;
pub mod template;

use std::collections::BTreeMap;
use std::time::Duration;

pub use error::{ErrorCategory, ProviderError};

/// Network access of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Local: a fresh network namespace with only a loopback interface (up when `ip` is
    /// installed). E2B: `allow_internet_access: false`.
    #[default]
    None,
    /// Local: the host's network namespace (and its `/etc/resolv.conf`). E2B: the internet.
    Host,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Host => "host",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Network::None),
            "host" => Some(Network::Host),
            _ => None,
        }
    }
}

/// What a new sandbox should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    pub template: String,
    /// Lifetime after which the provider may kill the sandbox.
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
    /// Tags kept by the provider; the worker tags every sandbox with its job id and instance so
    /// that a retried create can find a sandbox an earlier attempt made.
    pub metadata: BTreeMap<String, String>,
    pub network: Network,
}

/// One command to run inside a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub cmd: String,
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
    /// Cap on each of stdout and stderr; the rest is discarded and the output marked truncated.
    pub max_output: usize,
}

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub truncated: bool,
}

/// A sandbox as the provider lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    pub id: String,
    pub metadata: BTreeMap<String, String>,
    pub started_at_ms: u64,
}

/// One sandbox backend. Implementations must be cheap to share (`Arc<dyn Provider>`).
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// A short stable name, used in metrics and logs (`local`, `e2b`).
    fn name(&self) -> &'static str;

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError>;

    async fn write_file(
        &self,
        sandbox: &str,
        path: &str,
        content: &[u8],
    ) -> Result<(), ProviderError>;

    async fn run(&self, sandbox: &str, spec: &RunSpec) -> Result<RunOutput, ProviderError>;

    async fn read_file(
        &self,
        sandbox: &str,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>, ProviderError>;

    /// Kill a sandbox and everything in it. Killing a sandbox that is already gone succeeds.
    async fn kill(&self, sandbox: &str) -> Result<(), ProviderError>;

    /// Every live sandbox this provider knows of.
    async fn list(&self) -> Result<Vec<SandboxInfo>, ProviderError>;

    /// Whether repeating a `create` with the same `sandwarden_job` and `sandwarden_attempt`
    /// metadata returns the sandbox an earlier, failed-looking try made (no duplicate), so that
    /// a retried create need not look for one first.
    fn idempotent_create(&self) -> bool {
        false
    }

    /// Whether this provider can pause sandboxes (see `pause`).
    fn can_pause(&self) -> bool {
        false
    }

    /// Pause a sandbox: nothing in it runs until `resume`, and its files are kept. Pausing a
    /// paused sandbox succeeds. Providers that cannot pause keep the default, which refuses.
    async fn pause(&self, sandbox: &str) -> Result<(), ProviderError> {
        Err(ProviderError::permanent(format!(
            "provider {} cannot pause sandbox {sandbox}",
            self.name()
        )))
    }

    /// Resume a paused sandbox (resuming a running one succeeds) and give it `timeout` more
    /// to live.
    async fn resume(&self, sandbox: &str, _timeout: Duration) -> Result<(), ProviderError> {
        Err(ProviderError::permanent(format!(
            "provider {} cannot resume sandbox {sandbox}",
            self.name()
        )))
    }

    /// Whether a freshly created sandbox is ready to take work. Providers whose sandboxes are
    /// ready as soon as `create` returns keep the default.
    async fn health(&self, _sandbox: &str) -> Result<(), ProviderError> {
        Ok(())
    }
}
