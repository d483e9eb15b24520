//! `mcpq batch run calls.jsonl -o results.jsonl`: many calls over NATS with bounded in-flight,
//! a progress bar, one result line per call in input order, and safe re-runs — every call has
//! an idempotency key (its own, or the run id and its line), so a call whose key already has a
//! result is answered from it and never executed again.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mcpq_dispatcher::{Client, ClientError};
use mcpq_schemas::{
    Job, JobRecord, JobStatus, Lane, api::JobSubmission, batch::BatchResultLine, job::idempotent_id,
};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{Common, EXIT_CONFIG, call::connect_client};
use mcpq_schemas::sync::lock;

#[derive(clap::Args)]
pub struct BatchArgs {
    #[command(subcommand)]
    command: BatchCommand,
}

#[derive(clap::Subcommand)]
enum BatchCommand {
    /// Run every call of a JSON-lines file ({"server", "tool", "arguments", ...} per line) and
    /// write one result line per call, in input order.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The calls, one JSON object per line.
    input: PathBuf,
    /// Where the results go, one JSON object per line in input order.
    #[arg(long, short)]
    output: PathBuf,
    /// Calls submitted and not yet ended, at most.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Names this run in the calls' idempotency keys. By default it is derived from the input's
    /// content, so running the same file again resumes it; give a new one to run it afresh.
    #[arg(long)]
    run_id: Option<String>,
}

pub async fn run(args: BatchArgs) -> ExitCode {
    let BatchCommand::Run(args) = args.command;
    let text = match std::fs::read_to_string(&args.input) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("mcpq: cannot read {}: {e}", args.input.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| idempotent_id("batch-file", &text).to_string());
    let mut submissions = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<JobSubmission>(line) {
            Ok(submission) => submissions.push(submission),
            Err(e) => {
                eprintln!(
                    "mcpq: {} line {}: not a call ({e}); expected {{\"server\": ..., \"tool\": ..., \"arguments\": {{...}}}}",
                    args.input.display(),
                    number + 1
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let servers: HashSet<&str> = submissions.iter().map(|s| s.server.as_str()).collect();
    let servers: Vec<&str> = servers.into_iter().collect();
    let (client, config) = match connect_client(&args.common, &servers, "mcpq-batch").await {
        Ok(connected) => connected,
        Err(code) => return code,
    };
    let mut jobs: Vec<Job> = Vec::with_capacity(submissions.len());
    for (index, mut submission) in submissions.into_iter().enumerate() {
        if submission.idempotency_key.is_none() {
            submission.idempotency_key = Some(format!("{run_id}:{index}"));
        }
        let lane = config
            .as_ref()
            .and_then(|c| c.server(&submission.server))
            .map_or(Lane::Normal, |s| s.lane);
        match submission.to_job(lane) {
            Ok(job) => jobs.push(job),
            Err(e) => {
                eprintln!("mcpq: {} call {}: {e}", args.input.display(), index + 1);
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    match execute(&client, jobs, &args).await {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcpq: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where each call's end is awaited, fed by one watch on all job records.
#[derive(Default)]
struct Ends {
    waiting: HashMap<Uuid, oneshot::Sender<JobRecord>>,
    retrying: HashSet<Uuid>,
}

async fn execute(client: &Client, jobs: Vec<Job>, args: &RunArgs) -> Result<String, BatchError> {
    let started = Instant::now();
    let total = jobs.len();
    let ends: Arc<Mutex<Ends>> = Arc::default();
    // One watch for the whole run, started before anything is submitted.
    let mut records = Box::pin(client.watch_records().await?);
    let watcher = tokio::spawn({
        let ends = ends.clone();
        async move {
            while let Some(record) = records.next().await {
                let mut ends = lock(&ends);
                if record.status == JobStatus::Retrying {
                    ends.retrying.insert(record.job_id);
                }
                if record.status.is_terminal() {
                    ends.retrying.remove(&record.job_id);
                    if let Some(to) = ends.waiting.remove(&record.job_id) {
                        let _ = to.send(record);
                    }
                }
            }
        }
    });
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} ended · {msg} · {per_sec} · ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut output = std::io::BufWriter::new(
        std::fs::File::create(&args.output)
            .map_err(|e| BatchError::Output(args.output.clone(), e))?,
    );
    let (mut failed, mut reused) = (0usize, 0usize);
    let mut results = futures::stream::iter(jobs.into_iter().enumerate())
        .map(|(index, job)| {
            let (client, ends) = (client.clone(), ends.clone());
            async move {
                let (to, end) = oneshot::channel();
                lock(&ends).waiting.insert(job.id, to);
                // Answered by an earlier run: not submitted again.
                if let Some(record) = client.record(job.id).await?
                    && record.status.is_terminal()
                {
                    lock(&ends).waiting.remove(&job.id);
                    return Ok::<_, BatchError>((index, job.id, record, true));
                }
                client.submit(&job).await?;
                let record = end.await.map_err(|_| BatchError::WatchEnded)?;
                Ok((index, job.id, record, false))
            }
        })
        .buffered(args.in_flight.max(1));
    while let Some(result) = results.next().await {
        let (index, id, record, earlier) = result?;
        if record.status != JobStatus::Completed {
            failed += 1;
        }
        if earlier {
            reused += 1;
        }
        let line = BatchResultLine::new(index, id, Some(&record));
        serde_json::to_writer(&mut output, &line)
            .map_err(|e| BatchError::Output(args.output.clone(), e.into()))?;
        output
            .write_all(b"\n")
            .map_err(|e| BatchError::Output(args.output.clone(), e))?;
        bar.inc(1);
        let retrying = lock(&ends).retrying.len();
        bar.set_message(format!("{failed} failed · {retrying} retrying"));
    }
    output
        .flush()
        .map_err(|e| BatchError::Output(args.output.clone(), e))?;
    bar.finish_and_clear();
    watcher.abort();
    let seconds = started.elapsed().as_secs_f64();
    Ok(format!(
        "{total} calls: {} completed, {failed} failed, {reused} answered by an earlier run; {seconds:.1} s ({:.0} calls/s); results in {}",
        total - failed,
        total as f64 / seconds.max(1e-9),
        args.output.display()
    ))
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write {0}: {1}")]
    Output(PathBuf, std::io::Error),
    #[error(
        "the watch on job records ended (NATS connection lost?); run the batch again to resume"
    )]
    WatchEnded,
}
