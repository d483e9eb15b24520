//! The heartbeat: one entry per live worker and server in KV `mcpq_workers` (key
//! `<server>.<worker>`), written every few seconds and at once when the circuit opens or closes,
//! expiring when a worker dies. It carries the circuit state, the upstream's health, the
//! worker's counts and its metrics address (for `mcpq status`); counting the entries tells each
//! worker how many share the server's rate limit.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use mcpq_schemas::{names::ENVELOPE_VERSION, now_ms, worker::WorkerBeat};
use tokio_util::sync::CancellationToken;

use super::Report;

/// How often a worker renews its heartbeat and recounts its peers.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// The heartbeat key of `worker_id` for `server`.
fn key(server: &str, worker_id: &str) -> String {
    format!("{server}.{}", mcpq_schemas::names::worker_key(worker_id))
}

/// Whether `worker_id`'s heartbeat for `server` is there. An unreadable bucket answers yes: a
/// job is not taken from a worker that may be alive.
pub(crate) async fn alive(bucket: &kv::Store, server: &str, worker_id: &str) -> bool {
    match bucket.get(key(server, worker_id)).await {
        Ok(beat) => beat.is_some(),
        Err(_) => true,
    }
}

/// Writes this worker's heartbeat for one server once and counts the server's live workers.
/// A worker beats once before it takes its first job, so it never starts with the whole of a
/// rate limit that others already share.
pub(crate) async fn beat(bucket: &kv::Store, report: &Report) {
    let server = &report.server;
    let beat = WorkerBeat {
        v: ENVELOPE_VERSION,
        worker_id: report.worker_id.clone(),
        server: server.clone(),
        circuit: report.circuit_state(),
        at_ms: now_ms(),
        up: report.up(),
        stats: report.stats(),
        metrics: report.metrics_addr.clone(),
    };
    let bytes = serde_json::to_vec(&beat).unwrap_or_default();
    if let Err(e) = bucket
        .put(key(server, &report.worker_id), bytes.into())
        .await
    {
        tracing::warn!(%server, error = %e, "cannot write the worker heartbeat");
    }
    if let Ok(keys) = bucket.keys().await {
        let keys: Vec<_> = keys.collect().await;
        // A listing cut short would count too few peers and take too large a share: keep the
        // count as it is until a whole listing comes back.
        if keys.iter().all(Result::is_ok) {
            let prefix = format!("{server}.");
            let live = keys
                .iter()
                .filter_map(|k| k.as_ref().ok())
                .filter(|k| k.starts_with(&prefix))
                .count();
            report.set_peers(live);
        }
    }
}

/// Keeps this worker's heartbeat for one server alive until `shutdown`, then removes it so
/// the others take over its share at once.
pub(crate) async fn run(bucket: kv::Store, report: &Report, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = report.circuit_changed.notified() => {}
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
        beat(&bucket, report).await;
    }
    let _ = bucket.delete(key(&report.server, &report.worker_id)).await;
}
