//! The dispatcher watching itself and the queues: a sampling loop (every few seconds: the queue
//! gauges, the status page's history, readiness), and the routes that show it — `/metrics`
//! (Prometheus text), `/readyz`, `/status.json` and the status page at `/`.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use mcpq_schemas::metrics as m;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    lock,
    status::{Sampler, Window},
};

/// What the sampling loop found last.
pub(crate) struct Monitor {
    nats: async_nats::Client,
    window: Mutex<Window>,
    /// When a sample last succeeded (the streams answered).
    last_ok: Mutex<Option<Instant>>,
    /// Why the last sample failed, if it did.
    last_error: Mutex<Option<String>>,
    every: Duration,
    metrics: Option<PrometheusHandle>,
    servers: BTreeSet<String>,
    /// Each server's `maxQueued`.
    queue_max: Vec<(String, u64)>,
}

impl Monitor {
    pub(crate) fn new(
        nats: async_nats::Client,
        every: Duration,
        metrics: Option<PrometheusHandle>,
        queue_max: Vec<(String, u64)>,
    ) -> Arc<Monitor> {
        let servers = queue_max.iter().map(|(s, _)| s.clone()).collect();
        Arc::new(Monitor {
            nats,
            window: Mutex::new(Window::default()),
            last_ok: Mutex::new(None),
            last_error: Mutex::new(None),
            every,
            metrics,
            servers,
            queue_max,
        })
    }

    /// Samples every `every` until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, sampler: Sampler, shutdown: CancellationToken) {
        for (server, max) in &self.queue_max {
            metrics::gauge!(m::QUEUE_MAX, "server" => server.clone()).set(*max as f64);
        }
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sampled =
                tokio::time::timeout(self.every.max(Duration::from_secs(5)), sampler.sample())
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::StoreError::at("JetStream")("did not answer in time"))
                    });
            match sampled {
                Ok(sample) => {
                    crate::status::export(&sample);
                    lock(&self.window).push(sample);
                    *lock(&self.last_ok) = Some(Instant::now());
                    *lock(&self.last_error) = None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot sample the queues");
                    *lock(&self.last_error) = Some(e.to_string());
                }
            }
            if let Some(handle) = &self.metrics {
                handle.run_upkeep();
            }
        }
    }

    /// Why the dispatcher is not ready, if it is not: NATS disconnected, or the streams not
    /// answering for the last few samples.
    fn not_ready(&self) -> Option<String> {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Some("not connected to NATS".into());
        }
        let fresh = lock(&self.last_ok).is_some_and(|at| at.elapsed() < self.every * 3);
        if !fresh {
            return Some(
                lock(&self.last_error)
                    .clone()
                    .unwrap_or_else(|| "the queues have not been read yet".into()),
            );
        }
        None
    }

    /// The `endpoint` label of a request path: a route's pattern, never a raw id.
    pub(crate) fn endpoint(&self, path: &str) -> String {
        endpoint_label(path, &self.servers)
    }
}

/// A request was answered.
pub(crate) fn count_request(endpoint: String, status: StatusCode) {
    metrics::counter!(m::REQUESTS_TOTAL, "endpoint" => endpoint, "status" => status.as_str().to_string())
        .increment(1);
}

/// The routes: `/metrics`, `/readyz`, `/status.json` and `/`.
pub(crate) fn routes(monitor: Arc<Monitor>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/status.json", get(status))
        .route("/", get(page))
        .with_state(monitor)
}

/// The caller of a request (anonymous when the dispatcher has no `auth:`).
fn caller_of(caller: Option<axum::Extension<crate::auth::Caller>>) -> crate::auth::Caller {
    caller.map_or_else(crate::auth::Caller::anonymous, |c| c.0)
}

/// The Prometheus text without the samples of servers `caller` may not use: a caller learns
/// nothing of the traffic of servers it has no part in.
fn metrics_for(text: &str, caller: &crate::auth::Caller, servers: &BTreeSet<String>) -> String {
    let hidden: Vec<String> = servers
        .iter()
        .filter(|s| !caller.may_use_server(s))
        .map(|s| format!("server=\"{s}\""))
        .collect();
    if hidden.is_empty() {
        return text.to_string();
    }
    text.lines()
        .filter(|line| line.starts_with('#') || !hidden.iter().any(|h| line.contains(h.as_str())))
        .flat_map(|line| [line, "\n"])
        .collect()
}

async fn metrics(
    State(monitor): State<Arc<Monitor>>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Response {
    match &monitor.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            metrics_for(&handle.render(), &caller_of(caller), &monitor.servers),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are off in this process (started with --no-metrics, or embedded without a recorder)\n",
        )
            .into_response(),
    }
}

async fn readyz(State(monitor): State<Arc<Monitor>>) -> Response {
    match monitor.not_ready() {
        None => "ready\n".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn status(
    State(monitor): State<Arc<Monitor>>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Response {
    let caller = caller_of(caller);
    match lock(&monitor.window).report() {
        Some(mut report) => {
            // Only the servers this caller may use.
            report.servers.retain(|s| caller.may_use_server(&s.server));
            for point in &mut report.history {
                point
                    .queued
                    .retain(|server, _| caller.may_use_server(server));
                point
                    .calls_per_sec
                    .retain(|server, _| caller.may_use_server(server));
            }
            Json(report).into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "2")],
            Json(serde_json::json!({
                "code": "unavailable",
                "message": "no sample of the queues yet; try again in a few seconds",
            })),
        )
            .into_response(),
    }
}

async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}

/// `endpoint` labels: the fixed routes as they are, `/servers/<name>/mcp` for configured servers,
/// `/v1` paths with their ids as `{id}`, everything else `other`.
fn endpoint_label(path: &str, servers: &BTreeSet<String>) -> String {
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    match path {
        "/" | "/mcp" | "/healthz" | "/readyz" | "/metrics" | "/status.json" | "/v1/jobs"
        | "/v1/batches" | "/v1/openapi.json" => return path.to_string(),
        _ => {}
    }
    if path.starts_with(crate::auth::guard::METADATA_PATH) {
        return crate::auth::guard::METADATA_PATH.to_string();
    }
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["", "servers", name, "mcp"] if servers.contains(*name) => path.to_string(),
        ["", "v1", kind @ ("jobs" | "batches"), _] => format!("/v1/{kind}/{{id}}"),
        ["", "v1", "jobs", _, "wait"] => "/v1/jobs/{id}/wait".into(),
        ["", "v1", "batches", _, "results"] => "/v1/batches/{id}/results".into(),
        _ => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_labels_are_bounded() {
        let servers: BTreeSet<String> = ["github".to_string()].into();
        for (path, label) in [
            ("/mcp", "/mcp"),
            ("/mcp/", "/mcp"),
            ("/", "/"),
            ("/servers/github/mcp", "/servers/github/mcp"),
            ("/servers/nope/mcp", "other"),
            ("/v1/jobs", "/v1/jobs"),
            (
                "/v1/jobs/0190a1b2-0000-7000-8000-000000000000",
                "/v1/jobs/{id}",
            ),
            ("/v1/jobs/x/wait", "/v1/jobs/{id}/wait"),
            ("/v1/batches/x/results", "/v1/batches/{id}/results"),
            (
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource",
            ),
            ("/etc/passwd", "other"),
        ] {
            assert_eq!(endpoint_label(path, &servers), label, "{path}");
        }
    }
}
