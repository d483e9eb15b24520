//! What `mcpq status` prints and the dispatcher's status page shows: per server, its queue,
//! dead letters, workers, circuit and health, and calls per second, error rate and latency over
//! the last moments; with the last 15 minutes of queue depth and throughput for the charts.
//! Served as JSON at the dispatcher's `/status.json`, printed by `mcpq status --once --json`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Lane, worker::CircuitState};

/// Everything the status view shows, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub v: u32,
    pub at_ms: u64,
    /// Seconds the rates and latencies are taken over (0 when only one sample is known yet).
    pub rate_window_secs: f64,
    /// One per configured server, in config order.
    pub servers: Vec<ServerStatus>,
    /// Samples of the last 15 minutes, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryPoint>,
}

/// One server now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    pub server: String,
    /// Each lane's waiting and held jobs.
    pub lanes: Vec<LaneStatus>,
    /// Jobs waiting in every lane.
    pub queued: u64,
    /// Jobs held by workers, not yet acknowledged.
    pub ack_pending: u64,
    /// Dead letters kept.
    pub dlq: u64,
    /// Live workers (heartbeats).
    pub workers: u32,
    /// The worst circuit among the live workers.
    pub circuit: CircuitState,
    /// Workers whose circuit is not closed.
    pub circuits_not_closed: u32,
    /// Health from `mcpq_health`: `None` before any check reported.
    pub up: Option<bool>,
    /// Since when the server is in that state (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_since_ms: Option<u64>,
    /// Upstream calls running now.
    pub in_flight: u64,
    /// Jobs ended per second over the rate window.
    pub calls_per_sec: f64,
    /// Share of the jobs ended over the rate window that did not complete (0 to 1).
    pub error_rate: f64,
    /// Median submission-to-end latency over the rate window, as a bucket's upper bound (ms).
    pub p50_ms: Option<u64>,
    /// 99th percentile, likewise.
    pub p99_ms: Option<u64>,
    /// Jobs ended, and of them not completed, by the live workers since they started.
    pub ended: u64,
    pub failed: u64,
    /// Where each live worker serves its metrics: `<worker id> <host:port>`, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
}

/// One lane of one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaneStatus {
    pub lane: Lane,
    /// Waiting (the consumer's `num_pending`).
    pub depth: u64,
    /// Held by workers (`num_ack_pending`).
    pub ack_pending: u64,
}

/// One sample for the charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPoint {
    pub at_ms: u64,
    /// Jobs waiting, by server.
    pub queued: BTreeMap<String, u64>,
    /// Jobs ended per second since the sample before, by server.
    pub calls_per_sec: BTreeMap<String, f64>,
}
