//! Alerts to Sentry. Each function is called once per incident by the actor that sees the
//! incident begin (a breaker transition, a threshold crossing, a health status change), so
//! de-duplication is structural: nothing here keeps state. Without a configured client (no
//! DSN) the Sentry calls are no-ops and nothing breaks.

use sentry::Level;

fn send(level: Level, message: &str, tags: &[(&str, String)], extra: &[(&str, serde_json::Value)]) {
    sentry::with_scope(
        |scope| {
            for (k, v) in tags {
                scope.set_tag(k, v);
            }
            for (k, v) in extra {
                scope.set_extra(k, v.clone());
            }
        },
        || sentry::capture_message(message, level),
    );
}

/// The circuit breaker opened (from closed).
pub fn breaker_opened(provider: &str, consecutive_failures: u32, last_error: Option<&str>) {
    send(
        Level::Error,
        &format!("circuit breaker for {provider} opened"),
        &[
            ("provider", provider.to_string()),
            ("alert", "breaker_opened".into()),
        ],
        &[
            ("consecutive_failures", consecutive_failures.into()),
            ("last_error", last_error.unwrap_or("").into()),
        ],
    );
}

/// A half-open probe failed and the breaker opened again.
pub fn probe_failed(provider: &str, consecutive_failures: u32, last_error: Option<&str>) {
    send(
        Level::Error,
        &format!("recovery probe of {provider} failed"),
        &[
            ("provider", provider.to_string()),
            ("alert", "probe_failed".into()),
        ],
        &[
            ("consecutive_failures", consecutive_failures.into()),
            ("last_error", last_error.unwrap_or("").into()),
        ],
    );
}

/// Rate usage of an operation passed the alert mark (90 % by default).
pub fn rate_usage(operation: &str, used: u32, limit: u32) {
    send(
        Level::Warning,
        &format!("{operation} usage at {used} of {limit}"),
        &[
            ("operation", operation.to_string()),
            ("alert", "rate_usage".into()),
        ],
        &[("used", used.into()), ("limit", limit.into())],
    );
}

/// The health report turned unhealthy.
pub fn unhealthy(reasons: &[String], queue_depth: usize) {
    send(
        Level::Error,
        &format!("sandwarden is unhealthy: {}", reasons.join("; ")),
        &[("alert", "unhealthy".into())],
        &[
            ("reasons", reasons.into()),
            ("queue_depth", queue_depth.into()),
        ],
    );
}

/// Workers crashed faster than the restart limit allows.
pub fn restart_storm(why: &str) {
    send(Level::Error, why, &[("alert", "restart_storm".into())], &[]);
}
