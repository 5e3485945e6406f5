//! The job model: what a client asks for (`JobSpec`), what the system records about it (`Job`),
//! and the rules that turn untrusted JSON into a spec (`spec`).
//!
//! A `Job` record is a wire type on purpose: it is the same JSON in the store and on the API,
//! so that what an operator reads is exactly what survives a restart. Nothing here performs
//! I/O or reads a clock.

pub mod spec;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Byte order of the ready queue: lower runs first.
    pub fn rank(self) -> u8 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Failed for good after `max_attempts` runs on errors that were not the job's fault; an
    /// admin can retry it.
    Dead,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "dead" => JobStatus::Dead,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Dead
        )
    }
}

/// Network access of a job's sandbox, as recorded: the job's own choice, else its template's,
/// else the service's default (`local.network`; E2B's is the internet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkAccess {
    /// Loopback only.
    #[default]
    None,
    /// The host's network (local) or the internet (E2B).
    Host,
}

impl NetworkAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkAccess::None => "none",
            NetworkAccess::Host => "host",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(NetworkAccess::None),
            "host" => Some(NetworkAccess::Host),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRequest {
    pub template: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
    pub keep: bool,
    /// The effective choice (records from before the field existed read as `none`). A job in a
    /// kept sandbox (`sandbox_id`) runs with that sandbox's network.
    #[serde(default)]
    pub network: NetworkAccess,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    WriteFile {
        path: String,
        content: String,
    },
    Run {
        cmd: String,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
    },
    ReadFile {
        path: String,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
    },
}

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::WriteFile { .. } => "write_file",
            Step::Run { .. } => "run",
            Step::ReadFile { .. } => "read_file",
        }
    }
}

/// A validated job request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub user_id: String,
    pub project_id: Option<String>,
    pub kind: Option<String>,
    pub priority: Priority,
    pub idempotency_key: Option<String>,
    pub sandbox: SandboxRequest,
    pub steps: Vec<Step>,
    /// Run no earlier than this (unix ms); from the request's `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<u64>,
    /// Run no earlier than this long after acceptance; from the request's `delay`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub delay: Option<Duration>,
    /// Run in this kept sandbox (from an earlier job with `keep: true`) instead of a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Where to POST the job's notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// One try at running a job, kept in the job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    /// `completed`, `failed`, `interrupted` (the process or worker died) or `requeued`.
    pub outcome: Option<String>,
    pub error_category: Option<String>,
    pub error: Option<String>,
}

/// What one step produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepResult {
    pub index: usize,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub truncated: bool,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobResult {
    pub steps: Vec<StepResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub category: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
}

/// A job as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    #[serde(skip)]
    pub seq: u64,
    pub status: JobStatus,
    /// Why a pending job is not running yet, or why it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub spec: JobSpec,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub run_at_ms: u64,
    /// Attempts before this index do not count against `max_attempts` (an admin retried the
    /// job after they were used up).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts_counted_from: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    pub attempts: Vec<Attempt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Job {
    /// Runs that count against `max_attempts`: breaker and limiter deferrals do not.
    pub fn counted_attempts(&self) -> usize {
        self.attempts
            .iter()
            .skip(self.attempts_counted_from)
            .filter(|a| a.outcome.as_deref() != Some("deferred"))
            .count()
    }

    pub fn id_of(seq: u64) -> String {
        format!("job-{seq:016x}")
    }

    pub fn seq_of(id: &str) -> Option<u64> {
        let hex = id.strip_prefix("job-")?;
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    }

    pub fn new(seq: u64, spec: JobSpec, now_ms: u64) -> Self {
        let run_at_ms = match (spec.run_at_ms, spec.delay) {
            (Some(at), _) => at.max(now_ms),
            // Saturating: a run time past the end of u64 milliseconds is "never", not "now".
            (None, Some(d)) => {
                now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
            (None, None) => now_ms,
        };
        Job {
            id: Self::id_of(seq),
            seq,
            status: JobStatus::Pending,
            reason: None,
            spec,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            run_at_ms,
            attempts_counted_from: 0,
            started_at_ms: None,
            finished_at_ms: None,
            attempts: Vec::new(),
            result: None,
            error: None,
        }
    }

    /// The ready-queue key: priority, then run time, then arrival. Big-endian so that sled's
    /// byte order is queue order.
    pub fn ready_key(&self) -> [u8; 17] {
        ready_key(self.spec.priority, self.run_at_ms, self.seq)
    }
}

/// `Job::ready_key` from its parts.
pub fn ready_key(priority: Priority, run_at_ms: u64, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = priority.rank();
    k[1..9].copy_from_slice(&run_at_ms.to_be_bytes());
    k[9..17].copy_from_slice(&seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for seq in [0, 1, 255, u64::MAX] {
            assert_eq!(Job::seq_of(&Job::id_of(seq)), Some(seq));
        }
        assert_eq!(Job::seq_of("job-xyz"), None);
        assert_eq!(Job::seq_of("nope"), None);
    }
}
