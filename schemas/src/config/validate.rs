//! Raw config → validated [`Config`]: every rule, every error with its field path and bad value.

use std::{collections::BTreeMap, time::Duration};

use super::{
    AutoScale, CircuitBreaker, Config, ConfigError, ConfigErrors, Endpoint, EndpointRole,
    NatsConfig, NatsCredentials, PoolConfig, RateLimit, RetryConfig, Secret, ServerConfig,
    TaskMode, TaskPolicy, Transport,
    raw::{
        AuthSpec, AutoScaleSection, CircuitBreakerSection, ConfigFile, NatsSection, Priority,
        RateLimitSection, RetrySection, ServerKind, ServerSection,
    },
    secret::is_env_name,
    values::check_http_url,
};
use crate::{job::Lane, names::is_valid_server_name};

const SUPPORTED_VERSIONS: [&str; 2] = ["1", "1.0"];
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_CONCURRENCY: usize = 16;
const MAX_CONCURRENCY: usize = 10_000;
const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_CALL_RECORD_TTL: Duration = Duration::from_secs(15 * 60);
/// JetStream's own default duplicate window.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
const MAX_ATTEMPTS: u32 = 100;
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
const DEFAULT_MAX_QUEUED: u64 = 100_000;
const MAX_MAX_QUEUED: u64 = 100_000_000;
const DEFAULT_MAX_RESULT_BYTES: u64 = 32 * 1024 * 1024;
const MAX_MAX_RESULT_BYTES: u64 = 1024 * 1024 * 1024;

pub(super) fn validate(raw: ConfigFile) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    if !SUPPORTED_VERSIONS.contains(&raw.version.as_str()) {
        errors.push(ConfigError::field(
            "version",
            format!(
                "unsupported version {:?} (this mcpq reads \"1.0\")",
                raw.version
            ),
        ));
    }
    let nats = nats(raw.nats, &mut errors);
    let auth = raw.auth.map(|a| super::auth::validate(a, &mut errors));
    let alerts = super::observe::alerts(raw.alerts, &mut errors);
    let audit = super::observe::audit(raw.audit, &mut errors);
    let telemetry = super::observe::telemetry(raw.telemetry, &mut errors);
    let callbacks = super::callbacks::callbacks(raw.callbacks, &mut errors);
    if raw.servers.is_empty() {
        errors.push(ConfigError::field(
            "servers",
            "no servers configured (add at least one entry with name and type)",
        ));
    }
    let mut servers = Vec::new();
    let mut seen = BTreeMap::new();
    for (i, section) in raw.servers.into_iter().enumerate() {
        let path = format!("servers[{i}]");
        if let Some(first) = seen.insert(section.name.clone(), i) {
            errors.push(ConfigError::field(
                format!("{path}.name"),
                format!(
                    "duplicate server name {:?} (also servers[{first}])",
                    section.name
                ),
            ));
        }
        if let Some(server) = server(&path, section, auth.is_some(), &mut errors) {
            servers.push(server);
        }
    }
    if errors.is_empty() {
        Ok(Config {
            nats,
            auth,
            alerts,
            audit,
            telemetry,
            callbacks,
            servers,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn nats(section: Option<NatsSection>, errors: &mut Vec<ConfigError>) -> NatsConfig {
    let section = section.unwrap_or_default();
    let urls = section.url.as_ref().map(|u| u.list());
    if let Some(urls) = &urls {
        if urls.is_empty() {
            errors.push(ConfigError::field(
                "nats.url",
                "an empty list (give one URL, or the seed URLs of a cluster)",
            ));
        }
        for (i, url) in urls.iter().enumerate() {
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
            if !ok {
                let path = match section.url {
                    Some(super::raw::NatsUrls::Seeds(_)) => format!("nats.url[{i}]"),
                    _ => "nats.url".into(),
                };
                errors.push(ConfigError::field(
                    path,
                    format!(
                        "{url:?} is not a NATS URL (expected nats://host:port, tls://, ws:// or wss://)"
                    ),
                ));
            }
        }
    }
    let replicas = section.replicas.unwrap_or(1);
    if ![1, 3, 5].contains(&replicas) {
        errors.push(ConfigError::field(
            "nats.replicas",
            format!("{replicas} replicas (expected 1, 3 or 5)"),
        ));
    }
    let result_ttl = section.result_ttl.map_or(DEFAULT_RESULT_TTL, |d| d.0);
    if result_ttl < Duration::from_secs(1) {
        errors.push(ConfigError::field(
            "nats.resultTtl",
            format!("{result_ttl:?} is too short (at least 1s)"),
        ));
    }
    let duplicate_window = section
        .duplicate_window
        .map_or(DEFAULT_DUPLICATE_WINDOW, |d| d.0);
    if duplicate_window < Duration::from_secs(1)
        || duplicate_window > Duration::from_secs(24 * 3600)
    {
        errors.push(ConfigError::field(
            "nats.duplicateWindow",
            format!("{duplicate_window:?} is out of range (from 1s to 24h)"),
        ));
    }
    let call_record_ttl = section
        .call_record_ttl
        .map_or(DEFAULT_CALL_RECORD_TTL, |d| d.0)
        .min(result_ttl);
    if call_record_ttl < Duration::from_secs(1) {
        errors.push(ConfigError::field(
            "nats.callRecordTtl",
            format!("{call_record_ttl:?} is too short (at least 1s)"),
        ));
    }
    let credentials = nats_credentials(&section, errors);
    let signing_key = section
        .signing_key
        .as_deref()
        .and_then(|value| match Secret::parse(value) {
            Ok(secret) => Some(secret),
            Err(message) => {
                errors.push(ConfigError::field("nats.signingKey", message));
                None
            }
        });
    NatsConfig {
        signing_key,
        call_record_ttl,
        url: urls.map(|u| u.join(",")),
        replicas,
        result_ttl,
        duplicate_window,
        credentials,
    }
}

fn nats_credentials(section: &NatsSection, errors: &mut Vec<ConfigError>) -> NatsCredentials {
    let mut err = |field: &str, message: String| {
        errors.push(ConfigError::field(format!("nats.{field}"), message));
    };
    let ways = [
        section.creds.is_some(),
        section.nkey.is_some(),
        section.user.is_some(),
    ];
    if ways.iter().filter(|w| **w).count() > 1 {
        err(
            "creds",
            "set one of creds, nkey or user/password, not several".into(),
        );
    }
    if section.password.is_some() && section.user.is_none() {
        err("password", "a password needs a user".into());
    }
    let mut secret = |field: &str, value: &Option<String>| {
        value.as_deref().and_then(|v| match Secret::parse(v) {
            Ok(secret) => Some(secret),
            Err(message) => {
                err(field, message.to_string());
                None
            }
        })
    };
    let user = secret("user", &section.user);
    let password = secret("password", &section.password);
    let mut tls_ca = None;
    let mut tls_client = None;
    if let Some(tls) = &section.tls {
        tls_ca = tls.ca.clone();
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => tls_client = Some((cert.clone(), key.clone())),
            (None, None) => {}
            (Some(_), None) => errors.push(ConfigError::field(
                "nats.tls.key",
                "missing: a client certificate needs its key",
            )),
            (None, Some(_)) => errors.push(ConfigError::field(
                "nats.tls.cert",
                "missing: a key needs its client certificate",
            )),
        }
    }
    NatsCredentials {
        creds: section.creds.clone(),
        nkey: section.nkey.clone(),
        user,
        password,
        tls_ca,
        tls_client,
    }
}

/// The errors of one server's fields, each named under the server's path.
struct Fields<'a> {
    path: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl Fields<'_> {
    fn err(&mut self, field: &str, message: impl std::fmt::Display) {
        self.errors.push(ConfigError::field(
            format!("{}.{field}", self.path),
            message,
        ));
    }

    /// `value` of `field`, with an error when `ok` says it is out of range.
    fn range<T: Copy>(&mut self, field: &str, value: T, ok: bool, message: String) -> T {
        if !ok {
            self.err(field, message);
        }
        value
    }
}

/// One server: its name, its transport, then its capacity, pacing and connections, each
/// section checking its own fields. `None` when any field was wrong (all are reported).
fn server(
    path: &str,
    s: ServerSection,
    auth: bool,
    errors: &mut Vec<ConfigError>,
) -> Option<ServerConfig> {
    let before = errors.len();
    let mut f = Fields { path, errors };
    if !is_valid_server_name(&s.name) {
        f.err(
            "name",
            format!(
                "{:?} is not a valid server name (1-64 letters, digits, - and _, no \"__\", not starting or ending with _)",
                s.name
            ),
        );
    }
    let transport = match s.kind {
        ServerKind::External | ServerKind::Http => http_transport(&mut f, &s),
        ServerKind::Stdio => stdio_transport(&mut f, &s),
    };
    // Capacity.
    let timeout = s.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    let timeout = f.range(
        "timeout",
        timeout,
        !timeout.is_zero() && timeout <= MAX_TIMEOUT,
        format!("{timeout:?} is out of range (more than 0, at most 24h)"),
    );
    let concurrency = s.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    let concurrency = f.range(
        "concurrency",
        concurrency,
        (1..=MAX_CONCURRENCY).contains(&concurrency),
        format!("{concurrency} is out of range (1 to {MAX_CONCURRENCY})"),
    );
    let max_in_flight = s.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    let max_in_flight = f.range(
        "maxInFlight",
        max_in_flight,
        (1..=1_000_000).contains(&max_in_flight),
        format!("{max_in_flight} is out of range (1 to 1000000)"),
    );
    let max_queued = s.max_queued.unwrap_or(DEFAULT_MAX_QUEUED);
    let max_queued = f.range(
        "maxQueued",
        max_queued,
        (1..=MAX_MAX_QUEUED).contains(&max_queued),
        format!("{max_queued} is out of range (1 to {MAX_MAX_QUEUED})"),
    );
    let max_result_bytes = s.max_result_bytes.map_or(DEFAULT_MAX_RESULT_BYTES, |b| b.0);
    let max_result_bytes = f.range(
        "maxResultBytes",
        max_result_bytes,
        (1..=MAX_MAX_RESULT_BYTES).contains(&max_result_bytes),
        format!("{max_result_bytes} bytes is out of range (1 byte to 1GiB)"),
    );
    let ack_wait = s.ack_wait.map_or(DEFAULT_ACK_WAIT, |d| d.0);
    let ack_wait = f.range(
        "ackWait",
        ack_wait,
        ack_wait >= Duration::from_secs(1) && ack_wait <= MAX_TIMEOUT,
        format!("{ack_wait:?} is out of range (1s to 24h)"),
    );
    let replicas = s.replicas.unwrap_or(1);
    let replicas = f.range(
        "replicas",
        replicas,
        replicas > 0,
        "0 replicas (at least 1; use autoScale.min: 0 to scale to zero)".into(),
    );
    let autoscale = s.auto_scale.map(|a| autoscale(&mut f, a));
    // Pacing.
    let rate_limit = s.rate_limit.map(|r| rate(&mut f, "rateLimit", r));
    let tool_rate_limits: BTreeMap<_, _> = s
        .tool_rate_limits
        .into_iter()
        .map(|(tool, r)| {
            let limit = rate(&mut f, &format!("toolRateLimits.{tool}"), r);
            (tool, limit)
        })
        .collect();
    let circuit_breaker = s.circuit_breaker.map(|c| circuit_breaker(&mut f, c));
    let retry = retry(&mut f, s.retry);
    let lane = match s.priority {
        Some(Priority::High) => Lane::High,
        Some(Priority::Medium | Priority::Normal) | None => Lane::Normal,
        Some(Priority::Low) => Lane::Low,
    };
    let tasks = TaskPolicy {
        mode: s.tasks.unwrap_or(TaskMode::Optional),
        after: s.task_after.map_or(Duration::from_secs(10), |d| d.0),
        tools: s.tool_tasks,
    };
    // Connections and health.
    let load_balancing = s.load_balancing.unwrap_or_default();
    let pool = s.pool.map_or(PoolConfig::default(), |p| PoolConfig {
        max_connections: p.max_connections.unwrap_or(1),
        idle_timeout: p.idle_timeout.map_or(Duration::from_secs(300), |d| d.0),
    });
    f.range(
        "pool.maxConnections",
        pool.max_connections,
        (1..=64).contains(&pool.max_connections),
        format!("{} is out of range (1 to 64)", pool.max_connections),
    );
    let fairness = fairness(&mut f, s.fairness, auth);
    let health = super::observe::health(path, s.health, errors);
    (errors.len() == before).then_some(ServerConfig {
        name: s.name,
        transport,
        lane,
        timeout,
        concurrency,
        max_in_flight,
        max_queued,
        max_result_bytes,
        replicas,
        autoscale,
        retry,
        ack_wait,
        rate_limit,
        tool_rate_limits,
        circuit_breaker,
        tasks,
        health,
        load_balancing,
        pool,
        fairness,
    })
}

fn fairness(
    f: &mut Fields<'_>,
    section: Option<super::raw::FairnessSection>,
    auth: bool,
) -> super::Fairness {
    let section = section.unwrap_or_default();
    for (principal, weight) in &section.weights {
        if !(weight.is_finite() && *weight > 0.0 && *weight <= 1000.0) {
            f.err(
                &format!("fairness.weights.{principal}"),
                format!("{weight} is out of range (more than 0, at most 1000)"),
            );
        }
    }
    super::Fairness {
        by_principal: match section.by {
            Some(super::raw::FairnessBy::Principal) => true,
            Some(super::raw::FairnessBy::None) => false,
            None => auth,
        },
        weights: section.weights,
    }
}

/// An HTTP server's transport: its endpoint or endpoints, and the headers it is sent (its
/// own, and those its `auth` stands for). Nothing of a stdio server's.
fn http_transport(f: &mut Fields<'_>, s: &ServerSection) -> Transport {
    if s.command.is_some() {
        f.err(
            "command",
            "only stdio servers have a command (set type: stdio, or remove command)",
        );
    }
    if !s.args.is_empty() {
        f.err("args", "only stdio servers have args");
    }
    if !s.env.is_empty() {
        f.err(
            "env",
            "only stdio servers have env (send credentials to an HTTP server with auth or headers)",
        );
    }
    let mut endpoints = Vec::new();
    match (&s.endpoint, s.endpoints.is_empty()) {
        (None, true) => f.err(
            "endpoint",
            "missing: an HTTP server needs the URL of its MCP endpoint (or endpoints: [{url: ...}])",
        ),
        (Some(_), false) => f.err("endpoints", "set endpoint or endpoints, not both"),
        (Some(url), true) => {
            if let Err(message) = check_http_url(url) {
                f.err("endpoint", message);
            }
            endpoints.push(Endpoint {
                url: url.clone(),
                weight: 1,
                role: EndpointRole::Primary,
            });
        }
        (None, false) => {
            for (i, e) in s.endpoints.iter().enumerate() {
                if let Err(message) = check_http_url(&e.url) {
                    f.err(&format!("endpoints[{i}].url"), message);
                }
                let weight = e.weight.unwrap_or(1);
                if weight == 0 {
                    f.err(&format!("endpoints[{i}].weight"), "0 (at least 1)");
                }
                endpoints.push(Endpoint {
                    url: e.url.clone(),
                    weight,
                    role: e.role.unwrap_or_default(),
                });
            }
            if !endpoints.iter().any(|e| e.role == EndpointRole::Primary) {
                f.err(
                    "endpoints",
                    "no primary endpoint (mark at least one role: primary)",
                );
            }
        }
    }
    let mut headers = BTreeMap::new();
    let secret = |f: &mut Fields<'_>, field: &str, value: &str| match Secret::parse(value) {
        Ok(secret) => Some(secret),
        Err(message) => {
            f.err(field, message);
            None
        }
    };
    for (name, value) in &s.headers {
        if let Some(value) = secret(f, &format!("headers.{name}"), value) {
            headers.insert(name.clone(), value);
        }
    }
    match &s.auth {
        None => {}
        Some(AuthSpec::Shorthand(shorthand)) => {
            if let Some(var) = shorthand.env_var(&s.name) {
                headers.insert("Authorization".into(), bearer(Secret::env(&var)));
            }
        }
        Some(AuthSpec::Explicit {
            bearer: token,
            headers: extra,
        }) => {
            if let Some(token) = token.as_deref().and_then(|t| secret(f, "auth.bearer", t)) {
                headers.insert("Authorization".into(), bearer(token));
            }
            for (name, value) in extra {
                if let Some(value) = secret(f, &format!("auth.headers.{name}"), value) {
                    headers.insert(name.clone(), value);
                }
            }
        }
    }
    Transport::Http { endpoints, headers }
}

/// A stdio server's transport: the program, its arguments and environment. Nothing of an
/// HTTP server's.
fn stdio_transport(f: &mut Fields<'_>, s: &ServerSection) -> Transport {
    if !s.endpoints.is_empty() || s.load_balancing.is_some() || s.pool.is_some() {
        f.err(
            "endpoints",
            "a stdio server has no endpoints, loadBalancing or pool (set type: http)",
        );
    }
    if s.endpoint.is_some() {
        f.err(
            "endpoint",
            "a stdio server has no endpoint (set type: http, or remove endpoint)",
        );
    }
    if s.auth.is_some() {
        f.err(
            "auth",
            "auth applies to HTTP servers; give a stdio server its credentials with env: {NAME: \"${env:NAME}\"}",
        );
    }
    if !s.headers.is_empty() {
        f.err("headers", "only HTTP servers have headers");
    }
    let command = match &s.command {
        Some(c) if !c.trim().is_empty() => c.clone(),
        Some(_) => {
            f.err("command", "empty: name the program to start");
            String::new()
        }
        None => {
            f.err(
                "command",
                "missing: a stdio server needs the program to start",
            );
            String::new()
        }
    };
    let mut env = BTreeMap::new();
    for (name, value) in &s.env {
        if !is_env_name(name) {
            f.err(
                &format!("env.{name}"),
                format!("{name:?} is not an environment variable name"),
            );
        }
        match Secret::parse(value) {
            Ok(secret) => {
                env.insert(name.clone(), secret);
            }
            Err(message) => f.err(&format!("env.{name}"), message),
        }
    }
    Transport::Stdio {
        command,
        args: s.args.clone(),
        env,
    }
}

fn autoscale(f: &mut Fields<'_>, a: AutoScaleSection) -> AutoScale {
    if a.min > a.max {
        f.err(
            "autoScale.min",
            format!("{} is above autoScale.max {}", a.min, a.max),
        );
    }
    if a.max == 0 {
        f.err("autoScale.max", "0 (at least 1)");
    }
    let target_cpu_percent = a.target_cpu.as_deref().and_then(|t| {
        let percent = parse_percent(t);
        if percent.is_none() {
            f.err(
                "autoScale.targetCPU",
                format!("{t:?} is not a percentage from 1% to 100% (like \"70%\")"),
            );
        }
        percent
    });
    let target_queue_depth = a.target_queue_depth.unwrap_or(100);
    if target_queue_depth == 0 {
        f.err("autoScale.targetQueueDepth", "0 (at least 1)");
    }
    AutoScale {
        min: a.min,
        max: a.max,
        target_cpu_percent,
        target_queue_depth,
    }
}

fn rate(f: &mut Fields<'_>, field: &str, r: RateLimitSection) -> RateLimit {
    if !(r.per_second > 0.0 && r.per_second <= 1_000_000.0) {
        f.err(
            &format!("{field}.perSecond"),
            format!(
                "{} is out of range (more than 0, at most 1000000)",
                r.per_second
            ),
        );
    }
    let burst = r.burst.unwrap_or(1);
    if burst == 0 {
        f.err(&format!("{field}.burst"), "0 (at least 1)");
    }
    RateLimit {
        per_second: r.per_second,
        burst,
    }
}

fn circuit_breaker(f: &mut Fields<'_>, c: CircuitBreakerSection) -> CircuitBreaker {
    let breaker = CircuitBreaker {
        failure_threshold: c.failure_threshold.unwrap_or(5),
        reset_timeout: c.reset_timeout.map_or(Duration::from_secs(30), |d| d.0),
    };
    if breaker.failure_threshold == 0 {
        f.err("circuitBreaker.failureThreshold", "0 (at least 1)");
    }
    if breaker.reset_timeout.is_zero() {
        f.err("circuitBreaker.resetTimeout", "0 (at least 1ms)");
    }
    breaker
}

fn retry(f: &mut Fields<'_>, section: Option<RetrySection>) -> RetryConfig {
    let defaults = RetryConfig::default();
    let retry = section.map_or(defaults, |r| RetryConfig {
        max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts),
        initial: r.initial.map_or(defaults.initial, |d| d.0),
        max: r.max.map_or(defaults.max, |d| d.0),
    });
    if !(1..=MAX_ATTEMPTS).contains(&retry.max_attempts) {
        f.err(
            "retry.maxAttempts",
            format!(
                "{} is out of range (1 to {MAX_ATTEMPTS}; 1 means no retries)",
                retry.max_attempts
            ),
        );
    }
    if retry.initial.is_zero() {
        f.err("retry.initial", "0 (at least 1ms)");
    }
    if retry.max < retry.initial {
        f.err(
            "retry.max",
            format!("{:?} is below retry.initial {:?}", retry.max, retry.initial),
        );
    }
    retry
}

fn bearer(token: Secret) -> Secret {
    token.prefixed("Bearer ")
}

fn parse_percent(text: &str) -> Option<u8> {
    let n: u8 = text.trim().strip_suffix('%')?.trim().parse().ok()?;
    (1..=100).contains(&n).then_some(n)
}
