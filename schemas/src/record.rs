//! What comes back: the reply on the caller's inbox, the job record in KV, and job errors.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The final answer to a job, published with core NATS to the job's `Mcpq-Reply-To` subject
/// (header `Mcpq-Event: reply`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    /// Envelope version.
    pub v: u32,
    pub job_id: Uuid,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Set when the result was too large for a NATS message: it is the object named here in
    /// the Object Store, and `result` is `null`. Readers fetch it (see [`BlobRef`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<BlobRef>,
}

/// Where a result too large for one NATS message is kept: object `name` of the JetStream
/// Object Store bucket `bucket` (`mcpq_blobs`), holding the MCP result as JSON, `size` bytes.
/// It lives as long as the job's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlobRef {
    pub bucket: String,
    /// The job id.
    pub name: String,
    pub size: u64,
}

/// How a job ended, as seen by its caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// The upstream answered; `result` is its MCP result, unchanged. A tool result with
    /// `isError: true` is an `ok` outcome: the tool ran and reported a failure.
    Ok { result: serde_json::Value },
    /// The job could not be executed, or the upstream answered with a JSON-RPC error.
    Error { error: JobError },
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobError {
    pub kind: ErrorKind,
    /// What went wrong, for a person.
    pub message: String,
    /// The JSON-RPC error code, when the upstream (or mcpq acting as MCP server) gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// The JSON-RPC error data, when the upstream gave some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl JobError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
            data: None,
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// A closed set of failure kinds that callers branch on. Unknown kinds from newer peers read as
/// `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The job message could not be read (bad JSON, wrong version, missing fields).
    MalformedJob,
    /// The server has no such tool.
    UnknownTool,
    /// The upstream answered with a JSON-RPC error.
    Upstream,
    /// The upstream could not be reached or its connection broke.
    UpstreamUnavailable,
    /// The upstream answered HTTP 429 Too Many Requests.
    RateLimited,
    /// The upstream did not answer in time.
    Timeout,
    /// The job's deadline passed before it could be started.
    Expired,
    /// The upstream asked the caller something (sampling, elicitation, roots) that the caller
    /// could not or did not answer.
    NoAnswer,
    /// The upstream's result does not fit in one NATS message; the call is not run again.
    TooLarge,
    /// Someone cancelled the job (MCP `notifications/cancelled` or `tasks/cancel`,
    /// `DELETE /v1/jobs/{id}`, `mcpq job cancel`).
    Cancelled,
    /// mcpq itself failed.
    Internal,
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MalformedJob => "malformed_job",
            ErrorKind::UnknownTool => "unknown_tool",
            ErrorKind::Upstream => "upstream",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Expired => "expired",
            ErrorKind::NoAnswer => "no_answer",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}

/// Where a job stands. Stored in its [`JobRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waits for its `runAt`: not in a lane yet (a JetStream schedule holds it).
    Scheduled,
    Queued,
    Running,
    Retrying,
    Completed,
    Failed,
    Dead,
    Cancelled,
    Expired,
    #[serde(other)]
    Unknown,
}

impl JobStatus {
    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed
                | JobStatus::Failed
                | JobStatus::Dead
                | JobStatus::Cancelled
                | JobStatus::Expired
        )
    }
}

/// A job's record in the `mcpq_results` KV bucket, keyed by job id. Written by workers; read by
/// dispatchers, `mcpq job`, and pipelines that come back for a result later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub v: u32,
    pub job_id: Uuid,
    pub server: String,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    pub status: JobStatus,
    /// Attempts made so far (deliveries that reached a worker).
    pub attempts: u32,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    /// The MCP result, when `status` is `completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, when the job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// Every failed attempt so far, oldest first (a job that succeeded after retries keeps them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<crate::Attempt>,

    /// The latest progress the upstream reported while the job ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The worker that wrote this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The principal the job belongs to (see [`crate::Job::principal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Set instead of `result` when the result was too large for a NATS message (see
    /// [`BlobRef`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<BlobRef>,
    /// The stream sequence of the message that carries the job: set once it is published, and
    /// by the worker whose attempt holds the job (`running`). Another message with the same
    /// job id (a resubmission published again) is a duplicate and never runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_seq: Option<u64>,
    /// Deliveries handed back without an attempt: the upstream's circuit was open, or it had
    /// asked to be left alone (429). With the failed attempts, they explain every delivery; a
    /// delivery that nothing explains was held by a worker that stopped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holds: u32,
    /// The call became an MCP task (its caller stopped waiting and will poll): the record is
    /// kept for `nats.resultTtl` whatever kind of call it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub task: bool,
    /// Attempts that found the job held by an attempt that no longer ran it (its worker
    /// stopped mid-call) and took it over: a job that keeps taking its workers down ends after
    /// a few.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub takeovers: u32,
    /// Questions of the upstream waiting for answers, for a caller that will not be asked on
    /// an inbox (a task): the caller reads them here and answers to `answerTo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<PendingInput>,
    /// When the job may start (Unix ms), for a job submitted for later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<u64>,
    /// The recurring schedule the job is a tick of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    /// Where the record is POSTed when the job ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// The upstream's questions a job's record shows while they wait (see [`JobRecord::input`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingInput {
    /// The questions' id: what an [`InputAnswer`] names.
    pub id: String,
    /// The questions not answered yet, each `{method, params}`, by key.
    pub requests: serde_json::Map<String, serde_json::Value>,
    /// Where an [`InputAnswer`] goes (a NATS request): its `result` is answers by key, some or
    /// all of them; the worker replies once the record shows what is still unanswered.
    pub answer_to: String,
}

/// The upstream made the call a task (header `Mcpq-Event: task`); sent before the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    pub v: u32,
    pub job_id: Uuid,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl JobRecord {
    /// The record of a job that was just accepted and waits in its queue (`scheduled` until its
    /// `runAt`).
    pub fn queued(job: &crate::Job) -> Self {
        let now = crate::now_ms();
        JobRecord {
            v: crate::names::ENVELOPE_VERSION,
            job_id: job.id,
            server: job.server.clone(),
            method: job.request.method.clone(),
            tool: job.request.tool_name().map(str::to_string),
            status: if job.is_early(now) {
                JobStatus::Scheduled
            } else {
                JobStatus::Queued
            },
            attempts: 0,
            submitted_at_ms: job.submitted_at_ms,
            updated_at_ms: now,
            result: None,
            error: None,
            failed_attempts: Vec::new(),
            progress: None,
            worker_id: None,
            principal: job.principal.clone(),
            result_ref: None,
            stream_seq: None,
            holds: 0,
            task: false,
            takeovers: 0,
            input: None,
            run_at_ms: job.run_at_ms,
            schedule_id: job.schedule_id,
            callback_url: job.callback_url.clone(),
        }
    }

    /// The reply a caller gets for this record, if the job has ended.
    pub fn to_reply(&self) -> Option<Reply> {
        let outcome = match (self.status, &self.result, &self.error) {
            (JobStatus::Completed, Some(result), _) => Outcome::Ok {
                result: result.clone(),
            },
            (JobStatus::Completed, None, _) if self.result_ref.is_some() => Outcome::Ok {
                result: serde_json::Value::Null,
            },
            (status, _, Some(error)) if status.is_terminal() => Outcome::Error {
                error: error.clone(),
            },
            _ => return None,
        };
        Some(Reply {
            v: crate::names::ENVELOPE_VERSION,
            job_id: self.job_id,
            outcome,
            result_ref: self.result_ref.clone(),
        })
    }
}

/// Progress an upstream reported during a call (MCP `notifications/progress`, without the
/// token: mcpq maps tokens to jobs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Increases with each event; may be fractional.
    pub progress: f64,
    /// The value `progress` will reach at the end, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A progress event, published with core NATS to the job's `Mcpq-Reply-To` subject
/// (header `Mcpq-Event: progress`) before the reply; events of one job arrive in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressEvent {
    pub v: u32,
    pub job_id: Uuid,
    #[serde(flatten)]
    pub progress: Progress,
}

/// A log message an upstream sent during a call (MCP `notifications/message`), for a caller
/// that asked for log messages (the job's `logLevel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogMessage {
    /// `debug`, `info`, `notice`, `warning`, `error`, `critical`, `alert` or `emergency`.
    pub level: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<String>,
    /// Anything JSON, as the upstream sent it.
    pub data: serde_json::Value,
}

/// A log event, published with core NATS to the job's `Mcpq-Reply-To` subject (header
/// `Mcpq-Event: log`) before the reply, in order with the job's progress events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEvent {
    pub v: u32,
    pub job_id: Uuid,
    #[serde(flatten)]
    pub message: LogMessage,
}

/// A request the upstream made of the caller during a call (`sampling/createMessage`,
/// `elicitation/create`, `roots/list`), published with core NATS as a *request* to the job's
/// `Mcpq-Reply-To` subject (header `Mcpq-Event: input`), in order with progress and log events.
///
/// The receiver replies to the event message at once: an empty body or `{"ok": true}` takes
/// the question, `{"ok": false, "reason": "..."}` refuses it (the upstream is then told why).
/// It answers later by sending an [`InputAnswer`] as a request to `answerTo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InputRequestEvent {
    pub v: u32,
    pub job_id: Uuid,
    /// Names this question among the job's questions.
    pub id: String,
    /// The MCP method the upstream called, e.g. `sampling/createMessage`.
    pub method: String,
    /// Its params, exactly as the upstream sent them.
    #[serde(default)]
    pub params: serde_json::Value,
    /// A 2026-07-28 upstream's round of questions (its `input_required` result), each
    /// `{method, params}` under the upstream's own key; `method` and `params` then repeat the
    /// first. The answer's `result` is the caller's `inputResponses` by the same keys, passed
    /// to the upstream as they came (a key missing, one too many, an answer of the wrong shape
    /// are the upstream's to judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<serde_json::Map<String, serde_json::Value>>,
    /// Where to send the answer: `mcpq.input.<job id>.<id>`.
    pub answer_to: String,
}

/// The caller's answer to an [`InputRequestEvent`], sent as a request to its `answerTo`; the
/// worker replies `{"ok": true}` once it has it (no responder: the job no longer waits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InputAnswer {
    pub v: u32,
    pub job_id: Uuid,
    pub id: String,
    /// The MCP result for the upstream (e.g. a `CreateMessageResult`), or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// why the caller will not answer: a JSON-RPC error `{code, message, data?}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// Send the rest of the job's events and its reply here from now on (a caller that
    /// answers from another process than the one that asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// What a receiver says to an [`InputRequestEvent`] or an [`InputAnswer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InputAck {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A resource of an upstream changed: published with core NATS to
/// `mcpq.events.<server>.resource_updated` by the worker whose upstream session is subscribed to
/// it (a `resources/subscribe` job), for every dispatcher with a client subscribed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceUpdatedEvent {
    pub v: u32,
    pub server: String,
    /// The upstream's URI of the resource, as it sent it.
    pub uri: String,
}

/// A request to cancel a job, stored in KV `mcpq_cancels` under the job id. Workers watch the
/// bucket: a queued job is then never started, a running one has its upstream request cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    pub v: u32,
    pub job_id: Uuid,
    pub server: String,
    pub at_ms: u64,
    /// Why, for the record (e.g. "requested by DELETE /v1/jobs").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A job ended: what `mcpq.done.<server>` carries and what a callback POSTs (Standard Webhooks
/// payload shape: `type`, `timestamp`, `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DoneEvent {
    pub v: u32,
    /// `job.ended`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the job ended (RFC 3339).
    pub timestamp: String,
    /// The job's record as it ended. A result too large for a message is not inlined: read it
    /// at `link` (`resultRef` says where it is kept).
    pub data: JobRecord,
    /// Where the record is read over HTTP: `/v1/jobs/<job id>` on any dispatcher.
    pub link: String,
}

impl DoneEvent {
    /// The event of `record`, which has ended.
    pub fn of(record: JobRecord) -> DoneEvent {
        let at = time_text(record.updated_at_ms);
        DoneEvent {
            v: crate::names::ENVELOPE_VERSION,
            kind: "job.ended".into(),
            timestamp: at,
            link: format!("/v1/jobs/{}", record.job_id),
            data: record,
        }
    }

    /// The Standard Webhooks `webhook-id` of this event: the job id, how it ended and when
    /// (`<job id>:<status>:<ended at ms>`), the same on every delivery of this event
    /// (receivers deduplicate on it), another for a replayed job that ends again.
    pub fn webhook_id(&self) -> String {
        let status = serde_json::to_value(self.data.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!("{}:{status}:{}", self.data.job_id, self.data.updated_at_ms)
    }
}

fn time_text(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
