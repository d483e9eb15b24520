//! One MCP request through the queue: the job built from the request and its `_meta`, published,
//! waited for, with the upstream's progress and log messages relayed to the client in order on
//! the request's response stream, and the job cancelled if the client goes away.

use std::time::Duration;

use mcpq_schemas::{
    Job, JobError, JsonObject, McpRequest, Outcome, ProgressEvent,
    bridge::{self, Era},
    config::TaskMode,
    now_ms,
};
use rmcp::{
    ErrorData, RoleServer,
    model::{ErrorCode, ProgressNotificationParam, ProgressToken},
    service::RequestContext,
};
use tracing::Instrument;

use crate::{Event, shared::Shared};

/// Request `_meta` key: how long the caller will wait for this call, in milliseconds.
pub const META_TIMEOUT_MS: &str = "io.mcpq/timeoutMs";
/// Request `_meta` key: the priority lane for this call (`high`, `normal`, `low`).
pub const META_LANE: &str = "io.mcpq/lane";
/// Request `_meta` key: an idempotency key; calls with the same key run once.
pub const META_IDEMPOTENCY_KEY: &str = "io.mcpq/idempotencyKey";

/// How long a call may wait in the queue before its upstream timeout starts, by default.
const QUEUE_ALLOWANCE: Duration = Duration::from_secs(30);
/// The longest a caller may ask to wait (`io.mcpq/timeoutMs`): a week.
const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a relayed request came to.
pub(super) enum Relayed {
    /// The upstream's result, canonical (see `mcpq_schemas::bridge`).
    Answer(serde_json::Value),
    /// The call became a task (tools only): the job is stored; the client polls it.
    Task(Job),
}

/// One request on its way: who asked, and how.
pub(super) struct Request<'a> {
    pub server: &'a str,
    pub request: McpRequest,
    /// The request's `_meta`.
    pub meta: Option<&'a JsonObject>,
    pub context: &'a RequestContext<RoleServer>,
    /// The least severe log level the caller wants to hear, if any.
    pub log_level: Option<String>,
    /// Tools only: whether (and when) the call becomes a task.
    pub task: TaskMode,
}

impl Request<'_> {
    /// The era the client speaks.
    pub fn era(&self) -> Era {
        let version = self.context.protocol_version();
        Era::of(version.as_ref().map(|v| v.as_str()))
    }
}

/// Sends `request` through the queue and waits for its answer.
pub(super) async fn relay(shared: &Shared, request: Request<'_>) -> Result<Relayed, ErrorData> {
    let defaults = shared
        .server(request.server)
        .map_err(|r| ErrorData::invalid_params(r.message().to_string(), None))?;
    let meta = request.meta;
    let asked = wait_asked(meta)?;
    let wait = asked.unwrap_or(defaults.timeout + QUEUE_ALLOWANCE);
    let mut job = Job::new(request.server, request.request.clone());
    job.lane = match meta.and_then(|m| m.get(META_LANE)) {
        None => defaults.lane,
        Some(lane) => serde_json::from_value(lane.clone()).map_err(|_| {
            ErrorData::invalid_params(
                format!("_meta {META_LANE:?}: {lane} is not a lane (high, normal or low)"),
                None,
            )
        })?,
    };
    job.deadline_ms = Some(deadline(wait));
    if let Some(key) = meta
        .and_then(|m| m.get(META_IDEMPOTENCY_KEY))
        .and_then(|v| v.as_str())
    {
        job = job.with_idempotency_key(key);
    }
    job.traceparent = meta
        .and_then(|m| m.get("traceparent"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    job.log_level = request.log_level.clone();
    let span = tracing::info_span!("relay", job_id = %job.id, server = request.server, method = %job.request.method);
    if request.task == TaskMode::Always {
        // The record and the job are stored before the client hears of the task; a task has
        // no deadline unless the caller set one.
        job.deadline_ms = asked.map(deadline);
        shared
            .client
            .submit(&job)
            .instrument(span)
            .await
            .map_err(|e| internal(&job, &e))?;
        return Ok(Relayed::Task(job));
    }
    let context = request.context;
    let token = context.meta.get_progress_token().or_else(|| {
        meta.and_then(|m| m.get("progressToken"))
            .and_then(|t| serde_json::from_value(t.clone()).ok())
    });
    let wants_events = token.is_some() || job.log_level.is_some();
    let (events, mut updates) = tokio::sync::mpsc::unbounded_channel();
    // A caller that goes away (a dropped response stream, `notifications/cancelled`)
    // cancels the job, queued or running.
    let mut guard = CancelOnDrop {
        client: shared.client.clone(),
        job_id: job.id,
        server: request.server.to_string(),
        armed: true,
    };
    let call = shared
        .client
        .call_with_events(&job, wait, wants_events.then_some(events))
        .instrument(span);
    tokio::pin!(call);
    let become_task = async {
        match request.task {
            TaskMode::Optional => tokio::time::sleep(defaults.tasks.after).await,
            _ => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(become_task);
    let reply = loop {
        tokio::select! {
            reply = &mut call => break reply,
            Some(event) = updates.recv() => notify(context, token.as_ref(), event).await,
            () = context.ct.cancelled() => {
                return Err(ErrorData::new(
                    ErrorCode::INVALID_REQUEST,
                    format!("job {}: cancelled by the client", job.id),
                    Some(serde_json::json!({"jobId": job.id, "kind": "cancelled"})),
                ));
            }
            () = &mut become_task => {
                guard.armed = false;
                return Ok(Relayed::Task(job.clone()));
            }
        }
    };
    guard.armed = false;
    // Events sent before the reply go out before the result.
    while let Ok(event) = updates.try_recv() {
        notify(context, token.as_ref(), event).await;
    }
    match reply.map_err(|e| internal(&job, &e))?.outcome {
        Outcome::Ok { result } => Ok(Relayed::Answer(result)),
        Outcome::Error { error } => Err(to_mcp_error(request.era(), job.id, error)),
    }
}

/// The caller's `io.mcpq/timeoutMs`, checked.
fn wait_asked(meta: Option<&JsonObject>) -> Result<Option<Duration>, ErrorData> {
    let Some(value) = meta.and_then(|m| m.get(META_TIMEOUT_MS)) else {
        return Ok(None);
    };
    match value.as_u64().map(Duration::from_millis) {
        Some(wait) if wait <= MAX_WAIT => Ok(Some(wait)),
        _ => Err(ErrorData::invalid_params(
            format!(
                "_meta {META_TIMEOUT_MS:?}: {value} is not a number of milliseconds from 0 to {}",
                MAX_WAIT.as_millis()
            ),
            None,
        )),
    }
}

/// Unix milliseconds `wait` from now.
fn deadline(wait: Duration) -> u64 {
    now_ms().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
}

/// Relays one event to the client: progress when it sent a progress token, log messages (the
/// worker only sends those at or above the caller's level).
async fn notify(context: &RequestContext<RoleServer>, token: Option<&ProgressToken>, event: Event) {
    match event {
        Event::Progress(event) => {
            if let Some(token) = token {
                notify_progress(context, token, event).await;
            }
        }
        Event::Log(event) => {
            let message = serde_json::json!({
                "level": event.message.level,
                "logger": event.message.logger,
                "data": event.message.data,
            });
            #[allow(deprecated)] // logging is deprecated by SEP-2577; upstreams still log
            match serde_json::from_value::<rmcp::model::LoggingMessageNotificationParam>(message) {
                Ok(param) => {
                    let _ = context.peer.notify_logging_message(param).await;
                }
                Err(e) => tracing::debug!(error = %e, "log message with an unknown level dropped"),
            }
        }
    }
}

async fn notify_progress(
    context: &RequestContext<RoleServer>,
    token: &ProgressToken,
    event: ProgressEvent,
) {
    let mut param = ProgressNotificationParam::new(token.clone(), event.progress.progress);
    if let Some(total) = event.progress.total {
        param = param.with_total(total);
    }
    if let Some(message) = event.progress.message {
        param = param.with_message(message);
    }
    let _ = context.peer.notify_progress(param).await;
}

pub(super) fn internal(job: &Job, e: &crate::ClientError) -> ErrorData {
    ErrorData::internal_error(e.to_string(), Some(serde_json::json!({"jobId": job.id})))
}

/// A job error as the JSON-RPC error the caller sees. Upstream JSON-RPC errors keep their code
/// (in the caller's revision: see `bridge::error_code_for`).
fn to_mcp_error(era: Era, job_id: uuid::Uuid, error: JobError) -> ErrorData {
    let mut data = serde_json::json!({ "jobId": job_id, "kind": error.kind });
    if let Some(upstream) = &error.data {
        data["upstream"] = upstream.clone();
    }
    let code = error
        .code
        .map(|c| bridge::error_code_for(era, c))
        .and_then(|c| i32::try_from(c).ok())
        .map_or(ErrorCode::INTERNAL_ERROR, ErrorCode);
    ErrorData::new(code, error.message, Some(data))
}

/// Cancels the job if the call's future is dropped before it is disarmed (the client went away).
struct CancelOnDrop {
    client: crate::Client,
    job_id: uuid::Uuid,
    server: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let client = self.client.clone();
        let (job_id, server) = (self.job_id, std::mem::take(&mut self.server));
        tracing::info!(%job_id, "the caller went away; cancelling its job");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let reason = Some("the MCP client went away".to_string());
                if let Err(e) = client.request_cancel(job_id, &server, reason).await {
                    tracing::warn!(%job_id, error = %e, "cannot cancel the job");
                }
            });
        }
    }
}
