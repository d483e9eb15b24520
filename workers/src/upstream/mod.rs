//! One upstream MCP server as a worker sees it: its endpoints (one, or several replicas of an
//! HTTP server), each with a pool of rmcp client sessions opened on first use and opened again
//! when they break (an HTTP connection lost, a stdio child process that died) or sat idle.
//! Calls go to the endpoint `balance::pick` names; an endpoint whose calls keep failing is
//! ejected (passive health) until a ping to it is answered again.

mod balance;
mod events;
pub(crate) mod http;
mod ping;
mod stdio;
mod subscribe;
mod tap;

pub(crate) use tap::{ListTap, Page};

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use mcpq_schemas::config::{
    EndpointRole, LoadBalancing, PoolConfig, SecretError, ServerConfig, Transport,
};
use rmcp::{
    RoleClient,
    model::ProtocolVersion,
    service::{ClientLifecycleMode, ClientServiceExt, Peer, RunningService},
};
use tokio::sync::{Mutex, Notify, mpsc};

pub(crate) use self::events::{Ask, CallEntry, CallEvent, Events, LogRoute, worker_capabilities};
use self::events::{CallsInFlight, Observed, ProgressRoutes};
pub(crate) use self::ping::ping;
pub(crate) use self::subscribe::{Subscriptions, announce, listen_loop};
use crate::lock;

/// How an upstream call went, as far as retries, the circuit breaker and passive health care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream answered (a tool result with `isError: true` is an answer too).
    Answered,
    /// A failure that may go away: connection lost, timeout, upstream process died.
    Retryable,
    /// A failure that will not go away by trying again: malformed job, JSON-RPC error.
    Permanent,
}

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
    /// At least one.
    endpoints: Vec<Endpoint>,
    policy: LoadBalancing,
    pool: PoolConfig,
    /// Failures in a row that eject an endpoint (`health.unhealthyAfter`).
    eject_after: u32,
    /// Calls so far: round robin's position.
    cursor: AtomicU64,
    events: Events,
    /// The tool and prompt names the upstream last listed (metric labels use only these).
    known: std::sync::RwLock<std::collections::HashSet<String>>,
    /// The tools a call of which may take the plain path (none until first listed).
    plain: std::sync::RwLock<std::collections::HashSet<String>>,
}

/// One endpoint: how to reach it, its sessions, and what passive health knows of it.
struct Endpoint {
    /// Its URL (the command, for a stdio server), for logs.
    name: String,
    connector: Connector,
    weight: u32,
    role: EndpointRole,
    /// `pool.maxConnections` slots, each a session once opened, with when it was last used.
    sessions: Mutex<Vec<Option<(Session, Instant)>>>,
    /// The slot the next call takes.
    next: AtomicUsize,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    ejected: AtomicBool,
}

impl Endpoint {
    fn new(
        name: String,
        connector: Connector,
        weight: u32,
        role: EndpointRole,
        pool: PoolConfig,
    ) -> Endpoint {
        Endpoint {
            name,
            connector,
            weight,
            role,
            sessions: Mutex::new((0..pool.max_connections.max(1)).map(|_| None).collect()),
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
        }
    }
}

/// A call's hold on an endpoint: counted in flight until dropped; its verdict feeds passive
/// health.
pub(crate) struct Lease {
    upstream: Upstream,
    endpoint: usize,
    /// The session the call goes on.
    session: u64,
}

impl Lease {
    /// How the call went: failures in a row eject the endpoint, an answer resets the count.
    pub(crate) fn verdict(&self, verdict: Verdict) {
        self.upstream.record(self.endpoint, verdict);
    }

    /// The endpoint the call went to: its URL, or a stdio server's command.
    pub(crate) fn endpoint(&self) -> &str {
        &self.upstream.inner.endpoints[self.endpoint].name
    }

    /// The session the call goes on (request ids and progress tokens are counted per session).
    pub(crate) fn session(&self) -> u64 {
        self.session
    }

    /// The plain path's client, when the endpoint is an HTTP one.
    pub(crate) fn plain(&self) -> Option<Arc<http::Plain>> {
        match &self.upstream.inner.endpoints[self.endpoint].connector {
            Connector::Http(c) => Some(c.plain()),
            Connector::Stdio(_) => None,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.upstream.inner.endpoints[self.endpoint]
            .in_flight
            .fetch_sub(1, Ordering::SeqCst);
    }
}

impl Upstream {
    /// Resolves the server's secrets; nothing is started until the first call.
    pub(crate) fn new(server: &ServerConfig) -> Result<Upstream, UpstreamError> {
        let endpoints = match &server.transport {
            Transport::Http { endpoints, headers } => endpoints
                .iter()
                .map(|e| {
                    let connector = Connector::Http(http::HttpConnector::new(
                        &server.name,
                        &e.url,
                        headers,
                        server.concurrency,
                        server.max_result_bytes,
                    )?);
                    Ok(Endpoint::new(
                        e.url.clone(),
                        connector,
                        e.weight,
                        e.role,
                        server.pool,
                    ))
                })
                .collect::<Result<Vec<_>, UpstreamError>>()?,
            Transport::Stdio { command, args, env } => vec![Endpoint::new(
                command.clone(),
                Connector::Stdio(stdio::StdioConnector::new(
                    &server.name,
                    command,
                    args,
                    env,
                )?),
                1,
                EndpointRole::Primary,
                PoolConfig::default(),
            )],
        };
        let (subscriptions, updates) = Subscriptions::new();
        Ok(Upstream {
            inner: Arc::new(Inner {
                updates: std::sync::Mutex::new(Some(updates)),
                server: server.name.clone(),
                endpoints,
                policy: server.load_balancing,
                pool: server.pool,
                eject_after: server.health.unhealthy_after.max(1),
                cursor: AtomicU64::new(0),
                events: Events {
                    offer_changed: Arc::new(Notify::new()),
                    progress: ProgressRoutes::default(),
                    calls: CallsInFlight::default(),
                    subscriptions,
                    tap: Arc::default(),
                    session: 0,
                },
                known: Default::default(),
                plain: Default::default(),
            }),
        })
    }

    pub(crate) fn server(&self) -> &str {
        &self.inner.server
    }

    /// Whether the upstream's last listing had a tool or prompt of this name.
    pub(crate) fn knows_tool(&self, name: &str) -> bool {
        mcpq_schemas::sync::read(&self.inner.known).contains(name)
    }

    /// Whether a call of this tool may take the plain path (`call::plain`): the catalog
    /// listed it, its schema asks for no `Mcp-Param-*` header (SEP-2243, which rmcp's client
    /// writes), and its name goes in `Mcp-Name` as it is (rmcp encodes any other).
    pub(crate) fn plain_for(&self, tool: &str) -> bool {
        mcpq_schemas::sync::read(&self.inner.plain).contains(tool)
    }

    /// Remembers which of the listed tools may take the plain path.
    pub(crate) fn set_listed_tools<'a>(&self, tools: impl Iterator<Item = &'a rmcp::model::Tool>) {
        let plain_name = |name: &str| {
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && !name.starts_with(' ')
                && !name.ends_with(' ')
                && !name.starts_with("=?")
        };
        *mcpq_schemas::sync::write(&self.inner.plain) = tools
            .filter(|t| {
                plain_name(&t.name) && !mcpq_schemas::catalog::mirrors_params(&t.input_schema)
            })
            .map(|t| t.name.to_string())
            .collect();
    }

    /// Remembers the names the upstream listed.
    pub(crate) fn set_known(&self, names: std::collections::HashSet<String>) {
        *mcpq_schemas::sync::write(&self.inner.known) = names;
    }

    /// The resource subscriptions of this upstream's session.
    pub(crate) fn subscriptions(&self) -> &Subscriptions {
        &self.inner.events.subscriptions
    }

    /// The upstream's resource updates, once (for [`announce`]).
    pub(crate) fn take_updates(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        lock(&self.inner.updates).take()
    }

    pub(crate) fn events(&self) -> &Events {
        &self.inner.events
    }

    /// A peer on the home session — the first healthy primary endpoint's first slot — for
    /// what must stay on one session: the catalog, resource subscriptions, probes.
    pub(crate) async fn home(&self) -> Result<(Peer<RoleClient>, u64), UpstreamError> {
        let endpoints = &self.inner.endpoints;
        let home = endpoints
            .iter()
            .position(|e| e.role == EndpointRole::Primary && !e.ejected.load(Ordering::SeqCst))
            .or_else(|| {
                endpoints
                    .iter()
                    .position(|e| !e.ejected.load(Ordering::SeqCst))
            })
            .unwrap_or(0);
        self.session_peer(home, 0).await
    }

    /// [`Upstream::home`]'s peer alone.
    pub(crate) async fn peer(&self) -> Result<Peer<RoleClient>, UpstreamError> {
        self.home().await.map(|(peer, _)| peer)
    }

    /// A peer for one call, on the endpoint the balancer picks, and the lease that counts it.
    pub(crate) async fn lease(&self) -> Result<(Peer<RoleClient>, Lease), UpstreamError> {
        let views: Vec<balance::View> = self
            .inner
            .endpoints
            .iter()
            .map(|e| balance::View {
                weight: e.weight,
                role: e.role,
                healthy: !e.ejected.load(Ordering::SeqCst),
                in_flight: e.in_flight.load(Ordering::SeqCst),
            })
            .collect();
        let cursor = self.inner.cursor.fetch_add(1, Ordering::SeqCst);
        let index = balance::pick(self.inner.policy, &views, cursor);
        let endpoint = &self.inner.endpoints[index];
        endpoint.in_flight.fetch_add(1, Ordering::SeqCst);
        let lease = Lease {
            upstream: self.clone(),
            endpoint: index,
            session: 0,
        };
        let slot =
            endpoint.next.fetch_add(1, Ordering::SeqCst) % self.inner.pool.max_connections.max(1);
        let peer = self.session_peer(index, slot).await;
        if peer.is_err() {
            lease.verdict(Verdict::Retryable);
        }
        let (peer, session) = peer?;
        let mut lease = lease;
        lease.session = session;
        Ok((peer, lease))
    }

    /// The peer of one session slot of one endpoint, opening it if it is missing, closed, or
    /// idle for longer than `pool.idleTimeout`.
    async fn session_peer(
        &self,
        index: usize,
        slot: usize,
    ) -> Result<(Peer<RoleClient>, u64), UpstreamError> {
        let endpoint = &self.inner.endpoints[index];
        let mut sessions = endpoint.sessions.lock().await;
        let idle = self.inner.pool.idle_timeout;
        if let Some((open, used)) = sessions[slot].as_mut() {
            let fresh = used.elapsed() < idle;
            if fresh && !open.is_closed() && !open.is_transport_closed() {
                *used = Instant::now();
                return Ok((open.peer().clone(), open.service().session));
            }
            if fresh {
                tracing::warn!(server = %self.inner.server, endpoint = %endpoint.name, "upstream session closed; opening a new one");
            }
        }
        let opened = self.open(&endpoint.connector).await?;
        let peer = (opened.peer().clone(), opened.service().session);
        if let Some((old, _)) = sessions[slot].replace((opened, Instant::now())) {
            old.cancellation_token().cancel();
        }
        Ok(peer)
    }

    /// Counts a call's verdict against its endpoint.
    fn record(&self, index: usize, verdict: Verdict) {
        let endpoint = &self.inner.endpoints[index];
        match verdict {
            Verdict::Retryable => {
                let failures = endpoint.failures.fetch_add(1, Ordering::SeqCst) + 1;
                if failures >= self.inner.eject_after
                    && self.inner.endpoints.len() > 1
                    && !endpoint.ejected.swap(true, Ordering::SeqCst)
                {
                    tracing::warn!(server = %self.inner.server, endpoint = %endpoint.name, failures, "endpoint ejected: its calls keep failing; the others take them until a ping to it is answered");
                }
            }
            _ => endpoint.failures.store(0, Ordering::SeqCst),
        }
    }

    /// Pings every ejected endpoint and takes back those that answer; closes sessions idle for
    /// longer than `pool.idleTimeout`. (Run by the health loop.)
    pub(crate) async fn tend(&self, timeout: Duration) {
        for (index, endpoint) in self.inner.endpoints.iter().enumerate() {
            if endpoint.ejected.load(Ordering::SeqCst) {
                let answered =
                    match tokio::time::timeout(timeout, self.session_peer(index, 0)).await {
                        Ok(Ok((peer, _))) => ping(&peer, timeout).await,
                        _ => false,
                    };
                if answered {
                    endpoint.failures.store(0, Ordering::SeqCst);
                    endpoint.ejected.store(false, Ordering::SeqCst);
                    tracing::info!(server = %self.inner.server, endpoint = %endpoint.name, "endpoint answers again; it takes calls");
                }
            }
            if endpoint.in_flight.load(Ordering::SeqCst) == 0
                && let Ok(mut sessions) = endpoint.sessions.try_lock()
            {
                for slot in sessions.iter_mut() {
                    if slot
                        .as_ref()
                        .is_some_and(|(_, used)| used.elapsed() >= self.inner.pool.idle_timeout)
                        && let Some((session, _)) = slot.take()
                    {
                        session.cancellation_token().cancel();
                    }
                }
            }
        }
    }

    /// Whether the server has several endpoints (passive health applies).
    pub(crate) fn replicated(&self) -> bool {
        self.inner.endpoints.len() > 1
    }

    /// Opens a session: 2026-07-28 if the upstream speaks it (`server/discover`), else the
    /// 2025-era `initialize` handshake. A server that knows `server/discover` but serves only
    /// older revisions fails the probe; it gets a fresh connection and `initialize`.
    async fn open(&self, connector: &Connector) -> Result<Session, UpstreamError> {
        let auto = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: None,
        };
        match self.open_with(connector, auto).await {
            Ok(session) => Ok(session),
            Err(UpstreamError::Handshake { reason, .. }) => {
                tracing::debug!(server = %self.inner.server, %reason, "no 2026-07-28 session; trying initialize");
                self.open_with(connector, ClientLifecycleMode::Initialize)
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

    async fn open_with(
        &self,
        connector: &Connector,
        lifecycle: ClientLifecycleMode,
    ) -> Result<Session, UpstreamError> {
        let server = &self.inner.server;
        let handshake = |e: rmcp::service::ClientInitializeError| UpstreamError::Handshake {
            server: server.clone(),
            reason: mcpq_schemas::redact::in_text(&e.to_string()),
        };
        let conversation = self.inner.events.tap.conversation();
        let events = self.inner.events.for_session(conversation.id());
        let started = match connector {
            Connector::Http(c) => {
                let transport = Observed::new(
                    c.transport(conversation.clone()),
                    events.clone(),
                    conversation,
                );
                events.serve_with_lifecycle(transport, lifecycle).await
            }
            Connector::Stdio(c) => {
                let transport =
                    Observed::new(c.spawn(conversation.clone())?, events.clone(), conversation);
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

    /// Closes every session (and so a stdio child), waiting at most `grace` for each.
    pub(crate) async fn close(&self, grace: Duration) {
        for endpoint in &self.inner.endpoints {
            let mut sessions = endpoint.sessions.lock().await;
            for slot in sessions.iter_mut() {
                if let Some((mut session, _)) = slot.take() {
                    let _ = session.close_with_timeout(grace).await;
                }
            }
        }
    }
}
