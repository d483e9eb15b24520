//! `/v1/schedules`: recurring tool calls (cron or every), owned by their principal like jobs.

use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use mcpq_schemas::{
    api::ApiError,
    schedule::{Schedule, ScheduleCreated, ScheduleSpec, ScheduleView},
};

use super::{Failure, Refused, bad_request, body_of, forbidden, json_body, not_found, parse_id};
use crate::{
    auth::Caller,
    schedules::{ScheduleError, plan},
    shared::Shared,
};

impl From<ScheduleError> for Failure {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::Refused(_) => bad_request(e),
            ScheduleError::Client(e) => e.into(),
        }
    }
}

/// `POST /v1/schedules`.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    operation_id = "createSchedule",
    summary = "Call a tool on a schedule: cron (six fields, seconds first) or every (a duration)",
    request_body(content = ScheduleSpec, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; JetStream fires it from now on", body = ScheduleCreated),
        (status = 400, description = "A field is wrong (the message names it)", body = ApiError),
        (status = 403, description = "The caller may not use this tool", body = ApiError),
        (status = 404, description = "Unknown server or tool", body = ApiError),
    ),
)]
pub(super) async fn create_schedule(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ScheduleCreated>), Refused> {
    json_body(&headers, false)?;
    let body = body_of(body)?;
    let spec: ScheduleSpec = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("the body is not a schedule: {e}")))?;
    if !caller.may(&spec.server, &spec.tool) {
        return Err(forbidden(&caller, &spec.server, &spec.tool).into());
    }
    let defaults = shared.check(&spec.server)?;
    // A schedule is counted as one call against the caller's limits when it is made.
    shared.admit_calls(&caller, 1).await?;
    let mut spec = spec;
    if let Some(callbacks) = &shared.callbacks {
        spec.callback_url = callbacks.url_for(spec.callback_url.as_deref(), caller.principal());
    }
    if let Some(url) = &spec.callback_url {
        match &shared.callbacks {
            None => return Err(bad_request(crate::callbacks::TargetError::NotConfigured).into()),
            Some(callbacks) => {
                callbacks.target(url).await.map_err(bad_request)?;
            }
        }
    }
    let schedule = plan(
        &spec,
        defaults.lane,
        caller.principal().map(str::to_string),
        mcpq_schemas::now_ms(),
    )
    .map_err(bad_request)?;
    shared
        .client
        .create_schedule(&schedule)
        .await
        .map_err(Failure::from)?;
    let view = shared
        .client
        .schedule_view(schedule)
        .await
        .map_err(Failure::from)?;
    Ok((
        StatusCode::CREATED,
        Json(ScheduleCreated {
            id: view.schedule.id,
            next_fire_at: view.next_fire_at,
        }),
    ))
}

/// `GET /v1/schedules`.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    operation_id = "listSchedules",
    summary = "The caller's schedules, oldest first",
    responses((status = 200, description = "The schedules", body = Vec<Schedule>)),
)]
pub(super) async fn list_schedules(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Failure> {
    let mine: Vec<Schedule> = shared
        .client
        .schedules()
        .await?
        .into_iter()
        .filter(|s| caller.owns(s.principal.as_deref()))
        .collect();
    Ok(Json(mine).into_response())
}

async fn owned(shared: &Shared, caller: &Caller, id: &str) -> Result<Schedule, Failure> {
    let id = parse_id(id, "schedule")?;
    shared
        .client
        .schedule(id)
        .await?
        .filter(|s| caller.owns(s.principal.as_deref()))
        .ok_or_else(|| not_found("schedule", id))
}

/// `GET /v1/schedules/{id}`.
#[utoipa::path(
    get,
    path = "/v1/schedules/{id}",
    operation_id = "getSchedule",
    summary = "The schedule, its next fire times and its latest ticks' jobs",
    params(("id" = Uuid, Path, description = "The schedule id")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ApiError),
    ),
)]
pub(super) async fn get_schedule(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let schedule = owned(&shared, &caller, &id).await?;
    Ok(Json(shared.client.schedule_view(schedule).await?).into_response())
}

/// `DELETE /v1/schedules/{id}`.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{id}",
    operation_id = "deleteSchedule",
    summary = "Delete the schedule: nothing fires after (a tick already fired runs as any job)",
    params(("id" = Uuid, Path, description = "The schedule id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such schedule", body = ApiError),
    ),
)]
pub(super) async fn delete_schedule(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let schedule = owned(&shared, &caller, &id).await?;
    shared.client.delete_schedule(&schedule).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/schedules/{id}/pause`.
#[utoipa::path(
    post,
    path = "/v1/schedules/{id}/pause",
    operation_id = "pauseSchedule",
    summary = "Pause the schedule: no tick fires until it is resumed (ticks missed meanwhile are skipped)",
    params(("id" = Uuid, Path, description = "The schedule id")),
    responses(
        (status = 200, description = "Paused", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ApiError),
    ),
)]
pub(super) async fn pause_schedule(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    set_paused(&shared, &caller, &id, true).await
}

/// `POST /v1/schedules/{id}/resume`.
#[utoipa::path(
    post,
    path = "/v1/schedules/{id}/resume",
    operation_id = "resumeSchedule",
    summary = "Resume a paused schedule",
    params(("id" = Uuid, Path, description = "The schedule id")),
    responses(
        (status = 200, description = "Resumed", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ApiError),
    ),
)]
pub(super) async fn resume_schedule(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    set_paused(&shared, &caller, &id, false).await
}

async fn set_paused(
    shared: &Shared,
    caller: &Caller,
    id: &str,
    paused: bool,
) -> Result<Response, Failure> {
    let schedule = owned(shared, caller, id).await?;
    let schedule = shared
        .client
        .set_paused(schedule.id, paused)
        .await?
        .ok_or_else(|| not_found("schedule", schedule.id))?;
    Ok(Json(shared.client.schedule_view(schedule).await?).into_response())
}
