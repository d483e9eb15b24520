//! Batches: many calls submitted together, read back together in input order.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{JobError, JobRecord, JobStatus};

/// A batch in KV `mcpq_batches`, keyed by batch id: its jobs in input order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    pub v: u32,
    pub batch_id: Uuid,
    pub created_at_ms: u64,
    pub jobs: Vec<Uuid>,
    /// The principal the batch belongs to (see [`crate::Job::principal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

/// How far a batch has come: job counts by status (`GET /v1/batches/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatus {
    pub batch_id: Uuid,
    pub total: usize,
    /// Waiting in a queue, or for their `runAt`.
    pub queued: usize,
    pub running: usize,
    pub retrying: usize,
    pub completed: usize,
    /// Ended without a result: failed, dead, cancelled or expired.
    pub failed: usize,
    /// Every job has ended.
    pub done: bool,
}

impl BatchStatus {
    /// Counts `statuses` (one per job; `None` for a job with no record yet, counted as queued).
    pub fn count(batch_id: Uuid, statuses: impl IntoIterator<Item = Option<JobStatus>>) -> Self {
        let mut status = BatchStatus {
            batch_id,
            ..Default::default()
        };
        for job in statuses {
            status.total += 1;
            match job.unwrap_or(JobStatus::Queued) {
                JobStatus::Scheduled | JobStatus::Queued | JobStatus::Unknown => status.queued += 1,
                JobStatus::Running => status.running += 1,
                JobStatus::Retrying => status.retrying += 1,
                JobStatus::Completed => status.completed += 1,
                JobStatus::Failed | JobStatus::Dead | JobStatus::Cancelled | JobStatus::Expired => {
                    status.failed += 1
                }
            }
        }
        status.done = status.completed + status.failed == status.total;
        status
    }
}

/// One line of a batch's results, in the order of the batch's input lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchResultLine {
    /// The input line's position, from 0.
    pub index: usize,
    pub id: Uuid,
    pub status: JobStatus,
    /// The tool's result, when `status` is `completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

impl BatchResultLine {
    /// The line for input `index`, from its job's record (`None`: no record yet).
    pub fn new(index: usize, id: Uuid, record: Option<&JobRecord>) -> Self {
        match record {
            Some(record) => BatchResultLine {
                index,
                id,
                status: record.status,
                result: record.result.clone(),
                error: record.error.clone(),
            },
            None => BatchResultLine {
                index,
                id,
                status: JobStatus::Queued,
                result: None,
                error: None,
            },
        }
    }
}
