//! The pull loop of one server: bind its three lane consumers, pull only as many messages as
//! can start now — lanes shared by [`crate::lanes`] — hand each to [`crate::attempt`], and bind
//! again if a consumer disappears.
//!
//! Pulling only for free slots matters: a message waiting in a client-side buffer gets no
//! progress acks, so with a slow upstream it could outlive AckWait there and be delivered to a
//! second worker while the first still holds it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, PullConsumer, pull},
};
use futures::{FutureExt, Stream, StreamExt, stream::SelectAll};
use mcpq_schemas::{
    Lane,
    names::{consumer_name, job_subject, jobs_stream},
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{attempt, circuit::Gate, lanes::Picker, pool::Pool};

/// How many deliveries the server allows; kept above the retry policy's attempts so that the
/// worker's own dead-lettering always runs first.
const SERVER_MAX_DELIVER_MARGIN: u32 = 5;

/// The deliveries JetStream makes of one job before it stops: after the last one a message
/// would stay in the work queue forever, so a worker given it dead-letters it (see
/// `attempt::run`).
pub(crate) fn server_max_deliver(retry: &crate::RetryPolicy) -> u32 {
    retry.max_attempts.saturating_add(SERVER_MAX_DELIVER_MARGIN)
}
/// Most messages asked for in one pull.
const MAX_PULL: usize = 256;

/// How long an idle long poll waits for a job when it covers every lane.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// ... and when it covers only some lanes (fewer free slots than lanes), so the others are
/// looked at again soon.
const PARTIAL_POLL: Duration = Duration::from_millis(100);
/// How long the one-slot polls of the lanes that are not the busy one wait: the slot they hold
/// is back soon if the busy lane needs it.
const SIDE_POLL: Duration = Duration::from_millis(250);
/// A fetch (which does not wait on the server) unanswered this long was lost.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a circuit probe (a ping) waits for the upstream.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// A lane found empty is not asked again for this long while others keep the slots busy.
const EMPTY_RECHECK: Duration = Duration::from_millis(20);

/// A long poll on one lane: as many messages as it holds slots, each started in one of them.
type Poll = futures::stream::BoxStream<'static, Polled>;

enum Polled {
    /// The job the poll waited for, with the slot it holds.
    Job(Lane, Box<jetstream::Message>, OwnedSemaphorePermit),
    /// The poll is over (and the slots no job took are free).
    Ended(Lane),
}

/// Runs until `shutdown`, then waits up to `grace` for calls in flight.
///
/// Each round takes the free slots and asks the lanes, in the order [`Picker`] gives, for that
/// many jobs without waiting. When no lane has any, one long poll per lane waits for jobs, the
/// free slots shared between the polls; a round starts again whenever a poll delivers or ends.
pub(crate) async fn run(pool: Arc<Pool>, shutdown: CancellationToken, grace: Duration) {
    let server = pool.server.name.clone();
    let capacity = Arc::new(Semaphore::new(pool.server.concurrency));
    let mut in_flight = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    let mut picker = Picker::default();
    'bind: while !shutdown.is_cancelled() {
        let consumers = match bind(&pool).await {
            Ok(consumers) => consumers,
            Err(e) => {
                tracing::warn!(%server, error = %e, retry = ?backoff, "cannot bind the job consumers");
                tokio::select! {
                    () = shutdown.cancelled() => break 'bind,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'bind;
            }
        };
        tracing::info!(%server, concurrency = pool.server.concurrency, "consuming jobs");
        let mut polls: SelectAll<Poll> = SelectAll::new();
        let mut polling = [false; 3];
        let mut empty_since: [Option<Instant>; 3] = [None; 3];
        // When each lane last gave a job.
        let mut last_job: [Option<Instant>; 3] = [None; 3];
        // Whether a round found nothing; then only a long poll's answer starts the next one.
        let mut idle = false;
        loop {
            let mut permits = tokio::select! {
                () = shutdown.cancelled() => {
                    // Jobs a poll already received go back now, not after AckWait.
                    while let Some(Some(polled)) = polls.next().now_or_never() {
                        if let Polled::Job(_, message, _) = polled {
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                        }
                    }
                    break 'bind;
                }
                polled = polls.next(), if !polls.is_empty() => {
                    match polled {
                        Some(Polled::Job(lane, message, permit)) => {
                            picker.served(lane, 1);
                            last_job[lane_index(lane)] = Some(Instant::now());
                            start(&mut in_flight, &pool, *message, permit);
                        }
                        Some(Polled::Ended(lane)) => polling[lane_index(lane)] = false,
                        None => {}
                    }
                    // While every lane has a poll waiting, new jobs come to the polls: a round
                    // would find nothing to do.
                    idle = polling.iter().all(|p| *p);
                    continue;
                }
                permit = capacity.clone().acquire_owned(), if !idle => vec![permit.expect("the semaphore is never closed")],
            };
            // An open circuit: pull nothing (the jobs stay queued, no attempt is burnt); when
            // it half-opens, the worker pings the upstream itself and the answer decides. Asked
            // only now that a slot is free, so the calls that just ended have been counted.
            let gate = pool.breaker.as_ref().map_or(Gate::Pull, |b| {
                b.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .gate(Instant::now())
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
            if gate == Gate::Probe {
                drop(permits);
                let verdict = tokio::select! {
                    () = shutdown.cancelled() => break 'bind,
                    verdict = crate::call::probe(&pool.upstream, pool.server.timeout.min(PROBE_TIMEOUT)) => verdict,
                };
                tracing::info!(%server, ?verdict, "circuit probe");
                pool.breaker_record(verdict);
                continue;
            }
            while permits.len() < MAX_PULL {
                match capacity.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            // Ask the lanes in turn, without waiting, for as many jobs as there are slots.
            for lane in picker.order() {
                let i = lane_index(lane);
                if permits.is_empty() {
                    break;
                }
                // A lane with a poll waiting has nothing queued: the poll would have its jobs.
                if polling[i]
                    || (empty_since[i].is_some_and(|at| at.elapsed() < EMPTY_RECHECK)
                        && !polls.is_empty())
                {
                    continue;
                }
                let mut batch = match consumers[i]
                    .fetch()
                    .max_messages(permits.len())
                    .messages()
                    .await
                {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(%server, error = %e, "pull failed; binding again");
                        tokio::time::sleep(backoff).await;
                        continue 'bind;
                    }
                };
                let mut got = 0;
                loop {
                    let next = tokio::select! {
                        () = shutdown.cancelled() => {
                            hand_back(&server, &mut batch).await;
                            break 'bind;
                        }
                        next = tokio::time::timeout(FETCH_TIMEOUT, batch.next()) => match next {
                            Ok(next) => next,
                            Err(_) => {
                                // The answer to a fetch was lost (NATS restarted): start over.
                                tracing::warn!(%server, "no answer to a fetch; binding again");
                                continue 'bind;
                            }
                        },
                    };
                    match next {
                        None => break,
                        Some(Ok(message)) => {
                            let Some(permit) = permits.pop() else {
                                // More than asked for; cannot happen, but never hold it unstarted.
                                let _ = message.ack_with(AckKind::Nak(None)).await;
                                continue;
                            };
                            got += 1;
                            start(&mut in_flight, &pool, message, permit);
                        }
                        Some(Err(e)) => {
                            // A consumer whose leader is being elected answers 503 for a
                            // moment: back off rather than ask again at once.
                            tracing::warn!(%server, error = %e, retry = ?backoff, "pull interrupted; binding again");
                            tokio::select! {
                                () = shutdown.cancelled() => break 'bind,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue 'bind;
                        }
                    }
                }
                if got == 0 {
                    picker.empty(lane);
                    empty_since[i] = Some(Instant::now());
                } else {
                    picker.served(lane, got);
                    empty_since[i] = None;
                    last_job[i] = Some(Instant::now());
                }
            }
            backoff = Duration::from_millis(100);
            if !permits.is_empty() {
                // Slots left after asking every lane: nothing is queued anywhere now (a lane
                // skipped above has a poll waiting, or was empty a moment ago). Asking again at
                // once would cost a request per few jobs; wait instead, on every lane not
                // already waited on. The busy
                // lane — the one that gave jobs last, at first the server's default lane — gets
                // every free slot but one for each other lane; the others get one slot for a
                // short while. A burst then starts at full concurrency, and a job in another
                // lane is still taken at once.
                let mut lanes = Lane::ALL;
                lanes.sort_by_key(|lane| {
                    (
                        std::cmp::Reverse(last_job[lane_index(*lane)]),
                        *lane != pool.server.lane,
                    )
                });
                let busy = lanes[0];
                let lanes: Vec<Lane> = lanes
                    .into_iter()
                    .filter(|lane| !polling[lane_index(*lane)])
                    .collect();
                let expires = if permits.len() >= lanes.len() {
                    IDLE_POLL
                } else {
                    PARTIAL_POLL
                };
                let side = lanes.iter().filter(|lane| **lane != busy).count();
                for lane in lanes {
                    let (take, expires) = if lane == busy {
                        (permits.len().saturating_sub(side).max(1), expires)
                    } else {
                        (1, expires.min(SIDE_POLL))
                    };
                    let take = take.min(permits.len());
                    if take == 0 {
                        break;
                    }
                    let slots: Vec<_> = permits.drain(permits.len() - take..).collect();
                    let pulled = consumers[lane_index(lane)]
                        .batch()
                        .max_messages(slots.len())
                        .expires(expires)
                        .messages()
                        .await;
                    match pulled {
                        Ok(batch) => {
                            polling[lane_index(lane)] = true;
                            polls.push(long_poll(lane, batch, slots));
                        }
                        Err(e) => {
                            tracing::warn!(%server, error = %e, "pull failed; binding again");
                            tokio::time::sleep(backoff).await;
                            continue 'bind;
                        }
                    }
                }
                idle = !polls.is_empty();
            }
            drop(permits);
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

fn start(
    in_flight: &mut JoinSet<()>,
    pool: &Arc<Pool>,
    message: jetstream::Message,
    permit: OwnedSemaphorePermit,
) {
    let pool = pool.clone();
    in_flight.spawn(async move {
        attempt::handle(&pool, message).await;
        drop(permit);
    });
}

/// A long poll as a stream: each message with a slot it holds, then the end (which frees the
/// slots no message took). Errors end it too: the next round binds again if the consumer is gone.
fn long_poll(lane: Lane, batch: pull::Batch, slots: Vec<OwnedSemaphorePermit>) -> Poll {
    futures::stream::unfold(Some((batch, slots)), move |state| async move {
        let (mut batch, mut slots) = state?;
        loop {
            match batch.next().await {
                Some(Ok(message)) => match slots.pop() {
                    Some(slot) => {
                        let job = Polled::Job(lane, Box::new(message), slot);
                        return Some((job, Some((batch, slots))));
                    }
                    None => {
                        // More messages than asked for: hand the extra back at once.
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                    }
                },
                Some(Err(_)) | None => return Some((Polled::Ended(lane), None)),
            }
        }
    })
    .boxed()
}

fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::High => 0,
        Lane::Normal => 1,
        Lane::Low => 2,
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

/// Creates (or updates) the server's durable consumers on its jobs stream, one per lane.
async fn bind(pool: &Pool) -> Result<[PullConsumer; 3], String> {
    let stream = pool
        .outbox
        .js
        .get_stream(jobs_stream(&pool.server.name))
        .await
        .map_err(|e| e.to_string())?;
    let server = &pool.server;
    let mut consumers = Vec::with_capacity(3);
    for lane in Lane::ALL {
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(consumer_name(&server.name, lane)),
                description: Some(format!(
                    "mcpq workers of server {}, lane {}",
                    server.name,
                    lane.as_str()
                )),
                filter_subject: job_subject(&server.name, lane),
                ack_policy: AckPolicy::Explicit,
                // Workers send progress acks every AckWait/3 while they hold a message, so
                // AckWait only bounds how long a dead worker's jobs wait before redelivery.
                ack_wait: pool.ack_wait,
                max_deliver: i64::from(server_max_deliver(&pool.retry)),
                max_ack_pending: i64::try_from(server.max_in_flight).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        consumers.push(consumer);
    }
    consumers
        .try_into()
        .map_err(|_| "three lanes, three consumers".to_string())
}
