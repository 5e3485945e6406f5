//! Helpers: an in-process service on 127.0.0.1:0, an in-memory provider for paused-clock
//! tests, and a gate provider that holds calls until released.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandwarden::provider::{Provider, ProviderError, RunOutput, RunSpec, SandboxInfo, SandboxSpec};
use sandwarden::{Runtime, RuntimeHandle, Settings};
use serde_json::{Value, json};

pub struct Service {
    pub url: String,
    pub rt: RuntimeHandle,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Service {
    pub async fn start(tweak: impl FnOnce(&mut Settings)) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::with_data_dir(dir.path());
        tweak(&mut settings);
        let rt = Runtime::start(settings).await.unwrap();
        Self::serve(rt, dir).await
    }

    pub async fn with_provider(
        provider: Arc<dyn Provider>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::with_data_dir(dir.path());
        tweak(&mut settings);
        let rt = Runtime::start_with_provider(settings, provider)
            .await
            .unwrap();
        Self::serve(rt, dir).await
    }

    async fn serve(rt: RuntimeHandle, dir: tempfile::TempDir) -> Service {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sandwarden::api::serve(
            rt.clone(),
            listener,
            std::future::pending(),
        ));
        Service {
            url,
            rt,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Submit and return the job id.
    pub async fn submit(&self, job: Value) -> String {
        let (status, body) = self.post("/v1/jobs", &job).await;
        assert_eq!(status, 201, "submit failed: {body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Long-poll until the job ends (or 60 s pass).
    pub async fn wait(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/jobs/{id}?wait=60s")).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// A one-step job spec (`run cmd`) for tests that submit through the library.
pub fn run_spec(cmd: &str) -> sandwarden::job::JobSpec {
    let body = format!(r#"{{"user_id":"u","steps":[{{"run":{{"cmd":"{cmd}"}}}}]}}"#);
    sandwarden::job::spec::parse(body.as_bytes(), &Default::default()).unwrap()
}

/// The limiter's view of one operation.
pub async fn op_usage(rt: &RuntimeHandle, op: &str) -> sandwarden::ratelimit::OpView {
    let view = rt.limits().await.unwrap();
    view.operations
        .into_iter()
        .find(|o| o.operation == op)
        .unwrap()
}

pub fn run_job(user: &str, cmd: &str) -> Value {
    json!({"user_id": user, "steps": [{"run": {"cmd": cmd}}]})
}

/// Tags and files of one in-memory sandbox.
type MemSandbox = (BTreeMap<String, String>, BTreeMap<String, Vec<u8>>);

/// An in-memory provider: instant, no processes, counts calls. `run` echoes the command.
#[derive(Default)]
pub struct MemProvider {
    pub calls: AtomicU64,
    pub creates: Mutex<Vec<String>>,
    /// When each create reached the provider (runtime clock, unix ms).
    pub create_times: Mutex<Vec<u64>>,
    sandboxes: Mutex<BTreeMap<String, MemSandbox>>,
    next: AtomicUsize,
    /// Paused sandboxes: every call but kill, pause and resume fails on them.
    pub paused: Mutex<std::collections::BTreeSet<String>>,
    pub pauses: AtomicU64,
    pub resumes: AtomicU64,
}

impl MemProvider {
    pub fn live(&self) -> usize {
        self.sandboxes.lock().unwrap().len()
    }

    /// Make a sandbox with a chosen id, as if created earlier.
    pub fn create_with_id(&self, id: &str) {
        self.sandboxes
            .lock()
            .unwrap()
            .insert(id.to_string(), Default::default());
    }

    /// The sandbox exists and is not paused.
    fn usable(&self, sandbox: &str) -> Result<(), ProviderError> {
        if !self.sandboxes.lock().unwrap().contains_key(sandbox) {
            return Err(ProviderError::permanent("no sandbox"));
        }
        if self.paused.lock().unwrap().contains(sandbox) {
            return Err(ProviderError::permanent(format!("{sandbox} is paused")));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Provider for MemProvider {
    fn name(&self) -> &'static str {
        "mem"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = format!("mem-{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.creates
            .lock()
            .unwrap()
            .push(spec.metadata["sandwarden_job"].clone());
        self.create_times
            .lock()
            .unwrap()
            .push(sandwarden::clock::now_ms());
        self.sandboxes
            .lock()
            .unwrap()
            .insert(id.clone(), (spec.metadata.clone(), BTreeMap::new()));
        Ok(id)
    }

    async fn write_file(
        &self,
        sandbox: &str,
        path: &str,
        content: &[u8],
    ) -> Result<(), ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.usable(sandbox)?;
        let mut s = self.sandboxes.lock().unwrap();
        let sb = s
            .get_mut(sandbox)
            .ok_or_else(|| ProviderError::permanent("no sandbox"))?;
        sb.1.insert(path.to_string(), content.to_vec());
        Ok(())
    }

    async fn run(&self, sandbox: &str, spec: &RunSpec) -> Result<RunOutput, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.usable(sandbox)?;
        if spec.cmd == "panic" {
            panic!("the provider panicked on purpose");
        }
        Ok(RunOutput {
            stdout: spec.cmd.clone(),
            ..Default::default()
        })
    }

    async fn read_file(
        &self,
        sandbox: &str,
        path: &str,
        _max: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.usable(sandbox)?;
        let s = self.sandboxes.lock().unwrap();
        let sb = s
            .get(sandbox)
            .ok_or_else(|| ProviderError::permanent("no sandbox"))?;
        sb.1.get(path)
            .cloned()
            .ok_or_else(|| ProviderError::permanent("no such file"))
    }

    async fn kill(&self, sandbox: &str) -> Result<(), ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sandboxes.lock().unwrap().remove(sandbox);
        self.paused.lock().unwrap().remove(sandbox);
        Ok(())
    }

    fn can_pause(&self) -> bool {
        true
    }

    async fn pause(&self, sandbox: &str) -> Result<(), ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.pauses.fetch_add(1, Ordering::SeqCst);
        if !self.sandboxes.lock().unwrap().contains_key(sandbox) {
            return Err(ProviderError::permanent("no sandbox").with_sandbox_gone());
        }
        self.paused.lock().unwrap().insert(sandbox.to_string());
        Ok(())
    }

    async fn resume(&self, sandbox: &str, _timeout: Duration) -> Result<(), ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.resumes.fetch_add(1, Ordering::SeqCst);
        if !self.sandboxes.lock().unwrap().contains_key(sandbox) {
            return Err(ProviderError::permanent("no sandbox").with_sandbox_gone());
        }
        self.paused.lock().unwrap().remove(sandbox);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .sandboxes
            .lock()
            .unwrap()
            .iter()
            .map(|(id, (m, _))| SandboxInfo {
                id: id.clone(),
                metadata: m.clone(),
                started_at_ms: 0,
            })
            .collect())
    }
}

/// Wraps a provider and holds every `create` until `open()` is called.
pub struct GateProvider {
    pub inner: Arc<MemProvider>,
    gate: tokio::sync::Semaphore,
    panics_left: AtomicUsize,
}

impl GateProvider {
    pub fn new(inner: Arc<MemProvider>, closed: bool) -> Self {
        let gate = tokio::sync::Semaphore::new(if closed {
            0
        } else {
            tokio::sync::Semaphore::MAX_PERMITS
        });
        GateProvider {
            inner,
            gate,
            panics_left: AtomicUsize::new(0),
        }
    }

    pub fn open(&self) {
        self.gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    /// The next `n` run calls panic.
    pub fn panic_next(&self, n: usize) {
        self.panics_left.store(n, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Provider for GateProvider {
    fn name(&self) -> &'static str {
        "gate"
    }
    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        let _p = self.gate.acquire().await.unwrap();
        self.inner.create(spec).await
    }
    async fn write_file(&self, s: &str, p: &str, c: &[u8]) -> Result<(), ProviderError> {
        self.inner.write_file(s, p, c).await
    }
    async fn run(&self, s: &str, spec: &RunSpec) -> Result<RunOutput, ProviderError> {
        let left = self.panics_left.load(Ordering::SeqCst);
        if left > 0
            && self
                .panics_left
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            panic!("worker panic injected by the test");
        }
        self.inner.run(s, spec).await
    }
    async fn read_file(&self, s: &str, p: &str, m: usize) -> Result<Vec<u8>, ProviderError> {
        self.inner.read_file(s, p, m).await
    }
    async fn kill(&self, s: &str) -> Result<(), ProviderError> {
        self.inner.kill(s).await
    }
    async fn list(&self) -> Result<Vec<SandboxInfo>, ProviderError> {
        self.inner.list().await
    }
}

/// Processes whose command line contains `marker`.
pub fn processes_matching(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) && pid != std::process::id() {
                found.push(pid);
            }
        }
    }
    found
}

/// Make every provider call fail with `status` (fault injection) until the faults change.
pub fn fail_every_call(rt: &RuntimeHandle, status: u16) {
    rt.faults().set(sandwarden::provider::faults::Faults {
        enabled: true,
        error_rate: 1.0,
        status,
        ..Default::default()
    });
}

/// Submit `spec` and wait (30 s at most) until its job ends.
pub async fn run_to_end(
    rt: &RuntimeHandle,
    spec: sandwarden::job::JobSpec,
) -> sandwarden::job::Job {
    let (job, _) = rt.submit(spec).await.unwrap();
    rt.wait(&job.id, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the job is in the store")
}

/// A runtime on an in-memory provider with `paused_settings` (for tests on tokio's paused
/// clock that need nothing of the provider).
pub async fn mem_runtime(dir: &std::path::Path) -> RuntimeHandle {
    Runtime::start_with_provider(paused_settings(dir), Arc::new(MemProvider::default()))
        .await
        .unwrap()
}

/// Settings for tests on tokio's paused clock: fsync inline, so that waiting for the disk
/// cannot let the paused clock jump ahead.
pub fn paused_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::with_data_dir(dir);
    s.inline_flush = true;
    s
}
