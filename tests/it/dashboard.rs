//! The admin surface: every admin route refuses a missing or wrong token, and the dashboard
//! works in a real headless Chromium against the real binary.

use std::process::Command;

use sandwarden::api::ADMIN_ROUTES;

use crate::crash::start_with;
use crate::support::Service;

#[tokio::test]
async fn every_admin_route_requires_the_token() {
    let svc = Service::start(|s| s.admin_token = Some("right-token".into())).await;
    for (method, path) in ADMIN_ROUTES {
        let url = format!(
            "{}/v1/admin{}",
            svc.url,
            path.replace("{id}", "job-0000000000000000")
        );
        let method: reqwest::Method = method.parse().unwrap();
        for auth in [None, Some("Bearer wrong-token"), Some("right-token")] {
            let mut req = svc.http.request(method.clone(), &url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        let r = svc
            .http
            .request(method.clone(), &url)
            .header("authorization", "Bearer right-token")
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 401, "{method} {path} refused the right token");
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert_ne!(
            body["error"]["code"], "no_route",
            "{method} {path} is not routed"
        );
    }
    // Job endpoints and the probes stay open.
    assert_eq!(svc.get("/healthz").await.0, 200);
    assert_eq!(svc.get("/v1/jobs?user_id=u").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_breaker_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let proc = start_with(
        dir.path(),
        &[
            ("SANDWARDEN_ADMIN_TOKEN", "dash-token"),
            ("SANDWARDEN_RETRY__BASE", "50ms"),
        ],
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let shot = format!("{root}/target/dashboard.png");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(format!("{root}/tests/dashboard/check.mjs"))
            .current_dir(format!("{root}/tests/dashboard"))
            .env("BASE_URL", &proc.url)
            .env("ADMIN_TOKEN", "dash-token")
            .env("SCREENSHOT", &shot)
            .output()
            .expect("node runs (scripts/test installs chromium and playwright-core)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "dashboard check failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
