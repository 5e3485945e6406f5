//! Inputs the fuzz targets in `fuzz/` found (or showed to matter), each pinned to the behaviour
//! that replaced the crash or the broken invariant.

use std::time::Duration;

use sandwarden::job::Job;
use sandwarden::job::spec::{MAX_DELAY, SpecDefaults, parse};

const NOW_MS: u64 = 1_800_000_000_000;

fn spec_with_delay(delay: &str) -> Vec<u8> {
    format!(r#"{{"user_id":"u","delay":"{delay}","steps":[{{"run":{{"cmd":"x"}}}}]}}"#).into_bytes()
}

/// A delay whose milliseconds do not fit in u64 was accepted, and the job's run time was
/// truncated: "600000000years" ran 15 million years early, and some delays wrapped to "now".
#[test]
fn delays_past_the_limit_are_refused_by_name() {
    for delay in ["600000000years", "18446744073709551615s", "10years 1s"] {
        let e = parse(&spec_with_delay(delay), &SpecDefaults::default()).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str(), e.message.as_str()),
            ("invalid_field", "delay", "must be at most 10years"),
            "delay {delay}"
        );
    }
    let spec = parse(&spec_with_delay("10years"), &SpecDefaults::default()).unwrap();
    assert_eq!(spec.delay, Some(MAX_DELAY));
    let job = Job::new(1, spec, NOW_MS);
    assert_eq!(job.run_at_ms, NOW_MS + MAX_DELAY.as_millis() as u64);
}

/// A spec that never went through `parse` (an older record, an embedding caller) with a delay
/// beyond u64 milliseconds runs never, not early.
#[test]
fn a_job_with_an_unrepresentable_delay_saturates() {
    let mut spec = parse(&spec_with_delay("1s"), &SpecDefaults::default()).unwrap();
    spec.delay = Some(Duration::from_secs(u64::MAX));
    assert_eq!(Job::new(1, spec, NOW_MS).run_at_ms, u64::MAX);
}
