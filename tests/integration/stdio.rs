//! Stdio upstreams: a child process that crashes is started again; a third-party server from
//! PyPI serves real calls.

use mcpq_schemas::{ErrorKind, Outcome};
use mcpq_tests::{fixture::HttpFixture, required_program, stack::Stack};

use crate::two_fixtures;

fn pid_of(reply: mcpq_schemas::Reply) -> u64 {
    let Outcome::Ok { result } = reply.outcome else {
        panic!("whoami failed: {reply:?}");
    };
    let who: serde_json::Value = serde_json::from_str(crate::first_text(&result)).unwrap();
    who["pid"].as_u64().expect("a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_stdio_upstream_is_started_again_and_later_calls_succeed() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let before = pid_of(stack.call("local", "whoami", serde_json::json!({})).await);

    // Every attempt kills the process; after the last one the caller hears why.
    let reply = stack.call("local", "crash", serde_json::json!({})).await;
    let Outcome::Error { error } = reply.outcome else {
        panic!("a call that kills its upstream every time cannot succeed: {reply:?}");
    };
    assert_eq!(error.kind, ErrorKind::UpstreamUnavailable, "{error}");
    let record = stack.record(reply.job_id).await;
    assert_eq!(record.status, mcpq_schemas::JobStatus::Dead);
    assert_eq!(record.attempts, 3);

    let after = pid_of(stack.call("local", "whoami", serde_json::json!({})).await);
    assert_ne!(before, after, "a new process serves after the crash");
    let reply = stack
        .call("local", "echo", serde_json::json!({"text": "back"}))
        .await;
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_server_from_pypi_serves_calls() {
    let time = required_program("mcp-server-time");
    let stack = Stack::start(&format!(
        "  - name: time\n    type: stdio\n    command: {}\n    args: [\"--local-timezone\", \"UTC\"]\n",
        time.display()
    ))
    .await;
    let catalog = stack.client.record(uuid::Uuid::now_v7()).await.unwrap();
    assert!(catalog.is_none());
    let reply = stack
        .call("time", "convert_time", serde_json::json!({"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}))
        .await;
    let Outcome::Ok { result } = reply.outcome else {
        panic!("mcp-server-time failed: {reply:?}");
    };
    let text = crate::first_text(&result);
    assert!(
        text.contains("21:00"),
        "12:00 UTC is 21:00 in Tokyo: {text}"
    );
    stack.stop().await;
}
