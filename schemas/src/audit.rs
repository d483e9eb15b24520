//! The audit stream `MCPQ_AUDIT`: one record per job that ended, on `mcpq.audit.<server>` —
//! who called what, how big the arguments were and their SHA-256, how it ended and how long it
//! took. Never argument values, results or secrets.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One call, as the audit stream keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub v: u32,
    pub job_id: Uuid,
    pub server: String,
    /// The MCP method (`tools/call`, `resources/read`, `prompts/get`, ...).
    pub method: String,
    /// The tool, prompt or resource the call named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The caller as the dispatcher authenticated them; absent for unauthenticated calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Bytes of the call's params as JSON (`arguments` for a tool call).
    pub argument_bytes: u64,
    /// SHA-256 of those bytes, hex: equal arguments have equal digests.
    pub argument_sha256: String,
    /// How the job ended: `completed`, `failed`, `dead`, `cancelled`, `expired`, `too_large`.
    pub outcome: String,
    /// The error kind when it did not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Submission to end, in milliseconds.
    pub latency_ms: u64,
    /// The W3C trace id the call carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub worker_id: String,
    pub submitted_at_ms: u64,
    pub ended_at_ms: u64,
}
