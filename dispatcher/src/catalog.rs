//! The dispatcher's view of every server's tools: the `mcpq_catalog` KV bucket, watched, so
//! `tools/list` never makes an upstream round trip.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use mcpq_schemas::{CatalogEntry, names::CATALOG_BUCKET};
use tokio::sync::watch;

/// A live, shared copy of the catalog bucket.
#[derive(Clone)]
pub struct Catalog {
    entries: Arc<RwLock<BTreeMap<String, CatalogEntry>>>,
    changes: watch::Receiver<u64>,
}

/// A catalog too large for one message, read from the object store.
async fn fetch(
    js: &jetstream::Context,
    stored: &mcpq_schemas::BlobRef,
) -> Result<CatalogEntry, crate::StoreError> {
    use tokio::io::AsyncReadExt;
    let what = format!("object {} in store {}", stored.name, stored.bucket);
    let store = js
        .get_object_store(&stored.bucket)
        .await
        .map_err(crate::StoreError::at(what.clone()))?;
    let mut object = store
        .get(&stored.name)
        .await
        .map_err(crate::StoreError::at(what.clone()))?;
    let mut bytes = Vec::with_capacity(usize::try_from(stored.size).unwrap_or(0));
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(crate::StoreError::at(what.clone()))?;
    serde_json::from_slice(&bytes).map_err(crate::StoreError::at(what.clone()))
}

/// What one change of the bucket means: `Some(Some(entry))` a server's new entry, `Some(None)`
/// a server gone, `None` nothing readable (logged).
async fn read(js: &jetstream::Context, entry: &kv::Entry) -> Option<Option<CatalogEntry>> {
    match entry.operation {
        kv::Operation::Put => match serde_json::from_slice::<CatalogEntry>(&entry.value) {
            Ok(catalog) => match catalog.stored.clone() {
                None => Some(Some(catalog)),
                Some(stored) => match fetch(js, &stored).await {
                    Ok(whole) => Some(Some(whole)),
                    Err(e) => {
                        tracing::warn!(server = %entry.key, error = %e, "cannot read a large catalog");
                        None
                    }
                },
            },
            Err(e) => {
                tracing::warn!(server = %entry.key, error = %e, "unreadable catalog entry");
                None
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => Some(None),
    }
}

impl Catalog {
    /// Starts watching the catalog bucket (which must exist: see `ensure_topology`).
    pub async fn watch(js: &jetstream::Context) -> Result<Catalog, crate::StoreError> {
        let what = format!("bucket {CATALOG_BUCKET}");
        let bucket = js
            .get_key_value(CATALOG_BUCKET)
            .await
            .map_err(crate::StoreError::at(what.clone()))?;
        let mut watch = bucket
            .watch_with_history(">")
            .await
            .map_err(crate::StoreError::at(what.clone()))?;
        let entries: Arc<RwLock<BTreeMap<String, CatalogEntry>>> = Arc::default();
        let (tx, changes) = watch::channel(0u64);
        let shared = entries.clone();
        let js = js.clone();
        tokio::spawn(async move {
            loop {
                while let Some(entry) = watch.next().await {
                    // A failed watch is opened anew below, from every key's latest value:
                    // async-nats's ordered consumer panics when polled after its connection
                    // is gone (seen when a dispatcher stops).
                    let Ok(entry) = entry else { break };
                    if let Some(read) = read(&js, &entry).await {
                        {
                            let mut map = mcpq_schemas::sync::write(&shared);
                            match read {
                                Some(catalog) => map.insert(entry.key.clone(), catalog),
                                None => map.remove(&entry.key),
                            };
                        }
                        tx.send_modify(|n| *n += 1);
                    }
                }
                if tx.is_closed() {
                    return;
                }
                // Every key again from its latest value: nothing missed while it was down.
                watch = loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    if tx.is_closed() {
                        return;
                    }
                    match bucket.watch_with_history(">").await {
                        Ok(watch) => break watch,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot watch the catalog bucket yet")
                        }
                    }
                };
            }
        });
        Ok(Catalog { entries, changes })
    }

    /// One server's catalog entry, if a worker has published it.
    pub fn server(&self, name: &str) -> Option<CatalogEntry> {
        self.read().get(name).cloned()
    }

    /// What `f` makes of one server's entry, read in place (no copy), if it is published.
    pub fn with_server<R>(&self, name: &str, f: impl FnOnce(&CatalogEntry) -> R) -> Option<R> {
        self.read().get(name).map(f)
    }

    /// Every published entry, by server name.
    pub fn all(&self) -> BTreeMap<String, CatalogEntry> {
        self.read().clone()
    }

    /// A number that grows with every change of the catalog.
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    /// A receiver that changes whenever the catalog does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, CatalogEntry>> {
        mcpq_schemas::sync::read(&self.entries)
    }
}
