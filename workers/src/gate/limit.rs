//! Global rate limits: a server's `rateLimit` is shared by its live workers, each taking an
//! equal part. The heartbeat counts the live workers (`Report::peers`); a limiter
//! splits again when the count changes. Calls over the limit wait (the job is held, with
//! progress acks) — shaped, not rejected.

use std::{
    num::NonZeroU32,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mcpq_schemas::config::RateLimit;

/// This worker's part of one server's rate limit.
pub(crate) struct Limiter {
    limit: RateLimit,
    /// The server's live workers, this one included, as the heartbeat last counted them.
    peers: Arc<AtomicUsize>,
    share: RwLock<(usize, Arc<DefaultDirectRateLimiter>)>,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit, peers: Arc<AtomicUsize>) -> Limiter {
        Limiter {
            limit,
            peers,
            share: RwLock::new((1, Arc::new(RateLimiter::direct(quota(limit, 1))))),
        }
    }

    /// Waits until this worker may make one more call. A call that waited on a share that
    /// has since been split again waits on the new share too: callers already queued on an old,
    /// larger share would otherwise go out at its pace after the workers were recounted.
    pub(crate) async fn ready(&self) {
        loop {
            self.split(self.peers.load(Ordering::Relaxed));
            let limiter = self.read().1.clone();
            limiter.until_ready().await;
            if Arc::ptr_eq(&limiter, &self.read().1) {
                return;
            }
        }
    }

    /// Re-splits the limit over `workers` live workers (at least this one).
    fn split(&self, workers: usize) {
        let workers = workers.max(1);
        if self.read().0 == workers {
            return;
        }
        let limiter = Arc::new(RateLimiter::direct(quota(self.limit, workers)));
        *mcpq_schemas::sync::write(&self.share) = (workers, limiter);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (usize, Arc<DefaultDirectRateLimiter>)> {
        mcpq_schemas::sync::read(&self.share)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls already waiting when more workers are counted go out at the new, smaller share.
    /// Five calls wait on a share of 4/s (all five through within 1.5 s if they kept it); the
    /// limit is then split over 1,000 workers (a call every 250 s, one in hand): at most that
    /// one, and one that was already past its wait, go out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_calls_take_the_new_share_when_workers_are_recounted() {
        let limit = RateLimit {
            per_second: 4.0,
            burst: 1,
        };
        let peers = Arc::new(AtomicUsize::new(1));
        let limiter = Arc::new(Limiter::new(limit, peers.clone()));
        limiter.ready().await;
        let through = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (limiter, through) = (limiter.clone(), through.clone());
                tokio::spawn(async move {
                    limiter.ready().await;
                    through.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        // Let them start waiting on the 4/s share (its next call is 250 ms away).
        tokio::time::sleep(Duration::from_millis(100)).await;
        peers.store(1000, Ordering::Relaxed);
        limiter.split(1000);
        let before = through.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = through.load(Ordering::SeqCst);
        assert!(
            after - before <= 2,
            "{} waiting calls went out at the old share",
            after - before
        );
        for waiter in waiters {
            waiter.abort();
        }
    }

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
