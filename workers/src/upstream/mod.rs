//! One upstream MCP server as a worker sees it: an rmcp client session, opened on first use and
//! opened again when it breaks (an HTTP connection lost, a stdio child process that died).

mod http;
mod stdio;

use std::{collections::HashMap, sync::Arc, time::Duration};

use mcpq_schemas::{
    LogMessage, Progress, bridge,
    config::{SecretError, ServerConfig, Transport},
};
#[allow(deprecated)] // logging is deprecated by SEP-2577; upstreams still log
use rmcp::{
    ClientHandler, RoleClient,
    model::{
        ClientCapabilities, ClientConfig, Implementation, LoggingMessageNotificationParam,
        ProgressNotificationParam, ProgressToken, ProtocolVersion,
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

/// What the upstream reports during one call, in the order it reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CallEvent {
    Progress(Progress),
    Log(LogMessage),
}

/// Where each call in flight wants its progress, by the progress token rmcp gave its request.
pub(crate) type ProgressRoutes =
    Arc<std::sync::Mutex<HashMap<ProgressToken, mpsc::UnboundedSender<CallEvent>>>>;

/// Every call in flight on this upstream, by a number of the worker's; those whose caller wants
/// log messages hold where to send them and from which level.
pub(crate) type CallsInFlight = Arc<std::sync::Mutex<HashMap<u64, Option<LogRoute>>>>;

/// Where one call's log messages go.
#[derive(Clone)]
pub(crate) struct LogRoute {
    pub to: mpsc::UnboundedSender<CallEvent>,
    pub min_level: String,
}

/// What the upstream tells us outside of replies.
#[derive(Clone)]
pub(crate) struct Events {
    /// Signalled when the upstream says its tools, resources or prompts changed.
    pub offer_changed: Arc<Notify>,
    /// `notifications/progress` go to the call that holds the token.
    pub progress: ProgressRoutes,
    /// `notifications/message` go to the call in flight, when there is exactly one.
    pub calls: CallsInFlight,
}

impl ClientHandler for Events {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.offer_changed.notify_one();
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.offer_changed.notify_one();
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.offer_changed.notify_one();
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let routes = lock(&self.progress);
        if let Some(route) = routes.get(&params.progress_token) {
            let _ = route.send(CallEvent::Progress(Progress {
                progress: params.progress,
                total: params.total,
                message: params.message,
            }));
        }
    }

    #[allow(deprecated)] // logging is deprecated by SEP-2577; upstreams still log
    /// A log message names no request, so it can only be given to the call it belongs to
    /// when one call alone is in flight on this session; otherwise it is not guessed at (and
    /// never shown to another caller), only logged here.
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let level = serde_json::to_value(params.level)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "info".into());
        let calls = lock(&self.calls);
        let mut only = calls.values();
        match (only.next(), only.next()) {
            (Some(Some(route)), None) if bridge::log_passes(&level, &route.min_level) => {
                let _ = route.to.send(CallEvent::Log(LogMessage {
                    level,
                    logger: params.logger,
                    data: params.data,
                }));
            }
            _ => tracing::debug!(level, data = %params.data, "upstream log message"),
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
                    offer_changed: Arc::new(Notify::new()),
                    progress: ProgressRoutes::default(),
                    calls: CallsInFlight::default(),
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

pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
