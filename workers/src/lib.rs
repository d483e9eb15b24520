//! mcpq's worker pools: consume jobs from JetStream, call upstream MCP servers, reply.
//!
//! The modules read as the flow of one job, top to bottom: [`consume`] pulls it (lanes, long
//! polls, drain) → `attempt` runs one delivery to an outcome, decides (pure) and carries the
//! decision out → `gate` says whether it may run now (circuit breaker, 429 pauses, rate
//! limits, lane shares) → `call` turns it into an upstream request and back (questions,
//! cancellation, failures said plainly) → `upstream` holds the sessions (endpoints, balance,
//! transports, ping, subscriptions). `report` — records, replies and dead letters, metrics
//! and audit, heartbeat, health, catalog — is used by the others and uses none of them.
//! Workers never hold client connections.

mod attempt;
mod call;
mod consume;
mod fired;
mod gate;
mod report;
mod upstream;

use std::{sync::Arc, time::Duration};

pub use call::{META_IDEMPOTENCY_KEY, META_JOB_ID};
use mcpq_schemas::{
    config::Config,
    names::{
        BLOBS_BUCKET, CANCELS_BUCKET, CATALOG_BUCKET, HEALTH_BUCKET, RESULTS_BUCKET,
        SCHEDULES_BUCKET, WORKERS_BUCKET,
    },
    nats::{NatsError, Topology, ensure_topology},
};
use tokio_util::sync::CancellationToken;
pub use upstream::UpstreamError;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("unknown server {name:?} (configured: {known})")]
    UnknownServer { name: String, known: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("cannot open bucket {bucket}: {source}")]
    Bucket {
        bucket: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
}

/// How a worker process behaves, beyond the config file.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Names this process in records, dead letters, heartbeats and logs.
    pub worker_id: String,
    /// Servers to serve; empty means every configured server.
    pub servers: Vec<String>,
    /// How long calls in flight may take to finish after shutdown is asked for.
    pub drain_grace: Duration,
    /// How often the tool catalog is refreshed even without a change notification.
    pub catalog_refresh: Duration,
    /// Where this process serves its metrics (`host:port`), shown in its heartbeats.
    pub metrics_addr: Option<String>,
}

impl WorkerOptions {
    pub fn new(worker_id: impl Into<String>) -> Self {
        WorkerOptions {
            worker_id: worker_id.into(),
            servers: Vec::new(),
            drain_grace: Duration::from_secs(30),
            catalog_refresh: Duration::from_secs(300),
            metrics_addr: None,
        }
    }
}

/// A default worker id: host name and process id.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

pub(crate) use mcpq_schemas::sync::lock;

/// The length of `value` as JSON, counted without building the text.
pub(crate) fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Serves the chosen servers until `shutdown` is cancelled, then drains.
pub async fn run(
    client: async_nats::Client,
    config: &Config,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let servers = if options.servers.is_empty() {
        config.servers.clone()
    } else {
        options
            .servers
            .iter()
            .map(|name| {
                config
                    .server(name)
                    .cloned()
                    .ok_or_else(|| WorkerError::UnknownServer {
                        name: name.clone(),
                        known: config.server_names().join(", "),
                    })
            })
            .collect::<Result<_, _>>()?
    };
    let js = async_nats::jetstream::new(client.clone());
    ensure_topology(&js, &Topology::from(config)).await?;
    let bucket = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_key_value(name)
                .await
                .map_err(|e| WorkerError::Bucket {
                    bucket: name,
                    source: e.into(),
                })
        }
    };
    let results = bucket(RESULTS_BUCKET).await?;
    let catalog = bucket(CATALOG_BUCKET).await?;
    let workers = bucket(WORKERS_BUCKET).await?;
    let schedules = bucket(SCHEDULES_BUCKET).await?;
    let health = bucket(HEALTH_BUCKET).await?;
    let alerter = Arc::new(report::health::Alerter::new(config.alerts.clone()));
    let blobs = js
        .get_object_store(BLOBS_BUCKET)
        .await
        .map_err(|e| WorkerError::Bucket {
            bucket: BLOBS_BUCKET,
            source: e.into(),
        })?;
    let outbox = report::outbox::Outbox {
        client: client.clone(),
        js: js.clone(),
        results,
        blobs,
    };
    // Requests stored before this worker started are known before it takes a job.
    let cancels = Arc::new(call::Cancels::default());
    call::cancel::follow(
        bucket(CANCELS_BUCKET).await?,
        cancels.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|source| WorkerError::Bucket {
        bucket: CANCELS_BUCKET,
        source,
    })?;
    // Peers that find a job claimed by this worker ask it whether it still runs the job; it
    // answers until its last call is drained.
    let drained = CancellationToken::new();
    call::cancel::answer_holds(
        client.clone(),
        &options.worker_id,
        cancels.clone(),
        drained.clone(),
    )
    .await
    .map_err(|source| WorkerError::Subscribe {
        subject: mcpq_schemas::names::holds_subject(&mcpq_schemas::names::worker_key(
            &options.worker_id,
        )),
        source,
    })?;

    let signing = mcpq_schemas::nats::signing_key(&js, config.nats.signing_key.as_ref()).await?;
    let (audit, auditing) = report::audit::Audit::start(js.clone(), options.worker_id.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let mut upstreams = Vec::new();
    for server in servers {
        let upstream = upstream::Upstream::new(&server)?;
        upstreams.push(upstream.clone());
        if let Some(updates) = upstream.take_updates() {
            tasks.spawn(upstream::announce(
                client.clone(),
                server.name.clone(),
                updates,
                shutdown.clone(),
            ));
        }
        tasks.spawn(upstream::listen_loop(upstream.clone(), shutdown.clone()));
        tasks.spawn(report::catalog::publish_loop(
            upstream.clone(),
            catalog.clone(),
            js.clone(),
            options.worker_id.clone(),
            options.catalog_refresh,
            shutdown.clone(),
        ));
        let report = Arc::new(report::Report::new(
            &server.name,
            &options.worker_id,
            options.metrics_addr.clone(),
        ));
        let gate = Arc::new(gate::Gate::new(&server, report.clone()));
        tasks.spawn(report::health::watch(
            server.clone(),
            upstream.clone(),
            report.clone(),
            health.clone(),
            alerter.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(fired::run(
            js.clone(),
            server.name.clone(),
            server.fairness.by_principal,
            shutdown.clone(),
        ));
        let ctx = Arc::new(attempt::Context {
            retry: attempt::RetryPolicy::from(server.retry),
            server,
            upstream,
            gate,
            outbox: outbox.clone(),
            report: report.clone(),
            cancels: cancels.clone(),
            call_record_ttl: config.nats.call_record_ttl,
            audit: audit.clone(),
            workers: workers.clone(),
            schedules: schedules.clone(),
            signing: signing.clone(),
            handed_back: Default::default(),
        });
        // The heartbeat lasts until the drain is over: the rate limit stays shared with this
        // worker while it still calls the upstream.
        let pool_drained = CancellationToken::new();
        let heartbeats = workers.clone();
        let (stop, grace) = (shutdown.clone(), options.drain_grace);
        tasks.spawn(async move {
            // Counted before the first job (so this worker never starts with a whole rate
            // limit that others share), in the server's own task (servers start together).
            report::heartbeat::beat(&heartbeats, &report).await;
            let pulling = async {
                consume::run(ctx, stop, grace).await;
                pool_drained.cancel();
            };
            tokio::join!(
                pulling,
                report::heartbeat::run(heartbeats, &report, pool_drained.clone())
            );
        });
    }
    while tasks.join_next().await.is_some() {}
    drained.cancel();
    // Every attempt has ended: what the audit holds goes out.
    drop(audit);
    let _ = tokio::time::timeout(Duration::from_secs(30), auditing).await;
    for upstream in upstreams {
        upstream.close(Duration::from_secs(5)).await;
    }
    // NATS may be gone already; do not hang on it.
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    Ok(())
}
