//! Owns the circuit-breaker decision for calls to the sandbox provider: whether
//! a call may go out now, and how each outcome moves the breaker between closed,
//! open, half-open and the operator overrides. It must never read a clock, sleep,
//! spawn work or perform I/O: time arrives as `now_ms` and every decision is a
//! plain synchronous state change, so the same inputs always give the same result.

use crate::provider::error::ErrorCategory;
use std::collections::VecDeque;
use std::time::Duration;

/// How many transitions are kept for diagnostics; older ones are dropped.
const TRANSITION_HISTORY: usize = 20;

/// Optional failure-rate trigger evaluated over the most recent calls.
#[derive(Debug, Clone, PartialEq)]
pub struct RateWindow {
    /// How many of the most recent counted calls are considered.
    pub size: usize,
    /// Below this many calls in the window the rate is not trusted and never trips.
    pub min_calls: usize,
    /// Open when the failure rate is at least this (0..=1).
    pub failure_rate: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive counted failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets a probe through.
    pub open_timeout: Duration,
    /// Growth factor applied on each re-open without an intervening close (1.0 = constant).
    pub open_timeout_multiplier: f64,
    /// Upper bound for the grown open timeout.
    pub max_open_timeout: Duration,
    /// Probes allowed in flight at once while half-open.
    pub half_open_max_probes: u32,
    /// Optional failure-rate trigger.
    pub window: Option<RateWindow>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_timeout: Duration::from_secs(60),
            open_timeout_multiplier: 1.0,
            max_open_timeout: Duration::from_secs(600),
            half_open_max_probes: 1,
            window: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl BreakerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }
}

/// Permission for one call. It is deliberately neither `Clone` nor constructible
/// outside this module, so each permit is handed back exactly once and a forged
/// or duplicated permit cannot free a probe slot twice.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be handed back via on_success, on_failure, on_ignored or record"]
pub struct Permit {
    /// True when this call is a half-open probe.
    pub probe: bool,
    /// The breaker epoch the permit was issued in; an outcome from an older epoch
    /// describes a world that no longer exists and must not move the breaker.
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Earliest time worth asking again; `None` when forced open, because only an
    /// operator reset will ever let calls through.
    pub retry_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub at_ms: u64,
    pub consecutive_failures: u32,
    pub reason: String,
}

/// Plain copy of the state worth persisting across a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub opened_at_ms: Option<u64>,
    pub current_open_timeout_ms: u64,
    pub reopen_count: u32,
    /// Counted outcomes in the rate window, oldest first; `true` means failure.
    pub window_outcomes: Vec<bool>,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    opened_at_ms: Option<u64>,
    next_probe_at_ms: Option<u64>,
    current_open_timeout: Duration,
    reopen_count: u32,
    /// `true` means failure; only maintained while a rate window is configured.
    window: VecDeque<bool>,
    probes_in_flight: u32,
    epoch: u64,
    transitions: VecDeque<Transition>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        let cfg = sanitize(cfg);
        Self {
            current_open_timeout: cfg.open_timeout,
            cfg,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at_ms: None,
            next_probe_at_ms: None,
            reopen_count: 0,
            window: VecDeque::new(),
            probes_in_flight: 0,
            epoch: 0,
            transitions: VecDeque::with_capacity(TRANSITION_HISTORY),
        }
    }

    /// Asks to make one call. An open breaker whose timeout has passed moves to
    /// half-open here (and only here), so a breaker nobody asks never changes.
    pub fn try_acquire(&mut self, now_ms: u64) -> Result<Permit, Rejected> {
        match self.state {
            BreakerState::Closed | BreakerState::Disabled => Ok(self.permit(false)),
            BreakerState::ForcedOpen => Err(Rejected { retry_at_ms: None }),
            BreakerState::Open => {
                let due = self.next_probe_at_ms.unwrap_or(0);
                if now_ms < due {
                    return Err(Rejected {
                        retry_at_ms: Some(due),
                    });
                }
                self.transition(BreakerState::HalfOpen, now_ms, "open timeout elapsed");
                self.next_probe_at_ms = None;
                self.try_probe(now_ms)
            }
            BreakerState::HalfOpen => self.try_probe(now_ms),
        }
    }

    /// Hands back a permit whose call succeeded. A probe success closes the breaker.
    pub fn on_success(&mut self, permit: Permit, now_ms: u64) -> Option<Transition> {
        if !self.is_current(&permit) {
            return None;
        }
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures = 0;
                self.push_outcome(false);
                None
            }
            BreakerState::HalfOpen => {
                self.release_probe(&permit);
                self.close(now_ms, "probe succeeded")
            }
            // No permits are issued in these states within the same epoch, and a
            // disabled breaker counts nothing by definition.
            BreakerState::Open | BreakerState::ForcedOpen | BreakerState::Disabled => None,
        }
    }

    /// Hands back a permit whose call failed in a way that says the provider is
    /// unhealthy (transient or timeout).
    pub fn on_failure(&mut self, permit: Permit, now_ms: u64) -> Option<Transition> {
        if !self.is_current(&permit) {
            return None;
        }
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.push_outcome(true);
                if self.consecutive_failures >= self.cfg.failure_threshold {
                    let reason = format!("{} consecutive failures", self.consecutive_failures);
                    return self.open(now_ms, reason);
                }
                if let Some(rate) = self.tripping_rate() {
                    let reason = format!(
                        "failure rate {:.2} >= {:.2} over {} calls",
                        rate,
                        self.window_cfg_rate(),
                        self.window.len()
                    );
                    return self.open(now_ms, reason);
                }
                None
            }
            BreakerState::HalfOpen => {
                self.release_probe(&permit);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.reopen_count = self.reopen_count.saturating_add(1);
                self.current_open_timeout = self.grown_timeout(self.reopen_count);
                self.open(now_ms, "probe failed".to_string())
            }
            BreakerState::Open | BreakerState::ForcedOpen | BreakerState::Disabled => None,
        }
    }

    /// Hands back a permit whose outcome says nothing about provider health
    /// (permanent or rate-limited). It only frees a probe slot.
    pub fn on_ignored(&mut self, permit: Permit) {
        if self.is_current(&permit) && self.state == BreakerState::HalfOpen {
            self.release_probe(&permit);
        }
    }

    /// Routes an outcome to the matching hand-back: only transient and timeout
    /// failures count against the provider.
    pub fn record(
        &mut self,
        permit: Permit,
        outcome: Result<(), ErrorCategory>,
        now_ms: u64,
    ) -> Option<Transition> {
        match outcome {
            Ok(()) => self.on_success(permit, now_ms),
            Err(ErrorCategory::Transient | ErrorCategory::Timeout) => {
                self.on_failure(permit, now_ms)
            }
            Err(
                ErrorCategory::Permanent
                | ErrorCategory::RateLimited
                | ErrorCategory::ResourceLimit,
            ) => {
                self.on_ignored(permit);
                None
            }
        }
    }

    /// Forces the breaker closed with clean counters and no timeout growth.
    /// Counters are cleared even when already closed, and outstanding permits are
    /// made stale so results from before the reset cannot re-trip it.
    pub fn reset(&mut self, now_ms: u64) -> Option<Transition> {
        let t = self.close(now_ms, "reset");
        self.epoch = self.epoch.wrapping_add(1);
        t
    }

    /// Rejects everything until `reset`.
    pub fn force_open(&mut self, now_ms: u64) -> Option<Transition> {
        if self.state == BreakerState::ForcedOpen {
            return None;
        }
        let t = self.transition(BreakerState::ForcedOpen, now_ms, "forced open");
        self.opened_at_ms = Some(now_ms);
        self.next_probe_at_ms = None;
        Some(t)
    }

    /// Permits everything and counts nothing until `reset`.
    pub fn disable(&mut self, now_ms: u64) -> Option<Transition> {
        if self.state == BreakerState::Disabled {
            return None;
        }
        let t = self.transition(BreakerState::Disabled, now_ms, "disabled");
        self.opened_at_ms = None;
        self.next_probe_at_ms = None;
        Some(t)
    }

    /// The stored state. An open breaker whose timeout has passed still reports
    /// `Open` until `try_acquire` moves it.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The state as a read at `now_ms` sees it. Reading never moves the breaker,
    /// so an open breaker that is already eligible for a probe still reports
    /// `Open`; compare with `next_probe_at_ms` or ask `probe_due` to tell them apart.
    pub fn state_at(&self, now_ms: u64) -> BreakerState {
        let _ = now_ms;
        self.state
    }

    /// True when the breaker is open and the next `try_acquire` at `now_ms` would
    /// move it to half-open and hand out a probe.
    pub fn probe_due(&self, now_ms: u64) -> bool {
        self.state == BreakerState::Open && now_ms >= self.next_probe_at_ms.unwrap_or(0)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Failure rate over the window; `None` without a window or before `min_calls`.
    pub fn failure_rate(&self) -> Option<f64> {
        let w = self.cfg.window.as_ref()?;
        if self.window.is_empty() || self.window.len() < w.min_calls {
            return None;
        }
        let failures = self.window.iter().filter(|f| **f).count();
        Some(failures as f64 / self.window.len() as f64)
    }

    pub fn opened_at_ms(&self) -> Option<u64> {
        self.opened_at_ms
    }

    /// When an open breaker will let the next probe through; `None` in any other state.
    pub fn next_probe_at_ms(&self) -> Option<u64> {
        self.next_probe_at_ms
    }

    pub fn probes_in_flight(&self) -> u32 {
        self.probes_in_flight
    }

    /// The most recent transitions, oldest first.
    pub fn transitions(&self) -> &VecDeque<Transition> {
        &self.transitions
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            state: self.state,
            consecutive_failures: self.consecutive_failures,
            opened_at_ms: self.opened_at_ms,
            current_open_timeout_ms: duration_ms(self.current_open_timeout),
            reopen_count: self.reopen_count,
            window_outcomes: self.window.iter().copied().collect(),
        }
    }

    /// Rebuilds a breaker from a snapshot. Probes that were in flight died with the
    /// old process, so a half-open snapshot comes back open with a probe due at once;
    /// an open snapshot keeps waiting out the timeout it had.
    pub fn restore(cfg: BreakerConfig, snap: BreakerSnapshot) -> Self {
        let mut b = Self::new(cfg);
        b.state = snap.state;
        b.consecutive_failures = snap.consecutive_failures;
        b.opened_at_ms = snap.opened_at_ms;
        b.current_open_timeout = Duration::from_millis(snap.current_open_timeout_ms);
        b.reopen_count = snap.reopen_count;
        if let Some(w) = &b.cfg.window {
            let skip = snap.window_outcomes.len().saturating_sub(w.size);
            b.window = snap.window_outcomes.into_iter().skip(skip).collect();
        }
        match snap.state {
            BreakerState::Open => {
                // A missing open time cannot be waited out, so let a probe decide.
                b.next_probe_at_ms = Some(
                    snap.opened_at_ms
                        .map_or(0, |at| at.saturating_add(snap.current_open_timeout_ms)),
                );
            }
            BreakerState::HalfOpen => {
                b.state = BreakerState::Open;
                b.next_probe_at_ms = Some(snap.opened_at_ms.unwrap_or(0));
            }
            BreakerState::Closed | BreakerState::ForcedOpen | BreakerState::Disabled => {}
        }
        b
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            probe,
            epoch: self.epoch,
        }
    }

    fn try_probe(&mut self, now_ms: u64) -> Result<Permit, Rejected> {
        if self.probes_in_flight < self.cfg.half_open_max_probes {
            self.probes_in_flight += 1;
            Ok(self.permit(true))
        } else {
            // The slot frees when a probe reports back, which has no fixed time.
            Err(Rejected {
                retry_at_ms: Some(now_ms),
            })
        }
    }

    fn is_current(&self, permit: &Permit) -> bool {
        permit.epoch == self.epoch
    }

    fn release_probe(&mut self, permit: &Permit) {
        if permit.probe {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    fn push_outcome(&mut self, failure: bool) {
        let Some(size) = self.cfg.window.as_ref().map(|w| w.size) else {
            return;
        };
        if size == 0 {
            return;
        }
        while self.window.len() >= size {
            self.window.pop_front();
        }
        self.window.push_back(failure);
    }

    fn tripping_rate(&self) -> Option<f64> {
        let rate = self.failure_rate()?;
        (rate >= self.window_cfg_rate()).then_some(rate)
    }

    fn window_cfg_rate(&self) -> f64 {
        self.cfg
            .window
            .as_ref()
            .map_or(f64::NAN, |w| w.failure_rate)
    }

    fn grown_timeout(&self, reopen_count: u32) -> Duration {
        let base = self.cfg.open_timeout;
        let cap = self.cfg.max_open_timeout.max(base);
        let factor = self
            .cfg
            .open_timeout_multiplier
            .powf(f64::from(reopen_count));
        let secs = base.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= cap.as_secs_f64() {
            return cap;
        }
        Duration::try_from_secs_f64(secs).map_or(cap, |d| d.clamp(base, cap))
    }

    fn open(&mut self, now_ms: u64, reason: String) -> Option<Transition> {
        let t = self.transition(BreakerState::Open, now_ms, &reason);
        self.opened_at_ms = Some(now_ms);
        self.next_probe_at_ms = Some(now_ms.saturating_add(duration_ms(self.current_open_timeout)));
        Some(t)
    }

    fn close(&mut self, now_ms: u64, reason: &str) -> Option<Transition> {
        let t = (self.state != BreakerState::Closed)
            .then(|| self.transition(BreakerState::Closed, now_ms, reason));
        self.consecutive_failures = 0;
        self.opened_at_ms = None;
        self.next_probe_at_ms = None;
        self.reopen_count = 0;
        self.current_open_timeout = self.cfg.open_timeout;
        self.window.clear();
        self.probes_in_flight = 0;
        t
    }

    /// Every state change starts a new epoch so permits from before it go stale,
    /// and probe slots from the old state no longer exist.
    fn transition(&mut self, to: BreakerState, now_ms: u64, reason: &str) -> Transition {
        let t = Transition {
            from: self.state,
            to,
            at_ms: now_ms,
            consecutive_failures: self.consecutive_failures,
            reason: reason.to_string(),
        };
        self.state = to;
        self.epoch = self.epoch.wrapping_add(1);
        self.probes_in_flight = 0;
        if self.transitions.len() >= TRANSITION_HISTORY {
            self.transitions.pop_front();
        }
        self.transitions.push_back(t.clone());
        t
    }
}

/// Repairs values that would wedge the breaker rather than rejecting them, because
/// a breaker that cannot be built would leave the provider unguarded.
fn sanitize(mut cfg: BreakerConfig) -> BreakerConfig {
    // Zero would open on no failures at all.
    cfg.failure_threshold = cfg.failure_threshold.max(1);
    // Zero probes would keep a half-open breaker from ever closing.
    cfg.half_open_max_probes = cfg.half_open_max_probes.max(1);
    // Shrinking or undefined growth would probe a failing provider ever faster.
    if !cfg.open_timeout_multiplier.is_finite() || cfg.open_timeout_multiplier < 1.0 {
        cfg.open_timeout_multiplier = 1.0;
    }
    if let Some(w) = cfg.window.as_mut() {
        // A window that can never reach min_calls would silently never trip, and
        // zero calls would produce a rate of 0/0.
        w.min_calls = w.min_calls.clamp(1, w.size.max(1));
    }
    cfg
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 60_000;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::default())
    }

    fn fail(b: &mut Breaker, now: u64) -> Option<Transition> {
        let p = b.try_acquire(now).expect("permit");
        b.on_failure(p, now)
    }

    fn succeed(b: &mut Breaker, now: u64) -> Option<Transition> {
        let p = b.try_acquire(now).expect("permit");
        b.on_success(p, now)
    }

    fn open_default(b: &mut Breaker, now: u64) {
        for _ in 0..5 {
            fail(b, now);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn defaults_match_contract() {
        let c = BreakerConfig::default();
        assert_eq!(c.failure_threshold, 5);
        assert_eq!(c.open_timeout, Duration::from_secs(60));
        assert_eq!(c.max_open_timeout, Duration::from_secs(600));
        assert_eq!(c.half_open_max_probes, 1);
        assert_eq!(c.open_timeout_multiplier, 1.0);
        assert!(c.window.is_none());
    }

    #[test]
    fn state_names() {
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open.as_str(), "open");
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
        assert_eq!(BreakerState::ForcedOpen.as_str(), "forced_open");
        assert_eq!(BreakerState::Disabled.as_str(), "disabled");
    }

    #[test]
    fn five_consecutive_failures_open() {
        let mut b = breaker();
        for i in 1..5 {
            assert!(fail(&mut b, 1_000).is_none());
            assert_eq!(b.consecutive_failures(), i);
        }
        let t = fail(&mut b, 1_000).expect("transition");
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(t.consecutive_failures, 5);
        assert_eq!(t.at_ms, 1_000);
        assert_eq!(t.reason, "5 consecutive failures");
        assert_eq!(b.opened_at_ms(), Some(1_000));
        assert_eq!(b.next_probe_at_ms(), Some(1_000 + MIN));
        assert_eq!(b.transitions().len(), 1);
    }

    #[test]
    fn success_resets_consecutive_count() {
        let mut b = breaker();
        for _ in 0..4 {
            fail(&mut b, 0);
        }
        succeed(&mut b, 0);
        assert_eq!(b.consecutive_failures(), 0);
        for _ in 0..4 {
            fail(&mut b, 0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn rejected_while_open_with_retry_at() {
        let mut b = breaker();
        open_default(&mut b, 1_000);
        let r = b.try_acquire(1_000 + MIN - 1).unwrap_err();
        assert_eq!(r.retry_at_ms, Some(1_000 + MIN));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn state_reports_open_until_acquire_moves_it() {
        let mut b = breaker();
        open_default(&mut b, 0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.state_at(MIN + 5), BreakerState::Open);
        assert!(!b.probe_due(MIN - 1));
        assert!(b.probe_due(MIN));
        let p = b.try_acquire(MIN).unwrap();
        assert!(p.probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.next_probe_at_ms(), None);
        let t = b.transitions().back().unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::HalfOpen));
        assert_eq!(t.reason, "open timeout elapsed");
        b.on_ignored(p);
    }

    #[test]
    fn half_open_allows_only_max_probes() {
        let mut b = breaker();
        open_default(&mut b, 0);
        let p = b.try_acquire(MIN).unwrap();
        assert!(p.probe);
        assert_eq!(b.probes_in_flight(), 1);
        assert_eq!(b.try_acquire(MIN).unwrap_err().retry_at_ms, Some(MIN));

        let mut b = Breaker::new(BreakerConfig {
            half_open_max_probes: 3,
            ..BreakerConfig::default()
        });
        open_default(&mut b, 0);
        let ps: Vec<_> = (0..3).map(|_| b.try_acquire(MIN).unwrap()).collect();
        assert_eq!(b.probes_in_flight(), 3);
        assert!(b.try_acquire(MIN).is_err());
        for p in ps {
            b.on_ignored(p);
        }
        assert_eq!(b.probes_in_flight(), 0);
        let _ = b.try_acquire(MIN).unwrap();
    }

    #[test]
    fn probe_success_closes_and_clears() {
        let mut b = breaker();
        open_default(&mut b, 0);
        let p = b.try_acquire(MIN).unwrap();
        let t = b.on_success(p, MIN + 10).expect("transition");
        assert_eq!(
            (t.from, t.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert_eq!(t.reason, "probe succeeded");
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.opened_at_ms(), None);
        assert_eq!(b.probes_in_flight(), 0);
    }

    #[test]
    fn probe_failure_reopens_with_multiplied_capped_timeout() {
        let mut b = Breaker::new(BreakerConfig {
            open_timeout_multiplier: 2.0,
            max_open_timeout: Duration::from_secs(300),
            ..BreakerConfig::default()
        });
        open_default(&mut b, 0);
        let mut now = 0;
        let mut expected = [120_000, 240_000, 300_000, 300_000].into_iter();
        let mut timeout = MIN;
        for _ in 0..4 {
            now += timeout;
            let p = b.try_acquire(now).unwrap();
            let t = b.on_failure(p, now).expect("transition");
            assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
            assert_eq!(t.reason, "probe failed");
            timeout = expected.next().unwrap();
            assert_eq!(b.next_probe_at_ms(), Some(now + timeout));
            assert_eq!(b.snapshot().current_open_timeout_ms, timeout);
            assert!(b.try_acquire(now + timeout - 1).is_err());
        }
        // A close resets the growth.
        now += timeout;
        let p = b.try_acquire(now).unwrap();
        b.on_success(p, now);
        open_default(&mut b, now);
        assert_eq!(b.next_probe_at_ms(), Some(now + MIN));
    }

    #[test]
    fn constant_timeout_with_multiplier_one() {
        let mut b = breaker();
        open_default(&mut b, 0);
        let p = b.try_acquire(MIN).unwrap();
        b.on_failure(p, MIN);
        assert_eq!(b.next_probe_at_ms(), Some(2 * MIN));
    }

    #[test]
    fn ignored_outcomes_never_trip() {
        let mut b = breaker();
        for _ in 0..100 {
            let p = b.try_acquire(0).unwrap();
            b.on_ignored(p);
            let p = b.try_acquire(0).unwrap();
            assert!(b.record(p, Err(ErrorCategory::Permanent), 0).is_none());
            let p = b.try_acquire(0).unwrap();
            assert!(b.record(p, Err(ErrorCategory::RateLimited), 0).is_none());
            let p = b.try_acquire(0).unwrap();
            assert!(b.record(p, Err(ErrorCategory::ResourceLimit), 0).is_none());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn ignored_outcomes_do_not_break_a_failure_streak() {
        let mut b = breaker();
        for _ in 0..4 {
            fail(&mut b, 0);
            let p = b.try_acquire(0).unwrap();
            b.on_ignored(p);
        }
        assert_eq!(b.consecutive_failures(), 4);
        assert!(fail(&mut b, 0).is_some());
    }

    #[test]
    fn record_routes_categories() {
        let mut b = breaker();
        for c in [ErrorCategory::Transient, ErrorCategory::Timeout] {
            let p = b.try_acquire(0).unwrap();
            b.record(p, Err(c), 0);
        }
        assert_eq!(b.consecutive_failures(), 2);
        let p = b.try_acquire(0).unwrap();
        b.record(p, Ok(()), 0);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn ignored_probe_frees_slot_and_stays_half_open() {
        let mut b = breaker();
        open_default(&mut b, 0);
        let p = b.try_acquire(MIN).unwrap();
        assert!(b.record(p, Err(ErrorCategory::RateLimited), MIN).is_none());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.probes_in_flight(), 0);
        assert!(b.try_acquire(MIN).unwrap().probe);
    }

    #[test]
    fn stale_success_while_open_does_not_close() {
        let mut b = breaker();
        let stale = b.try_acquire(0).unwrap();
        open_default(&mut b, 0);
        assert!(b.on_success(stale, 1).is_none());
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.consecutive_failures(), 5);
    }

    #[test]
    fn stale_success_while_half_open_does_not_close_or_free_probe() {
        let mut b = breaker();
        let stale = b.try_acquire(0).unwrap();
        open_default(&mut b, 0);
        let probe = b.try_acquire(MIN).unwrap();
        assert!(b.on_success(stale, MIN).is_none());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.probes_in_flight(), 1);
        b.on_ignored(probe);
    }

    #[test]
    fn stale_failures_do_not_double_count_or_reopen() {
        let mut b = breaker();
        let stale: Vec<_> = (0..3).map(|_| b.try_acquire(0).unwrap()).collect();
        open_default(&mut b, 0);
        for p in stale {
            assert!(b.on_failure(p, 1).is_none());
        }
        assert_eq!(b.consecutive_failures(), 5);
        assert_eq!(b.next_probe_at_ms(), Some(MIN));
    }

    #[test]
    fn stale_probe_after_close_is_ignored() {
        let mut b = Breaker::new(BreakerConfig {
            half_open_max_probes: 2,
            ..BreakerConfig::default()
        });
        open_default(&mut b, 0);
        let p1 = b.try_acquire(MIN).unwrap();
        let p2 = b.try_acquire(MIN).unwrap();
        b.on_success(p1, MIN);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.on_failure(p2, MIN).is_none());
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.probes_in_flight(), 0);
    }

    #[test]
    fn stale_closed_permit_from_previous_closed_epoch_is_ignored() {
        let mut b = breaker();
        let stale = b.try_acquire(0).unwrap();
        open_default(&mut b, 0);
        succeed(&mut b, MIN);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(stale, MIN);
        assert_eq!(b.consecutive_failures(), 0);
    }

    fn windowed() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 100,
            window: Some(RateWindow {
                size: 10,
                min_calls: 6,
                failure_rate: 0.5,
            }),
            ..BreakerConfig::default()
        })
    }

    #[test]
    fn rate_window_respects_min_calls() {
        let mut b = windowed();
        assert_eq!(b.failure_rate(), None);
        // Three failures out of five calls is 60 %, but below min_calls.
        succeed(&mut b, 0);
        succeed(&mut b, 0);
        fail(&mut b, 0);
        fail(&mut b, 0);
        assert!(fail(&mut b, 0).is_none());
        assert_eq!(b.failure_rate(), None);
        succeed(&mut b, 0);
        assert_eq!(b.failure_rate(), Some(0.5));
        // Success never trips even at the threshold rate; the next failure does.
        assert_eq!(b.state(), BreakerState::Closed);
        let t = fail(&mut b, 7).expect("trip");
        assert_eq!(t.to, BreakerState::Open);
        assert!(
            t.reason
                .starts_with("failure rate 0.57 >= 0.50 over 7 calls")
        );
    }

    #[test]
    fn rate_window_slides() {
        let mut b = windowed();
        for _ in 0..4 {
            fail(&mut b, 0);
            succeed(&mut b, 0);
            succeed(&mut b, 0);
        }
        // Window holds the last 10 of 12 calls.
        assert_eq!(b.snapshot().window_outcomes.len(), 10);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.failure_rate().unwrap() < 0.5);
    }

    #[test]
    fn rate_window_is_cleared_on_close() {
        let mut b = windowed();
        for _ in 0..6 {
            fail(&mut b, 0);
        }
        assert_eq!(b.state(), BreakerState::Open);
        succeed(&mut b, MIN);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.failure_rate(), None);
        assert!(fail(&mut b, MIN).is_none());
    }

    #[test]
    fn no_window_means_no_rate() {
        let mut b = breaker();
        fail(&mut b, 0);
        assert_eq!(b.failure_rate(), None);
        assert!(b.snapshot().window_outcomes.is_empty());
    }

    #[test]
    fn reset_closes_and_clears_growth() {
        let mut b = Breaker::new(BreakerConfig {
            open_timeout_multiplier: 3.0,
            ..BreakerConfig::default()
        });
        open_default(&mut b, 0);
        let p = b.try_acquire(MIN).unwrap();
        b.on_failure(p, MIN);
        let t = b.reset(MIN + 1).expect("transition");
        assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::Closed));
        assert_eq!(t.reason, "reset");
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.snapshot().reopen_count, 0);
        assert_eq!(b.snapshot().current_open_timeout_ms, MIN);
        // Resetting a closed breaker clears counters without a transition.
        fail(&mut b, 0);
        assert!(b.reset(2).is_none());
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn permits_from_before_reset_are_stale() {
        let mut b = breaker();
        let old: Vec<_> = (0..5).map(|_| b.try_acquire(0).unwrap()).collect();
        b.reset(1);
        for p in old {
            assert!(b.on_failure(p, 2).is_none());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn force_open_rejects_everything_until_reset() {
        let mut b = breaker();
        let held = b.try_acquire(0).unwrap();
        let t = b.force_open(5).expect("transition");
        assert_eq!(
            (t.from, t.to),
            (BreakerState::Closed, BreakerState::ForcedOpen)
        );
        assert!(b.force_open(6).is_none());
        for now in [5, MIN, 1_000 * MIN] {
            assert_eq!(
                b.try_acquire(now).unwrap_err(),
                Rejected { retry_at_ms: None }
            );
        }
        assert!(b.on_success(held, 7).is_none());
        assert_eq!(b.state(), BreakerState::ForcedOpen);
        assert_eq!(b.reset(8).unwrap().to, BreakerState::Closed);
        let _ = b.try_acquire(9).unwrap();
    }

    #[test]
    fn disable_permits_everything_and_counts_nothing() {
        let mut b = breaker();
        open_default(&mut b, 0);
        let t = b.disable(1).expect("transition");
        assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::Disabled));
        assert!(b.disable(2).is_none());
        for _ in 0..50 {
            let p = b.try_acquire(3).unwrap();
            assert!(!p.probe);
            assert!(b.on_failure(p, 3).is_none());
        }
        assert_eq!(b.state(), BreakerState::Disabled);
        assert_eq!(b.reset(4).unwrap().to, BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn transitions_keep_last_twenty() {
        let mut b = breaker();
        for i in 0..30 {
            b.force_open(i);
            b.reset(i);
        }
        assert_eq!(b.transitions().len(), TRANSITION_HISTORY);
        assert_eq!(b.transitions().back().unwrap().at_ms, 29);
        assert_eq!(b.transitions().front().unwrap().at_ms, 20);
    }

    #[test]
    fn snapshot_restore_keeps_open_until_timeout() {
        let cfg = BreakerConfig {
            open_timeout_multiplier: 2.0,
            ..BreakerConfig::default()
        };
        let mut b = Breaker::new(cfg.clone());
        open_default(&mut b, 1_000);
        let p = b.try_acquire(1_000 + MIN).unwrap();
        b.on_failure(p, 1_000 + MIN);
        let opened = 1_000 + MIN;
        let snap = b.snapshot();
        assert_eq!(snap.state, BreakerState::Open);
        assert_eq!(snap.current_open_timeout_ms, 2 * MIN);
        assert_eq!(snap.reopen_count, 1);

        let mut r = Breaker::restore(cfg, snap.clone());
        assert_eq!(r.snapshot(), snap);
        assert_eq!(r.state(), BreakerState::Open);
        assert_eq!(r.opened_at_ms(), Some(opened));
        assert_eq!(r.next_probe_at_ms(), Some(opened + 2 * MIN));
        assert_eq!(
            r.try_acquire(opened + 2 * MIN - 1).unwrap_err().retry_at_ms,
            Some(opened + 2 * MIN)
        );
        let p = r.try_acquire(opened + 2 * MIN).unwrap();
        assert!(p.probe);
        // Growth continues from the restored reopen count.
        r.on_failure(p, opened + 2 * MIN);
        assert_eq!(r.snapshot().current_open_timeout_ms, 4 * MIN);
    }

    #[test]
    fn restore_half_open_becomes_open_with_probe_due() {
        let mut b = breaker();
        open_default(&mut b, 0);
        let p = b.try_acquire(MIN).unwrap();
        let snap = b.snapshot();
        assert_eq!(snap.state, BreakerState::HalfOpen);
        drop(p);
        let mut r = Breaker::restore(BreakerConfig::default(), snap);
        assert_eq!(r.state(), BreakerState::Open);
        assert_eq!(r.probes_in_flight(), 0);
        assert!(r.probe_due(MIN));
        assert!(r.try_acquire(MIN).unwrap().probe);
    }

    #[test]
    fn restore_closed_keeps_counts_and_window() {
        let mut b = windowed();
        fail(&mut b, 0);
        succeed(&mut b, 0);
        fail(&mut b, 0);
        let snap = b.snapshot();
        let r = Breaker::restore(b.cfg.clone(), snap.clone());
        assert_eq!(r.snapshot(), snap);
        assert_eq!(r.consecutive_failures(), 1);
        // A smaller window keeps only the newest outcomes.
        let small = BreakerConfig {
            window: Some(RateWindow {
                size: 2,
                min_calls: 1,
                failure_rate: 0.5,
            }),
            ..BreakerConfig::default()
        };
        let r = Breaker::restore(small, snap);
        assert_eq!(r.snapshot().window_outcomes, vec![false, true]);
    }

    #[test]
    fn restore_keeps_operator_overrides() {
        let mut b = breaker();
        b.force_open(3);
        let r = Breaker::restore(BreakerConfig::default(), b.snapshot());
        assert_eq!(r.state(), BreakerState::ForcedOpen);
        let mut b = breaker();
        b.disable(3);
        let r = Breaker::restore(BreakerConfig::default(), b.snapshot());
        assert_eq!(r.state(), BreakerState::Disabled);
    }

    #[test]
    fn degenerate_config_is_repaired() {
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 0,
            half_open_max_probes: 0,
            open_timeout_multiplier: f64::NAN,
            window: Some(RateWindow {
                size: 3,
                min_calls: 50,
                failure_rate: 1.0,
            }),
            ..BreakerConfig::default()
        });
        assert!(succeed(&mut b, 0).is_none());
        assert!(fail(&mut b, 0).is_some());
        assert!(b.try_acquire(MIN).unwrap().probe);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        Success(usize),
        Failure(usize),
        Ignored(usize),
        Advance(u64),
        ForceOpen,
        Reset,
        Disable,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Acquire),
            3 => any::<usize>().prop_map(Op::Success),
            5 => any::<usize>().prop_map(Op::Failure),
            2 => any::<usize>().prop_map(Op::Ignored),
            4 => (0u64..200_000).prop_map(Op::Advance),
            1 => Just(Op::ForceOpen),
            1 => Just(Op::Reset),
            1 => Just(Op::Disable),
        ]
    }

    fn config() -> impl Strategy<Value = BreakerConfig> {
        (
            1u32..6,
            1_000u64..120_000,
            1.0f64..4.0,
            1u32..4,
            proptest::option::of((1usize..12, 0usize..12, 0.0f64..=1.0)),
        )
            .prop_map(|(threshold, timeout, mult, probes, window)| BreakerConfig {
                failure_threshold: threshold,
                open_timeout: Duration::from_millis(timeout),
                open_timeout_multiplier: mult,
                max_open_timeout: Duration::from_millis(timeout * 5),
                half_open_max_probes: probes,
                window: window.map(|(size, min_calls, failure_rate)| RateWindow {
                    size,
                    min_calls,
                    failure_rate,
                }),
            })
    }

    proptest! {
        #[test]
        fn breaker_invariants_hold(cfg in config(), ops in proptest::collection::vec(op(), 0..200)) {
            let max_probes = cfg.half_open_max_probes;
            let mut b = Breaker::new(cfg);
            let mut now = 0u64;
            let mut held: Vec<Permit> = Vec::new();
            for op in ops {
                let before = b.state();
                let due = b.next_probe_at_ms();
                match op {
                    Op::Acquire => {
                        let r = b.try_acquire(now);
                        if before == BreakerState::ForcedOpen {
                            prop_assert!(r.is_err());
                        }
                        if before == BreakerState::Open && now < due.unwrap() {
                            prop_assert_eq!(r.as_ref().err().copied(), Some(Rejected { retry_at_ms: due }));
                        }
                        if let Ok(p) = r {
                            prop_assert!(matches!(
                                b.state(),
                                BreakerState::Closed | BreakerState::HalfOpen | BreakerState::Disabled
                            ));
                            prop_assert_eq!(p.probe, b.state() == BreakerState::HalfOpen);
                            held.push(p);
                        }
                    }
                    Op::Success(i) if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        let stale = p.epoch != b.epoch;
                        let t = b.on_success(p, now);
                        if stale || before != BreakerState::HalfOpen {
                            prop_assert!(t.is_none());
                            prop_assert_eq!(b.state(), before);
                        }
                    }
                    Op::Failure(i) if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        let stale = p.epoch != b.epoch;
                        let t = b.on_failure(p, now);
                        if stale {
                            prop_assert!(t.is_none());
                            prop_assert_eq!(b.state(), before);
                        }
                    }
                    Op::Ignored(i) if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        b.on_ignored(p);
                        prop_assert_eq!(b.state(), before);
                    }
                    Op::Success(_) | Op::Failure(_) | Op::Ignored(_) => {}
                    Op::Advance(ms) => now += ms,
                    Op::ForceOpen => { b.force_open(now); }
                    Op::Reset => { b.reset(now); }
                    Op::Disable => { b.disable(now); }
                }
                prop_assert!(b.probes_in_flight() <= max_probes);
                // The probe count must match the live probe permits actually held.
                let live = held.iter().filter(|p| p.probe && p.epoch == b.epoch).count() as u32;
                prop_assert_eq!(b.probes_in_flight(), live);
                if b.state() != BreakerState::HalfOpen {
                    prop_assert_eq!(b.probes_in_flight(), 0);
                }
                prop_assert_eq!(b.next_probe_at_ms().is_some(), b.state() == BreakerState::Open);
                prop_assert!(b.transitions().len() <= TRANSITION_HISTORY);
            }
        }
    }
}
