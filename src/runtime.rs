//! The runtime: the root supervisor and its tree, and the `RuntimeHandle` through which the
//! HTTP API, the CLI and embedding applications use it.
//!
//! ```text
//! RootSupervisor (one-for-all, bounded restarts)
//! ├── CircuitBreakerActor
//! ├── RateLimiterActor
//! ├── NotifierActor
//! ├── QueueActor
//! ├── SandboxPool ── SandboxWorker x N
//! └── HealthMonitorActor
//! ```
//! The children depend on each other's references, so a failure of any of them restarts all
//! three (each rebuilds from the store in `pre_start`; in-flight jobs run again). A worker
//! restart storm in the pool is not retried: it escalates, the root stops, and the process
//! exits non-zero. Readers (job lookups, lists, the breaker view) go to the store and to
//! published state directly; every change of state goes through an actor.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{broadcast, watch};

use crate::breaker::{BreakerArgs, BreakerLink, BreakerMsg, BreakerView, CircuitBreakerActor};
use crate::config::{CgroupMode, IsolationKind, Protection, ProviderKind, Settings};
use crate::health::{HealthArgs, HealthMonitorActor, HealthMsg, HealthReport, TaskRun, TaskView};
use crate::job::{Job, JobSpec, JobStatus};
use crate::metrics::Metrics;
use crate::notify::{Notification, NotifierActor, NotifierArgs, NotifierLink};
use crate::pool::{PoolArgs, PoolMsg, SandboxPool, WorkerContext};
use crate::provider::Provider;
use crate::provider::cgroups::Cgroups;
use crate::provider::e2b::{E2bConfig, E2bProvider};
use crate::provider::faults::{FaultControl, Faults, FaultyProvider};
use crate::provider::isolation::Isolation;
use crate::provider::local::LocalProvider;
use crate::provider::template::Templates;
use crate::queue::{JobEvent, QueueActor, QueueArgs, QueueError, QueueMsg, QueueStats};
use crate::ratelimit::{LimiterArgs, LimiterLink, LimitsView, RateLimiterActor};
use crate::retry::{Jitter, RetryPolicy};
use crate::store::{Store, StoreError};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long running jobs may take to finish when the service stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not open the store: {0}")]
    Store(#[from] StoreError),
    #[error("could not set up the {provider} provider: {why}")]
    Provider { provider: &'static str, why: String },
    #[error("could not start the actor tree: {0}")]
    Spawn(String),
    #[error("the runtime is not running")]
    Stopped,
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// References to the live children, replaced on every restart.
#[derive(Clone)]
struct Links {
    queue: ActorRef<QueueMsg>,
    breaker: BreakerLink,
    limiter: LimiterLink,
    pool: ActorRef<PoolMsg>,
    health: ActorRef<HealthMsg>,
}

struct RootArgs {
    settings: Settings,
    store: Store,
    provider: Arc<dyn Provider>,
    events: broadcast::Sender<JobEvent>,
    live: broadcast::Sender<Notification>,
    metrics: Arc<Metrics>,
    links: watch::Sender<Option<Links>>,
    exit: Arc<Mutex<Option<String>>>,
    instance: String,
    faults: Arc<FaultControl>,
}

struct RootState {
    args: RootArgs,
    children: Vec<ractor::ActorCell>,
    restarts: VecDeque<tokio::time::Instant>,
}

struct RootSupervisor;

const ROOT_RESTART_LIMIT: usize = 3;
const ROOT_RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long a tree restart waits for each old actor to stop.
const CHILD_STOP_WAIT: Duration = Duration::from_secs(5);

fn retry_policy(s: &Settings) -> RetryPolicy {
    let r = &s.retry;
    RetryPolicy {
        max_retries: match s.protection {
            Protection::Full => r.max_retries,
            Protection::RetryOnly => 3,
            Protection::None => 0,
        },
        base: r.base,
        cap: r.cap,
        multiplier: r.multiplier,
        jitter: match r.jitter.as_str() {
            "none" => Jitter::None,
            "equal" => Jitter::Equal,
            _ => Jitter::Full,
        },
        rate_limit_delay: r.rate_limit_delay,
    }
}

impl RootSupervisor {
    async fn start_children(
        myself: &ActorRef<()>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let a = &state.args;
        let (breaker, breaker_ref) = CircuitBreakerActor::start(
            BreakerArgs {
                provider: a.provider.name().to_string(),
                settings: a.settings.breaker.clone(),
                store: a.store.clone(),
                metrics: a.metrics.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        if a.settings.protection != Protection::Full {
            tracing::warn!(
                protection = a.settings.protection.as_str(),
                "protection is reduced to a baseline: no circuit breaker, no holding of jobs"
            );
            breaker_ref
                .call(BreakerMsg::Disable, Some(Duration::from_secs(5)))
                .await?;
        }
        let (limiter, limiter_ref) = RateLimiterActor::start(
            LimiterArgs {
                settings: a.settings.ratelimit.clone(),
                store: a.store.clone(),
                metrics: a.metrics.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        let (notifier, _) = Actor::spawn_linked(
            None,
            NotifierActor,
            NotifierArgs {
                store: a.store.clone(),
                settings: a.settings.notify.clone(),
                live: a.live.clone(),
                metrics: a.metrics.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        let (queue, _) = Actor::spawn_linked(
            None,
            QueueActor,
            QueueArgs {
                metrics: a.metrics.clone(),
                notifier: NotifierLink(notifier.clone()),
                retention: a.settings.retention,
                cleanup_batch: a.settings.cleanup_batch,
                workers: a.settings.workers,
                store: a.store.clone(),
                events: a.events.clone(),
                max_attempts: a.settings.max_attempts,
                breaker: breaker.subscribe(),
                probes: a.settings.breaker.half_open_probes as usize,
            },
            myself.get_cell(),
        )
        .await?;
        let ctx = Arc::new(WorkerContext {
            provider: a.provider.clone(),
            retry: retry_policy(&a.settings),
            breaker: breaker.clone(),
            limiter: limiter.clone(),
            metrics: a.metrics.clone(),
            store: a.store.clone(),
            instance: a.instance.clone(),
            max_attempts: a.settings.max_attempts,
            max_output: a.settings.max_output_bytes,
            max_read: a.settings.max_read_bytes,
            create_timeout: a.settings.create_timeout,
            write_timeout: a.settings.write_timeout,
            faults: a.faults.clone(),
            protection: a.settings.protection,
        });
        // Before the pool starts no job of ours runs: every tagged sandbox but live sessions is
        // an orphan of a crash or of a worker that died mid-job.
        if matches!(breaker.view().state, "closed" | "disabled") {
            crate::health::reap_orphans(
                a.provider.as_ref(),
                &a.instance,
                &a.store,
                a.settings.job_defaults.max_sandbox_timeout,
                true,
            )
            .await;
        }
        let (pool, _) = Actor::spawn_linked(
            None,
            SandboxPool,
            PoolArgs {
                workers: a.settings.workers,
                restart_limit: a.settings.restart_limit,
                restart_window: a.settings.restart_window,
                hung_grace: a.settings.hung_grace,
                ctx,
                queue: queue.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        let (health, _) = Actor::spawn_linked(
            None,
            HealthMonitorActor,
            HealthArgs {
                settings: a.settings.health.clone(),
                store: a.store.clone(),
                breaker: breaker.clone(),
                limiter: limiter.clone(),
                limiter_ref: limiter_ref.clone(),
                queue: queue.clone(),
                pool: pool.clone(),
                workers: a.settings.workers,
                provider: a.provider.clone(),
                instance: a.instance.clone(),
                max_lifetime: a.settings.job_defaults.max_sandbox_timeout,
            },
            myself.get_cell(),
        )
        .await?;
        state.children = vec![
            breaker_ref.get_cell(),
            limiter_ref.get_cell(),
            notifier.get_cell(),
            queue.get_cell(),
            pool.get_cell(),
            health.get_cell(),
        ];
        let _ = a.links.send(Some(Links {
            queue,
            breaker,
            limiter,
            pool,
            health,
        }));
        Ok(())
    }
}

impl Actor for RootSupervisor {
    type Msg = ();
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut state = RootState {
            args,
            children: Vec::new(),
            restarts: VecDeque::new(),
        };
        Self::start_children(&myself, &mut state).await?;
        Ok(state)
    }

    /// Stop children in reverse start order, each under the grace period, so that running
    /// jobs can finish and report to a queue that is still there.
    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.args.links.send(None);
        for child in state.children.drain(..).rev() {
            if child
                .stop_and_wait(Some("shutdown".into()), Some(SHUTDOWN_GRACE))
                .await
                .is_err()
            {
                child.kill();
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        // Events from children of an earlier generation (killed on restart) are expected.
        if !state.children.iter().any(|c| c.get_id() == cell.get_id()) {
            return Ok(());
        }
        if why.contains("restart storm") {
            *state.args.exit.lock().expect("exit lock") = Some(why.clone());
            return Err(why.into());
        }
        let now = tokio::time::Instant::now();
        state
            .restarts
            .retain(|t| now.duration_since(*t) < ROOT_RESTART_WINDOW);
        if state.restarts.len() >= ROOT_RESTART_LIMIT {
            let msg = format!(
                "supervision gave up after {ROOT_RESTART_LIMIT} restarts in a minute; last: {why}"
            );
            *state.args.exit.lock().expect("exit lock") = Some(msg.clone());
            return Err(msg.into());
        }
        state.restarts.push_back(now);
        tracing::error!(why, "an actor of the tree failed; restarting the tree");
        let _ = state.args.links.send(None);
        // Wait for each to stop: a handler that is running finishes first, and its last store
        // write must land before the new queue's recovery reads the trees.
        for child in state.children.drain(..) {
            // An actor that is already dead answers at once with a closed channel.
            if let Err(ractor::RactorErr::Timeout) =
                child.kill_and_wait(Some(CHILD_STOP_WAIT)).await
            {
                tracing::warn!("an actor of the failed tree did not stop in time");
            }
        }
        Self::start_children(&myself, state).await
    }
}

/// Entry point for embedding: `Runtime::start(settings)` runs the whole tree in the current
/// tokio runtime and returns a handle.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use sandwarden::{Runtime, Settings};
///
/// let dir = tempfile::tempdir()?;
/// let runtime = Runtime::start(Settings::with_data_dir(dir.path())).await?;
/// let spec = sandwarden::job::spec::parse(
///     br#"{"user_id": "u", "steps": [{"run": {"cmd": "echo hi"}}]}"#,
///     &Default::default(),
/// )?;
/// let (job, _) = runtime.submit(spec).await?;
/// let done = runtime.wait(&job.id, Duration::from_secs(30)).await?.expect("job exists");
/// assert_eq!(done.result.unwrap().steps[0].stdout.as_deref(), Some("hi\n"));
/// runtime.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Runtime;

impl Runtime {
    /// Start with the provider the settings name.
    pub async fn start(settings: Settings) -> Result<RuntimeHandle, RuntimeError> {
        let provider: Arc<dyn Provider> = match settings.provider {
            ProviderKind::Local => {
                let isolation = local_isolation(&settings)?;
                let cgroups = local_cgroups(&settings)?;
                Arc::new(
                    LocalProvider::new(settings.data_dir.join("sandboxes"), settings.local.clone())
                        .map_err(|e| RuntimeError::Provider {
                            provider: "local",
                            why: e.to_string(),
                        })?
                        .with_isolation(isolation)
                        .with_templates(local_templates(&settings))
                        .with_cgroups(cgroups),
                )
            }
            ProviderKind::E2b => {
                let e = &settings.e2b;
                let cfg = E2bConfig {
                    api_url: e.api_url.clone(),
                    sandbox_url: e.sandbox_url.clone(),
                    api_key: e.api_key.clone().unwrap_or_default(),
                    domain: e.domain.clone(),
                    request_timeout: e.request_timeout,
                    // Filled in below once the store has told us who we are.
                    instance: String::new(),
                };
                return Self::start_e2b(settings, cfg).await;
            }
            ProviderKind::Noop => {
                tracing::warn!("provider \"noop\": jobs do nothing (for benchmarks)");
                Arc::new(crate::provider::noop::NoopProvider)
            }
        };
        Self::start_with_provider(settings, provider).await
    }

    async fn start_e2b(
        settings: Settings,
        mut cfg: E2bConfig,
    ) -> Result<RuntimeHandle, RuntimeError> {
        let store = open_store(&settings)?;
        cfg.instance = instance_id(&store)?;
        let provider = E2bProvider::new(cfg).map_err(|e| RuntimeError::Provider {
            provider: "e2b",
            why: e.to_string(),
        })?;
        Self::start_on(settings, store, Arc::new(provider)).await
    }

    /// Start with a given provider (tests, embedding with a custom backend).
    pub async fn start_with_provider(
        settings: Settings,
        provider: Arc<dyn Provider>,
    ) -> Result<RuntimeHandle, RuntimeError> {
        let store = open_store(&settings)?;
        Self::start_on(settings, store, provider).await
    }

    async fn start_on(
        settings: Settings,
        store: Store,
        provider: Arc<dyn Provider>,
    ) -> Result<RuntimeHandle, RuntimeError> {
        let instance = instance_id(&store)?;
        let f = &settings.faults;
        let faults = FaultControl::new(Faults {
            enabled: f.enabled,
            error_rate: f.error_rate,
            status: f.status,
            retry_after: f.retry_after,
            latency: f.latency,
            outage_until_ms: f
                .outage
                .map(|d| crate::clock::now_ms() + d.as_millis() as u64),
        });
        if f.enabled {
            tracing::warn!(?f, "fault injection is ON from configuration");
        }
        let provider: Arc<dyn Provider> = Arc::new(FaultyProvider::new(provider, faults.clone()));
        let (events, _) = broadcast::channel(4096);
        let (live, _) = broadcast::channel(1024);
        let metrics = Arc::new(Metrics::default());
        let (links_tx, links_rx) = watch::channel(None);
        let exit = Arc::new(Mutex::new(None));
        let instance_for_handle = instance.clone();
        let (root, join) = Actor::spawn(
            None,
            RootSupervisor,
            RootArgs {
                settings: settings.clone(),
                store: store.clone(),
                provider,
                events: events.clone(),
                live: live.clone(),
                metrics: metrics.clone(),
                links: links_tx,
                exit: exit.clone(),
                instance,
                faults: faults.clone(),
            },
        )
        .await
        .map_err(|e| RuntimeError::Spawn(e.to_string()))?;
        Ok(RuntimeHandle {
            inner: Arc::new(HandleInner {
                settings,
                store,
                events,
                live,
                metrics,
                links: links_rx,
                root,
                join: tokio::sync::Mutex::new(Some(join)),
                exit,
                faults,
                instance: instance_for_handle,
            }),
        })
    }
}

/// The isolation the settings ask for, after proving the platform can give it.
pub fn local_isolation(settings: &Settings) -> Result<Isolation, RuntimeError> {
    match settings.isolation {
        IsolationKind::None => {
            tracing::warn!(
                "local sandboxes are NOT isolated (local.isolation = \"none\"): jobs can touch this host"
            );
            Ok(Isolation::none())
        }
        IsolationKind::Namespaces => {
            let network = settings.sandbox_network;
            match Isolation::namespaces() {
                Ok(iso) => {
                    tracing::info!(
                        default_network = network.as_str(),
                        "local sandboxes isolated with namespaces"
                    );
                    Ok(iso)
                }
                Err(probe) => Err(RuntimeError::Provider {
                    provider: "local",
                    why: format!(
                        "this platform cannot isolate sandboxes ({}); set local.isolation = \"none\" to run them unisolated",
                        probe.problems.join("; ")
                    ),
                }),
            }
        }
    }
}

/// Where local sandboxes' templates come from.
pub fn local_templates(settings: &Settings) -> Templates {
    Templates {
        dir: Some(
            settings
                .templates_dir
                .clone()
                .unwrap_or_else(|| settings.data_dir.join("templates")),
        ),
        configured: settings.templates.clone(),
    }
}

/// The cgroups local steps run in, if the settings want them and the platform has them; said
/// in one line either way.
pub fn local_cgroups(settings: &Settings) -> Result<Option<Cgroups>, RuntimeError> {
    if settings.cgroups == CgroupMode::Off {
        tracing::info!("local steps are bounded by rlimits only (local.cgroups = \"off\")");
        return Ok(None);
    }
    match Cgroups::detect() {
        Ok(c) => {
            tracing::info!(mechanism = %c.describe(), "local steps run in cgroups of their own");
            Ok(Some(c))
        }
        Err(why) if settings.cgroups == CgroupMode::On => Err(RuntimeError::Provider {
            provider: "local",
            why: format!("local.cgroups = \"on\" but cgroups are not usable here: {why}"),
        }),
        Err(why) => {
            tracing::warn!(
                "cgroups are not usable here, local steps are bounded by rlimits only: {why}"
            );
            Ok(None)
        }
    }
}

fn open_store(settings: &Settings) -> Result<Store, StoreError> {
    if settings.inline_flush {
        Store::open_with_inline_flush(&settings.data_dir)
    } else {
        Store::open(&settings.data_dir)
    }
}

/// This installation's id, made once and kept in the store; sandboxes are tagged with it.
fn instance_id(store: &Store) -> Result<String, StoreError> {
    if let Some(id) = store.get_record::<String>("instance")? {
        return Ok(id);
    }
    let id = format!("sw-{}", hex::encode(rand::random::<[u8; 6]>()));
    store.put_record("instance", &id)?;
    Ok(id)
}

/// A cheap, cloneable handle to a running runtime.
#[derive(Clone)]
pub struct RuntimeHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    settings: Settings,
    store: Store,
    events: broadcast::Sender<JobEvent>,
    live: broadcast::Sender<Notification>,
    metrics: Arc<Metrics>,
    links: watch::Receiver<Option<Links>>,
    root: ActorRef<()>,
    join: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    exit: Arc<Mutex<Option<String>>>,
    faults: Arc<FaultControl>,
    instance: String,
}

/// A page of jobs.
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}

impl RuntimeHandle {
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// This installation's id; every sandbox it creates is tagged with it.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn data_dir(&self) -> PathBuf {
        self.inner.settings.data_dir.clone()
    }

    async fn links(&self) -> Result<Links, RuntimeError> {
        let mut rx = self.inner.links.clone();
        // During a tree restart the links are briefly absent.
        let links = tokio::time::timeout(CALL_TIMEOUT, rx.wait_for(|l| l.is_some()))
            .await
            .map_err(|_| RuntimeError::Stopped)?
            .map_err(|_| RuntimeError::Stopped)?;
        Ok(links.clone().expect("waited for some"))
    }

    async fn queue_call<T>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<T>) -> QueueMsg,
    ) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
    {
        let links = self.links().await?;
        match links.queue.call(msg, Some(CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            _ => Err(RuntimeError::Stopped),
        }
    }

    /// Submit a job; returns once it is durable. The flag is false when an earlier job with
    /// the same idempotency key was returned instead.
    pub async fn submit(&self, spec: JobSpec) -> Result<(Job, bool), RuntimeError> {
        let submitted = self
            .queue_call(|r| QueueMsg::Submit(Box::new(spec), r))
            .await??;
        self.inner.store.durable(submitted.ticket).await?;
        Ok((self.decorate(submitted.job), submitted.created))
    }

    /// Pending jobs say why they wait when the provider is down.
    fn decorate(&self, mut job: Job) -> Job {
        if job.status == JobStatus::Pending
            && job.reason.is_none()
            && let Some(links) = self.inner.links.borrow().as_ref()
            && links.breaker.view().refuses(crate::clock::now_ms())
        {
            job.reason = Some("provider unavailable, waiting for recovery".into());
        }
        job
    }

    pub fn get(&self, id: &str) -> Result<Option<Job>, RuntimeError> {
        Ok(self.inner.store.get_job(id)?.map(|j| self.decorate(j)))
    }

    pub fn list(
        &self,
        user: &str,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, RuntimeError> {
        let before = cursor.and_then(Job::seq_of);
        let (jobs, next) = self
            .inner
            .store
            .list_user_jobs(user, status, limit, before)?;
        Ok(JobPage {
            jobs: jobs.into_iter().map(|j| self.decorate(j)).collect(),
            next_cursor: next.map(Job::id_of),
        })
    }

    pub async fn cancel(&self, id: &str) -> Result<Job, RuntimeError> {
        let id = id.to_string();
        let job = self.queue_call(|r| QueueMsg::Cancel(id, r)).await??;
        Ok(job)
    }

    /// Wait until the job ends or `timeout` passes; returns the job as it is then.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<Job>, RuntimeError> {
        let mut events = self.inner.events.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(job) = self.get(id)? else {
                return Ok(None);
            };
            if job.status.is_terminal() {
                return Ok(Some(job));
            }
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Err(_) => return self.get(id),
                    Ok(Ok(ev)) if ev.id != id => continue,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return self.get(id),
                    // A matching event, or lagged (we may have missed it): look again.
                    Ok(_) => break,
                }
            }
        }
    }

    /// A user's notifications, newest first.
    pub fn notifications(
        &self,
        user: &str,
        unread_only: bool,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Notification>, Option<String>), RuntimeError> {
        let before = cursor
            .and_then(|c| c.strip_prefix("ntf-"))
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        let (list, next) = self
            .inner
            .store
            .list_notifications(user, unread_only, limit, before)?;
        Ok((list, next.map(|s| format!("ntf-{s:016x}"))))
    }

    /// Mark a user's notifications read (the given ids, or all); returns how many changed.
    pub fn mark_read(&self, user: &str, ids: Option<&[String]>) -> Result<usize, RuntimeError> {
        Ok(self.inner.store.mark_read(user, ids)?)
    }

    /// Notifications as they are made (for server-sent events).
    pub fn subscribe_notifications(&self) -> broadcast::Receiver<Notification> {
        self.inner.live.subscribe()
    }

    /// Job transitions as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.inner.events.subscribe()
    }

    pub async fn stats(&self) -> Result<QueueStats, RuntimeError> {
        self.queue_call(QueueMsg::Stats).await
    }

    /// Job counts by status, the oldest pending job's creation time, and how many jobs ended
    /// in the last minute. Reads the store (O(jobs)).
    pub fn census(&self) -> Result<crate::store::Census, RuntimeError> {
        let since = crate::clock::now_ms().saturating_sub(60_000);
        Ok(self.inner.store.census(since)?)
    }

    /// Jobs of every user, newest first (admin).
    pub fn list_all(
        &self,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, RuntimeError> {
        let before = cursor.and_then(Job::seq_of);
        let (jobs, next) = self.inner.store.list_jobs(status, limit, before)?;
        Ok(JobPage {
            jobs: jobs.into_iter().map(|j| self.decorate(j)).collect(),
            next_cursor: next.map(Job::id_of),
        })
    }

    /// Stop (true) or restart (false) dispatch; returns the new state.
    pub async fn set_paused(&self, paused: bool) -> Result<bool, RuntimeError> {
        self.queue_call(|r| QueueMsg::SetPaused(paused, r)).await
    }

    /// Run a dead or failed job again with a fresh budget of attempts.
    pub async fn retry(&self, id: &str) -> Result<Job, RuntimeError> {
        let id = id.to_string();
        Ok(self.queue_call(|r| QueueMsg::Retry(id, r)).await??)
    }

    /// Remove ended jobs past their retention now; returns how many.
    pub async fn cleanup(&self) -> Result<usize, RuntimeError> {
        Ok(self.queue_call(|r| QueueMsg::Cleanup(Some(r))).await??)
    }

    pub async fn breaker(&self) -> Result<BreakerView, RuntimeError> {
        Ok(self.links().await?.breaker.view())
    }

    pub async fn breaker_control(
        &self,
        action: BreakerAction,
    ) -> Result<BreakerView, RuntimeError> {
        let links = self.links().await?;
        let actor = links.breaker.actor();
        let msg = match action {
            BreakerAction::Reset => BreakerMsg::Reset,
            BreakerAction::Open => BreakerMsg::ForceOpen,
            BreakerAction::Disable => BreakerMsg::Disable,
        };
        match actor.call(msg, Some(CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            _ => Err(RuntimeError::Stopped),
        }
    }

    pub async fn limits(&self) -> Result<LimitsView, RuntimeError> {
        self.links()
            .await?
            .limiter
            .view()
            .await
            .ok_or(RuntimeError::Stopped)
    }

    pub fn faults(&self) -> &Arc<FaultControl> {
        &self.inner.faults
    }

    /// The latest health report (a check runs first if none has yet).
    pub async fn health(&self) -> Result<HealthReport, RuntimeError> {
        let links = self.links().await?;
        match links
            .health
            .call(HealthMsg::Report, Some(Duration::from_secs(30)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            _ => Err(RuntimeError::Stopped),
        }
    }

    /// The scheduled tasks with their schedules and last runs.
    pub async fn tasks(&self) -> Result<Vec<TaskView>, RuntimeError> {
        let links = self.links().await?;
        match links
            .health
            .call(HealthMsg::Tasks, Some(CALL_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            _ => Err(RuntimeError::Stopped),
        }
    }

    /// Run a scheduled task now; `Ok(Err(_))` names an unknown task.
    pub async fn run_task(&self, name: &str) -> Result<Result<TaskRun, String>, RuntimeError> {
        let links = self.links().await?;
        let name = name.to_string();
        match links
            .health
            .call(
                |r| HealthMsg::RunNow(name, r),
                Some(Duration::from_secs(120)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            _ => Err(RuntimeError::Stopped),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The kept sandboxes (sessions) the registry knows, live and killed.
    pub fn sandboxes(&self) -> Result<Vec<crate::store::SandboxRecord>, RuntimeError> {
        Ok(self.inner.store.sandboxes()?)
    }

    /// Ready to take jobs: the actor tree is up.
    pub fn ready(&self) -> bool {
        self.inner.links.borrow().is_some()
    }

    pub async fn pool_size(&self) -> Result<usize, RuntimeError> {
        let links = self.links().await?;
        match links.pool.call(PoolMsg::Size, Some(CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            _ => Err(RuntimeError::Stopped),
        }
    }

    /// Resolves when the tree stops; `Err` carries the reason when it stopped abnormally.
    pub async fn stopped(&self) -> Result<(), String> {
        let join = self.inner.join.lock().await.take();
        if let Some(join) = join {
            let _ = join.await;
        }
        match self.inner.exit.lock().expect("exit lock").clone() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Stop the tree (running jobs are interrupted and re-run on the next start) and flush.
    pub async fn shutdown(&self) -> Result<(), RuntimeError> {
        let _ = self
            .inner
            .root
            .stop_and_wait(Some("shutdown".into()), Some(SHUTDOWN_GRACE * 3))
            .await;
        let _ = self.stopped().await;
        self.inner.store.flush().await?;
        // Actors drop their state (and their store handles) just after they report stopped;
        // wait for that, so that the database is closed when this returns and the same data
        // directory can be opened again at once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.inner.store.handles() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.inner.store.handles() > 1 {
            tracing::warn!(
                handles = self.inner.store.handles(),
                "store handles outlived the shutdown"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerAction {
    Reset,
    Open,
    Disable,
}
