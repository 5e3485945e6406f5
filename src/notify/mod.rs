//! The `Notifier`: turns job transitions a user should know about into notifications — a
//! persisted per-user feed (with read marks), a live stream for server-sent events, and, when
//! the job asked for one, a signed webhook delivered with retries (`webhook`).
//!
//! The queue casts every transition here; the notifier decides which ones are worth telling
//! (queued while the provider is degraded, started, and every end), tells each once per job and
//! kind, and records each webhook delivery's attempts on the notification. It never changes a
//! job.

pub mod webhook;

use std::collections::HashMap;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock::now_ms;
use crate::job::{Job, JobStatus};
use crate::store::Store;

/// One notification, as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub user_id: String,
    pub job_id: String,
    /// `queued`, `started`, `completed`, `failed`, `dead` or `cancelled`.
    pub kind: String,
    pub message: String,
    pub at_ms: u64,
    #[serde(default)]
    pub read: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookRecord>,
}

/// What happened to a notification's webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub url: String,
    /// `pending`, `delivered` or `gave_up`.
    pub outcome: String,
    pub attempts: Vec<WebhookAttempt>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookAttempt {
    pub at_ms: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Notifier settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySettings {
    pub webhook_secret: Option<String>,
    pub webhook_attempts: u32,
    pub webhook_backoff: Duration,
    pub webhook_timeout: Duration,
}

pub enum NotifierMsg {
    /// A job changed; the notifier decides whether anyone should hear of it.
    Job(Box<Job>),
    /// A webhook delivery finished.
    Delivered { key: Vec<u8>, record: WebhookRecord },
}

pub struct NotifierArgs {
    pub store: Store,
    pub settings: NotifySettings,
    pub live: broadcast::Sender<Notification>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

pub struct NotifierState {
    store: Store,
    settings: NotifySettings,
    live: broadcast::Sender<Notification>,
    http: reqwest::Client,
    /// The last kind told per job, so that each is told once; dropped when the job ends.
    told: HashMap<String, &'static str>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// The kind of notification a job's state calls for, if any.
fn kind_of(job: &Job) -> Option<(&'static str, String)> {
    Some(match job.status {
        JobStatus::Pending => {
            let reason = job.reason.as_deref()?;
            let degraded = reason.contains("provider unavailable")
                || reason.contains("quota")
                || reason.contains("cooling down");
            if !degraded {
                return None;
            }
            (
                "queued",
                format!("queued, will run when the provider recovers ({reason})"),
            )
        }
        JobStatus::Running => ("started", "started".to_string()),
        JobStatus::Completed => ("completed", "completed".to_string()),
        JobStatus::Failed => (
            "failed",
            format!(
                "failed: {}",
                job.error
                    .as_ref()
                    .map(|e| e.message.as_str())
                    .unwrap_or("unknown error")
            ),
        ),
        JobStatus::Dead => (
            "dead",
            format!(
                "gave up after {} runs: {}",
                job.attempts.len(),
                job.error
                    .as_ref()
                    .map(|e| e.message.as_str())
                    .unwrap_or("unknown error")
            ),
        ),
        JobStatus::Cancelled => ("cancelled", "cancelled".to_string()),
    })
}

pub struct NotifierActor;

impl Actor for NotifierActor {
    type Msg = NotifierMsg;
    type State = NotifierState;
    type Arguments = NotifierArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<NotifierMsg>,
        args: NotifierArgs,
    ) -> Result<NotifierState, ActorProcessingErr> {
        let http = reqwest::Client::builder()
            // A webhook must not be able to bounce us to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(NotifierState {
            store: args.store,
            settings: args.settings,
            live: args.live,
            http,
            told: HashMap::new(),
            metrics: args.metrics,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<NotifierMsg>,
        msg: NotifierMsg,
        state: &mut NotifierState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NotifierMsg::Job(job) => state.job(&myself, &job)?,
            NotifierMsg::Delivered { key, record } => {
                state
                    .store
                    .update_notification(&key, |n| n.webhook = Some(record.clone()))?;
            }
        }
        Ok(())
    }
}

impl NotifierState {
    fn job(&mut self, myself: &ActorRef<NotifierMsg>, job: &Job) -> Result<(), ActorProcessingErr> {
        let Some((kind, message)) = kind_of(job) else {
            return Ok(());
        };
        if self.told.get(&job.id) == Some(&kind) {
            return Ok(());
        }
        if job.status.is_terminal() {
            self.told.remove(&job.id);
        } else {
            self.told.insert(job.id.clone(), kind);
        }
        let seq = self.store.next_seq()?;
        let n = Notification {
            id: format!("ntf-{seq:016x}"),
            user_id: job.spec.user_id.clone(),
            job_id: job.id.clone(),
            kind: kind.into(),
            message,
            at_ms: now_ms(),
            read: false,
            webhook: job.spec.webhook.as_ref().map(|url| WebhookRecord {
                url: url.clone(),
                outcome: "pending".into(),
                attempts: Vec::new(),
            }),
        };
        let key = self.store.insert_notification(&n.user_id, seq, &n)?;
        tracing::info!(job_id = %job.id, user_id = %n.user_id, kind, "notification");
        self.metrics.inc(
            "sandwarden_notifications_total",
            vec![("kind", kind.into())],
        );
        let _ = self.live.send(n.clone());
        if let Some(url) = job.spec.webhook.clone() {
            let body = serde_json::json!({
                "event": n.kind, "notification_id": n.id, "job_id": n.job_id,
                "user_id": n.user_id, "status": job.status.as_str(), "message": n.message,
                "at": crate::clock::rfc3339(n.at_ms),
            });
            let policy = webhook::WebhookPolicy {
                max_attempts: self.settings.webhook_attempts,
                base: self.settings.webhook_backoff,
                cap: Duration::from_secs(60),
                timeout: self.settings.webhook_timeout,
            };
            let secret = self.settings.webhook_secret.clone().map(String::into_bytes);
            let http = self.http.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let d =
                    webhook::deliver(&http, &url, &body, secret.as_deref(), &policy, now_ms).await;
                let record = WebhookRecord {
                    url,
                    outcome: match d.outcome {
                        webhook::DeliveryOutcome::Delivered => "delivered".into(),
                        webhook::DeliveryOutcome::GaveUp => "gave_up".into(),
                    },
                    attempts: d
                        .attempts
                        .into_iter()
                        .map(|a| WebhookAttempt {
                            at_ms: a.at_ms,
                            status: a.status,
                            error: a.error,
                            duration_ms: a.duration_ms,
                        })
                        .collect(),
                };
                let _ = me.cast(NotifierMsg::Delivered { key, record });
            });
        }
        Ok(())
    }
}

/// The queue's side of the notifier.
#[derive(Clone)]
pub struct NotifierLink(pub ActorRef<NotifierMsg>);

impl NotifierLink {
    pub fn job(&self, job: &Job) {
        let _ = self.0.cast(NotifierMsg::Job(Box::new(job.clone())));
    }
}
