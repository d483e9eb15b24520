//! Calling the upstream: a job's MCP request in, the upstream's answer or a classified failure out.

use std::time::Duration;

use mcpq_schemas::{ErrorKind, Job, JobError, bridge};
use rmcp::{
    RoleClient, ServiceError,
    model::{
        CallToolRequestParams, CancelledNotification, CancelledNotificationParam, ClientRequest,
        CompleteRequestParams, GetPromptRequestParams, ProgressToken, ReadResourceRequestParams,
        RequestMetaObject, ServerResult,
    },
    service::{Peer, PeerRequestOptions},
    transport::streamable_http_client::{HttpStatusError, StreamableHttpError},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    ask::Asker,
    decide::Verdict,
    upstream::{CallEntry, CallEvent, LogRoute, Upstream, lock},
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
    asker: Option<Asker>,
) -> CallOutcome {
    let failed = |error, verdict| CallOutcome::Failed {
        error,
        verdict,
        retry_after: None,
    };
    // Resource subscriptions live on the home session; every other call goes where the
    // balancer says, and its verdict counts for that endpoint.
    let subscription =
        job.request.method.starts_with("resources/") && job.request.method.ends_with("subscribe");
    let leased = if subscription {
        upstream.peer().await.map(|peer| (peer, None))
    } else {
        upstream
            .lease()
            .await
            .map(|(peer, lease)| (peer, Some(lease)))
    };
    let (peer, lease) = match leased {
        Ok(leased) => leased,
        Err(e) => {
            let error = JobError::new(
                ErrorKind::UpstreamUnavailable,
                mcpq_schemas::redact::in_text(&e.to_string()),
            );
            return failed(error, Verdict::Retryable);
        }
    };
    let outcome = call_on(upstream, &peer, job, timeout, cancel, events, asker).await;
    if let Some(lease) = lease {
        lease.verdict(match &outcome {
            CallOutcome::Answered(_) | CallOutcome::Cancelled => Verdict::Answered,
            CallOutcome::Failed { verdict, .. } => *verdict,
        });
    }
    outcome
}

/// [`call`] on a chosen session.
async fn call_on(
    upstream: &Upstream,
    peer: &Peer<RoleClient>,
    job: &Job,
    timeout: Duration,
    cancel: &CancellationToken,
    events: Option<mpsc::UnboundedSender<CallEvent>>,
    asker: Option<Asker>,
) -> CallOutcome {
    let failed = |error, verdict| CallOutcome::Failed {
        error,
        verdict,
        retry_after: None,
    };
    if let Some(answer) = crate::subscribe::answered_here(upstream, peer, job, timeout).await {
        return answer;
    }
    let log_route = match (&events, &job.log_level) {
        (Some(to), Some(level)) => Some(LogRoute {
            to: to.clone(),
            min_level: level.clone(),
        }),
        _ => None,
    };
    let in_flight = InFlight::add(
        upstream,
        CallEntry {
            logs: log_route,
            asker: asker.clone(),
            request_id: None,
        },
    );
    // A 2026-07-28 upstream asks in its result (`input_required`); the request is then sent
    // again with the caller's answers, up to `MAX_ROUNDS` times.
    let mut answers: Option<(serde_json::Value, Option<String>)> = None;
    for round in 0.. {
        let request = match to_client_request(job, answers.take()) {
            Ok(request) => request,
            Err(error) => return failed(error, Verdict::Permanent),
        };
        let answer = match send(
            peer, upstream, job, request, timeout, cancel, &events, &in_flight,
        )
        .await
        {
            Some(answer) => answer,
            None => return CallOutcome::Cancelled,
        };
        let result = match answer {
            Ok(ServerResult::InputRequiredResult(asked)) if round < MAX_ROUNDS => {
                match crate::ask::answer_questions(asker.as_ref(), asked).await {
                    Ok(next) => {
                        answers = Some(next);
                        continue;
                    }
                    Err(error) => return failed(error, Verdict::Permanent),
                }
            }
            Ok(result) => result,
            Err(e) => return failure(upstream.server(), e, timeout),
        };
        return match serde_json::to_value(&result) {
            Ok(value) => CallOutcome::Answered(bridge::canonical_result(value)),
            Err(e) => failed(
                JobError::new(
                    ErrorKind::Internal,
                    format!("cannot encode the upstream's result: {e}"),
                ),
                Verdict::Permanent,
            ),
        };
    }
    unreachable!("the loop returns")
}

/// Whether the upstream is alive, asked with an MCP `ping` (a `tools/list` for an upstream
/// that does not know `ping`), at most `timeout`: the circuit breaker's probe. Opens a session
/// first if there is none. Any answer, even a JSON-RPC error, shows it is alive.
pub(crate) async fn probe(upstream: &Upstream, timeout: Duration) -> Verdict {
    let peer = match tokio::time::timeout(timeout, upstream.peer()).await {
        Ok(Ok(peer)) => peer,
        Ok(Err(_)) | Err(_) => return Verdict::Retryable,
    };
    if ping(&peer, timeout).await {
        Verdict::Answered
    } else {
        Verdict::Retryable
    }
}

/// Whether the session's server answers a `ping` (or, not knowing `ping`, a `tools/list`)
/// within `timeout`; any answer, even an error, counts.
pub(crate) async fn ping(peer: &Peer<RoleClient>, timeout: Duration) -> bool {
    let ask = |request: ClientRequest| {
        let peer = peer.clone();
        async move {
            let handle = peer
                .send_request_with_option(request, PeerRequestOptions::with_timeout(timeout))
                .await?;
            handle.await_response().await
        }
    };
    let ping = ClientRequest::PingRequest(rmcp::model::PingRequest::default());
    let answer = match ask(ping).await {
        Err(ServiceError::McpError(e)) if e.code == rmcp::model::ErrorCode::METHOD_NOT_FOUND => {
            let list = rmcp::model::ListToolsRequest {
                method: Default::default(),
                params: None,
                extensions: Default::default(),
            };
            ask(ClientRequest::ListToolsRequest(list)).await
        }
        other => other,
    };
    matches!(answer, Ok(_) | Err(ServiceError::McpError(_)))
}

/// The most `input_required` rounds one call may take.
const MAX_ROUNDS: usize = 10;

/// Sends one request upstream and waits for its answer; `None` when the call was cancelled
/// first (the upstream is told).
#[allow(clippy::too_many_arguments)]
async fn send(
    peer: &Peer<RoleClient>,
    upstream: &Upstream,
    job: &Job,
    request: ClientRequest,
    timeout: Duration,
    cancel: &CancellationToken,
    events: &Option<mpsc::UnboundedSender<CallEvent>>,
    in_flight: &InFlight<'_>,
) -> Option<Result<ServerResult, ServiceError>> {
    let mut options = PeerRequestOptions::with_timeout(timeout);
    options.meta = Some(upstream_meta(job));
    let handle = match peer.send_request_with_option(request, options).await {
        Ok(handle) => handle,
        Err(e) => return Some(Err(e)),
    };
    in_flight.sent(handle.id.clone());
    let _route = events
        .clone()
        .map(|to| Route::add(upstream, handle.progress_token.clone(), to));
    let id = handle.id.clone();
    tokio::select! {
        answer = handle.await_response() => Some(answer),
        () = cancel.cancelled() => {
            let notification = CancelledNotification::new(CancelledNotificationParam::new(
                Some(id),
                Some("cancelled through mcpq".into()),
            ));
            if let Err(e) = peer.send_notification(notification.into()).await {
                tracing::warn!(error = %e, "cannot tell the upstream the call was cancelled");
            }
            None
        }
    }
}

/// The `_meta` mcpq sends upstream with a job's request.
fn upstream_meta(job: &Job) -> RequestMetaObject {
    let mut meta = RequestMetaObject::new();
    let map = &mut meta.0.0;
    map.insert(META_JOB_ID.into(), job.id.to_string().into());
    if let Some(key) = &job.idempotency_key {
        map.insert(META_IDEMPOTENCY_KEY.into(), key.clone().into());
    }
    // The attempt made it the upstream call's own span (`attempt::run`).
    if let Some(traceparent) = &job.traceparent {
        map.insert("traceparent".into(), traceparent.clone().into());
    }
    if let Some(level) = &job.log_level {
        // 2026-07-28 upstreams send log messages only to requests that opt in.
        map.insert(bridge::META_LOG_LEVEL.into(), level.clone().into());
    }
    meta
}

/// A failed upstream request as the attempt's outcome.
fn failure(server: &str, e: ServiceError, timeout: Duration) -> CallOutcome {
    if too_large(&e) {
        // The same call would give the same answer: failed for good, never sent again.
        let error = JobError::new(
            ErrorKind::TooLarge,
            format!(
                "server {server:?} answered with more than its maxResultBytes allows ({e}): raise maxResultBytes, or ask the upstream for less"
            ),
        );
        return CallOutcome::Failed {
            error,
            verdict: Verdict::Permanent,
            retry_after: None,
        };
    }
    if let Some((429, retry_after)) = http_status(&e) {
        let error = JobError::new(
            ErrorKind::RateLimited,
            format!(
                "server {server:?} answered HTTP 429 Too Many Requests{}",
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
    let (error, verdict) = classify(server, e, timeout);
    CallOutcome::Failed {
        error,
        verdict,
        retry_after: None,
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
        lock(&upstream.events().progress).add(token.clone(), to);
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
    fn add(upstream: &'a Upstream, entry: CallEntry) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let key = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&upstream.events().calls).insert(key, entry);
        InFlight { upstream, key }
    }

    /// Notes the id of the call's request upstream: questions on its response stream are its.
    fn sent(&self, id: rmcp::model::RequestId) {
        if let Some(entry) = lock(&self.upstream.events().calls).get_mut(&self.key) {
            entry.request_id = Some(id);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.upstream.events().calls).remove(&self.key);
    }
}

/// Whether the transport refused the upstream's answer for its size.
fn too_large(error: &ServiceError) -> bool {
    let ServiceError::TransportSend(e) = error else {
        return false;
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e.error.as_ref());
    while let Some(e) = next {
        if matches!(
            e.downcast_ref::<StreamableHttpError<reqwest::Error>>(),
            Some(StreamableHttpError::ResponseBodyTooLarge { .. })
        ) || e.to_string().contains("exceeded the maximum size")
        {
            return true;
        }
        next = e.source();
    }
    false
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

/// The job's `{method, params}` as an rmcp request (with the caller's answers of an earlier
/// round, when there were questions); a request rmcp cannot read is malformed. A standard
/// method whose params do not fit its type would otherwise pass as a custom request and reach
/// the upstream, so the params of the methods mcpq routes are checked by type.
fn to_client_request(
    job: &Job,
    answers: Option<(serde_json::Value, Option<String>)>,
) -> Result<ClientRequest, JobError> {
    let method = job.request.method.as_str();
    let mut params = job.request.params.clone().unwrap_or_default();
    if let Some((responses, state)) = answers {
        params.insert("inputResponses".into(), responses);
        if let Some(state) = state {
            params.insert("requestState".into(), state.into());
        }
    }
    let params = serde_json::Value::Object(params);
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
    if params.as_object().is_some_and(|p| !p.is_empty()) || job.request.params.is_some() {
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
                mcpq_schemas::redact::in_text(&format!(
                    "connection to server {server:?} failed: {error}"
                )),
            ),
            Verdict::Retryable,
        ),
        other => (
            JobError::new(
                ErrorKind::Internal,
                mcpq_schemas::redact::in_text(&format!("server {server:?}: {other}")),
            ),
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
            to_client_request(&job, None),
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
            to_client_request(&list, None),
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
            let err = to_client_request(&job, None).unwrap_err();
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
