//! The NATS wire protocol as docs/wire-protocol.md documents it for pipelines in any language: jobs
//! published by hand as JSON, replies read from an inbox, records read from KV, and malformed
//! messages dead-lettered with their reason while the worker keeps serving.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use mcpq_tests::{fixture::HttpFixture, stack::Stack};

use crate::two_fixtures;

/// Publishes `body` to `subject` with a reply inbox, the way the wire protocol's Python example does.
async fn publish_raw(
    nats: &async_nats::Client,
    subject: &str,
    body: Vec<u8>,
    inbox: &str,
    msg_id: &str,
) {
    let js = async_nats::jetstream::new(nats.clone());
    let mut headers = HeaderMap::new();
    headers.insert("Mcpq-Reply-To", inbox);
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject.to_string(), headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("the jobs stream stores the message");
}

async fn next_json(sub: &mut async_nats::Subscriber) -> (HeaderMap, serde_json::Value) {
    let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("a reply within 30s")
        .expect("subscription open");
    let body = serde_json::from_slice(&msg.payload).expect("replies are JSON");
    (msg.headers.unwrap_or_default(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_published_by_hand_is_answered_on_its_inbox_and_recorded() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let nats = async_nats::connect(stack.nats.url())
        .await
        .expect("connect");
    let inbox = "_INBOX.pipeline.replies.job-1";
    let mut replies = nats.subscribe(inbox).await.expect("subscribe");
    let id = "0190f5a2-7c1e-7cc0-8a4e-3f1f5c2b9d10";
    let job = serde_json::json!({
        "v": 1,
        "id": id,
        "server": "web",
        "request": {"method": "tools/call", "params": {"name": "math.add", "arguments": {"a": 20, "b": 22}}},
        "submittedAtMs": 1_700_000_000_000u64
    });
    publish_raw(
        &nats,
        "mcpq.jobs.web.normal",
        serde_json::to_vec(&job).unwrap(),
        inbox,
        id,
    )
    .await;
    let (headers, reply) = next_json(&mut replies).await;
    assert_eq!(headers.get("Mcpq-Event").map(|v| v.as_str()), Some("reply"));
    assert_eq!(headers.get("Mcpq-Job-Id").map(|v| v.as_str()), Some(id));
    assert_eq!(reply["v"], 1);
    assert_eq!(reply["jobId"], id);
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(crate::first_text(&reply["result"]), "42");

    let js = async_nats::jetstream::new(nats.clone());
    let results = js
        .get_key_value("mcpq_results")
        .await
        .expect("results bucket");
    let record: serde_json::Value =
        serde_json::from_slice(&results.get(id).await.expect("kv get").expect("a record"))
            .expect("JSON record");
    assert_eq!(record["status"], "completed");
    assert_eq!(record["tool"], "math.add");
    assert_eq!(record["attempts"], 1);
    assert_eq!(crate::first_text(&record["result"]), "42");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_jobs_are_dead_lettered_with_their_reason_and_the_worker_keeps_serving() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let nats = async_nats::connect(stack.nats.url())
        .await
        .expect("connect");
    let inbox = "_INBOX.pipeline.bad";
    let mut replies = nats
        .subscribe(format!("{inbox}.*"))
        .await
        .expect("subscribe");
    let good_id = "0190f5a2-7c1e-7cc0-8a4e-3f1f5c2b9d11";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-json", b"{this is not json".to_vec(), "not JSON"),
        ("empty", Vec::new(), "empty message body"),
        ("no-version", br#"{"id":"0190f5a2-7c1e-7cc0-8a4e-3f1f5c2b9d12","server":"web"}"#.to_vec(), "missing envelope version"),
        ("future", br#"{"v":99,"id":"0190f5a2-7c1e-7cc0-8a4e-3f1f5c2b9d13"}"#.to_vec(), "version 99"),
        ("no-request", br#"{"v":1,"id":"0190f5a2-7c1e-7cc0-8a4e-3f1f5c2b9d14","server":"web","submittedAtMs":1}"#.to_vec(), "missing field `request`"),
        ("wrong-server", format!(r#"{{"v":1,"id":"{good_id}","server":"local","request":{{"method":"tools/call","params":{{"name":"echo"}}}},"submittedAtMs":1}}"#).into_bytes(), "published to server \"web\""),
        ("bad-params", br#"{"v":1,"id":"0190f5a2-7c1e-7cc0-8a4e-3f1f5c2b9d15","server":"web","request":{"method":"tools/call","params":{"arguments":{}}},"submittedAtMs":1}"#.to_vec(), "not a valid MCP"),
        // Just under NATS's default 1 MiB max_payload.
        ("huge", vec![b'{'; 900_000], "not JSON"),
    ];
    // A hundred messages, every kind in turn; the replies come back in any order.
    const MESSAGES: usize = 100;
    for i in 0..MESSAGES {
        let (name, body, _) = &cases[i % cases.len()];
        publish_raw(
            &nats,
            "mcpq.jobs.web.normal",
            body.clone(),
            &format!("{inbox}.{name}-{i}"),
            &format!("{name}-{i}"),
        )
        .await;
    }
    for _ in 0..MESSAGES {
        let msg = tokio::time::timeout(Duration::from_secs(30), replies.next())
            .await
            .expect("every malformed job is answered")
            .expect("subscription open");
        let token = msg.subject.rsplit('.').next().unwrap().to_string();
        let case = token.rsplit_once('-').unwrap().0.to_string();
        let reply: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let (_, _, word) = cases.iter().find(|(n, _, _)| *n == case).unwrap();
        assert_eq!(reply["status"], "error", "{case}: {reply}");
        assert_eq!(reply["error"]["kind"], "malformed_job", "{case}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(word), "{case}: {message:?} lacks {word:?}");
    }

    // Every one is in the dead-letter stream with its reason, and none is left in the queue.
    let js = async_nats::jetstream::new(nats.clone());
    let mut dlq = js.get_stream("MCPQ_DLQ").await.expect("dlq stream");
    assert_eq!(dlq.info().await.unwrap().state.messages, MESSAGES as u64);
    // The worker handles messages concurrently, so the letters' order is not the publishing order.
    let mut letters = Vec::new();
    for seq in 1..=MESSAGES as u64 {
        let stored = dlq.get_raw_message(seq).await.expect("a dead letter");
        letters.push(serde_json::from_slice::<serde_json::Value>(&stored.payload).unwrap());
    }
    let letter = letters
        .iter()
        .find(|l| l["headers"]["Mcpq-Reply-To"] == "_INBOX.pipeline.bad.not-json-0")
        .expect("the not-JSON message's dead letter");
    assert_eq!(letter["server"], "web");
    assert_eq!(letter["reason"]["kind"], "malformed_job");
    assert_eq!(letter["raw"], "{this is not json");
    let huge = letters
        .iter()
        .find(|l| l["headers"]["Mcpq-Reply-To"] == "_INBOX.pipeline.bad.huge-7")
        .expect("the huge message's dead letter");
    assert_eq!(
        huge["raw"].as_str().unwrap().len(),
        64 * 1024,
        "raw bodies are cut at 64 KiB"
    );
    mcpq_tests::eventually(
        "the jobs queue to be empty",
        Duration::from_secs(10),
        || {
            let js = js.clone();
            async move {
                let mut jobs = js.get_stream("MCPQ_JOBS_web").await.ok()?;
                (jobs.info().await.ok()?.state.messages == 0).then_some(())
            }
        },
    )
    .await;

    let reply = stack
        .call("web", "echo", serde_json::json!({"text": "still here"}))
        .await;
    let mcpq_schemas::Outcome::Ok { result } = reply.outcome else {
        panic!("the worker must still serve: {reply:?}");
    };
    assert_eq!(crate::first_text(&result), "still here");
    stack.stop().await;
}

/// The wire protocol's Python pipeline, run for real with nats-py against a running mcpq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_python_pipeline_works() {
    let root = mcpq_tests::repo_root();
    let script = root.join("deploy/examples/pipeline.py");
    let source = std::fs::read_to_string(&script).unwrap();
    let readme = std::fs::read_to_string(root.join("docs/wire-protocol.md")).unwrap();
    assert!(
        readme.contains(&source),
        "docs/wire-protocol.md's Python example differs from deploy/examples/pipeline.py: copy the file into docs/wire-protocol.md"
    );

    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let python = mcpq_tests::required_program("python3");
    let url = stack.nats.url();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args([url.as_str(), "web", "echo", r#"{"text": "from python"}"#])
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "pipeline.py failed: {stderr}");
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON reply");
    assert_eq!(reply["status"], "ok");
    assert_eq!(crate::first_text(&reply["result"]), "from python");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_async_python_pipeline_works() {
    let root = mcpq_tests::repo_root();
    let script = root.join("deploy/examples/async_pipeline.py");
    let source = std::fs::read_to_string(&script).unwrap();
    let readme = std::fs::read_to_string(root.join("docs/wire-protocol.md")).unwrap();
    assert!(
        readme.contains(&source),
        "docs/wire-protocol.md's async Python example differs from deploy/examples/async_pipeline.py: copy the file into docs/wire-protocol.md"
    );

    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let python = mcpq_tests::required_program("python3");
    let url = stack.nats.url();
    let calls: String = (0..50)
        .map(|i| {
            let call = if i == 7 {
                serde_json::json!({"server": "web", "tool": "reject"})
            } else {
                serde_json::json!({"server": "web", "tool": "echo", "arguments": {"text": format!("async-{i}")}})
            };
            format!("{call}\n")
        })
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(python)
            .arg(script)
            .arg(url.as_str())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run python3");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(calls.as_bytes())
            .unwrap();
        child.wait_with_output().expect("python3 ends")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "async_pipeline.py failed: {stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(lines.len(), 50);
    for (i, line) in lines.iter().enumerate() {
        if i == 7 {
            assert_eq!(line["status"], "failed", "{line}");
            assert_eq!(line["error"]["kind"], "upstream", "{line}");
        } else {
            assert_eq!(line["status"], "completed", "{line}");
            assert_eq!(crate::first_text(&line["result"]), format!("async-{i}"));
        }
    }
    stack.stop().await;
}
