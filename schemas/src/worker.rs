//! Worker heartbeats: one entry per live worker and server in the `mcpq_workers` KV bucket
//! (key `<server>.<worker>`), renewed every few seconds and expiring when a worker dies. They
//! split global rate limits and show operators each worker's circuit state.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One worker's heartbeat for one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerBeat {
    pub v: u32,
    pub worker_id: String,
    pub server: String,
    /// This worker's circuit breaker for the server.
    pub circuit: CircuitState,
    pub at_ms: u64,
    /// The upstream as this worker's health checks see it; absent before the first ping, or
    /// with health checks off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    /// What this worker did for the server since it started: `mcpq status` reads rates and
    /// latencies from the difference between two beats.
    #[serde(default)]
    pub stats: ServerStats,
    /// Where this worker serves `/metrics`, `/healthz` and `/readyz` (`host:port`), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// Upper bounds, in milliseconds, of the latency buckets in [`ServerStats`]; one more bucket
/// holds everything slower.
pub const LATENCY_BOUNDS_MS: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// One worker's counts for one server since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerStats {
    /// Jobs ended (any outcome).
    pub ended: u64,
    /// Jobs that ended other than completed.
    pub failed: u64,
    /// Jobs ended per latency bucket (submission to end), not cumulative; one longer than
    /// [`LATENCY_BOUNDS_MS`].
    #[serde(default)]
    pub latency: Vec<u64>,
    /// Calls running on the upstream now.
    #[serde(default)]
    pub in_flight: u64,
}

impl ServerStats {
    /// Counts one ended job.
    pub fn record(&mut self, latency_ms: u64, completed: bool) {
        self.ended += 1;
        if !completed {
            self.failed += 1;
        }
        if self.latency.len() != LATENCY_BOUNDS_MS.len() + 1 {
            self.latency = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        }
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| latency_ms <= *bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket] += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CircuitState {
    /// Calls flow (also: no breaker configured).
    Closed,
    /// The upstream kept failing: its jobs wait in the queue.
    Open,
    /// One probe call decides.
    HalfOpen,
    #[serde(other)]
    Unknown,
}
