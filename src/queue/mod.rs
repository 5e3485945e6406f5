//! The `QueueActor`: owns the job queue in the store, accepts submissions, hands due jobs to
//! idle workers, and records how each run ended.
//!
//! The actor is the only writer of job state; workers report back with `Finished` and the
//! pool reports a dead worker with `WorkerLost`. It never waits for an fsync inside a handler:
//! a submission is written, then the caller waits on the store's group commit before it
//! acknowledges the client. On start it reclaims every job an earlier process left running
//! (at-least-once: the interrupted job runs again, its attempt recorded as `interrupted`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::breaker::BreakerView;
use crate::clock::now_ms;
use crate::job::{Attempt, Job, JobError, JobSpec, JobStatus};
use crate::notify::NotifierLink;
use crate::pool::WorkerMsg;
use crate::store::{Store, StoreError, Ticket};

/// A job change that someone may be waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub id: String,
    pub user_id: String,
    pub status: JobStatus,
    pub at_ms: u64,
}

/// A job handed to a worker.
pub struct Assignment {
    pub job: Job,
    pub cancel: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job {0} was not found")]
    NotFound(String),
    #[error("job {id} is {status} and cannot be cancelled")]
    NotCancellable { id: String, status: &'static str },
    #[error("job {id} is {status}; only dead or failed jobs can be retried")]
    NotRetryable { id: String, status: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reply to a submission: the job, and whether it was new (false for an idempotent repeat).
pub struct Submitted {
    pub job: Job,
    pub created: bool,
    pub ticket: Ticket,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub ready: usize,
    /// Jobs claimed by a worker (stored as running). Equal to `running` while the queue runs;
    /// kept as its own figure in the API and the dashboard.
    pub leased: usize,
    pub idle_workers: usize,
    pub running: usize,
    pub paused: bool,
    /// While the queue ramps up after a recovery: how many jobs may run at once.
    pub ramp_limit: Option<usize>,
}

pub enum QueueMsg {
    Submit(Box<JobSpec>, RpcReplyPort<Result<Submitted, QueueError>>),
    Cancel(String, RpcReplyPort<Result<Job, QueueError>>),
    WorkerReady(ActorRef<WorkerMsg>),
    /// A worker's run ended; the worker is ready for the next job (one message, not two, on
    /// the queue's busiest path).
    Finished {
        worker: ActorRef<WorkerMsg>,
        job: Box<Job>,
    },
    /// A worker died or was replaced; the reason goes into its job's attempt.
    WorkerLost(ActorId, &'static str),
    /// Re-check the ready queue (scheduled jobs coming due).
    Tick,
    Stats(RpcReplyPort<QueueStats>),
    /// Stop (true) or restart (false) handing jobs to workers; running jobs go on.
    SetPaused(bool, RpcReplyPort<bool>),
    /// Run a dead (or failed) job again, with a fresh budget of attempts.
    Retry(String, RpcReplyPort<Result<Job, QueueError>>),
    /// Remove ended jobs older than the retention; replies how many.
    Cleanup(Option<RpcReplyPort<Result<usize, QueueError>>>),
}

const PAUSED_KEY: &str = "queue/paused";

pub struct QueueArgs {
    pub store: Store,
    /// Ended jobs older than this are removed by `Cleanup`, at most `cleanup_batch` a run.
    pub retention: Duration,
    pub cleanup_batch: usize,
    /// Workers in the pool: the end of a ramp-up.
    pub workers: usize,
    pub events: broadcast::Sender<JobEvent>,
    pub max_attempts: u32,
    pub breaker: watch::Receiver<BreakerView>,
    pub notifier: NotifierLink,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Jobs allowed to run at once while the breaker probes.
    pub probes: usize,
}

pub struct QueueState {
    store: Store,
    events: broadcast::Sender<JobEvent>,
    max_attempts: u32,
    breaker: watch::Receiver<BreakerView>,
    notifier: NotifierLink,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    probes: usize,
    idle: VecDeque<ActorRef<WorkerMsg>>,
    /// worker -> (job seq, cancel token)
    running: HashMap<ActorId, (u64, CancellationToken)>,
    stop: CancellationToken,
    paused: bool,
    /// Dispatch limit while ramping up after a recovery.
    ramp: Option<usize>,
    was_closed: bool,
    ramp_successes: usize,
    workers: usize,
    retention: Duration,
    cleanup_batch: usize,
}

pub struct QueueActor;

impl Actor for QueueActor {
    type Msg = QueueMsg;
    type State = QueueState;
    type Arguments = QueueArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<QueueMsg>,
        args: QueueArgs,
    ) -> Result<QueueState, ActorProcessingErr> {
        let paused = args.store.get_record::<bool>(PAUSED_KEY)?.unwrap_or(false);
        let state = QueueState {
            store: args.store,
            events: args.events,
            max_attempts: args.max_attempts,
            breaker: args.breaker,
            notifier: args.notifier,
            metrics: args.metrics,
            probes: args.probes,
            idle: VecDeque::new(),
            running: HashMap::new(),
            stop: CancellationToken::new(),
            paused,
            retention: args.retention,
            cleanup_batch: args.cleanup_batch,
            ramp: None,
            was_closed: true,
            ramp_successes: 0,
            workers: args.workers,
        };
        let recovery = state.store.recover()?;
        if recovery.fixed > 0 {
            tracing::warn!(
                entries = recovery.fixed,
                "the store was left mid-change (a crash or a failed write); finished or undid it"
            );
        }
        for why in &recovery.corrupt {
            tracing::error!(record = %why, "a stored job cannot be read; it is left as it is");
        }
        if !recovery.running.is_empty() {
            tracing::warn!(
                count = recovery.running.len(),
                "reclaiming jobs interrupted by a previous stop"
            );
        }
        for seq in recovery.running {
            state.interrupted(seq, "the service stopped while it ran")?;
        }
        state.store.flush().await?;
        // A tick for scheduled jobs coming due, and a wake-up whenever the breaker changes so
        // that recovery drains at once. Both end with the actor (`post_stop`): a task that
        // outlived it would keep its references, and through them the store, alive.
        let mut watch = state.breaker.clone();
        let me = myself.clone();
        let stop = state.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => QueueMsg::Tick,
                    changed = watch.changed() => if changed.is_err() { break } else { QueueMsg::Tick },
                };
                if me.cast(msg).is_err() {
                    break;
                }
            }
        });
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<QueueMsg>,
        state: &mut QueueState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<QueueMsg>,
        msg: QueueMsg,
        state: &mut QueueState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            QueueMsg::Submit(spec, reply) => {
                let result = state.submit(*spec);
                let _ = reply.send(result);
            }
            QueueMsg::Cancel(id, reply) => {
                let _ = reply.send(state.cancel(&id));
            }
            QueueMsg::WorkerReady(worker) => state.ready(worker),
            QueueMsg::Finished { worker, job } => {
                state.finished(worker.get_id(), *job)?;
                state.ready(worker);
            }
            QueueMsg::WorkerLost(worker, why) => {
                state.idle.retain(|w| w.get_id() != worker);
                if let Some((seq, token)) = state.running.remove(&worker) {
                    token.cancel();
                    state.interrupted(seq, why)?;
                }
            }
            QueueMsg::Tick => {
                // A breaker that was not closed and now is: ramp up from the probe count.
                let closed = state.breaker_closed();
                if closed && !state.was_closed {
                    state.ramp = Some(state.probes.max(1)).filter(|n| *n < state.workers);
                    state.ramp_successes = 0;
                    tracing::info!(limit = ?state.ramp, "provider recovered; ramping up dispatch");
                }
                state.was_closed = closed;
            }
            QueueMsg::Stats(reply) => {
                let _ = reply.send(QueueStats {
                    ready: state.store.ready_len(),
                    leased: state.running.len(),
                    idle_workers: state.idle.len(),
                    running: state.running.len(),
                    paused: state.paused,
                    ramp_limit: state.ramp,
                });
            }
            QueueMsg::SetPaused(paused, reply) => {
                state.paused = paused;
                state.store.put_record(PAUSED_KEY, &paused)?;
                tracing::warn!(
                    paused,
                    "dispatch {}",
                    if paused { "paused" } else { "resumed" }
                );
                let _ = reply.send(paused);
            }
            QueueMsg::Retry(id, reply) => {
                let _ = reply.send(state.retry(&id));
            }
            QueueMsg::Cleanup(reply) => {
                let result = state.cleanup();
                match reply {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => result.map(|_| ())?,
                }
            }
        }
        state.dispatch()?;
        Ok(())
    }
}

impl QueueState {
    fn ready(&mut self, worker: ActorRef<WorkerMsg>) {
        if !self.idle.iter().any(|w| w.get_id() == worker.get_id()) {
            self.idle.push_back(worker);
        }
    }

    fn breaker_closed(&self) -> bool {
        matches!(self.breaker.borrow().state, "closed" | "disabled")
    }

    fn emit(&self, job: &Job) {
        let _ = self.events.send(JobEvent {
            id: job.id.clone(),
            user_id: job.spec.user_id.clone(),
            status: job.status,
            at_ms: job.updated_at_ms,
        });
        self.notifier.job(job);
        self.metrics.inc(
            "sandwarden_job_transitions_total",
            vec![("status", job.status.as_str().into())],
        );
    }

    fn submit(&mut self, spec: JobSpec) -> Result<Submitted, QueueError> {
        let seq = self.store.next_seq()?;
        let now = now_ms();
        let mut job = Job::new(seq, spec, now);
        // Accepted while the provider is down: the user hears why it waits.
        if self.breaker.borrow().refuses(now) {
            job.reason = Some("provider unavailable, waiting for recovery".into());
        } else if self.paused {
            job.reason = Some("dispatch is paused by an admin".into());
        }
        let existing = self.store.insert_job(&job)?;
        let ticket = self.store.ticket();
        if let Some(first) = existing {
            return Ok(Submitted {
                job: first,
                created: false,
                ticket,
            });
        }
        tracing::info!(job_id = %job.id, user_id = %job.spec.user_id, priority = ?job.spec.priority, "job accepted");
        self.emit(&job);
        Ok(Submitted {
            job,
            created: true,
            ticket,
        })
    }

    fn cancel(&mut self, id: &str) -> Result<Job, QueueError> {
        let mut job = self
            .store
            .get_job(id)?
            .ok_or_else(|| QueueError::NotFound(id.into()))?;
        match job.status {
            JobStatus::Pending => {
                let key = job.ready_key();
                let now = now_ms();
                job.status = JobStatus::Cancelled;
                job.reason = Some("cancelled by request".into());
                job.updated_at_ms = now;
                job.finished_at_ms = Some(now);
                if !self.store.unqueue(&job, key)? {
                    return Err(QueueError::NotCancellable {
                        id: id.into(),
                        status: "running",
                    });
                }
            }
            JobStatus::Running => {
                // The worker sees the token, kills the command and reports `cancelled`.
                let token = self
                    .running
                    .values()
                    .find(|(seq, _)| *seq == job.seq)
                    .map(|(_, t)| t.clone());
                match token {
                    Some(t) => t.cancel(),
                    None => {
                        return Err(QueueError::NotCancellable {
                            id: id.into(),
                            status: "running",
                        });
                    }
                }
                return Ok(job);
            }
            other => {
                return Err(QueueError::NotCancellable {
                    id: id.into(),
                    status: other.as_str(),
                });
            }
        }
        tracing::info!(job_id = %job.id, "job cancelled");
        self.emit(&job);
        Ok(job)
    }

    fn finished(&mut self, worker: ActorId, mut job: Job) -> Result<(), QueueError> {
        let Some((seq, _)) = self.running.remove(&worker) else {
            // A report from a worker the queue no longer tracks (it was declared lost): the job
            // was already requeued, so this late result is dropped.
            tracing::warn!(job_id = %job.id, "dropping a late result from a lost worker");
            return Ok(());
        };
        debug_assert_eq!(seq, job.seq);
        // After a recovery the limit doubles each time as many jobs have succeeded as it
        // allows, until all workers may run: concurrency grows as calls succeed instead of the
        // whole backlog rushing a provider that has just come back.
        if let Some(limit) = self.ramp
            && job.status == JobStatus::Completed
        {
            self.ramp_successes += 1;
            if self.ramp_successes >= limit {
                self.ramp_successes = 0;
                let next = limit * 2;
                self.ramp = (next < self.workers).then_some(next);
                if self.ramp.is_none() {
                    tracing::info!("ramp-up after recovery done");
                }
            }
        }
        job.updated_at_ms = now_ms();
        self.store.release(&job)?;
        tracing::info!(
            job_id = %job.id,
            status = job.status.as_str(),
            attempts = job.attempts.len(),
            error_category = job.error.as_ref().map(|e| e.category.as_str()).unwrap_or(""),
            "job run ended"
        );
        self.emit(&job);
        Ok(())
    }

    /// A running job lost its worker or its process: run it again, or fail it when it has
    /// been interrupted as often as it may be.
    fn interrupted(&self, seq: u64, why: &str) -> Result<(), QueueError> {
        let Some(mut job) = self.store.get_job_by_seq(seq)? else {
            return Ok(());
        };
        let now = now_ms();
        if let Some(a) = job.attempts.last_mut()
            && a.outcome.is_none()
        {
            a.ended_at_ms = Some(now);
            a.outcome = Some("interrupted".into());
            a.error = Some(why.into());
        }
        job.updated_at_ms = now;
        if job.counted_attempts() as u32 >= self.max_attempts {
            job.status = JobStatus::Dead;
            job.finished_at_ms = Some(now);
            job.error = Some(JobError {
                category: "interrupted".into(),
                message: format!("interrupted {} times; last: {why}", job.attempts.len()),
                step: None,
            });
        } else {
            job.status = JobStatus::Pending;
            job.reason = Some(format!("requeued: {why}"));
        }
        self.store.release(&job)?;
        tracing::warn!(job_id = %job.id, status = job.status.as_str(), why, "job run interrupted");
        self.emit(&job);
        Ok(())
    }

    fn retry(&mut self, id: &str) -> Result<Job, QueueError> {
        let mut job = self
            .store
            .get_job(id)?
            .ok_or_else(|| QueueError::NotFound(id.into()))?;
        if !matches!(job.status, JobStatus::Dead | JobStatus::Failed) {
            return Err(QueueError::NotRetryable {
                id: id.into(),
                status: job.status.as_str(),
            });
        }
        let now = now_ms();
        job.status = JobStatus::Pending;
        job.reason = Some("retried by an admin".into());
        job.attempts_counted_from = job.attempts.len();
        job.run_at_ms = now;
        job.updated_at_ms = now;
        job.finished_at_ms = None;
        job.error = None;
        self.store.release(&job)?;
        tracing::info!(job_id = %job.id, "job retried by an admin");
        self.emit(&job);
        Ok(job)
    }

    fn cleanup(&mut self) -> Result<usize, QueueError> {
        let cutoff = now_ms().saturating_sub(self.retention.as_millis() as u64);
        let removed = self.store.remove_ended_before(cutoff, self.cleanup_batch)?;
        tracing::info!(removed, "removed ended jobs past their retention");
        Ok(removed)
    }

    fn dispatch(&mut self) -> Result<(), QueueError> {
        if self.paused {
            return Ok(());
        }
        while let Some(worker) = self.idle.front().cloned() {
            let now = now_ms();
            {
                let view = self.breaker.borrow();
                if view.refuses(now) || (view.probing() && self.running.len() >= self.probes) {
                    break;
                }
                if self.ramp.is_some_and(|limit| self.running.len() >= limit) {
                    break;
                }
            }
            let Some(entry) = self.store.peek_ready(now)? else {
                break;
            };
            let claimed = self.store.claim(entry, |job| {
                job.status = JobStatus::Running;
                job.reason = None;
                job.updated_at_ms = now;
                job.started_at_ms.get_or_insert(now);
                job.attempts.push(Attempt {
                    number: job.attempts.len() as u32 + 1,
                    started_at_ms: now,
                    ended_at_ms: None,
                    outcome: None,
                    error_category: None,
                    error: None,
                });
            })?;
            let Some(job) = claimed else { continue };
            self.idle.pop_front();
            let cancel = CancellationToken::new();
            tracing::info!(job_id = %job.id, attempt = job.attempts.len(), "job started");
            self.emit(&job);
            self.running
                .insert(worker.get_id(), (job.seq, cancel.clone()));
            if let Err(e) = worker.cast(WorkerMsg::Run(Box::new(Assignment { job, cancel }))) {
                // The worker died between its last report and now; the pool will report it lost.
                tracing::warn!(error = %e, "could not hand a job to a worker");
            }
        }
        Ok(())
    }
}
