//! One delivery of one job, start to end: read it ([`decode`]), find whose it is ([`claim`]),
//! pass the gate, call the upstream, and end in an [`Outcome`]; the pure [`decide`] turns every
//! outcome into one [`Decision`], which [`carry_out`] executes — ack, NAK with a delay, or
//! dead-letter then TERM. No message is left to time out by accident.
//!
//! While the delivery is held, progress acks go out every AckWait/3. A tick that comes later
//! than AckWait (the process was frozen) means JetStream has given the job to another attempt:
//! the call is stopped, the upstream told, and the message left alone.

mod carry_out;
mod claim;
pub(crate) mod decide;
mod decode;
mod outcome;
mod tick;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{AckKind, Message};
use mcpq_schemas::{
    Attempt, ErrorKind, Job, JobError, JobRecord, JobStatus, Progress,
    config::ServerConfig,
    names::{HDR_REPLAY_OF, HDR_REPLY_TO},
    now_ms,
};
use tokio::sync::mpsc;
use tracing::Instrument;

pub(crate) use self::decide::{Decision, RetryPolicy, decide};
use self::{claim::Found, outcome::Outcome};
use crate::{
    call::{self, Asker, CallOptions, CallOutcome, Cancels, Interrupt, ReplyTo, Why},
    gate::Gate,
    lock,
    report::{Report, observe, outbox::Outbox},
    upstream::{CallEvent, Upstream},
};

/// What the attempts of one server share: narrow handles on each stage.
pub(crate) struct Context {
    pub server: ServerConfig,
    pub retry: RetryPolicy,
    pub upstream: Upstream,
    pub gate: Arc<Gate>,
    pub outbox: Outbox,
    pub report: Arc<Report>,
    pub cancels: Arc<Cancels>,
    /// How long the record of a synchronous call that completed is kept.
    pub call_record_ttl: Duration,
    pub audit: crate::report::audit::Audit,
    /// The heartbeats: whether a worker that does not answer still beats.
    pub workers: async_nats::jetstream::kv::Store,
    /// The recurring schedules: each tick started is noted there.
    pub schedules: async_nats::jetstream::kv::Store,
    /// The deployment's signing key: which jobs' principals to believe.
    pub signing: mcpq_schemas::seal::SigningKey,
    /// Messages the pull loop handed back unstarted: those deliveries are explained.
    pub handed_back: Arc<HandBacks>,
}

/// The messages this worker handed back without starting them (shutdown, a rebind, more than
/// asked for), by stream sequence: their deliveries are explained, not stranded.
#[derive(Default)]
pub(crate) struct HandBacks(std::sync::Mutex<std::collections::HashMap<u64, u32>>);

impl HandBacks {
    /// Most sequences remembered; beyond, the oldest knowledge goes (a few unexplained
    /// deliveries more are allowed for).
    const MOST: usize = 100_000;

    pub(crate) fn note(&self, stream_seq: u64) {
        let mut seen = lock(&self.0);
        if seen.len() >= Self::MOST {
            seen.clear();
        }
        *seen.entry(stream_seq).or_default() += 1;
    }

    fn of(&self, stream_seq: u64) -> u32 {
        lock(&self.0).get(&stream_seq).copied().unwrap_or(0)
    }
}

/// The part of a message the attempt needs, read once, and what the job's record adds.
pub(crate) struct Delivery {
    /// Where the caller waits, if anyone does; an answer to an upstream's question may move it.
    reply_to: ReplyTo,
    /// Replayed from a dead letter: run it again even though its record says it ended.
    replay: bool,
    /// JetStream's count of deliveries of this message, this one included.
    delivered: u32,
    stream_seq: u64,
    /// Failed attempts so far, oldest first (from the record).
    history: Vec<Attempt>,
    /// Deliveries handed back without an attempt so far (from the record).
    holds: u32,
    /// The last progress the upstream reported, kept on the job's record.
    progress: Option<Progress>,
    /// The record's revision as this attempt last read or wrote it; writes expect it. (Written
    /// while the call runs too: progress goes to the record of a job nobody waits on.)
    revision: std::sync::Mutex<Option<u64>>,
    /// Upstream calls made for the job before this delivery (from the record).
    earlier: u32,
    /// Whether this delivery passed the gate (an attempt started).
    started: bool,
    /// Whether the job has a record from its submission and is claimed before it runs.
    claimed: bool,
    /// Whether a dispatcher sealed the job (anything else came straight from NATS).
    vouched: bool,
    /// The call became an MCP task (its record says so, and keeps saying so).
    task: bool,
    /// The job's record was read before the attempt: strandings are counted in it
    /// (`takeovers`), not guessed from deliveries.
    recorded: bool,
    /// Attempts that took the job over from one that stopped holding it, this one included.
    takeovers: u32,
}

impl Delivery {
    fn read(message: &Message) -> Delivery {
        let (delivered, stream_seq) = message
            .info()
            .map(|i| {
                (
                    u32::try_from(i.delivered).unwrap_or(u32::MAX),
                    i.stream_sequence,
                )
            })
            .unwrap_or((1, 0));
        let header = |name| message.headers.as_ref().and_then(|h| h.get(name));
        // Only a reply inbox is kept (see `handle`, which refuses a job naming anything else).
        let reply_to = header(HDR_REPLY_TO)
            .map(|v| v.to_string())
            .filter(|s| mcpq_schemas::names::is_reply_inbox(s));
        Delivery::new(
            reply_to,
            header(HDR_REPLAY_OF).is_some(),
            delivered,
            stream_seq,
        )
    }

    /// The delivery of message `stream_seq`, delivered `delivered` times, before its record is
    /// read.
    fn new(reply_to: Option<String>, replay: bool, delivered: u32, stream_seq: u64) -> Delivery {
        Delivery {
            reply_to: ReplyTo::new(std::sync::Mutex::new(reply_to)),
            replay,
            delivered,
            stream_seq,
            history: Vec::new(),
            holds: 0,
            progress: None,
            revision: std::sync::Mutex::new(None),
            earlier: 0,
            started: false,
            claimed: false,
            vouched: false,
            task: false,
            recorded: false,
            takeovers: 0,
        }
    }

    /// The subject the caller waits on now.
    fn reply_to(&self) -> Option<String> {
        lock(&self.reply_to).clone()
    }

    /// How often the job was held by an attempt that stopped mid-call. A job with a record
    /// counts it there (`takeovers`); one without guesses from deliveries nothing explains — a
    /// delivery lost with a connection, or handed back by another worker, looks the same, so
    /// `handed_back` (this process's hand-backs of the message) is taken off.
    fn strandings(&self, handed_back: u32) -> u32 {
        if self.recorded {
            self.takeovers
        } else {
            self.stranded().saturating_sub(handed_back)
        }
    }

    /// Attempts that count against `retry.maxAttempts` so far.
    fn spent(&self) -> u32 {
        Attempt::spent(&self.history)
    }

    /// Deliveries that neither a failed attempt nor a hold explains: held by workers that
    /// stopped.
    fn stranded(&self) -> u32 {
        let explained = u32::try_from(self.history.len())
            .unwrap_or(u32::MAX)
            .saturating_add(self.holds);
        self.delivered.saturating_sub(1).saturating_sub(explained)
    }

    /// Takes over what the record knows of earlier deliveries.
    fn learn(&mut self, record: &JobRecord, revision: u64) {
        self.history = record.failed_attempts.clone();
        self.earlier = u32::try_from(self.history.len()).unwrap_or(u32::MAX);
        self.holds = record.holds;
        self.progress = record.progress.clone();
        self.task = record.task;
        self.recorded = true;
        // Found running, yet free: the attempt that held it stopped; this one takes over.
        self.takeovers = record.takeovers + u32::from(record.status == JobStatus::Running);
        self.set_revision(Some(revision));
    }

    fn revision(&self) -> Option<u64> {
        *lock(&self.revision)
    }

    fn set_revision(&self, revision: Option<u64>) {
        *lock(&self.revision) = revision;
    }
}

/// Handles one delivery from start to end.
pub(crate) async fn handle(ctx: &Context, message: Message) {
    let mut delivery = Delivery::read(&message);
    let stored_at_ms = message
        .info()
        .map(|i| u64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        .unwrap_or_else(|_| now_ms());
    // A reply subject that is not an inbox: the job is refused before anything runs, and
    // nothing is published there.
    let asked_reply = message
        .headers
        .as_ref()
        .and_then(|h| h.get(HDR_REPLY_TO))
        .map(|v| v.to_string());
    if let Some(subject) = asked_reply.filter(|s| !mcpq_schemas::names::is_reply_inbox(s)) {
        let error = JobError::new(
            ErrorKind::MalformedJob,
            format!(
                "Mcpq-Reply-To {subject:?} is not a reply inbox: name a subject under _INBOX. (the job was not run)"
            ),
        );
        tracing::warn!(server = %ctx.server.name, stream_seq = delivery.stream_seq, error = %error.message, "job refused");
        let outcome = Outcome::Malformed(error);
        let decision = decide(&outcome, 0, &ctx.retry, 0.5);
        carry_out::carry_out(ctx, &message, &mut delivery, None, outcome, decision).await;
        return;
    }
    let vouched = sealed(ctx, &message);
    let mut adopted = None;
    let decoded =
        decode::decode(&ctx.server.name, &message.payload, stored_at_ms).and_then(|mut job| {
            // A recurring schedule's tick: its own job, whose id the tick names.
            adopted = tick::adopt(ctx, &message, &mut job, stored_at_ms, vouched)?;
            Ok(job)
        });
    if let Some(adopted) = adopted
        && !tick::wanted(ctx, &ctx.server.name, adopted, delivery.delivered).await
    {
        let _ = message.ack_with(AckKind::Ack).await;
        return;
    }
    let job = match decoded {
        Ok(mut job) => {
            // A principal counts only under a dispatcher's seal: anyone may publish on NATS.
            delivery.vouched = vouched;
            // Nor is a callback taken from anyone but a dispatcher (which checked where it
            // goes): a pipeline listens on mcpq.done.<server>.
            if !delivery.vouched {
                job.callback_url = None;
            }
            if job.principal.is_some() && !delivery.vouched {
                tracing::warn!(
                    job_id = %job.id,
                    principal = job.principal.as_deref().unwrap_or_default(),
                    "a job names a principal without a dispatcher's seal; it runs as nobody's (do dispatchers and workers share nats.signingKey?)"
                );
                job.principal = None;
            }
            // A job published without a trace gets one named after it, the same on every attempt.
            if job.traceparent.is_none() {
                job.traceparent =
                    Some(mcpq_schemas::trace::TraceParent::for_job(&job.id).to_string());
            }
            job
        }
        Err(error) => {
            tracing::warn!(server = %ctx.server.name, stream_seq = delivery.stream_seq, error = %error, "malformed job");
            let outcome = Outcome::Malformed(error);
            let decision = decide(&outcome, 0, &ctx.retry, 0.5);
            carry_out::carry_out(ctx, &message, &mut delivery, None, outcome, decision).await;
            return;
        }
    };
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        server = %job.server,
        tool = job.request.tool_name().unwrap_or(""),
        delivery = delivery.delivered,
        stream_seq = delivery.stream_seq,
        trace_id = job
            .traceparent
            .as_deref()
            .and_then(mcpq_schemas::trace::trace_id_of)
            .unwrap_or_default(),
    );
    mcpq_schemas::trace::adopt(&span, job.traceparent.as_deref());
    span.in_scope(|| {
        tracing::debug!(
            queue_wait_ms = now_ms().saturating_sub(job.submitted_at_ms),
            "attempt starts"
        );
    });
    let interrupt = Interrupt::default();
    // A job that has a record from its submission (an idempotency key, or nobody waiting on an
    // inbox) is claimed before it runs.
    delivery.claimed = job.idempotency_key.is_some() || delivery.reply_to().is_none();
    let held = Held {
        claimed: delivery.claimed,
        job_id: job.id,
        stream_seq: delivery.stream_seq,
    };
    // Registered before looking for a cancellation request, so one that arrives meanwhile
    // still reaches it; and until the decision is carried out, so that another delivery of the
    // job in this process waits for this one.
    let running = ctx.cancels.start(job.id, interrupt.clone());
    let attempt = async {
        let outcome = run(ctx, &mut delivery, &job, &interrupt).await;
        let policy = if job.no_retry {
            ctx.retry.once()
        } else {
            ctx.retry
        };
        let decision = decide(&outcome, delivery.spent(), &policy, fastrand::f64());
        carry_out::carry_out(ctx, &message, &mut delivery, Some(&job), outcome, decision).await;
        drop(running);
    };
    tokio::select! {
        () = attempt.instrument(span) => {}
        () = keepalive(ctx, &message, &held, &interrupt) => {}
    }
}

/// Whether the job's id names a record of another principal's (or of somebody's, when the job
/// is nobody's). A record that cannot be read counts as not foreign: the job's own writes are
/// create-only or over its own revision, so they never replace another's record either way.
async fn foreign(ctx: &Context, job: &Job) -> bool {
    match ctx.outbox.entry(&job.id).await {
        Ok(Some((record, _))) => record.principal != job.principal,
        Ok(None) => false,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the record of an unsealed job");
            false
        }
    }
}

/// Whether the message carries a dispatcher's seal over its body and its reply subject.
fn sealed(ctx: &Context, message: &Message) -> bool {
    let Some(headers) = message.headers.as_ref() else {
        return false;
    };
    let reply_to = headers.get(HDR_REPLY_TO).map_or("", |v| v.as_str());
    headers
        .get(mcpq_schemas::names::HDR_SEAL)
        .is_some_and(|seal| {
            ctx.signing.verify(
                mcpq_schemas::seal::Purpose::Job,
                &[&message.payload, reply_to.as_bytes()],
                seal.as_str(),
            )
        })
}

/// What the keepalive needs to know of the delivery it keeps.
struct Held {
    claimed: bool,
    job_id: uuid::Uuid,
    stream_seq: u64,
}

/// Sends progress acks every AckWait/3 while the delivery is held, so a call longer than
/// AckWait is not delivered to a second worker. A tick later than AckWait (the process was
/// frozen) means JetStream has delivered the job again: a claimed job whose record still names
/// this attempt goes on (the other delivery waits for it); any other call is stopped, the
/// upstream told. Never returns.
async fn keepalive(ctx: &Context, message: &Message, held: &Held, interrupt: &Interrupt) {
    let ack_wait = ctx.server.ack_wait;
    let mut tick = tokio::time::interval(ack_wait / 3);
    tick.tick().await;
    let mut last = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if last.elapsed() > ack_wait {
            let late = last.elapsed();
            if held.claimed && still_mine(ctx, held).await {
                tracing::warn!(
                    ?late,
                    "this worker was stopped past AckWait; its claim on the job holds, so it goes on"
                );
            } else {
                tracing::warn!(
                    ?late,
                    "this worker was stopped past AckWait; the job went to another attempt, so this one stops"
                );
                interrupt.fire(Why::Lost);
                return std::future::pending().await;
            }
        }
        let _ = message.ack_with(AckKind::Progress).await;
        last = tokio::time::Instant::now();
    }
}

/// Whether the job's record still says this attempt runs it.
async fn still_mine(ctx: &Context, held: &Held) -> bool {
    match ctx.outbox.entry(&held.job_id).await {
        Ok(Some((record, _))) => {
            record.status == JobStatus::Running
                && record.stream_seq == Some(held.stream_seq)
                && record.worker_id.as_deref() == Some(ctx.report.worker_id.as_str())
        }
        _ => false,
    }
}

/// How many times a delivery looks at the record again when another write beats its claim.
const CLAIM_TRIES: u32 = 5;

/// The attempt itself, up to its outcome.
async fn run(ctx: &Context, delivery: &mut Delivery, job: &Job, interrupt: &Interrupt) -> Outcome {
    // A claimed job, and any job delivered again, looks at its record first.
    if (delivery.claimed || delivery.delivered > 1)
        && let Some(ended) = settle(ctx, delivery, job, interrupt).await
    {
        return ended;
    }
    // A job no dispatcher sealed (a pipeline's) may not run under an id that names somebody
    // else's job: its call would answer that job's cancels and fill its audit trail.
    if !delivery.claimed && !delivery.vouched && foreign(ctx, job).await {
        return Outcome::Foreign;
    }
    // A job that may not run twice, found held by an attempt that stopped midway: that
    // attempt may have reached the upstream.
    if job.no_retry && delivery.takeovers > 0 {
        return Outcome::NotTwice;
    }
    // Not due yet (published to a lane before its time): back until it is.
    let now = now_ms();
    if let Some(at) = job.run_at_ms.filter(|_| job.is_early(now)) {
        return Outcome::Early(Duration::from_millis(at - now));
    }
    // Workers keep stopping while they hold it: not tried again.
    let stranded = delivery.strandings(ctx.handed_back.of(delivery.stream_seq));
    if stranded >= decide::MAX_STRANDED {
        tracing::warn!(
            stranded,
            "delivered again and again without an outcome; dead-lettering"
        );
        return Outcome::Stranded {
            deliveries: delivery.delivered,
        };
    }
    if delivery.delivered == 1 {
        ctx.report.first_attempt(job.lane, job.submitted_at_ms);
    }
    if let Some(why) = interrupt.why() {
        return stopped(why, "before it started");
    }
    // Every attempt passes the gate: an open circuit holds the job, its attempt not spent.
    let ticket = match ctx.gate.admit() {
        Ok(ticket) => ticket,
        Err(wait) => return Outcome::Held(wait),
    };
    // Holding the job from before the claim is written: once the record names this worker,
    // another worker asking whether it still runs the job must hear yes — never a no in the
    // moment between the write and the call, which would let it take the job over and run it
    // a second time.
    interrupt.activate();
    if delivery.claimed {
        let mut tries = 0;
        loop {
            let mut claim = record(ctx, job, delivery, JobStatus::Running, None);
            claim.attempts = delivery.earlier + 1;
            match claim::claim(ctx, &claim, delivery.revision()).await {
                Ok(Some(revision)) => {
                    delivery.set_revision(Some(revision));
                    break;
                }
                // Another write came first: what is it now?
                Ok(None) if tries < CLAIM_TRIES => {
                    tries += 1;
                    interrupt.deactivate();
                    if let Some(ended) = settle(ctx, delivery, job, interrupt).await {
                        return ended;
                    }
                    interrupt.activate();
                }
                Ok(None) => {
                    interrupt.deactivate();
                    return Outcome::Held(Duration::from_secs(1));
                }
                Err(e) => {
                    interrupt.deactivate();
                    tracing::warn!(error = %e, "cannot claim the job; handing it back");
                    return Outcome::Held(unreachable_record(delivery));
                }
            }
        }
    }
    delivery.started = true;
    // Over the rate limit the job waits here, held (progress acks continue), then is checked
    // against its deadline like any other.
    let limited = tokio::select! {
        waited = ctx.gate.limit(job.request.tool_name()) => waited,
        () = interrupt.fired() => None,
    };
    if let Some(waited) = limited {
        ctx.report.rate_limited(waited);
    }
    if let Some(why) = interrupt.why() {
        return stopped(why, "before it started");
    }
    let now = now_ms();
    let mut timeout = ctx.server.timeout;
    if let Some(deadline) = job.deadline_ms {
        if deadline <= now {
            return Outcome::Expired {
                late_ms: now - deadline,
            };
        }
        timeout = timeout.min(Duration::from_millis(deadline - now));
    }
    let outcome = call_upstream(ctx, delivery, job, timeout, interrupt).await;
    // An interrupted call says nothing about the upstream.
    let count = match outcome.verdict() {
        Some(verdict) => ctx.gate.record(verdict, ticket),
        None => crate::gate::Count::Counted,
    };
    match outcome {
        CallOutcome::Interrupted => {
            stopped(interrupt.why().unwrap_or(&Why::Draining), "while it ran")
        }
        CallOutcome::Answered(result) => {
            let size = crate::json_len(&result) as u64;
            if size > ctx.server.max_result_bytes {
                Outcome::TooLarge { size }
            } else {
                Outcome::Answered(result)
            }
        }
        CallOutcome::Failed(failure) => {
            ctx.report.attempt_failed(failure.error.kind);
            if let Some(pause) = failure.retry_after {
                ctx.gate.hold(pause);
            }
            Outcome::Failed { failure, count }
        }
    }
}

/// Looks at the job's record (waiting while another attempt runs the job) and takes over what
/// it knows; the outcome, when the record decides it.
async fn settle(
    ctx: &Context,
    delivery: &mut Delivery,
    job: &Job,
    interrupt: &Interrupt,
) -> Option<Outcome> {
    match claim::look(ctx, job, delivery, interrupt).await {
        Ok(Found::Done(record)) => {
            tracing::info!(status = ?record.status, "already done; answering from the record");
            Some(Outcome::AlreadyDone(Box::new(record)))
        }
        Ok(Found::Duplicate) => {
            tracing::info!("another message carries this job; this one is a duplicate");
            Some(Outcome::Duplicate)
        }
        Ok(Found::Foreign) => {
            tracing::warn!("the job's id is another caller's; refused");
            Some(Outcome::Foreign)
        }
        Ok(Found::Stopped) => Some(stopped(
            interrupt.why().unwrap_or(&Why::Draining),
            "before it started",
        )),
        Ok(Found::Free { record, fresh }) => {
            match record {
                // A replay starts over: only the revision is kept, to write over.
                Some((_, revision)) if fresh => delivery.set_revision(Some(revision)),
                Some((record, revision)) => delivery.learn(&record, revision),
                None => delivery.set_revision(None),
            }
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the job's record; handing it back");
            Some(Outcome::Held(unreachable_record(delivery)))
        }
    }
}

/// How long a job whose record cannot be read or written waits before it comes back: 1 s,
/// doubling with each delivery up to 16 s (the results bucket is electing a leader, or NATS
/// is restarting).
fn unreachable_record(delivery: &Delivery) -> Duration {
    Duration::from_secs(1 << delivery.delivered.saturating_sub(1).min(4))
}

/// The outcome of a delivery stopped by its interrupt.
fn stopped(why: &Why, when: &'static str) -> Outcome {
    match why {
        Why::Cancelled(reason) => Outcome::Cancelled {
            when,
            reason: reason.clone(),
        },
        Why::Lost => Outcome::Lost,
        Why::Draining => Outcome::Interrupted,
    }
}

/// The upstream call as a span of its own (the upstream hears it as its parent), with the
/// upstream's progress and log messages forwarded in order while it runs.
async fn call_upstream(
    ctx: &Context,
    delivery: &mut Delivery,
    job: &Job,
    timeout: Duration,
    interrupt: &Interrupt,
) -> CallOutcome {
    let (events, mut updates) = mpsc::unbounded_channel();
    let asker = Asker {
        nats: ctx.outbox.client.clone(),
        job_id: job.id,
        reply_to: delivery.reply_to.clone(),
        capabilities: job.client_capabilities.clone(),
        deadline: tokio::time::Instant::now() + timeout,
        interrupt: interrupt.clone(),
        record: events.clone(),
        became_task: Default::default(),
    };
    let upstream_span = mcpq_schemas::trace::exported(|| tracing::info_span!("upstream"));
    let traceparent = mcpq_schemas::trace::send_on(&upstream_span, job.traceparent.as_deref());
    let called = async {
        let _in_flight = ctx.report.in_flight();
        let started = std::time::Instant::now();
        let options = CallOptions {
            timeout,
            interrupt: interrupt.clone(),
            events: Some(events),
            asker: Some(asker),
            traceparent: Some(traceparent),
        };
        let outcome = call::call(&ctx.upstream, job, options).await;
        let answered = matches!(outcome, CallOutcome::Answered(_));
        let tool = observe::tool_label(&ctx.upstream, job, answered);
        ctx.report.upstream_call(&tool, started.elapsed());
        outcome
    }
    .instrument(upstream_span);
    let delivery_ref = &*delivery;
    let forwarded = async {
        // What the record shows while the call runs: its latest progress, the questions
        // waiting in it, whether it is a task; every write carries all three.
        let mut running = carry_out::Running::default();
        while let Some(event) = updates.recv().await {
            match event {
                CallEvent::Progress(progress) => {
                    running.progress = Some(progress.clone());
                    carry_out::progress(ctx, delivery_ref, job, progress, &running).await;
                }
                CallEvent::Log(message) => carry_out::log(ctx, delivery_ref, job, message).await,
                CallEvent::Input(input, written) => {
                    running.input = input;
                    carry_out::running(ctx, delivery_ref, job, &running).await;
                    let _ = written.send(());
                }
                CallEvent::Task(written) => {
                    running.task = true;
                    carry_out::running(ctx, delivery_ref, job, &running).await;
                    let _ = written.send(());
                }
            }
        }
        (running.progress, running.task)
    };
    let (outcome, (last, became_task)) = tokio::join!(called, forwarded);
    if last.is_some() {
        delivery.progress = last;
    }
    delivery.task |= became_task;
    outcome
}

/// The job's record as this delivery sees it, with `status` (and the result or error).
fn record(
    ctx: &Context,
    job: &Job,
    delivery: &Delivery,
    status: JobStatus,
    error: Option<JobError>,
) -> JobRecord {
    JobRecord {
        attempts: delivery.earlier + u32::from(delivery.started),
        updated_at_ms: now_ms(),
        error,
        worker_id: Some(ctx.report.worker_id.clone()),
        failed_attempts: delivery.history.clone(),
        progress: delivery.progress.clone(),
        stream_seq: Some(delivery.stream_seq),
        holds: delivery.holds,
        task: delivery.task,
        takeovers: delivery.takeovers,
        status,
        ..JobRecord::queued(job)
    }
}

/// A job error for a failure the attempt met: what happened, which attempt of how many.
fn attempt_error(mut error: JobError, attempt: u32, of: u32, held: bool) -> JobError {
    let note = if held {
        " (not counted: the circuit is open; the job waits for it)".to_string()
    } else {
        format!(" (attempt {attempt} of {of})")
    };
    if error.kind != ErrorKind::Upstream {
        error.message.push_str(&note);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: JobStatus, takeovers: u32) -> JobRecord {
        let job = Job::new("web", mcpq_schemas::McpRequest::call_tool("echo", None));
        JobRecord {
            status,
            takeovers,
            ..JobRecord::queued(&job)
        }
    }

    /// A job with a record counts only the attempts found holding it after they stopped:
    /// deliveries lost with a connection, or handed back while its record could not be
    /// written, are never taken for workers dying with it.
    #[test]
    fn a_job_with_a_record_counts_takeovers_not_deliveries() {
        let mut lost = Delivery::new(None, false, 8, 7);
        lost.learn(&record(JobStatus::Queued, 0), 1);
        assert_eq!(lost.strandings(0), 0, "seven deliveries lost, none held");
        let mut taken_over = Delivery::new(None, false, 3, 7);
        taken_over.learn(&record(JobStatus::Running, 5), 1);
        assert_eq!(
            taken_over.strandings(0),
            6,
            "found held by one that stopped"
        );
        // Without a record, deliveries nothing explains are the guess, less this process's
        // own hand-backs.
        let unrecorded = Delivery::new(None, false, 8, 7);
        assert_eq!(unrecorded.strandings(2), 5);
    }
}
