//! The dispatcher's HTTP jobs API (`/v1/jobs`, `/v1/batches`): request and response bodies.
//! The OpenAPI document built from these types is pinned as `schemas/json/openapi.json`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Job, JobStatus, JsonObject, Lane, McpRequest, now_ms};

/// One tool call to run asynchronously: the body of `POST /v1/jobs`, and one line of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSubmission {
    /// The upstream server's name from the config.
    pub server: String,
    /// The tool's name on that server (not prefixed).
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<JsonObject>,
    /// Submissions with the same key (per server) are one job; also read from the
    /// `Idempotency-Key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Priority lane; the server's configured `priority` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<Lane>,
    /// The job must start within this many milliseconds of submission, or it expires (0 to
    /// 604800000, a week).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<u64>", range(max = 604_800_000u64))]
    pub timeout_ms: Option<serde_json::Value>,
    /// Start no earlier than this (RFC 3339); until then the job's record says `scheduled`.
    /// `timeoutMs` then counts from this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Start no earlier than this long after submission: milliseconds, or a duration such as
    /// `"90s"` or `"2h 30m"`. Not with `runAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<DelayText>")]
    pub delay: Option<serde_json::Value>,
    /// Where to POST the job's record when it ends (completed, failed, dead, cancelled,
    /// expired), signed per Standard Webhooks; http or https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// A delay: milliseconds, or a duration text.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum DelayText {
    Millis(u64),
    Text(String),
}

impl JobSubmission {
    /// The job this submission becomes, with the server's default lane when none is given; or
    /// what is wrong with it (naming the field).
    pub fn to_job(&self, default_lane: Lane) -> Result<Job, crate::check::Invalid> {
        let mut job = Job::new(
            &self.server,
            McpRequest::call_tool(&self.tool, self.arguments.clone()),
        );
        if let Some(key) = &self.idempotency_key {
            crate::check::idempotency_key("idempotencyKey", key)?;
            job = job.with_idempotency_key(key);
        }
        job.lane = self.lane.unwrap_or(default_lane);
        let now = now_ms();
        job.run_at_ms = crate::check::run_at(now, self.run_at.as_deref(), self.delay.as_ref())?;
        job.callback_url = self.callback_url.clone();
        if let Some(timeout) = &self.timeout_ms {
            let wait = crate::check::timeout_ms("timeoutMs", timeout)?;
            let start = job.run_at_ms.unwrap_or(now);
            job.deadline_ms = Some(crate::check::deadline_after(start, wait));
        }
        Ok(job)
    }
}

/// The answer to an accepted submission (`202 Accepted`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The job id: read the job at `/v1/jobs/{id}`.
    pub id: Uuid,
    pub status: JobStatus,
    /// A job with the same idempotency key existed already; this submission added nothing.
    pub duplicate: bool,
}

/// Every error of the HTTP API: a stable code to branch on and a message for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub code: ApiErrorCode,
    pub message: String,
}

/// What went wrong, for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// The body or a parameter is not what the API expects (400).
    BadRequest,
    /// No server of that name is configured (404 on submit: nothing was queued).
    UnknownServer,
    /// The server has no tool of that name (404 on submit: nothing was queued).
    UnknownTool,
    /// No job or batch with that id (never submitted, or its record expired) (404).
    NotFound,
    /// The job has already ended; it cannot be cancelled (409).
    AlreadyEnded,
    /// NATS did not accept the job or answer a read; retry later (503).
    Unavailable,
    /// No credentials, or credentials that are not valid (401, with `WWW-Authenticate`).
    Unauthorized,
    /// The caller may not do this: a tool outside its `allow` list, a missing scope, a `Host`
    /// or `Origin` that is not allowed (403).
    Forbidden,
    /// Over the caller's `callsPerMinute` or `maxInFlight`; retry after `Retry-After` (429).
    RateLimited,
    /// A `/v1` body must be `Content-Type: application/json` (415).
    UnsupportedMediaType,
    /// The request is larger than one job may carry, or a batch has too many lines (413);
    /// nothing was queued.
    TooLarge,
    /// The server's queue holds `maxQueued` jobs already; retry after `Retry-After` (429).
    QueueFull,
    #[serde(other)]
    Unknown,
}

/// The answer to `POST /v1/batches`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchAccepted {
    pub batch_id: Uuid,
    /// Calls in the batch (lines of the body).
    pub total: usize,
}
