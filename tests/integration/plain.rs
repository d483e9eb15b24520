//! The plain path (`ingress::plain`) answers a 2026-07-28 `tools/call` exactly as rmcp's path
//! does: the same request is sent as it is (taken by the plain path) and with an `Accept`
//! header that carries a quality (which only rmcp's path takes), and the two answers — HTTP
//! status, content type and every JSON-RPC message, job ids aside — must be equal, for
//! upstreams of both eras, third-party ones included, and for results, `isError` results,
//! upstream errors, refusals, progress and log messages.

use mcpq_tests::{required_program, stack::Stack};
use serde_json::{Value, json};

use crate::bridge::conformance_upstream;

/// What a 2026-07-28 client sends over HTTP: headers and per-request `_meta`, plus `extra`
/// `_meta` entries. Answers the status, the content type and the JSON-RPC messages (the body,
/// or the SSE events).
pub async fn post_2026(
    url: &str,
    method: &str,
    name: &str,
    params: Value,
    extra: Value,
    accept: &str,
) -> (u16, String, Vec<Value>) {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}
    });
    for (key, value) in extra.as_object().into_iter().flatten() {
        params["_meta"][key] = value.clone();
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", accept)
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", method)
        .header("Mcp-Name", name)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = response.text().await.unwrap();
    let messages = if content_type.starts_with("text/event-stream") {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .collect()
    } else {
        vec![serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"))]
    };
    (status, content_type, messages)
}

/// The `Accept` header clients send.
pub const ACCEPT: &str = "application/json, text/event-stream";

/// The JSON-RPC response among `messages`.
pub fn response_of(messages: &[Value]) -> Value {
    messages
        .iter()
        .find(|m| m.get("id").is_some())
        .cloned()
        .unwrap_or_else(|| panic!("no response in {messages:?}"))
}

/// The answer without what differs from call to call (job ids, and the message text that
/// names them).
fn comparable(mut value: Value) -> Value {
    fn scrub(value: &mut Value) {
        match value {
            Value::Object(object) => {
                object.remove("jobId");
                object.values_mut().for_each(scrub);
            }
            Value::Array(items) => items.iter_mut().for_each(scrub),
            Value::String(text) => {
                if let Some(at) = text.find("job ") {
                    text.truncate(at);
                }
            }
            _ => {}
        }
    }
    scrub(&mut value);
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_path_answers_as_rmcp_does() {
    // Besides the conformance fixture on both eras, the TypeScript reference server (2025-era,
    // no resultType).
    let everything = format!(
        "  - name: everything\n    type: stdio\n    command: {}\n    args: [\"stdio\"]\n    timeout: 20s\n",
        required_program("mcp-server-everything").display()
    );
    let stack = Stack::start(&format!(
        "{}{}{everything}",
        conformance_upstream("modern", "2026-07-28"),
        conformance_upstream("legacy", "2025-11-25"),
    ))
    .await;
    let mcp = stack.mcp_url();
    let cases: Vec<(String, &str, Value)> = vec![
        (stack.server_url("modern"), "test_simple_text", json!({})),
        (stack.server_url("legacy"), "test_simple_text", json!({})),
        (stack.server_url("modern"), "test_image_content", json!({})),
        (stack.server_url("legacy"), "test_error_handling", json!({})),
        (stack.server_url("modern"), "test_error_handling", json!({})),
        (stack.server_url("modern"), "no_such_tool", json!({})),
        (mcp.clone(), "everything__echo", json!({"message": "plain"})),
        (mcp.clone(), "everything__get-sum", json!({"a": 2, "b": 3})),
        (mcp.clone(), "legacy__test_simple_text", json!({})),
        (mcp.clone(), "nowhere__echo", json!({})),
    ];
    let progress = json!({"progressToken": "p1"});
    let logging = json!({"io.modelcontextprotocol/logLevel": "info"});
    let streaming: Vec<(String, &str, Value, Value)> = vec![
        (
            stack.server_url("modern"),
            "test_tool_with_progress",
            json!({}),
            progress.clone(),
        ),
        (
            stack.server_url("legacy"),
            "test_tool_with_progress",
            json!({}),
            progress.clone(),
        ),
        (
            stack.server_url("modern"),
            "test_tool_with_logging",
            json!({}),
            logging.clone(),
        ),
        (
            mcp.clone(),
            "legacy__test_tool_with_logging",
            json!({}),
            logging,
        ),
        (
            mcp.clone(),
            "everything__echo",
            json!({"message": "p"}),
            progress,
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(url, tool, arguments)| (url, tool, arguments, json!({})))
        .chain(streaming);
    for (url, tool, arguments, meta) in cases {
        let params = json!({"name": tool, "arguments": arguments});
        let plain = post_2026(
            &url,
            "tools/call",
            tool,
            params.clone(),
            meta.clone(),
            ACCEPT,
        )
        .await;
        let rmcp = post_2026(
            &url,
            "tools/call",
            tool,
            params,
            meta,
            "application/json;q=1, text/event-stream",
        )
        .await;
        let answer = response_of(&plain.2);
        assert!(
            answer.get("result").is_some() || answer.get("error").is_some(),
            "{tool}: {plain:?}"
        );
        assert_eq!(plain.0, rmcp.0, "{tool}: HTTP status");
        assert_eq!(plain.1, rmcp.1, "{tool}: content type");
        assert_eq!(
            comparable(Value::Array(plain.2.clone())),
            comparable(Value::Array(rmcp.2.clone())),
            "{tool}: plain {:?} vs rmcp {:?}",
            plain.2,
            rmcp.2
        );
    }
    // The streams were streams: progress and log messages before the answer.
    let (_, content_type, messages) = post_2026(
        &stack.server_url("modern"),
        "tools/call",
        "test_tool_with_progress",
        json!({"name": "test_tool_with_progress", "arguments": {}}),
        json!({"progressToken": 9}),
        ACCEPT,
    )
    .await;
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let progress: Vec<_> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .filter_map(|m| m["params"]["progress"].as_f64())
        .collect();
    assert_eq!(progress, [0.0, 50.0, 100.0], "{messages:?}");
    assert!(
        messages.last().is_some_and(|m| m.get("result").is_some()),
        "{messages:?}"
    );
    // What a 2026-07-28 reader needs, on the plain path: resultType, and the upstream's text.
    let (_, _, echoed) = post_2026(
        &mcp,
        "tools/call",
        "everything__echo",
        json!({"name": "everything__echo", "arguments": {"message": "plain"}}),
        json!({}),
        ACCEPT,
    )
    .await;
    let echoed = response_of(&echoed);
    assert_eq!(echoed["result"]["resultType"], "complete", "{echoed}");
    assert_eq!(
        echoed["result"]["content"][0]["text"], "Echo: plain",
        "{echoed}"
    );
    stack.stop().await;
}
