//! Batches: `mcpq batch run` over 2,000 calls with permanent failures and flaky calls,
//! interrupted and run again without executing any call twice; `/v1/batches` over HTTP.

use std::{process::Command, time::Duration};

use mcpq_schemas::{
    JobStatus,
    batch::{BatchResultLine, BatchStatus},
};
use mcpq_tests::{eventually, fixture::HttpFixture, mcpq_bin, stack::Stack};
use serde_json::json;

/// 2,000 calls: every 20th a permanent failure (a JSON-RPC error), every 10th
/// (of the rest) flaky (hangs past the timeout once, then answers), the others echo.
fn calls() -> Vec<serde_json::Value> {
    (0..2000)
        .map(|i| {
            if i % 20 == 0 {
                json!({"server": "web", "tool": "reject"})
            } else if i % 10 == 5 {
                json!({"server": "web", "tool": "flaky", "arguments": {"key": format!("k{i}"), "failures": 1, "hang_ms": 3000}})
            } else {
                json!({"server": "web", "tool": "echo", "arguments": {"text": format!("line-{i}")}})
            }
        })
        .collect()
}

fn check(lines: &[BatchResultLine]) {
    assert_eq!(lines.len(), 2000);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.index, i, "results are in input order");
        if i % 20 == 0 {
            assert_eq!(line.status, JobStatus::Failed, "{line:?}");
            assert!(line.error.is_some(), "a failure says why: {line:?}");
        } else {
            assert_eq!(line.status, JobStatus::Completed, "{line:?}");
            let text = crate::first_text(line.result.as_ref().unwrap()).to_string();
            if i % 10 != 5 {
                assert_eq!(text, format!("line-{i}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_interrupted_and_run_again_executes_no_call_twice() {
    let fixture = HttpFixture::start().await;
    let servers = format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    concurrency: 64\n    timeout: 1s\n    retry:\n      maxAttempts: 3\n      initial: 50ms\n      max: 200ms\n",
        fixture.url()
    );
    let stack = Stack::start(&servers).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcp.yaml");
    std::fs::write(&config, format!("version: \"1.0\"\nservers:\n{servers}")).unwrap();
    let input = dir.path().join("calls.jsonl");
    let text: String = calls().iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let output = dir.path().join("results.jsonl");
    let url = stack.nats.url();
    let (config, input, output_path) = (config.clone(), input.clone(), output.clone());
    let run = move || {
        let mut command = Command::new(mcpq_bin());
        command
            .args(["batch", "run", "--nats", &url, "--config"])
            .arg(&config)
            .arg(&input)
            .arg("-o")
            .arg(&output_path)
            .args(["--in-flight", "128"]);
        command
    };
    // Interrupted once a quarter of the results are written.
    let mut first = run().spawn().unwrap();
    let written = output.clone();
    eventually("a quarter of the results", Duration::from_secs(120), || {
        let lines = std::fs::read_to_string(&written)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        async move { (lines >= 500).then_some(()) }
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    // Run again: it finishes, and the output is complete and in order.
    let finished = tokio::task::spawn_blocking(move || run().output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&finished.stderr);
    assert!(finished.status.success(), "batch run failed: {stderr}");
    assert!(stderr.contains("answered by an earlier run"), "{stderr}");
    let lines: Vec<BatchResultLine> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    check(&lines);
    // Upstream executions: each call once, plus the one hang of each flaky call.
    let flaky = (0..2000).filter(|i| i % 20 != 0 && i % 10 == 5).count() as u64;
    eventually(
        "the upstream's call count settles",
        Duration::from_secs(10),
        || {
            let calls = fixture.fixture.calls();
            async move { (calls == 2000 + flaky).then_some(()) }
        },
    )
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_http_reports_counts_and_results_in_order() {
    let fixture = HttpFixture::start().await;
    let stack = Stack::start(&format!(
        "  - name: web\n    type: http\n    endpoint: {}\n    concurrency: 32\n",
        fixture.url()
    ))
    .await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.addr);
    let body: String = (0..200)
        .map(|i| {
            let call = if i % 10 == 0 {
                json!({"server": "web", "tool": "reject"})
            } else {
                json!({"server": "web", "tool": "echo", "arguments": {"text": format!("b-{i}")}})
            };
            format!("{call}\n")
        })
        .collect();
    let post = || {
        http.post(format!("{base}/v1/batches"))
            .header("Content-Type", "application/x-ndjson")
            .header("Idempotency-Key", "nightly-1")
            .body(body.clone())
            .send()
    };
    let response = post().await.unwrap();
    assert_eq!(response.status(), 202);
    let accepted: mcpq_schemas::api::BatchAccepted = response.json().await.unwrap();
    assert_eq!(accepted.total, 200);
    let status: BatchStatus = eventually("the batch is done", Duration::from_secs(60), || async {
        let status: BatchStatus = http
            .get(format!("{base}/v1/batches/{}", accepted.batch_id))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        status.done.then_some(status)
    })
    .await;
    assert_eq!(
        (status.total, status.completed, status.failed),
        (200, 180, 20)
    );
    // Posting the same batch again (same key) adds nothing.
    let again: mcpq_schemas::api::BatchAccepted = post().await.unwrap().json().await.unwrap();
    assert_eq!(again.batch_id, accepted.batch_id);
    let results =
        mcpq_tests::body_of(http.get(format!("{base}/v1/batches/{}/results", accepted.batch_id)))
            .await;
    let lines: Vec<BatchResultLine> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.index, i);
        if i % 10 == 0 {
            assert_eq!(line.status, JobStatus::Failed);
        } else {
            assert_eq!(
                crate::first_text(line.result.as_ref().unwrap()),
                format!("b-{i}")
            );
        }
    }
    assert_eq!(
        fixture.fixture.calls(),
        200,
        "the second POST executed nothing"
    );
    // A bad line is refused by number, and nothing is queued.
    let response = http
        .post(format!("{base}/v1/batches"))
        .header("Content-Type", "application/x-ndjson")
        .body("{\"server\": \"web\", \"tool\": \"echo\"}\n{\"server\": \"nope\", \"tool\": \"echo\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let error: serde_json::Value = response.json().await.unwrap();
    assert!(
        error["message"].as_str().unwrap().starts_with("line 2:"),
        "{error}"
    );
    stack.stop().await;
}
