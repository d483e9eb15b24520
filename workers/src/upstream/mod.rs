//! One upstream MCP server as a worker sees it: an rmcp client session, opened on first use and
//! opened again when it breaks (an HTTP connection lost, a stdio child process that died).

mod events;
mod http;
mod stdio;

use std::{sync::Arc, time::Duration};

use mcpq_schemas::config::{SecretError, ServerConfig, Transport};
use rmcp::{
    RoleClient,
    model::ProtocolVersion,
    service::{ClientLifecycleMode, ClientServiceExt, Peer, RunningService},
};
use tokio::sync::{Mutex, Notify, mpsc};

pub(crate) use self::events::{CallEntry, CallEvent, Events, LogRoute};
use self::events::{CallsInFlight, Observed, ProgressRoutes};
use crate::subscribe::Subscriptions;

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
    /// The receiving end of the resource updates, until the worker takes it.
    updates: std::sync::Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    server: String,
    connector: Connector,
    session: Mutex<Option<Session>>,
    events: Events,
    /// The tool and prompt names the upstream last listed (metric labels use only these).
    known: std::sync::RwLock<std::collections::HashSet<String>>,
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
                server.max_result_bytes,
            )?),
            Transport::Stdio { command, args, env } => Connector::Stdio(
                stdio::StdioConnector::new(&server.name, command, args, env)?,
            ),
        };
        let (subscriptions, updates) = Subscriptions::new();
        Ok(Upstream {
            inner: Arc::new(Inner {
                updates: std::sync::Mutex::new(Some(updates)),
                server: server.name.clone(),
                connector,
                session: Mutex::new(None),
                events: Events {
                    offer_changed: Arc::new(Notify::new()),
                    progress: ProgressRoutes::default(),
                    calls: CallsInFlight::default(),
                    subscriptions,
                },
                known: Default::default(),
            }),
        })
    }

    pub(crate) fn server(&self) -> &str {
        &self.inner.server
    }

    /// Whether the upstream's last listing had a tool or prompt of this name.
    pub(crate) fn knows_tool(&self, name: &str) -> bool {
        self.inner
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
    }

    /// Remembers the names the upstream listed.
    pub(crate) fn set_known(&self, names: std::collections::HashSet<String>) {
        *self
            .inner
            .known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
    }

    /// The resource subscriptions of this upstream's session.
    pub(crate) fn subscriptions(&self) -> &Subscriptions {
        &self.inner.events.subscriptions
    }

    /// The upstream's resource updates, once (for `subscribe::announce`).
    pub(crate) fn take_updates(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        lock(&self.inner.updates).take()
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

    /// Opens a session: 2026-07-28 if the upstream speaks it (`server/discover`), else the
    /// 2025-era `initialize` handshake. A server that knows `server/discover` but serves only
    /// older revisions fails the probe; it gets a fresh connection and `initialize`.
    async fn open(&self) -> Result<Session, UpstreamError> {
        let auto = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: None,
        };
        match self.open_with(auto).await {
            Ok(session) => Ok(session),
            Err(UpstreamError::Handshake { reason, .. }) => {
                tracing::debug!(server = %self.inner.server, %reason, "no 2026-07-28 session; trying initialize");
                self.open_with(ClientLifecycleMode::Initialize)
                    .await
                    .map_err(|e| match e {
                        UpstreamError::Handshake {
                            server,
                            reason: legacy,
                        } => UpstreamError::Handshake {
                            server,
                            reason: format!("{reason}; then with initialize: {legacy}"),
                        },
                        other => other,
                    })
            }
            Err(e) => Err(e),
        }
    }

    async fn open_with(&self, lifecycle: ClientLifecycleMode) -> Result<Session, UpstreamError> {
        let server = &self.inner.server;
        let handshake = |e: rmcp::service::ClientInitializeError| UpstreamError::Handshake {
            server: server.clone(),
            reason: mcpq_schemas::redact::in_text(&e.to_string()),
        };
        let events = self.inner.events.clone();
        let started = match &self.inner.connector {
            Connector::Http(c) => {
                let transport = Observed::new(c.transport(), events.clone());
                events.serve_with_lifecycle(transport, lifecycle).await
            }
            Connector::Stdio(c) => {
                let transport = Observed::new(c.spawn()?, events.clone());
                events.serve_with_lifecycle(transport, lifecycle).await
            }
        };
        let session = started.map_err(handshake)?;
        let revision = session
            .peer()
            .peer_info()
            .map(|i| i.protocol_version.to_string());
        tracing::info!(server = %server, revision = revision.as_deref().unwrap_or("?"), "upstream session open");
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
