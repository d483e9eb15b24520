//! Calling the upstream: a job's MCP request in, the upstream's answer or a classified failure out.

use std::time::Duration;

use mcpq_schemas::{ErrorKind, Job, JobError, bridge};
use rmcp::{
    ServiceError,
    model::{
        CallToolRequestParams, CancelledNotification, CancelledNotificationParam, ClientRequest,
        CompleteRequestParams, GetPromptRequestParams, ProgressToken, ReadResourceRequestParams,
        RequestMetaObject,
    },
    service::PeerRequestOptions,
    transport::streamable_http_client::{HttpStatusError, StreamableHttpError},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    decide::Verdict,
    upstream::{CallEvent, LogRoute, Upstream, lock},
};

/// `_meta` keys mcpq adds to every upstream request, so upstream tools can dedupe and correlate.
pub const META_JOB_ID: &str = "io.mcpq/jobId";
pub const META_IDEMPOTENCY_KEY: &str = "io.mcpq/idempotencyKey";

/// How one attempt at a job ended.
#[derive(Debug)]
pub(crate) enum CallOutcome {
    /// Cancelled while running; the upstream was sent `notifications/cancelled`.
    Cancelled,
    /// The upstream's MCP result, as JSON in the canonical shape (see `mcpq_schemas::bridge`).
    Answered(serde_json::Value),
    Failed {
        error: JobError,
        verdict: Verdict,
        /// The upstream asked not to be called again before this (HTTP 429 `Retry-After`).
        retry_after: Option<Duration>,
    },
}

/// Sends the job's request upstream and waits at most `timeout` for the answer, or until
/// `cancel`. Progress the upstream reports, and its log messages at or above the job's
/// `logLevel`, go to `events`.
pub(crate) async fn call(
    upstream: &Upstream,
    job: &Job,
    timeout: Duration,
    cancel: &CancellationToken,
    events: Option<mpsc::UnboundedSender<CallEvent>>,
) -> CallOutcome {
    let request = match to_client_request(job) {
        Ok(request) => request,
        Err(error) => {
            return CallOutcome::Failed {
                error,
                verdict: Verdict::Permanent,
                retry_after: None,
            };
        }
    };
    let peer = match upstream.peer().await {
        Ok(peer) => peer,
        Err(e) => {
            return CallOutcome::Failed {
                error: JobError::new(ErrorKind::UpstreamUnavailable, e.to_string()),
                verdict: Verdict::Retryable,
                retry_after: None,
            };
        }
    };
    let mut meta = RequestMetaObject::new();
    meta.0
        .0
        .insert(META_JOB_ID.into(), job.id.to_string().into());
    if let Some(key) = &job.idempotency_key {
        meta.0
            .0
            .insert(META_IDEMPOTENCY_KEY.into(), key.clone().into());
    }
    if let Some(traceparent) = &job.traceparent {
        meta.0
            .0
            .insert("traceparent".into(), traceparent.clone().into());
    }
    if let Some(level) = &job.log_level {
        // 2026-07-28 upstreams send log messages only to requests that opt in.
        meta.0
            .0
            .insert(bridge::META_LOG_LEVEL.into(), level.clone().into());
    }
    let mut options = PeerRequestOptions::with_timeout(timeout);
    options.meta = Some(meta);
    let log_route = match (&events, &job.log_level) {
        (Some(to), Some(level)) => Some(LogRoute {
            to: to.clone(),
            min_level: level.clone(),
        }),
        _ => None,
    };
    let _in_flight = InFlight::add(upstream, log_route);
    let answer = match peer.send_request_with_option(request, options).await {
        Ok(handle) => {
            let _route = events.map(|to| Route::add(upstream, handle.progress_token.clone(), to));
            let id = handle.id.clone();
            tokio::select! {
                answer = handle.await_response() => answer,
                () = cancel.cancelled() => {
                    let notification = CancelledNotification::new(CancelledNotificationParam::new(
                        Some(id),
                        Some("cancelled through mcpq".into()),
                    ));
                    if let Err(e) = peer.send_notification(notification.into()).await {
                        tracing::warn!(error = %e, "cannot tell the upstream the call was cancelled");
                    }
                    return CallOutcome::Cancelled;
                }
            }
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok(result) => match serde_json::to_value(&result) {
            Ok(value) => CallOutcome::Answered(bridge::canonical_result(value)),
            Err(e) => CallOutcome::Failed {
                error: JobError::new(
                    ErrorKind::Internal,
                    format!("cannot encode the upstream's result: {e}"),
                ),
                verdict: Verdict::Permanent,
                retry_after: None,
            },
        },
        Err(e) => {
            if let Some((429, retry_after)) = http_status(&e) {
                let error = JobError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "server {:?} answered HTTP 429 Too Many Requests{}",
                        upstream.server(),
                        retry_after.map_or(String::new(), |d| format!(
                            " (Retry-After: {}s)",
                            d.as_secs()
                        ))
                    ),
                );
                return CallOutcome::Failed {
                    error,
                    verdict: Verdict::Retryable,
                    retry_after,
                };
            }
            let (error, verdict) = classify(upstream.server(), e, timeout);
            CallOutcome::Failed {
                error,
                verdict,
                retry_after: None,
            }
        }
    }
}

/// A call's entry in the upstream's progress routes, removed when the call ends.
struct Route<'a> {
    upstream: &'a Upstream,
    token: ProgressToken,
}

impl<'a> Route<'a> {
    fn add(
        upstream: &'a Upstream,
        token: ProgressToken,
        to: mpsc::UnboundedSender<CallEvent>,
    ) -> Self {
        lock(&upstream.events().progress).insert(token.clone(), to);
        Route { upstream, token }
    }
}

impl Drop for Route<'_> {
    fn drop(&mut self) {
        lock(&self.upstream.events().progress).remove(&self.token);
    }
}

/// A call's entry among the upstream's calls in flight, removed when the call ends.
struct InFlight<'a> {
    upstream: &'a Upstream,
    key: u64,
}

impl<'a> InFlight<'a> {
    fn add(upstream: &'a Upstream, logs: Option<LogRoute>) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let key = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&upstream.events().calls).insert(key, logs);
        InFlight { upstream, key }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.upstream.events().calls).remove(&self.key);
    }
}

/// The HTTP status (and `Retry-After`, in whole seconds) behind a failed upstream request, when
/// the transport reports one.
fn http_status(error: &ServiceError) -> Option<(u16, Option<Duration>)> {
    let ServiceError::TransportSend(e) = error else {
        return None;
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e.error.as_ref());
    while let Some(e) = next {
        let status = e.downcast_ref::<HttpStatusError>().or_else(|| {
            match e.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
                Some(StreamableHttpError::HttpStatus(status)) => Some(status),
                _ => None,
            }
        });
        if let Some(status) = status {
            let retry_after = status
                .retry_after
                .as_deref()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Some((status.status, retry_after));
        }
        next = e.source();
    }
    None
}

/// The job's `{method, params}` as an rmcp request; a request rmcp cannot read is malformed.
/// A standard method whose params do not fit its type would otherwise pass as a custom request
/// and reach the upstream, so the params of the methods mcpq routes are checked by type.
fn to_client_request(job: &Job) -> Result<ClientRequest, JobError> {
    let method = job.request.method.as_str();
    let params = serde_json::Value::Object(job.request.params.clone().unwrap_or_default());
    let malformed = |e: serde_json::Error| {
        JobError::new(
            ErrorKind::MalformedJob,
            format!("request is not a valid MCP {method:?} request: {e}"),
        )
    };
    match method {
        "tools/call" => check::<CallToolRequestParams>(&params).map_err(malformed)?,
        "resources/read" => check::<ReadResourceRequestParams>(&params).map_err(malformed)?,
        "prompts/get" => check::<GetPromptRequestParams>(&params).map_err(malformed)?,
        "completion/complete" => check::<CompleteRequestParams>(&params).map_err(malformed)?,
        _ => {}
    }
    let mut value = serde_json::json!({ "method": method });
    if job.request.params.is_some() {
        value["params"] = params;
    }
    serde_json::from_value(value).map_err(malformed)
}

fn check<T: serde::de::DeserializeOwned>(
    params: &serde_json::Value,
) -> Result<(), serde_json::Error> {
    T::deserialize(params).map(drop)
}

/// Sorts an rmcp failure into a job error and whether trying again may help.
pub(crate) fn classify(
    server: &str,
    error: ServiceError,
    timeout: Duration,
) -> (JobError, Verdict) {
    match error {
        ServiceError::McpError(e) => {
            let error = JobError {
                kind: ErrorKind::Upstream,
                message: e.message.to_string(),
                code: Some(i64::from(e.code.0)),
                data: e.data,
            };
            (error, Verdict::Permanent)
        }
        ServiceError::Timeout { .. } => (
            JobError::new(
                ErrorKind::Timeout,
                format!("server {server:?} did not answer within {timeout:?}"),
            ),
            Verdict::Retryable,
        ),
        ServiceError::TransportClosed
        | ServiceError::TransportSend(_)
        | ServiceError::Cancelled { .. } => (
            JobError::new(
                ErrorKind::UpstreamUnavailable,
                format!("connection to server {server:?} failed: {error}"),
            ),
            Verdict::Retryable,
        ),
        other => (
            JobError::new(ErrorKind::Internal, format!("server {server:?}: {other}")),
            Verdict::Permanent,
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mcpq_schemas::McpRequest;

    use super::*;

    #[test]
    fn tool_calls_and_other_methods_become_rmcp_requests() {
        let args = serde_json::json!({"x": 1}).as_object().cloned();
        let job = Job::new("s", McpRequest::call_tool("echo.v2", args));
        assert!(matches!(
            to_client_request(&job),
            Ok(ClientRequest::CallToolRequest(_))
        ));
        let list = Job::new(
            "s",
            McpRequest {
                method: "tools/list".into(),
                params: None,
            },
        );
        assert!(matches!(
            to_client_request(&list),
            Ok(ClientRequest::ListToolsRequest(_))
        ));
    }

    #[test]
    fn a_request_rmcp_cannot_read_is_malformed() {
        for params in [
            None,
            serde_json::json!({"arguments": {}}).as_object().cloned(),
        ] {
            let job = Job::new(
                "s",
                McpRequest {
                    method: "tools/call".into(),
                    params,
                },
            );
            let err = to_client_request(&job).unwrap_err();
            assert_eq!(err.kind, ErrorKind::MalformedJob);
            assert!(err.message.contains("name"), "{}", err.message);
        }
    }

    #[test]
    fn failures_are_classified_for_retry() {
        let t = Duration::from_secs(1);
        let (e, v) = classify("s", ServiceError::TransportClosed, t);
        assert_eq!(
            (e.kind, v),
            (ErrorKind::UpstreamUnavailable, Verdict::Retryable)
        );
        let (e, v) = classify("s", ServiceError::Timeout { timeout: t }, t);
        assert_eq!((e.kind, v), (ErrorKind::Timeout, Verdict::Retryable));
        let invalid = rmcp::ErrorData::invalid_params("bad x", None);
        let (e, v) = classify("s", ServiceError::McpError(invalid), t);
        assert_eq!(
            (e.kind, e.code, v),
            (ErrorKind::Upstream, Some(-32602), Verdict::Permanent)
        );
    }
}
