//! The durable store: one sled database with typed trees, and the only module that touches
//! sled. Nothing outside it sees a sled type.
//!
//! Trees: `jobs` (seq -> job JSON), `ready` (priority, run-at, seq -> seq; big-endian so byte
//! order is queue order), `by_user` (user, 0x00, seq -> ()), `idempotency` (user, 0x00, key
//! -> seq), `notifications`, `sandboxes`, `kv` (small named records for the breaker and the
//! limiter), `meta` (schema version). A job claimed by a worker is one stored as `running`; after
//! a restart those are the interrupted ones.
//!
//! **Invariant:** `ready` holds exactly the pending jobs, each under its own key (priority,
//! run-at, seq). Every change is an ordered list of single-key writes (`Write`), never a sled
//! transaction: a transaction takes sled's global write lock, which waits for any fsync in
//! progress, so every submit would queue behind the last one's flush. A crash (or a failed
//! write) can cut a list short; `recover`, which the queue runs each time it starts and before
//! it reads the trees, puts them back in line with the job records (see `repair.rs`). The queue
//! actor is the one writer of these trees, and the root stops a failed tree's actors before it
//! starts new ones, so lists do not interleave.
//!
//! Writes become durable only through `durable()`, which group-commits: concurrent callers
//! share one fsync.

mod durability;
mod repair;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobStatus};
use crate::notify::Notification;
pub use durability::Ticket;
pub use repair::Recovery;

/// 2: no `leases` tree (a claimed job is one stored as running). A build that knows only 1 would
/// look for leases, find none, and never reclaim an interrupted job, so it must refuse the store.
const SCHEMA_VERSION: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o failed: {0}")]
    Io(String),
    #[error("stored record {key} is corrupt: {why}")]
    Corrupt { key: String, why: String },
    #[error("store schema version {found} is newer than this build understands ({SCHEMA_VERSION})")]
    Schema { found: u64 },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A sandbox kept alive between jobs (`keep: true`), as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub owner: String,
    /// The job that made it, and the last one that used it.
    pub created_by: String,
    pub last_job: String,
    pub created_at_ms: u64,
    pub last_used_ms: u64,
    /// Killed by the reaper at this time if still live.
    pub expires_at_ms: u64,
    /// `live`, `pausing` (a pause is under way), `paused` or `killed`.
    pub state: String,
    /// The jobs running in it now; a sandbox in use is never paused.
    #[serde(default)]
    pub in_use_by: Vec<String>,
}

/// What `census` counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    pub by_status: std::collections::BTreeMap<&'static str, usize>,
    pub oldest_pending_ms: Option<u64>,
    pub finished_since: usize,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    jobs: sled::Tree,
    ready: sled::Tree,
    by_user: sled::Tree,
    idempotency: sled::Tree,
    notifications: sled::Tree,
    sandboxes: sled::Tree,
    kv: sled::Tree,
    durability: durability::GroupCommit,
    inline_flush: bool,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn decode_job(key: &[u8], bytes: &[u8]) -> Result<Job> {
    let mut job: Job = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("jobs/{}", hex::encode(key)),
        why: e.to_string(),
    })?;
    job.seq = seq_from(key)?;
    Ok(job)
}

/// A `ready` key as stored: priority, run-at, seq.
fn ready_key_from(key: &[u8]) -> Result<[u8; 17]> {
    key.try_into().map_err(|_| StoreError::Corrupt {
        key: format!("ready/{}", hex::encode(key)),
        why: "a ready key is 17 bytes".into(),
    })
}

fn seq_from(key: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        key: hex::encode(key),
        why: "a job key is 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(arr))
}

fn user_key(user: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 9);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn idem_key(user: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + key.len() + 1);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The trees that hold the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueTree {
    Jobs,
    Ready,
    ByUser,
    Idempotency,
}

/// One single-key write of an ordered change. Each change lists its writes so that any prefix
/// of the list, as a crash may leave it, is something `Store::recover` can finish or undo.
#[derive(Debug, Clone)]
enum Write {
    Put(QueueTree, Vec<u8>, Vec<u8>),
    Del(QueueTree, Vec<u8>),
    /// Remove the key only while it holds this value (compare-and-swap, not a transaction).
    DelIf(QueueTree, Vec<u8>, Vec<u8>),
}

/// A due entry of the ready queue, as `peek_ready` found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyEntry {
    key: [u8; 17],
    pub seq: u64,
}

/// A new job: its idempotency key first, so that a second submit with the key finds it, then
/// the record and its indexes.
fn insert_writes(job: &Job) -> Vec<Write> {
    let key = job.seq.to_be_bytes().to_vec();
    let mut w = Vec::with_capacity(4);
    if let Some(ikey) = &job.spec.idempotency_key {
        w.push(Write::Put(
            QueueTree::Idempotency,
            idem_key(&job.spec.user_id, ikey),
            key.clone(),
        ));
    }
    w.push(Write::Put(QueueTree::Jobs, key.clone(), encode(job)));
    w.push(Write::Put(
        QueueTree::ByUser,
        user_key(&job.spec.user_id, job.seq),
        Vec::new(),
    ));
    if job.status == JobStatus::Pending {
        w.push(Write::Put(QueueTree::Ready, job.ready_key().to_vec(), key));
    }
    w
}

/// A claimed job leaves `ready`, then is stored running.
fn claim_writes(ready_key: [u8; 17], job: &Job) -> Vec<Write> {
    vec![
        Write::Del(QueueTree::Ready, ready_key.to_vec()),
        Write::Put(QueueTree::Jobs, job.seq.to_be_bytes().to_vec(), encode(job)),
    ]
}

/// A cancelled job is stored, then leaves `ready`.
fn unqueue_writes(job: &Job, pending_key: [u8; 17]) -> Vec<Write> {
    vec![
        Write::Put(QueueTree::Jobs, job.seq.to_be_bytes().to_vec(), encode(job)),
        Write::Del(QueueTree::Ready, pending_key.to_vec()),
    ]
}

/// A job's new state, then its ready entry if it is pending again.
fn release_writes(job: &Job) -> Vec<Write> {
    let key = job.seq.to_be_bytes().to_vec();
    let mut w = vec![Write::Put(QueueTree::Jobs, key.clone(), encode(job))];
    if job.status == JobStatus::Pending {
        w.push(Write::Put(QueueTree::Ready, job.ready_key().to_vec(), key));
    }
    w
}

/// An ended job goes, then its indexes.
fn removal_writes(job: &Job) -> Vec<Write> {
    let mut w = vec![
        Write::Del(QueueTree::Jobs, job.seq.to_be_bytes().to_vec()),
        Write::Del(QueueTree::ByUser, user_key(&job.spec.user_id, job.seq)),
    ];
    if let Some(ikey) = &job.spec.idempotency_key {
        w.push(Write::DelIf(
            QueueTree::Idempotency,
            idem_key(&job.spec.user_id, ikey),
            job.seq.to_be_bytes().to_vec(),
        ));
    }
    w
}

/// Open sled's database, waiting a little for a lock that an earlier handle in this process is
/// still letting go of: sled closes its file on a background thread after the last handle
/// drops, so a reopen at once can find it still locked. A lock held longer is another
/// process's, and its error says so.
fn open_db(path: &Path) -> Result<sled::Db> {
    const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StoreError::Io(format!(
                        "{}: locked by another process for more than {}s ({e})",
                        path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        let db = open_db(&dir.join("db"))?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            Some(v) => {
                let found =
                    u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        key: "meta/schema_version".into(),
                        why: "not 8 bytes".into(),
                    })?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Schema { found });
                }
                if found < 2 {
                    // Version 1 kept a `leases` tree in step with the running jobs (its writes
                    // were transactions); the job records say the same.
                    db.drop_tree("leases")?;
                    meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                    db.flush()?;
                }
            }
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
        }
        let inner = Inner {
            jobs: db.open_tree("jobs")?,
            ready: db.open_tree("ready")?,
            by_user: db.open_tree("by_user")?,
            idempotency: db.open_tree("idempotency")?,
            notifications: db.open_tree("notifications")?,
            sandboxes: db.open_tree("sandboxes")?,
            kv: db.open_tree("kv")?,
            durability: durability::GroupCommit::default(),
            inline_flush: false,
            db,
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    fn tree(&self, t: QueueTree) -> &sled::Tree {
        let i = &self.inner;
        match t {
            QueueTree::Jobs => &i.jobs,
            QueueTree::Ready => &i.ready,
            QueueTree::ByUser => &i.by_user,
            QueueTree::Idempotency => &i.idempotency,
        }
    }

    /// Carry out a change's writes in order.
    fn apply(&self, writes: &[Write]) -> Result<()> {
        for w in writes {
            match w {
                Write::Put(t, k, v) => {
                    self.tree(*t).insert(k.as_slice(), v.as_slice())?;
                }
                Write::Del(t, k) => {
                    self.tree(*t).remove(k.as_slice())?;
                }
                Write::DelIf(t, k, v) => {
                    // Holding another value means another job holds the key: leave it.
                    let _ = self.tree(*t).compare_and_swap(
                        k.as_slice(),
                        Some(v.as_slice()),
                        None::<&[u8]>,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// How many handles to this store exist (the database closes when the last one drops).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// A fresh, monotonically increasing job sequence number.
    pub fn next_seq(&self) -> Result<u64> {
        Ok(self.inner.db.generate_id()?)
    }

    /// Note a write whose durability a caller will wait for.
    pub fn ticket(&self) -> Ticket {
        self.inner.durability.ticket()
    }

    /// Wait until every write made before `ticket` was taken is on disk.
    pub async fn durable(&self, ticket: Ticket) -> Result<()> {
        let db = self.inner.db.clone();
        let inline = self.inner.inline_flush;
        self.inner
            .durability
            .wait(ticket, || async move {
                if inline {
                    db.flush().map(|_| ())
                } else {
                    db.flush_async().await.map(|_| ())
                }
            })
            .await
            .map_err(StoreError::from)
    }

    /// Flush on the calling thread instead of sled's pool. For tests on tokio's paused clock:
    /// a task parked on another thread's fsync lets the paused clock jump ahead.
    pub fn open_with_inline_flush(dir: &Path) -> Result<Store> {
        let mut store = Self::open(dir)?;
        Arc::get_mut(&mut store.inner)
            .expect("a store just opened has one owner")
            .inline_flush = true;
        Ok(store)
    }

    /// Flush everything now.
    pub async fn flush(&self) -> Result<()> {
        let t = self.ticket();
        self.durable(t).await
    }

    /// Insert a new pending job (and its idempotency key), or return the job that already holds
    /// the key.
    pub fn insert_job(&self, job: &Job) -> Result<Option<Job>> {
        if let Some(key) = &job.spec.idempotency_key
            && let Some(prev) = self
                .inner
                .idempotency
                .get(idem_key(&job.spec.user_id, key))?
            && let Some(first) = self.get_job_by_seq(seq_from(&prev)?)?
        {
            return Ok(Some(first));
        }
        self.apply(&insert_writes(job))?;
        Ok(None)
    }

    pub fn get_job(&self, id: &str) -> Result<Option<Job>> {
        match Job::seq_of(id) {
            Some(seq) => self.get_job_by_seq(seq),
            None => Ok(None),
        }
    }

    pub fn get_job_by_seq(&self, seq: u64) -> Result<Option<Job>> {
        let key = seq.to_be_bytes();
        match self.inner.jobs.get(key)? {
            Some(v) => Ok(Some(decode_job(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// The entry at the head of the ready queue whose run time has come, if any.
    pub fn peek_ready(&self, now_ms: u64) -> Result<Option<ReadyEntry>> {
        for item in self.inner.ready.iter() {
            let (k, v) = item?;
            let key = ready_key_from(&k)?;
            let run_at = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes"));
            if run_at <= now_ms {
                return Ok(Some(ReadyEntry {
                    key,
                    seq: seq_from(&v)?,
                }));
            }
            // A later-scheduled job of a higher priority must not hide due jobs of lower ones.
        }
        Ok(None)
    }

    /// Take a pending job out of `ready` and store it as `update` leaves it (running). Returns
    /// `None`, dropping the entry, if the entry no longer stands for a pending job.
    pub fn claim(&self, entry: ReadyEntry, update: impl Fn(&mut Job)) -> Result<Option<Job>> {
        let key = entry.seq.to_be_bytes();
        let job = match self.inner.jobs.get(key)? {
            Some(bytes) => Some(decode_job(&key, &bytes)?),
            None => None,
        };
        let stands_for = |j: &Job| j.status == JobStatus::Pending && j.ready_key() == entry.key;
        let Some(mut job) = job.filter(stands_for) else {
            self.inner.ready.remove(entry.key)?;
            return Ok(None);
        };
        update(&mut job);
        self.apply(&claim_writes(entry.key, &job))?;
        Ok(Some(job))
    }

    /// Record a job's end, or its return to the queue when it is pending again.
    pub fn release(&self, job: &Job) -> Result<()> {
        self.apply(&release_writes(job))
    }

    /// Take a pending job out of the ready queue and store it as given (cancelled). Returns false
    /// if it was not pending.
    pub fn unqueue(&self, job: &Job, pending_key: [u8; 17]) -> Result<bool> {
        if !self.inner.ready.contains_key(pending_key)? {
            return Ok(false);
        }
        self.apply(&unqueue_writes(job, pending_key))?;
        Ok(true)
    }

    pub fn ready_len(&self) -> usize {
        self.inner.ready.len()
    }

    /// A user's jobs, newest first, starting below `before` (a seq cursor).
    pub fn list_user_jobs(
        &self,
        user: &str,
        status: Option<JobStatus>,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<Job>, Option<u64>)> {
        let start = user_key(user, 0);
        let end = user_key(user, before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        let mut next = None;
        let range = if before.is_some() {
            self.inner.by_user.range(start..end)
        } else {
            self.inner.by_user.range(start..=end)
        };
        for item in range.rev() {
            let (k, _) = item?;
            let seq = seq_from(&k[k.len() - 8..])?;
            let Some(job) = self.get_job_by_seq(seq)? else {
                continue;
            };
            if status.is_some_and(|s| s != job.status) {
                continue;
            }
            if out.len() == limit {
                next = out.last().map(|j: &Job| j.seq);
                break;
            }
            out.push(job);
        }
        Ok((out, next))
    }

    /// Jobs of any user, newest first, optionally of one status, starting below `before`.
    /// O(jobs scanned): an admin view, not a hot path.
    pub fn list_jobs(
        &self,
        status: Option<JobStatus>,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<Job>, Option<u64>)> {
        let end = before.unwrap_or(u64::MAX).to_be_bytes();
        let range = match before {
            Some(_) => self.inner.jobs.range(..end),
            None => self.inner.jobs.iter(),
        };
        let mut out: Vec<Job> = Vec::new();
        for item in range.rev() {
            let (k, v) = item?;
            let job = decode_job(&k, &v)?;
            if status.is_some_and(|s| s != job.status) {
                continue;
            }
            if out.len() == limit {
                return Ok((out.clone(), out.last().map(|j| j.seq)));
            }
            out.push(job);
        }
        Ok((out, None))
    }

    /// Counts by status, the oldest pending job's creation time, and how many jobs ended at
    /// or after `since_ms`. O(jobs).
    pub fn census(&self, since_ms: u64) -> Result<Census> {
        let mut c = Census::default();
        for item in self.inner.jobs.iter() {
            let (k, v) = item?;
            let job = decode_job(&k, &v)?;
            *c.by_status.entry(job.status.as_str()).or_default() += 1;
            if job.status == JobStatus::Pending {
                c.oldest_pending_ms = Some(
                    c.oldest_pending_ms
                        .map_or(job.created_at_ms, |t: u64| t.min(job.created_at_ms)),
                );
            }
            if job.finished_at_ms.is_some_and(|t| t >= since_ms) {
                c.finished_since += 1;
            }
        }
        Ok(c)
    }

    /// Remove up to `max` ended jobs that finished before `cutoff_ms`, with their index
    /// entries. Returns how many were removed.
    pub fn remove_ended_before(&self, cutoff_ms: u64, max: usize) -> Result<usize> {
        let mut removed = 0;
        for item in self.inner.jobs.iter() {
            if removed == max {
                break;
            }
            let (k, v) = item?;
            let job = decode_job(&k, &v)?;
            let old = job.status.is_terminal() && job.finished_at_ms.is_some_and(|t| t < cutoff_ms);
            if !old {
                continue;
            }
            self.apply(&removal_writes(&job))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Add a notification to a user's feed; returns its key.
    pub fn insert_notification(&self, user: &str, seq: u64, n: &Notification) -> Result<Vec<u8>> {
        let key = user_key(user, seq);
        self.inner.notifications.insert(key.as_slice(), encode(n))?;
        Ok(key)
    }

    /// Change a stored notification in place (webhook delivery records).
    pub fn update_notification(&self, key: &[u8], f: impl Fn(&mut Notification)) -> Result<()> {
        self.inner.notifications.fetch_and_update(key, |old| {
            let mut n: Notification = serde_json::from_slice(old?).ok()?;
            f(&mut n);
            Some(encode(&n))
        })?;
        Ok(())
    }

    /// A user's notifications, newest first, starting below `before` (a seq cursor).
    pub fn list_notifications(
        &self,
        user: &str,
        unread_only: bool,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<Notification>, Option<u64>)> {
        let start = user_key(user, 0);
        let end = user_key(user, before.unwrap_or(u64::MAX));
        let range = if before.is_some() {
            self.inner.notifications.range(start..end)
        } else {
            self.inner.notifications.range(start..=end)
        };
        let mut out: Vec<(u64, Notification)> = Vec::new();
        for item in range.rev() {
            let (k, v) = item?;
            let n: Notification = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: format!("notifications/{}", hex::encode(&k)),
                why: e.to_string(),
            })?;
            if unread_only && n.read {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|(s, _)| *s);
                return Ok((out.into_iter().map(|(_, n)| n).collect(), next));
            }
            out.push((seq_from(&k[k.len() - 8..])?, n));
        }
        Ok((out.into_iter().map(|(_, n)| n).collect(), None))
    }

    /// Mark a user's notifications read: the given ids, or all when `ids` is None. Returns how
    /// many changed.
    pub fn mark_read(&self, user: &str, ids: Option<&[String]>) -> Result<usize> {
        let start = user_key(user, 0);
        let end = user_key(user, u64::MAX);
        let mut changed = 0;
        for item in self.inner.notifications.range(start..=end) {
            let (k, v) = item?;
            let Ok(mut n) = serde_json::from_slice::<Notification>(&v) else {
                continue;
            };
            let wanted = ids.is_none_or(|ids| ids.contains(&n.id));
            if wanted && !n.read {
                n.read = true;
                self.inner.notifications.insert(k, encode(&n))?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Record (or update) a kept sandbox in the registry.
    pub fn put_sandbox(&self, s: &SandboxRecord) -> Result<()> {
        self.inner.sandboxes.insert(s.id.as_bytes(), encode(s))?;
        Ok(())
    }

    /// Change a registry record atomically: `change` sees the current record and returns the
    /// new one, or `None` to leave it as it is. It may be called more than once when another
    /// writer got there first. Returns the record as stored afterwards (`None`: not registered).
    pub fn update_sandbox(
        &self,
        id: &str,
        mut change: impl FnMut(&SandboxRecord) -> Option<SandboxRecord>,
    ) -> Result<Option<SandboxRecord>> {
        loop {
            let Some(current) = self.inner.sandboxes.get(id.as_bytes())? else {
                return Ok(None);
            };
            let record: SandboxRecord =
                serde_json::from_slice(&current).map_err(|e| StoreError::Corrupt {
                    key: format!("sandboxes/{id}"),
                    why: e.to_string(),
                })?;
            let Some(next) = change(&record) else {
                return Ok(Some(record));
            };
            let swapped = self.inner.sandboxes.compare_and_swap(
                id.as_bytes(),
                Some(current),
                Some(encode(&next)),
            )?;
            if swapped.is_ok() {
                return Ok(Some(next));
            }
        }
    }

    pub fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
        match self.inner.sandboxes.get(id.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    key: format!("sandboxes/{id}"),
                    why: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// Every registered sandbox.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        self.inner
            .sandboxes
            .iter()
            .map(|item| {
                let (k, v) = item?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    key: format!("sandboxes/{}", String::from_utf8_lossy(&k)),
                    why: e.to_string(),
                })
            })
            .collect()
    }

    /// All jobs, in seq order (for stats and tests; O(n)).
    pub fn all_jobs(&self) -> Result<Vec<Job>> {
        self.inner
            .jobs
            .iter()
            .map(|item| {
                let (k, v) = item?;
                decode_job(&k, &v)
            })
            .collect()
    }

    /// A small named record (breaker state, limiter usage).
    pub fn get_record<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>> {
        match self.inner.kv.get(name)? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    key: format!("kv/{name}"),
                    why: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    pub fn put_record<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        self.inner.kv.insert(name, encode(value))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// One sled transaction, batch or checksum anywhere in the process switches sled to its
    /// process-wide lock for good, and from then on every write waits for any fsync in
    /// progress. Nothing in the crate may use one.
    #[test]
    fn nothing_uses_sled_transactions_batches_or_checksums() {
        let banned = [
            concat!(".trans", "action("),
            concat!("apply", "_batch("),
            concat!("sled::", "Batch"),
            concat!(".check", "sum("),
        ];
        let mut dirs = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut files = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files += 1;
                    let text = std::fs::read_to_string(&path).unwrap();
                    for b in banned {
                        assert!(!text.contains(b), "{} uses `{b}`", path.display());
                    }
                }
            }
        }
        assert!(files > 20, "read {files} source files");
    }
}
