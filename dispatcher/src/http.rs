//! The dispatcher's HTTP server: the MCP endpoints mounted on an axum router, served with
//! `TCP_NODELAY` on every connection (rmcp answers as SSE; Nagle would stall it).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, routing::get, serve::ListenerExt};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use tokio_util::sync::CancellationToken;

use crate::{Shared, ingress::Gateway, sessions::KvSessions};

/// HTTP options of a dispatcher.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Host names accepted in the `Host` header; empty means loopback names only.
    pub allowed_hosts: Vec<String>,
}

/// The router: `/mcp`, `/servers/<name>/mcp` for each configured server, the `/v1` jobs API,
/// `/healthz`.
///
/// 2026-07-28 clients are served statelessly; 2025-era clients that `initialize` get a session
/// (`Mcp-Session-Id`), which server-to-client requests, `logging/setLevel` and resource
/// subscriptions need; any replica can carry it on (see `sessions`).
pub(crate) fn router(
    shared: Arc<Shared>,
    sessions: Arc<KvSessions>,
    options: &HttpOptions,
    shutdown: &CancellationToken,
) -> Router {
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(true)
        .with_json_response(true)
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_cancellation_token(shutdown.child_token());
    config.session_store = Some(sessions);
    if !options.allowed_hosts.is_empty() {
        config = config.with_allowed_hosts(options.allowed_hosts.clone());
    }
    let mount = |gateway: Gateway| {
        StreamableHttpService::new(
            move || Ok(gateway.fresh()),
            Arc::new(LocalSessionManager::default()),
            config.clone(),
        )
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
    router
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
        .await
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
