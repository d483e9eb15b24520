//! The hostile-input suite: mcpq as an operator runs it — dispatcher and worker as separate
//! processes under `deploy/nats/roles.conf`, two API-key principals (alice: `web/*`, `conf/*`,
//! `ghost/*`; bob: `web/echo`, `conf/test_simple_text`, `conf/test://template/7/*`) and a NATS
//! pipeline allowed only `mcpq.jobs.web.*` — attacked the way one tenant attacks another.
//! Each test states the attack, what mcpq answers, and how often the upstream ran. The NATS
//! server takes messages of 8 KiB at most, so the conformance upstream's catalog (larger)
//! travels through the object store throughout. docs/security.md lists the attacks.

use std::{path::PathBuf, time::Duration};

use futures::StreamExt;
use mcpq_schemas::{
    Job, Lane, McpRequest,
    names::{HDR_JOB_ID, HDR_MSG_ID, HDR_REPLY_TO, HDR_SEAL, job_subject},
};
use mcpq_tests::{
    conformance::HttpConformance, eventually, fixture::HttpFixture, free_port, mcpq_bin,
    nats::NatsServer, repo_root,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::roles::PASSWORDS;
use mcpq_tests::json_of;

const ALICE: &str = "mcpq_alice-hostile-key-0123456789";
const BOB: &str = "mcpq_bob-hostile-key-0123456789";

/// The largest message the suite's NATS server takes.
const MAX_PAYLOAD: usize = 8 * 1024;

/// mcpq under attack: NATS with the shipped roles, the upstreams, a worker and dispatchers.
struct Tenancy {
    nats: NatsServer,
    web: HttpFixture,
    conf: HttpConformance,
    dir: tempfile::TempDir,
    /// The first dispatcher, `http://127.0.0.1:<port>`.
    base: String,
    processes: Vec<tokio::process::Child>,
}

impl Tenancy {
    /// Starts everything; the first dispatcher gets `flags` besides `--listen`.
    async fn start(flags: &[&str]) -> Tenancy {
        let dir = tempfile::tempdir().unwrap();
        // nats-server resolves `include` next to the including file.
        std::fs::copy(
            repo_root().join("deploy/nats/roles.conf"),
            dir.path().join("roles.conf"),
        )
        .unwrap();
        let nats_conf = dir.path().join("nats.conf");
        std::fs::write(
            &nats_conf,
            format!("include \"roles.conf\"\nmax_payload: {MAX_PAYLOAD}\n"),
        )
        .unwrap();
        let nats = NatsServer::start_with(&nats_conf, &PASSWORDS);
        let web = HttpFixture::start().await;
        let conf = HttpConformance::start("127.0.0.1:0".parse().unwrap(), None).await;
        let mut tenancy = Tenancy {
            nats,
            web,
            conf,
            dir,
            base: String::new(),
            processes: Vec::new(),
        };
        let worker = tenancy.config("worker", PASSWORDS[1].1);
        tenancy.spawn("worker", &["worker"], &worker);
        tenancy.base = tenancy.dispatcher(flags).await;
        tenancy
    }

    /// The config every process loads, with `user`'s NATS identity.
    fn config(&self, user: &str, password: &str) -> PathBuf {
        let secret = self.dir.path().join(format!("{user}.pw"));
        std::fs::write(&secret, password).unwrap();
        let sha = mcpq_dispatcher::auth::sha256_hex;
        let path = self.dir.path().join(format!("{user}.yaml"));
        std::fs::write(
            &path,
            format!(
                r#"version: "1.0"
nats: {{user: {user}, password: "${{file:{secret}}}"}}
auth:
  apiKeys:
    - {{principal: alice, sha256: "{alice}", allow: ["web/*", "conf/*", "ghost/*"]}}
    - {{principal: bob, sha256: "{bob}", allow: ["web/echo", "conf/test_simple_text", "conf/test://template/7/*"]}}
servers:
  - {{name: web, type: http, endpoint: "{web}", timeout: 10s}}
  - {{name: conf, type: http, endpoint: "{conf}", timeout: 10s}}
  - {{name: ghost, type: http, endpoint: "http://127.0.0.1:9/mcp", timeout: 2s}}
"#,
                secret = secret.display(),
                alice = sha(ALICE),
                bob = sha(BOB),
                web = self.web.url(),
                conf = self.conf.url(),
            ),
        )
        .unwrap();
        path
    }

    fn spawn(&mut self, role: &str, args: &[&str], config: &std::path::Path) {
        let n = self.processes.len();
        let log = std::fs::File::create(self.dir.path().join(format!("{role}-{n}.log"))).unwrap();
        let child = tokio::process::Command::new(mcpq_bin())
            .args(args)
            .arg("--config")
            .arg(config)
            .args(["--nats", &self.nats.url()])
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.processes.push(child);
    }

    /// Starts a dispatcher process with `flags`; its base URL once it serves both upstreams.
    async fn dispatcher(&mut self, flags: &[&str]) -> String {
        let listen = format!("127.0.0.1:{}", free_port());
        let config = self.config("dispatcher", PASSWORDS[0].1);
        let mut args = vec!["dispatcher", "--listen", &listen];
        args.extend_from_slice(flags);
        self.spawn("dispatcher", &args, &config);
        let base = format!("http://{listen}");
        eventually(
            "the dispatcher serves web and conf",
            Duration::from_secs(60),
            || {
                let base = base.clone();
                async move {
                    let (_, web) = call(
                        &base,
                        "/servers/web/mcp",
                        ALICE,
                        "echo",
                        json!({"text": "up"}),
                    )
                    .await;
                    let (_, conf) = call(
                        &base,
                        "/servers/conf/mcp",
                        ALICE,
                        "test_simple_text",
                        json!({}),
                    )
                    .await;
                    (web["result"]["content"][0]["text"] == "up"
                        && conf["result"]["content"][0]["text"].is_string())
                    .then_some(())
                }
            },
        )
        .await;
        base
    }

    /// The pipeline's own NATS connection (user `pipeline-web`, inbox prefix of its own).
    async fn pipeline(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .user_and_password("pipeline-web".into(), PASSWORDS[2].1.into())
            .custom_inbox_prefix("_INBOX.pipeline-web")
            .connect(self.nats.url().trim_start_matches("nats://"))
            .await
            .expect("the pipeline connects")
    }

    /// A connection with the dispatcher's NATS identity, for looking at what mcpq stored.
    async fn as_dispatcher(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .user_and_password("dispatcher".into(), PASSWORDS[0].1.into())
            .connect(self.nats.url().trim_start_matches("nats://"))
            .await
            .expect("connects as the dispatcher")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Submits `job` to `/v1/jobs` as `key` and waits for it to end: its id and its record.
    async fn run_job(&self, key: &str, job: Value) -> (String, Value) {
        let http = reqwest::Client::new();
        let accepted = json_of(http.post(self.url("/v1/jobs")).bearer_auth(key).json(&job)).await;
        let id = accepted["id"]
            .as_str()
            .unwrap_or_else(|| panic!("not accepted: {accepted}"))
            .to_string();
        let wait = self.url(&format!("/v1/jobs/{id}/wait?timeout=30s"));
        (id, json_of(http.get(wait).bearer_auth(key)).await)
    }
}

/// A 2026-07-28 request to `path` (with `key`'s credentials, if any): the HTTP status and the
/// JSON-RPC response (`Null` when there is none).
async fn mcp(
    base: &str,
    path: &str,
    key: Option<&str>,
    method: &str,
    params: Value,
) -> (u16, Value) {
    mcp_with(base, path, key, method, params, &[]).await
}

/// [`mcp`] with extra HTTP headers.
async fn mcp_with(
    base: &str,
    path: &str,
    key: Option<&str>,
    method: &str,
    params: Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut params = params;
    params["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2026-07-28");
    params["_meta"]["io.modelcontextprotocol/clientInfo"] =
        json!({"name": "hostile", "version": "1"});
    if params["_meta"]
        .get("io.modelcontextprotocol/clientCapabilities")
        .is_none()
    {
        params["_meta"]["io.modelcontextprotocol/clientCapabilities"] = json!({"sampling": {}});
    }
    let name = params["name"]
        .as_str()
        .or(params["uri"].as_str())
        .or(params["taskId"].as_str())
        .unwrap_or_default()
        .to_string();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", method)
        .json(&body);
    if !name.is_empty() {
        request = request.header("Mcp-Name", name);
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let Ok(response) = request.send().await else {
        return (0, Value::Null);
    };
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let message = text
        .lines()
        .map(|l| l.strip_prefix("data:").unwrap_or(l).trim())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m.get("id").is_some())
        .unwrap_or(Value::Null);
    (status, message)
}

/// A 2026-07-28 `tools/call` of `tool` with `arguments`, as `key`.
async fn call(base: &str, path: &str, key: &str, tool: &str, arguments: Value) -> (u16, Value) {
    let params = json!({"name": tool, "arguments": arguments});
    mcp(base, path, Some(key), "tools/call", params).await
}

/// The JSON-RPC error message of `response` ("" when it is no error).
fn error_of(response: &Value) -> &str {
    response["error"]["message"].as_str().unwrap_or_default()
}

/// A task is its caller's alone: bob can neither read alice's task, nor answer what it asks, nor
/// cancel it — the same "unknown task" as a task that never was — while alice can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_and_its_questions_are_its_callers_alone() {
    let t = Tenancy::start(&[]).await;
    let conf = "/servers/conf/mcp";
    let tasks = json!({"io.modelcontextprotocol/clientCapabilities": {
        "elicitation": {}, "extensions": {"io.modelcontextprotocol/tasks": {}}
    }});
    let mut call = json!({"name": "confirm_delete", "arguments": {"filename": "hers.txt"}});
    call["_meta"] = tasks.clone();
    let (_, created) = mcp(&t.base, conf, Some(ALICE), "tools/call", call).await;
    assert_eq!(created["result"]["resultType"], "task", "{created}");
    let task_id = created["result"]["taskId"].as_str().unwrap().to_string();
    let on_task = |extra: Value| {
        let mut params = json!({"taskId": task_id});
        params["_meta"] = tasks.clone();
        if let (Some(params), Some(extra)) = (params.as_object_mut(), extra.as_object()) {
            params.extend(extra.clone());
        }
        params
    };
    // Alice's task as `tasks/get` shows it to her, once its status is `status`.
    let (base, on_task) = (&t.base, &on_task);
    let alices_task_is = |status: &'static str| {
        mcpq_tests::eventually(status, Duration::from_secs(30), move || {
            let (base, params) = (base.clone(), on_task(json!({})));
            async move {
                let (_, got) = mcp(&base, conf, Some(ALICE), "tasks/get", params).await;
                (got["result"]["status"] == status).then_some(got)
            }
        })
    };
    // Alice sees her task ask its question.
    let asked = alices_task_is("input_required").await;
    let key = asked["result"]["inputRequests"]
        .as_object()
        .and_then(|q| q.keys().next().cloned())
        .unwrap();
    let answer = json!({"inputResponses": {key.clone(): {"action": "accept", "content": {"confirm": true}}}});
    // Bob: unknown task, whatever he tries.
    for (method, extra) in [
        ("tasks/get", json!({})),
        ("tasks/update", answer.clone()),
        ("tasks/cancel", json!({})),
    ] {
        let (_, bob) = mcp(&t.base, conf, Some(BOB), method, on_task(extra)).await;
        assert_eq!(bob["error"]["code"], -32602, "{method}: {bob}");
        assert!(error_of(&bob).contains("unknown task"), "{method}: {bob}");
    }
    // Alice's answer ends her task, which bob's cancel did not touch.
    let (_, updated) = mcp(&t.base, conf, Some(ALICE), "tasks/update", on_task(answer)).await;
    assert_eq!(updated["result"]["resultType"], "complete", "{updated}");
    let done = alices_task_is("completed").await;
    assert_eq!(
        done["result"]["result"]["content"][0]["text"], "delete hers.txt: true",
        "{done}"
    );
}

/// SEP-2243: a parameter the tool's schema mirrors in an `Mcp-Param-*` header (the catalog
/// keeps its `x-mcp-header`) must agree with that header — as sent, or `=?base64?…?=` strictly
/// decoded — or the call is refused with HTTP 400 and -32020 before anything is queued. A call
/// whose header agrees reaches the HTTP upstream with the header (which checks it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_header_that_disagrees_with_its_parameter_is_refused_before_queueing() {
    let t = Tenancy::start(&[]).await;
    let conf = "/servers/conf/mcp";
    let call = json!({"name": "test_custom_header", "arguments": {"region": "eu-west"}});
    let header = "Mcp-Param-Region";
    for (what, headers) in [
        ("another value", vec![(header, "us-east")]),
        ("no header", vec![]),
        (
            "bad Base64 padding",
            vec![(header, "=?base64?ZXUtd2VzdA?=")],
        ),
        ("not Base64", vec![(header, "=?base64?ZXUt!!d2VzdA==?=")]),
    ] {
        let (status, refused) = mcp_with(
            &t.base,
            conf,
            Some(ALICE),
            "tools/call",
            call.clone(),
            &headers,
        )
        .await;
        assert_eq!(status, 400, "{what}: {refused}");
        assert_eq!(refused["error"]["code"], -32020, "{what}: {refused}");
    }
    assert_eq!(t.conf.fixture.ran_count("call test_custom_header"), 0);
    for value in ["eu-west", "  eu-west ", "=?base64?ZXUtd2VzdA==?="] {
        let (status, answered) = mcp_with(
            &t.base,
            conf,
            Some(ALICE),
            "tools/call",
            call.clone(),
            &[(header, value)],
        )
        .await;
        assert_eq!(status, 200, "{value:?}: {answered}");
        assert_eq!(
            answered["result"]["content"][0]["text"], "region eu-west",
            "{value:?}: {answered}"
        );
    }
    assert_eq!(t.conf.fixture.ran_count("call test_custom_header"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_is_answered_only_by_the_caller_it_was_asked() {
    let t = Tenancy::start(&[]).await;
    let probes = t.conf.fixture.ran_count("call test_simple_text");
    let conf = "/servers/conf/mcp";
    let call = json!({"name": "test_sampling", "arguments": {"prompt": "alice asks"}});
    let (_, asked) = mcp(&t.base, conf, Some(ALICE), "tools/call", call.clone()).await;
    let result = &asked["result"];
    assert_eq!(result["resultType"], "input_required", "{asked}");
    let state = result["requestState"].as_str().unwrap().to_string();
    let question = result["inputRequests"]
        .as_object()
        .and_then(|q| q.keys().next().cloned())
        .unwrap();
    // mcpq/<job>/<round>/<seal>: a round id nobody guesses, a seal nobody forges; the
    // question keeps the upstream's own key.
    let parts: Vec<&str> = state.split('/').collect();
    assert_eq!(parts.len(), 4, "{state}");
    let round = parts[2];
    assert!(round.len() >= 16, "a guessable round id: {round}");
    assert_eq!(question, "ask", "{asked}");
    let answer = |text: &str| {
        json!({ question.clone(): {
            "role": "assistant", "content": {"type": "text", "text": text}, "model": "test"
        }})
    };

    // Bob replays alice's requestState with his answer, on a tool he may call and on hers.
    let mut replay = json!({"name": "test_simple_text", "arguments": {}});
    replay["requestState"] = json!(state);
    replay["inputResponses"] = answer("bob-answer");
    let (_, bob) = mcp(&t.base, conf, Some(BOB), "tools/call", replay.clone()).await;
    assert!(
        error_of(&bob).contains("not issued to this caller"),
        "{bob}"
    );
    let mut on_hers = call.clone();
    on_hers["requestState"] = json!(state);
    on_hers["inputResponses"] = answer("bob-answer");
    let (status, bob) = mcp(&t.base, conf, Some(BOB), "tools/call", on_hers).await;
    assert!(
        status == 403 || error_of(&bob).contains("may not"),
        "{status} {bob}"
    );
    // Forged states: no seal, another question, a seal of bob's own making, no credentials.
    let job = parts[1];
    for forged in [
        format!("mcpq/{job}/{round}"),
        format!("mcpq/{job}/r0/{}", parts[3]),
        format!("mcpq/{job}/{round}/{}", "A".repeat(parts[3].len())),
    ] {
        let mut attempt = replay.clone();
        attempt["requestState"] = json!(forged);
        attempt["inputResponses"]["q0"] = attempt["inputResponses"][&question].clone();
        let (_, bob) = mcp(&t.base, conf, Some(BOB), "tools/call", attempt).await;
        let said = error_of(&bob);
        assert!(
            said.contains("not issued"),
            "forged {forged:?} answered: {bob}"
        );
    }
    let (status, _) = mcp(&t.base, conf, None, "tools/call", replay).await;
    assert_eq!(status, 401);

    // Alice's own answer still reaches her call, which then ends once.
    let mut retry = call;
    retry["requestState"] = json!(state);
    retry["inputResponses"] = answer("alice-answer");
    let (_, answered) = mcp(&t.base, conf, Some(ALICE), "tools/call", retry.clone()).await;
    assert_eq!(
        answered["result"]["content"][0]["text"], "LLM response: alice-answer",
        "{answered}"
    );
    let (_, again) = mcp(&t.base, conf, Some(ALICE), "tools/call", retry).await;
    assert!(again.get("error").is_some(), "answered twice: {again}");
    // The upstream: one sampling call, answered once, by alice; bob's tool never ran for it.
    let ran = t.conf.fixture.ran();
    let answers: Vec<_> = ran.iter().filter(|r| r.starts_with("answered")).collect();
    assert_eq!(
        answers,
        ["answered test_sampling: LLM response: alice-answer"],
        "{ran:?}"
    );
    assert_eq!(
        t.conf.fixture.ran_count("call test_simple_text"),
        probes,
        "bob's replay ran his tool: {ran:?}"
    );
}

/// A 2025-era request to `path` with `key`'s credentials and `session`'s id, if any.
async fn legacy(
    base: &str,
    path: &str,
    key: Option<&str>,
    session: Option<&str>,
    method: reqwest::Method,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("Accept", "application/json, text/event-stream");
    if let Some(session) = session {
        request = request
            .header("Mcp-Session-Id", session)
            .header("MCP-Protocol-Version", "2025-06-18");
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// The status a request without a body naming `session` gets, as `key`.
async fn session_status(
    base: &str,
    path: &str,
    key: &str,
    session: &str,
    method: reqwest::Method,
) -> u16 {
    legacy(base, path, Some(key), Some(session), method, None)
        .await
        .status()
        .as_u16()
}

/// Opens a 2025-era session on `path` as `key`: its id, or the refusal's status.
async fn open_session(base: &str, path: &str, key: &str) -> Result<String, u16> {
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "hostile", "version": "1"}}});
    let response = legacy(
        base,
        path,
        Some(key),
        None,
        reqwest::Method::POST,
        Some(initialize),
    )
    .await;
    let status = response.status().as_u16();
    let Some(id) = response.headers().get("mcp-session-id") else {
        return Err(status);
    };
    let id = id.to_str().unwrap().to_string();
    let _ = response.text().await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let done = legacy(
        base,
        path,
        Some(key),
        Some(&id),
        reqwest::Method::POST,
        Some(initialized),
    )
    .await;
    assert_eq!(done.status(), 202);
    Ok(id)
}

/// A JSON-RPC request in a 2025-era session: the status and the response.
async fn in_session(
    base: &str,
    path: &str,
    key: Option<&str>,
    session: &str,
    method: &str,
    params: Value,
) -> (u16, Value) {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let response = legacy(
        base,
        path,
        key,
        Some(session),
        reqwest::Method::POST,
        Some(body),
    )
    .await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let message = text
        .lines()
        .map(|l| l.strip_prefix("data:").unwrap_or(l).trim())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m.get("id").is_some() || m.get("error").is_some())
        .unwrap_or(Value::Null);
    (status, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_its_openers_alone_and_each_caller_holds_few() {
    let t = Tenancy::start(&["--max-sessions", "2"]).await;
    let conf = "/servers/conf/mcp";
    let session = open_session(&t.base, conf, ALICE).await.unwrap();

    // Bob with alice's session id: as if there were no such session, for every method.
    let (status, said) =
        in_session(&t.base, conf, Some(BOB), &session, "tools/list", json!({})).await;
    assert_eq!(status, 404, "{said}");
    assert_eq!(
        session_status(&t.base, conf, BOB, &session, reqwest::Method::GET).await,
        404
    );
    assert_eq!(
        session_status(&t.base, conf, BOB, &session, reqwest::Method::DELETE).await,
        404
    );
    let (status, _) = in_session(&t.base, conf, None, &session, "tools/list", json!({})).await;
    assert_eq!(status, 401, "no credentials");
    // Bob's call through it never reached the upstream.
    let before = t.conf.fixture.ran_count("call test_simple_text");
    let (status, _) = in_session(
        &t.base,
        conf,
        Some(BOB),
        &session,
        "tools/call",
        json!({"name": "test_simple_text", "arguments": {}}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(t.conf.fixture.ran_count("call test_simple_text"), before);

    // Alice's session is untouched: it lists, streams, and calls.
    let (status, listed) = in_session(
        &t.base,
        conf,
        Some(ALICE),
        &session,
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert!(
        listed["result"]["tools"]
            .as_array()
            .is_some_and(|t| t.len() > 10),
        "{listed}"
    );
    assert_eq!(
        session_status(&t.base, conf, ALICE, &session, reqwest::Method::GET).await,
        200
    );

    // Two sessions per caller here: alice's third is refused, bob's first is not.
    let second = open_session(&t.base, conf, ALICE).await.unwrap();
    assert_eq!(open_session(&t.base, conf, ALICE).await, Err(429));
    let bobs = open_session(&t.base, conf, BOB).await.unwrap();
    // Bob cannot end alice's to make room for himself; alice ends one and opens another.
    assert_eq!(
        session_status(&t.base, conf, BOB, &second, reqwest::Method::DELETE).await,
        404
    );
    let (status, _) =
        in_session(&t.base, conf, Some(ALICE), &second, "tools/list", json!({})).await;
    assert_eq!(status, 200, "bob's DELETE ended nothing");
    let status = session_status(&t.base, conf, ALICE, &second, reqwest::Method::DELETE).await;
    assert!((200..300).contains(&status), "{status}");
    open_session(&t.base, conf, ALICE).await.unwrap();
    // And alice cannot use bob's.
    let (status, _) = in_session(&t.base, conf, Some(ALICE), &bobs, "tools/list", json!({})).await;
    assert_eq!(status, 404);
}

/// The id the issue's pipeline computed for alice's key `order-42`: UUID v5 in the namespace
/// the docs once gave, over `<principal>\0<server>\0<key>`.
fn old_formula(principal: &str) -> Uuid {
    let namespace = Uuid::from_u128(0x6d63_7071_5f69_6465_6d70_6f74_656e_7401);
    Uuid::new_v5(
        &namespace,
        format!("{principal}\u{0}web\u{0}order-42").as_bytes(),
    )
}

/// Publishes `job` as the pipeline, its reply to `inbox`; `seal` forges the dispatcher's.
async fn publish_as_pipeline(
    pipeline: &async_nats::Client,
    job: &Job,
    inbox: &str,
    seal: Option<&str>,
    msg_id: bool,
) {
    let js = async_nats::jetstream::new(pipeline.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HDR_REPLY_TO, inbox);
    headers.insert(HDR_JOB_ID, job.id.to_string().as_str());
    if msg_id {
        headers.insert(HDR_MSG_ID, job.id.to_string().as_str());
    }
    if let Some(seal) = seal {
        headers.insert(HDR_SEAL, seal);
    }
    js.publish_with_headers(
        job_subject("web", Lane::Normal),
        headers,
        serde_json::to_vec(job).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// The pipeline's replies, by job id, until it has one for each of `ids`.
async fn replies_for(
    replies: &mut async_nats::Subscriber,
    ids: &[Uuid],
) -> std::collections::HashMap<Uuid, Value> {
    let mut got = std::collections::HashMap::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while got.len() < ids.len() {
            let message = replies.next().await.unwrap();
            let reply: Value = serde_json::from_slice(&message.payload).unwrap();
            let Some(id) = reply["jobId"].as_str().and_then(|i| i.parse().ok()) else {
                continue; // progress and other events
            };
            if ids.contains(&id) && reply.get("status").is_some() {
                got.insert(id, reply);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("replies for {ids:?}: got {got:?}"));
    got
}

fn mark(tag: &str, ms: u64) -> Job {
    Job::new(
        "web",
        McpRequest::call_tool("mark", json!({"tag": tag, "ms": ms}).as_object().cloned()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_can_neither_borrow_a_principal_nor_take_a_callers_job_id() {
    let t = Tenancy::start(&[]).await;
    let pipeline = t.pipeline().await;
    let inbox = pipeline.new_inbox();
    let mut replies = pipeline.subscribe(inbox.clone()).await.unwrap();
    let http = reqwest::Client::new();

    // Squatting: jobs claiming to be alice's, under every id a pipeline could compute for
    // alice's key order-42, one with a forged seal. Each runs 1.5 s, so its record is kept.
    let mut squats = Vec::new();
    for (i, id) in [
        old_formula("alice"),
        old_formula("key:alice"),
        mcpq_schemas::job::idempotent_id("web", "order-42"),
        Uuid::now_v7(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut job = mark(&format!("squat-{i}"), 1500);
        job.id = id;
        job.principal = Some("key:alice".into());
        job.idempotency_key = Some("order-42".into());
        let seal = (i == 3).then_some("bWNwcS1mb3JnZWQtc2VhbA");
        publish_as_pipeline(&pipeline, &job, &inbox, seal, true).await;
        squats.push(job.id);
    }
    // They run, as nobody: the pipeline hears its results ...
    let got = replies_for(&mut replies, &squats).await;
    for (i, id) in squats.iter().enumerate() {
        assert_eq!(got[id]["status"], "ok", "{:?}", got[id]);
        assert_eq!(
            got[id]["result"]["content"][0]["text"],
            format!("squat-{i}"),
            "{:?}",
            got[id]
        );
    }
    // ... and alice owns none of them.
    for id in &squats {
        let read = http
            .get(t.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 404, "alice sees the pipeline's job {id}");
    }

    // Alice's own submission with key order-42 is hers: a fresh job that runs her call.
    let submit = |key: &'static str, tag: &'static str| {
        http.post(t.url("/v1/jobs"))
            .bearer_auth(key)
            .header("Idempotency-Key", "order-42")
            .json(&json!({"server": "web", "tool": "mark", "arguments": {"tag": tag}}))
            .send()
    };
    let accepted: Value = submit(ALICE, "alice-42")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accepted["duplicate"], false, "{accepted}");
    let alice_job: Uuid = accepted["id"].as_str().unwrap().parse().unwrap();
    assert!(!squats.contains(&alice_job));
    let waited = json_of(
        http.get(t.url(&format!("/v1/jobs/{alice_job}/wait?timeout=30s")))
            .bearer_auth(ALICE),
    )
    .await;
    assert_eq!(waited["status"], "completed", "{waited}");
    assert_eq!(waited["result"]["content"][0]["text"], "alice-42");
    // Bob's order-42 is his own job, not alice's (and echo only: mark is not his).
    let bobs = json_of(
        http.post(t.url("/v1/jobs"))
            .bearer_auth(BOB)
            .header("Idempotency-Key", "order-42")
            .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": "bob-42"}})),
    )
    .await;
    assert_eq!(bobs["duplicate"], false, "{bobs}");
    assert_ne!(bobs["id"], accepted["id"]);

    // Taking over alice's job id, as nobody and with a borrowed principal: refused, her
    // record and result untouched, the upstream never called.
    let mut takeovers = Vec::new();
    for (i, principal) in [None, Some("key:alice")].into_iter().enumerate() {
        let mut job = mark(&format!("takeover-{i}"), 0);
        job.id = alice_job;
        job.principal = principal.map(str::to_string);
        publish_as_pipeline(
            &pipeline,
            &job,
            &inbox,
            principal.map(|_| "Zm9yZ2Vk"),
            false,
        )
        .await;
        takeovers.push(job.id);
        let got = replies_for(&mut replies, &[alice_job]).await;
        let said = got[&alice_job]["error"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            said.contains("belongs to another caller"),
            "{:?}",
            got[&alice_job]
        );
    }
    let read = json_of(
        http.get(t.url(&format!("/v1/jobs/{alice_job}")))
            .bearer_auth(ALICE),
    )
    .await;
    assert_eq!(read["status"], "completed", "{read}");
    assert_eq!(read["result"]["content"][0]["text"], "alice-42");
    let bob_reads = http
        .get(t.url(&format!("/v1/jobs/{alice_job}")))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(bob_reads.status(), 404);
    let marks = t.web.fixture.marks();
    assert_eq!(
        marks.iter().filter(|m| *m == "alice-42").count(),
        1,
        "{marks:?}"
    );
    assert!(
        !marks.iter().any(|m| m.starts_with("takeover")),
        "{marks:?}"
    );
    for i in 0..4 {
        assert_eq!(
            marks.iter().filter(|m| **m == format!("squat-{i}")).count(),
            1,
            "{marks:?}"
        );
    }
}

/// Sends `request` (a whole HTTP/1.1 request) on a new connection; the response as text.
async fn raw(addr: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// The response's header lines (status line first), lower-cased.
fn head(response: &str) -> Vec<String> {
    response
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::to_ascii_lowercase)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_or_origin_header_cannot_steer_or_break_the_answer() {
    let t = Tenancy::start(&[]).await;
    let addr = t.base.trim_start_matches("http://").to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let get = |host: &str, extra: &str| {
        format!("GET /mcp HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
    };
    for host in [
        "localhost:x@evil.example".to_string(),
        format!("localhost:{port}@evil.example"),
        "localhost:1\", error=\"x".to_string(),
        format!("localhost:{port}/evil"),
        "[::1".to_string(),
    ] {
        let response = raw(&addr, &get(&host, "")).await;
        let lines = head(&response);
        assert!(lines[0].starts_with("http/1.1 400"), "{host:?}: {response}");
        for line in &lines[1..] {
            assert!(
                !line.contains("evil") && !line.contains("error=\"x"),
                "{host:?} reached a header: {line}"
            );
        }
    }
    // A well-formed Host that is not this server's: refused (DNS rebinding).
    let response = raw(&addr, &get("evil.example", "")).await;
    assert!(head(&response)[0].starts_with("http/1.1 403"), "{response}");
    // A good Host without credentials: the challenge names this server, as the Host said it.
    let response = raw(&addr, &get(&format!("localhost:{port}"), "")).await;
    let lines = head(&response);
    assert!(lines[0].starts_with("http/1.1 401"), "{response}");
    let challenge = lines
        .iter()
        .find(|l| l.starts_with("www-authenticate:"))
        .unwrap();
    assert!(
        challenge.starts_with("www-authenticate: bearer"),
        "{challenge}"
    );
    if let Some(metadata) = challenge.split("resource_metadata=\"").nth(1) {
        assert!(
            metadata.starts_with(&format!("http://localhost:{port}/")),
            "{challenge}"
        );
    }
    // A page on another origin, with a stolen key: refused before anything runs.
    let before = t.web.fixture.calls();
    let response = reqwest::Client::new()
        .post(t.url("/servers/web/mcp"))
        .bearer_auth(ALICE)
        .header("Origin", "http://evil.example")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "echo", "arguments": {"text": "from a page"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(t.web.fixture.calls(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_holds_only_its_share_of_a_dispatcher() {
    let mut t = Tenancy::start(&[]).await;
    let web = "/servers/web/mcp";
    // --max-requests 1: a call holds the slot until its response's last byte, whether the
    // answer streams (rmcp's path, SSE from the start) or comes at once (the plain path).
    let one = t.dispatcher(&["--max-requests", "1"]).await;
    for (i, accept) in [
        "application/json, text/event-stream",
        "text/event-stream;q=1, application/json;q=0.5",
    ]
    .into_iter()
    .enumerate()
    {
        let tag = format!("slot-{i}");
        let mut call = tokio::spawn({
            let (one, tag, accept) = (one.clone(), tag.clone(), accept.to_string());
            async move {
                let response = reqwest::Client::new()
                    .post(format!("{one}{web}"))
                    .bearer_auth(ALICE)
                    .header("Accept", accept)
                    .header("MCP-Protocol-Version", "2026-07-28")
                    .header("Mcp-Method", "tools/call")
                    .header("Mcp-Name", "hold")
                    .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                        "name": "hold", "arguments": {"tag": tag, "ms": 5000},
                        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                  "io.modelcontextprotocol/clientInfo": {"name": "h", "version": "1"},
                                  "io.modelcontextprotocol/clientCapabilities": {},
                                  "progressToken": "p1"}}}))
                    .send()
                    .await
                    .unwrap();
                response.text().await.unwrap()
            }
        });
        tokio::select! {
            () = t.web.fixture.until_held(&tag) => {}
            body = &mut call => panic!("{accept}: the call ended before it ran: {body:?}"),
        }
        let echo = |text: &str| {
            let params = json!({"name": "echo", "arguments": {"text": text}});
            mcp(&one, web, Some(BOB), "tools/call", params)
        };
        let (status, said) = echo("squeezed").await;
        assert_eq!(status, 503, "{accept}: {said}");
        let body = call.await.unwrap();
        assert!(body.contains(&format!("held {tag}")), "{accept}: {body}");
        let (status, said) = echo("after").await;
        assert_eq!(
            (status, said["result"]["content"][0]["text"].as_str()),
            (200, Some("after")),
            "{said}"
        );
    }

    // One long poll per caller: alice's second is refused, bob's first is not.
    let polls = t
        .dispatcher(&["--max-waits-per-principal", "1", "--idle-timeout", "2s"])
        .await;
    let http = reqwest::Client::new();
    let accepted = json_of(
        http.post(format!("{polls}/v1/jobs"))
            .bearer_auth(ALICE)
            .json(
                &json!({"server": "web", "tool": "hold", "arguments": {"tag": "poll", "ms": 8000}}),
            ),
    )
    .await;
    let wait_url = format!(
        "{polls}/v1/jobs/{}/wait?timeout=30s",
        accepted["id"].as_str().unwrap()
    );
    let poll = || http.get(&wait_url).bearer_auth(ALICE).send();
    let mut first = tokio::spawn(poll());
    t.web.fixture.until_held("poll").await;
    // The first poll and a second race to the dispatcher: under load the second may come first
    // and take the one slot (and the first is refused). A second that is not refused within a
    // second is dropped, which frees its slot, and a refused first is sent again.
    let held_at = std::time::Instant::now();
    let refused = loop {
        assert!(
            held_at.elapsed() < Duration::from_secs(6),
            "alice's second long poll was never refused while her first waited"
        );
        if first.is_finished() {
            let lost = first.await.unwrap().unwrap();
            assert_eq!(lost.status(), 429, "the job ended before the test did");
            first = tokio::spawn(poll());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(1), poll()).await
            && response.status() == 429
        {
            break response;
        }
    };
    let said: Value = refused.json().await.unwrap();
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("--max-waits-per-principal"),
        "{said}"
    );
    let bobs = json_of(
        http.post(format!("{polls}/v1/jobs"))
            .bearer_auth(BOB)
            .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": "bob waits"}})),
    )
    .await;
    let bob_waits = http
        .get(format!(
            "{polls}/v1/jobs/{}/wait?timeout=30s",
            bobs["id"].as_str().unwrap()
        ))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(bob_waits.status(), 200);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);

    // A body that stops arriving is not waited for past --idle-timeout.
    let addr = polls.trim_start_matches("http://").to_string();
    let stalled = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALICE}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"server\": \"web\","
    );
    let response = raw(&addr, &stalled).await;
    assert!(
        response.is_empty() || head(&response)[0].starts_with("http/1.1 408"),
        "{response}"
    );
    assert!(!t.web.fixture.held().contains(&"never".to_string()));

    // Batch results stream line by line, never one body built in memory.
    let batch = json_of(http
        .post(format!("{polls}/v1/batches"))
        .bearer_auth(ALICE)
        .header("Content-Type", "application/x-ndjson")
        .body("{\"server\": \"web\", \"tool\": \"echo\", \"arguments\": {\"text\": \"b0\"}}\n{\"server\": \"web\", \"tool\": \"echo\", \"arguments\": {\"text\": \"b1\"}}\n")).await;
    let batch_id = batch["batchId"].as_str().unwrap().to_string();
    eventually("the batch is done", Duration::from_secs(30), || {
        let request = http
            .get(format!("{polls}/v1/batches/{batch_id}"))
            .bearer_auth(ALICE)
            .send();
        async move {
            let status: Value = request.await.ok()?.json().await.ok()?;
            (status["done"] == true).then_some(())
        }
    })
    .await;
    let results = http
        .get(format!("{polls}/v1/batches/{batch_id}/results"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(results.headers()["content-type"], "application/x-ndjson");
    assert!(
        results.headers().get("content-length").is_none(),
        "streamed, so no length up front"
    );
    let text = results.text().await.unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    // Bob cannot read alice's batch.
    let bob_reads = http
        .get(format!("{polls}/v1/batches/{batch_id}/results"))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(bob_reads.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_reads_a_uri_as_the_upstream_will() {
    let t = Tenancy::start(&[]).await;
    let conf = "/servers/conf/mcp";
    let read = |uri: &str| {
        mcp(
            &t.base,
            conf,
            Some(BOB),
            "resources/read",
            json!({"uri": uri}),
        )
    };
    let (status, allowed) = read("test://template/7/data").await;
    assert_eq!(status, 200, "{allowed}");
    assert!(
        allowed["result"]["contents"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Data for ID: 7")
    );
    for walk in [
        "test://template/7/../8/data",
        "test://template/7/./../8/data",
        "test://template/7/%2e%2e/8/data",
        "test://template/7/%2E%2E/8/data",
        "test://template/7/..%2f8/data",
        "test://template/7%2f..%2f8/data",
        "test://template/7/%2e%2e%2f8/data",
        "test://template/7/%00/../../8/data",
    ] {
        let (status, said) = read(walk).await;
        assert!(
            status == 403 || error_of(&said).contains("may not"),
            "{walk} let through: {status} {said}"
        );
    }
    let ran = t.conf.fixture.ran();
    let reads: Vec<_> = ran.iter().filter(|r| r.starts_with("read")).collect();
    assert_eq!(reads, ["read test://template/7/data"], "{ran:?}");
    // Tool names are matched exactly too: alice's tools are not bob's under another spelling.
    for name in [
        "test_sampling",
        "TEST_SIMPLE_TEXT",
        "test_simple_text ",
        "conf__test_sampling",
    ] {
        let (status, said) = call(&t.base, conf, BOB, name, json!({"prompt": "x"})).await;
        assert!(
            said.get("result").is_none() || said["result"]["isError"] == true,
            "{name}: {status} {said}"
        );
    }
    let (status, said) = call(
        &t.base,
        "/mcp",
        BOB,
        "web__mark",
        json!({"tag": "bob-walks"}),
    )
    .await;
    assert!(
        said.get("result").is_none() || said["result"]["isError"] == true,
        "{status} {said}"
    );
    assert!(!t.web.fixture.marks().contains(&"bob-walks".to_string()));
    assert_eq!(t.conf.fixture.ran_count("call test_sampling"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_of_any_size_is_served_lists_without_gating_and_a_missing_one_lets_nothing_through()
 {
    let t = Tenancy::start(&[]).await;
    // The conformance upstream's catalog is larger than one message: stored as an object,
    // with a stub in the bucket.
    let js = async_nats::jetstream::new(t.as_dispatcher().await);
    let bucket = js
        .get_key_value(mcpq_schemas::names::CATALOG_BUCKET)
        .await
        .unwrap();
    let stub: Value = serde_json::from_slice(&bucket.get("conf").await.unwrap().unwrap()).unwrap();
    assert!(stub.get("stored").is_some_and(|s| !s.is_null()), "{stub}");
    let (_, listed) = mcp(
        &t.base,
        "/servers/conf/mcp",
        Some(ALICE),
        "tools/list",
        json!({}),
    )
    .await;
    let tools = listed["result"]["tools"].as_array().unwrap();
    assert!(
        tools
            .iter()
            .any(|t| t["name"] == "json_schema_2020_12_tool")
    );
    // The catalog is a listing, not a gate: a tool it does not list goes to the upstream,
    // whose answer (or error) passes through; the caller's allow list still applies first.
    let conf = "/servers/conf/mcp";
    let (_, unlisted) = call(&t.base, conf, ALICE, "test_unlisted_tool", json!({})).await;
    assert_eq!(
        unlisted["result"]["content"][0]["text"], "an unlisted tool answered",
        "{unlisted}"
    );
    let (_, on_mcp) = call(
        &t.base,
        "/mcp",
        ALICE,
        "conf__test_unlisted_tool",
        json!({}),
    )
    .await;
    assert_eq!(on_mcp["result"], unlisted["result"], "{on_mcp}");
    let (status, refused) = call(&t.base, conf, BOB, "test_unlisted_tool", json!({})).await;
    assert!(
        status == 403 || error_of(&refused).contains("may not"),
        "{status} {refused}"
    );
    assert_eq!(t.conf.fixture.ran_count("call test_unlisted_tool"), 2);
    let (_, said) = call(&t.base, conf, ALICE, "no_such_tool", json!({})).await;
    assert_eq!(
        said["error"]["code"], -32602,
        "the upstream's own error: {said}"
    );
    assert!(
        error_of(&said).contains("unknown tool \"no_such_tool\""),
        "{said}"
    );
    assert_eq!(t.conf.fixture.ran_count("call no_such_tool"), 1);
    // A server whose catalog nobody has published (its upstream was never reached): calls
    // are refused as unavailable, whatever the tool, and nothing is queued.
    let (status, said) = call(&t.base, "/servers/ghost/mcp", ALICE, "anything", json!({})).await;
    assert!(
        status == 503
            || error_of(&said).contains("unavailable")
            || error_of(&said).contains("catalog"),
        "{status} {said}"
    );
    // So are its resources and prompts, through the endpoint that serves every server's.
    let ghost_uri = mcpq_dispatcher::ingress::names::join_uri("ghost", "test://anything");
    for (method, params) in [
        ("resources/read", json!({"uri": ghost_uri})),
        ("prompts/get", json!({"name": "ghost__anything"})),
    ] {
        let (_, said) = mcp(&t.base, "/mcp", Some(ALICE), method, params).await;
        assert!(
            error_of(&said).contains("no catalog yet"),
            "{method}: {said}"
        );
    }
    let response = reqwest::Client::new()
        .post(t.url("/v1/jobs"))
        .bearer_auth(ALICE)
        .json(&json!({"server": "ghost", "tool": "anything", "arguments": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let mut stream = js.get_stream("MCPQ_JOBS_ghost").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscribers_unsubscribe_leaves_the_others_subscribed() {
    let t = Tenancy::start(&[]).await;
    let conf = "/servers/conf/mcp";
    let uri = "test://watched-resource";
    let a = open_session(&t.base, conf, ALICE).await.unwrap();
    let b = open_session(&t.base, conf, ALICE).await.unwrap();
    for session in [&a, &b] {
        let (status, said) = in_session(
            &t.base,
            conf,
            Some(ALICE),
            session,
            "resources/subscribe",
            json!({"uri": uri}),
        )
        .await;
        assert_eq!(status, 200, "{said}");
    }
    let subscribed = async |n: usize| {
        let fixture = t.conf.fixture.clone();
        eventually(
            "the upstream's subscriptions",
            Duration::from_secs(20),
            move || {
                let count = fixture.subscriptions().iter().filter(|u| *u == uri).count();
                async move { (count == n).then_some(()) }
            },
        )
        .await
    };
    let unsubscribe = async |session: &str| {
        let params = json!({"uri": uri});
        let (status, said) = in_session(
            &t.base,
            conf,
            Some(ALICE),
            session,
            "resources/unsubscribe",
            params,
        )
        .await;
        assert_eq!(status, 200, "{said}");
    };
    subscribed(1).await;
    unsubscribe(&a).await;
    // The upstream still has b's subscription; b's going ends it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    subscribed(1).await;
    unsubscribe(&b).await;
    subscribed(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_a_callers_dead_letter_as_that_callers_job() {
    let t = Tenancy::start(&[]).await;
    let http = reqwest::Client::new();
    // Alice's call fails for good and is dead-lettered, her record with it.
    let (id, ended) = t
        .run_job(ALICE, json!({"server": "web", "tool": "reject"}))
        .await;
    assert_eq!(ended["status"], "failed", "{ended}");
    // The operator, under its NATS role, replays it: it runs again as alice's (the worker
    // sees the dispatchers' seal), so it updates her record rather than being refused.
    let operator = t
        .nats
        .url()
        .replace("nats://", &format!("nats://operator:{}@", PASSWORDS[3].1));
    let dlq = |args: &[&str]| {
        let output = std::process::Command::new(mcpq_bin())
            .arg("dlq")
            .args(args)
            .args(["--nats", &operator])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let listed = eventually("alice's dead letter", Duration::from_secs(20), || {
        let listed = dlq(&["list"]);
        let found = listed.contains(&id);
        async move { found.then_some(listed) }
    })
    .await;
    let seq = listed
        .lines()
        .find(|l| l.contains(&id))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let calls = t.web.fixture.calls();
    let replayed = dlq(&["replay", &seq]);
    assert!(replayed.contains(&id), "{replayed}");
    let again: Value = eventually("the replay ran", Duration::from_secs(30), || {
        let request = http
            .get(t.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(ALICE)
            .send();
        let before = ended["streamSeq"].clone();
        async move {
            let record: Value = request.await.ok()?.json().await.ok()?;
            (record["streamSeq"] != before && record["status"] == "failed").then_some(record)
        }
    })
    .await;
    assert_eq!(again["error"]["kind"], "upstream", "{again}");
    assert_eq!(again["principal"], "key:alice", "{again}");
    assert_eq!(
        t.web.fixture.calls(),
        calls + 1,
        "the upstream ran the replay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_cannot_lend_itself_the_workers_rights_through_its_reply_subject() {
    let t = Tenancy::start(&[]).await;
    let http = reqwest::Client::new();
    // Alice's finished job, whose record the pipeline aims at.
    let (alice_job, waited) = t
        .run_job(
            ALICE,
            json!({"server": "web", "tool": "echo", "arguments": {"text": "alice's"}}),
        )
        .await;
    assert_eq!(waited["status"], "completed", "{waited}");
    let js = async_nats::jetstream::new(t.as_dispatcher().await);
    let keys = js.get_key_value("mcpq_keys").await.unwrap();
    let key_before = keys.get("signing").await.unwrap().unwrap();
    let catalog = js
        .get_key_value(mcpq_schemas::names::CATALOG_BUCKET)
        .await
        .unwrap();
    let catalog_before = catalog.get("conf").await.unwrap().unwrap();

    // The pipeline names subjects only the worker may write as its "reply inbox".
    let pipeline = t.pipeline().await;
    let js_pipeline = async_nats::jetstream::new(pipeline.clone());
    let targets = [
        format!("$KV.mcpq_results.{alice_job}"),
        "$KV.mcpq_keys.signing".to_string(),
        "$KV.mcpq_catalog.conf".to_string(),
        "mcpq.events.conf.resource_updated".to_string(),
        "$JS.API.STREAM.PURGE.MCPQ_DLQ".to_string(),
        "_INBOX.>".to_string(),
    ];
    for (i, target) in targets.iter().enumerate() {
        let job = mark(&format!("lend-{i}"), 0);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HDR_REPLY_TO, target.as_str());
        js_pipeline
            .publish_with_headers(
                job_subject("web", Lane::Normal),
                headers,
                serde_json::to_vec(&job).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Each is dead-lettered with the reason, and runs nothing.
    let dlq = js.get_stream("MCPQ_DLQ").await.unwrap();
    let wanted = targets.len() as u64;
    let letters = eventually("six dead letters", Duration::from_secs(30), || {
        let mut dlq = dlq.clone();
        async move {
            let n = dlq.info().await.ok()?.state.messages;
            (n >= wanted).then_some(n)
        }
    })
    .await;
    for seq in 1..=letters {
        let letter: mcpq_schemas::DeadLetter =
            serde_json::from_slice(&dlq.get_raw_message(seq).await.unwrap().payload).unwrap();
        assert_eq!(letter.reason.kind, mcpq_schemas::ErrorKind::MalformedJob);
        assert!(
            letter.reason.message.contains("is not a reply inbox"),
            "{}",
            letter.reason.message
        );
    }
    assert!(!t.web.fixture.marks().iter().any(|m| m.starts_with("lend")));
    // Everything it aimed at is as it was.
    let read = json_of(
        http.get(t.url(&format!("/v1/jobs/{alice_job}")))
            .bearer_auth(ALICE),
    )
    .await;
    assert_eq!(read["status"], "completed", "{read}");
    assert_eq!(read["result"]["content"][0]["text"], "alice's");
    assert_eq!(keys.get("signing").await.unwrap().unwrap(), key_before);
    assert_eq!(catalog.get("conf").await.unwrap().unwrap(), catalog_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_sees_the_traffic_of_its_own_servers_only() {
    let t = Tenancy::start(&[]).await;
    let http = reqwest::Client::new();
    // Only alice may use ghost.
    let status = |key: &'static str| {
        let request = http.get(t.url("/status.json")).bearer_auth(key).send();
        async move {
            let report: Value = request.await.ok()?.json().await.ok()?;
            let servers: Vec<String> = report["servers"]
                .as_array()?
                .iter()
                .filter_map(|s| s["server"].as_str().map(str::to_string))
                .collect();
            Some((servers, report))
        }
    };
    let (alices, _) = eventually("alice's status", Duration::from_secs(30), || status(ALICE)).await;
    assert!(alices.contains(&"ghost".to_string()), "{alices:?}");
    let (bobs, report) = eventually("bob's status", Duration::from_secs(30), || status(BOB)).await;
    assert!(!bobs.contains(&"ghost".to_string()), "{bobs:?}");
    assert!(bobs.contains(&"web".to_string()), "{bobs:?}");
    assert!(!report.to_string().contains("ghost"), "{report}");
    let metrics = |key: &'static str| {
        let request = http.get(t.url("/metrics")).bearer_auth(key).send();
        async move { request.await.unwrap().text().await.unwrap() }
    };
    assert!(metrics(ALICE).await.contains("server=\"ghost\""));
    let bobs = metrics(BOB).await;
    assert!(bobs.contains("server=\"web\""), "{bobs}");
    assert!(!bobs.contains("server=\"ghost\""), "{bobs}");
}
