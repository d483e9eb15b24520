//! Config loading: the guide's example loads unchanged; every bad file names its field.

use super::*;

const EXAMPLE: &str = include_str!("../../../deploy/examples/mcp-infrastructure.yaml");

#[test]
fn the_guides_example_loads_unchanged() {
    let config = Config::from_yaml(EXAMPLE).expect("the example config must load");
    assert_eq!(config.server_names(), ["jira", "github", "slack"]);
    let github = config.server("github").unwrap();
    assert_eq!(github.lane, Lane::High);
    assert_eq!(github.replicas, 3);
    assert_eq!(
        github.autoscale,
        Some(AutoScale {
            min: 2,
            max: 10,
            target_cpu_percent: Some(70),
            target_queue_depth: 100,
        })
    );
    assert_eq!(config.server("slack").unwrap().lane, Lane::Normal);
    let Transport::Http { endpoints, headers } = &github.transport else {
        panic!("github is an HTTP server");
    };
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].url, "https://github.example.com/mcp");
    assert_eq!(github.load_balancing, LoadBalancing::RoundRobin);
    let auth = &headers["Authorization"];
    assert_eq!(auth.env_names().collect::<Vec<_>>(), ["MCPQ_GITHUB_TOKEN"]);
    let Transport::Http { headers, .. } = &config.server("slack").unwrap().transport else {
        panic!("slack is an HTTP server");
    };
    assert_eq!(
        headers["Authorization"].env_names().collect::<Vec<_>>(),
        ["MCPQ_SLACK_BOT_TOKEN"]
    );
    assert!(config.nats.url.is_none());
    assert_eq!(config.nats.url_or_default(), DEFAULT_NATS_URL);
}

#[test]
fn stdio_servers_durations_and_secrets_load() {
    let config = Config::from_yaml(
        r#"
version: "1.0"
nats: { url: "nats://10.0.0.1:4222", replicas: 3, resultTtl: 2h }
servers:
  - name: time
    type: stdio
    command: mcp-server-time
    args: ["--local-timezone", "UTC"]
    env: { TOKEN: "${env:TIME_TOKEN}", PLAIN: "x" }
    timeout: 250ms
    concurrency: 4
    retry: {maxAttempts: 5, initial: 50ms}
    priority: low
"#,
    )
    .unwrap();
    let time = &config.servers[0];
    assert_eq!(time.timeout, Duration::from_millis(250));
    assert_eq!(time.concurrency, 4);
    assert_eq!(
        time.retry,
        RetryConfig {
            max_attempts: 5,
            initial: Duration::from_millis(50),
            max: Duration::from_secs(30)
        }
    );

    assert_eq!(time.lane, Lane::Low);
    assert_eq!(config.nats.replicas, 3);
    assert_eq!(config.nats.result_ttl, Duration::from_secs(7200));
    let Transport::Stdio { command, args, env } = &time.transport else {
        panic!("time is stdio");
    };
    assert_eq!(command, "mcp-server-time");
    assert_eq!(args, &["--local-timezone", "UTC"]);
    assert_eq!(env["PLAIN"].resolve().unwrap(), "x");
    assert_eq!(
        env["TOKEN"].resolve(),
        Err(SecretError::MissingEnv("TIME_TOKEN".into()))
    );
}

/// Each bad file, the field path its error must name, and a word the message must contain.
const BAD: &[(&str, &str, &str)] = &[
    (
        "version: \"2.0\"\nservers: [{name: a, type: stdio, command: x}]",
        "version",
        "2.0",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, comand: y}]",
        "servers[0]",
        "comand",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: ftp}]",
        "servers[0].type",
        "ftp",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: http, endpoint: \"htps://x\"}]",
        "servers[0].endpoint",
        "htps://x",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: http}]",
        "servers[0].endpoint",
        "missing",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio}]",
        "servers[0].command",
        "missing",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a.b, type: stdio, command: x}]",
        "servers[0].name",
        "a.b",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x}, {name: a, type: stdio, command: y}]",
        "servers[1].name",
        "duplicate",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, timeout: 30}]",
        "servers[0].timeout",
        "30s",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, timeout: 3 sex}]",
        "servers[0].timeout",
        "3 sex",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, concurrency: 0}]",
        "servers[0].concurrency",
        "0",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: http, endpoint: \"http://h/mcp\", auth: kerberos}]",
        "servers[0].auth",
        "kerberos",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, env: {T: \"${vault:x}\"}}]",
        "servers[0].env.T",
        "vault",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: http, endpoint: \"http://h\", autoScale: {min: 5, max: 2}}]",
        "servers[0].autoScale.min",
        "5",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: http, endpoint: \"http://h\", autoScale: {min: 1, max: 2, targetCPU: lots}}]",
        "servers[0].autoScale.targetCPU",
        "lots",
    ),
    (
        "version: \"1.0\"\nnats: {url: \"http://localhost:4222\"}\nservers: [{name: a, type: stdio, command: x}]",
        "nats.url",
        "http://localhost:4222",
    ),
    (
        "version: \"1.0\"\nnats: {replicas: 2}\nservers: [{name: a, type: stdio, command: x}]",
        "nats.replicas",
        "2",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, auth: token}]",
        "servers[0].auth",
        "env",
    ),
    ("version: \"1.0\"\nservers: []", "servers", "at least one"),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, circuitBreaker: {failureThreshold: 0}}]",
        "servers[0].circuitBreaker.failureThreshold",
        "0",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, rateLimit: {perSecond: 0}}]",
        "servers[0].rateLimit.perSecond",
        "0",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, rateLimit: {perSecond: 5, burst: 0}}]",
        "servers[0].rateLimit.burst",
        "0",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, retry: {maxAttempts: 0}}]",
        "servers[0].retry.maxAttempts",
        "0",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, retry: {initial: 2s, max: 1s}}]",
        "servers[0].retry.max",
        "below",
    ),
    (
        "version: \"1.0\"\nservers: [{name: a, type: stdio, command: x, retry: {attempts: 2}}]",
        "servers[0].retry.attempts",
        "unknown field",
    ),
    ("version: \"1.0\"\nserver: []", "server", "expected one of"),
];

#[test]
fn every_bad_file_names_its_field_and_value() {
    for (text, path, word) in BAD {
        let errors = match Config::from_yaml(text) {
            Ok(_) => panic!("config must be rejected:\n{text}"),
            Err(errors) => errors,
        };
        let hit = errors.0.iter().any(|e| {
            let shown = e.to_string();
            e.path().is_some_and(|p| p.starts_with(path)) && shown.contains(word)
        });
        assert!(
            hit,
            "for\n{text}\nexpected an error at {path} mentioning {word:?}, got:\n{errors}"
        );
    }
}

#[test]
fn several_errors_are_reported_together() {
    let errors = Config::from_yaml(
        "version: \"1.0\"\nservers: [{name: a, type: http}, {name: b, type: stdio, concurrency: 0}]",
    )
    .unwrap_err();
    let paths: Vec<_> = errors.0.iter().filter_map(|e| e.path()).collect();
    assert_eq!(
        paths,
        [
            "servers[0].endpoint",
            "servers[1].command",
            "servers[1].concurrency"
        ]
    );
}

#[test]
fn a_bad_auth_section_names_each_field() {
    let errors = Config::from_yaml(
        r#"
version: "1.0"
auth:
  apiKeys:
    - {principal: ci, sha256: "not-hex", allow: ["github"]}
    - {principal: ci, sha256: "0000000000000000000000000000000000000000000000000000000000000000", allow: ["*/*"], limits: {callsPerMinute: 0}}
  jwt: {issuer: "https://a.test", audiences: [], rules: [{claim: groups, value: eng, allow: ["x/*"]}]}
servers: [{name: github, type: http, endpoint: "https://github.example.com/mcp"}]
"#,
    )
    .unwrap_err();
    let paths: Vec<_> = errors.0.iter().filter_map(|e| e.path()).collect();
    for expected in [
        "auth.apiKeys[0].sha256",
        "auth.apiKeys[0].allow[0]",
        "auth.apiKeys[1].principal",
        "auth.apiKeys[1].limits.callsPerMinute",
        "auth.jwt.audiences",
        "auth.jwt.jwksUrl",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    let nats = Config::from_yaml(
        "version: \"1.0\"\nnats: {creds: a.creds, user: u, tls: {cert: c.pem}}\nservers: [{name: g, type: http, endpoint: \"https://g.example/mcp\"}]\n",
    )
    .unwrap_err();
    let paths: Vec<_> = nats.0.iter().filter_map(|e| e.path()).collect();
    assert!(
        paths.contains(&"nats.creds") && paths.contains(&"nats.tls.key"),
        "{paths:?}"
    );
}

#[test]
fn nats_url_takes_a_cluster_seed_list() {
    let config = Config::from_yaml(
        "version: \"1.0\"\nnats: {url: [\"nats://a:4222\", \"nats://b:4222\"], replicas: 3}\nservers: [{name: s, type: http, endpoint: \"http://x/mcp\"}]\n",
    )
    .unwrap();
    assert_eq!(
        config.nats.url.as_deref(),
        Some("nats://a:4222,nats://b:4222")
    );
    assert_eq!(config.nats.replicas, 3);
    let errors = Config::from_yaml(
        "version: \"1.0\"\nnats: {url: [\"nats://a:4222\", \"http://b\"]}\nservers: [{name: s, type: http, endpoint: \"http://x/mcp\"}]\n",
    )
    .unwrap_err();
    assert_eq!(errors.0[0].path(), Some("nats.url[1]"), "{errors}");
    let errors = Config::from_yaml(
        "version: \"1.0\"\nnats: {url: []}\nservers: [{name: s, type: http, endpoint: \"http://x/mcp\"}]\n",
    )
    .unwrap_err();
    assert_eq!(errors.0[0].path(), Some("nats.url"), "{errors}");
}

#[test]
fn http_servers_take_several_endpoints() {
    let config = Config::from_yaml(
        "version: \"1.0\"\nservers:\n  - name: s\n    type: http\n    endpoints: [{url: \"http://a/mcp\", weight: 2}, {url: \"http://b/mcp\", role: secondary}]\n    loadBalancing: priority\n    pool: {maxConnections: 4, idleTimeout: 1m}\n",
    )
    .unwrap();
    let server = config.server("s").unwrap();
    let Transport::Http { endpoints, .. } = &server.transport else {
        panic!("http");
    };
    assert_eq!(endpoints[0].weight, 2);
    assert_eq!(endpoints[1].role, EndpointRole::Secondary);
    assert_eq!(server.load_balancing, LoadBalancing::Priority);
    assert_eq!(server.pool.max_connections, 4);
    for (yaml, path) in [
        (
            "endpoint: \"http://a/mcp\"\n    endpoints: [{url: \"http://b/mcp\"}]",
            "servers[0].endpoints",
        ),
        (
            "endpoints: [{url: \"http://b/mcp\", role: secondary}]",
            "servers[0].endpoints",
        ),
        (
            "endpoints: [{url: \"htp://b\"}]",
            "servers[0].endpoints[0].url",
        ),
        (
            "endpoint: \"http://a/mcp\"\n    pool: {maxConnections: 0}",
            "servers[0].pool.maxConnections",
        ),
    ] {
        let errors = Config::from_yaml(&format!(
            "version: \"1.0\"\nservers:\n  - name: s\n    type: http\n    {yaml}\n"
        ))
        .unwrap_err();
        assert_eq!(errors.0[0].path(), Some(path), "{errors}");
    }
}
