//! Notifications end to end: the feed, server-sent events and signed webhooks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use sandwarden::notify::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, verify};
use serde_json::{Value, json};

use crate::support::{MemProvider, Service};

type Seen = Arc<Mutex<Vec<(StatusCode, Value, bool)>>>;

/// A webhook receiver on 127.0.0.1 that answers 500 to its first call, then 200, and records
/// every call with whether its signature verified.
async fn receiver(secret: &'static str) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                let ts: u64 = headers[TIMESTAMP_HEADER].to_str().unwrap().parse().unwrap();
                let sig = headers[SIGNATURE_HEADER].to_str().unwrap();
                let ok = verify(secret.as_bytes(), ts, &body, sig);
                let mut seen = s.lock().unwrap();
                let status = if seen.is_empty() {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                seen.push((status, serde_json::from_slice(&body).unwrap(), ok));
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn a_job_notifies_its_user_by_feed_events_and_signed_webhook() {
    let (url, seen) = receiver("s3cret").await;
    let svc = Service::with_provider(Arc::new(MemProvider::default()), |s| {
        s.notify.webhook_secret = Some("s3cret".into());
        s.notify.webhook_backoff = Duration::from_millis(20);
    })
    .await;
    // Listen to the user's event stream before submitting.
    let mut sse = svc
        .http
        .get(format!("{}/v1/events?user_id=n-1", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let id = svc
        .submit(
            json!({"user_id": "n-1", "notify": {"webhook": url}, "steps": [{"run": {"cmd": "x"}}]}),
        )
        .await;
    assert_eq!(svc.wait(&id).await["status"], "completed");

    let mut text = String::new();
    while !text.contains("event: completed") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: started"), "{text}");
    assert!(text.contains(&id), "{text}");

    let (_, feed) = svc.get("/v1/users/n-1/notifications").await;
    let kinds: Vec<_> = feed["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, vec!["completed", "started"], "newest first");

    // Two notifications, the first delivery of which got a 500 and was retried.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhooks: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = seen.lock().unwrap().clone();
    assert!(
        calls.iter().all(|(_, _, signed_ok)| *signed_ok),
        "every delivery verifies"
    );
    assert_eq!(calls[0].0, StatusCode::INTERNAL_SERVER_ERROR);
    let same = calls.iter().filter(|c| c.1 == calls[0].1).count();
    assert_eq!(
        same, 2,
        "the failed delivery was retried with the same body: {calls:?}"
    );
    let events: Vec<_> = calls
        .iter()
        .filter(|c| c.0 == StatusCode::OK)
        .map(|c| c.1["event"].as_str().unwrap().to_string())
        .collect();
    assert!(
        events.contains(&"started".to_string()) && events.contains(&"completed".to_string()),
        "{events:?}"
    );

    // Delivery attempts are recorded on the notification.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, feed) = svc.get("/v1/users/n-1/notifications").await;
        let hooks: Vec<_> = feed["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["webhook"].clone())
            .collect();
        if hooks.iter().all(|h| h["outcome"] == "delivered") {
            let tries: usize = hooks
                .iter()
                .map(|h| h["attempts"].as_array().unwrap().len())
                .sum();
            assert_eq!(tries, 3);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{hooks:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Read marks.
    let (status, r) = svc
        .post("/v1/users/n-1/notifications/read", &json!({"all": true}))
        .await;
    assert_eq!((status, r["marked_read"].as_u64()), (200, Some(2)));
    let (_, unread) = svc.get("/v1/users/n-1/notifications?unread=true").await;
    assert_eq!(unread["notifications"].as_array().unwrap().len(), 0);
    let (status, _) = svc
        .post(
            "/v1/users/n-1/notifications/read",
            &json!({"ids": ["x"], "all": true}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_job_accepted_during_an_outage_says_so_and_notifies_queued() {
    let svc = Service::with_provider(Arc::new(MemProvider::default()), |_| {}).await;
    svc.rt
        .breaker_control(sandwarden::runtime::BreakerAction::Open)
        .await
        .unwrap();
    let (status, body) = svc
        .post(
            "/v1/jobs",
            &json!({"user_id": "n-2", "steps": [{"run": {"cmd": "x"}}]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("provider unavailable"),
        "{body}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, feed) = svc.get("/v1/users/n-2/notifications").await;
        if let Some(n) = feed["notifications"].as_array().unwrap().first() {
            assert_eq!(n["kind"], "queued");
            assert!(
                n["message"]
                    .as_str()
                    .unwrap()
                    .contains("will run when the provider recovers")
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    svc.rt
        .breaker_control(sandwarden::runtime::BreakerAction::Reset)
        .await
        .unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(svc.wait(id).await["status"], "completed");
}
