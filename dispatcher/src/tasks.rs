//! MCP Tasks (extension `io.modelcontextprotocol/tasks`, SEP-2663) served from JetStream: the
//! task id is the job id and the task's state is the job's record, so a task outlives the
//! dispatcher that created it and any replica answers `tasks/get` and `tasks/cancel`.

use std::time::{Duration, UNIX_EPOCH};

use mcpq_schemas::{
    InputAnswer, Job, JobRecord, JobStatus,
    names::{ENVELOPE_VERSION, input_subject},
};
use rmcp::{
    ErrorData,
    model::{
        CallToolResponse, CreateTaskResult, DetailedTask, ErrorCode, JsonObject, Task, TaskPayload,
        TaskStatus,
    },
};

use crate::{Shared, auth::Caller};
use uuid::Uuid;

/// How often clients are asked to poll `tasks/get`.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(500);

fn iso8601(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The task id a client sent, as a job id.
pub(crate) fn job_id(task_id: &str) -> Result<Uuid, ErrorData> {
    task_id
        .parse()
        .map_err(|_| ErrorData::invalid_params(format!("unknown task {task_id:?}"), None))
}

/// The task's base fields from the job's record.
pub(crate) fn task(record: &JobRecord, ttl: Duration) -> Task {
    let (status, message) = match record.status {
        JobStatus::Queued => (TaskStatus::Working, "queued".to_string()),
        JobStatus::Scheduled => (TaskStatus::Working, "scheduled".to_string()),
        JobStatus::Running => (
            TaskStatus::Working,
            match &record.progress {
                Some(p) => format!(
                    "running (progress {}{})",
                    p.progress,
                    p.total.map_or(String::new(), |t| format!(" of {t}"))
                ),
                None => "running".into(),
            },
        ),
        JobStatus::Retrying => (
            TaskStatus::Working,
            format!(
                "retrying after {} failed attempts",
                record.failed_attempts.len()
            ),
        ),
        JobStatus::Completed => (TaskStatus::Completed, "completed".into()),
        JobStatus::Cancelled => (TaskStatus::Cancelled, "cancelled".into()),
        JobStatus::Failed | JobStatus::Dead | JobStatus::Expired | JobStatus::Unknown => (
            TaskStatus::Failed,
            record
                .error
                .as_ref()
                .map_or_else(|| "failed".into(), ToString::to_string),
        ),
    };
    Task::new(
        record.job_id.to_string(),
        status,
        iso8601(record.submitted_at_ms),
        iso8601(record.updated_at_ms),
    )
    .with_status_message(message)
    .with_ttl_ms(ttl.as_millis() as u64)
    .with_poll_interval_ms(POLL_INTERVAL.as_millis() as u64)
}

/// The task with its payload: the result or error once the job has ended.
pub(crate) fn detailed(record: &JobRecord, ttl: Duration) -> DetailedTask {
    let payload = match record.status {
        JobStatus::Completed => TaskPayload::Completed {
            result: record
                .result
                .as_ref()
                .and_then(|r| r.as_object().cloned())
                .unwrap_or_default(),
        },
        JobStatus::Cancelled => TaskPayload::Cancelled,
        JobStatus::Failed | JobStatus::Dead | JobStatus::Expired | JobStatus::Unknown => {
            let error = record.error.as_ref();
            let mut object = JsonObject::new();
            object.insert(
                "code".into(),
                error
                    .and_then(|e| e.code)
                    .unwrap_or(i64::from(ErrorCode::INTERNAL_ERROR.0))
                    .into(),
            );
            object.insert(
                "message".into(),
                error.map_or("failed", |e| e.message.as_str()).into(),
            );
            object.insert(
                "data".into(),
                serde_json::json!({
                    "jobId": record.job_id,
                    "kind": error.map(|e| e.kind),
                    "upstream": error.and_then(|e| e.data.clone()),
                }),
            );
            TaskPayload::Failed { error: object }
        }
        JobStatus::Scheduled | JobStatus::Queued | JobStatus::Running | JobStatus::Retrying => {
            match &record.input {
                Some(input) => {
                    serde_json::from_value(serde_json::Value::Object(input.requests.clone()))
                        .map_or(TaskPayload::Working, |input_requests| {
                            TaskPayload::InputRequired { input_requests }
                        })
                }
                None => TaskPayload::Working,
            }
        }
    };
    DetailedTask::new(task(record, ttl), payload)
}

/// The answer to a call that became a task, once `job`'s record exists: created here if the
/// worker has not written one yet (an existing record is left alone).
pub(crate) async fn created(shared: &Shared, job: &Job) -> Result<CallToolResponse, ErrorData> {
    let record = shared.client.ensure_record(job).await.map_err(|e| {
        ErrorData::internal_error(e.to_string(), Some(serde_json::json!({"jobId": job.id})))
    })?;
    Ok(CallToolResponse::Task(CreateTaskResult::new(task(
        &record,
        shared.result_ttl,
    ))))
}

/// The answer to a retried call the upstream made a task of: the worker wrote the task's
/// record before it said so.
pub(crate) async fn became(shared: &Shared, job_id: Uuid) -> Result<CallToolResponse, ErrorData> {
    let record = shared
        .client
        .record(job_id)
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
        .ok_or_else(|| {
            ErrorData::internal_error(format!("job {job_id} became a task without a record"), None)
        })?;
    Ok(CallToolResponse::Task(CreateTaskResult::new(task(
        &record,
        shared.result_ttl,
    ))))
}

/// `tasks/update`: the caller's answers (some or all) to the questions its task waits on, to
/// the worker that asked; acknowledged once the task's record shows what still waits.
pub(crate) async fn update(
    shared: &Shared,
    record: JobRecord,
    responses: rmcp::model::InputResponses,
) -> Result<(), ErrorData> {
    let waiting = record.input.filter(|_| !record.status.is_terminal());
    let Some(input) = waiting else {
        return Err(ErrorData::invalid_params(
            format!(
                "task {} is not waiting for input (tasks/get says when it is, and what it asks)",
                record.job_id
            ),
            None,
        ));
    };
    let answer = InputAnswer {
        v: ENVELOPE_VERSION,
        job_id: record.job_id,
        id: input.id.clone(),
        result: Some(serde_json::to_value(responses).unwrap_or_default()),
        error: None,
        reply_to: None,
    };
    // The subject is worked out here, never read from the record.
    let answer_to = input_subject(&record.job_id, &input.id);
    shared
        .client
        .answer(&answer_to, &answer)
        .await
        .map_err(|e| ErrorData::invalid_params(e.to_string(), None))
}

/// The record behind a task id a client sent, if the task is the caller's: another
/// principal's task is unknown (its id is not confirmed).
pub(crate) async fn record(
    shared: &Shared,
    caller: &Caller,
    task_id: &str,
) -> Result<JobRecord, ErrorData> {
    let job_id = job_id(task_id)?;
    shared
        .client
        .record(job_id)
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
        .filter(|record| caller.owns(record.principal.as_deref()))
        .ok_or_else(|| unknown(task_id))
}

pub(crate) fn unknown(task_id: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("unknown task {task_id:?} (never created here, or expired)"),
        None,
    )
}
