//! Wall-clock milliseconds that follow tokio's clock.
//!
//! Decision types take `now_ms: u64` instead of reading a clock. This module is where the
//! runtime gets that number: a wall-clock base taken once, advanced by `tokio::time::Instant`,
//! so that tests with a paused tokio clock move time for every actor at once. It must never
//! be used for anything that needs real elapsed time across process restarts beyond the
//! wall-clock base (persisted times are wall-clock milliseconds).

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static BASE: OnceLock<(u64, std::time::Instant)> = OnceLock::new();

/// Unix milliseconds, following tokio's (possibly paused) clock.
pub fn now_ms() -> u64 {
    let (wall, base) = *BASE.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        (wall, std::time::Instant::now())
    });
    // tokio's Instant reports paused/advanced time; outside a runtime it equals std's.
    let now = match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::time::Instant::now().into_std(),
        Err(_) => std::time::Instant::now(),
    };
    wall + now.saturating_duration_since(base).as_millis() as u64
}

/// RFC 3339 rendering of unix milliseconds, for the wire.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// Cast `msg()` to `actor` every `every` (the first at once) until `stop` is cancelled or the
/// actor is gone: an actor's periodic work. The actor cancels `stop` in its `post_stop`, so
/// that the task does not outlive it (and keep what it references, the store, alive).
pub fn tick<M: ractor::Message>(
    actor: ractor::ActorRef<M>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    msg: impl Fn() -> M + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if actor.cast(msg()).is_err() {
                break;
            }
        }
    });
}
