//! The process's telemetry: the Prometheus recorder every metric of the libraries lands in
//! (with process CPU and memory), and the worker's own listener for `/metrics`, `/healthz`
//! and `/readyz` (`mcpq worker --metrics-listen`).

use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use mcpq_schemas::{
    metrics as m,
    names::{CATALOG_BUCKET, jobs_stream},
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Installs the Prometheus recorder for this process, with mcpq's duration buckets and a
/// description of every metric, and collects process metrics every few seconds.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&m::DURATION_BUCKETS)
        .map_err(|e| format!("cannot set the histogram buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    let collector = metrics_process::Collector::default();
    collector.describe();
    tokio::spawn(async move {
        loop {
            collector.collect();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(m::CALLS_TOTAL, "Jobs ended, by server, tool and outcome");
    describe_histogram!(
        m::CALL_DURATION,
        Unit::Seconds,
        "Submission to end of a job"
    );
    describe_histogram!(
        m::UPSTREAM_DURATION,
        Unit::Seconds,
        "The upstream call alone"
    );
    describe_histogram!(
        m::QUEUE_WAIT,
        Unit::Seconds,
        "Submission to a job's first attempt"
    );
    describe_counter!(m::ATTEMPTS_FAILED, "Attempts that failed, by error kind");
    describe_counter!(m::DEAD_LETTERS, "Jobs written to the dead-letter stream");
    describe_counter!(m::RETRIES, "Failed attempts that will be tried again");
    describe_gauge!(m::QUEUE_DEPTH, "Jobs waiting in a lane");
    describe_gauge!(
        m::QUEUE_ACK_PENDING,
        "Jobs held by workers, not yet acknowledged"
    );
    describe_gauge!(m::DLQ_DEPTH, "Dead letters kept for a server");
    describe_gauge!(m::QUEUE_MAX, "The most jobs a server's queue holds (maxQueued)");
    describe_gauge!(
        m::IN_FLIGHT,
        "Upstream calls running in this worker process"
    );
    describe_histogram!(
        m::RATE_LIMIT_WAIT,
        Unit::Seconds,
        "Time a job waited for the rate limit"
    );
    describe_gauge!(
        m::CIRCUIT_STATE,
        "Circuit breaker: 0 closed, 1 half-open, 2 open"
    );
    describe_gauge!(m::UPSTREAM_UP, "Health checks: 1 up, 0 down");
    describe_counter!(
        m::REQUESTS_TOTAL,
        "HTTP requests answered, by endpoint and status"
    );
    describe_counter!(
        m::AUTH_FAILURES,
        "Requests refused for their credentials, host or origin"
    );
    describe_gauge!(m::QUOTA_USED, "A principal's use of a limit");
}

struct Probe {
    metrics: Option<PrometheusHandle>,
    nats: async_nats::Client,
    servers: Vec<String>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` for a worker process on `addr` until `shutdown`.
/// Ready: connected to NATS, every served server's job stream present and its catalog
/// published.
pub async fn serve_worker(
    addr: SocketAddr,
    metrics: Option<PrometheusHandle>,
    nats: async_nats::Client,
    servers: Vec<String>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (choose another with --metrics-listen)"),
        )
    })?;
    let bound = listener.local_addr()?;
    let probe = std::sync::Arc::new(Probe {
        metrics,
        nats,
        servers,
    });
    let router = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(probe);
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

async fn render(State(probe): State<std::sync::Arc<Probe>>) -> axum::response::Response {
    match &probe.metrics {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are off (--no-metrics)\n").into_response(),
    }
}

async fn ready(State(probe): State<std::sync::Arc<Probe>>) -> axum::response::Response {
    match not_ready(&probe).await {
        None => "ready\n".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn not_ready(probe: &Probe) -> Option<String> {
    if probe.nats.connection_state() != async_nats::connection::State::Connected {
        return Some("not connected to NATS".into());
    }
    let js = async_nats::jetstream::new(probe.nats.clone());
    let checked = tokio::time::timeout(Duration::from_secs(3), async {
        let catalog = js
            .get_key_value(CATALOG_BUCKET)
            .await
            .map_err(|e| format!("bucket {CATALOG_BUCKET}: {e}"))?;
        for server in &probe.servers {
            js.get_stream(jobs_stream(server))
                .await
                .map_err(|e| format!("stream {}: {e}", jobs_stream(server)))?;
            match catalog.get(server).await {
                Ok(Some(_)) => {}
                _ => return Err(format!("server {server:?} has no catalog yet")),
            }
        }
        Ok::<(), String>(())
    })
    .await
    .unwrap_or_else(|_| Err("JetStream did not answer in time".into()));
    checked.err()
}
