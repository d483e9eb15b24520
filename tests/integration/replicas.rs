//! Many dispatchers, many workers, nothing shared but JetStream: a dispatcher SIGKILLed under
//! load leaves its callers with errors but every job done and readable through the other; a
//! worker process started under load takes work at once.

use std::time::Duration;

use futures::StreamExt;
use mcpq_schemas::{JobRecord, JobStatus, job::idempotent_id};
use mcpq_tests::{
    eventually, fixture::HttpFixture, free_port, nats::NatsServer, stack::McpqProcess,
};
use serde_json::{Value, json};

fn config(dir: &std::path::Path, url: &str, concurrency: usize) -> String {
    let path = dir.join("mcp.yaml");
    std::fs::write(
        &path,
        format!(
            "version: \"1.0\"\nservers:\n  - {{name: web, type: http, endpoint: \"{url}\", concurrency: {concurrency}, timeout: 30s}}\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// A 2026-07-28 `tools/call` of `web__slow` with an idempotency key, as one POST.
async fn call(base: &str, key: &str) -> Result<Value, String> {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "web__slow", "arguments": {"ms": 1500}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.mcpq/idempotencyKey": key,
        }}
    });
    let response = reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "tools/call")
        .header("Mcp-Name", "web__slow")
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    response
        .text()
        .await
        .map_err(|e| e.to_string())
        .map(|t| json!(t))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_under_load_fails_its_callers_but_no_job() {
    let _exclusive = mcpq_tests::exclusive().await;
    let nats = NatsServer::start();
    let web = HttpFixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &web.url(), 16);
    let bases: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut dispatchers: Vec<McpqProcess> = bases
        .iter()
        .enumerate()
        .map(|(i, listen)| {
            McpqProcess::spawn(
                &[
                    "dispatcher",
                    "--config",
                    &config,
                    "--nats",
                    &nats.url(),
                    "--listen",
                    listen,
                ],
                &dir.path().join(format!("d{i}.log")),
            )
        })
        .collect();
    let _workers: Vec<McpqProcess> = (0..3)
        .map(|i| {
            McpqProcess::spawn(
                &[
                    "worker",
                    "--config",
                    &config,
                    "--nats",
                    &nats.url(),
                    "--id",
                    &format!("w{i}"),
                    "--metrics-listen",
                    "127.0.0.1:0",
                ],
                &dir.path().join(format!("w{i}.log")),
            )
        })
        .collect();
    for base in &bases {
        mcpq_tests::ready(format!("http://{base}/readyz")).await;
    }
    mcpq_tests::ready(format!("http://{}/v1/openapi.json", bases[0])).await;
    eventually("the catalog", Duration::from_secs(60), || {
        let base = bases[1].clone();
        async move {
            let text = call(&format!("http://{base}"), "warm-up").await.ok()?;
            text.as_str()?.contains("slept").then_some(())
        }
    })
    .await;

    // 30 calls on each dispatcher, each 1.5 s upstream; the first dispatcher dies under them.
    let (a, b) = (
        format!("http://{}", bases[0]),
        format!("http://{}", bases[1]),
    );
    let on = |base: String, side: &'static str| {
        futures::stream::iter((0..30).map(move |i| {
            let base = base.clone();
            async move {
                (
                    format!("{side}{i}"),
                    call(&base, &format!("{side}{i}")).await,
                )
            }
        }))
        .buffer_unordered(30)
        .collect::<Vec<_>>()
    };
    let on_a = tokio::spawn(on(a.clone(), "a"));
    let on_b = tokio::spawn(on(b.clone(), "b"));
    eventually("calls running upstream", Duration::from_secs(30), || {
        let n = web.fixture.slow_running();
        async move { (n >= 10).then_some(()) }
    })
    .await;
    dispatchers[0].kill();
    let a_results = on_a.await.unwrap();
    let b_results = on_b.await.unwrap();
    let failed_on_a = a_results.iter().filter(|(_, r)| r.is_err()).count();
    assert!(
        failed_on_a > 0,
        "the killed dispatcher's callers see errors"
    );
    assert!(
        b_results.iter().all(|(_, r)| r
            .as_ref()
            .is_ok_and(|t| t.as_str().unwrap().contains("slept"))),
        "the other dispatcher's callers are answered: {b_results:?}"
    );

    // A caller that saw an error calls again, with the same idempotency key, on the live
    // dispatcher: a job already queued is not queued twice, one never queued is queued now.
    for (key, result) in &a_results {
        if result.is_err() {
            let again = call(&b, key).await.unwrap();
            assert!(again.as_str().unwrap().contains("slept"), "{key}: {again}");
        }
    }
    // Every job completes and is readable through the other dispatcher.
    let http = reqwest::Client::new();
    for (key, _) in a_results.iter().chain(&b_results) {
        let id = idempotent_id("web", key);
        let record: JobRecord = eventually(
            "the job's record, through the live dispatcher",
            Duration::from_secs(60),
            || {
                let (http, url) = (http.clone(), format!("{b}/v1/jobs/{id}/wait?timeout=20s"));
                async move {
                    let r = http.get(url).send().await.ok()?;
                    (r.status() == 200).then_some(())?;
                    r.json::<JobRecord>().await.ok()
                }
            },
        )
        .await;
        assert_eq!(record.status, JobStatus::Completed, "{key}: {record:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_under_load_takes_work_at_once() {
    let _exclusive = mcpq_tests::exclusive().await;
    let nats = NatsServer::start();
    let web = HttpFixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &web.url(), 2);
    let listen = format!("127.0.0.1:{}", free_port());
    let _dispatcher = McpqProcess::spawn(
        &[
            "dispatcher",
            "--config",
            &config,
            "--nats",
            &nats.url(),
            "--listen",
            &listen,
        ],
        &dir.path().join("d.log"),
    );
    let worker = |id: &str| {
        McpqProcess::spawn(
            &[
                "worker",
                "--config",
                &config,
                "--nats",
                &nats.url(),
                "--id",
                id,
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            &dir.path().join(format!("{id}.log")),
        )
    };
    let _first = worker("first");
    mcpq_tests::ready(format!("http://{listen}/readyz")).await;
    mcpq_tests::catalogs_published(&nats.url(), &["web"]).await;
    // 40 jobs of 600 ms for a worker that runs 2 at a time: 12 s of work for it alone, time
    // enough for a second worker process to start and take its part on a loaded machine.
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..40 {
        let r: Value = mcpq_tests::json_of(
            http.post(format!("http://{listen}/v1/jobs"))
                .json(&json!({"server": "web", "tool": "slow", "arguments": {"ms": 600}})),
        )
        .await;
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    eventually("the first worker busy", Duration::from_secs(30), || {
        let n = web.fixture.slow_running();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let _second = worker("second");
    // The newcomer needs no coordination: it binds the lane consumers and pulls.
    let mut records = Vec::new();
    for id in &ids {
        let record: JobRecord = http
            .get(format!("http://{listen}/v1/jobs/{id}/wait?timeout=60s"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(record.status, JobStatus::Completed);
        records.push(record);
    }
    let by_second = records
        .iter()
        .filter(|r| r.worker_id.as_deref() == Some("second"))
        .count();
    assert!(by_second >= 5, "the new worker took {by_second} of 40 jobs");
    assert!(
        web.fixture.slow_peak() > 2,
        "both workers ran calls at once"
    );
}
