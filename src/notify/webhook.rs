//! Owns signed webhook delivery of job notifications: signing and verifying the
//! `x-sandwarden-signature` header, checking that a webhook URL is usable, and
//! POSTing one JSON notification with bounded, jittered retries while recording
//! every attempt. It must never log or return the webhook URL's path or query
//! (they often carry the receiver's token), the secret or the body; never retry
//! a 4xx other than 429; never sleep past `max_attempts`; and never read the
//! wall clock itself: the caller passes `now_ms`, so tests can pause time.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying `sha256=<hex>`, the HMAC-SHA256 of `"<timestamp>.<body>"`.
pub const SIGNATURE_HEADER: &str = "x-sandwarden-signature";
/// Header carrying the unix seconds that were signed; binding the time into the
/// HMAC lets receivers reject replays of an old, validly signed request.
pub const TIMESTAMP_HEADER: &str = "x-sandwarden-timestamp";

const SIGNATURE_PREFIX: &str = "sha256=";

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Signature header value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("{SIGNATURE_PREFIX}{}", hex::encode(tag))
}

/// Whether `signature` is a valid signature header value for `body` at `timestamp`.
///
/// The tag comparison is constant-time (`Mac::verify_slice`), so a forger cannot
/// learn the correct tag byte by byte from response timing. Checking that the
/// timestamp is recent is the receiver's job: only it knows its tolerance.
pub fn verify(secret: &[u8], timestamp: u64, body: &[u8], signature: &str) -> bool {
    let Some(hex_tag) = signature.trim().strip_prefix(SIGNATURE_PREFIX) else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_tag) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&tag).is_ok()
}

/// How hard `deliver` tries before giving up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookPolicy {
    /// Total attempts, the first included; 0 is treated as 1.
    pub max_attempts: u32,
    /// Backoff ceiling before the first retry; doubles with each retry.
    pub base: Duration,
    /// Largest wait between attempts, for backoff and for `Retry-After` alike,
    /// so a receiver cannot park a delivery for hours.
    pub cap: Duration,
    /// Limit on one attempt, from connecting to the response headers.
    pub timeout: Duration,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// One POST, as recorded for the job's notification history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// `now_ms` when the attempt started.
    pub at_ms: u64,
    /// HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// Lowercase reason, when the attempt did not deliver.
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    GaveUp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub outcome: DeliveryOutcome,
    pub attempts: Vec<DeliveryAttempt>,
}

/// What to do after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Delivered,
    /// Try again; `Some` when the receiver said how long to wait.
    Retry(Option<Duration>),
    GiveUp,
}

fn classify_status(status: StatusCode, headers: &HeaderMap) -> Verdict {
    if status.is_success() {
        return Verdict::Delivered;
    }
    // 503 often carries Retry-After too, and the receiver knows best when it is back.
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        return Verdict::Retry(retry_after(headers));
    }
    if status.is_server_error() {
        return Verdict::Retry(None);
    }
    // Other 4xx (and unfollowed 1xx/3xx) will answer the same next time.
    Verdict::GiveUp
}

/// `Retry-After` in delay-seconds form. The HTTP-date form is ignored (backoff
/// applies instead): receivers of webhooks send seconds in practice, and a
/// date would tie the wait to the receiver's clock.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Upper bound of the backoff before retry number `retry` (1-based).
fn backoff_ceiling(policy: &WebhookPolicy, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    policy.base.saturating_mul(factor).min(policy.cap)
}

/// Full jitter: anywhere in `[0, ceiling]`, so many deliveries failing against
/// the same receiver do not come back in lockstep.
fn full_jitter(ceiling: Duration) -> Duration {
    let max = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=max))
}

/// The error text of a failed request, without the URL (which may hold a token),
/// with its causes, so "connection refused" is visible and not just "error
/// sending request".
fn describe(err: reqwest::Error) -> String {
    if err.is_timeout() {
        return "request timed out".to_owned();
    }
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.to_lowercase()
}

fn classify_error(err: &reqwest::Error) -> Verdict {
    // A malformed request or a redirect loop fails the same way every time;
    // timeouts, refused and reset connections are worth another try.
    if err.is_builder() || err.is_redirect() {
        Verdict::GiveUp
    } else {
        Verdict::Retry(None)
    }
}

/// Host (and port) of `url` for logs: never the path or query.
fn log_host(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => "<no host>".to_owned(),
        },
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// POST `body` (JSON) to `url`, signed when `secret` is Some; 2xx = delivered; 5xx, 429 (honour
/// Retry-After seconds), timeouts and connection errors are retried with exponential backoff +
/// full jitter up to max_attempts; other 4xx give up at once. `now_ms` is a closure so tests can
/// use tokio's paused clock; sleeping uses tokio::time::sleep.
///
/// Each attempt is signed afresh with the current time, so a retry after a long
/// backoff still passes a receiver's replay window.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    secret: Option<&[u8]>,
    policy: &WebhookPolicy,
    now_ms: impl Fn() -> u64,
) -> Delivery {
    // Serialize once, so every attempt and its signature cover the same bytes.
    let payload = body.to_string().into_bytes();
    let max_attempts = policy.max_attempts.max(1);
    let host = log_host(url);
    let mut attempts = Vec::new();

    for attempt in 1..=max_attempts {
        let at_ms = now_ms();
        let mut request = client
            .post(url)
            .timeout(policy.timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(payload.clone());
        if let Some(secret) = secret {
            let timestamp = at_ms / 1000;
            request = request
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, sign(secret, timestamp, &payload));
        }

        let (status, error, verdict) = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let verdict = classify_status(status, response.headers());
                let error = (verdict != Verdict::Delivered)
                    .then(|| format!("receiver answered {}", status.as_u16()));
                (Some(status.as_u16()), error, verdict)
            }
            Err(err) => {
                let verdict = classify_error(&err);
                (None, Some(describe(err)), verdict)
            }
        };
        attempts.push(DeliveryAttempt {
            at_ms,
            status,
            error: error.clone(),
            duration_ms: now_ms().saturating_sub(at_ms),
        });

        let wait = match verdict {
            Verdict::Delivered => {
                tracing::debug!(%host, attempt, "webhook delivered");
                return Delivery {
                    outcome: DeliveryOutcome::Delivered,
                    attempts,
                };
            }
            Verdict::GiveUp => {
                tracing::warn!(%host, attempt, error = error.as_deref(), "webhook attempt not retryable, giving up");
                break;
            }
            Verdict::Retry(_) if attempt == max_attempts => {
                tracing::warn!(%host, attempt, error = error.as_deref(), "webhook attempts exhausted, giving up");
                break;
            }
            Verdict::Retry(Some(asked)) => asked.min(policy.cap),
            Verdict::Retry(None) => full_jitter(backoff_ceiling(policy, attempt)),
        };
        tracing::info!(
            %host,
            attempt,
            error = error.as_deref(),
            wait = %humantime::format_duration(wait),
            "webhook attempt failed, retrying"
        );
        tokio::time::sleep(wait).await;
    }

    Delivery {
        outcome: DeliveryOutcome::GaveUp,
        attempts,
    }
}

/// Reject webhook URLs that are not http(s) or have no host; returns a lowercase reason.
pub fn validate_url(url: &str) -> Result<(), String> {
    // url's parse errors are already short ("empty host", "invalid port number").
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| format!("url does not parse: {e}").to_lowercase())?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(format!("url scheme must be http or https, not {other}")),
    }
    // The WHATWG parser repairs "https:///path" into host "path" and
    // "http:example.com" into host "example.com"; a URL that only has a host
    // after such a repair is a typo, so the authority must be written out.
    let authority = url
        .trim()
        .split_once("://")
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(parsed.scheme()))
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    if authority.is_empty() || authority.starts_with(['/', '\\', '?', '#']) {
        return Err("url has no host".to_owned());
    }
    match parsed.host_str() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err("url has no host".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn known_answer_vector() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"key", 1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    #[test]
    fn sign_verify_round_trip() {
        let sig = sign(b"s3cret", 42, b"{\"a\":1}");
        assert!(verify(b"s3cret", 42, b"{\"a\":1}", &sig));
        assert!(!verify(b"s3cret", 42, b"{\"a\":2}", &sig), "tampered body");
        assert!(
            !verify(b"s3cret", 43, b"{\"a\":1}", &sig),
            "other timestamp"
        );
        assert!(!verify(b"other", 42, b"{\"a\":1}", &sig), "other secret");
        assert!(!verify(b"s3cret", 42, b"{\"a\":1}", &sig[7..]), "no prefix");
        assert!(!verify(b"s3cret", 42, b"{\"a\":1}", "sha256=zz"), "bad hex");
        assert!(!verify(b"s3cret", 42, b"{\"a\":1}", "sha256="), "empty tag");
        assert!(
            !verify(b"s3cret", 42, b"{\"a\":1}", &sig[..sig.len() - 2]),
            "truncated tag"
        );
    }

    #[test]
    fn empty_secret_still_signs() {
        let sig = sign(b"", 1, b"x");
        assert!(verify(b"", 1, b"x", &sig));
    }

    #[test]
    fn default_policy() {
        let p = WebhookPolicy::default();
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.base, Duration::from_secs(1));
        assert_eq!(p.cap, Duration::from_secs(60));
        assert_eq!(p.timeout, Duration::from_secs(10));
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let p = WebhookPolicy::default();
        let secs: Vec<u64> = (1..=8).map(|r| backoff_ceiling(&p, r).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff_ceiling(&p, u32::MAX), p.cap, "no overflow");
        for _ in 0..100 {
            assert!(full_jitter(Duration::from_millis(5)) <= Duration::from_millis(5));
        }
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn status_classification() {
        let none = HeaderMap::new();
        let mut after = HeaderMap::new();
        after.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let c = |code: u16, h: &HeaderMap| classify_status(StatusCode::from_u16(code).unwrap(), h);
        assert_eq!(c(200, &none), Verdict::Delivered);
        assert_eq!(c(204, &none), Verdict::Delivered);
        assert_eq!(c(500, &none), Verdict::Retry(None));
        assert_eq!(c(502, &after), Verdict::Retry(None));
        assert_eq!(c(429, &after), Verdict::Retry(Some(Duration::from_secs(7))));
        assert_eq!(c(503, &after), Verdict::Retry(Some(Duration::from_secs(7))));
        assert_eq!(c(429, &none), Verdict::Retry(None));
        assert_eq!(c(400, &none), Verdict::GiveUp);
        assert_eq!(c(404, &after), Verdict::GiveUp);
        assert_eq!(c(301, &none), Verdict::GiveUp);
    }

    #[test]
    fn retry_after_only_seconds() {
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static(" 3 "));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn validate_url_cases() {
        assert_eq!(validate_url("https://hooks.example.com/x?token=1"), Ok(()));
        assert_eq!(validate_url("http://127.0.0.1:8080/hook"), Ok(()));
        assert_eq!(validate_url("HTTPS://Example.COM"), Ok(()));
        assert_eq!(validate_url("http://[::1]:9/"), Ok(()));
        for bad in [
            "",
            "example.com/hook",
            "/relative",
            "ftp://example.com/",
            "file:///etc/passwd",
            "mailto:ops@example.com",
            "javascript:alert(1)",
            "unix:/run/x.sock",
            "http://",
            "https:///path",
            "http:example.com",
            "http:/example.com",
            "https:\\\\example.com",
            "http://?x=1",
            "http://exa mple.com/",
            "http://example.com:99999/",
        ] {
            let err = validate_url(bad).expect_err(bad);
            assert_eq!(err, err.to_lowercase(), "reason for {bad:?} is lowercase");
            assert!(!err.is_empty());
        }
    }

    #[test]
    fn log_host_hides_path_and_query() {
        assert_eq!(
            log_host("https://u:p@hooks.example.com:8443/t/abc?token=zzz"),
            "hooks.example.com:8443"
        );
        assert_eq!(log_host("nope"), "<invalid url>");
    }
}
