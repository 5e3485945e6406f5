//! Putting the queue trees back in line with the job records after a crash.
//!
//! Every change is an ordered list of single-key writes (see `insert_writes`, `claim_writes`,
//! `release_writes`, `unqueue_writes`, `removal_writes`), and a crash can leave any prefix of
//! one list on disk. The job record is the truth; the other trees are brought to agree with it:
//! - `ready` holds each pending job under its own key, and nothing else;
//! - `by_user` and `idempotency` name every job that has a user and a key, and nothing that is
//!   gone.
//!
//! A running job needs nothing here: the queue reclaims every running job `recover` reports.
//! A record that cannot be read is left as it is, reported, and kept out of `ready`.
//! Each rule is idempotent, so a crash during the repair is repaired at the next start.

use std::collections::HashSet;

use serde::Deserialize;

use super::{Result, Store, idem_key, ready_key_from, seq_from, user_key};
use crate::job::{JobStatus, Priority, ready_key};

/// The fields of a job record its index entries are made from. Decoding only these skips the
/// rest of the record (steps, attempts, results), which is most of the cost of a full scan.
#[derive(Deserialize)]
struct JobKeys {
    status: JobStatus,
    run_at_ms: u64,
    spec: SpecKeys,
}

#[derive(Deserialize)]
struct SpecKeys {
    user_id: String,
    priority: Priority,
    idempotency_key: Option<String>,
}

/// What `Store::recover` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Index entries written or removed.
    pub fixed: usize,
    /// Jobs stored as running, in seq order: interrupted runs for the queue to reclaim.
    pub running: Vec<u64>,
    /// Job records that could not be read (key and why), left untouched and not queued.
    pub corrupt: Vec<String>,
}

impl Store {
    /// Bring `ready`, `by_user` and `idempotency` in line with `jobs`, and list the running
    /// jobs. O(jobs). The queue calls it each time it starts, before it reads the trees; no
    /// other writer may run meanwhile.
    pub fn recover(&self) -> Result<Recovery> {
        let i = &self.inner;
        let mut out = Recovery::default();
        let mut seqs = HashSet::new();
        let mut wanted_ready = HashSet::new();
        for item in i.jobs.iter() {
            let (k, v) = item?;
            let seq = seq_from(&k)?;
            seqs.insert(seq);
            let job: JobKeys = match serde_json::from_slice(&v) {
                Ok(j) => j,
                Err(e) => {
                    out.corrupt.push(format!("jobs/{}: {e}", hex::encode(&k)));
                    continue;
                }
            };
            let ukey = user_key(&job.spec.user_id, seq);
            if !i.by_user.contains_key(&ukey)? {
                i.by_user.insert(ukey, &[])?;
                out.fixed += 1;
            }
            if let Some(key) = &job.spec.idempotency_key {
                let ikey = idem_key(&job.spec.user_id, key);
                let holder = match i.idempotency.get(&ikey)? {
                    Some(v) => Some(seq_from(&v)?),
                    None => None,
                };
                let held_elsewhere = match holder {
                    Some(s) if s != seq => i.jobs.contains_key(s.to_be_bytes())?,
                    _ => false,
                };
                if holder != Some(seq) && !held_elsewhere {
                    i.idempotency.insert(ikey, &k)?;
                    out.fixed += 1;
                }
            }
            match job.status {
                JobStatus::Pending => {
                    let rk = ready_key(job.spec.priority, job.run_at_ms, seq);
                    wanted_ready.insert(rk);
                    if !i.ready.contains_key(rk)? {
                        i.ready.insert(rk, &k)?;
                        out.fixed += 1;
                    }
                }
                JobStatus::Running => out.running.push(seq),
                _ => {}
            }
        }
        for item in i.ready.iter() {
            let (k, _) = item?;
            if !wanted_ready.contains(&ready_key_from(&k)?) {
                i.ready.remove(k)?;
                out.fixed += 1;
            }
        }
        for tree in [&i.by_user, &i.idempotency] {
            for item in tree.iter() {
                let (k, v) = item?;
                let seq = if v.is_empty() {
                    seq_from(&k[k.len().saturating_sub(8)..])?
                } else {
                    seq_from(&v)?
                };
                if !seqs.contains(&seq) {
                    tree.remove(k)?;
                    out.fixed += 1;
                }
            }
        }
        if out.fixed > 0 {
            i.db.flush()?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::super::{
        SCHEMA_VERSION, Write, claim_writes, insert_writes, release_writes, removal_writes,
        unqueue_writes,
    };
    use super::*;
    use crate::job::spec::{SpecDefaults, parse};
    use crate::job::{Attempt, Job};

    fn job(seq: u64, user: &str, key: Option<&str>) -> Job {
        let key = key.map_or(String::new(), |k| format!(r#","idempotency_key":"{k}""#));
        let body = format!(r#"{{"user_id":"{user}"{key},"steps":[{{"run":{{"cmd":"true"}}}}]}}"#);
        let spec = parse(body.as_bytes(), &SpecDefaults::default()).expect("a valid spec");
        Job::new(seq, spec, 1_000 + seq)
    }

    fn running(mut j: Job) -> Job {
        j.status = JobStatus::Running;
        j.attempts.push(Attempt {
            number: j.attempts.len() as u32 + 1,
            started_at_ms: 5_000,
            ended_at_ms: None,
            outcome: None,
            error_category: None,
            error: None,
        });
        j
    }

    fn ended(mut j: Job, status: JobStatus) -> Job {
        j.status = status;
        j.finished_at_ms = Some(6_000);
        j
    }

    /// The invariant, computed from the job records alone and compared with every tree.
    fn violations(store: &Store) -> Vec<String> {
        let i = &store.inner;
        let jobs: Vec<Job> = store.all_jobs().unwrap();
        let keys = |t: &sled::Tree| -> BTreeMap<Vec<u8>, Vec<u8>> {
            t.iter()
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect()
        };
        let mut out = Vec::new();
        let want_ready: BTreeMap<Vec<u8>, Vec<u8>> = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Pending)
            .map(|j| (j.ready_key().to_vec(), j.seq.to_be_bytes().to_vec()))
            .collect();
        if keys(&i.ready) != want_ready {
            out.push(format!("ready {:?} != {:?}", keys(&i.ready), want_ready));
        }
        let want_users: BTreeSet<Vec<u8>> = jobs
            .iter()
            .map(|j| user_key(&j.spec.user_id, j.seq))
            .collect();
        let users: BTreeSet<Vec<u8>> = keys(&i.by_user).into_keys().collect();
        if users != want_users {
            out.push(format!("by_user {users:?} != {want_users:?}"));
        }
        let want_idem: BTreeMap<Vec<u8>, Vec<u8>> = jobs
            .iter()
            .filter_map(|j| {
                let k = j.spec.idempotency_key.as_ref()?;
                Some((idem_key(&j.spec.user_id, k), j.seq.to_be_bytes().to_vec()))
            })
            .collect();
        if keys(&i.idempotency) != want_idem {
            out.push(format!(
                "idempotency {:?} != {want_idem:?}",
                keys(&i.idempotency)
            ));
        }
        out
    }

    /// A store with a pending job (1, keyed), a running one (2), a completed one (3, keyed)
    /// and a scheduled one (4).
    fn seeded(dir: &std::path::Path) -> Store {
        let store = Store::open(dir).unwrap();
        let mut scheduled = job(4, "u2", None);
        scheduled.run_at_ms = 99_000;
        for j in [
            job(1, "u1", Some("k1")),
            job(2, "u1", None),
            job(3, "u2", Some("k3")),
            scheduled,
        ] {
            store.apply(&insert_writes(&j)).unwrap();
        }
        let two = job(2, "u1", None);
        store
            .apply(&claim_writes(two.ready_key(), &running(two.clone())))
            .unwrap();
        let three = job(3, "u2", Some("k3"));
        store
            .apply(&claim_writes(three.ready_key(), &running(three.clone())))
            .unwrap();
        store
            .apply(&release_writes(&ended(
                running(three),
                JobStatus::Completed,
            )))
            .unwrap();
        assert_eq!(violations(&store), Vec::<String>::new(), "seed");
        store
    }

    /// Every change the queue makes, as its list of writes, with the status its job must have
    /// once the whole list is written.
    fn changes() -> Vec<(&'static str, Vec<Write>, u64, Option<JobStatus>)> {
        let one = job(1, "u1", Some("k1"));
        let two = running(job(2, "u1", None));
        let three = ended(running(job(3, "u2", Some("k3"))), JobStatus::Completed);
        let mut retry = two.clone();
        retry.status = JobStatus::Pending;
        retry.run_at_ms = 7_000;
        let mut cancelled = one.clone();
        cancelled.status = JobStatus::Cancelled;
        vec![
            (
                "insert keyed",
                insert_writes(&job(5, "u3", Some("k5"))),
                5,
                Some(JobStatus::Pending),
            ),
            (
                "claim",
                claim_writes(one.ready_key(), &running(one.clone())),
                1,
                Some(JobStatus::Running),
            ),
            (
                "complete",
                release_writes(&ended(two.clone(), JobStatus::Completed)),
                2,
                Some(JobStatus::Completed),
            ),
            (
                "requeue",
                release_writes(&retry),
                2,
                Some(JobStatus::Pending),
            ),
            (
                "cancel",
                unqueue_writes(&cancelled, one.ready_key()),
                1,
                Some(JobStatus::Cancelled),
            ),
            ("remove ended", removal_writes(&three), 3, None),
        ]
    }

    #[test]
    fn every_prefix_of_every_change_repairs_to_a_consistent_store() {
        for (name, writes, seq, after) in changes() {
            for cut in 0..=writes.len() {
                let dir = tempfile::tempdir().unwrap();
                let store = seeded(dir.path());
                let before = store.get_job_by_seq(seq).unwrap().map(|j| j.status);
                store.apply(&writes[..cut]).unwrap();
                drop(store);
                let store = Store::open(dir.path()).unwrap();
                store.recover().unwrap();
                assert_eq!(
                    violations(&store),
                    Vec::<String>::new(),
                    "{name}, cut after {cut} of {} writes",
                    writes.len()
                );
                let now = store.get_job_by_seq(seq).unwrap().map(|j| j.status);
                assert!(
                    now == before || now == after,
                    "{name}, cut after {cut}: job {seq} is {now:?}, neither {before:?} nor {after:?}"
                );
                if cut == writes.len() {
                    assert_eq!(now, after, "{name} written whole");
                }
                // Nothing else changed: the other jobs keep their status.
                for other in (1..=4).filter(|s| *s != seq) {
                    assert_eq!(
                        store.get_job_by_seq(other).unwrap().map(|j| j.status),
                        seeded_status(other),
                        "{name}, cut after {cut}: job {other}"
                    );
                }
                assert_eq!(
                    store.recover().unwrap().fixed,
                    0,
                    "a second pass finds nothing"
                );
            }
        }
    }

    fn seeded_status(seq: u64) -> Option<JobStatus> {
        Some(match seq {
            2 => JobStatus::Running,
            3 => JobStatus::Completed,
            _ => JobStatus::Pending,
        })
    }

    #[test]
    fn a_version_1_store_loses_its_leases_and_its_running_jobs_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let store = seeded(dir.path());
        let db = &store.inner.db;
        db.open_tree("leases")
            .unwrap()
            .insert(2u64.to_be_bytes(), b"{}")
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &1u64.to_be_bytes())
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let names = store.inner.db.tree_names();
        assert!(!names.iter().any(|n| n.as_ref() == b"leases"), "{names:?}");
        let recovery = store.recover().unwrap();
        assert_eq!(violations(&store), Vec::<String>::new());
        assert_eq!(recovery.running, vec![2], "job 2 is reclaimed at start");
        // And a build that knows only version 1 is refused this store.
        let version = store
            .inner
            .db
            .open_tree("meta")
            .unwrap()
            .get("schema_version")
            .unwrap()
            .unwrap();
        assert_eq!(version.as_ref(), &SCHEMA_VERSION.to_be_bytes());
    }

    #[test]
    fn a_record_that_cannot_be_read_is_reported_not_queued_and_does_not_stop_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = seeded(dir.path());
        store
            .inner
            .jobs
            .insert(9u64.to_be_bytes(), b"{not json".as_slice())
            .unwrap();
        store
            .inner
            .ready
            .insert(job(9, "u1", None).ready_key(), &9u64.to_be_bytes())
            .unwrap();
        let recovery = store.recover().unwrap();
        assert_eq!(recovery.corrupt.len(), 1, "{recovery:?}");
        assert!(recovery.corrupt[0].starts_with("jobs/0000000000000009: "));
        assert_eq!(recovery.running, vec![2]);
        assert!(
            store
                .peek_ready(u64::MAX)
                .unwrap()
                .is_some_and(|e| e.seq != 9)
        );
        assert_eq!(store.ready_len(), 2, "jobs 1 and 4, not the unreadable 9");
    }

    #[test]
    fn removing_an_ended_job_leaves_a_key_another_job_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = seeded(dir.path());
        // Job 3 ended with key k3; suppose the key now names job 6.
        let six = job(6, "u2", Some("k3"));
        store
            .inner
            .idempotency
            .insert(idem_key("u2", "k3"), &6u64.to_be_bytes())
            .unwrap();
        store.apply(&insert_writes(&six)[1..]).unwrap();
        let three = ended(running(job(3, "u2", Some("k3"))), JobStatus::Completed);
        store.apply(&removal_writes(&three)).unwrap();
        let holder = store.inner.idempotency.get(idem_key("u2", "k3")).unwrap();
        assert_eq!(holder.as_deref(), Some(&6u64.to_be_bytes()[..]));
    }

    #[test]
    fn a_key_left_by_a_submit_cut_short_does_not_block_the_next_submit() {
        let dir = tempfile::tempdir().unwrap();
        let store = seeded(dir.path());
        let first = job(7, "u1", Some("again"));
        store.apply(&insert_writes(&first)[..1]).unwrap();
        // Before any repair the dangling key is ignored.
        let second = job(8, "u1", Some("again"));
        assert_eq!(store.insert_job(&second).unwrap(), None);
        assert_eq!(
            store
                .insert_job(&job(9, "u1", Some("again")))
                .unwrap()
                .map(|j| j.seq),
            Some(8)
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        store.recover().unwrap();
        assert_eq!(violations(&store), Vec::<String>::new());
    }
}
