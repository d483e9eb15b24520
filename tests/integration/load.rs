//! Many calls at once: every one answered, each with its own result.

use std::time::Duration;

use futures::{StreamExt, stream};
use mcpq_schemas::{Job, McpRequest, Outcome};
use mcpq_tests::{fixture::HttpFixture, stack::Stack};

use crate::two_fixtures;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_each_get_their_own_answer() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let answers: Vec<(usize, String)> = stream::iter(0..1000)
        .map(|i| {
            let client = stack.client.clone();
            async move {
                let text = format!("call-{i}");
                let job = Job::new(
                    "web",
                    McpRequest::call_tool(
                        "echo",
                        serde_json::json!({"text": text}).as_object().cloned(),
                    ),
                );
                let reply = client
                    .call(&job, Duration::from_secs(120))
                    .await
                    .unwrap_or_else(|e| panic!("call {i}: {e}"));
                assert_eq!(reply.job_id, job.id);
                match reply.outcome {
                    Outcome::Ok { result } => (i, crate::first_text(&result).to_string()),
                    Outcome::Error { error } => panic!("call {i} failed: {error}"),
                }
            }
        })
        .buffer_unordered(1000)
        .collect()
        .await;
    assert_eq!(answers.len(), 1000);
    for (i, text) in answers {
        assert_eq!(text, format!("call-{i}"));
    }
    assert_eq!(
        web.fixture.calls(),
        1000,
        "each call reached the upstream exactly once"
    );
    stack.stop().await;
}
