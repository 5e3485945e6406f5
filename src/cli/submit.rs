//! Job commands for the shell: `submit` (with live `--wait` progress), `show_job`, `list_jobs`,
//! and the job formatting (tables, step output) that the REPL reuses.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::client::{AdminClient, JobQuery};

/// How long each poll of `--wait` long-polls the service.
const POLL_WAIT: Duration = Duration::from_secs(2);
/// How often the spinner redraws on a terminal.
const TICK: Duration = Duration::from_millis(120);
const SPINNER: [char; 4] = ['|', '/', '-', '\\'];
/// At most this many characters of each stream are printed per step.
const MAX_STREAM: usize = 2000;

/// How `submit` shows progress while waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// One updating line with a spinner (for a terminal).
    Live,
    /// A plain line each time the status changes (for logs and pipes).
    Plain,
}

/// Submit the job in `job_path`, print its id, and with `wait` follow it to the end.
/// Returns the process exit code: 0 when submitted (or completed), 1 when it ended otherwise.
/// Live progress is used when stdout is a terminal.
pub async fn submit(
    base: &str,
    token: Option<&str>,
    job_path: &Path,
    wait: bool,
    out: &mut impl Write,
) -> anyhow::Result<i32> {
    let client = AdminClient::new(base, token.map(str::to_string));
    let progress = if std::io::stdout().is_terminal() {
        Progress::Live
    } else {
        Progress::Plain
    };
    submit_with(&client, job_path, wait, progress, out).await
}

/// `submit` with an explicit client and progress style.
pub async fn submit_with(
    client: &AdminClient,
    job_path: &Path,
    wait: bool,
    progress: Progress,
    out: &mut impl Write,
) -> anyhow::Result<i32> {
    let job = read_job(job_path)?;
    let resp = client.submit(&job).await?;
    let id = str_of(&resp, "id").to_string();
    if id.is_empty() {
        anyhow::bail!("the service accepted the job but answered no id");
    }
    if resp.get("created").and_then(Value::as_bool) == Some(false) {
        writeln!(out, "{id} (already submitted with this idempotency key)")?;
    } else {
        writeln!(out, "{id}")?;
    }
    if !wait {
        return Ok(0);
    }
    let job = follow(client, &id, progress, out).await?;
    write_outcome(&job, out)?;
    Ok(exit_code(&job))
}

/// Print one job: its status, timestamps, attempts and each step's output.
/// Returns 0 when it completed or is still going, 1 when it failed, died or was cancelled.
pub async fn show_job(client: &AdminClient, id: &str, out: &mut impl Write) -> anyhow::Result<i32> {
    let job = client.job(id, None).await?;
    write_job_summary(&job, out)?;
    write_outcome(&job, out)?;
    Ok(if is_final(str_of(&job, "status")) {
        exit_code(&job)
    } else {
        0
    })
}

/// Print a table of jobs: one user's (`q.user`) or, without a user, every user's (admin).
pub async fn list_jobs(
    client: &AdminClient,
    q: &JobQuery,
    out: &mut impl Write,
) -> anyhow::Result<i32> {
    let page = if q.user.is_some() {
        client.user_jobs(q).await?
    } else {
        client.admin_jobs(q).await?
    };
    write_jobs_table(&page, out)?;
    Ok(0)
}

/// The job file as JSON, or an error naming the file.
fn read_job(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read job file {}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("job file {} is not valid JSON: {e}", path.display()))
}

/// Poll the job until it ends, showing progress; returns the final job.
async fn follow(
    client: &AdminClient,
    id: &str,
    progress: Progress,
    out: &mut impl Write,
) -> anyhow::Result<Value> {
    let start = Instant::now();
    let mut last_status = String::new();
    let mut tick = 0usize;
    let mut job = Value::Null;
    loop {
        let poll = client.job(id, Some(POLL_WAIT));
        tokio::pin!(poll);
        let mut ticker = tokio::time::interval(TICK);
        let next = loop {
            tokio::select! {
                r = &mut poll => break r,
                _ = ticker.tick(), if progress == Progress::Live => {
                    tick += 1;
                    draw_live(&job, id, SPINNER[tick % SPINNER.len()], start.elapsed(), out)?;
                }
            }
        };
        job = match next {
            Ok(j) => j,
            Err(e) => {
                if progress == Progress::Live {
                    write!(out, "\r\x1b[K")?;
                }
                return Err(e.into());
            }
        };
        let status = str_of(&job, "status").to_string();
        let ended = is_final(&status);
        match progress {
            Progress::Live if ended => {}
            Progress::Live => draw_live(
                &job,
                id,
                SPINNER[tick % SPINNER.len()],
                start.elapsed(),
                out,
            )?,
            Progress::Plain if status != last_status => {
                let (done, total) = step_progress(&job);
                writeln!(
                    out,
                    "{id}: {status} (step {done}/{total}, {})",
                    fmt_secs(start.elapsed())
                )?;
            }
            Progress::Plain => {}
        }
        last_status = status;
        if ended {
            if progress == Progress::Live {
                write!(out, "\r\x1b[K")?;
                let status = str_of(&job, "status");
                writeln!(out, "{id}: {status} after {}", fmt_secs(start.elapsed()))?;
            }
            out.flush()?;
            return Ok(job);
        }
    }
}

fn draw_live(
    job: &Value,
    id: &str,
    spin: char,
    elapsed: Duration,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let status = match str_of(job, "status") {
        "" => "submitted",
        s => s,
    };
    let (done, total) = step_progress(job);
    write!(
        out,
        "\r\x1b[K{spin} {id} {status}  step {done}/{total}  {}",
        fmt_secs(elapsed)
    )?;
    out.flush()
}

/// (step results so far, steps in the spec).
fn step_progress(job: &Value) -> (usize, usize) {
    let done = job
        .pointer("/result/steps")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let total = job
        .pointer("/spec/steps")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    (done, total.max(done))
}

/// Whether a job in `status` will not change by itself any more.
pub(crate) fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "dead" | "cancelled")
}

/// 0 for a completed job, 1 otherwise.
pub(crate) fn exit_code(job: &Value) -> i32 {
    if str_of(job, "status") == "completed" {
        0
    } else {
        1
    }
}

/// A job's status line, timestamps and attempts.
pub(crate) fn write_job_summary(job: &Value, out: &mut impl Write) -> std::io::Result<()> {
    let status = str_of(job, "status");
    match job.get("reason").and_then(Value::as_str) {
        Some(r) => writeln!(out, "{}: {status} ({r})", str_of(job, "id"))?,
        None => writeln!(out, "{}: {status}", str_of(job, "id"))?,
    }
    if let Some(u) = job.pointer("/spec/user_id").and_then(Value::as_str) {
        writeln!(out, "  user      {u}")?;
    }
    for (label, key) in [
        ("created", "created_at_ms"),
        ("run at", "run_at_ms"),
        ("started", "started_at_ms"),
        ("finished", "finished_at_ms"),
    ] {
        if let Some(ms) = job.get(key).and_then(Value::as_u64) {
            writeln!(out, "  {label:<9} {}", fmt_ms(ms))?;
        }
    }
    for a in job
        .get("attempts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let n = a.get("number").and_then(Value::as_u64).unwrap_or(0);
        let outcome = str_of(a, "outcome");
        let took = match (
            a.get("started_at_ms").and_then(Value::as_u64),
            a.get("ended_at_ms").and_then(Value::as_u64),
        ) {
            (Some(s), Some(e)) => format!(
                " in {}",
                fmt_secs(Duration::from_millis(e.saturating_sub(s)))
            ),
            _ => String::new(),
        };
        let err = match (
            a.get("error_category").and_then(Value::as_str),
            a.get("error").and_then(Value::as_str),
        ) {
            (Some(c), Some(m)) => format!(": {c}: {m}"),
            (None, Some(m)) => format!(": {m}"),
            _ => String::new(),
        };
        writeln!(out, "  attempt {n} {outcome}{took}{err}")?;
    }
    Ok(())
}

/// Each step's exit code, stdout, stderr or content, then the job's error if it has one.
pub(crate) fn write_outcome(job: &Value, out: &mut impl Write) -> std::io::Result<()> {
    for s in job
        .pointer("/result/steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let n = s.get("index").and_then(Value::as_u64).unwrap_or(0) + 1;
        let kind = str_of(s, "kind");
        let ms = s.get("duration_ms").and_then(Value::as_u64).unwrap_or(0);
        let exit = s
            .get("exit_code")
            .and_then(Value::as_i64)
            .map(|c| format!(" exit {c}"))
            .unwrap_or_default();
        writeln!(out, "step {n} {kind}{exit} ({ms}ms)")?;
        for key in ["stdout", "stderr", "content"] {
            if let Some(text) = s.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                writeln!(out, "  {key}:")?;
                for line in clip(text).lines() {
                    writeln!(out, "    {line}")?;
                }
            }
        }
    }
    if let Some(e) = job.get("error").filter(|e| e.is_object()) {
        let step = e
            .get("step")
            .and_then(Value::as_u64)
            .map(|s| format!(" (step {})", s + 1))
            .unwrap_or_default();
        writeln!(
            out,
            "error: {}: {}{step}",
            str_of(e, "category"),
            str_of(e, "message")
        )?;
    }
    Ok(())
}

/// A page of jobs as a table, then the cursor of the next page if there is one.
pub(crate) fn write_jobs_table(page: &Value, out: &mut impl Write) -> std::io::Result<()> {
    let jobs: &[Value] = page
        .get("jobs")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    if jobs.is_empty() {
        writeln!(out, "no jobs")?;
    } else {
        let w = jobs
            .iter()
            .map(|j| str_of(j, "id").len())
            .max()
            .unwrap_or(2)
            .max(2);
        writeln!(
            out,
            "{:<w$}  {:<9}  {:<12}  {:>5}  CREATED",
            "ID", "STATUS", "USER", "STEPS"
        )?;
        for j in jobs {
            let user = j
                .pointer("/spec/user_id")
                .and_then(Value::as_str)
                .unwrap_or("-");
            let (done, total) = step_progress(j);
            let created = j
                .get("created_at_ms")
                .and_then(Value::as_u64)
                .map_or("-".into(), fmt_ms);
            writeln!(
                out,
                "{:<w$}  {:<9}  {:<12}  {:>5}  {created}",
                str_of(j, "id"),
                str_of(j, "status"),
                user,
                format!("{done}/{total}"),
            )?;
        }
    }
    if let Some(c) = page.get("next_cursor").and_then(Value::as_str) {
        writeln!(out, "more: --cursor {c}")?;
    }
    Ok(())
}

fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_STREAM {
        return text.to_string();
    }
    let mut s: String = text.chars().take(MAX_STREAM).collect();
    s.push_str("\n... (cut)");
    s
}

/// The string at `key`, or "".
pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Milliseconds since the epoch as an RFC 3339 UTC time to the second.
pub(crate) fn fmt_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A duration as seconds with one decimal, e.g. "4.2s".
pub(crate) fn fmt_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcome_shows_steps_and_error() {
        let job = json!({"id":"j","status":"failed",
            "result":{"steps":[{"index":0,"kind":"run","stdout":"hi\n","stderr":"","exit_code":3,"duration_ms":5}]},
            "error":{"category":"step_failed","message":"exit 3","step":0}});
        let mut out = Vec::new();
        write_outcome(&job, &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "step 1 run exit 3 (5ms)\n  stdout:\n    hi\nerror: step_failed: exit 3 (step 1)\n"
        );
        assert_eq!(exit_code(&job), 1);
    }

    #[test]
    fn bad_job_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.json");
        std::fs::write(&p, "{\"steps\": [").unwrap();
        let e = read_job(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("job file {} is not valid JSON", p.display())),
            "{e}"
        );
        let e = read_job(&dir.path().join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.json"), "{e}");
    }

    #[test]
    fn table_lists_jobs_and_cursor() {
        let page = json!({"jobs":[{"id":"job-1","status":"dead","spec":{"user_id":"u","steps":[{},{}]},"created_at_ms":0}],"next_cursor":"c1"});
        let mut out = Vec::new();
        write_jobs_table(&page, &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("job-1  dead       u               0/2  1970-01-01T00:00:00Z"),
            "{s}"
        );
        assert!(s.ends_with("more: --cursor c1\n"));
    }
}
