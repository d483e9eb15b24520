//! Definitions as their upstreams wrote them.
//!
//! rmcp answers list requests — its checks, and the envelope the client's revision wants
//! (`resultType` and cache hints, or none) — but its model types keep only the fields they
//! know, and the catalog keeps every field an upstream sent (a tool's `execution`, extension
//! fields, a newer revision's). So once rmcp has answered a list request, the definitions in
//! its answer are replaced on the way out by the catalog's own objects (renamed on `/mcp`):
//! in the JSON body, or in the event of the SSE stream (a 2025-era session) that carries the
//! answer. What rmcp left out for the client's revision stays out (a tool's non-object
//! `outputSchema` for a 2025-era client).

use axum::{
    body::Body,
    http::{HeaderValue, Response, header},
};
use mcpq_schemas::JsonObject;
use serde_json::Value;

use super::Gateway;
use crate::auth::Caller;

/// The lists an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    Tools,
    Resources,
    Templates,
    Prompts,
}

impl List {
    fn named(method: &str) -> Option<List> {
        match method {
            "tools/list" => Some(List::Tools),
            "resources/list" => Some(List::Resources),
            "resources/templates/list" => Some(List::Templates),
            "prompts/list" => Some(List::Prompts),
            _ => None,
        }
    }

    /// The result's field that holds the list.
    fn field(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Resources => "resources",
            List::Templates => "resourceTemplates",
            List::Prompts => "prompts",
        }
    }

    /// The field that names a definition.
    fn key(self) -> &'static str {
        match self {
            List::Tools | List::Prompts => "name",
            List::Resources => "uri",
            List::Templates => "uriTemplate",
        }
    }
}

/// A list request read from a request body: which list, and the request's JSON-RPC id.
pub(crate) struct Asked {
    list: List,
    id: Value,
    caller: Caller,
}

/// The list request in `body`, if it is one (a single JSON-RPC request; a cheap look first,
/// since most requests are calls).
pub(crate) fn asked(body: &[u8], caller: Option<&Caller>) -> Option<Asked> {
    #[derive(serde::Deserialize)]
    struct Head {
        id: Value,
        method: String,
    }
    if !body.windows(b"/list\"".len()).any(|w| w == b"/list\"") {
        return None;
    }
    let head: Head = serde_json::from_slice(body).ok()?;
    Some(Asked {
        list: List::named(&head.method)?,
        id: head.id,
        caller: caller.cloned().unwrap_or_else(Caller::nobody),
    })
}

/// rmcp's answer to the list request, with the definitions as their upstreams wrote them.
pub(crate) async fn answer(
    gateway: &Gateway,
    asked: &Asked,
    response: Response<Body>,
) -> Response<Body> {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let json = content_type.starts_with("application/json");
    if !json && !content_type.starts_with("text/event-stream") {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // rmcp's answer to a list request is whole once the body ends (its SSE stream closes
    // after the answer).
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    };
    let rewritten = if json {
        rewrite_message(gateway, asked, &bytes)
    } else {
        rewrite_events(gateway, asked, &bytes)
    };
    let Some(rewritten) = rewritten else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Ok(length) = HeaderValue::from_str(&rewritten.len().to_string()) {
        parts.headers.insert(header::CONTENT_LENGTH, length);
    }
    Response::from_parts(parts, Body::from(rewritten))
}

/// One JSON-RPC message: rewritten when it is the answer to the request.
fn rewrite_message(gateway: &Gateway, asked: &Asked, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut message: Value = serde_json::from_slice(bytes).ok()?;
    if message.get("id") != Some(&asked.id) {
        return None;
    }
    let read = message
        .get_mut("result")?
        .get_mut(asked.list.field())?
        .as_array_mut()?;
    let written = as_written(read, gateway.listed(&asked.caller, asked.list), asked.list)?;
    *read = written;
    serde_json::to_vec(&message).ok()
}

/// An SSE stream: the `data:` line that carries the answer rewritten, every other line as it
/// was.
fn rewrite_events(gateway: &Gateway, asked: &Asked, bytes: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut rewritten = false;
    for line in text.split_inclusive('\n') {
        let data = line
            .strip_prefix("data:")
            .map(|d| d.strip_prefix(' ').unwrap_or(d));
        let answer = data.filter(|_| !rewritten).and_then(|data| {
            let data = data.trim_end_matches(['\r', '\n']);
            rewrite_message(gateway, asked, data.as_bytes())
        });
        match answer {
            Some(answer) => {
                out.push_str("data: ");
                out.push_str(std::str::from_utf8(&answer).ok()?);
                out.push('\n');
                rewritten = true;
            }
            None => out.push_str(line),
        }
    }
    rewritten.then(|| out.into_bytes())
}

/// The written definitions in the order rmcp read them, with what rmcp left out for the
/// client's revision left out; `None` when the two lists differ (the catalog changed between
/// the readings), and rmcp's answer stands.
fn as_written(read: &[Value], mut written: Vec<JsonObject>, list: List) -> Option<Vec<Value>> {
    if read.len() != written.len() {
        return None;
    }
    for (read, written) in read.iter().zip(&mut written) {
        if read.get(list.key()) != written.get(list.key()) {
            return None;
        }
        if list == List::Tools && read.get("outputSchema").is_none() {
            written.remove("outputSchema");
        }
    }
    Some(written.into_iter().map(Value::Object).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_list_request_is_told_from_a_call() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{}}"#;
        let asked = asked(body, None).expect("a list request");
        assert_eq!(asked.list, List::Tools);
        assert_eq!(asked.id, json!(7));
        let call =
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"tools/list\""}}"#;
        assert!(super::asked(call, None).is_none());
        assert!(super::asked(b"[]", None).is_none());
    }

    #[test]
    fn written_definitions_replace_read_ones_and_keep_what_the_revision_dropped_out() {
        let read = vec![json!({"name": "a", "inputSchema": {}})];
        let written = json!({
            "name": "a", "inputSchema": {}, "outputSchema": {"type": "array"},
            "execution": {"taskSupport": "forbidden"}
        });
        let Value::Object(written) = written else {
            unreachable!()
        };
        let out = as_written(&read, vec![written.clone()], List::Tools).unwrap();
        assert_eq!(out[0]["execution"]["taskSupport"], "forbidden");
        assert!(
            out[0].get("outputSchema").is_none(),
            "rmcp dropped it for this client"
        );
        let other = vec![json!({"name": "b", "inputSchema": {}})];
        assert!(as_written(&other, vec![written], List::Tools).is_none());
    }
}
