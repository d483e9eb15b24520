//! The HTTP jobs API: submit a call and come back for it later (`/v1/jobs`), many calls at
//! once (`/v1/batches`), and the OpenAPI document (`/v1/openapi.json`). Every error is an
//! [`ApiError`] with a stable code.

use std::{sync::Arc, time::Duration};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use mcpq_schemas::{
    JobRecord, JobStatus,
    api::{Accepted, ApiError, ApiErrorCode, BatchAccepted, JobSubmission},
    batch::BatchRecord,
};
use serde_json::Value;
use tracing::Instrument;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

mod schedules;

use crate::{
    Cancel, ClientError,
    auth::{Caller, quota::OverLimit},
    shared::{Refusal, Shared},
};

/// Longest `?timeout=` a wait accepts.
const MAX_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The `/v1` routes, and the OpenAPI document made from the same handlers.
pub fn routes(shared: Arc<Shared>) -> Router {
    let (router, document) = documented().split_for_parts();
    let document = Arc::new(finish(document));
    router
        .route(
            "/v1/openapi.json",
            get(move || async move { Json(Value::clone(&document)) }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// The OpenAPI 3.1 document of the `/v1` API: each path as its handler's `utoipa::path` says,
/// each schema as its type says (`mcpq_schemas::openapi`).
pub fn openapi() -> Value {
    finish(documented().split_for_parts().1)
}

#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "mcpq jobs API",
    version = "1",
    description = "Submit MCP tool calls as durable jobs, read them back later, wait for them, cancel them, and run them in batches. Every error body is an ApiError with a stable code."
))]
struct Document;

/// The `/v1` handlers, each registered with its route and its documentation together.
fn documented() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::with_openapi(<Document as utoipa::OpenApi>::openapi())
        .routes(routes!(submit))
        .routes(routes!(job, cancel))
        .routes(routes!(wait))
        .routes(routes!(submit_batch))
        .routes(routes!(batch))
        .routes(routes!(batch_results))
        .routes(routes!(
            schedules::create_schedule,
            schedules::list_schedules
        ))
        .routes(routes!(schedules::get_schedule, schedules::delete_schedule))
        .routes(routes!(schedules::pause_schedule))
        .routes(routes!(schedules::resume_schedule))
}

/// The document as served: utoipa's paths, and the component schemas from schemars (utoipa
/// knows the body types by name only).
fn finish(document: utoipa::openapi::OpenApi) -> Value {
    let mut document = serde_json::to_value(document).unwrap_or_default();
    document["components"] = serde_json::json!({"schemas": mcpq_schemas::openapi::schemas()});
    document
}

/// The largest `/v1` body read (a batch of many lines); a single job must also fit in one NATS
/// message, which is checked after.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The most lines one batch may have.
pub const MAX_BATCH_LINES: usize = 10_000;

/// The body, or a JSON 413 when it is larger than [`MAX_BODY_BYTES`].
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Failure> {
    body.map_err(|e| {
        // A client that stopped sending mid-body timed out (408), it did not send a bad one.
        let status = if crate::bodies::Stalled::caused(&e) {
            StatusCode::REQUEST_TIMEOUT
        } else {
            e.status()
        };
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiErrorCode::TooLarge
        } else {
            ApiErrorCode::BadRequest
        };
        Failure(
            status,
            code,
            format!(
                "cannot read the body: {e} (at most {MAX_BODY_BYTES} bytes); nothing was queued"
            ),
        )
    })
}

/// An error answer.
struct Failure(StatusCode, ApiErrorCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure(status, code, message) = self;
        let response = (status, Json(ApiError { code, message })).into_response();
        if code == ApiErrorCode::QueueFull {
            // A full queue drains at the workers' pace; a second is a fair first guess.
            return retry_after(response, Duration::from_secs(1));
        }
        response
    }
}

/// Over a limit: 429 with `Retry-After` in whole seconds.
struct Limited(OverLimit);

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let response = Failure(
            StatusCode::TOO_MANY_REQUESTS,
            ApiErrorCode::RateLimited,
            self.0.message,
        )
        .into_response();
        retry_after(response, self.0.retry_after)
    }
}

/// `response` with `Retry-After: <whole seconds, at least 1>`.
fn retry_after(mut response: Response, after: Duration) -> Response {
    let seconds = after.as_secs().max(1).to_string();
    if let Ok(value) = header::HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Why a submission was not taken: a failure, or a limit.
enum Refused {
    Failure(Failure),
    Limited(Limited),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Failure(f) => f.into_response(),
            Refused::Limited(l) => l.into_response(),
        }
    }
}

impl<T: Into<Failure>> From<T> for Refused {
    fn from(e: T) -> Self {
        Refused::Failure(e.into())
    }
}

impl From<OverLimit> for Refused {
    fn from(over: OverLimit) -> Self {
        Refused::Limited(Limited(over))
    }
}

/// A `/v1` body must say it is JSON: a browser cannot send that cross-site without asking
/// first (CORS preflight), so a web page cannot submit jobs. Batches may say JSON lines.
fn json_body(headers: &HeaderMap, lines: bool) -> Result<(), Failure> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = essence == "application/json"
        || (lines
            && matches!(
                essence.as_str(),
                "application/x-ndjson" | "application/jsonl"
            ));
    if ok {
        return Ok(());
    }
    Err(Failure(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ApiErrorCode::UnsupportedMediaType,
        format!(
            "Content-Type {content_type:?} is not accepted: send the body as Content-Type: application/json{}",
            if lines {
                " (or application/x-ndjson)"
            } else {
                ""
            }
        ),
    ))
}

/// A forbidden call: 403, and nothing queued.
fn forbidden(caller: &Caller, server: &str, tool: &str) -> Failure {
    Failure(
        StatusCode::FORBIDDEN,
        ApiErrorCode::Forbidden,
        format!(
            "principal {:?} may not call {server}/{tool} (not in its allow list, or denied); nothing was queued",
            caller.principal().unwrap_or("anonymous")
        ),
    )
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let (status, code) = match &e {
            ClientError::TooLarge { .. } | ClientError::BatchTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, ApiErrorCode::TooLarge)
            }
            ClientError::QueueFull { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ApiErrorCode::QueueFull)
            }
            ClientError::TooFarAhead { .. } => (StatusCode::BAD_REQUEST, ApiErrorCode::BadRequest),
            _ => (StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::Unavailable),
        };
        Failure(status, code, e.to_string())
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        let (status, code) = match refusal {
            Refusal::UnknownServer(_) => (StatusCode::NOT_FOUND, ApiErrorCode::UnknownServer),
            Refusal::UnknownTool(_) => (StatusCode::NOT_FOUND, ApiErrorCode::UnknownTool),
            Refusal::UnknownName(_) => (StatusCode::NOT_FOUND, ApiErrorCode::NotFound),
            Refusal::NoCatalog(_) => (StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::Unavailable),
        };
        Failure(status, code, refusal.message().to_string())
    }
}

fn bad_request(message: impl ToString) -> Failure {
    Failure(
        StatusCode::BAD_REQUEST,
        ApiErrorCode::BadRequest,
        message.to_string(),
    )
}

fn parse_id(id: &str, what: &str) -> Result<Uuid, Failure> {
    id.parse().map_err(|_| {
        bad_request(format!(
            "{id:?} is not a {what} id (ids are UUIDs, as returned on submission)"
        ))
    })
}

fn not_found(what: &str, id: Uuid) -> Failure {
    Failure(
        StatusCode::NOT_FOUND,
        ApiErrorCode::NotFound,
        format!("no {what} {id} (never submitted, or its record expired)"),
    )
}

/// The `Idempotency-Key` header, if any; one that is not printable text is refused.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| bad_request("header Idempotency-Key: not printable ASCII text"))?;
    mcpq_schemas::check::idempotency_key("header Idempotency-Key", key).map_err(bad_request)?;
    Ok(Some(key.to_string()))
}

/// `POST /v1/jobs`.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "submitJob",
    summary = "Queue one tool call; answers at once with the job id",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Submissions with the same key are one job.")),
    request_body(content = JobSubmission, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued (or a duplicate of a job with the same idempotency key)", body = Accepted),
        (status = 400, description = "The body is not a job submission, or a field is out of range (the message names it)", body = ApiError),
        (status = 404, description = "Unknown server or tool; nothing was queued", body = ApiError),
        (status = 413, description = "The request does not fit in one NATS message (code too_large); nothing was queued", body = ApiError),
        (status = 429, description = "Over the caller's limits (rate_limited) or the server's queue is full (queue_full); retry after Retry-After", body = ApiError),
        (status = 503, description = "NATS did not accept the job; retry", body = ApiError),
    ),
)]
async fn submit(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), Refused> {
    json_body(&headers, false)?;
    let body = body_of(body)?;
    let mut submission: JobSubmission = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("the body is not a job submission: {e}")))?;
    if submission.idempotency_key.is_none() {
        submission.idempotency_key = idempotency_key(&headers)?;
    }
    if !caller.may(&submission.server, &submission.tool) {
        return Err(forbidden(&caller, &submission.server, &submission.tool).into());
    }
    let defaults = shared.check(&submission.server)?;
    shared.admit_calls(&caller, 1).await?;
    let mut job = submission
        .to_job(defaults.lane)
        .map_err(bad_request)?
        .owned_by(caller.principal().map(str::to_string), &shared.signing);
    shared.callback(&mut job).await.map_err(bad_request)?;
    let caller_trace = crate::headers::traceparent_header(&headers);
    let span = tracing::info_span!("submit", job_id = %job.id, server = %job.server);
    mcpq_schemas::trace::adopt(&span, caller_trace.as_deref());
    job.traceparent = Some(match mcpq_schemas::trace::of_span(&span) {
        Some(own) => own.to_string(),
        None => {
            caller_trace.unwrap_or_else(|| mcpq_schemas::trace::TraceParent::start().to_string())
        }
    });
    let submitted = shared.client.submit(&job).instrument(span).await?;
    let status = if submitted.duplicate {
        shared
            .client
            .stored_record(job.id)
            .await?
            .map_or(JobStatus::Queued, |r| r.status)
    } else {
        JobRecord::queued(&job).status
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: job.id,
            status,
            duplicate: submitted.duplicate,
        }),
    ))
}

/// `GET /v1/jobs/{id}`.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "getJob",
    summary = "The job's record: status, attempts, progress, result or error",
    params(("id" = Uuid, Path, description = "The job id")),
    responses(
        (status = 200, description = "The record", body = JobRecord),
        (status = 404, description = "No such job, or its record expired", body = ApiError),
    ),
)]
async fn job(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = parse_id(&id, "job")?;
    match shared.client.record(id).await? {
        Some(record) if caller.owns(record.principal.as_deref()) => {
            Ok(Json(record).into_response())
        }
        // Another principal's job is not found: its id is not confirmed.
        _ => Err(not_found("job", id)),
    }
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    timeout: Option<String>,
}

/// `GET /v1/jobs/{id}/wait?timeout=`: 200 with the record once ended, 202 with it if not.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/wait",
    operation_id = "waitJob",
    summary = "Long poll: the record once the job has ended, or when the timeout passes",
    params(
        ("id" = Uuid, Path, description = "The job id"),
        ("timeout" = Option<String>, Query, nullable = false, description = "How long to wait, e.g. 30s or 500ms (default 30s, at most 5m)"),
    ),
    responses(
        (status = 200, description = "The job has ended", body = JobRecord),
        (status = 202, description = "Not ended within the timeout; the current record", body = JobRecord),
        (status = 404, description = "No such job", body = ApiError),
    ),
)]
async fn wait(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Response, Failure> {
    let id = parse_id(&id, "job")?;
    let timeout = match query.timeout.as_deref() {
        None => DEFAULT_WAIT,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| bad_request(format!("timeout {text:?}: {e} (write e.g. 30s or 500ms)")))?
            .min(MAX_WAIT),
    };
    match shared.client.stored_record(id).await? {
        Some(record) if caller.owns(record.principal.as_deref()) => {}
        _ => return Err(not_found("job", id)),
    }
    let Some(_mine) = shared.held.hold(
        "wait",
        caller.principal().unwrap_or(""),
        shared.per_principal,
    ) else {
        let response = Failure(
            StatusCode::TOO_MANY_REQUESTS,
            ApiErrorCode::RateLimited,
            "this caller holds as many long polls open here as one caller may (--max-waits-per-principal): read the job with GET /v1/jobs/{id}, or wait again shortly".into(),
        )
        .into_response();
        return Ok(retry_after(response, Duration::from_secs(1)));
    };
    let Ok(_slot) = shared.waits.clone().try_acquire_owned() else {
        let response = Failure(
            StatusCode::TOO_MANY_REQUESTS,
            ApiErrorCode::RateLimited,
            "this dispatcher holds as many long polls open as it may (--max-waits): read the job with GET /v1/jobs/{id}, or wait again shortly".into(),
        )
        .into_response();
        return Ok(retry_after(response, Duration::from_secs(1)));
    };
    let record = shared
        .client
        .wait_record(id, timeout)
        .await?
        .ok_or_else(|| not_found("job", id))?;
    let status = if record.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(record)).into_response())
}

/// `DELETE /v1/jobs/{id}`.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    operation_id = "cancelJob",
    summary = "Cancel the job: a queued job never runs, a running one has its upstream request cancelled",
    params(("id" = Uuid, Path, description = "The job id")),
    responses(
        (status = 202, description = "Cancellation requested; the record shows it", body = JobRecord),
        (status = 404, description = "No such job", body = ApiError),
        (status = 409, description = "The job has already ended", body = ApiError),
    ),
)]
async fn cancel(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = parse_id(&id, "job")?;
    match shared.client.stored_record(id).await? {
        Some(record) if caller.owns(record.principal.as_deref()) => {}
        _ => return Err(not_found("job", id)),
    }
    match shared
        .client
        .cancel(id, Some("requested by DELETE /v1/jobs".into()))
        .await?
    {
        Cancel::Requested(record) => Ok((StatusCode::ACCEPTED, Json(record)).into_response()),
        Cancel::AlreadyEnded(record) => Err(Failure(
            StatusCode::CONFLICT,
            ApiErrorCode::AlreadyEnded,
            format!(
                "job {id} has already ended ({}); nothing to cancel",
                serde_json::to_value(record.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
        )),
        Cancel::NotFound => Err(not_found("job", id)),
    }
}

/// `POST /v1/batches`: one [`JobSubmission`] per line. Every line is checked before anything
/// is queued.
#[utoipa::path(
    post,
    path = "/v1/batches",
    operation_id = "submitBatch",
    summary = "Queue many calls: one JobSubmission per line (JSON lines)",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Submissions with the same key are one batch.")),
    request_body(content = JobSubmission, content_type = "application/x-ndjson"),
    responses(
        (status = 202, description = "Queued", body = BatchAccepted),
        (status = 400, description = "A line is not a job submission (the message names the line); nothing was queued", body = ApiError),
        (status = 404, description = "A line names an unknown server or tool; nothing was queued", body = ApiError),
        (status = 413, description = "More than 10000 lines, or a call that does not fit in one NATS message (code too_large); nothing was queued", body = ApiError),
        (status = 429, description = "Over the caller's limits (rate_limited) or a queue is full (queue_full); retry after Retry-After", body = ApiError),
    ),
)]
async fn submit_batch(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BatchAccepted>), Refused> {
    json_body(&headers, true)?;
    let body = body_of(body)?;
    let text = std::str::from_utf8(&body).map_err(|_| bad_request("the body is not UTF-8 text"))?;
    let key = idempotency_key(&headers)?;
    let batch_id = key.as_deref().map_or_else(Uuid::now_v7, |key| {
        mcpq_schemas::job::idempotent_id_of(caller.principal(), "batch", key, &shared.signing)
    });
    let mut jobs = Vec::new();
    // How long records are kept, read once for the lines for later (checked before anything
    // is queued).
    let mut kept: Option<Option<Duration>> = None;
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if jobs.len() == MAX_BATCH_LINES {
            return Err(Failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                ApiErrorCode::TooLarge,
                format!(
                    "the batch has more than {MAX_BATCH_LINES} calls (line {} is one too many): split it into batches of at most {MAX_BATCH_LINES}; nothing was queued",
                    number + 1
                ),
            )
            .into());
        }
        let mut submission: JobSubmission = serde_json::from_str(line).map_err(|e| {
            bad_request(format!(
                "line {}: not a job submission: {e}; nothing was queued",
                number + 1
            ))
        })?;
        let defaults = shared.check(&submission.server).map_err(|refusal| {
            let Failure(status, code, message) = Failure::from(refusal);
            Failure(
                status,
                code,
                format!("line {}: {message}; nothing was queued", number + 1),
            )
        })?;
        if !caller.may(&submission.server, &submission.tool) {
            let Failure(status, code, message) =
                forbidden(&caller, &submission.server, &submission.tool);
            return Err(Failure(status, code, format!("line {}: {message}", number + 1)).into());
        }
        // Each call is idempotent within its batch, so submitting the batch again adds nothing.
        if submission.idempotency_key.is_none() {
            submission.idempotency_key = Some(format!("batch:{batch_id}:{}", jobs.len()));
        }
        let line = |e: &dyn std::fmt::Display| {
            bad_request(format!("line {}: {e}; nothing was queued", number + 1))
        };
        let mut job = submission
            .to_job(defaults.lane)
            .map_err(|e| line(&e))?
            .owned_by(caller.principal().map(str::to_string), &shared.signing);
        shared.callback(&mut job).await.map_err(|e| line(&e))?;
        if job.run_at_ms.is_some() {
            let kept = match kept {
                Some(kept) => kept,
                None => *kept.insert(shared.client.records_kept().await),
            };
            if let Some(kept) = kept {
                crate::publish::too_far_ahead(&job, kept).map_err(|e| line(&e))?;
            }
        }
        jobs.push(job);
    }
    if jobs.is_empty() {
        return Err(
            bad_request("the body has no lines; send one JSON job submission per line").into(),
        );
    }
    shared
        .admit_calls(&caller, u32::try_from(jobs.len()).unwrap_or(u32::MAX))
        .await?;
    let record = shared.client.submit_batch(batch_id, &jobs).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchAccepted {
            batch_id,
            total: record.jobs.len(),
        }),
    ))
}

/// `GET /v1/batches/{id}`.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}",
    operation_id = "getBatch",
    summary = "Counts of the batch's jobs by status",
    params(("id" = Uuid, Path, description = "The batch id")),
    responses(
        (status = 200, description = "The counts", body = mcpq_schemas::batch::BatchStatus),
        (status = 404, description = "No such batch", body = ApiError),
    ),
)]
async fn batch(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let batch = stored_batch(&shared, &caller, &id).await?;
    Ok(Json(shared.client.batch_status(&batch).await?).into_response())
}

/// `GET /v1/batches/{id}/results`: JSON lines in input order.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}/results",
    operation_id = "getBatchResults",
    summary = "One line per call, in input order (JSON lines)",
    params(("id" = Uuid, Path, description = "The batch id")),
    responses(
        (status = 200, description = "The lines", body = mcpq_schemas::batch::BatchResultLine, content_type = "application/x-ndjson"),
        (status = 404, description = "No such batch", body = ApiError),
    ),
)]
async fn batch_results(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let batch = stored_batch(&shared, &caller, &id).await?;
    // Streamed: a line goes out as its record is read; the body never holds the whole batch.
    // A record that cannot be read ends the body early (the client sees fewer lines than the
    // batch's total, and may ask again).
    let lines = futures::StreamExt::map(shared.client.batch_result_lines(&batch), |line| {
        line.map(|line| {
            let mut text = serde_json::to_vec(&line).unwrap_or_default();
            text.push(b'\n');
            bytes::Bytes::from(text)
        })
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

async fn stored_batch(shared: &Shared, caller: &Caller, id: &str) -> Result<BatchRecord, Failure> {
    let id = parse_id(id, "batch")?;
    shared
        .client
        .batch(id)
        .await?
        .filter(|batch| caller.owns(batch.principal.as_deref()))
        .ok_or_else(|| not_found("batch", id))
}
