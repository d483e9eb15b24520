//! Publishing each server's catalog to KV — its tools, resources, resource templates and
//! prompts, its capabilities and the revision it speaks: at start, when the upstream says a list
//! changed, and on a slow timer as a safety net. An unchanged offer is not written again.
//!
//! Upstreams on a session-based revision send `notifications/*/list_changed` on their session
//! (see `upstream::Events`); upstreams on 2026-07-28 send them only on a `subscriptions/listen`
//! stream, which this loop keeps open while it waits.

use std::time::Duration;

use async_nats::jetstream::kv;
use mcpq_schemas::{
    CatalogEntry,
    names::{CATALOGS_STORE, ENVELOPE_VERSION},
    now_ms,
};
use rmcp::{
    RoleClient,
    model::{ServerNotification, SubscriptionFilter},
    service::{Peer, Subscription},
};
use tokio_util::sync::CancellationToken;

use crate::upstream::Upstream;

pub(crate) async fn publish_loop(
    upstream: Upstream,
    bucket: kv::Store,
    js: async_nats::jetstream::Context,
    worker_id: String,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let mut retry = Duration::from_millis(250);
    loop {
        let wait = match publish_once(&upstream, &bucket, &js, &worker_id).await {
            Ok(entry) => {
                tracing::info!(
                    server = upstream.server(),
                    revision = entry.protocol_version.as_deref().unwrap_or("?"),
                    tools = entry.tools.len(),
                    resources = entry.resources.len(),
                    templates = entry.resource_templates.len(),
                    prompts = entry.prompts.len(),
                    "catalog published"
                );
                retry = Duration::from_millis(250);
                refresh
            }
            Err(e) => {
                tracing::warn!(server = upstream.server(), error = %e, retry = ?retry, "cannot list the upstream's offer");
                retry = (retry * 2).min(Duration::from_secs(30));
                retry
            }
        };
        let mut subscription = listen(&upstream).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = upstream.events().offer_changed.notified() => {}
            () = changed(subscription.as_mut()) => {}
            () = tokio::time::sleep(wait) => {}
        }
        if let Some(mut subscription) = subscription {
            let _ = subscription.cancel().await;
        }
    }
}

/// A `subscriptions/listen` stream for list changes, when the upstream offers one.
async fn listen(upstream: &Upstream) -> Option<Subscription> {
    let peer = upstream.peer().await.ok()?;
    let info = peer.peer_info()?;
    if info.protocol_version.has_initialize() {
        return None;
    }
    let caps = &info.capabilities;
    let mut filter = SubscriptionFilter::builder();
    let mut any = false;
    if caps.tools.as_ref().and_then(|t| t.list_changed) == Some(true) {
        filter = filter.tools_list_changed();
        any = true;
    }
    if caps.resources.as_ref().and_then(|r| r.list_changed) == Some(true) {
        filter = filter.resources_list_changed();
        any = true;
    }
    if caps.prompts.as_ref().and_then(|p| p.list_changed) == Some(true) {
        filter = filter.prompts_list_changed();
        any = true;
    }
    if !any {
        return None;
    }
    match peer.listen(filter.build()).await {
        Ok(subscription) => Some(subscription),
        Err(e) => {
            tracing::debug!(server = upstream.server(), error = %e, "no list subscription");
            None
        }
    }
}

/// Resolves when the subscription reports a list change or ends; never without one.
async fn changed(subscription: Option<&mut Subscription>) {
    let Some(subscription) = subscription else {
        return std::future::pending().await;
    };
    loop {
        match subscription.next().await {
            Ok(Some(
                ServerNotification::ToolListChangedNotification(_)
                | ServerNotification::ResourceListChangedNotification(_)
                | ServerNotification::PromptListChangedNotification(_),
            )) => return,
            // Ended: look again soon, but never in a tight loop.
            Ok(None) | Err(_) => return tokio::time::sleep(Duration::from_secs(1)).await,
            Ok(Some(_)) => {}
        }
    }
}

/// Lists everything the upstream offers and writes it, unless the bucket already has it.
async fn publish_once(
    upstream: &Upstream,
    bucket: &kv::Store,
    js: &async_nats::jetstream::Context,
    worker_id: &str,
) -> Result<CatalogEntry, String> {
    let peer = upstream.peer().await.map_err(|e| e.to_string())?;
    let entry = list_offer(&peer, upstream.server(), worker_id).await?;
    upstream.set_known(
        entry
            .tools
            .iter()
            .map(|t| t.name.to_string())
            .chain(entry.prompts.iter().map(|p| p.name.clone()))
            .collect(),
    );
    let server = upstream.server();
    if let Ok(Some(bytes)) = bucket.get(server).await
        && let Ok(old) = serde_json::from_slice::<CatalogEntry>(&bytes)
        && old.stored.is_none()
        && old.same_offer(&entry)
    {
        return Ok(entry);
    }
    let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
    let value = if bytes.len() > inline_limit(js) {
        // Too large for one message: the whole entry goes to the object store, and the
        // bucket gets a stub naming it (dispatchers watch the bucket, then fetch the object).
        let store = js
            .get_object_store(CATALOGS_STORE)
            .await
            .map_err(|e| format!("object store {CATALOGS_STORE}: {e}"))?;
        let mut reader = bytes.as_slice();
        store
            .put(server, &mut reader)
            .await
            .map_err(|e| format!("object store {CATALOGS_STORE}: {e}"))?;
        let stub = CatalogEntry {
            tools: Vec::new(),
            resources: Vec::new(),
            resource_templates: Vec::new(),
            prompts: Vec::new(),
            stored: Some(mcpq_schemas::BlobRef {
                bucket: CATALOGS_STORE.into(),
                name: server.to_string(),
                size: bytes.len() as u64,
            }),
            ..entry.clone()
        };
        serde_json::to_vec(&stub).map_err(|e| e.to_string())?
    } else {
        bytes
    };
    bucket
        .put(server, value.into())
        .await
        .map_err(|e| e.to_string())?;
    Ok(entry)
}

/// The most bytes a catalog entry may have to be stored in the bucket as it is: the NATS
/// server's `max_payload`, less room for headers.
fn inline_limit(js: &async_nats::jetstream::Context) -> usize {
    js.client()
        .server_info()
        .max_payload
        .saturating_sub(8 * 1024)
}

/// The upstream's offer: only the lists its capabilities declare are asked for.
async fn list_offer(
    peer: &Peer<RoleClient>,
    server: &str,
    worker_id: &str,
) -> Result<CatalogEntry, String> {
    let info = peer
        .peer_info()
        .ok_or("the upstream session has no server info")?;
    let caps = info.capabilities.clone();
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: rmcp::ServiceError| format!("{what}: {e}")
    };
    let tools = if caps.tools.is_some() {
        peer.list_all_tools().await.map_err(fail("tools/list"))?
    } else {
        Vec::new()
    };
    let (resources, resource_templates) = if caps.resources.is_some() {
        (
            peer.list_all_resources()
                .await
                .map_err(fail("resources/list"))?,
            peer.list_all_resource_templates()
                .await
                .map_err(fail("resources/templates/list"))?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let prompts = if caps.prompts.is_some() {
        peer.list_all_prompts()
            .await
            .map_err(fail("prompts/list"))?
    } else {
        Vec::new()
    };
    Ok(CatalogEntry {
        v: ENVELOPE_VERSION,
        server: server.to_string(),
        protocol_version: Some(info.protocol_version.to_string()),
        capabilities: caps,
        tools,
        resources,
        resource_templates,
        prompts,
        updated_at_ms: now_ms(),
        worker_id: worker_id.to_string(),
        stored: None,
    })
}
