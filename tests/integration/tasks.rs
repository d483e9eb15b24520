//! MCP Tasks through the dispatcher: calls become tasks for clients that declare the
//! extension, tasks live in JetStream (another replica, or a restarted dispatcher, answers
//! `tasks/get`), `tasks/cancel` reaches the upstream, other clients keep plain results.

use std::{net::SocketAddr, time::Duration};

use mcpq_tests::{eventually, fixture::HttpFixture, stack::Stack};
use rmcp::{
    RoleClient,
    model::{
        CallToolRequestParams, CallToolResponse, CancelTaskParams, ClientCapabilities,
        ClientConfig, GetTaskParams, Implementation, ProtocolVersion, TaskPayload, TaskStatus,
    },
    service::{ClientLifecycleMode, ClientServiceExt, RunningService},
    transport::StreamableHttpClientTransport,
};
use serde_json::json;

type McpClient = RunningService<RoleClient, ClientConfig>;

async fn connect(addr: SocketAddr, tasks: bool) -> McpClient {
    let capabilities = if tasks {
        ClientCapabilities::builder().enable_tasks().build()
    } else {
        ClientCapabilities::default()
    };
    ClientConfig::new(capabilities, Implementation::new("task-test", "1"))
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(format!("http://{addr}/servers/web/mcp")),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("connect")
}

fn call(tool: &str, arguments: serde_json::Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_string())
        .with_arguments(arguments.as_object().cloned().unwrap())
}

/// Polls `tasks/get` until the task has ended; its payload.
async fn ended(client: &McpClient, task_id: &str) -> TaskPayload {
    eventually("the task ended", Duration::from_secs(30), || async {
        let task = client
            .get_task(GetTaskParams::new(task_id))
            .await
            .ok()?
            .task;
        task.status().is_terminal().then_some(task.payload)
    })
    .await
}

fn text(payload: &TaskPayload) -> String {
    match payload {
        TaskPayload::Completed { result } => {
            result["content"][0]["text"].as_str().unwrap().to_string()
        }
        other => panic!("expected a completed task, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_durable_served_by_any_replica_and_cancellable() {
    let fixture = HttpFixture::start().await;
    let servers = format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    timeout: 60s\n    tasks: optional\n    taskAfter: 300ms\n    toolTasks:\n      echo: always\n      math.add: never\n",
        fixture.url()
    );
    let stack = Stack::start(&servers).await;
    let replica = stack.another_dispatcher().await;

    // A quick call stays a plain result even for a client that declares tasks.
    let first = connect(stack.addr, true).await;
    match first
        .call_tool_once(call("slow", json!({"ms": 1})))
        .await
        .unwrap()
    {
        CallToolResponse::Complete(result) => {
            assert_eq!(result.content[0].as_text().unwrap().text, "slept 1 ms")
        }
        other => panic!("a quick call must not become a task: {other:?}"),
    }
    // A slow one becomes a task after taskAfter.
    let CallToolResponse::Task(created) = first
        .call_tool_once(call("slow", json!({"ms": 2000})))
        .await
        .unwrap()
    else {
        panic!("a slow call must become a task");
    };
    assert_eq!(created.task.status, TaskStatus::Working);
    let task_id = created.task.task_id.clone();
    assert!(created.task.poll_interval_ms.is_some() && created.task.ttl_ms.is_some());
    // Another replica knows it...
    let second = connect(replica, true).await;
    let seen = second
        .get_task(GetTaskParams::new(task_id.as_str()))
        .await
        .unwrap();
    assert_eq!(seen.task.task.task_id, task_id);
    // ...and so does a dispatcher started after the first one stopped.
    stack.stop_dispatcher();
    let restarted = stack.another_dispatcher().await;
    let third = connect(restarted, true).await;
    assert_eq!(text(&ended(&third, &task_id).await), "slept 2000 ms");

    // `always`: a task at once; `never`: a plain result.
    let CallToolResponse::Task(echo) = third
        .call_tool_once(call("echo", json!({"text": "hi"})))
        .await
        .unwrap()
    else {
        panic!("echo is configured `always`");
    };
    assert_eq!(text(&ended(&third, &echo.task.task_id).await), "hi");
    assert!(matches!(
        third
            .call_tool_once(call("math.add", json!({"a": 1, "b": 2})))
            .await
            .unwrap(),
        CallToolResponse::Complete(_)
    ));

    // tasks/cancel reaches the upstream call.
    let CallToolResponse::Task(held) = third
        .call_tool_once(call("hold", json!({"tag": "task", "ms": 60_000})))
        .await
        .unwrap()
    else {
        panic!("a long call must become a task");
    };
    let upstream = fixture.fixture.clone();
    upstream.until_held("task").await;
    third
        .cancel_task(CancelTaskParams::new(held.task.task_id.as_str()))
        .await
        .unwrap();
    assert_eq!(
        ended(&third, &held.task.task_id).await,
        TaskPayload::Cancelled
    );
    upstream.until_cancelled("task").await;

    // A client that does not declare the extension waits for a plain result.
    let plain = connect(restarted, false).await;
    let result = plain
        .call_tool(call("slow", json!({"ms": 800})))
        .await
        .unwrap();
    assert_eq!(result.content[0].as_text().unwrap().text, "slept 800 ms");
    stack.stop().await;
}
