//! The emulator's sandbox registry: E2B-shaped records over `LocalProvider` directories, the
//! process groups running in each sandbox, and the reaper that expires sandboxes.
//!
//! This module owns sandbox lifecycle (running, paused, gone) and the mapping from E2B ids to
//! local directories. It never speaks HTTP; handlers turn its answers into responses. Every
//! process group it records is killed when its sandbox is killed, paused or expired, so no
//! command outlives its sandbox.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::Shared;
use crate::provider::local::LocalProvider;
use crate::provider::{Provider, ProviderError, SandboxSpec};

/// How often the reaper looks for expired sandboxes.
const REAP_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SandboxState {
    Running,
    Paused,
}

impl SandboxState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    pub(crate) id: String,
    pub(crate) local_id: String,
    /// The directory `/home/user` maps to.
    pub(crate) dir: PathBuf,
    pub(crate) template_id: String,
    pub(crate) alias: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) env_vars: BTreeMap<String, String>,
    pub(crate) started_at_ms: u64,
    pub(crate) end_at_ms: u64,
    pub(crate) state: SandboxState,
    pub(crate) auto_pause: bool,
    pub(crate) access_token: Option<String>,
}

/// What a create call asks for.
pub(crate) struct NewSandbox {
    pub(crate) template_id: String,
    pub(crate) timeout: Duration,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) env_vars: BTreeMap<String, String>,
    pub(crate) secure: bool,
    pub(crate) auto_pause: bool,
}

#[derive(Default)]
struct Inner {
    sandboxes: HashMap<String, Sandbox>,
    /// Process group ids of commands running in each sandbox.
    procs: HashMap<String, HashSet<i32>>,
    /// Idempotency keys of v2 creates and the sandbox each made.
    idempotency: HashMap<String, String>,
}

pub(crate) struct Registry {
    local: LocalProvider,
    root: PathBuf,
    inner: Mutex<Inner>,
}

impl Registry {
    pub(crate) fn new(local: LocalProvider, root: PathBuf) -> Self {
        Registry {
            local,
            root,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn local(&self) -> &LocalProvider {
        &self.local
    }

    /// The live sandbox an earlier create with this idempotency key made.
    pub(crate) fn by_idempotency_key(&self, key: &str) -> Option<Sandbox> {
        let inner = self.lock();
        let id = inner.idempotency.get(key)?;
        inner.sandboxes.get(id).cloned()
    }

    pub(crate) async fn create(
        &self,
        new: NewSandbox,
        idempotency_key: Option<String>,
    ) -> Result<Sandbox, ProviderError> {
        let spec = SandboxSpec {
            template: new.template_id.clone(),
            timeout: new.timeout,
            env: new.env_vars.clone(),
            metadata: new.metadata.clone(),
            // The emulator's sandboxes are plain directories and processes: no network choice.
            network: crate::provider::Network::Host,
        };
        let local_id = self.local.create(&spec).await?;
        let now = crate::clock::now_ms();
        let sandbox = Sandbox {
            id: new_sandbox_id(),
            dir: self.root.join(&local_id),
            local_id,
            alias: Some(new.template_id.clone()),
            template_id: template_id_for(&new.template_id),
            metadata: new.metadata,
            env_vars: new.env_vars,
            started_at_ms: now,
            end_at_ms: now + new.timeout.as_millis() as u64,
            state: SandboxState::Running,
            auto_pause: new.auto_pause,
            access_token: new.secure.then(|| hex::encode(rand::random::<[u8; 16]>())),
        };
        let mut inner = self.lock();
        if let Some(key) = idempotency_key {
            inner.idempotency.insert(key, sandbox.id.clone());
        }
        inner.sandboxes.insert(sandbox.id.clone(), sandbox.clone());
        Ok(sandbox)
    }

    pub(crate) fn get(&self, id: &str) -> Option<Sandbox> {
        self.lock().sandboxes.get(id).cloned()
    }

    /// A sandbox that envd calls can reach: present, running and not past its end.
    pub(crate) fn running(&self, id: &str) -> Option<Sandbox> {
        let now = crate::clock::now_ms();
        self.get(id)
            .filter(|s| s.state == SandboxState::Running && s.end_at_ms > now)
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().sandboxes.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(crate) fn all(&self) -> Vec<Sandbox> {
        self.lock().sandboxes.values().cloned().collect()
    }

    /// Change a sandbox in place; `None` when it does not exist.
    pub(crate) fn update<T>(&self, id: &str, f: impl FnOnce(&mut Sandbox) -> T) -> Option<T> {
        self.lock().sandboxes.get_mut(id).map(f)
    }

    /// Remove a sandbox, its processes and its directory; false when it did not exist.
    pub(crate) async fn kill(&self, id: &str) -> bool {
        let removed = {
            let mut inner = self.lock();
            let removed = inner.sandboxes.remove(id);
            inner.idempotency.retain(|_, sandbox| sandbox != id);
            if let Some(groups) = inner.procs.remove(id) {
                kill_groups(groups);
            }
            removed
        };
        let Some(sandbox) = removed else { return false };
        if let Err(e) = self.local.kill(&sandbox.local_id).await {
            tracing::warn!(sandbox = id, error = %e, "emulator could not remove a sandbox directory");
        }
        true
    }

    pub(crate) fn kill_processes(&self, id: &str) {
        if let Some(groups) = self.lock().procs.remove(id) {
            kill_groups(groups);
        }
    }

    pub(crate) fn kill_all_processes(&self) {
        let all: Vec<HashSet<i32>> = self.lock().procs.drain().map(|(_, g)| g).collect();
        for groups in all {
            kill_groups(groups);
        }
    }

    pub(crate) fn add_process(&self, id: &str, pgid: i32) {
        self.lock()
            .procs
            .entry(id.to_string())
            .or_default()
            .insert(pgid);
    }

    pub(crate) fn remove_process(&self, id: &str, pgid: i32) {
        let mut inner = self.lock();
        if let Some(groups) = inner.procs.get_mut(id) {
            groups.remove(&pgid);
        }
    }
}

fn kill_groups(groups: HashSet<i32>) {
    for pgid in groups {
        // ESRCH (the group already ended) is the normal case.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// `"i"` + 20 chars of `[a-z0-9]`, as E2B sandbox ids look.
fn new_sandbox_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut id = String::with_capacity(21);
    id.push('i');
    for _ in 0..20 {
        id.push(ALPHABET[rand::random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// A stable 20-char template id for a template name, so responses look like E2B's.
fn template_id_for(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut s = format!("{h:016x}{:04x}", h >> 48);
    s.truncate(20);
    s
}

/// Expire sandboxes past their end: kill them, or pause them when they asked for auto-pause.
pub(crate) async fn reaper(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = crate::clock::now_ms();
        let expired: Vec<Sandbox> = shared
            .registry
            .all()
            .into_iter()
            .filter(|s| s.state == SandboxState::Running && s.end_at_ms <= now)
            .collect();
        for sandbox in expired {
            if sandbox.auto_pause {
                shared.registry.kill_processes(&sandbox.id);
                shared.registry.update(&sandbox.id, |s| {
                    s.state = SandboxState::Paused;
                    s.end_at_ms = now;
                });
            } else {
                shared.registry.kill(&sandbox.id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::FaultController;

    #[tokio::test(start_paused = true)]
    async fn reaper_kills_or_pauses_at_the_end_of_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sandboxes");
        let local = LocalProvider::new(&root, Default::default()).unwrap();
        let shared = Arc::new(Shared {
            api_key: None,
            registry: Registry::new(local, root),
            faults: FaultController::new(),
        });
        let new = |auto_pause| NewSandbox {
            template_id: "base".into(),
            timeout: Duration::from_secs(30),
            metadata: BTreeMap::new(),
            env_vars: BTreeMap::new(),
            secure: false,
            auto_pause,
        };
        let killed = shared.registry.create(new(false), None).await.unwrap();
        let paused = shared.registry.create(new(true), None).await.unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(reaper(shared.clone(), stopped));

        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(shared.registry.running(&killed.id).is_some());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(shared.registry.get(&killed.id).is_none());
        assert!(!killed.dir.exists());
        let p = shared.registry.get(&paused.id).unwrap();
        assert_eq!(p.state, SandboxState::Paused);
        assert!(shared.registry.running(&paused.id).is_none());
        let _ = stop.send(true);
    }

    #[test]
    fn ids_look_like_e2b() {
        let id = new_sandbox_id();
        assert_eq!(id.len(), 21);
        assert!(id.starts_with('i'));
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(template_id_for("base").len(), 20);
    }
}
