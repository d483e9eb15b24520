//! Every way one delivery of a job can end, as a closed set: `decide` maps each to what is
//! done with the message.

use std::time::Duration;

use mcpq_schemas::{JobError, JobRecord};

use crate::{call::Failure, gate::Count};

#[derive(Debug)]
pub(crate) enum Outcome {
    /// The body is not a job (bad JSON, wrong version, missing fields...).
    Malformed(JobError),
    /// The job ended before (a redelivery after the worker died between the answer and the
    /// ack, or a resubmission of an idempotency key): its record answers.
    AlreadyDone(Box<JobRecord>),
    /// Another message carries the same job and holds it (published again after the duplicate
    /// window): this one never runs.
    Duplicate,
    /// The job's id names a record of another principal: it is refused, and that record is
    /// neither read out nor written.
    Foreign,
    /// The job may not run twice (`noRetry`), and an attempt that stopped midway may have run
    /// it already: not run again.
    NotTwice,
    /// Delivered again and again without an outcome: workers stopped while holding it.
    Stranded { deliveries: u32 },
    /// Cancelled by request, before it started or while it ran (the upstream was told).
    Cancelled {
        when: &'static str,
        reason: Option<String>,
    },
    /// Its deadline passed before it could start.
    Expired { late_ms: u64 },
    /// Not due yet (its `runAt` is later): waits this long, no attempt spent.
    Early(Duration),
    /// Not let through: the circuit is open, or the upstream asked for a pause. Waits this
    /// long, no attempt spent.
    Held(Duration),
    /// The worker is stopping and its drain deadline passed (the upstream was told): back to
    /// the queue for another worker.
    Interrupted,
    /// This attempt no longer holds the job: JetStream gave it to another (this process stopped
    /// past AckWait), or another attempt claimed its record.
    Lost,
    /// The upstream answered with more than `maxResultBytes`.
    TooLarge { size: u64 },
    /// The upstream's MCP result.
    Answered(serde_json::Value),
    /// The call failed; `count` says whether the attempt is spent (the circuit let it through
    /// and it stayed closed) or held.
    Failed { failure: Failure, count: Count },
}
