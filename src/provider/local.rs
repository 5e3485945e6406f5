//! The `local` provider: each sandbox is a directory under the data directory, and each
//! command a real process tree started through `/bin/sh -c` in it.
//!
//! Every command runs in its own process group, with a scrubbed environment (only what the job
//! passes, plus a safe `PATH` and `HOME`), under resource limits applied by `prlimit(1)` before
//! the shell starts, and the whole group is killed when the command ends or its timeout fires,
//! so that no process outlives its step. Paths are confined by `paths`. This module never
//! retries and never decides whether a failure is worth retrying beyond classifying it.
//!
//! A sandbox is made from a template (`template`), which may seed its directory and name
//! read-only tool directories; its network and tools are kept in its `.meta` file, so that every
//! later step (and session job) gets the same. Where cgroups work (`cgroups`), each step runs in
//! a cgroup of its own whose memory and process bounds the kernel enforces and reports; the
//! directory's total disk use is checked after every write and run step, and during a run.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::cgroups::{CgroupLimits, Cgroups, Exceeded};
use super::isolation::{Confinement, Isolation, SETUP_FAILED, SETUP_FAILED_CODE};
use super::template::Templates;
use super::{
    Network, Provider, ProviderError, RunOutput, RunSpec, SandboxInfo, SandboxSpec, paths,
};

/// Resource bounds for every process of a local sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLimits {
    pub cpu_time: Duration,
    pub memory_bytes: u64,
    pub open_files: u64,
    pub processes: u64,
    pub file_size_bytes: u64,
    /// Total disk use of the sandbox directory (allocated blocks).
    pub disk_bytes: u64,
    /// CPU share of a step in thousandths of a CPU (cgroups only); 0 = unbounded.
    pub cpu_millis: u64,
}

impl Default for LocalLimits {
    fn default() -> Self {
        LocalLimits {
            cpu_time: Duration::from_secs(300),
            memory_bytes: 4 << 30,
            open_files: 1024,
            processes: 512,
            file_size_bytes: 1 << 30,
            disk_bytes: 4 << 30,
            cpu_millis: 0,
        }
    }
}

const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub struct LocalProvider {
    root: PathBuf,
    limits: LocalLimits,
    isolation: Isolation,
    /// `None`: any template name makes an empty sandbox (the emulator, which takes E2B's).
    templates: Option<Templates>,
    cgroups: Option<Cgroups>,
    /// Process groups of the commands running now, by sandbox, so that a pause can stop them.
    running: std::sync::Mutex<HashMap<String, Vec<Pid>>>,
}

impl LocalProvider {
    /// Sandboxes live under `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>, limits: LocalLimits) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(LocalProvider {
            root,
            limits,
            isolation: Isolation::none(),
            templates: None,
            cgroups: None,
            running: Default::default(),
        })
    }

    /// Make sandboxes from `templates`; unknown template names are refused.
    pub fn with_templates(mut self, templates: Templates) -> Self {
        self.templates = Some(templates);
        self
    }

    /// Run every step in a cgroup of its own under `cgroups` (see `cgroups::Cgroups::detect`).
    pub fn with_cgroups(mut self, cgroups: Option<Cgroups>) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// Run every command under `isolation` (see `isolation::Isolation::namespaces`).
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    fn dir(&self, sandbox: &str) -> Result<PathBuf, ProviderError> {
        let valid = sandbox.len() <= 64
            && !sandbox.is_empty()
            && sandbox
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(ProviderError::permanent(format!(
                "sandbox id {sandbox:?} is not valid"
            )));
        }
        let dir = self.root.join(sandbox);
        if !dir.is_dir() {
            return Err(
                ProviderError::permanent(format!("sandbox {sandbox} was not found"))
                    .with_sandbox_gone(),
            );
        }
        Ok(dir)
    }

    fn meta_path(&self, sandbox: &str) -> PathBuf {
        self.root.join(format!("{sandbox}.meta"))
    }

    /// Present while the sandbox is paused.
    fn paused_path(&self, sandbox: &str) -> PathBuf {
        self.root.join(format!("{sandbox}.paused"))
    }

    /// The sandbox's directory, refusing a paused sandbox: nothing runs in it until resumed.
    fn usable_dir(&self, sandbox: &str) -> Result<PathBuf, ProviderError> {
        let dir = self.dir(sandbox)?;
        if self.paused_path(sandbox).exists() {
            return Err(ProviderError::permanent(format!(
                "sandbox {sandbox} is paused; resume it first"
            )));
        }
        Ok(dir)
    }

    /// Send `signal` to the process group of every command running in `sandbox`.
    fn signal_running(&self, sandbox: &str, signal: Signal) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for pgid in running.get(sandbox).into_iter().flatten() {
            // ESRCH: the command ended meanwhile.
            let _ = killpg(*pgid, signal);
        }
    }
}

/// Forgets a running command's process group when its step ends.
struct Running<'a> {
    provider: &'a LocalProvider,
    sandbox: String,
    pgid: Pid,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut running = self
            .provider
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(groups) = running.get_mut(&self.sandbox) {
            groups.retain(|g| *g != self.pgid);
            if groups.is_empty() {
                running.remove(&self.sandbox);
            }
        }
    }
}

fn new_sandbox_id() -> String {
    let bytes: [u8; 8] = rand::random();
    format!("sbx-{}", hex::encode(bytes))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::transient(format!("{what}: {e}"))
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        if !self.isolation.is_isolated() {
            tracing::warn!(
                "creating an unisolated local sandbox: its commands can touch this host"
            );
        }
        let template = match &self.templates {
            Some(t) => t.resolve(&spec.template)?,
            None => Default::default(),
        };
        let id = new_sandbox_id();
        let dir = self.root.join(&id);
        let meta = Meta {
            metadata: spec.metadata.clone(),
            started_at_ms: crate::clock::now_ms(),
            network: spec.network,
            tools: template.tools,
        };
        let meta_path = self.meta_path(&id);
        let isolation = self.isolation.clone();
        let made = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir(&dir)?;
            if let Some(seed) = &template.seed {
                let root = dir.canonicalize()?;
                super::template::seed(seed, &root, &mut |p| isolation.adopt(&root, p))?;
            }
            std::fs::write(meta_path, meta.encode())
        })
        .await
        .map_err(|e| internal("create sandbox", e))?;
        if let Err(e) = made {
            let _ = self.kill(&id).await;
            return Err(internal("create sandbox", e));
        }
        Ok(id)
    }

    async fn write_file(
        &self,
        sandbox: &str,
        path: &str,
        content: &[u8],
    ) -> Result<(), ProviderError> {
        let root = self.usable_dir(sandbox)?;
        let path = path.to_string();
        let content = content.to_vec();
        let isolation = self.isolation.clone();
        let disk_limit = self.limits.disk_bytes;
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let used = disk_use(&root);
            if used.saturating_add(content.len() as u64) > disk_limit {
                return Err(disk_exceeded(used + content.len() as u64, disk_limit));
            }
            use std::os::unix::fs::OpenOptionsExt;
            let full = paths::for_write(&root, &path)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&full)
                .map_err(|e| ProviderError::permanent(format!("write {path:?}: {e}")))?;
            f.write_all(&content)
                .map_err(|e| ProviderError::permanent(format!("write {path:?}: {e}")))?;
            // Isolated commands run as an unprivileged uid: give it the file and new directories.
            let root = root.canonicalize().map_err(|e| internal("write file", e))?;
            isolation
                .adopt(&root, &full)
                .map_err(|e| internal("write file", e))
        })
        .await
        .map_err(|e| internal("write file", e))?
    }

    async fn run(&self, sandbox: &str, spec: &RunSpec) -> Result<RunOutput, ProviderError> {
        let dir = self.usable_dir(sandbox)?;
        let meta_path = self.meta_path(sandbox);
        let meta = tokio::task::spawn_blocking(move || std::fs::read_to_string(meta_path))
            .await
            .map_err(|e| internal("read sandbox meta", e))?
            .map(|t| Meta::decode(&t))
            .unwrap_or_default();
        let confine = Confinement {
            network: meta.network,
            tools: meta.tools,
            cgroup_procs: Vec::new(),
        };
        let mut guard = None;
        run_in(
            &dir,
            &self.limits,
            &self.isolation,
            &confine,
            self.cgroups.as_ref(),
            spec,
            |pgid| {
                let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                running.entry(sandbox.to_string()).or_default().push(pgid);
                guard = Some(Running {
                    provider: self,
                    sandbox: sandbox.to_string(),
                    pgid,
                });
            },
        )
        .await
    }

    async fn read_file(
        &self,
        sandbox: &str,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        let root = self.usable_dir(sandbox)?;
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let full = paths::for_read(&root, &path)?;
            let f = std::fs::File::open(&full)
                .map_err(|e| ProviderError::permanent(format!("read {path:?}: {e}")))?;
            let mut buf = Vec::new();
            f.take(max as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| ProviderError::permanent(format!("read {path:?}: {e}")))?;
            if buf.len() > max {
                return Err(ProviderError::permanent(format!(
                    "read {path:?}: file is larger than the {max} byte limit"
                )));
            }
            Ok(buf)
        })
        .await
        .map_err(|e| internal("read file", e))?
    }

    async fn kill(&self, sandbox: &str) -> Result<(), ProviderError> {
        let dir = match self.dir(sandbox) {
            Ok(d) => d,
            Err(e) if e.sandbox_gone() => return Ok(()),
            Err(e) => return Err(e),
        };
        let meta = self.meta_path(sandbox);
        let paused = self.paused_path(sandbox);
        // End whatever still runs in it, stopped (paused) processes included.
        self.signal_running(sandbox, Signal::SIGKILL);
        tokio::task::spawn_blocking(move || {
            std::fs::remove_dir_all(&dir)?;
            for file in [meta, paused] {
                match std::fs::remove_file(file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| internal("kill sandbox", e))?
        .map_err(|e| internal("kill sandbox", e))
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, ProviderError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&root).map_err(|e| internal("list sandboxes", e))? {
                let entry = entry.map_err(|e| internal("list sandboxes", e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(id) = name.strip_suffix(".meta") else {
                    continue;
                };
                if !root.join(id).is_dir() {
                    continue;
                }
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let meta = Meta::decode(&text);
                out.push(SandboxInfo {
                    id: id.to_string(),
                    metadata: meta.metadata,
                    started_at_ms: meta.started_at_ms,
                });
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
        .map_err(|e| internal("list sandboxes", e))?
    }

    fn can_pause(&self) -> bool {
        true
    }

    /// Marks the sandbox paused (files, reads, writes and runs wait for `resume`) and stops
    /// (SIGSTOP) the process group of any command still running in it. Between steps a local
    /// sandbox has no processes: every command's group is killed when its step ends.
    async fn pause(&self, sandbox: &str) -> Result<(), ProviderError> {
        self.dir(sandbox)?;
        std::fs::write(self.paused_path(sandbox), b"").map_err(|e| internal("pause sandbox", e))?;
        self.signal_running(sandbox, Signal::SIGSTOP);
        Ok(())
    }

    async fn resume(&self, sandbox: &str, _timeout: Duration) -> Result<(), ProviderError> {
        self.dir(sandbox)?;
        self.signal_running(sandbox, Signal::SIGCONT);
        match std::fs::remove_file(self.paused_path(sandbox)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(internal("resume sandbox", e))
            }
            _ => Ok(()),
        }
    }
}

/// What a sandbox's `.meta` file keeps: its tags and start, and what its steps run with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Meta {
    metadata: BTreeMap<String, String>,
    started_at_ms: u64,
    network: Network,
    tools: Vec<PathBuf>,
}

impl Meta {
    fn encode(&self) -> String {
        serde_json::json!({
            "started_at_ms": self.started_at_ms,
            "metadata": self.metadata,
            "network": self.network.as_str(),
            "tools": self.tools,
        })
        .to_string()
    }

    /// Lenient: a file from before a field existed gets its default (no network, no tools).
    fn decode(text: &str) -> Meta {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        Meta {
            metadata: v
                .get("metadata")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default(),
            started_at_ms: v.get("started_at_ms").and_then(|s| s.as_u64()).unwrap_or(0),
            network: v
                .get("network")
                .and_then(|n| n.as_str())
                .and_then(Network::parse)
                .unwrap_or_default(),
            tools: v
                .get("tools")
                .and_then(|t| serde_json::from_value(t.clone()).ok())
                .unwrap_or_default(),
        }
    }
}

/// Bytes allocated to everything under `dir` (no link followed): what it costs the disk, so a
/// sparse file counts for what it holds.
pub fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            total = total.saturating_add(meta.blocks() * 512);
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

fn disk_exceeded(used: u64, limit: u64) -> ProviderError {
    ProviderError::resource_limit(format!(
        "sandbox directory would use {used} bytes, over its disk limit of {limit} bytes"
    ))
}

/// Run one command in `dir` and kill its whole process group when it ends or times out. With
/// `cgroups`, the command runs in a cgroup of its own, made for it and removed after it.
/// `started` is told the command's process group once it runs.
pub async fn run_in(
    dir: &Path,
    limits: &LocalLimits,
    isolation: &Isolation,
    confine: &Confinement,
    cgroups: Option<&Cgroups>,
    spec: &RunSpec,
    started: impl FnOnce(Pid),
) -> Result<RunOutput, ProviderError> {
    let home = if isolation.is_isolated() {
        isolation
            .adopt(dir, dir)
            .map_err(|e| internal("prepare sandbox directory", e))?;
        PathBuf::from(paths::HOME)
    } else {
        dir.to_path_buf()
    };
    let mut env = BTreeMap::from([
        ("PATH".to_string(), SAFE_PATH.to_string()),
        ("HOME".to_string(), home.to_string_lossy().into_owned()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ]);
    env.extend(spec.env.clone());
    let cgroup = match cgroups {
        None => None,
        Some(c) => {
            let c = c.clone();
            let bounds = CgroupLimits {
                memory_bytes: limits.memory_bytes,
                processes: limits.processes,
                cpu_millis: limits.cpu_millis,
            };
            let made = tokio::task::spawn_blocking(move || c.create(&bounds))
                .await
                .map_err(|e| internal("create the step's cgroup", e))?
                .map_err(|e| internal("create the step's cgroup", e))?;
            Some(made)
        }
    };
    let mut confine = confine.clone();
    let mut rlimits = limits.clone();
    if let Some(cg) = &cgroup {
        confine.cgroup_procs = cg.procs_files();
        // The cgroup bounds memory and processes and counts the hits; an rlimit that tripped
        // first would hide them (and RLIMIT_AS also refuses address space never used).
        rlimits.memory_bytes = u64::MAX;
        rlimits.processes = limits.processes.saturating_add(64);
    }
    let mut cmd: Command = isolation.command(dir, &spec.cmd, &env, &rlimits, &confine);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ProviderError::transient(format!("start command: {e}")))?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    if let Some(pgid) = pgid {
        started(pgid);
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    for fd in [stdout.as_fd(), stderr.as_fd()] {
        if let Err(e) = isolation.adopt_fd(fd) {
            tracing::debug!("cannot hand the output pipe to the sandbox: {e}");
        }
    }
    let out_task = tokio::spawn(read_capped(stdout, spec.max_output));
    let err_task = tokio::spawn(read_capped(stderr, spec.max_output));

    // The guard kills the group however this future ends: completion, timeout or cancellation.
    let guard = GroupGuard(pgid);
    let disk_limit = limits.disk_bytes;
    let watch_dir = dir.to_path_buf();
    // The directory is also measured while the command runs, so that a step cannot fill the
    // host's disk before it ends.
    let disk_watch = async move {
        loop {
            tokio::time::sleep(DISK_CHECK).await;
            let d = watch_dir.clone();
            let used = tokio::task::spawn_blocking(move || disk_use(&d))
                .await
                .unwrap_or(0);
            if used > disk_limit {
                return used;
            }
        }
    };
    let waited = tokio::select! {
        w = tokio::time::timeout(spec.timeout, child.wait()) => Ok(w),
        used = disk_watch => Err(used),
    };
    drop(guard);
    if waited.as_ref().is_ok_and(|w| w.is_err()) || waited.is_err() {
        let _ = child.wait().await;
    }
    let exceeded = cgroup.as_ref().and_then(|c| c.exceeded());
    if let Some(cg) = cgroup {
        let removed = tokio::task::spawn_blocking(move || cg.remove()).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!("cannot remove a step's cgroup: {e}");
        }
    }
    match exceeded {
        Some(Exceeded::Memory) => {
            return Err(ProviderError::resource_limit(format!(
                "command exceeded its memory limit of {} bytes",
                limits.memory_bytes
            )));
        }
        Some(Exceeded::Processes) => {
            return Err(ProviderError::resource_limit(format!(
                "command exceeded its limit of {} processes",
                limits.processes
            )));
        }
        None => {}
    }
    let status = match waited {
        Ok(Ok(Ok(status))) => status,
        Ok(Ok(Err(e))) => {
            return Err(ProviderError::transient(format!("wait for command: {e}")));
        }
        Ok(Err(_)) => {
            return Err(ProviderError::timeout(format!(
                "command timed out after {}",
                humantime::format_duration(spec.timeout)
            )));
        }
        Err(used) => return Err(disk_exceeded(used, disk_limit)),
    };
    let d = dir.to_path_buf();
    let used = tokio::task::spawn_blocking(move || disk_use(&d))
        .await
        .unwrap_or(0);
    if used > disk_limit {
        return Err(disk_exceeded(used, disk_limit));
    }
    let (stdout, out_trunc) = out_task.await.unwrap_or_default();
    let (stderr, err_trunc) = err_task.await.unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal()
        && (sig == Signal::SIGXCPU as i32 || sig == Signal::SIGXFSZ as i32)
    {
        let what = if sig == Signal::SIGXCPU as i32 {
            "cpu time"
        } else {
            "file size"
        };
        return Err(ProviderError::resource_limit(format!(
            "command exceeded its {what} limit"
        )));
    }
    let exit_code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if exit_code == SETUP_FAILED_CODE && String::from_utf8_lossy(&stderr).contains(SETUP_FAILED) {
        return Err(ProviderError::transient(format!(
            "isolation: {}",
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    if isolation.is_isolated() {
        // The command is a child of the sandbox's pid 1, which exits with 128+N when the
        // command is killed by signal N: a command killed by SIGXCPU/SIGXFSZ and one that
        // exits with 152/153 look the same from here; both are taken as a limit exceeded.
        let what = match exit_code {
            c if c == 128 + Signal::SIGXCPU as i32 => Some("cpu time"),
            c if c == 128 + Signal::SIGXFSZ as i32 => Some("file size"),
            _ => None,
        };
        if let Some(what) = what {
            return Err(ProviderError::resource_limit(format!(
                "command exceeded its {what} limit"
            )));
        }
    }
    Ok(RunOutput {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        exit_code,
        truncated: out_trunc || err_trunc,
    })
}

/// How often a running step's disk use is measured.
const DISK_CHECK: Duration = Duration::from_millis(500);

struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH (group already empty) is the normal case.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}
