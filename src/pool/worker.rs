//! The `SandboxWorker`: runs one job at a time and reports the result to the queue.
//!
//! A worker holds no durable state. If it panics mid-job its supervisor replaces it and the
//! queue re-leases the job; the job's sandbox and processes die with the run's future (the
//! local provider kills the process group on drop).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::execute::{self, WorkerContext};
use crate::queue::{Assignment, QueueMsg};

pub enum WorkerMsg {
    Run(Box<Assignment>),
}

pub struct WorkerArgs {
    pub index: usize,
    pub ctx: Arc<WorkerContext>,
    pub queue: ActorRef<QueueMsg>,
    /// What the worker is on, readable by the pool while the worker is busy (and so cannot
    /// answer messages).
    pub busy: Arc<Mutex<Option<Busy>>>,
}

/// The job a worker is running, since when, and how long it may take at most.
#[derive(Debug, Clone)]
pub struct Busy {
    pub job_id: String,
    pub since: tokio::time::Instant,
    pub bound: Duration,
}

pub struct SandboxWorker;

impl Actor for SandboxWorker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn post_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.queue.cast(QueueMsg::WorkerReady(myself))?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Run(assignment) => {
                let Assignment { mut job, cancel } = *assignment;
                tracing::debug!(worker = state.index, job_id = %job.id, "worker running job");
                *state.busy.lock().unwrap_or_else(|p| p.into_inner()) = Some(Busy {
                    job_id: job.id.clone(),
                    since: tokio::time::Instant::now(),
                    bound: state.ctx.time_bound(&job),
                });
                execute::run_job(&state.ctx, &mut job, &cancel).await;
                *state.busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
                state.queue.cast(QueueMsg::Finished {
                    worker: myself,
                    job: Box::new(job),
                })?;
            }
        }
        Ok(())
    }
}
