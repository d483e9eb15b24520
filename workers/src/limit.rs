//! Global rate limits: a server's `rateLimit` is shared by its live workers, each taking an
//! equal part, found through heartbeats in the `mcpq_workers` bucket and re-split when a worker
//! joins or leaves. Calls over the limit wait (the job is held, with progress acks) — shaped,
//! not rejected.

use std::{
    num::NonZeroU32,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream::kv;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mcpq_schemas::{config::RateLimit, names::ENVELOPE_VERSION, now_ms, worker::WorkerBeat};
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;

/// How often a worker renews its heartbeat and recounts its peers.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// This worker's part of one server's rate limit.
pub(crate) struct Limiter {
    limit: RateLimit,
    share: RwLock<(usize, Arc<DefaultDirectRateLimiter>)>,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Limiter {
        Limiter {
            limit,
            share: RwLock::new((1, Arc::new(RateLimiter::direct(quota(limit, 1))))),
        }
    }

    /// Waits until this worker may make one more call.
    pub(crate) async fn ready(&self) {
        let limiter = self.read().1.clone();
        limiter.until_ready().await;
    }

    /// Re-splits the limit over `workers` live workers (at least this one).
    fn split(&self, workers: usize) {
        let workers = workers.max(1);
        if self.read().0 == workers {
            return;
        }
        let limiter = Arc::new(RateLimiter::direct(quota(self.limit, workers)));
        *self
            .share
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (workers, limiter);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (usize, Arc<DefaultDirectRateLimiter>)> {
        self.share
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One worker's part of `limit` when `workers` share it: a call every `workers / perSecond`
/// seconds, bursts of `burst / workers` (at least 1).
fn quota(limit: RateLimit, workers: usize) -> Quota {
    let period =
        Duration::from_secs_f64(workers as f64 / limit.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new((limit.burst / workers as u32).max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// Keeps this worker's heartbeat for the pool's server alive (with its circuit state, written
/// again at once when the circuit opens or closes) and its limiters split over the live
/// workers, until `shutdown`; then removes the heartbeat so the others take over its share.
pub(crate) async fn heartbeat(bucket: kv::Store, pool: Arc<Pool>, shutdown: CancellationToken) {
    let server = pool.server.name.clone();
    let key = format!("{server}.{}", key_safe(&pool.worker_id));
    let prefix = format!("{server}.");
    let limiters: Vec<&Arc<Limiter>> = pool
        .limiter
        .iter()
        .chain(pool.tool_limiters.values())
        .collect();
    loop {
        let beat = WorkerBeat {
            v: ENVELOPE_VERSION,
            worker_id: pool.worker_id.clone(),
            server: server.clone(),
            circuit: pool.circuit_state(),
            at_ms: now_ms(),
            up: *crate::upstream::lock(&pool.up),
            stats: crate::upstream::lock(&pool.stats).clone(),
        };
        crate::observe::circuit(&pool, beat.circuit);
        let bytes = serde_json::to_vec(&beat).unwrap_or_default();
        if let Err(e) = bucket.put(&key, bytes.into()).await {
            tracing::warn!(%server, error = %e, "cannot write the worker heartbeat");
        }
        if !limiters.is_empty()
            && let Ok(keys) = bucket.keys().await
        {
            let keys: Vec<_> = keys.collect().await;
            // A listing cut short would count too few peers and take too large a share: keep
            // the split as it is until a whole listing comes back.
            if keys.iter().all(Result::is_ok) {
                let live = keys
                    .iter()
                    .filter_map(|k| k.as_ref().ok())
                    .filter(|k| k.starts_with(&prefix))
                    .count();
                for limiter in &limiters {
                    limiter.split(live);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = pool.circuit_changed.notified() => {}
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
    let _ = bucket.delete(&key).await;
}

/// A worker id as a KV key token: anything but letters, digits, `-` and `_` becomes `_`.
fn key_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_split_evenly_over_live_workers() {
        let limit = RateLimit {
            per_second: 30.0,
            burst: 6,
        };
        assert_eq!(
            quota(limit, 1).replenish_interval(),
            Duration::from_secs_f64(1.0 / 30.0)
        );
        assert_eq!(
            quota(limit, 3).replenish_interval(),
            Duration::from_secs_f64(0.1)
        );
        assert_eq!(quota(limit, 3).burst_size().get(), 2);
        assert_eq!(quota(limit, 10).burst_size().get(), 1, "never below one");
    }
}
