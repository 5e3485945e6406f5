//! End-to-end checks of webhook delivery against a real axum receiver bound to
//! 127.0.0.1:0. They must never send to any other address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use sandwarden::notify::webhook::{
    DeliveryOutcome, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookPolicy, deliver, verify,
};
use serde_json::json;
use tokio::time::Instant;

const SECRET: &[u8] = b"test-secret";

#[derive(Clone)]
struct Hit {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

/// One scripted answer: status, optional Retry-After, optional delay before answering.
#[derive(Clone, Copy)]
struct Answer {
    status: u16,
    retry_after: Option<&'static str>,
    delay: Duration,
}

const fn answer(status: u16) -> Answer {
    Answer {
        status,
        retry_after: None,
        delay: Duration::ZERO,
    }
}

#[derive(Clone)]
struct Shared {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Answers in order; the last one repeats.
    script: Arc<Vec<Answer>>,
    /// When set, the receiver itself checks the signature and answers 401 on mismatch.
    verify_with: Option<&'static [u8]>,
}

struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

async fn hook(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let index = {
        let mut hits = shared.hits.lock().unwrap();
        hits.push(Hit {
            headers: headers.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        hits.len() - 1
    };
    if let Some(secret) = shared.verify_with {
        let timestamp = headers
            .get(TIMESTAMP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        let ok = match (timestamp, signature) {
            (Some(ts), Some(sig)) => verify(secret, ts, &body, sig),
            _ => false,
        };
        if !ok {
            return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
        }
    }
    let a = shared.script[index.min(shared.script.len() - 1)];
    tokio::time::sleep(a.delay).await;
    let status = StatusCode::from_u16(a.status).unwrap();
    match a.retry_after {
        Some(after) => (status, [("retry-after", after)], "").into_response(),
        None => status.into_response(),
    }
}

async fn receiver(script: Vec<Answer>, verify_with: Option<&'static [u8]>) -> Receiver {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let shared = Shared {
        hits: hits.clone(),
        script: Arc::new(script),
        verify_with,
    };
    let app = Router::new().route("/hook", post(hook)).with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{addr}/hook?token=abc"),
        hits,
    }
}

fn client() -> reqwest::Client {
    // No proxy: an HTTP_PROXY in the environment must not divert loopback traffic.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn fast(max_attempts: u32) -> WebhookPolicy {
    WebhookPolicy {
        max_attempts,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
    }
}

fn sample_body() -> serde_json::Value {
    json!({
        "job_id": "job-7f3a",
        "state": "succeeded",
        "exit_code": 0,
        "note": "ünïcode \"quotes\" and\nnewlines",
        "nested": {"a": [1, 2.5, null, true]},
    })
}

#[tokio::test]
async fn receiver_verifies_signature_and_sees_exact_body() {
    let rx = receiver(vec![answer(200)], Some(SECRET)).await;
    let body = sample_body();
    let before = now_ms() / 1000;
    let d = deliver(&client(), &rx.url, &body, Some(SECRET), &fast(3), now_ms).await;
    let after = now_ms() / 1000;

    assert_eq!(d.outcome, DeliveryOutcome::Delivered);
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].status, Some(200));
    assert_eq!(d.attempts[0].error, None);

    let hits = rx.hits();
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_eq!(hit.body.as_ref(), serde_json::to_vec(&body).unwrap());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&hit.body).unwrap(),
        body
    );
    assert_eq!(hit.headers["content-type"], "application/json");
    let ts: u64 = hit.headers[TIMESTAMP_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((before..=after).contains(&ts), "timestamp {ts} is now");
    let sig = hit.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
    assert!(verify(SECRET, ts, &hit.body, sig));
    assert!(
        !verify(SECRET, ts + 1, &hit.body, sig),
        "timestamp is bound"
    );
}

#[tokio::test]
async fn wrong_secret_is_rejected_by_receiver_and_not_retried() {
    let rx = receiver(vec![answer(200)], Some(SECRET)).await;
    let d = deliver(
        &client(),
        &rx.url,
        &sample_body(),
        Some(b"not-the-secret"),
        &fast(5),
        now_ms,
    )
    .await;
    assert_eq!(d.outcome, DeliveryOutcome::GaveUp);
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].status, Some(401));
}

#[tokio::test]
async fn unsigned_delivery_sends_no_signature() {
    let rx = receiver(vec![answer(204)], None).await;
    let d = deliver(&client(), &rx.url, &json!({}), None, &fast(3), now_ms).await;
    assert_eq!(d.outcome, DeliveryOutcome::Delivered);
    let hits = rx.hits();
    assert!(!hits[0].headers.contains_key(SIGNATURE_HEADER));
    assert!(!hits[0].headers.contains_key(TIMESTAMP_HEADER));
    assert_eq!(hits[0].body.as_ref(), b"{}");
}

#[tokio::test]
async fn two_500s_then_200_takes_three_attempts() {
    let rx = receiver(vec![answer(500), answer(500), answer(200)], Some(SECRET)).await;
    let d = deliver(
        &client(),
        &rx.url,
        &sample_body(),
        Some(SECRET),
        &fast(5),
        now_ms,
    )
    .await;
    assert_eq!(d.outcome, DeliveryOutcome::Delivered);
    let statuses: Vec<_> = d.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
    assert_eq!(
        d.attempts[0].error.as_deref(),
        Some("receiver answered 500")
    );
    assert_eq!(d.attempts[2].error, None);
    assert!(d.attempts.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    // Every attempt carried the same body and a valid signature of its own.
    let hits = rx.hits();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h.body == hits[0].body));
}

#[tokio::test]
async fn persistent_503_gives_up_after_max_attempts() {
    let rx = receiver(vec![answer(503)], None).await;
    let d = deliver(&client(), &rx.url, &json!({"a": 1}), None, &fast(4), now_ms).await;
    assert_eq!(d.outcome, DeliveryOutcome::GaveUp);
    assert_eq!(d.attempts.len(), 4);
    assert_eq!(rx.hits().len(), 4);
}

#[tokio::test]
async fn status_400_gives_up_at_once() {
    let rx = receiver(vec![answer(400), answer(200)], None).await;
    let d = deliver(&client(), &rx.url, &json!({"a": 1}), None, &fast(5), now_ms).await;
    assert_eq!(d.outcome, DeliveryOutcome::GaveUp);
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].status, Some(400));
    assert_eq!(
        d.attempts[0].error.as_deref(),
        Some("receiver answered 400")
    );
    assert_eq!(rx.hits().len(), 1);
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let rx = receiver(
        vec![
            Answer {
                retry_after: Some("1"),
                ..answer(429)
            },
            answer(200),
        ],
        None,
    )
    .await;
    // The cap is above Retry-After, so the wait is not clamped.
    let policy = WebhookPolicy {
        cap: Duration::from_secs(5),
        ..fast(3)
    };
    let start = Instant::now();
    let d = deliver(&client(), &rx.url, &json!({"a": 1}), None, &policy, now_ms).await;
    let elapsed = start.elapsed();
    assert_eq!(d.outcome, DeliveryOutcome::Delivered);
    assert_eq!(d.attempts.len(), 2);
    assert_eq!(d.attempts[0].status, Some(429));
    assert!(elapsed >= Duration::from_secs(1), "elapsed {elapsed:?}");
    let hits = rx.hits();
    assert!(hits[1].at - hits[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn retry_after_is_clamped_to_cap() {
    let rx = receiver(
        vec![
            Answer {
                retry_after: Some("3600"),
                ..answer(429)
            },
            answer(200),
        ],
        None,
    )
    .await;
    let start = Instant::now();
    let d = deliver(&client(), &rx.url, &json!({"a": 1}), None, &fast(3), now_ms).await;
    assert_eq!(d.outcome, DeliveryOutcome::Delivered);
    assert_eq!(d.attempts.len(), 2);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn connection_refused_is_retried_then_gives_up() {
    // Bind then drop to get a loopback port with nothing listening.
    let dead: SocketAddr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{dead}/hook?token=secret-token");
    let d = deliver(
        &client(),
        &url,
        &json!({"a": 1}),
        Some(SECRET),
        &fast(3),
        now_ms,
    )
    .await;
    assert_eq!(d.outcome, DeliveryOutcome::GaveUp);
    assert_eq!(d.attempts.len(), 3);
    for a in &d.attempts {
        assert_eq!(a.status, None);
        let err = a.error.as_deref().unwrap();
        assert!(err.contains("refused"), "error: {err}");
        assert!(!err.contains("secret-token"), "url leaked: {err}");
        assert_eq!(err, err.to_lowercase());
    }
}

#[tokio::test]
async fn slow_receiver_times_out_and_is_retried() {
    let rx = receiver(
        vec![Answer {
            delay: Duration::from_secs(2),
            ..answer(200)
        }],
        None,
    )
    .await;
    let policy = WebhookPolicy {
        timeout: Duration::from_millis(100),
        ..fast(2)
    };
    let d = deliver(&client(), &rx.url, &json!({"a": 1}), None, &policy, now_ms).await;
    assert_eq!(d.outcome, DeliveryOutcome::GaveUp);
    assert_eq!(d.attempts.len(), 2);
    for a in &d.attempts {
        assert_eq!(a.status, None);
        assert_eq!(a.error.as_deref(), Some("request timed out"));
        assert!(a.duration_ms < 1500, "attempt took {}ms", a.duration_ms);
    }
}

#[tokio::test]
async fn zero_max_attempts_still_tries_once() {
    let rx = receiver(vec![answer(500)], None).await;
    let d = deliver(&client(), &rx.url, &json!({"a": 1}), None, &fast(0), now_ms).await;
    assert_eq!(d.outcome, DeliveryOutcome::GaveUp);
    assert_eq!(d.attempts.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn paused_clock_skips_long_backoff() {
    let rx = receiver(
        vec![
            Answer {
                retry_after: Some("30"),
                ..answer(429)
            },
            answer(200),
        ],
        None,
    )
    .await;
    // Milliseconds from tokio's clock, as the main crate's clock::now_ms does.
    let origin = Instant::now();
    let paused_ms = move || origin.elapsed().as_millis() as u64;
    let policy = WebhookPolicy::default();
    let d = deliver(
        &client(),
        &rx.url,
        &json!({"a": 1}),
        None,
        &policy,
        paused_ms,
    )
    .await;
    assert_eq!(d.outcome, DeliveryOutcome::Delivered);
    assert_eq!(d.attempts.len(), 2);
    assert!(d.attempts[1].at_ms >= 30_000, "{:?}", d.attempts);
}
