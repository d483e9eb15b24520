//! `mcpq dlq list|show|replay|purge`: the dead-letter stream for operators.

use std::{process::ExitCode, time::Duration};

use clap::Subcommand;
use mcpq_dispatcher::{
    Client,
    dead_letters::{DeadLetters, Filter, Stored},
};
use mcpq_schemas::{config::DEFAULT_NATS_URL, nats::connect, now_ms};

#[derive(clap::Args)]
pub struct DlqArgs {
    /// NATS URL.
    #[arg(long, env = "MCPQ_NATS_URL", default_value = DEFAULT_NATS_URL, global = true)]
    nats: String,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(clap::Args, Clone)]
struct FilterArgs {
    /// Only this server's dead letters.
    #[arg(long)]
    server: Option<String>,
    /// Only calls of this tool.
    #[arg(long)]
    tool: Option<String>,
    /// Only this error kind (timeout, upstream, upstream_unavailable, malformed_job, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Only letters that died within this long, e.g. 1h.
    #[arg(long, value_parser = crate::duration)]
    since: Option<Duration>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            server: self.server.clone(),
            tool: self.tool.clone(),
            reason: self.reason.clone(),
            since_ms: self
                .since
                .map(|d| now_ms().saturating_sub(d.as_millis() as u64)),
        }
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// One line per dead letter: sequence, time, server, tool, job id, attempts, reason.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line instead.
        #[arg(long)]
        json: bool,
    },
    /// A dead letter in full, as JSON.
    Show { seq: u64 },
    /// Publish the jobs of these dead letters again (fresh attempt count, no deadline).
    Replay {
        /// Sequence numbers from `mcpq dlq list`.
        seqs: Vec<u64>,
        /// Every dead letter matching the filters instead.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Delete dead letters.
    Purge {
        seqs: Vec<u64>,
        /// Every dead letter matching the filters instead.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

pub async fn run(args: DlqArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mcpq: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(args: DlqArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let nats = connect(&args.nats, "mcpq-dlq").await?;
    let dlq = DeadLetters::open(async_nats::jetstream::new(nats.clone())).await?;
    match args.command {
        DlqCommand::List { filter, json } => {
            for stored in dlq.list(&filter.filter()).await? {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"seq": stored.seq, "letter": stored.letter})
                    );
                } else {
                    println!("{}", line(&stored));
                }
            }
        }
        DlqCommand::Show { seq } => {
            let stored = dlq.get(seq).await?;
            println!("{}", serde_json::to_string_pretty(&stored.letter)?);
        }
        DlqCommand::Replay { seqs, all, filter } => {
            let chosen = choose(&dlq, seqs, all, &filter).await?;
            // A replayed job keeps its caller only under the dispatchers' seal.
            let signing = match std::env::var("MCPQ_SIGNING_KEY") {
                Ok(secret) => Some(mcpq_schemas::seal::SigningKey::from_secret(&secret)),
                Err(_) => {
                    mcpq_schemas::nats::stored_signing_key(&async_nats::jetstream::new(
                        nats.clone(),
                    ))
                    .await?
                }
            };
            let mut client = Client::new(nats).await?;
            if let Some(signing) = signing {
                client = client.signing_with(signing);
            }
            let sealing = client.seals();
            for stored in chosen {
                if let Some(principal) = stored
                    .letter
                    .job
                    .as_ref()
                    .and_then(|j| j.principal.as_deref())
                    && !sealing
                {
                    eprintln!(
                        "mcpq: dead letter {} is {principal}'s job: replaying it keeps its caller only under the dispatchers' signing key, which this connection cannot read \
                         (set MCPQ_SIGNING_KEY to the config's nats.signingKey, or connect as a NATS user that may read KV mcpq_keys); skipped",
                        stored.seq
                    );
                    continue;
                }
                let job = dlq.replay(&stored, &client).await?;
                println!(
                    "replayed dead letter {} as job {} (server {})",
                    stored.seq, job.id, job.server
                );
            }
        }
        DlqCommand::Purge { seqs, all, filter } => {
            let chosen = choose(&dlq, seqs, all, &filter).await?;
            let mut purged = 0;
            for stored in chosen {
                purged += u32::from(dlq.delete(stored.seq).await?);
            }
            println!("purged {purged} dead letter(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The letters named by sequence, or with `--all` every letter matching the filter.
async fn choose(
    dlq: &DeadLetters,
    seqs: Vec<u64>,
    all: bool,
    filter: &FilterArgs,
) -> Result<Vec<Stored>, Box<dyn std::error::Error>> {
    if all {
        return Ok(dlq.list(&filter.filter()).await?);
    }
    if seqs.is_empty() {
        return Err(
            "name dead letters by sequence (see `mcpq dlq list`), or pass --all with filters"
                .into(),
        );
    }
    let mut chosen = Vec::new();
    for seq in seqs {
        chosen.push(dlq.get(seq).await?);
    }
    Ok(chosen)
}

fn line(stored: &Stored) -> String {
    let l = &stored.letter;
    let tool = l
        .job
        .as_ref()
        .and_then(|j| j.request.tool_name())
        .unwrap_or("-");
    let job = l.job_id.map_or("-".to_string(), |id| id.to_string());
    let age = now_ms().saturating_sub(l.dead_at_ms) / 1000;
    format!(
        "{:>6}  {:>6}s ago  {:<16} {:<24} {}  attempts={}  {}: {}",
        stored.seq,
        age,
        l.server,
        tool,
        job,
        l.attempts.len(),
        l.reason.kind.as_str(),
        l.reason.message
    )
}
