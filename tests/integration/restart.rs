//! NATS restarts under mcpq: the connection comes back, the pull consumer is bound again and
//! consumption resumes (async-nats pull streams can end or stall after a reconnect), and what
//! was queued survives in the store and gets done.

use std::time::Duration;

use mcpq_schemas::{Job, McpRequest, Outcome};
use mcpq_tests::{fixture::HttpFixture, stack::Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_succeed_again_after_nats_server_restarts() {
    let web = HttpFixture::start().await;
    // A short AckWait: jobs whose ack was lost in the restart come back soon.
    let servers = format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    concurrency: 64\n    timeout: 2s\n    ackWait: 2s\n",
        web.url()
    );
    let mut stack = Stack::start(&servers).await;

    let reply = stack
        .call("web", "echo", serde_json::json!({"text": "before"}))
        .await;
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");

    stack.nats.restart();

    // The first calls may race the reconnect; a call must go through within the deadline.
    let client = stack.client.clone();
    mcpq_tests::eventually("a call after the restart", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let job = Job::new(
                "web",
                McpRequest::call_tool(
                    "echo",
                    serde_json::json!({"text": "after"}).as_object().cloned(),
                ),
            );
            match client.call(&job, Duration::from_secs(5)).await {
                Ok(reply) => match reply.outcome {
                    Outcome::Ok { result } => Some(crate::first_text(&result).to_string()),
                    Outcome::Error { .. } => None,
                },
                Err(_) => None,
            }
        }
    })
    .await;

    // Under load: 200 slow jobs submitted, the server restarted while they run; every one ends
    // completed (some are redelivered, and answered from their record or run again).
    let mut ids = Vec::new();
    for _ in 0..200 {
        let job = Job::new(
            "web",
            McpRequest::call_tool("slow", serde_json::json!({"ms": 20}).as_object().cloned()),
        );
        stack.client.submit(&job).await.expect("submitted");
        ids.push(job.id);
    }
    stack.nats.restart();
    mcpq_tests::all_completed(&stack.client, &ids, Duration::from_secs(120)).await;
    stack.stop().await;
}
