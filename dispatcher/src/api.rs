//! The HTTP jobs API: submit a call and come back for it later (`/v1/jobs`), many calls at
//! once (`/v1/batches`), and the OpenAPI document (`/v1/openapi.json`). Every error is an
//! [`ApiError`] with a stable code.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use mcpq_schemas::{
    JobStatus,
    api::{Accepted, ApiError, ApiErrorCode, BatchAccepted, JobSubmission},
    batch::BatchRecord,
};
use uuid::Uuid;

use crate::{
    Cancel, ClientError,
    shared::{Refusal, Shared},
};

/// Longest `?timeout=` a wait accepts.
const MAX_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The `/v1` routes.
pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/jobs", axum::routing::post(submit))
        .route("/v1/jobs/{id}", get(job).delete(cancel))
        .route("/v1/jobs/{id}/wait", get(wait))
        .route("/v1/batches", axum::routing::post(submit_batch))
        .route("/v1/batches/{id}", get(batch))
        .route("/v1/batches/{id}/results", get(batch_results))
        .route(
            "/v1/openapi.json",
            get(|| async { Json(mcpq_schemas::openapi::document()) }),
        )
        .with_state(shared)
}

/// An error answer.
struct Failure(StatusCode, ApiErrorCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure(status, code, message) = self;
        (status, Json(ApiError { code, message })).into_response()
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiErrorCode::Unavailable,
            e.to_string(),
        )
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        let code = match refusal {
            Refusal::UnknownServer(_) => ApiErrorCode::UnknownServer,
            Refusal::UnknownTool(_) => ApiErrorCode::UnknownTool,
            Refusal::UnknownName(_) => ApiErrorCode::NotFound,
        };
        Failure(StatusCode::NOT_FOUND, code, refusal.message().to_string())
    }
}

fn bad_request(message: String) -> Failure {
    Failure(StatusCode::BAD_REQUEST, ApiErrorCode::BadRequest, message)
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

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `POST /v1/jobs`.
async fn submit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), Failure> {
    let mut submission: JobSubmission = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("the body is not a job submission: {e}")))?;
    if submission.idempotency_key.is_none() {
        submission.idempotency_key = idempotency_key(&headers);
    }
    let defaults = shared.check(&submission.server, &submission.tool)?;
    let job = submission.to_job(defaults.lane);
    let submitted = shared.client.submit(&job).await?;
    let status = if submitted.duplicate {
        shared
            .client
            .record(job.id)
            .await?
            .map_or(JobStatus::Queued, |r| r.status)
    } else {
        JobStatus::Queued
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
async fn job(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = parse_id(&id, "job")?;
    match shared.client.record(id).await? {
        Some(record) => Ok(Json(record).into_response()),
        None => Err(not_found("job", id)),
    }
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    timeout: Option<String>,
}

/// `GET /v1/jobs/{id}/wait?timeout=`: 200 with the record once ended, 202 with it if not.
async fn wait(
    State(shared): State<Arc<Shared>>,
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
    if shared.client.record(id).await?.is_none() {
        return Err(not_found("job", id));
    }
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
async fn cancel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = parse_id(&id, "job")?;
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
async fn submit_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<BatchAccepted>), Failure> {
    let text =
        std::str::from_utf8(&body).map_err(|_| bad_request("the body is not UTF-8 text".into()))?;
    let key = idempotency_key(&headers);
    let batch_id = key.as_deref().map_or_else(Uuid::now_v7, |key| {
        mcpq_schemas::job::idempotent_id("batch", key)
    });
    let mut jobs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut submission: JobSubmission = serde_json::from_str(line).map_err(|e| {
            bad_request(format!(
                "line {}: not a job submission: {e}; nothing was queued",
                number + 1
            ))
        })?;
        let defaults = shared
            .check(&submission.server, &submission.tool)
            .map_err(|refusal| {
                let Failure(status, code, message) = Failure::from(refusal);
                Failure(
                    status,
                    code,
                    format!("line {}: {message}; nothing was queued", number + 1),
                )
            })?;
        // Each call is idempotent within its batch, so submitting the batch again adds nothing.
        if submission.idempotency_key.is_none() {
            submission.idempotency_key = Some(format!("batch:{batch_id}:{}", jobs.len()));
        }
        jobs.push(submission.to_job(defaults.lane));
    }
    if jobs.is_empty() {
        return Err(bad_request(
            "the body has no lines; send one JSON job submission per line".into(),
        ));
    }
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
async fn batch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let batch = stored_batch(&shared, &id).await?;
    Ok(Json(shared.client.batch_status(&batch).await?).into_response())
}

/// `GET /v1/batches/{id}/results`: JSON lines in input order.
async fn batch_results(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let batch = stored_batch(&shared, &id).await?;
    let mut body = Vec::new();
    for line in shared.client.batch_results(&batch).await? {
        let _ = serde_json::to_writer(&mut body, &line);
        body.push(b'\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

async fn stored_batch(shared: &Shared, id: &str) -> Result<BatchRecord, Failure> {
    let id = parse_id(id, "batch")?;
    shared
        .client
        .batch(id)
        .await?
        .ok_or_else(|| not_found("batch", id))
}
