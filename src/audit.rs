//! `mcpq audit tail`: the audit stream for operators — one line per call, oldest first, from
//! `--since` ago (the last `--last` of them), then new ones as they come with `--follow`.

use std::{collections::VecDeque, process::ExitCode, time::Duration};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use clap::Subcommand;
use futures::StreamExt;
use mcpq_schemas::{
    audit::{AUDIT_VERSION, AuditBatch, AuditRecord},
    config::DEFAULT_NATS_URL,
    names::{AUDIT_STREAM, AUDIT_SUBJECTS, audit_subject},
    nats::connect,
};

#[derive(clap::Args)]
pub struct AuditArgs {
    /// NATS URL.
    #[arg(long, env = "MCPQ_NATS_URL", default_value = DEFAULT_NATS_URL, global = true)]
    nats: String,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// The latest calls, one per line: time, server/name, principal, outcome, latency, job id,
    /// trace id.
    Tail {
        /// Only this server's calls.
        #[arg(long)]
        server: Option<String>,
        /// Only this principal's calls ("-" for unauthenticated ones).
        #[arg(long)]
        principal: Option<String>,
        /// Look back this far, e.g. 1h (default 24h).
        #[arg(long, default_value = "24h", value_parser = crate::duration)]
        since: Duration,
        /// Print at most the last N of those (0: all).
        #[arg(long, default_value_t = 50)]
        last: usize,
        /// Keep printing new calls as they end, until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line instead.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: AuditArgs) -> ExitCode {
    let AuditCommand::Tail {
        server,
        principal,
        since,
        last,
        follow,
        json,
    } = args.command;
    let nats = match connect(&args.nats, "mcpq-audit").await {
        Ok(nats) => nats,
        Err(e) => return crate::run::fail(e),
    };
    let js = async_nats::jetstream::new(nats);
    let stream = match js.get_stream(AUDIT_STREAM).await {
        Ok(stream) => stream,
        Err(e) => {
            return crate::run::fail(format!(
                "no audit stream {AUDIT_STREAM} at {}: {e} (it is created when a dispatcher or worker starts)",
                mcpq_schemas::redact::url(&args.nats)
            ));
        }
    };
    let start = time::OffsetDateTime::now_utc() - since;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: server
                .as_deref()
                .map_or(AUDIT_SUBJECTS.to_string(), audit_subject),
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await;
    let mut consumer = match consumer {
        Ok(consumer) => consumer,
        Err(e) => return crate::run::fail(format!("cannot read {AUDIT_STREAM}: {e}")),
    };
    let wanted = |record: &AuditRecord| match principal.as_deref() {
        None => true,
        Some("-") => record.principal.is_none(),
        Some(p) => record.principal.as_deref() == Some(p),
    };
    let print = |record: &AuditRecord| {
        if json {
            println!("{}", serde_json::to_string(record).unwrap_or_default());
        } else {
            println!("{}", line(record));
        }
    };
    let mut remaining = match consumer.info().await {
        Ok(info) => info.num_pending,
        Err(e) => return crate::run::fail(format!("cannot read {AUDIT_STREAM}: {e}")),
    };
    if remaining == 0 && !follow {
        return ExitCode::SUCCESS;
    }
    let mut messages = match consumer.messages().await {
        Ok(messages) => messages,
        Err(e) => return crate::run::fail(format!("cannot read {AUDIT_STREAM}: {e}")),
    };
    // What is there already: the last `last` of it.
    let mut backlog = VecDeque::new();
    while remaining > 0 {
        let Some(Ok(message)) = messages.next().await else {
            break;
        };
        remaining -= 1;
        for record in records_of(&message.payload).into_iter().filter(wanted) {
            backlog.push_back(record);
            if last > 0 && backlog.len() > last {
                backlog.pop_front();
            }
        }
    }
    backlog.iter().for_each(print);
    if !follow {
        return ExitCode::SUCCESS;
    }
    let stop = crate::run::on_signal();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return ExitCode::SUCCESS,
            next = messages.next() => next,
        };
        match next {
            Some(Ok(message)) => {
                records_of(&message.payload)
                    .iter()
                    .filter(|r| wanted(r))
                    .for_each(print);
            }
            Some(Err(e)) => tracing::debug!(error = %e, "audit stream hiccup"),
            None => return crate::run::fail("the audit stream ended"),
        }
    }
}

/// The calls in one message of the stream: a batch (version 2), or one record of version 1.
fn records_of(payload: &[u8]) -> Vec<AuditRecord> {
    if let Ok(batch) = serde_json::from_slice::<AuditBatch>(payload)
        && batch.v == AUDIT_VERSION
    {
        return batch.records().collect();
    }
    serde_json::from_slice::<LegacyRecord>(payload)
        .map(|r| vec![r.into()])
        .unwrap_or_default()
}

/// What version 1 of the stream stored: one record per message.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyRecord {
    job_id: uuid::Uuid,
    server: String,
    method: String,
    name: Option<String>,
    principal: Option<String>,
    argument_bytes: u64,
    argument_sha256: String,
    outcome: String,
    error_kind: Option<String>,
    attempts: u32,
    latency_ms: u64,
    trace_id: Option<String>,
    worker_id: String,
    submitted_at_ms: u64,
    ended_at_ms: u64,
}

impl From<LegacyRecord> for AuditRecord {
    fn from(r: LegacyRecord) -> AuditRecord {
        AuditRecord {
            job_id: r.job_id,
            server: r.server,
            method: r.method,
            name: r.name,
            principal: r.principal,
            argument_bytes: r.argument_bytes,
            argument_digest: r.argument_sha256,
            outcome: r.outcome,
            error_kind: r.error_kind,
            attempts: r.attempts,
            latency_ms: r.latency_ms,
            trace_id: r.trace_id.unwrap_or_default(),
            worker_id: r.worker_id,
            submitted_at_ms: r.submitted_at_ms,
            ended_at_ms: r.ended_at_ms,
        }
    }
}

/// One record for people.
fn line(r: &AuditRecord) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.ended_at_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| r.ended_at_ms.to_string());
    format!(
        "{at}  {}/{}  principal={}  {}{}  {} ms  attempts={}  args={}B digest={}  job={}  trace={}",
        r.server,
        r.name.as_deref().unwrap_or(&r.method),
        r.principal.as_deref().unwrap_or("-"),
        r.outcome,
        r.error_kind
            .as_deref()
            .map_or(String::new(), |k| format!(" ({k})")),
        r.latency_ms,
        r.attempts,
        r.argument_bytes,
        &r.argument_digest[..r.argument_digest.len().min(12)],
        r.job_id,
        r.trace_id,
    )
}
