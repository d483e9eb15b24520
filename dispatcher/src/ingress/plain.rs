//! The plain JSON path: a 2026-07-28 `tools/call` whose answer is one JSON body, served
//! without rmcp's per-request machinery.
//!
//! For every stateless request rmcp builds a transport, a peer, their channels and a task
//! (about 60 KB that live as long as the call waits in the queue), so a dispatcher holding a
//! thousand calls held a thousand of those. A request takes this path only when rmcp would
//! accept it exactly as it is and nothing has to be streamed back: the 2026-07-28 revision in
//! `_meta` and in `MCP-Protocol-Version`, its `Mcp-Method`/`Mcp-Name` headers equal to the
//! body, no progress token, no log level, no `Mcp-Param-*` header and a tool whose schema asks
//! for none (SEP-2243's checks are rmcp's). Anything else — every other method, every other
//! revision, every malformed request — is declined and goes to rmcp untouched, which answers
//! it as it always has. What this path answers is what rmcp's handler layer would have
//! answered: the same gateway call, the same result conversion (`resultType`, cache hints),
//! the same error codes and HTTP statuses.

use std::{collections::VecDeque, convert::Infallible, pin::Pin, time::Duration};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{
        IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
};
use bytes::Bytes;
use mcpq_schemas::bridge::Era;
use rmcp::{
    ErrorData,
    model::{ErrorCode, ProtocolVersion, RequestId, ServerJsonRpcMessage, ServerResult},
    transport::common::http_header::{
        HEADER_MCP_METHOD, HEADER_MCP_NAME, HEADER_MCP_PROTOCOL_VERSION,
    },
};

use super::{Gateway, Notifier, Origin};
use crate::auth::Caller;

/// A request this path takes, read out of the HTTP request: everything it needs, so that the
/// request itself (and hyper's read buffer its headers point into) is freed while the call
/// waits.
pub(crate) struct Taken {
    id: RequestId,
    params: rmcp::model::CallToolRequestParams,
    meta: mcpq_schemas::JsonObject,
    capabilities: Option<rmcp::model::ClientCapabilities>,
    progress_token: Option<rmcp::model::ProgressToken>,
    caller: Caller,
    traceparent: Option<String>,
}

/// A JSON-RPC request whose parameters are a tool call's.
#[derive(serde::Deserialize)]
struct Wire {
    /// "2.0", or the request is not read here.
    #[serde(rename = "jsonrpc")]
    _version: rmcp::model::JsonRpcVersion2_0,
    id: RequestId,
    method: String,
    params: rmcp::model::CallToolRequestParams,
}

/// Takes the request when it belongs on this path; `None` sends it to rmcp as it is.
///
/// `mirrors_params` says whether a tool's schema names a parameter mirrored in an
/// `Mcp-Param-*` header (`Gateway::mirrors_params`).
pub(crate) fn take(
    parts: &Parts,
    body: &Bytes,
    mirrors_params: impl Fn(&str) -> bool,
) -> Option<Taken> {
    let headers = &parts.headers;
    if !accepts_json_and_sse(headers)
        || !media_type_is(headers.get(header::CONTENT_TYPE)?, "application/json")
        || sole(headers, HEADER_MCP_PROTOCOL_VERSION)? != ProtocolVersion::V_2026_07_28.as_str()
        || sole(headers, HEADER_MCP_METHOD)? != "tools/call"
    {
        return None;
    }
    // Read as the one request it must be, straight into its parameters: rmcp's reading goes
    // through serde's buffered untagged and flattened enums (a tenth of a dispatcher's CPU per
    // call). Anything that is not plainly a `tools/call` request is declined, for rmcp.
    let Wire {
        id,
        method,
        params: mut call,
        ..
    } = serde_json::from_slice(body).ok()?;
    if method != "tools/call" {
        return None;
    }
    let meta = call.meta.take().unwrap_or_default();
    let plain = meta.protocol_version() == Some(ProtocolVersion::V_2026_07_28)
        && meta
            .missing_required_keys(&ProtocolVersion::V_2026_07_28)
            .is_empty()
        // A name that needs Base64 in its header is left to rmcp to decode.
        && sole(headers, HEADER_MCP_NAME)? == call.name
        && !call.name.starts_with("=?")
        // SEP-2243 `Mcp-Param-*` headers are rmcp's to check against the tool's schema.
        && !headers.keys().any(|h| h.as_str().starts_with("mcp-param-"))
        && !mirrors_params(&call.name);
    if !plain {
        return None;
    }
    let capabilities = meta.client_capabilities();
    let progress_token = meta.get_progress_token();
    let mut meta = meta.0.0;
    // Read out already (or, the client's name, never read): not kept while the call waits.
    for key in [
        "io.modelcontextprotocol/protocolVersion",
        "io.modelcontextprotocol/clientInfo",
        "io.modelcontextprotocol/clientCapabilities",
    ] {
        meta.remove(key);
    }
    Some(Taken {
        id,
        params: call,
        capabilities,
        progress_token,
        meta,
        caller: parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::nobody),
        traceparent: crate::headers::traceparent_header(headers),
    })
}

/// Answers a taken request through `gateway`, as rmcp's handler layer would: one JSON body
/// when the answer is the first message, else an SSE stream of the notifications the call
/// sends (progress, log messages) and then the answer.
pub(crate) async fn answer(gateway: Gateway, taken: Taken) -> axum::response::Response {
    let (notes, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let mut call = Box::pin(call(gateway, taken, notes));
    let first = tokio::select! {
        biased;
        Some(note) = heard.recv() => note,
        (status, answer) = &mut call => {
            // Notifications sent just before the answer go out first, on a stream.
            let Ok(note) = heard.try_recv() else {
                let mut response = axum::response::Response::new(axum::body::Body::from(answer));
                *response.status_mut() = status;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return response;
            };
            let mut queue = VecDeque::from([note]);
            queue.extend(std::iter::from_fn(|| heard.try_recv().ok()));
            queue.push_back(answer);
            return sse::<std::future::Ready<_>>(SseState { queue, heard, call: None });
        }
    };
    sse(SseState {
        queue: VecDeque::from([first]),
        heard,
        call: Some(call),
    })
}

/// What is left to stream: messages ready to go, notifications still to come, and the call
/// until it answers.
struct SseState<F> {
    queue: VecDeque<String>,
    heard: tokio::sync::mpsc::UnboundedReceiver<String>,
    call: Option<Pin<Box<F>>>,
}

/// The SSE response (rmcp's headers and keep-alive) of the messages `state` yields.
fn sse<F>(state: SseState<F>) -> axum::response::Response
where
    F: Future<Output = (StatusCode, String)> + Send + 'static,
{
    let messages = futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(message) = state.queue.pop_front() {
                return Some((Ok::<_, Infallible>(Event::default().data(message)), state));
            }
            let call = state.call.as_mut()?;
            let answered = tokio::select! {
                biased;
                Some(note) = state.heard.recv() => {
                    state.queue.push_back(note);
                    None
                }
                (_, answer) = call => Some(answer),
            };
            if let Some(answer) = answered {
                state.call = None;
                let heard = &mut state.heard;
                state
                    .queue
                    .extend(std::iter::from_fn(|| heard.try_recv().ok()));
                state.queue.push_back(answer);
            }
        }
    });
    let mut response = Sse::new(messages)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// How often an SSE stream with nothing to say sends a comment (as rmcp's path does).
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The call, answered as the encoded JSON-RPC message and its HTTP status.
async fn call(
    gateway: Gateway,
    taken: Taken,
    notes: tokio::sync::mpsc::UnboundedSender<String>,
) -> (StatusCode, String) {
    let Taken {
        id,
        params,
        meta,
        capabilities,
        progress_token,
        caller,
        traceparent,
    } = taken;
    let declared_tasks = capabilities.as_ref().is_some_and(|c| c.supports_tasks());
    let origin = Origin {
        caller,
        era: Era::Stateless,
        capabilities,
        progress_token,
        notifier: Notifier::Plain(notes),
        cancelled: None,
        traceparent,
    };
    let answered = gateway
        .call(&params, Some(&meta), origin)
        .await
        .and_then(|response| {
            // rmcp's guard: no task handle for a client that cannot read one.
            if matches!(response, rmcp::model::CallToolResponse::Task(_)) && !declared_tasks {
                return Err(ErrorData::missing_required_client_capability(
                    rmcp::model::ClientCapabilities::builder()
                        .enable_tasks()
                        .build(),
                ));
            }
            let mut result = ServerResult::from(response);
            result.fill_missing_cache_hints();
            Ok(result)
        });
    let (message, status) = match answered {
        Ok(result) => (ServerJsonRpcMessage::response(result, id), StatusCode::OK),
        Err(mut error) => {
            // 2026-07-28 readers get invalid params for an unknown resource.
            if error.code == ErrorCode::RESOURCE_NOT_FOUND {
                error.code = ErrorCode::INVALID_PARAMS;
            }
            let status = status_of(error.code);
            (ServerJsonRpcMessage::error(error, Some(id)), status)
        }
    };
    let text = serde_json::to_string(&message).unwrap_or_else(|e| {
        let error = ErrorData::internal_error(format!("cannot encode the answer: {e}"), None);
        serde_json::to_string(&ServerJsonRpcMessage::error(error, None)).unwrap_or_default()
    });
    (status, text)
}

/// The HTTP status rmcp gives a 2026-07-28 JSON-RPC error (a well-formed request's).
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::UNSUPPORTED_PROTOCOL_VERSION
        | ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY
        | ErrorCode::HEADER_MISMATCH => StatusCode::BAD_REQUEST,
        ErrorCode::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

/// The one value of header `name`; `None` when it is absent, repeated or not text.
fn sole<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()
}

/// Whether `Accept` names both JSON and SSE, plainly (any parameter, such as a quality,
/// leaves the judgement to rmcp).
fn accepts_json_and_sse(headers: &HeaderMap) -> bool {
    let (mut json, mut sse) = (false, false);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for item in value.split(',') {
            let item = item.trim();
            if item.contains(';') {
                return false;
            }
            json |= item.eq_ignore_ascii_case("application/json");
            sse |= item.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && sse
}

/// Whether a `Content-Type` is `essence` (parameters such as a charset aside).
fn media_type_is(value: &HeaderValue, essence: &str) -> bool {
    value.to_str().is_ok_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case(essence))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = axum::http::Request::post("/mcp");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("request").into_parts().0
    }

    const HEADERS: [(&str, &str); 5] = [
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "web__echo"),
    ];

    fn body(meta: serde_json::Value) -> Bytes {
        let request = serde_json::json!({
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "web__echo", "arguments": {"text": "hi"}, "_meta": meta},
        });
        Bytes::from(request.to_string())
    }

    fn meta() -> serde_json::Value {
        serde_json::json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        })
    }

    #[test]
    fn a_plain_2026_call_is_taken_with_its_meta() {
        let taken = take(&parts(&HEADERS), &body(meta()), |_| false).expect("taken");
        assert_eq!(taken.id, RequestId::Number(7));
        assert_eq!(taken.params.name, "web__echo");
        assert!(taken.capabilities.is_some());
        assert_eq!(taken.params.arguments.expect("arguments")["text"], "hi");
        assert!(taken.progress_token.is_none());
        let mut streaming = meta();
        streaming["progressToken"] = 1.into();
        let taken = take(&parts(&HEADERS), &body(streaming), |_| false).expect("taken");
        assert_eq!(
            taken.progress_token,
            Some(rmcp::model::ProgressToken(
                rmcp::model::NumberOrString::Number(1)
            ))
        );
    }

    #[test]
    fn anything_rmcp_might_judge_otherwise_is_declined() {
        let with = |name: &str, value: &str| {
            let mut headers = HEADERS.to_vec();
            headers.retain(|(n, _)| *n != name);
            if !value.is_empty() {
                headers.push((name, value));
            }
            parts(&headers)
        };
        let declined = [
            (with("mcp-protocol-version", "2025-11-25"), body(meta())),
            (with("mcp-protocol-version", ""), body(meta())),
            (with("mcp-method", ""), body(meta())),
            (with("mcp-method", "tools/list"), body(meta())),
            (with("mcp-name", "web__other"), body(meta())),
            (with("mcp-name", ""), body(meta())),
            (with("accept", "application/json"), body(meta())),
            (
                with("accept", "application/json;q=0, text/event-stream"),
                body(meta()),
            ),
            (with("content-type", "text/plain"), body(meta())),
            // SEP-2243 custom headers are rmcp's to check.
            (with("mcp-param-region", "eu"), body(meta())),
        ];
        for (parts, body) in declined {
            assert!(
                take(&parts, &body, |_| false).is_none(),
                "{:?}",
                parts.headers
            );
        }
        let mut incomplete = meta();
        incomplete
            .as_object_mut()
            .expect("object")
            .remove("io.modelcontextprotocol/clientCapabilities");
        assert!(take(&parts(&HEADERS), &body(incomplete), |_| false).is_none());
        assert!(
            take(&parts(&HEADERS), &Bytes::from_static(b"{not json"), |_| {
                false
            })
            .is_none()
        );
        // A tool whose schema mirrors a parameter in a header, even when the header is missing.
        assert!(take(&parts(&HEADERS), &body(meta()), |_| true).is_none());
        // Bodies that are not plainly one tools/call request.
        for (key, value) in [
            ("jsonrpc", serde_json::json!("1.0")),
            ("id", serde_json::Value::Null),
            ("method", serde_json::json!("tools/list")),
            ("params", serde_json::json!({"arguments": {}})),
        ] {
            let mut request: serde_json::Value =
                serde_json::from_slice(&body(meta())).expect("json");
            request[key] = value;
            let request = Bytes::from(request.to_string());
            assert!(
                take(&parts(&HEADERS), &request, |_| false).is_none(),
                "{key}"
            );
        }
    }
}
