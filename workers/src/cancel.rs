//! Cancellation as a worker sees it: every request stored in KV `mcpq_cancels`, watched from
//! start, and the jobs running here that a request must reach.
//!
//! A job is registered as running *before* the worker looks for a request, and a request marks
//! the job before it looks for it among the running ones, so a request that races the start of
//! a call is seen by one side or the other.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use async_nats::jetstream::kv;
use futures::StreamExt;
use mcpq_schemas::CancelRequest;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Cancellation requests heard so far and the jobs running in this process.
#[derive(Default)]
pub(crate) struct Cancels {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Requests by job id, with when they were heard (for forgetting them after the bucket's TTL).
    requested: HashMap<Uuid, (CancelRequest, Instant)>,
    running: HashMap<Uuid, CancellationToken>,
}

/// A job registered as running; cancelled when a request for it arrives. Unregisters on drop.
pub(crate) struct Running {
    pub token: CancellationToken,
    job_id: Uuid,
    cancels: Arc<Cancels>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancels.lock().running.remove(&self.job_id);
    }
}

impl Cancels {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `job_id` as running here. The token is already cancelled if a request for the
    /// job was heard before.
    pub(crate) fn start(self: &Arc<Self>, job_id: Uuid) -> Running {
        let token = CancellationToken::new();
        let mut state = self.lock();
        if state.requested.contains_key(&job_id) {
            token.cancel();
        }
        state.running.insert(job_id, token.clone());
        Running {
            token,
            job_id,
            cancels: self.clone(),
        }
    }

    /// The request for `job_id`, if one was heard.
    pub(crate) fn request(&self, job_id: &Uuid) -> Option<CancelRequest> {
        self.lock().requested.get(job_id).map(|(r, _)| r.clone())
    }

    fn heard(&self, request: CancelRequest, ttl: Duration) {
        let mut state = self.lock();
        if let Some(token) = state.running.get(&request.job_id) {
            token.cancel();
        }
        let now = Instant::now();
        state
            .requested
            .retain(|_, (_, at)| now.duration_since(*at) < ttl);
        state.requested.insert(request.job_id, (request, now));
    }
}

/// Loads every stored request, then follows new ones until `shutdown`. Returns once the
/// stored ones are loaded (the caller starts pulling jobs only then) and keeps following in a
/// task of its own.
pub(crate) async fn follow(
    bucket: kv::Store,
    cancels: Arc<Cancels>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let ttl = bucket
        .status()
        .await
        .map(|s| s.max_age())
        .ok()
        .filter(|ttl| !ttl.is_zero())
        .unwrap_or(Duration::from_secs(24 * 3600));
    let stored = bucket.status().await.map(|s| s.values()).unwrap_or(0);
    let mut updates = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let mut loaded = 0;
    while loaded < stored {
        // Entries carry how many more are pending; the history is loaded when it reaches 0.
        match tokio::time::timeout(Duration::from_secs(5), updates.next()).await {
            Ok(Some(Ok(entry))) => {
                loaded += 1;
                if let Some(request) = decode(&entry) {
                    cancels.heard(request, ttl);
                }
                if entry.delta == 0 {
                    break;
                }
            }
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) | Err(_) => break,
        }
    }
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = updates.next() => next,
            };
            match next {
                Some(Ok(entry)) => {
                    if let Some(request) = decode(&entry) {
                        tracing::info!(job_id = %request.job_id, "cancellation requested");
                        cancels.heard(request, ttl);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "cancellation watch interrupted"),
                None => {
                    tracing::warn!("cancellation watch ended; following again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match bucket.watch(">").await {
                        Ok(again) => updates = again,
                        Err(e) => tracing::warn!(error = %e, "cannot watch cancellations"),
                    }
                }
            }
        }
    });
    Ok(())
}

fn decode(entry: &kv::Entry) -> Option<CancelRequest> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    serde_json::from_slice(&entry.value).ok()
}
