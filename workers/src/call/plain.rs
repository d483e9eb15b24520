//! The plain path: a 2026-07-28 `tools/call` to an HTTP upstream as one POST on a pooled
//! keep-alive connection, its answer read from the body — a JSON one, or the SSE stream of the
//! call's progress, log messages and questions ending in it.
//!
//! rmcp's client hands every request to its transport's worker task through channels, writes
//! the message to a JSON value just to derive its headers, and reads the answer through serde's
//! buffered untagged enums: on two cores that was about a sixth of a worker's CPU per call
//! (BENCHMARKS.md). A 2026-07-28 request needs none of it — it carries its revision, client and
//! capabilities in its `_meta` and is answered on its own — so a call takes this path when its
//! session speaks 2026-07-28 over HTTP, the catalog lists its tool, the tool's schema asks for
//! no `Mcp-Param-*` header (SEP-2243, which rmcp writes) and its name is a plain header value
//! (`Upstream::plain_for`). Everything else goes through rmcp, as do the follow-ups of a task
//! the upstream makes of the call (`task::follow`).
//!
//! What goes on the wire is what rmcp sends: the same headers (a configured header of one of
//! their names is overridden, where rmcp refuses it), and in `_meta` the caller's keys, then
//! the revision, mcpq's client and capabilities, then mcpq's own keys and a progress token. Ids
//! and tokens are strings unique in the process, so they never meet rmcp's numbers; the call's
//! progress (under its own token) and log messages come on its own stream and go straight to
//! its caller, and its entry among the calls in flight is never guessed to own anything a
//! session sends. An answer is read in rmcp's order — an auth challenge, 429 and 5xx by their
//! status (with `Retry-After`), a JSON-RPC error in any other body but an unchallenged 401 or
//! 403, a stream that breaks off as a closed transport — so `failure::classify` says what it
//! says for rmcp's client, with two differences: an event over the size limit fails the call
//! as too large (rmcp's client closes the stream), and a stream that ends early is not resumed
//! with `Last-Event-ID` (the call is tried again, as rmcp's client does when it cannot
//! resume). A question the upstream asks on the stream goes to the caller (`ask`; a ping is
//! answered here) and the answer back in a POST. The client speaks HTTP/1.1 only, so the
//! upstream hears of a timeout or an interrupt as rmcp's client tells it: the request's
//! connection is closed.

use std::{
    borrow::Cow,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use futures::StreamExt;
use mcpq_schemas::{Job, JsonObject};
use rmcp::{
    ServiceError,
    model::{
        CallToolRequest, JsonRpcRequest, NumberOrString, ProgressToken, RequestId,
        ServerJsonRpcMessage, ServerNotification, ServerRequest, ServerResult,
    },
    transport::{DynamicTransportError, streamable_http_client::HttpStatusError},
};
use serde::Deserialize;
use serde_json::Value;

use super::{Answer, CallOptions, InFlight, upstream_meta};
use crate::upstream::{CallEvent, Upstream, http::Plain};

/// Sends the call and reads its answer; `None` when it was interrupted first.
pub(super) async fn send(
    plain: &Plain,
    upstream: &Upstream,
    job: &Job,
    request: CallToolRequest,
    options: &CallOptions,
    in_flight: &InFlight<'_>,
    revision: &str,
) -> Option<Result<Answer, ServiceError>> {
    // Unique in this process: ids and tokens are never shared with another request.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id: std::sync::Arc<str> = format!("mcpq-{}-{n}", job.id).into();
    let request_id = RequestId::String(id.clone());
    let token = ProgressToken(NumberOrString::String(id));
    let name = request.params.name.to_string();
    let body = match body(&request_id, &token, job, request, options, revision) {
        Ok(body) => body,
        Err(e) => return Some(Err(e)),
    };
    in_flight.sent_plain();
    let call = Call {
        plain,
        upstream,
        options,
        id: &request_id,
        token: &token,
        log_level: job.log_level.as_deref(),
        revision,
    };
    let answer = tokio::time::timeout(options.timeout, call.post(&name, body));
    tokio::select! {
        answered = answer => Some(answered.unwrap_or(Err(ServiceError::Timeout {
            timeout: options.timeout,
        }))),
        // Dropping the request closes its connection: how a 2026-07-28 upstream hears of it.
        () = options.interrupt.fired() => None,
    }
}

/// The JSON-RPC request as rmcp writes it: the job's params, and in `_meta` the caller's keys,
/// then the revision, mcpq's client and capabilities, then mcpq's own keys (the caller's
/// capabilities, as mcpq relays them, among them), then the progress token.
fn body(
    id: &RequestId,
    token: &ProgressToken,
    job: &Job,
    mut request: CallToolRequest,
    options: &CallOptions,
    revision: &str,
) -> Result<Vec<u8>, ServiceError> {
    let mut meta: JsonObject = request
        .extensions
        .get::<rmcp::model::RequestMetaObject>()
        .map(|m| m.0.0.clone())
        .unwrap_or_default();
    meta.insert(
        "io.modelcontextprotocol/protocolVersion".into(),
        revision.into(),
    );
    meta.insert(
        "io.modelcontextprotocol/clientInfo".into(),
        serde_json::json!({"name": "mcpq-worker", "version": env!("CARGO_PKG_VERSION")}),
    );
    meta.insert(
        mcpq_schemas::bridge::META_CLIENT_CAPABILITIES.into(),
        crate::upstream::worker_capabilities(),
    );
    meta.extend(upstream_meta(job, options.traceparent.as_deref(), true).0.0);
    meta.insert(
        "progressToken".into(),
        serde_json::to_value(token).unwrap_or(Value::Null),
    );
    request.params.meta = None;
    let mut params = match serde_json::to_value(&request.params) {
        Ok(Value::Object(params)) => params,
        _ => JsonObject::new(),
    };
    params.insert("_meta".into(), Value::Object(meta));
    serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": params,
    }))
    .map_err(|e| failed(Unexpected(format!("cannot encode the request: {e}"))))
}

/// One call on the plain path.
struct Call<'a> {
    plain: &'a Plain,
    upstream: &'a Upstream,
    options: &'a CallOptions,
    id: &'a RequestId,
    token: &'a ProgressToken,
    /// The job's `logLevel`: log messages at or above it go to the caller.
    log_level: Option<&'a str>,
    revision: &'a str,
}

impl Call<'_> {
    /// The headers of every POST of this call: the endpoint's configured ones and rmcp's.
    fn headers(&self, method: Option<&str>, name: Option<&str>) -> http::HeaderMap {
        let mut headers = self.plain.headers.clone();
        let fixed = [
            ("accept", Some("text/event-stream, application/json")),
            ("content-type", Some("application/json")),
            ("mcp-protocol-version", Some(self.revision)),
            ("mcp-method", method),
            ("mcp-name", name),
        ];
        for (header, value) in fixed {
            if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(v).ok()) {
                headers.insert(header, value);
            }
        }
        headers
    }

    /// Posts the request and reads the answer to it, in the order rmcp's client does.
    async fn post(&self, name: &str, body: Vec<u8>) -> Result<Answer, ServiceError> {
        let response = self
            .plain
            .client
            .post(&self.plain.uri)
            .headers(self.headers(Some("tools/call"), Some(name)))
            .body(body)
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        let header = |name: http::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(http::header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let json = content_type.starts_with("application/json");
        let retry_after = header(http::header::RETRY_AFTER);
        if matches!(status.as_u16(), 401 | 403)
            && let Some(challenge) = header(http::header::WWW_AUTHENTICATE)
        {
            return Err(failed(Unexpected(format!(
                "HTTP {status}: the upstream asks for authorization ({challenge})"
            ))));
        }
        if status == http::StatusCode::TOO_MANY_REQUESTS || (status.is_server_error() && !json) {
            return Err(failed(HttpStatusError::new(status.as_u16(), retry_after)));
        }
        if status.is_success() && content_type.starts_with("text/event-stream") {
            return self.events(response).await;
        }
        if !status.is_success() {
            // A JSON-RPC error may come with any status; anything else is the status.
            // An unchallenged 401 or 403 keeps its status, as rmcp's client keeps it.
            let json_rpc = json && !matches!(status.as_u16(), 401 | 403);
            let limit = if json_rpc {
                self.plain.limit
            } else {
                64 * 1024
            };
            let body = read_prefix(limit, response).await;
            if json_rpc && let Ok(ServerJsonRpcMessage::Error(e)) = serde_json::from_slice(&body) {
                return Err(ServiceError::McpError(e.error));
            }
            if status.is_server_error() {
                return Err(failed(HttpStatusError::new(status.as_u16(), retry_after)));
            }
            let text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).into_owned();
            return Err(failed(Unexpected(format!(
                "unexpected server response: HTTP {status}: {text}"
            ))));
        }
        if !json {
            return Err(failed(Unexpected(format!(
                "unexpected content type {content_type:?} (HTTP {status})"
            ))));
        }
        let body = read(self.plain.limit, response).await?;
        match self.read(&body) {
            Heard::Answer(answer) => answer,
            Heard::Other(_) => Err(failed(Unexpected(
                "the upstream answered another request".into(),
            ))),
            Heard::Unreadable(e) => Err(failed(Unexpected(format!(
                "the upstream's answer is not JSON-RPC: {e}"
            )))),
        }
    }

    /// The answer in an SSE stream; the progress and log messages before it are the call's,
    /// and a question on it goes to the caller.
    async fn events(&self, response: reqwest::Response) -> Result<Answer, ServiceError> {
        let bytes = crate::upstream::http::bounded_events(response, self.plain.limit);
        let mut events = sse_stream::SseStream::from_bytes_stream(bytes);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) if crate::upstream::http::is_too_large(&e) => {
                    return Err(failed(crate::upstream::http::TooLarge::event(
                        self.plain.limit,
                    )));
                }
                // Broken off: as rmcp's client says when it cannot resume.
                Err(_) => return Err(ServiceError::TransportClosed),
            };
            if event
                .event
                .as_deref()
                .is_some_and(|kind| !kind.is_empty() && kind != "message")
            {
                continue;
            }
            let Some(data) = event.data.filter(|d| !d.is_empty()) else {
                continue;
            };
            match self.read(data.as_bytes()) {
                Heard::Answer(answer) => return answer,
                Heard::Other(message) => match *message {
                    ServerJsonRpcMessage::Notification(n) => self.heard(&n.notification),
                    ServerJsonRpcMessage::Request(asked) => self.ask(asked).await,
                    _ => {}
                },
                Heard::Unreadable(_) => {}
            }
        }
        Err(ServiceError::TransportClosed)
    }

    /// A notification on the call's stream: its progress (under its own token) and its log
    /// messages (at or above the job's level) go to its caller, list changes and resource
    /// updates to the upstream's listeners.
    #[allow(deprecated)] // logging is deprecated by SEP-2577; upstreams still log
    fn heard(&self, notification: &ServerNotification) {
        use ServerNotification as N;
        let events = self.upstream.events();
        match notification {
            N::ToolListChangedNotification(_)
            | N::ResourceListChangedNotification(_)
            | N::PromptListChangedNotification(_) => events.offer_changed.notify_one(),
            N::ResourceUpdatedNotification(n) => {
                events.subscriptions.updated(n.params.uri.clone());
            }
            N::ProgressNotification(n) if &n.params.progress_token == self.token => {
                if let Some(to) = &self.options.events {
                    let _ = to.send(CallEvent::Progress(mcpq_schemas::Progress {
                        progress: n.params.progress,
                        total: n.params.total,
                        message: n.params.message.clone(),
                    }));
                }
            }
            N::LoggingMessageNotification(n) => {
                let level = serde_json::to_value(n.params.level)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "info".into());
                match (&self.options.events, self.log_level) {
                    (Some(to), Some(min)) if mcpq_schemas::bridge::log_passes(&level, min) => {
                        let _ = to.send(CallEvent::Log(mcpq_schemas::LogMessage {
                            level,
                            logger: n.params.logger.clone(),
                            data: n.params.data.clone(),
                        }));
                    }
                    _ => tracing::debug!(level, data = %n.params.data, "upstream log message"),
                }
            }
            _ => {}
        }
    }

    /// A question the upstream asks on the call's stream: put to the caller (or refused, as
    /// `ask` refuses), and the answer posted back.
    async fn ask(&self, asked: JsonRpcRequest<ServerRequest>) {
        let Ok(Value::Object(mut question)) = serde_json::to_value(&asked.request) else {
            return;
        };
        let method = question
            .remove("method")
            .and_then(|m| m.as_str().map(str::to_string))
            .unwrap_or_default();
        let params = question.remove("params").unwrap_or(Value::Null);
        let answered = match (&self.options.asker, method.as_str()) {
            (_, "ping") => Ok(serde_json::json!({})),
            (Some(asker), _) => asker.ask(&method, params).await,
            (None, _) => Err(rmcp::ErrorData::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                format!("mcpq cannot put {method} to this job's caller"),
                None,
            )),
        };
        let reply = match answered {
            Ok(result) => serde_json::json!({"jsonrpc": "2.0", "id": asked.id, "result": result}),
            Err(e) => serde_json::json!({"jsonrpc": "2.0", "id": asked.id, "error": e}),
        };
        let posted = self
            .plain
            .client
            .post(&self.plain.uri)
            .headers(self.headers(None, None))
            .json(&reply)
            .timeout(ANSWER_WITHIN)
            .send()
            .await;
        match posted {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => tracing::warn!(
                status = %response.status(),
                method,
                "the upstream refused the answer to its question"
            ),
            Err(e) => {
                tracing::warn!(error = %e, method, "cannot post the answer to the upstream's question");
            }
        }
    }

    /// A message from the upstream, read once as JSON. The answer to this call's request
    /// (its id as sent, or echoed as another JSON type with the same text) is its result as
    /// the upstream wrote it when that result is complete — nothing of it respelled or dropped,
    /// and no pass through rmcp's untagged enums — and rmcp's reading otherwise (a task, a
    /// question); any other message is rmcp's reading.
    fn read(&self, bytes: &[u8]) -> Heard {
        read_message(self.id, bytes)
    }
}

/// [`Call::read`], for the request `id`.
fn read_message(id: &RequestId, bytes: &[u8]) -> Heard {
    let mut message = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(message)) => message,
        Ok(other) => return Heard::Unreadable(format!("not an object: {other}")),
        Err(e) => return Heard::Unreadable(e.to_string()),
    };
    let ours = message
        .get("id")
        .and_then(|id| RequestId::deserialize(id).ok())
        .is_some_and(|heard| heard == *id || heard.to_string() == id.to_string());
    if ours && !message.contains_key("method") {
        if let Some(result) = message.remove("result") {
            if complete(&result) {
                return Heard::Answer(Ok(Answer::AsWritten(result)));
            }
            return match ServerResult::deserialize(result) {
                Ok(read) => Heard::Answer(Ok(Answer::Read(Box::new(read)))),
                Err(e) => Heard::Unreadable(e.to_string()),
            };
        }
        if let Some(error) = message.remove("error") {
            return match rmcp::ErrorData::deserialize(error) {
                Ok(error) => Heard::Answer(Err(ServiceError::McpError(error))),
                Err(e) => Heard::Unreadable(e.to_string()),
            };
        }
    }
    match ServerJsonRpcMessage::deserialize(Value::Object(message)) {
        Ok(message) => Heard::Other(Box::new(message)),
        Err(e) => Heard::Unreadable(e.to_string()),
    }
}

/// A message on the call's body or stream, as [`Call::read`] reads it.
enum Heard {
    /// The answer to the call's request.
    Answer(Result<Answer, ServiceError>),
    /// Anything else the upstream sent: a notification, a question, another request's answer.
    Other(Box<ServerJsonRpcMessage>),
    /// Not a JSON-RPC message; why.
    Unreadable(String),
}

/// Whether a tool call's result is complete (not a task the upstream made of the call, nor its
/// questions): then it is the job's result as it stands.
fn complete(result: &Value) -> bool {
    result.as_object().is_some_and(|r| {
        !r.contains_key("task")
            && r.get("resultType")
                .is_none_or(|t| t.as_str() == Some("complete"))
    })
}

/// How long posting the answer to an upstream's question may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The whole body, at most `limit` bytes.
async fn read(limit: usize, response: reqwest::Response) -> Result<Vec<u8>, ServiceError> {
    crate::upstream::http::read_body(response, limit)
        .await
        .map_err(failed)?
        .ok_or_else(|| failed(crate::upstream::http::TooLarge::answer(limit)))
}

/// Up to `limit` bytes of the body, whatever came before it broke off (for an error's text).
async fn read_prefix(limit: usize, mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

/// What the upstream said that was not an answer, in its words.
#[derive(Debug)]
struct Unexpected(String);

impl std::fmt::Display for Unexpected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unexpected {}

/// A failure as rmcp's client reports one, for `failure::classify`.
fn failed(error: impl std::error::Error + Send + Sync + 'static) -> ServiceError {
    ServiceError::TransportSend(DynamicTransportError::from_parts(
        Cow::Borrowed("plain HTTP"),
        std::any::TypeId::of::<Plain>(),
        Box::new(error),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mcpq_schemas::McpRequest;

    use super::*;

    #[test]
    fn the_request_carries_what_rmcp_sends_and_the_callers_meta_cannot_override_it() {
        let params = serde_json::json!({
            "name": "echo",
            "arguments": {"text": "hi"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2025-06-18", "mine": 1}
        });
        let job = Job::new(
            "s",
            McpRequest {
                method: "tools/call".into(),
                params: params.as_object().cloned(),
            },
        );
        let Ok(rmcp::model::ClientRequest::CallToolRequest(call)) =
            super::super::to_client_request(&job, None)
        else {
            panic!("a tool call");
        };
        let options = CallOptions {
            timeout: std::time::Duration::from_secs(1),
            interrupt: super::super::Interrupt::default(),
            events: None,
            asker: None,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let id = RequestId::String("mcpq-x-1".into());
        let token = ProgressToken(NumberOrString::String("mcpq-x-1".into()));
        let body = body(&id, &token, &job, call, &options, "2026-07-28").unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(sent["id"], "mcpq-x-1");
        assert_eq!(sent["method"], "tools/call");
        assert_eq!(sent["params"]["name"], "echo");
        assert_eq!(sent["params"]["arguments"]["text"], "hi");
        let meta = &sent["params"]["_meta"];
        assert_eq!(
            meta["io.modelcontextprotocol/protocolVersion"],
            "2026-07-28"
        );
        assert_eq!(
            meta["io.modelcontextprotocol/clientInfo"]["name"],
            "mcpq-worker"
        );
        assert_eq!(meta["mine"], 1, "the caller's own keys pass");
        assert_eq!(meta["progressToken"], "mcpq-x-1");
        assert_eq!(meta["io.mcpq/jobId"], job.id.to_string());
        assert_eq!(meta["traceparent"], options.traceparent.clone().unwrap());
        assert!(
            meta["io.modelcontextprotocol/clientCapabilities"]["elicitation"]["url"].is_object()
        );
    }

    #[test]
    fn a_complete_result_is_kept_as_written_and_anything_else_is_read_by_rmcp() {
        let id = RequestId::String("mcpq-1".into());
        // Unknown fields and integer spellings survive; rmcp's model would drop or respell them.
        let answer = br#"{"jsonrpc":"2.0","id":"mcpq-1","result":{"content":[{"type":"text","text":"x","annotations":{"priority":1},"x-new":true}],"resultType":"complete"}}"#;
        let Heard::Answer(Ok(Answer::AsWritten(result))) = read_message(&id, answer) else {
            panic!("a complete result, as written");
        };
        assert_eq!(
            serde_json::to_string(&result["content"][0]).unwrap(),
            r#"{"annotations":{"priority":1},"text":"x","type":"text","x-new":true}"#
        );
        // The id echoed as a number with the same text is still ours.
        let id = RequestId::Number(7);
        let answer = br#"{"jsonrpc":"2.0","id":"7","result":{"content":[]}}"#;
        assert!(matches!(
            read_message(&id, answer),
            Heard::Answer(Ok(Answer::AsWritten(_)))
        ));
        // Questions and tasks go through rmcp's reading.
        let asked = br#"{"jsonrpc":"2.0","id":7,"result":{"resultType":"input_required","inputRequests":{"q":{"method":"elicitation/create","params":{"mode":"form","message":"?","requestedSchema":{"type":"object","properties":{}}}}}}}"#;
        assert!(
            matches!(
                read_message(&id, asked),
                Heard::Answer(Ok(Answer::Read(r))) if matches!(*r, ServerResult::InputRequiredResult(_))
            ),
            "input_required is read by rmcp"
        );
        assert!(!complete(&serde_json::json!({"task": {"taskId": "t"}})));
        // Errors, other requests' answers, notifications and junk.
        let error = br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"no"}}"#;
        assert!(
            matches!(read_message(&id, error), Heard::Answer(Err(ServiceError::McpError(e))) if e.message == "no")
        );
        let other = br#"{"jsonrpc":"2.0","id":8,"result":{"content":[]}}"#;
        assert!(matches!(read_message(&id, other), Heard::Other(_)));
        let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"mcpq-1","progress":1}}"#;
        assert!(matches!(
            read_message(&id, note),
            Heard::Other(m) if matches!(*m, ServerJsonRpcMessage::Notification(_))
        ));
        assert!(matches!(read_message(&id, b"[1]"), Heard::Unreadable(_)));
        assert!(matches!(read_message(&id, b"{"), Heard::Unreadable(_)));
    }
}
