//! The admin REPL: the command parser (`parse`), running a command (`run_command`), the
//! interactive loop with history and tab completion (`run_repl`) and scripts (`run_script`).

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustyline::completion::Completer;
use rustyline::config::{CompletionType, Config};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Context, Editor, Helper, Highlighter, Hinter, Validator};
use serde_json::{Value, json};

use super::client::{AdminClient, JobQuery};
use super::submit::{fmt_ms, str_of, write_jobs_table};

pub const PROMPT: &str = "sandwarden> ";

const STATUSES: [&str; 6] = [
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
    "dead",
];
const TOP: [&str; 11] = [
    "help", "status", "breaker", "limits", "queue", "jobs", "job", "cleanup", "faults", "quit",
    "exit",
];
const FAULT_KEYS: [&str; 5] = [
    "error_rate=",
    "status=",
    "latency=",
    "outage=",
    "retry_after=",
];
const JOBS_FLAGS: [&str; 3] = ["--status", "--user", "--limit"];

/// One parsed REPL command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help(Option<String>),
    Status,
    Breaker,
    BreakerReset,
    BreakerOpen,
    Limits,
    QueueStats,
    QueuePause,
    QueueResume,
    Jobs {
        status: Option<String>,
        user: Option<String>,
        limit: Option<u32>,
    },
    JobShow(String),
    JobRetry(String),
    JobCancel(String),
    Cleanup,
    Faults,
    FaultsOff,
    FaultsSet(FaultSettings),
    Quit,
}

/// The settings of `faults set`; what is not given is left to the service's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultSettings {
    pub error_rate: Option<f64>,
    pub status: Option<u16>,
    pub latency: Option<String>,
    pub outage: Option<String>,
    pub retry_after: Option<String>,
}

impl FaultSettings {
    /// The `PUT /v1/admin/faults` body.
    pub fn body(&self) -> Value {
        let mut b = json!({"enabled": true});
        if let Some(r) = self.error_rate {
            b["error_rate"] = json!(r);
        }
        if let Some(s) = self.status {
            b["status"] = json!(s);
        }
        for (k, v) in [
            ("latency", &self.latency),
            ("outage", &self.outage),
            ("retry_after", &self.retry_after),
        ] {
            if let Some(v) = v {
                b[k] = json!(v);
            }
        }
        b
    }
}

/// Help for each topic: (topic, usage lines, what it does).
const HELP: &[(&str, &str, &str)] = &[
    (
        "help",
        "help [command]",
        "list the commands, or explain one",
    ),
    (
        "status",
        "status",
        "service health, breaker state and queue summary",
    ),
    (
        "breaker",
        "breaker | breaker reset | breaker open",
        "show the circuit breaker; reset closes it, open forces it open",
    ),
    (
        "limits",
        "limits",
        "provider rate-limit usage per operation and live sandboxes",
    ),
    (
        "queue",
        "queue [stats] | queue pause | queue resume",
        "queue counts by status; pause or resume dispatch (running jobs go on)",
    ),
    (
        "jobs",
        "jobs [--status S] [--user U] [--limit N]",
        "list jobs, newest first (with --user: that user's jobs, else every user's)",
    ),
    (
        "job",
        "job show ID | job retry ID | job cancel ID",
        "show a job as JSON, run a failed or dead job again, or cancel one",
    ),
    (
        "cleanup",
        "cleanup",
        "remove ended jobs past their retention now",
    ),
    (
        "faults",
        "faults | faults off | faults set error_rate=R status=S [latency=D] [outage=D] [retry_after=D]",
        "show, turn off, or turn on provider fault injection",
    ),
    ("quit", "quit | exit", "leave (Ctrl-D too)"),
];

fn usage_err(msg: impl std::fmt::Display, topic: &str) -> String {
    format!("{msg} (see `help {topic}`)")
}

/// Parse one line into a command; the error names what was wrong and points at `help`.
pub fn parse(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&first, rest)) = words.split_first() else {
        return Err("empty command; type `help` for the list".to_string());
    };
    let no_args = |cmd: Command, topic: &str| {
        if let Some(extra) = rest.first() {
            Err(usage_err(
                format!("`{topic}` takes no argument, got {extra:?}"),
                topic,
            ))
        } else {
            Ok(cmd)
        }
    };
    match first {
        "help" | "?" => match rest {
            [] => Ok(Command::Help(None)),
            [topic] => {
                let topic = if *topic == "exit" { "quit" } else { topic };
                if HELP.iter().any(|(t, _, _)| *t == topic) {
                    Ok(Command::Help(Some(topic.to_string())))
                } else {
                    Err(format!("no help for {topic:?}; type `help` for the list"))
                }
            }
            [_, extra, ..] => Err(usage_err(format!("unexpected argument {extra:?}"), "help")),
        },
        "status" => no_args(Command::Status, "status"),
        "limits" => no_args(Command::Limits, "limits"),
        "cleanup" => no_args(Command::Cleanup, "cleanup"),
        "quit" | "exit" => no_args(Command::Quit, "quit"),
        "breaker" => match rest {
            [] => Ok(Command::Breaker),
            ["reset"] => Ok(Command::BreakerReset),
            ["open"] => Ok(Command::BreakerOpen),
            [sub] => Err(usage_err(
                format!("unknown breaker action {sub:?}; expected reset or open"),
                "breaker",
            )),
            [_, extra, ..] => Err(usage_err(
                format!("unexpected argument {extra:?}"),
                "breaker",
            )),
        },
        "queue" => match rest {
            [] | ["stats"] => Ok(Command::QueueStats),
            ["pause"] => Ok(Command::QueuePause),
            ["resume"] => Ok(Command::QueueResume),
            [sub] => Err(usage_err(
                format!("unknown queue action {sub:?}; expected stats, pause or resume"),
                "queue",
            )),
            [_, extra, ..] => Err(usage_err(format!("unexpected argument {extra:?}"), "queue")),
        },
        "jobs" => parse_jobs(rest),
        "job" => match rest {
            [] => Err(usage_err(
                "`job` needs an action: show, retry or cancel",
                "job",
            )),
            [action] if ["show", "retry", "cancel"].contains(action) => {
                Err(usage_err(format!("`job {action}` needs a job id"), "job"))
            }
            [action, id] => match *action {
                "show" => Ok(Command::JobShow(id.to_string())),
                "retry" => Ok(Command::JobRetry(id.to_string())),
                "cancel" => Ok(Command::JobCancel(id.to_string())),
                other => Err(usage_err(
                    format!("unknown job action {other:?}; expected show, retry or cancel"),
                    "job",
                )),
            },
            [action, ..] if !["show", "retry", "cancel"].contains(action) => Err(usage_err(
                format!("unknown job action {action:?}; expected show, retry or cancel"),
                "job",
            )),
            [_, _, extra, ..] => Err(usage_err(format!("unexpected argument {extra:?}"), "job")),
            [_] => unreachable!("one word is handled above"),
        },
        "faults" => match rest {
            [] => Ok(Command::Faults),
            ["off"] => Ok(Command::FaultsOff),
            ["off", extra, ..] => Err(usage_err(
                format!("unexpected argument {extra:?}"),
                "faults",
            )),
            ["set", settings @ ..] => parse_faults(settings).map(Command::FaultsSet),
            [sub, ..] => Err(usage_err(
                format!("unknown faults action {sub:?}; expected off or set"),
                "faults",
            )),
        },
        other => Err(format!(
            "unknown command {other:?}; type `help` for the list"
        )),
    }
}

fn parse_jobs(args: &[&str]) -> Result<Command, String> {
    let (mut status, mut user, mut limit) = (None, None, None);
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (args[i], None),
        };
        if !JOBS_FLAGS.contains(&flag) {
            return Err(usage_err(
                format!(
                    "unknown option {:?} for `jobs`; expected --status, --user or --limit",
                    args[i]
                ),
                "jobs",
            ));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                *args
                    .get(i)
                    .ok_or_else(|| usage_err(format!("{flag} needs a value"), "jobs"))?
            }
        };
        match flag {
            "--status" => {
                if !STATUSES.contains(&value) {
                    return Err(usage_err(
                        format!(
                            "--status must be one of {}, got {value:?}",
                            STATUSES.join(", ")
                        ),
                        "jobs",
                    ));
                }
                status = Some(value.to_string());
            }
            "--user" => {
                if value.is_empty() {
                    return Err(usage_err("--user needs a value", "jobs"));
                }
                user = Some(value.to_string());
            }
            _ => match value.parse::<u32>() {
                Ok(n) if (1..=500).contains(&n) => limit = Some(n),
                _ => {
                    return Err(usage_err(
                        format!("--limit must be a number from 1 to 500, got {value:?}"),
                        "jobs",
                    ));
                }
            },
        }
        i += 1;
    }
    Ok(Command::Jobs {
        status,
        user,
        limit,
    })
}

fn parse_faults(args: &[&str]) -> Result<FaultSettings, String> {
    let mut f = FaultSettings::default();
    if args.is_empty() {
        return Err(usage_err(
            "`faults set` needs settings like error_rate=0.5 status=503",
            "faults",
        ));
    }
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(usage_err(
                format!("expected key=value, got {arg:?}"),
                "faults",
            ));
        };
        match key {
            "error_rate" => match value.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => f.error_rate = Some(r),
                _ => {
                    return Err(usage_err(
                        format!("error_rate must be a number from 0.0 to 1.0, got {value:?}"),
                        "faults",
                    ));
                }
            },
            "status" => match value.parse::<u16>() {
                Ok(s) if (400..=599).contains(&s) => f.status = Some(s),
                _ => {
                    return Err(usage_err(
                        format!(
                            "status must be an HTTP error status from 400 to 599, got {value:?}"
                        ),
                        "faults",
                    ));
                }
            },
            "latency" | "outage" | "retry_after" => {
                if humantime::parse_duration(value).is_err() {
                    return Err(usage_err(
                        format!("{key} must be a duration like 100ms or 30s, got {value:?}"),
                        "faults",
                    ));
                }
                let slot = match key {
                    "latency" => &mut f.latency,
                    "outage" => &mut f.outage,
                    _ => &mut f.retry_after,
                };
                *slot = Some(value.to_string());
            }
            other => {
                return Err(usage_err(
                    format!(
                        "unknown fault setting {other:?}; expected error_rate, status, latency, outage or retry_after"
                    ),
                    "faults",
                ));
            }
        }
    }
    Ok(f)
}

/// The completions of the word under the cursor: (where the word starts, candidates).
/// Complete words end with a space; `key=` settings do not.
pub fn complete(line: &str, pos: usize, ids: &BTreeSet<String>) -> (usize, Vec<String>) {
    let before = &line[..pos.min(line.len())];
    // Past the whole whitespace character: NBSP and NEL are two bytes, not one.
    let start = before
        .char_indices()
        .rfind(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = &before[start..];
    let prev: Vec<&str> = before[..start].split_whitespace().collect();
    let owned: Vec<String>;
    let options: Vec<&str> = match prev.as_slice() {
        [] => TOP.to_vec(),
        ["help"] => HELP.iter().map(|(t, _, _)| *t).collect(),
        ["breaker"] => vec!["reset", "open"],
        ["queue"] => vec!["stats", "pause", "resume"],
        ["job"] => vec!["show", "retry", "cancel"],
        ["job", "show" | "retry" | "cancel"] => {
            owned = ids.iter().cloned().collect();
            owned.iter().map(String::as_str).collect()
        }
        ["faults"] => vec!["off", "set"],
        ["faults", "set", ..] => FAULT_KEYS.to_vec(),
        ["jobs", .., "--status"] => STATUSES.to_vec(),
        ["jobs", .., "--user" | "--limit"] => vec![],
        ["jobs", ..] => JOBS_FLAGS.to_vec(),
        _ => vec![],
    };
    let found = options
        .into_iter()
        .filter(|o| o.starts_with(word))
        .map(|o| {
            if o.ends_with('=') {
                o.to_string()
            } else {
                format!("{o} ")
            }
        })
        .collect();
    (start, found)
}

/// Run one command, writing compact human-readable output to `out`.
/// Returns the job ids the output showed (for completion).
pub async fn run_command(
    client: &AdminClient,
    cmd: &Command,
    out: &mut impl Write,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    match cmd {
        Command::Help(topic) => write_help(topic.as_deref(), out)?,
        Command::Status => {
            let health = client.health().await?;
            writeln!(
                out,
                "service  {} at {}",
                str_of(&health, "status"),
                client.base
            )?;
            let b = client.breaker().await?;
            writeln!(
                out,
                "breaker  {} ({} consecutive failures)",
                str_of(&b, "state"),
                num(&b, "consecutive_failures")
            )?;
            let q = client.queue().await?;
            writeln!(out, "queue    {}", queue_line(&q))?;
        }
        Command::Breaker => write_breaker(&client.breaker().await?, out)?,
        Command::BreakerReset => write_breaker(&client.breaker_reset().await?, out)?,
        Command::BreakerOpen => write_breaker(&client.breaker_open().await?, out)?,
        Command::Limits => write_limits(&client.ratelimits().await?, out)?,
        Command::QueueStats => write_queue(&client.queue().await?, out)?,
        Command::QueuePause => write_paused(&client.queue_pause().await?, out)?,
        Command::QueueResume => write_paused(&client.queue_resume().await?, out)?,
        Command::Jobs {
            status,
            user,
            limit,
        } => {
            let q = JobQuery {
                user: user.clone(),
                status: status.clone(),
                limit: *limit,
                cursor: None,
            };
            let page = if user.is_some() {
                client.user_jobs(&q).await?
            } else {
                client.admin_jobs(&q).await?
            };
            for j in page
                .get("jobs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                ids.push(str_of(j, "id").to_string());
            }
            write_jobs_table(&page, out)?;
        }
        Command::JobShow(id) => {
            let job = client.job(id, None).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&job)?)?;
            ids.push(id.clone());
        }
        Command::JobRetry(id) => {
            let r = client.retry(id).await?;
            writeln!(
                out,
                "{}: {} (retried)",
                str_of(&r, "id"),
                str_of(&r, "status")
            )?;
            ids.push(id.clone());
        }
        Command::JobCancel(id) => {
            let r = client.cancel(id).await?;
            writeln!(out, "{}: {}", str_of(&r, "id"), str_of(&r, "status"))?;
            ids.push(id.clone());
        }
        Command::Cleanup => {
            let r = client.cleanup().await?;
            writeln!(out, "removed {} ended jobs", num(&r, "removed"))?;
        }
        Command::Faults => write_faults(&client.faults().await?, out)?,
        Command::FaultsOff => {
            write_faults(&client.set_faults(&json!({"enabled": false})).await?, out)?
        }
        Command::FaultsSet(f) => write_faults(&client.set_faults(&f.body()).await?, out)?,
        Command::Quit => {}
    }
    out.flush()?;
    ids.retain(|i| !i.is_empty());
    Ok(ids)
}

/// Run each line of `input` as a command (blank lines and `#` comments are skipped), printing
/// output and one `error: line N: ...` line per failure; stops at `quit`.
/// Returns how many commands failed.
pub async fn run_script(
    client: &AdminClient,
    input: impl BufRead,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let mut failed = 0;
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse(line) {
            Ok(Command::Quit) => break,
            Ok(cmd) => {
                if let Err(e) = run_command(client, &cmd, out).await {
                    failed += 1;
                    writeln!(out, "error: line {}: {e}", n + 1)?;
                }
            }
            Err(e) => {
                failed += 1;
                writeln!(out, "error: line {}: {e}", n + 1)?;
            }
        }
    }
    out.flush()?;
    Ok(failed)
}

/// Completion of command words and of the job ids seen in this session.
#[derive(Helper, Hinter, Highlighter, Validator)]
struct ReplHelper {
    ids: Arc<Mutex<BTreeSet<String>>>,
}

impl Completer for ReplHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        Ok(complete(line, pos, &ids))
    }
}

/// The interactive REPL on the terminal: prompt `sandwarden> `, history kept in
/// `history_path`, Tab completion; an error prints one line and the loop goes on;
/// `quit`, `exit` or Ctrl-D leaves.
pub async fn run_repl(client: &AdminClient, history_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::builder()
        .auto_add_history(true)
        .history_ignore_dups(true)?
        .history_ignore_space(true)
        .completion_type(CompletionType::List)
        .max_history_size(1000)?
        .build();
    let ids = Arc::new(Mutex::new(BTreeSet::new()));
    let mut editor: Editor<ReplHelper, FileHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(ReplHelper { ids: ids.clone() }));
    if let Some(p) = &history_path
        && p.exists()
        && let Err(e) = editor.load_history(p)
    {
        eprintln!("warning: cannot read history {}: {e}", p.display());
    }
    let mut stdout = std::io::stdout();
    loop {
        // rustyline blocks, so it runs off the async workers; the editor comes back each time.
        let (ed, read) = tokio::task::spawn_blocking(move || {
            let r = editor.readline(PROMPT);
            (editor, r)
        })
        .await?;
        editor = ed;
        let line = match read {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        if let Some(p) = &history_path
            && let Err(e) = editor.save_history(p)
        {
            eprintln!("warning: cannot write history {}: {e}", p.display());
        }
        if line.trim().is_empty() {
            continue;
        }
        match parse(&line) {
            Ok(Command::Quit) => break,
            Ok(cmd) => match run_command(client, &cmd, &mut stdout).await {
                Ok(seen) => ids.lock().unwrap_or_else(|e| e.into_inner()).extend(seen),
                Err(e) => writeln!(stdout, "error: {e}")?,
            },
            Err(e) => writeln!(stdout, "error: {e}")?,
        }
        stdout.flush()?;
    }
    Ok(())
}

fn write_help(topic: Option<&str>, out: &mut impl Write) -> std::io::Result<()> {
    match topic {
        None => {
            writeln!(out, "commands:")?;
            for (_, usage, what) in HELP {
                writeln!(out, "  {usage}")?;
                writeln!(out, "      {what}")?;
            }
        }
        Some(t) => {
            for (_, usage, what) in HELP.iter().filter(|(name, _, _)| *name == t) {
                writeln!(out, "usage: {usage}")?;
                writeln!(out, "  {what}")?;
                if t == "faults" {
                    writeln!(
                        out,
                        "  error_rate 0.0-1.0 (default 0), status 400-599 (default 503), durations like 100ms or 30s"
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn num(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::Number(n)) => n.to_string(),
        _ => "-".to_string(),
    }
}

fn opt_time(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_u64)
        .map_or("-".to_string(), fmt_ms)
}

fn write_breaker(b: &Value, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "breaker ({}): {}",
        str_of(b, "provider"),
        str_of(b, "state")
    )?;
    let rate = b
        .get("failure_rate")
        .and_then(Value::as_f64)
        .map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0));
    writeln!(
        out,
        "  consecutive failures {}, failure rate {rate}, probes in flight {}",
        num(b, "consecutive_failures"),
        num(b, "probes_in_flight")
    )?;
    if b.get("opened_at_ms").is_some_and(|v| !v.is_null()) {
        writeln!(
            out,
            "  opened at {}, next probe at {}",
            opt_time(b, "opened_at_ms"),
            opt_time(b, "next_probe_at_ms")
        )?;
    }
    if let Some(e) = b.get("last_error").and_then(Value::as_str) {
        writeln!(out, "  last error: {e}")?;
    }
    let mut ts: Vec<&Value> = b
        .get("transitions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    ts.sort_by_key(|t| std::cmp::Reverse(t.get("at_ms").and_then(Value::as_u64).unwrap_or(0)));
    if !ts.is_empty() {
        writeln!(out, "  recent transitions:")?;
        for t in ts.iter().take(5) {
            writeln!(
                out,
                "    {}  {} -> {}  ({} failures) {}",
                opt_time(t, "at_ms"),
                str_of(t, "from"),
                str_of(t, "to"),
                num(t, "consecutive_failures"),
                str_of(t, "reason")
            )?;
        }
    }
    Ok(())
}

fn write_limits(l: &Value, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16} {:>11} {:>9} {:>6}  {:<10} {:<20}  COOLDOWN UNTIL",
        "OPERATION", "COUNT/LIMIT", "REMAINING", "USED", "STATE", "RESETS"
    )?;
    for o in l
        .get("operations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let used = o
            .get("percent_used")
            .and_then(Value::as_f64)
            .map_or("-".to_string(), |p| format!("{p:.0}%"));
        writeln!(
            out,
            "{:<16} {:>11} {:>9} {:>6}  {:<10} {:<20}  {}",
            str_of(o, "operation"),
            format!("{}/{}", num(o, "count"), num(o, "limit")),
            num(o, "remaining"),
            used,
            str_of(o, "state"),
            opt_time(o, "resets_at_ms"),
            opt_time(o, "cooldown_until_ms"),
        )?;
    }
    writeln!(
        out,
        "live sandboxes {} of {}",
        num(l, "live_sandboxes"),
        num(l, "max_concurrent_sandboxes")
    )?;
    let events: &[Value] = l
        .get("recent_events")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    if !events.is_empty() {
        writeln!(out, "recent events:")?;
        for e in events.iter().take(5) {
            writeln!(
                out,
                "  {}  {} {} ({}/{})",
                opt_time(e, "at_ms"),
                str_of(e, "operation"),
                str_of(e, "kind"),
                num(e, "used"),
                num(e, "limit")
            )?;
        }
    }
    Ok(())
}

fn queue_line(q: &Value) -> String {
    let paused = if q.get("paused").and_then(Value::as_bool) == Some(true) {
        "paused"
    } else {
        "dispatching"
    };
    let count = |s: &str| {
        q.pointer(&format!("/by_status/{s}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let oldest = q
        .get("oldest_pending_age_ms")
        .and_then(Value::as_u64)
        .map(|ms| {
            format!(
                ", oldest pending {}",
                humantime::format_duration(Duration::from_secs(ms / 1000))
            )
        })
        .unwrap_or_default();
    format!(
        "{paused}, {} pending, {} running, {} dead{oldest}",
        count("pending"),
        count("running"),
        count("dead")
    )
}

fn write_queue(q: &Value, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "queue: {}", queue_line(q))?;
    let by: Vec<String> = STATUSES
        .iter()
        .map(|s| {
            let n = q
                .pointer(&format!("/by_status/{s}"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            format!("{s} {n}")
        })
        .collect();
    writeln!(out, "  by status: {}", by.join(", "))?;
    writeln!(
        out,
        "  ready {}, leased {}, running {}, idle workers {}, completed last minute {}",
        num(q, "ready"),
        num(q, "leased"),
        num(q, "running"),
        num(q, "idle_workers"),
        num(q, "completed_last_minute")
    )?;
    Ok(())
}

fn write_paused(r: &Value, out: &mut impl Write) -> std::io::Result<()> {
    if r.get("paused").and_then(Value::as_bool) == Some(true) {
        writeln!(out, "queue paused: running jobs go on, no new job starts")
    } else {
        writeln!(out, "queue resumed")
    }
}

fn write_faults(f: &Value, out: &mut impl Write) -> std::io::Result<()> {
    let counts = format!(
        "injected {}, passed {}",
        num(f, "injected"),
        num(f, "passed")
    );
    if f.get("enabled").and_then(Value::as_bool) != Some(true) {
        return writeln!(out, "faults: off ({counts})");
    }
    let mut parts = vec![
        format!("error_rate {}", num(f, "error_rate")),
        format!("status {}", num(f, "status")),
    ];
    for k in ["latency", "outage", "retry_after"] {
        if let Some(v) = f
            .get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty() && *v != "0s")
        {
            parts.push(format!("{k} {v}"));
        }
    }
    writeln!(out, "faults: on, {} ({counts})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).unwrap_or_else(|e| panic!("{line:?} should parse: {e}"))
    }

    fn err(line: &str) -> String {
        match parse(line) {
            Ok(c) => panic!("{line:?} should not parse, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(ok("help"), Command::Help(None));
        assert_eq!(ok("help jobs"), Command::Help(Some("jobs".into())));
        assert_eq!(ok("help exit"), Command::Help(Some("quit".into())));
        assert_eq!(ok("  status  "), Command::Status);
        assert_eq!(ok("breaker"), Command::Breaker);
        assert_eq!(ok("breaker reset"), Command::BreakerReset);
        assert_eq!(ok("breaker open"), Command::BreakerOpen);
        assert_eq!(ok("limits"), Command::Limits);
        assert_eq!(ok("queue"), Command::QueueStats);
        assert_eq!(ok("queue stats"), Command::QueueStats);
        assert_eq!(ok("queue pause"), Command::QueuePause);
        assert_eq!(ok("queue resume"), Command::QueueResume);
        assert_eq!(
            ok("jobs"),
            Command::Jobs {
                status: None,
                user: None,
                limit: None
            }
        );
        assert_eq!(
            ok("jobs --status dead --user u-42 --limit 10"),
            Command::Jobs {
                status: Some("dead".into()),
                user: Some("u-42".into()),
                limit: Some(10)
            }
        );
        assert_eq!(
            ok("jobs --limit=5 --status=failed"),
            Command::Jobs {
                status: Some("failed".into()),
                user: None,
                limit: Some(5)
            }
        );
        assert_eq!(ok("job show job-1"), Command::JobShow("job-1".into()));
        assert_eq!(ok("job retry job-1"), Command::JobRetry("job-1".into()));
        assert_eq!(ok("job cancel job-1"), Command::JobCancel("job-1".into()));
        assert_eq!(ok("cleanup"), Command::Cleanup);
        assert_eq!(ok("faults"), Command::Faults);
        assert_eq!(ok("faults off"), Command::FaultsOff);
        assert_eq!(
            ok("faults set error_rate=0.5 status=503 latency=100ms outage=30s"),
            Command::FaultsSet(FaultSettings {
                error_rate: Some(0.5),
                status: Some(503),
                latency: Some("100ms".into()),
                outage: Some("30s".into()),
                retry_after: None,
            })
        );
        assert_eq!(ok("quit"), Command::Quit);
        assert_eq!(ok("exit"), Command::Quit);
    }

    #[test]
    fn fault_settings_make_the_api_body() {
        let Command::FaultsSet(f) = ok("faults set error_rate=1 retry_after=2s") else {
            panic!()
        };
        assert_eq!(
            f.body(),
            json!({"enabled": true, "error_rate": 1.0, "retry_after": "2s"})
        );
    }

    #[test]
    fn bad_commands_say_what_is_wrong_and_point_at_help() {
        let cases = [
            ("", "empty command; type `help` for the list"),
            (
                "frobnicate",
                "unknown command \"frobnicate\"; type `help` for the list",
            ),
            (
                "help nothing",
                "no help for \"nothing\"; type `help` for the list",
            ),
            (
                "status now",
                "`status` takes no argument, got \"now\" (see `help status`)",
            ),
            (
                "breaker close",
                "unknown breaker action \"close\"; expected reset or open (see `help breaker`)",
            ),
            (
                "breaker reset now",
                "unexpected argument \"now\" (see `help breaker`)",
            ),
            (
                "queue drain",
                "unknown queue action \"drain\"; expected stats, pause or resume (see `help queue`)",
            ),
            (
                "jobs --status weird",
                "--status must be one of pending, running, completed, failed, cancelled, dead, got \"weird\" (see `help jobs`)",
            ),
            (
                "jobs --limit 0",
                "--limit must be a number from 1 to 500, got \"0\" (see `help jobs`)",
            ),
            (
                "jobs --limit ten",
                "--limit must be a number from 1 to 500, got \"ten\" (see `help jobs`)",
            ),
            ("jobs --user", "--user needs a value (see `help jobs`)"),
            (
                "jobs --owner x",
                "unknown option \"--owner\" for `jobs`; expected --status, --user or --limit (see `help jobs`)",
            ),
            (
                "job",
                "`job` needs an action: show, retry or cancel (see `help job`)",
            ),
            ("job show", "`job show` needs a job id (see `help job`)"),
            (
                "job delete job-1",
                "unknown job action \"delete\"; expected show, retry or cancel (see `help job`)",
            ),
            ("job show a b", "unexpected argument \"b\" (see `help job`)"),
            (
                "faults on",
                "unknown faults action \"on\"; expected off or set (see `help faults`)",
            ),
            (
                "faults set",
                "`faults set` needs settings like error_rate=0.5 status=503 (see `help faults`)",
            ),
            (
                "faults set error_rate=2",
                "error_rate must be a number from 0.0 to 1.0, got \"2\" (see `help faults`)",
            ),
            (
                "faults set status=200",
                "status must be an HTTP error status from 400 to 599, got \"200\" (see `help faults`)",
            ),
            (
                "faults set latency=soon",
                "latency must be a duration like 100ms or 30s, got \"soon\" (see `help faults`)",
            ),
            (
                "faults set rate=1",
                "unknown fault setting \"rate\"; expected error_rate, status, latency, outage or retry_after (see `help faults`)",
            ),
            (
                "faults set error_rate",
                "expected key=value, got \"error_rate\" (see `help faults`)",
            ),
            (
                "quit now",
                "`quit` takes no argument, got \"now\" (see `help quit`)",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(err(line), want, "for {line:?}");
            assert!(!want.contains('\n'));
        }
    }

    #[test]
    fn completes_words_and_seen_ids() {
        let ids: BTreeSet<String> = ["job-a1".to_string(), "job-b2".to_string()].into();
        assert_eq!(complete("brea", 4, &ids), (0, vec!["breaker ".to_string()]));
        assert_eq!(
            complete("j", 1, &ids),
            (0, vec!["jobs ".to_string(), "job ".to_string()])
        );
        assert_eq!(
            complete("breaker r", 9, &ids),
            (8, vec!["reset ".to_string()])
        );
        assert_eq!(
            complete("job show job-b", 14, &ids),
            (9, vec!["job-b2 ".to_string()])
        );
        assert_eq!(complete("job retry ", 10, &ids).1.len(), 2);
        assert_eq!(
            complete("jobs --status d", 15, &ids),
            (14, vec!["dead ".to_string()])
        );
        assert_eq!(
            complete("faults set err", 14, &ids),
            (11, vec!["error_rate=".to_string()])
        );
        assert!(complete("cleanup x", 9, &ids).1.is_empty());
    }

    #[test]
    fn help_lists_every_command() {
        let mut out = Vec::new();
        write_help(None, &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        for t in TOP {
            assert!(s.contains(t), "help lacks {t}");
        }
    }
}
