//! Upstream health as workers see it, shared in the `mcpq_health` bucket (key: server), and the
//! alert webhooks get when a server goes down or comes back.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One server's health: its state now and what was last alerted. Workers update it with
/// compare-and-set, so of many workers that see a change one writes it and one alert goes out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthRecord {
    pub v: u32,
    pub server: String,
    pub up: bool,
    /// When the server entered this state (Unix ms).
    pub since_ms: u64,
    /// The worker that saw the change.
    pub seen_by: String,
    /// What the last ping said when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The state the last alert announced; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerted_up: Option<bool>,
    /// When the last alert went out (Unix ms).
    #[serde(default)]
    pub alerted_at_ms: u64,
}

/// What an alert webhook of kind `json` gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub v: u32,
    pub server: String,
    /// `down` or `up`.
    pub state: String,
    /// Since when (Unix ms).
    pub since_ms: u64,
    /// The failed ping's error, for `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A line for people.
    pub text: String,
}
