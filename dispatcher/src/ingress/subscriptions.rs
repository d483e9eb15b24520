//! Resource subscriptions of MCP clients: `resources/subscribe` (2025-era sessions) and the
//! `resourceSubscriptions` of a `subscriptions/listen` stream (2026-07-28) become
//! `resources/subscribe` jobs, so a worker's upstream session subscribes; the updates workers
//! announce on `mcpq.events.<server>.resource_updated` reach every client subscribed to that
//! resource, through whichever dispatcher holds its session or stream.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use mcpq_schemas::{ResourceUpdatedEvent, names::RESOURCE_UPDATED_SUBJECTS};

use super::names;

/// (server, upstream URI) pairs one client is subscribed to.
pub(super) type Subscribed = Arc<Mutex<HashSet<(String, String)>>>;

/// Where one client hears about updates.
pub(super) trait Notify: Send + 'static {
    /// Sends `notifications/resources/updated` for `uri`; false once the client is gone.
    fn updated(&self, uri: String) -> impl Future<Output = bool> + Send;
}

/// Every resource update announced on NATS, from now on: subscribe before asking a worker to
/// subscribe its upstream, so that no update after the answer is missed.
pub(super) async fn follow(
    nats: &async_nats::Client,
) -> Result<async_nats::Subscriber, rmcp::ErrorData> {
    nats.subscribe(RESOURCE_UPDATED_SUBJECTS)
        .await
        .map_err(|e| {
            rmcp::ErrorData::internal_error(format!("cannot follow resource updates: {e}"), None)
        })
}

/// Passes on the `updates` of resources `subscribed` names, as the endpoint exposes them
/// (`aggregated`: `mcpq://<server>/<uri>`), until the client is gone.
pub(super) async fn forward(
    mut updates: async_nats::Subscriber,
    subscribed: Subscribed,
    aggregated: bool,
    client: impl Notify,
) {
    while let Some(message) = updates.next().await {
        let Ok(event) = serde_json::from_slice::<ResourceUpdatedEvent>(&message.payload) else {
            continue;
        };
        let wanted = super::lock(&subscribed).contains(&(event.server.clone(), event.uri.clone()));
        if !wanted {
            continue;
        }
        let uri = if aggregated {
            names::join_uri(&event.server, &event.uri)
        } else {
            event.uri
        };
        if !client.updated(uri).await {
            return;
        }
    }
}

/// A 2025-era session's peer.
pub(super) struct SessionPeer(pub rmcp::Peer<rmcp::RoleServer>);

impl Notify for SessionPeer {
    async fn updated(&self, uri: String) -> bool {
        self.0
            .notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(uri))
            .await
            .is_ok()
    }
}

/// A 2026-07-28 `subscriptions/listen` stream.
pub(super) struct ListenSink(pub rmcp::service::SubscriptionSink);

impl Notify for ListenSink {
    async fn updated(&self, uri: String) -> bool {
        self.0.notify_resource_updated(uri).await.is_ok()
    }
}
