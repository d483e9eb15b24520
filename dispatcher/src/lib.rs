//! mcpq's front door: MCP endpoints that turn tool calls into JetStream jobs and route the
//! replies back, plus the embeddable [`Client`] for Rust pipelines.
//!
//! Flow: [`ingress`] (MCP `tools/list` from the [`catalog`], `tools/call` → job) →
//! [`publish`] (JetStream publish, wait on the inbox) → `replies` (one inbox subscription per
//! process, demultiplexed by a per-call token, so two callers may wait on one job). The
//! dispatcher never talks to an upstream MCP server.

pub mod api;
pub mod auth;
pub mod batch;
mod bodies;
pub mod callbacks;
pub mod catalog;
pub mod dead_letters;
mod headers;

pub mod http;
pub mod ingress;
mod monitor;
pub mod publish;
mod replies;
pub mod schedules;
mod sessions;
mod shared;
pub mod status;
mod tasks;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

pub use catalog::Catalog;
pub use http::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUESTS, DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_WAITS, DEFAULT_MAX_WAITS_PER_PRINCIPAL, DEFAULT_SAMPLE_EVERY, HttpOptions,
};
pub use ingress::{Gateway, NAME_SEPARATOR};
use mcpq_schemas::{
    config::Config,
    nats::{NatsError, Topology, ensure_topology},
};
pub use publish::{Cancel, Client, ClientError, Submitted};
pub use replies::{EVENTS_UNREAD, Event};
pub use shared::{Refusal, ServerDefaults, Shared};
use tokio_util::sync::CancellationToken;

pub(crate) use mcpq_schemas::sync::lock;

/// A task aborted when its handle is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A bucket or store a dispatcher keeps open (the catalog, sessions, the status sampler's
    /// views, quotas) could not be opened.
    #[error("cannot open {what}: {source}")]
    Open {
        what: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Jwks(#[from] auth::jwt::JwksError),
    #[error("{0}")]
    Callbacks(String),
}

/// A JetStream bucket, stream or object a dispatcher reads could not be reached or read.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StoreError {
    /// The bucket, stream or object, e.g. `bucket mcpq_sessions`.
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// The error of reading `what`, from async-nats's (or any) error.
    pub(crate) fn at<E>(what: impl Into<String>) -> impl FnOnce(E) -> StoreError
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let what = what.into();
        move |source| StoreError {
            what,
            source: source.into(),
        }
    }
}

/// A dispatcher ready to serve: topology ensured, catalog watched, inbox open.
pub struct Dispatcher {
    shared: Arc<Shared>,
    sessions: Arc<sessions::KvSessions>,
    options: HttpOptions,
    auth: Option<Arc<auth::Authenticator>>,
    monitor: Arc<monitor::Monitor>,
    sampler: status::Sampler,
}

impl Dispatcher {
    pub async fn new(
        nats: async_nats::Client,
        config: &Config,
        options: HttpOptions,
    ) -> Result<Dispatcher, DispatcherError> {
        let js = async_nats::jetstream::new(nats.clone());
        ensure_topology(&js, &Topology::from(config)).await?;
        let open =
            |what: &'static str| move |source: StoreError| DispatcherError::Open { what, source };
        let catalog = Catalog::watch(&js)
            .await
            .map_err(open("the catalog bucket"))?;
        let sessions = sessions::KvSessions::open(&js)
            .await
            .map_err(open("the sessions bucket"))?;
        let sampler = status::Sampler::open(
            js.clone(),
            config
                .server_names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
        .await
        .map_err(open("the status sampler's streams"))?;
        let monitor = monitor::Monitor::new(
            nats.clone(),
            options.sample_every,
            options.metrics.clone(),
            config
                .servers
                .iter()
                .map(|s| (s.name.clone(), s.max_queued))
                .collect(),
        );
        let signing =
            mcpq_schemas::nats::signing_key(&js, config.nats.signing_key.as_ref()).await?;
        let client = Client::new(nats)
            .await?
            .signing_with(signing.clone())
            .fair_shares(
                config
                    .servers
                    .iter()
                    .filter(|s| s.fairness.by_principal)
                    .map(|s| s.name.clone()),
            );
        let auth = match &config.auth {
            Some(auth) => Some(Arc::new(auth::Authenticator::new(auth)?)),
            None => None,
        };
        let limited = config.auth.as_ref().is_some_and(|a| {
            a.api_keys.iter().any(|k| !k.limits.is_unlimited())
                || a.jwt
                    .as_ref()
                    .is_some_and(|j| j.rules.iter().any(|r| !r.limits.is_unlimited()))
        });
        let quotas = if limited {
            Some(
                auth::quota::Quotas::open(
                    &js,
                    config
                        .auth
                        .iter()
                        .filter(|a| a.metrics_by_principal)
                        .flat_map(|a| a.api_keys.iter().map(|k| auth::key_principal(&k.principal)))
                        .collect(),
                )
                .await
                .map_err(open("the quotas bucket"))?,
            )
        } else {
            None
        };
        let servers: BTreeMap<_, _> = config
            .servers
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    ServerDefaults {
                        lane: s.lane,
                        timeout: s.timeout,
                        tasks: s.tasks.clone(),
                    },
                )
            })
            .collect();
        Ok(Dispatcher {
            shared: Arc::new(Shared {
                client,
                signing,
                catalog,
                servers,
                result_ttl: config.nats.result_ttl,
                capabilities: Default::default(),
                quotas,
                waits: Arc::new(tokio::sync::Semaphore::new(options.max_waits.max(1))),
                held: Arc::default(),
                per_principal: options.max_waits_per_principal.max(1),
                callbacks: callbacks::Callbacks::from_config(&config.callbacks)
                    .map_err(DispatcherError::Callbacks)?,
            }),
            sessions: Arc::new(sessions),
            options,
            auth,
            monitor,
            sampler,
        })
    }

    /// The catalog this dispatcher serves from.
    pub fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    /// Serves HTTP on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), DispatcherError> {
        let options = self.options.clone();
        let monitor = self.monitor.clone();
        let router = self.into_router(shutdown.clone());
        http::serve(listener, router, &options, monitor, shutdown).await?;
        Ok(())
    }

    /// Every route, as one axum router, for serving in a server of one's own (or driving
    /// in-process, as the HTTP fuzz test does). The connection-level bounds of
    /// [`Dispatcher::serve`] — `--max-connections`, `--max-requests`, `--idle-timeout` — are
    /// not part of it.
    pub fn into_router(self, shutdown: CancellationToken) -> axum::Router {
        let guard = auth::guard::Guard {
            auth: self.auth,
            allowed_hosts: self.options.allowed_hosts.clone(),
            allowed_origins: self.options.allowed_origins.clone(),
        };
        let callbacks = self
            .shared
            .callbacks
            .clone()
            .map(|c| (c, self.shared.client.jetstream().clone()));
        let router = http::router(
            self.shared,
            self.sessions,
            &self.options,
            Arc::new(guard),
            self.monitor.clone(),
            &shutdown,
        );
        tokio::spawn(self.monitor.run(self.sampler, shutdown.clone()));
        if let Some((callbacks, js)) = callbacks {
            tokio::spawn(callbacks::run(js, callbacks, shutdown));
        }
        router
    }

    /// Binds `addr`: the address it is bound to (useful with port 0) and the future that serves
    /// until `shutdown`.
    pub async fn listen(
        self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<
        (
            SocketAddr,
            impl Future<Output = Result<(), DispatcherError>>,
        ),
        DispatcherError,
    > {
        let listener = http::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((local, self.serve(listener, shutdown)))
    }
}
