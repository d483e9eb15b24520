//! Faults from outside the process, each with its promise counted at the upstream: an outage
//! behind the circuit breaker at default concurrency, timed-out attempts (the upstream told to
//! cancel, in both protocol eras), answers cut mid-way by a connection reset, NATS blackholed
//! under load — and errors that say what happened.

use std::time::Duration;

use futures::future::join_all;
use mcpq_schemas::{ErrorKind, Job, JobStatus, McpRequest, Outcome, nats::connect};
use mcpq_tests::{
    fixture::HttpFixture, nats::NatsServer, proxy::FaultProxy, stack::Stack, stack::WorkerProcess,
};

fn mark(tag: String) -> Job {
    Job::new(
        "web",
        McpRequest::call_tool("mark", serde_json::json!({"tag": tag}).as_object().cloned()),
    )
}

async fn dead_letters(nats_url: &str) -> u64 {
    let nats = async_nats::connect(nats_url).await.unwrap();
    async_nats::jetstream::new(nats)
        .get_stream("MCPQ_DLQ")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_at_default_concurrency_dead_letters_nothing_and_runs_each_job_once() {
    let web = HttpFixture::start().await;
    // The settings: three attempts, a breaker of three, default concurrency (16).
    let stack = Stack::start(&format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    timeout: 5s\n    \
         retry: {{maxAttempts: 3}}\n    \
         circuitBreaker: {{failureThreshold: 3, resetTimeout: 1s}}\n",
        web.url()
    ))
    .await;
    let warm = stack
        .call("web", "mark", serde_json::json!({"tag": "warm"}))
        .await;
    assert!(matches!(warm.outcome, Outcome::Ok { .. }), "{warm:?}");

    // An 8 s outage (HTTP 503) with 40 jobs queued.
    web.fixture.go_down();
    let mut ids = Vec::new();
    for n in 0..40 {
        let job = mark(format!("job-{n}"));
        stack.client.submit(&job).await.unwrap();
        ids.push(job.id);
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    web.fixture.come_up();

    mcpq_tests::all_completed(&stack.client, &ids, Duration::from_secs(60)).await;
    assert_eq!(dead_letters(&stack.nats.url()).await, 0, "no dead letter");
    let mut marks = web.fixture.marks();
    marks.retain(|m| m != "warm");
    marks.sort();
    let mut expected: Vec<String> = (0..40).map(|n| format!("job-{n}")).collect();
    expected.sort();
    assert_eq!(marks, expected, "each job ran once, after the recovery");
    // Only failures before the circuit opened are spent: fewer than the threshold, in all.
    let mut spent = 0;
    let mut held = 0;
    for id in &ids {
        let record = stack.record(*id).await;
        assert_eq!(record.status, JobStatus::Completed);
        spent += mcpq_schemas::Attempt::spent(&record.failed_attempts);
        held += record.failed_attempts.iter().filter(|a| a.held).count();
        for attempt in &record.failed_attempts {
            assert!(
                attempt
                    .error
                    .message
                    .starts_with("upstream \"web\" answered HTTP 503 Service Unavailable"),
                "{}",
                attempt.error.message
            );
        }
    }
    assert!(
        spent <= 2,
        "{spent} attempts spent by an outage behind a breaker of 3"
    );
    assert!(
        held >= 1,
        "the calls that met the opening circuit were held"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_cancelled_upstream_in_both_protocol_eras() {
    for legacy in [false, true] {
        let web = if legacy {
            HttpFixture::start_legacy().await
        } else {
            HttpFixture::start().await
        };
        let stack = Stack::start(&format!(
            "  - name: web\n    type: http\n    endpoint: {}\n    timeout: 1s\n    \
             retry: {{maxAttempts: 2, initial: 100ms, max: 200ms}}\n",
            web.url()
        ))
        .await;
        let tag = if legacy { "legacy" } else { "current" };
        let reply = stack
            .call("web", "hold", serde_json::json!({"tag": tag, "ms": 10_000}))
            .await;
        let Outcome::Error { error } = &reply.outcome else {
            panic!("a call that outlives its timeout fails: {reply:?}");
        };
        assert_eq!(error.kind, ErrorKind::Timeout);
        assert_eq!(
            error.message,
            "upstream \"web\" timed out after 1s (the request was cancelled upstream) (attempt 2 of 2)"
        );
        // Both attempts reached the upstream, and it heard each one cancelled.
        let runs = |tags: Vec<String>| tags.iter().filter(|t| *t == tag).count();
        assert_eq!(runs(web.fixture.held()), 2, "{tag}");
        let cancelled = web.fixture.clone();
        mcpq_tests::eventually(
            &format!("the upstream ({tag}) to hear both attempts cancelled"),
            Duration::from_secs(10),
            || {
                let n = runs(cancelled.cancelled());
                async move { (n == 2).then_some(()) }
            },
        )
        .await;
        let record = stack.record(reply.job_id).await;
        assert_eq!(record.failed_attempts.len(), 2);
        assert!(
            record.failed_attempts[0]
                .error
                .message
                .ends_with("(attempt 1 of 2)"),
            "{:?}",
            record.failed_attempts[0]
        );
        stack.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cut_mid_way_by_a_reset_lose_nothing_and_run_again() {
    let web = HttpFixture::start().await;
    let proxy = FaultProxy::start(web.addr).await;
    let stack = Stack::start(&format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    timeout: 5s\n    \
         retry: {{maxAttempts: 3, initial: 50ms, max: 200ms}}\n",
        proxy.url("mcp")
    ))
    .await;
    // The next three answers that name a `cut-` tag are cut in half, then reset.
    proxy.cut_answers("cut-", 3);
    let mut ids = Vec::new();
    for n in 0..20 {
        let job = mark(format!("cut-{n}"));
        stack.client.submit(&job).await.unwrap();
        ids.push(job.id);
    }
    mcpq_tests::all_completed(&stack.client, &ids, Duration::from_secs(60)).await;
    assert_eq!(proxy.cut(), 3);
    // At least once: a call whose answer was lost ran again; nothing is missing.
    let marks = web.fixture.marks();
    for n in 0..20 {
        let runs = marks.iter().filter(|m| **m == format!("cut-{n}")).count();
        assert!((1..=2).contains(&runs), "cut-{n} ran {runs} times");
    }
    assert_eq!(marks.len(), 23, "exactly the three cut answers ran again");
    let mut retried = 0;
    for id in &ids {
        let record = stack.record(*id).await;
        for attempt in &record.failed_attempts {
            retried += 1;
            let message = &attempt.error.message;
            assert!(
                message.contains("before the answer came") && !message.contains("::"),
                "{message}"
            );
        }
    }
    assert_eq!(retried, 3);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_blackholed_for_five_seconds_under_load_loses_nothing_and_runs_nothing_twice() {
    let _exclusive = mcpq_tests::exclusive().await;
    mcpq_tests::init_logging();
    let nats = NatsServer::start();
    let web = HttpFixture::start().await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", nats.port).parse().unwrap()).await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "version: \"1.0\"\nservers:\n  - name: web\n    type: http\n    endpoint: {}\n    concurrency: 16\n",
            web.url()
        ),
    )
    .unwrap();
    // The worker and the callers reach NATS through the proxy only.
    let _worker = WorkerProcess::spawn(config.path(), &proxy.nats_url(), "behind-the-proxy");
    let nats_client = connect(&proxy.nats_url(), "pipeline").await.unwrap();
    let client = mcpq_dispatcher::Client::new(nats_client).await.unwrap();
    let warm = mcpq_tests::eventually("the worker to answer", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            client
                .call(&mark("warm".into()), Duration::from_secs(5))
                .await
                .ok()
        }
    })
    .await;
    assert!(matches!(warm.outcome, Outcome::Ok { .. }));

    // 300 calls, 32 at a time, each under its own idempotency key; a caller whose call fails
    // (NATS did not answer in time) calls again with the same key, as a pipeline should.
    let calls = {
        let client = client.clone();
        tokio::spawn(async move {
            let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
            join_all((0..300).map(|n| {
                let (client, semaphore) = (client.clone(), semaphore.clone());
                async move {
                    let _slot = semaphore.acquire().await.unwrap();
                    let job = Job::new(
                        "web",
                        McpRequest::call_tool(
                            "mark",
                            serde_json::json!({"tag": format!("load-{n}"), "ms": 20})
                                .as_object()
                                .cloned(),
                        ),
                    )
                    .with_idempotency_key(format!("load-{n}"));
                    for _ in 0..10 {
                        if let Ok(reply) = client.call(&job, Duration::from_secs(30)).await {
                            return Some(reply);
                        }
                    }
                    None
                }
            }))
            .await
        })
    };
    let fixture = web.fixture.clone();
    mcpq_tests::eventually("the load to be under way", Duration::from_secs(60), || {
        let marks = fixture.marks().len();
        async move { (marks > 60).then_some(()) }
    })
    .await;
    proxy.blackhole();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.lift();
    let replies = calls.await.unwrap();
    for (n, reply) in replies.iter().enumerate() {
        let reply = reply
            .as_ref()
            .unwrap_or_else(|| panic!("call {n} never answered"));
        assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    }
    let marks = web.fixture.marks();
    for n in 0..300 {
        let runs = marks.iter().filter(|m| **m == format!("load-{n}")).count();
        assert_eq!(runs, 1, "load-{n} ran {runs} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_say_what_happened_without_type_names() {
    let web = HttpFixture::start().await;
    let proxy = FaultProxy::start(web.addr).await;
    let stack = Stack::start(&format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    timeout: 5s\n    retry: {{maxAttempts: 1}}\n",
        proxy.url("mcp")
    ))
    .await;
    web.fixture.go_down();
    let reply = stack
        .call("web", "echo", serde_json::json!({"text": "x"}))
        .await;
    let Outcome::Error { error } = &reply.outcome else {
        panic!("{reply:?}")
    };
    assert_eq!(
        error.message,
        "upstream \"web\" answered HTTP 503 Service Unavailable (attempt 1 of 1)"
    );
    web.fixture.come_up();
    // The upstream's port closes: connections are refused.
    let url = proxy.url("mcp");
    drop(proxy);
    let reply = stack
        .call("web", "echo", serde_json::json!({"text": "x"}))
        .await;
    let Outcome::Error { error } = &reply.outcome else {
        panic!("{reply:?}")
    };
    assert_eq!(error.kind, ErrorKind::UpstreamUnavailable);
    assert_eq!(
        error.message,
        format!("upstream \"web\": connection to {url} refused (attempt 1 of 1)")
    );
    stack.stop().await;
}
