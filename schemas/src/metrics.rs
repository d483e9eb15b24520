//! The Prometheus metrics mcpq exports, named once. Names and labels are a contract with
//! dashboards, alert rules and autoscalers (docs/operations.md lists them, and a test checks
//! that list against these constants). Label values are bounded: servers and tools from the
//! catalog (an unknown tool is `other`), lanes, outcomes and error kinds from closed sets,
//! principals from the config.

/// Counter `{server,tool,outcome}`: jobs ended. Outcomes: [`OUTCOMES`].
pub const CALLS_TOTAL: &str = "mcpq_calls_total";
/// Histogram `{server,tool}`: submission to end, in seconds.
pub const CALL_DURATION: &str = "mcpq_call_duration_seconds";
/// Histogram `{server,tool}`: the upstream call alone, in seconds.
pub const UPSTREAM_DURATION: &str = "mcpq_upstream_duration_seconds";
/// Histogram `{server,lane}`: submission to the first attempt, in seconds.
pub const QUEUE_WAIT: &str = "mcpq_queue_wait_seconds";
/// Counter `{server,kind}`: attempts that failed, by error kind.
pub const ATTEMPTS_FAILED: &str = "mcpq_attempts_failed_total";
/// Counter `{server}`: jobs written to the dead-letter stream.
pub const DEAD_LETTERS: &str = "mcpq_dead_letters_total";
/// Counter `{server}`: attempts that will be tried again.
pub const RETRIES: &str = "mcpq_retries_total";
/// Gauge `{server,lane}`: jobs waiting in a lane (its consumer's `num_pending`).
pub const QUEUE_DEPTH: &str = "mcpq_queue_depth";
/// Gauge `{server,lane}`: jobs held by workers, not yet acknowledged (`num_ack_pending`).
pub const QUEUE_ACK_PENDING: &str = "mcpq_queue_ack_pending";
/// Gauge `{server}`: dead letters kept for the server.
pub const DLQ_DEPTH: &str = "mcpq_dlq_depth";
/// Gauge `{server}`: the most jobs the server's queue holds (`maxQueued`); beyond it calls are
/// refused with `queue_full`.
pub const QUEUE_MAX: &str = "mcpq_queue_max";
/// Gauge `{server}`: upstream calls running in this worker process.
pub const IN_FLIGHT: &str = "mcpq_in_flight";
/// Histogram `{server}`: time a job waited for the rate limit, in seconds.
pub const RATE_LIMIT_WAIT: &str = "mcpq_rate_limit_wait_seconds";
/// Gauge `{server}`: this worker's circuit breaker, 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "mcpq_circuit_state";
/// Gauge `{server}`: 1 when this worker's health checks find the upstream up, 0 when down.
pub const UPSTREAM_UP: &str = "mcpq_upstream_up";
/// Counter `{endpoint,status}`: HTTP requests the dispatcher answered.
pub const REQUESTS_TOTAL: &str = "mcpq_requests_total";
/// Counter `{reason}`: requests refused for their credentials.
pub const AUTH_FAILURES: &str = "mcpq_auth_failures_total";
/// Counter `{outcome}`: callback deliveries by dispatchers — `delivered`, `retried`, `gone`
/// (the target answered 410), `dead` (never landed within `callbacks.retryFor`), `refused` (a
/// target that may not be called).
pub const CALLBACKS_TOTAL: &str = "mcpq_callbacks_total";
/// Gauge `{principal,limit}`: a principal's use of a limit (`calls_per_minute`,
/// `max_in_flight`) as last seen by this dispatcher.
pub const QUOTA_USED: &str = "mcpq_quota_used";

/// Counter `{server}`: audit entries a worker dropped because NATS had not taken its earlier
/// ones for a while (the calls themselves went on).
pub const AUDIT_DROPPED: &str = "mcpq_audit_dropped_total";

/// Every `outcome` of [`CALLS_TOTAL`].
pub const OUTCOMES: [&str; 6] = [
    "completed",
    "failed",
    "dead",
    "cancelled",
    "expired",
    "too_large",
];

/// The `tool` label of a name the catalog does not know.
pub const OTHER: &str = "other";

/// Bucket bounds, in seconds, of the duration histograms.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Every metric name mcpq defines, for the docs check.
pub const ALL: [&str; 21] = [
    CALLS_TOTAL,
    CALL_DURATION,
    UPSTREAM_DURATION,
    QUEUE_WAIT,
    ATTEMPTS_FAILED,
    DEAD_LETTERS,
    RETRIES,
    QUEUE_DEPTH,
    QUEUE_ACK_PENDING,
    DLQ_DEPTH,
    QUEUE_MAX,
    IN_FLIGHT,
    RATE_LIMIT_WAIT,
    CIRCUIT_STATE,
    UPSTREAM_UP,
    REQUESTS_TOTAL,
    AUTH_FAILURES,
    QUOTA_USED,
    AUDIT_DROPPED,
    CALLBACKS_TOTAL,
    "process_resident_memory_bytes",
];
