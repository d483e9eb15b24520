//! The embeddable client: publish jobs to JetStream and await their replies, without HTTP.
//! The MCP endpoints use it, `mcpq call` uses it, and so can any Rust pipeline.

use crate::lock;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{self, kv},
};
use futures::StreamExt;
use mcpq_schemas::{
    BlobRef, CancelRequest, ErrorKind, InputAnswer, Job, JobError, JobRecord, JobStatus, Outcome,
    Reply,
    names::{
        CANCELS_BUCKET, ENVELOPE_VERSION, HDR_JOB_ID, HDR_MSG_ID, HDR_REPLAY_OF, HDR_REPLY_TO,
        HDR_SCHEDULE, HDR_SCHEDULE_TARGET, HDR_TRACEPARENT, RESULTS_BUCKET, job_subject,
    },
};
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use crate::replies::{Event, Inbox};

/// Why a job could not be submitted or answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot subscribe to the reply inbox: {0}")]
    Inbox(#[source] async_nats::SubscribeError),
    #[error("job {job_id}: cannot publish to {subject}: {source}")]
    Publish {
        job_id: Uuid,
        subject: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "job {job_id}: no stream takes {subject}: mcpq's streams do not exist yet (start `mcpq up`, a dispatcher or a worker first)"
    )]
    NoStream { job_id: Uuid, subject: String },
    #[error("cannot open bucket {name}: {source}")]
    Bucket {
        name: &'static str,
        #[source]
        source: jetstream::context::KeyValueError,
    },
    #[error(
        "job {job_id}: no reply within {timeout:?}; the job may still complete (a call that runs on past 1 s keeps a record: look it up with its id)"
    )]
    Timeout { job_id: Uuid, timeout: Duration },
    #[error("job {job_id}: the reply inbox closed")]
    InboxClosed { job_id: Uuid },
    #[error(
        "job {job_id}: the request is {size} bytes, more than one job may carry ({limit} bytes, from the NATS server's max_payload): send less, or raise max_payload in the nats-server config"
    )]
    TooLarge {
        job_id: Uuid,
        size: usize,
        limit: usize,
    },
    #[error(
        "batch {batch_id}: {jobs} job ids do not fit in one batch record ({limit} bytes, from the NATS server's max_payload): split the batch"
    )]
    BatchTooLarge {
        batch_id: Uuid,
        jobs: usize,
        limit: usize,
    },
    #[error(
        "job {job_id}: the queue of server {server:?} is full (maxQueued jobs wait already); try again later"
    )]
    QueueFull { job_id: Uuid, server: String },
    #[error(
        "job {job_id}: runAt is {ahead:?} ahead, beyond how long job records are kept ({kept:?}, nats.resultTtl): schedule it nearer, use a recurring schedule, or raise nats.resultTtl"
    )]
    TooFarAhead {
        job_id: Uuid,
        ahead: Duration,
        kept: Duration,
    },
    #[error("job {job_id}: cannot read its record: {source}")]
    Record {
        job_id: Uuid,
        #[source]
        source: BoxError,
    },
    #[error(
        "job {job_id}: cannot read its result from object {name:?} of bucket {bucket}: {source}"
    )]
    Blob {
        job_id: Uuid,
        name: String,
        bucket: String,
        #[source]
        source: BoxError,
    },
    #[error("batch {batch_id}: cannot store its record: {source}")]
    Batch {
        batch_id: Uuid,
        #[source]
        source: BoxError,
    },
    #[error("schedule {id}: {source}")]
    Schedule {
        id: Uuid,
        #[source]
        source: BoxError,
    },
    #[error("cannot list the schedules: {0}")]
    Schedules(#[source] BoxError),
    #[error("cannot watch the job records: {0}")]
    Records(#[source] jetstream::kv::WatchError),
    #[error(
        "job {job_id}: no longer waits for an answer to question {question:?} (it ended, or its worker stopped)"
    )]
    NotAsking { job_id: Uuid, question: String },
}

/// The error beneath a [`ClientError`], as async-nats or serde reported it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Room kept in a job message for its headers (reply inbox, ids, `traceparent`).
const HEADER_ROOM: usize = 4 * 1024;

/// A record created for an idempotency key and still without the message that carries it
/// this long after was never published (its submitter died between the two writes).
const ORPHAN_AFTER: Duration = Duration::from_secs(30);

/// What creating a job's record found.
enum Created {
    /// The record is new, at this revision.
    New(u64),
    /// A record was there already (as stored, at this revision).
    Found(Box<JobRecord>, u64),
    /// One was there, and was deleted before it could be read: try again.
    Gone,
}

/// Creates job `job_id`'s record as `bytes`, or reads the one that is there.
async fn create_or_read(
    bucket: &kv::Store,
    job_id: Uuid,
    bytes: &[u8],
) -> Result<Created, ClientError> {
    let fail = |source: BoxError| ClientError::Record { job_id, source };
    let key = job_id.to_string();
    match bucket.create(&key, bytes.to_vec().into()).await {
        Ok(revision) => return Ok(Created::New(revision)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e.into())),
    }
    Ok(match stored(bucket, job_id).await? {
        Some((record, revision)) => Created::Found(Box::new(record), revision),
        None => Created::Gone,
    })
}

/// Job `job_id`'s record as it stands, and its revision; `None` when it has none (or it was
/// deleted).
async fn stored(bucket: &kv::Store, job_id: Uuid) -> Result<Option<(JobRecord, u64)>, ClientError> {
    let fail = |source: BoxError| ClientError::Record { job_id, source };
    let Some(entry) = bucket
        .entry(job_id.to_string())
        .await
        .map_err(|e| fail(e.into()))?
        .filter(|e| e.operation == kv::Operation::Put)
    else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&entry.value).map_err(|e| fail(e.into()))?;
    Ok(Some((record, entry.revision)))
}

/// The `Nats-Schedule` of a one-shot schedule at Unix ms `at`: `@at` and the RFC 3339 time in
/// UTC, rounded up to the second (JetStream fires on whole seconds; never early).
pub(crate) fn at_schedule(at_ms: u64) -> String {
    let seconds = i64::try_from(at_ms.div_ceil(1000)).unwrap_or(i64::MAX);
    let time = time::OffsetDateTime::from_unix_timestamp(seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let text = time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!("@at {text}")
}

/// A job for later whose record, kept `kept`, would expire before it runs (with an hour to
/// spare: a fired job may wait for a worker, or for room in its lane).
pub fn too_far_ahead(job: &Job, kept: Duration) -> Result<(), ClientError> {
    let now = mcpq_schemas::now_ms();
    let Some(at) = job.run_at_ms.filter(|_| job.is_early(now)) else {
        return Ok(());
    };
    let ahead = Duration::from_millis(at - now);
    if !kept.is_zero() && ahead + Duration::from_secs(3600) > kept {
        return Err(ClientError::TooFarAhead {
            job_id: job.id,
            ahead,
            kept,
        });
    }
    Ok(())
}

/// What claiming an idempotency key found.
enum KeyClaim {
    /// The key is new: publish the job, then settle the claim made at `revision`.
    New { revision: u64 },
    /// The key's job exists (its record as stored): do not publish it again.
    Taken(Box<JobRecord>),
}

fn record_bytes(record: &JobRecord) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(record).map_err(|e| ClientError::Record {
        job_id: record.job_id,
        source: e.into(),
    })
}

/// A handle on mcpq for submitting jobs; cheap to clone.
#[derive(Clone)]
pub struct Client {
    js: jetstream::Context,
    inbox: Inbox,
    buckets: Arc<Mutex<HashMap<&'static str, kv::Store>>>,
    /// Seals the jobs that name a principal, so that workers believe it.
    signing: Option<mcpq_schemas::seal::SigningKey>,
    /// Servers whose principals' jobs wait in a queue per principal (fair shares).
    fair: Arc<std::collections::HashSet<String>>,
}

/// What a cancellation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// Requested; the record as it stands (`cancelled` for a job that had not started).
    Requested(JobRecord),
    /// The job had ended already; nothing changed.
    AlreadyEnded(JobRecord),
    /// No record of such a job (never submitted for later, or expired).
    NotFound,
}

/// What JetStream said about a submitted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub stream_seq: u64,
    /// Published as a JetStream schedule (a job for later): `stream_seq` is the schedule's.
    pub scheduled: bool,
    /// The job exists already (its idempotency key was submitted before, or a message with its
    /// id is inside JetStream's duplicate window): nothing was published.
    pub duplicate: bool,
}

impl Client {
    /// A client on an open NATS connection; subscribes this process's reply inbox.
    pub async fn new(nats: async_nats::Client) -> Result<Client, ClientError> {
        let inbox = Inbox::open(&nats).await.map_err(ClientError::Inbox)?;
        Ok(Client {
            js: jetstream::new(nats),
            inbox,
            buckets: Arc::default(),
            signing: None,
            fair: Arc::default(),
        })
    }

    /// This client, queueing the jobs of each principal apart on `servers` (their
    /// `fairness.by: principal`), so that workers serve the principals round robin.
    pub fn fair_shares(mut self, servers: impl IntoIterator<Item = String>) -> Client {
        self.fair = Arc::new(servers.into_iter().collect());
        self
    }

    /// The lane subject `job` is published to: its principal's queue on a server with fair
    /// shares, else the lane.
    pub fn lane_subject(&self, job: &Job) -> String {
        match &job.principal {
            Some(principal) if self.fair.contains(&job.server) => {
                mcpq_schemas::names::tenant_subject(
                    &job.server,
                    job.lane,
                    &mcpq_schemas::names::tenant_token(principal),
                )
            }
            _ => job_subject(&job.server, job.lane),
        }
    }

    /// Whether this client seals the jobs it publishes.
    pub fn seals(&self) -> bool {
        self.signing.is_some()
    }

    /// This client, sealing every job it publishes with `key` (the deployment's signing key:
    /// a dispatcher's client, or an operator's replaying dead letters). A job naming a
    /// principal without a seal runs as nobody's; one without a seal and with a reply inbox
    /// has its id checked against the records before it runs.
    pub fn signing_with(mut self, key: mcpq_schemas::seal::SigningKey) -> Client {
        self.signing = Some(key);
        self
    }

    /// Submits `job` for later: its record is created (`queued`), then the job is published
    /// durably (the stream's acknowledgement awaited) with no reply inbox. Its outcome is read
    /// later from the record (`record`, `wait`).
    ///
    /// A job with an idempotency key whose record exists — queued, running or ended, for as
    /// long as records are kept (`nats.resultTtl`) — is not published again: `duplicate` is
    /// set and `stream_seq` names the message that carries it.
    pub async fn submit(&self, job: &Job) -> Result<Submitted, ClientError> {
        // Refused before anything is written: no record of a job that was never queued.
        let payload = self.encode(job)?;
        let bucket = self.results().await?;
        self.within_records(&bucket, job).await?;
        if job.idempotency_key.is_some() {
            return match self.claim_key(&bucket, job).await? {
                KeyClaim::Taken(record) => Ok(Submitted {
                    stream_seq: record.stream_seq.unwrap_or(0),
                    duplicate: true,
                    scheduled: record.status == JobStatus::Scheduled,
                }),
                KeyClaim::New { revision } => {
                    let published = self.publish(job, payload, None, job.msg_id(), None).await;
                    self.settle_claim(&bucket, job, revision, published.as_ref().ok())
                        .await;
                    published
                }
            };
        }
        let bytes = record_bytes(&JobRecord::queued(job))?;
        // Record and job are written at once: `create` writes only where there is no record,
        // so a worker's record — if the worker was quicker — is never overwritten.
        let (created, published) = tokio::join!(
            bucket.create(job.id.to_string(), bytes.into()),
            self.publish(job, payload, None, job.msg_id(), None)
        );
        let submitted = match published {
            Ok(submitted) => submitted,
            Err(e) => {
                // Not queued (a full queue, say): the record this call created goes too.
                if let Ok(revision) = created {
                    let _ = bucket
                        .delete_expect_revision(job.id.to_string(), Some(revision))
                        .await;
                }
                return Err(e);
            }
        };
        Ok(submitted)
    }

    /// Refuses a job for later whose record would expire before it is due (it could no longer
    /// be read or cancelled).
    async fn within_records(&self, bucket: &kv::Store, job: &Job) -> Result<(), ClientError> {
        if !job.is_early(mcpq_schemas::now_ms()) {
            return Ok(());
        }
        match bucket.status().await {
            Ok(status) => too_far_ahead(job, status.max_age()),
            Err(_) => Ok(()),
        }
    }

    /// How long job records are kept (the results bucket's age), when it can be read.
    pub async fn records_kept(&self) -> Option<Duration> {
        let bucket = self.results().await.ok()?;
        bucket.status().await.ok().map(|s| s.max_age())
    }

    /// Claims an idempotency key: its job's record is created `queued`, unless the job exists
    /// (then it is not published again). A record left `queued` and never published — its
    /// submitter died between the two writes — is taken over after [`ORPHAN_AFTER`].
    async fn claim_key(&self, bucket: &kv::Store, job: &Job) -> Result<KeyClaim, ClientError> {
        let fail = |source: BoxError| ClientError::Record {
            job_id: job.id,
            source,
        };
        let bytes = record_bytes(&JobRecord::queued(job))?;
        let orphan_after = ORPHAN_AFTER.as_millis() as u64;
        let mut changed = 0;
        while changed < 5 {
            let (record, revision) = match create_or_read(bucket, job.id, &bytes).await? {
                Created::New(revision) => return Ok(KeyClaim::New { revision }),
                Created::Gone => {
                    changed += 1;
                    continue;
                }
                Created::Found(record, revision) => (*record, revision),
            };
            let now = mcpq_schemas::now_ms();
            // Claimed and not (yet) published: its submitter is publishing it now, or died
            // between the two writes. Waited for until it is published, or taken over once it
            // is old enough to be an orphan — never reported as queued while no message
            // carries it (a caller waiting for its end would wait for ever).
            let unpublished = record.status == JobStatus::Queued && record.stream_seq.is_none();
            let age = now.saturating_sub(record.updated_at_ms);
            if unpublished && age <= orphan_after {
                let wait = (orphan_after + 1 - age).min(1000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            // A job for later whose time came long ago and that no worker ever wrote: its
            // schedule was never published either.
            let orphan = unpublished
                || (record.status == JobStatus::Scheduled
                    && now.saturating_sub(record.run_at_ms.unwrap_or(record.updated_at_ms))
                        > orphan_after);
            if !orphan {
                return Ok(KeyClaim::Taken(Box::new(record)));
            }
            tracing::warn!(job_id = %job.id, "the first submission of this key was never queued; queueing it now");
            match bucket
                .update(job.id.to_string(), bytes.clone().into(), revision)
                .await
            {
                Ok(revision) => return Ok(KeyClaim::New { revision }),
                Err(_) => changed += 1,
            }
        }
        Err(fail(
            "its record keeps changing under this submission; try again".into(),
        ))
    }

    /// After publishing a job whose key this call claimed: notes the message that carries it in
    /// the record (a later message with the same id is then a duplicate), or, when the publish
    /// failed, takes the claim back.
    async fn settle_claim(
        &self,
        bucket: &kv::Store,
        job: &Job,
        revision: u64,
        published: Option<&Submitted>,
    ) {
        let key = job.id.to_string();
        let Some(submitted) = published else {
            let _ = bucket.delete_expect_revision(&key, Some(revision)).await;
            return;
        };
        let mut queued = JobRecord::queued(job);
        // A job for later is carried by its schedule now and by the message it fires later:
        // the worker notes that one.
        if !submitted.scheduled {
            queued.stream_seq = Some(submitted.stream_seq);
        }
        if let Ok(bytes) = record_bytes(&queued) {
            // A worker that wrote the record first has noted it already.
            let _ = bucket.update(&key, bytes.into(), revision).await;
        }
    }

    /// The record of a call that became a task: created `queued` if it has none yet, and in
    /// any case marked a task, so that it is kept for `nats.resultTtl` (a record a worker wrote
    /// first keeps what it says; a worker writing later keeps the mark).
    pub async fn ensure_record(&self, job: &Job) -> Result<JobRecord, ClientError> {
        let fail = |source: BoxError| ClientError::Record {
            job_id: job.id,
            source,
        };
        let bucket = self.results().await?;
        let mut queued = JobRecord::queued(job);
        queued.task = true;
        let bytes = record_bytes(&queued)?;
        for _ in 0..5 {
            let (mut stored, revision) = match create_or_read(&bucket, job.id, &bytes).await? {
                Created::New(_) => return Ok(queued),
                Created::Gone => continue,
                Created::Found(record, revision) => (*record, revision),
            };
            if stored.task {
                return self.resolve_record(stored).await;
            }
            stored.task = true;
            // Written again without a time to live of its own: the bucket's `resultTtl` holds.
            if bucket
                .update(job.id.to_string(), record_bytes(&stored)?.into(), revision)
                .await
                .is_ok()
            {
                return self.resolve_record(stored).await;
            }
        }
        Err(fail(
            "its record keeps changing under the task; try again".into(),
        ))
    }

    /// Writes the ending `reply` tells into the record of a call that became a task, unless the
    /// record has ended already (the worker writes the ending of any call that ran long; this
    /// covers a dispatcher and a worker whose clocks or `taskAfter` disagree).
    pub async fn settle_task(&self, reply: &Reply) -> Result<(), ClientError> {
        let job_id = reply.job_id;
        let fail = |source: BoxError| ClientError::Record { job_id, source };
        let bucket = self.results().await?;
        for _ in 0..5 {
            let Some((mut record, revision)) = stored(&bucket, job_id).await? else {
                return Ok(());
            };
            if record.status.is_terminal() {
                return Ok(());
            }
            match &reply.outcome {
                Outcome::Ok { result } => {
                    record.status = JobStatus::Completed;
                    record.result = reply.result_ref.is_none().then(|| result.clone());
                    record.result_ref = reply.result_ref.clone();
                }
                Outcome::Error { error } => {
                    record.status = match error.kind {
                        ErrorKind::Cancelled => JobStatus::Cancelled,
                        ErrorKind::Expired => JobStatus::Expired,
                        _ => JobStatus::Failed,
                    };
                    record.error = Some(error.clone());
                }
            }
            record.task = true;
            record.updated_at_ms = mcpq_schemas::now_ms();
            if bucket
                .update(job_id.to_string(), record_bytes(&record)?.into(), revision)
                .await
                .is_ok()
            {
                mcpq_schemas::done::announce(&self.js, &record, true)
                    .await
                    .map_err(|e| fail(e.into()))?;
                return Ok(());
            }
        }
        Err(fail(
            "its record keeps changing; the worker's ending stands".into(),
        ))
    }

    /// Publishes `job` again from the dead letter at `dead_letter_seq`: the same job id (its
    /// record follows the new run), a fresh attempt count, and the link in `Mcpq-Replay-Of`.
    pub async fn replay(&self, job: &Job, dead_letter_seq: u64) -> Result<Submitted, ClientError> {
        let msg_id = format!("{}:replay:{dead_letter_seq}", job.id);
        let payload = self.encode(job)?;
        self.publish(job, payload, None, Some(msg_id), Some(dead_letter_seq))
            .await
    }

    /// The job as JSON, if it fits in one message of this NATS server (with room for headers).
    pub fn encode(&self, job: &Job) -> Result<Vec<u8>, ClientError> {
        let payload = serde_json::to_vec(job).map_err(|e| ClientError::Publish {
            job_id: job.id,
            subject: job_subject(&job.server, job.lane),
            source: e.into(),
        })?;
        let limit = self.max_job_bytes();
        if payload.len() > limit {
            return Err(ClientError::TooLarge {
                job_id: job.id,
                size: payload.len(),
                limit,
            });
        }
        Ok(payload)
    }

    /// The largest job body this NATS server takes: its `max_payload`, less room for headers.
    pub fn max_job_bytes(&self) -> usize {
        self.js
            .client()
            .server_info()
            .max_payload
            .saturating_sub(HEADER_ROOM)
    }

    async fn publish(
        &self,
        job: &Job,
        payload: Vec<u8>,
        reply_to: Option<String>,
        msg_id: Option<String>,
        replay_of: Option<u64>,
    ) -> Result<Submitted, ClientError> {
        let span = mcpq_schemas::trace::exported(
            || tracing::info_span!("publish", job_id = %job.id, server = %job.server),
        );
        async move {
            // A job for later waits as a JetStream schedule that fires it when it is due (the
            // server's workers move it to its lane).
            let run_at = job
                .run_at_ms
                .filter(|_| job.is_early(mcpq_schemas::now_ms()));
            let subject = match run_at {
                Some(_) => mcpq_schemas::names::schedule_subject(&job.server, &job.id),
                None => self.lane_subject(job),
            };
            let fail = |source: BoxError| ClientError::Publish {
                job_id: job.id,
                subject: subject.clone(),
                source,
            };
            let mut headers = HeaderMap::new();
            if let Some(msg_id) = &msg_id {
                headers.insert(HDR_MSG_ID, msg_id.as_str());
            }
            if let Some(seq) = replay_of {
                headers.insert(HDR_REPLAY_OF, seq.to_string().as_str());
            }
            headers.insert(HDR_JOB_ID, job.id.to_string().as_str());
            if let Some(at) = run_at {
                headers.insert(HDR_SCHEDULE, at_schedule(at).as_str());
                headers.insert(
                    HDR_SCHEDULE_TARGET,
                    mcpq_schemas::names::fired_subject(&job.server, job.lane).as_str(),
                );
            }
            if let Some(inbox) = &reply_to {
                headers.insert(HDR_REPLY_TO, inbox.as_str());
            }
            if let Some(traceparent) = &job.traceparent {
                headers.insert(HDR_TRACEPARENT, traceparent.as_str());
            }
            self.seal(&mut headers, &payload, reply_to.as_deref());
            let refused = |e: async_nats::jetstream::context::PublishError| {
                if e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound {
                    ClientError::NoStream {
                        job_id: job.id,
                        subject: subject.clone(),
                    }
                } else if mcpq_schemas::nats::is_queue_full(&e) {
                    ClientError::QueueFull {
                        job_id: job.id,
                        server: job.server.clone(),
                    }
                } else {
                    fail(e.into())
                }
            };
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
                .map_err(refused)?
                .await
                .map_err(refused)?;
            Ok(Submitted {
                stream_seq: ack.sequence,
                duplicate: ack.duplicate,
                scheduled: run_at.is_some(),
            })
        }
        .instrument(span)
        .await
    }

    /// Seals a job's `payload` and reply subject into `headers`. Every job a dispatcher
    /// publishes is sealed: a worker trusts a job's principal, and runs an inbox call without
    /// reading its record, only under a dispatcher's seal.
    pub(crate) fn seal(&self, headers: &mut HeaderMap, payload: &[u8], reply_to: Option<&str>) {
        if let Some(signing) = &self.signing {
            let reply = reply_to.unwrap_or("");
            let seal = signing.seal(
                mcpq_schemas::seal::Purpose::Job,
                &[payload, reply.as_bytes()],
            );
            headers.insert(mcpq_schemas::names::HDR_SEAL, seal.as_str());
        }
    }

    /// Submits `job` and waits at most `timeout` for its reply. A job whose idempotency key was
    /// submitted before (its record still kept) is not run again: the answer comes from the
    /// first one's record, once it ends.
    pub async fn call(&self, job: &Job, timeout: Duration) -> Result<Reply, ClientError> {
        self.call_with_events(job, timeout, None).await
    }

    /// [`Client::call`], with what the upstream reports during the call — progress, and log
    /// messages when the job has a `log_level` — sent to `events` in order.
    pub async fn call_with_events(
        &self,
        job: &Job,
        timeout: Duration,
        events: Option<mpsc::Sender<Event>>,
    ) -> Result<Reply, ClientError> {
        let payload = self.encode(job)?;
        // A key's job that exists already is not run again: its record answers, once it ends.
        let claim = match &job.idempotency_key {
            None => None,
            Some(_) => {
                let bucket = self.results().await?;
                let started = tokio::time::Instant::now();
                loop {
                    let left = timeout.saturating_sub(started.elapsed());
                    let record = match Box::pin(self.claim_key(&bucket, job)).await? {
                        KeyClaim::New { revision } => break Some((bucket, revision)),
                        KeyClaim::Taken(record) => record,
                    };
                    // A first submission never queued (its submitter died between claiming the
                    // key and publishing) becomes an orphan: waited for until then, it is
                    // claimed again and queued here.
                    let orphan_in = (record.status == JobStatus::Queued
                        && record.stream_seq.is_none())
                    .then(|| {
                        let age = mcpq_schemas::now_ms().saturating_sub(record.updated_at_ms);
                        ORPHAN_AFTER.saturating_sub(Duration::from_millis(age))
                            + Duration::from_millis(250)
                    })
                    .filter(|wait| *wait < left);
                    let Some(orphan_in) = orphan_in else {
                        return Box::pin(self.wait(job.id, left)).await;
                    };
                    if let Ok(reply) = Box::pin(self.wait(job.id, orphan_in)).await {
                        return Ok(reply);
                    }
                }
            }
        };
        let waiting = self.inbox.expect(job.id, events);
        let reply_to = Some(waiting.subject.clone());
        // Each step but the wait is boxed: a call in flight then holds only the wait's state,
        // not room for the largest step (a thousand calls in flight are a thousand of these).
        let published = Box::pin(self.publish(job, payload, reply_to, job.msg_id(), None)).await;
        if let Some((bucket, revision)) = claim {
            Box::pin(self.settle_claim(&bucket, job, revision, published.as_ref().ok())).await;
        }
        if published?.duplicate {
            drop(waiting);
            return Box::pin(self.wait(job.id, timeout)).await;
        }
        match tokio::time::timeout(timeout, waiting.reply()).await {
            Ok(Some(reply)) => Box::pin(self.resolve_reply(reply)).await,
            Ok(None) => Err(ClientError::InboxClosed { job_id: job.id }),
            Err(_) => Err(ClientError::Timeout {
                job_id: job.id,
                timeout,
            }),
        }
    }

    /// The NATS connection under this client.
    pub fn nats(&self) -> async_nats::Client {
        self.js.client()
    }

    /// Answers a question the upstream of a job asked ([`Event::Input`], its `answerTo`); the
    /// job's events and reply keep going where they went.
    pub async fn answer(&self, answer_to: &str, answer: &InputAnswer) -> Result<(), ClientError> {
        let not_asking = || ClientError::NotAsking {
            job_id: answer.job_id,
            question: answer.id.clone(),
        };
        let body = serde_json::to_vec(answer).map_err(|e| ClientError::Publish {
            job_id: answer.job_id,
            subject: answer_to.to_string(),
            source: e.into(),
        })?;
        let nats = self.js.client();
        match tokio::time::timeout(
            Duration::from_secs(5),
            nats.request(answer_to.to_string(), body.into()),
        )
        .await
        {
            // The worker took it, unless it said otherwise (an answer to no question of it).
            Ok(Ok(ack)) => match serde_json::from_slice::<mcpq_schemas::InputAck>(&ack.payload) {
                Ok(mcpq_schemas::InputAck { ok: false, .. }) => Err(not_asking()),
                _ => Ok(()),
            },
            Ok(Err(_)) | Err(_) => Err(not_asking()),
        }
    }

    /// Answers a question, taking over the job from here: its later events go to `events`, its
    /// reply comes back from this call (waited for at most `timeout`). A 2026-07-28 MCP client
    /// retrying its request with the answer does this, on any dispatcher replica.
    pub async fn answer_and_wait(
        &self,
        answer_to: &str,
        mut answer: InputAnswer,
        timeout: Duration,
        events: Option<mpsc::Sender<Event>>,
    ) -> Result<Reply, ClientError> {
        let job_id = answer.job_id;
        let waiting = self.inbox.expect(job_id, events);
        answer.reply_to = Some(waiting.subject.clone());
        self.answer(answer_to, &answer).await?;
        match tokio::time::timeout(timeout, waiting.reply()).await {
            Ok(Some(reply)) => self.resolve_reply(reply).await,
            Ok(None) => Err(ClientError::InboxClosed { job_id }),
            Err(_) => Err(ClientError::Timeout { job_id, timeout }),
        }
    }

    /// Waits at most `timeout` for the job's record to say it ended, and answers from it.
    pub async fn wait(&self, job_id: Uuid, timeout: Duration) -> Result<Reply, ClientError> {
        self.wait_record(job_id, timeout)
            .await?
            .and_then(|record| record.to_reply())
            .ok_or(ClientError::Timeout { job_id, timeout })
    }

    /// Waits at most `timeout` for the job's record to say it ended; the record as it stands
    /// then (`None` if the job has none).
    pub async fn wait_record(
        &self,
        job_id: Uuid,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, ClientError> {
        let fail = |source: BoxError| ClientError::Record { job_id, source };
        let bucket = self.results().await?;
        let mut updates = bucket
            .watch_with_history(job_id.to_string())
            .await
            .map_err(|e| fail(e.into()))?;
        let mut last = None;
        let ended = async {
            while let Some(entry) = updates.next().await {
                let Ok(entry) = entry else { continue };
                if let Ok(record) = serde_json::from_slice::<JobRecord>(&entry.value) {
                    let done = record.status.is_terminal();
                    last = Some(record);
                    if done {
                        return true;
                    }
                }
            }
            false
        };
        let last = match tokio::time::timeout(timeout, ended).await {
            Ok(false) => {
                return Err(fail(
                    "the watch on its record ended (NATS connection lost?)".into(),
                ));
            }
            Ok(true) | Err(_) => last,
        };
        match last {
            Some(record) => self.resolve_record(record).await.map(Some),
            None => Ok(None),
        }
    }

    /// Cancels a job: a queued job is never started (its record says `cancelled` at once), a
    /// running one has its upstream request cancelled by its worker. Jobs that have ended are
    /// left as they are.
    pub async fn cancel(
        &self,
        job_id: Uuid,
        reason: Option<String>,
    ) -> Result<Cancel, ClientError> {
        let fail = |source: BoxError| ClientError::Record { job_id, source };
        let bucket = self.results().await?;
        let Some((record, revision)) = stored(&bucket, job_id).await? else {
            return Ok(Cancel::NotFound);
        };
        if record.status.is_terminal() {
            // Cancelled here before, its callback perhaps not stored (a dispatcher that
            // stopped in between): stored now, or dropped as the copy it is.
            if record.status == JobStatus::Cancelled && record.callback_url.is_some() {
                mcpq_schemas::done::announce(&self.js, &record, false)
                    .await
                    .map_err(|e| fail(e.into()))?;
            }
            return Ok(Cancel::AlreadyEnded(record));
        }
        self.request_cancel(job_id, &record.server, reason.clone())
            .await?;
        if !matches!(
            record.status,
            JobStatus::Scheduled | JobStatus::Queued | JobStatus::Retrying
        ) {
            return Ok(Cancel::Requested(record));
        }
        if record.status == JobStatus::Scheduled {
            // Its schedule goes: nothing fires. (One that fired meanwhile finds the record
            // cancelled, or its worker hears the request.)
            self.unschedule(&record.server, &job_id).await?;
        }
        // Waiting in the queue: it is cancelled now, unless a worker wrote the record meanwhile
        // (then the worker ends it, having heard the request).
        let mut cancelled = record.clone();
        cancelled.status = JobStatus::Cancelled;
        cancelled.updated_at_ms = mcpq_schemas::now_ms();
        cancelled.error = Some(JobError::new(
            ErrorKind::Cancelled,
            format!(
                "cancelled before it started{}",
                reason.map_or(String::new(), |r| format!(" ({r})"))
            ),
        ));
        let bytes = serde_json::to_vec(&cancelled).map_err(|e| fail(e.into()))?;
        match bucket
            .update(job_id.to_string(), bytes.into(), revision)
            .await
        {
            Ok(_) => {
                // Not stored: the caller is told to try again (the record says cancelled; a
                // second DELETE stores the callback).
                mcpq_schemas::done::announce(&self.js, &cancelled, true)
                    .await
                    .map_err(|e| fail(e.into()))?;
                Ok(Cancel::Requested(cancelled))
            }
            Err(_) => Ok(Cancel::Requested(
                self.stored_record(job_id).await?.unwrap_or(record),
            )),
        }
    }

    /// Removes the JetStream schedule on `mcpq.sched.<server>.<id>` (a job for later, or a
    /// recurring schedule), if there is one. (A tick it fired already still runs.)
    pub async fn unschedule(&self, server: &str, id: &Uuid) -> Result<(), ClientError> {
        mcpq_schemas::nats::unschedule(&self.js, server, id)
            .await
            .map_err(|source| ClientError::Publish {
                job_id: *id,
                subject: mcpq_schemas::names::schedule_subject(server, id),
                source,
            })
    }

    /// Stores a cancellation request for a job of `server`, whatever its record says (a call
    /// in flight may have none yet). Workers hear it at once.
    pub async fn request_cancel(
        &self,
        job_id: Uuid,
        server: &str,
        reason: Option<String>,
    ) -> Result<(), ClientError> {
        let fail = |source: BoxError| ClientError::Record { job_id, source };
        let bucket = self.bucket(CANCELS_BUCKET).await?;
        let request = CancelRequest {
            v: ENVELOPE_VERSION,
            job_id,
            server: server.to_string(),
            at_ms: mcpq_schemas::now_ms(),
            reason,
        };
        let bytes = serde_json::to_vec(&request).map_err(|e| fail(e.into()))?;
        bucket
            .put(job_id.to_string(), bytes.into())
            .await
            .map_err(|e| fail(e.into()))?;
        Ok(())
    }

    /// Every record written from now on (all jobs): one watch for many jobs, as batches use.
    pub async fn watch_records(
        &self,
    ) -> Result<impl futures::Stream<Item = JobRecord> + Send + 'static, ClientError> {
        let bucket = self.results().await?;
        let watch = bucket.watch(">").await.map_err(ClientError::Records)?;
        let client = self.clone();
        Ok(watch.filter_map(move |entry| {
            let client = client.clone();
            async move {
                let entry = entry.ok()?;
                let record = serde_json::from_slice::<JobRecord>(&entry.value).ok()?;
                match client.resolve_record(record).await {
                    Ok(record) => Some(record),
                    Err(e) => {
                        tracing::warn!(error = %e, "a record's large result cannot be read");
                        None
                    }
                }
            }
        }))
    }

    /// The NATS connection's JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The results bucket (looked up per use: a pipeline's client may start before the bucket
    /// exists).
    async fn results(&self) -> Result<jetstream::kv::Store, ClientError> {
        self.bucket(RESULTS_BUCKET).await
    }

    /// A KV bucket of mcpq's. Looked up once
    /// and kept (a lookup is a JetStream request); a bucket that does not exist yet is looked
    /// up again next time.
    pub(crate) async fn bucket(&self, name: &'static str) -> Result<kv::Store, ClientError> {
        if let Some(bucket) = lock(&self.buckets).get(name) {
            return Ok(bucket.clone());
        }
        let bucket = self
            .js
            .get_key_value(name)
            .await
            .map_err(|source| ClientError::Bucket { name, source })?;
        lock(&self.buckets).insert(name, bucket.clone());
        Ok(bucket)
    }

    /// The JSON value at key `id` of bucket `name`, if there is one.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &'static str,
        id: Uuid,
    ) -> Result<Option<T>, ClientError> {
        self.read_json(name, &id.to_string(), |source| ClientError::Record {
            job_id: id,
            source,
        })
        .await
    }

    /// The JSON value at `key` of bucket `name`, if there is one; `fail` says what could not
    /// be read.
    pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &'static str,
        key: &str,
        fail: impl Fn(BoxError) -> ClientError,
    ) -> Result<Option<T>, ClientError> {
        let bucket = self.bucket(name).await?;
        match bucket.get(key).await.map_err(|e| fail(e.into()))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| fail(e.into())),
        }
    }

    /// The stored record of a job, if it has one yet, with a result kept in the Object Store
    /// read back into it.
    pub async fn record(&self, job_id: Uuid) -> Result<Option<JobRecord>, ClientError> {
        match self.stored_record(job_id).await? {
            Some(record) => self.resolve_record(record).await.map(Some),
            None => Ok(None),
        }
    }

    /// The record as stored: a large result stays a `resultRef`. Enough for its status or
    /// owner, without reading the result.
    pub async fn stored_record(&self, job_id: Uuid) -> Result<Option<JobRecord>, ClientError> {
        self.get_json(RESULTS_BUCKET, job_id).await
    }

    /// A record whose result was too large for a message, with the result read back from the
    /// Object Store (`resultRef` cleared); any other record as it is.
    pub async fn resolve_record(&self, mut record: JobRecord) -> Result<JobRecord, ClientError> {
        if let Some(blob) = record.result_ref.take() {
            record.result = Some(self.blob(record.job_id, &blob).await?);
        }
        Ok(record)
    }

    /// [`Client::resolve_record`] for a reply.
    pub async fn resolve_reply(&self, mut reply: Reply) -> Result<Reply, ClientError> {
        if let Some(blob) = reply.result_ref.take()
            && let Outcome::Ok { result } = &mut reply.outcome
        {
            *result = self.blob(reply.job_id, &blob).await?;
        }
        Ok(reply)
    }

    /// Reads object `blob` (a job's result) from the Object Store.
    async fn blob(&self, job_id: Uuid, blob: &BlobRef) -> Result<serde_json::Value, ClientError> {
        use tokio::io::AsyncReadExt;
        let fail = |source: BoxError| ClientError::Blob {
            job_id,
            name: blob.name.clone(),
            bucket: blob.bucket.clone(),
            source,
        };
        let store = self
            .js
            .get_object_store(&blob.bucket)
            .await
            .map_err(|e| fail(e.into()))?;
        let mut object = store.get(&blob.name).await.map_err(|e| fail(e.into()))?;
        let mut bytes = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| fail(e.into()))?;
        serde_json::from_slice(&bytes).map_err(|e| fail(e.into()))
    }
}
