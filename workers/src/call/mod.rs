//! Calling the upstream: a job's MCP request in, the upstream's answer or a classified failure
//! out. Questions the upstream asks meanwhile go to the job's caller ([`ask`]); a call stopped
//! by its [`Interrupt`] tells the upstream before it returns.

pub(crate) mod ask;
pub(crate) mod cancel;
mod failure;
mod plain;
mod task;

use std::{sync::Arc, time::Duration};

use mcpq_schemas::{ErrorKind, Job, JobError, bridge};
use rmcp::{
    RoleClient, ServiceError,
    model::{
        CallToolRequestParams, CancelledNotification, CancelledNotificationParam, ClientRequest,
        CompleteRequestParams, GetPromptRequestParams, ProgressToken, ReadResourceRequestParams,
        RequestMetaObject, ServerResult,
    },
    service::{Peer, PeerRequestOptions},
};
use tokio::sync::mpsc;

pub(crate) use self::{
    ask::{Asker, ReplyTo},
    cancel::{Cancels, Interrupt, Why},
    failure::Failure,
};
use crate::{
    lock,
    upstream::{CallEntry, CallEvent, Lease, LogRoute, Upstream, Verdict, http::Plain},
};

/// `_meta` keys mcpq adds to every upstream request, so upstream tools can dedupe and correlate.
pub const META_JOB_ID: &str = "io.mcpq/jobId";
pub const META_IDEMPOTENCY_KEY: &str = "io.mcpq/idempotencyKey";

/// How one call ended.
#[derive(Debug)]
pub(crate) enum CallOutcome {
    /// Stopped by its interrupt (see [`Interrupt::why`]); the upstream was told.
    Interrupted,
    /// The upstream's MCP result, as JSON in the canonical shape (see `mcpq_schemas::bridge`).
    Answered(serde_json::Value),
    Failed(Failure),
}

impl CallOutcome {
    /// The verdict for the circuit breaker and passive health; an interrupted call says
    /// nothing about the upstream.
    pub(crate) fn verdict(&self) -> Option<Verdict> {
        match self {
            CallOutcome::Answered(_) => Some(Verdict::Answered),
            CallOutcome::Interrupted => None,
            CallOutcome::Failed(failure) => Some(failure.verdict),
        }
    }
}

/// One call's settings: how long it may take, what stops it, where its events and questions go.
pub(crate) struct CallOptions {
    pub timeout: Duration,
    pub interrupt: Interrupt,
    /// Progress, and log messages at or above the job's `logLevel`.
    pub events: Option<mpsc::UnboundedSender<CallEvent>>,
    pub asker: Option<Asker>,
    /// The trace context sent upstream: a child of the attempt's span (the job's own is its
    /// parent).
    pub traceparent: Option<String>,
}

/// Sends the job's request upstream and waits at most `options.timeout` for the answer, or
/// until the interrupt fires.
pub(crate) async fn call(upstream: &Upstream, job: &Job, options: CallOptions) -> CallOutcome {
    // Resource subscriptions live on the home session; every other call goes where the
    // balancer says, and its verdict counts for that endpoint.
    let subscription =
        job.request.method.starts_with("resources/") && job.request.method.ends_with("subscribe");
    let leased = if subscription {
        upstream
            .home()
            .await
            .map(|(peer, session)| (peer, session, None))
    } else {
        upstream
            .lease()
            .await
            .map(|(peer, lease)| (peer, lease.session(), Some(lease)))
    };
    let (peer, session, lease) = match leased {
        Ok(leased) => leased,
        Err(e) => {
            return CallOutcome::Failed(Failure::new(
                ErrorKind::UpstreamUnavailable,
                e.to_string(),
                Verdict::Retryable,
            ));
        }
    };
    let endpoint = lease.as_ref().map_or(upstream.server(), |l| l.endpoint());
    let plain = lease.as_ref().and_then(Lease::plain);
    let on = On {
        endpoint,
        peer: &peer,
        session,
        plain: plain.as_deref(),
    };
    let outcome = call_on(upstream, on, job, options).await;
    if let (Some(lease), Some(verdict)) = (lease, outcome.verdict()) {
        lease.verdict(verdict);
    }
    outcome
}

/// [`call`] on a chosen session.
/// Where a call goes: the endpoint (for messages), the session's peer and number, and the
/// plain path's client when the endpoint is an HTTP one.
#[derive(Clone, Copy)]
struct On<'a> {
    endpoint: &'a str,
    peer: &'a Peer<RoleClient>,
    session: u64,
    plain: Option<&'a Plain>,
}

async fn call_on(upstream: &Upstream, on: On<'_>, job: &Job, options: CallOptions) -> CallOutcome {
    let On { endpoint, peer, .. } = on;
    if let Some(answer) = answered_here(upstream, peer, job, options.timeout).await {
        return answer;
    }
    let log_route = match (&options.events, &job.log_level) {
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
            asker: options
                .asker
                .clone()
                .map(|a| Arc::new(a) as Arc<dyn crate::upstream::Ask>),
            request_id: None,
            session: None,
            between_rounds: false,
            plain: false,
        },
    );
    // A 2026-07-28 upstream asks in its result (`input_required`); the request is then sent
    // again with the caller's answers, up to `MAX_ROUNDS` times.
    let mut answers: Option<(serde_json::Value, Option<String>)> = None;
    let mut round = 0;
    loop {
        let request = match to_client_request(job, answers.take()) {
            Ok(request) => request,
            Err(error) => {
                return CallOutcome::Failed(Failure {
                    error,
                    verdict: Verdict::Permanent,
                    retry_after: None,
                });
            }
        };
        if round > 0 {
            in_flight.between_rounds(false);
        }
        let Some(answer) = send(on, upstream, job, request, &options, &in_flight).await else {
            return CallOutcome::Interrupted;
        };
        let answer = match answer {
            // A complete result as the upstream wrote it (the plain path): the job's result.
            Ok(Answer::AsWritten(result)) => {
                return CallOutcome::Answered(bridge::canonical_result(result));
            }
            Ok(Answer::Read(read)) => Ok(*read),
            Err(e) => Err(e),
        };
        // The upstream made the call a task: followed to its end.
        let answer = match answer {
            Ok(ServerResult::CreateTaskResult(created)) => {
                match task::follow(peer, job, created, &options).await {
                    task::Followed::Ended(answer) => *answer,
                    task::Followed::Interrupted => return CallOutcome::Interrupted,
                    task::Followed::Unanswered(error) => {
                        return CallOutcome::Failed(Failure {
                            error,
                            verdict: Verdict::Permanent,
                            retry_after: None,
                        });
                    }
                }
            }
            other => other,
        };
        let result = match answer {
            Ok(ServerResult::InputRequiredResult(asked)) if round < MAX_ROUNDS => {
                round += 1;
                in_flight.between_rounds(true);
                match ask::answer_questions(options.asker.as_ref(), asked).await {
                    Ok(next) => {
                        answers = Some(next);
                        continue;
                    }
                    Err(_) if options.interrupt.why().is_some() => {
                        return CallOutcome::Interrupted;
                    }
                    Err(error) => {
                        return CallOutcome::Failed(Failure {
                            error,
                            verdict: Verdict::Permanent,
                            retry_after: None,
                        });
                    }
                }
            }
            Ok(result) => result,
            Err(e) => {
                return CallOutcome::Failed(failure::classify(
                    upstream.server(),
                    endpoint,
                    e,
                    options.timeout,
                ));
            }
        };
        return match serde_json::to_value(&result) {
            Ok(value) => CallOutcome::Answered(bridge::canonical_result(value)),
            Err(e) => CallOutcome::Failed(Failure::new(
                ErrorKind::Internal,
                format!("cannot encode the upstream's result: {e}"),
                Verdict::Permanent,
            )),
        };
    }
}

/// The most `input_required` rounds one call may take.
const MAX_ROUNDS: usize = 10;

/// Sends one request upstream and waits for its answer; `None` when the call was interrupted
/// first. The upstream hears of a timeout or an interrupt before this returns: rmcp sends
/// `notifications/cancelled` to a 2025-era upstream and closes a 2026-07-28 request's stream.
/// What the upstream answered a request with.
enum Answer {
    /// rmcp's reading of the result.
    Read(Box<ServerResult>),
    /// A complete tool result as the upstream wrote it (the plain path reads no further).
    AsWritten(serde_json::Value),
}

async fn send(
    on: On<'_>,
    upstream: &Upstream,
    job: &Job,
    request: ClientRequest,
    options: &CallOptions,
    in_flight: &InFlight<'_>,
) -> Option<Result<Answer, ServiceError>> {
    let On {
        peer,
        session,
        plain,
        ..
    } = on;
    let revision = peer.peer_info().map(|i| i.protocol_version.clone());
    let modern = revision.as_ref().is_some_and(|r| !r.has_initialize());
    // A 2026-07-28 tool call over HTTP needs none of rmcp's client machinery.
    let request = match (request, plain, &revision) {
        (ClientRequest::CallToolRequest(call), Some(plain), Some(revision))
            if modern && upstream.plain_for(&call.params.name) =>
        {
            let revision = revision.to_string();
            return self::plain::send(plain, upstream, job, call, options, in_flight, &revision)
                .await;
        }
        (request, _, _) => request,
    };
    let mut request_options = PeerRequestOptions::with_timeout(options.timeout);
    request_options.meta = Some(upstream_meta(job, options.traceparent.as_deref(), modern));
    let handle = match peer
        .send_request_with_option(request, request_options)
        .await
    {
        Ok(handle) => handle,
        Err(e) => return Some(Err(e)),
    };
    in_flight.sent(session, handle.id.clone());
    let _route = options
        .events
        .clone()
        .map(|to| Route::add(upstream, session, handle.progress_token.clone(), to));
    let id = handle.id.clone();
    tokio::select! {
        answer = handle.await_response() => Some(answer.map(|read| Answer::Read(Box::new(read)))),
        () = options.interrupt.fired() => {
            let reason = match options.interrupt.why() {
                Some(Why::Cancelled(_)) | None => "cancelled through mcpq",
                Some(Why::Draining) => "the mcpq worker is stopping; the job will run again",
                Some(Why::Lost) => "the job went to another mcpq worker",
            };
            let notification = CancelledNotification::new(CancelledNotificationParam::new(
                Some(id),
                Some(reason.into()),
            ));
            if let Err(e) = peer.send_notification(notification.into()).await {
                tracing::warn!(error = %e, "cannot tell the upstream the call was cancelled");
            }
            None
        }
    }
}

/// The `_meta` mcpq sends upstream with a job's request.
fn upstream_meta(job: &Job, traceparent: Option<&str>, modern: bool) -> RequestMetaObject {
    let mut meta = RequestMetaObject::new();
    let map = &mut meta.0.0;
    // A 2026-07-28 upstream reads the client's capabilities from each request: it hears the
    // caller's, so that it asks only what the caller can answer — of those mcpq relays — and
    // makes a task of the call only for a caller that can have one (mcpq follows it).
    if modern && let Some(declared) = job.client_capabilities.as_ref().and_then(|c| c.as_object()) {
        let mut relayed: serde_json::Map<_, _> = declared
            .iter()
            .filter(|(key, _)| matches!(key.as_str(), "sampling" | "elicitation" | "roots"))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if job
            .client_capabilities
            .as_ref()
            .is_some_and(bridge::declares_tasks)
        {
            relayed.insert(
                "extensions".into(),
                serde_json::json!({ bridge::TASKS_EXTENSION: {} }),
            );
        }
        map.insert(bridge::META_CLIENT_CAPABILITIES.into(), relayed.into());
    }
    map.insert(META_JOB_ID.into(), job.id.to_string().into());
    if let Some(key) = &job.idempotency_key {
        map.insert(META_IDEMPOTENCY_KEY.into(), key.clone().into());
    }
    // The upstream call's own span, or else the job's trace.
    if let Some(traceparent) = traceparent.or(job.traceparent.as_deref()) {
        map.insert("traceparent".into(), traceparent.into());
    }
    if let Some(level) = &job.log_level {
        // 2026-07-28 upstreams send log messages only to requests that opt in.
        map.insert(bridge::META_LOG_LEVEL.into(), level.clone().into());
    }
    meta
}

/// `resources/subscribe` and `resources/unsubscribe` change this session's subscriptions,
/// counted per subscription: only the first subscription to a URI and the last one out reach a
/// 2025-era upstream (the others are answered here, so one subscriber's `unsubscribe` leaves
/// the rest subscribed). A 2026-07-28 upstream has no such methods (the upstream's listen loop
/// listens for it), so its jobs are answered here.
async fn answered_here(
    upstream: &Upstream,
    peer: &Peer<RoleClient>,
    job: &Job,
    timeout: Duration,
) -> Option<CallOutcome> {
    let subscribe = match job.request.method.as_str() {
        "resources/subscribe" => true,
        "resources/unsubscribe" => false,
        _ => return None,
    };
    let uri = job
        .request
        .params
        .as_ref()
        .and_then(|p| p.get("uri"))
        .and_then(|u| u.as_str())?;
    let subscriptions = upstream.subscriptions();
    let (generation, changed) = subscriptions.set(uri, subscribe);
    let modern = peer
        .peer_info()
        .is_some_and(|i| !i.protocol_version.has_initialize());
    if !modern {
        return (!changed)
            .then(|| CallOutcome::Answered(bridge::canonical_result(serde_json::json!({}))));
    }
    // Answered once the upstream listens, so that no update after the answer is missed.
    if !subscriptions.applied(generation, timeout).await {
        return Some(CallOutcome::Failed(Failure::new(
            ErrorKind::UpstreamUnavailable,
            format!(
                "upstream {:?} did not open a subscription for {uri:?} within {}",
                upstream.server(),
                humantime::format_duration(timeout)
            ),
            Verdict::Retryable,
        )));
    }
    Some(CallOutcome::Answered(bridge::canonical_result(
        serde_json::json!({}),
    )))
}

/// A call's entry in the upstream's progress routes, removed when the call ends.
struct Route<'a> {
    upstream: &'a Upstream,
    session: u64,
    token: ProgressToken,
}

impl<'a> Route<'a> {
    fn add(
        upstream: &'a Upstream,
        session: u64,
        token: ProgressToken,
        to: mpsc::UnboundedSender<CallEvent>,
    ) -> Self {
        lock(&upstream.events().progress).add(session, token.clone(), to);
        Route {
            upstream,
            session,
            token,
        }
    }
}

impl Drop for Route<'_> {
    fn drop(&mut self) {
        lock(&self.upstream.events().progress).remove(self.session, &self.token);
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
    fn sent(&self, session: u64, id: rmcp::model::RequestId) {
        if let Some(entry) = lock(&self.upstream.events().calls).get_mut(&self.key) {
            entry.request_id = Some(id);
            entry.session = Some(session);
            entry.plain = false;
        }
    }

    /// Notes that the call's request went on the plain path: what comes for it comes on its
    /// own stream.
    fn sent_plain(&self) {
        if let Some(entry) = lock(&self.upstream.events().calls).get_mut(&self.key) {
            entry.request_id = None;
            entry.session = None;
            entry.plain = true;
        }
    }

    /// Notes whether the call's questions are with the caller: until its next request,
    /// nothing the upstream sends is the call's.
    fn between_rounds(&self, between: bool) {
        if let Some(entry) = lock(&self.upstream.events().calls).get_mut(&self.key) {
            entry.between_rounds = between;
            if between {
                entry.request_id = None;
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.upstream.events().calls).remove(&self.key);
    }
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
}
