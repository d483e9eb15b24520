//! W3C trace context (`traceparent`): read from a caller, started when there is none, carried on
//! the job to the worker and on to the upstream as a child of the worker's span.

use std::fmt;

/// A parsed `traceparent`: version 00, a 16-byte trace id, the 8-byte id of the parent span and
/// the flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header value; `None` when it is not a valid one (an all-zero id is
    /// invalid). Future versions are read as far as version 00 goes, as the spec asks.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let text = text.trim();
        let mut parts = text.split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?;
        let span_id: [u8; 8] = hex(span)?;
        let flags: [u8; 1] = hex(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags: flags[0],
        })
    }

    /// A new trace, sampled, started here.
    pub fn start() -> TraceParent {
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        fill(&mut trace_id);
        fill(&mut span_id);
        TraceParent {
            trace_id,
            span_id,
            flags: 1,
        }
    }

    /// The trace of a job that came without one (a pipeline publishing to NATS): its id is the
    /// job id, so every attempt of the job carries the same trace.
    pub fn for_job(job_id: &uuid::Uuid) -> TraceParent {
        let bytes = *job_id.as_bytes();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&bytes[8..]);
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        let trace_id = if bytes == [0; 16] { [1; 16] } else { bytes };
        TraceParent {
            trace_id,
            span_id,
            flags: 1,
        }
    }

    /// The same trace with a new span as parent: what this process sends on.
    pub fn child(&self) -> TraceParent {
        let mut span_id = [0u8; 8];
        fill(&mut span_id);
        TraceParent { span_id, ..*self }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        to_hex(&self.span_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written into one stack buffer: this runs for every attempt.
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        write_hex(&self.trace_id, &mut text[3..35]);
        text[35] = b'-';
        write_hex(&self.span_id, &mut text[36..52]);
        text[52] = b'-';
        write_hex(&[self.flags], &mut text[53..55]);
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Whether spans are exported (`telemetry.otlpEndpoint` is set); set once at start.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says whether spans are exported from now on (the process's tracing set-up calls it).
pub fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, std::sync::atomic::Ordering::Relaxed);
}

/// `span` when spans are exported, else no span at all. For the spans of each call that only a
/// trace viewer needs (their logs are already inside the job's own span): at the default log
/// level the fmt layer would otherwise create them and format their fields on every call, for
/// nothing (about a third of what tracing costs a worker per call; BENCHMARKS.md).
pub fn exported(span: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        span()
    } else {
        tracing::Span::none()
    }
}

/// Makes `span` a child of `parent` for OpenTelemetry export (nothing happens when no
/// OpenTelemetry layer is installed: `telemetry.otlpEndpoint` unset).
pub fn adopt(span: &tracing::Span, parent: Option<&str>) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(parent) = parent.and_then(TraceParent::parse) else {
        return;
    };
    let context = opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes(parent.trace_id),
        opentelemetry::trace::SpanId::from_bytes(parent.span_id),
        opentelemetry::trace::TraceFlags::new(parent.flags),
        true,
        Default::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
}

/// The `traceparent` naming `span` itself, when spans are exported (so what is sent on is a
/// child of a span the collector knows); `None` without OpenTelemetry.
pub fn of_span(span: &tracing::Span) -> Option<TraceParent> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| TraceParent {
        trace_id: span_context.trace_id().to_bytes(),
        span_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}

/// What to send on from `span`, whose parent is `parent`: the span's own context when spans are
/// exported, else a new child span id in the parent's trace (or a new trace).
pub fn send_on(span: &tracing::Span, parent: Option<&str>) -> String {
    of_span(span)
        .or_else(|| parent.and_then(TraceParent::parse).map(|p| p.child()))
        .unwrap_or_else(TraceParent::start)
        .to_string()
}

/// The trace id of a `traceparent` value, if it is a valid one.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    TraceParent::parse(traceparent).map(|t| t.trace_id_hex())
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case hex digits into exactly `N` bytes; `None` for anything else.
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lower-case hex into `out` (twice as long).
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn fill(bytes: &mut [u8]) {
    // Never all zero (invalid): a failed or unlucky draw falls back to a UUID's random bits.
    if getrandom::fill(bytes).is_err() || bytes.iter().all(|b| *b == 0) {
        let random = uuid::Uuid::now_v7().as_u128().to_le_bytes();
        for (b, r) in bytes.iter_mut().zip(random.iter().cycle()) {
            *b = *r | 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
        assert_eq!(child.flags, 1);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields; version 00's are read.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn started_traces_are_valid_and_distinct() {
        let (a, b) = (TraceParent::start(), TraceParent::start());
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(TraceParent::parse(&a.to_string()), Some(a));
    }
}
