//! The audit entries of the jobs this worker ends, gathered per server and published together
//! on `mcpq.audit.<server>` — one stored message per batch, not per call — every 200 ms, or
//! sooner when a batch fills. A worker that stops publishes what it holds; one killed loses the
//! entries of its last 200 ms (the jobs' records and results are kept; a job it had not
//! acknowledged runs again and is audited then).

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream;
use mcpq_schemas::{
    ErrorKind, Job, JobStatus,
    audit::{AUDIT_VERSION, AuditBatch, AuditEntry, digest},
    names::audit_subject,
    now_ms,
};
use tokio::sync::mpsc;

use super::observe::outcome;

/// How often gathered entries are published.
const EVERY: Duration = Duration::from_millis(200);
/// A batch is published at once when it reaches this many entries ...
const MOST_ENTRIES: usize = 1000;
/// ... or this many bytes, or a quarter of the server's `max_payload` if that is less.
const MOST_BYTES: usize = 256 * 1024;
/// Entries waiting for the publisher at most. Beyond it — NATS has not taken the audit for a
/// while — entries are dropped, counted (`mcpq_audit_dropped_total`) and logged: the calls
/// themselves are never held up for their audit.
const QUEUE: usize = 64 * 1024;
/// The longest tool, prompt or resource name, and principal, an entry keeps.
const MOST_NAME: usize = 512;

/// Where the attempts of every server hand their entries; cheap to clone.
#[derive(Clone)]
pub(crate) struct Audit {
    entries: mpsc::Sender<(String, AuditEntry)>,
}

impl Audit {
    /// Starts the publisher; it ends, having published everything, once every handle is dropped.
    pub(crate) fn start(
        js: jetstream::Context,
        worker_id: String,
    ) -> (Audit, tokio::task::JoinHandle<()>) {
        let (entries, received) = mpsc::channel(QUEUE);
        let publisher = tokio::spawn(publish(js, worker_id, received));
        (Audit { entries }, publisher)
    }

    /// Audits a job that ended.
    pub(crate) fn ended(
        &self,
        job: &Job,
        status: JobStatus,
        kind: Option<ErrorKind>,
        attempts: u32,
    ) {
        let entry = entry(job, status, kind, attempts);
        if self.entries.try_send((job.server.clone(), entry)).is_err() {
            metrics::counter!(mcpq_schemas::metrics::AUDIT_DROPPED, "server" => job.server.clone())
                .increment(1);
            tracing::warn!(job_id = %job.id, "the audit publisher is behind; entry dropped");
        }
    }
}

/// The audit entry of a job that ended.
fn entry(job: &Job, status: JobStatus, kind: Option<ErrorKind>, attempts: u32) -> AuditEntry {
    let ended_at_ms = now_ms();
    let params = job
        .request
        .params
        .as_ref()
        .map(|p| {
            let arguments = p.get("arguments").unwrap_or(&serde_json::Value::Null);
            if job.request.tool_name().is_some() {
                serde_json::to_vec(arguments)
            } else {
                serde_json::to_vec(p)
            }
            .unwrap_or_default()
        })
        .unwrap_or_default();
    let derived = mcpq_schemas::trace::TraceParent::for_job(&job.id).trace_id_hex();
    AuditEntry {
        job_id: job.id,
        method: job.request.method.clone(),
        name: name_of(job).map(|n| cut(n, MOST_NAME)),
        principal: job.principal.clone().map(|p| cut(p, MOST_NAME)),
        arg_bytes: params.len() as u64,
        arg_digest: digest(&params),
        outcome: outcome(status, kind).to_string(),
        error_kind: kind.map(|k| k.as_str().to_string()),
        attempts,
        latency_ms: ended_at_ms.saturating_sub(job.submitted_at_ms),
        trace_id: job
            .traceparent
            .as_deref()
            .and_then(mcpq_schemas::trace::trace_id_of)
            .filter(|id| *id != derived),
        ended_at_ms,
    }
}

/// `text` cut to at most `most` bytes, on a character boundary.
fn cut(mut text: String, most: usize) -> String {
    if text.len() > most {
        let mut end = most;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The tool, prompt or resource a request names.
fn name_of(job: &Job) -> Option<String> {
    let params = job.request.params.as_ref()?;
    ["name", "uri"]
        .iter()
        .find_map(|key| params.get(*key)?.as_str())
        .map(str::to_string)
}

/// One server's entries not yet published, and their size as JSON.
#[derive(Default)]
struct Pending {
    entries: Vec<AuditEntry>,
    bytes: usize,
}

async fn publish(
    js: jetstream::Context,
    worker_id: String,
    mut received: mpsc::Receiver<(String, AuditEntry)>,
) {
    let most_bytes = MOST_BYTES.min(js.client().server_info().max_payload / 4);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = received.recv() => match next {
                Some((server, entry)) => {
                    let batch = pending.entry(server.clone()).or_default();
                    batch.bytes += crate::json_len(&entry) + 1;
                    batch.entries.push(entry);
                    if batch.entries.len() >= MOST_ENTRIES || batch.bytes >= most_bytes {
                        let full = std::mem::take(batch);
                        send(&js, &worker_id, server, full.entries).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                for (server, batch) in pending.iter_mut() {
                    if !batch.entries.is_empty() {
                        let due = std::mem::take(batch);
                        send(&js, &worker_id, server.clone(), due.entries).await;
                    }
                }
            }
        }
    }
    for (server, batch) in pending {
        if !batch.entries.is_empty() {
            send(&js, &worker_id, server, batch.entries).await;
        }
    }
}

/// Publishes one batch, trying a few times over a few seconds; then gives up, saying so.
async fn send(js: &jetstream::Context, worker_id: &str, server: String, entries: Vec<AuditEntry>) {
    let count = entries.len();
    let batch = AuditBatch {
        v: AUDIT_VERSION,
        server,
        worker_id: worker_id.to_string(),
        entries,
    };
    let Ok(body) = serde_json::to_vec(&batch) else {
        return;
    };
    let subject = audit_subject(&batch.server);
    let mut pause = Duration::from_millis(100);
    for tried in 1..=5 {
        let acked = match js.publish(subject.clone(), body.clone().into()).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match acked {
            Ok(()) => return,
            Err(e) if tried == 5 => {
                tracing::error!(server = %batch.server, entries = count, error = %e, "cannot write audit entries; they are lost");
            }
            Err(e) => {
                tracing::warn!(server = %batch.server, error = %e, retry_in = ?pause, "cannot write audit entries; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}
