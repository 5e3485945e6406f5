//! The `RateLimiterActor`: owns the `RateLimiter` (decisions in `policy`), persists its usage
//! records, and reports threshold crossings.
//!
//! Workers ask before every provider call (`Acquire`, a call) and report 429s and sandbox
//! starts/stops (casts). A refusal is not a failure: the worker waits a short while, or hands
//! the job back to the queue with the time capacity frees. Usage is written to the store at
//! most once a second while it changes (and at stop), so a restart does not hand out a fresh
//! window; records older than their window are pruned when the health monitor's
//! `ratelimit_cleanup` task says so.

pub mod policy;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::RateLimitSettings;
use crate::store::Store;
pub use policy::{
    Decision, LimiterConfig, LimiterSnapshot, OpLimit, Operation, RateLimiter, Usage, UsageEvent,
    UsageState,
};

const STORE_KEY: &str = "ratelimit";
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// A threshold crossing, kept for the health report and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitEvent {
    pub at_ms: u64,
    pub kind: &'static str,
    pub operation: &'static str,
    pub used: u32,
    pub limit: u32,
}

/// What the admin API shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitsView {
    pub operations: Vec<OpView>,
    pub live_sandboxes: u32,
    pub max_concurrent_sandboxes: Option<u32>,
    pub recent_events: Vec<LimitEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpView {
    pub operation: &'static str,
    pub count: u32,
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub percent_used: Option<f64>,
    pub state: &'static str,
    pub resets_at_ms: Option<u64>,
    pub cooldown_until_ms: Option<u64>,
}

pub enum LimiterMsg {
    /// Record a call that nothing could refuse.
    Track(Operation, Option<String>),
    /// A caller decided on its own (see `LimiterLink::acquire`): count it, announce what it
    /// crossed, and mark the usage for persisting.
    Decided {
        op: Operation,
        granted: bool,
        events: Vec<UsageEvent>,
    },
    RateLimited(Operation, Option<Duration>),
    SandboxStarted,
    SandboxStopped,
    View(RpcReplyPort<LimitsView>),
    Persist,
    Prune,
}

/// The worker's side of the limiter.
#[derive(Clone)]
pub struct LimiterLink {
    actor: ActorRef<LimiterMsg>,
    /// The limiter itself, shared with its actor: a decision is taken under this lock on the
    /// caller's thread (no round trip to the actor, whose wake-up dominated the tail), and the
    /// actor is told afterwards.
    shared: Arc<Mutex<RateLimiter>>,
    /// Which operations must ask (bit per `Operation::ALL` index): limited, cooling down, paced
    /// or per-user. The others are only tracked, by a cast.
    must_ask: watch::Receiver<u8>,
}

fn bit(op: Operation) -> u8 {
    1 << Operation::ALL
        .iter()
        .position(|o| *o == op)
        .expect("every operation is in ALL")
}

impl LimiterLink {
    pub async fn acquire(&self, op: Operation, user: &str) -> Result<(), (u64, String)> {
        if *self.must_ask.borrow() & bit(op) == 0 {
            // Nothing can refuse this call: record it without a round trip.
            let _ = self
                .actor
                .cast(LimiterMsg::Track(op, Some(user.to_string())));
            return Ok(());
        }
        let (answer, events) = {
            let mut limiter = lock(&self.shared);
            let decision = limiter.acquire(op, Some(user), now_ms());
            let mut events = limiter.take_events();
            let answer = match decision {
                Decision::Granted(g) => {
                    events.extend(g.events);
                    Ok(())
                }
                Decision::Wait { until_ms, reason } => Err((until_ms, reason.describe())),
            };
            (answer, events)
        };
        let _ = self.actor.cast(LimiterMsg::Decided {
            op,
            granted: answer.is_ok(),
            events,
        });
        answer
    }

    pub fn rate_limited(&self, op: Operation, retry_after: Option<Duration>) {
        let _ = self.actor.cast(LimiterMsg::RateLimited(op, retry_after));
    }

    pub fn sandbox_started(&self) {
        let _ = self.actor.cast(LimiterMsg::SandboxStarted);
    }

    pub fn sandbox_stopped(&self) {
        let _ = self.actor.cast(LimiterMsg::SandboxStopped);
    }

    pub async fn view(&self) -> Option<LimitsView> {
        match self
            .actor
            .call(LimiterMsg::View, Some(ACQUIRE_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(v)) => Some(v),
            _ => None,
        }
    }
}

pub struct LimiterArgs {
    pub settings: RateLimitSettings,
    pub store: Store,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

fn lock(shared: &Mutex<RateLimiter>) -> MutexGuard<'_, RateLimiter> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct LimiterState {
    limiter: Arc<Mutex<RateLimiter>>,
    store: Store,
    dirty: bool,
    events: VecDeque<LimitEvent>,
    stop: CancellationToken,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    must_ask: watch::Sender<u8>,
}

pub fn config_from(s: &RateLimitSettings) -> LimiterConfig {
    let limits: BTreeMap<Operation, OpLimit> = s
        .limits
        .iter()
        .map(|(op, max)| {
            (
                *op,
                OpLimit {
                    max: *max,
                    window: s.window,
                },
            )
        })
        .collect();
    LimiterConfig {
        limits,
        warn_ratio: s.warn_ratio,
        alert_ratio: s.alert_ratio,
        block_ratio: s.block_ratio,
        max_concurrent_sandboxes: s.max_concurrent_sandboxes,
        min_create_interval: s.min_create_interval,
        default_cooldown: s.default_cooldown,
        per_user: s.per_user.map(|max| OpLimit {
            max,
            window: s.window,
        }),
    }
}

/// The persisted form (store codec).
#[derive(Serialize, Deserialize, Default)]
struct StoredUsage {
    calls: Vec<(String, Option<String>, u64)>,
    /// Calls per record, in the order of `calls` (absent: one each).
    #[serde(default)]
    counts: Vec<u32>,
    cooldowns: Vec<(String, u64)>,
    alarms: Vec<(String, String)>,
    live_sandboxes: u32,
}

fn state_str(s: UsageState) -> &'static str {
    match s {
        UsageState::Ok => "ok",
        UsageState::Warning => "warning",
        UsageState::Alert => "alert",
        UsageState::Blocked => "blocked",
    }
}

fn state_parse(s: &str) -> UsageState {
    match s {
        "warning" => UsageState::Warning,
        "alert" => UsageState::Alert,
        "blocked" => UsageState::Blocked,
        _ => UsageState::Ok,
    }
}

fn encode(snap: LimiterSnapshot) -> StoredUsage {
    StoredUsage {
        counts: snap.calls.iter().map(|(_, _, _, n)| *n).collect(),
        calls: snap
            .calls
            .into_iter()
            .map(|(op, u, at, _)| (op.as_str().into(), u, at))
            .collect(),
        cooldowns: snap
            .cooldowns
            .into_iter()
            .map(|(op, t)| (op.as_str().into(), t))
            .collect(),
        alarms: snap
            .alarms
            .into_iter()
            .map(|(op, s)| (op.as_str().into(), state_str(s).into()))
            .collect(),
        live_sandboxes: snap.live_sandboxes,
    }
}

fn decode(s: StoredUsage) -> LimiterSnapshot {
    LimiterSnapshot {
        calls: s
            .calls
            .into_iter()
            .enumerate()
            .filter_map(|(i, (op, u, at))| {
                let n = s.counts.get(i).copied().unwrap_or(1);
                Some((Operation::parse(&op)?, u, at, n))
            })
            .collect(),
        cooldowns: s
            .cooldowns
            .into_iter()
            .filter_map(|(op, t)| Some((Operation::parse(&op)?, t)))
            .collect(),
        alarms: s
            .alarms
            .into_iter()
            .filter_map(|(op, st)| Some((Operation::parse(&op)?, state_parse(&st))))
            .collect(),
        live_sandboxes: s.live_sandboxes,
    }
}

impl LimiterState {
    /// Recompute which operations must ask (after a 429, a cool-down's end, a restart).
    fn publish_must_ask(&mut self) {
        let now = now_ms();
        let limiter = lock(&self.limiter);
        let cfg = limiter.config();
        let mut mask = 0u8;
        for op in Operation::ALL {
            let paced = op == Operation::Create
                && (cfg.max_concurrent_sandboxes.is_some() || cfg.min_create_interval.is_some());
            let cooling = limiter
                .usage(op, now)
                .cooldown_until_ms
                .is_some_and(|t| t > now);
            if cfg.limits.contains_key(&op) || cfg.per_user.is_some() || paced || cooling {
                mask |= bit(op);
            }
        }
        self.must_ask
            .send_if_modified(|m| std::mem::replace(m, mask) != mask);
    }

    fn note(&mut self, events: Vec<UsageEvent>) {
        for e in events {
            let (kind, op, used, limit) = match e {
                UsageEvent::Warning { op, used, limit } => ("warning", op, used, limit),
                UsageEvent::Alert { op, used, limit } => ("alert", op, used, limit),
                UsageEvent::Blocked { op, used, limit } => ("blocked", op, used, limit),
                UsageEvent::Recovered { op } => ("recovered", op, 0, 0),
            };
            match kind {
                "recovered" => tracing::info!(
                    operation = op.as_str(),
                    "rate usage back under the warning mark"
                ),
                "warning" => tracing::warn!(
                    operation = op.as_str(),
                    used,
                    limit,
                    "rate usage passed the warning mark"
                ),
                _ => tracing::error!(
                    operation = op.as_str(),
                    used,
                    limit,
                    kind,
                    "rate usage passed the {kind} mark"
                ),
            }
            if kind == "alert" {
                crate::health::alerts::rate_usage(op.as_str(), used, limit);
            }
            self.events.push_back(LimitEvent {
                at_ms: now_ms(),
                kind,
                operation: op.as_str(),
                used,
                limit,
            });
            if self.events.len() > 50 {
                self.events.pop_front();
            }
        }
    }

    fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        if let Err(e) = self
            .store
            .put_record(STORE_KEY, &encode(lock(&self.limiter).export()))
        {
            tracing::error!(error = %e, "could not persist rate usage");
            return;
        }
        self.dirty = false;
    }

    fn view(&self) -> LimitsView {
        let now = now_ms();
        let limiter = lock(&self.limiter);
        LimitsView {
            operations: limiter
                .usages(now)
                .into_iter()
                .map(|u| OpView {
                    operation: u.op.as_str(),
                    count: u.count,
                    limit: u.limit,
                    remaining: u.remaining,
                    percent_used: u.ratio.map(|r| (r * 1000.0).round() / 10.0),
                    state: state_str(u.state),
                    resets_at_ms: u.resets_at_ms,
                    cooldown_until_ms: u.cooldown_until_ms,
                })
                .collect(),
            live_sandboxes: limiter.live_sandboxes(),
            max_concurrent_sandboxes: limiter.config().max_concurrent_sandboxes,
            recent_events: self.events.iter().rev().cloned().collect(),
        }
    }
}

pub struct RateLimiterActor;

impl RateLimiterActor {
    pub async fn start(
        args: LimiterArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<(LimiterLink, ActorRef<LimiterMsg>), ractor::SpawnErr> {
        let (tx, rx) = watch::channel(u8::MAX);
        let cfg = config_from(&args.settings);
        // A restart must not hand out a fresh window.
        let limiter = match args.store.get_record::<StoredUsage>(STORE_KEY) {
            Ok(Some(stored)) => RateLimiter::restore(cfg, decode(stored), now_ms()),
            Ok(None) => RateLimiter::new(cfg),
            Err(e) => return Err(ractor::SpawnErr::StartupFailed(Box::new(e))),
        };
        let shared = Arc::new(Mutex::new(limiter));
        let (actor, _) = Actor::spawn_linked(
            None,
            RateLimiterActor,
            (args, tx, shared.clone()),
            supervisor,
        )
        .await?;
        Ok((
            LimiterLink {
                actor: actor.clone(),
                shared,
                must_ask: rx,
            },
            actor,
        ))
    }
}

impl Actor for RateLimiterActor {
    type Msg = LimiterMsg;
    type State = LimiterState;
    type Arguments = (LimiterArgs, watch::Sender<u8>, Arc<Mutex<RateLimiter>>);

    async fn pre_start(
        &self,
        myself: ActorRef<LimiterMsg>,
        (args, must_ask, limiter): Self::Arguments,
    ) -> Result<LimiterState, ActorProcessingErr> {
        let stop = CancellationToken::new();
        crate::clock::tick(myself.clone(), PERSIST_EVERY, stop.clone(), || {
            LimiterMsg::Persist
        });
        let mut state = LimiterState {
            limiter,
            store: args.store,
            dirty: false,
            events: VecDeque::new(),
            stop,
            metrics: args.metrics,
            must_ask,
        };
        state.publish_must_ask();
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LimiterMsg>,
        state: &mut LimiterState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        state.persist();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<LimiterMsg>,
        msg: LimiterMsg,
        state: &mut LimiterState,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        match msg {
            LimiterMsg::Decided {
                op,
                granted,
                events,
            } => {
                state.metrics.inc(
                    "sandwarden_ratelimit_decisions_total",
                    vec![
                        ("operation", op.as_str().into()),
                        ("decision", if granted { "granted" } else { "wait" }.into()),
                    ],
                );
                if granted {
                    state.dirty = true;
                }
                state.note(events);
            }
            LimiterMsg::RateLimited(op, retry_after) => {
                tracing::warn!(operation = op.as_str(), retry_after = ?retry_after, "provider answered 429; cooling the operation down");
                lock(&state.limiter).on_rate_limited(op, retry_after, now);
                state.dirty = true;
                state.persist();
                state.publish_must_ask();
            }
            LimiterMsg::SandboxStarted => {
                lock(&state.limiter).sandbox_started();
                state.dirty = true;
            }
            LimiterMsg::SandboxStopped => {
                lock(&state.limiter).sandbox_stopped();
                state.dirty = true;
            }
            LimiterMsg::View(reply) => {
                let _ = reply.send(state.view());
            }
            LimiterMsg::Track(op, user) => {
                // Unlimited and not cooling down: granted, but every call is tracked.
                let _ = lock(&state.limiter).acquire(op, user.as_deref(), now);
                state.dirty = true;
                state.metrics.inc(
                    "sandwarden_ratelimit_decisions_total",
                    vec![
                        ("operation", op.as_str().into()),
                        ("decision", "granted".into()),
                    ],
                );
            }
            LimiterMsg::Persist => {
                state.persist();
                state.publish_must_ask();
            }
            LimiterMsg::Prune => {
                let (removed, pending) = {
                    let mut limiter = lock(&state.limiter);
                    (limiter.prune(now), limiter.take_events())
                };
                state.note(pending);
                if removed > 0 {
                    tracing::debug!(removed, "pruned old rate records");
                    state.dirty = true;
                }
            }
        }
        Ok(())
    }
}
