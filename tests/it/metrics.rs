//! `/metrics` after a mixed workload shows the counters, histograms and gauges it should.

use std::sync::Arc;

use serde_json::json;

use crate::support::{MemProvider, Service};

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_a_mixed_workload() {
    let svc = Service::with_provider(Arc::new(MemProvider::default()), |s| {
        s.admin_token = Some("tok".into());
        s.ratelimit
            .limits
            .insert(sandwarden::ratelimit::policy::Operation::Create, 100);
    })
    .await;
    // Three jobs that complete, one whose provider calls fail permanently.
    for i in 0..3 {
        let id = svc
            .submit(json!({"user_id": "m", "steps": [{"run": {"cmd": format!("ok{i}")}}]}))
            .await;
        assert_eq!(svc.wait(&id).await["status"], "completed");
    }
    svc.rt.faults().set(sandwarden::provider::faults::Faults {
        enabled: true,
        error_rate: 1.0,
        status: 404,
        ..Default::default()
    });
    let id = svc
        .submit(json!({"user_id": "m", "steps": [{"run": {"cmd": "bad"}}]}))
        .await;
    assert_eq!(svc.wait(&id).await["status"], "failed");
    svc.rt.faults().set(Default::default());

    let r = svc
        .http
        .get(format!("{}/metrics", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "metrics are open by default");
    let text = r.text().await.unwrap();
    let calls = |op: &str, outcome: &str| {
        value(
            &text,
            &format!("sandwarden_provider_calls_total{{operation=\"{op}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(calls("sandbox_create", "ok"), 3.0);
    assert_eq!(calls("command_run", "ok"), 3.0);
    assert_eq!(calls("sandbox_kill", "ok"), 3.0);
    assert_eq!(
        calls("sandbox_create", "permanent"),
        1.0,
        "the 404 is counted, and not retried"
    );
    assert_eq!(
        value(
            &text,
            "sandwarden_provider_call_duration_seconds_count{operation=\"sandbox_create\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &text,
            "sandwarden_provider_call_duration_seconds_bucket{operation=\"sandbox_create\",le=\"+Inf\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &text,
            "sandwarden_job_transitions_total{status=\"completed\"}"
        ),
        3.0
    );
    assert_eq!(
        value(&text, "sandwarden_job_transitions_total{status=\"failed\"}"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "sandwarden_job_transitions_total{status=\"running\"}"
        ),
        4.0
    );
    assert_eq!(
        value(&text, "sandwarden_queue_depth{status=\"completed\"}"),
        3.0
    );
    assert_eq!(
        value(&text, "sandwarden_queue_depth{status=\"pending\"}"),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "sandwarden_breaker_state{provider=\"mem\",state=\"closed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "sandwarden_rate_usage_ratio{operation=\"sandbox_create\"}"
        ),
        0.04
    );
    assert_eq!(
        value(
            &text,
            "sandwarden_ratelimit_decisions_total{operation=\"sandbox_create\",decision=\"granted\"}"
        ),
        4.0
    );
    assert!(value(&text, "sandwarden_workers_alive") >= 1.0);
}
