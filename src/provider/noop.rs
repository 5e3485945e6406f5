//! The `noop` provider: every call succeeds at once and does nothing. For measuring the queue
//! and the protection path without sandboxes (benchmarks), never for running jobs.

use super::{Provider, ProviderError, RunOutput, RunSpec, SandboxInfo, SandboxSpec};

pub struct NoopProvider;

#[async_trait::async_trait]
impl Provider for NoopProvider {
    fn name(&self) -> &'static str {
        "noop"
    }
    async fn create(&self, _: &SandboxSpec) -> Result<String, ProviderError> {
        Ok("noop".into())
    }
    async fn write_file(&self, _: &str, _: &str, _: &[u8]) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn run(&self, _: &str, _: &RunSpec) -> Result<RunOutput, ProviderError> {
        Ok(RunOutput::default())
    }
    async fn read_file(&self, _: &str, _: &str, _: usize) -> Result<Vec<u8>, ProviderError> {
        Ok(Vec::new())
    }
    async fn kill(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn list(&self) -> Result<Vec<SandboxInfo>, ProviderError> {
        Ok(Vec::new())
    }
}
