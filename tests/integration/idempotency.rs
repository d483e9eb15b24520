//! Idempotency keys: however often a job is submitted under one key, it runs once and every
//! caller gets its result — inside JetStream's duplicate window and after it.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::future::join_all;
use mcpq_schemas::{Job, McpRequest, Outcome};
use mcpq_tests::{fixture::HttpFixture, stack::Stack};

use crate::two_fixtures;

fn keyed(key: &str) -> Job {
    Job::new(
        "web",
        McpRequest::call_tool("slow", serde_json::json!({"ms": 300}).as_object().cloned()),
    )
    .with_idempotency_key(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_under_one_idempotency_key_run_once() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;

    // Five callers at once, then one more after the job has ended.
    let replies = join_all((0..5).map(|_| {
        let client = stack.client.clone();
        async move {
            client
                .call(&keyed("nightly-42"), Duration::from_secs(30))
                .await
                .expect("answered")
        }
    }))
    .await;
    let late = stack
        .client
        .call(&keyed("nightly-42"), Duration::from_secs(30))
        .await
        .expect("answered");
    for reply in replies.iter().chain([&late]) {
        assert_eq!(reply.job_id, keyed("nightly-42").id, "one key, one job id");
        let Outcome::Ok { result } = &reply.outcome else {
            panic!("{reply:?}")
        };
        assert_eq!(crate::first_text(result), "slept 300 ms");
    }
    assert_eq!(web.fixture.calls(), 1, "six submissions, one execution");

    // After the duplicate window JetStream takes the message again; the worker answers it from
    // the record instead of calling the upstream. (A different Nats-Msg-Id stands in for time.)
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    let mut replies = nats.subscribe("late.caller").await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "after-the-window");
    headers.insert("Mcpq-Reply-To", "late.caller");
    let body = serde_json::to_vec(&keyed("nightly-42")).unwrap();
    js.publish_with_headers("mcpq.jobs.web.normal", headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let message = tokio::time::timeout(
        Duration::from_secs(30),
        futures::StreamExt::next(&mut replies),
    )
    .await
    .expect("a reply")
    .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(reply["status"], "ok");
    assert_eq!(
        web.fixture.calls(),
        1,
        "a resubmission after the window is not run again"
    );

    // A different key is a different job.
    stack
        .client
        .call(&keyed("nightly-43"), Duration::from_secs(30))
        .await
        .expect("answered");
    assert_eq!(web.fixture.calls(), 2);
    stack.stop().await;
}
