//! Every NATS name mcpq uses — streams, subjects, consumers, KV buckets, headers — defined once.
//!
//! Pipelines in other languages build the same names by hand; docs/wire-protocol.md
//! lists them, and a test checks that list against these constants.

/// The envelope version written into every job, reply, record and dead letter.
pub const ENVELOPE_VERSION: u32 = 1;

/// The prefix of the work-queue streams, one per server (`MCPQ_JOBS_<server>`), that hold its
/// jobs until a worker has decided their fate. (Before 0.10, one stream of this name held all.)
pub const JOBS_STREAM: &str = "MCPQ_JOBS";

/// The work-queue stream of `server`'s jobs.
pub fn jobs_stream(server: &str) -> String {
    format!("{JOBS_STREAM}_{server}")
}

/// The subjects of `server`'s lanes (`mcpq.jobs.<server>.<lane>`); with fair shares its jobs
/// stream also holds each principal's queue of each lane ([`tenant_subjects`]).
pub fn jobs_subjects(server: &str) -> String {
    format!("mcpq.jobs.{server}.*")
}

/// A principal as a subject token and consumer-name part (fair shares): its readable part
/// (letters, digits, `-`, `_`; at most 32) and 8 hex digits of its SHA-256, so that two
/// principals never share a queue.
pub fn tenant_token(principal: &str) -> String {
    use sha2::Digest;
    let readable: String = principal
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let digest = sha2::Sha256::digest(principal.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{hash}")
}

/// The subject of `tenant`'s jobs (a [`tenant_token`]) in `lane` of `server`.
pub fn tenant_subject(server: &str, lane: crate::lane::Lane, tenant: &str) -> String {
    format!("mcpq.jobs.{server}.{}.{tenant}", lane.as_str())
}

/// The durable consumer of `tenant`'s queue in `lane` of `server`, shared by its workers
/// (made when a worker first sees a job there; gone after an hour unused).
pub fn tenant_consumer(server: &str, lane: crate::lane::Lane, tenant: &str) -> String {
    format!("mcpq-{server}-{}-t-{tenant}", lane.as_str())
}

/// Every principal's queues of `server`.
pub fn tenant_subjects(server: &str) -> String {
    format!("mcpq.jobs.{server}.*.*")
}

/// Where JetStream rings (headers only) for each job stored in a principal's queue of
/// `server`: `mcpq.bell.<server>.<lane>.<tenant>`, so that workers fetch from that queue at
/// once without polling every principal's.
pub fn bell_subjects(server: &str) -> String {
    format!("mcpq.bell.{server}.*.*")
}
/// The stream of dead letters: jobs that failed for good, kept for inspection and replay.
pub const DLQ_STREAM: &str = "MCPQ_DLQ";
/// KV bucket of job records (status and result), keyed by job id.
pub const RESULTS_BUCKET: &str = "mcpq_results";
/// KV bucket of tool catalogs, keyed by server name.
pub const CATALOG_BUCKET: &str = "mcpq_catalog";
/// KV bucket of cancellation requests, keyed by job id; workers watch it.
pub const CANCELS_BUCKET: &str = "mcpq_cancels";
/// KV bucket of batches (the job ids of each batch, in input order), keyed by batch id.
pub const BATCHES_BUCKET: &str = "mcpq_batches";
/// KV bucket of 2025-era MCP sessions (the client's `initialize`), keyed by `Mcp-Session-Id`, so
/// that any dispatcher replica can carry on a session another one opened.
pub const SESSIONS_BUCKET: &str = "mcpq_sessions";
/// KV bucket of per-principal usage (calls per minute, calls in flight) shared by all
/// dispatcher replicas; entries expire after a few minutes.
pub const QUOTAS_BUCKET: &str = "mcpq_quotas";
/// Object Store bucket of results too large for one NATS message, each under its job id;
/// kept as long as the records.
pub const BLOBS_BUCKET: &str = "mcpq_blobs";
/// KV bucket of the deployment's generated signing key (key `signing`), when none is configured
/// (`nats.signingKey`). Only mcpq's own processes may read it.
pub const KEYS_BUCKET: &str = "mcpq_keys";
/// Object Store bucket of catalogs too large for one NATS message, each under its server's
/// name (the latest only; never expires).
pub const CATALOGS_STORE: &str = "mcpq_catalogs";
/// KV bucket of live workers, keyed `<server>.<worker>`; entries expire unless refreshed.
pub const WORKERS_BUCKET: &str = "mcpq_workers";
/// KV bucket of recurring schedules, keyed `<schedule id>` (the definition) and
/// `<schedule id>.fired` (its latest ticks, written by the workers that ran them).
pub const SCHEDULES_BUCKET: &str = "mcpq_schedules";

/// The audit stream: one record per call that ran (who, what, how it ended, how long; never
/// argument values), on `mcpq.audit.<server>`.
pub const AUDIT_STREAM: &str = "MCPQ_AUDIT";
/// Subjects of the audit stream.
pub const AUDIT_SUBJECTS: &str = "mcpq.audit.>";
/// KV bucket of each server's health as its workers see it (up or down, since when, the last
/// alert sent), keyed by server.
pub const HEALTH_BUCKET: &str = "mcpq_health";

/// The subject of `server`'s audit records.
pub fn audit_subject(server: &str) -> String {
    format!("mcpq.audit.{server}")
}

/// Header: the subject a worker publishes the reply (and progress events) to — a reply inbox
/// (see [`is_reply_inbox`]).
pub const HDR_REPLY_TO: &str = "Mcpq-Reply-To";

/// Where every reply inbox lives.
pub const INBOX_PREFIX: &str = "_INBOX.";

/// Whether `subject` may receive a job's reply and events: a literal subject under `_INBOX.`
/// (tokens of printable characters, no wildcards), at most 256 bytes. A worker publishes
/// nowhere else for a job, whoever published it: a job cannot make a worker write on
/// mcpq's own subjects, its buckets or JetStream's API.
pub fn is_reply_inbox(subject: &str) -> bool {
    subject.len() <= 256
        && subject.strip_prefix(INBOX_PREFIX).is_some_and(|rest| {
            rest.split('.').all(|token| {
                !token.is_empty()
                    && token != "*"
                    && token != ">"
                    && token.bytes().all(|b| b.is_ascii_graphic())
            })
        })
}
/// Header: the job id (also in the body), so a reader need not parse the body.
pub const HDR_JOB_ID: &str = "Mcpq-Job-Id";
/// Header on messages sent to a reply inbox: what kind of event the message is.
pub const HDR_EVENT: &str = "Mcpq-Event";
/// JetStream's de-duplication header: the idempotency key, or the job id.
pub const HDR_MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context, passed through unchanged.
pub const HDR_TRACEPARENT: &str = "traceparent";

/// Header: the dispatcher's seal over the job's body and its `Mcpq-Reply-To` (HMAC with the
/// deployment's signing key), on every job a dispatcher publishes. A worker believes the
/// principal of a sealed job only; an unsealed one runs as nobody's.
pub const HDR_SEAL: &str = "Mcpq-Seal";

/// Header on a replayed job: the dead letter's sequence in `MCPQ_DLQ` it was replayed from.
pub const HDR_REPLAY_OF: &str = "Mcpq-Replay-Of";

/// `Mcpq-Event` value of the final reply to a job.
pub const EVENT_REPLY: &str = "reply";
/// `Mcpq-Event` value of a progress event: the upstream reported progress during the call.
pub const EVENT_PROGRESS: &str = "progress";
/// `Mcpq-Event` value of a log event: the upstream sent a log message during the call.
pub const EVENT_LOG: &str = "log";
/// `Mcpq-Event` value of an input request: the upstream asks the caller something.
pub const EVENT_INPUT: &str = "input";
/// `Mcpq-Event` value of a task event: the upstream made the call a task (SEP-2663). A caller
/// that declared the tasks extension now has a task of mcpq's (the job id); the call's later
/// questions wait in its record, and the reply still comes.
pub const EVENT_TASK: &str = "task";

/// Subjects of every server's jobs: `mcpq.jobs.<server>.<lane>`.
pub const JOBS_SUBJECTS: &str = "mcpq.jobs.>";
/// Subjects of the dead-letter stream: `mcpq.dlq.<server>`.
pub const DLQ_SUBJECTS: &str = "mcpq.dlq.>";

/// The stream of JetStream message schedules: jobs for later (`mcpq.sched.<server>.<job id>`)
/// and recurring schedules (`mcpq.sched.<server>.<schedule id>`), and what they fire
/// (`mcpq.fired.<server>.<lane>`), which each server's workers move to its lane. (A stream of
/// its own: JetStream schedules cannot live in a discard-new stream such as a jobs stream.)
pub const SCHEDULES_STREAM: &str = "MCPQ_SCHEDULES";
/// Subjects of the schedules stream.
pub const SCHEDULES_SUBJECTS: [&str; 2] = ["mcpq.sched.>", "mcpq.fired.>"];

/// The subject of a schedule of `server`: a job to run later (`id` is the job id) or a
/// recurring schedule (`id` is the schedule id). JetStream keeps one schedule per subject.
pub fn schedule_subject(server: &str, id: &uuid::Uuid) -> String {
    format!("mcpq.sched.{server}.{id}")
}

/// Where a schedule of `server` fires a job for `lane` (its `Nats-Schedule-Target`).
pub fn fired_subject(server: &str, lane: crate::lane::Lane) -> String {
    format!("mcpq.fired.{server}.{}", lane.as_str())
}

/// Everything schedules fire for `server`.
pub fn fired_subjects(server: &str) -> String {
    format!("mcpq.fired.{server}.*")
}

/// The durable consumer of what `server`'s schedules fired, shared by its workers.
pub fn fired_consumer(server: &str) -> String {
    format!("mcpq-fired-{server}")
}

/// The work-queue stream of callbacks waiting to be delivered: one message per ended job that
/// named a `callbackUrl`, on `mcpq.callbacks.<server>`; dispatchers deliver them.
pub const CALLBACKS_STREAM: &str = "MCPQ_CALLBACKS";
/// Subjects of the callbacks stream.
pub const CALLBACKS_SUBJECTS: &str = "mcpq.callbacks.>";
/// The durable consumer of the callbacks stream, shared by every dispatcher.
pub const CALLBACKS_CONSUMER: &str = "mcpq-callbacks";
/// The stream of callbacks that never landed (retried for `callbacks.retryFor`), on
/// `mcpq.callbacks-dead.<server>`, kept 30 days.
pub const DEAD_CALLBACKS_STREAM: &str = "MCPQ_CALLBACKS_DEAD";

/// The subject of a callback waiting for delivery, for a job of `server`.
pub fn callback_subject(server: &str) -> String {
    format!("mcpq.callbacks.{server}")
}

/// The subject of a callback of `server` that never landed.
pub fn dead_callback_subject(server: &str) -> String {
    format!("mcpq.callbacks-dead.{server}")
}

/// The subject where workers announce that a job of `server` ended (core NATS, for jobs that
/// keep a record: submitted for later, idempotent, tasks, or with a callback).
pub fn done_subject(server: &str) -> String {
    format!("mcpq.done.{server}")
}

/// Header: on a recurring schedule's tick in a lane, the tick (JetStream's
/// `Nats-Schedule-Next` of the fired message: when the schedule fires next).
pub const HDR_TICK: &str = "Mcpq-Tick";

/// Header (JetStream, ADR-51): when a schedule fires — `@at <RFC 3339>`, `@every <duration>`
/// or a six-field cron expression (seconds first).
pub const HDR_SCHEDULE: &str = "Nats-Schedule";
/// Header (JetStream): the subject a schedule publishes to (a lane of the same server).
pub const HDR_SCHEDULE_TARGET: &str = "Nats-Schedule-Target";
/// Header (JetStream): the IANA time zone a cron schedule is read in.
pub const HDR_SCHEDULE_TIME_ZONE: &str = "Nats-Schedule-Time-Zone";
/// Header (JetStream, on what a schedule fired): the schedule's subject.
pub const HDR_SCHEDULER: &str = "Nats-Scheduler";
/// Header (JetStream, on what a schedule fired): when it fires next (RFC 3339), or `purge` for
/// a one-shot schedule that is gone.
pub const HDR_SCHEDULE_NEXT: &str = "Nats-Schedule-Next";

/// The subject a job for `server` in `lane` is published to.
pub fn job_subject(server: &str, lane: crate::lane::Lane) -> String {
    format!("mcpq.jobs.{server}.{}", lane.as_str())
}

/// The subject whose messages carry every update of a job's record: KV `mcpq_results` stores
/// the record for key `<job id>` on it, so a core subscription here hears each status change.
pub fn record_subject(job_id: &uuid::Uuid) -> String {
    format!("$KV.{RESULTS_BUCKET}.{job_id}")
}

/// The subject where the worker running `job_id` waits for the answer to its question `id`.
pub fn input_subject(job_id: &uuid::Uuid, id: &str) -> String {
    format!("mcpq.input.{job_id}.{id}")
}

/// The subject where workers announce that a resource of `server` changed (MCP
/// `notifications/resources/updated`), for dispatchers with clients subscribed to it.
pub fn resource_updated_subject(server: &str) -> String {
    format!("mcpq.events.{server}.resource_updated")
}

/// Every server's resource updates.
pub const RESOURCE_UPDATED_SUBJECTS: &str = "mcpq.events.*.resource_updated";

/// The subject where the worker `worker_key` (its id as a subject token) answers whether it
/// runs a job (request: the job id; reply `yes` or `no`), for a redelivery that finds the job
/// claimed by it.
pub fn holds_subject(worker_key: &str) -> String {
    format!("mcpq.holds.{worker_key}")
}

/// A worker id as a subject token and KV key: anything but letters, digits, `-` and `_`
/// becomes `_`.
pub fn worker_key(worker_id: &str) -> String {
    worker_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The subject a dead letter for `server` is published to.
pub fn dlq_subject(server: &str) -> String {
    format!("mcpq.dlq.{server}")
}

/// The durable consumer of one lane of `server`, shared by every worker of that server.
pub fn consumer_name(server: &str, lane: crate::lane::Lane) -> String {
    format!("mcpq-{server}-{}", lane.as_str())
}

/// Whether `name` can be a server name: one NATS subject token and one KV key, never holding the
/// `__` that separates server and tool in aggregated tool names.
pub fn is_valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.contains("__")
        && !name.starts_with('_')
        && !name.ends_with('_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_single_tokens_without_the_separator() {
        assert!(is_valid_server_name("github"));
        assert!(is_valid_server_name("my-db_2"));
        for bad in ["", "a.b", "a b", "a__b", "_a", "a_", "a*", "a>", "ü"] {
            assert!(!is_valid_server_name(bad), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn replies_go_to_literal_inboxes_only() {
        for good in ["_INBOX.abc.7", "_INBOX.pipeline-web.x", "_INBOX.a"] {
            assert!(is_reply_inbox(good), "{good:?}");
        }
        let long = format!("_INBOX.{}", "a".repeat(260));
        for bad in [
            "",
            "_INBOX.",
            "_INBOX",
            "_INBOX.>",
            "_INBOX.a.*",
            "_INBOX.a..b",
            "_INBOX.a b",
            "_INBOX.a\tb",
            "$KV.mcpq_results.x",
            "$KV.mcpq_keys.signing",
            "mcpq.events.x.resource_updated",
            "$JS.API.STREAM.PURGE.MCPQ_DLQ",
            "_inbox.a",
            "x._INBOX.a",
            long.as_str(),
        ] {
            assert!(!is_reply_inbox(bad), "{bad:?} must be refused");
        }
    }
}
