//! The `CircuitBreakerActor`: owns one provider's `Breaker` (the decisions, in `policy`),
//! persists it, and publishes its state.
//!
//! Workers ask for a permit before every provider call (`Acquire`, a call) and report the
//! outcome (`Record`, a cast); readers that only need to know whether the provider is
//! considered down (the queue, the API, the dashboard) read the published `BreakerView`
//! from a watch channel instead of asking. The actor persists a snapshot after every change
//! of state or counters, so that a restart keeps an open breaker open until its timeout.

pub mod policy;

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::config::BreakerSettings;
use crate::provider::ErrorCategory;
use crate::store::Store;
pub use policy::{
    Breaker, BreakerConfig, BreakerSnapshot, BreakerState, Permit, RateWindow, Transition,
};

/// How long a worker waits for a permit before treating the breaker as unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// What readers see of the breaker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerView {
    pub provider: String,
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub failure_rate: Option<f64>,
    pub opened_at_ms: Option<u64>,
    pub next_probe_at_ms: Option<u64>,
    pub probes_in_flight: u32,
    pub last_error: Option<String>,
    pub transitions: Vec<TransitionView>,
}

impl BreakerView {
    /// True when calls are refused now (open before its probe time, or forced open).
    pub fn refuses(&self, now_ms: u64) -> bool {
        match self.state {
            "forced_open" => true,
            "open" => self.next_probe_at_ms.is_none_or(|t| now_ms < t),
            _ => false,
        }
    }

    /// True when only probes may pass (open with a probe due, or half-open).
    pub fn probing(&self) -> bool {
        matches!(self.state, "open" | "half_open")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransitionView {
    pub from: &'static str,
    pub to: &'static str,
    pub at_ms: u64,
    pub consecutive_failures: u32,
    pub reason: String,
}

pub enum BreakerMsg {
    Acquire(RpcReplyPort<Result<Permit, Option<u64>>>),
    /// The outcome of a permitted call; a failure carries its message for `last_error`.
    Record(Permit, Result<(), (ErrorCategory, String)>),
    /// The outcome of a call made on the published closed state, without a permit.
    RecordClosed(Result<(), (ErrorCategory, String)>),
    Release(Permit),
    Reset(RpcReplyPort<BreakerView>),
    ForceOpen(RpcReplyPort<BreakerView>),
    Disable(RpcReplyPort<BreakerView>),
}

/// The worker's side of the breaker.
#[derive(Clone)]
pub struct BreakerLink {
    actor: ActorRef<BreakerMsg>,
    view: watch::Receiver<BreakerView>,
    /// A failure-rate window is configured: every outcome counts, successes included.
    counts_successes: bool,
}

/// Leave to make one provider call.
pub enum Pass {
    /// From the actor: needed whenever the breaker is not closed (probes are counted).
    Permit(Permit),
    /// The published state said closed: no round trip to the actor; the outcome is reported
    /// by a cast and counted if the breaker is still closed when it arrives.
    Closed,
    /// The breaker did not answer; the call goes ahead untracked.
    Untracked,
}

impl BreakerLink {
    /// Leave for one call, or the time at which calls may be tried again.
    ///
    /// The closed state is read from the published view, so the common case costs no message
    /// round trip; a call that races the breaker opening is at most one extra call per worker.
    pub async fn acquire(&self) -> Result<Pass, Option<u64>> {
        if self.view.borrow().state == "closed" {
            return Ok(Pass::Closed);
        }
        match self
            .actor
            .call(BreakerMsg::Acquire, Some(ACQUIRE_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(Ok(p))) => Ok(Pass::Permit(p)),
            Ok(ractor::rpc::CallResult::Success(Err(at))) => Err(at),
            // An unreachable breaker must not stop all work: the call goes ahead untracked,
            // and the supervisor is restarting the breaker meanwhile.
            _ => Ok(Pass::Untracked),
        }
    }

    pub fn record(&self, pass: Pass, outcome: Result<(), (ErrorCategory, String)>) {
        let _ = match pass {
            Pass::Permit(p) => self.actor.cast(BreakerMsg::Record(p, outcome)),
            Pass::Closed if outcome.is_ok() && !self.success_counts() => Ok(()),
            Pass::Closed => self.actor.cast(BreakerMsg::RecordClosed(outcome)),
            Pass::Untracked => Ok(()),
        };
    }

    /// Whether a success on the closed path would change the breaker. Without a rate window
    /// it only clears the consecutive failures, so with none published it changes nothing and
    /// is not sent: waking the actor is most of the cost of a protected call. A success that
    /// races a failure being counted may so go unsent, which lets the count run across it
    /// (at most one success per worker, like any call racing a transition).
    fn success_counts(&self) -> bool {
        if self.counts_successes {
            return true;
        }
        let view = self.view.borrow();
        view.state != "closed" || view.consecutive_failures > 0
    }

    pub fn release(&self, pass: Pass) {
        if let Pass::Permit(p) = pass {
            let _ = self.actor.cast(BreakerMsg::Release(p));
        }
    }

    pub fn view(&self) -> BreakerView {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<BreakerView> {
        self.view.clone()
    }

    pub fn actor(&self) -> &ActorRef<BreakerMsg> {
        &self.actor
    }
}

pub struct BreakerArgs {
    pub provider: String,
    pub settings: BreakerSettings,
    pub store: Store,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

pub struct BreakerActorState {
    provider: String,
    breaker: Breaker,
    store: Store,
    publish: watch::Sender<BreakerView>,
    last_error: Option<String>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

pub struct CircuitBreakerActor;

impl CircuitBreakerActor {
    /// Start the actor and return the link workers use.
    pub async fn start(
        args: BreakerArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<(BreakerLink, ActorRef<BreakerMsg>), ractor::SpawnErr> {
        let (tx, rx) = watch::channel(empty_view(&args.provider));
        let counts_successes = config_from(&args.settings).window.is_some();
        let (actor, _) =
            Actor::spawn_linked(None, CircuitBreakerActor, (args, tx), supervisor).await?;
        Ok((
            BreakerLink {
                actor: actor.clone(),
                view: rx,
                counts_successes,
            },
            actor,
        ))
    }
}

fn empty_view(provider: &str) -> BreakerView {
    BreakerView {
        provider: provider.into(),
        state: "closed",
        consecutive_failures: 0,
        failure_rate: None,
        opened_at_ms: None,
        next_probe_at_ms: None,
        probes_in_flight: 0,
        last_error: None,
        transitions: Vec::new(),
    }
}

pub fn config_from(s: &BreakerSettings) -> BreakerConfig {
    BreakerConfig {
        failure_threshold: s.failure_threshold,
        open_timeout: s.open_timeout,
        open_timeout_multiplier: s.open_timeout_multiplier,
        max_open_timeout: s.max_open_timeout,
        half_open_max_probes: s.half_open_probes,
        window: (s.window_size > 0).then_some(RateWindow {
            size: s.window_size,
            min_calls: s.window_min_calls,
            failure_rate: s.window_failure_rate,
        }),
    }
}

/// The persisted form of a breaker (store codec).
#[derive(Serialize, Deserialize)]
struct StoredBreaker {
    state: String,
    consecutive_failures: u32,
    opened_at_ms: Option<u64>,
    current_open_timeout_ms: u64,
    reopen_count: u32,
    window_outcomes: Vec<bool>,
}

fn state_from(s: &str) -> Option<BreakerState> {
    Some(match s {
        "closed" => BreakerState::Closed,
        "open" => BreakerState::Open,
        "half_open" => BreakerState::HalfOpen,
        "forced_open" => BreakerState::ForcedOpen,
        "disabled" => BreakerState::Disabled,
        _ => return None,
    })
}

impl BreakerActorState {
    fn key(&self) -> String {
        format!("breaker/{}", self.provider)
    }

    fn view(&self) -> BreakerView {
        let b = &self.breaker;
        BreakerView {
            provider: self.provider.clone(),
            state: b.state().as_str(),
            consecutive_failures: b.consecutive_failures(),
            failure_rate: b.failure_rate(),
            opened_at_ms: b.opened_at_ms(),
            next_probe_at_ms: b.next_probe_at_ms(),
            probes_in_flight: b.probes_in_flight(),
            last_error: self.last_error.clone(),
            transitions: b
                .transitions()
                .iter()
                .rev()
                .map(|t| TransitionView {
                    from: t.from.as_str(),
                    to: t.to.as_str(),
                    at_ms: t.at_ms,
                    consecutive_failures: t.consecutive_failures,
                    reason: t.reason.clone(),
                })
                .collect(),
        }
    }

    /// Count one permitted call's outcome.
    fn record(&mut self, permit: Permit, outcome: Result<(), (ErrorCategory, String)>, now: u64) {
        let outcome = match outcome {
            Ok(()) => Ok(()),
            Err((category, message)) => {
                // Only failures that count against the provider are worth showing.
                if matches!(category, ErrorCategory::Transient | ErrorCategory::Timeout) {
                    self.last_error = Some(format!("{}: {message}", category.as_str()));
                }
                Err(category)
            }
        };
        let before = (self.breaker.state(), self.breaker.consecutive_failures());
        let transition = self.breaker.record(permit, outcome, now);
        let after = (self.breaker.state(), self.breaker.consecutive_failures());
        if transition.is_some() || before != after {
            self.changed(transition);
        }
    }

    /// Persist and publish; log a transition if there was one.
    fn changed(&mut self, transition: Option<Transition>) {
        let snap = self.breaker.snapshot();
        let stored = StoredBreaker {
            state: snap.state.as_str().into(),
            consecutive_failures: snap.consecutive_failures,
            opened_at_ms: snap.opened_at_ms,
            current_open_timeout_ms: snap.current_open_timeout_ms,
            reopen_count: snap.reopen_count,
            window_outcomes: snap.window_outcomes,
        };
        if let Err(e) = self.store.put_record(&self.key(), &stored) {
            tracing::error!(error = %e, "could not persist the breaker");
        }
        if let Some(t) = transition {
            self.metrics.inc(
                "sandwarden_breaker_transitions_total",
                vec![("to", t.to.as_str().into())],
            );
            match (t.from, t.to) {
                (BreakerState::Closed, BreakerState::Open) => {
                    crate::health::alerts::breaker_opened(
                        &self.provider,
                        t.consecutive_failures,
                        self.last_error.as_deref(),
                    )
                }
                (BreakerState::HalfOpen, BreakerState::Open) => {
                    crate::health::alerts::probe_failed(
                        &self.provider,
                        t.consecutive_failures,
                        self.last_error.as_deref(),
                    )
                }
                _ => {}
            }
            tracing::warn!(
                provider = %self.provider,
                from = t.from.as_str(),
                to = t.to.as_str(),
                consecutive_failures = t.consecutive_failures,
                last_error = self.last_error.as_deref().unwrap_or(""),
                reason = %t.reason,
                "breaker transition"
            );
            let store = self.store.clone();
            tokio::spawn(async move {
                let _ = store.flush().await;
            });
        }
        let view = self.view();
        self.publish.send_if_modified(|v| {
            if *v != view {
                *v = view;
                true
            } else {
                false
            }
        });
    }
}

impl Actor for CircuitBreakerActor {
    type Msg = BreakerMsg;
    type State = BreakerActorState;
    type Arguments = (BreakerArgs, watch::Sender<BreakerView>);

    async fn pre_start(
        &self,
        _myself: ActorRef<BreakerMsg>,
        (args, publish): Self::Arguments,
    ) -> Result<BreakerActorState, ActorProcessingErr> {
        let cfg = config_from(&args.settings);
        let key = format!("breaker/{}", args.provider);
        let breaker = match args.store.get_record::<StoredBreaker>(&key)? {
            Some(s) => {
                let state = state_from(&s.state).unwrap_or(BreakerState::Closed);
                tracing::info!(state = state.as_str(), "breaker restored from the store");
                Breaker::restore(
                    cfg,
                    BreakerSnapshot {
                        state,
                        consecutive_failures: s.consecutive_failures,
                        opened_at_ms: s.opened_at_ms,
                        current_open_timeout_ms: s.current_open_timeout_ms,
                        reopen_count: s.reopen_count,
                        window_outcomes: s.window_outcomes,
                    },
                )
            }
            None => Breaker::new(cfg),
        };
        let mut state = BreakerActorState {
            provider: args.provider,
            breaker,
            store: args.store,
            publish,
            last_error: None,
            metrics: args.metrics,
        };
        state.changed(None);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<BreakerMsg>,
        msg: BreakerMsg,
        state: &mut BreakerActorState,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        match msg {
            BreakerMsg::Acquire(reply) => {
                let before = state.breaker.state();
                let decision = state.breaker.try_acquire(now);
                let transition = (state.breaker.state() != before)
                    .then(|| state.breaker.transitions().back().cloned())
                    .flatten();
                let _ = reply.send(decision.map_err(|r| r.retry_at_ms));
                if transition.is_some() || state.breaker.probes_in_flight() > 0 {
                    state.changed(transition);
                }
            }
            BreakerMsg::RecordClosed(outcome) => {
                // Counted only if still closed: a call that raced a transition says nothing
                // about the new state.
                if state.breaker.state() == BreakerState::Closed
                    && let Ok(permit) = state.breaker.try_acquire(now)
                {
                    state.record(permit, outcome, now);
                }
            }
            BreakerMsg::Record(permit, outcome) => state.record(permit, outcome, now),
            BreakerMsg::Release(permit) => {
                state.breaker.on_ignored(permit);
            }
            BreakerMsg::Reset(reply) => {
                let t = state.breaker.reset(now);
                state.changed(t);
                let _ = reply.send(state.view());
            }
            BreakerMsg::ForceOpen(reply) => {
                let t = state.breaker.force_open(now);
                state.changed(t);
                let _ = reply.send(state.view());
            }
            BreakerMsg::Disable(reply) => {
                let t = state.breaker.disable(now);
                state.changed(t);
                let _ = reply.send(state.view());
            }
        }
        Ok(())
    }
}
