//! What every route reads from a request's headers the same way: the caller's trace. A leaf:
//! `http` (the server), `api` and `ingress` use it, it uses none of them.

/// The request's `traceparent` header, when it is a valid W3C one (an invalid one is ignored,
/// as the trace-context spec asks).
pub(crate) fn traceparent_header(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers
        .get(mcpq_schemas::names::HDR_TRACEPARENT)?
        .to_str()
        .ok()?;
    mcpq_schemas::trace::TraceParent::parse(value).map(|t| t.to_string())
}
