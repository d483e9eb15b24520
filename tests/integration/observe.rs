//! What operators see: `/metrics` counting a known workload exactly (real `mcpq dispatcher`
//! and `mcpq worker` processes, each with its own recorder), queue depth with no worker running,
//! `mcpq status --once --json` and `mcpq audit tail`; a caller's trace id reaching the upstream's
//! `_meta` and the audit record.

use std::{
    collections::{BTreeMap, HashSet},
    process::Stdio,
    time::Duration,
};

use futures::StreamExt;
use mcpq_dispatcher::Client;
use mcpq_schemas::{
    Job, JobStatus, Lane, McpRequest,
    audit::{AuditBatch, AuditRecord},
    names::AUDIT_STREAM,
    nats::connect,
    status::StatusReport,
};
use mcpq_tests::{
    eventually, fixture::HttpFixture, free_port, mcpq_bin, nats::NatsServer, stack::Stack,
};
use serde_json::{Value, json};

/// Prometheus text → `name{labels}` → value, labels sorted, so a series can be named exactly.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut series = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = match key.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => key.to_string(),
        };
        series.insert(key, value);
    }
    series
}

/// `name{a="x",b="y"}` with the labels sorted, as [`parse_metrics`] keys them.
fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    labels.sort_unstable();
    format!("{name}{{{}}}", labels.join(","))
}

async fn scrape(url: &str, key: Option<&str>) -> BTreeMap<String, f64> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    parse_metrics(&response.text().await.unwrap())
}

fn sum(series: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    series
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// A real `mcpq` process logging to `log`, killed on drop.
fn spawn(args: &[&str], log: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(mcpq_bin())
        .args(args)
        .env("MCPQ_LOG", "info")
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

const CALLER_KEY: &str = "mcpq_observer-key-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_exactly_and_audit_shows_each_call_once() {
    let _exclusive = mcpq_tests::exclusive().await;
    let nats = NatsServer::start();
    let web = HttpFixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcp.yaml");
    std::fs::write(
        &config,
        format!(
            r#"version: "1.0"
auth:
  apiKeys: [{{principal: ci, sha256: "{sha}", allow: ["*/*"], limits: {{callsPerMinute: 100000}}}}]
  metricsByPrincipal: true
servers:
  - {{name: web, type: http, endpoint: "{url}", concurrency: 64, timeout: 30s}}
  - name: slowpoke
    type: http
    endpoint: "{url}"
    timeout: 300ms
    retry: {{maxAttempts: 2, initial: 10ms, max: 20ms}}
  - {{name: idle, type: http, endpoint: "{url}"}}
"#,
            sha = mcpq_dispatcher::auth::sha256_hex(CALLER_KEY),
            url = web.url(),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (worker_port, dispatcher_port) = (free_port(), free_port());
    let worker_listen = format!("127.0.0.1:{worker_port}");
    let dispatcher_listen = format!("127.0.0.1:{dispatcher_port}");
    let mut worker = spawn(
        &[
            "worker",
            "--config",
            config,
            "--nats",
            &nats.url(),
            "--id",
            "w1",
            "--server",
            "web",
            "--server",
            "slowpoke",
            "--metrics-listen",
            &worker_listen,
        ],
        &dir.path().join("worker.log"),
    );
    let _dispatcher = spawn(
        &[
            "dispatcher",
            "--config",
            config,
            "--nats",
            &nats.url(),
            "--listen",
            &dispatcher_listen,
        ],
        &dir.path().join("dispatcher.log"),
    );
    let worker_base = format!("http://{worker_listen}");
    let base = format!("http://{dispatcher_listen}");
    mcpq_tests::ready(format!("{worker_base}/readyz")).await;
    mcpq_tests::ready(format!("{base}/readyz")).await;

    let client = Client::new(connect(&nats.url(), "observer").await.unwrap())
        .await
        .unwrap();
    let call = |server: &'static str, tool: &'static str, args: Value| {
        let client = client.clone();
        async move {
            let job = Job::new(
                server,
                McpRequest::call_tool(tool, args.as_object().cloned()),
            );
            client.call(&job, Duration::from_secs(120)).await.unwrap()
        }
    };
    // No worker serves `idle`: its jobs wait, on a lane no consumer has bound yet.
    for i in 0..4 {
        let job = Job::new(
            "idle",
            McpRequest::call_tool("echo", json!({"text": i}).as_object().cloned()),
        );
        client.submit(&job).await.unwrap();
    }
    // 500 completed, 20 failed (the upstream rejects them), 10 dead (timeouts, tried twice).
    let mut calls = Vec::new();
    for i in 0..500 {
        calls.push(call("web", "echo", json!({"text": format!("call {i}")})));
    }
    for _ in 0..20 {
        calls.push(call("web", "reject", json!({})));
    }
    for _ in 0..10 {
        calls.push(call("slowpoke", "slow", json!({"ms": 3000})));
    }
    let replies: Vec<_> = futures::stream::iter(calls)
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(replies.len(), 530);
    // 5 cancelled while they run.
    let mut held = Vec::new();
    for i in 0..5 {
        let job = Job::new(
            "web",
            McpRequest::call_tool(
                "hold",
                json!({"tag": format!("h{i}"), "ms": 120000})
                    .as_object()
                    .cloned(),
            ),
        );
        client.submit(&job).await.unwrap();
        held.push(job.id);
    }
    eventually("5 holds running", Duration::from_secs(30), || {
        let n = web.fixture.held().len();
        async move { (n == 5).then_some(()) }
    })
    .await;
    for id in &held {
        client.cancel(*id, Some("test".into())).await.unwrap();
    }
    for id in &held {
        eventually("a hold cancelled", Duration::from_secs(30), || {
            let (client, id) = (client.clone(), *id);
            async move {
                let record = client.record(id).await.ok()??;
                (record.status == JobStatus::Cancelled).then_some(())
            }
        })
        .await;
    }

    worker_counts_are_exact(&worker_base).await;

    // The dispatcher's: dead letters kept, requests by endpoint, refusals by reason.
    let dispatcher_metrics = format!("{base}/metrics");
    eventually("dead letters counted", Duration::from_secs(30), || {
        let url = dispatcher_metrics.clone();
        async move {
            let m = scrape(&url, Some(CALLER_KEY)).await;
            let dlq = |s: &str| m.get(&key("mcpq_dlq_depth", &[("server", s)])).copied();
            (dlq("web") == Some(20.0) && dlq("slowpoke") == Some(10.0)).then_some(())
        }
    })
    .await;
    let http = reqwest::Client::new();
    // Jobs submitted over NATS belong to no principal: to `ci` they are not found.
    for id in &held[..3] {
        let r = http
            .get(format!("{base}/v1/jobs/{id}"))
            .bearer_auth(CALLER_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    for _ in 0..2 {
        let r = http
            .get(format!("{base}/v1/jobs/{}", held[0]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = http
        .get(format!("{base}/v1/jobs/{}", held[0]))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let d = scrape(&dispatcher_metrics, Some(CALLER_KEY)).await;
    let get =
        |name: &str, labels: &[(&str, &str)]| d.get(&key(name, labels)).copied().unwrap_or(0.0);
    assert_eq!(
        get(
            "mcpq_requests_total",
            &[("endpoint", "/v1/jobs/{id}"), ("status", "404")]
        ),
        3.0
    );
    assert_eq!(
        get(
            "mcpq_requests_total",
            &[("endpoint", "/v1/jobs/{id}"), ("status", "401")]
        ),
        3.0
    );
    assert_eq!(
        get("mcpq_auth_failures_total", &[("reason", "missing")]),
        2.0
    );
    assert_eq!(
        get("mcpq_auth_failures_total", &[("reason", "invalid")]),
        1.0
    );

    // With no worker running, what is submitted waits, and the gauges say how much.
    // Stopped gracefully, the worker takes its heartbeat with it (a killed one would count
    // until its heartbeat expires).
    let pid = worker.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .unwrap()
        .unwrap();
    for lane in [Lane::Normal; 7].into_iter().chain([Lane::High; 2]) {
        let r = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(CALLER_KEY)
            .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": "later"}, "lane": lane}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    eventually("queue depth 7 + 2", Duration::from_secs(30), || {
        let url = dispatcher_metrics.clone();
        async move {
            let m = scrape(&url, Some(CALLER_KEY)).await;
            let depth = |lane: &str| {
                m.get(&key(
                    "mcpq_queue_depth",
                    &[("server", "web"), ("lane", lane)],
                ))
                .copied()
            };
            let idle = m.get(&key(
                "mcpq_queue_depth",
                &[("server", "idle"), ("lane", "normal")],
            ));
            (depth("normal") == Some(7.0)
                && depth("high") == Some(2.0)
                && depth("low") == Some(0.0)
                && idle == Some(&4.0))
            .then_some(())
        }
    })
    .await;
    let d = scrape(&dispatcher_metrics, Some(CALLER_KEY)).await;
    let quota = d
        .get(&key(
            "mcpq_quota_used",
            &[("principal", "key:ci"), ("limit", "calls_per_minute")],
        ))
        .copied()
        .unwrap_or(0.0);
    assert!((1.0..=9.0).contains(&quota), "calls this minute: {quota}");

    status_says_the_same(config, &nats).await;
    audit_shows_each_call_once(&nats).await;
}

/// The worker's counters after the workload. A job is counted once its outcome is kept, so they
/// may trail the replies by a moment; then they must be exact.
async fn worker_counts_are_exact(worker_base: &str) {
    let metrics_url = format!("{worker_base}/metrics");
    let worker_metrics = eventually("535 jobs counted", Duration::from_secs(30), || {
        let url = metrics_url.clone();
        async move {
            let m = scrape(&url, None).await;
            (sum(&m, "mcpq_calls_total{") >= 535.0).then_some(m)
        }
    })
    .await;
    let m = &worker_metrics;
    let calls_total = |server, tool, outcome| {
        m.get(&key(
            "mcpq_calls_total",
            &[("server", server), ("tool", tool), ("outcome", outcome)],
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(calls_total("web", "echo", "completed"), 500.0);
    assert_eq!(calls_total("web", "reject", "failed"), 20.0);
    assert_eq!(calls_total("slowpoke", "slow", "dead"), 10.0);
    assert_eq!(calls_total("web", "hold", "cancelled"), 5.0);
    assert_eq!(
        sum(m, "mcpq_calls_total{"),
        535.0,
        "no other jobs ended: {m:#?}"
    );
    let get =
        |name: &str, labels: &[(&str, &str)]| m.get(&key(name, labels)).copied().unwrap_or(0.0);
    assert_eq!(get("mcpq_dead_letters_total", &[("server", "web")]), 20.0);
    assert_eq!(
        get("mcpq_dead_letters_total", &[("server", "slowpoke")]),
        10.0
    );
    assert_eq!(get("mcpq_retries_total", &[("server", "slowpoke")]), 10.0);
    assert_eq!(get("mcpq_retries_total", &[("server", "web")]), 0.0);
    assert_eq!(
        get(
            "mcpq_attempts_failed_total",
            &[("server", "web"), ("kind", "upstream")]
        ),
        20.0
    );
    assert_eq!(
        get(
            "mcpq_attempts_failed_total",
            &[("server", "slowpoke"), ("kind", "timeout")]
        ),
        20.0
    );
    assert_eq!(sum(m, "mcpq_attempts_failed_total{"), 40.0);
    assert_eq!(
        get(
            "mcpq_call_duration_seconds_count",
            &[("server", "web"), ("tool", "echo")]
        ),
        500.0
    );
    assert_eq!(
        get(
            "mcpq_upstream_duration_seconds_count",
            &[("server", "web"), ("tool", "echo")]
        ),
        500.0
    );
    assert_eq!(
        get(
            "mcpq_upstream_duration_seconds_count",
            &[("server", "slowpoke"), ("tool", "slow")]
        ),
        20.0
    );
    assert_eq!(
        get(
            "mcpq_queue_wait_seconds_count",
            &[("server", "web"), ("lane", "normal")]
        ),
        525.0
    );
    assert_eq!(
        get(
            "mcpq_queue_wait_seconds_count",
            &[("server", "slowpoke"), ("lane", "normal")]
        ),
        10.0
    );
    assert_eq!(get("mcpq_in_flight", &[("server", "web")]), 0.0);
    assert_eq!(get("mcpq_circuit_state", &[("server", "web")]), 0.0);
    assert!(
        m.get("process_resident_memory_bytes")
            .is_some_and(|v| *v > 1e6),
        "process metrics: {m:#?}"
    );
}

/// `mcpq status --once --json` says what the gauges say: 9 queued on `web`, 4 on `idle`, the
/// dead letters, and no worker.
async fn status_says_the_same(config: &str, nats: &NatsServer) {
    let output = tokio::process::Command::new(mcpq_bin())
        .args([
            "status",
            "--once",
            "--json",
            "--interval",
            "500ms",
            "--config",
            config,
            "--nats",
            &nats.url(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let report: StatusReport = serde_json::from_slice(&output.stdout).unwrap();
    let web_status = report.servers.iter().find(|s| s.server == "web").unwrap();
    assert_eq!(web_status.queued, 9);
    assert_eq!(web_status.dlq, 20);
    assert_eq!(web_status.workers, 0, "the worker is gone");
    assert_eq!(
        report
            .servers
            .iter()
            .find(|s| s.server == "slowpoke")
            .unwrap()
            .dlq,
        10
    );
    let idle = report.servers.iter().find(|s| s.server == "idle").unwrap();
    assert_eq!(idle.queued, 4);
}

/// The audit stream: each of the 535 calls exactly once, with how it ended, and no argument
/// values.
async fn audit_shows_each_call_once(nats: &NatsServer) {
    let audit = |args: &[&str]| {
        let mut argv = vec![
            "audit",
            "--nats",
            nats_url_leak(nats),
            "tail",
            "--last",
            "0",
            "--json",
        ];
        argv.extend_from_slice(args);
        let argv: Vec<String> = argv.into_iter().map(str::to_string).collect();
        async move {
            let output = tokio::process::Command::new(mcpq_bin())
                .args(&argv)
                .output()
                .await
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let records = audit(&[]).await;
    let ids: HashSet<_> = records.iter().map(|r| r.job_id).collect();
    assert_eq!(records.len(), 535);
    assert_eq!(ids.len(), 535, "no call twice");
    let outcomes = |outcome: &str| records.iter().filter(|r| r.outcome == outcome).count();
    assert_eq!(
        (
            outcomes("completed"),
            outcomes("failed"),
            outcomes("dead"),
            outcomes("cancelled")
        ),
        (500, 20, 10, 5)
    );
    let echo = records
        .iter()
        .find(|r| r.name.as_deref() == Some("echo"))
        .unwrap();
    assert_eq!(echo.argument_digest.len(), 22);
    assert!(echo.argument_bytes > 0 && echo.trace_id.len() == 32);
    assert!(
        !serde_json::to_string(echo).unwrap().contains("call "),
        "no argument values"
    );
    assert_eq!(audit(&["--server", "slowpoke"]).await.len(), 10);
    assert_eq!(
        audit(&["--principal", "ci"]).await.len(),
        0,
        "these calls came over NATS"
    );
}

/// The NATS URL as a `&'static str` for argv building in a closure.
fn nats_url_leak(nats: &NatsServer) -> &'static str {
    Box::leak(nats.url().into_boxed_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_id_reaches_the_upstream_and_the_audit_record() {
    use rmcp::{
        ServiceExt,
        model::{CallToolRequestParams, ClientConfig, RequestMetaObject},
        transport::StreamableHttpClientTransport,
    };
    let web = HttpFixture::start().await;
    let stack = Stack::start(&crate::two_fixtures(&web.url())).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{trace}-00f067aa0ba902b7-01");
    let client = ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_uri(stack.mcp_url()))
        .await
        .unwrap();
    let mut meta = RequestMetaObject::new();
    meta.0.0.insert("traceparent".into(), json!(caller));
    let mut params = CallToolRequestParams::new("web__traced");
    params.meta = Some(meta);
    let result = client.call_tool(params).await.unwrap();
    let seen = serde_json::to_value(&result).unwrap()["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let parsed = mcpq_schemas::trace::TraceParent::parse(&seen)
        .unwrap_or_else(|| panic!("the upstream got no traceparent: {seen:?}"));
    assert_eq!(parsed.trace_id_hex(), trace, "the caller's trace");
    assert_ne!(seen, caller, "as a child span of mcpq's");
    let _ = client.cancel().await;

    // The HTTP header works as well (a /v1 job here).
    let header_trace = "0af7651916cd43dd8448eb211c80319c";
    let r: Value = mcpq_tests::json_of(
        reqwest::Client::new()
            .post(format!("http://{}/v1/jobs", stack.addr))
            .header(
                "traceparent",
                format!("00-{header_trace}-b7ad6b7169203331-01"),
            )
            .json(&json!({"server": "web", "tool": "traced"})),
    )
    .await;
    let id: uuid::Uuid = r["id"].as_str().unwrap().parse().unwrap();
    mcpq_tests::all_completed(&stack.client, &[id], Duration::from_secs(30)).await;
    let record = stack.record(id).await;
    assert!(crate::first_text(record.result.as_ref().unwrap()).contains(header_trace));

    // Both land in the audit records of their jobs.
    let js = async_nats::jetstream::new(connect(&stack.nats.url(), "audit").await.unwrap());
    let stream = js.get_stream(AUDIT_STREAM).await.unwrap();
    let records = eventually("two audit records", Duration::from_secs(30), || {
        let stream = stream.clone();
        async move {
            let mut found = Vec::new();
            let info = stream.get_info().await.ok()?;
            for seq in info.state.first_sequence..=info.state.last_sequence {
                if let Ok(message) = stream.get_raw_message(seq).await
                    && let Ok(batch) = serde_json::from_slice::<AuditBatch>(&message.payload)
                {
                    found.extend(
                        batch
                            .records()
                            .filter(|r| r.name.as_deref() == Some("traced")),
                    );
                }
            }
            (found.len() == 2).then_some(found)
        }
    })
    .await;
    let traces: HashSet<_> = records.iter().map(|r| r.trace_id.clone()).collect();
    assert_eq!(
        traces,
        HashSet::from([trace.to_string(), header_trace.to_string()])
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_in_the_callers_trace() {
    // An OTLP/HTTP collector: the protobuf bodies posted to /v1/traces.
    let bodies: std::sync::Arc<std::sync::Mutex<Vec<bytes::Bytes>>> = Default::default();
    let log = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(body);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let nats = NatsServer::start();
    let web = HttpFixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcp.yaml");
    std::fs::write(
        &config,
        format!(
            "version: \"1.0\"\ntelemetry: {{otlpEndpoint: \"{collector}\", serviceName: mcpq-test}}\nservers:\n  - {{name: web, type: http, endpoint: \"{}\"}}\n",
            web.url()
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let _up = spawn(
        &[
            "up",
            "--config",
            config.to_str().unwrap(),
            "--nats",
            &nats.url(),
            "--listen",
            &listen,
        ],
        &dir.path().join("up.log"),
    );
    mcpq_tests::ready(format!("http://{listen}/readyz")).await;
    mcpq_tests::catalogs_published(&nats.url(), &["web"]).await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = reqwest::Client::new()
        .post(format!("http://{listen}/v1/jobs"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b8-01"))
        .json(&json!({"server": "web", "tool": "traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let contains = |body: &[u8], needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    eventually(
        "the call's spans at the collector",
        Duration::from_secs(60),
        || {
            let bodies = bodies.lock().unwrap().clone();
            let trace_bytes = trace_bytes.clone();
            async move {
                let all: Vec<u8> = bodies.iter().flat_map(|b| b.iter().copied()).collect();
                let found = contains(&all, &trace_bytes)
                    && [
                        "submit",
                        "publish",
                        "job",
                        "upstream",
                        "record",
                        "mcpq-test",
                    ]
                    .iter()
                    .all(|name| contains(&all, name.as_bytes()));
                found.then_some(())
            }
        },
    )
    .await;
    // The upstream heard a span of that trace as its parent.
    let record: Value = reqwest::get(format!("http://{listen}/v1/jobs/{id}/wait?timeout=30s"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let heard = crate::first_text(&record["result"]);
    assert!(heard.starts_with(&format!("00-{trace}-")), "{heard}");
}
