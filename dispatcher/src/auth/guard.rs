//! The layer in front of every route but `/healthz`: `Host` must be an allowed host (DNS
//! rebinding), `Origin`, when a browser sends one, an allowed origin or this server's own
//! (MCP transport spec); then the credentials ([`Authenticator`]), and the [`Caller`] goes into
//! the request's extensions for the handlers. Without `auth:` every caller is anonymous.
//!
//! Refusals: 401 with `WWW-Authenticate: Bearer` (naming the RFC 9728 metadata when JWTs are
//! configured, and `error="invalid_token"` when credentials were sent), 403 for a host, an
//! origin or a missing scope.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use mcpq_schemas::api::{ApiError, ApiErrorCode};

use super::{Authenticator, Caller, Denied};

/// The well-known path of the OAuth protected-resource metadata (RFC 9728).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// What the layer checks.
pub struct Guard {
    pub auth: Option<Arc<Authenticator>>,
    /// Allowed `Host` names (`host` or `host:port`); empty means loopback names only.
    pub allowed_hosts: Vec<String>,
    /// Allowed `Origin`s besides this server's own, like `https://app.example.com`.
    pub allowed_origins: Vec<String>,
}

/// Loopback names, the only hosts allowed when none are configured.
const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl Guard {
    /// Whether `host` (as [`parse_host`] read it) is allowed.
    fn host_allowed(&self, host: &Host) -> bool {
        if self.allowed_hosts.is_empty() {
            return LOOPBACK.contains(&host.name.as_str());
        }
        self.allowed_hosts.iter().any(|allowed| {
            let (a_name, a_port) = split_host(allowed);
            a_name == host.name && a_port.is_none_or(|p| Some(p) == host.port)
        })
    }

    fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let own = ["http://", "https://"]
            .iter()
            .any(|scheme| origin == format!("{scheme}{}", host.to_ascii_lowercase()));
        own || self
            .allowed_origins
            .iter()
            .any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(&origin))
    }
}

/// A `Host` header read strictly (RFC 9110: `uri-host [ ":" port ]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    /// Lower case; an IPv6 address without its brackets.
    name: String,
    port: Option<u16>,
}

impl Host {
    /// As it goes into a URL: `name[:port]`, an IPv6 address in brackets.
    fn authority(&self) -> String {
        let name = if self.name.contains(':') {
            format!("[{}]", self.name)
        } else {
            self.name.clone()
        };
        match self.port {
            Some(port) => format!("{name}:{port}"),
            None => name,
        }
    }
}

/// Reads a `Host` header: a DNS name or IPv4 address of letters, digits, `-` and `.`, or an
/// IPv6 address in brackets, then an optional port of digits. Anything else — userinfo, a
/// path, quotes, spaces — is not a host: `None`.
fn parse_host(raw: &str) -> Option<Host> {
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (address, tail) = rest.split_once(']')?;
        let address: std::net::Ipv6Addr = address.parse().ok()?;
        let port = match tail {
            "" => None,
            tail => Some(tail.strip_prefix(':')?),
        };
        (address.to_string(), port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (raw, None),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !name_ok {
            return None;
        }
        (name.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(port)
            if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(port.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some(Host { name, port })
}

/// `host[:port]` → lower-case name without brackets, and the port (for configured names).
fn split_host(host: &str) -> (String, Option<u16>) {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((name, tail)) => (name, tail.strip_prefix(':')),
            None => (rest, None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') => (name, Some(port)),
            _ => (host, None),
        }
    };
    (name.to_ascii_lowercase(), port.and_then(|p| p.parse().ok()))
}

fn refuse(status: StatusCode, code: ApiErrorCode, message: String) -> Response {
    (status, Json(ApiError { code, message })).into_response()
}

/// The axum middleware.
pub async fn guard(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    // Probes from the platform (kubelet, load balancers) carry no credentials and no browser
    // reads anything secret from them.
    if path == "/healthz" || path == "/readyz" {
        return next.run(request).await;
    }
    let headers = request.headers();
    let raw_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let Some(parsed) = parse_host(&raw_host) else {
        auth_failure("host");
        return refuse(
            StatusCode::BAD_REQUEST,
            ApiErrorCode::BadRequest,
            "the Host header is not a host name, address or host:port".into(),
        );
    };
    if !guard.host_allowed(&parsed) {
        auth_failure("host");
        return refuse(
            StatusCode::FORBIDDEN,
            ApiErrorCode::Forbidden,
            format!(
                "Host {:?} is not allowed (start the dispatcher with --allowed-host {})",
                parsed.authority(),
                parsed.name
            ),
        );
    }
    // From here on, only the host as parsed: nothing the caller sent goes into a header or URL.
    let host = parsed.authority();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !guard.origin_allowed(origin, &host) {
            auth_failure("origin");
            return refuse(
                StatusCode::FORBIDDEN,
                ApiErrorCode::Forbidden,
                format!(
                    "Origin {origin:?} is not allowed (start the dispatcher with --allowed-origin {origin} to let pages from it call)"
                ),
            );
        }
    }
    // The metadata, and the status page's shell (no data: it asks for credentials and reads
    // /status.json with them).
    if path == METADATA_PATH || path.starts_with(&format!("{METADATA_PATH}/")) || path == "/" {
        return next.run(request).await;
    }
    let caller = match &guard.auth {
        None => Caller::anonymous(),
        Some(auth) => {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap_or("\u{0}"));
            match auth.authenticate(authorization).await {
                Ok(caller) => caller,
                Err(denied) => {
                    tracing::info!(path = %path, reason = %denied.message(), "request refused");
                    auth_failure(match denied {
                        Denied::Missing => "missing",
                        Denied::Invalid(_) => "invalid",
                        Denied::InsufficientScope(_) => "insufficient_scope",
                    });
                    return refused(auth, &denied, &base_url(auth, headers, &host), &path);
                }
            }
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Counts a refused request in `mcpq_auth_failures_total{reason}`: `missing`, `invalid`
/// (credentials), `insufficient_scope`, `host`, `origin`.
fn auth_failure(reason: &'static str) {
    metrics::counter!(mcpq_schemas::metrics::AUTH_FAILURES, "reason" => reason).increment(1);
}

/// The URL clients reach this server at: `auth.publicUrl`, else `http://<Host>`.
pub fn base_url(auth: &Authenticator, _headers: &HeaderMap, host: &str) -> String {
    auth.config()
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{host}"))
}

/// The metadata URL for the resource at `path`: the per-path form for the MCP endpoints.
fn metadata_url(base: &str, path: &str) -> String {
    if is_mcp_path(path) {
        format!("{base}{METADATA_PATH}{}", path.trim_end_matches('/'))
    } else {
        format!("{base}{METADATA_PATH}")
    }
}

fn is_mcp_path(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path == "/mcp" || (path.starts_with("/servers/") && path.ends_with("/mcp"))
}

fn refused(auth: &Authenticator, denied: &Denied, base: &str, path: &str) -> Response {
    let mut challenge = String::from("Bearer");
    let mut params = Vec::new();
    if auth.config().jwt.is_some() {
        params.push(format!(
            "resource_metadata=\"{}\"",
            metadata_url(base, path)
        ));
    }
    let (status, code) = match denied {
        Denied::Missing => (StatusCode::UNAUTHORIZED, ApiErrorCode::Unauthorized),
        Denied::Invalid(_) => {
            params.push("error=\"invalid_token\"".into());
            (StatusCode::UNAUTHORIZED, ApiErrorCode::Unauthorized)
        }
        Denied::InsufficientScope(scope) => {
            params.push("error=\"insufficient_scope\"".into());
            params.push(format!("scope=\"{scope}\""));
            (StatusCode::FORBIDDEN, ApiErrorCode::Forbidden)
        }
    };
    if !params.is_empty() {
        challenge.push(' ');
        challenge.push_str(&params.join(", "));
    }
    let mut response = refuse(status, code, denied.message());
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// `GET /.well-known/oauth-protected-resource[/<path>]`: RFC 9728 metadata naming the
/// resource and its authorization server.
pub async fn metadata(
    State(guard): State<Arc<Guard>>,
    request: Request,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let auth = guard.auth.as_ref().ok_or(StatusCode::NOT_FOUND)?;
    let jwt = auth.config().jwt.as_ref().ok_or(StatusCode::NOT_FOUND)?;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_host)
        .map(|h| h.authority())
        .ok_or(StatusCode::BAD_REQUEST)?;
    let base = base_url(auth, request.headers(), &host);
    let resource_path = request
        .uri()
        .path()
        .strip_prefix(METADATA_PATH)
        .unwrap_or("");
    Ok(Json(serde_json::json!({
        "resource": format!("{base}{resource_path}"),
        "authorization_servers": [jwt.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": jwt.required_scopes,
        "resource_name": "mcpq",
    })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn guard(hosts: &[&str], origins: &[&str]) -> Guard {
        Guard {
            auth: None,
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn allowed(g: &Guard, host: &str) -> bool {
        parse_host(host).is_some_and(|h| g.host_allowed(&h))
    }

    #[test]
    fn hosts_default_to_loopback() {
        let g = guard(&[], &[]);
        for ok in ["127.0.0.1:7400", "localhost", "[::1]:80", "LOCALHOST:1"] {
            assert!(allowed(&g, ok), "{ok}");
        }
        for bad in [
            "evil.example:7400",
            "10.0.0.1",
            "",
            "127.0.0.1.evil.example",
        ] {
            assert!(!allowed(&g, bad), "{bad}");
        }
        let g = guard(&["mcpq.example.com", "api.example.com:8443"], &[]);
        assert!(allowed(&g, "mcpq.example.com:443"));
        assert!(allowed(&g, "api.example.com:8443"));
        assert!(!allowed(&g, "api.example.com:80"));
        assert!(!allowed(&g, "localhost"));
    }

    #[test]
    fn a_host_is_read_strictly_and_written_back_as_parsed() {
        for bad in [
            "localhost:x@evil.example",
            "localhost:1\", error=\"x",
            "localhost@evil.example",
            "local host",
            "localhost:",
            "localhost:99999",
            "localhost:80:80",
            "[::1",
            "[::1]x",
            "[not-v6]:80",
            "localhost/path",
        ] {
            assert_eq!(parse_host(bad), None, "{bad}");
        }
        assert_eq!(
            parse_host("LocalHost:7400").unwrap().authority(),
            "localhost:7400"
        );
        assert_eq!(parse_host("[::1]:80").unwrap().authority(), "[::1]:80");
        assert_eq!(parse_host("127.0.0.1").unwrap().authority(), "127.0.0.1");
    }

    #[test]
    fn origins_are_our_own_or_listed() {
        let g = guard(&[], &["https://app.example.com"]);
        assert!(g.origin_allowed("http://127.0.0.1:7400", "127.0.0.1:7400"));
        assert!(g.origin_allowed("https://app.example.com", "127.0.0.1:7400"));
        assert!(!g.origin_allowed("https://evil.example", "127.0.0.1:7400"));
        assert!(!g.origin_allowed("null", "127.0.0.1:7400"));
        assert!(!g.origin_allowed("http://127.0.0.1:9999", "127.0.0.1:7400"));
    }

    #[test]
    fn mcp_endpoints_have_their_own_metadata() {
        assert_eq!(
            metadata_url("https://q.example", "/mcp"),
            "https://q.example/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://q.example", "/servers/github/mcp"),
            "https://q.example/.well-known/oauth-protected-resource/servers/github/mcp"
        );
        assert_eq!(
            metadata_url("https://q.example", "/v1/jobs"),
            "https://q.example/.well-known/oauth-protected-resource"
        );
    }
}
