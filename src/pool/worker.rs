//! The `SandboxWorker`: runs one job at a time and reports the result to the queue.
//!
//! A worker holds no durable state. If it panics mid-job its supervisor replaces it and the
//! queue re-leases the job; the job's sandbox and processes die with the run's future (the
//! local provider kills the process group on drop).

use std::sync::Arc;

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
                execute::run_job(&state.ctx, &mut job, &cancel).await;
                state.queue.cast(QueueMsg::Finished {
                    worker: myself.get_id(),
                    job: Box::new(job),
                })?;
                state.queue.cast(QueueMsg::WorkerReady(myself))?;
            }
        }
        Ok(())
    }
}
