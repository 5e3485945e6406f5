//! Fault injection for the emulator: rules that turn a call to an endpoint into an error
//! status, a 429 with `Retry-After`, added latency, a dropped connection or a stream cut off
//! mid-output, plus per-endpoint call counters.
//!
//! This module owns the rule list and the counters and decides, per call, what fault (if any)
//! applies. It never builds HTTP responses and never touches sandboxes; the request front door
//! in `mod.rs` acts on its decisions. Deterministic rules ("the next N calls") are consumed in
//! order; rate rules draw from `rand` and are only for soak-style tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// What to do to a matching call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer with `status` (e.g. 500/502/503/504) and a body of the given shape.
    Status {
        status: u16,
        #[serde(default)]
        body: BodyShape,
        /// Replaces the default message of the body.
        #[serde(default)]
        message: Option<String>,
    },
    /// 429 with `Retry-After: <retry_after_secs>` and E2B's rate-limit body.
    RateLimit { retry_after_secs: u64 },
    /// Wait this long, then handle the call normally (adds to other faults' effects).
    Latency {
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// Close the connection without sending a response.
    Drop,
    /// For `process_start`: send `after_frames` stream frames, then cut the connection. On any
    /// other endpoint this behaves like `Drop`.
    DropMidStream { after_frames: u32 },
}

/// The shape of an injected error body, because real edges send all three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyShape {
    /// `{"code":..,"message":..}` as the E2B API and envd send it.
    #[default]
    Json,
    /// An nginx-style HTML error page.
    Html,
    /// Plain text such as envoy's `upstream request timeout`.
    Text,
}

/// One fault rule, as set through the handle or `PUT /_emulator/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// Endpoint name (see `ENDPOINTS`); `None` matches every endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub action: FaultAction,
    /// Apply to the next N matching calls only, then the rule is removed.
    #[serde(default)]
    pub count: Option<u32>,
    /// Probability in 0..=1 that a matching call is affected; absent means always.
    #[serde(default)]
    pub rate: Option<f64>,
    /// The rule lasts this long from when it is installed (an outage window).
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
}

impl FaultRule {
    pub fn new(endpoint: Option<&str>, action: FaultAction) -> Self {
        FaultRule {
            endpoint: endpoint.map(str::to_string),
            action,
            count: None,
            rate: None,
            duration: None,
        }
    }
}

/// Names the front door gives to calls, for rules and counters.
pub const ENDPOINTS: &[&str] = &[
    "create",
    "list_v2",
    "list",
    "get",
    "kill",
    "set_timeout",
    "pause",
    "resume",
    "connect",
    "api_health",
    "envd_health",
    "files_read",
    "files_write",
    "process_start",
    "process_rpc",
    "filesystem_rpc",
    "other",
];

/// Per-endpoint call counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub calls: u64,
    pub faulted: u64,
}

/// What the front door must do for one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub latency: Duration,
    pub action: Option<FaultAction>,
}

#[derive(Debug)]
struct Installed {
    rule: FaultRule,
    until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    rules: Vec<Installed>,
    stats: BTreeMap<String, EndpointStats>,
}

/// Shared, cheaply cloneable controller; the same one backs the handle and the HTTP API.
#[derive(Debug, Clone, Default)]
pub struct FaultController {
    inner: Arc<Mutex<Inner>>,
}

impl FaultController {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a rule after the existing ones.
    pub fn add(&self, rule: FaultRule) {
        let until = rule.duration.map(|d| Instant::now() + d);
        self.lock().rules.push(Installed { rule, until });
    }

    /// Replace every rule.
    pub fn set(&self, rules: Vec<FaultRule>) {
        let mut inner = self.lock();
        inner.rules.clear();
        for rule in rules {
            let until = rule.duration.map(|d| Instant::now() + d);
            inner.rules.push(Installed { rule, until });
        }
    }

    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// The live rules; `count` shows what is left and `duration` the time remaining.
    pub fn rules(&self) -> Vec<FaultRule> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.rules.retain(|r| r.until.is_none_or(|u| u > now));
        inner
            .rules
            .iter()
            .map(|r| {
                let mut rule = r.rule.clone();
                rule.duration = r.until.map(|u| u.saturating_duration_since(now));
                rule
            })
            .collect()
    }

    pub fn stats(&self) -> BTreeMap<String, EndpointStats> {
        self.lock().stats.clone()
    }

    /// Calls seen for one endpoint (faulted or not).
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.lock().stats.get(endpoint).map_or(0, |s| s.calls)
    }

    pub fn reset_stats(&self) {
        self.lock().stats.clear();
    }

    /// Fail the next `n` calls to `endpoint` with `status` and an E2B JSON body.
    pub fn fail_next(&self, endpoint: &str, n: u32, status: u16) {
        self.add(FaultRule {
            count: Some(n),
            ..FaultRule::new(
                Some(endpoint),
                FaultAction::Status {
                    status,
                    body: BodyShape::Json,
                    message: None,
                },
            )
        });
    }

    /// Answer the next `n` calls to `endpoint` with 429 and `Retry-After: retry_after_secs`.
    pub fn rate_limit_next(&self, endpoint: &str, n: u32, retry_after_secs: u64) {
        self.add(FaultRule {
            count: Some(n),
            ..FaultRule::new(Some(endpoint), FaultAction::RateLimit { retry_after_secs })
        });
    }

    /// Close the connection without a response on the next `n` calls to `endpoint`.
    pub fn drop_next(&self, endpoint: &str, n: u32) {
        self.add(FaultRule {
            count: Some(n),
            ..FaultRule::new(Some(endpoint), FaultAction::Drop)
        });
    }

    /// Cut the next `n` command streams after `after_frames` frames.
    pub fn drop_stream_next(&self, n: u32, after_frames: u32) {
        self.add(FaultRule {
            count: Some(n),
            ..FaultRule::new(
                Some("process_start"),
                FaultAction::DropMidStream { after_frames },
            )
        });
    }

    /// Every endpoint answers 503 for `duration`.
    pub fn outage(&self, duration: Duration) {
        self.add(FaultRule {
            duration: Some(duration),
            ..FaultRule::new(
                None,
                FaultAction::Status {
                    status: 503,
                    body: BodyShape::Json,
                    message: None,
                },
            )
        });
    }

    /// Add `delay` to every call to `endpoint` (`None`: all endpoints).
    pub fn latency(&self, endpoint: Option<&str>, delay: Duration) {
        self.add(FaultRule::new(endpoint, FaultAction::Latency { delay }));
    }

    /// Fail a random fraction `rate` of calls to `endpoint` with `status`.
    pub fn fail_rate(&self, endpoint: Option<&str>, rate: f64, status: u16) {
        self.add(FaultRule {
            rate: Some(rate),
            ..FaultRule::new(
                endpoint,
                FaultAction::Status {
                    status,
                    body: BodyShape::Json,
                    message: None,
                },
            )
        });
    }

    /// Count a call and decide its faults. Latency rules add up; the first other matching
    /// rule supplies the action. Only rules that fire use up their count.
    pub fn decide(&self, endpoint: &str) -> Decision {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.rules.retain(|r| r.until.is_none_or(|u| u > now));
        let mut decision = Decision::default();
        for installed in inner.rules.iter_mut() {
            let rule = &mut installed.rule;
            if rule.endpoint.as_deref().is_some_and(|e| e != endpoint) {
                continue;
            }
            let is_latency = matches!(rule.action, FaultAction::Latency { .. });
            if !is_latency && decision.action.is_some() {
                continue;
            }
            if let Some(rate) = rule.rate
                && rand::random::<f64>() >= rate
            {
                continue;
            }
            match &rule.action {
                FaultAction::Latency { delay } => decision.latency += *delay,
                other => decision.action = Some(other.clone()),
            }
            if let Some(n) = rule.count.as_mut() {
                *n = n.saturating_sub(1);
            }
        }
        inner.rules.retain(|r| r.rule.count != Some(0));
        let entry = inner.stats.entry(endpoint.to_string()).or_default();
        entry.calls += 1;
        if decision.action.is_some() {
            entry.faulted += 1;
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn next_n_is_exact_and_outages_end() {
        let f = FaultController::new();
        f.fail_next("create", 2, 503);
        assert!(f.decide("get").action.is_none());
        assert!(f.decide("create").action.is_some());
        assert!(f.decide("create").action.is_some());
        assert!(f.decide("create").action.is_none());
        assert_eq!(
            f.stats()["create"],
            EndpointStats {
                calls: 3,
                faulted: 2
            }
        );

        f.outage(Duration::from_secs(5));
        assert!(f.decide("kill").action.is_some());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(f.decide("kill").action.is_none());
        assert!(f.rules().is_empty());
    }

    #[test]
    fn rules_round_trip_as_json() {
        let json = r#"[{"endpoint":"create","action":{"kind":"status","status":502,"body":"html"},"count":1},
                       {"action":{"kind":"latency","delay":"250ms"}},
                       {"action":{"kind":"rate_limit","retry_after_secs":7},"rate":0.5,"duration":"10s"}]"#;
        let rules: Vec<FaultRule> = serde_json::from_str(json).unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[1].action,
            FaultAction::Latency {
                delay: Duration::from_millis(250)
            }
        );
        let back = serde_json::to_string(&rules).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<FaultRule>>(&back).unwrap(),
            rules
        );
    }
}
