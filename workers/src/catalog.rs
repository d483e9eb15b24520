//! Publishing each server's tool catalog to KV: at start, when the upstream says its list
//! changed, and on a slow timer as a safety net. Unchanged lists are not written again.
//!
//! Upstreams on a session-based revision send `notifications/tools/list_changed` on their
//! session (see `upstream::Events`); upstreams on 2026-07-28 send it only on a
//! `subscriptions/listen` stream, which this loop keeps open while it waits.

use std::time::Duration;

use async_nats::jetstream::kv;
use mcpq_schemas::{CatalogEntry, names::ENVELOPE_VERSION, now_ms};
use rmcp::{
    model::{ServerNotification, SubscriptionFilter},
    service::Subscription,
};
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
        let mut subscription = listen(&upstream).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = upstream.events().tools_changed.notified() => {}
            () = changed(subscription.as_mut()) => {}
            () = tokio::time::sleep(wait) => {}
        }
        if let Some(mut subscription) = subscription {
            let _ = subscription.cancel().await;
        }
    }
}

/// A `subscriptions/listen` stream for tool list changes, when the upstream offers one.
async fn listen(upstream: &Upstream) -> Option<Subscription> {
    let peer = upstream.peer().await.ok()?;
    let info = peer.peer_info()?;
    let modern = !info.protocol_version.has_initialize();
    let announces = info.capabilities.tools.as_ref()?.list_changed == Some(true);
    if !(modern && announces) {
        return None;
    }
    let filter = SubscriptionFilter::builder().tools_list_changed().build();
    match peer.listen(filter).await {
        Ok(subscription) => Some(subscription),
        Err(e) => {
            tracing::debug!(server = upstream.server(), error = %e, "no tool list subscription");
            None
        }
    }
}

/// Resolves when the subscription reports a tool list change or ends; never without one.
async fn changed(subscription: Option<&mut Subscription>) {
    let Some(subscription) = subscription else {
        return std::future::pending().await;
    };
    loop {
        match subscription.next().await {
            Ok(Some(ServerNotification::ToolListChangedNotification(_))) => return,
            // Ended: look again soon, but never in a tight loop.
            Ok(None) | Err(_) => return tokio::time::sleep(Duration::from_secs(1)).await,
            Ok(Some(_)) => {}
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
