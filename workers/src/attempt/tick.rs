//! A recurring schedule's tick: JetStream fires the schedule's template (the same body every
//! time), and the relay (`crate::fired`) puts it in its lane with the tick in `Mcpq-Tick`; the
//! tick becomes a job of its own, its id derived from the schedule and the tick, so that every
//! delivery of one tick is one job, and it is noted among the schedule's latest ticks.

use async_nats::jetstream::Message;
use mcpq_schemas::{
    ErrorKind, Job, JobError,
    names::{HDR_TICK, SCHEDULES_BUCKET},
    schedule::{Fired, Tick},
};

use super::Context;

/// A tick, once its job is made.
pub(super) struct Adopted {
    schedule_id: uuid::Uuid,
    tick: Tick,
}

/// Makes `job` the tick it is, if it is a schedule's template: its id, its submission time
/// (when JetStream fired it). A template that did not come from its schedule is malformed.
pub(super) fn adopt(
    ctx: &Context,
    message: &Message,
    job: &mut Job,
    fired_at_ms: u64,
    vouched: bool,
) -> Result<Option<Adopted>, JobError> {
    // A tick replayed from the dead letters carries its own id already: an ordinary job.
    let Some(schedule_id) = job.schedule_id.filter(|id| *id == job.id) else {
        return Ok(None);
    };
    // Only a dispatcher's schedule makes ticks: anyone may publish on NATS, and a tick's id
    // is derived, so an unsealed template could take a real tick's id before it fires.
    if !vouched {
        return Err(JobError::new(
            ErrorKind::MalformedJob,
            format!(
                "a tick of schedule {schedule_id} without a dispatcher's seal: schedules are made with POST /v1/schedules or `mcpq schedule add` (which seal their template)"
            ),
        ));
    }
    let next = message
        .headers
        .as_ref()
        .and_then(|h| h.get(HDR_TICK))
        .map(|v| v.as_str().to_string())
        .ok_or_else(|| {
            JobError::new(
                ErrorKind::MalformedJob,
                format!(
                    "the template of schedule {schedule_id} reached a lane without its tick ({HDR_TICK}): create schedules with POST /v1/schedules or `mcpq schedule add`, and never publish a template to a lane"
                ),
            )
        })?;
    job.id = mcpq_schemas::job::tick_id(&schedule_id, &next, &ctx.signing);
    job.submitted_at_ms = fired_at_ms;
    job.run_at_ms = None;
    Ok(Some(Adopted {
        schedule_id,
        tick: Tick {
            job_id: job.id,
            fired_at_ms,
            next: Some(next),
        },
    }))
}

/// Whether the tick's schedule still wants it: a schedule deleted or paused meanwhile (a
/// resume that raced a delete, a pause cut short) fires no job — the tick is dropped and
/// JetStream's schedule removed, so state and schedule converge at the latest on the next
/// tick. A schedule that cannot be read is taken as wanting it. A wanted tick delivered the
/// first time is noted among the schedule's latest ticks.
pub(super) async fn wanted(ctx: &Context, server: &str, adopted: Adopted, delivered: u32) -> bool {
    let Adopted { schedule_id, tick } = adopted;
    let standing = match ctx.schedules.entry(schedule_id.to_string()).await {
        Ok(Some(entry)) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
            serde_json::from_slice::<mcpq_schemas::schedule::Schedule>(&entry.value)
                .map_or(true, |s| !s.paused)
        }
        Ok(_) => false,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the tick's schedule; running the tick");
            true
        }
    };
    if !standing {
        tracing::info!(%schedule_id, "a tick of a schedule deleted or paused: dropped, its schedule removed");
        if let Err(e) = mcpq_schemas::nats::unschedule(&ctx.outbox.js, server, &schedule_id).await {
            tracing::debug!(error = %e, "cannot remove the schedule; its next tick tries again");
        }
        return false;
    }
    if delivered == 1 {
        tokio::spawn(note(ctx.schedules.clone(), schedule_id, tick));
    }
    true
}

/// Adds `tick` to the schedule's latest ticks (compare-and-set; given up after a few tries:
/// the list is for people, the job's record is the truth).
async fn note(bucket: async_nats::jetstream::kv::Store, schedule_id: uuid::Uuid, tick: Tick) {
    let key = format!("{schedule_id}.fired");
    for _ in 0..5 {
        let (mut fired, revision) = match bucket.entry(&key).await {
            Ok(Some(entry)) if entry.operation == async_nats::jetstream::kv::Operation::Put => (
                serde_json::from_slice::<Fired>(&entry.value).unwrap_or_default(),
                Some(entry.revision),
            ),
            Ok(_) => (Fired::default(), None),
            Err(e) => {
                tracing::debug!(error = %e, bucket = SCHEDULES_BUCKET, "cannot read a schedule's ticks");
                return;
            }
        };
        if !fired.add(tick.clone()) {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&fired) else {
            return;
        };
        let written = match revision {
            Some(revision) => bucket.update(&key, bytes.into(), revision).await.is_ok(),
            None => bucket.create(&key, bytes.into()).await.is_ok(),
        };
        if written {
            return;
        }
    }
}
