//! Inputs the fuzz targets in `fuzz/` found (or showed to matter), each pinned to the behaviour
//! that replaced the crash or the broken invariant.

use std::collections::BTreeSet;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use sandwarden::Settings;
use sandwarden::cli::repl::complete;
use sandwarden::config::{ConfigError, load_from, render};
use sandwarden::job::Job;
use sandwarden::job::spec::{MAX_DELAY, SpecDefaults, parse};
use sandwarden::provider::e2b::ProcessStream;

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

fn load(toml: &str) -> Result<Settings, ConfigError> {
    load_from(Figment::from(Toml::string(toml)))
}

/// A cron step near u32::MAX overflowed while filling the field: a panic at start-up in a
/// debug build, and in release a wrap that also set minute 0.
#[test]
fn a_huge_cron_step_means_one_value() {
    let s = load("[schedule]\nsandbox_reaper = \"1-59/4294967295 * * * *\"\n").unwrap();
    let cron = &s
        .health
        .schedules
        .iter()
        .find(|(n, _)| *n == "sandbox_reaper")
        .unwrap()
        .1;
    // Minute 1 of each hour only: from 00:00:30 the next run is 00:01, then 01:01.
    assert_eq!(cron.next_after(30_000), Some(60_000));
    assert_eq!(cron.next_after(60_000), Some(3_660_000));
}

/// `config check` printed strings with Rust's escapes (`"a\u{7f}b"`), which TOML refuses, so
/// its output could not be loaded back.
#[test]
fn rendered_settings_load_back_with_control_characters() {
    let s = load("data_dir = \"a\\u007fb\\u0000\"\n[sandbox]\ntemplate = \"t\\\"\\\\\\u0001\"\n")
        .unwrap();
    assert_eq!(s.data_dir.to_str(), Some("a\u{7f}b\0"));
    let rendered = render(&s);
    assert!(
        rendered.contains("data_dir = \"a\\u007Fb\\u0000\"\n"),
        "{rendered}"
    );
    assert_eq!(load(&rendered).unwrap(), s);
}

fn frame(flags: u8, payload: &str) -> Vec<u8> {
    let mut f = vec![flags];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload.as_bytes());
    f
}

/// Invalid UTF-8 in a command's output became U+FFFD (three bytes each) after the byte cap was
/// applied, so four kept bytes under a 4-byte cap came back as 12 bytes of text.
#[test]
fn command_output_stays_within_the_cap_after_lossy_decoding() {
    let mut wire = frame(0, r#"{"event":{"data":{"stdout":"/////w=="}}}"#); // ff ff ff ff
    wire.extend(frame(0, r#"{"event":{"end":{"exited":true}}}"#));
    wire.extend(frame(2, "{}"));
    let mut stream = ProcessStream::new(4, Duration::from_secs(1));
    let out = stream.push(&wire).expect("the stream ends").unwrap();
    assert_eq!(out.stdout, "\u{fffd}");
    assert!(out.truncated);
}

/// Tab completion after a multi-byte whitespace character (a no-break space, NEL) sliced the
/// line inside that character and panicked, ending the admin REPL.
#[test]
fn completion_after_a_no_break_space_does_not_panic() {
    let ids = BTreeSet::new();
    let line = "fa2\0)\u{a0}"; // the fuzzer's input
    assert_eq!(complete(line, line.len(), &ids), (line.len(), vec![]));
    let line = "help\u{85}st";
    let (start, found) = complete(line, line.len(), &ids);
    assert_eq!((start, found), (6, vec!["status ".to_string()]));
}
