//! Calls for later: async jobs over NATS and over the HTTP jobs API, cancellation of queued and
//! running jobs, progress to every kind of caller, and priority lanes under contention.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt, stream};
use mcpq_dispatcher::Cancel;
use mcpq_schemas::{Job, JobRecord, JobStatus, Lane, McpRequest, Outcome};
use mcpq_tests::{eventually, fixture::HttpFixture, stack::Stack};
use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{CallToolRequestParams, ClientConfig, ProgressNotificationParam, ProtocolVersion},
    service::{ClientLifecycleMode, ClientServiceExt, NotificationContext},
    transport::StreamableHttpClientTransport,
};
use serde_json::json;

fn web(url: &str, extra: &str) -> String {
    format!("  - name: web\n    type: http\n    endpoint: {url}\n    timeout: 10s\n{extra}")
}

fn job(tool: &str, arguments: serde_json::Value) -> Job {
    Job::new(
        "web",
        McpRequest::call_tool(tool, arguments.as_object().cloned()),
    )
}

/// Waits until every job's record has ended; returns the records in order.
async fn ended(stack: &Stack, ids: &[uuid::Uuid], within: Duration) -> Vec<JobRecord> {
    eventually(&format!("{} jobs ended", ids.len()), within, || async {
        let records = stack.client.records(ids).await.ok()?;
        records
            .into_iter()
            .map(|r| r.filter(|r| r.status.is_terminal()))
            .collect::<Option<Vec<_>>>()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_async_jobs_over_nats_and_over_http_all_come_back() {
    let fixture = HttpFixture::start().await;
    let stack = Stack::start(&web(&fixture.url(), "    concurrency: 64\n")).await;
    let n = 10_000;
    // Over NATS, with no inbox: submitted, then read back from the records.
    let nats_jobs: Vec<Job> = (0..n)
        .map(|i| job("echo", json!({"text": format!("nats-{i}")})))
        .collect();
    stream::iter(nats_jobs.clone())
        .map(|job| {
            let client = stack.client.clone();
            async move { client.submit(&job).await }
        })
        .buffer_unordered(256)
        .try_collect::<Vec<_>>()
        .await
        .expect("every NATS submission is accepted");
    // Over HTTP.
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.addr);
    let http_ids: Vec<uuid::Uuid> = stream::iter(0..n)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let response = http
                    .post(format!("{base}/v1/jobs"))
                    .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": format!("http-{i}")}}))
                    .send()
                    .await
                    .expect("POST /v1/jobs");
                assert_eq!(response.status(), 202);
                let accepted: mcpq_schemas::api::Accepted = response.json().await.expect("Accepted");
                assert_eq!(accepted.status, JobStatus::Queued);
                accepted.id
            }
        })
        .buffered(64)
        .collect()
        .await;
    let nats_ids: Vec<_> = nats_jobs.iter().map(|j| j.id).collect();
    for (prefix, ids) in [("nats", &nats_ids), ("http", &http_ids)] {
        let records = ended(&stack, ids, Duration::from_secs(240)).await;
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.status, JobStatus::Completed, "{record:?}");
            let result = record.result.as_ref().expect("a result");
            assert_eq!(crate::first_text(result), format!("{prefix}-{i}"));
        }
    }
    assert_eq!(
        fixture.fixture.clone().calls(),
        2 * n as u64,
        "each job ran once"
    );

    // The record over HTTP, and the long poll.
    let id = http_ids[17];
    let record: JobRecord = http
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record.status, JobStatus::Completed);
    let waited = http
        .get(format!("{base}/v1/jobs/{id}/wait?timeout=2s"))
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 200);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_api_answers_errors_as_json_with_a_code() {
    let fixture = HttpFixture::start().await;
    let stack = Stack::start(&web(&fixture.url(), "")).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.addr);
    let error = |status: u16, code: &'static str| {
        move |response: reqwest::Response| async move {
            assert_eq!(response.status(), status);
            let body: serde_json::Value = response.json().await.expect("a JSON error");
            assert_eq!(body["code"], code, "{body}");
            body["message"].as_str().expect("a message").to_string()
        }
    };
    let post = |body: serde_json::Value| http.post(format!("{base}/v1/jobs")).json(&body).send();
    let message = error(404, "unknown_server")(
        post(json!({"server": "nope", "tool": "echo"}))
            .await
            .unwrap(),
    )
    .await;
    assert!(message.contains("web"), "{message}");
    // A tool the catalog does not list is queued: the upstream answers it (here, with its own
    // error), the catalog being a listing rather than a gate.
    let accepted = post(json!({"server": "web", "tool": "nope"}))
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let message = error(400, "bad_request")(post(json!({"server": "web"})).await.unwrap()).await;
    assert!(message.contains("tool"), "{message}");
    let unknown = uuid::Uuid::now_v7();
    error(404, "not_found")(
        http.get(format!("{base}/v1/jobs/{unknown}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    error(400, "bad_request")(
        http.get(format!("{base}/v1/jobs/xyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;

    // An idempotency key in the header makes a second submission a duplicate of the first.
    let submit = || {
        http.post(format!("{base}/v1/jobs"))
            .header("Idempotency-Key", "order-7")
            .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": "once"}}))
            .send()
    };
    let first: mcpq_schemas::api::Accepted = submit().await.unwrap().json().await.unwrap();
    ended(&stack, &[first.id], Duration::from_secs(30)).await;
    let second: mcpq_schemas::api::Accepted = submit().await.unwrap().json().await.unwrap();
    assert_eq!(
        (second.id, second.duplicate, second.status),
        (first.id, true, JobStatus::Completed)
    );
    assert_eq!(fixture.fixture.clone().calls(), 1);
    // Cancelling a job that ended is a conflict.
    error(409, "already_ended")(
        http.delete(format!("{base}/v1/jobs/{}", first.id))
            .send()
            .await
            .unwrap(),
    )
    .await;

    // The OpenAPI document served is the one pinned in the repo.
    let served: serde_json::Value =
        mcpq_tests::json_of(http.get(format!("{base}/v1/openapi.json"))).await;
    let pinned: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(mcpq_tests::repo_root().join("schemas/json/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(served, pinned);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_never_start_when_queued_and_are_cancelled_upstream_when_running() {
    let fixture = HttpFixture::start().await;
    let stack = Stack::start(&web(&fixture.url(), "    concurrency: 1\n")).await;
    let upstream = fixture.fixture.clone();
    let running = job("hold", json!({"tag": "running", "ms": 60_000}));
    stack.client.submit(&running).await.unwrap();
    upstream.until_held("running").await;
    // Queued behind it (one slot): cancelled over HTTP, it says so at once.
    let queued = job("hold", json!({"tag": "queued", "ms": 10}));
    stack.client.submit(&queued).await.unwrap();
    let response = reqwest::Client::new()
        .delete(format!("http://{}/v1/jobs/{}", stack.addr, queued.id))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let record: JobRecord = response.json().await.unwrap();
    assert_eq!(record.status, JobStatus::Cancelled);
    // The running one: its upstream request is cancelled.
    let cancel = stack
        .client
        .cancel(running.id, Some("test".into()))
        .await
        .unwrap();
    assert!(matches!(cancel, Cancel::Requested(_)), "{cancel:?}");
    let records = ended(&stack, &[running.id], Duration::from_secs(30)).await;
    assert_eq!(records[0].status, JobStatus::Cancelled, "{:?}", records[0]);
    upstream.until_cancelled("running").await;
    // A job queued after the cancelled one runs; by then the cancelled one was taken and dropped.
    let after = stack
        .call("web", "hold", json!({"tag": "after", "ms": 1}))
        .await;
    assert!(matches!(after.outcome, Outcome::Ok { .. }), "{after:?}");
    assert_eq!(
        upstream.held(),
        ["running", "after"],
        "the queued job must never start"
    );
    assert_eq!(stack.record(queued.id).await.status, JobStatus::Cancelled);

    // An MCP client that goes away (2026-07-28: the response stream closes) cancels its call.
    let client = ClientConfig::default()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(stack.server_url("web")),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap();
    let params = CallToolRequestParams::new("hold").with_arguments(
        json!({"tag": "mcp", "ms": 60_000})
            .as_object()
            .cloned()
            .unwrap(),
    );
    let call = tokio::spawn(async move { client.call_tool(params).await });
    upstream.until_held("mcp").await;
    call.abort();
    upstream.until_cancelled("mcp").await;

    // A 2025-era session client cancels with `notifications/cancelled` on its session.
    let session = ClientConfig::default()
        .with_protocol_version(ProtocolVersion::V_2025_06_18)
        .serve(StreamableHttpClientTransport::from_uri(
            stack.server_url("web"),
        ))
        .await
        .unwrap();
    let params = CallToolRequestParams::new("hold").with_arguments(
        json!({"tag": "session", "ms": 60_000})
            .as_object()
            .cloned()
            .unwrap(),
    );
    let handle = session
        .peer()
        .send_request_with_option(
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(params)),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    upstream.until_held("session").await;
    handle
        .cancel(Some("the test changed its mind".into()))
        .await
        .unwrap();
    upstream.until_cancelled("session").await;
    let _ = session.cancel().await;
    stack.stop().await;
}

/// A progress value and its message, as heard.
type Heard = (f64, Option<String>);

/// An rmcp client that keeps the progress notifications it hears.
#[derive(Clone, Default)]
struct Listener {
    heard: Arc<std::sync::Mutex<Vec<Heard>>>,
}

impl ClientHandler for Listener {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.heard
            .lock()
            .unwrap()
            .push((params.progress, params.message));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_progress_reaches_mcp_clients_nats_callers_and_records_in_order() {
    let fixture = HttpFixture::start().await;
    let stack = Stack::start(&web(&fixture.url(), "")).await;
    let expected: Vec<(f64, Option<String>)> = (1..=5)
        .map(|i| (f64::from(i), Some(format!("step {i}"))))
        .collect();

    for version in [ProtocolVersion::V_2026_07_28, ProtocolVersion::V_2025_06_18] {
        let listener = Listener::default();
        let transport = StreamableHttpClientTransport::from_uri(stack.server_url("web"));
        let client = if version.has_initialize() {
            listener.clone().serve(transport).await.unwrap()
        } else {
            listener
                .clone()
                .serve_with_lifecycle(
                    transport,
                    ClientLifecycleMode::Discover {
                        preferred_versions: vec![version.clone()],
                    },
                )
                .await
                .unwrap()
        };
        let params = CallToolRequestParams::new("progress")
            .with_arguments(json!({"steps": 5}).as_object().cloned().unwrap());
        let result = client.call_tool(params).await.unwrap();
        assert_eq!(result.content[0].as_text().unwrap().text, "5 steps done");
        // Every event arrived. rmcp's client hands each notification to a task of its own, so
        // its handler may run after the result is returned, and in any order: the order on the
        // wire is checked below.
        let heard = eventually("five progress events", Duration::from_secs(10), || {
            let heard = listener.heard.lock().unwrap().clone();
            let want = expected.len();
            async move { (heard.len() >= want).then_some(heard) }
        })
        .await;
        let mut heard = heard;
        heard.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(heard, expected, "{version}");
    }

    // On the wire, the events come in order and before the result.
    let body = mcpq_tests::body_of(
        reqwest::Client::new()
            .post(stack.server_url("web"))
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "tools/call")
            .header("Mcp-Name", "progress")
            .json(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "progress", "arguments": {"steps": 5},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
                      "io.modelcontextprotocol/clientCapabilities": {},
                      "progressToken": "wire"}}}),
            ),
    )
    .await;
    let messages: Vec<serde_json::Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    let on_the_wire: Vec<(f64, Option<String>)> = messages
        .iter()
        .take_while(|m| m["method"] == "notifications/progress")
        .map(|m| {
            assert_eq!(m["params"]["progressToken"], "wire", "{m}");
            let message = m["params"]["message"].as_str().map(str::to_string);
            (m["params"]["progress"].as_f64().unwrap(), message)
        })
        .collect();
    assert_eq!(on_the_wire, expected, "{body}");
    assert_eq!(
        messages.len(),
        expected.len() + 1,
        "the result, and nothing else, follows: {body}"
    );
    let result = &messages[expected.len()]["result"];
    assert_eq!(result["content"][0]["text"], "5 steps done", "{body}");

    // A NATS caller gets progress events on its inbox, in order, before the reply.
    let (to, mut events) = tokio::sync::mpsc::channel(mcpq_dispatcher::EVENTS_UNREAD);
    let reply = stack
        .client
        .call_with_events(
            &job("progress", json!({"steps": 5})),
            Duration::from_secs(30),
            Some(to),
        )
        .await
        .unwrap();
    assert!(matches!(reply.outcome, Outcome::Ok { .. }));
    let mut heard = Vec::new();
    while let Ok(event) = events.try_recv() {
        let mcpq_dispatcher::Event::Progress(event) = event else {
            panic!("only progress was asked for: {event:?}");
        };
        heard.push((event.progress.progress, event.progress.message));
    }
    assert_eq!(heard, expected);

    // An async job keeps its latest progress on its record.
    let later = job("progress", json!({"steps": 5}));
    stack.client.submit(&later).await.unwrap();
    let record = &ended(&stack, &[later.id], Duration::from_secs(30)).await[0];
    let progress = record.progress.as_ref().expect("progress on the record");
    assert_eq!((progress.progress, progress.total), (5.0, Some(5.0)));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_high_lane_drains_before_the_low_lane_without_starving_it() {
    let fixture = HttpFixture::start().await;
    let stack = Stack::start(&web(&fixture.url(), "    concurrency: 1\n")).await;
    let submit = |lane: Lane, i: usize| {
        let mut job = job(
            "mark",
            json!({"tag": format!("{}-{i}", lane.as_str()), "ms": 20}),
        );
        job.lane = lane;
        job
    };
    let low: Vec<Job> = (0..100).map(|i| submit(Lane::Low, i)).collect();
    let high: Vec<Job> = (0..50).map(|i| submit(Lane::High, i)).collect();
    for job in low.iter().chain(&high) {
        stack.client.submit(job).await.unwrap();
    }
    let ids: Vec<_> = low.iter().chain(&high).map(|j| j.id).collect();
    ended(&stack, &ids, Duration::from_secs(120)).await;
    let marks = fixture.fixture.clone().marks();
    assert_eq!(marks.len(), 150);
    let is_high = |m: &String| m.starts_with("high");
    let first_high = marks.iter().position(is_high).unwrap();
    let last_high = marks.iter().rposition(is_high).unwrap();
    // High went first once it was queued: it was done long before low...
    assert!(
        marks[last_high + 1..].len() >= 40,
        "high should drain well before low: {marks:?}"
    );
    // ...and low kept moving meanwhile (about one slot in five).
    let low_meanwhile = marks[first_high..last_high]
        .iter()
        .filter(|m| !is_high(m))
        .count();
    assert!(
        low_meanwhile >= 5,
        "low starved while high drained: {marks:?}"
    );
    // Within a lane, order is kept.
    let highs: Vec<_> = marks.iter().filter(|m| is_high(m)).cloned().collect();
    let expected: Vec<_> = (0..50).map(|i| format!("high-{i}")).collect();
    assert_eq!(highs, expected);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_example_submits_waits_batches_and_cancels() {
    let root = mcpq_tests::repo_root();
    let source = std::fs::read_to_string(root.join("dispatcher/examples/pipeline.rs")).unwrap();
    let readme = std::fs::read_to_string(root.join("docs/jobs.md")).unwrap();
    assert!(
        readme.contains(&source),
        "docs/jobs.md's Rust example differs from dispatcher/examples/pipeline.rs: copy the file into docs/jobs.md"
    );
    let fixture = HttpFixture::start().await;
    let stack = Stack::start(&web(&fixture.url(), "")).await;
    let example = mcpq_tests::example_bin("pipeline");
    let url = stack.nats.url();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(example)
            .args([url.as_str(), "web", "echo", r#"{"text": "from rust"}"#])
            .output()
            .expect("run the example")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("from rust"), "{stdout}");
    assert!(stdout.contains(": 3 of 3 completed"), "{stdout}");
    assert!(stdout.contains("line 2: Completed"), "{stdout}");
    assert!(
        stdout.contains("cancel requested") || stdout.contains("too late"),
        "{stdout}"
    );
    stack.stop().await;
}
