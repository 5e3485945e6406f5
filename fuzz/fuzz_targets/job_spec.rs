//! `job::spec::parse` on arbitrary request bodies.
//!
//! Besides never panicking, every accepted spec must keep the promises the rest of the service
//! relies on: it is within the configured bounds, it survives the store's JSON codec unchanged,
//! the same request written canonically is accepted as the same spec, and turning it into a job
//! never schedules it earlier than it asked.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use sandwarden::job::spec::{SpecDefaults, parse};
use sandwarden::job::{Job, JobSpec, Step};
use serde_json::{Value, json};

fuzz_target!(|body: &[u8]| {
    let defaults = SpecDefaults::default();
    let spec = match parse(body, &defaults) {
        Ok(spec) => spec,
        Err(e) => {
            assert!(["bad_json", "invalid_field"].contains(&e.code), "{e:?}");
            assert!(!e.message.is_empty(), "{e:?}");
            return;
        }
    };
    within_bounds(&spec, &defaults);

    let stored = serde_json::to_vec(&spec).expect("a spec serialises");
    let back: JobSpec = serde_json::from_slice(&stored).expect("a stored spec deserialises");
    assert_eq!(back, spec, "store codec round trip");

    let canonical = request_of(&spec).to_string();
    let again = parse(canonical.as_bytes(), &defaults)
        .unwrap_or_else(|e| panic!("canonical request {canonical} refused: {e:?}"));
    assert_eq!(again, spec, "canonical request {canonical}");

    for now in [0, 1_800_000_000_000] {
        let job = Job::new(1, spec.clone(), now);
        let earliest = match (spec.run_at_ms, spec.delay) {
            (Some(at), _) => u128::from(at.max(now)),
            (None, Some(d)) => (u128::from(now) + d.as_millis()).min(u128::from(u64::MAX)),
            (None, None) => u128::from(now),
        };
        assert!(
            u128::from(job.run_at_ms) >= earliest,
            "job runs at {} before {earliest} (now {now}, delay {:?})",
            job.run_at_ms,
            spec.delay
        );
    }
});

fn within_bounds(spec: &JobSpec, d: &SpecDefaults) {
    assert!(!spec.user_id.is_empty() && spec.user_id.len() <= 128);
    assert!(!spec.steps.is_empty() && spec.steps.len() <= d.max_steps);
    let t = spec.sandbox.timeout;
    assert!(!t.is_zero() && t <= d.max_sandbox_timeout);
    for step in &spec.steps {
        match step {
            Step::WriteFile { path, .. } => assert!(!path.is_empty() && !path.contains('\0')),
            Step::Run { cmd, timeout } => {
                assert!(!cmd.trim().is_empty());
                assert!(!timeout.is_zero() && *timeout <= d.max_step_timeout);
            }
            Step::ReadFile { path, timeout } => {
                assert!(!path.is_empty() && !path.contains('\0'));
                assert!(!timeout.is_zero() && *timeout <= d.max_step_timeout);
            }
        }
    }
    for key in spec.sandbox.env.keys() {
        assert!(!key.is_empty() && !key.starts_with(|c: char| c.is_ascii_digit()));
    }
}

/// The request a client would send for `spec`, every field spelled out.
fn request_of(spec: &JobSpec) -> Value {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let steps: Vec<Value> = spec
        .steps
        .iter()
        .map(|s| match s {
            Step::WriteFile { path, content } => {
                json!({"write_file": {"path": path, "content": content}})
            }
            Step::Run { cmd, timeout } => json!({"run": {"cmd": cmd, "timeout": d(*timeout)}}),
            Step::ReadFile { path, timeout } => {
                json!({"read_file": {"path": path, "timeout": d(*timeout)}})
            }
        })
        .collect();
    let mut req = json!({
        "user_id": spec.user_id,
        "priority": spec.priority,
        "sandbox": {
            "template": spec.sandbox.template,
            "timeout": d(spec.sandbox.timeout),
            "env": spec.sandbox.env,
            "keep": spec.sandbox.keep,
        },
        "steps": steps,
    });
    let optional = [
        ("project_id", spec.project_id.clone()),
        ("kind", spec.kind.clone()),
        ("idempotency_key", spec.idempotency_key.clone()),
        ("sandbox_id", spec.sandbox_id.clone()),
        ("delay", spec.delay.map(d)),
        (
            "run_at",
            spec.run_at_ms.map(|ms| {
                humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
            }),
        ),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            req[key] = json!(v);
        }
    }
    if let Some(url) = &spec.webhook {
        req["notify"] = json!({ "webhook": url });
    }
    req
}
