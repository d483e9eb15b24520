//! One upstream MCP server as a worker sees it: an rmcp client session, opened on first use and
//! opened again when it breaks (an HTTP connection lost, a stdio child process that died).

mod http;
mod stdio;

use std::{collections::HashMap, sync::Arc, time::Duration};

use mcpq_schemas::{
    Progress,
    config::{SecretError, ServerConfig, Transport},
};
use rmcp::{
    ClientHandler, RoleClient,
    model::{
        ClientCapabilities, ClientConfig, Implementation, ProgressNotificationParam, ProgressToken,
        ProtocolVersion,
    },
    service::{ClientLifecycleMode, ClientServiceExt, NotificationContext, Peer, RunningService},
};
use tokio::sync::{Mutex, Notify, mpsc};

/// Why an upstream session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("server {server:?}: {source}")]
    Secret {
        server: String,
        #[source]
        source: SecretError,
    },
    #[error("server {server:?}: header {header:?} has a value that is not a valid HTTP header")]
    BadHeader { server: String, header: String },
    #[error("server {server:?}: cannot start {command:?}: {reason} (is it installed and on PATH?)")]
    Spawn {
        server: String,
        command: String,
        reason: String,
    },
    #[error("server {server:?}: MCP handshake failed: {reason}")]
    Handshake { server: String, reason: String },
}

/// How to open a session: the transport with every secret resolved.
#[derive(Clone)]
enum Connector {
    Http(http::HttpConnector),
    Stdio(stdio::StdioConnector),
}

type Session = RunningService<RoleClient, Events>;

/// A shared handle on one upstream; cheap to clone.
#[derive(Clone)]
pub(crate) struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    server: String,
    connector: Connector,
    session: Mutex<Option<Session>>,
    events: Events,
}

/// Where each call in flight wants its progress, by the progress token rmcp gave its request.
pub(crate) type ProgressRoutes =
    Arc<std::sync::Mutex<HashMap<ProgressToken, mpsc::UnboundedSender<Progress>>>>;

/// What the upstream tells us outside of replies.
#[derive(Clone)]
pub(crate) struct Events {
    /// Signalled when the upstream says its tool list changed.
    pub tools_changed: Arc<Notify>,
    /// `notifications/progress` go to the call that holds the token.
    pub progress: ProgressRoutes,
}

impl ClientHandler for Events {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.notify_one();
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let routes = self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(route) = routes.get(&params.progress_token) {
            let _ = route.send(Progress {
                progress: params.progress,
                total: params.total,
                message: params.message,
            });
        }
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcpq-worker", env!("CARGO_PKG_VERSION")),
        )
    }
}

impl Upstream {
    /// Resolves the server's secrets; nothing is started until the first call.
    pub(crate) fn new(server: &ServerConfig) -> Result<Upstream, UpstreamError> {
        let connector = match &server.transport {
            Transport::Http { endpoint, headers } => Connector::Http(http::HttpConnector::new(
                &server.name,
                endpoint,
                headers,
                server.concurrency,
            )?),
            Transport::Stdio { command, args, env } => Connector::Stdio(
                stdio::StdioConnector::new(&server.name, command, args, env)?,
            ),
        };
        Ok(Upstream {
            inner: Arc::new(Inner {
                server: server.name.clone(),
                connector,
                session: Mutex::new(None),
                events: Events {
                    tools_changed: Arc::new(Notify::new()),
                    progress: ProgressRoutes::default(),
                },
            }),
        })
    }

    pub(crate) fn server(&self) -> &str {
        &self.inner.server
    }

    pub(crate) fn events(&self) -> &Events {
        &self.inner.events
    }

    /// A peer on a live session, opening one if there is none or the last one closed.
    pub(crate) async fn peer(&self) -> Result<Peer<RoleClient>, UpstreamError> {
        let mut session = self.inner.session.lock().await;
        if let Some(open) = session.as_ref() {
            if !open.is_closed() && !open.is_transport_closed() {
                return Ok(open.peer().clone());
            }
            tracing::warn!(server = %self.inner.server, "upstream session closed; opening a new one");
        }
        let opened = self.open().await?;
        let peer = opened.peer().clone();
        if let Some(old) = session.replace(opened) {
            old.cancellation_token().cancel();
        }
        Ok(peer)
    }

    async fn open(&self) -> Result<Session, UpstreamError> {
        let lifecycle = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: None,
        };
        let server = &self.inner.server;
        let handshake = |e: rmcp::service::ClientInitializeError| UpstreamError::Handshake {
            server: server.clone(),
            reason: e.to_string(),
        };
        let events = self.inner.events.clone();
        let started = match &self.inner.connector {
            Connector::Http(c) => events.serve_with_lifecycle(c.transport(), lifecycle).await,
            Connector::Stdio(c) => {
                let transport = c.spawn()?;
                events.serve_with_lifecycle(transport, lifecycle).await
            }
        };
        let session = started.map_err(handshake)?;
        tracing::info!(server = %server, "upstream session open");
        Ok(session)
    }

    /// Closes the session (and so a stdio child), waiting at most `grace`.
    pub(crate) async fn close(&self, grace: Duration) {
        if let Some(mut session) = self.inner.session.lock().await.take() {
            let _ = session.close_with_timeout(grace).await;
        }
    }
}
