//! Resource subscriptions: a `resources/subscribe` job subscribes this worker's upstream
//! session to a URI, and every `notifications/resources/updated` the upstream then sends is
//! announced on `mcpq.events.<server>.resource_updated` for the dispatchers whose clients
//! subscribed. A 2025-era upstream is subscribed with its own `resources/subscribe`; a
//! 2026-07-28 one has no such method, so the worker keeps a `subscriptions/listen` stream open
//! for the subscribed URIs instead (reopened when the set changes).
//!
//! Subscriptions live on the worker's upstream session: a worker that stops takes its
//! subscriptions with it (clients subscribe again when they reconnect).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use mcpq_schemas::{
    ResourceUpdatedEvent,
    names::{ENVELOPE_VERSION, resource_updated_subject},
};
use rmcp::model::{ServerNotification, SubscriptionFilter};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Upstream;
use crate::lock;

/// The URIs this worker's upstream session is subscribed to — each with how many
/// subscriptions asked for it through this worker, so that one subscriber's `unsubscribe`
/// leaves the others subscribed — and where updates go.
#[derive(Clone)]
pub(crate) struct Subscriptions {
    uris: Arc<Mutex<BTreeMap<String, usize>>>,
    changed: Arc<Notify>,
    updates: mpsc::UnboundedSender<String>,
    /// Bumped by every change of `uris`; `applied` says which change the upstream has.
    wanted: Arc<AtomicU64>,
    applied: Arc<watch::Sender<u64>>,
}

impl Subscriptions {
    pub(crate) fn new() -> (Subscriptions, mpsc::UnboundedReceiver<String>) {
        let (updates, received) = mpsc::unbounded_channel();
        let subscriptions = Subscriptions {
            uris: Arc::default(),
            changed: Arc::default(),
            updates,
            wanted: Arc::default(),
            applied: Arc::new(watch::channel(0).0),
        };
        (subscriptions, received)
    }

    /// Counts a subscription to a URI in (`subscribe`) or out; the URI is listened for while
    /// its count is above zero. The change to wait for (see `applied`), and whether the
    /// upstream's subscription changes (the first in, the last out).
    pub(crate) fn set(&self, uri: &str, subscribe: bool) -> (u64, bool) {
        let mut uris = lock(&self.uris);
        let changed = if subscribe {
            let count = uris.entry(uri.to_string()).or_default();
            *count += 1;
            *count == 1
        } else {
            match uris.get_mut(uri) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    uris.remove(uri);
                    true
                }
                None => false,
            }
        };
        if changed {
            let generation = self.wanted.fetch_add(1, Ordering::SeqCst) + 1;
            drop(uris);
            self.changed.notify_one();
            (generation, true)
        } else {
            (self.wanted.load(Ordering::SeqCst), false)
        }
    }

    /// Waits (at most `within`) until the upstream listens for the URIs as of `generation`.
    pub(crate) async fn applied(&self, generation: u64, within: std::time::Duration) -> bool {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(within, applied.wait_for(|g| *g >= generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The upstream says `uri` changed.
    pub(crate) fn updated(&self, uri: String) {
        let _ = self.updates.send(uri);
    }

    /// The URIs, and the change they are as of.
    fn uris(&self) -> (Vec<String>, u64) {
        let uris = lock(&self.uris);
        let generation = self.wanted.load(Ordering::SeqCst);
        (uris.keys().cloned().collect(), generation)
    }

    fn mark_applied(&self, generation: u64) {
        self.applied.send_if_modified(|g| {
            let newer = generation > *g;
            if newer {
                *g = generation;
            }
            newer
        });
    }
}

/// Announces the upstream's resource updates on NATS until `shutdown`.
pub(crate) async fn announce(
    nats: async_nats::Client,
    server: String,
    mut updates: mpsc::UnboundedReceiver<String>,
    shutdown: CancellationToken,
) {
    let subject = resource_updated_subject(&server);
    loop {
        let uri = tokio::select! {
            () = shutdown.cancelled() => return,
            uri = updates.recv() => match uri { Some(uri) => uri, None => return },
        };
        let event = ResourceUpdatedEvent {
            v: ENVELOPE_VERSION,
            server: server.clone(),
            uri,
        };
        if let Ok(body) = serde_json::to_vec(&event)
            && let Err(e) = nats.publish(subject.clone(), body.into()).await
        {
            tracing::warn!(%server, error = %e, "cannot announce a resource update");
        }
    }
}

/// Keeps a 2026-07-28 upstream's `subscriptions/listen` stream open for the subscribed URIs.
pub(crate) async fn listen_loop(upstream: Upstream, shutdown: CancellationToken) {
    let subscriptions = upstream.subscriptions().clone();
    loop {
        let (uris, generation) = subscriptions.uris();
        let stream = async {
            if uris.is_empty() {
                subscriptions.mark_applied(generation);
                return std::future::pending().await;
            }
            let Ok(peer) = upstream.peer().await else {
                return tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            };
            if peer
                .peer_info()
                .is_none_or(|i| i.protocol_version.has_initialize())
            {
                // A 2025-era upstream sends updates on its session (see `upstream::Events`).
                subscriptions.mark_applied(generation);
                return std::future::pending().await;
            }
            let filter = SubscriptionFilter::builder()
                .resource_subscriptions(uris.clone())
                .build();
            let mut listening = match peer.listen(filter).await {
                Ok(listening) => {
                    subscriptions.mark_applied(generation);
                    listening
                }
                Err(e) => {
                    tracing::warn!(server = upstream.server(), error = %e, "cannot subscribe to resources");
                    return tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            };
            loop {
                match listening.next().await {
                    Ok(Some(ServerNotification::ResourceUpdatedNotification(n))) => {
                        subscriptions.updated(n.params.uri);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        let _ = listening.cancel().await;
                        return tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = subscriptions.changed.notified() => {}
            () = stream => {}
        }
    }
}
