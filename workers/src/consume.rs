//! The pull loop of one server: bind its three lane consumers, pull only as many messages as
//! can start now — free slots shared between lanes by `gate::Picker` — hand each to
//! [`crate::attempt`], and bind again if a consumer disappears. On shutdown it drains: calls in
//! flight get `grace` to finish, then are interrupted (the upstream told) and handed back.
//!
//! With fair shares (`servers[].fairness`, on by default with `auth`), a principal's jobs wait
//! in a queue of their own per lane (`mcpq.jobs.<server>.<lane>.<tenant>`): JetStream rings the
//! workers for each one stored (a headers-only republish on `mcpq.bell.…`), and a round pulls
//! from the lane's queues in the order `gate::Shares` gives — round robin by weight — so one
//! principal's backlog delays another's next job by about one job. Principals' queues are not
//! long-polled: their bells wake the loop (and a scan every few seconds finds any bell lost).
//!
//! Pulling only for free slots matters: a message waiting in a client-side buffer gets no
//! progress acks, so with a slow upstream it could outlive AckWait there and be delivered to a
//! second worker while the first still holds it. Messages a poll received but no slot started
//! are handed back (NAK) whenever the loop stops or binds again, never dropped.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, PullConsumer, pull},
};
use futures::{FutureExt, StreamExt, stream::SelectAll};
use mcpq_schemas::{
    Lane,
    names::{
        bell_subjects, consumer_name, job_subject, jobs_stream, tenant_consumer, tenant_subject,
        tenant_subjects,
    },
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    attempt::{self, Context, HandBacks},
    call::Why,
    gate::{Picker, Shares, circuit::Gate, shares::LANE},
};

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
/// After the drain deadline, how long interrupted calls get to tell their upstream and hand
/// their jobs back.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);
/// How often the principals' queues are scanned for jobs whose bell was lost.
const SCAN_EVERY: Duration = Duration::from_secs(3);
/// How soon a principal's queue found empty just after its bell is pulled again.
const RECHECK: Duration = Duration::from_millis(5);
/// A principal's queue consumer nobody pulls from this long is removed by JetStream.
const TENANT_IDLE: Duration = Duration::from_secs(3600);

/// One lane of the server as the pull loop sees it.
struct LaneState {
    lane: Lane,
    consumer: PullConsumer,
    /// A long poll waits on this lane (so nothing is queued in it now).
    polling: bool,
    /// When a fetch last found it empty.
    empty_since: Option<Instant>,
    /// When it last gave a job.
    last_job: Option<Instant>,
    /// Its principals' queues (fair shares) and the lane's own, by who is owed slots.
    shares: Shares,
    /// The consumers of its principals' queues bound so far, by tenant token.
    tenants: std::collections::HashMap<String, PullConsumer>,
    /// Principals' queues to pull once more in a moment (found empty just after their bell).
    recheck: Vec<String>,
}

/// What a binding holds besides the lanes: the stream (to bind principals' queues as they
/// appear) and the bells of this server's principals' queues.
struct Bound {
    stream: jetstream::stream::Stream,
    bells: Option<async_nats::Subscriber>,
}

/// A long poll on one lane: as many messages as it holds slots, each started in one of them.
type Poll = futures::stream::BoxStream<'static, Polled>;

enum Polled {
    /// A job the poll waited for, with the slot it holds.
    Job(Lane, Box<jetstream::Message>, OwnedSemaphorePermit),
    /// The poll is over (and the slots no job took are free).
    Ended(Lane),
    /// The poll failed (the consumer is gone, say): bind again.
    Failed(Lane),
}

/// Why serving the bound consumers stopped.
enum Stop {
    Shutdown,
    /// A pull failed (a consumer gone, NATS restarted, a leader being elected): bind again.
    Rebind,
}

/// The pull loop's state that outlives a binding.
struct Puller {
    ctx: Arc<Context>,
    capacity: Arc<Semaphore>,
    in_flight: JoinSet<()>,
    picker: Picker,
    shutdown: CancellationToken,
}

/// Runs until `shutdown`, then drains the calls in flight for up to `grace`.
pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken, grace: Duration) {
    let server = ctx.server.name.clone();
    let mut puller = Puller {
        capacity: Arc::new(Semaphore::new(ctx.server.concurrency)),
        ctx,
        in_flight: JoinSet::new(),
        picker: Picker::default(),
        shutdown: shutdown.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let stop = match bind(&puller.ctx).await {
            Ok((lanes, bound)) => {
                tracing::info!(%server, concurrency = puller.ctx.server.concurrency, "consuming jobs");
                backoff = Duration::from_millis(100);
                puller.serve(lanes, bound).await
            }
            Err(e) => {
                tracing::warn!(%server, error = %e, retry = ?backoff, "cannot bind the job consumers");
                Stop::Rebind
            }
        };
        if matches!(stop, Stop::Shutdown) || !pause(&shutdown, backoff).await {
            break;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    puller.drain(grace).await;
}

/// Sleeps `duration` unless shutdown comes first; whether it slept.
async fn pause(shutdown: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(duration) => true,
    }
}

impl Puller {
    /// Serves the bound lanes until shutdown or a failed pull.
    ///
    /// Each round takes the free slots and asks the lanes, in the order the picker gives, for
    /// that many jobs without waiting. When no lane has any, one long poll per lane waits for
    /// jobs, the free slots shared between the polls; a round starts again whenever a poll
    /// delivers or ends.
    async fn serve(&mut self, mut lanes: [LaneState; 3], mut bound: Bound) -> Stop {
        let mut polls: SelectAll<Poll> = SelectAll::new();
        // Whether a round found nothing; then only a long poll's answer (or a bell) starts the
        // next one.
        let mut idle = false;
        let mut recheck_at: Option<tokio::time::Instant> = None;
        let mut scan = tokio::time::interval(SCAN_EVERY);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = 'serve: loop {
            let mut permits = tokio::select! {
                () = self.shutdown.cancelled() => break Stop::Shutdown,
                () = sleep_until_some(recheck_at) => {
                    recheck_at = None;
                    for state in lanes.iter_mut() {
                        for tenant in std::mem::take(&mut state.recheck) {
                            state.shares.wake(&tenant);
                        }
                    }
                    idle = false;
                    continue;
                }
                bell = next_bell(&mut bound.bells) => {
                    match bell {
                        Some(subject) => {
                            self.ring(&mut lanes, &subject);
                            idle = false;
                        }
                        // The bells' subscription ended (NATS went away): bind again.
                        None => break Stop::Rebind,
                    }
                    continue;
                }
                // Also without fair shares: jobs left in principals' queues (the server's
                // fairness turned off, a config that differs) are not stranded.
                _ = scan.tick() => {
                    if self.scan(&mut lanes, &bound.stream).await {
                        idle = false;
                    }
                    continue;
                }
                polled = polls.next(), if !polls.is_empty() => {
                    match polled {
                        Some(Polled::Job(lane, message, permit)) => {
                            self.picker.served(lane, 1);
                            lanes[lane.index()].last_job = Some(Instant::now());
                            self.start(*message, permit);
                        }
                        Some(Polled::Ended(lane)) => lanes[lane.index()].polling = false,
                        Some(Polled::Failed(lane)) => {
                            tracing::warn!(server = %self.ctx.server.name, lane = lane.as_str(), "a long poll failed; binding again");
                            break 'serve Stop::Rebind;
                        }
                        None => {}
                    }
                    // While every lane has a poll waiting, new jobs come to the polls: a round
                    // would find nothing to do (unless a principal's queue rang).
                    idle = is_idle(&lanes);
                    continue;
                }
                permit = self.capacity.clone().acquire_owned(), if !idle => {
                    vec![permit.expect("the semaphore is never closed")]
                }
            };
            // Asked only now that a slot is free, so the calls that just ended have been counted.
            match self.ctx.gate.pull() {
                Gate::Pull => {}
                Gate::Wait(wait) => {
                    // An open circuit, or a 429 pause: pull nothing more (the jobs stay
                    // queued). Jobs the polls already hold are started meanwhile — each attempt
                    // asks the gate too, and hands its job back with a recorded hold — never left
                    // unheld in a buffer.
                    drop(permits);
                    let until = tokio::time::Instant::now() + wait;
                    loop {
                        tokio::select! {
                            () = self.shutdown.cancelled() => break 'serve Stop::Shutdown,
                            () = tokio::time::sleep_until(until) => break,
                            polled = polls.next(), if !polls.is_empty() => match polled {
                                Some(Polled::Job(lane, message, permit)) => {
                                    lanes[lane.index()].last_job = Some(Instant::now());
                                    self.start(*message, permit);
                                }
                                Some(Polled::Ended(lane)) => lanes[lane.index()].polling = false,
                                Some(Polled::Failed(_)) => break 'serve Stop::Rebind,
                                None => {}
                            },
                        }
                    }
                    idle = is_idle(&lanes);
                    continue;
                }
                Gate::Probe => {
                    // Half-open: the worker pings the upstream itself; the answer decides.
                    drop(permits);
                    let timeout = self.ctx.server.timeout.min(PROBE_TIMEOUT);
                    let verdict = tokio::select! {
                        () = self.shutdown.cancelled() => break Stop::Shutdown,
                        verdict = self.ctx.upstream.probe(timeout) => verdict,
                    };
                    tracing::info!(server = %self.ctx.server.name, ?verdict, "circuit probe");
                    self.ctx.gate.probed(verdict);
                    continue;
                }
            }
            while permits.len() < MAX_PULL {
                match self.capacity.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            // Ask the lanes in turn, without waiting, for as many jobs as there are slots.
            for lane in self.picker.order() {
                if permits.is_empty() {
                    break;
                }
                let state = &mut lanes[lane.index()];
                // A lane with a poll waiting has nothing queued: the poll would have its jobs.
                let recently_empty = state
                    .empty_since
                    .is_some_and(|at| at.elapsed() < EMPTY_RECHECK);
                let lane_waiting = !(state.polling || (recently_empty && !polls.is_empty()));
                if !lane_waiting && !state.shares.any_waiting() {
                    continue;
                }
                let got = match self
                    .pull_lane(state, &bound.stream, lane_waiting, &mut permits)
                    .await
                {
                    Ok(got) => got,
                    Err(stop) => break 'serve stop,
                };
                if got == 0 {
                    self.picker.empty(lane);
                } else {
                    self.picker.served(lane, got);
                    state.last_job = Some(Instant::now());
                }
            }
            if recheck_at.is_none() && lanes.iter().any(|l| !l.recheck.is_empty()) {
                recheck_at = Some(tokio::time::Instant::now() + RECHECK);
            }
            if !permits.is_empty() {
                // Slots left after asking every lane: nothing is queued anywhere now. Asking
                // again at once would cost a request per few jobs; wait instead.
                if let Err(e) = self.long_polls(&mut lanes, &mut polls, permits).await {
                    tracing::warn!(server = %self.ctx.server.name, error = %e, "pull failed; binding again");
                    break Stop::Rebind;
                }
                idle = !polls.is_empty();
            }
            while self.in_flight.try_join_next().is_some() {}
        };
        // Jobs a poll received but no slot started go back now, not after AckWait.
        hand_back(&mut polls, &self.ctx.server.name, &self.ctx.handed_back).await;
        stop
    }

    /// Pulls for the free `permits` from `state`'s queues in the order fair shares give —
    /// its principals' queues and, when `lane_waiting`, the lane's own — starting each job
    /// in a slot; how many it started. Without principals' queues waiting, this is one pull
    /// from the lane's own queue, as it always was.
    async fn pull_lane(
        &mut self,
        state: &mut LaneState,
        stream: &jetstream::stream::Stream,
        lane_waiting: bool,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) -> Result<usize, Stop> {
        let mut started = 0;
        let mut lane_open = lane_waiting;
        while !permits.is_empty() {
            let order = state.shares.order(lane_open);
            let Some(first) = order.first().cloned() else {
                break;
            };
            // The queue owed most takes a fair part of the slots (all of them when alone).
            let take = (permits.len() / order.len()).max(1);
            let consumer = if first == LANE {
                state.consumer.clone()
            } else {
                match self.tenant(state, stream, &first).await {
                    Some(consumer) => consumer,
                    None => {
                        state.shares.empty(&first);
                        continue;
                    }
                }
            };
            let messages = match fetch(&consumer, take, &self.shutdown, &self.ctx.handed_back).await
            {
                Ok(messages) => messages,
                // A principal's queue whose consumer is gone (removed after a long idle
                // spell, say): bound again when it rings next; the other queues go on.
                Err(Stop::Rebind) if first != LANE => {
                    state.tenants.remove(&first);
                    state.shares.empty(&first);
                    continue;
                }
                Err(stop) => return Err(stop),
            };
            let got = messages.len();
            for message in messages {
                match permits.pop() {
                    Some(permit) => self.start(message, permit),
                    // More than asked for; cannot happen, but never hold it unstarted.
                    None => nak(&message, &self.ctx.handed_back).await,
                }
            }
            started += got;
            state.shares.served(&first, got);
            if got == 0 && first != LANE {
                if state.shares.found_empty(&first) {
                    state.recheck.push(first.clone());
                }
            } else if got < take {
                state.shares.empty(&first);
            }
            if first == LANE {
                lane_open = got == take;
                state.empty_since = (got == 0).then(Instant::now);
            }
        }
        Ok(started)
    }

    /// The consumer of principal `tenant`'s queue in `state`'s lane, bound now if it is not
    /// yet; `None` when JetStream refuses it (logged; its jobs are found again later).
    async fn tenant(
        &self,
        state: &mut LaneState,
        stream: &jetstream::stream::Stream,
        tenant: &str,
    ) -> Option<PullConsumer> {
        if let Some(consumer) = state.tenants.get(tenant) {
            return Some(consumer.clone());
        }
        let server = &self.ctx.server;
        let bound = stream
            .create_consumer(pull::Config {
                durable_name: Some(tenant_consumer(&server.name, state.lane, tenant)),
                description: Some(format!(
                    "mcpq workers of server {}, lane {}, one principal's jobs",
                    server.name,
                    state.lane.as_str()
                )),
                filter_subject: tenant_subject(&server.name, state.lane, tenant),
                ack_policy: AckPolicy::Explicit,
                ack_wait: server.ack_wait,
                max_deliver: -1,
                max_ack_pending: i64::try_from(server.max_in_flight).unwrap_or(i64::MAX),
                // Never while one of its jobs may still run (nats-server counts idleness from
                // the last pull, not from acks).
                inactive_threshold: TENANT_IDLE.max(server.timeout * 2 + server.ack_wait * 2),
                ..Default::default()
            })
            .await;
        match bound {
            Ok(consumer) => {
                state.tenants.insert(tenant.to_string(), consumer.clone());
                Some(consumer)
            }
            Err(e) => {
                tracing::warn!(server = %server.name, tenant, error = %e, "cannot bind a principal's queue");
                None
            }
        }
    }

    /// A bell: jobs arrived in the principal's queue its subject names
    /// (`mcpq.bell.<server>.<lane>.<tenant>`).
    fn ring(&self, lanes: &mut [LaneState; 3], subject: &str) {
        let mut tokens = subject.rsplit('.');
        let (Some(tenant), Some(lane)) = (tokens.next(), tokens.next()) else {
            return;
        };
        let Ok(lane) = serde_json::from_value::<Lane>(lane.into()) else {
            return;
        };
        let weight = self.ctx.server.fairness.weight_of_tenant(tenant);
        lanes[lane.index()].shares.rang(tenant, weight);
    }

    /// Finds the principals' queues holding jobs (whose bells this worker may have missed);
    /// whether any did.
    async fn scan(&self, lanes: &mut [LaneState; 3], stream: &jetstream::stream::Stream) -> bool {
        let filter = tenant_subjects(&self.ctx.server.name);
        let mut subjects = match stream.info_with_subjects(&filter).await {
            Ok(subjects) => subjects,
            Err(e) => {
                tracing::warn!(server = %self.ctx.server.name, error = %e, "cannot scan the principals' queues");
                return false;
            }
        };
        let mut found = false;
        while let Some(Ok((subject, count))) = subjects.next().await {
            if count > 0 {
                self.ring(lanes, &subject);
                found = true;
            }
        }
        found
    }

    /// Starts one long poll on every lane not already waited on. The busy lane — the one that
    /// gave jobs last, at first the server's default lane — gets every free slot but one for
    /// each other lane; the others get one slot for a short while. A burst then starts at full
    /// concurrency, and a job in another lane is still taken at once.
    async fn long_polls(
        &self,
        lanes: &mut [LaneState; 3],
        polls: &mut SelectAll<Poll>,
        mut permits: Vec<OwnedSemaphorePermit>,
    ) -> Result<(), async_nats::Error> {
        let mut order = Lane::ALL;
        order.sort_by_key(|lane| {
            (
                std::cmp::Reverse(lanes[lane.index()].last_job),
                *lane != self.ctx.server.lane,
            )
        });
        let busy = order[0];
        let waiting: Vec<Lane> = order
            .into_iter()
            .filter(|lane| !lanes[lane.index()].polling)
            .collect();
        let expires = if permits.len() >= waiting.len() {
            IDLE_POLL
        } else {
            PARTIAL_POLL
        };
        let side = waiting.iter().filter(|lane| **lane != busy).count();
        // With fair shares, most work comes from principals' queues, which ring rather than
        // being polled: a lane's own poll holds one slot, the rest stay free for them.
        let fair = self.ctx.server.fairness.by_principal;
        for lane in waiting {
            let (take, expires) = if lane == busy && !fair {
                (permits.len().saturating_sub(side).max(1), expires)
            } else {
                (1, expires.min(SIDE_POLL))
            };
            let take = take.min(permits.len());
            if take == 0 {
                break;
            }
            let slots: Vec<_> = permits.drain(permits.len() - take..).collect();
            let state = &mut lanes[lane.index()];
            let batch = state
                .consumer
                .batch()
                .max_messages(slots.len())
                .expires(expires)
                .messages()
                .await?;
            state.polling = true;
            polls.push(long_poll(lane, batch, slots, self.ctx.handed_back.clone()));
        }
        Ok(())
    }

    fn start(&mut self, message: jetstream::Message, permit: OwnedSemaphorePermit) {
        // Calls that ended are reaped as new ones start: the set holds at most the slots.
        while self.in_flight.try_join_next().is_some() {}
        let ctx = self.ctx.clone();
        self.in_flight.spawn(async move {
            attempt::handle(&ctx, message).await;
            drop(permit);
        });
    }

    /// Waits up to `grace` for the calls in flight; then interrupts the rest (their upstreams
    /// are told, their jobs handed back) and gives them a moment to do so.
    async fn drain(mut self, grace: Duration) {
        let server = &self.ctx.server.name;
        while self.in_flight.try_join_next().is_some() {}
        if self.in_flight.is_empty() {
            return;
        }
        tracing::info!(%server, calls = self.in_flight.len(), ?grace, "draining calls in flight");
        let all = async { while self.in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_ok() {
            return;
        }
        tracing::warn!(%server, calls = self.in_flight.len(), "grace period over; interrupting the calls left (their jobs go back to the queue)");
        self.ctx.cancels.interrupt_all(&Why::Draining);
        let all = async { while self.in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(INTERRUPT_GRACE, all).await.is_err() {
            tracing::warn!(%server, calls = self.in_flight.len(), "calls did not stop in time; their jobs will be delivered again after ackWait");
        }
    }
}

/// Asks `consumer` for up to `max` messages without waiting on the server; what it holds now.
async fn fetch(
    consumer: &PullConsumer,
    max: usize,
    shutdown: &CancellationToken,
    handed_back: &HandBacks,
) -> Result<Vec<jetstream::Message>, Stop> {
    let mut batch = match consumer.fetch().max_messages(max).messages().await {
        Ok(batch) => batch,
        Err(e) => {
            tracing::warn!(error = %e, "pull failed; binding again");
            return Err(Stop::Rebind);
        }
    };
    let mut messages = Vec::new();
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => None,
            next = tokio::time::timeout(FETCH_TIMEOUT, batch.next()) => Some(next),
        };
        match next {
            None => {
                for message in &messages {
                    nak(message, handed_back).await;
                }
                return Err(Stop::Shutdown);
            }
            Some(Ok(None)) => return Ok(messages),
            Some(Ok(Some(Ok(message)))) => messages.push(message),
            Some(Ok(Some(Err(e)))) => {
                // A consumer whose leader is being elected answers 503 for a moment: the caller
                // backs off, then binds again.
                tracing::warn!(error = %e, "pull interrupted; binding again");
                for message in &messages {
                    nak(message, handed_back).await;
                }
                return Err(Stop::Rebind);
            }
            Some(Err(_)) => {
                // The answer to a fetch was lost (NATS restarted): start over.
                tracing::warn!("no answer to a fetch; binding again");
                for message in &messages {
                    nak(message, handed_back).await;
                }
                return Err(Stop::Rebind);
            }
        }
    }
}

/// A long poll as a stream: each message with a slot it holds, then the end (which frees the
/// slots no message took), or its failure (the loop binds again, after a backoff).
fn long_poll(
    lane: Lane,
    batch: pull::Batch,
    slots: Vec<OwnedSemaphorePermit>,
    handed_back: Arc<HandBacks>,
) -> Poll {
    futures::stream::unfold(Some((batch, slots)), move |state| {
        let handed_back = handed_back.clone();
        async move {
            let (mut batch, mut slots) = state?;
            loop {
                match batch.next().await {
                    Some(Ok(message)) => match slots.pop() {
                        Some(slot) => {
                            let job = Polled::Job(lane, Box::new(message), slot);
                            return Some((job, Some((batch, slots))));
                        }
                        // More messages than asked for: hand the extra back at once.
                        None => nak(&message, &handed_back).await,
                    },
                    Some(Err(_)) => return Some((Polled::Failed(lane), None)),
                    None => return Some((Polled::Ended(lane), None)),
                }
            }
        }
    })
    .boxed()
}

/// NAKs the messages the polls received but no slot started, so other workers get them now
/// instead of after AckWait.
async fn hand_back(polls: &mut SelectAll<Poll>, server: &str, handed_back: &HandBacks) {
    let mut handed = 0;
    while let Some(Some(polled)) = polls.next().now_or_never() {
        if let Polled::Job(_, message, _) = polled {
            nak(&message, handed_back).await;
            handed += 1;
        }
    }
    if handed > 0 {
        tracing::info!(%server, jobs = handed, "handed back jobs not started");
    }
}

/// Hands a message back unstarted, noting it so that its next delivery is not taken for a
/// stranded one.
async fn nak(message: &jetstream::Message, handed_back: &HandBacks) {
    if let Ok(info) = message.info() {
        handed_back.note(info.stream_sequence);
    }
    let _ = message.ack_with(AckKind::Nak(None)).await;
}

/// Creates (or updates) the server's durable consumers on its jobs stream, one per lane.
async fn bind(ctx: &Context) -> Result<([LaneState; 3], Bound), async_nats::Error> {
    let stream = ctx
        .outbox
        .js
        .get_stream(jobs_stream(&ctx.server.name))
        .await?;
    let server = &ctx.server;
    let mut lanes = Vec::with_capacity(3);
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
                ack_wait: server.ack_wait,
                // Unlimited: a job waiting for an open circuit comes back as often as it must.
                // The worker itself ends a job its workers keep dying with (see
                // `attempt::decide::MAX_STRANDED`), so no message is left in the queue for good.
                max_deliver: -1,
                max_ack_pending: i64::try_from(server.max_in_flight).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .await?;
        lanes.push(LaneState {
            lane,
            consumer,
            polling: false,
            empty_since: None,
            last_job: None,
            shares: Shares::default(),
            tenants: Default::default(),
            recheck: Vec::new(),
        });
    }
    let [high, normal, low]: [LaneState; 3] = lanes
        .try_into()
        .map_err(|_| "three lanes, three consumers")?;
    debug_assert!(high.lane == Lane::High && normal.lane == Lane::Normal && low.lane == Lane::Low);
    // With fair shares, the principals' queues ring here (JetStream republishes the headers of
    // each job stored in one).
    let bells = if server.fairness.by_principal {
        Some(
            ctx.outbox
                .client
                .subscribe(bell_subjects(&server.name))
                .await?,
        )
    } else {
        None
    };
    Ok(([high, normal, low], Bound { stream, bells }))
}

/// Sleeps until `at`, or for ever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether every lane has a poll waiting and no principal's queue rang: a round would find
/// nothing to do.
fn is_idle(lanes: &[LaneState; 3]) -> bool {
    lanes.iter().all(|l| l.polling) && !lanes.iter().any(|l| l.shares.any_waiting())
}

/// The subject of the next bell, or never without fair shares; `None` when the bells'
/// subscription ended.
async fn next_bell(bells: &mut Option<async_nats::Subscriber>) -> Option<String> {
    match bells {
        Some(bells) => bells.next().await.map(|bell| bell.subject.to_string()),
        None => std::future::pending().await,
    }
}
