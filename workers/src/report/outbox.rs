//! Everything a worker writes about a job: the record in KV, the reply on the caller's inbox,
//! the dead letter on `MCPQ_DLQ`.

use async_nats::{
    HeaderMap,
    jetstream::{self, kv},
};
use mcpq_schemas::{
    DeadLetter, JobRecord, LogEvent, ProgressEvent, Reply,
    names::{EVENT_LOG, EVENT_PROGRESS, EVENT_REPLY, HDR_EVENT, HDR_JOB_ID, dlq_subject},
};

/// A write that failed; the message is then left un-acked so it comes back.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub(crate) struct WriteError {
    what: &'static str,
    reason: String,
}

fn fail(what: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> WriteError {
    move |e| WriteError {
        what,
        reason: e.to_string(),
    }
}

/// What a record write expects to find, so that it never overwrites another attempt's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// No record yet.
    Absent,
    /// The record at this revision (the last this attempt read or wrote).
    Revision(u64),
}

#[derive(Clone)]
pub(crate) struct Outbox {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub results: jetstream::kv::Store,
    /// Results too large for a message, by job id.
    pub blobs: jetstream::object_store::ObjectStore,
}

/// Replies and events go to reply inboxes only: whatever a job says, the worker's own rights on
/// NATS are never lent to it.
fn inbox_only(subject: &str) -> Result<(), WriteError> {
    if mcpq_schemas::names::is_reply_inbox(subject) {
        Ok(())
    } else {
        Err(fail("publish to the caller's inbox")(&format!(
            "{subject:?} is not a reply inbox (a subject under _INBOX.)"
        )))
    }
}

/// Room kept in a message for headers and the envelope around a result (a quarter of the
/// message, on a server that takes small ones).
const HEADROOM: usize = 8 * 1024;

impl Outbox {
    /// The most bytes a result may have to travel inline in a record or reply: the NATS
    /// server's `max_payload`, less room for the envelope.
    pub(crate) fn inline_limit(&self) -> usize {
        let most = self.client.server_info().max_payload;
        most.saturating_sub(HEADROOM.min(most / 4))
    }

    /// Stores a result too large for a message as object `<job id>` of `mcpq_blobs`.
    pub(crate) async fn blob(
        &self,
        job_id: &uuid::Uuid,
        bytes: &[u8],
    ) -> Result<mcpq_schemas::BlobRef, WriteError> {
        let name = job_id.to_string();
        let mut reader = bytes;
        self.blobs
            .put(name.as_str(), &mut reader)
            .await
            .map_err(|e| fail("store a large result")(&e))?;
        Ok(mcpq_schemas::BlobRef {
            bucket: mcpq_schemas::names::BLOBS_BUCKET.into(),
            name,
            size: bytes.len() as u64,
        })
    }

    /// Stores the job's record (durably: waits for the write to be acknowledged) unless
    /// `expect` says another write came first: then `Ok(None)`. The new revision otherwise.
    /// With a `ttl`, the record lives that long (`Nats-TTL`) instead of the bucket's
    /// `resultTtl`.
    pub(crate) async fn record(
        &self,
        record: &JobRecord,
        expect: Expect,
        ttl: Option<std::time::Duration>,
    ) -> Result<Option<u64>, WriteError> {
        let bytes = serde_json::to_vec(record).map_err(|e| fail("encode job record")(&e))?;
        let key = record.job_id.to_string();
        if let Some(ttl) = ttl {
            match self.record_for(&key, bytes.clone(), expect, ttl).await {
                // A bucket that refuses per-message TTLs (laid out by an older mcpq, say)
                // keeps the record for its own age: an outcome is never lost over its lifetime.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot give a job record its own time to live; it is kept for resultTtl");
                }
                done => return done,
            }
        }
        let written = match expect {
            Expect::Absent => match self.results.create(key, bytes.into()).await {
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
                other => other.map_err(|e| e.to_string()),
            },
            Expect::Revision(revision) => {
                match self.results.update(key, bytes.into(), revision).await {
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        return Ok(None);
                    }
                    other => other.map_err(|e| e.to_string()),
                }
            }
        };
        written
            .map(Some)
            .map_err(|reason| fail("write job record")(&reason))
    }

    /// [`Outbox::record`] with a time to live of its own: published on the bucket's subject
    /// with `Nats-TTL` (whole seconds), the expected revision as
    /// `Nats-Expected-Last-Subject-Sequence`.
    async fn record_for(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expect: Expect,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, WriteError> {
        use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_TTL};
        let prefix = self
            .results
            .put_prefix
            .as_ref()
            .unwrap_or(&self.results.prefix);
        let subject = format!("{prefix}{key}");
        let mut expect = expect;
        for _ in 0..2 {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_TTL, ttl.as_secs().max(1).to_string().as_str());
            match expect {
                Expect::Absent => headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0"),
                Expect::Revision(revision) => headers.insert(
                    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    revision.to_string().as_str(),
                ),
            }
            let published = self
                .js
                .publish_with_headers(subject.clone(), headers, bytes.clone().into())
                .await
                .map_err(|e| fail("write job record")(&e))?
                .await;
            match published {
                Ok(ack) => return Ok(Some(ack.sequence)),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    // "No record" also holds over a deleted one: its marker is the last entry.
                    let deleted = match (expect, self.results.entry(key).await) {
                        (Expect::Absent, Ok(Some(entry)))
                            if entry.operation != kv::Operation::Put =>
                        {
                            Some(entry.revision)
                        }
                        _ => None,
                    };
                    match deleted {
                        Some(revision) => expect = Expect::Revision(revision),
                        None => return Ok(None),
                    }
                }
                Err(e) => return Err(fail("write job record")(&e)),
            }
        }
        Ok(None)
    }

    /// The stored record of a job and its revision, if it has one.
    pub(crate) async fn entry(
        &self,
        job_id: &uuid::Uuid,
    ) -> Result<Option<(JobRecord, u64)>, WriteError> {
        let entry = self
            .results
            .entry(job_id.to_string())
            .await
            .map_err(|e| fail("read job record")(&e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| Some((serde_json::from_slice(&e.value).ok()?, e.revision))))
    }

    /// Waits for the job's record to say it ended, at most `within`.
    pub(crate) async fn ended(
        &self,
        job_id: &uuid::Uuid,
        within: std::time::Duration,
    ) -> Option<JobRecord> {
        use futures::StreamExt;
        let mut updates = self
            .results
            .watch_with_history(job_id.to_string())
            .await
            .ok()?;
        let ended = async {
            while let Some(Ok(entry)) = updates.next().await {
                if let Ok(record) = serde_json::from_slice::<JobRecord>(&entry.value)
                    && record.status.is_terminal()
                {
                    return Some(record);
                }
            }
            None
        };
        tokio::time::timeout(within, ended).await.ok().flatten()
    }

    /// Publishes the reply to the caller's inbox, when the caller gave one.
    pub(crate) async fn reply(
        &self,
        reply_to: Option<&str>,
        reply: &Reply,
    ) -> Result<(), WriteError> {
        let Some(inbox) = reply_to else { return Ok(()) };
        inbox_only(inbox)?;
        let bytes = serde_json::to_vec(reply).map_err(|e| fail("encode reply")(&e))?;
        let mut headers = HeaderMap::new();
        headers.insert(HDR_EVENT, EVENT_REPLY);
        headers.insert(HDR_JOB_ID, reply.job_id.to_string().as_str());
        self.client
            .publish_with_headers(inbox.to_string(), headers, bytes.into())
            .await
            .map_err(|e| fail("publish reply")(&e))
    }

    /// Publishes a progress event to the caller's inbox.
    pub(crate) async fn progress(
        &self,
        inbox: &str,
        event: &ProgressEvent,
    ) -> Result<(), WriteError> {
        self.event(inbox, EVENT_PROGRESS, &event.job_id, event)
            .await
    }

    /// Publishes a log event to the caller's inbox.
    pub(crate) async fn log(&self, inbox: &str, event: &LogEvent) -> Result<(), WriteError> {
        self.event(inbox, EVENT_LOG, &event.job_id, event).await
    }

    /// Publishes `body` to the caller's inbox as an event of `kind` (`Mcpq-Event`).
    async fn event(
        &self,
        inbox: &str,
        kind: &'static str,
        job_id: &uuid::Uuid,
        body: &impl serde::Serialize,
    ) -> Result<(), WriteError> {
        inbox_only(inbox)?;
        let bytes = serde_json::to_vec(body).map_err(|e| fail("encode an event")(&e))?;
        let mut headers = HeaderMap::new();
        headers.insert(HDR_EVENT, kind);
        headers.insert(HDR_JOB_ID, job_id.to_string().as_str());
        self.client
            .publish_with_headers(inbox.to_string(), headers, bytes.into())
            .await
            .map_err(|e| fail("publish an event")(&e))
    }

    /// Stores a dead letter, waiting for the stream to acknowledge it.
    pub(crate) async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), WriteError> {
        let bytes = serde_json::to_vec(letter).map_err(|e| fail("encode dead letter")(&e))?;
        self.js
            .publish(dlq_subject(&letter.server), bytes.into())
            .await
            .map_err(|e| fail("publish dead letter")(&e))?
            .await
            .map_err(|e| fail("store dead letter")(&e))?;
        Ok(())
    }
}
