//! Retries and dead letters: a flaky upstream succeeds after retries with every failed attempt
//! recorded and the backoff within policy; an always-failing one ends in exactly one dead
//! letter with all its attempts, and the caller hears why.

use std::time::Duration;

use mcpq_schemas::{ErrorKind, Job, JobStatus, McpRequest, Outcome};
use mcpq_tests::{fixture::HttpFixture, stack::Stack};

/// The HTTP fixture with a short timeout (a hanging call fails fast) and a quick retry policy.
fn flaky_server(url: &str, max_attempts: u32) -> String {
    format!(
        "  - name: web\n    type: http\n    endpoint: {url}\n    timeout: 300ms\n    \
         retry: {{maxAttempts: {max_attempts}, initial: 100ms, max: 400ms}}\n"
    )
}

async fn call(stack: &Stack, tool: &str, arguments: serde_json::Value) -> mcpq_schemas::Reply {
    let job = Job::new(
        "web",
        McpRequest::call_tool(tool, arguments.as_object().cloned()),
    );
    stack
        .client
        .call(&job, Duration::from_secs(60))
        .await
        .expect("a reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_upstream_succeeds_after_retries_with_each_attempt_recorded() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&flaky_server(&web.url(), 5)).await;
    let reply = call(
        &stack,
        "flaky",
        serde_json::json!({"key": "k", "failures": 3, "hang_ms": 2000}),
    )
    .await;
    let Outcome::Ok { result } = &reply.outcome else {
        panic!("a flaky call must succeed within 5 attempts: {reply:?}");
    };
    assert_eq!(crate::first_text(result), "answered on call 4");

    let record = stack
        .client
        .record(reply.job_id)
        .await
        .unwrap()
        .expect("a record");
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.attempts, 4);
    assert_eq!(
        record.failed_attempts.len(),
        3,
        "{:?}",
        record.failed_attempts
    );
    for (i, attempt) in record.failed_attempts.iter().enumerate() {
        assert_eq!(attempt.attempt, i as u32 + 1);
        assert_eq!(attempt.error.kind, ErrorKind::Timeout, "{attempt:?}");
        // Full jitter under a ceiling of initial * 2^(attempt-1), capped at max.
        let ceiling = (100u64 << i).min(400);
        let delay = attempt
            .retry_in_ms
            .expect("a retried attempt names its backoff");
        assert!(
            delay <= ceiling,
            "attempt {}: backoff {delay} ms above {ceiling} ms",
            attempt.attempt
        );
    }
    // The NAK delay is honoured: the next attempt starts no sooner than the backoff.
    for pair in record.failed_attempts.windows(2) {
        let gap = pair[1].at_ms - pair[0].at_ms;
        let delay = pair[0].retry_in_ms.unwrap();
        assert!(
            gap >= delay,
            "attempt {} came {gap} ms after a {delay} ms backoff",
            pair[1].attempt
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_call_ends_in_one_dead_letter_with_every_attempt() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&flaky_server(&web.url(), 3)).await;
    let reply = call(&stack, "slow", serde_json::json!({"ms": 2000})).await;
    let Outcome::Error { error } = &reply.outcome else {
        panic!("a call that always times out cannot succeed: {reply:?}");
    };
    assert_eq!(error.kind, ErrorKind::Timeout);

    let record = stack
        .client
        .record(reply.job_id)
        .await
        .unwrap()
        .expect("a record");
    assert_eq!(record.status, JobStatus::Dead);
    assert_eq!(record.failed_attempts.len(), 3);
    assert_eq!(
        record.failed_attempts.last().unwrap().retry_in_ms,
        None,
        "the last attempt is not retried"
    );

    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut dlq = js.get_stream("MCPQ_DLQ").await.unwrap();
    assert_eq!(
        dlq.info().await.unwrap().state.messages,
        1,
        "exactly one dead letter"
    );
    let letter: mcpq_schemas::DeadLetter =
        serde_json::from_slice(&dlq.get_raw_message(1).await.unwrap().payload).unwrap();
    assert_eq!(letter.job_id, Some(reply.job_id));
    assert_eq!(letter.attempts.len(), 3);
    assert!(
        letter
            .attempts
            .iter()
            .all(|a| a.error.kind == ErrorKind::Timeout)
    );
    assert_eq!(letter.reason.kind, ErrorKind::Timeout);
    assert_eq!(
        letter.job.as_ref().unwrap().request.tool_name(),
        Some("slow")
    );
    stack.stop().await;
}
