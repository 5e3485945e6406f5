//! Fault injection: a provider wrapper that makes calls fail, slow down or black out on
//! purpose, so that tests, the chaos benchmark and operators in staging can exercise the
//! resilience features against any provider.
//!
//! The faults are shared (`FaultControl`) so the admin API can change them at runtime. Off by
//! default; while enabled, every injected failure is a `ProviderError` classified exactly as
//! the same HTTP status from a real provider would be.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Provider, ProviderError, RunOutput, RunSpec, SandboxInfo, SandboxSpec};
use crate::clock::now_ms;

/// The faults in force.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    pub enabled: bool,
    pub error_rate: f64,
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
    /// Every call fails until this time (unix ms).
    pub outage_until_ms: Option<u64>,
}

/// Shared, changeable faults plus counters of what reached the real provider.
#[derive(Default)]
pub struct FaultControl {
    faults: std::sync::RwLock<Faults>,
    injected: AtomicU64,
    passed: AtomicU64,
    /// Job runs still to stall (see `stall_next_jobs`).
    stalls: AtomicU64,
}

impl FaultControl {
    pub fn new(faults: Faults) -> Arc<Self> {
        Arc::new(FaultControl {
            faults: std::sync::RwLock::new(faults),
            ..Default::default()
        })
    }

    pub fn get(&self) -> Faults {
        self.faults.read().expect("fault lock").clone()
    }

    pub fn set(&self, faults: Faults) {
        if faults.enabled {
            tracing::warn!(
                ?faults,
                "fault injection is ON: provider calls will fail on purpose"
            );
        } else {
            tracing::info!("fault injection is off");
        }
        *self.faults.write().expect("fault lock") = faults;
    }

    /// Make the next `n` job runs stall in their worker, outside any provider call and its
    /// timeout, as a worker stuck on a bug would: chaos for the pool's hung-worker watchdog.
    pub fn stall_next_jobs(&self, n: u64) {
        if n > 0 {
            tracing::warn!(
                n,
                "fault injection: the next job runs will stall their worker"
            );
        }
        self.stalls.store(n, Ordering::SeqCst);
    }

    /// Job runs still to stall.
    pub fn stalls_left(&self) -> u64 {
        self.stalls.load(Ordering::SeqCst)
    }

    /// Whether this job run should stall (used by the worker).
    pub fn take_stall(&self) -> bool {
        self.stalls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Calls that failed on purpose.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Calls that reached the wrapped provider.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    async fn before_call(&self) -> Result<(), ProviderError> {
        let f = self.get();
        if !f.enabled {
            self.passed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if !f.latency.is_zero() {
            tokio::time::sleep(f.latency).await;
        }
        let in_outage = f.outage_until_ms.is_some_and(|t| now_ms() < t);
        if in_outage || (f.error_rate > 0.0 && rand::random::<f64>() < f.error_rate) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            let body = if in_outage {
                "injected outage"
            } else {
                "injected fault"
            };
            return Err(ProviderError::from_status(f.status, body, f.retry_after));
        }
        self.passed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub struct FaultyProvider {
    inner: Arc<dyn Provider>,
    control: Arc<FaultControl>,
}

impl FaultyProvider {
    pub fn new(inner: Arc<dyn Provider>, control: Arc<FaultControl>) -> Self {
        FaultyProvider { inner, control }
    }
}

#[async_trait::async_trait]
impl Provider for FaultyProvider {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        self.control.before_call().await?;
        self.inner.create(spec).await
    }

    async fn write_file(
        &self,
        sandbox: &str,
        path: &str,
        content: &[u8],
    ) -> Result<(), ProviderError> {
        self.control.before_call().await?;
        self.inner.write_file(sandbox, path, content).await
    }

    async fn run(&self, sandbox: &str, spec: &RunSpec) -> Result<RunOutput, ProviderError> {
        self.control.before_call().await?;
        self.inner.run(sandbox, spec).await
    }

    async fn read_file(
        &self,
        sandbox: &str,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        self.control.before_call().await?;
        self.inner.read_file(sandbox, path, max).await
    }

    async fn kill(&self, sandbox: &str) -> Result<(), ProviderError> {
        self.control.before_call().await?;
        self.inner.kill(sandbox).await
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, ProviderError> {
        self.control.before_call().await?;
        self.inner.list().await
    }

    async fn health(&self, sandbox: &str) -> Result<(), ProviderError> {
        self.inner.health(sandbox).await
    }

    fn can_pause(&self) -> bool {
        self.inner.can_pause()
    }

    fn idempotent_create(&self) -> bool {
        self.inner.idempotent_create()
    }

    async fn pause(&self, sandbox: &str) -> Result<(), ProviderError> {
        self.control.before_call().await?;
        self.inner.pause(sandbox).await
    }

    async fn resume(&self, sandbox: &str, timeout: Duration) -> Result<(), ProviderError> {
        self.control.before_call().await?;
        self.inner.resume(sandbox, timeout).await
    }
}
