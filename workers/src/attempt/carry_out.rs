//! Carrying a [`Decision`] out: the record, the reply, the dead letter, and the one ack, NAK
//! or TERM that ends the delivery. Writes are retried as writes (the outcome is kept
//! meanwhile); only if they keep failing is the message left alone, to be delivered again —
//! at-least-once, never lost. A record write that finds another attempt's claim stops here:
//! the job is that attempt's.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use mcpq_schemas::{
    Attempt, DeadLetter, ErrorKind, Job, JobError, JobRecord, JobStatus, LogEvent, LogMessage,
    Outcome as Ended, Progress, ProgressEvent, Reply,
    names::{ENVELOPE_VERSION, HDR_JOB_ID},
    now_ms,
};
use tracing::Instrument;

use super::{Context, Decision, Delivery, attempt_error, outcome::Outcome, record};
use crate::report::{
    observe,
    outbox::{Expect, WriteError},
};

/// Executes `decision` for the delivery that ended with `outcome`.
pub(super) async fn carry_out(
    ctx: &Context,
    message: &Message,
    delivery: &mut Delivery,
    job: Option<&Job>,
    outcome: Outcome,
    decision: Decision,
) {
    let Some(job) = job else {
        // Only a malformed message has no job.
        if let Outcome::Malformed(error) = outcome {
            malformed(ctx, message, delivery, error).await;
        }
        return;
    };
    let max = ctx.retry.max_attempts;
    let attempt = delivery.spent() + 1;
    match (decision, outcome) {
        (Decision::Answer, Outcome::AlreadyDone(record)) => {
            if let Some(reply) = record.to_reply() {
                let _ = ctx
                    .outbox
                    .reply(delivery.reply_to().as_deref(), &reply)
                    .await;
            }
            // The message that ended the job, delivered again: its worker may have stopped
            // before its callback was stored (the store drops a second copy).
            if record.stream_seq == Some(delivery.stream_seq)
                && record.callback_url.is_some()
                && mcpq_schemas::done::announce(&ctx.outbox.js, &record, false)
                    .await
                    .is_err()
            {
                return;
            }
            ack(message, AckKind::Ack).await;
        }
        (Decision::Refuse, _) => {
            let error = JobError::new(
                ErrorKind::MalformedJob,
                format!(
                    "job id {} belongs to another caller's job: this one is refused (a pipeline must not reuse ids; an idempotent job's id is derived from its key)",
                    job.id
                ),
            );
            failed(ctx, delivery, error.clone(), None, false);
            if !dead_letter(ctx, message, delivery, Some(job), error.clone()).await {
                return;
            }
            let reply = Reply {
                v: ENVELOPE_VERSION,
                job_id: job.id,
                outcome: Ended::Error { error },
                result_ref: None,
            };
            let _ = ctx
                .outbox
                .reply(delivery.reply_to().as_deref(), &reply)
                .await;
            ack(message, AckKind::Term).await;
        }
        (Decision::Follow, _) => {
            ack(message, AckKind::Ack).await;
            follow(ctx, job, delivery.reply_to());
        }
        (Decision::Abandon, _) => {
            tracing::info!("this attempt no longer holds the job; leaving it to the one that does");
            if delivery.claimed && delivery.revision().is_some() {
                release(ctx, delivery, job).await;
            }
        }
        (Decision::HandBack, _) => {
            tracing::info!("handing the job back for another worker");
            if delivery.claimed && delivery.revision().is_some() {
                // The next worker must not wait for this one: the claim goes back, and the
                // delivery counts as a hold.
                delivery.holds += 1;
                release(ctx, delivery, job).await;
            }
            ack(message, AckKind::Nak(None)).await;
        }
        (Decision::Hold(delay), outcome) => {
            let early = matches!(outcome, Outcome::Early(_));
            match outcome {
                Outcome::Failed { failure, .. } => {
                    let error = attempt_error(failure.error, attempt, max, true);
                    tracing::info!(error = %error, ?delay, "attempt failed while the circuit opened; the job waits");
                    failed(ctx, delivery, error, Some(delay), true);
                }
                _ => {
                    tracing::debug!(?delay, "held at the gate; the job waits");
                    delivery.holds += 1;
                }
            }
            let status = if early {
                JobStatus::Scheduled
            } else if delivery.history.is_empty() {
                JobStatus::Queued
            } else {
                JobStatus::Retrying
            };
            // A hold that cannot be recorded (the results bucket has no leader for a moment)
            // is still handed back, and this process remembers it: its next delivery here is
            // not taken for one a stopped worker held.
            let recorded = write(
                ctx,
                delivery,
                &record(ctx, job, delivery, status, None),
                None,
            )
            .await;
            if !matches!(recorded, Ok(true)) {
                ctx.handed_back.note(delivery.stream_seq);
            }
            ack(message, AckKind::Nak(Some(delay))).await;
        }
        (Decision::Retry(delay), Outcome::Failed { failure, .. }) => {
            let error = attempt_error(failure.error, attempt, max, false);
            tracing::info!(error = %error, ?delay, "attempt failed; retrying");
            ctx.report.retried();
            failed(ctx, delivery, error.clone(), Some(delay), false);
            let retrying = record(ctx, job, delivery, JobStatus::Retrying, Some(error));
            // If another attempt holds the job now, or the write failed, the message is left.
            if let Ok(true) = persist_write(ctx, delivery, &retrying, None).await {
                ack(message, AckKind::Nak(Some(delay))).await;
            }
        }
        (Decision::DeadLetter(status), outcome) => {
            let error = match outcome {
                Outcome::Failed { failure, .. } => {
                    attempt_error(failure.error, attempt, max, false)
                }
                Outcome::TooLarge { size } => JobError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "the upstream's result is {size} bytes, more than server {:?} keeps (maxResultBytes: {}): raise maxResultBytes, or ask the upstream for less",
                        ctx.server.name, ctx.server.max_result_bytes
                    ),
                ),
                Outcome::NotTwice => JobError::new(
                    ErrorKind::Internal,
                    "not run again: the job may not run twice (idempotent: false), and an attempt that stopped midway may have reached the upstream".to_string(),
                ),
                Outcome::Stranded { deliveries } => JobError::new(
                    ErrorKind::Internal,
                    format!(
                        "delivered {deliveries} times without an outcome (workers stopped while holding it — crashes, calls that outlived ackWait — or their acks were lost); not tried again"
                    ),
                ),
                other => JobError::new(ErrorKind::Internal, format!("{other:?}")),
            };
            tracing::warn!(error = %error, "job failed for good");
            failed(ctx, delivery, error.clone(), None, false);
            if !dead_letter(ctx, message, delivery, Some(job), error.clone()).await {
                return;
            }
            finish(ctx, message, delivery, job, status, Ended::Error { error }).await;
        }
        (Decision::End(status), outcome) => {
            let ended = match outcome {
                Outcome::Answered(result) => Ended::Ok { result },
                Outcome::Cancelled { when, reason } => {
                    tracing::info!(when, "job cancelled");
                    Ended::Error {
                        error: JobError::new(
                            ErrorKind::Cancelled,
                            format!(
                                "cancelled {when}{}",
                                reason.map_or(String::new(), |r| format!(" ({r})"))
                            ),
                        ),
                    }
                }
                Outcome::Expired { late_ms } => Ended::Error {
                    error: JobError::new(
                        ErrorKind::Expired,
                        format!("deadline passed {late_ms} ms before the job could start"),
                    ),
                },
                other => Ended::Error {
                    error: JobError::new(ErrorKind::Internal, format!("{other:?}")),
                },
            };
            finish(ctx, message, delivery, job, status, ended).await;
        }
        (decision, outcome) => {
            // `decide` never pairs these; should it, the message comes back rather than be lost.
            tracing::error!(
                ?decision,
                ?outcome,
                "no way to carry this decision out; the job will be delivered again"
            );
        }
    }
}

/// Adds a failed attempt to the history.
fn failed(
    ctx: &Context,
    delivery: &mut Delivery,
    error: JobError,
    retry_in: Option<Duration>,
    held: bool,
) {
    delivery.history.push(Attempt {
        // A held failure carries the number of the attempt it did not spend.
        attempt: delivery.spent() + 1,
        at_ms: now_ms(),
        worker_id: ctx.report.worker_id.clone(),
        error,
        retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
        held,
    });
}

/// Gives this attempt's claim on the job back (status `queued` or `retrying`, no worker), so
/// that a delivery waiting for it goes on; a claim another attempt took already is left alone.
async fn release(ctx: &Context, delivery: &Delivery, job: &Job) {
    let status = if delivery.history.is_empty() {
        JobStatus::Queued
    } else {
        JobStatus::Retrying
    };
    let mut released = record(ctx, job, delivery, status, None);
    released.worker_id = None;
    let _ = persist_write(ctx, delivery, &released, None).await;
}

/// Writes the record as this delivery may — over the revision it last read or wrote, or where
/// there is none — kept `ttl`, or the bucket's `resultTtl`. A write that finds the record
/// changed looks at it: changed by the dispatcher (the call became a task) or by this attempt's
/// own write whose acknowledgement was lost, it is written again over it (keeping the task
/// mark); changed by another attempt, or ended, `Ok(false)`.
async fn write(
    ctx: &Context,
    delivery: &Delivery,
    record: &JobRecord,
    ttl: Option<Duration>,
) -> Result<bool, WriteError> {
    let mut record = std::borrow::Cow::Borrowed(record);
    let mut ttl = ttl;
    for _ in 0..3 {
        let expect = delivery.revision().map_or(Expect::Absent, Expect::Revision);
        if let Some(revision) = ctx.outbox.record(&record, expect, ttl).await? {
            delivery.set_revision(Some(revision));
            return Ok(true);
        }
        let Some((stored, revision)) = ctx.outbox.entry(&record.job_id).await? else {
            delivery.set_revision(None);
            continue;
        };
        let me = ctx.report.worker_id.as_str();
        let ours = stored
            .stream_seq
            .is_none_or(|seq| seq == delivery.stream_seq)
            && stored.worker_id.as_deref().is_none_or(|w| w == me);
        if stored.status.is_terminal() {
            let landed =
                ours && stored.worker_id.as_deref() == Some(me) && stored.status == record.status;
            if landed {
                delivery.set_revision(Some(revision));
            }
            return Ok(landed);
        }
        if !ours {
            return Ok(false);
        }
        if stored.task && !record.task {
            // A task's record is kept for resultTtl.
            record.to_mut().task = true;
            ttl = None;
        }
        delivery.set_revision(Some(revision));
    }
    Ok(false)
}

/// How long the record of a job that ended is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// No record: a synchronous call that completed at once, its caller answered.
    Not,
    /// The bucket's `resultTtl`.
    Results,
    /// `nats.callRecordTtl`.
    For(Duration),
}

/// Whether and how long the ending of `job` with `status` is recorded. A job submitted for
/// later, idempotent, or that became a task keeps it for `resultTtl`, as does any job that did
/// not complete; a synchronous call that completed keeps it `callRecordTtl` — or has none at
/// all when it completed at its first delivery within `RECORD_AFTER` of its submission.
fn keep(ctx: &Context, delivery: &Delivery, job: &Job, status: JobStatus) -> Keep {
    if delivery.claimed || status != JobStatus::Completed {
        return Keep::Results;
    }
    let quick = now_ms().saturating_sub(job.submitted_at_ms)
        < (ctx.server.tasks.after / 2).min(RECORD_AFTER).as_millis() as u64;
    if quick && delivery.delivered == 1 && delivery.history.is_empty() && delivery.holds == 0 {
        Keep::Not
    } else {
        Keep::For(ctx.call_record_ttl)
    }
}

/// A synchronous call that completes within this (or half its server's `taskAfter`, if less)
/// of its submission gets no record: nobody will look for it, and it cannot become a task.
const RECORD_AFTER: Duration = Duration::from_secs(1);

/// What a job's record shows while its call runs (see [`running`]).
#[derive(Default)]
pub(super) struct Running {
    pub progress: Option<Progress>,
    pub input: Option<mcpq_schemas::PendingInput>,
    pub task: bool,
}

/// Sends a progress event to the caller's inbox; jobs without one (or that became tasks) get
/// it in their record.
pub(super) async fn progress(
    ctx: &Context,
    delivery: &Delivery,
    job: &Job,
    progress: Progress,
    now: &Running,
) {
    let inbox = delivery.reply_to().filter(|_| !now.task);
    match inbox.as_deref() {
        Some(inbox) => {
            let event = ProgressEvent {
                v: ENVELOPE_VERSION,
                job_id: job.id,
                progress,
            };
            if let Err(e) = ctx.outbox.progress(inbox, &event).await {
                tracing::debug!(error = %e, "cannot publish a progress event");
            }
        }
        None => running(ctx, delivery, job, now).await,
    }
}

/// Writes the record of a running job as `now` says: its latest progress, the upstream's
/// questions waiting for a caller not asked on an inbox (a task's), whether it is a task.
pub(super) async fn running(ctx: &Context, delivery: &Delivery, job: &Job, now: &Running) {
    let mut record = record(ctx, job, delivery, JobStatus::Running, None);
    record.progress = now.progress.clone().or(record.progress);
    record.input = now.input.clone();
    record.task |= now.task;
    // Over this attempt's own revision: another attempt's claim is never overwritten (the
    // final write then finds it and stops).
    if let Err(e) = write(ctx, delivery, &record, None).await {
        tracing::warn!(error = %e, "cannot write the running job's record");
    }
}

/// Sends a log event to the caller's inbox (a job without one has nobody to tell).
pub(super) async fn log(ctx: &Context, delivery: &Delivery, job: &Job, message: LogMessage) {
    if let Some(inbox) = delivery.reply_to().as_deref() {
        let event = LogEvent {
            v: ENVELOPE_VERSION,
            job_id: job.id,
            message,
        };
        if let Err(e) = ctx.outbox.log(inbox, &event).await {
            tracing::debug!(error = %e, "cannot publish a log event");
        }
    }
}

/// A duplicate's caller, if it waits on an inbox, gets the job's reply once its record ends.
fn follow(ctx: &Context, job: &Job, reply_to: Option<String>) {
    let Some(inbox) = reply_to else { return };
    let outbox = ctx.outbox.clone();
    let job_id = job.id;
    // As long as the job itself may take: every attempt, and the backoffs between them.
    let within =
        ctx.server.timeout * ctx.retry.max_attempts + ctx.retry.max * ctx.retry.max_attempts;
    tokio::spawn(async move {
        if let Some(record) = outbox.ended(&job_id, within).await
            && let Some(reply) = record.to_reply()
        {
            let _ = outbox.reply(Some(&inbox), &reply).await;
        }
    });
}

/// Records the outcome and replies, then acks (TERMs an expired or dead-lettered job). A
/// result too large for a message is stored in the Object Store first, and the record and
/// reply refer to it.
async fn finish(
    ctx: &Context,
    message: &Message,
    delivery: &mut Delivery,
    job: &Job,
    status: JobStatus,
    outcome: Ended,
) {
    let error = match &outcome {
        Ended::Ok { .. } => None,
        Ended::Error { error } => Some(error.clone()),
    };
    let mut ended = record(ctx, job, delivery, status, error);
    let mut outcome = outcome;
    if let Ended::Ok { result } = &mut outcome {
        if crate::json_len(result) > ctx.outbox.inline_limit() {
            let bytes = serde_json::to_vec(result).unwrap_or_default();
            let stored = persist("store a large result", || ctx.outbox.blob(&job.id, &bytes));
            let Ok(blob) = stored.await else { return };
            tracing::info!(size = blob.size, "result stored in the object store");
            *result = serde_json::Value::Null;
            ended.result_ref = Some(blob);
        } else {
            ended.result = Some(result.clone());
        }
    }
    let reply = Reply {
        v: ENVELOPE_VERSION,
        job_id: job.id,
        outcome,
        result_ref: ended.result_ref.clone(),
    };
    // The reply does not wait for the record (that would add a JetStream round trip to every
    // call); the ack does. A claimed job's record is written first: if another attempt holds
    // the job now, this one neither replies nor acks.
    let reply_to = delivery.reply_to();
    let mut keep = keep(ctx, delivery, job, status);
    if keep != Keep::Not && !delivery.claimed {
        // A synchronous call that ran long may have become a task: its record says so.
        match ctx.outbox.entry(&job.id).await {
            // Another caller's record: never written over.
            Ok(Some((stored, _))) if stored.principal != job.principal => keep = Keep::Not,
            Ok(Some((stored, revision))) => {
                if stored.task {
                    keep = Keep::Results;
                    ended.task = true;
                }
                delivery.set_revision(Some(revision));
            }
            Ok(None) => delivery.set_revision(None),
            Err(_) => {}
        }
    }
    let ttl = match keep {
        Keep::For(ttl) => Some(ttl),
        Keep::Not | Keep::Results => None,
    };
    let recorded = async {
        if keep == Keep::Not {
            (
                Ok(true),
                ctx.outbox.reply(reply_to.as_deref(), &reply).await,
            )
        } else if delivery.claimed {
            let written = persist_write(ctx, delivery, &ended, ttl).await;
            let replied = match written {
                Ok(true) => ctx.outbox.reply(reply_to.as_deref(), &reply).await,
                _ => Ok(()),
            };
            (written, replied)
        } else {
            tokio::join!(
                persist_write(ctx, delivery, &ended, ttl),
                ctx.outbox.reply(reply_to.as_deref(), &reply)
            )
        }
    }
    .instrument(mcpq_schemas::trace::exported(
        || tracing::info_span!("record", status = ?status),
    ))
    .await;
    let (written, replied) = recorded;
    if let Err(e) = replied {
        tracing::warn!(error = %e, "cannot publish the reply; the result stays in the record");
    }
    match written {
        Ok(true) => {}
        Ok(false) => {
            // Another write came first: a job that ended meanwhile (cancelled by request, say)
            // is answered as it stands; one another attempt holds is left to it.
            if let Ok(Some((stored, _))) = ctx.outbox.entry(&job.id).await
                && stored.status.is_terminal()
            {
                // Whoever ended it stored its callback; a copy here is dropped by the store
                // if that one was, and saves it if that writer stopped before.
                if stored.callback_url.is_some()
                    && mcpq_schemas::done::announce(&ctx.outbox.js, &stored, false)
                        .await
                        .is_err()
                {
                    return;
                }
                if delivery.claimed
                    && let Some(reply) = stored.to_reply()
                {
                    let _ = ctx.outbox.reply(reply_to.as_deref(), &reply).await;
                }
                ack(message, AckKind::Ack).await;
            } else {
                tracing::warn!(
                    "another attempt wrote the job's record first; it holds the job now"
                );
            }
            return;
        }
        Err(_) => return,
    }
    // Its end announced (and its callback stored) before the ack: a crash in between runs
    // the announcement again from the record, never loses it.
    if let Err(e) =
        mcpq_schemas::done::announce(&ctx.outbox.js, &ended, delivery.claimed || ended.task).await
    {
        tracing::warn!(error = %e, "cannot store the job's callback; the job will be delivered again");
        return;
    }
    let kind = ended.error.as_ref().map(|e| e.kind);
    let tool = observe::tool_label(&ctx.upstream, job, status == JobStatus::Completed);
    ctx.report.ended(
        &tool,
        status,
        kind,
        now_ms().saturating_sub(job.submitted_at_ms),
    );
    let ack_kind = match status {
        JobStatus::Expired | JobStatus::Dead | JobStatus::Failed => AckKind::Term,
        _ => AckKind::Ack,
    };
    ctx.audit.ended(job, status, kind, ended.attempts);
    ack(message, ack_kind).await;
}

/// [`write`], tried again as a write for a while.
async fn persist_write(
    ctx: &Context,
    delivery: &Delivery,
    record: &JobRecord,
    ttl: Option<Duration>,
) -> Result<bool, WriteError> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match write(ctx, delivery, record, ttl).await {
            Ok(written) => return Ok(written),
            Err(e) if started.elapsed() + pause > WRITE_PATIENCE => {
                tracing::error!(error = %e, "cannot record the job's outcome; giving up: the job will be delivered again");
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "cannot record the job's outcome; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
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
                tracing::error!(error = %e, "cannot {what}; giving up: the job will be delivered again");
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

/// Copies the message to the dead-letter stream (before it is termed: on a work queue, TERM
/// deletes it).
async fn dead_letter(
    ctx: &Context,
    message: &Message,
    delivery: &Delivery,
    job: Option<&Job>,
    error: JobError,
) -> bool {
    let headers = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .filter(|(k, _)| !mcpq_schemas::redact::is_secret_header(k.as_ref()))
        // A dispatcher's seal stays with the message it sealed.
        .filter(|(k, _)| {
            let name: &str = k.as_ref();
            !name.eq_ignore_ascii_case(mcpq_schemas::names::HDR_SEAL)
        })
        .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
        .collect();
    let raw = job.is_none().then(|| {
        let cut = &message.payload[..message.payload.len().min(64 * 1024)];
        String::from_utf8_lossy(cut).into_owned()
    });
    let letter = DeadLetter {
        v: ENVELOPE_VERSION,
        server: ctx.server.name.clone(),
        job_id: job.map(|j| j.id),
        reason: error,
        traceparent: job.and_then(|j| j.traceparent.clone()),
        job: job.cloned(),
        raw,
        headers,
        attempts: delivery.history.clone(),
        stream_seq: delivery.stream_seq,
        worker_id: ctx.report.worker_id.clone(),
        dead_at_ms: now_ms(),
    };
    let stored = persist("dead-letter the job", || ctx.outbox.dead_letter(&letter))
        .await
        .is_ok();
    if stored {
        ctx.report.dead_lettered();
    }
    stored
}

/// A message that is not a job: dead-lettered with its body; the caller, if it left an inbox,
/// hears why.
async fn malformed(ctx: &Context, message: &Message, delivery: &mut Delivery, error: JobError) {
    failed(ctx, delivery, error.clone(), None, false);
    if !dead_letter(ctx, message, delivery, None, error.clone()).await {
        return;
    }
    ctx.report.malformed();
    if let Some(inbox) = delivery.reply_to().as_deref() {
        // The id the body gives, when it can be read that far; else the header's.
        let id = serde_json::from_slice::<serde_json::Value>(&message.payload)
            .ok()
            .and_then(|body| body.get("id")?.as_str()?.parse().ok())
            .or_else(|| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(HDR_JOB_ID))
                    .and_then(|v| v.as_str().parse().ok())
            })
            .unwrap_or_default();
        let reply = Reply {
            v: ENVELOPE_VERSION,
            job_id: id,
            outcome: Ended::Error { error },
            result_ref: None,
        };
        let _ = ctx.outbox.reply(Some(inbox), &reply).await;
    }
    ack(message, AckKind::Term).await;
}

async fn ack(message: &Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "cannot ack; the job may be delivered again");
    }
}
