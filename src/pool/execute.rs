//! Running one job: create the sandbox, run each step, clean up, and write the outcome into
//! the job record. Every provider call goes through `call`, which applies the step deadline,
//! the retry policy and the circuit breaker; nothing else here talks to the provider.
//!
//! The outcome is one of: completed; failed (a permanent error, a step that exited non-zero,
//! or retries exhausted on the last allowed attempt); cancelled; or pending again (requeued
//! with a delay) when the provider is unavailable, so that an outage never fails a job.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::breaker::BreakerLink;
use crate::clock::now_ms;
use crate::config::Protection;
use crate::job::{Job, JobError, JobResult, JobStatus, Step, StepResult};
use crate::provider::{ErrorCategory, Provider, ProviderError, RunSpec, SandboxSpec};
use crate::ratelimit::LimiterLink;
use crate::ratelimit::policy::Operation;
use crate::retry::{RetryDecision, RetryPolicy};
use crate::store::SandboxRecord;

/// What every worker shares.
pub struct WorkerContext {
    pub provider: Arc<dyn Provider>,
    pub retry: RetryPolicy,
    pub breaker: BreakerLink,
    pub limiter: LimiterLink,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub store: crate::store::Store,
    pub instance: String,
    pub max_attempts: u32,
    pub max_output: usize,
    pub max_read: usize,
    pub create_timeout: Duration,
    pub write_timeout: Duration,
    pub faults: Arc<crate::provider::faults::FaultControl>,
    /// Anything but `Full`: no limiter waits and no holding of jobs (a baseline).
    pub protection: crate::config::Protection,
}

/// Further health checks of a new sandbox after one that failed in passing (5xx, timeout).
const HEALTH_RETRIES: u32 = 2;

/// Time to kill a job's sandbox at its end (and to look for earlier attempts' sandboxes).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

impl WorkerContext {
    /// The longest a run of `job` can take when nothing is stuck: getting its sandbox (a look
    /// for earlier attempts' sandboxes, or the wait for a pause under way on its kept sandbox;
    /// then a create or a resume), every step's deadline, and the clean-up. Each provider call, its retries and its limiter waits fit in its deadline.
    pub fn time_bound(&self, job: &Job) -> Duration {
        let steps: Duration = job
            .spec
            .steps
            .iter()
            .map(|s| match s {
                Step::WriteFile { .. } => self.write_timeout,
                Step::Run { timeout, .. } | Step::ReadFile { timeout, .. } => *timeout,
            })
            .sum();
        // A job in a kept sandbox may first wait out a pause under way.
        let pause_wait = if job.spec.sandbox_id.is_some() {
            PAUSE_WAIT
        } else {
            Duration::ZERO
        };
        CLEANUP_TIMEOUT + pause_wait + self.create_timeout + steps + CLEANUP_TIMEOUT
    }
}

/// Limiter waits up to this long are slept in the worker instead of requeueing the job.
const SHORT_WAIT: Duration = Duration::from_secs(2);

/// Why a protected call did not produce a value.
#[derive(Debug)]
pub enum CallError {
    /// The provider failed and the retry policy gave up.
    Failed(ProviderError),
    /// The breaker is open: the provider is considered down.
    Unavailable {
        last: Option<ProviderError>,
    },
    /// The rate limiter holds the call until `until_ms`.
    Limited {
        until_ms: u64,
        reason: String,
    },
    Cancelled,
}

/// Run `job` to an outcome, writing it into the record.
pub async fn run_job(ctx: &WorkerContext, job: &mut Job, cancel: &CancellationToken) {
    if ctx.faults.take_stall() {
        tracing::warn!(job_id = %job.id, "fault injection: this worker stalls");
        std::future::pending::<()>().await;
    }
    let mut result = JobResult::default();
    let outcome = run_steps(ctx, job, cancel, &mut result).await;
    let now = now_ms();
    job.updated_at_ms = now;
    let attempt_no = job.attempts.len();
    let (status, error, reason, attempt_outcome) = match outcome {
        Ok(()) => (JobStatus::Completed, None, None, "completed"),
        Err(StepFailure::Cancelled) => (
            JobStatus::Cancelled,
            None,
            Some("cancelled by request".to_string()),
            "cancelled",
        ),
        Err(StepFailure::Failed(err)) => (JobStatus::Failed, Some(err), None, "failed"),
        // A baseline without protection holds nothing: the failure is the job's.
        Err(StepFailure::Unavailable { err, .. }) if ctx.protection != Protection::Full => {
            (JobStatus::Failed, Some(err), None, "failed")
        }
        Err(StepFailure::Unavailable {
            retry_at_ms,
            err,
            counted,
        }) => {
            // The attempt in progress is counted by `counted_attempts` until it is marked.
            let used = job.counted_attempts() - usize::from(!counted);
            if !counted || (used as u32) < ctx.max_attempts {
                let delay_from_policy = ctx.retry.backoff(attempt_no as u32, rand::random());
                job.run_at_ms = retry_at_ms
                    .unwrap_or(now + delay_from_policy.as_millis() as u64)
                    .max(now);
                let reason = if err.category == "rate_limited" {
                    err.message.clone()
                } else {
                    format!(
                        "provider unavailable, waiting for recovery: {}",
                        err.message
                    )
                };
                let outcome = if counted { "requeued" } else { "deferred" };
                (JobStatus::Pending, Some(err), Some(reason), outcome)
            } else {
                // Not the job's fault, but it has used its runs: a dead letter an admin can retry.
                (JobStatus::Dead, Some(err), None, "failed")
            }
        }
    };
    if let Some(a) = job.attempts.last_mut() {
        a.ended_at_ms = Some(now);
        a.outcome = Some(attempt_outcome.to_string());
        a.error_category = error.as_ref().map(|e| e.category.clone());
        a.error = error.as_ref().map(|e| e.message.clone());
    }
    job.status = status;
    job.reason = reason;
    if status == JobStatus::Pending {
        // A requeued job keeps the results of the steps it finished, for the record, but
        // runs again from the start in a fresh sandbox.
        job.result = Some(result);
        job.error = None;
    } else {
        job.finished_at_ms = Some(now);
        job.result = Some(result);
        job.error = error;
    }
}

enum StepFailure {
    Failed(JobError),
    /// Not the job's fault: run it again later. `counted` runs use up `max_attempts`;
    /// deferrals by the breaker or the limiter do not, so an outage never fails a job.
    Unavailable {
        retry_at_ms: Option<u64>,
        err: JobError,
        counted: bool,
    },
    Cancelled,
}

fn job_error(e: &ProviderError, step: Option<usize>) -> JobError {
    JobError {
        category: e.category().as_str().into(),
        message: e.message().into(),
        step,
    }
}

fn classify(e: CallError, step: Option<usize>) -> StepFailure {
    match e {
        CallError::Cancelled => StepFailure::Cancelled,
        CallError::Failed(e) if e.is_transient() || e.category() == ErrorCategory::RateLimited => {
            StepFailure::Unavailable {
                retry_at_ms: None,
                err: job_error(&e, step),
                counted: true,
            }
        }
        CallError::Failed(e) => StepFailure::Failed(job_error(&e, step)),
        CallError::Limited { until_ms, reason } => StepFailure::Unavailable {
            retry_at_ms: Some(until_ms),
            err: JobError {
                category: "rate_limited".into(),
                message: format!("waiting for capacity: {reason}"),
                step,
            },
            counted: false,
        },
        // The breaker's probe time is not used as the job's run time: the queue holds every
        // job while the breaker refuses and releases them the moment it closes (a reset, or a
        // probe that succeeded), which a future run time would delay.
        CallError::Unavailable { last } => {
            let message = match last {
                Some(e) => format!("circuit breaker is open; last error: {}", e.message()),
                None => "circuit breaker is open".to_string(),
            };
            StepFailure::Unavailable {
                retry_at_ms: Some(crate::clock::now_ms()),
                err: JobError {
                    category: "unavailable".into(),
                    message,
                    step,
                },
                counted: false,
            }
        }
    }
}

async fn run_steps(
    ctx: &WorkerContext,
    job: &Job,
    cancel: &CancellationToken,
    result: &mut JobResult,
) -> Result<(), StepFailure> {
    let now = now_ms();
    let sandbox = match &job.spec.sandbox_id {
        Some(id) => take_session(ctx, job, id, cancel).await?,
        None => create_sandbox(ctx, job, cancel)
            .await
            .map_err(|e| classify(e, None))?,
    };
    result.sandbox_id = Some(sandbox.clone());
    let outcome = run_each(ctx, job, &sandbox, cancel, result).await;
    let keep = job.spec.sandbox.keep && outcome.is_ok();
    if keep {
        let used_ms = now_ms();
        let updated = ctx.store.update_sandbox(&sandbox, |p| {
            let mut next = p.clone();
            next.last_job = job.id.clone();
            next.last_used_ms = used_ms;
            next.in_use_by.retain(|j| *j != job.id);
            Some(next)
        });
        let registered = match updated {
            Ok(Some(_)) => Ok(()),
            // A new session: only this job knows the sandbox yet.
            Ok(None) => ctx.store.put_sandbox(&SandboxRecord {
                id: sandbox.clone(),
                owner: job.spec.user_id.clone(),
                created_by: job.id.clone(),
                last_job: job.id.clone(),
                created_at_ms: now,
                last_used_ms: used_ms,
                // A session lives for the lifetime its first job asked for.
                expires_at_ms: now + job.spec.sandbox.timeout.as_millis() as u64,
                state: "live".into(),
                in_use_by: Vec::new(),
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = registered {
            tracing::error!(error = %e, sandbox = %sandbox, "could not record a kept sandbox");
        }
    } else {
        // Cleaning up is best effort but retried; a sandbox that cannot be killed now is left
        // to the provider's own timeout and the orphan reaper.
        let kill = call(
            ctx,
            &job.spec.user_id,
            Operation::Kill,
            CLEANUP_TIMEOUT,
            &CancellationToken::new(),
            |_| ctx.provider.kill(&sandbox),
        )
        .await;
        if let Err(e) = kill {
            tracing::warn!(job_id = %job.id, sandbox = %sandbox, error = ?e, "could not kill sandbox");
        }
        let _ = ctx.store.update_sandbox(&sandbox, |p| {
            let mut next = p.clone();
            next.state = "killed".into();
            next.last_job = job.id.clone();
            next.in_use_by.retain(|j| *j != job.id);
            Some(next)
        });
        result.sandbox_id = None;
    }
    outcome
}

async fn run_each(
    ctx: &WorkerContext,
    job: &Job,
    sandbox: &str,
    cancel: &CancellationToken,
    result: &mut JobResult,
) -> Result<(), StepFailure> {
    for (index, step) in job.spec.steps.iter().enumerate() {
        let started = tokio::time::Instant::now();
        let mut out = StepResult {
            index,
            kind: step.kind().into(),
            ..Default::default()
        };
        match step {
            Step::WriteFile { path, content } => {
                call(
                    ctx,
                    &job.spec.user_id,
                    Operation::Write,
                    ctx.write_timeout,
                    cancel,
                    |_| ctx.provider.write_file(sandbox, path, content.as_bytes()),
                )
                .await
                .map_err(|e| classify(e, Some(index)))?;
            }
            Step::Run { cmd, timeout } => {
                let output = call(
                    ctx,
                    &job.spec.user_id,
                    Operation::Run,
                    *timeout,
                    cancel,
                    |remaining| {
                        let spec = RunSpec {
                            cmd: cmd.clone(),
                            timeout: remaining,
                            env: job.spec.sandbox.env.clone(),
                            max_output: ctx.max_output,
                        };
                        async move { ctx.provider.run(sandbox, &spec).await }
                    },
                )
                .await
                .map_err(|e| match e {
                    // The command outran its own timeout: the job's doing, not the provider's,
                    // so running it again later would only time out again.
                    CallError::Failed(pe) if pe.category() == ErrorCategory::Timeout => {
                        StepFailure::Failed(job_error(&pe, Some(index)))
                    }
                    other => classify(other, Some(index)),
                })?;
                out.stdout = Some(output.stdout);
                out.stderr = Some(output.stderr);
                out.exit_code = Some(output.exit_code);
                out.truncated = output.truncated;
                if output.exit_code != 0 {
                    out.duration_ms = started.elapsed().as_millis() as u64;
                    result.steps.push(out);
                    return Err(StepFailure::Failed(JobError {
                        category: "command_failed".into(),
                        message: format!("step {index} exited with code {}", output.exit_code),
                        step: Some(index),
                    }));
                }
            }
            Step::ReadFile { path, timeout } => {
                let bytes = call(
                    ctx,
                    &job.spec.user_id,
                    Operation::Read,
                    *timeout,
                    cancel,
                    |_| ctx.provider.read_file(sandbox, path, ctx.max_read),
                )
                .await
                .map_err(|e| classify(e, Some(index)))?;
                out.content = Some(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        out.duration_ms = started.elapsed().as_millis() as u64;
        result.steps.push(out);
    }
    Ok(())
}

/// How long a job waits for a pause under way on its session to end before giving up.
const PAUSE_WAIT: Duration = Duration::from_secs(30);

/// Take the kept sandbox a job asked to run in: it must be live or paused, unexpired and the
/// user's own. The job is recorded as using it (so that it is not paused under the job), a
/// pause under way is waited out, and a paused sandbox is resumed.
async fn take_session(
    ctx: &WorkerContext,
    job: &Job,
    id: &str,
    cancel: &CancellationToken,
) -> Result<String, StepFailure> {
    let refuse = |why: String| {
        StepFailure::Failed(JobError {
            category: "permanent".into(),
            message: why,
            step: None,
        })
    };
    let waiting_since = tokio::time::Instant::now();
    let record = loop {
        let now = now_ms();
        let mut refusal = None;
        let mut pausing = false;
        let taken = ctx.store.update_sandbox(id, |r| {
            (refusal, pausing) = (None, false);
            if r.owner != job.spec.user_id {
                refusal = Some(format!("sandbox {id} belongs to another user"));
                return None;
            }
            match r.state.as_str() {
                _ if r.expires_at_ms <= now => {
                    refusal = Some(format!("sandbox {id} is no longer live"));
                    None
                }
                "live" | "paused" => {
                    let mut next = r.clone();
                    next.in_use_by.retain(|j| *j != job.id);
                    next.in_use_by.push(job.id.clone());
                    Some(next)
                }
                "pausing" => {
                    pausing = true;
                    None
                }
                _ => {
                    refusal = Some(format!("sandbox {id} is no longer live"));
                    None
                }
            }
        });
        let record = match taken {
            Ok(Some(r)) => r,
            Ok(None) => return Err(refuse(format!("sandbox {id} is not a kept sandbox"))),
            Err(e) => return Err(refuse(format!("sandbox {id}: {e}"))),
        };
        if let Some(why) = refusal {
            return Err(refuse(why));
        }
        if !pausing {
            break record;
        }
        if waiting_since.elapsed() >= PAUSE_WAIT {
            return Err(StepFailure::Unavailable {
                retry_at_ms: Some(now + PAUSE_WAIT.as_millis() as u64),
                err: JobError {
                    category: "transient".into(),
                    message: format!("sandbox {id} is still being paused"),
                    step: None,
                },
                counted: false,
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(StepFailure::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    if record.state == "paused" {
        let lifetime = Duration::from_millis(record.expires_at_ms.saturating_sub(now_ms()));
        let resumed = call(
            ctx,
            &job.spec.user_id,
            Operation::Resume,
            ctx.create_timeout,
            cancel,
            |_| ctx.provider.resume(id, lifetime),
        )
        .await;
        if let Err(e) = resumed {
            release_session(ctx, job, id);
            return Err(classify(e, None));
        }
        let _ = ctx.store.update_sandbox(id, |r| {
            (r.state == "paused").then(|| SandboxRecord {
                state: "live".into(),
                ..r.clone()
            })
        });
        tracing::info!(job_id = %job.id, sandbox = %id, "resumed a paused sandbox");
    }
    Ok(record.id)
}

/// The job no longer uses the kept sandbox `id`.
fn release_session(ctx: &WorkerContext, job: &Job, id: &str) {
    let _ = ctx.store.update_sandbox(id, |r| {
        r.in_use_by.contains(&job.id).then(|| {
            let mut next = r.clone();
            next.in_use_by.retain(|j| *j != job.id);
            next
        })
    });
}

/// Create the job's sandbox. A create that failed in a way that may still have made a
/// sandbox (5xx, timeout) is followed by a look for a sandbox tagged with this job and
/// attempt before it is repeated, so retries cannot leak duplicates.
async fn create_sandbox(
    ctx: &WorkerContext,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<String, CallError> {
    let mut metadata = BTreeMap::new();
    metadata.insert("sandwarden_job".to_string(), job.id.clone());
    metadata.insert(
        "sandwarden_attempt".to_string(),
        job.attempts.len().to_string(),
    );
    metadata.insert("sandwarden_instance".to_string(), ctx.instance.clone());
    let spec = SandboxSpec {
        template: job.spec.sandbox.template.clone(),
        timeout: job.spec.sandbox.timeout,
        env: job.spec.sandbox.env.clone(),
        metadata: metadata.clone(),
        network: match job.spec.sandbox.network {
            crate::job::NetworkAccess::None => crate::provider::Network::None,
            crate::job::NetworkAccess::Host => crate::provider::Network::Host,
        },
    };
    if job.attempts.len() > 1 {
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, reap_earlier_attempts(ctx, job)).await;
    }
    // Set when a create failed in a way that may have made a sandbox anyway (5xx, timeout,
    // a cut connection) on a provider whose creates are not idempotent.
    let uncertain = std::sync::atomic::AtomicBool::new(false);
    let uncertain = &uncertain;
    // Sandboxes this attempt made and threw away as unhealthy: part of the create's identity,
    // so that an idempotent provider makes a new one instead of returning the discarded one.
    let discarded = std::sync::atomic::AtomicU32::new(0);
    let discarded = &discarded;
    call(ctx, &job.spec.user_id, Operation::Create, ctx.create_timeout, cancel, |_| {
        let mut spec = spec.clone();
        let thrown = discarded.load(std::sync::atomic::Ordering::Relaxed);
        if thrown > 0 {
            spec.metadata
                .insert("sandwarden_attempt".into(), format!("{}.{thrown}", job.attempts.len()));
        }
        let metadata = &metadata;
        async move {
            if uncertain.load(std::sync::atomic::Ordering::Relaxed) {
                let existing = ctx.provider.list().await?;
                if let Some(found) = existing.into_iter().find(|s| {
                    s.metadata.get("sandwarden_job") == metadata.get("sandwarden_job")
                        && s.metadata.get("sandwarden_attempt") == metadata.get("sandwarden_attempt")
                }) {
                    tracing::info!(sandbox = %found.id, "adopting a sandbox an earlier create made");
                    return Ok(found.id);
                }
            }
            let id = match ctx.provider.create(&spec).await {
                Ok(id) => id,
                Err(e) => {
                    let ambiguous = e.is_transient() && !ctx.provider.idempotent_create();
                    if ambiguous {
                        uncertain.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Err(e);
                }
            };
            // A sandbox that is not healthy is killed and the create retried (as transient)
            // within the same retry budget; a health check that failed in passing is asked
            // again first, which is cheaper than a new sandbox.
            let mut health = ctx.provider.health(&id).await;
            for again in 0..HEALTH_RETRIES {
                match &health {
                    Err(e) if e.is_transient() && !e.sandbox_gone() => {
                        tokio::time::sleep(ctx.retry.backoff(again, rand::random())).await;
                        health = ctx.provider.health(&id).await;
                    }
                    _ => break,
                }
            }
            if let Err(e) = health {
                tracing::warn!(sandbox = %id, error = %e, "new sandbox failed its health check; killing it");
                let _ = ctx.provider.kill(&id).await;
                discarded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(ProviderError::transient(format!(
                    "new sandbox {id} failed its health check: {}",
                    e.message()
                )));
            }
            Ok(id)
        }
    })
    .await
}

/// Kill sandboxes left by earlier, interrupted attempts of this job (a crashed worker or
/// process never got to clean up). Best effort: the orphan reaper is the safety net.
async fn reap_earlier_attempts(ctx: &WorkerContext, job: &Job) {
    let current = job.attempts.len().to_string();
    let Ok(list) = ctx.provider.list().await else {
        return;
    };
    for s in list {
        let ours = s.metadata.get("sandwarden_job") == Some(&job.id)
            && s.metadata.get("sandwarden_attempt") != Some(&current);
        if ours {
            tracing::info!(job_id = %job.id, sandbox = %s.id, "killing a sandbox left by an interrupted attempt");
            let _ = ctx.provider.kill(&s.id).await;
        }
    }
}

/// One provider call under the step deadline, the breaker and the retry policy.
///
/// `attempt` makes one try and is given the time left before the deadline.
pub async fn call<T, F, Fut>(
    ctx: &WorkerContext,
    user: &str,
    op: Operation,
    deadline: Duration,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<T, CallError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let started = tokio::time::Instant::now();
    let mut retries = 0u32;
    let mut last: Option<ProviderError> = None;
    loop {
        let elapsed = started.elapsed();
        let Some(remaining) = deadline.checked_sub(elapsed).filter(|d| !d.is_zero()) else {
            return Err(CallError::Failed(last.unwrap_or_else(|| {
                ProviderError::timeout(format!("{} ran out of time", op.as_str()))
            })));
        };
        let limited = if ctx.protection == Protection::Full {
            ctx.limiter.acquire(op, user).await
        } else {
            Ok(())
        };
        if let Err((until_ms, reason)) = limited {
            let wait = Duration::from_millis(until_ms.saturating_sub(crate::clock::now_ms()));
            // A short wait (the creation pace) is cheaper here than a round trip through the queue.
            if wait > SHORT_WAIT || started.elapsed() + wait >= deadline {
                return Err(CallError::Limited { until_ms, reason });
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(CallError::Cancelled),
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        let permit = match ctx.breaker.acquire().await {
            Ok(p) => p,
            Err(_) => return Err(CallError::Unavailable { last }),
        };
        let call_started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => {
                ctx.breaker.release(permit);
                return Err(CallError::Cancelled);
            }
            r = tokio::time::timeout(remaining, attempt(remaining)) => match r {
                Ok(r) => r,
                Err(_) => Err(ProviderError::timeout(format!(
                    "{} did not answer within {}",
                    op.as_str(),
                    humantime::format_duration(remaining)
                ))),
            },
        };
        ctx.breaker.record(
            permit,
            outcome
                .as_ref()
                .map(|_| ())
                .map_err(|e| (e.category(), e.message().to_string())),
        );
        ctx.metrics.provider_call_event(
            op.as_str(),
            retries + 1,
            outcome
                .as_ref()
                .map(|_| "ok")
                .unwrap_or_else(|e| e.category().as_str()),
            outcome.as_ref().err().map(|e| e.message()),
            call_started.elapsed(),
        );
        match &outcome {
            Err(e)
                if e.category() == ErrorCategory::RateLimited
                    && ctx.protection == Protection::Full
                    && op.is_account_wide() =>
            {
                ctx.limiter.rate_limited(op, e.retry_after())
            }
            Ok(_) if op == Operation::Create => ctx.limiter.sandbox_started(),
            Ok(_) if op == Operation::Kill => ctx.limiter.sandbox_stopped(),
            _ => {}
        }
        let err = match outcome {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        match ctx.retry.decide(
            err.category(),
            err.retry_after(),
            retries,
            started.elapsed(),
            deadline,
            rand::random(),
        ) {
            RetryDecision::Retry { delay } => {
                retries += 1;
                last = Some(err);
                tokio::select! {
                    _ = cancel.cancelled() => return Err(CallError::Cancelled),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            RetryDecision::GiveUp(_) => return Err(CallError::Failed(err)),
        }
    }
}
