//! One delivery of one job, start to end: decode, skip what is already done or expired, call
//! the upstream, decide, and carry the decision out. Every message ends in exactly one explicit
//! ack, NAK-with-delay, or dead-letter-then-TERM.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use mcpq_schemas::{
    Attempt, DeadLetter, ErrorKind, Job, JobError, JobRecord, JobStatus, LogEvent, LogMessage,
    Outcome, Progress, ProgressEvent, Reply,
    names::{ENVELOPE_VERSION, HDR_REPLAY_OF, HDR_REPLY_TO},
    now_ms,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    ask::{Asker, ReplyTo},
    call::{CallOutcome, call},
    decide::{Decision, Verdict, decide},
    decode::decode,
    outbox::WriteError,
    pool::Pool,
    upstream::{CallEvent, lock},
};

/// The part of a message the decision needs, read once, and the job's failed attempts so far.
struct Delivery {
    /// Where the caller waits, if anyone does; an answer to an upstream's question may move it.
    reply_to: ReplyTo,
    /// Replayed from a dead letter: run it again even though its record says it ended.
    replay: bool,
    attempt: u32,
    stream_seq: u64,
    history: Vec<Attempt>,
    /// The last progress the upstream reported, kept on the job's record.
    progress: Option<Progress>,
}

impl Delivery {
    /// The subject the caller waits on now.
    fn reply_to(&self) -> Option<String> {
        lock(&self.reply_to).clone()
    }

    /// Adds this attempt's failure to the history.
    fn failed(&mut self, pool: &Pool, error: &JobError, retry_in: Option<Duration>) {
        self.history.push(Attempt {
            attempt: self.attempt,
            at_ms: now_ms(),
            worker_id: pool.worker_id.clone(),
            error: error.clone(),
            retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
        });
    }
}

pub(crate) async fn handle(pool: &Pool, message: Message) {
    let (attempt, stream_seq, stored_at_ms) = message
        .info()
        .map(|i| {
            (
                u32::try_from(i.delivered).unwrap_or(u32::MAX),
                i.stream_sequence,
                u64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
            )
        })
        .unwrap_or((1, 0, now_ms()));
    let delivery = Delivery {
        reply_to: ReplyTo::new(std::sync::Mutex::new(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(HDR_REPLY_TO))
                .map(|v| v.to_string()),
        )),
        replay: message
            .headers
            .as_ref()
            .is_some_and(|h| h.get(HDR_REPLAY_OF).is_some()),
        attempt,
        stream_seq,
        history: Vec::new(),
        progress: None,
    };
    let job = match decode(&pool.server.name, &message.payload, stored_at_ms) {
        // A job published without a trace gets one named after it, the same on every attempt.
        Ok(mut job) => {
            if job.traceparent.is_none() {
                job.traceparent =
                    Some(mcpq_schemas::trace::TraceParent::for_job(&job.id).to_string());
            }
            job
        }
        Err(error) => {
            tracing::warn!(server = %pool.server.name, stream_seq, error = %error, "malformed job");
            let mut delivery = delivery;
            delivery.failed(pool, &error, None);
            dead_letter(pool, &message, &delivery, None, error).await;
            crate::observe::malformed(pool);
            return;
        }
    };
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        server = %job.server,
        tool = job.request.tool_name().unwrap_or(""),
        attempt,
        stream_seq,
        trace_id = job
            .traceparent
            .as_deref()
            .and_then(mcpq_schemas::trace::trace_id_of)
            .unwrap_or_default(),
    );
    mcpq_schemas::trace::adopt(&span, job.traceparent.as_deref());
    // The wait in the queue, submission to this attempt (a span cannot start in the past).
    span.in_scope(|| {
        tracing::debug!(
            queue_wait_ms = now_ms().saturating_sub(job.submitted_at_ms),
            "attempt starts"
        );
    });
    // While the job is held, tell JetStream it is still being worked on, so a call longer than
    // AckWait is not delivered to a second worker.
    let keepalive = async {
        let mut tick = tokio::time::interval(pool.ack_wait / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            let _ = message.ack_with(AckKind::Progress).await;
        }
    };
    tokio::select! {
        () = run(pool, &message, delivery, job).instrument(span) => {}
        () = keepalive => {}
    }
}

async fn run(pool: &Pool, message: &Message, mut delivery: Delivery, job: Job) {
    // A redelivered job may have completed already (the worker died between the upstream's
    // answer and the ack): answer from the record instead of calling the upstream again.
    // Otherwise its record holds the failed attempts so far. A job with an idempotency key may
    // be a resubmission of one that already ran (after JetStream's duplicate window).
    if (delivery.attempt > 1 || job.idempotency_key.is_some())
        && let Some(record) = pool.outbox.existing(&job.id.to_string()).await
        && !(delivery.replay && delivery.attempt == 1)
    {
        if let Some(reply) = record.to_reply() {
            tracing::info!(status = ?record.status, "already done; answering from the record");
            let _ = pool
                .outbox
                .reply(delivery.reply_to().as_deref(), &reply)
                .await;
            ack(message, AckKind::Ack).await;
            return;
        }
        delivery.history = record.failed_attempts;
    }
    let delivery = &mut delivery;
    if delivery.attempt == 1 {
        crate::observe::first_attempt(pool, job.lane, job.submitted_at_ms);
    }
    // JetStream will not deliver this message again: were it to end without a decision now, it
    // would stay in the queue for good. It gets here only when earlier deliveries ended
    // without one (workers crashed or stalled with it), so it is not tried again.
    if delivery.attempt >= crate::consume::server_max_deliver(&pool.retry) {
        let error = JobError::new(
            ErrorKind::Internal,
            format!(
                "delivered {} times without an outcome (workers stopped while holding it: crashes, or calls that outlived ackWait); not tried again",
                delivery.attempt
            ),
        );
        tracing::warn!(error = %error, "last delivery; dead-lettering");
        delivery.failed(pool, &error, None);
        dead_letter(pool, message, delivery, Some((job, JobStatus::Dead)), error).await;
        return;
    }
    // Registered before looking for a request, so one that arrives meanwhile still reaches it.
    let running = pool.cancels.start(job.id);
    if running.token.is_cancelled() {
        cancelled(pool, message, delivery, &job, "before it started").await;
        return;
    }
    // Over the rate limit the job waits here, held (progress acks continue), then is checked
    // against its deadline like any other.
    let tool_limiter = job
        .request
        .tool_name()
        .and_then(|t| pool.tool_limiters.get(t));
    if pool.limiter.is_some() || tool_limiter.is_some() {
        let started = std::time::Instant::now();
        if let Some(limiter) = &pool.limiter {
            limiter.ready().await;
        }
        if let Some(limiter) = tool_limiter {
            limiter.ready().await;
        }
        crate::observe::rate_limited(pool, started.elapsed());
    }
    let now = now_ms();
    let mut timeout = pool.server.timeout;
    if let Some(deadline) = job.deadline_ms {
        if deadline <= now {
            let error = JobError::new(
                ErrorKind::Expired,
                format!(
                    "deadline passed {} ms before the job could start",
                    now - deadline
                ),
            );
            finish(
                pool,
                message,
                delivery,
                &job,
                JobStatus::Expired,
                Outcome::Error { error },
                AckKind::Term,
            )
            .await;
            return;
        }
        timeout = timeout.min(Duration::from_millis(deadline - now));
    }
    let (events, mut updates) = mpsc::unbounded_channel();
    let asker = Asker {
        nats: pool.outbox.client.clone(),
        job_id: job.id,
        reply_to: delivery.reply_to.clone(),
        capabilities: job.client_capabilities.clone(),
        deadline: tokio::time::Instant::now() + timeout,
        next: Default::default(),
    };
    // The upstream call is a span of its own; the upstream hears it as its parent.
    let upstream_span = tracing::info_span!("upstream");
    let mut job = job;
    job.traceparent = Some(mcpq_schemas::trace::send_on(
        &upstream_span,
        job.traceparent.as_deref(),
    ));
    let job = job;
    let called = async {
        let _in_flight = crate::observe::InFlight::start(pool);
        let started = std::time::Instant::now();
        let outcome = call(
            &pool.upstream,
            &job,
            timeout,
            &running.token,
            Some(events),
            Some(asker),
        )
        .await;
        let answered = matches!(outcome, CallOutcome::Answered(_));
        let tool = crate::observe::tool_label(pool, &job, answered);
        crate::observe::upstream_call(pool, &tool, started.elapsed());
        outcome
    }
    .instrument(upstream_span);
    // Progress and log events go out in order while the call runs; the last one is out before
    // the reply.
    let forwarded = async {
        // Async callers read the record: show them the job runs, while the call goes out.
        // (Callers with an inbox hear the reply; their calls skip this write.)
        if delivery.reply_to().is_none() {
            let running = record(pool, &job, delivery, JobStatus::Running, None, None);
            let _ = pool.outbox.record(&running).await;
        }
        let mut last = None;
        while let Some(event) = updates.recv().await {
            match event {
                CallEvent::Progress(progress) => {
                    forward_progress(pool, delivery, &job, progress.clone()).await;
                    last = Some(progress);
                }
                CallEvent::Log(message) => forward_log(pool, delivery, &job, message).await,
            }
        }
        last
    };
    let (outcome, last) = tokio::join!(called, forwarded);
    if last.is_some() {
        delivery.progress = last;
    }
    if let CallOutcome::Cancelled = outcome {
        cancelled(pool, message, delivery, &job, "while it ran").await;
        return;
    }
    pool.breaker_record(match &outcome {
        CallOutcome::Answered(_) | CallOutcome::Cancelled => Verdict::Answered,
        CallOutcome::Failed { verdict, .. } => *verdict,
    });
    match outcome {
        CallOutcome::Cancelled => {}
        CallOutcome::Answered(result) => {
            let size = encoded_len(&result);
            if size > pool.server.max_result_bytes {
                // Kept from the caller, and never asked for again: the same call would give
                // the same result. The dead letter shows the operator what to raise.
                let error = JobError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "the upstream's result is {size} bytes, more than server {:?} keeps (maxResultBytes: {}): raise maxResultBytes, or ask the upstream for less",
                        pool.server.name, pool.server.max_result_bytes
                    ),
                );
                tracing::warn!(size, "result larger than maxResultBytes; the job fails");
                delivery.failed(pool, &error, None);
                let failed = Some((job, JobStatus::Failed));
                dead_letter(pool, message, delivery, failed, error).await;
                return;
            }
            let outcome = Outcome::Ok { result };
            finish(
                pool,
                message,
                delivery,
                &job,
                JobStatus::Completed,
                outcome,
                AckKind::Ack,
            )
            .await;
        }
        CallOutcome::Failed {
            error,
            verdict,
            retry_after,
        } => {
            crate::observe::attempt_failed(pool, error.kind);
            if let Some(pause) = retry_after {
                pool.hold(pause);
            }
            match decide(verdict, delivery.attempt, &pool.retry, fastrand::f64()) {
                Decision::Retry(delay) => {
                    // An upstream that said when to come back is not called before then.
                    let delay = delay.max(retry_after.unwrap_or_default());
                    tracing::info!(error = %error, ?delay, "attempt failed; retrying");
                    crate::observe::retried(pool);
                    delivery.failed(pool, &error, Some(delay));
                    let record =
                        record(pool, &job, delivery, JobStatus::Retrying, None, Some(error));

                    let _ = pool.outbox.record(&record).await;
                    ack(message, AckKind::Nak(Some(delay))).await;
                }
                Decision::DeadLetter | Decision::Ack => {
                    tracing::warn!(error = %error, ?verdict, "job failed for good");
                    let status = match verdict {
                        Verdict::Retryable => JobStatus::Dead,
                        Verdict::Permanent | Verdict::Answered => JobStatus::Failed,
                    };
                    delivery.failed(pool, &error, None);
                    dead_letter(pool, message, delivery, Some((job, status)), error).await;
                }
            }
        }
    }
}

/// Sends a progress event to the caller's inbox; async jobs get it in their record instead.
async fn forward_progress(pool: &Pool, delivery: &Delivery, job: &Job, progress: Progress) {
    match delivery.reply_to().as_deref() {
        Some(inbox) => {
            let event = ProgressEvent {
                v: ENVELOPE_VERSION,
                job_id: job.id,
                progress,
            };
            if let Err(e) = pool.outbox.progress(inbox, &event).await {
                tracing::debug!(error = %e, "cannot publish a progress event");
            }
        }
        None => {
            let mut running = record(pool, job, delivery, JobStatus::Running, None, None);
            running.progress = Some(progress);
            let _ = pool.outbox.record(&running).await;
        }
    }
}

/// Sends a log event to the caller's inbox (a job without one has nobody to tell).
async fn forward_log(pool: &Pool, delivery: &Delivery, job: &Job, message: LogMessage) {
    if let Some(inbox) = delivery.reply_to().as_deref() {
        let event = LogEvent {
            v: ENVELOPE_VERSION,
            job_id: job.id,
            message,
        };
        if let Err(e) = pool.outbox.log(inbox, &event).await {
            tracing::debug!(error = %e, "cannot publish a log event");
        }
    }
}

/// Ends a cancelled job: recorded `cancelled`, the caller told, the message acked (a
/// cancellation is not a failure to dead-letter).
async fn cancelled(pool: &Pool, message: &Message, delivery: &Delivery, job: &Job, when: &str) {
    let reason = pool
        .cancels
        .request(&job.id)
        .and_then(|r| r.reason)
        .map_or(String::new(), |r| format!(" ({r})"));
    tracing::info!(when, "job cancelled");
    let error = JobError::new(ErrorKind::Cancelled, format!("cancelled {when}{reason}"));
    finish(
        pool,
        message,
        delivery,
        job,
        JobStatus::Cancelled,
        Outcome::Error { error },
        AckKind::Ack,
    )
    .await;
}

/// Records the outcome and replies, then acks (or terms) the message. A result too large
/// for a message is stored in the Object Store first, and the record and reply refer to it.
/// The writes are retried as writes (the result is kept meanwhile); only if they keep failing
/// is the message left alone, to be redelivered — at-least-once, never lost.
async fn finish(
    pool: &Pool,
    message: &Message,
    delivery: &Delivery,
    job: &Job,
    status: JobStatus,
    outcome: Outcome,
    kind: AckKind,
) {
    let error = match &outcome {
        Outcome::Ok { .. } => None,
        Outcome::Error { error } => Some(error.clone()),
    };
    let mut record = record(pool, job, delivery, status, None, error);
    let mut outcome = outcome;
    if let Outcome::Ok { result } = &mut outcome {
        if encoded_len(result) > pool.outbox.inline_limit() as u64 {
            let bytes = serde_json::to_vec(result).unwrap_or_default();
            let stored = persist("store a large result", || pool.outbox.blob(&job.id, &bytes));
            let Ok(blob) = stored.await else { return };
            tracing::info!(size = blob.size, "result stored in the object store");
            *result = serde_json::Value::Null;
            record.result_ref = Some(blob);
        } else {
            record.result = Some(result.clone());
        }
    }
    let reply = Reply {
        v: ENVELOPE_VERSION,
        job_id: job.id,
        outcome,
        result_ref: record.result_ref.clone(),
    };
    // The reply does not wait for the record (that would add a JetStream round trip to every
    // call); the ack does.
    let reply_to = delivery.reply_to();
    let (recorded, replied) = async {
        tokio::join!(
            persist("record the job's outcome", || pool.outbox.record(&record)),
            pool.outbox.reply(reply_to.as_deref(), &reply)
        )
    }
    .instrument(tracing::info_span!("record", status = ?status))
    .await;
    if let Err(e) = replied {
        tracing::warn!(error = %e, "cannot publish the reply; the result stays in the record");
    }
    if recorded.is_err() {
        return;
    }
    let kind_of_error = record.error.as_ref().map(|e| e.kind);
    tokio::join!(
        ack(message, kind),
        crate::observe::ended(pool, job, status, kind_of_error, delivery.attempt)
    );
}

/// How long a write of a job's outcome is tried again before the message is given up to
/// redelivery (the message is held meanwhile: progress acks go on).
const WRITE_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `write` until it succeeds, backing off from 50 ms to 5 s, for at most [`WRITE_PATIENCE`].
async fn persist<T, F, Fut>(what: &'static str, mut write: F) -> Result<T, WriteError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, WriteError>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match write().await {
            Ok(done) => return Ok(done),
            Err(e) if started.elapsed() + pause > WRITE_PATIENCE => {
                tracing::error!(error = %e, "cannot {what}; giving up: the job will be redelivered");
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "cannot {what}; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The length of `value` as JSON, without building the text.
fn encoded_len(value: &serde_json::Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Copies the message to the dead-letter stream, records and replies, and only then TERMs it.
async fn dead_letter(
    pool: &Pool,
    message: &Message,
    delivery: &Delivery,
    job: Option<(Job, JobStatus)>,
    error: JobError,
) {
    let (job, status) = match job {
        Some((job, status)) => (Some(job), status),
        None => (None, JobStatus::Failed),
    };
    let headers = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .filter(|(k, _)| !mcpq_schemas::redact::is_secret_header(k.as_ref()))
        .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
        .collect();
    let raw = job.is_none().then(|| {
        let cut = &message.payload[..message.payload.len().min(64 * 1024)];
        String::from_utf8_lossy(cut).into_owned()
    });
    let letter = DeadLetter {
        v: ENVELOPE_VERSION,
        server: pool.server.name.clone(),
        job_id: job.as_ref().map(|j| j.id),
        reason: error.clone(),
        traceparent: job.as_ref().and_then(|j| j.traceparent.clone()),
        job: job.clone(),
        raw,
        headers,
        attempts: delivery.history.clone(),
        stream_seq: delivery.stream_seq,
        worker_id: pool.worker_id.clone(),
        dead_at_ms: now_ms(),
    };
    if persist("dead-letter the job", || pool.outbox.dead_letter(&letter))
        .await
        .is_err()
    {
        return;
    }
    crate::observe::dead_lettered(pool);
    match job {
        Some(job) => {
            finish(
                pool,
                message,
                delivery,
                &job,
                status,
                Outcome::Error { error },
                AckKind::Term,
            )
            .await;
        }
        None => {
            // No job id to record under; the caller still hears why, if it left an inbox.
            if let Some(inbox) = delivery.reply_to().as_deref() {
                // The id the body gives, when it can be read that far; else the header's.
                let id = serde_json::from_slice::<serde_json::Value>(&message.payload)
                    .ok()
                    .and_then(|body| body.get("id")?.as_str()?.parse().ok())
                    .or_else(|| {
                        message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(mcpq_schemas::names::HDR_JOB_ID))
                            .and_then(|v| v.as_str().parse().ok())
                    })
                    .unwrap_or_default();
                let reply = Reply {
                    v: ENVELOPE_VERSION,
                    job_id: id,
                    outcome: Outcome::Error { error },
                    result_ref: None,
                };
                let _ = pool.outbox.reply(Some(inbox), &reply).await;
            }
            ack(message, AckKind::Term).await;
        }
    }
}

fn record(
    pool: &Pool,
    job: &Job,
    delivery: &Delivery,
    status: JobStatus,
    result: Option<serde_json::Value>,
    error: Option<JobError>,
) -> JobRecord {
    JobRecord {
        v: ENVELOPE_VERSION,
        job_id: job.id,
        server: job.server.clone(),
        method: job.request.method.clone(),
        tool: job.request.tool_name().map(str::to_string),
        status,
        attempts: delivery.attempt,
        submitted_at_ms: job.submitted_at_ms,
        updated_at_ms: now_ms(),
        result,
        error,
        worker_id: Some(pool.worker_id.clone()),
        failed_attempts: delivery.history.clone(),
        progress: delivery.progress.clone(),
        principal: job.principal.clone(),
        result_ref: None,
    }
}

async fn ack(message: &Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "cannot ack; the job may be delivered again");
    }
}
