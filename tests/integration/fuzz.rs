//! The HTTP front under generated input: requests built from every route, method and header
//! mcpq reads, with bodies that are random bytes, JSON-RPC of every MCP method (one request or
//! a batch) with arbitrary params, `/v1` jobs and NDJSON batches — sent through the
//! dispatcher's router in-process, two API-key principals and none, in front of a real worker
//! and upstream. Every case must be answered, none with a 500, and nothing may panic (a panic
//! in a task the request spawned counts too).
//!
//! `MCPQ_FUZZ_CASES` sets the number of cases (2,000 by default; `make fuzz` runs 1,000,000),
//! `MCPQ_FUZZ_SEED` the seed (a failing case prints both, and the request).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::body::Body;
use mcpq_dispatcher::{Dispatcher, HttpOptions};
use mcpq_schemas::nats::connect;
use mcpq_tests::{fixture::HttpFixture, stack::Stack};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use serde_json::{Value, json};
use tower::ServiceExt;

const ALICE: &str = "mcpq_alice-fuzz-key-0123456789";
const BOB: &str = "mcpq_bob-fuzz-key-0123456789";

/// One generated request.
#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &[T]) -> impl Strategy<Value = T> + use<T> {
    proptest::sample::select(items.to_vec())
}

/// A string of any printable ASCII, sometimes with bytes beyond it.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,24}",
        "[a-z0-9_/.:%-]{0,16}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::from),
        pick(&[
            "echo",
            "add",
            "web__echo",
            "test://x",
            "file:///../etc/passwd",
            "2026-07-28",
            "mcpq/"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `_meta` as 2026-07-28 clients send it, or something like it.
fn meta() -> impl Strategy<Value = Value> {
    (
        prop::option::of(pick(&[
            "2026-07-28",
            "2025-06-18",
            "2025-03-26",
            "1999-01-01",
            "",
        ])),
        prop::option::of(json_value()),
        prop::option::of(prop_oneof![
            text().prop_map(Value::from),
            any::<i64>().prop_map(Value::from)
        ]),
        prop::option::of(json_value()),
    )
        .prop_map(|(version, capabilities, progress, extra)| {
            let mut meta = serde_json::Map::new();
            if let Some(v) = version {
                meta.insert("io.modelcontextprotocol/protocolVersion".into(), json!(v));
                meta.insert(
                    "io.modelcontextprotocol/clientInfo".into(),
                    json!({"name": "fuzz", "version": "1"}),
                );
            }
            if let Some(c) = capabilities {
                meta.insert("io.modelcontextprotocol/clientCapabilities".into(), c);
            }
            if let Some(p) = progress {
                meta.insert("progressToken".into(), p);
            }
            if let Some(e) = extra {
                meta.insert("x".into(), e);
            }
            Value::Object(meta)
        })
}

/// Params for any MCP method: the fields mcpq reads, each present or not, well-formed or not.
fn params() -> impl Strategy<Value = Value> {
    let fields = (
        prop::option::of(prop_oneof![
            pick(&[
                "echo",
                "add",
                "reject",
                "whoami",
                "hold",
                "mark",
                "nope",
                "web__echo",
                "ghost__x",
                ""
            ])
            .prop_map(Value::from),
            json_value(),
        ]),
        prop::option::of(json_value()),
        prop::option::of(prop_oneof![
            pick(&[
                "test://static-text",
                "file:///srv/../etc/shadow",
                "%2e%2e",
                "x://"
            ])
            .prop_map(Value::from),
            json_value(),
        ]),
        prop::option::of(meta()),
        prop::option::of(prop_oneof![
            text().prop_map(|t| json!(format!("mcpq/{}/{t}/AAAA", uuid::Uuid::now_v7()))),
            json_value(),
        ]),
        prop::option::of(json_value()),
        prop::option::of(prop_oneof![Just(json!({"ttl": 1000})), json_value(),]),
    );
    prop_oneof![
        1 => json_value(),
        6 => fields.prop_map(|(name, arguments, uri, meta, state, responses, task)| {
            let mut p = serde_json::Map::new();
            for (key, value) in [
                ("name", name),
                ("arguments", arguments),
                ("uri", uri),
                ("_meta", meta),
                ("requestState", state),
                ("inputResponses", responses),
                ("task", task),
            ] {
                if let Some(value) = value {
                    p.insert(key.into(), value);
                }
            }
            Value::Object(p)
        }),
    ]
}

const METHODS: &[&str] = &[
    "initialize",
    "notifications/initialized",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "tasks/get",
    "tasks/result",
    "tasks/cancel",
    "tasks/list",
    "notifications/cancelled",
    "sampling/createMessage",
    "",
];

fn json_rpc() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![Just(json!("2.0")), json_value()]),
        prop::option::of(prop_oneof![
            any::<i64>().prop_map(Value::from),
            text().prop_map(Value::from),
            json_value(),
        ]),
        prop_oneof![4 => pick(METHODS).prop_map(String::from), 1 => text()],
        prop::option::of(params()),
    )
        .prop_map(|(version, id, method, params)| {
            let mut m = serde_json::Map::new();
            if let Some(v) = version {
                m.insert("jsonrpc".into(), v);
            }
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            m.insert("method".into(), json!(method));
            if let Some(p) = params {
                m.insert("params".into(), p);
            }
            Value::Object(m)
        })
}

/// A `/v1/jobs` submission, or something like it.
fn job() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            pick(&["web", "ghost", "nope", ""]).prop_map(Value::from),
            json_value()
        ],
        prop_oneof![
            pick(&["echo", "add", "reject", "hold", "whoami", "nope"]).prop_map(Value::from),
            json_value()
        ],
        prop::option::of(json_value()),
        prop::option::of(json_value()),
    )
        .prop_map(|(server, tool, arguments, extra)| {
            let mut job = json!({"server": server, "tool": tool});
            if let Some(a) = arguments {
                job["arguments"] = a;
            }
            if let Some(e) = extra {
                job["timeout"] = e.clone();
                job["lane"] = e;
            }
            job
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => prop::collection::vec(any::<u8>(), 0..200),
        8 => json_rpc().prop_map(|v| v.to_string().into_bytes()),
        2 => prop::collection::vec(json_rpc(), 0..4).prop_map(|v| Value::Array(v).to_string().into_bytes()),
        3 => job().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(job(), 0..4).prop_map(|lines| {
            lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes()
        }),
        1 => (json_rpc(), 0usize..40).prop_map(|(v, cut)| {
            let mut bytes = v.to_string().into_bytes();
            bytes.truncate(bytes.len().saturating_sub(cut));
            bytes
        }),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        Just(uuid::Uuid::now_v7().to_string()),
        Just(uuid::Uuid::nil().to_string()),
        "[a-zA-Z0-9%._-]{0,12}",
    ];
    let known = prop_oneof![
        Just("/mcp".to_string()),
        Just("/servers/web/mcp".to_string()),
        Just("/servers/ghost/mcp".to_string()),
        Just("/servers/nope/mcp".to_string()),
        Just("/v1/jobs".to_string()),
        id.clone().prop_map(|id| format!("/v1/jobs/{id}")),
        (id.clone(), pick(&["1ms", "0s", "", "x", "99999h", "-1s"]))
            .prop_map(|(id, t)| format!("/v1/jobs/{id}/wait?timeout={t}")),
        Just("/v1/batches".to_string()),
        id.clone().prop_map(|id| format!("/v1/batches/{id}")),
        id.prop_map(|id| format!("/v1/batches/{id}/results")),
        Just("/v1/openapi.json".to_string()),
        Just("/.well-known/oauth-protected-resource".to_string()),
        Just("/.well-known/oauth-protected-resource/servers/web/mcp".to_string()),
        Just("/healthz".to_string()),
        Just("/readyz".to_string()),
        Just("/status.json".to_string()),
        Just("/".to_string()),
    ];
    prop_oneof![
        8 => known.clone(),
        1 => (known, "[a-zA-Z0-9%/?=&._~-]{0,12}").prop_map(|(k, tail)| format!("{k}{tail}")),
        1 => "/[a-zA-Z0-9%/?=&._~-]{0,20}",
    ]
}

/// A header value: well-formed ones mcpq knows, printable noise, or bytes beyond ASCII.
fn value(known: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => pick(known).prop_map(|v| v.as_bytes().to_vec()),
        2 => "[ -~]{0,40}".prop_map(String::into_bytes),
        1 => prop::collection::vec(prop_oneof![32u8..127, 128u8..=255, Just(9u8)], 0..30),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let one = prop_oneof![
        (
            Just("origin"),
            value(&["http://localhost", "https://evil.example", "null"])
        ),
        (
            Just("accept"),
            value(&[
                "application/json, text/event-stream",
                "text/event-stream;q=1, application/json;q=0.5",
                "application/json",
                "text/event-stream",
                "*/*",
            ])
        ),
        (
            Just("mcp-protocol-version"),
            value(&["2026-07-28", "2025-06-18", "2025-03-26", "2024-11-05"])
        ),
        (
            Just("mcp-session-id"),
            value(&["00000000-0000-0000-0000-000000000000", "x"])
        ),
        (
            Just("mcp-method"),
            value(&["tools/call", "tools/list", "initialize"])
        ),
        (
            Just("mcp-name"),
            value(&["echo", "web__echo", "test://static-text"])
        ),
        (Just("idempotency-key"), value(&["k1", "order-42", ""])),
        (Just("last-event-id"), value(&["0", "1/2", "x"])),
        (
            Just("traceparent"),
            value(&[
                "00-5bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b8-01",
                "00-0-0-0"
            ])
        ),
        (Just("content-length"), value(&["0", "5", "99999999999"])),
        (Just("x-forwarded-host"), value(&["evil.example"])),
    ];
    (
        prop_oneof![
            3 => Just(format!("Bearer {ALICE}").into_bytes()),
            1 => Just(format!("Bearer {BOB}").into_bytes()),
            1 => value(&["Bearer ", "Basic YWxpY2U6eA==", "Bearer a.b.c", "bearer  x"]),
        ],
        prop_oneof![
            8 => Just(b"localhost".to_vec()),
            1 => value(&["127.0.0.1:7400", "[::1]:7400", "localhost:x@evil.example", "localhost:1\", error=\"x", "evil.example"]),
        ],
        prop::option::of(value(&["application/json", "application/x-ndjson", "text/plain", "application/json; charset=utf-8"])),
        prop::collection::vec(one, 0..5),
    )
        .prop_map(|(auth, host, content_type, mut rest)| {
            rest.push(("authorization", auth));
            rest.push(("host", host));
            if let Some(ct) = content_type {
                rest.push(("content-type", ct));
            }
            rest
        })
}

/// A request mcpq serves, then at most one part of it changed: a header dropped or replaced,
/// the params replaced, the JSON cut short.
fn nearly_valid() -> impl Strategy<Value = Case> {
    (
        0usize..6,
        pick(&["echo", "add", "reject", "whoami", "hold"]),
        text(),
        0usize..8,
        params(),
        value(&["", "tools/list", "application/json", "2025-06-18"]),
        0usize..6,
    )
        .prop_map(|(kind, tool, said, mutation, noise, replacement, which)| {
            let meta = json!({
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "fuzz", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
            });
            let arguments = match tool {
                "add" => json!({"a": 1, "b": 2}),
                _ => json!({"text": said}),
            };
            let (path, method, name, params) = match kind {
                0 => (
                    "/servers/web/mcp",
                    "tools/call",
                    tool.to_string(),
                    json!({"name": tool, "arguments": arguments, "_meta": meta}),
                ),
                1 => (
                    "/mcp",
                    "tools/call",
                    format!("web__{tool}"),
                    json!({"name": format!("web__{tool}"), "arguments": arguments, "_meta": meta}),
                ),
                2 => (
                    "/v1/jobs",
                    "",
                    String::new(),
                    json!({"server": "web", "tool": tool, "arguments": arguments}),
                ),
                3 => (
                    "/servers/web/mcp",
                    "tools/list",
                    String::new(),
                    json!({"_meta": meta}),
                ),
                4 => (
                    "/mcp",
                    "server/discover",
                    String::new(),
                    json!({"_meta": meta}),
                ),
                _ => (
                    "/servers/web/mcp",
                    "initialize",
                    String::new(),
                    json!({
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "fuzz", "version": "1"}}),
                ),
            };
            let mut body = if kind == 2 {
                params
            } else {
                json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
            };
            let mut headers: Vec<(&'static str, Vec<u8>)> = vec![
                ("host", b"localhost".to_vec()),
                ("authorization", format!("Bearer {ALICE}").into_bytes()),
                ("content-type", b"application/json".to_vec()),
                ("accept", b"application/json, text/event-stream".to_vec()),
            ];
            if kind != 2 && kind != 5 {
                headers.push(("mcp-protocol-version", b"2026-07-28".to_vec()));
                headers.push(("mcp-method", method.as_bytes().to_vec()));
                if !name.is_empty() {
                    headers.push(("mcp-name", name.into_bytes()));
                }
            }
            if kind == 5 && which == 0 {
                // A request in one of alice's open sessions (see `send`).
                body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
                headers.push(("mcp-session-id", b"$SESSION".to_vec()));
                headers.push(("mcp-protocol-version", b"2025-06-18".to_vec()));
            }
            let mut bytes = body.to_string().into_bytes();
            match mutation {
                0..=3 => {}
                4 => {
                    let i = which % headers.len();
                    headers.remove(i);
                }
                5 => {
                    let i = which % headers.len();
                    headers[i].1 = replacement;
                }
                6 => {
                    if kind == 2 {
                        bytes = noise.to_string().into_bytes();
                    } else {
                        body["params"] = noise;
                        bytes = body.to_string().into_bytes();
                    }
                }
                _ => bytes.truncate(bytes.len() / 2),
            }
            Case {
                method: "POST",
                path: path.to_string(),
                headers,
                body: bytes,
            }
        })
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![1 => nearly_valid(), 1 => any_request()]
}

fn any_request() -> impl Strategy<Value = Case> {
    (
        prop_oneof![
            6 => Just("POST"),
            3 => Just("GET"),
            1 => Just("DELETE"),
            1 => pick(&["PUT", "OPTIONS", "PATCH", "HEAD"]),
        ],
        path(),
        headers(),
        body(),
    )
        .prop_map(|(method, path, headers, body)| Case {
            method,
            path,
            headers,
            body,
        })
}

/// Panics anywhere in the process since the hook went in (tasks a request spawned included).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut panics) = PANICS.lock() {
                panics.push(info.to_string());
            }
            previous(info);
        }));
    });
}

fn config() -> String {
    let sha = mcpq_dispatcher::auth::sha256_hex;
    format!(
        r#"version: "1.0"
auth:
  apiKeys:
    - {{principal: alice, sha256: "{alice}", allow: ["web/echo", "web/add", "web/reject", "web/whoami", "ghost/*"]}}
    - {{principal: bob, sha256: "{bob}", allow: ["web/echo"]}}
servers:
"#,
        alice = sha(ALICE),
        bob = sha(BOB),
    )
}

/// Sends `case` through `router`: the status, and whether the body ended (streams are read
/// for a moment only).
async fn send(router: &axum::Router, case: &Case, session: &str) -> Result<u16, String> {
    let mut request = axum::http::Request::builder()
        .method(case.method)
        .uri(&case.path);
    for (name, value) in &case.headers {
        let value = if value == b"$SESSION" {
            session.as_bytes()
        } else {
            value
        };
        let Ok(value) = axum::http::HeaderValue::from_bytes(value) else {
            continue;
        };
        request = request.header(*name, value);
    }
    let Ok(request) = request.body(Body::from(case.body.clone())) else {
        return Ok(0); // not a request hyper would have let through
    };
    let response = tokio::time::timeout(Duration::from_secs(60), router.clone().oneshot(request))
        .await
        .map_err(|_| "no answer within 60 s".to_string())?
        .unwrap_or_else(|never| match never {});
    let status = response.status().as_u16();
    // Read what comes within a moment: an SSE stream (a listen, a standalone GET) stays open.
    let body = response.into_body();
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        axum::body::to_bytes(body, 64 << 20),
    )
    .await;
    Ok(status)
}

/// Opens a 2025-era session as alice through `router`; its id.
async fn open_session(router: &axum::Router) -> String {
    let request = |body: Value, session: Option<&str>| {
        let mut request = axum::http::Request::post("/servers/web/mcp")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {ALICE}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-06-18");
        }
        request.body(Body::from(body.to_string())).unwrap()
    };
    let opened = router
        .clone()
        .oneshot(request(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "fuzz", "version": "1"}}}),
            None,
        ))
        .await
        .unwrap();
    let id = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        axum::body::to_bytes(opened.into_body(), 1 << 20),
    )
    .await;
    let done = router
        .clone()
        .oneshot(request(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            Some(&id),
        ))
        .await
        .unwrap();
    assert_eq!(done.status(), 202);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_front_answers_any_request_without_a_panic_or_a_500() {
    count_panics();
    let cases: usize = std::env::var("MCPQ_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let seed: u64 = std::env::var("MCPQ_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(27);
    let web = HttpFixture::start().await;
    let stack = Stack::start_config(&format!(
        "{}  - {{name: web, type: http, endpoint: \"{}\", timeout: 5s}}\n",
        config(),
        web.url()
    ))
    .await;
    let nats = connect(&stack.nats.url(), "fuzz").await.unwrap();
    let dispatcher = Dispatcher::new(nats, &stack.config, HttpOptions::default())
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let router = dispatcher.into_router(stop.clone());
    let session = open_session(&router).await;

    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    // The strategy is deep (nested JSON in JSON-RPC in a request): generated on a thread of
    // its own with room for it, handed over in batches.
    let (cases_tx, mut generated) = tokio::sync::mpsc::channel::<Case>(256);
    std::thread::Builder::new()
        .name("fuzz-cases".into())
        .stack_size(64 << 20)
        .spawn(move || {
            let strategy = case();
            for _ in 0..cases {
                let case = strategy.new_tree(&mut runner).expect("a case").current();
                if cases_tx.blocking_send(case).is_err() {
                    return;
                }
            }
        })
        .unwrap();
    let started = Instant::now();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let panics_before = PANICS.lock().map(|p| p.len()).unwrap_or(0);
    let answered = Arc::new(AtomicUsize::new(0));
    for n in 0..cases {
        let case = generated.recv().await.expect("the generator stopped early");
        if std::env::var_os("MCPQ_FUZZ_TRACE").is_some() {
            eprintln!("case {n}: {case:?}");
        }
        let status = match send(&router, &case, &session).await {
            Ok(status) => status,
            Err(e) => panic!("case {n} (seed {seed}): {e}\n{case:#?}"),
        };
        assert_ne!(
            status, 500,
            "case {n} (seed {seed}) answered 500:\n{case:#?}"
        );
        let panics = PANICS
            .lock()
            .map(|p| p[panics_before..].to_vec())
            .unwrap_or_default();
        assert!(
            panics.is_empty(),
            "case {n} (seed {seed}) panicked: {panics:?}\n{case:#?}"
        );
        *statuses.entry(status).or_default() += 1;
        answered.fetch_add(1, Ordering::Relaxed);
        if n > 0 && n % 100_000 == 0 {
            eprintln!("fuzz: {n} cases in {:.0?}: {statuses:?}", started.elapsed());
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "fuzz: {cases} cases (seed {seed}) in {elapsed:.1?}, {:.0} cases/s, no panic, no 500; statuses {statuses:?}; upstream calls {}",
        cases as f64 / elapsed.as_secs_f64(),
        web.fixture.calls()
    );
    // The cases reached past the front door: calls ran, and refusals of every kind came.
    if cases >= 1_000 {
        assert!(web.fixture.calls() > 0, "no case reached the upstream");
        for status in [200, 400, 401, 404] {
            assert!(
                statuses.contains_key(&status),
                "no {status} among {statuses:?}"
            );
        }
    }
    stop.cancel();
}
