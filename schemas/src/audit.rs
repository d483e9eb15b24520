//! The audit stream `MCPQ_AUDIT`: one entry per job that ended — who called what, how big the
//! arguments were and a digest of them, how it ended and how long it took; never argument
//! values, results or secrets. A worker gathers its entries for each server and publishes them
//! together, at most every 200 ms, as one [`AuditBatch`] on `mcpq.audit.<server>`: one stored
//! message per batch, not per call, and compact entries (about 150 bytes on disk each, with the
//! stream's S2 compression).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The version of [`AuditBatch`] this crate writes (version 1 was one [`AuditRecord`] per
/// message).
pub const AUDIT_VERSION: u32 = 2;

/// One message of `MCPQ_AUDIT`: one worker's entries for one server, in the order the calls
/// ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditBatch {
    /// [`AUDIT_VERSION`].
    pub v: u32,
    pub server: String,
    /// The worker that ran the calls.
    pub worker_id: String,
    pub entries: Vec<AuditEntry>,
}

/// One call, compact: what its batch says is not repeated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub job_id: Uuid,
    /// The MCP method; absent for `tools/call`.
    #[serde(default = "tools_call", skip_serializing_if = "is_tools_call")]
    pub method: String,
    /// The tool, prompt or resource the call named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The caller as the dispatcher authenticated them; absent for unauthenticated calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Bytes of the call's params as JSON (`arguments` for a tool call).
    pub arg_bytes: u64,
    /// The first 128 bits of those bytes' SHA-256, base64url without padding: equal arguments
    /// have equal digests.
    pub arg_digest: String,
    /// How the job ended: `completed`, `failed`, `dead`, `cancelled`, `expired`, `too_large`.
    pub outcome: String,
    /// The error kind when it did not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Attempts made; absent for one.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub attempts: u32,
    /// Submission to end, in milliseconds.
    pub latency_ms: u64,
    /// The W3C trace id the caller's trace gave the call; absent when the call came without
    /// one (its trace id is then the one mcpq derives from the job id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub ended_at_ms: u64,
}

fn tools_call() -> String {
    "tools/call".into()
}

fn is_tools_call(method: &str) -> bool {
    method == "tools/call"
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// One call with everything about it spelled out: what `mcpq audit tail --json` prints for
/// each entry (and what version 1 of the stream stored, one per message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub job_id: Uuid,
    pub server: String,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    pub argument_bytes: u64,
    /// See [`AuditEntry::arg_digest`].
    pub argument_digest: String,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    pub attempts: u32,
    pub latency_ms: u64,
    /// The call's W3C trace id.
    pub trace_id: String,
    pub worker_id: String,
    pub submitted_at_ms: u64,
    pub ended_at_ms: u64,
}

impl AuditBatch {
    /// Its entries, spelled out.
    pub fn records(&self) -> impl Iterator<Item = AuditRecord> + '_ {
        self.entries.iter().map(|e| AuditRecord {
            job_id: e.job_id,
            server: self.server.clone(),
            method: e.method.clone(),
            name: e.name.clone(),
            principal: e.principal.clone(),
            argument_bytes: e.arg_bytes,
            argument_digest: e.arg_digest.clone(),
            outcome: e.outcome.clone(),
            error_kind: e.error_kind.clone(),
            attempts: e.attempts,
            latency_ms: e.latency_ms,
            trace_id: e
                .trace_id
                .clone()
                .unwrap_or_else(|| crate::trace::TraceParent::for_job(&e.job_id).trace_id_hex()),
            worker_id: self.worker_id.clone(),
            submitted_at_ms: e.ended_at_ms.saturating_sub(e.latency_ms),
            ended_at_ms: e.ended_at_ms,
        })
    }
}

/// The digest of a call's argument bytes in an [`AuditEntry`].
pub fn digest(bytes: &[u8]) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let full = Sha256::digest(bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&full[..16])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_typical_entry_is_small_and_reads_back_spelled_out() {
        let job_id = Uuid::now_v7();
        let entry = AuditEntry {
            job_id,
            method: "tools/call".into(),
            name: Some("search_issues".into()),
            principal: Some("ci-nightly".into()),
            arg_bytes: 48,
            arg_digest: digest(br#"{"q":"is:open label:bug"}"#),
            outcome: "completed".into(),
            error_kind: None,
            attempts: 1,
            latency_ms: 183,
            trace_id: None,
            ended_at_ms: 1_767_225_600_123,
        };
        let text = serde_json::to_string(&entry).unwrap();
        // Before the stream's compression, which takes the repeated keys out (the size on disk
        // is measured by `make soak`).
        assert!(text.len() <= 220, "{} bytes: {text}", text.len());
        assert!(
            !text.contains("tools/call") && !text.contains("attempts"),
            "{text}"
        );
        let batch = AuditBatch {
            v: AUDIT_VERSION,
            server: "github".into(),
            worker_id: "w-1".into(),
            entries: vec![serde_json::from_str(&text).unwrap()],
        };
        let record = batch.records().next().unwrap();
        assert_eq!(record.method, "tools/call");
        assert_eq!(record.attempts, 1);
        assert_eq!(record.submitted_at_ms, 1_767_225_599_940);
        assert_eq!(record.trace_id.len(), 32);
        assert_eq!(
            record.trace_id,
            crate::trace::trace_id_of(&crate::trace::TraceParent::for_job(&job_id).to_string())
                .unwrap()
        );
        assert_eq!(record.argument_digest.len(), 22);
    }
}
