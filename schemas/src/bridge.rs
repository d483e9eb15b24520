//! Protocol bridging: the one place where an MCP message changes shape between revisions.
//!
//! mcpq stores and carries every upstream result in one shape, the **canonical** one: that of
//! the current revision, 2026-07-28 (`resultType` present on every result). Workers bring each
//! upstream's answer into it ([`canonical_result`]) whatever revision that upstream speaks;
//! dispatchers hand each MCP client the result in the revision *it* negotiated
//! ([`result_for`]). Only the envelope changes; content blocks, structured content, `_meta` and
//! every other field pass unchanged.
//!
//! What differs between the revisions mcpq speaks (2025-06-18, 2025-11-25, 2026-07-28):
//! - `resultType`: required on every 2026-07-28 result (`"complete"`, or `"input_required"` /
//!   `"task"`), unknown before. Absent means `"complete"`.
//! - caching hints `ttlMs` / `cacheScope`: required on 2026-07-28 list and read results, unknown
//!   before.
//! - `structuredContent` and tool `outputSchema`: any JSON value on 2026-07-28, objects only
//!   before; a non-object value is moved into a text block for older readers (rmcp's server
//!   handler drops non-object output schemas from tool lists for them).
//! - resource not found: `-32002` before 2026-07-28, `-32602` (invalid params) from it.
//! - log messages: 2025-era sessions choose a level with `logging/setLevel`; 2026-07-28 requests
//!   opt in per request with `_meta["io.modelcontextprotocol/logLevel"]`.
//!
//! Functions here are pure: JSON in, JSON out.

use serde_json::{Map, Value};

/// The current revision: the canonical shape.
pub const CURRENT: &str = "2026-07-28";
/// `_meta` key of a 2026-07-28 request that opts in to log messages at or above a level.
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// Request `_meta` key (2026-07-28): the capabilities of the client making the request.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// The Tasks extension (SEP-2663), as capabilities name it under `extensions`.
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// Whether client capabilities (as JSON) declare the Tasks extension.
pub fn declares_tasks(capabilities: &serde_json::Value) -> bool {
    capabilities
        .get("extensions")
        .and_then(|e| e.get(TASKS_EXTENSION))
        .is_some()
}
/// Resource not found, before 2026-07-28.
pub const LEGACY_RESOURCE_NOT_FOUND: i64 = -32002;
/// Invalid params: also "resource not found" from 2026-07-28 on.
pub const INVALID_PARAMS: i64 = -32602;

/// The two eras of MCP, which differ in lifecycle and in result envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2024-11-05 to 2025-11-25: `initialize`, sessions, results without `resultType`.
    Session,
    /// 2026-07-28 and later: stateless, `resultType` on every result.
    Stateless,
}

impl Era {
    /// The era of a revision string (`YYYY-MM-DD`; ISO dates compare like the calendar). An
    /// unknown or missing revision is a 2025-era one: clients that do not say are older.
    pub fn of(revision: Option<&str>) -> Era {
        match revision {
            Some(r) if r >= CURRENT => Era::Stateless,
            _ => Era::Session,
        }
    }
}

/// Methods whose results carry the 2026-07-28 caching hints.
fn cacheable(method: &str) -> bool {
    matches!(
        method,
        "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    )
}

/// An upstream's result of `method` in the canonical (2026-07-28) shape: `resultType` is
/// `"complete"` unless the upstream said otherwise. Whatever revision the upstream speaks, this
/// is what records, replies and dead letters hold.
pub fn canonical_result(result: Value) -> Value {
    match result {
        Value::Object(mut object) => {
            object
                .entry("resultType")
                .or_insert_with(|| Value::String("complete".into()));
            Value::Object(object)
        }
        other => other,
    }
}

/// A canonical result of `method` as a reader on `era` expects it.
pub fn result_for(era: Era, method: &str, result: Value) -> Value {
    let Value::Object(mut object) = canonical_result(result) else {
        return Value::Null;
    };
    match era {
        Era::Stateless => {
            if cacheable(method) && is_complete(&object) {
                object.entry("ttlMs").or_insert(Value::from(0));
                object
                    .entry("cacheScope")
                    .or_insert_with(|| Value::String("private".into()));
            }
        }
        Era::Session => {
            if is_complete(&object) {
                object.remove("resultType");
            }
            object.remove("ttlMs");
            object.remove("cacheScope");
            if method == "tools/call" {
                legacy_structured_content(&mut object);
            }
        }
    }
    Value::Object(object)
}

fn is_complete(object: &Map<String, Value>) -> bool {
    object
        .get("resultType")
        .is_none_or(|t| t.as_str() == Some("complete"))
}

/// Before 2026-07-28 `structuredContent` is an object: any other value moves into the first
/// text block (unless that block already holds it), where older clients read it.
fn legacy_structured_content(object: &mut Map<String, Value>) {
    let Some(value) = object.remove("structuredContent") else {
        return;
    };
    if value.is_object() {
        object.insert("structuredContent".into(), value);
        return;
    }
    let content = object
        .entry("content")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(blocks) = content else {
        return;
    };
    let already = blocks
        .first()
        .and_then(|b| b.get("text"))
        .and_then(Value::as_str)
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .is_some_and(|v| v == value);
    if !already {
        blocks.insert(
            0,
            serde_json::json!({"type": "text", "text": value.to_string()}),
        );
    }
}

/// An upstream's JSON-RPC error code as a reader on `era` expects it: "resource not found" is
/// `-32002` before 2026-07-28 and `-32602` from it. (The other way round cannot be told apart
/// from other invalid params, so a 2025-era reader gets `-32602` as it came.)
pub fn error_code_for(era: Era, code: i64) -> i64 {
    match era {
        Era::Stateless if code == LEGACY_RESOURCE_NOT_FOUND => INVALID_PARAMS,
        _ => code,
    }
}

/// MCP log levels (RFC 5424 severities), least severe first.
const LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// Whether a log message at `level` reaches a reader that asked for `min` and above. Unknown
/// levels pass: a message is better seen than lost.
pub fn log_passes(level: &str, min: &str) -> bool {
    let rank = |l: &str| LEVELS.iter().position(|x| *x == l);
    match (rank(level), rank(min)) {
        (Some(level), Some(min)) => level >= min,
        _ => true,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A 2025-era tool result as server-everything sends it.
    fn legacy_call() -> Value {
        json!({"content": [{"type": "text", "text": "Echo: hi"}], "isError": false})
    }

    #[test]
    fn revisions_fall_in_two_eras() {
        assert_eq!(Era::of(Some("2026-07-28")), Era::Stateless);
        assert_eq!(Era::of(Some("2027-01-01")), Era::Stateless);
        for older in ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"] {
            assert_eq!(Era::of(Some(older)), Era::Session, "{older}");
        }
        assert_eq!(Era::of(None), Era::Session);
    }

    #[test]
    fn a_legacy_result_becomes_canonical_and_keeps_its_content() {
        let canonical = canonical_result(legacy_call());
        assert_eq!(canonical["resultType"], "complete");
        assert_eq!(canonical["content"], legacy_call()["content"]);
        assert_eq!(canonical["isError"], false);
        // Already canonical, and other result types, stay as they are.
        assert_eq!(canonical_result(canonical.clone()), canonical);
        let pending = json!({"resultType": "input_required", "inputRequests": {}});
        assert_eq!(canonical_result(pending.clone()), pending);
    }

    #[test]
    fn a_2026_client_gets_result_type_and_cache_hints() {
        let call = result_for(Era::Stateless, "tools/call", legacy_call());
        assert_eq!(call["resultType"], "complete");
        assert!(call.get("ttlMs").is_none(), "tool calls are not cacheable");
        let read = json!({"contents": [{"uri": "test://a", "text": "a"}]});
        let read = result_for(Era::Stateless, "resources/read", read);
        assert_eq!(
            (&read["resultType"], &read["ttlMs"], &read["cacheScope"]),
            (&json!("complete"), &json!(0), &json!("private"))
        );
        // Hints the upstream gave are kept.
        let list = json!({"resources": [], "ttlMs": 5000, "cacheScope": "shared"});
        let list = result_for(Era::Stateless, "resources/list", list);
        assert_eq!(
            (&list["ttlMs"], &list["cacheScope"]),
            (&json!(5000), &json!("shared"))
        );
    }

    #[test]
    fn a_2025_client_gets_the_historical_shape() {
        let modern = json!({
            "resultType": "complete",
            "content": [{"type": "text", "text": "[1,2]"}],
            "structuredContent": [1, 2],
            "_meta": {"k": "v"},
        });
        let legacy = result_for(Era::Session, "tools/call", modern);
        assert_eq!(
            legacy,
            json!({"content": [{"type": "text", "text": "[1,2]"}], "_meta": {"k": "v"}})
        );
        // A non-object structured result not already in the text moves into it.
        let modern = json!({"resultType": "complete", "content": [], "structuredContent": 7});
        let legacy = result_for(Era::Session, "tools/call", modern);
        assert_eq!(legacy["content"], json!([{"type": "text", "text": "7"}]));
        // Object structured content stays.
        let modern = json!({"content": [], "structuredContent": {"a": 1}});
        let legacy = result_for(Era::Session, "tools/call", modern);
        assert_eq!(legacy["structuredContent"], json!({"a": 1}));
        // Caching hints are not part of the older revisions.
        let list =
            json!({"resultType": "complete", "prompts": [], "ttlMs": 0, "cacheScope": "private"});
        assert_eq!(
            result_for(Era::Session, "prompts/list", list),
            json!({"prompts": []})
        );
    }

    #[test]
    fn results_round_trip_between_eras() {
        // 2025 upstream → canonical → 2025 client: exactly what the upstream sent.
        assert_eq!(
            result_for(Era::Session, "tools/call", canonical_result(legacy_call())),
            legacy_call()
        );
        // 2026 upstream → canonical → 2026 client: unchanged.
        let modern = json!({"resultType": "complete", "content": [], "isError": true});
        assert_eq!(
            result_for(
                Era::Stateless,
                "tools/call",
                canonical_result(modern.clone())
            ),
            modern
        );
    }

    #[test]
    fn resource_not_found_has_each_eras_code() {
        assert_eq!(error_code_for(Era::Stateless, -32002), -32602);
        assert_eq!(error_code_for(Era::Session, -32002), -32002);
        assert_eq!(error_code_for(Era::Session, -32602), -32602);
        assert_eq!(error_code_for(Era::Stateless, -32603), -32603);
    }

    #[test]
    fn log_levels_filter_by_severity() {
        assert!(log_passes("error", "warning"));
        assert!(log_passes("warning", "warning"));
        assert!(!log_passes("info", "warning"));
        assert!(log_passes("debug", "debug"));
        assert!(log_passes("weird", "error"), "unknown levels pass");
    }
}
