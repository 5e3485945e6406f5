//! The crash suite of issue 9, against the real binary (driven by `bench/crash.sh`):
//!
//! 1. **Cycles**: `sandwarden serve` on one data dir, jobs submitted over HTTP at a steady rate,
//!    SIGKILL at a random moment, restart on the same data dir; CYCLES times. Then one last
//!    start that runs everything to the end.
//! 2. **Large batch**: on a fresh data dir, thousands of submits in flight at once, each job
//!    carrying a file of `PAYLOAD` bytes (so the group commit writes megabytes at a time), and
//!    SIGKILL while they are being written; restart, check that the store opens and every
//!    acknowledged job is there; BATCH_KILLS times on the same data dir, then run all to the end.
//!
//! Counted per phase: accepted (201/202 received), completed, lost (accepted, then missing or
//! never ended: must be 0), re-executed (jobs whose record shows more than one started
//! attempt: at-least-once delivery after a kill), and stored-unacknowledged (jobs in the store
//! whose acknowledgement the kill swallowed; allowed, the client saw an error and may retry).
//! Every completed job's output is checked against what it was asked to print.
//!
//! `cargo run --release --example crash_cycles -- BINARY` with settings from the environment:
//! CYCLES (20), RATE jobs/s (50), KILL_MIN_MS (300), KILL_MAX_MS (3000), BATCH (4000),
//! BATCH_KILLS (3), PAYLOAD (16384), WORKERS (4), ISOLATION ("none"; "namespaces" for the
//! service's default). Exits non-zero if any job was lost or wrong.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(bin: &Path, data: &Path, log: &Path) -> Server {
        let workers = env_u64("WORKERS", 4).to_string();
        let isolation = std::env::var("ISOLATION").unwrap_or_else(|_| "none".into());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the server log opens");
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--workers", &workers])
            .arg("--data-dir")
            .arg(data)
            .env("RUST_LOG", "warn")
            .env("SANDWARDEN_LOCAL__ISOLATION", isolation)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("sandwarden starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the first line of the server");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the server did not start: {line:?}"))
            .to_string();
        Server {
            child,
            url: format!("http://{addr}"),
        }
    }

    fn kill(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
        let _ = self.child.wait();
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// What the client knows: every acknowledged job and what it should print.
#[derive(Default)]
struct Ledger {
    accepted: HashMap<String, u64>,
    /// Submits that got no answer (connection reset by the kill) or a 5xx.
    unanswered: usize,
}

fn job_body(n: u64, payload: usize) -> Value {
    let mut steps = Vec::new();
    if payload > 0 {
        steps.push(json!({"write_file": {"path": "payload.txt", "content": "x".repeat(payload)}}));
    }
    steps.push(json!({"run": {"cmd": format!("echo {n}")}}));
    json!({"user_id": "crash", "steps": steps})
}

async fn submit(http: &reqwest::Client, url: &str, n: u64, payload: usize, ledger: &Mutex<Ledger>) {
    let r = http
        .post(format!("{url}/v1/jobs"))
        .json(&job_body(n, payload))
        .send()
        .await;
    let id = match r {
        Ok(r) if r.status() == 201 || r.status() == 202 => match r.json::<Value>().await {
            Ok(body) => body["id"].as_str().map(str::to_string),
            Err(_) => None,
        },
        Ok(r) if r.status().is_client_error() => panic!("submit refused: {}", r.status()),
        _ => None,
    };
    let mut l = ledger.lock().expect("ledger lock");
    match id {
        Some(id) => {
            l.accepted.insert(id, n);
        }
        None => l.unanswered += 1,
    }
}

/// Submit at `rate` jobs/s, open-loop, until `stop`; returns when every submit has answered.
async fn steady_load(
    http: reqwest::Client,
    url: String,
    rate: u64,
    next: Arc<std::sync::atomic::AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (http, url, ledger) = (http.clone(), url.clone(), ledger.clone());
                tasks.spawn(async move { submit(&http, &url, n, 0, &ledger).await });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The end state of the accepted jobs, read after a final start.
#[derive(Default, Debug)]
struct Outcome {
    accepted: usize,
    completed: usize,
    lost: usize,
    wrong_output: usize,
    other_end: usize,
    re_executed: usize,
    max_attempts_seen: usize,
    stored_unacknowledged: usize,
}

async fn settle(http: &reqwest::Client, url: &str, ledger: &Ledger, deadline: Duration) -> Outcome {
    let until = Instant::now() + deadline;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for (id, n) in &ledger.accepted {
        let (http, url, id, n, sem) = (http.clone(), url.to_string(), id.clone(), *n, sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            loop {
                let r = match http
                    .get(format!("{url}/v1/jobs/{id}?wait=20s"))
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(_) if Instant::now() < until => continue,
                    Err(_) => return (id, n, None),
                };
                if r.status() == 404 {
                    return (id, n, None);
                }
                let job: Value = r.json().await.expect("a job body");
                let ended = !matches!(job["status"].as_str(), Some("pending" | "running"));
                if ended || Instant::now() >= until {
                    return (id, n, Some(job));
                }
            }
        });
    }
    let mut o = Outcome {
        accepted: ledger.accepted.len(),
        ..Default::default()
    };
    while let Some(r) = tasks.join_next().await {
        let (id, n, job) = r.expect("a settle task");
        let Some(job) = job else {
            eprintln!("LOST: {id} (accepted, now missing)");
            o.lost += 1;
            continue;
        };
        let attempts = job["attempts"].as_array().map_or(0, Vec::len);
        o.max_attempts_seen = o.max_attempts_seen.max(attempts);
        if attempts > 1 {
            o.re_executed += 1;
        }
        match job["status"].as_str() {
            Some("completed") => {
                let steps = job["result"]["steps"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let stdout = steps.last().and_then(|s| s["stdout"].as_str());
                if stdout == Some(format!("{n}\n").as_str()) {
                    o.completed += 1;
                } else {
                    eprintln!("WRONG OUTPUT: {id}: {stdout:?}, expected {n}");
                    o.wrong_output += 1;
                }
            }
            Some("pending" | "running") => {
                eprintln!("NEVER ENDED: {id}: {job}");
                o.lost += 1;
            }
            other => {
                eprintln!("ENDED {other:?}: {id}: {}", job["error"]);
                o.other_end += 1;
            }
        }
    }
    o.stored_unacknowledged = stored_jobs(http, url).await.saturating_sub(o.accepted);
    o
}

/// How many jobs the store holds for the suite's user.
async fn stored_jobs(http: &reqwest::Client, url: &str) -> usize {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("{url}/v1/jobs?user_id=crash&limit=1000");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http
            .get(q)
            .send()
            .await
            .expect("list jobs")
            .json()
            .await
            .expect("a page");
        n += page["jobs"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return n,
        }
    }
}

/// After the last kill: start the service once more on the same data, wait until every accepted
/// job has ended (or `deadline`), and stop it. Every task that fed the ledger must have ended.
async fn drain(
    bin: &Path,
    data: &Path,
    log: &Path,
    http: &reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
    deadline: Duration,
) -> (Outcome, Duration, Ledger) {
    let started = Instant::now();
    let server = Server::start(bin, data, log);
    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("the tasks that fed the ledger ended")
        .into_inner()
        .expect("ledger lock");
    let outcome = settle(http, &server.url, &ledger, deadline).await;
    let drained = started.elapsed();
    server.stop();
    (outcome, drained, ledger)
}

async fn cycles(bin: &Path, work: &Path, http: &reqwest::Client) -> (Outcome, Duration) {
    let cycles = env_u64("CYCLES", 20);
    let rate = env_u64("RATE", 50).max(1);
    let (lo, hi) = (env_u64("KILL_MIN_MS", 300), env_u64("KILL_MAX_MS", 3000));
    let data = work.join("cycles");
    let log = work.join("cycles.log");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    println!(
        "cycles: {cycles} x (serve, {rate} jobs/s over HTTP, SIGKILL after {lo}-{hi} ms, restart on the same data dir)"
    );
    println!(
        "{:>5} {:>9} {:>9} {:>11}",
        "cycle", "up ms", "accepted", "unanswered"
    );
    for cycle in 1..=cycles {
        let server = Server::start(bin, &data, &log);
        let stop = tokio_util::sync::CancellationToken::new();
        let load = tokio::spawn(steady_load(
            http.clone(),
            server.url.clone(),
            rate,
            next.clone(),
            ledger.clone(),
            stop.clone(),
        ));
        let before = {
            let l = ledger.lock().expect("ledger lock");
            (l.accepted.len(), l.unanswered)
        };
        let up = rand::random_range(lo..=hi.max(lo));
        tokio::time::sleep(Duration::from_millis(up)).await;
        server.kill();
        stop.cancel();
        load.await.expect("the load task");
        let l = ledger.lock().expect("ledger lock");
        println!(
            "{cycle:>5} {up:>9} {:>9} {:>11}",
            l.accepted.len() - before.0,
            l.unanswered - before.1
        );
    }
    let (outcome, drained, ledger) =
        drain(bin, &data, &log, http, ledger, Duration::from_secs(600)).await;
    println!(
        "cycles: {} submits got no answer (killed mid-request)",
        ledger.unanswered
    );
    (outcome, drained)
}

async fn large_batch(bin: &Path, work: &Path, http: &reqwest::Client) -> (Outcome, Duration) {
    let batch = env_u64("BATCH", 4000);
    let kills = env_u64("BATCH_KILLS", 3);
    let payload = env_u64("PAYLOAD", 16384) as usize;
    let data = work.join("batch");
    let log = work.join("batch.log");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    println!(
        "large batch: {kills} x ({batch} submits in flight at once, {payload} B file each, SIGKILL mid-write, restart)"
    );
    println!(
        "{:>4} {:>12} {:>9} {:>11} {:>14}",
        "kill", "killed at ms", "accepted", "unanswered", "store reopens"
    );
    let mut n = 0u64;
    for round in 1..=kills {
        let server = Server::start(bin, &data, &log);
        let before = {
            let l = ledger.lock().expect("ledger lock");
            (l.accepted.len(), l.unanswered)
        };
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let (http, url, ledger) = (http.clone(), server.url.clone(), ledger.clone());
            let k = n;
            n += 1;
            tasks.spawn(async move { submit(&http, &url, k, payload, &ledger).await });
        }
        // Kill once the acknowledgements are flowing, so that the kill lands inside the
        // stream of batched writes and fsyncs rather than before or after it.
        let target = before.0 + (batch as usize) / 4;
        while ledger.lock().expect("ledger lock").accepted.len() < target
            && started.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let at = started.elapsed();
        server.kill();
        while tasks.join_next().await.is_some() {}
        // The store must open cleanly after the kill: the server starts and is ready.
        let check = Server::start(bin, &data, &log);
        let ready = http
            .get(format!("{}/readyz", check.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success() || r.status() == 503);
        check.kill();
        let l = ledger.lock().expect("ledger lock");
        println!(
            "{round:>4} {:>12} {:>9} {:>11} {:>14}",
            at.as_millis(),
            l.accepted.len() - before.0,
            l.unanswered - before.1,
            if ready { "yes" } else { "NO" }
        );
        assert!(ready, "the store did not reopen after a kill");
    }
    let (outcome, drained, _) =
        drain(bin, &data, &log, http, ledger, Duration::from_secs(900)).await;
    (outcome, drained)
}

#[tokio::main]
async fn main() {
    let bin = PathBuf::from(std::env::args().nth(1).expect("usage: crash_cycles BINARY"));
    let work = tempfile::tempdir().expect("a temporary directory");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client");

    let (cyc, cyc_drain) = cycles(&bin, work.path(), &http).await;
    let (big, big_drain) = large_batch(&bin, work.path(), &http).await;

    println!();
    println!(
        "{:<12} {:>9} {:>10} {:>5} {:>12} {:>13} {:>11} {:>12} {:>10}",
        "phase",
        "accepted",
        "completed",
        "lost",
        "re-executed",
        "max attempts",
        "other end",
        "stored-unack",
        "drain s"
    );
    for (name, o, d) in [
        ("cycles", &cyc, cyc_drain),
        ("large batch", &big, big_drain),
    ] {
        println!(
            "{name:<12} {:>9} {:>10} {:>5} {:>12} {:>13} {:>11} {:>12} {:>10.1}",
            o.accepted,
            o.completed,
            o.lost + o.wrong_output,
            o.re_executed,
            o.max_attempts_seen,
            o.other_end,
            o.stored_unacknowledged,
            d.as_secs_f64()
        );
    }
    let bad = cyc.lost + cyc.wrong_output + big.lost + big.wrong_output;
    println!(
        "lost (accepted, then missing, never ended or wrong output): {bad} — {}",
        if bad == 0 {
            "target met"
        } else {
            "TARGET MISSED"
        }
    );
    if bad > 0 {
        std::process::exit(1);
    }
}
