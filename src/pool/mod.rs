//! The `SandboxPool`: supervises N `SandboxWorker`s, replaces one that crashes, and tells the
//! queue so that the crashed worker's job is requeued.
//!
//! Restart intensity is bounded: more than `restart_limit` restarts within `restart_window` is
//! a restart storm, and the pool fails with that reason so that its own supervisor escalates
//! instead of letting it spin. What survives a worker crash: every job (the queue requeues the
//! crashed worker's job); what is lost: the crashed run's partial step results.
//!
//! A worker that hangs (still on one job well past the job's own time bound: every provider
//! call is bounded, so only a bug gets there) is killed and replaced when the health check
//! asks (`ReplaceHung`); the queue runs its job again.

mod execute;
mod worker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

// Public so that the hot-path benchmarks measure the very path a worker takes per call.
pub use execute::{CallError, WorkerContext, call as protected_call};
pub use worker::{Busy, SandboxWorker, WorkerMsg};

use crate::queue::QueueMsg;

pub struct PoolArgs {
    pub workers: usize,
    pub restart_limit: u32,
    pub restart_window: Duration,
    /// A worker on one job this long past the job's time bound is hung.
    pub hung_grace: Duration,
    pub ctx: Arc<WorkerContext>,
    pub queue: ActorRef<QueueMsg>,
}

pub struct PoolState {
    args: PoolArgs,
    workers: HashMap<ActorId, Slot>,
    /// Workers killed for hanging, until their supervision event arrives.
    hung: HashSet<ActorId>,
    restarts: VecDeque<tokio::time::Instant>,
}

struct Slot {
    index: usize,
    worker: ActorRef<WorkerMsg>,
    busy: Arc<Mutex<Option<Busy>>>,
}

pub enum PoolMsg {
    /// How many workers are alive.
    Size(ractor::RpcReplyPort<usize>),
    /// Kill and replace every hung worker; replies the ids of the jobs they were on.
    ReplaceHung(ractor::RpcReplyPort<Vec<String>>),
}

pub struct SandboxPool;

impl SandboxPool {
    async fn spawn_worker(
        myself: &ActorRef<PoolMsg>,
        state: &mut PoolState,
        index: usize,
    ) -> Result<(), ActorProcessingErr> {
        let busy = Arc::new(Mutex::new(None));
        let (worker, _) = Actor::spawn_linked(
            None,
            SandboxWorker,
            worker::WorkerArgs {
                index,
                ctx: state.args.ctx.clone(),
                queue: state.args.queue.clone(),
                busy: busy.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        state.workers.insert(
            worker.get_id(),
            Slot {
                index,
                worker,
                busy,
            },
        );
        Ok(())
    }

    async fn replace(
        myself: &ActorRef<PoolMsg>,
        state: &mut PoolState,
        cell: ActorCell,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some(Slot { index, .. }) = state.workers.remove(&cell.get_id()) else {
            return Ok(());
        };
        let why_lost = if state.hung.remove(&cell.get_id()) {
            "its worker hung and was replaced"
        } else {
            "its worker crashed"
        };
        let _ = state
            .args
            .queue
            .cast(QueueMsg::WorkerLost(cell.get_id(), why_lost));
        let now = tokio::time::Instant::now();
        let window = state.args.restart_window;
        state.restarts.retain(|t| now.duration_since(*t) < window);
        if state.restarts.len() as u32 >= state.args.restart_limit {
            tracing::error!(
                restarts = state.restarts.len(),
                window = %humantime::format_duration(window),
                "worker restart storm: giving up"
            );
            crate::health::alerts::restart_storm(&format!(
                "worker restart storm: {} restarts within {}",
                state.restarts.len() + 1,
                humantime::format_duration(window)
            ));
            return Err(format!(
                "worker restart storm: more than {} restarts within {}",
                state.args.restart_limit,
                humantime::format_duration(window)
            )
            .into());
        }
        state.restarts.push_back(now);
        tracing::warn!(worker = index, why, "worker crashed; replacing it");
        Self::spawn_worker(myself, state, index).await
    }
}

impl Actor for SandboxPool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let mut state = PoolState {
            workers: HashMap::new(),
            hung: HashSet::new(),
            restarts: VecDeque::new(),
            args,
        };
        for index in 0..state.args.workers {
            Self::spawn_worker(&myself, &mut state, index).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Size(reply) => {
                let _ = reply.send(state.workers.len());
            }
            PoolMsg::ReplaceHung(reply) => {
                let grace = state.args.hung_grace;
                let mut jobs = Vec::new();
                for (id, slot) in &state.workers {
                    let busy = slot.busy.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let Some(b) = busy.filter(|b| b.since.elapsed() > b.bound + grace) else {
                        continue;
                    };
                    if !state.hung.insert(*id) {
                        continue;
                    }
                    tracing::error!(
                        worker = slot.index,
                        job_id = %b.job_id,
                        busy_for = %humantime::format_duration(b.since.elapsed()),
                        bound = %humantime::format_duration(b.bound),
                        "worker is hung; replacing it"
                    );
                    // Ends the worker's run at once, whatever it awaits: its sandbox's
                    // processes die with the run (the local provider kills the group on drop).
                    slot.worker.kill();
                    jobs.push(b.job_id);
                }
                let _ = reply.send(jobs);
            }
        }
        Ok(())
    }

    /// Let running jobs finish (each worker stops after its current job), within a grace
    /// period; the root kills what is left.
    async fn post_stop(
        &self,
        myself: ActorRef<PoolMsg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        state.workers.clear();
        let workers = myself.get_children();
        futures::future::join_all(
            workers
                .iter()
                .map(|w| async move { w.stop_and_wait(Some("shutdown".into()), None).await.ok() }),
        )
        .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        evt: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                Self::replace(&myself, state, cell, err.to_string()).await?;
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let why = reason.unwrap_or_else(|| "stopped".into());
                Self::replace(&myself, state, cell, why).await?;
            }
            _ => {}
        }
        Ok(())
    }
}
