//! Big, bad and hostile input: results larger than a NATS message reach every kind of caller
//! intact through the object store and run once; requests that cannot fit, full queues,
//! out-of-range timeouts, header-breaking keys, unknown lanes and oversized batches are refused
//! at once with a clear error, and nothing is queued or recorded for them.

use std::time::Duration;

use mcpq_schemas::{ErrorKind, Job, JobStatus, McpRequest, Outcome};
use mcpq_tests::{fixture::HttpFixture, json_of, stack::Stack};
use rmcp::model::CallToolRequestParams;
use serde_json::json;

use crate::bridge::modern_client;

const MIB: usize = 1024 * 1024;

/// A 2026-07-28 rmcp client that takes answers up to 64 MiB (rmcp's own default is 16 MiB).
async fn big_client(
    url: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, rmcp::model::ClientConfig> {
    use rmcp::{
        model::ProtocolVersion,
        service::{ClientLifecycleMode, ClientServiceExt},
        transport::{
            StreamableHttpClientTransport,
            streamable_http_client::StreamableHttpClientTransportConfig,
        },
    };
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_string())
        .max_json_response_size(64 * MIB)
        .max_sse_event_size(64 * MIB);
    rmcp::model::ClientConfig::default()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(config),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap()
}

/// The HTTP fixture as server `web` (with `extra` config lines), and a stack serving it.
async fn web_stack(extra: &str) -> (HttpFixture, Stack) {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&format!(
        "  - name: web\n    type: http\n    endpoint: {}\n{extra}",
        web.url()
    ))
    .await;
    (web, stack)
}

/// How many `tags` the upstream ran.
fn runs(web: &HttpFixture, tag: &str) -> usize {
    web.fixture.marks().iter().filter(|m| *m == tag).count()
}

/// The keys of the results bucket (every job that has a record).
async fn recorded(stack: &Stack) -> usize {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let bucket = js.get_key_value("mcpq_results").await.unwrap();
    bucket.keys().await.unwrap().count().await
}

fn text_of(result: &serde_json::Value) -> &str {
    crate::first_text(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_beyond_a_message_arrive_whole_and_run_once_and_too_large_fails_once() {
    // Beside the HTTP fixture, the stdio one: rmcp reads at most 16 MiB per line from a child
    // unless told otherwise.
    let (web, stack) = web_stack(&format!(
        "    timeout: 60s\n    maxResultBytes: 21MiB\n\
         \x20 - name: local\n    type: stdio\n    command: {}\n    timeout: 60s\n    maxResultBytes: 21MiB\n",
        mcpq_tests::fixture_bin().display()
    ))
    .await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.addr);

    for (tag, bytes) in [("mcp-3mb", 3_000_000), ("mcp-20mb", 20_000_000)] {
        // An MCP client on the server's own endpoint.
        let client = big_client(&stack.server_url("web")).await;
        let result = client
            .call_tool(
                CallToolRequestParams::new("big").with_arguments(
                    json!({"tag": tag, "bytes": bytes})
                        .as_object()
                        .cloned()
                        .unwrap(),
                ),
            )
            .await
            .unwrap();
        let text = result.content[0]
            .as_text()
            .expect("text content")
            .text
            .clone();
        assert_eq!(text.len(), bytes, "{tag}: the whole result");
        assert!(text.starts_with(&format!("{tag}:")), "{tag}");
        assert_eq!(runs(&web, tag), 1, "{tag} ran once");
        let _ = client.cancel().await;
    }

    // An HTTP caller: submit, then wait for the record; a Rust pipeline reads the record too.
    let accepted = json_of(
        http.post(format!("{base}/v1/jobs"))
            .json(&json!({"server": "web", "tool": "big", "arguments": {"tag": "http-20mb", "bytes": 20_000_000}})),
    )
    .await;
    let id = accepted["id"].as_str().unwrap().to_string();
    let waited = json_of(http.get(format!("{base}/v1/jobs/{id}/wait?timeout=120s"))).await;
    assert_eq!(
        waited["status"],
        "completed",
        "{}",
        &waited.to_string()[..200.min(waited.to_string().len())]
    );
    assert_eq!(text_of(&waited["result"]).len(), 20_000_000);
    assert!(
        waited.get("resultRef").is_none(),
        "readers see the result, not the reference"
    );
    let record = stack.record(id.parse().unwrap()).await;
    assert_eq!(text_of(record.result.as_ref().unwrap()).len(), 20_000_000);
    assert_eq!(runs(&web, "http-20mb"), 1);

    // A pipeline on NATS sees the reference, and reads the object by name.
    let job = Job::new(
        "web",
        McpRequest::call_tool(
            "big",
            json!({"tag": "nats-3mb", "bytes": 3_000_000})
                .as_object()
                .cloned(),
        ),
    );
    stack.client.submit(&job).await.unwrap();
    let raw = stack
        .client
        .wait_record(job.id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.status, JobStatus::Completed);
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let stored: mcpq_schemas::JobRecord = serde_json::from_slice(
        &js.get_key_value("mcpq_results")
            .await
            .unwrap()
            .get(job.id.to_string())
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let blob = stored
        .result_ref
        .expect("the stored record refers to the object");
    assert_eq!(
        (blob.bucket.as_str(), blob.name.clone()),
        ("mcpq_blobs", job.id.to_string())
    );
    assert!(stored.result.is_none());
    let mut object = js
        .get_object_store("mcpq_blobs")
        .await
        .unwrap()
        .get(&blob.name)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, blob.size);
    let result: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(text_of(&result).len(), 3_000_000);

    // 20 MB from a stdio upstream: one line of JSON-RPC, read whole, run once.
    let reply = stack
        .call(
            "local",
            "big",
            json!({"tag": "stdio-20mb", "bytes": 20_000_000}),
        )
        .await;
    let Outcome::Ok { result } = &reply.outcome else {
        panic!("a 20 MB stdio result must arrive: {:?}", reply.outcome);
    };
    assert_eq!(text_of(result).len(), 20_000_000);
    assert_eq!(stack.record(reply.job_id).await.attempts, 1, "called once");
    let reply = stack
        .call(
            "local",
            "big",
            json!({"tag": "stdio-too-big", "bytes": 23_000_000}),
        )
        .await;
    let Outcome::Error { error } = &reply.outcome else {
        panic!("over maxResultBytes from stdio must fail");
    };
    assert_eq!(error.kind, ErrorKind::TooLarge, "{}", error.message);
    assert_eq!(stack.record(reply.job_id).await.attempts, 1, "called once");

    // Over maxResultBytes: failed with too_large, once, and dead-lettered for the operator.
    let reply = stack
        .call("web", "big", json!({"tag": "too-big", "bytes": 23_000_000}))
        .await;
    let Outcome::Error { error } = reply.outcome else {
        panic!("a result over maxResultBytes must fail: {reply:?}");
    };
    assert_eq!(error.kind, ErrorKind::TooLarge);
    assert!(
        error.message.contains("maxResultBytes"),
        "{}",
        error.message
    );
    let record = stack.record(reply.job_id).await;
    assert_eq!((record.status, record.attempts), (JobStatus::Failed, 1));
    // Once its message has left the work queue (TERMed), no redelivery can come.
    let js = async_nats::jetstream::new(
        async_nats::connect(stack.nats.url())
            .await
            .expect("connect to NATS"),
    );
    mcpq_tests::eventually(
        "the job's message to leave the queue",
        Duration::from_secs(30),
        || {
            let js = js.clone();
            async move {
                let mut stream = js
                    .get_stream(mcpq_schemas::names::jobs_stream("web"))
                    .await
                    .ok()?;
                (stream.info().await.ok()?.state.messages == 0).then_some(())
            }
        },
    )
    .await;
    assert_eq!(runs(&web, "too-big"), 1, "never sent upstream again");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_fit_and_bad_input_are_refused_with_nothing_queued() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&format!(
        "  - name: web\n    type: http\n    endpoint: {0}\n\
         \x20 - name: other\n    type: http\n    endpoint: {0}\n",
        web.url()
    ))
    .await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.addr);
    let before = recorded(&stack).await;
    let post = |body: serde_json::Value| http.post(format!("{base}/v1/jobs")).json(&body).send();
    let refused = |status: u16, code: &'static str| {
        move |response: reqwest::Response| async move {
            assert_eq!(response.status(), status);
            let body: serde_json::Value = response.json().await.expect("a JSON error");
            assert_eq!(body["code"], code, "{body}");
            body["message"].as_str().unwrap().to_string()
        }
    };

    // A 2 MB request: 413 over /v1, a JSON-RPC error naming the limit over MCP.
    let huge = "x".repeat(2 * MIB);
    let message = refused(413, "too_large")(
        post(json!({"server": "web", "tool": "echo", "arguments": {"text": huge}}))
            .await
            .unwrap(),
    )
    .await;
    assert!(message.contains("max_payload"), "{message}");
    let client = modern_client(&stack.server_url("web")).await;
    let error = client
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(json!({"text": huge}).as_object().cloned().unwrap()),
        )
        .await
        .unwrap_err();
    let rmcp::ServiceError::McpError(error) = error else {
        panic!("a JSON-RPC error: {error:?}");
    };
    assert_eq!(error.code, rmcp::model::ErrorCode::INVALID_PARAMS);
    assert_eq!(error.data.as_ref().unwrap()["kind"], "too_large");
    assert!(error.data.as_ref().unwrap()["limit"].as_u64().unwrap() < 2 * MIB as u64);

    // Out-of-range timeouts, header-breaking keys, unknown lanes: 400 naming the field.
    for (body, field) in [
        (
            json!({"server": "web", "tool": "echo", "timeoutMs": 18_446_744_073_709_551_615u64}),
            "timeoutMs",
        ),
        (
            json!({"server": "web", "tool": "echo", "timeoutMs": -1}),
            "timeoutMs",
        ),
        (
            json!({"server": "web", "tool": "echo", "idempotencyKey": "a\r\nNats-Msg-Id: x"}),
            "idempotencyKey",
        ),
        (
            json!({"server": "web", "tool": "echo", "lane": "urgent"}),
            "urgent",
        ),
    ] {
        let message = refused(400, "bad_request")(post(body.clone()).await.unwrap()).await;
        assert!(message.contains(field), "{body}: {message}");
    }
    for (meta, field) in [
        (json!({"io.mcpq/timeoutMs": -1}), "io.mcpq/timeoutMs"),
        (
            json!({"io.mcpq/timeoutMs": 18_446_744_073_709_551_615u64}),
            "io.mcpq/timeoutMs",
        ),
        (json!({"io.mcpq/lane": "urgent"}), "io.mcpq/lane"),
        (
            json!({"io.mcpq/idempotencyKey": "a\nb"}),
            "io.mcpq/idempotencyKey",
        ),
        (json!({"traceparent": "00-xyz"}), "traceparent"),
    ] {
        let params = CallToolRequestParams::new("echo")
            .with_arguments(json!({"text": "x"}).as_object().cloned().unwrap());
        let mut options = rmcp::service::PeerRequestOptions::no_options();
        options.meta = Some(serde_json::from_value(meta.clone()).unwrap());
        let request =
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(params));
        let error = client
            .peer()
            .send_request_with_option(request, options)
            .await
            .unwrap()
            .await_response()
            .await
            .expect_err(&format!("{meta} must be refused"));
        let rmcp::ServiceError::McpError(error) = error else {
            panic!("{meta}: a JSON-RPC error: {error:?}");
        };
        assert_eq!(error.code, rmcp::model::ErrorCode::INVALID_PARAMS, "{meta}");
        assert!(error.message.contains(field), "{meta}: {}", error.message);
    }
    let _ = client.cancel().await;

    // A batch of 10,001 lines: 413, nothing queued.
    let line = json!({"server": "web", "tool": "echo", "arguments": {"text": "x"}}).to_string();
    let lines = vec![line; 10_001].join("\n");
    let message = refused(413, "too_large")(
        http.post(format!("{base}/v1/batches"))
            .header("Content-Type", "application/x-ndjson")
            .body(lines)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(message.contains("10000"), "{message}");
    assert_eq!(
        recorded(&stack).await,
        before,
        "no record of anything refused"
    );

    // One idempotency key on two servers is two jobs.
    let mut ids = Vec::new();
    for server in ["web", "other"] {
        let accepted = post(json!({"server": server, "tool": "echo", "arguments": {"text": server}, "idempotencyKey": "same"}))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        assert_eq!(accepted["duplicate"], false, "{server}: {accepted}");
        ids.push(accepted["id"].as_str().unwrap().parse().unwrap());
    }
    assert_ne!(ids[0], ids[1]);
    mcpq_tests::all_completed(&stack.client, &ids, Duration::from_secs(30)).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_queue_full_at_once_and_takes_jobs_again_when_drained() {
    let (_web, stack) = web_stack("    concurrency: 1\n    maxQueued: 3\n").await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.addr);
    // One job held by the worker and two waiting: the stream holds three. The first is held
    // long enough for the three refusals below to land while the queue is full, under load too.
    let mut ids = Vec::new();
    for n in 0..3 {
        let ms = if n == 0 { 6000 } else { 100 };
        let job = Job::new(
            "web",
            McpRequest::call_tool(
                "hold",
                json!({"tag": format!("h{n}"), "ms": ms})
                    .as_object()
                    .cloned(),
            ),
        );
        stack.client.submit(&job).await.unwrap();
        ids.push(job.id);
    }
    let response = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": "one too many"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "queue_full", "{body}");

    let client = modern_client(&stack.server_url("web")).await;
    let error = client
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(json!({"text": "x"}).as_object().cloned().unwrap()),
        )
        .await
        .unwrap_err();
    let rmcp::ServiceError::McpError(error) = error else {
        panic!("a JSON-RPC error: {error:?}");
    };
    assert_eq!(
        error.data.as_ref().unwrap()["kind"],
        "queue_full",
        "{error:?}"
    );
    assert_eq!(error.code.0, -32030);
    // A pipeline publishing on NATS is refused by JetStream itself.
    let extra = Job::new("web", McpRequest::call_tool("echo", None));
    let refused = stack.client.submit(&extra).await.unwrap_err();
    assert!(
        matches!(refused, mcpq_dispatcher::ClientError::QueueFull { .. }),
        "{refused}"
    );
    assert!(
        stack.client.record(extra.id).await.unwrap().is_none(),
        "no orphan record"
    );

    mcpq_tests::all_completed(&stack.client, &ids, Duration::from_secs(30)).await;
    let reply = stack
        .call("web", "echo", json!({"text": "room again"}))
        .await;
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    let _ = client.cancel().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_job_needs_no_submission_time_and_a_malformed_one_keeps_its_id() {
    let (_web, stack) = web_stack("").await;
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await.unwrap();
    let send = |body: serde_json::Value| {
        let (js, inbox) = (js.clone(), inbox.clone());
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Mcpq-Reply-To", inbox.as_str());
            js.publish_with_headers("mcpq.jobs.web.normal", headers, body.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    use futures::StreamExt;
    let id = uuid::Uuid::now_v7();
    send(json!({"v": 1, "id": id, "server": "web",
        "request": {"method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}}))
    .await;
    let reply: mcpq_schemas::Reply =
        serde_json::from_slice(&replies.next().await.unwrap().payload).unwrap();
    assert_eq!(reply.job_id, id);
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    // Submitted for later (no inbox): its record takes the time JetStream stored it.
    let later = uuid::Uuid::now_v7();
    js.publish(
        "mcpq.jobs.web.normal",
        json!({"v": 1, "id": later, "server": "web",
            "request": {"method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}})
        .to_string()
        .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    mcpq_tests::all_completed(&stack.client, &[later], Duration::from_secs(30)).await;
    assert!(stack.record(later).await.submitted_at_ms > 0);

    let bad = uuid::Uuid::now_v7();
    send(json!({"v": 1, "id": bad, "server": "web", "request": {"method": ""}})).await;
    let reply: mcpq_schemas::Reply =
        serde_json::from_slice(&replies.next().await.unwrap().payload).unwrap();
    assert_eq!(reply.job_id, bad, "the id from the body, not all zeros");
    let Outcome::Error { error } = reply.outcome else {
        panic!("{reply:?}");
    };
    assert_eq!(error.kind, ErrorKind::MalformedJob);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_refuses_requests_and_long_polls_beyond_its_bounds() {
    let (_web, stack) = web_stack("").await;
    let http = reqwest::Client::new();
    for (options, status, flag) in [
        (
            mcpq_dispatcher::HttpOptions {
                max_waits: 1,
                ..Default::default()
            },
            429,
            "--max-waits",
        ),
        (
            mcpq_dispatcher::HttpOptions {
                max_requests: 1,
                ..Default::default()
            },
            503,
            "--max-requests",
        ),
    ] {
        let addr = stack.another_dispatcher_with(options).await;
        // A job that runs a while, for the first long poll to wait on.
        let job = Job::new(
            "web",
            McpRequest::call_tool(
                "hold",
                json!({"tag": flag, "ms": 3000}).as_object().cloned(),
            ),
        );
        stack.client.submit(&job).await.unwrap();
        let url = format!("http://{addr}/v1/jobs/{}", job.id);
        // Two long polls at once on a job that runs 3 s: one holds the only slot until the
        // job ends and is answered; the other is refused at once, with a retry hint.
        let poll = || http.get(format!("{url}/wait?timeout=30s")).send();
        let (a, b) = tokio::join!(poll(), poll());
        let (mut answered, mut refused) = (Vec::new(), Vec::new());
        for response in [a.unwrap(), b.unwrap()] {
            if response.status() == status {
                refused.push(response);
            } else {
                answered.push(response);
            }
        }
        assert_eq!((answered.len(), refused.len()), (1, 1), "{flag}");
        let refused = refused.remove(0);
        assert_eq!(refused.headers()["retry-after"], "1");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(flag), "{body}");
        let first = answered.remove(0);
        assert_eq!(
            first.status(),
            200,
            "{flag}: the poll that got in is answered"
        );
        let record: serde_json::Value = first.json().await.unwrap();
        assert_eq!(record["status"], "completed", "{flag}: {record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_more_than_max_connections_refused() {
    use tokio::io::AsyncReadExt;
    let (_web, stack) = web_stack("").await;
    let addr = stack
        .another_dispatcher_with(mcpq_dispatcher::HttpOptions {
            max_connections: 2,
            idle_timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .await;
    // The end of the stream: the dispatcher closed the connection (within `within`).
    async fn closed(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 512];
        matches!(
            tokio::time::timeout(within, tcp.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }
    // Two silent connections (one after a partial request line) take both slots ...
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut second, b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    // ... so a third is closed as soon as it is accepted, while they are still open ...
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        closed(&mut third, Duration::from_secs(4)).await,
        "over max_connections"
    );
    assert!(!closed(&mut first, Duration::from_millis(10)).await);
    assert!(!closed(&mut second, Duration::from_millis(10)).await);
    // ... and both are closed once the idle timeout has passed, which frees their slots.
    assert!(
        closed(&mut first, Duration::from_secs(30)).await,
        "a silent connection"
    );
    assert!(
        closed(&mut second, Duration::from_secs(30)).await,
        "headers never finished"
    );
    let healthy = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthy.status(), 200);
}
