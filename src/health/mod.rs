//! The `HealthMonitorActor`: owns the schedules (cron, UTC) of the service's periodic tasks —
//! the health check, the queue sweep, the rate-record clean-up and the job clean-up — runs each
//! when due or on demand, records its last run (time, duration, outcome) in the store, and
//! keeps the latest health report.
//!
//! A task that was due while the service was down runs once at start. Tasks run one at a time
//! inside the actor, so a slow task never overlaps itself (the next due time is computed after
//! it ends). The health check reads published state and asks the pool and the provider with
//! short timeouts; it never changes anything. Alerts go out when the report turns unhealthy.

pub mod alerts;
pub mod cron;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::breaker::BreakerLink;
use crate::clock::now_ms;
use crate::pool::PoolMsg;
use crate::provider::Provider;
use crate::queue::QueueMsg;
use crate::ratelimit::{LimiterLink, LimiterMsg};
use crate::store::Store;
pub use cron::Cron;

/// The names of the scheduled tasks.
pub const TASKS: [&str; 6] = [
    "health",
    "queue_sweep",
    "ratelimit_cleanup",
    "job_cleanup",
    "sandbox_reaper",
    "auto_pause",
];

/// The result of one health check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: &'static str,
    pub reasons: Vec<String>,
    pub at_ms: u64,
    pub breaker: &'static str,
    pub pending: usize,
    pub oldest_pending_age_ms: Option<u64>,
    pub workers_alive: Option<usize>,
    pub workers_configured: usize,
    pub provider_reachable: bool,
}

/// One run of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    pub at_ms: u64,
    pub duration_ms: u64,
    /// `ok`, or the error.
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskView {
    pub name: &'static str,
    pub schedule: String,
    pub next_due_ms: Option<u64>,
    pub last: Option<TaskRun>,
    /// Runs since this process started.
    pub runs: u64,
}

/// Thresholds of the health check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub schedules: Vec<(&'static str, Cron)>,
    pub max_pending: usize,
    pub max_pending_age: Duration,
    /// Kept sandboxes unused for this long are paused by the `auto_pause` task.
    pub idle_pause_after: Duration,
}

pub enum HealthMsg {
    /// Run whatever is due.
    Tick,
    RunNow(String, RpcReplyPort<Result<TaskRun, String>>),
    Tasks(RpcReplyPort<Vec<TaskView>>),
    /// The latest report (running a check first if there is none yet).
    Report(RpcReplyPort<HealthReport>),
}

/// What the checks and tasks need to reach.
pub struct HealthArgs {
    pub settings: HealthSettings,
    pub store: Store,
    pub breaker: BreakerLink,
    pub limiter: LimiterLink,
    pub limiter_ref: ActorRef<LimiterMsg>,
    pub queue: ActorRef<QueueMsg>,
    pub pool: ActorRef<PoolMsg>,
    pub workers: usize,
    pub provider: Arc<dyn Provider>,
    /// This installation's tag on the sandboxes it creates.
    pub instance: String,
    /// No sandbox of ours lives longer than this, whatever it runs.
    pub max_lifetime: Duration,
}

struct Task {
    name: &'static str,
    cron: Cron,
    next_due_ms: Option<u64>,
    last: Option<TaskRun>,
    runs: u64,
}

pub struct HealthState {
    args: HealthArgs,
    tasks: Vec<Task>,
    report: Option<HealthReport>,
    stop: CancellationToken,
}

const TICK: Duration = Duration::from_secs(15);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HealthMonitorActor;

impl Actor for HealthMonitorActor {
    type Msg = HealthMsg;
    type State = HealthState;
    type Arguments = HealthArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HealthMsg>,
        args: HealthArgs,
    ) -> Result<HealthState, ActorProcessingErr> {
        let now = now_ms();
        let mut tasks = Vec::new();
        for (name, cron) in &args.settings.schedules {
            let last: Option<TaskRun> = args.store.get_record(&format!("task/{name}"))?;
            // Due while we were down: once, now. Otherwise at the next scheduled time.
            let next_due_ms = match &last {
                Some(l) => cron.next_after(l.at_ms).map(|t| t.max(now)),
                None => cron.next_after(now),
            };
            tasks.push(Task {
                name,
                cron: cron.clone(),
                next_due_ms,
                last,
                runs: 0,
            });
        }
        // Only this actor starts pauses, one at a time: a pause it was making when the process
        // stopped may or may not have happened. Taken as paused: resuming a running sandbox
        // is harmless, and the next job's resume settles it.
        for s in args.store.sandboxes()? {
            if s.state == "pausing" {
                args.store.update_sandbox(&s.id, |r| {
                    (r.state == "pausing").then(|| crate::store::SandboxRecord {
                        state: "paused".into(),
                        ..r.clone()
                    })
                })?;
            }
        }
        let stop = CancellationToken::new();
        crate::clock::tick(myself.clone(), TICK, stop.clone(), || HealthMsg::Tick);
        Ok(HealthState {
            args,
            tasks,
            report: None,
            stop,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HealthMsg>,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<HealthMsg>,
        msg: HealthMsg,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HealthMsg::Tick => {
                let now = now_ms();
                let due: Vec<&'static str> = state
                    .tasks
                    .iter()
                    .filter(|t| t.next_due_ms.is_some_and(|d| d <= now))
                    .map(|t| t.name)
                    .collect();
                for name in due {
                    state.run(name).await;
                }
            }
            HealthMsg::RunNow(name, reply) => {
                let result = match TASKS.iter().find(|t| **t == name) {
                    Some(n) => Ok(state.run(n).await),
                    None => Err(format!(
                        "unknown task {name:?}; tasks are {}",
                        TASKS.join(", ")
                    )),
                };
                let _ = reply.send(result);
            }
            HealthMsg::Tasks(reply) => {
                let _ = reply.send(
                    state
                        .tasks
                        .iter()
                        .map(|t| TaskView {
                            name: t.name,
                            schedule: t.cron.as_str().to_string(),
                            next_due_ms: t.next_due_ms,
                            last: t.last.clone(),
                            runs: t.runs,
                        })
                        .collect(),
                );
            }
            HealthMsg::Report(reply) => {
                if state.report.is_none() {
                    state.run("health").await;
                }
                if let Some(r) = state.report.clone() {
                    let _ = reply.send(r);
                }
            }
        }
        Ok(())
    }
}

impl HealthState {
    async fn run(&mut self, name: &'static str) -> TaskRun {
        let started = tokio::time::Instant::now();
        let at_ms = now_ms();
        let outcome = match name {
            "health" => {
                let report = check(&self.args).await;
                let was = self.report.as_ref().map(|r| r.status);
                if report.status == "unhealthy" && was != Some("unhealthy") {
                    tracing::error!(reasons = ?report.reasons, "health: unhealthy");
                    alerts::unhealthy(&report.reasons, report.pending);
                } else if report.status != was.unwrap_or("healthy") {
                    tracing::warn!(status = report.status, reasons = ?report.reasons, "health changed");
                }
                let outcome = format!("ok: {}", report.status);
                self.report = Some(report);
                outcome
            }
            "queue_sweep" => match self.args.queue.cast(QueueMsg::Tick) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error: {e}"),
            },
            "ratelimit_cleanup" => match self.args.limiter_ref.cast(LimiterMsg::Prune) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error: {e}"),
            },
            // Like the health check, the reaper leaves the provider to the breaker's probes while
            // the breaker is not closed; the work waits for the next run.
            "sandbox_reaper"
                if !matches!(self.args.breaker.view().state, "closed" | "disabled") =>
            {
                "skipped: the circuit breaker is not closed".to_string()
            }
            "sandbox_reaper" => {
                let sessions = reap_expired(&self.args).await;
                let a = &self.args;
                let (killed, failed) = reap_orphans(
                    a.provider.as_ref(),
                    &a.instance,
                    &a.store,
                    a.max_lifetime,
                    false,
                )
                .await;
                format!("{sessions}; orphans killed {killed}, failed {failed}")
            }
            "auto_pause" if !matches!(self.args.breaker.view().state, "closed" | "disabled") => {
                "skipped: the circuit breaker is not closed".to_string()
            }
            "auto_pause" => {
                pause_idle(
                    self.args.provider.as_ref(),
                    &self.args.store,
                    self.args.settings.idle_pause_after,
                )
                .await
            }
            "job_cleanup" => {
                match self
                    .args
                    .queue
                    .call(
                        |r| QueueMsg::Cleanup(Some(r)),
                        Some(Duration::from_secs(60)),
                    )
                    .await
                {
                    Ok(ractor::rpc::CallResult::Success(Ok(n))) => format!("ok: removed {n}"),
                    Ok(ractor::rpc::CallResult::Success(Err(e))) => format!("error: {e}"),
                    _ => "error: the queue did not answer".into(),
                }
            }
            _ => "error: unknown task".into(),
        };
        let run = TaskRun {
            at_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            outcome,
        };
        if let Some(t) = self.tasks.iter_mut().find(|t| t.name == name) {
            t.last = Some(run.clone());
            t.runs += 1;
            t.next_due_ms = t.cron.next_after(now_ms());
        }
        if let Err(e) = self.args.store.put_record(&format!("task/{name}"), &run) {
            tracing::error!(error = %e, task = name, "could not record a task run");
        }
        tracing::info!(task = name, duration_ms = run.duration_ms, outcome = %run.outcome, "scheduled task ran");
        run
    }
}

/// Kill this instance's sandboxes that nothing should be using: not a live session, not the
/// sandbox of a running job (unless `at_start`, when nothing runs), or older than
/// `max_lifetime` whatever they are. Bounded in time; returns (killed, failed).
pub async fn reap_orphans(
    provider: &dyn Provider,
    instance: &str,
    store: &Store,
    max_lifetime: Duration,
    at_start: bool,
) -> (usize, usize) {
    let now = now_ms();
    let Ok(Ok(sandboxes)) = tokio::time::timeout(Duration::from_secs(30), provider.list()).await
    else {
        tracing::warn!("could not list sandboxes to reap orphans; will try again");
        return (0, 0);
    };
    let (mut killed, mut failed) = (0, 0);
    for s in sandboxes {
        if s.metadata.get("sandwarden_instance").map(String::as_str) != Some(instance) {
            continue;
        }
        let too_old =
            s.started_at_ms > 0 && s.started_at_ms + max_lifetime.as_millis() as u64 <= now;
        let session = matches!(store.get_sandbox(&s.id), Ok(Some(r)) if matches!(r.state.as_str(), "live" | "pausing" | "paused") && r.expires_at_ms > now);
        let job = s
            .metadata
            .get("sandwarden_job")
            .cloned()
            .unwrap_or_default();
        let running = !at_start
            && matches!(store.get_job(&job), Ok(Some(j)) if j.status == crate::job::JobStatus::Running);
        if !too_old && (session || running) {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(10), provider.kill(&s.id)).await {
            Ok(Ok(())) => {
                tracing::warn!(sandbox = %s.id, job_id = %job, too_old, "killed an orphaned sandbox");
                killed += 1;
            }
            _ => {
                tracing::warn!(sandbox = %s.id, job_id = %job, "could not kill an orphaned sandbox");
                failed += 1;
            }
        }
    }
    (killed, failed)
}

/// Pause kept sandboxes unused for `idle` or longer that no running job uses. Each is marked
/// `pausing` before the provider is asked (a job that wants it meanwhile waits) and `paused`
/// after; a failed pause leaves it live for the next run.
pub async fn pause_idle(provider: &dyn Provider, store: &Store, idle: Duration) -> String {
    if !provider.can_pause() {
        return format!(
            "skipped: provider {} cannot pause sandboxes",
            provider.name()
        );
    }
    let now = now_ms();
    let Ok(all) = store.sandboxes() else {
        return "error: could not read the registry".into();
    };
    let idle_ms = idle.as_millis() as u64;
    let running = |job: &String| matches!(store.get_job(job), Ok(Some(j)) if j.status == crate::job::JobStatus::Running);
    let (mut paused, mut failed) = (0, 0);
    for s in all {
        let candidate = |r: &crate::store::SandboxRecord| {
            matches!(r.state.as_str(), "live" | "pausing")
                && r.expires_at_ms > now
                && r.last_used_ms + idle_ms <= now
                && !r.in_use_by.iter().any(running)
        };
        if !candidate(&s) {
            continue;
        }
        let taken = store.update_sandbox(&s.id, |r| {
            candidate(r).then(|| crate::store::SandboxRecord {
                state: "pausing".into(),
                // Jobs listed here are not running: left by an interrupted run.
                in_use_by: Vec::new(),
                ..r.clone()
            })
        });
        if !matches!(&taken, Ok(Some(r)) if r.state == "pausing") {
            continue;
        }
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, provider.pause(&s.id)).await;
        let state = match &outcome {
            Ok(Ok(())) => "paused",
            Ok(Err(e)) if e.sandbox_gone() => "killed",
            _ => "live",
        };
        let _ = store.update_sandbox(&s.id, |r| {
            (r.state == "pausing").then(|| crate::store::SandboxRecord {
                state: state.into(),
                ..r.clone()
            })
        });
        match outcome {
            Ok(Ok(())) => {
                tracing::info!(sandbox = %s.id, owner = %s.owner, idle_ms = now - s.last_used_ms, "paused an idle sandbox");
                paused += 1;
            }
            Ok(Err(e)) => {
                tracing::warn!(sandbox = %s.id, error = %e, "could not pause an idle sandbox");
                failed += 1;
            }
            Err(_) => {
                tracing::warn!(sandbox = %s.id, "pausing an idle sandbox timed out");
                failed += 1;
            }
        }
    }
    if failed == 0 {
        format!("ok: paused {paused}")
    } else {
        format!("error: paused {paused}, {failed} failed")
    }
}

/// Kill kept sandboxes past their lifetime and mark them killed in the registry.
async fn reap_expired(a: &HealthArgs) -> String {
    let now = now_ms();
    let Ok(all) = a.store.sandboxes() else {
        return "error: could not read the registry".into();
    };
    let (mut killed, mut failed) = (0, 0);
    for mut s in all
        .into_iter()
        .filter(|s| matches!(s.state.as_str(), "live" | "paused") && s.expires_at_ms <= now)
    {
        match tokio::time::timeout(PROBE_TIMEOUT, a.provider.kill(&s.id)).await {
            Ok(Ok(())) => {
                s.state = "killed".into();
                let _ = a.store.put_sandbox(&s);
                tracing::info!(sandbox = %s.id, owner = %s.owner, "killed a kept sandbox past its lifetime");
                killed += 1;
            }
            _ => failed += 1,
        }
    }
    if failed == 0 {
        format!("ok: killed {killed}")
    } else {
        format!("error: killed {killed}, {failed} failed")
    }
}

/// One health check: breaker, rate usage, queue depth and age, pool liveness, provider.
async fn check(a: &HealthArgs) -> HealthReport {
    let now = now_ms();
    let mut unhealthy = Vec::new();
    let mut degraded = Vec::new();

    let breaker = a.breaker.view();
    match breaker.state {
        "open" | "forced_open" => unhealthy.push(format!(
            "circuit breaker is {} ({} consecutive failures)",
            breaker.state.replace('_', " "),
            breaker.consecutive_failures
        )),
        "half_open" => degraded.push("circuit breaker is probing the provider".into()),
        _ => {}
    }
    if let Some(limits) = a.limiter.view().await {
        for op in limits.operations {
            if matches!(op.state, "alert" | "blocked") {
                degraded.push(format!(
                    "{} at {}% of its limit",
                    op.operation,
                    op.percent_used
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "?".into())
                ));
            }
            if op.cooldown_until_ms.is_some_and(|t| t > now) {
                degraded.push(format!("{} cooling down after a 429", op.operation));
            }
        }
    }
    let census = a
        .store
        .census(now.saturating_sub(60_000))
        .unwrap_or_default();
    let pending = census.by_status.get("pending").copied().unwrap_or(0);
    if pending > a.settings.max_pending {
        degraded.push(format!(
            "{pending} jobs pending (more than {})",
            a.settings.max_pending
        ));
    }
    let oldest = census.oldest_pending_ms.map(|t| now.saturating_sub(t));
    if let Some(age) = oldest.filter(|age| *age > a.settings.max_pending_age.as_millis() as u64) {
        degraded.push(format!(
            "oldest pending job waited {}",
            humantime::format_duration(Duration::from_secs(age / 1000))
        ));
    }
    // A worker that stopped answering (on one job far past its time bound) is replaced here.
    if let Ok(ractor::rpc::CallResult::Success(jobs)) =
        a.pool.call(PoolMsg::ReplaceHung, Some(PROBE_TIMEOUT)).await
        && !jobs.is_empty()
    {
        degraded.push(format!(
            "replaced {} hung worker(s); their jobs run again: {}",
            jobs.len(),
            jobs.join(", ")
        ));
    }
    let workers = match a.pool.call(PoolMsg::Size, Some(PROBE_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(n)) => Some(n),
        _ => None,
    };
    match workers {
        None => unhealthy.push("the worker pool does not answer".into()),
        Some(n) if n < a.workers => degraded.push(format!("{n} of {} workers alive", a.workers)),
        _ => {}
    }
    // While the breaker is not closed it owns contact with the provider (its probes are the
    // reachability check, and its state is already a reason above); a call from here would be
    // one more than the breaker allows.
    let breaker_closed = matches!(breaker.state, "closed" | "disabled");
    let reachable = breaker_closed
        && matches!(
            tokio::time::timeout(PROBE_TIMEOUT, a.provider.list()).await,
            Ok(Ok(_))
        );
    if !reachable && breaker_closed {
        unhealthy.push(format!("provider {} is unreachable", a.provider.name()));
    }
    let status = if !unhealthy.is_empty() {
        "unhealthy"
    } else if !degraded.is_empty() {
        "degraded"
    } else {
        "healthy"
    };
    unhealthy.extend(degraded);
    HealthReport {
        status,
        reasons: unhealthy,
        at_ms: now,
        breaker: breaker.state,
        pending,
        oldest_pending_age_ms: oldest,
        workers_alive: workers,
        workers_configured: a.workers,
        provider_reachable: reachable,
    }
}
