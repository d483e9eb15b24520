//! Publishing each server's catalog to KV — its tools, resources, resource templates and
//! prompts, its capabilities and the revision it speaks: at start, when the upstream says a list
//! changed, and on a slow timer as a safety net. An unchanged offer is not written again.
//!
//! Upstreams on a session-based revision send `notifications/*/list_changed` on their session
//! (see `upstream::Events`); upstreams on 2026-07-28 send them only on a `subscriptions/listen`
//! stream, which this loop keeps open while it waits.

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::kv;
use mcpq_schemas::{
    CatalogEntry, Listed,
    names::{CATALOGS_STORE, ENVELOPE_VERSION},
    now_ms,
};
use rmcp::{
    RoleClient,
    model::{
        ClientRequest, ListPromptsRequest, ListResourceTemplatesRequest, ListResourcesRequest,
        ListToolsRequest, PaginatedRequestParams, ServerNotification, ServerResult,
        SubscriptionFilter,
    },
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

/// Why the upstream's offer could not be listed or written.
#[derive(Debug, thiserror::Error)]
enum CatalogError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("the upstream session has no server info")]
    NoServerInfo,
    #[error("{method}: {source}")]
    List {
        method: &'static str,
        #[source]
        source: rmcp::ServiceError,
    },
    #[error("{method}: the upstream answered another result")]
    OtherResult { method: &'static str },
    #[error("{method}: more than {MAX_PAGES} pages")]
    TooManyPages { method: &'static str },
    #[error("the upstream did not list its offer within {LIST_WITHIN:?}")]
    TimedOut,
    #[error("cannot encode the catalog: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("object store {CATALOGS_STORE}: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot write the catalog: {0}")]
    Write(#[from] kv::PutError),
}

/// Lists everything the upstream offers and writes it, unless the bucket already has it.
async fn publish_once(
    upstream: &Upstream,
    bucket: &kv::Store,
    js: &async_nats::jetstream::Context,
    worker_id: &str,
) -> Result<CatalogEntry, CatalogError> {
    let peer = upstream.peer().await?;
    let entry = list_offer(upstream, &peer, worker_id).await?;
    upstream.set_known(
        entry
            .tools
            .iter()
            .map(|t| t.name.to_string())
            .chain(entry.prompts.iter().map(|p| p.name.clone()))
            .collect(),
    );
    upstream.set_listed_tools(entry.tools.iter().map(|t| &**t));
    let server = upstream.server();
    if let Ok(Some(bytes)) = bucket.get(server).await
        && let Ok(old) = serde_json::from_slice::<CatalogEntry>(&bytes)
        && old.stored.is_none()
        && old.same_offer(&entry)
    {
        return Ok(entry);
    }
    let bytes = serde_json::to_vec(&entry)?;
    let value = if bytes.len() > inline_limit(js) {
        // Too large for one message: the whole entry goes to the object store, and the
        // bucket gets a stub naming it (dispatchers watch the bucket, then fetch the object).
        let store = js
            .get_object_store(CATALOGS_STORE)
            .await
            .map_err(|e| CatalogError::Store(e.into()))?;
        let mut reader = bytes.as_slice();
        store
            .put(server, &mut reader)
            .await
            .map_err(|e| CatalogError::Store(e.into()))?;
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
        serde_json::to_vec(&stub)?
    } else {
        bytes
    };
    bucket.put(server, value.into()).await?;
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
) -> Result<CatalogEntry, CatalogError> {
    let info = peer.peer_info().ok_or(CatalogError::NoServerInfo)?;
    let caps = info.capabilities.clone();
    let tap = &upstream.events().tap;
    let _listing = tap.listing();
    let listed = async {
        let tools = if caps.tools.is_some() {
            list_all(tap, peer, List::Tools, |r| match r {
                ServerResult::ListToolsResult(page) => Some((page.tools, page.next_cursor)),
                _ => None,
            })
            .await?
        } else {
            Vec::new()
        };
        let (resources, resource_templates) = if caps.resources.is_some() {
            let resources = list_all(tap, peer, List::Resources, |r| match r {
                ServerResult::ListResourcesResult(page) => Some((page.resources, page.next_cursor)),
                _ => None,
            })
            .await?;
            let templates = list_all(tap, peer, List::Templates, |r| match r {
                ServerResult::ListResourceTemplatesResult(page) => {
                    Some((page.resource_templates, page.next_cursor))
                }
                _ => None,
            })
            .await?;
            (resources, templates)
        } else {
            (Vec::new(), Vec::new())
        };
        let prompts = if caps.prompts.is_some() {
            list_all(tap, peer, List::Prompts, |r| match r {
                ServerResult::ListPromptsResult(page) => Some((page.prompts, page.next_cursor)),
                _ => None,
            })
            .await?
        } else {
            Vec::new()
        };
        Ok::<_, CatalogError>((tools, resources, resource_templates, prompts))
    };
    let (tools, resources, resource_templates, prompts) = tokio::time::timeout(LIST_WITHIN, listed)
        .await
        .map_err(|_| CatalogError::TimedOut)??;
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

/// How long listing the whole offer may take.
const LIST_WITHIN: Duration = Duration::from_secs(120);

/// The most pages one list may have: an upstream whose cursors never end is not followed
/// forever.
const MAX_PAGES: usize = 1000;

/// The four lists, as asked for.
#[derive(Clone, Copy)]
enum List {
    Tools,
    Resources,
    Templates,
    Prompts,
}

impl List {
    fn method(self) -> &'static str {
        match self {
            List::Tools => "tools/list",
            List::Resources => "resources/list",
            List::Templates => "resources/templates/list",
            List::Prompts => "prompts/list",
        }
    }

    /// The result's field that holds the list, and the field that names each item.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            List::Tools => ("tools", "name"),
            List::Resources => ("resources", "uri"),
            List::Templates => ("resourceTemplates", "uriTemplate"),
            List::Prompts => ("prompts", "name"),
        }
    }

    /// The request for one page. Sent with `send_request`, not rmcp's `list_*`: those answer
    /// from rmcp's response cache (for as long as the upstream's `ttlMs`), and the catalog
    /// must hear the upstream itself.
    fn request(self, cursor: Option<String>) -> ClientRequest {
        let params = cursor.map(|c| PaginatedRequestParams::default().with_cursor(Some(c)));
        match self {
            List::Tools => ClientRequest::ListToolsRequest(ListToolsRequest {
                method: Default::default(),
                params,
                extensions: Default::default(),
            }),
            List::Resources => ClientRequest::ListResourcesRequest(ListResourcesRequest {
                method: Default::default(),
                params,
                extensions: Default::default(),
            }),
            List::Templates => {
                ClientRequest::ListResourceTemplatesRequest(ListResourceTemplatesRequest {
                    method: Default::default(),
                    params,
                    extensions: Default::default(),
                })
            }
            List::Prompts => ClientRequest::ListPromptsRequest(ListPromptsRequest {
                method: Default::default(),
                params,
                extensions: Default::default(),
            }),
        }
    }
}

/// Every page of one list, each item as the upstream wrote it (the raw answer the tap kept,
/// matched to rmcp's reading by name or URI), else as rmcp reads it.
async fn list_all<T>(
    tap: &ListTap,
    peer: &Peer<RoleClient>,
    list: List,
    page_of: impl Fn(ServerResult) -> Option<(Vec<T>, Option<String>)>,
) -> Result<Vec<Listed<T>>, CatalogError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let method = list.method();
    let (field, key) = list.fields();
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let answer = peer
            .send_request(list.request(cursor.clone()))
            .await
            .map_err(|source| CatalogError::List { method, source })?;
        let (items, next) = page_of(answer).ok_or(CatalogError::OtherResult { method })?;
        // By name (or URI): rmcp's transport may leave out an item it refuses (a tool with
        // invalid `x-mcp-header` annotations).
        let mut raw: HashMap<serde_json::Value, serde_json::Value> = tap
            .take(&Page {
                method,
                cursor: cursor.clone(),
            })
            .and_then(|mut result| match result.remove(field) {
                Some(serde_json::Value::Array(raw)) => Some(raw),
                _ => None,
            })
            .unwrap_or_else(|| {
                tracing::debug!(method, "no raw answer kept: definitions as rmcp reads them");
                Vec::new()
            })
            .into_iter()
            .filter_map(|item| Some((item.get(key)?.clone(), item)))
            .collect();
        for typed in items {
            let named = serde_json::to_value(&typed)
                .ok()
                .and_then(|t| t.get(key).cloned());
            let raw = named.and_then(|name| raw.remove(&name));
            all.push(as_written(raw, typed));
        }
        match next {
            Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
            _ => return Ok(all),
        }
    }
    Err(CatalogError::TooManyPages { method })
}

/// The item as the upstream wrote it, when its raw object reads as one; else rmcp's reading.
fn as_written<T>(raw: Option<serde_json::Value>, typed: T) -> Listed<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    match raw {
        Some(serde_json::Value::Object(raw)) => {
            Listed::from_raw(raw).unwrap_or_else(|_| Listed::from_typed(typed))
        }
        _ => Listed::from_typed(typed),
    }
}
