//! Whose job is it? Before an attempt calls the upstream, the job's record says whether the job
//! ended already, whether another message carries it, or whether another attempt holds it
//! now; a job that has a record from its submission (idempotent or asynchronous) is then
//! claimed — its record written `running` with this worker and this message, by compare-and-set
//! — so that no two attempts run it at once, whatever JetStream delivers.
//!
//! A record that names another worker is not taken on trust: that worker is asked (NATS request
//! on `mcpq.holds.<worker>`) whether it still runs the job. While it says yes — it lives, only
//! its acks came late — this delivery waits; if it says no, the job is taken over. A worker
//! that does not answer is waited for while its heartbeat lasts (a pause of a few seconds),
//! then taken over: it is gone, or frozen — and a frozen worker that wakes finds its claim
//! taken, cancels its call upstream and leaves the job (at-least-once, the upstream told).

use std::time::Duration;

use mcpq_schemas::{Job, JobRecord, JobStatus};

use super::{Context, Delivery};
use crate::{
    call::{Interrupt, cancel},
    report::{
        heartbeat,
        outbox::{Expect, WriteError},
    },
};

/// What the record says about this delivery.
#[derive(Debug)]
pub(crate) enum Found {
    /// Nothing stands in the way: go on (the record, if any, and its revision; `fresh` for a
    /// replay, which starts over whatever the record holds).
    Free {
        record: Option<(JobRecord, u64)>,
        fresh: bool,
    },
    /// The job ended already.
    Done(JobRecord),
    /// Another message carries the job.
    Duplicate,
    /// The record belongs to another principal (or to somebody, and the job to nobody): the id
    /// is not this job's to use.
    Foreign,
    /// The delivery was interrupted while it waited for another attempt.
    Stopped,
}

/// How often a delivery waiting for another attempt looks again.
const LOOK_AGAIN: Duration = Duration::from_secs(1);
/// How long the worker named in a record has to say whether it runs the job.
const ASK_HOLDER: Duration = Duration::from_secs(2);
/// The longest a delivery waits for a worker that does not answer, whatever its heartbeat
/// says (the heartbeats cannot be read, or the worker predates `mcpq.holds`).
const SILENT_MOST: Duration = Duration::from_secs(30);

/// Reads the job's record and says what it means for this delivery. Waits (looking again
/// every second) while another attempt that still runs the job holds it.
pub(crate) async fn look(
    ctx: &Context,
    job: &Job,
    delivery: &Delivery,
    interrupt: &Interrupt,
) -> Result<Found, WriteError> {
    let mut silent_since: Option<tokio::time::Instant> = None;
    loop {
        if interrupt.why().is_some() {
            return Ok(Found::Stopped);
        }
        let patience = silent_since.is_none_or(|since| since.elapsed() < SILENT_MOST);
        match judge(ctx, job, delivery, interrupt, patience).await? {
            Judged::Found(found) => return Ok(*found),
            Judged::Held => silent_since = None,
            Judged::Silent => {
                silent_since.get_or_insert_with(tokio::time::Instant::now);
            }
        }
        tokio::select! {
            () = interrupt.fired() => {}
            () = tokio::time::sleep(LOOK_AGAIN) => {}
        }
    }
}

/// What the record means now.
enum Judged {
    Found(Box<Found>),
    /// Another attempt says it runs the job.
    Held,
    /// The worker named in the record does not answer, and its heartbeat lasts.
    Silent,
}

/// What the record means now. Without `patience`, a worker that does not answer is not
/// waited for.
async fn judge(
    ctx: &Context,
    job: &Job,
    delivery: &Delivery,
    interrupt: &Interrupt,
    patience: bool,
) -> Result<Judged, WriteError> {
    let found = |found| Ok(Judged::Found(Box::new(found)));
    let Some((record, revision)) = ctx.outbox.entry(&job.id).await? else {
        return found(Found::Free {
            record: None,
            fresh: delivery.replay,
        });
    };
    if record.principal != job.principal {
        return found(Found::Foreign);
    }
    let ours = record.stream_seq == Some(delivery.stream_seq);
    if record.status.is_terminal() {
        // A replay runs a dead job again; once it has run, its own ending stands.
        if delivery.replay && !ours {
            return found(Found::Free {
                record: Some((record, revision)),
                fresh: true,
            });
        }
        return found(Found::Done(record));
    }
    if record.stream_seq.is_some() && !ours {
        return found(Found::Duplicate);
    }
    if record.status == JobStatus::Running
        && ours
        && let Some(holder) = &record.worker_id
    {
        if *holder == ctx.report.worker_id {
            // This process's earlier delivery of the message still runs (its progress acks
            // were late): it will end the job.
            if ctx.cancels.runs_elsewhere(&job.id, interrupt) {
                return Ok(Judged::Held);
            }
        } else {
            match cancel::holds(&ctx.outbox.client, holder, &job.id, ASK_HOLDER).await {
                Some(true) => {
                    tracing::info!(holder, "another attempt runs the job; waiting for it");
                    return Ok(Judged::Held);
                }
                Some(false) => {}
                // Silent: frozen for a moment, or gone. While its heartbeat lasts (10 s after
                // its last beat), it is given the benefit of the doubt.
                None if patience
                    && heartbeat::alive(&ctx.workers, &ctx.server.name, holder).await =>
                {
                    return Ok(Judged::Silent);
                }
                None => {}
            }
        }
        if *holder != ctx.report.worker_id {
            tracing::warn!(
                holder,
                "the worker holding the job no longer runs it; taking it over"
            );
        }
    }
    found(Found::Free {
        record: Some((record, revision)),
        fresh: false,
    })
}

/// Claims the job for this delivery: `running` is written by this worker with this message,
/// over the revision last seen (or where there was no record). `None` when another write came
/// first: look again.
pub(crate) async fn claim(
    ctx: &Context,
    running: &JobRecord,
    revision: Option<u64>,
) -> Result<Option<u64>, WriteError> {
    let expect = revision.map_or(Expect::Absent, Expect::Revision);
    ctx.outbox.record(running, expect, None).await
}
