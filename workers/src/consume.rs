//! The pull loop of one server: bind the durable consumer, take messages while there is
//! capacity, hand each to [`crate::attempt`], and bind again if the consumer disappears.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
};
use futures::{FutureExt, StreamExt};
use mcpq_schemas::names::{JOBS_STREAM, consumer_name, server_jobs_filter};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::attempt::{self, Pool};

/// How many deliveries the server allows; kept above the retry policy's attempts so that the
/// worker's own dead-lettering always runs first.
const SERVER_MAX_DELIVER_MARGIN: i64 = 5;

/// Runs until `shutdown`, then waits up to `grace` for calls in flight.
pub(crate) async fn run(pool: Arc<Pool>, shutdown: CancellationToken, grace: Duration) {
    let server = pool.server.name.clone();
    let capacity = Arc::new(Semaphore::new(pool.server.concurrency));
    let mut in_flight = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    'bind: while !shutdown.is_cancelled() {
        let mut messages = match bind(&pool).await {
            Ok(messages) => {
                backoff = Duration::from_millis(100);
                messages
            }
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
            let permit = tokio::select! {
                () = shutdown.cancelled() => {
                    hand_back(&server, &mut messages).await;
                    break 'bind;
                }
                permit = capacity.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => {
                    hand_back(&server, &mut messages).await;
                    break 'bind;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let pool = pool.clone();
                    in_flight.spawn(async move {
                        attempt::handle(&pool, message).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    use pull::MessagesErrorKind as K;
                    match e.kind() {
                        K::ConsumerDeleted | K::NoResponders | K::RequestLimitExceeded => {
                            tracing::warn!(%server, error = %e, "job consumer lost; binding again");
                            continue 'bind;
                        }
                        _ => tracing::debug!(%server, error = %e, "pull hiccup"),
                    }
                }
                None => {
                    tracing::warn!(%server, "job stream ended; binding again");
                    continue 'bind;
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

/// On shutdown: NAKs the messages already pulled into this worker's buffer but not started, so
/// other workers get them now instead of after AckWait.
async fn hand_back(server: &str, messages: &mut pull::Stream) {
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

/// Creates (or updates) the server's durable consumer and opens a pull stream on it.
async fn bind(pool: &Pool) -> Result<pull::Stream, String> {
    let stream = pool
        .outbox
        .js
        .get_stream(JOBS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let server = &pool.server;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(consumer_name(&server.name)),
            description: Some(format!("mcpq workers of server {}", server.name)),
            filter_subject: server_jobs_filter(&server.name),
            ack_policy: AckPolicy::Explicit,
            // A message can wait in the pull buffer for a free slot (at most one call's
            // timeout) and then run for one timeout; AckWait covers both, so a slow call is not
            // redelivered to a second worker while the first still works on it.
            ack_wait: server.timeout * 2 + Duration::from_secs(10),

            max_deliver: i64::from(pool.retry.max_attempts) + SERVER_MAX_DELIVER_MARGIN,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer
        .stream()
        .max_messages_per_batch(server.concurrency.clamp(1, 256))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())
}
