//! A failed upstream request, said the way an operator would say it — which upstream, what
//! happened, where: `upstream "acc" answered HTTP 503 Service Unavailable`, `upstream "acc":
//! connection to http://10.0.0.7:8080/mcp refused`, `upstream "acc" timed out after 30s` —
//! and sorted into whether trying again may help. Never a Rust type name.

use std::{error::Error, time::Duration};

use mcpq_schemas::{ErrorKind, JobError};
use rmcp::{
    ServiceError,
    transport::streamable_http_client::{HttpStatusError, StreamableHttpError},
};

use crate::upstream::Verdict;

/// Why one request failed, with whether to try again and how long the upstream asked to wait.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub error: JobError,
    pub verdict: Verdict,
    /// The upstream asked not to be called again before this (HTTP 429 `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub(crate) fn new(kind: ErrorKind, message: String, verdict: Verdict) -> Failure {
        Failure {
            error: JobError::new(kind, mcpq_schemas::redact::in_text(&message)),
            verdict,
            retry_after: None,
        }
    }
}

/// What the transport's chain of errors says, read once.
#[derive(Debug, Default)]
struct Cause {
    status: Option<(u16, Option<Duration>)>,
    too_large: bool,
    io: Option<std::io::ErrorKind>,
    connect: bool,
    timeout: bool,
    /// The answer's body broke off.
    body: bool,
    /// The innermost error's own words (for anything not recognised above).
    innermost: Option<String>,
}

fn cause_of(error: &(dyn Error + 'static)) -> Cause {
    let mut cause = Cause::default();
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(status) = e.downcast_ref::<HttpStatusError>() {
            cause.status = Some((status.status, retry_after(status)));
        }
        match e.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            Some(StreamableHttpError::HttpStatus(status)) => {
                cause.status = Some((status.status, retry_after(status)));
            }
            Some(StreamableHttpError::ResponseBodyTooLarge { .. }) => cause.too_large = true,
            // The client's error is not its source: follow it by hand.
            Some(StreamableHttpError::Client(client)) => {
                cause.innermost = Some(e.to_string());
                next = Some(client);
                continue;
            }
            _ => {}
        }
        if let Some(e) = e.downcast_ref::<reqwest::Error>() {
            cause.connect |= e.is_connect();
            cause.timeout |= e.is_timeout();
            cause.body |= e.is_body() || e.is_decode();
        }
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            cause.io = Some(e.kind());
        }
        cause.too_large |= crate::upstream::http::is_too_large(e);
        cause.innermost = Some(e.to_string());
        next = e.source();
    }
    cause
}

fn retry_after(status: &HttpStatusError) -> Option<Duration> {
    status
        .retry_after
        .as_deref()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Sorts a failed request to `server` (through `endpoint`: its URL, or a stdio command), sent
/// with `timeout`, into a job error and whether trying again may help.
pub(crate) fn classify(
    server: &str,
    endpoint: &str,
    error: ServiceError,
    timeout: Duration,
) -> Failure {
    let up = |what: String| format!("upstream {server:?} {what}");
    match error {
        // The upstream's own words: it answered, with an error.
        ServiceError::McpError(e) => Failure {
            error: JobError {
                kind: ErrorKind::Upstream,
                message: e.message.to_string(),
                code: Some(i64::from(e.code.0)),
                data: e.data,
            },
            verdict: Verdict::Permanent,
            retry_after: None,
        },
        ServiceError::Timeout { .. } => Failure::new(
            ErrorKind::Timeout,
            up(format!(
                "timed out after {} (the request was cancelled upstream)",
                humantime::format_duration(timeout)
            )),
            Verdict::Retryable,
        ),
        ServiceError::TransportClosed => Failure::new(
            ErrorKind::UpstreamUnavailable,
            up(format!(
                "closed the session at {endpoint} (for a stdio server: its process exited)"
            )),
            Verdict::Retryable,
        ),
        ServiceError::Cancelled { reason } => Failure::new(
            ErrorKind::UpstreamUnavailable,
            up(format!(
                "session at {endpoint} was cancelled{}",
                reason.map_or(String::new(), |r| format!(": {r}"))
            )),
            Verdict::Retryable,
        ),
        ServiceError::TransportSend(e) => transport(server, endpoint, &cause_of(e.error.as_ref())),
        other => Failure::new(
            ErrorKind::Internal,
            up(format!("request failed in mcpq's MCP client: {other}")),
            Verdict::Permanent,
        ),
    }
}

/// A transport failure: an HTTP status, a connection that failed, or a body too large.
fn transport(server: &str, endpoint: &str, cause: &Cause) -> Failure {
    use std::io::ErrorKind as Io;
    if cause.too_large {
        // The same call would give the same answer: failed for good, never sent again.
        return Failure::new(
            ErrorKind::TooLarge,
            format!(
                "upstream {server:?} answered with more than its maxResultBytes allows: raise maxResultBytes, or ask the upstream for less"
            ),
            Verdict::Permanent,
        );
    }
    if let Some((status, retry_after)) = cause.status {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut message = format!("upstream {server:?} answered HTTP {status} {reason}")
            .trim_end()
            .to_string();
        if let Some(after) = retry_after {
            message.push_str(&format!(" (Retry-After: {}s)", after.as_secs()));
        }
        let (kind, verdict) = match status {
            429 => (ErrorKind::RateLimited, Verdict::Retryable),
            // Wrong URL, auth or request: trying the same again gives the same answer.
            400..=499 if status != 408 => (ErrorKind::UpstreamUnavailable, Verdict::Permanent),
            _ => (ErrorKind::UpstreamUnavailable, Verdict::Retryable),
        };
        let mut failure = Failure::new(kind, message, verdict);
        failure.retry_after = retry_after;
        return failure;
    }
    let what = match cause.io {
        Some(Io::ConnectionRefused) => "refused".to_string(),
        Some(Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe) => {
            "reset before the answer came".to_string()
        }
        Some(Io::UnexpectedEof) => "closed before the answer came".to_string(),
        Some(Io::TimedOut) => "timed out".to_string(),
        _ if cause.timeout => "timed out".to_string(),
        _ if cause.body => "broke off before the answer came".to_string(),
        _ if cause.connect => format!(
            "failed: {}",
            cause.innermost.as_deref().unwrap_or("cannot connect")
        ),
        _ => {
            return Failure::new(
                ErrorKind::UpstreamUnavailable,
                format!(
                    "upstream {server:?} at {endpoint}: {}",
                    cause.innermost.as_deref().unwrap_or("the request failed")
                ),
                Verdict::Retryable,
            );
        }
    };
    Failure::new(
        ErrorKind::UpstreamUnavailable,
        format!("upstream {server:?}: connection to {endpoint} {what}"),
        Verdict::Retryable,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;

    use rmcp::transport::DynamicTransportError;

    use super::*;

    fn sent(error: impl Error + Send + Sync + 'static) -> ServiceError {
        ServiceError::TransportSend(DynamicTransportError::from_parts(
            Cow::Borrowed("some::very::long::Type<Name>"),
            std::any::TypeId::of::<()>(),
            Box::new(error),
        ))
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn http_statuses_name_the_upstream_and_the_status_without_type_names() {
        let unavailable = HttpStatusError::new(503, None);
        let f = classify("acc", "http://h/mcp", sent(unavailable), T);
        assert_eq!(
            f.error.message,
            "upstream \"acc\" answered HTTP 503 Service Unavailable"
        );
        assert_eq!(
            (f.error.kind, f.verdict),
            (ErrorKind::UpstreamUnavailable, Verdict::Retryable)
        );
        let busy = HttpStatusError::new(429, Some("2".into()));
        let f = classify("acc", "http://h/mcp", sent(busy), T);
        assert_eq!(
            f.error.message,
            "upstream \"acc\" answered HTTP 429 Too Many Requests (Retry-After: 2s)"
        );
        assert_eq!(f.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(f.error.kind, ErrorKind::RateLimited);
        let gone = HttpStatusError::new(401, None);
        assert_eq!(
            classify("acc", "u", sent(gone), T).verdict,
            Verdict::Permanent
        );
    }

    #[test]
    fn connection_failures_say_where_and_what() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let f = classify("acc", "http://127.0.0.1:9/mcp", sent(refused), T);
        assert_eq!(
            f.error.message,
            "upstream \"acc\": connection to http://127.0.0.1:9/mcp refused"
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let f = classify("acc", "http://h/mcp", sent(reset), T);
        assert!(f.error.message.ends_with("reset before the answer came"));
        assert_eq!(f.verdict, Verdict::Retryable);
    }

    #[test]
    fn timeouts_and_closed_sessions_read_plainly() {
        let f = classify("acc", "u", ServiceError::Timeout { timeout: T }, T);
        assert_eq!(
            f.error.message,
            "upstream \"acc\" timed out after 30s (the request was cancelled upstream)"
        );
        assert_eq!(f.error.kind, ErrorKind::Timeout);
        let f = classify("files", "npx server", ServiceError::TransportClosed, T);
        assert!(f.error.message.contains("its process exited"), "{f:?}");
        assert!(!f.error.message.contains("::"), "{}", f.error.message);
    }

    #[test]
    fn upstream_errors_keep_their_own_words_and_code() {
        let invalid = rmcp::ErrorData::invalid_params("bad x", None);
        let f = classify("s", "u", ServiceError::McpError(invalid), T);
        assert_eq!(
            (
                f.error.kind,
                f.error.code,
                f.verdict,
                f.error.message.as_str()
            ),
            (
                ErrorKind::Upstream,
                Some(-32602),
                Verdict::Permanent,
                "bad x"
            )
        );
    }
}
