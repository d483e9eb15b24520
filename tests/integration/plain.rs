//! The plain JSON path (`ingress::plain`) answers a 2026-07-28 `tools/call` exactly as rmcp's
//! path does: the same request is sent as it is (taken by the plain path) and with a progress
//! token (which only rmcp's path takes), and the two answers — HTTP status, content type and
//! JSON-RPC body, job ids aside — must be equal, for upstreams of both eras, third-party ones
//! included, and for results, `isError` results, upstream errors and refusals.

use mcpq_tests::{required_program, stack::Stack};
use serde_json::{Value, json};

use crate::bridge::conformance_upstream;

/// What a 2026-07-28 client sends over HTTP: headers and per-request `_meta`, plus `extra`
/// `_meta` entries. Answers the status, the content type and the JSON-RPC response (from the
/// body, or from the SSE event that carries it).
pub async fn post_2026(
    url: &str,
    method: &str,
    name: &str,
    params: Value,
    extra: Value,
) -> (u16, String, Value) {
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
        .header("Accept", "application/json, text/event-stream")
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
    let message = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|m| m.get("id").is_some())
        .unwrap_or_else(|| serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}")));
    (status, content_type, message)
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
    for (url, tool, arguments) in cases {
        let params = json!({"name": tool, "arguments": arguments});
        let plain = post_2026(&url, "tools/call", tool, params.clone(), json!({})).await;
        let streamed = post_2026(
            &url,
            "tools/call",
            tool,
            params,
            json!({"progressToken": "p1"}),
        )
        .await;
        assert!(
            plain.2.get("result").is_some() || plain.2.get("error").is_some(),
            "{tool}: {plain:?}"
        );
        assert_eq!(plain.0, streamed.0, "{tool}: HTTP status");
        assert_eq!(plain.1, streamed.1, "{tool}: content type");
        assert_eq!(
            comparable(plain.2.clone()),
            comparable(streamed.2.clone()),
            "{tool}: plain {} vs rmcp {}",
            plain.2,
            streamed.2
        );
    }
    // What a 2026-07-28 reader needs, on the plain path: resultType, and the upstream's text.
    let (_, _, echoed) = post_2026(
        &mcp,
        "tools/call",
        "everything__echo",
        json!({"name": "everything__echo", "arguments": {"message": "plain"}}),
        json!({}),
    )
    .await;
    assert_eq!(echoed["result"]["resultType"], "complete", "{echoed}");
    assert_eq!(
        echoed["result"]["content"][0]["text"], "Echo: plain",
        "{echoed}"
    );
    stack.stop().await;
}
