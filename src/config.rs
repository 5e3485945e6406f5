//! Configuration: figment layering (built-in defaults < `config.toml` < `SANDWARDEN_*`
//! environment < command-line flags), validated once into a `Settings` of checked types.
//!
//! Validation walks the merged tree key by key and collects every problem (unknown key, bad
//! duration, out-of-range number, unknown provider) before reporting, so that an operator fixes
//! a bad file in one pass. Nothing outside this module parses configuration text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde_json::Value;

use crate::job::NetworkAccess;
use crate::job::spec::SpecDefaults;
use crate::provider::Network;
use crate::provider::local::LocalLimits;
use crate::provider::template::{Template, valid_name};
use crate::ratelimit::policy::Operation;

/// How much of the protection stands between jobs and the provider. Anything but `Full` is a
/// baseline for comparisons (the chaos suite), not a way to run a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protection {
    /// Retries, circuit breaker, rate limiter, and a queue that holds jobs through outages.
    #[default]
    Full,
    /// Three retries with backoff per call; no breaker, no limiter waits, and a job whose call
    /// still fails fails.
    RetryOnly,
    /// One try per call; a job whose call fails fails.
    None,
}

impl Protection {
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Full => "full",
            Protection::RetryOnly => "retry_only",
            Protection::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Local,
    E2b,
    /// Every call succeeds at once and does nothing: for benchmarks of the service itself.
    Noop,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::E2b => "e2b",
            ProviderKind::Noop => "noop",
        }
    }
}

/// How local sandboxes are isolated from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationKind {
    /// User, mount, PID, IPC, UTS and network namespaces (the default).
    Namespaces,
    /// Plain processes: only for platforms that cannot isolate, and said loudly.
    None,
}

/// Whether local steps run in cgroups of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Where the platform allows it (said at start), rlimits otherwise.
    Auto,
    /// Required: the service does not start without them.
    On,
    /// Never: rlimits only.
    Off,
}

impl CgroupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Auto => "auto",
            CgroupMode::On => "on",
            CgroupMode::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a step's provider calls are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
    pub multiplier: f64,
    pub jitter: String,
    pub rate_limit_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open_timeout: Duration,
    pub open_timeout_multiplier: f64,
    pub max_open_timeout: Duration,
    pub half_open_probes: u32,
    pub window_size: usize,
    pub window_min_calls: usize,
    pub window_failure_rate: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultSettings {
    pub enabled: bool,
    pub error_rate: f64,
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
    pub outage: Option<Duration>,
}

/// Provider call quotas (see `ratelimit::policy`).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub window: Duration,
    pub limits: BTreeMap<Operation, u32>,
    pub warn_ratio: f64,
    pub alert_ratio: f64,
    pub block_ratio: f64,
    pub max_concurrent_sandboxes: Option<u32>,
    pub min_create_interval: Option<Duration>,
    pub default_cooldown: Duration,
    pub per_user: Option<u32>,
}

/// How to reach E2B (or a compatible emulator / self-hosted deployment).
#[derive(Debug, Clone, PartialEq)]
pub struct E2bSettings {
    pub api_url: String,
    pub sandbox_url: Option<String>,
    pub api_key: Option<String>,
    pub domain: String,
    pub request_timeout: Duration,
}

pub use crate::notify::NotifySettings;

/// Checked settings: everything the runtime needs, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub provider: ProviderKind,
    pub protection: Protection,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    /// `/metrics` requires the admin token too.
    pub metrics_require_token: bool,
    /// Client API keys, each bound to a user id. When any is set, job endpoints require one
    /// (or the admin token) and a key acts only for its own user.
    pub client_keys: BTreeMap<String, String>,
    pub admin_token: Option<String>,
    pub sentry_dsn: Option<String>,
    pub workers: usize,
    pub restart_limit: u32,
    pub restart_window: Duration,
    /// A worker still on one job this long after the job's own time bound is hung: replaced.
    pub hung_grace: Duration,
    pub max_attempts: u32,
    pub max_output_bytes: usize,
    pub max_read_bytes: usize,
    pub create_timeout: Duration,
    /// Ended jobs are kept this long, then removed by the clean-up.
    pub retention: Duration,
    pub cleanup_batch: usize,
    pub health: crate::health::HealthSettings,
    pub write_timeout: Duration,
    pub job_defaults: SpecDefaults,
    pub local: LocalLimits,
    pub isolation: IsolationKind,
    /// Network of isolated sandboxes whose job and template say nothing (`local.network`).
    pub sandbox_network: Network,
    pub cgroups: CgroupMode,
    /// Where template directories are; `None`: `<data_dir>/templates`.
    pub templates_dir: Option<PathBuf>,
    /// `[local.templates.<name>]`: tools and network per template.
    pub templates: BTreeMap<String, Template>,
    /// fsync on the calling thread (tests on tokio's paused clock); not a configuration key.
    pub inline_flush: bool,
    pub retry: RetrySettings,
    pub breaker: BreakerSettings,
    pub ratelimit: RateLimitSettings,
    pub e2b: E2bSettings,
    pub notify: NotifySettings,
    pub faults: FaultSettings,
}

impl Settings {
    /// Built-in defaults with everything stored under `data_dir`; for tests and embedding.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Settings {
        let mut s = load_from(Figment::new()).expect("built-in defaults are valid");
        s.data_dir = data_dir.into();
        s
    }

    /// Configure template `name`, as a `[local.templates.<name>]` table would.
    pub fn set_template(&mut self, name: &str, template: Template) {
        match template.network {
            Some(n) => {
                self.job_defaults
                    .template_networks
                    .insert(name.to_string(), network_access(n));
            }
            None => {
                self.job_defaults.template_networks.remove(name);
            }
        }
        self.templates.insert(name.to_string(), template);
    }
}

fn network_access(n: Network) -> NetworkAccess {
    match n {
        Network::None => NetworkAccess::None,
        Network::Host => NetworkAccess::Host,
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

/// Everything wrong with the configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

/// Command-line overrides, the highest layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub workers: Option<u64>,
    pub log_json: bool,
}

/// Load from `config.toml` (or `overrides.config`), the environment and the overrides.
pub fn load(overrides: &Overrides) -> Result<Settings, ConfigError> {
    let mut fig = Figment::new();
    match &overrides.config {
        Some(path) => {
            if !path.exists() {
                return Err(ConfigError {
                    problems: vec![ConfigProblem {
                        key: "--config".into(),
                        message: format!("{} does not exist", path.display()),
                    }],
                });
            }
            fig = fig.merge(Toml::file(path));
        }
        None => {
            if Path::new("config.toml").exists() {
                fig = fig.merge(Toml::file("config.toml"));
            }
        }
    }
    fig = fig.merge(Env::prefixed("SANDWARDEN_").split("__"));
    if let Some(l) = &overrides.listen {
        fig = fig.merge(("listen", l));
    }
    if let Some(d) = &overrides.data_dir {
        fig = fig.merge(("data_dir", d.to_string_lossy().to_string()));
    }
    if let Some(w) = overrides.workers {
        fig = fig.merge(("workers.count", w));
    }
    if overrides.log_json {
        fig = fig.merge(("log_format", "json"));
    }
    let mut settings = load_from(fig)?;
    if settings.sentry_dsn.is_none() {
        settings.sentry_dsn = std::env::var("SENTRY_DSN").ok().filter(|s| !s.is_empty());
    }
    Ok(settings)
}

/// Validate a figment into settings, collecting every problem.
pub fn load_from(fig: Figment) -> Result<Settings, ConfigError> {
    let tree: Value = match fig.extract::<Value>() {
        Ok(v) => v,
        Err(errors) => {
            return Err(ConfigError {
                problems: errors
                    .into_iter()
                    .map(|e| ConfigProblem {
                        key: e.path.join("."),
                        message: e.kind.to_string(),
                    })
                    .collect(),
            });
        }
    };
    let mut r = Reader {
        tree: &tree,
        seen: BTreeSet::new(),
        problems: Vec::new(),
    };
    let job_defaults = SpecDefaults {
        template: r.string("sandbox.template", "base"),
        sandbox_timeout: r.duration("sandbox.timeout", "30m"),
        run_timeout: r.duration("jobs.run_timeout", "120s"),
        read_timeout: r.duration("jobs.read_timeout", "3s"),
        max_steps: r.uint("jobs.max_steps", 100, 1, 10_000) as usize,
        max_step_timeout: r.duration("jobs.max_step_timeout", "1h"),
        max_sandbox_timeout: r.duration("sandbox.max_timeout", "24h"),
        // Both filled in below, once the provider and the templates are known.
        network: NetworkAccess::None,
        template_networks: BTreeMap::new(),
    };
    let listen_text = r.string("listen", "127.0.0.1:8080");
    let listen = listen_text.parse().unwrap_or_else(|_| {
        r.problem(
            "listen",
            format!("{listen_text:?} is not an address like 127.0.0.1:8080"),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let provider = match r.string("provider", "local").as_str() {
        "local" => ProviderKind::Local,
        "e2b" => ProviderKind::E2b,
        "noop" => ProviderKind::Noop,
        other => {
            r.problem(
                "provider",
                format!("unknown provider {other:?}; expected \"local\", \"e2b\" or \"noop\""),
            );
            ProviderKind::Local
        }
    };
    let protection = match r.string("protection", "full").as_str() {
        "full" => Protection::Full,
        "retry_only" => Protection::RetryOnly,
        "none" => Protection::None,
        other => {
            r.problem(
                "protection",
                format!(
                    "unknown protection {other:?}; expected \"full\", \"retry_only\" or \"none\""
                ),
            );
            Protection::Full
        }
    };
    let log_format = match r.string("log_format", "text").as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            r.problem(
                "log_format",
                format!("unknown log format {other:?}; expected \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let jitter = r.string("retry.jitter", "full");
    if !["none", "full", "equal"].contains(&jitter.as_str()) {
        r.problem(
            "retry.jitter",
            format!("unknown jitter {jitter:?}; expected \"none\", \"full\" or \"equal\""),
        );
    }
    let status = r.uint("faults.status", 503, 400, 599) as u16;
    // Quotas default to the provider's plan: E2B's hobby plan for `e2b`, none for `local`.
    let e2b = provider == ProviderKind::E2b;
    let mut limits = BTreeMap::new();
    for op in Operation::ALL {
        let key = format!("ratelimit.limits.{}", op.as_str());
        let default = (e2b && op == Operation::Create).then_some(100);
        if let Some(n) = r.opt_uint(&key, 0, 1_000_000_000).or(default)
            && n > 0
        {
            limits.insert(op, n as u32);
        }
    }
    let max_live = r
        .opt_uint("ratelimit.max_concurrent_sandboxes", 0, 1_000_000)
        .or(e2b.then_some(20));
    let min_interval = if r.get("ratelimit.min_create_interval").is_some() {
        r.opt_duration("ratelimit.min_create_interval")
    } else {
        e2b.then_some(Duration::from_secs(1))
    };
    let ratelimit = RateLimitSettings {
        window: r.duration("ratelimit.window", "1h"),
        limits,
        warn_ratio: r.float("ratelimit.warn_ratio", 0.8, 0.0, 1.0),
        alert_ratio: r.float("ratelimit.alert_ratio", 0.9, 0.0, 1.0),
        block_ratio: r.float("ratelimit.block_ratio", 1.0, 0.0, 1.0),
        max_concurrent_sandboxes: max_live.filter(|n| *n > 0).map(|n| n as u32),
        min_create_interval: min_interval,
        default_cooldown: r.duration("ratelimit.default_cooldown", "30s"),
        per_user: r
            .opt_uint("ratelimit.per_user", 0, 1_000_000_000)
            .filter(|n| *n > 0)
            .map(|n| n as u32),
    };
    let mut settings = Settings {
        listen,
        data_dir: PathBuf::from(r.string("data_dir", "./data")),
        provider,
        protection,
        log_format,
        max_body_bytes: r.uint("api.max_body_bytes", 1 << 20, 1024, 1 << 30) as usize,
        metrics_require_token: r.boolean("api.metrics_require_token", false),
        client_keys: r.string_table("api.client_keys"),
        admin_token: r.opt_string("admin_token"),
        sentry_dsn: r.opt_string("sentry_dsn"),
        workers: r.uint("workers.count", 4, 1, 1024) as usize,
        restart_limit: r.uint("workers.restart_limit", 10, 1, 1_000_000) as u32,
        restart_window: r.duration("workers.restart_window", "10s"),
        hung_grace: r.duration("workers.hung_grace", "60s"),
        max_attempts: r.uint("jobs.max_attempts", 5, 1, 1000) as u32,
        max_output_bytes: r.uint("jobs.max_output_bytes", 1 << 20, 1, 1 << 30) as usize,
        max_read_bytes: r.uint("jobs.max_read_bytes", 10 << 20, 1, 1 << 30) as usize,
        create_timeout: r.duration("jobs.create_timeout", "60s"),
        retention: r.duration("jobs.retention", "7days"),
        cleanup_batch: r.uint("jobs.cleanup_batch", 1000, 1, 1_000_000) as usize,
        health: crate::health::HealthSettings {
            schedules: crate::health::TASKS
                .iter()
                .zip([
                    "*/5 * * * *",
                    "*/2 * * * *",
                    "0 * * * *",
                    "0 2 * * *",
                    "*/5 * * * *",
                    "*/5 * * * *",
                ])
                .map(|(name, default)| {
                    let key = format!("schedule.{name}");
                    let text = r.string(&key, default);
                    let cron = crate::health::Cron::parse(&text).unwrap_or_else(|e| {
                        r.problem(&key, e);
                        crate::health::Cron::parse(default).expect("defaults are valid")
                    });
                    (*name, cron)
                })
                .collect(),
            max_pending: r.uint("health.max_pending", 1000, 1, u64::MAX) as usize,
            max_pending_age: r.duration("health.max_pending_age", "15m"),
            idle_pause_after: r.duration("sandbox.idle_pause_after", "10m"),
        },
        write_timeout: r.duration("jobs.write_timeout", "30s"),
        job_defaults,
        local: LocalLimits {
            cpu_time: r.duration("local.cpu_time", "5m"),
            memory_bytes: r.uint("local.memory_bytes", 4 << 30, 1 << 20, u64::MAX),
            open_files: r.uint("local.open_files", 1024, 16, 1 << 20),
            processes: r.uint("local.processes", 512, 1, 1 << 22),
            file_size_bytes: r.uint("local.file_size_bytes", 1 << 30, 1, u64::MAX),
            disk_bytes: r.uint("local.disk_bytes", 4 << 30, 1, u64::MAX),
            cpu_millis: (r.float("local.cpus", 0.0, 0.0, 4096.0) * 1000.0).round() as u64,
        },
        cgroups: match r.string("local.cgroups", "auto").as_str() {
            "auto" => CgroupMode::Auto,
            "on" => CgroupMode::On,
            "off" => CgroupMode::Off,
            other => {
                r.problem(
                    "local.cgroups",
                    format!("unknown cgroups mode {other:?}; expected \"auto\", \"on\" or \"off\""),
                );
                CgroupMode::Auto
            }
        },
        templates_dir: r.opt_string("local.templates_dir").map(PathBuf::from),
        templates: r.templates(),
        isolation: match r.string("local.isolation", "namespaces").as_str() {
            "namespaces" => IsolationKind::Namespaces,
            "none" => IsolationKind::None,
            other => {
                r.problem(
                    "local.isolation",
                    format!("unknown isolation {other:?}; expected \"namespaces\" or \"none\""),
                );
                IsolationKind::Namespaces
            }
        },
        sandbox_network: r.network("local.network").unwrap_or_default(),
        inline_flush: false,
        retry: RetrySettings {
            max_retries: r.uint("retry.max_retries", 3, 0, 100) as u32,
            base: r.duration("retry.base", "1s"),
            cap: r.duration("retry.cap", "10s"),
            multiplier: r.float("retry.multiplier", 2.0, 1.0, 10.0),
            jitter,
            rate_limit_delay: r.duration("retry.rate_limit_delay", "30s"),
        },
        breaker: BreakerSettings {
            failure_threshold: r.uint("breaker.failure_threshold", 5, 1, 1_000_000) as u32,
            open_timeout: r.duration("breaker.open_timeout", "60s"),
            open_timeout_multiplier: r.float("breaker.open_timeout_multiplier", 1.0, 1.0, 100.0),
            max_open_timeout: r.duration("breaker.max_open_timeout", "10m"),
            half_open_probes: r.uint("breaker.half_open_probes", 1, 1, 1000) as u32,
            window_size: r.uint("breaker.window_size", 0, 0, 100_000) as usize,
            window_min_calls: r.uint("breaker.window_min_calls", 10, 1, 100_000) as usize,
            window_failure_rate: r.float("breaker.window_failure_rate", 0.5, 0.0, 1.0),
        },
        ratelimit,
        notify: NotifySettings {
            webhook_secret: r.opt_string("notify.webhook_secret"),
            webhook_attempts: r.uint("notify.webhook_attempts", 5, 1, 100) as u32,
            webhook_backoff: r.duration("notify.webhook_backoff", "1s"),
            webhook_timeout: r.duration("notify.webhook_timeout", "10s"),
        },
        e2b: E2bSettings {
            api_url: r.string("e2b.api_url", "https://api.e2b.app"),
            sandbox_url: r.opt_string("e2b.sandbox_url"),
            api_key: r.opt_string("e2b.api_key"),
            domain: r.string("e2b.domain", "e2b.app"),
            request_timeout: r.duration("e2b.request_timeout", "60s"),
        },
        faults: FaultSettings {
            enabled: r.boolean("faults.enabled", false),
            error_rate: r.float("faults.error_rate", 0.0, 0.0, 1.0),
            status,
            retry_after: r.opt_duration("faults.retry_after"),
            latency: r.duration_allow_zero("faults.latency", "0s"),
            outage: r.opt_duration("faults.outage"),
        },
    };
    r.unknown_keys();
    if let Some(dir) = &settings.templates_dir
        && !dir.is_dir()
    {
        r.problem(
            "local.templates_dir",
            format!("{} is not a directory", dir.display()),
        );
    }
    let data_dir = settings.data_dir.canonicalize().ok();
    for (name, t) in &settings.templates {
        for (i, tool) in t.tools.iter().enumerate() {
            if let Err(why) = check_tool(tool, data_dir.as_deref()) {
                r.problem(&format!("local.templates.{name}.tools[{i}]"), why);
            }
        }
    }
    // What a job's sandbox gets when neither the job nor its template says: on E2B the
    // internet (E2B's own default), locally `local.network`.
    settings.job_defaults.network = match settings.provider {
        ProviderKind::Local => network_access(settings.sandbox_network),
        ProviderKind::E2b | ProviderKind::Noop => NetworkAccess::Host,
    };
    settings.job_defaults.template_networks = settings
        .templates
        .iter()
        .filter_map(|(name, t)| Some((name.clone(), network_access(t.network?))))
        .collect();
    if settings.provider == ProviderKind::E2b && settings.e2b.api_key.is_none() {
        match std::env::var("E2B_API_KEY") {
            Ok(k) if !k.is_empty() => settings.e2b.api_key = Some(k),
            _ => r.problem(
                "e2b.api_key",
                "provider \"e2b\" needs an API key (e2b.api_key or E2B_API_KEY)",
            ),
        }
    }
    if r.problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError {
            problems: r.problems,
        })
    }
}

/// A template's tool directory: absolute, an existing directory, a path the sandbox's mount
/// table can carry (no whitespace, `\\` or `#`), and not holding the service's data.
fn check_tool(tool: &Path, data_dir: Option<&Path>) -> Result<(), String> {
    let shown = tool.display();
    if !tool.is_absolute() {
        return Err(format!("{shown} is not an absolute path"));
    }
    if tool.components().count() < 2 {
        return Err("the root directory cannot be a tool directory".into());
    }
    let Some(text) = tool.to_str() else {
        return Err(format!("{shown} is not UTF-8"));
    };
    if text
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b == b'\\' || b == b'#')
    {
        return Err(format!("{shown} contains whitespace, '\\' or '#'"));
    }
    if tool
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{shown} contains '..'"));
    }
    if !tool.is_dir() {
        return Err(format!("{shown} is not an existing directory"));
    }
    if let (Some(data), Ok(real)) = (data_dir, tool.canonicalize())
        && (data.starts_with(&real) || real.starts_with(data))
    {
        return Err(format!(
            "{shown} would show the service's data directory to sandboxes"
        ));
    }
    Ok(())
}

struct Reader<'a> {
    tree: &'a Value,
    seen: BTreeSet<String>,
    problems: Vec<ConfigProblem>,
}

impl Reader<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn get(&mut self, key: &str) -> Option<&Value> {
        self.seen.insert(key.to_string());
        let mut v = self.tree;
        for part in key.split('.') {
            v = v.get(part)?;
        }
        Some(v)
    }

    fn string(&mut self, key: &str, default: &str) -> String {
        match self.get(key).cloned() {
            None => default.to_string(),
            Some(Value::String(s)) => s,
            Some(other) => {
                self.problem(key, format!("expected a string, found {other}"));
                default.to_string()
            }
        }
    }

    fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.get(key).cloned() {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.problem(key, format!("expected a string, found {other}"));
                None
            }
        }
    }

    /// A table of string values with free keys (`api.client_keys`).
    fn string_table(&mut self, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(value) = self.get(key).cloned() else {
            return out;
        };
        let Value::Object(map) = value else {
            self.problem(
                key,
                format!("expected a table of key = \"user id\", found {value}"),
            );
            return out;
        };
        for (k, v) in map {
            let full = format!("{key}.{k}");
            self.seen.insert(full.clone());
            match v {
                Value::String(user) if !user.is_empty() && k.len() >= 16 => {
                    out.insert(k, user);
                }
                Value::String(_) if k.len() < 16 => {
                    self.problem(&full, "a client key must be at least 16 characters")
                }
                other => self.problem(&full, format!("expected a user id, found {other}")),
            }
        }
        out
    }

    fn network(&mut self, key: &str) -> Option<Network> {
        let text = match self.get(key).cloned()? {
            Value::String(s) => s,
            other => {
                self.problem(key, format!("expected \"none\" or \"host\", found {other}"));
                return None;
            }
        };
        let n = Network::parse(&text);
        if n.is_none() {
            self.problem(
                key,
                format!("unknown network {text:?}; expected \"none\" or \"host\""),
            );
        }
        n
    }

    /// `[local.templates.<name>]` tables: `tools` (absolute directories) and `network`.
    fn templates(&mut self) -> BTreeMap<String, Template> {
        let mut out = BTreeMap::new();
        let Some(value) = self.get("local.templates").cloned() else {
            return out;
        };
        let Value::Object(map) = value else {
            self.problem(
                "local.templates",
                format!("expected tables [local.templates.<name>], found {value}"),
            );
            return out;
        };
        for (name, body) in map {
            let key = format!("local.templates.{name}");
            if !valid_name(&name) {
                self.seen.insert(key.clone());
                self.problem(
                    &key,
                    "a template name is letters, digits, '-', '_' and '.', not starting with '.'",
                );
                continue;
            }
            if !body.is_object() {
                self.seen.insert(key.clone());
                self.problem(&key, format!("expected a table, found {body}"));
                continue;
            }
            let mut t = Template {
                network: self.network(&format!("{key}.network")),
                tools: Vec::new(),
            };
            match self.get(&format!("{key}.tools")).cloned() {
                None => {}
                Some(Value::Array(items)) => {
                    for (i, item) in items.into_iter().enumerate() {
                        match item {
                            Value::String(p) => t.tools.push(PathBuf::from(p)),
                            other => self.problem(
                                &format!("{key}.tools[{i}]"),
                                format!("expected a directory path, found {other}"),
                            ),
                        }
                    }
                }
                Some(other) => self.problem(
                    &format!("{key}.tools"),
                    format!("expected a list of directories, found {other}"),
                ),
            }
            out.insert(name, t);
        }
        out
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.get(key).cloned() {
            None => default,
            Some(Value::Bool(b)) => b,
            Some(other) => {
                self.problem(key, format!("expected true or false, found {other}"));
                default
            }
        }
    }

    fn uint(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let value = match self.get(key).cloned() {
            None => return default,
            Some(v) => v,
        };
        match value.as_u64() {
            Some(n) if n >= min && n <= max => n,
            Some(n) => {
                self.problem(key, format!("{n} is out of range ({min} to {max})"));
                default
            }
            None if value.as_i64().is_some_and(|n| n < 0) => {
                self.problem(key, format!("must not be negative, found {value}"));
                default
            }
            None => {
                self.problem(key, format!("expected a whole number, found {value}"));
                default
            }
        }
    }

    fn opt_uint(&mut self, key: &str, min: u64, max: u64) -> Option<u64> {
        self.get(key)?;
        Some(self.uint(key, min, min, max))
    }

    fn float(&mut self, key: &str, default: f64, min: f64, max: f64) -> f64 {
        let value = match self.get(key).cloned() {
            None => return default,
            Some(v) => v,
        };
        match value.as_f64() {
            Some(n) if n >= min && n <= max => n,
            Some(n) => {
                self.problem(key, format!("{n} is out of range ({min} to {max})"));
                default
            }
            None => {
                self.problem(key, format!("expected a number, found {value}"));
                default
            }
        }
    }

    fn parse_duration(&mut self, key: &str, zero_ok: bool) -> Option<Duration> {
        let value = self.get(key).cloned()?;
        let Value::String(text) = &value else {
            self.problem(
                key,
                format!("expected a duration like \"30s\", found {value}"),
            );
            return None;
        };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(key, "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    key,
                    format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, default: &str) -> Duration {
        let fallback = humantime::parse_duration(default).expect("defaults are valid");
        self.parse_duration(key, false).unwrap_or(fallback)
    }

    fn duration_allow_zero(&mut self, key: &str, default: &str) -> Duration {
        let fallback = humantime::parse_duration(default).expect("defaults are valid");
        self.parse_duration(key, true).unwrap_or(fallback)
    }

    fn opt_duration(&mut self, key: &str) -> Option<Duration> {
        if let Some(Value::String(s)) = self.get(key)
            && s.is_empty()
        {
            return None;
        }
        self.parse_duration(key, false)
    }

    fn unknown_keys(&mut self) {
        let mut found = Vec::new();
        walk(self.tree, String::new(), &mut found);
        for key in found {
            if !self.seen.contains(&key) {
                self.problem(&key, "unknown key");
            }
        }
    }
}

fn walk(v: &Value, prefix: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(child, key, out);
            }
        }
        _ if !prefix.is_empty() => out.push(prefix),
        _ => {}
    }
}

/// Render the effective settings as TOML-like text (`sandwarden config check`); secrets masked.
pub fn render(s: &Settings) -> String {
    let d = |d: Duration| toml_str(&humantime::format_duration(d).to_string());
    let mask = |v: &Option<String>| if v.is_some() { "\"***\"" } else { "\"\"" };
    let j = &s.job_defaults;
    let mut out = String::new();
    out += &format!(
        "listen = \"{}\"\ndata_dir = {}\nprovider = \"{}\"\nprotection = \"{}\"\n",
        s.listen,
        toml_str(&s.data_dir.to_string_lossy()),
        s.provider.as_str(),
        s.protection.as_str()
    );
    out += &format!(
        "log_format = \"{}\"\nadmin_token = {}\nsentry_dsn = {}\n",
        if s.log_format == LogFormat::Json {
            "json"
        } else {
            "text"
        },
        mask(&s.admin_token),
        mask(&s.sentry_dsn)
    );
    out += &format!(
        "\n[api]\nmax_body_bytes = {}\nmetrics_require_token = {}\n",
        s.max_body_bytes, s.metrics_require_token
    );
    out += "\n[api.client_keys]\n";
    for user in s.client_keys.values() {
        out += &format!("# *** = {}\n", toml_str(user));
    }
    out += &format!(
        "\n[workers]\ncount = {}\nrestart_limit = {}\nrestart_window = {}\nhung_grace = {}\n",
        s.workers,
        s.restart_limit,
        d(s.restart_window),
        d(s.hung_grace)
    );
    out += &format!(
        "\n[jobs]\nmax_attempts = {}\nrun_timeout = {}\nread_timeout = {}\nmax_steps = {}\nmax_step_timeout = {}\nmax_output_bytes = {}\nmax_read_bytes = {}\ncreate_timeout = {}\nwrite_timeout = {}\nretention = {}\ncleanup_batch = {}\n",
        s.max_attempts,
        d(j.run_timeout),
        d(j.read_timeout),
        j.max_steps,
        d(j.max_step_timeout),
        s.max_output_bytes,
        s.max_read_bytes,
        d(s.create_timeout),
        d(s.write_timeout),
        d(s.retention),
        s.cleanup_batch
    );
    out += &format!(
        "\n[sandbox]\ntemplate = {}\ntimeout = {}\nmax_timeout = {}\nidle_pause_after = {}\n",
        toml_str(&j.template),
        d(j.sandbox_timeout),
        d(j.max_sandbox_timeout),
        d(s.health.idle_pause_after)
    );
    out += &format!(
        "\n[local]\ncpu_time = {}\nmemory_bytes = {}\nopen_files = {}\nprocesses = {}\nfile_size_bytes = {}\ndisk_bytes = {}\ncpus = {:?}\ncgroups = {:?}\nisolation = {:?}\nnetwork = {:?}\ntemplates_dir = {}\n",
        d(s.local.cpu_time),
        s.local.memory_bytes,
        s.local.open_files,
        s.local.processes,
        s.local.file_size_bytes,
        s.local.disk_bytes,
        s.local.cpu_millis as f64 / 1000.0,
        s.cgroups.as_str(),
        match s.isolation {
            IsolationKind::Namespaces => "namespaces",
            IsolationKind::None => "none",
        },
        s.sandbox_network.as_str(),
        toml_str(
            &s.templates_dir
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    );
    for (name, t) in &s.templates {
        let tools: Vec<String> = t
            .tools
            .iter()
            .map(|p| toml_str(&p.to_string_lossy()))
            .collect();
        out += &format!(
            "\n[local.templates.{}]\ntools = [{}]\n",
            if name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                name.clone()
            } else {
                toml_str(name)
            },
            tools.join(", ")
        );
        if let Some(n) = t.network {
            out += &format!("network = {:?}\n", n.as_str());
        }
    }
    let r = &s.retry;
    out += &format!(
        "\n[retry]\nmax_retries = {}\nbase = {}\ncap = {}\nmultiplier = {}\njitter = {}\nrate_limit_delay = {}\n",
        r.max_retries,
        d(r.base),
        d(r.cap),
        r.multiplier,
        toml_str(&r.jitter),
        d(r.rate_limit_delay)
    );
    let b = &s.breaker;
    out += &format!(
        "\n[breaker]\nfailure_threshold = {}\nopen_timeout = {}\nopen_timeout_multiplier = {}\nmax_open_timeout = {}\nhalf_open_probes = {}\nwindow_size = {}\nwindow_min_calls = {}\nwindow_failure_rate = {}\n",
        b.failure_threshold,
        d(b.open_timeout),
        b.open_timeout_multiplier,
        d(b.max_open_timeout),
        b.half_open_probes,
        b.window_size,
        b.window_min_calls,
        b.window_failure_rate
    );
    let l = &s.ratelimit;
    out += &format!(
        "\n[ratelimit]\nwindow = {}\nwarn_ratio = {}\nalert_ratio = {}\nblock_ratio = {}\nmax_concurrent_sandboxes = {}\nmin_create_interval = {}\ndefault_cooldown = {}\nper_user = {}\n",
        d(l.window),
        l.warn_ratio,
        l.alert_ratio,
        l.block_ratio,
        l.max_concurrent_sandboxes.unwrap_or(0),
        l.min_create_interval.map(d).unwrap_or("\"\"".into()),
        d(l.default_cooldown),
        l.per_user.unwrap_or(0)
    );
    out += "\n[ratelimit.limits]\n";
    for op in Operation::ALL {
        out += &format!(
            "{} = {}\n",
            op.as_str(),
            l.limits.get(&op).copied().unwrap_or(0)
        );
    }
    out += "\n[schedule]\n";
    for (name, cron) in &s.health.schedules {
        out += &format!("{name} = {}\n", toml_str(cron.as_str()));
    }
    out += &format!(
        "\n[health]\nmax_pending = {}\nmax_pending_age = {}\n",
        s.health.max_pending,
        d(s.health.max_pending_age)
    );
    let n = &s.notify;
    out += &format!(
        "\n[notify]\nwebhook_secret = {}\nwebhook_attempts = {}\nwebhook_backoff = {}\nwebhook_timeout = {}\n",
        mask(&n.webhook_secret),
        n.webhook_attempts,
        d(n.webhook_backoff),
        d(n.webhook_timeout)
    );
    let e = &s.e2b;
    out += &format!(
        "\n[e2b]\napi_url = {}\nsandbox_url = {}\napi_key = {}\ndomain = {}\nrequest_timeout = {}\n",
        toml_str(&e.api_url),
        toml_str(e.sandbox_url.as_deref().unwrap_or_default()),
        mask(&e.api_key),
        toml_str(&e.domain),
        d(e.request_timeout)
    );
    let f = &s.faults;
    out += &format!(
        "\n[faults]\nenabled = {}\nerror_rate = {}\nstatus = {}\nretry_after = {}\nlatency = {}\noutage = {}\n",
        f.enabled,
        f.error_rate,
        f.status,
        f.retry_after.map(d).unwrap_or("\"\"".into()),
        d(f.latency),
        f.outage.map(d).unwrap_or("\"\"".into())
    );
    out
}

/// A TOML basic string. Rust's `{:?}` is not one: it writes `\u{7f}` and `\0`, which TOML
/// refuses, so `config check` output with such a value could not be loaded again.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = load_from(Figment::new()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.provider, ProviderKind::Local);
        assert_eq!(s.breaker.failure_threshold, 5);
        assert_eq!(s.breaker.open_timeout, Duration::from_secs(60));
        assert_eq!(s.retry.max_retries, 3);
        assert_eq!(s.job_defaults.sandbox_timeout, Duration::from_secs(1800));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure type
    fn layering_and_all_problems_at_once() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "config.toml",
                r#"
                listen = "127.0.0.1:9000"
                provider = "azure"
                colour = "blue"
                [workers]
                count = -3
                [breaker]
                open_timeout = "soon"
                "#,
            )?;
            let err = load(&Overrides::default()).unwrap_err();
            let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
            assert!(keys.contains(&"provider"), "{err}");
            assert!(keys.contains(&"colour"), "{err}");
            assert!(keys.contains(&"workers.count"), "{err}");
            assert!(keys.contains(&"breaker.open_timeout"), "{err}");
            assert_eq!(err.problems.len(), 4, "{err}");
            let neg = err
                .problems
                .iter()
                .find(|p| p.key == "workers.count")
                .unwrap();
            assert!(neg.message.contains("negative"), "{neg:?}");

            jail.create_file(
                "config.toml",
                "listen = \"127.0.0.1:9000\"\n[workers]\ncount = 2\n",
            )?;
            jail.set_env("SANDWARDEN_WORKERS__COUNT", "3");
            let s = load(&Overrides::default()).unwrap();
            assert_eq!(s.listen.port(), 9000);
            assert_eq!(s.workers, 3, "environment beats the file");
            let s = load(&Overrides {
                workers: Some(7),
                listen: Some("127.0.0.1:1".into()),
                ..Default::default()
            })
            .unwrap();
            assert_eq!(s.workers, 7, "flags beat the environment");
            assert_eq!(s.listen.port(), 1);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure type
    fn templates_and_resources_are_checked_together() {
        Jail::expect_with(|jail| {
            let tool = jail.directory().join("tool");
            std::fs::create_dir(&tool).unwrap();
            jail.create_file(
                "config.toml",
                &format!(
                    r#"
                    [local]
                    cgroups = "sometimes"
                    cpus = 1.5
                    network = "wifi"
                    [local.templates.node]
                    tools = ["{}", "relative/dir", "/does/not/exist"]
                    network = "host"
                    [local.templates.py]
                    network = "maybe"
                    colour = "blue"
                    "#,
                    tool.display()
                ),
            )?;
            let err = load(&Overrides::default()).unwrap_err();
            let mut keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
            keys.sort();
            assert_eq!(
                keys,
                [
                    "local.cgroups",
                    "local.network",
                    "local.templates.node.tools[1]",
                    "local.templates.node.tools[2]",
                    "local.templates.py.colour",
                    "local.templates.py.network",
                ],
                "{err}"
            );

            jail.create_file(
                "config.toml",
                &format!(
                    "[local]\ncpus = 1.5\n[local.templates.node]\ntools = [\"{}\"]\nnetwork = \"host\"\n",
                    tool.display()
                ),
            )?;
            let s = load(&Overrides::default()).unwrap();
            assert_eq!(s.local.cpu_millis, 1500);
            assert_eq!(s.templates["node"].tools, [tool]);
            assert_eq!(
                s.job_defaults.template_networks.get("node"),
                Some(&NetworkAccess::Host)
            );
            let rendered = render(&s);
            assert!(rendered.contains("[local.templates.node]"), "{rendered}");
            assert!(rendered.contains("cpus = 1.5"), "{rendered}");
            Ok(())
        });
    }

    #[test]
    fn shipped_config_file_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let s = load_from(Figment::new().merge(Toml::file(&path))).unwrap();
        assert_eq!(
            s,
            load_from(Figment::new()).unwrap(),
            "config.toml documents the defaults"
        );
        // Every key the reader knows appears in the shipped file.
        let text = std::fs::read_to_string(&path).unwrap();
        let rendered = render(&s);
        for line in rendered.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap();
            assert!(
                text.contains(&format!("{key} =")),
                "config.toml lacks {key}"
            );
        }
    }
}
