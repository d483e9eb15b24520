//! Publishing each server's tool catalog to KV: at start, when the upstream says its list
//! changed, and on a slow timer as a safety net. Unchanged lists are not written again.

use std::time::Duration;

use async_nats::jetstream::kv;
use mcpq_schemas::{CatalogEntry, names::ENVELOPE_VERSION, now_ms};
use tokio_util::sync::CancellationToken;

use crate::upstream::Upstream;

pub(crate) async fn publish_loop(
    upstream: Upstream,
    bucket: kv::Store,
    worker_id: String,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let mut retry = Duration::from_millis(250);
    loop {
        let wait = match publish_once(&upstream, &bucket, &worker_id).await {
            Ok(tools) => {
                tracing::info!(server = upstream.server(), tools, "tool catalog published");
                retry = Duration::from_millis(250);
                refresh
            }
            Err(e) => {
                tracing::warn!(server = upstream.server(), error = %e, retry = ?retry, "cannot list upstream tools");
                retry = (retry * 2).min(Duration::from_secs(30));
                retry
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = upstream.events().tools_changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn publish_once(
    upstream: &Upstream,
    bucket: &kv::Store,
    worker_id: &str,
) -> Result<usize, String> {
    let peer = upstream.peer().await.map_err(|e| e.to_string())?;
    let tools = peer.list_all_tools().await.map_err(|e| e.to_string())?;
    let count = tools.len();
    let server = upstream.server();
    if let Ok(Some(bytes)) = bucket.get(server).await
        && let Ok(old) = serde_json::from_slice::<CatalogEntry>(&bytes)
        && old.tools == tools
    {
        return Ok(count);
    }
    let entry = CatalogEntry {
        v: ENVELOPE_VERSION,
        server: server.to_string(),
        tools,
        updated_at_ms: now_ms(),
        worker_id: worker_id.to_string(),
    };
    let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
    bucket
        .put(server, bytes.into())
        .await
        .map_err(|e| e.to_string())?;
    Ok(count)
}
