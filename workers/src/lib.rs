//! mcpq's worker pools: consume jobs from JetStream, call upstream MCP servers, reply.
//!
//! Per server: a durable pull consumer shared by every worker of that server
//! ([`consume`]), one attempt per delivery ([`attempt`]: decode → call → decide → record,
//! reply, ack / NAK / dead-letter), an rmcp client session to the upstream ([`upstream`]), and
//! the tool catalog published to KV ([`catalog`]). Workers never hold client connections.

mod ask;
mod attempt;
mod call;
mod cancel;
mod catalog;
mod circuit;
mod consume;
mod decide;
mod decode;
mod health;
mod lanes;
mod limit;
mod observe;
mod outbox;
mod pool;
mod subscribe;
mod upstream;

use std::{sync::Arc, time::Duration};

pub use call::{META_IDEMPOTENCY_KEY, META_JOB_ID};
pub use decide::{Decision, RetryPolicy, Verdict, decide};
use mcpq_schemas::{
    config::Config,
    names::{
        BLOBS_BUCKET, CANCELS_BUCKET, CATALOG_BUCKET, HEALTH_BUCKET, RESULTS_BUCKET, WORKERS_BUCKET,
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
    #[error("cannot open bucket {bucket}: {reason}")]
    Bucket {
        bucket: &'static str,
        reason: String,
    },
}

/// How a worker process behaves, beyond the config file.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Names this process in records, dead letters and logs.
    pub worker_id: String,
    /// Servers to serve; empty means every configured server.
    pub servers: Vec<String>,
    /// How long calls in flight may take to finish after shutdown is asked for.
    pub drain_grace: Duration,
    /// How often the tool catalog is refreshed even without a change notification.
    pub catalog_refresh: Duration,
}

impl WorkerOptions {
    pub fn new(worker_id: impl Into<String>) -> Self {
        WorkerOptions {
            worker_id: worker_id.into(),
            servers: Vec::new(),
            drain_grace: Duration::from_secs(30),
            catalog_refresh: Duration::from_secs(300),
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
                    reason: e.to_string(),
                })
        }
    };
    let results = bucket(RESULTS_BUCKET).await?;
    let catalog = bucket(CATALOG_BUCKET).await?;
    let workers = bucket(WORKERS_BUCKET).await?;
    let health = bucket(HEALTH_BUCKET).await?;
    let alerter = Arc::new(health::Alerter::new(config.alerts.clone()));
    let blobs = js
        .get_object_store(BLOBS_BUCKET)
        .await
        .map_err(|e| WorkerError::Bucket {
            bucket: BLOBS_BUCKET,
            reason: e.to_string(),
        })?;
    // Requests stored before this worker started are known before it takes a job.
    let cancels = Arc::new(cancel::Cancels::default());
    cancel::follow(
        bucket(CANCELS_BUCKET).await?,
        cancels.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|reason| WorkerError::Bucket {
        bucket: CANCELS_BUCKET,
        reason,
    })?;

    let mut tasks = tokio::task::JoinSet::new();
    let mut upstreams = Vec::new();
    for server in servers {
        let upstream = upstream::Upstream::new(&server)?;
        upstreams.push(upstream.clone());
        if let Some(updates) = upstream.take_updates() {
            tasks.spawn(subscribe::announce(
                client.clone(),
                server.name.clone(),
                updates,
                shutdown.clone(),
            ));
        }
        tasks.spawn(subscribe::listen_loop(upstream.clone(), shutdown.clone()));
        tasks.spawn(catalog::publish_loop(
            upstream.clone(),
            catalog.clone(),
            options.worker_id.clone(),
            options.catalog_refresh,
            shutdown.clone(),
        ));
        let retry = RetryPolicy::from(server.retry);
        let limiter = server.rate_limit.map(|l| Arc::new(limit::Limiter::new(l)));
        let tool_limiters = server
            .tool_rate_limits
            .iter()
            .map(|(tool, l)| (tool.clone(), Arc::new(limit::Limiter::new(*l))))
            .collect();
        let ack_wait = server.ack_wait;
        let breaker = server.circuit_breaker.map(|c| {
            std::sync::Mutex::new(circuit::Breaker::new(c.failure_threshold, c.reset_timeout))
        });
        let meters = observe::Meters::new(&server.name);
        let pool = Arc::new(pool::Pool {
            server,
            upstream,
            outbox: outbox::Outbox {
                client: client.clone(),
                js: js.clone(),
                results: results.clone(),
                blobs: blobs.clone(),
            },
            retry,
            ack_wait,
            limiter,
            tool_limiters,
            breaker,
            circuit_changed: tokio::sync::Notify::new(),
            held_until: std::sync::Mutex::new(None),
            cancels: cancels.clone(),
            worker_id: options.worker_id.clone(),
            stats: Default::default(),
            up: Default::default(),
            meters,
        });
        // The heartbeat outlives the pull loop by its drain, so peers keep our share until then.
        tasks.spawn(limit::heartbeat(
            workers.clone(),
            pool.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(health::watch(
            pool.clone(),
            health.clone(),
            alerter.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(consume::run(pool, shutdown.clone(), options.drain_grace));
    }
    while tasks.join_next().await.is_some() {}
    for upstream in upstreams {
        upstream.close(Duration::from_secs(5)).await;
    }
    // NATS may be gone already; do not hang on it.
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    Ok(())
}
