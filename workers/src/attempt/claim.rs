//! Whose job is it? Before an attempt calls the upstream, the job's record says whether the job
//! ended already, whether another message carries it, or whether another attempt holds it
//! now; a job that has a record from its submission (idempotent or asynchronous) is then
//! claimed — its record written `running` with this worker and this message, by compare-and-set
//! — so that no two attempts run it at once, whatever JetStream delivers.
//!
//! An attempt held by a worker whose heartbeat is gone is taken over: that worker stopped.
//! One whose worker lives is waited for: it was frozen past AckWait, or it is this process's
//! own earlier delivery, and will finish.

use std::time::Duration;

use mcpq_schemas::{Job, JobRecord, JobStatus};

use super::{Context, Delivery};
use crate::report::{heartbeat, outbox::Expect};

/// What the record says about this delivery.
#[derive(Debug)]
pub(crate) enum Found {
    /// Nothing stands in the way: go on (the record, if any, and its revision).
    Free(Option<(JobRecord, u64)>),
    /// The job ended already.
    Done(JobRecord),
    /// Another message carries the job.
    Duplicate,
    /// Another live attempt holds this very message: wait for it.
    HeldElsewhere,
}

/// How often a delivery waiting for another attempt looks again.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Reads the job's record and says what it means for this delivery. Waits (looking again
/// every second) while another live attempt holds the job.
pub(crate) async fn look(
    ctx: &Context,
    job: &Job,
    delivery: &Delivery,
) -> Result<Found, crate::report::outbox::WriteError> {
    loop {
        let found = judge(ctx, job, delivery).await?;
        if !matches!(found, Found::HeldElsewhere) {
            return Ok(found);
        }
        tokio::time::sleep(LOOK_AGAIN).await;
    }
}

async fn judge(
    ctx: &Context,
    job: &Job,
    delivery: &Delivery,
) -> Result<Found, crate::report::outbox::WriteError> {
    let Some((record, revision)) = ctx.outbox.entry(&job.id).await? else {
        return Ok(Found::Free(None));
    };
    // A replay runs a dead job again: its first delivery does not look at the old ending.
    let replay = delivery.replay && delivery.delivered == 1;
    if record.status.is_terminal() && !replay {
        return Ok(Found::Done(record));
    }
    if !record.status.is_terminal()
        && record
            .stream_seq
            .is_some_and(|seq| seq != delivery.stream_seq)
        && !replay
    {
        return Ok(Found::Duplicate);
    }
    if record.status == JobStatus::Running
        && record.stream_seq == Some(delivery.stream_seq)
        && let Some(holder) = &record.worker_id
    {
        let here = *holder == ctx.report.worker_id;
        let held = if here {
            // This process's earlier delivery of the message still runs (its progress acks
            // were late): it will end the job.
            ctx.cancels.is_running(&job.id)
        } else {
            heartbeat::alive(&ctx.workers, &ctx.server.name, holder).await
        };
        if held {
            tracing::info!(holder, "another attempt holds the job; waiting for it");
            return Ok(Found::HeldElsewhere);
        }
        if !here {
            tracing::warn!(holder, "the worker holding the job is gone; taking it over");
        }
    }
    Ok(Found::Free(Some((record, revision))))
}

/// Claims the job for this delivery: its record written `running` by this worker with this
/// message, over the revision `look` found (or where there was none). `false` when another
/// write came first (look again).
pub(crate) async fn claim(
    ctx: &Context,
    running: &JobRecord,
    found: Option<u64>,
) -> Result<Option<u64>, crate::report::outbox::WriteError> {
    let expect = found.map_or(Expect::Absent, Expect::Revision);
    ctx.outbox.record(running, expect).await
}
