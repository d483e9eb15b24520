//! Checks on what callers send that becomes part of a job, a NATS header or a deadline: one
//! place, pure, so the dispatcher's `/v1` API, its MCP endpoints and the CLI refuse the same
//! things with the same words, and property tests can throw anything at them.

use std::time::Duration;

/// What a caller sent that cannot become part of a job: the field, as the caller named it, and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &str, reason: impl Into<String>) -> Invalid {
        Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// The longest a caller may ask a job to wait for its start (`timeoutMs`, `io.mcpq/timeoutMs`):
/// a week, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
/// The longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// A caller's `timeoutMs` as a duration, if it is one from 0 to [`MAX_TIMEOUT_MS`]; `field`
/// names it in the error.
pub fn timeout_ms(field: &str, value: &serde_json::Value) -> Result<Duration, Invalid> {
    match value.as_u64() {
        Some(ms) if ms <= MAX_TIMEOUT_MS => Ok(Duration::from_millis(ms)),
        _ => Err(Invalid::new(
            field,
            format!("{value} is not a number of milliseconds from 0 to {MAX_TIMEOUT_MS} (a week)"),
        )),
    }
}

/// The furthest ahead a job may be scheduled (`runAt`, `delay`): a year. (A dispatcher also
/// refuses a time beyond how long job records are kept, `nats.resultTtl`.)
pub const MAX_AHEAD_MS: u64 = 366 * 24 * 3600 * 1000;

/// When a job submitted at `now_ms` may start, from its `runAt` (RFC 3339) or its `delay`
/// (milliseconds, or a duration such as `"90s"` or `"2h 30m"`); `None` for at once. A time in
/// the past is at once.
pub fn run_at(
    now_ms: u64,
    run_at: Option<&str>,
    delay: Option<&serde_json::Value>,
) -> Result<Option<u64>, Invalid> {
    let at = match (run_at, delay) {
        (Some(_), Some(_)) => {
            return Err(Invalid::new("delay", "give runAt or delay, not both"));
        }
        (None, None) => return Ok(None),
        (Some(text), None) => {
            let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    Invalid::new(
                        "runAt",
                        format!("{text:?} is not an RFC 3339 time ({e}; e.g. 2026-12-24T18:00:00Z or 2026-12-24T19:00:00+01:00)"),
                    )
                })?;
            u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
        }
        (None, Some(value)) => {
            let wait = match value {
                serde_json::Value::Number(n) => n.as_u64().map(Duration::from_millis),
                serde_json::Value::String(text) => humantime::parse_duration(text).ok(),
                _ => None,
            }
            .ok_or_else(|| {
                Invalid::new(
                    "delay",
                    format!("{value} is neither a number of milliseconds nor a duration such as \"90s\" or \"2h 30m\""),
                )
            })?;
            deadline_after(now_ms, wait)
        }
    };
    if at.saturating_sub(now_ms) > MAX_AHEAD_MS {
        let field = if run_at.is_some() { "runAt" } else { "delay" };
        return Err(Invalid::new(
            field,
            "is more than a year ahead (use a recurring schedule, POST /v1/schedules)",
        ));
    }
    Ok((at > now_ms).then_some(at))
}

/// Unix milliseconds `wait` after `now`, saturating instead of wrapping.
pub fn deadline_after(now_ms: u64, wait: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
}

/// An idempotency key: 1 to [`MAX_KEY_BYTES`] bytes of printable text (no control characters,
/// so never a CR or LF that could end a header line).
pub fn idempotency_key(field: &str, key: &str) -> Result<(), Invalid> {
    if key.is_empty() {
        return Err(Invalid::new(field, "an idempotency key may not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Invalid::new(
            field,
            format!(
                "the idempotency key is {} bytes, longer than {MAX_KEY_BYTES}",
                key.len()
            ),
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(Invalid::new(
            field,
            format!("the idempotency key holds the control character {c:?} (printable text only)"),
        ));
    }
    Ok(())
}

/// A W3C `traceparent`: `<version>-<trace id>-<parent id>-<flags>` in lower-case hex (2, 32,
/// 16 and 2 digits), the ids not all zero, version `ff` never.
pub fn traceparent(field: &str, value: &str) -> Result<(), Invalid> {
    let bad = |why: &str| {
        let shown: String = value.chars().take(80).collect();
        Err(Invalid::new(
            field,
            format!(
                "{shown:?} is not a W3C traceparent ({why}; expected e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01)"
            ),
        ))
    };
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if parts.len() < 4 {
        return bad("four dash-separated fields needed");
    }
    let (version, trace, parent, flags) = (parts[0], parts[1], parts[2], parts[3]);
    if !hex(version, 2) || version == "ff" {
        return bad("the version is two hex digits, not ff");
    }
    if version == "00" && parts.len() != 4 {
        return bad("version 00 has exactly four fields");
    }
    if !hex(trace, 32) || trace.bytes().all(|b| b == b'0') {
        return bad("the trace id is 32 hex digits, not all zero");
    }
    if !hex(parent, 16) || parent.bytes().all(|b| b == b'0') {
        return bad("the parent id is 16 hex digits, not all zero");
    }
    if !hex(flags, 2) {
        return bad("the flags are two hex digits");
    }
    if value.len() > 512 || value.chars().any(|c| c.is_control()) {
        return bad("too long, or holds control characters");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_range_checked_never_wrapped() {
        use serde_json::json;
        assert_eq!(
            timeout_ms("timeoutMs", &json!(1500)).unwrap(),
            Duration::from_millis(1500)
        );
        for bad in [
            json!(-1),
            json!(18_446_744_073_709_551_615u64),
            json!(1.5),
            json!("10"),
            json!(MAX_TIMEOUT_MS + 1),
        ] {
            let e = timeout_ms("timeoutMs", &bad).unwrap_err();
            assert_eq!(e.field, "timeoutMs", "{e}");
        }
        assert_eq!(deadline_after(u64::MAX - 1, Duration::MAX), u64::MAX);
    }

    #[test]
    fn keys_are_printable_and_bounded() {
        assert!(idempotency_key("k", "order-42 für Ω").is_ok());
        for bad in ["", "a\r\nX-Evil: 1", "tab\there", &"x".repeat(257)] {
            assert!(idempotency_key("k", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn traceparents_follow_w3c() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(traceparent("t", good).is_ok());
        assert!(
            traceparent(
                "t",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
            )
            .is_ok()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(traceparent("t", bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod properties {
    use proptest::prelude::*;

    use crate::{Lane, api::JobSubmission, config::Config};

    proptest! {
        /// The config loader names a field or loads; it never panics, whatever the text.
        #[test]
        fn any_config_text_loads_or_names_what_is_wrong(text in any::<String>()) {
            if let Err(errors) = Config::from_yaml(&text) {
                prop_assert!(!errors.to_string().is_empty());
            }
        }

        /// YAML-shaped text close to a real config, so the validator (not only the parser) runs.
        #[test]
        fn near_configs_load_or_name_what_is_wrong(
            name in "[a-z_.-]{0,12}",
            kind in "(http|stdio|grpc)",
            endpoint in "(http://[a-z]{1,8}(:[0-9]{1,6})?/mcp|[a-z]{0,8})",
            extra in "(timeout: [0-9]{0,6}(ms|s|h)?|concurrency: -?[0-9]{0,8}|maxQueued: -?[0-9]{0,12}|maxResultBytes: [0-9]{0,12}(KB|MiB|GiB|x)?|retry: \\{maxAttempts: [0-9]{0,4}\\}|)",
        ) {
            let text = format!(
                "version: \"1.0\"\nservers:\n  - name: {name}\n    type: {kind}\n    endpoint: {endpoint}\n    command: x\n    {extra}\n"
            );
            if let Err(errors) = Config::from_yaml(&text) {
                prop_assert!(!errors.to_string().is_empty());
            }
        }

        /// `/v1` bodies: arbitrary bytes are refused or read; a valid submission becomes a job
        /// that keeps its server, tool, arguments and key.
        #[test]
        fn job_submission_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(submission) = serde_json::from_slice::<JobSubmission>(&bytes) {
                let _ = submission.to_job(Lane::Normal);
            }
        }

        #[test]
        fn valid_submissions_round_trip(
            server in "[a-z]{1,12}",
            tool in any::<String>(),
            key in proptest::option::of("[ -~]{1,256}"),
            timeout in proptest::option::of(0u64..=super::MAX_TIMEOUT_MS),
            text in any::<String>(),
        ) {
            let body = serde_json::json!({
                "server": server, "tool": tool, "arguments": {"text": text},
                "idempotencyKey": key, "timeoutMs": timeout,
            });
            let submission: JobSubmission = serde_json::from_value(body).unwrap();
            let job = submission.to_job(Lane::Low).unwrap();
            prop_assert_eq!(&job.server, &server);
            prop_assert_eq!(job.request.tool_name(), Some(tool.as_str()));
            prop_assert_eq!(&job.idempotency_key, &key);
            prop_assert_eq!(job.deadline_ms.is_some(), timeout.is_some());
            prop_assert_eq!(job.lane, Lane::Low);
        }

        #[test]
        fn any_timeout_value_is_in_range_or_refused(
            value in prop_oneof![
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                any::<u64>().prop_map(|n| serde_json::json!(n)),
                any::<f64>().prop_map(|n| serde_json::json!(n)),
                any::<String>().prop_map(|s| serde_json::json!(s)),
            ],
        ) {
            match super::timeout_ms("timeoutMs", &value) {
                Ok(wait) => prop_assert!(wait.as_millis() <= u128::from(super::MAX_TIMEOUT_MS)),
                Err(e) => prop_assert!(e.field == "timeoutMs"),
            }
        }

        #[test]
        fn header_strings_never_hold_line_breaks(key in any::<String>()) {
            if super::idempotency_key("k", &key).is_ok() {
                prop_assert!(!key.contains('\r') && !key.contains('\n') && key.len() <= 256);
            }
            if super::traceparent("t", &key).is_ok() {
                prop_assert!(!key.contains('\r') && !key.contains('\n'));
            }
        }
    }
}
