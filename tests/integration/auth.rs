//! Who may call what: API keys and JWTs (minted here with a fresh RSA key, served from a local
//! JWKS endpoint) on every route, per-principal tool lists, ownership of jobs, browser-safe
//! HTTP, per-principal limits, and no unauthenticated listener beyond loopback.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use mcpq_tests::{fixture::HttpFixture, mcpq_bin, stack::Stack};
use rsa::{
    RsaPrivateKey,
    pkcs1::{EncodeRsaPrivateKey, LineEnding},
    traits::PublicKeyParts,
};
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "http://mcpq.test/mcp";

/// A signing key and its public half as a JWK.
struct Signer {
    encoding: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("an RSA key");
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwk = json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be()),
        });
        let pem = key.to_pkcs1_pem(LineEnding::LF).expect("PEM");
        Signer {
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("encoding key"),
            jwk,
        }
    }

    fn token(&self, kid: &str, claims: Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        encode(&header, &claims, &self.encoding).expect("a JWT")
    }
}

fn now() -> u64 {
    mcpq_schemas::now_ms() / 1000
}

/// Good claims, with `change` applied.
fn claims(change: impl FnOnce(&mut Value)) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "ada", "groups": ["eng"],
        "scope": "mcp:call", "exp": now() + 600, "iat": now(),
    });
    change(&mut claims);
    claims
}

/// Serves `keys` as a JWKS and counts the reads.
async fn jwks(keys: Vec<Value>) -> (String, Arc<AtomicUsize>) {
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = reads.clone();
    let body = json!({ "keys": keys });
    let router = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { axum::Json(body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/jwks"), reads)
}

const ALICE_KEY: &str = "mcpq_alice-test-key-0123456789";
const CAROL_KEY: &str = "mcpq_carol-test-key-0123456789";

fn config(upstream: &str, jwks_url: &str) -> String {
    let sha = mcpq_dispatcher::auth::sha256_hex;
    format!(
        r#"version: "1.0"
auth:
  apiKeys:
    - principal: alice
      sha256: "{alice}"
      allow: ["web/mark", "web/echo", "web/reject"]
      deny: ["web/reject"]
    - principal: carol
      sha256: "{carol}"
      allow: ["*/*"]
      limits: {{callsPerMinute: 2}}
  jwt:
    issuer: {ISSUER}
    audiences: ["{AUDIENCE}"]
    jwksUrl: {jwks_url}
    requiredScopes: ["mcp:call"]
    rules:
      - {{claim: groups, value: eng, allow: ["web/*"], deny: ["web/crash"]}}
servers:
  - name: web
    type: http
    endpoint: {upstream}
    timeout: 10s
"#,
        alice = sha(ALICE_KEY),
        carol = sha(CAROL_KEY),
    )
}

struct Answer {
    status: u16,
    challenge: String,
    body: Value,
}

/// POSTs `body` to `url` as JSON (an MCP request when `url` ends in `/mcp`).
async fn post(url: &str, authorization: Option<&str>, body: Value) -> Answer {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .json(&body);
    if let Some(method) = body.get("method").and_then(Value::as_str) {
        request = request.header("Mcp-Method", method);
        if let Some(name) = body["params"]["name"].as_str() {
            request = request.header("Mcp-Name", name);
        }
    }
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let response = request.send().await.unwrap();
    answer(response).await
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|d| d.starts_with('{'))
        .map_or_else(
            || serde_json::from_str(&text).unwrap_or(Value::Null),
            |d| serde_json::from_str(d).unwrap(),
        );
    Answer {
        status,
        challenge,
        body,
    }
}

fn rpc(method: &str, params: Value) -> Value {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "auth-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A dispatcher with API keys and a JWT issuer in front of the fixture, and the three ways in.
struct Front {
    fixture: HttpFixture,
    signer: Signer,
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stack: Stack,
    base: String,
    endpoints: [String; 3],
}

impl Front {
    async fn start() -> Front {
        let fixture = HttpFixture::start().await;
        let signer = Signer::new("k1");
        let (jwks_url, reads) = jwks(vec![signer.jwk.clone()]).await;
        let stack = Stack::start_config(&config(&fixture.url(), &jwks_url)).await;
        let base = format!("http://{}", stack.addr);
        let endpoints = [
            format!("{base}/mcp"),
            format!("{base}/servers/web/mcp"),
            format!("{base}/v1/jobs"),
        ];
        Front {
            fixture,
            signer,
            reads,
            stack,
            base,
            endpoints,
        }
    }
}

/// Submits a job as alice through `/v1/jobs`; its id.
async fn alices_job(jobs: &str) -> String {
    let submitted = post(jobs, Some(&bearer(ALICE_KEY)), body_for(jobs, "ok-owned")).await;
    assert_eq!(submitted.status, 202, "{}", submitted.body);
    submitted.body["id"].as_str().unwrap().to_string()
}

/// A call of the fixture's `mark` tool, as `url` takes it.
fn body_for(url: &str, tag: &str) -> Value {
    let mark = json!({"tag": tag, "ms": 0});
    if url.ends_with("/v1/jobs") {
        json!({"server": "web", "tool": "mark", "arguments": mark})
    } else if url.ends_with("/servers/web/mcp") {
        rpc("tools/call", json!({"name": "mark", "arguments": mark}))
    } else {
        rpc(
            "tools/call",
            json!({"name": "web__mark", "arguments": mark}),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_credentials_get_in_on_every_route() {
    let Front {
        fixture,
        signer,
        reads,
        stack: _stack,
        base,
        endpoints,
    } = Front::start().await;
    let stranger = Signer::new("k1");
    // Every bad credential, on every route: refused with the right status and challenge. The
    // unknown kid comes first: it is what makes mcpq read the key set (the one read).
    let unknown_kid = signer.token("k9", claims(|_| {}));
    let cases: Vec<(&str, Option<String>, u16, Option<&str>)> = vec![
        (
            "unknown kid",
            Some(bearer(&unknown_kid)),
            401,
            Some("invalid_token"),
        ),
        ("no credentials", None, 401, None),
        (
            "malformed header",
            Some("Basic YWxpY2U6eA==".into()),
            401,
            Some("invalid_token"),
        ),
        (
            "unknown key",
            Some(bearer("mcpq_not-a-key")),
            401,
            Some("invalid_token"),
        ),
        (
            "expired",
            Some(bearer(
                &signer.token("k1", claims(|c| c["exp"] = json!(now() - 3600))),
            )),
            401,
            Some("invalid_token"),
        ),
        (
            "not yet valid",
            Some(bearer(
                &signer.token("k1", claims(|c| c["nbf"] = json!(now() + 3600))),
            )),
            401,
            Some("invalid_token"),
        ),
        (
            "wrong issuer",
            Some(bearer(&signer.token(
                "k1",
                claims(|c| c["iss"] = json!("https://other.test")),
            ))),
            401,
            Some("invalid_token"),
        ),
        (
            "wrong audience",
            Some(bearer(&signer.token(
                "k1",
                claims(|c| c["aud"] = json!("http://elsewhere/mcp")),
            ))),
            401,
            Some("invalid_token"),
        ),
        (
            "bad signature",
            Some(bearer(&stranger.token("k1", claims(|_| {})))),
            401,
            Some("invalid_token"),
        ),
        (
            "unknown kid again",
            Some(bearer(&unknown_kid)),
            401,
            Some("invalid_token"),
        ),
        (
            "missing scope",
            Some(bearer(
                &signer.token("k1", claims(|c| c["scope"] = json!("mcp:read"))),
            )),
            403,
            Some("insufficient_scope"),
        ),
    ];
    for (i, (case, authorization, status, error)) in cases.iter().enumerate() {
        for url in &endpoints {
            let got = post(
                url,
                authorization.as_deref(),
                body_for(url, &format!("refused-{i}")),
            )
            .await;
            assert_eq!(got.status, *status, "{case} at {url}: {:?}", got.body);
            let path = url.strip_prefix(&base).unwrap();
            let metadata = if path.ends_with("/mcp") {
                format!("{base}/.well-known/oauth-protected-resource{path}")
            } else {
                format!("{base}/.well-known/oauth-protected-resource")
            };
            assert!(
                got.challenge
                    .starts_with(&format!("Bearer resource_metadata=\"{metadata}\"")),
                "{case} at {url}: {}",
                got.challenge
            );
            match error {
                Some(error) => assert!(
                    got.challenge.contains(&format!("error=\"{error}\"")),
                    "{case}: {}",
                    got.challenge
                ),
                None => assert!(
                    !got.challenge.contains("error="),
                    "{case}: {}",
                    got.challenge
                ),
            }
        }
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        1,
        "the key set is read once, not per unknown kid"
    );

    // Allowed calls pass, over each route, for a JWT and for an API key.
    let ada = bearer(&signer.token("k1", claims(|_| {})));
    for (who, authorization) in [("ada", &ada), ("alice", &bearer(ALICE_KEY))] {
        for url in &endpoints {
            let got = post(
                url,
                Some(authorization),
                body_for(url, &format!("ok-{who}")),
            )
            .await;
            assert!(
                matches!(got.status, 200 | 202),
                "{who} at {url}: {}",
                got.status
            );
            assert!(
                got.body.get("error").is_none(),
                "{who} at {url}: {}",
                got.body
            );
        }
    }
    mcpq_tests::eventually(
        "the allowed calls reached the upstream",
        Duration::from_secs(30),
        || {
            let marks = fixture.fixture.marks();
            async move { (marks.len() >= 6).then_some(()) }
        },
    )
    .await;
    let marks = fixture.fixture.marks();
    assert!(
        marks.iter().all(|m| m.starts_with("ok-")),
        "the upstream saw only allowed calls: {marks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_sees_calls_and_owns_only_its_own() {
    let Front {
        fixture: _fixture,
        signer,
        reads: _,
        stack: _stack,
        base,
        endpoints,
    } = Front::start().await;
    let ada = bearer(&signer.token("k1", claims(|_| {})));

    // Each caller lists only what it may call, on both endpoints.
    let names = |answer: &Answer| -> Vec<String> {
        let mut names: Vec<String> = answer.body["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", answer.body))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let listed = post(
        &endpoints[1],
        Some(&bearer(ALICE_KEY)),
        rpc("tools/list", json!({})),
    )
    .await;
    assert_eq!(
        names(&listed),
        ["echo", "mark"],
        "alice's allow list minus its deny list"
    );
    let listed = post(&endpoints[0], Some(&ada), rpc("tools/list", json!({}))).await;
    let ada_sees = names(&listed);
    assert!(
        ada_sees.contains(&"web__reject".to_string())
            && !ada_sees.contains(&"web__crash".to_string()),
        "{ada_sees:?}"
    );

    // A tool the catalog does not list but the caller may call is queued for the upstream.
    let unknown = post(
        &endpoints[2],
        Some(&ada),
        json!({"server": "web", "tool": "nope"}),
    )
    .await;
    assert_eq!(unknown.status, 202, "{}", unknown.body);

    // A forbidden call is refused and never queued.
    let refused = post(
        &endpoints[2],
        Some(&bearer(ALICE_KEY)),
        json!({"server": "web", "tool": "reject"}),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body["code"], "forbidden", "{}", refused.body);
    let refused = post(
        &endpoints[0],
        Some(&bearer(ALICE_KEY)),
        rpc("tools/call", json!({"name": "web__reject"})),
    )
    .await;
    assert_eq!(refused.body["error"]["code"], -32001, "{}", refused.body);

    // Jobs belong to who submitted them: another principal is told they do not exist.
    let id = alices_job(&endpoints[2]).await;
    let http = reqwest::Client::new();
    let read = |authorization: String| {
        let http = http.clone();
        let url = format!("{base}/v1/jobs/{id}");
        async move {
            http.get(url)
                .header("Authorization", authorization)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(read(bearer(ALICE_KEY)).await, 200);
    assert_eq!(
        read(ada.clone()).await,
        404,
        "another principal cannot read the job"
    );
    let cancel = http
        .delete(format!("{base}/v1/jobs/{id}"))
        .header("Authorization", &ada)
        .send()
        .await
        .unwrap();
    assert_eq!(
        cancel.status(),
        404,
        "another principal cannot cancel the job"
    );
    // A JWT whose subject is the API key's principal name is still somebody else
    // (jwt:alice is not key:alice): it neither reads nor cancels alice's job.
    let named_alice = bearer(&signer.token("k1", claims(|c| c["sub"] = json!("alice"))));
    assert_eq!(
        read(named_alice.clone()).await,
        404,
        "jwt:alice read key:alice's job"
    );
    let cancel = http
        .delete(format!("{base}/v1/jobs/{id}"))
        .header("Authorization", &named_alice)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 404);
    // One idempotency key, two principals: two jobs.
    let keyed = |authorization: String| {
        let http = http.clone();
        let url = endpoints[2].clone();
        async move {
            let response = http
                .post(url)
                .header("Authorization", authorization)
                .header("Idempotency-Key", "shared-key")
                .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": "k"}}))
                .send()
                .await
                .unwrap();
            answer(response).await.body["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_ne!(keyed(bearer(ALICE_KEY)).await, keyed(ada.clone()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_call_and_a_caller_over_its_limit_is_refused_before_the_queue() {
    let Front {
        fixture,
        signer: _,
        reads: _,
        stack: _stack,
        base,
        endpoints,
    } = Front::start().await;
    let http = reqwest::Client::new();
    let id = alices_job(&endpoints[2]).await;

    // Browser-safe: another site's page cannot post, and a simple text/plain POST is refused.
    let cross_site = http
        .post(&endpoints[2])
        .header("Authorization", bearer(ALICE_KEY))
        .header("Origin", "https://evil.example")
        .header("Content-Type", "text/plain")
        .body(body_for(&endpoints[2], "refused-origin").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let simple = http
        .post(&endpoints[2])
        .header("Authorization", bearer(ALICE_KEY))
        .header("Content-Type", "text/plain")
        .body(body_for(&endpoints[2], "refused-plain").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(simple.status(), 415);
    let rebound = http
        .get(format!("{base}/v1/jobs/{id}"))
        .header("Authorization", bearer(ALICE_KEY))
        .header("Host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        rebound.status(),
        403,
        "a Host that is not ours (DNS rebinding)"
    );

    // The protected-resource metadata names the resource and its authorization server.
    let metadata: Value =
        mcpq_tests::json_of(http.get(format!("{base}/.well-known/oauth-protected-resource/mcp")))
            .await;
    assert_eq!(metadata["resource"], format!("{base}/mcp"));
    assert_eq!(metadata["authorization_servers"], json!([ISSUER]));

    // Over the limit: 429 with Retry-After (start at the beginning of a minute, so that the
    // window does not turn between the calls).
    let into_minute = mcpq_schemas::now_ms() % 60_000;
    if into_minute > 50_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into_minute + 100)).await;
    }
    for _ in 0..2 {
        let got = post(
            &endpoints[2],
            Some(&bearer(CAROL_KEY)),
            body_for(&endpoints[2], "ok-carol"),
        )
        .await;
        assert_eq!(got.status, 202, "{}", got.body);
    }
    let response = http
        .post(&endpoints[2])
        .header("Authorization", bearer(CAROL_KEY))
        .json(&body_for(&endpoints[2], "refused-limit"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let over = post(
        &endpoints[0],
        Some(&bearer(CAROL_KEY)),
        body_for(&endpoints[0], "refused-limit"),
    )
    .await;
    assert_eq!(
        over.body["error"]["data"]["kind"], "rate_limited",
        "{}",
        over.body
    );
    assert!(
        over.body["error"]["data"]["retryAfterMs"]
            .as_u64()
            .is_some()
    );

    // A call allowed after the refusals is the barrier: once the upstream has seen it, a
    // refused call that had slipped into the queue would have had its turn too.
    let after = post(
        &endpoints[2],
        Some(&bearer(ALICE_KEY)),
        body_for(&endpoints[2], "ok-after-refusals"),
    )
    .await;
    assert_eq!(after.status, 202, "{}", after.body);
    let marks = mcpq_tests::eventually(
        "the upstream to see the call allowed after the refusals",
        Duration::from_secs(30),
        || {
            let marks = fixture.fixture.marks();
            let seen = marks.iter().any(|m| m == "ok-after-refusals");
            async move { seen.then_some(marks) }
        },
    )
    .await;
    assert!(
        marks.iter().all(|m| m.starts_with("ok-")),
        "no refused call reached the upstream: {marks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_dispatcher_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcp.yaml");
    std::fs::write(
        &config,
        "version: \"1.0\"\nservers: [{name: web, type: http, endpoint: \"http://127.0.0.1:9/mcp\"}]\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(mcpq_bin())
        .args([
            "dispatcher",
            "--listen",
            "0.0.0.0:0",
            "--nats",
            "nats://127.0.0.1:9",
        ])
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("without authentication") && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_appear_in_no_log_record_dead_letter_or_reply() {
    let nats = mcpq_tests::nats::NatsServer::start();
    let web = HttpFixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        ("bearer", "bearer-SECRET-91c2e7"),
        ("header", "header-SECRET-7f3a0b"),
        ("stdio", "stdio-SECRET-55d04c"),
    ];
    for (name, value) in secrets {
        std::fs::write(dir.path().join(name), value).unwrap();
    }
    let caller_key = "mcpq_caller-SECRET-aa11ff";
    let file = |name: &str| dir.path().join(name).display().to_string();
    let config = dir.path().join("mcp.yaml");
    std::fs::write(
        &config,
        format!(
            r#"version: "1.0"
auth:
  apiKeys: [{{principal: ci, sha256: "{sha}", allow: ["*/*"]}}]
servers:
  - name: web
    type: http
    endpoint: {url}
    auth: {{bearer: "${{file:{bearer}}}"}}
    headers: {{X-Api-Key: "${{file:{header}}}"}}
    timeout: 300ms
    retry: {{maxAttempts: 2, initial: 10ms}}
  - name: local
    type: stdio
    command: {fixture}
    env: {{FIXTURE_TOKEN: "${{file:{stdio}}}"}}
"#,
            sha = mcpq_dispatcher::auth::sha256_hex(caller_key),
            url = web.url(),
            bearer = file("bearer"),
            header = file("header"),
            fixture = mcpq_tests::fixture_bin().display(),
            stdio = file("stdio"),
        ),
    )
    .unwrap();
    let port = mcpq_tests::free_port();
    let log = std::fs::File::create(dir.path().join("mcpq.log")).unwrap();
    let mut up = tokio::process::Command::new(mcpq_bin())
        .args([
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--nats",
            &nats.url(),
        ])
        .arg("--config")
        .arg(&config)
        .env("MCPQ_LOG", "debug")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    mcpq_tests::eventually("mcpq up answers", Duration::from_secs(60), || {
        let (http, url) = (http.clone(), format!("{base}/v1/openapi.json"));
        async move {
            let r = http
                .get(url)
                .header("Authorization", bearer(caller_key))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    mcpq_tests::catalogs_published(&nats.url(), &["web", "local"]).await;
    // A success on each upstream, and a call that times out into the dead-letter stream.
    let mut seen = String::new();
    let mut ids = Vec::new();
    for (server, tool, arguments) in [
        ("web", "echo", json!({"text": "hello"})),
        ("local", "echo", json!({"text": "hello"})),
        ("web", "slow", json!({"ms": 2000})),
    ] {
        let response = http
            .post(format!("{base}/v1/jobs"))
            .header("Authorization", bearer(caller_key))
            .json(&json!({"server": server, "tool": tool, "arguments": arguments}))
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        let accepted: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
        ids.push(
            accepted["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{text}"))
                .to_string(),
        );
        seen.push_str(&text);
    }
    for id in &ids {
        let waited = http
            .get(format!("{base}/v1/jobs/{id}/wait?timeout=60s"))
            .header("Authorization", bearer(caller_key))
            .send()
            .await
            .unwrap();
        assert_eq!(waited.status(), 200, "job {id} ended");
        seen.push_str(&waited.text().await.unwrap());
    }
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut dlq = js.get_stream("MCPQ_DLQ").await.unwrap();
    let letters = dlq.info().await.unwrap().state.messages;
    assert!(letters >= 1, "the timed-out call was dead-lettered");
    for seq in 1..=letters {
        let message = dlq.get_raw_message(seq).await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&message.payload));
        seen.push_str(&format!("{:?}", message.headers));
    }
    let _ = up.start_kill();
    let _ = up.wait().await;
    let logged = std::fs::read_to_string(dir.path().join("mcpq.log")).unwrap();
    assert!(
        logged.lines().count() > 10,
        "the debug log was written: {logged}"
    );
    seen.push_str(&logged);
    assert!(seen.contains("hello"), "the answers were read");
    for value in secrets.iter().map(|(_, v)| *v).chain([caller_key]) {
        assert!(
            !seen.contains(value),
            "{value} leaked into a log, record, dead letter or reply"
        );
    }
}
