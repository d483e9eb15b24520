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
        UpdateTaskParams,
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
    connect_to(addr, "web", capabilities).await
}

/// A 2026-07-28 client of `/servers/<server>/mcp` with `capabilities`.
async fn connect_to(addr: SocketAddr, server: &str, capabilities: ClientCapabilities) -> McpClient {
    ClientConfig::new(capabilities, Implementation::new("task-test", "1"))
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(format!("http://{addr}/servers/{server}/mcp")),
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
        "  - name: web\n    type: http\n    endpoint: {}\n    timeout: 60s\n    tasks: optional\n    taskAfter: 2s\n    toolTasks:\n      echo: always\n      math.add: never\n",
        fixture.url()
    );
    let stack = Stack::start(&servers).await;
    let replica = stack.another_dispatcher().await;

    // A quick call stays a plain result even for a client that declares tasks (taskAfter 2 s:
    // a round trip through NATS under load stays well within it).
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
        .call_tool_once(call("slow", json!({"ms": 5000})))
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
    assert_eq!(text(&ended(&third, &task_id).await), "slept 5000 ms");

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

/// Polls `tasks/get` until the task waits for `keys` answers; its questions, by key.
async fn asking(client: &McpClient, task_id: &str, keys: usize) -> Vec<(String, String)> {
    eventually("the task asks", Duration::from_secs(30), || async {
        let task = client
            .get_task(GetTaskParams::new(task_id))
            .await
            .ok()?
            .task;
        let TaskPayload::InputRequired { input_requests } = task.payload else {
            return None;
        };
        let asked: Vec<(String, String)> = input_requests
            .iter()
            .map(|(key, request)| {
                let request = serde_json::to_value(request).unwrap();
                (key.clone(), request["method"].as_str().unwrap().to_string())
            })
            .collect();
        (asked.len() == keys).then_some(asked)
    })
    .await
}

/// Answers the task's question `key` with an accepted elicitation of `content`.
async fn answer(client: &McpClient, task_id: &str, key: &str, content: serde_json::Value) {
    let accepted = json!({"action": "accept", "content": content});
    client
        .update_task(UpdateTaskParams::new(
            task_id,
            [(key.to_string(), accepted)].into(),
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_own_tasks_are_followed_asked_through_and_outlive_a_dispatcher() {
    let conf =
        mcpq_tests::conformance::HttpConformance::start("127.0.0.1:0".parse().unwrap(), None).await;
    let servers = format!(
        "  - name: conf\n    type: http\n    endpoint: {}\n    timeout: 60s\n",
        conf.url()
    );
    let stack = Stack::start(&servers).await;
    let connect_conf = |addr: SocketAddr| {
        let capabilities = ClientCapabilities::builder()
            .enable_elicitation()
            .enable_tasks()
            .build();
        connect_to(addr, "conf", capabilities)
    };
    let first = connect_conf(stack.addr).await;

    // The upstream makes a task of the call: so does mcpq, its own (a job id), stored first.
    let CallToolResponse::Task(created) = first
        .call_tool_once(call("confirm_delete", json!({"filename": "a.txt"})))
        .await
        .unwrap()
    else {
        panic!("confirm_delete is a task upstream");
    };
    let task_id = created.task.task_id.clone();
    assert!(
        task_id.parse::<uuid::Uuid>().is_ok(),
        "mcpq's own task: {task_id}"
    );
    // What the upstream's task asks waits in mcpq's task, on every replica, after a restart.
    let asked = asking(&first, &task_id, 1).await;
    assert_eq!(asked[0].1, "elicitation/create");
    stack.stop_dispatcher();
    let restarted = stack.another_dispatcher().await;
    let second = connect_conf(restarted).await;
    assert_eq!(asking(&second, &task_id, 1).await, asked);
    answer(&second, &task_id, &asked[0].0, json!({"confirm": true})).await;
    assert_eq!(text(&ended(&second, &task_id).await), "delete a.txt: true");

    // Two questions at once, answered one at a time: the task waits until both are.
    let CallToolResponse::Task(created) = second
        .call_tool_once(call("multi_input", json!({})))
        .await
        .unwrap()
    else {
        panic!("multi_input is a task upstream");
    };
    let task_id = created.task.task_id;
    let asked = asking(&second, &task_id, 2).await;
    answer(&second, &task_id, &asked[0].0, json!({"name": "ada"})).await;
    let left = asking(&second, &task_id, 1).await;
    assert_eq!(
        left[0].0, asked[1].0,
        "only the unanswered question is left"
    );
    answer(&second, &task_id, &asked[1].0, json!({"name": "lovelace"})).await;
    assert_eq!(
        text(&ended(&second, &task_id).await),
        "answered: ada, lovelace"
    );

    // Cancelling mcpq's task cancels the upstream's.
    let CallToolResponse::Task(created) = second
        .call_tool_once(call("slow_compute", json!({"seconds": 60, "label": "x"})))
        .await
        .unwrap()
    else {
        panic!("slow_compute is a task upstream for a client that can have one");
    };
    eventually("the upstream runs it", Duration::from_secs(30), || async {
        (conf.fixture.ran_count("call slow_compute") == 1).then_some(())
    })
    .await;
    second
        .cancel_task(CancelTaskParams::new(created.task.task_id.as_str()))
        .await
        .unwrap();
    assert_eq!(
        ended(&second, &created.task.task_id).await,
        TaskPayload::Cancelled
    );
    eventually(
        "the upstream's task is cancelled",
        Duration::from_secs(30),
        || async { (conf.fixture.ran_count("cancel task") == 1).then_some(()) },
    )
    .await;

    // A client without the extension: an optional task tool runs to the end, a required one
    // is refused as the upstream refuses it (-32021, naming the extension).
    let plain = connect_to(restarted, "conf", ClientCapabilities::default()).await;
    let result = plain
        .call_tool(call("slow_compute", json!({"seconds": 0, "label": "now"})))
        .await
        .unwrap();
    assert_eq!(
        result.content[0].as_text().unwrap().text,
        "computed now in 0s"
    );
    let refused = plain
        .call_tool(call("failing_job", json!({})))
        .await
        .unwrap_err();
    let rmcp::ServiceError::McpError(refused) = refused else {
        panic!("an MCP error: {refused:?}");
    };
    assert_eq!(refused.code.0, -32021, "{refused:?}");
    assert!(
        refused.data.unwrap()["requiredCapabilities"]["extensions"]
            ["io.modelcontextprotocol/tasks"]
            .is_object()
    );
    stack.stop().await;
}
