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
    CatalogEntry, Listed,
    names::{CATALOGS_STORE, ENVELOPE_VERSION},
    now_ms,
};
use rmcp::{
    RoleClient,
    model::{PaginatedRequestParams, ServerNotification, SubscriptionFilter},
    service::{Peer, Subscription},
};
use tokio_util::sync::CancellationToken;

use crate::upstream::{ListTap, Page, Upstream};

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
    let entry = list_offer(upstream, &peer, worker_id).await?;
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

/// The upstream's offer: only the lists its capabilities declare are asked for. Each
/// definition is kept as the upstream wrote it (see `upstream::tap`).
async fn list_offer(
    upstream: &Upstream,
    peer: &Peer<RoleClient>,
    worker_id: &str,
) -> Result<CatalogEntry, String> {
    let info = peer
        .peer_info()
        .ok_or("the upstream session has no server info")?;
    let caps = info.capabilities.clone();
    let tap = &upstream.events().tap;
    let listed = async {
        let tools = if caps.tools.is_some() {
            list_all(tap, "tools/list", "tools", |params| async move {
                peer.list_tools(params)
                    .await
                    .map(|page| (page.tools, page.next_cursor))
            })
            .await?
        } else {
            Vec::new()
        };
        let (resources, resource_templates) = if caps.resources.is_some() {
            let resources = list_all(tap, "resources/list", "resources", |params| async move {
                peer.list_resources(params)
                    .await
                    .map(|page| (page.resources, page.next_cursor))
            })
            .await?;
            let templates = list_all(
                tap,
                "resources/templates/list",
                "resourceTemplates",
                |params| async move {
                    peer.list_resource_templates(params)
                        .await
                        .map(|page| (page.resource_templates, page.next_cursor))
                },
            )
            .await?;
            (resources, templates)
        } else {
            (Vec::new(), Vec::new())
        };
        let prompts = if caps.prompts.is_some() {
            list_all(tap, "prompts/list", "prompts", |params| async move {
                peer.list_prompts(params)
                    .await
                    .map(|page| (page.prompts, page.next_cursor))
            })
            .await?
        } else {
            Vec::new()
        };
        Ok::<_, String>((tools, resources, resource_templates, prompts))
    }
    .await;
    tap.forget();
    let (tools, resources, resource_templates, prompts) = listed?;
    Ok(CatalogEntry {
        v: ENVELOPE_VERSION,
        server: upstream.server().to_string(),
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

/// The most pages one list may have: an upstream whose cursors never end is not followed
/// forever.
const MAX_PAGES: usize = 1000;

/// Every page of one list, each item as the upstream wrote it: the page's raw answer when the
/// tap kept it and it lists the same items rmcp read, else rmcp's reading of it.
async fn list_all<T, F, Fut>(
    tap: &ListTap,
    method: &'static str,
    field: &str,
    mut page: F,
) -> Result<Vec<Listed<T>>, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
    F: FnMut(Option<PaginatedRequestParams>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), rmcp::ServiceError>>,
{
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = cursor
            .clone()
            .map(|c| PaginatedRequestParams::default().with_cursor(Some(c)));
        let (items, next) = page(params).await.map_err(|e| format!("{method}: {e}"))?;
        let raw = tap
            .take(&Page {
                method,
                cursor: cursor.clone(),
            })
            .and_then(|mut result| match result.remove(field) {
                Some(serde_json::Value::Array(raw)) if raw.len() == items.len() => Some(raw),
                _ => None,
            });
        match raw {
            Some(raw) => all.extend(raw.into_iter().zip(items).map(|(raw, typed)| match raw {
                serde_json::Value::Object(raw) => {
                    Listed::from_raw(raw).unwrap_or_else(|_| Listed::from_typed(typed))
                }
                _ => Listed::from_typed(typed),
            })),
            None => {
                tracing::debug!(method, "no raw answer kept: definitions as rmcp reads them");
                all.extend(items.into_iter().map(Listed::from_typed));
            }
        }
        match next {
            Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
            _ => return Ok(all),
        }
    }
    Err(format!("{method}: more than {MAX_PAGES} pages"))
}
