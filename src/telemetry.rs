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
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            collector.collect();
            // Histograms keep their samples until drained: without a scrape they would grow
            // by a few bytes per call for ever.
            upkeep.run_upkeep();
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
    describe_gauge!(
        m::QUEUE_MAX,
        "The most jobs a server's queue holds (maxQueued)"
    );
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
    /// Ready only once each server's catalog is published (a worker's own servers).
    need_catalog: bool,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`, without the
/// dispatcher's guard (an internal port, for Prometheus and the kubelet). Ready: connected to
/// NATS, every server's job stream present and, with `need_catalog` (a worker), its catalog
/// published.
pub async fn serve_probes(
    addr: SocketAddr,
    metrics: Option<PrometheusHandle>,
    nats: async_nats::Client,
    servers: Vec<String>,
    need_catalog: bool,
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
        need_catalog,
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
            if probe.need_catalog && !matches!(catalog.get(server).await, Ok(Some(_))) {
                return Err(format!("server {server:?} has no catalog yet"));
            }
        }
        Ok::<(), String>(())
    })
    .await
    .unwrap_or_else(|_| Err("JetStream did not answer in time".into()));
    checked.err()
}

/// What must happen before the process exits: spans still buffered are sent.
pub struct TraceExport(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl TraceExport {
    pub fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(e) = provider.shutdown()
        {
            eprintln!("mcpq: cannot send the last spans: {e}");
        }
    }
}

/// Logs to stderr (filter `MCPQ_LOG`), and spans to the OTLP/HTTP collector at
/// `telemetry.otlpEndpoint` when the config names one.
pub fn init_tracing(telemetry: Option<&mcpq_schemas::config::TelemetryConfig>) -> TraceExport {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCPQ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn,async_nats=warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let provider = telemetry
        .and_then(|t| t.otlp_endpoint.as_deref().map(|url| (url, t)))
        .and_then(
            |(url, t)| match otlp_provider(url, t.service_name.as_deref()) {
                Ok(provider) => Some(provider),
                Err(e) => {
                    eprintln!("mcpq: no trace export to {url}: {e}");
                    None
                }
            },
        );
    mcpq_schemas::trace::set_exporting(provider.is_some());
    let otel = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer().with_tracer(provider.tracer("mcpq"))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    TraceExport(provider)
}

fn otlp_provider(
    endpoint: &str,
    service: Option<&str>,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(service.unwrap_or("mcpq").to_string())
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
