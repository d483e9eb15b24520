//! Dead letters: jobs that failed for good, kept on `MCPQ_DLQ` with everything needed to
//! understand and replay them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{job::Job, record::JobError};

/// One dead job, published to `mcpq.dlq.<server>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub v: u32,
    /// The server whose queue the job was taken from.
    pub server: String,
    /// The job id, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// Why the job is dead.
    pub reason: JobError,
    /// The job, when its body could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    /// The original body (lossy UTF-8, cut at 64 KiB) when it could not be read as a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The original message's headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Every attempt's error, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// The job's sequence number in `MCPQ_JOBS`.
    pub stream_seq: u64,
    pub worker_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub dead_at_ms: u64,
}

/// One failed attempt at a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub at_ms: u64,
    pub worker_id: String,
    pub error: JobError,
    /// The backoff the worker chose before the next attempt, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// The attempt failed while the upstream's circuit was open or opening: it did not count
    /// against `retry.maxAttempts` (the job waited for the circuit instead).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl Attempt {
    /// How many of `attempts` count against `retry.maxAttempts`.
    pub fn spent(attempts: &[Attempt]) -> u32 {
        u32::try_from(attempts.iter().filter(|a| !a.held).count()).unwrap_or(u32::MAX)
    }
}
