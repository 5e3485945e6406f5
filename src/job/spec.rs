//! Turning an untrusted request body into a `JobSpec`.
//!
//! Parsing is strict (unknown fields are refused) and every problem names the field it is
//! about, as a path such as `steps[1].run.timeout`, so that a client can fix its request
//! without guessing. Defaults for omitted fields come from `SpecDefaults`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{JobSpec, NetworkAccess, Priority, SandboxRequest, Step};

/// Values used where a request leaves a field out, and the bounds requests must stay within.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecDefaults {
    pub template: String,
    pub sandbox_timeout: Duration,
    pub run_timeout: Duration,
    pub read_timeout: Duration,
    pub max_steps: usize,
    pub max_step_timeout: Duration,
    pub max_sandbox_timeout: Duration,
    /// Network of a sandbox whose job and template say nothing.
    pub network: NetworkAccess,
    /// Templates that choose a network (`[local.templates.<name>] network`).
    pub template_networks: BTreeMap<String, NetworkAccess>,
}

impl Default for SpecDefaults {
    fn default() -> Self {
        SpecDefaults {
            template: "base".into(),
            sandbox_timeout: Duration::from_secs(30 * 60),
            run_timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(3),
            max_steps: 100,
            max_step_timeout: Duration::from_secs(3600),
            max_sandbox_timeout: Duration::from_secs(24 * 3600),
            network: NetworkAccess::None,
            template_networks: BTreeMap::new(),
        }
    }
}

/// The longest `delay` a request may ask for. Longer ones are mistakes rather than plans, and
/// an unbounded one would overflow the job's run time in milliseconds.
pub const MAX_DELAY: Duration = Duration::from_secs(10 * 31_557_600); // 10 years of 365.25 days

/// A request that could not be accepted, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// `bad_json` when the body is not JSON at all, `invalid_field` otherwise.
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl SpecError {
    fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            code: "invalid_field",
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    user_id: String,
    project_id: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    priority: Priority,
    idempotency_key: Option<String>,
    #[serde(default)]
    sandbox: RawSandbox,
    steps: Vec<RawStep>,
    /// RFC 3339 time before which the job does not run.
    run_at: Option<String>,
    /// How long after acceptance the job may run, e.g. "10m".
    delay: Option<String>,
    /// A kept sandbox to run in.
    sandbox_id: Option<String>,
    notify: Option<RawNotify>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    template: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    keep: bool,
    /// "none" or "host".
    network: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawStep {
    WriteFile(RawWrite),
    Run(RawRun),
    ReadFile(RawRead),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWrite {
    path: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    cmd: String,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRead {
    path: String,
    timeout: Option<String>,
}

/// Parse and validate a request body.
pub fn parse(body: &[u8], defaults: &SpecDefaults) -> Result<JobSpec, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw: RawSpec = match serde_path_to_error::deserialize(&mut de) {
        Ok(raw) => raw,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let code = if inner.is_syntax() || inner.is_eof() {
                "bad_json"
            } else {
                "invalid_field"
            };
            let field = if path == "." || path == "?" {
                String::new()
            } else {
                path
            };
            return Err(SpecError {
                code,
                field,
                message: inner.to_string(),
            });
        }
    };
    if let Err(e) = de.end() {
        return Err(SpecError {
            code: "bad_json",
            field: String::new(),
            message: e.to_string(),
        });
    }
    validate(raw, defaults)
}

fn validate(raw: RawSpec, d: &SpecDefaults) -> Result<JobSpec, SpecError> {
    check_name("user_id", &raw.user_id)?;
    if let Some(p) = &raw.project_id {
        check_name("project_id", p)?;
    }
    if let Some(k) = &raw.idempotency_key
        && (k.is_empty() || k.len() > 256)
    {
        return Err(SpecError::field(
            "idempotency_key",
            "must be 1 to 256 bytes",
        ));
    }
    let template = raw.sandbox.template.unwrap_or_else(|| d.template.clone());
    check_name("sandbox.template", &template)?;
    if raw.sandbox_id.is_some() && raw.sandbox.network.is_some() {
        return Err(SpecError::field(
            "sandbox.network",
            "a job in a kept sandbox (sandbox_id) runs with the network that sandbox was made with",
        ));
    }
    let network = match raw.sandbox.network.as_deref() {
        Some(text) => NetworkAccess::parse(text).ok_or_else(|| {
            SpecError::field(
                "sandbox.network",
                format!("unknown network {text:?}; expected \"none\" or \"host\""),
            )
        })?,
        None => d
            .template_networks
            .get(&template)
            .copied()
            .unwrap_or(d.network),
    };
    let timeout = duration(
        "sandbox.timeout",
        raw.sandbox.timeout.as_deref(),
        d.sandbox_timeout,
        d.max_sandbox_timeout,
    )?;
    for key in raw.sandbox.env.keys() {
        let ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(SpecError::field(
                format!("sandbox.env.{key}"),
                "environment variable names are letters, digits and '_', not starting with a digit",
            ));
        }
    }
    if raw.steps.is_empty() {
        return Err(SpecError::field("steps", "a job needs at least one step"));
    }
    if raw.steps.len() > d.max_steps {
        return Err(SpecError::field(
            "steps",
            format!(
                "a job may have at most {} steps, this one has {}",
                d.max_steps,
                raw.steps.len()
            ),
        ));
    }
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.into_iter().enumerate() {
        steps.push(match step {
            RawStep::WriteFile(w) => {
                check_path(&format!("steps[{i}].write_file.path"), &w.path)?;
                Step::WriteFile {
                    path: w.path,
                    content: w.content,
                }
            }
            RawStep::Run(r) => {
                if r.cmd.trim().is_empty() {
                    return Err(SpecError::field(
                        format!("steps[{i}].run.cmd"),
                        "must not be empty",
                    ));
                }
                let timeout = duration(
                    &format!("steps[{i}].run.timeout"),
                    r.timeout.as_deref(),
                    d.run_timeout,
                    d.max_step_timeout,
                )?;
                Step::Run {
                    cmd: r.cmd,
                    timeout,
                }
            }
            RawStep::ReadFile(r) => {
                check_path(&format!("steps[{i}].read_file.path"), &r.path)?;
                let timeout = duration(
                    &format!("steps[{i}].read_file.timeout"),
                    r.timeout.as_deref(),
                    d.read_timeout,
                    d.max_step_timeout,
                )?;
                Step::ReadFile {
                    path: r.path,
                    timeout,
                }
            }
        });
    }
    if raw.run_at.is_some() && raw.delay.is_some() {
        return Err(SpecError::field(
            "delay",
            "give either run_at or delay, not both",
        ));
    }
    let run_at_ms = match &raw.run_at {
        None => None,
        Some(t) => Some(
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| {
                    SpecError::field(
                        "run_at",
                        format!("{t:?} is not an RFC 3339 time like \"2026-11-26T14:00:00Z\": {e}"),
                    )
                })?
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| SpecError::field("run_at", "must be after 1970"))?
                .as_millis() as u64,
        ),
    };
    let delay = match &raw.delay {
        None => None,
        Some(t) => {
            let d = humantime::parse_duration(t).map_err(|e| {
                SpecError::field(
                    "delay",
                    format!("{t:?} is not a duration like \"10m\": {e}"),
                )
            })?;
            if d > MAX_DELAY {
                return Err(SpecError::field(
                    "delay",
                    format!("must be at most {}", humantime::format_duration(MAX_DELAY)),
                ));
            }
            Some(d)
        }
    };
    let webhook = match raw.notify.and_then(|n| n.webhook) {
        None => None,
        Some(url) => {
            crate::notify::webhook::validate_url(&url)
                .map_err(|why| SpecError::field("notify.webhook", why))?;
            Some(url)
        }
    };
    if let Some(id) = &raw.sandbox_id {
        check_name("sandbox_id", id)?;
    }
    Ok(JobSpec {
        sandbox_id: raw.sandbox_id,
        run_at_ms,
        delay,
        webhook,
        user_id: raw.user_id,
        project_id: raw.project_id,
        kind: raw.kind,
        priority: raw.priority,
        idempotency_key: raw.idempotency_key,
        sandbox: SandboxRequest {
            template,
            timeout,
            env: raw.sandbox.env,
            keep: raw.sandbox.keep,
            network,
        },
        steps,
    })
}

fn check_name(field: &str, value: &str) -> Result<(), SpecError> {
    if value.is_empty() || value.len() > 128 {
        return Err(SpecError::field(field, "must be 1 to 128 characters"));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SpecError::field(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

fn check_path(field: &str, path: &str) -> Result<(), SpecError> {
    if path.is_empty() {
        return Err(SpecError::field(field, "must not be empty"));
    }
    if path.contains('\0') {
        return Err(SpecError::field(field, "must not contain a NUL byte"));
    }
    Ok(())
}

fn duration(
    field: &str,
    value: Option<&str>,
    default: Duration,
    max: Duration,
) -> Result<Duration, SpecError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let d = humantime::parse_duration(text).map_err(|e| {
        SpecError::field(
            field,
            format!("{text:?} is not a duration like \"30s\" or \"2m\": {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(SpecError::field(field, "must be greater than zero"));
    }
    if d > max {
        return Err(SpecError::field(
            field,
            format!("must be at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<JobSpec, SpecError> {
        parse(s.as_bytes(), &SpecDefaults::default())
    }

    #[test]
    fn full_spec_parses_with_defaults() {
        let spec = parse_str(
            r#"{"user_id":"u-1","priority":"high","steps":[
                {"write_file":{"path":"a.txt","content":"hi"}},
                {"run":{"cmd":"cat a.txt"}},
                {"read_file":{"path":"a.txt","timeout":"5s"}}]}"#,
        )
        .unwrap();
        assert_eq!(spec.priority, Priority::High);
        assert_eq!(spec.sandbox.timeout, Duration::from_secs(1800));
        assert_eq!(
            spec.steps[1],
            Step::Run {
                cmd: "cat a.txt".into(),
                timeout: Duration::from_secs(120)
            }
        );
        assert_eq!(
            spec.steps[2],
            Step::ReadFile {
                path: "a.txt".into(),
                timeout: Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"user_id":"u","steps":[{"run":{"cmd":"x","timeout":"soon"}}]}"#,
                "steps[0].run.timeout",
            ),
            (
                r#"{"user_id":"u","steps":[{"run":{"cmd":"x","timeout":"0s"}}]}"#,
                "steps[0].run.timeout",
            ),
            (
                r#"{"user_id":"u","priority":"urgent","steps":[]}"#,
                "priority",
            ),
            (r#"{"user_id":"u","steps":[]}"#, "steps"),
            (r#"{"user_id":"","steps":[{"run":{"cmd":"x"}}]}"#, "user_id"),
            (r#"{"steps":[{"run":{"cmd":"x"}}]}"#, ""),
            (r#"{"user_id":"u","colour":1,"steps":[]}"#, "colour"),
            (
                r#"{"user_id":"u","steps":[{"run":{"cmd":""}}]}"#,
                "steps[0].run.cmd",
            ),
            (r#"{"user_id":"u","steps":[{"fly":{}}]}"#, "steps[0]"),
            (
                r#"{"user_id":"u","delay":"later","steps":[{"run":{"cmd":"x"}}]}"#,
                "delay",
            ),
            (
                r#"{"user_id":"u","run_at":"tomorrow","steps":[{"run":{"cmd":"x"}}]}"#,
                "run_at",
            ),
            (
                r#"{"user_id":"u","notify":{"webhook":"ftp://x"},"steps":[{"run":{"cmd":"x"}}]}"#,
                "notify.webhook",
            ),
            (
                r#"{"user_id":"u","sandbox":{"timeout":"-5s"},"steps":[{"run":{"cmd":"x"}}]}"#,
                "sandbox.timeout",
            ),
            (
                r#"{"user_id":"u","sandbox":{"network":"wifi"},"steps":[{"run":{"cmd":"x"}}]}"#,
                "sandbox.network",
            ),
            (
                r#"{"user_id":"u","sandbox":{"network":true},"steps":[{"run":{"cmd":"x"}}]}"#,
                "sandbox.network",
            ),
            (
                r#"{"user_id":"u","sandbox_id":"sbx-1","sandbox":{"network":"host"},"steps":[{"run":{"cmd":"x"}}]}"#,
                "sandbox.network",
            ),
        ];
        for (body, field) in cases {
            let e = parse_str(body).unwrap_err();
            assert_eq!(e.field, field, "body {body}: {e:?}");
            assert_eq!(e.code, "invalid_field", "body {body}");
        }
        let missing = parse_str(r#"{"steps":[{"run":{"cmd":"x"}}]}"#).unwrap_err();
        assert!(missing.message.contains("user_id"), "{missing:?}");
        let unknown = parse_str(r#"{"user_id":"u","colour":1,"steps":[]}"#).unwrap_err();
        assert!(unknown.message.contains("colour"), "{unknown:?}");
    }

    #[test]
    fn network_is_the_jobs_else_the_templates_else_the_default() {
        let d = SpecDefaults {
            template_networks: BTreeMap::from([("web".to_string(), NetworkAccess::Host)]),
            ..SpecDefaults::default()
        };
        let net = |sandbox: &str| {
            let body = format!(
                r#"{{"user_id":"u","sandbox":{sandbox},"steps":[{{"run":{{"cmd":"x"}}}}]}}"#
            );
            parse(body.as_bytes(), &d).unwrap().sandbox.network
        };
        assert_eq!(net("{}"), NetworkAccess::None);
        assert_eq!(net(r#"{"template":"web"}"#), NetworkAccess::Host);
        assert_eq!(
            net(r#"{"template":"web","network":"none"}"#),
            NetworkAccess::None
        );
        assert_eq!(net(r#"{"network":"host"}"#), NetworkAccess::Host);
        let e = parse_str(
            r#"{"user_id":"u","sandbox":{"network":"wifi"},"steps":[{"run":{"cmd":"x"}}]}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("\"wifi\""), "{e:?}");
    }

    #[test]
    fn bad_json_is_reported_as_such() {
        for body in [
            "{",
            "not json",
            r#"{"user_id":"u","steps":[{"run":{"cmd":"x"}}]} trailing"#,
            "",
        ] {
            assert_eq!(
                parse_str(body).unwrap_err().code,
                "bad_json",
                "body {body:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse(&body, &SpecDefaults::default());
        }
    }
}
