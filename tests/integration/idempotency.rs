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
    let mut replies = nats.subscribe("_INBOX.late.caller").await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "after-the-window");
    headers.insert("Mcpq-Reply-To", "_INBOX.late.caller");
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

/// `POST /v1/jobs` of a 3 s `mark` tagged `tag` under idempotency key `key`, at `addr`.
async fn submit_keyed(addr: std::net::SocketAddr, key: &str, tag: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/jobs"))
        .header("Idempotency-Key", key)
        .json(&serde_json::json!({
            "server": "web", "tool": "mark", "arguments": {"tag": tag, "ms": 3000}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_runs_once_past_the_duplicate_window_a_nats_restart_and_a_second_dispatcher() {
    let web = HttpFixture::start().await;
    // A duplicate window of one second: JetStream forgets the message id long before the job
    // ends; the record keeps the key.
    let mut stack = Stack::start_config(&format!(
        "version: \"1.0\"\nnats: {{duplicateWindow: 1s}}\nservers:\n{}",
        two_fixtures(&web.url())
    ))
    .await;
    // Started first: the second submission has to land while the 3 s call still runs.
    let other = stack.another_dispatcher().await;
    let first = submit_keyed(stack.addr, "charge-42", "charged").await;
    assert_eq!(first["duplicate"], false, "{first}");
    let id: uuid::Uuid = first["id"].as_str().unwrap().parse().unwrap();
    web.fixture.until_marked("charged").await;

    // Past the window, while the job runs, through another dispatcher: the same job.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = submit_keyed(other, "charge-42", "charged").await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert!(
        matches!(again["status"].as_str(), Some("queued" | "running")),
        "{again}"
    );

    // NATS restarts (the duplicate map is rebuilt only from messages still stored).
    stack.nats.restart();
    let record = stack
        .client
        .wait_record(id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, mcpq_schemas::JobStatus::Completed);
    let after = submit_keyed(stack.addr, "charge-42", "charged").await;
    assert_eq!(after["duplicate"], true, "{after}");
    assert_eq!(after["status"], "completed");

    // The same key from the Rust client, waiting for the reply: answered from the record.
    let job = Job::new(
        "web",
        McpRequest::call_tool(
            "mark",
            serde_json::json!({"tag": "charged", "ms": 3000})
                .as_object()
                .cloned(),
        ),
    )
    .with_idempotency_key("charge-42");
    assert_eq!(job.id, id, "one key, one id, on every front");
    let reply = stack
        .client
        .call(&job, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");

    // A pipeline publishing the job again on NATS, past the window: not run again either.
    let reply = published_for_reply(&stack, &job, "_INBOX.pipeline.inbox").await;
    assert_eq!(reply["status"], "ok", "{reply}");

    let runs = web
        .fixture
        .marks()
        .iter()
        .filter(|m| *m == "charged")
        .count();
    assert_eq!(runs, 1, "five submissions of one key, one execution");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_message_for_a_running_job_is_a_duplicate_and_its_caller_gets_the_reply() {
    let web = HttpFixture::start().await;
    let stack = Stack::start_config(&format!(
        "version: \"1.0\"\nnats: {{duplicateWindow: 1s}}\nservers:\n{}",
        two_fixtures(&web.url())
    ))
    .await;
    let job = Job::new(
        "web",
        McpRequest::call_tool(
            "mark",
            serde_json::json!({"tag": "twice", "ms": 5000})
                .as_object()
                .cloned(),
        ),
    )
    .with_idempotency_key("twice");
    stack.client.submit(&job).await.unwrap();
    web.fixture.until_marked("twice").await;
    // A pipeline publishes the same job again while it runs, with its own inbox.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let record = stack.client.record(job.id).await.unwrap().unwrap();
    assert_eq!(
        record.status,
        mcpq_schemas::JobStatus::Running,
        "the second message must land while the job runs"
    );
    let reply = published_for_reply(&stack, &job, "_INBOX.second.inbox").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["jobId"], job.id.to_string());
    let runs = web.fixture.marks().iter().filter(|m| *m == "twice").count();
    assert_eq!(runs, 1);
    stack.stop().await;
}

/// Publishes `job` as a pipeline would, its reply to `inbox`, and reads the reply.
async fn published_for_reply(stack: &Stack, job: &Job, inbox: &str) -> serde_json::Value {
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    let mut replies = nats.subscribe(inbox.to_string()).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Mcpq-Reply-To", inbox);
    js.publish_with_headers(
        "mcpq.jobs.web.normal",
        headers,
        serde_json::to_vec(job).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let message = tokio::time::timeout(
        Duration::from_secs(30),
        futures::StreamExt::next(&mut replies),
    )
    .await
    .expect("a reply within 30 s")
    .unwrap();
    serde_json::from_slice(&message.payload).unwrap()
}

/// A key whose first submission was claimed but never queued (its dispatcher died between
/// claiming the key and publishing) is taken over once that claim is an orphan (30 s old): the
/// next caller of the key waits that long, not its whole timeout, and its call runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_first_submission_was_never_queued_is_taken_over() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let job = Job::new(
        "web",
        McpRequest::call_tool(
            "mark",
            serde_json::json!({"tag": "orphan"}).as_object().cloned(),
        ),
    )
    .with_idempotency_key("orphan-1");
    // What a submitter that died after its claim leaves: the record `queued`, no message, its
    // claim 29 s old.
    let nats = mcpq_schemas::nats::connect(&stack.nats.url(), "test-orphan")
        .await
        .unwrap();
    let results = async_nats::jetstream::new(nats)
        .get_key_value(mcpq_schemas::names::RESULTS_BUCKET)
        .await
        .unwrap();
    let mut claim = mcpq_schemas::JobRecord::queued(&job);
    claim.updated_at_ms = mcpq_schemas::now_ms() - 29_000;
    results
        .create(
            job.id.to_string(),
            serde_json::to_vec(&claim).unwrap().into(),
        )
        .await
        .unwrap();
    let reply = stack
        .client
        .call(&job, Duration::from_secs(20))
        .await
        .expect("taken over within the call's time");
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    assert_eq!(web.fixture.marks(), ["orphan"], "run once");

    // Submitted for later (`mcpq batch run` run again after a kill): a claim younger than an
    // orphan is waited for, then taken over — not answered "duplicate" while no message
    // carries the job (its caller would wait for its end for ever).
    let later = Job::new(
        "web",
        McpRequest::call_tool(
            "mark",
            serde_json::json!({"tag": "orphan-2"}).as_object().cloned(),
        ),
    )
    .with_idempotency_key("orphan-2");
    let mut claim = mcpq_schemas::JobRecord::queued(&later);
    claim.updated_at_ms = mcpq_schemas::now_ms() - 28_000;
    results
        .create(
            later.id.to_string(),
            serde_json::to_vec(&claim).unwrap().into(),
        )
        .await
        .unwrap();
    let submitted = stack.client.submit(&later).await.unwrap();
    assert!(!submitted.duplicate, "{submitted:?}");
    web.fixture.until_marked("orphan-2").await;
    stack.stop().await;
}
