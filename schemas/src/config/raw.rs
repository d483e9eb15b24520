//! The config file exactly as written. Unknown keys are errors, so a typo never passes silently.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, de};

use super::{
    ConfigError, TaskMode,
    values::{ByteSizeText, DurationText},
};

/// `mcp-infrastructure.yaml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "mcpq config (mcp-infrastructure.yaml)")]
pub struct ConfigFile {
    /// Config format version: "1.0".
    pub version: String,
    /// Where NATS is. Absent: `mcpq up` starts a local nats-server; other commands use
    /// nats://127.0.0.1:4222.
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// Who may call the dispatcher and what each caller may call. Absent: no authentication,
    /// and the dispatcher listens on loopback only.
    #[serde(default)]
    pub auth: Option<super::auth::AuthSection>,
    /// Webhooks told when a server goes down and when it comes back.
    #[serde(default)]
    pub alerts: Vec<super::observe::AlertSection>,
    /// Retention of the audit stream (one record per call).
    #[serde(default)]
    pub audit: Option<super::observe::AuditSection>,
    /// Trace export (OTLP). Absent: none.
    #[serde(default)]
    pub telemetry: Option<super::observe::TelemetrySection>,
    /// Signed HTTP callbacks when jobs end (Standard Webhooks). Absent: no callbacks.
    #[serde(default)]
    pub callbacks: Option<super::callbacks::CallbacksSection>,
    /// The upstream MCP servers.
    pub servers: Vec<ServerSection>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsSection {
    /// NATS URL, e.g. nats://nats.mcpq.svc:4222, or a list of seed URLs of a cluster.
    #[serde(default)]
    pub url: Option<NatsUrls>,
    /// Replicas of mcpq's streams and buckets: 1, 3 or 5 (default 1).
    #[serde(default)]
    pub replicas: Option<usize>,
    /// How long job results are kept, e.g. "24h" (default 24h).
    #[serde(default)]
    pub result_ttl: Option<DurationText>,
    /// How long the record of a synchronous call that completed is kept, e.g. "15m" (the
    /// default). Only calls that were slow (1 s or more), retried or held get a record at all;
    /// their callers had their answer. Failed calls, and jobs submitted for later, keep theirs
    /// for `resultTtl`.
    #[serde(default)]
    pub call_record_ttl: Option<DurationText>,
    /// How long JetStream remembers a job's `Nats-Msg-Id` to drop a second publish of it, e.g.
    /// "2m" (the default). Idempotency keys hold for the record's life (`resultTtl`) whatever
    /// this is; the window only catches pipelines publishing the same job twice at once.
    #[serde(default)]
    pub duplicate_window: Option<DurationText>,
    /// A secret every dispatcher and worker shares, e.g. "${file:/run/secrets/mcpq-signing}":
    /// it signs the jobs dispatchers publish for authenticated callers, seals the `requestState`
    /// of questions, and derives authenticated callers' idempotent job ids. Absent: one is
    /// generated and kept in KV `mcpq_keys` (let no pipeline read that bucket).
    #[serde(default)]
    pub signing_key: Option<String>,
    /// A NATS credentials file (`.creds`: user JWT and nkey seed).
    #[serde(default)]
    pub creds: Option<String>,
    /// A file holding an nkey seed (`SU...`).
    #[serde(default)]
    pub nkey: Option<String>,
    /// User name; may use ${env:NAME} and ${file:PATH}.
    #[serde(default)]
    pub user: Option<String>,
    /// Password (with `user`); may use ${env:NAME} and ${file:PATH}.
    #[serde(default)]
    pub password: Option<String>,
    /// TLS to NATS: a CA to trust and/or a client certificate.
    #[serde(default)]
    pub tls: Option<NatsTlsSection>,
}

/// One NATS URL, or the seed URLs of a cluster (any one of them lets the client find the rest).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum NatsUrls {
    One(String),
    Seeds(Vec<String>),
}

impl NatsUrls {
    pub fn list(&self) -> Vec<String> {
        match self {
            NatsUrls::One(url) => url.split(',').map(|u| u.trim().to_string()).collect(),
            NatsUrls::Seeds(urls) => urls.clone(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsTlsSection {
    /// PEM file of the CA that signed the server's certificate.
    #[serde(default)]
    pub ca: Option<String>,
    /// PEM client certificate (with `key`), for servers that verify clients.
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM private key of `cert`.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSection {
    /// Server name: letters, digits, - and _ (no "__"); a NATS subject token.
    pub name: String,
    /// `external` or `http`: MCP streamable HTTP at `endpoint`. `stdio`: a child process.
    #[serde(rename = "type")]
    pub kind: ServerKind,
    /// The upstream's MCP URL (http and external servers).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Several replicas of the upstream instead of one `endpoint`.
    #[serde(default)]
    pub endpoints: Vec<EndpointSection>,
    /// How calls are spread over `endpoints`: roundRobin (default), leastConnections, priority.
    #[serde(default)]
    pub load_balancing: Option<LoadBalancing>,
    /// MCP sessions per endpoint a worker keeps.
    #[serde(default)]
    pub pool: Option<PoolSection>,
    /// Credentials for an HTTP upstream: a shorthand or explicit headers.
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Default priority lane of this server's jobs (medium = normal).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Worker processes to run for this server when deployed.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Autoscaling bounds for this server's workers when deployed.
    #[serde(default)]
    pub auto_scale: Option<AutoScaleSection>,
    /// The program to start (stdio servers).
    #[serde(default)]
    pub command: Option<String>,
    /// Its arguments (stdio servers).
    #[serde(default)]
    pub args: Vec<String>,
    /// Its environment (stdio servers); values may use ${env:NAME} and ${file:PATH}.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra HTTP headers (http servers); values may use ${env:NAME} and ${file:PATH}.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest time one upstream call may take, e.g. "30s" (default 30s).
    #[serde(default)]
    pub timeout: Option<DurationText>,
    /// Upstream calls in flight at once per worker process (default 16).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Jobs in flight at once across all of this server's workers (default 10000).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// How long a job held by a worker that died waits before another worker gets it, e.g.
    /// "30s" (default 30s). Live workers extend it with progress acks while they work.
    #[serde(default)]
    pub ack_wait: Option<DurationText>,
    /// Jobs waiting in this server's queue at most (default 100000); a job beyond it is
    /// refused at once with `queue_full`.
    #[serde(default)]
    pub max_queued: Option<u64>,
    /// Largest upstream result kept, e.g. "32MiB" (the default); a larger one ends the job
    /// `failed` with `too_large`, and the call is not made again.
    #[serde(default)]
    pub max_result_bytes: Option<ByteSizeText>,
    /// Stop calling an upstream that keeps failing: its jobs stay queued while open.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerSection>,
    /// Calls per second to this upstream, for all its workers together; calls over it wait.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSection>,
    /// Calls per second to single tools (by upstream tool name), on top of `rateLimit`.
    #[serde(default)]
    pub tool_rate_limits: BTreeMap<String, RateLimitSection>,
    /// Fair shares of worker slots between principals, so that one principal's backlog delays
    /// another's next call by about one call. On by default when `auth` is set.
    #[serde(default)]
    pub fairness: Option<FairnessSection>,
    /// Retries of failed calls (default: 3 attempts, backoff from 200ms up to 30s).
    #[serde(default)]
    pub retry: Option<RetrySection>,
    /// MCP Tasks for clients that declare the extension: `never`, `optional` (a call not done
    /// within `taskAfter` becomes a task) or `always` (default optional).
    #[serde(default)]
    pub tasks: Option<TaskMode>,
    /// How long an `optional` call may run before it becomes a task, e.g. "10s" (default 10s).
    #[serde(default)]
    pub task_after: Option<DurationText>,
    /// `tasks` for single tools (by upstream tool name), overriding the server's.
    #[serde(default)]
    pub tool_tasks: BTreeMap<String, TaskMode>,
    /// Active health checks: workers ping the upstream (default every 15s).
    #[serde(default)]
    pub health: Option<super::observe::HealthSection>,
}

/// One replica of an HTTP upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSection {
    /// Its MCP URL.
    pub url: String,
    /// Its share of the calls under roundRobin (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// `primary` (default) or `secondary`: under priority, secondaries get calls only while no
    /// primary is healthy.
    #[serde(default)]
    pub role: Option<EndpointRole>,
}

/// How calls are spread over a server's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancing {
    /// In turn, in proportion to the weights.
    #[default]
    RoundRobin,
    /// To the endpoint with the fewest calls in flight (relative to its weight).
    LeastConnections,
    /// Primaries in turn; secondaries only while no primary is healthy.
    Priority,
}

/// An endpoint's role under `loadBalancing: priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointRole {
    #[default]
    Primary,
    Secondary,
}

/// MCP sessions a worker keeps per endpoint.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PoolSection {
    /// Sessions (each its own HTTP connections) per endpoint, calls spread over them (default 1).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// A session unused this long is closed, e.g. "5m" (the default).
    #[serde(default)]
    pub idle_timeout: Option<DurationText>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreakerSection {
    /// Retryable failures in a row that open the circuit (default 5).
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    /// How long it stays open before one probe call, e.g. "30s" (default 30s).
    #[serde(default)]
    pub reset_timeout: Option<DurationText>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSection {
    /// Calls per second, e.g. 10 or 0.5.
    pub per_second: f64,
    /// Calls that may go at once after a quiet spell (default 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySection {
    /// Attempts in all, the first included (1 = no retries).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Backoff ceiling before the second attempt, e.g. "200ms"; it doubles per attempt.
    #[serde(default)]
    pub initial: Option<DurationText>,
    /// Largest backoff ceiling, e.g. "30s".
    #[serde(default)]
    pub max: Option<DurationText>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// MCP streamable HTTP (the guide's name for a remote server).
    External,
    /// MCP streamable HTTP.
    Http,
    /// A child process speaking MCP on stdin/stdout.
    Stdio,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Medium,
    Normal,
    Low,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AutoScaleSection {
    pub min: u32,
    pub max: u32,
    /// Target CPU use, e.g. "70%".
    #[serde(default, rename = "targetCPU")]
    pub target_cpu: Option<String>,
    /// Jobs waiting or held per worker replica that the autoscaler aims at (default 100).
    #[serde(default)]
    pub target_queue_depth: Option<u64>,
}

/// How a worker authenticates to an HTTP upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthSpec {
    Shorthand(AuthShorthand),
    /// `{bearer: "${env:X}"}` and/or `{headers: {Name: value}}`.
    Explicit {
        bearer: Option<String>,
        headers: BTreeMap<String, String>,
    },
}

/// The guide's shorthands. Each reads a bearer token from an environment variable named after
/// the server: `MCPQ_<SERVER>_OAUTH_TOKEN`, `MCPQ_<SERVER>_TOKEN`, `MCPQ_<SERVER>_BOT_TOKEN`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AuthShorthand {
    None,
    Oauth,
    Token,
    BotToken,
}

impl AuthShorthand {
    const NAMES: &'static str = "none, oauth, token, bot-token";

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "oauth" => Self::Oauth,
            "token" => Self::Token,
            "bot-token" => Self::BotToken,
            _ => return None,
        })
    }

    /// The environment variable holding the token for `server`, if this shorthand needs one.
    pub fn env_var(self, server: &str) -> Option<String> {
        let suffix = match self {
            Self::None => return None,
            Self::Oauth => "OAUTH_TOKEN",
            Self::Token => "TOKEN",
            Self::BotToken => "BOT_TOKEN",
        };
        let server: String = server
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        Some(format!("MCPQ_{server}_{suffix}"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthExplicit {
    #[serde(default)]
    bearer: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for AuthSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = AuthSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "one of {} or a map with bearer and/or headers",
                    AuthShorthand::NAMES
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AuthSpec, E> {
                AuthShorthand::parse(s).map(AuthSpec::Shorthand).ok_or_else(|| {
                    E::custom(format!(
                        "unknown auth {s:?} (expected one of {}, or {{bearer: \"${{env:NAME}}\"}})",
                        AuthShorthand::NAMES
                    ))
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<AuthSpec, A::Error> {
                let e = AuthExplicit::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(AuthSpec::Explicit {
                    bearer: e.bearer,
                    headers: e.headers,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for AuthSpec {
    fn schema_name() -> Cow<'static, str> {
        "AuthSpec".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A shorthand (the token comes from MCPQ_<SERVER>_OAUTH_TOKEN, MCPQ_<SERVER>_TOKEN or MCPQ_<SERVER>_BOT_TOKEN) or explicit credentials.",
            "oneOf": [
                { "type": "string", "enum": ["none", "oauth", "token", "bot-token"] },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "bearer": { "type": "string", "description": "Bearer token, e.g. \"${env:GITHUB_TOKEN}\"" },
                        "headers": { "type": "object", "additionalProperties": { "type": "string" } }
                    }
                }
            ]
        })
    }
}

/// Parses YAML into the raw config; the error names the field path.
pub(super) fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        ConfigError::field(
            if path == "." {
                "(top level)".into()
            } else {
                path
            },
            inner,
        )
    })
}

/// `servers[].fairness`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FairnessSection {
    /// `principal`: worker slots are shared between principals (round robin by weight);
    /// `none`: jobs run in the order they were queued. Default: `principal` when `auth` is set.
    #[serde(default)]
    pub by: Option<FairnessBy>,
    /// Shares by principal, 1 when absent: `{alice: 3}` gives the API key `alice` (principal
    /// `key:alice`) three slots for every one of another principal's. Keys are principals as
    /// mcpq names them (`key:alice`) or API key names.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
}

/// What fair shares are taken between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FairnessBy {
    Principal,
    None,
}
