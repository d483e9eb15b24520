//! Dead letters for operators: list and show what failed for good, replay it once the cause is
//! fixed, purge what is no longer wanted. Reads and writes `MCPQ_DLQ`.

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use mcpq_schemas::{
    DeadLetter, Job,
    names::{DLQ_STREAM, DLQ_SUBJECTS, dlq_subject},
    now_ms,
};

use crate::publish::{Client, ClientError};

/// What went wrong with the dead-letter stream.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot read the dead-letter stream {DLQ_STREAM}: {0}")]
    Stream(#[source] crate::publish::BoxError),
    #[error(
        "cannot read the dead-letter stream {DLQ_STREAM}: dead letter {seq} is not readable: {source}"
    )]
    NotReadable {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("no dead letter {0} in {DLQ_STREAM} (list them with `mcpq dlq list`)")]
    NotFound(u64),
    #[error(
        "dead letter {0} holds no readable job (its raw body is kept for inspection); it cannot be replayed"
    )]
    NotReplayable(u64),
    #[error(transparent)]
    Submit(#[from] ClientError),
}

/// Which dead letters an operation applies to; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub server: Option<String>,
    pub tool: Option<String>,
    /// An error kind, as in `reason.kind` (`timeout`, `upstream`, `malformed_job`...).
    pub reason: Option<String>,
    /// Only letters that died at or after this unix time in milliseconds.
    pub since_ms: Option<u64>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let tool = letter.job.as_ref().and_then(|j| j.request.tool_name());
        self.server.as_ref().is_none_or(|s| *s == letter.server)
            && self.tool.as_deref().is_none_or(|t| Some(t) == tool)
            && self
                .reason
                .as_deref()
                .is_none_or(|r| r == letter.reason.kind.as_str())
            && self.since_ms.is_none_or(|since| letter.dead_at_ms >= since)
    }
}

/// One stored dead letter and its sequence number in the stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub letter: DeadLetter,
}

/// The dead-letter stream.
pub struct DeadLetters {
    stream: stream::Stream,
}

impl DeadLetters {
    pub async fn open(js: jetstream::Context) -> Result<DeadLetters, DeadLetterError> {
        let stream = js
            .get_stream(DLQ_STREAM)
            .await
            .map_err(|e| DeadLetterError::Stream(e.into()))?;
        Ok(DeadLetters { stream })
    }

    /// Every dead letter matching `filter`, oldest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Stored>, DeadLetterError> {
        let fail = |e: crate::publish::BoxError| DeadLetterError::Stream(e);
        let subject = filter
            .server
            .as_deref()
            .map_or(DLQ_SUBJECTS.to_string(), dlq_subject);
        let mut consumer: jetstream::consumer::Consumer<pull::OrderedConfig> = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(e.into()))?;
        let mut remaining = consumer
            .info()
            .await
            .map_err(|e| fail(e.into()))?
            .num_pending;
        let mut found = Vec::new();
        if remaining == 0 {
            return Ok(found);
        }
        let mut messages = consumer.messages().await.map_err(|e| fail(e.into()))?;
        while remaining > 0 {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(|e| fail(e.into()))?;
            remaining -= 1;
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            match serde_json::from_slice::<DeadLetter>(&message.payload) {
                Ok(letter) if filter.matches(&letter) => found.push(Stored { seq, letter }),
                Ok(_) => {}
                Err(e) => tracing::warn!(seq, error = %e, "unreadable dead letter skipped"),
            }
        }
        Ok(found)
    }

    /// The dead letter at `seq`.
    pub async fn get(&self, seq: u64) -> Result<Stored, DeadLetterError> {
        let message = self
            .stream
            .get_raw_message(seq)
            .await
            .map_err(|_| DeadLetterError::NotFound(seq))?;
        let letter = serde_json::from_slice(&message.payload)
            .map_err(|source| DeadLetterError::NotReadable { seq, source })?;
        Ok(Stored { seq, letter })
    }

    /// Publishes the dead letter's job again (fresh attempt count, no deadline, linked to the
    /// letter by `Mcpq-Replay-Of`). The letter stays until purged.
    pub async fn replay(&self, stored: &Stored, client: &Client) -> Result<Job, DeadLetterError> {
        let mut job = stored
            .letter
            .job
            .clone()
            .ok_or(DeadLetterError::NotReplayable(stored.seq))?;
        job.deadline_ms = None;
        job.submitted_at_ms = now_ms();
        client.replay(&job, stored.seq).await?;
        Ok(job)
    }

    /// Deletes the dead letter at `seq`; false when there was none.
    pub async fn delete(&self, seq: u64) -> Result<bool, DeadLetterError> {
        self.stream
            .delete_message(seq)
            .await
            .map_err(|e| DeadLetterError::Stream(e.into()))
    }
}
