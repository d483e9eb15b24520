//! Retries and dead letters: a flaky upstream succeeds after retries with every failed attempt
//! recorded and the backoff within policy; an always-failing one ends in exactly one dead
//! letter with all its attempts, and the caller hears why.

use std::time::Duration;

use mcpq_schemas::{ErrorKind, Job, JobStatus, McpRequest, Outcome};
use mcpq_tests::{fixture::HttpFixture, stack::Stack};

/// The HTTP fixture with a short timeout (a hanging call fails fast, yet a quick one never
/// times out on a loaded machine) and a quick retry policy.
fn flaky_server(url: &str, max_attempts: u32) -> String {
    format!(
        "  - name: web\n    type: http\n    endpoint: {url}\n    timeout: 1s\n    \
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
        serde_json::json!({"key": "k", "failures": 3, "hang_ms": 4000}),
    )
    .await;
    let Outcome::Ok { result } = &reply.outcome else {
        panic!("a flaky call must succeed within 5 attempts: {reply:?}");
    };
    assert_eq!(crate::first_text(result), "answered on call 4");

    let record = stack.record(reply.job_id).await;
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
    let reply = call(&stack, "slow", serde_json::json!({"ms": 4000})).await;
    let Outcome::Error { error } = &reply.outcome else {
        panic!("a call that always times out cannot succeed: {reply:?}");
    };
    assert_eq!(error.kind, ErrorKind::Timeout);

    let record = stack.record(reply.job_id).await;
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

/// Runs `mcpq dlq ARGS` against the stack's NATS and returns its stdout.
async fn dlq(stack: &Stack, args: &[&str]) -> String {
    let url = stack.nats.url();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(mcpq_tests::mcpq_bin())
            .arg("dlq")
            .args(&args)
            .args(["--nats", &url])
            .output()
            .expect("run mcpq dlq")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "mcpq dlq failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_replayed_after_the_upstream_recovers_and_purged() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&flaky_server(&web.url(), 2)).await;
    // Two attempts, both hang: dead. The third call with this key answers.
    let reply = call(
        &stack,
        "flaky",
        serde_json::json!({"key": "r", "failures": 2, "hang_ms": 4000}),
    )
    .await;
    assert!(matches!(reply.outcome, Outcome::Error { .. }), "{reply:?}");
    let id = reply.job_id.to_string();

    let listed = dlq(&stack, &["list", "--server", "web", "--reason", "timeout"]).await;
    let line = listed
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("job {id} not listed:\n{listed}"));
    assert!(
        line.contains("flaky") && line.contains("attempts=2"),
        "{line}"
    );
    let seq = line.split_whitespace().next().unwrap().to_string();
    assert!(
        dlq(&stack, &["list", "--tool", "echo"]).await.is_empty(),
        "filters narrow the list"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&dlq(&stack, &["show", &seq]).await).unwrap();
    assert_eq!(shown["jobId"], id.as_str());

    let replayed = dlq(&stack, &["replay", &seq]).await;
    assert!(replayed.contains(&id), "{replayed}");
    let client = stack.client.clone();
    let record = mcpq_tests::eventually(
        "the replayed job to complete",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                client
                    .record(reply.job_id)
                    .await
                    .ok()?
                    .filter(|r| r.status == JobStatus::Completed)
            }
        },
    )
    .await;
    assert_eq!(
        crate::first_text(record.result.as_ref().unwrap()),
        "answered on call 3"
    );
    assert_eq!(
        record.attempts, 1,
        "a replay starts with a fresh attempt count"
    );

    let purged = dlq(&stack, &["purge", "--all", "--server", "web"]).await;
    assert!(purged.contains("purged 1 dead letter"), "{purged}");
    assert!(dlq(&stack, &["list"]).await.is_empty());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_deadline_is_never_sent_upstream() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&flaky_server(&web.url(), 3)).await;
    let mut job = Job::new(
        "web",
        McpRequest::call_tool(
            "echo",
            serde_json::json!({"text": "late"}).as_object().cloned(),
        ),
    );
    job.deadline_ms = Some(mcpq_schemas::now_ms() - 1);
    let reply = stack
        .client
        .call(&job, Duration::from_secs(30))
        .await
        .expect("a reply");
    let Outcome::Error { error } = &reply.outcome else {
        panic!("an expired job must not run: {reply:?}");
    };
    assert_eq!(error.kind, ErrorKind::Expired, "{error}");
    let record = stack.record(job.id).await;
    assert_eq!(record.status, JobStatus::Expired);
    assert_eq!(web.fixture.calls(), 0, "the upstream never saw it");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_slower_than_ack_wait_runs_once() {
    let web = HttpFixture::start().await;
    let server = format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    timeout: 20s\n    ackWait: 1s\n",
        web.url()
    );
    let stack = Stack::start(&server).await;
    let reply = call(&stack, "slow", serde_json::json!({"ms": 3500})).await;
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    let record = stack.record(reply.job_id).await;
    assert_eq!(
        record.attempts, 1,
        "never redelivered while the worker held it"
    );
    assert_eq!(web.fixture.calls(), 1, "the upstream ran it once");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_behind_an_open_circuit_costs_no_attempt_and_sees_only_pings() {
    let web = HttpFixture::start().await;
    let server = format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    timeout: 2s\n    concurrency: 8\n    \
         retry: {{maxAttempts: 5, initial: 50ms, max: 200ms}}\n    \
         circuitBreaker: {{failureThreshold: 3, resetTimeout: 1s}}\n",
        web.url()
    );
    let stack = Stack::start(&server).await;
    // The worker's session is open before the outage, as it would be in production.
    let warm = stack
        .call("web", "mark", serde_json::json!({"tag": "warm"}))
        .await;
    assert!(matches!(warm.outcome, Outcome::Ok { .. }), "{warm:?}");

    web.fixture.go_down();
    let mut ids = Vec::new();
    for n in 0..50 {
        let job = Job::new(
            "web",
            McpRequest::call_tool(
                "mark",
                serde_json::json!({"tag": format!("job-{n}")})
                    .as_object()
                    .cloned(),
            ),
        );
        stack.client.submit(&job).await.unwrap();
        ids.push(job.id);
    }
    // Operators see the open circuit in the worker's heartbeat.
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let beats = async_nats::jetstream::new(nats)
        .get_key_value("mcpq_workers")
        .await
        .unwrap();
    let circuit = |beats: async_nats::jetstream::kv::Store| async move {
        let beat: mcpq_schemas::worker::WorkerBeat =
            serde_json::from_slice(&beats.get("web.test-worker").await.ok()??).ok()?;
        Some(beat.circuit)
    };
    use mcpq_schemas::worker::CircuitState;
    mcpq_tests::eventually(
        "the heartbeat to show the circuit open",
        Duration::from_secs(20),
        || {
            let beats = beats.clone();
            async move { (circuit(beats).await? == CircuitState::Open).then_some(()) }
        },
    )
    .await;
    // The calls in flight when it went down failed (one attempt each); from now on only the
    // worker's own pings may reach the upstream.
    let before_open = web.fixture.seen_while_down();
    assert!(
        before_open.iter().any(|m| m.starts_with("tools/call")),
        "the calls in flight met the outage: {before_open:?}"
    );
    // Three probes later (one per resetTimeout), still nothing but probes reached it.
    let mut while_open = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while while_open.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "three probes of the upstream while the circuit is open: {while_open:?}"
        );
        while_open.extend(web.fixture.seen_while_down());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        while_open.iter().all(|m| m == "ping"),
        "only pings while the circuit was open: {while_open:?}"
    );
    web.fixture.come_up();

    mcpq_tests::all_completed(&stack.client, &ids, Duration::from_secs(60)).await;
    let mut marks = web.fixture.marks();
    marks.retain(|m| m != "warm");
    marks.sort();
    let mut expected: Vec<String> = (0..50).map(|n| format!("job-{n}")).collect();
    expected.sort();
    assert_eq!(marks, expected, "every job ran exactly once");
    // Every failed attempt is a call the upstream saw before the circuit opened: none was spent
    // while it was open or probing.
    let mut failed = 0;
    for id in &ids {
        let record = stack.record(*id).await;
        assert_eq!(record.status, JobStatus::Completed);
        failed += record.failed_attempts.len();
    }
    let calls_before_open = before_open
        .iter()
        .filter(|m| m.starts_with("tools/call"))
        .count();
    assert_eq!(failed, calls_before_open, "{before_open:?}");
    let dlq = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap())
        .get_stream("MCPQ_DLQ")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dlq, 0, "no dead letter");
    mcpq_tests::eventually(
        "the heartbeat to show the circuit closed",
        Duration::from_secs(20),
        || {
            let beats = beats.clone();
            async move { (circuit(beats).await? == CircuitState::Closed).then_some(()) }
        },
    )
    .await;
    stack.stop().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_429_is_retried_after_its_retry_after() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&flaky_server(&web.url(), 5)).await;
    web.fixture.be_busy(2);
    let reply = call(&stack, "busy", serde_json::json!({})).await;
    let Outcome::Ok { result } = &reply.outcome else {
        panic!("a rate-limited call succeeds once the upstream lets it: {reply:?}");
    };
    assert_eq!(crate::first_text(result), "not busy any more");
    assert_eq!(web.fixture.rejected(), 2);
    let record = stack.record(reply.job_id).await;
    assert_eq!(
        record.failed_attempts.len(),
        2,
        "{:?}",
        record.failed_attempts
    );
    for attempt in &record.failed_attempts {
        assert_eq!(attempt.error.kind, ErrorKind::RateLimited, "{attempt:?}");
        assert!(
            attempt.retry_in_ms.unwrap() >= 1000,
            "Retry-After: 1 is honoured: {attempt:?}"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_rate_limit_holds_that_tool_only() {
    let web = HttpFixture::start().await;
    let server = format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    concurrency: 8\n    toolRateLimits: {{stamp: {{perSecond: 5}}}}\n",
        web.url()
    );
    let stack = Stack::start(&server).await;
    let calls: Vec<_> = (0..11)
        .map(|_| {
            let client = stack.client.clone();
            tokio::spawn(async move {
                let job = Job::new("web", McpRequest::call_tool("stamp", None));
                client
                    .call(&job, Duration::from_secs(60))
                    .await
                    .expect("answered")
            })
        })
        .collect();
    // Another tool of the same server is not held back meanwhile.
    let reply = call(&stack, "echo", serde_json::json!({"text": "free"})).await;
    assert!(matches!(reply.outcome, Outcome::Ok { .. }));
    assert!(
        web.fixture.stamps().len() < 11,
        "echo answered before the limited calls were done"
    );
    for call in calls {
        assert!(matches!(call.await.unwrap().outcome, Outcome::Ok { .. }));
    }
    let stamps = web.fixture.stamps();
    let rate = 10.0 / (stamps[10] - stamps[0]).as_secs_f64();
    assert!(
        rate <= 5.5,
        "stamp ran at {rate:.1} calls/s against a limit of 5/s"
    );
    stack.stop().await;
}
