//! MCP clients calling tools through the dispatcher: both endpoints, every protocol revision,
//! aggregated listing, errors that name what exists, tool errors passed through unchanged.

use mcpq_tests::{fixture::HttpFixture, stack::Stack};
use rmcp::{
    RoleClient, ServiceExt,
    model::{CallToolRequestParams, ClientConfig, ProtocolVersion},
    service::{ClientLifecycleMode, ClientServiceExt, RunningService},
    transport::StreamableHttpClientTransport,
};

use crate::two_fixtures;

type McpClient = RunningService<RoleClient, ClientConfig>;

/// An rmcp client on `url` speaking `version` (2026-07-28 without a handshake, older ones with
/// `initialize`).
async fn connect(url: &str, version: ProtocolVersion) -> McpClient {
    let transport = StreamableHttpClientTransport::from_uri(url.to_string());
    let client = if version.has_initialize() {
        ClientConfig::default()
            .with_protocol_version(version.clone())
            .serve(transport)
            .await
    } else {
        ClientConfig::default()
            .serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![version.clone()],
                },
            )
            .await
    };
    client.unwrap_or_else(|e| panic!("connect to {url} with {version}: {e}"))
}

fn args(value: serde_json::Value) -> CallToolRequestParams {
    CallToolRequestParams::new("placeholder")
        .with_arguments(value.as_object().cloned().unwrap_or_default())
}

async fn call(client: &McpClient, tool: &str, arguments: serde_json::Value) -> serde_json::Value {
    let mut params = args(arguments);
    params.name = tool.to_string().into();
    let result = client
        .call_tool(params)
        .await
        .unwrap_or_else(|e| panic!("call {tool}: {e}"));
    serde_json::to_value(result).expect("result encodes")
}

async fn call_err(client: &McpClient, tool: &str) -> String {
    let mut params = args(serde_json::json!({"text": "x"}));
    params.name = tool.to_string().into();
    match client.call_tool(params).await {
        Ok(result) => panic!("calling {tool} must fail, got {result:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_called_through_both_endpoints_in_every_protocol_revision() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    for version in [
        ProtocolVersion::V_2025_06_18,
        ProtocolVersion::V_2025_11_25,
        ProtocolVersion::V_2026_07_28,
    ] {
        let all = connect(&stack.mcp_url(), version.clone()).await;
        let names: Vec<String> = all
            .list_all_tools()
            .await
            .expect("tools/list on /mcp")
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        for expected in ["web__echo", "web__math.add", "local__echo", "local__whoami"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{version}: /mcp lacks {expected}: {names:?}"
            );
        }
        let text = format!("hello over {version}");
        let result = call(&all, "web__echo", serde_json::json!({ "text": text })).await;
        assert_eq!(crate::first_text(&result), text);
        let result = call(&all, "local__echo", serde_json::json!({ "text": text })).await;
        assert_eq!(crate::first_text(&result), text);

        let one = connect(&stack.server_url("web"), version.clone()).await;
        let mut names: Vec<String> = one
            .list_all_tools()
            .await
            .expect("tools/list on /servers/web/mcp")
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "big", "busy", "crash", "echo", "fail", "flaky", "grow", "hold", "mark",
                "math.add", "progress", "reject", "slow", "stamp", "traced", "whoami"
            ],
            "{version}"
        );
        let result = call(&one, "math.add", serde_json::json!({"a": 2, "b": 40})).await;
        assert_eq!(crate::first_text(&result), "42");
    }
    assert!(
        web.fixture.calls() >= 6,
        "the HTTP fixture must have served the calls"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_servers_are_refused_and_unknown_tools_answered_by_the_upstream() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let all = connect(&stack.mcp_url(), ProtocolVersion::V_2026_07_28).await;
    let err = call_err(&all, "nope__echo").await;
    assert!(
        err.contains("unknown server \"nope\"") && err.contains("local, web"),
        "{err}"
    );
    let err = call_err(&all, "echo").await;
    assert!(err.contains("<server>__<tool>"), "{err}");
    // A tool the catalog does not list goes to the upstream: its own error comes back.
    let err = call_err(&all, "web__nope").await;
    assert!(
        err.contains("-32602: tool not found") && err.contains("\"kind\":\"upstream\""),
        "{err}"
    );
    let one = connect(&stack.server_url("web"), ProtocolVersion::V_2025_11_25).await;
    let err = call_err(&one, "web__echo").await;
    assert!(err.contains("-32602: tool not found"), "{err}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_error_is_a_result_passed_through_unchanged() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let all = connect(&stack.mcp_url(), ProtocolVersion::V_2025_06_18).await;
    let result = call(&all, "web__fail", serde_json::json!({})).await;
    assert_eq!(result["isError"], true, "{result}");
    assert_eq!(crate::first_text(&result), "the fixture failed on purpose");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_tool_list_reaches_tools_list_without_a_restart() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let all = connect(&stack.mcp_url(), ProtocolVersion::V_2026_07_28).await;
    let names = |tools: Vec<rmcp::model::Tool>| {
        tools
            .into_iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
    };
    assert!(!names(all.list_all_tools().await.unwrap()).contains(&"web__bonus".to_string()));

    let filter = rmcp::model::SubscriptionFilter::builder()
        .tools_list_changed()
        .build();
    let mut listening = all
        .listen(filter)
        .await
        .expect("subscriptions/listen on the dispatcher");

    // `grow` reveals a tool and notifies the worker's subscriptions/listen stream; the worker
    // republishes the catalog, and the dispatcher tells its own listeners.
    let result = call(&all, "web__grow", serde_json::json!({})).await;
    assert_eq!(crate::first_text(&result), "grown");
    let heard = tokio::time::timeout(std::time::Duration::from_secs(20), listening.next())
        .await
        .expect("a notification within 20s")
        .expect("the subscription stays open");
    assert!(
        matches!(
            heard,
            Some(rmcp::model::ServerNotification::ToolListChangedNotification(_))
        ),
        "{heard:?}"
    );
    mcpq_tests::eventually(
        "web__bonus in tools/list",
        std::time::Duration::from_secs(20),
        || {
            let all = &all;
            async move {
                names(all.list_all_tools().await.ok()?)
                    .contains(&"web__bonus".to_string())
                    .then_some(())
            }
        },
    )
    .await;
    let result = call(&all, "web__bonus", serde_json::json!({})).await;
    assert_eq!(crate::first_text(&result), "bonus");
    stack.stop().await;
}

/// One JSON-RPC POST to an MCP endpoint; the answer's body as JSON (from a JSON body or the SSE
/// event that carries it) and its session id header.
async fn post(
    url: &str,
    session: Option<&str>,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value, Option<String>) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-11-25")
        .json(&body);
    if let Some(session) = session {
        request = request.header("Mcp-Session-Id", session);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|d| d.starts_with('{'))
        .map_or_else(
            || serde_json::from_str(&text).unwrap_or_default(),
            |d| serde_json::from_str(d).unwrap(),
        );
    (status, json, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2025_session_carries_on_on_another_replica_and_sessionless_requests_still_work() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let other = stack.another_dispatcher().await;
    let initialize = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "1"}}
    });
    let (status, answer, session) = post(&stack.mcp_url(), None, initialize).await;
    assert!(status.is_success(), "{status} {answer}");
    let session = session.expect("initialize opens a session");
    let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = post(&stack.mcp_url(), Some(&session), initialized).await;
    assert!(status.is_success(), "{status}");

    // Consecutive requests of the session land on one replica, then the other, and back: each
    // carries the session on.
    for (i, url) in [format!("http://{other}/mcp"), stack.mcp_url()]
        .iter()
        .cycle()
        .take(4)
        .enumerate()
    {
        let text = format!("hop {i}");
        let call = serde_json::json!({
            "jsonrpc": "2.0", "id": 2 + i, "method": "tools/call",
            "params": {"name": "web__echo", "arguments": {"text": text}}
        });
        let (status, answer, _) = post(url, Some(&session), call).await;
        assert!(status.is_success(), "{status} {answer}");
        assert_eq!(crate::first_text(&answer["result"]), text, "{answer}");
    }

    // A 2025-era request that never opened a session is answered as before sessions existed.
    let list = serde_json::json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"});
    let (status, answer, session) = post(&stack.server_url("web"), None, list).await;
    assert!(status.is_success(), "{status} {answer}");
    assert!(session.is_none(), "no session without initialize");
    assert!(
        answer["result"]["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "echo")),
        "{answer}"
    );
    stack.stop().await;
}
