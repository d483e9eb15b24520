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
