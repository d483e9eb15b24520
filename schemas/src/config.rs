//! The config file, `mcp-infrastructure.yaml`: raw types as written (unknown keys rejected), and
//! the validated [`Config`] that the rest of mcpq uses.
//!
//! Loading goes raw → validated once. Every error names the field path and the bad value.

mod auth;
mod callbacks;
mod observe;
mod raw;
mod secret;
mod validate;
mod values;

use std::{collections::BTreeMap, path::Path, time::Duration};

pub use auth::{
    Access, ApiKey, AuthConfig, JwksSource, JwtConfig, JwtRule, Limits, Pattern, PatternError,
};
pub use callbacks::{CallbacksConfig, secret_bytes};
pub use observe::{AlertKind, AlertTarget, AuditConfig, HealthConfig, TelemetryConfig};
pub use raw::{
    AuthShorthand, AuthSpec, ConfigFile, EndpointRole, LoadBalancing, Priority, ServerKind,
};
pub use secret::{ReferenceError, Secret, SecretError};

use crate::job::Lane;

/// The NATS URL mcpq uses when the config names none (and where `mcpq up` starts its own server).
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats: NatsConfig,
    /// `None`: no authentication (loopback listeners only).
    pub auth: Option<AuthConfig>,
    /// Webhooks told when servers go down and come back.
    pub alerts: Vec<AlertTarget>,
    /// The audit stream's retention.
    pub audit: AuditConfig,
    /// Trace export.
    pub telemetry: TelemetryConfig,
    /// Signed callbacks when jobs end.
    pub callbacks: CallbacksConfig,
    pub servers: Vec<ServerConfig>,
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The NATS URL, or a cluster's seed URLs separated by commas; `None` means "start a local
    /// nats-server" for `mcpq up`, and [`DEFAULT_NATS_URL`] for everything else.
    pub url: Option<String>,
    /// Stream and bucket replicas (1 on one machine, 3 on a cluster).
    pub replicas: usize,
    /// How long job records (results) are kept.
    pub result_ttl: Duration,
    /// The job streams' duplicate window (`Nats-Msg-Id`).
    pub duplicate_window: Duration,
    /// How long the record of a synchronous call that completed is kept (at most `result_ttl`).
    pub call_record_ttl: Duration,
    /// How mcpq proves who it is to NATS, and TLS.
    pub credentials: NatsCredentials,
    /// The deployment's signing key, as configured (`None`: generated, kept in KV).
    pub signing_key: Option<Secret>,
}

/// How mcpq authenticates to NATS (at most one of `creds`, `nkey`, `user`), and TLS.
#[derive(Debug, Clone, Default)]
pub struct NatsCredentials {
    /// A `.creds` file.
    pub creds: Option<String>,
    /// A file holding an nkey seed.
    pub nkey: Option<String>,
    pub user: Option<Secret>,
    pub password: Option<Secret>,
    pub tls_ca: Option<String>,
    /// Client certificate and key files.
    pub tls_client: Option<(String, String)>,
}

impl NatsConfig {
    pub fn url_or_default(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_NATS_URL)
    }
}

/// One upstream MCP server, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub transport: Transport,
    /// The lane jobs go to when the caller does not choose one.
    pub lane: Lane,
    /// How long one upstream call may take.
    pub timeout: Duration,
    /// Upstream calls in flight at once, per worker process.
    pub concurrency: usize,
    /// Jobs in flight at once across all workers of this server (the consumer's MaxAckPending).
    pub max_in_flight: usize,
    /// Jobs waiting in this server's queue at most (the stream's limit, discard new).
    pub max_queued: u64,
    /// Largest upstream result kept; a larger one fails the job with `too_large`.
    pub max_result_bytes: u64,
    /// Worker processes to run for this server (deployment hint).
    pub replicas: u32,
    pub autoscale: Option<AutoScale>,
    /// How failed calls are retried.
    pub retry: RetryConfig,
    /// How long a job held by a worker that stopped answering waits before redelivery; workers
    /// send progress acks every third of it while they work.
    pub ack_wait: Duration,
    /// Calls per second to this upstream, shared by all of its live workers.
    pub rate_limit: Option<RateLimit>,
    /// Calls per second to single tools of this upstream, shared the same way.
    pub tool_rate_limits: BTreeMap<String, RateLimit>,
    /// When to stop calling an upstream that keeps failing.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// When calls from clients that declare MCP Tasks become tasks.
    pub tasks: TaskPolicy,
    /// How workers check that the upstream is up.
    pub health: HealthConfig,
    /// How calls are spread over an HTTP server's endpoints.
    pub load_balancing: LoadBalancing,
    /// MCP sessions a worker keeps per endpoint.
    pub pool: PoolConfig,
    /// Fair shares between principals.
    pub fairness: Fairness,
}

/// Fair shares of a server's worker slots between principals (`servers[].fairness`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fairness {
    /// Jobs of authenticated callers wait in a queue per principal, served round robin.
    pub by_principal: bool,
    /// Shares by principal (as written in the config: `key:alice` or `alice`); 1 when absent.
    pub weights: BTreeMap<String, f64>,
}

impl Fairness {
    /// The share of the principal whose queue is `tenant` (a [`crate::names::tenant_token`]).
    pub fn weight_of_tenant(&self, tenant: &str) -> f64 {
        self.weights
            .iter()
            .find(|(name, _)| {
                crate::names::tenant_token(name) == tenant
                    || crate::names::tenant_token(&format!("key:{name}")) == tenant
            })
            .map_or(1.0, |(_, w)| *w)
    }
}

/// One replica of an HTTP upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub url: String,
    pub weight: u32,
    pub role: EndpointRole,
}

/// MCP sessions per endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolConfig {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: 1,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Whether a `tools/call` from a client that declared the MCP Tasks extension becomes a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskMode {
    /// Always a plain result.
    Never,
    /// A plain result, unless the call is not done within `taskAfter`: then a task.
    Optional,
    /// A task at once.
    Always,
}

/// The task rules of one server.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPolicy {
    pub mode: TaskMode,
    /// How long an `optional` call runs before it becomes a task.
    pub after: Duration,
    /// Per-tool modes, by upstream tool name.
    pub tools: BTreeMap<String, TaskMode>,
}

impl TaskPolicy {
    /// The mode for `tool`.
    pub fn mode(&self, tool: &str) -> TaskMode {
        self.tools.get(tool).copied().unwrap_or(self.mode)
    }
}

/// Open after `failure_threshold` retryable failures in a row; probe again after `reset_timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreaker {
    pub failure_threshold: u32,
    pub reset_timeout: Duration,
}

/// A global rate limit: `per_second` calls, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// Retries of one server's failed calls: exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff ceiling before the second attempt.
    pub initial: Duration,
    /// Largest backoff ceiling.
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// How a worker reaches an upstream.
#[derive(Debug, Clone)]
pub enum Transport {
    /// MCP streamable HTTP.
    Http {
        /// At least one; `endpoint:` in the file is one primary.
        endpoints: Vec<Endpoint>,
        /// Headers sent with every request; values may be secrets.
        headers: BTreeMap<String, Secret>,
    },
    /// A child process speaking MCP over stdin/stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, Secret>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoScale {
    pub min: u32,
    pub max: u32,
    pub target_cpu_percent: Option<u8>,
    /// Jobs waiting or held per worker replica the autoscaler aims at.
    pub target_queue_depth: u64,
}

/// Everything wrong with a config file, each naming its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {message}")]
    Field { path: String, message: String },
}

impl ConfigError {
    pub(crate) fn field(path: impl Into<String>, message: impl std::fmt::Display) -> Self {
        ConfigError::Field {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// The field path this error is about (`servers[1].endpoint`), if any.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Field { path, .. } => Some(path),
            ConfigError::Read { .. } => None,
        }
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            }])
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates a config from YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
        let raw = raw::parse(text).map_err(|e| ConfigErrors(vec![e]))?;
        validate::validate(raw)
    }

    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The names of all configured servers, in config order.
    pub fn server_names(&self) -> Vec<&str> {
        self.servers.iter().map(|s| s.name.as_str()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
