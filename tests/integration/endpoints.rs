//! An upstream with several endpoints: calls are spread over them; one that fails is ejected
//! within `health.unhealthyAfter` failed calls and its traffic moves to the others, then it is
//! taken back once a ping to it is answered; least-connections spreads slow calls evenly.

use std::time::Duration;

use futures::StreamExt;
use mcpq_schemas::Outcome;
use mcpq_tests::{eventually, fixture::HttpFixture, stack::Stack};
use serde_json::json;

fn config(urls: &[String], policy: &str) -> String {
    let endpoints = urls
        .iter()
        .map(|u| format!("{{url: \"{u}\"}}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "  - name: web\n    type: http\n    endpoints: [{endpoints}]\n    loadBalancing: {policy}\n    concurrency: 64\n    timeout: 10s\n    retry: {{maxAttempts: 5, initial: 10ms, max: 50ms}}\n    health: {{interval: 300ms, timeout: 1s, unhealthyAfter: 2}}\n"
    )
}

async fn echo_calls(stack: &Stack, n: usize, in_flight: usize) {
    let replies: Vec<_> = futures::stream::iter(0..n)
        .map(|i| stack.call("web", "echo", json!({"text": format!("{i}")})))
        .buffer_unordered(in_flight)
        .collect()
        .await;
    for reply in replies {
        assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_taken_back_when_it_answers() {
    let fixtures = [
        HttpFixture::start().await,
        HttpFixture::start().await,
        HttpFixture::start().await,
    ];
    let urls: Vec<String> = fixtures.iter().map(|f| f.url()).collect();
    let stack = Stack::start(&config(&urls, "roundRobin")).await;
    echo_calls(&stack, 30, 1).await;
    let calls = || {
        fixtures
            .iter()
            .map(|f| f.fixture.calls())
            .collect::<Vec<_>>()
    };
    assert_eq!(calls(), [10, 10, 10], "round robin over three");

    // The second endpoint fails every request: after 2 failed calls it gets no more, and every
    // call is answered by the others.
    fixtures[1].fixture.go_down();
    let before = calls();
    echo_calls(&stack, 60, 1).await;
    let failed_on_b = fixtures[1]
        .fixture
        .seen_while_down()
        .iter()
        .filter(|m| m.starts_with("tools/call"))
        .count();
    assert!(
        failed_on_b <= 2,
        "{failed_on_b} calls went to the failing endpoint"
    );
    let after = calls();
    assert_eq!(after[1], before[1]);
    assert_eq!((after[0] - before[0]) + (after[2] - before[2]), 60);

    // Back up: a ping is answered, and it takes calls again.
    fixtures[1].fixture.come_up();
    eventually(
        "the endpoint back in the rotation",
        Duration::from_secs(30),
        || {
            let stack = &stack;
            let b = &fixtures[1];
            async move {
                let before = b.fixture.calls();
                echo_calls(stack, 6, 1).await;
                (b.fixture.calls() > before).then_some(())
            }
        },
    )
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_spreads_slow_calls_evenly() {
    let fixtures = [
        HttpFixture::start().await,
        HttpFixture::start().await,
        HttpFixture::start().await,
    ];
    let urls: Vec<String> = fixtures.iter().map(|f| f.url()).collect();
    let stack = Stack::start(&config(&urls, "leastConnections")).await;
    let replies: Vec<_> = futures::stream::iter(0..60)
        .map(|_| stack.call("web", "slow", json!({"ms": 300})))
        .buffer_unordered(30)
        .collect()
        .await;
    assert!(
        replies
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Ok { .. }))
    );
    let calls: Vec<u64> = fixtures.iter().map(|f| f.fixture.calls()).collect();
    for (i, n) in calls.iter().enumerate() {
        assert!(
            (16..=24).contains(n),
            "endpoint {i} took {n} of 60 (even: 20, within 20 %): {calls:?}"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_keeps_max_connections_sessions_and_closes_idle_ones() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&format!(
        "  - name: web\n    type: http\n    endpoint: \"{}\"\n    concurrency: 64\n    pool: {{maxConnections: 3, idleTimeout: 1s}}\n    health: {{interval: 200ms, timeout: 1s}}\n",
        web.url()
    ))
    .await;
    // Calls spread over three sessions, each opened once and reused.
    let before = web.fixture.sessions_opened();
    echo_calls(&stack, 30, 10).await;
    echo_calls(&stack, 30, 10).await;
    let opened = web.fixture.sessions_opened() - before;
    assert!(
        opened <= 3,
        "{opened} sessions opened for 60 calls over a pool of 3"
    );
    let all = web.fixture.sessions_opened();
    assert!(all >= 3, "three sessions in all: {all}");
    // Idle past idleTimeout, they are closed; the next calls open new ones.
    let idle_from = web.fixture.sessions_opened();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    echo_calls(&stack, 3, 1).await;
    assert!(
        web.fixture.sessions_opened() > idle_from,
        "idle sessions are closed and opened again when needed"
    );
    stack.stop().await;
}
