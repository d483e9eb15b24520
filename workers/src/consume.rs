//! The pull loop of one server: bind the durable consumer, pull only as many messages as can
//! start now, hand each to [`crate::attempt`], and bind again if the consumer disappears.
//!
//! Pulling only for free slots matters: a message waiting in a client-side buffer gets no
//! progress acks, so with a slow upstream it could outlive AckWait there and be delivered to a
//! second worker while the first still holds it.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, PullConsumer, pull},
};
use futures::{FutureExt, Stream, StreamExt};
use mcpq_schemas::names::{JOBS_STREAM, consumer_name, server_jobs_filter};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    circuit::Gate,
    {attempt, pool::Pool},
};

/// How many deliveries the server allows; kept above the retry policy's attempts so that the
/// worker's own dead-lettering always runs first.
const SERVER_MAX_DELIVER_MARGIN: i64 = 5;
/// Most messages asked for in one pull.
const MAX_PULL: usize = 256;
/// How long one pull waits on the server for messages; short, so slots freed meanwhile are
/// offered again soon.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Runs until `shutdown`, then waits up to `grace` for calls in flight.
pub(crate) async fn run(pool: Arc<Pool>, shutdown: CancellationToken, grace: Duration) {
    let server = pool.server.name.clone();
    let capacity = Arc::new(Semaphore::new(pool.server.concurrency));
    let mut in_flight = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    'bind: while !shutdown.is_cancelled() {
        let consumer = match bind(&pool).await {
            Ok(consumer) => consumer,
            Err(e) => {
                tracing::warn!(%server, error = %e, retry = ?backoff, "cannot bind the job consumer");
                tokio::select! {
                    () = shutdown.cancelled() => break 'bind,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'bind;
            }
        };
        tracing::info!(%server, concurrency = pool.server.concurrency, "consuming jobs");
        loop {
            // Wait for one free slot, then take every other free one: that is what we pull.
            let mut permits = tokio::select! {
                () = shutdown.cancelled() => break 'bind,
                permit = capacity.clone().acquire_owned() => vec![permit.expect("the semaphore is never closed")],
            };
            // An open circuit: pull nothing (the jobs stay queued, no attempt is burnt); when
            // it half-opens, pull one job as the probe. Asked only now that a slot is free, so
            // the calls that just ended have been counted.
            let gate = pool.breaker.as_ref().map_or(Gate::Pull, |b| {
                b.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .gate(std::time::Instant::now())
            });
            // An upstream that answered 429 with Retry-After holds the whole pool.
            let gate = match pool.held_for() {
                Some(pause) => Gate::Wait(pause),
                None => gate,
            };
            if let Gate::Wait(pause) = gate {
                drop(permits);
                tokio::select! {
                    () = shutdown.cancelled() => break 'bind,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
            while permits.len() < MAX_PULL && gate == Gate::Pull {
                match capacity.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let pulled = consumer
                .batch()
                .max_messages(permits.len())
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut batch = match pulled {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(%server, error = %e, "pull failed; binding again");
                    tokio::time::sleep(backoff).await;
                    continue 'bind;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => {
                        hand_back(&server, &mut batch).await;
                        break 'bind;
                    }
                    next = batch.next() => next,
                };
                match next {
                    // The pull is over (filled or expired): pull again for what is free.
                    None => break,
                    Some(Ok(message)) => {
                        let Some(permit) = permits.pop() else {
                            // More than asked for; cannot happen, but never hold it unstarted.
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            continue;
                        };
                        let pool = pool.clone();
                        in_flight.spawn(async move {
                            attempt::handle(&pool, message).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(%server, error = %e, "pull interrupted; binding again");
                        continue 'bind;
                    }
                }
            }
            while in_flight.try_join_next().is_some() {}
        }
    }
    while in_flight.try_join_next().is_some() {}
    if !in_flight.is_empty() {
        tracing::info!(%server, calls = in_flight.len(), ?grace, "draining calls in flight");
        let drained = tokio::time::timeout(grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(%server, calls = in_flight.len(), "grace period over; unfinished jobs will be redelivered");
        }
    }
}

/// On shutdown: NAKs messages already delivered to this worker but not started, so other
/// workers get them now instead of after AckWait.
async fn hand_back<S, E>(server: &str, messages: &mut S)
where
    S: Stream<Item = Result<jetstream::Message, E>> + Unpin,
{
    let mut handed = 0;
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        if message.ack_with(AckKind::Nak(None)).await.is_ok() {
            handed += 1;
        }
    }
    if handed > 0 {
        tracing::info!(%server, jobs = handed, "handed back jobs not started");
    }
}

/// Creates (or updates) the server's durable consumer.
async fn bind(pool: &Pool) -> Result<PullConsumer, String> {
    let stream = pool
        .outbox
        .js
        .get_stream(JOBS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let server = &pool.server;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(consumer_name(&server.name)),
            description: Some(format!("mcpq workers of server {}", server.name)),
            filter_subject: server_jobs_filter(&server.name),
            ack_policy: AckPolicy::Explicit,
            // Workers send progress acks every AckWait/3 while they hold a message, so AckWait
            // only bounds how long a dead worker's jobs wait before redelivery.
            ack_wait: pool.ack_wait,
            max_deliver: i64::from(pool.retry.max_attempts) + SERVER_MAX_DELIVER_MARGIN,
            max_ack_pending: i64::try_from(server.max_in_flight).unwrap_or(i64::MAX),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}
