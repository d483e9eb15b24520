//! The dispatcher's HTTP server: the MCP endpoints mounted on an axum router, served with
//! `TCP_NODELAY` on every connection (rmcp answers as SSE; Nagle would stall it).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::Request, http::Method, response::IntoResponse, routing::get};
use rmcp::transport::{
    common::http_header::HEADER_SESSION_ID,
    streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    Shared,
    auth::guard::{Guard, METADATA_PATH},
    ingress::{self, Gateway, as_written},
    sessions::KvSessions,
};

/// HTTP options of a dispatcher.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Host names accepted in the `Host` header; empty means loopback names only.
    pub allowed_hosts: Vec<String>,
    /// Browser origins that may call, besides the dispatcher's own (a request with any other
    /// `Origin` is refused).
    pub allowed_origins: Vec<String>,
    /// HTTP requests served at once (an MCP call holds one for as long as it runs); more are
    /// answered 503 with `Retry-After` at once.
    pub max_requests: usize,
    /// `/v1/jobs/{id}/wait` long polls open at once (each holds a JetStream watch); more are
    /// answered 429 with `Retry-After`.
    pub max_waits: usize,
    /// Long polls, and 2026-07-28 listen streams, one principal may hold open at once.
    pub max_waits_per_principal: usize,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// 2025-era sessions one principal may hold open through this dispatcher; one more
    /// `initialize` is answered 429.
    pub max_sessions: usize,
    /// How long a connection may take to send a request's headers, and stay open idle between
    /// requests; then it is closed.
    pub idle_timeout: Duration,
    /// The process's Prometheus recorder, rendered at `/metrics`; `None`: metrics are off.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// How often the queues are sampled (gauges, status page, readiness).
    pub sample_every: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_requests: DEFAULT_MAX_REQUESTS,
            max_waits: DEFAULT_MAX_WAITS,
            max_waits_per_principal: DEFAULT_MAX_WAITS_PER_PRINCIPAL,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_sessions: DEFAULT_MAX_SESSIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            metrics: None,
            sample_every: DEFAULT_SAMPLE_EVERY,
        }
    }
}

/// Connections open at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Sessions one principal may hold open through one dispatcher by default.
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// Time to send headers, or to stay idle between requests, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the queues are sampled by default.
pub const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Requests served at once by default.
pub const DEFAULT_MAX_REQUESTS: usize = 10_000;
/// Long polls open at once by default.
pub const DEFAULT_MAX_WAITS: usize = 1_000;
/// Long polls (and listen streams) one principal may hold open at once by default.
pub const DEFAULT_MAX_WAITS_PER_PRINCIPAL: usize = 100;

/// The answer when `max_requests` requests are in flight already: 503 (JSON,
/// `Retry-After: 1`) at once, instead of taking on more than the process can hold.
fn busy() -> axum::response::Response {
    let body = mcpq_schemas::api::ApiError {
        code: mcpq_schemas::api::ApiErrorCode::Unavailable,
        message: "the dispatcher serves as many requests as it may at once (--max-requests); try again shortly".into(),
    };
    let mut response = (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(body),
    )
        .into_response();
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}

/// The router: `/mcp`, `/servers/<name>/mcp` for each configured server, the `/v1` jobs API,
/// `/healthz`.
///
/// Each MCP endpoint is two rmcp services: requests of a session (an `Mcp-Session-Id`, or the
/// `initialize` that opens one) go to the one with 2025-era sessions — server-to-client
/// requests, `logging/setLevel` and resource subscriptions need them, and any replica carries a
/// session on (see `sessions`) — every other request to the stateless one: 2026-07-28 clients,
/// and 2025-era requests that never opened a session (as before sessions existed here).
pub(crate) fn router(
    shared: Arc<Shared>,
    sessions: Arc<KvSessions>,
    options: &HttpOptions,
    guard: Arc<Guard>,
    monitor: Arc<crate::monitor::Monitor>,
    shutdown: &CancellationToken,
) -> Router {
    let mut stateless = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_cancellation_token(shutdown.child_token());
    if !options.allowed_hosts.is_empty() {
        stateless = stateless.with_allowed_hosts(options.allowed_hosts.clone());
    }
    let mut with_sessions = stateless.clone().with_legacy_session_mode(true);
    with_sessions.session_store = Some(sessions.clone());
    let max_sessions = options.max_sessions;
    let mount = |gateway: Gateway| {
        let service = |config: &StreamableHttpServerConfig| {
            let gateway = gateway.clone();
            StreamableHttpService::new(
                move || Ok(gateway.fresh()),
                Arc::new(LocalSessionManager::default()),
                config.clone(),
            )
        };
        let (stateless, with_sessions) = (service(&stateless), service(&with_sessions));
        let sessions = sessions.clone();
        tower::service_fn(move |request: Request| {
            let (stateless, with_sessions) = (stateless.clone(), with_sessions.clone());
            let (gateway, sessions) = (gateway.clone(), sessions.clone());
            async move {
                let (response, asked) = match route(request).await {
                    Route::Session(request) => {
                        let (request, asked) = match list_request(request).await {
                            Ok(read) => read,
                            Err(refused) => return Ok(refused),
                        };
                        match owned_session(&sessions, request, max_sessions).await {
                            Ok((request, opening)) => {
                                let response = with_sessions.oneshot(request).await;
                                settle_session(&sessions, opening, &response).await;
                                (response, asked)
                            }
                            Err(refused) => return Ok(refused),
                        }
                    }
                    Route::Stateless(parts, body) => {
                        match ingress::plain::take(&parts, &body, |tool| {
                            gateway.mirrors_params(tool)
                        }) {
                            Some(taken) => {
                                // The request is read out: its buffers go before the call waits.
                                drop((parts, body));
                                return Ok(ingress::plain::answer(gateway, taken).await);
                            }
                            None => {
                                let asked = as_written::asked(&body, parts.extensions.get());
                                let request =
                                    Request::from_parts(parts, axum::body::Body::from(body));
                                (stateless.oneshot(request).await, asked)
                            }
                        }
                    }
                };
                let response =
                    response.map_or_else(|never| match never {}, |r| r.map(axum::body::Body::new));
                Ok::<_, std::convert::Infallible>(match asked {
                    Some(asked) => as_written::answer(&gateway, &asked, response).await,
                    None => response,
                })
            }
        })
    };
    let mut router = crate::api::routes(shared.clone())
        .route("/healthz", get(|| async { "ok\n" }))
        .nest_service("/mcp", mount(Gateway::all(shared.clone())));
    for name in shared.servers.keys() {
        router = router.nest_service(
            &format!("/servers/{name}/mcp"),
            mount(Gateway::server(shared.clone(), name.clone())),
        );
    }
    let metadata = Router::new()
        .route(METADATA_PATH, get(crate::auth::guard::metadata))
        .route(
            &format!("{METADATA_PATH}/{{*resource}}"),
            get(crate::auth::guard::metadata),
        )
        .with_state(guard.clone());
    router
        .merge(metadata)
        .merge(crate::monitor::routes(monitor))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::auth::guard::guard,
        ))
}

/// What a session request does to the sessions held open.
enum Opening {
    /// It names a session (its id); a DELETE closes it.
    Uses { id: String, delete: bool },
    /// It may open one, for this principal.
    Opens(String),
}

/// A session is its opener's: a request naming a session another principal opened is
/// answered as if there were no such session (404), and a principal holding `max_sessions`
/// open through this replica cannot open another (429).
async fn owned_session(
    sessions: &KvSessions,
    request: Request,
    max_sessions: usize,
) -> Result<(Request, Opening), axum::response::Response> {
    let principal = request
        .extensions()
        .get::<crate::auth::Caller>()
        .and_then(|caller| caller.principal())
        .unwrap_or("")
        .to_string();
    let session = request
        .headers()
        .get(HEADER_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match session {
        Some(id) => {
            if !sessions.owned_by(&id, &principal).await {
                return Err(json_rpc_refusal(
                    axum::http::StatusCode::NOT_FOUND,
                    -32001,
                    "Session not found (open one with initialize)",
                ));
            }
            let delete = request.method() == Method::DELETE;
            Ok((request, Opening::Uses { id, delete }))
        }
        None => {
            if request.method() == Method::POST && !sessions.may_open(&principal, max_sessions) {
                return Err(json_rpc_refusal(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    -32000,
                    &format!(
                        "this caller holds {max_sessions} sessions open already (--max-sessions): close one (DELETE) or use the stateless 2026-07-28 protocol"
                    ),
                ));
            }
            Ok((request, Opening::Opens(principal)))
        }
    }
}

/// Notes a session opened (its id in the response) or closed.
async fn settle_session<B, E>(
    sessions: &KvSessions,
    opening: Opening,
    response: &Result<axum::http::Response<B>, E>,
) {
    let Ok(response) = response else { return };
    match opening {
        Opening::Uses { id, delete } => {
            if delete && response.status().is_success() {
                sessions.closed(&id);
            }
        }
        Opening::Opens(principal) => {
            if let Some(id) = response
                .headers()
                .get(HEADER_SESSION_ID)
                .and_then(|v| v.to_str().ok())
            {
                sessions.opened(id, &principal).await;
            }
        }
    }
}

/// An HTTP refusal with a JSON-RPC error body, as MCP clients read them.
fn json_rpc_refusal(
    status: axum::http::StatusCode,
    code: i64,
    message: &str,
) -> axum::response::Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    });
    (status, axum::Json(body)).into_response()
}

/// The most of a sessionless POST body read to see whether it is an `initialize` (rmcp's own
/// limit; a larger body is refused there).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Where a request to an MCP endpoint goes.
enum Route {
    /// To the service with 2025-era sessions, as it is.
    Session(Request),
    /// Sessionless, its body read: to the plain JSON path when it takes it, else to rmcp's
    /// stateless service.
    Stateless(axum::http::request::Parts, bytes::Bytes),
}

/// Whether the request belongs to a session: it names one, or it is the `initialize` that opens
/// one (a POST whose JSON-RPC method is `initialize`). The body is read for that only when the
/// request names no session, and handed on unchanged.
async fn route(request: Request) -> Route {
    if request.headers().contains_key(HEADER_SESSION_ID) || request.method() != Method::POST {
        return Route::Session(request);
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Route::Stateless(parts, bytes::Bytes::new());
    };
    let initialize = mentions_initialize(&bytes)
        && serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|v| v.get("method").and_then(|m| m.as_str()) == Some("initialize"));
    if initialize {
        Route::Session(Request::from_parts(parts, axum::body::Body::from(bytes)))
    } else {
        Route::Stateless(parts, bytes)
    }
}

/// A session's POST with its body read, and the list request it is, if it is one (its answer
/// gets the upstreams' own definitions: `ingress::as_written`).
///
/// Only a small body with a length is read here (a list request is a few hundred bytes); any
/// other goes on to rmcp unread, as it came.
async fn list_request(
    request: Request,
) -> Result<(Request, Option<as_written::Asked>), axum::response::Response> {
    const SMALL: u64 = 64 * 1024;
    let length = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if request.method() != Method::POST || length.is_none_or(|n| n > SMALL) {
        return Ok((request, None));
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, SMALL as usize).await else {
        return Err((
            axum::http::StatusCode::BAD_REQUEST,
            "the request body was not as long as its Content-Length said\n",
        )
            .into_response());
    };
    let asked = as_written::asked(&bytes, parts.extensions.get());
    Ok((
        Request::from_parts(parts, axum::body::Body::from(bytes)),
        asked,
    ))
}

/// A cheap look for the word before parsing: most requests are not `initialize`.
fn mentions_initialize(bytes: &[u8]) -> bool {
    bytes
        .windows(b"\"initialize\"".len())
        .any(|w| w == b"\"initialize\"")
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
///
/// Not `axum::serve`: that serves a connection for as long as the peer keeps it, silent or not.
/// Here each connection holds one of `max_connections` slots (one more is closed on accept),
/// and hyper closes one that takes longer than `idle_timeout` to send a request's headers —
/// which covers a silent new connection and an idle kept-alive one alike.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    options: &HttpOptions,
    monitor: Arc<crate::monitor::Monitor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    // Requests in flight are counted here rather than in a middleware: axum boxes a
    // middleware's future per request, and a thousand calls in flight hold a thousand of those.
    let requests = Arc::new(tokio::sync::Semaphore::new(options.max_requests.max(1)));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let tcp = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("connection refused: --max-connections are open");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (router, requests, monitor) = (router.clone(), requests.clone(), monitor.clone());
        let patience = options.idle_timeout;
        let service = hyper_util::service::TowerToHyperService::new(tower::service_fn(
            move |request: Request<hyper::body::Incoming>| {
                let (router, requests) = (router.clone(), requests.clone());
                let endpoint = monitor.endpoint(request.uri().path());
                async move {
                    let response = match requests.try_acquire_owned() {
                        // The slot goes with the response body: a streamed answer holds it
                        // until its last event; a request body must keep arriving.
                        Ok(slot) => {
                            let request = request.map(|body| {
                                axum::body::Body::new(crate::bodies::Timed::new(body, patience))
                            });
                            router.oneshot(request).await.map(|response| {
                                response.map(|body| crate::bodies::Held::around(body, slot))
                            })
                        }
                        Err(_) => Ok(busy()),
                    };
                    if let Ok(response) = &response {
                        crate::monitor::count_request(endpoint, response.status());
                    }
                    response
                }
            },
        ));
        let idle_timeout = options.idle_timeout;
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(idle_timeout);
            let connection = http1
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Binds `addr`, saying clearly when it is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (choose another with --listen)"),
        )
    })
}
