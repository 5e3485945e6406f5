//! Rate-limit policy for calls to the sandbox provider: it owns the sliding-window
//! call records per operation (and per user, when a per-user quota is set), the
//! provider-imposed cooldowns after a 429, the live-sandbox count, the creation pace
//! and the warning/alert/blocked threshold state, and it decides whether one call may
//! be sent now. It is plain synchronous data: it must never read a clock, sleep, spawn,
//! do I/O or talk to the provider; time always comes in as `now_ms` (unix milliseconds)
//! and waiting is the caller's business.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// How long an operation without a configured limit keeps its records: it is still
/// counted so `usage` can show traffic, but memory must stay bounded without a window.
pub const UNLIMITED_TRACKING_WINDOW: Duration = Duration::from_secs(3600);

/// Recheck delay while the live-sandbox cap is full: a stop is not a time we can
/// predict, so the caller polls at this pace.
pub const CONCURRENCY_RECHECK_MS: u64 = 1000;

/// Undrained out-of-band events kept at most; older ones are dropped so a caller that
/// never calls `take_events` cannot grow memory without bound.
pub const MAX_PENDING_EVENTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    Create,
    Run,
    Read,
    Write,
    Pause,
    Resume,
    Kill,
    List,
}

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::Create,
        Operation::Run,
        Operation::Read,
        Operation::Write,
        Operation::Pause,
        Operation::Resume,
        Operation::Kill,
        Operation::List,
    ];

    /// Whether the provider limits this operation account-wide (the control plane), so that a
    /// 429 on one call holds every call of it. The others act on one sandbox (its own agent):
    /// a 429 there holds only the call that got it, through its retry.
    pub fn is_account_wide(&self) -> bool {
        !matches!(self, Operation::Run | Operation::Read | Operation::Write)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Operation::Create => "sandbox_create",
            Operation::Run => "command_run",
            Operation::Read => "file_read",
            Operation::Write => "file_write",
            Operation::Pause => "sandbox_pause",
            Operation::Resume => "sandbox_resume",
            Operation::Kill => "sandbox_kill",
            Operation::List => "sandbox_list",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Operation::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpLimit {
    pub max: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimiterConfig {
    /// Absent means unlimited; such calls are still recorded.
    pub limits: BTreeMap<Operation, OpLimit>,
    pub warn_ratio: f64,
    pub alert_ratio: f64,
    pub block_ratio: f64,
    pub max_concurrent_sandboxes: Option<u32>,
    pub min_create_interval: Option<Duration>,
    /// Used for a 429 that came without Retry-After.
    pub default_cooldown: Duration,
    /// Quota per user across all operations; off by default.
    pub per_user: Option<OpLimit>,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            limits: BTreeMap::new(),
            warn_ratio: 0.8,
            alert_ratio: 0.9,
            block_ratio: 1.0,
            max_concurrent_sandboxes: Some(20),
            min_create_interval: Some(Duration::from_secs(1)),
            default_cooldown: Duration::from_secs(30),
            per_user: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Granted(Grant),
    Wait { until_ms: u64, reason: WaitReason },
}

impl Decision {
    pub fn is_granted(&self) -> bool {
        matches!(self, Decision::Granted(_))
    }

    /// Human-readable form; times are offsets from `now_ms` because formatting dates
    /// is not this type's job.
    pub fn describe(&self, now_ms: u64) -> String {
        match self {
            Decision::Granted(_) => "granted".to_string(),
            Decision::Wait { until_ms, reason } => format!(
                "{}, frees in {} ms",
                reason.describe(),
                until_ms.saturating_sub(now_ms)
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Threshold crossings observed by this acquire (a recovery seen just before the
    /// grant, then the crossings the grant itself caused).
    pub events: Vec<UsageEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    Quota {
        op: Operation,
        used: u32,
        limit: u32,
        window_ms: u64,
    },
    Cooldown {
        op: Operation,
    },
    ConcurrentSandboxes {
        live: u32,
        max: u32,
    },
    CreateRate {
        interval_ms: u64,
    },
    UserQuota {
        user: String,
        used: u32,
        limit: u32,
        window_ms: u64,
    },
}

impl WaitReason {
    pub fn describe(&self) -> String {
        match self {
            WaitReason::Quota {
                op,
                used,
                limit,
                window_ms,
            } => format!(
                "{op} quota reached ({used}/{limit} per {})",
                fmt_ms(*window_ms)
            ),
            WaitReason::Cooldown { op } => {
                format!("{op} cooling down after the provider answered 429")
            }
            WaitReason::ConcurrentSandboxes { live, max } => {
                format!("concurrent sandbox limit reached ({live}/{max} live)")
            }
            WaitReason::CreateRate { interval_ms } => {
                format!("sandbox creation paced at one per {}", fmt_ms(*interval_ms))
            }
            WaitReason::UserQuota {
                user,
                used,
                limit,
                window_ms,
            } => format!(
                "user {user} quota reached ({used}/{limit} per {})",
                fmt_ms(*window_ms)
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageEvent {
    Warning {
        op: Operation,
        used: u32,
        limit: u32,
    },
    Alert {
        op: Operation,
        used: u32,
        limit: u32,
    },
    Blocked {
        op: Operation,
        used: u32,
        limit: u32,
    },
    Recovered {
        op: Operation,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UsageState {
    Ok,
    Warning,
    Alert,
    Blocked,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub op: Operation,
    pub count: u32,
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub ratio: Option<f64>,
    pub state: UsageState,
    /// When the oldest record still in the window expires.
    pub resets_at_ms: Option<u64>,
    pub cooldown_until_ms: Option<u64>,
}

/// Everything needed to rebuild identical decisions after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimiterSnapshot {
    /// Every retained record as (op, user, at_ms, calls), oldest first per op.
    pub calls: Vec<(Operation, Option<String>, u64, u32)>,
    pub cooldowns: Vec<(Operation, u64)>,
    /// Highest threshold already announced per op; without it a restart would
    /// re-announce a warning or swallow a pending recovery.
    pub alarms: Vec<(Operation, UsageState)>,
    pub live_sandboxes: u32,
}

/// One call of a limited operation, or the calls of an unlimited one within one second (and
/// one user when per-user quotas are on): their decisions need only counts, and one record per
/// call would grow with the call rate (a window of an hour at 1,500 calls/s is 5.4 M records).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    at_ms: u64,
    user: Option<String>,
    n: u32,
}

/// Calls in the records from `start` on. A limited operation's records are one call each, so
/// its count is the records' (constant time: it is taken on every acquire).
fn calls_from(q: &VecDeque<Call>, start: usize, limited: bool) -> u32 {
    if limited {
        return count_u32(q.len() - start);
    }
    q.range(start..)
        .fold(0u32, |sum, c| sum.saturating_add(c.n))
}

/// Records of unlimited operations are kept per this many milliseconds.
const UNLIMITED_BUCKET_MS: u64 = 1000;

#[derive(Debug, Clone)]
pub struct RateLimiter {
    cfg: LimiterConfig,
    /// Sorted by `at_ms` so expiry pops from the front and window starts are a
    /// binary search.
    calls: BTreeMap<Operation, VecDeque<Call>>,
    /// Derived index of `calls` for the per-user quota; rebuilt on restore.
    users: BTreeMap<String, VecDeque<u64>>,
    cooldowns: BTreeMap<Operation, u64>,
    alarms: BTreeMap<Operation, UsageState>,
    live: u32,
    pending: VecDeque<UsageEvent>,
}

impl RateLimiter {
    pub fn new(cfg: LimiterConfig) -> Self {
        RateLimiter {
            cfg,
            calls: BTreeMap::new(),
            users: BTreeMap::new(),
            cooldowns: BTreeMap::new(),
            alarms: BTreeMap::new(),
            live: 0,
            pending: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &LimiterConfig {
        &self.cfg
    }

    /// Decide whether one call of `op` may be sent now; a grant records the call
    /// (every call is tracked, limited or not).
    pub fn acquire(&mut self, op: Operation, user: Option<&str>, now_ms: u64) -> Decision {
        self.drop_expired_op(op, now_ms);
        if let Some(u) = user {
            self.drop_expired_user(u, now_ms);
        }
        let mut events = self.observe(op, now_ms);
        if let Some((until_ms, reason)) = self.check(op, user, now_ms) {
            // A recovery seen while refusing still has to reach the caller.
            self.push_pending(events);
            return Decision::Wait { until_ms, reason };
        }
        self.record(op, user.map(str::to_string), now_ms);
        events.extend(self.observe(op, now_ms));
        Decision::Granted(Grant { events })
    }

    /// Peek without recording: `Some((until_ms, reason))` when the call would wait.
    /// When several constraints apply the latest `until_ms` wins, so retrying at
    /// that time does not immediately hit another known constraint.
    pub fn check(
        &self,
        op: Operation,
        user: Option<&str>,
        now_ms: u64,
    ) -> Option<(u64, WaitReason)> {
        let mut best: Option<(u64, WaitReason)> = None;
        let mut consider = |until: u64, reason: WaitReason| {
            if best.as_ref().is_none_or(|(b, _)| until > *b) {
                best = Some((until, reason));
            }
        };

        if let Some(until) = self.cooldown_until(op, now_ms) {
            consider(until, WaitReason::Cooldown { op });
        }
        if op == Operation::Create {
            if let Some(max) = self.cfg.max_concurrent_sandboxes
                && self.live >= max
            {
                consider(
                    now_ms.saturating_add(CONCURRENCY_RECHECK_MS),
                    WaitReason::ConcurrentSandboxes {
                        live: self.live,
                        max,
                    },
                );
            }
            if let Some(interval) = self.cfg.min_create_interval {
                let interval_ms = dur_ms(interval);
                let last = self
                    .calls
                    .get(&Operation::Create)
                    .and_then(|q| q.back())
                    .map(|c| c.at_ms);
                if let Some(last) = last {
                    let next = last.saturating_add(interval_ms);
                    if next > now_ms {
                        consider(next, WaitReason::CreateRate { interval_ms });
                    }
                }
            }
        }
        if let Some(limit) = self.cfg.limits.get(&op) {
            let window_ms = dur_ms(limit.window);
            let cap = self.cap(limit.max);
            let empty = VecDeque::new();
            let q = self.calls.get(&op).unwrap_or(&empty);
            let start = q.partition_point(|c| c.at_ms.saturating_add(window_ms) <= now_ms);
            let at = |i: usize| q[i].at_ms;
            if let Some(until) = window_wait(start, q.len(), at, window_ms, cap, now_ms) {
                consider(
                    until,
                    WaitReason::Quota {
                        op,
                        used: count_u32(q.len() - start),
                        limit: limit.max,
                        window_ms,
                    },
                );
            }
        }
        if let (Some(limit), Some(u)) = (self.cfg.per_user, user) {
            let window_ms = dur_ms(limit.window);
            let empty = VecDeque::new();
            let q = self.users.get(u).unwrap_or(&empty);
            let start = q.partition_point(|t| t.saturating_add(window_ms) <= now_ms);
            let at = |i: usize| q[i];
            if let Some(until) = window_wait(start, q.len(), at, window_ms, limit.max, now_ms) {
                consider(
                    until,
                    WaitReason::UserQuota {
                        user: u.to_string(),
                        used: count_u32(q.len() - start),
                        limit: limit.max,
                        window_ms,
                    },
                );
            }
        }
        best
    }

    /// The provider answered 429: cool the operation down for everyone, and report
    /// its budget as spent until the cooldown ends.
    pub fn on_rate_limited(&mut self, op: Operation, retry_after: Option<Duration>, now_ms: u64) {
        let wait = dur_ms(retry_after.unwrap_or(self.cfg.default_cooldown));
        let until = now_ms.saturating_add(wait);
        // A shorter Retry-After must not cut an earlier, longer cooldown short.
        let slot = self.cooldowns.entry(op).or_insert(until);
        *slot = (*slot).max(until);
    }

    /// Call after a successful create.
    pub fn sandbox_started(&mut self) {
        self.live = self.live.saturating_add(1);
    }

    pub fn sandbox_stopped(&mut self) {
        self.live = self.live.saturating_sub(1);
    }

    /// Resynchronise with the provider's own list, which is the truth after a restart.
    pub fn set_live_sandboxes(&mut self, n: u32) {
        self.live = n;
    }

    pub fn live_sandboxes(&self) -> u32 {
        self.live
    }

    pub fn usage(&self, op: Operation, now_ms: u64) -> Usage {
        let limit = self.cfg.limits.get(&op).copied();
        let window_ms = self.window_ms(op);
        let empty = VecDeque::new();
        let q = self.calls.get(&op).unwrap_or(&empty);
        let start = q.partition_point(|c| c.at_ms.saturating_add(window_ms) <= now_ms);
        let count = calls_from(q, start, limit.is_some());
        let cooldown_until_ms = self.cooldown_until(op, now_ms);
        let resets_at_ms = q.get(start).map(|c| c.at_ms.saturating_add(window_ms));
        let (limit_max, remaining, ratio, mut state) = match limit {
            Some(l) => {
                let remaining = if cooldown_until_ms.is_some() {
                    0
                } else {
                    self.cap(l.max).saturating_sub(count)
                };
                (
                    Some(l.max),
                    Some(remaining),
                    Some(ratio(count, l.max)),
                    self.level(count, l.max),
                )
            }
            None => (None, None, None, UsageState::Ok),
        };
        if cooldown_until_ms.is_some() {
            state = UsageState::Blocked;
        }
        Usage {
            op,
            count,
            limit: limit_max,
            remaining,
            ratio,
            state,
            resets_at_ms,
            cooldown_until_ms,
        }
    }

    pub fn usages(&self, now_ms: u64) -> Vec<Usage> {
        Operation::ALL
            .iter()
            .map(|op| self.usage(*op, now_ms))
            .collect()
    }

    /// Drop records older than their window; returns how many call records were
    /// dropped. Recoveries it observes are queued for `take_events`.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let dropped = self.drop_expired(now_ms);
        for op in Operation::ALL {
            let events = self.observe(op, now_ms);
            self.push_pending(events);
        }
        dropped
    }

    /// Events observed outside a grant (by `prune` or a refused `acquire`).
    pub fn take_events(&mut self) -> Vec<UsageEvent> {
        self.pending.drain(..).collect()
    }

    pub fn record_count(&self) -> usize {
        self.calls.values().map(VecDeque::len).sum()
    }

    pub fn export(&self) -> LimiterSnapshot {
        LimiterSnapshot {
            calls: self
                .calls
                .iter()
                .flat_map(|(op, q)| q.iter().map(move |c| (*op, c.user.clone(), c.at_ms, c.n)))
                .collect(),
            cooldowns: self.cooldowns.iter().map(|(op, t)| (*op, *t)).collect(),
            alarms: self.alarms.iter().map(|(op, s)| (*op, *s)).collect(),
            live_sandboxes: self.live,
        }
    }

    /// Rebuild from a snapshot; a restart must not hand out a fresh window.
    pub fn restore(cfg: LimiterConfig, snap: LimiterSnapshot, now_ms: u64) -> Self {
        let mut me = RateLimiter::new(cfg);
        let mut calls = snap.calls;
        // Sorting by time first keeps every insert at the back, so restore is not
        // quadratic for a large snapshot.
        calls.sort_by_key(|(_, _, at, _)| *at);
        for (op, user, at, n) in calls {
            for _ in 0..n.max(1) {
                me.record(op, user.clone(), at);
            }
        }
        for (op, until) in snap.cooldowns {
            let slot = me.cooldowns.entry(op).or_insert(until);
            *slot = (*slot).max(until);
        }
        me.live = snap.live_sandboxes;
        // Pruning here must not observe thresholds: the old instance would report a
        // pending recovery on its next acquire, and so must this one.
        me.drop_expired(now_ms);
        for (op, state) in snap.alarms {
            me.alarms.insert(op, state);
        }
        for op in Operation::ALL {
            if me.alarms.contains_key(&op) {
                continue;
            }
            // Older snapshots lack alarms: assume the current level was announced,
            // since repeating a warning after every restart is noise.
            if let Some(l) = me.cfg.limits.get(&op).copied() {
                let count = me.count(op, now_ms);
                let level = me.level(count, l.max);
                if level != UsageState::Ok {
                    me.alarms.insert(op, level);
                }
            }
        }
        me
    }

    fn record(&mut self, op: Operation, user: Option<String>, at_ms: u64) {
        // Only a per-user quota needs to know whose calls these were; with one, records keep
        // their exact times so that the users' index rebuilt at restore is exact too.
        let user = user.filter(|_| self.cfg.per_user.is_some());
        if let Some(u) = &user {
            let uq = self.users.entry(u.clone()).or_default();
            let upos = uq.partition_point(|t| *t <= at_ms);
            uq.insert(upos, at_ms);
        }
        let limited = self.cfg.limits.contains_key(&op);
        let at_ms = if limited || user.is_some() {
            at_ms
        } else {
            at_ms - at_ms % UNLIMITED_BUCKET_MS
        };
        let q = self.calls.entry(op).or_default();
        if !limited
            && let Some(last) = q.back_mut()
            && last.at_ms == at_ms
            && last.user == user
        {
            last.n = last.n.saturating_add(1);
            return;
        }
        // A clock that stepped back must not break the ordering the windows rely on.
        let pos = q.partition_point(|c| c.at_ms <= at_ms);
        q.insert(pos, Call { at_ms, user, n: 1 });
    }

    fn drop_expired(&mut self, now_ms: u64) -> usize {
        let mut dropped = 0;
        for op in Operation::ALL {
            dropped += self.drop_expired_op(op, now_ms);
        }
        let user_window = self.cfg.per_user.map(|l| dur_ms(l.window)).unwrap_or(0);
        self.users.retain(|_, q| {
            pop_expired(q, user_window, now_ms);
            !q.is_empty()
        });
        self.cooldowns.retain(|_, until| *until > now_ms);
        dropped
    }

    fn drop_expired_op(&mut self, op: Operation, now_ms: u64) -> usize {
        let keep = self.retention_ms(op);
        let Some(q) = self.calls.get_mut(&op) else {
            return 0;
        };
        let mut dropped = 0;
        while q
            .front()
            .is_some_and(|c| c.at_ms.saturating_add(keep) <= now_ms)
        {
            dropped += q.pop_front().map_or(0, |c| c.n as usize);
        }
        if q.is_empty() {
            self.calls.remove(&op);
        }
        dropped
    }

    fn drop_expired_user(&mut self, user: &str, now_ms: u64) {
        let window = self.cfg.per_user.map(|l| dur_ms(l.window)).unwrap_or(0);
        if let Some(q) = self.users.get_mut(user) {
            pop_expired(q, window, now_ms);
            if q.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Move the op's announced level towards its current one, returning what the
    /// caller should hear about.
    fn observe(&mut self, op: Operation, now_ms: u64) -> Vec<UsageEvent> {
        let Some(limit) = self.cfg.limits.get(&op).copied() else {
            self.alarms.remove(&op);
            return Vec::new();
        };
        let count = self.count(op, now_ms);
        let level = self.level(count, limit.max);
        let prev = self.alarms.get(&op).copied().unwrap_or(UsageState::Ok);
        let mut events = Vec::new();
        if level < prev {
            // Falling only re-arms; just the return to below warn_ratio is news.
            if level == UsageState::Ok {
                events.push(UsageEvent::Recovered { op });
            }
        } else {
            let (used, limit) = (count, limit.max);
            if prev < UsageState::Warning && level >= UsageState::Warning {
                events.push(UsageEvent::Warning { op, used, limit });
            }
            if prev < UsageState::Alert && level >= UsageState::Alert {
                events.push(UsageEvent::Alert { op, used, limit });
            }
            if prev < UsageState::Blocked && level >= UsageState::Blocked {
                events.push(UsageEvent::Blocked { op, used, limit });
            }
        }
        if level == UsageState::Ok {
            self.alarms.remove(&op);
        } else {
            self.alarms.insert(op, level);
        }
        events
    }

    fn push_pending(&mut self, events: Vec<UsageEvent>) {
        self.pending.extend(events);
        while self.pending.len() > MAX_PENDING_EVENTS {
            self.pending.pop_front();
        }
    }

    fn count(&self, op: Operation, now_ms: u64) -> u32 {
        let window_ms = self.window_ms(op);
        let Some(q) = self.calls.get(&op) else {
            return 0;
        };
        let start = q.partition_point(|c| c.at_ms.saturating_add(window_ms) <= now_ms);
        calls_from(q, start, self.cfg.limits.contains_key(&op))
    }

    fn level(&self, count: u32, max: u32) -> UsageState {
        let r = ratio(count, max);
        if count >= self.cap(max) {
            UsageState::Blocked
        } else if r >= self.cfg.alert_ratio {
            UsageState::Alert
        } else if r >= self.cfg.warn_ratio {
            UsageState::Warning
        } else {
            UsageState::Ok
        }
    }

    /// Calls allowed in one window: `block_ratio` of the limit, at least one unless
    /// the limit is zero, so a tiny ratio cannot make an op silently unusable.
    fn cap(&self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        // The epsilon keeps 0.9 * 10 from flooring to 8 through float error.
        let raw = (self.cfg.block_ratio * f64::from(max) + 1e-9).floor();
        // Float-to-int `as` saturates and maps NaN to 0, which the max(1) covers.
        (raw as u32).max(1)
    }

    fn window_ms(&self, op: Operation) -> u64 {
        dur_ms(
            self.cfg
                .limits
                .get(&op)
                .map(|l| l.window)
                .unwrap_or(UNLIMITED_TRACKING_WINDOW),
        )
    }

    /// A record must outlive every decision that can still look at it.
    fn retention_ms(&self, op: Operation) -> u64 {
        let mut keep = self.window_ms(op);
        if let Some(l) = self.cfg.per_user {
            keep = keep.max(dur_ms(l.window));
        }
        if op == Operation::Create
            && let Some(i) = self.cfg.min_create_interval
        {
            keep = keep.max(dur_ms(i));
        }
        keep
    }

    fn cooldown_until(&self, op: Operation, now_ms: u64) -> Option<u64> {
        self.cooldowns.get(&op).copied().filter(|t| *t > now_ms)
    }
}

fn dur_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn ratio(count: u32, max: u32) -> f64 {
    if max == 0 {
        // A zero limit is always exhausted.
        f64::INFINITY
    } else {
        f64::from(count) / f64::from(max)
    }
}

/// When one more call fits under `cap`, or `None` if it fits now. The sorted window
/// is `at(start..len)`; it has to shed enough of its oldest calls to leave `cap - 1`.
fn window_wait(
    start: usize,
    len: usize,
    at: impl Fn(usize) -> u64,
    window_ms: u64,
    cap: u32,
    now_ms: u64,
) -> Option<u64> {
    let live = len - start;
    let cap = cap as usize;
    if live < cap {
        return None;
    }
    if cap == 0 {
        // Nothing ever frees a zero limit; recheck once a window so a config change
        // is picked up.
        return Some(now_ms.saturating_add(window_ms.max(1)));
    }
    Some(at(len - cap).saturating_add(window_ms))
}

fn pop_expired(q: &mut VecDeque<u64>, window_ms: u64, now_ms: u64) {
    while q
        .front()
        .is_some_and(|t| t.saturating_add(window_ms) <= now_ms)
    {
        q.pop_front();
    }
}

fn fmt_ms(ms: u64) -> String {
    const H: u64 = 3_600_000;
    const M: u64 = 60_000;
    const S: u64 = 1000;
    if ms > 0 && ms.is_multiple_of(H) {
        format!("{}h", ms / H)
    } else if ms > 0 && ms.is_multiple_of(M) {
        format!("{}m", ms / M)
    } else if ms > 0 && ms.is_multiple_of(S) {
        format!("{}s", ms / S)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: u64 = 3_600_000;

    /// Only the limits a test names, so one constraint is exercised at a time.
    fn bare() -> LimiterConfig {
        LimiterConfig {
            max_concurrent_sandboxes: None,
            min_create_interval: None,
            ..LimiterConfig::default()
        }
    }

    fn with_limit(op: Operation, max: u32, window_ms: u64) -> LimiterConfig {
        let mut cfg = bare();
        cfg.limits.insert(
            op,
            OpLimit {
                max,
                window: Duration::from_millis(window_ms),
            },
        );
        cfg
    }

    fn grant_events(d: Decision) -> Vec<UsageEvent> {
        match d {
            Decision::Granted(g) => g.events,
            Decision::Wait { until_ms, reason } => {
                panic!("expected a grant, got wait until {until_ms}: {reason:?}")
            }
        }
    }

    fn wait_of(d: Decision) -> (u64, WaitReason) {
        match d {
            Decision::Wait { until_ms, reason } => (until_ms, reason),
            Decision::Granted(g) => panic!("expected a wait, got a grant {g:?}"),
        }
    }

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
            assert_eq!(op.to_string(), op.as_str());
        }
        assert_eq!(Operation::Create.as_str(), "sandbox_create");
        assert_eq!(Operation::Run.as_str(), "command_run");
        assert_eq!(Operation::List.as_str(), "sandbox_list");
        assert_eq!(Operation::parse("create"), None);
        let mut names: Vec<_> = Operation::ALL.iter().map(|o| o.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 8);
    }

    #[test]
    fn the_101st_call_waits_for_the_oldest_to_leave_the_window() {
        let mut rl = RateLimiter::new(with_limit(Operation::Create, 100, HOUR));
        for i in 0..100 {
            assert!(
                rl.acquire(Operation::Create, None, 1000 + i * 10)
                    .is_granted()
            );
        }
        let (until, reason) = wait_of(rl.acquire(Operation::Create, None, 5000));
        assert_eq!(until, 1000 + HOUR);
        assert_eq!(
            reason,
            WaitReason::Quota {
                op: Operation::Create,
                used: 100,
                limit: 100,
                window_ms: HOUR
            }
        );
        assert!(!rl.acquire(Operation::Create, None, until - 1).is_granted());
        assert!(rl.acquire(Operation::Create, None, until).is_granted());
        // Only one slot freed: the next waits for the second-oldest call.
        let (until2, _) = wait_of(rl.acquire(Operation::Create, None, until));
        assert_eq!(until2, 1010 + HOUR);
    }

    #[test]
    fn refused_calls_are_not_recorded() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 2, 1000));
        rl.acquire(Operation::Run, None, 0);
        rl.acquire(Operation::Run, None, 0);
        for t in 1..500 {
            assert!(!rl.acquire(Operation::Run, None, t).is_granted());
        }
        assert_eq!(rl.record_count(), 2);
        assert!(rl.acquire(Operation::Run, None, 1000).is_granted());
    }

    #[test]
    fn block_ratio_below_one_blocks_early() {
        let mut cfg = with_limit(Operation::Run, 10, 1000);
        cfg.block_ratio = 0.5;
        let mut rl = RateLimiter::new(cfg);
        for _ in 0..5 {
            assert!(rl.acquire(Operation::Run, None, 0).is_granted());
        }
        let (until, _) = wait_of(rl.acquire(Operation::Run, None, 0));
        assert_eq!(until, 1000);
        let u = rl.usage(Operation::Run, 0);
        assert_eq!(u.remaining, Some(0));
        assert_eq!(u.state, UsageState::Blocked);
    }

    #[test]
    fn zero_limit_never_grants() {
        let mut rl = RateLimiter::new(with_limit(Operation::Kill, 0, 1000));
        let (until, _) = wait_of(rl.acquire(Operation::Kill, None, 50));
        assert_eq!(until, 1050);
        assert!(!rl.acquire(Operation::Kill, None, 1050).is_granted());
    }

    #[test]
    fn thresholds_fire_once_per_crossing() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 10, 1000));
        let mut all = Vec::new();
        for i in 0..10u64 {
            let ev = grant_events(rl.acquire(Operation::Run, None, i));
            match i {
                7 => assert_eq!(
                    ev,
                    vec![UsageEvent::Warning {
                        op: Operation::Run,
                        used: 8,
                        limit: 10
                    }]
                ),
                8 => assert_eq!(
                    ev,
                    vec![UsageEvent::Alert {
                        op: Operation::Run,
                        used: 9,
                        limit: 10
                    }]
                ),
                9 => assert_eq!(
                    ev,
                    vec![UsageEvent::Blocked {
                        op: Operation::Run,
                        used: 10,
                        limit: 10
                    }]
                ),
                _ => assert!(ev.is_empty(), "call {i}: {ev:?}"),
            }
            all.extend(ev);
        }
        assert_eq!(all.len(), 3);
        // Refusals at the limit announce nothing more.
        assert!(!rl.acquire(Operation::Run, None, 20).is_granted());
        assert!(rl.take_events().is_empty());
    }

    #[test]
    fn warning_does_not_repeat_while_above_warn_ratio() {
        let mut rl = RateLimiter::new(with_limit(Operation::Read, 100, HOUR));
        let mut warnings = 0;
        for i in 0..89u64 {
            let ev = grant_events(rl.acquire(Operation::Read, None, i));
            warnings += ev
                .iter()
                .filter(|e| matches!(e, UsageEvent::Warning { .. }))
                .count();
        }
        assert_eq!(warnings, 1);
    }

    #[test]
    fn recovery_rearms_warning_and_is_reported_on_the_next_acquire() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 10, 1000));
        for i in 0..8u64 {
            rl.acquire(Operation::Run, None, i);
        }
        // At 1001 the calls at 0 and 1 have left: 6/10 is below warn_ratio.
        let ev = grant_events(rl.acquire(Operation::Run, None, 1001));
        assert_eq!(ev, vec![UsageEvent::Recovered { op: Operation::Run }]);
        // 7 now; the next reaches 8 again and warns anew.
        let ev = grant_events(rl.acquire(Operation::Run, None, 1001));
        assert_eq!(
            ev,
            vec![UsageEvent::Warning {
                op: Operation::Run,
                used: 8,
                limit: 10
            }]
        );
    }

    #[test]
    fn recovery_and_warning_in_one_grant() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 10, 1000));
        for i in 0..10u64 {
            rl.acquire(Operation::Run, None, i);
        }
        // At 1002 three calls left (7 live): recovered, then this grant makes 8.
        let ev = grant_events(rl.acquire(Operation::Run, None, 1002));
        assert_eq!(
            ev,
            vec![
                UsageEvent::Recovered { op: Operation::Run },
                UsageEvent::Warning {
                    op: Operation::Run,
                    used: 8,
                    limit: 10
                }
            ]
        );
    }

    #[test]
    fn alert_rearms_below_alert_ratio_without_repeating_warning() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 10, 1000));
        for i in 0..9u64 {
            rl.acquire(Operation::Run, None, i);
        }
        // At 1000 one call left: 8/10, still warned, alert re-armed silently.
        assert_eq!(rl.prune(1000), 1);
        assert!(rl.take_events().is_empty());
        let ev = grant_events(rl.acquire(Operation::Run, None, 1000));
        assert_eq!(
            ev,
            vec![UsageEvent::Alert {
                op: Operation::Run,
                used: 9,
                limit: 10
            }]
        );
    }

    #[test]
    fn prune_reports_recovery_out_of_band() {
        let mut rl = RateLimiter::new(with_limit(Operation::Write, 10, 1000));
        for _ in 0..9 {
            rl.acquire(Operation::Write, None, 0);
        }
        assert_eq!(rl.prune(999), 0);
        assert!(rl.take_events().is_empty());
        assert_eq!(rl.prune(1000), 9);
        assert_eq!(
            rl.take_events(),
            vec![UsageEvent::Recovered {
                op: Operation::Write
            }]
        );
        assert_eq!(rl.record_count(), 0);
        // Reported once only.
        rl.prune(2000);
        assert!(rl.take_events().is_empty());
        let ev = grant_events(rl.acquire(Operation::Write, None, 2000));
        assert!(ev.is_empty());
    }

    #[test]
    fn refused_acquire_queues_an_observed_recovery() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 10, 1000));
        for _ in 0..8 {
            rl.acquire(Operation::Run, None, 0);
        }
        rl.on_rate_limited(Operation::Run, Some(Duration::from_secs(5)), 500);
        assert!(!rl.acquire(Operation::Run, None, 1000).is_granted());
        assert_eq!(
            rl.take_events(),
            vec![UsageEvent::Recovered { op: Operation::Run }]
        );
    }

    #[test]
    fn pending_events_stay_bounded() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 1, 10));
        let mut t = 0;
        for _ in 0..500 {
            rl.acquire(Operation::Run, None, t);
            t += 10;
            rl.prune(t);
        }
        assert_eq!(rl.take_events().len(), MAX_PENDING_EVENTS);
        assert!(rl.take_events().is_empty());
    }

    #[test]
    fn cooldown_blocks_every_caller_of_that_op_only() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 100, HOUR));
        rl.on_rate_limited(Operation::Run, Some(Duration::from_secs(5)), 1000);
        for user in [None, Some("alice"), Some("bob")] {
            let (until, reason) = wait_of(rl.acquire(Operation::Run, user, 2000));
            assert_eq!(until, 6000);
            assert_eq!(reason, WaitReason::Cooldown { op: Operation::Run });
        }
        assert!(rl.acquire(Operation::Read, None, 2000).is_granted());
        assert!(rl.acquire(Operation::Create, None, 2000).is_granted());
        let u = rl.usage(Operation::Run, 2000);
        assert_eq!(u.cooldown_until_ms, Some(6000));
        assert_eq!(u.remaining, Some(0));
        assert_eq!(u.state, UsageState::Blocked);
        assert!(rl.acquire(Operation::Run, None, 6000).is_granted());
        let u = rl.usage(Operation::Run, 6000);
        assert_eq!(u.cooldown_until_ms, None);
        assert_eq!(u.remaining, Some(99));
        assert_eq!(u.state, UsageState::Ok);
    }

    #[test]
    fn cooldown_defaults_and_never_shortens() {
        let mut rl = RateLimiter::new(bare());
        rl.on_rate_limited(Operation::List, None, 0);
        assert_eq!(
            rl.check(Operation::List, None, 1).map(|w| w.0),
            Some(30_000)
        );
        rl.on_rate_limited(Operation::List, Some(Duration::from_secs(1)), 100);
        assert_eq!(
            rl.check(Operation::List, None, 200).map(|w| w.0),
            Some(30_000)
        );
        rl.on_rate_limited(Operation::List, Some(Duration::from_secs(60)), 100);
        assert_eq!(
            rl.check(Operation::List, None, 200).map(|w| w.0),
            Some(60_100)
        );
        // An unlimited op under cooldown shows as blocked too.
        assert_eq!(rl.usage(Operation::List, 200).state, UsageState::Blocked);
        assert_eq!(rl.usage(Operation::List, 200).remaining, None);
        rl.prune(60_100);
        assert_eq!(rl.export().cooldowns, vec![]);
    }

    #[test]
    fn concurrent_sandboxes_cap_creation_only() {
        let mut cfg = bare();
        cfg.max_concurrent_sandboxes = Some(2);
        let mut rl = RateLimiter::new(cfg);
        assert!(rl.acquire(Operation::Create, None, 0).is_granted());
        rl.sandbox_started();
        assert!(rl.acquire(Operation::Create, None, 0).is_granted());
        rl.sandbox_started();
        let (until, reason) = wait_of(rl.acquire(Operation::Create, None, 10));
        assert_eq!(until, 10 + CONCURRENCY_RECHECK_MS);
        assert_eq!(reason, WaitReason::ConcurrentSandboxes { live: 2, max: 2 });
        assert!(rl.acquire(Operation::Run, None, 10).is_granted());
        rl.sandbox_stopped();
        assert_eq!(rl.live_sandboxes(), 1);
        assert!(rl.acquire(Operation::Create, None, 20).is_granted());
        rl.set_live_sandboxes(5);
        assert!(!rl.acquire(Operation::Create, None, 30).is_granted());
        rl.set_live_sandboxes(0);
        rl.sandbox_stopped();
        assert_eq!(rl.live_sandboxes(), 0, "stop never underflows");
    }

    #[test]
    fn creation_is_paced_by_min_interval() {
        let mut cfg = bare();
        cfg.min_create_interval = Some(Duration::from_secs(1));
        let mut rl = RateLimiter::new(cfg);
        assert!(rl.acquire(Operation::Create, None, 10_000).is_granted());
        let (until, reason) = wait_of(rl.acquire(Operation::Create, None, 10_500));
        assert_eq!(until, 11_000);
        assert_eq!(reason, WaitReason::CreateRate { interval_ms: 1000 });
        // Other operations are not paced.
        assert!(rl.acquire(Operation::Run, None, 10_500).is_granted());
        assert!(!rl.acquire(Operation::Create, None, 10_999).is_granted());
        assert!(rl.acquire(Operation::Create, None, 11_000).is_granted());
    }

    #[test]
    fn the_latest_constraint_wins() {
        let mut cfg = with_limit(Operation::Create, 1, 10_000);
        cfg.min_create_interval = Some(Duration::from_secs(1));
        let mut rl = RateLimiter::new(cfg);
        rl.acquire(Operation::Create, None, 0);
        let (until, reason) = wait_of(rl.acquire(Operation::Create, None, 100));
        assert_eq!(until, 10_000);
        assert!(matches!(reason, WaitReason::Quota { .. }));
        rl.on_rate_limited(Operation::Create, Some(Duration::from_secs(20)), 100);
        let (until, reason) = wait_of(rl.acquire(Operation::Create, None, 100));
        assert_eq!(until, 20_100);
        assert_eq!(
            reason,
            WaitReason::Cooldown {
                op: Operation::Create
            }
        );
    }

    #[test]
    fn per_user_quota_spans_operations_and_spares_others() {
        let mut cfg = bare();
        cfg.per_user = Some(OpLimit {
            max: 3,
            window: Duration::from_secs(60),
        });
        let mut rl = RateLimiter::new(cfg);
        assert!(rl.acquire(Operation::Create, Some("alice"), 0).is_granted());
        assert!(rl.acquire(Operation::Run, Some("alice"), 10).is_granted());
        assert!(rl.acquire(Operation::Read, Some("alice"), 20).is_granted());
        let (until, reason) = wait_of(rl.acquire(Operation::Write, Some("alice"), 30));
        assert_eq!(until, 60_000);
        assert_eq!(
            reason,
            WaitReason::UserQuota {
                user: "alice".into(),
                used: 3,
                limit: 3,
                window_ms: 60_000
            }
        );
        assert!(rl.acquire(Operation::Write, Some("bob"), 30).is_granted());
        assert!(rl.acquire(Operation::Write, None, 30).is_granted());
        assert!(
            rl.acquire(Operation::Write, Some("alice"), 60_000)
                .is_granted()
        );
    }

    #[test]
    fn per_user_quota_is_off_by_default() {
        assert_eq!(LimiterConfig::default().per_user, None);
        let mut rl = RateLimiter::new(bare());
        for i in 0..1000 {
            assert!(rl.acquire(Operation::Read, Some("alice"), i).is_granted());
        }
    }

    #[test]
    fn unlimited_ops_are_tracked_and_expire() {
        let mut rl = RateLimiter::new(bare());
        for i in 0..50 {
            assert!(rl.acquire(Operation::List, None, i).is_granted());
        }
        let u = rl.usage(Operation::List, 100);
        assert_eq!(u.count, 50);
        assert_eq!(u.limit, None);
        assert_eq!(u.remaining, None);
        assert_eq!(u.ratio, None);
        assert_eq!(u.state, UsageState::Ok);
        let window = dur_ms(UNLIMITED_TRACKING_WINDOW);
        assert_eq!(u.resets_at_ms, Some(window));
        assert_eq!(rl.prune(window + 49), 50);
        assert_eq!(rl.record_count(), 0);
    }

    #[test]
    fn an_hour_of_unlimited_calls_at_1500_per_second_keeps_a_record_per_second() {
        let mut rl = RateLimiter::new(bare());
        let mut calls = 0u64;
        for ms in 0..3_600_000u64 {
            // 1.5 calls per millisecond.
            for _ in 0..(1 + ms % 2) {
                assert!(rl.acquire(Operation::Run, Some("u"), ms).is_granted());
                calls += 1;
            }
        }
        assert_eq!(calls, 5_400_000);
        assert_eq!(rl.record_count(), 3600, "one record per second");
        let u = rl.usage(Operation::Run, 3_599_999);
        assert_eq!(u.count as u64, calls, "every call counted");
        let snap = rl.export();
        assert_eq!(snap.calls.len(), 3600);
        let back = RateLimiter::restore(bare(), snap, 3_599_999);
        assert_eq!(back.usage(Operation::Run, 3_599_999).count as u64, calls);
        // Limited operations keep one record per call: their waits need each call's time.
        let mut limited = RateLimiter::new(with_limit(Operation::Run, 10, 1000));
        for i in 0..10 {
            assert!(limited.acquire(Operation::Run, None, i).is_granted());
        }
        assert_eq!(limited.record_count(), 10);
    }

    #[test]
    fn usage_reports_window_state() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 10, 1000));
        let u = rl.usage(Operation::Run, 0);
        assert_eq!((u.count, u.remaining, u.resets_at_ms), (0, Some(10), None));
        for i in 0..9u64 {
            rl.acquire(Operation::Run, None, 100 + i);
        }
        let u = rl.usage(Operation::Run, 500);
        assert_eq!(u.op, Operation::Run);
        assert_eq!(u.count, 9);
        assert_eq!(u.limit, Some(10));
        assert_eq!(u.remaining, Some(1));
        assert!((u.ratio.unwrap() - 0.9).abs() < 1e-12);
        assert_eq!(u.state, UsageState::Alert);
        assert_eq!(u.resets_at_ms, Some(1100));
        assert_eq!(u.cooldown_until_ms, None);
        assert_eq!(rl.usage(Operation::Run, 1100).count, 8);
        assert_eq!(rl.usage(Operation::Run, 1100).state, UsageState::Warning);
        let all = rl.usages(500);
        assert_eq!(all.len(), 8);
        assert_eq!(
            all.iter().map(|u| u.op).collect::<Vec<_>>(),
            Operation::ALL.to_vec()
        );
    }

    #[test]
    fn check_peeks_without_recording() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 1, 1000));
        assert_eq!(rl.check(Operation::Run, None, 0), None);
        assert_eq!(rl.check(Operation::Run, None, 0), None);
        assert_eq!(rl.record_count(), 0);
        rl.acquire(Operation::Run, None, 0);
        assert_eq!(rl.check(Operation::Run, None, 5).map(|w| w.0), Some(1000));
        assert_eq!(rl.record_count(), 1);
    }

    #[test]
    fn a_clock_stepping_back_keeps_windows_consistent() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 3, 1000));
        rl.acquire(Operation::Run, None, 5000);
        rl.acquire(Operation::Run, None, 4000);
        rl.acquire(Operation::Run, None, 4500);
        let snap = rl.export();
        let times: Vec<u64> = snap.calls.iter().map(|c| c.2).collect();
        assert_eq!(times, vec![4000, 4500, 5000]);
        let (until, _) = wait_of(rl.acquire(Operation::Run, None, 4600));
        assert_eq!(until, 5000);
    }

    #[test]
    fn a_simulated_day_at_the_limit_keeps_records_bounded() {
        let mut rl = RateLimiter::new(with_limit(Operation::Create, 100, HOUR));
        let mut max_records = 0;
        let mut granted = 0;
        let mut t = 0;
        while t < 24 * HOUR {
            assert!(
                rl.acquire(Operation::Create, Some("ci"), t).is_granted(),
                "1 call per 36 s fits 100/h exactly (t={t})"
            );
            granted += 1;
            rl.prune(t);
            max_records = max_records.max(rl.record_count());
            t += 36_000;
        }
        assert_eq!(granted, 2400);
        assert!(max_records <= 101, "records grew to {max_records}");
        let snap = rl.export();
        assert!(snap.calls.len() <= 101);
    }

    #[test]
    fn a_simulated_day_over_the_limit_stays_capped() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 100, HOUR));
        let mut granted = Vec::new();
        let mut t = 0;
        while t < 24 * HOUR {
            if rl.acquire(Operation::Run, None, t).is_granted() {
                granted.push(t);
            }
            if t % 60_000 == 0 {
                rl.prune(t);
                assert!(rl.record_count() <= 101);
            }
            t += 10_000;
        }
        assert_eq!(granted.len(), 24 * 100);
        for (i, a) in granted.iter().enumerate() {
            let n = granted[i..].iter().take_while(|b| **b < a + HOUR).count();
            assert!(n <= 100);
        }
    }

    #[test]
    fn restore_keeps_the_window_and_cooldowns() {
        let mut cfg = with_limit(Operation::Create, 3, 10_000);
        cfg.per_user = Some(OpLimit {
            max: 2,
            window: Duration::from_secs(10),
        });
        let mut rl = RateLimiter::new(cfg.clone());
        rl.acquire(Operation::Create, Some("alice"), 0);
        rl.acquire(Operation::Create, Some("alice"), 100);
        rl.acquire(Operation::Create, None, 200);
        rl.on_rate_limited(Operation::Run, Some(Duration::from_secs(30)), 200);
        rl.sandbox_started();
        let snap = rl.export();
        assert_eq!(snap.calls.len(), 3);
        assert_eq!(snap.cooldowns, vec![(Operation::Run, 30_200)]);
        assert_eq!(snap.live_sandboxes, 1);

        let mut back = RateLimiter::restore(cfg, snap.clone(), 300);
        assert_eq!(back.live_sandboxes(), 1);
        assert_eq!(back.export(), snap);
        for op in Operation::ALL {
            for user in [None, Some("alice"), Some("bob")] {
                assert_eq!(back.check(op, user, 300), rl.check(op, user, 300));
            }
        }
        assert_eq!(back.usages(300), rl.usages(300));
        // No fresh window after a restart.
        let (until, _) = wait_of(back.acquire(Operation::Create, None, 300));
        assert_eq!(until, 10_000);
        let (until, _) = wait_of(back.acquire(Operation::Run, None, 300));
        assert_eq!(until, 30_200);
    }

    #[test]
    fn restore_drops_what_has_expired() {
        let cfg = with_limit(Operation::Run, 5, 1000);
        let mut rl = RateLimiter::new(cfg.clone());
        rl.acquire(Operation::Run, None, 0);
        rl.acquire(Operation::Run, None, 900);
        rl.on_rate_limited(Operation::Run, Some(Duration::from_millis(500)), 0);
        let back = RateLimiter::restore(cfg, rl.export(), 1000);
        assert_eq!(back.record_count(), 1);
        assert_eq!(back.export().cooldowns, vec![]);
    }

    #[test]
    fn a_tighter_limit_after_restore_waits_until_enough_calls_leave() {
        let mut rl = RateLimiter::new(with_limit(Operation::Run, 5, 1000));
        for t in [0, 100, 200, 300, 400] {
            rl.acquire(Operation::Run, None, t);
        }
        let back = RateLimiter::restore(with_limit(Operation::Run, 3, 1000), rl.export(), 500);
        // Five live calls against a cap of three: the third-oldest must leave first.
        let (until, reason) = back.check(Operation::Run, None, 500).unwrap();
        assert_eq!(until, 1200);
        assert!(matches!(
            reason,
            WaitReason::Quota {
                used: 5,
                limit: 3,
                ..
            }
        ));
    }

    #[test]
    fn restore_without_alarms_does_not_repeat_warnings() {
        let cfg = with_limit(Operation::Run, 10, 1000);
        let mut rl = RateLimiter::new(cfg.clone());
        for _ in 0..8 {
            rl.acquire(Operation::Run, None, 0);
        }
        let mut snap = rl.export();
        assert_eq!(snap.alarms, vec![(Operation::Run, UsageState::Warning)]);
        snap.alarms.clear();
        let mut back = RateLimiter::restore(cfg, snap, 10);
        // 9/10 is a new alert, but the warning was already announced before the restart.
        assert_eq!(
            grant_events(back.acquire(Operation::Run, None, 10)),
            vec![UsageEvent::Alert {
                op: Operation::Run,
                used: 9,
                limit: 10
            }]
        );
    }

    #[test]
    fn descriptions_are_lowercase_and_informative() {
        let mut rl = RateLimiter::new(with_limit(Operation::Create, 100, HOUR));
        for _ in 0..100 {
            rl.acquire(Operation::Create, None, 0);
        }
        let d = rl.acquire(Operation::Create, None, 1000);
        let text = d.describe(1000);
        assert_eq!(
            text,
            "sandbox_create quota reached (100/100 per 1h), frees in 3599000 ms"
        );
        let reasons = [
            WaitReason::Cooldown { op: Operation::Run },
            WaitReason::ConcurrentSandboxes { live: 20, max: 20 },
            WaitReason::CreateRate { interval_ms: 1500 },
            WaitReason::UserQuota {
                user: "u1".into(),
                used: 5,
                limit: 5,
                window_ms: 120_000,
            },
        ];
        let texts: Vec<String> = reasons.iter().map(WaitReason::describe).collect();
        assert_eq!(
            texts,
            vec![
                "command_run cooling down after the provider answered 429",
                "concurrent sandbox limit reached (20/20 live)",
                "sandbox creation paced at one per 1500ms",
                "user u1 quota reached (5/5 per 2m)",
            ]
        );
        for t in &texts {
            assert_eq!(t, &t.to_lowercase());
        }
        assert_eq!(fmt_ms(30_000), "30s");
        assert_eq!(fmt_ms(0), "0ms");
        assert_eq!(Decision::Granted(Grant::default()).describe(0), "granted");
    }

    // ---- property tests ----

    #[derive(Debug, Clone)]
    enum Step {
        Acquire { op: usize, user: usize, dt: u64 },
        RateLimited { op: usize, retry_ms: Option<u64> },
        Prune { dt: u64 },
        Started,
        Stopped,
    }

    const OPS: [Operation; 3] = [Operation::Create, Operation::Run, Operation::Read];
    const USERS: [Option<&str>; 3] = [None, Some("alice"), Some("bob")];

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (0..3usize, 0..3usize, 0..400u64)
                .prop_map(|(op, user, dt)| Step::Acquire { op, user, dt }),
            1 => (0..3usize, proptest::option::of(0..3000u64))
                .prop_map(|(op, retry_ms)| Step::RateLimited { op, retry_ms }),
            1 => (0..2000u64).prop_map(|dt| Step::Prune { dt }),
            1 => Just(Step::Started),
            1 => Just(Step::Stopped),
        ]
    }

    /// Create and Run limited, Read unlimited, optional user quota and pacing.
    fn config() -> impl Strategy<Value = LimiterConfig> {
        (
            1..8u32,
            1..3000u64,
            1..8u32,
            1..3000u64,
            proptest::option::of((1..6u32, 1..3000u64)),
            proptest::option::of(1..500u64),
            proptest::option::of(0..4u32),
        )
            .prop_map(|(cmax, cwin, rmax, rwin, user, interval, conc)| {
                let mut cfg = with_limit(Operation::Create, cmax, cwin);
                cfg.limits.insert(
                    Operation::Run,
                    OpLimit {
                        max: rmax,
                        window: Duration::from_millis(rwin),
                    },
                );
                cfg.per_user = user.map(|(max, w)| OpLimit {
                    max,
                    window: Duration::from_millis(w),
                });
                cfg.min_create_interval = interval.map(Duration::from_millis);
                cfg.max_concurrent_sandboxes = conc;
                cfg
            })
    }

    /// Applies one step; returns the decision of an acquire and advances `now`.
    fn apply(rl: &mut RateLimiter, s: &Step, now: &mut u64) -> Option<Decision> {
        match *s {
            Step::Acquire { op, user, dt } => {
                *now += dt;
                Some(rl.acquire(OPS[op], USERS[user], *now))
            }
            Step::RateLimited { op, retry_ms } => {
                rl.on_rate_limited(OPS[op], retry_ms.map(Duration::from_millis), *now);
                None
            }
            Step::Prune { dt } => {
                *now += dt;
                rl.prune(*now);
                None
            }
            Step::Started => {
                rl.sandbox_started();
                None
            }
            Step::Stopped => {
                rl.sandbox_stopped();
                None
            }
        }
    }

    /// Largest number of timestamps in any half-open window `[t, t + window)`.
    fn brute_max_in_window(times: &[u64], window: u64) -> usize {
        times
            .iter()
            .map(|a| {
                times
                    .iter()
                    .filter(|b| **b >= *a && **b < a + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_grants_more_than_max_in_any_window(
            cfg in config(),
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            let mut rl = RateLimiter::new(cfg.clone());
            let mut now = 0;
            let mut granted: BTreeMap<Operation, Vec<u64>> = BTreeMap::new();
            let mut by_user: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
            for s in &steps {
                let Some(d) = apply(&mut rl, s, &mut now) else { continue };
                let Step::Acquire { op, user, .. } = *s else { unreachable!() };
                match d {
                    Decision::Granted(_) => {
                        granted.entry(OPS[op]).or_default().push(now);
                        if let Some(u) = USERS[user] {
                            by_user.entry(u).or_default().push(now);
                        }
                    }
                    Decision::Wait { until_ms, .. } => prop_assert!(until_ms > now),
                }
            }
            for (op, limit) in &cfg.limits {
                let times = granted.get(op).cloned().unwrap_or_default();
                let worst = brute_max_in_window(&times, dur_ms(limit.window));
                prop_assert!(worst <= limit.max as usize, "{op}: {worst} > {}", limit.max);
            }
            if let Some(limit) = cfg.per_user {
                for (u, times) in &by_user {
                    let worst = brute_max_in_window(times, dur_ms(limit.window));
                    prop_assert!(worst <= limit.max as usize, "user {u}: {worst}");
                }
            }
            if let Some(i) = cfg.min_create_interval {
                let creates = granted.get(&Operation::Create).cloned().unwrap_or_default();
                for w in creates.windows(2) {
                    prop_assert!(w[1] - w[0] >= dur_ms(i));
                }
            }
        }

        #[test]
        fn a_quota_wait_ends_exactly_at_until(
            max in 1..6u32,
            window in 1..2000u64,
            dts in proptest::collection::vec(0..300u64, 1..200),
        ) {
            let mut rl = RateLimiter::new(with_limit(Operation::Run, max, window));
            let mut now = 0;
            for dt in dts {
                now += dt;
                if let Decision::Wait { until_ms, reason } = rl.acquire(Operation::Run, None, now) {
                    prop_assert!(matches!(reason, WaitReason::Quota { .. }), "unexpected reason");
                    prop_assert!(rl.check(Operation::Run, None, until_ms - 1).is_some());
                    prop_assert_eq!(rl.check(Operation::Run, None, until_ms), None);
                }
            }
        }

        #[test]
        fn restore_gives_the_same_decisions(
            cfg in config(),
            before in proptest::collection::vec(step(), 0..150),
            after in proptest::collection::vec(step(), 1..150),
        ) {
            let mut rl = RateLimiter::new(cfg.clone());
            let mut now = 0;
            for s in &before {
                apply(&mut rl, s, &mut now);
            }
            rl.take_events();
            let mut back = RateLimiter::restore(cfg, rl.export(), now);
            prop_assert_eq!(back.usages(now), rl.usages(now));
            let mut now_b = now;
            for s in &after {
                let a = apply(&mut rl, s, &mut now);
                let b = apply(&mut back, s, &mut now_b);
                prop_assert_eq!(a, b);
                prop_assert_eq!(rl.usages(now), back.usages(now));
                prop_assert_eq!(rl.take_events(), back.take_events());
                prop_assert_eq!(rl.live_sandboxes(), back.live_sandboxes());
            }
        }

        #[test]
        fn prune_keeps_records_bounded(
            max in 1..20u32,
            window in 1..5000u64,
            dts in proptest::collection::vec(0..200u64, 1..500),
        ) {
            let mut rl = RateLimiter::new(with_limit(Operation::Run, max, window));
            let mut now = 0;
            for dt in dts {
                now += dt;
                rl.acquire(Operation::Run, None, now);
                rl.prune(now);
                prop_assert!(rl.record_count() <= max as usize);
                prop_assert_eq!(rl.export().calls.len(), rl.record_count());
            }
        }
    }
}
