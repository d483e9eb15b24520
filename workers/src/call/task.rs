//! A task the upstream made of a call (SEP-2663, the `io.modelcontextprotocol/tasks`
//! extension), followed to its end: `tasks/get` polled at the interval the upstream asks for,
//! what the task asks (`input_required`) put to the caller and answered with `tasks/update`,
//! `tasks/cancel` sent when the call is interrupted or its time is up. The caller hears at
//! once that its call became a task ([`Asker::became_task`]); the task's ending is the call's.

use std::time::Duration;

use mcpq_schemas::{Job, JobError};
use rmcp::{
    ErrorData, RoleClient, ServiceError,
    model::{
        CallToolResult, CancelTaskParams, CancelTaskRequest, ClientRequest, CreateTaskResult,
        GetTaskParams, GetTaskRequest, InputRequiredResult, ServerResult, TaskPayload,
        UpdateTaskParams, UpdateTaskRequest,
    },
    service::{Peer, PeerRequestOptions},
};

use super::{CallOptions, ask, upstream_meta};

/// How a followed task ended.
pub(super) enum Followed {
    /// The upstream's answer: the task's result, or its error.
    Ended(Box<Result<ServerResult, ServiceError>>),
    /// Nobody answered what the task asked.
    Unanswered(JobError),
    /// The call was interrupted (the upstream's task was cancelled).
    Interrupted,
}

impl Followed {
    fn ended(answer: Result<ServerResult, ServiceError>) -> Self {
        Followed::Ended(Box::new(answer))
    }
}

/// The poll interval the upstream asked for, within reason.
fn poll_interval(created: &CreateTaskResult) -> Duration {
    Duration::from_millis(created.task.poll_interval_ms.unwrap_or(500))
        .clamp(Duration::from_millis(50), Duration::from_secs(5))
}

pub(super) async fn follow(
    peer: &Peer<RoleClient>,
    job: &Job,
    created: CreateTaskResult,
    options: &CallOptions,
) -> Followed {
    if let Some(asker) = &options.asker {
        asker.became_task().await;
    }
    let task_id = created.task.task_id.clone();
    let poll = poll_interval(&created);
    // The call's own time, counted from when it started.
    let deadline = options.asker.as_ref().map_or_else(
        || tokio::time::Instant::now() + options.timeout,
        |asker| asker.deadline,
    );
    let send = |request: ClientRequest| async move {
        let mut request_options = PeerRequestOptions::with_timeout(options.timeout);
        request_options.meta = Some(upstream_meta(job, options.traceparent.as_deref(), true));
        peer.send_request_with_option(request, request_options)
            .await?
            .await_response()
            .await
    };
    let cancel = || async {
        let request = CancelTaskRequest::new(CancelTaskParams::new(task_id.clone()));
        if let Err(e) = send(ClientRequest::CancelTaskRequest(request)).await {
            tracing::warn!(task_id, error = %e, "cannot cancel the upstream's task");
        }
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = options.interrupt.fired() => {
                cancel().await;
                return Followed::Interrupted;
            }
        }
        if tokio::time::Instant::now() > deadline {
            cancel().await;
            return Followed::ended(Err(ServiceError::Timeout {
                timeout: options.timeout,
            }));
        }
        let got = send(ClientRequest::GetTaskRequest(GetTaskRequest::new(
            GetTaskParams::new(task_id.clone()),
        )))
        .await;
        let got = match got {
            Ok(ServerResult::GetTaskResult(got)) => got,
            // The upstream's own word (an unknown task, say) ends it; a poll lost on the way
            // is tried again until the call's time is up.
            Err(ServiceError::McpError(e)) => {
                return Followed::ended(Err(ServiceError::McpError(e)));
            }
            Err(e) => {
                tracing::debug!(task_id, error = %e, "polling the upstream's task failed; trying again");
                continue;
            }
            Ok(_) => {
                cancel().await;
                return Followed::ended(Err(ServiceError::UnexpectedResponse));
            }
        };
        match got.task.payload {
            TaskPayload::Working => {}
            TaskPayload::InputRequired { input_requests } => {
                let asked = InputRequiredResult::new(Some(input_requests), None);
                let answers = match ask::answer_questions(options.asker.as_ref(), asked).await {
                    Ok((answers, _)) => answers,
                    Err(_) if options.interrupt.why().is_some() => {
                        cancel().await;
                        return Followed::Interrupted;
                    }
                    Err(error) => {
                        cancel().await;
                        return Followed::Unanswered(error);
                    }
                };
                let responses = serde_json::from_value(answers).unwrap_or_default();
                let update =
                    UpdateTaskRequest::new(UpdateTaskParams::new(task_id.clone(), responses));
                if let Err(e) = send(ClientRequest::UpdateTaskRequest(update)).await {
                    cancel().await;
                    return Followed::ended(Err(e));
                }
            }
            TaskPayload::Completed { result } => {
                return Followed::ended(
                    serde_json::from_value::<CallToolResult>(result.into())
                        .map(ServerResult::CallToolResult)
                        .map_err(|e| {
                            ServiceError::McpError(ErrorData::internal_error(
                                format!("the upstream's task {task_id} ended in an unreadable result: {e}"),
                                None,
                            ))
                        }),
                );
            }
            TaskPayload::Failed { error } => {
                let error = serde_json::from_value::<ErrorData>(error.into()).unwrap_or_else(|e| {
                    ErrorData::internal_error(
                        format!(
                            "the upstream's task {task_id} failed with an unreadable error: {e}"
                        ),
                        None,
                    )
                });
                return Followed::ended(Err(ServiceError::McpError(error)));
            }
            // A status this rmcp does not know: the task goes on.
            _ if !got.task.task.status.is_terminal() => {}
            TaskPayload::Cancelled | _ => {
                return Followed::ended(Err(ServiceError::McpError(ErrorData::internal_error(
                    format!("the upstream cancelled its task {task_id}"),
                    None,
                ))));
            }
        }
    }
}
