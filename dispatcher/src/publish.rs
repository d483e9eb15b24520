//! The embeddable client: publish jobs to JetStream and await their replies, without HTTP.
//! The MCP endpoints use it, `mcpq call` uses it, and so can any Rust pipeline.

use std::time::Duration;

use async_nats::{HeaderMap, jetstream};
use futures::StreamExt;
use mcpq_schemas::{
    Job, JobRecord, Reply,
    names::{
        HDR_JOB_ID, HDR_MSG_ID, HDR_REPLAY_OF, HDR_REPLY_TO, HDR_TRACEPARENT, RESULTS_BUCKET,
        job_subject,
    },
};
use uuid::Uuid;

use crate::replies::Inbox;

/// Why a job could not be submitted or answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot subscribe to the reply inbox: {0}")]
    Inbox(String),
    #[error("job {job_id}: cannot publish to {subject}: {reason}")]
    Publish {
        job_id: Uuid,
        subject: String,
        reason: String,
    },
    #[error(
        "job {job_id}: no reply within {timeout:?}; the job may still complete (look it up with its id)"
    )]
    Timeout { job_id: Uuid, timeout: Duration },
    #[error("job {job_id}: the reply inbox closed")]
    InboxClosed { job_id: Uuid },
    #[error("job {job_id}: cannot read its record: {reason}")]
    Record { job_id: Uuid, reason: String },
}

/// A handle on mcpq for submitting jobs; cheap to clone.
#[derive(Clone)]
pub struct Client {
    js: jetstream::Context,
    inbox: Inbox,
}

/// What JetStream said about a submitted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub stream_seq: u64,
    /// The idempotency key was seen inside the duplicate window: this publish was dropped.
    pub duplicate: bool,
}

impl Client {
    /// A client on an open NATS connection; subscribes this process's reply inbox.
    pub async fn new(nats: async_nats::Client) -> Result<Client, ClientError> {
        let inbox = Inbox::open(&nats)
            .await
            .map_err(|e| ClientError::Inbox(e.to_string()))?;
        Ok(Client {
            js: jetstream::new(nats),
            inbox,
        })
    }

    /// Publishes `job` durably (waits for the stream's acknowledgement), with no reply inbox:
    /// its outcome is read later from its record (`record`, `wait`).
    pub async fn submit(&self, job: &Job) -> Result<Submitted, ClientError> {
        self.publish(job, None, job.msg_id(), None).await
    }

    /// Publishes `job` again from the dead letter at `dead_letter_seq`: the same job id (its
    /// record follows the new run), a fresh attempt count, and the link in `Mcpq-Replay-Of`.
    pub async fn replay(&self, job: &Job, dead_letter_seq: u64) -> Result<Submitted, ClientError> {
        let msg_id = format!("{}:replay:{dead_letter_seq}", job.id);
        self.publish(job, None, msg_id, Some(dead_letter_seq)).await
    }

    async fn publish(
        &self,
        job: &Job,
        reply_to: Option<String>,
        msg_id: String,
        replay_of: Option<u64>,
    ) -> Result<Submitted, ClientError> {
        let subject = job_subject(&job.server, job.lane);
        let fail = |reason: String| ClientError::Publish {
            job_id: job.id,
            subject: subject.clone(),
            reason: if reason.contains("no stream found") {
                format!(
                    "{reason} (mcpq's streams do not exist yet: start `mcpq up`, a dispatcher or a worker first)"
                )
            } else {
                reason
            },
        };
        let payload = serde_json::to_vec(job).map_err(|e| fail(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(HDR_MSG_ID, msg_id.as_str());
        if let Some(seq) = replay_of {
            headers.insert(HDR_REPLAY_OF, seq.to_string().as_str());
        }
        headers.insert(HDR_JOB_ID, job.id.to_string().as_str());
        if let Some(inbox) = &reply_to {
            headers.insert(HDR_REPLY_TO, inbox.as_str());
        }
        if let Some(traceparent) = &job.traceparent {
            headers.insert(HDR_TRACEPARENT, traceparent.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| fail(e.to_string()))?
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(Submitted {
            stream_seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Submits `job` and waits at most `timeout` for its reply. A duplicate of a job submitted
    /// before (same idempotency key) is not run again: the answer comes from the first one's
    /// record.
    pub async fn call(&self, job: &Job, timeout: Duration) -> Result<Reply, ClientError> {
        let waiting = self.inbox.expect();
        let reply_to = Some(waiting.subject.clone());
        if self
            .publish(job, reply_to, job.msg_id(), None)
            .await?
            .duplicate
        {
            drop(waiting);
            return self.wait(job.id, timeout).await;
        }
        match tokio::time::timeout(timeout, waiting.reply()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(ClientError::InboxClosed { job_id: job.id }),
            Err(_) => Err(ClientError::Timeout {
                job_id: job.id,
                timeout,
            }),
        }
    }

    /// Waits at most `timeout` for the job's record to say it ended, and answers from it.
    pub async fn wait(&self, job_id: Uuid, timeout: Duration) -> Result<Reply, ClientError> {
        let fail = |reason: String| ClientError::Record { job_id, reason };
        let bucket = self.results(job_id).await?;
        let mut updates = bucket
            .watch_with_history(job_id.to_string())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let ended = async {
            while let Some(entry) = updates.next().await {
                let Ok(entry) = entry else { continue };
                if let Ok(record) = serde_json::from_slice::<JobRecord>(&entry.value)
                    && let Some(reply) = record.to_reply()
                {
                    return Some(reply);
                }
            }
            None
        };
        match tokio::time::timeout(timeout, ended).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(ClientError::InboxClosed { job_id }),
            Err(_) => Err(ClientError::Timeout { job_id, timeout }),
        }
    }

    /// The results bucket (looked up per use: a pipeline's client may start before the bucket
    /// exists).
    async fn results(&self, job_id: Uuid) -> Result<jetstream::kv::Store, ClientError> {
        self.js
            .get_key_value(RESULTS_BUCKET)
            .await
            .map_err(|e| ClientError::Record {
                job_id,
                reason: e.to_string(),
            })
    }

    /// The stored record of a job, if it has one yet.
    pub async fn record(&self, job_id: Uuid) -> Result<Option<JobRecord>, ClientError> {
        let fail = |reason: String| ClientError::Record { job_id, reason };
        let bucket = self.results(job_id).await?;
        match bucket
            .get(job_id.to_string())
            .await
            .map_err(|e| fail(e.to_string()))?
        {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| fail(e.to_string())),
        }
    }
}
