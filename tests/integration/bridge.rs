//! Protocol bridging: clients of each revision (the official Python SDK in its 2026-07-28 and
//! 2025-era modes, an rmcp client on 2025-06-18) in front of upstreams of each revision (the
//! conformance fixture pinned to 2025-06-18, 2025-11-25 and 2026-07-28, the TypeScript
//! reference server-everything and `mcp-server-time` from PyPI), for tools, `isError` results,
//! errors, resources (text and blob), templates, prompts, completion and progress.

use async_nats::jetstream;
use mcpq_schemas::{CatalogEntry, names::CATALOG_BUCKET, nats::connect};
use mcpq_tests::{conformance::PNG, fixture_bin, python_sdk, required_program, stack::Stack};
use rmcp::{
    RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, ClientConfig, GetPromptRequestParams, ProtocolVersion,
        ReadResourceRequestParams,
    },
    service::RunningService,
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};

/// The conformance fixture over stdio, serving only `revision`, as server `name`.
pub fn conformance_upstream(name: &str, revision: &str) -> String {
    format!(
        "  - name: {name}\n    type: stdio\n    command: {}\n    args: [\"conformance\", \"--revision\", \"{revision}\"]\n    timeout: 20s\n",
        fixture_bin().display()
    )
}

/// A stack with two conformance upstreams: `modern` on 2026-07-28, `legacy` on `revision`.
pub async fn modern_and_legacy(revision: &str) -> Stack {
    Stack::start(&format!(
        "{}{}",
        conformance_upstream("modern", "2026-07-28"),
        conformance_upstream("legacy", revision)
    ))
    .await
}

/// The third-party upstreams: server-everything (npm) and mcp-server-time (PyPI), over stdio.
fn third_party() -> String {
    format!(
        "  - name: everything\n    type: stdio\n    command: {}\n    args: [\"stdio\"]\n    timeout: 20s\n\
         \x20 - name: time\n    type: stdio\n    command: {}\n    args: [\"--local-timezone\", \"UTC\"]\n",
        required_program("mcp-server-everything").display(),
        required_program("mcp-server-time").display()
    )
}

const REVISIONS: [(&str, &str); 3] = [
    ("conf0618", "2025-06-18"),
    ("conf1125", "2025-11-25"),
    ("conf0728", "2026-07-28"),
];

async fn catalog_revision(stack: &Stack, server: &str) -> Option<String> {
    let nats = connect(&stack.nats.url(), "test-catalog").await.unwrap();
    let bucket = jetstream::new(nats)
        .get_key_value(CATALOG_BUCKET)
        .await
        .unwrap();
    let bytes = bucket.get(server).await.unwrap()?;
    serde_json::from_slice::<CatalogEntry>(&bytes)
        .unwrap()
        .protocol_version
}

fn ok(out: &Value, step: usize) -> &Value {
    let step_out = &out["steps"][step];
    assert!(step_out.get("ok").is_some(), "step {step} failed: {out}");
    &step_out["ok"]
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_every_revision_work_with_upstreams_of_every_revision() {
    let mut servers: String = REVISIONS
        .iter()
        .map(|(name, revision)| conformance_upstream(name, revision))
        .collect();
    servers.push_str(&third_party());
    let stack = Stack::start(&servers).await;

    // The worker records which revision each upstream speaks.
    for (name, revision) in REVISIONS {
        assert_eq!(
            catalog_revision(&stack, name).await.as_deref(),
            Some(revision),
            "{name}"
        );
    }
    assert_eq!(
        catalog_revision(&stack, "everything").await.as_deref(),
        Some("2025-11-25"),
        "server-everything is a 2025-era server"
    );

    let steps = json!([
        ["call_tool", "test_simple_text", {}],
        ["call_tool", "test_error_handling", {}],
        ["read_resource", "test://static-binary"],
        ["read_resource", "test://template/7/data"],
        ["get_prompt", "test_prompt_with_arguments", {"arg1": "a", "arg2": "b"}],
        ["complete", {"type": "ref/prompt", "name": "test_prompt_with_arguments"}, "arg1", "pa"],
        ["call_tool", "test_tool_with_progress", {}],
        ["read_resource", "test://nope"],
        ["list_resource_templates"],
        ["call_tool", "test_image_content", {}]
    ]);
    for (mode, client_era) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
        for (name, upstream) in REVISIONS {
            let out = python_sdk(&stack.server_url(name), mode, steps.clone(), &[]).await;
            let what = format!("{mode} client, {upstream} upstream");
            assert_eq!(out["version"], client_era, "{what}");
            assert_eq!(
                text(ok(&out, 0)),
                "This is a simple text response for testing.",
                "{what}"
            );
            assert_eq!(ok(&out, 1)["isError"], true, "{what}: isError is a result");
            assert_eq!(ok(&out, 2)["contents"][0]["blob"], PNG, "{what}");
            assert_eq!(
                ok(&out, 2)["contents"][0]["uri"],
                "test://static-binary",
                "{what}"
            );
            let data: Value =
                serde_json::from_str(ok(&out, 3)["contents"][0]["text"].as_str().unwrap()).unwrap();
            assert_eq!(data["id"], "7", "{what}");
            assert_eq!(
                ok(&out, 4)["messages"][0]["content"]["text"],
                "Prompt with arguments: arg1='a', arg2='b'",
                "{what}"
            );
            assert_eq!(
                ok(&out, 5)["completion"]["values"],
                json!(["paris", "park", "party"]),
                "{what}"
            );
            assert_eq!(
                out["progress"],
                json!([
                    [0.0, 100.0, null],
                    [50.0, 100.0, null],
                    [100.0, 100.0, null]
                ]),
                "{what}: progress in order"
            );
            // Resource not found: -32602 from 2026-07-28 on, -32002 before (when the upstream
            // said -32002; a 2026-07-28 upstream says -32602, which a 2025 reader keeps).
            let expected = if mode == "auto" || upstream == "2026-07-28" {
                -32602
            } else {
                -32002
            };
            assert_eq!(out["steps"][7]["code"], expected, "{what}: {out}");
            assert_eq!(
                ok(&out, 8)["resourceTemplates"][0]["uriTemplate"],
                "test://template/{id}/data",
                "{what}"
            );
            assert_eq!(ok(&out, 9)["content"][0]["type"], "image", "{what}");
        }

        // Upstreams nobody here wrote.
        let out = python_sdk(
            &stack.server_url("everything"),
            mode,
            json!([
                ["call_tool", "echo", {"message": "hi"}],
                ["call_tool", "get-sum", {"a": 2, "b": 3}],
                ["read_resource", "demo://resource/static/document/architecture.md"],
                ["get_prompt", "simple-prompt", {}],
                ["call_tool", "trigger-long-running-operation", {"duration": 1, "steps": 2}],
                ["list_prompts"]
            ]),
            &[],
        )
        .await;
        assert_eq!(text(ok(&out, 0)), "Echo: hi", "{mode}: {out}");
        assert!(text(ok(&out, 1)).contains('5'), "{mode}: {out}");
        assert!(
            ok(&out, 2)["contents"][0]["text"]
                .as_str()
                .unwrap()
                .contains("Architecture"),
            "{mode}"
        );
        assert!(
            ok(&out, 3)["messages"]
                .as_array()
                .is_some_and(|m| !m.is_empty()),
            "{mode}"
        );
        assert_eq!(
            out["progress"].as_array().map(Vec::len),
            Some(2),
            "{mode}: {out}"
        );
        assert!(
            ok(&out, 5)["prompts"].as_array().unwrap().len() >= 3,
            "{mode}"
        );
        let out = python_sdk(
            &stack.server_url("time"),
            mode,
            json!([
                ["call_tool", "get_current_time", {"timezone": "UTC"}],
                ["list_prompts"],
                ["list_resources"],
                ["list_resource_templates"]
            ]),
            &[],
        )
        .await;
        assert!(text(ok(&out, 0)).contains("UTC"), "{mode}: {out}");
        // It declares prompts and resources (and has none): empty lists, as it answers itself.
        assert_eq!(ok(&out, 1)["prompts"], json!([]), "{mode}: {out}");
        assert_eq!(ok(&out, 2)["resources"], json!([]), "{mode}: {out}");
        assert_eq!(ok(&out, 3)["resourceTemplates"], json!([]), "{mode}: {out}");
    }

    // The third client revision: an rmcp client on 2025-06-18, against each kind of upstream.
    for server in ["conf0618", "conf0728", "everything"] {
        let client = ClientConfig::default()
            .with_protocol_version(ProtocolVersion::V_2025_06_18)
            .serve(StreamableHttpClientTransport::from_uri(
                stack.server_url(server),
            ))
            .await
            .unwrap();
        let (tool, args, uri, prompt) = if server == "everything" {
            (
                "echo",
                json!({"message": "x"}),
                "demo://resource/static/document/features.md",
                "simple-prompt",
            )
        } else {
            (
                "test_simple_text",
                json!({}),
                "test://static-text",
                "test_simple_prompt",
            )
        };
        let called = client
            .call_tool(
                CallToolRequestParams::new(tool).with_arguments(args.as_object().cloned().unwrap()),
            )
            .await
            .unwrap();
        assert!(!called.content.is_empty(), "{server}");
        let read = client
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
            .unwrap();
        assert_eq!(read.contents.len(), 1, "{server}");
        let got = client
            .get_prompt(GetPromptRequestParams::new(prompt))
            .await
            .unwrap();
        assert!(!got.messages.is_empty(), "{server}");
        let _ = client.cancel().await;
    }
    stack.stop().await;
}

type McpClient = RunningService<RoleClient, ClientConfig>;

/// An rmcp client on 2026-07-28 (no handshake).
pub async fn modern_client(url: &str) -> McpClient {
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    ClientConfig::default()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(url.to_string()),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_prompts_are_namespaced_on_mcp_and_reach_the_upstream_unchanged() {
    let servers = format!(
        "{}{}",
        conformance_upstream("conf", "2026-07-28"),
        conformance_upstream("old", "2025-06-18")
    );
    let stack = Stack::start(&servers).await;
    let all = modern_client(&stack.mcp_url()).await;

    let resources = all.list_all_resources().await.unwrap();
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    for expected in [
        "mcpq://conf/test://static-text",
        "mcpq://conf/test://static-binary",
        "mcpq://old/test://static-text",
    ] {
        assert!(uris.contains(&expected), "{expected} in {uris:?}");
    }
    let templates = all.list_all_resource_templates().await.unwrap();
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template == "mcpq://old/test://template/{id}/data"),
        "{templates:?}"
    );
    let prompts = all.list_all_prompts().await.unwrap();
    assert!(
        prompts.iter().any(|p| p.name == "conf__test_simple_prompt"),
        "{prompts:?}"
    );

    // A namespaced URI reaches the upstream as the upstream named it: the upstream echoes it.
    let read = all
        .read_resource(ReadResourceRequestParams::new(
            "mcpq://old/test://template/42/data",
        ))
        .await
        .unwrap();
    let content = serde_json::to_value(&read.contents[0]).unwrap();
    assert_eq!(content["uri"], "test://template/42/data");
    let got = all
        .get_prompt(
            GetPromptRequestParams::new("old__test_prompt_with_arguments").with_arguments(
                json!({"arg1": "x", "arg2": "y"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    let message = serde_json::to_value(&got.messages[0]).unwrap();
    assert_eq!(
        message["content"]["text"],
        "Prompt with arguments: arg1='x', arg2='y'"
    );
    // The Python SDK completes against a namespaced prompt too.
    let out = python_sdk(
        &stack.mcp_url(),
        "auto",
        json!([
            ["complete", {"type": "ref/prompt", "name": "conf__test_prompt_with_arguments"}, "arg1", "te"],
            ["read_resource", "test://static-text"],
            ["get_prompt", "conf__nope", {}]
        ]),
        &[],
    )
    .await;
    assert_eq!(
        ok(&out, 0)["completion"]["values"],
        json!(["test", "testing"])
    );
    let refused = out["steps"][1]["error"].as_str().unwrap();
    assert!(refused.contains("mcpq://<server>/<uri>"), "{refused}");
    // A prompt the catalog does not list is the upstream's to refuse: its error reaches the client.
    let refused = out["steps"][2]["error"].as_str().unwrap();
    assert_eq!(
        refused, "unknown prompt \"nope\"",
        "the upstream's own error"
    );

    // A resource larger than one NATS message travels through the object store, whole.
    let read = all
        .read_resource(ReadResourceRequestParams::new(
            "mcpq://conf/test://big/2000000",
        ))
        .await
        .unwrap();
    let rmcp::model::ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("text contents");
    };
    assert_eq!(text.len(), 2_000_000, "the whole resource");
    let _ = all.cancel().await;
    stack.stop().await;
}

/// An endpoint declares what the upstreams behind it declared, and no more: the tools-only
/// fixture's `/servers/web/mcp` answers prompts and resources methods "method not found", as the
/// fixture itself does; `/mcp` declares the union, so there they are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_declares_what_its_upstreams_declare_and_no_more() {
    let web = mcpq_tests::fixture::HttpFixture::start().await;
    let servers = format!(
        "  - name: web\n    type: http\n    endpoint: {}\n{}",
        web.url(),
        conformance_upstream("conf", "2026-07-28")
    );
    let stack = Stack::start(&servers).await;
    let asks = json!([
        ["list_prompts"],
        ["list_resources"],
        ["list_resource_templates"]
    ]);
    for mode in ["auto", "legacy"] {
        let out = python_sdk(&stack.server_url("web"), mode, asks.clone(), &[]).await;
        for step in 0..3 {
            assert_eq!(
                out["steps"][step]["code"], -32601,
                "{mode}, step {step}: {out}"
            );
        }
        let out = python_sdk(&stack.mcp_url(), mode, asks.clone(), &[]).await;
        assert!(
            ok(&out, 0)["prompts"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "conf__test_simple_prompt")),
            "{mode}: {out}"
        );
        assert!(ok(&out, 1)["resources"].is_array(), "{mode}: {out}");
    }
    stack.stop().await;
}
