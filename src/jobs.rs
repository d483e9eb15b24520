//! `mcpq submit` and `mcpq job get|wait|cancel`: calls for later, by job id, over NATS.

use std::{process::ExitCode, time::Duration};

use mcpq_dispatcher::Cancel;
use uuid::Uuid;

use crate::{
    Common, EXIT_CONFIG,
    call::{ToolCall, connect_client},
};

#[derive(clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    call: ToolCall,
    /// The job expires unless it starts within this long (counted from --at or --in).
    #[arg(long, value_parser = crate::duration)]
    timeout: Option<Duration>,
    /// Start no earlier than this time (RFC 3339, e.g. 2026-12-24T18:00:00Z); the job's record
    /// says `scheduled` until then.
    #[arg(long, conflicts_with = "in")]
    at: Option<String>,
    /// Start no earlier than this long from now (e.g. 90s, 2h).
    #[arg(long = "in", value_parser = crate::duration)]
    r#in: Option<Duration>,
}

/// Submits one job with no inbox and prints its id.
pub async fn submit(args: SubmitArgs) -> ExitCode {
    let (client, mut job) = match args.call.prepare("mcpq-submit").await {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    let now = mcpq_schemas::now_ms();
    let delay = args
        .r#in
        .map(|d| serde_json::Value::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    job.run_at_ms = match mcpq_schemas::check::run_at(now, args.at.as_deref(), delay.as_ref()) {
        Ok(at) => at,
        Err(e) => {
            let flag = if args.at.is_some() { "--at" } else { "--in" };
            eprintln!("mcpq: {flag}: {}", e.reason);
            return ExitCode::from(crate::EXIT_CONFIG);
        }
    };
    job.deadline_ms = args
        .timeout
        .map(|t| mcpq_schemas::check::deadline_after(job.run_at_ms.unwrap_or(now), t));
    match client.submit(&job).await {
        Ok(submitted) => {
            if submitted.duplicate {
                eprintln!("mcpq: a job with this idempotency key exists already");
            }
            println!("{}", job.id);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcpq: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
pub struct JobArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(clap::Subcommand)]
enum JobCommand {
    /// Print the job's record (status, attempts, progress, result or error) as JSON.
    Get { id: String },
    /// Wait for the job to end and print its record; exit 1 if it did not complete, 2 if it
    /// did not end in time.
    Wait {
        id: String,
        #[arg(long, default_value = "60s", value_parser = crate::duration)]
        timeout: Duration,
    },
    /// Cancel the job: a queued job never runs, a running one has its upstream call cancelled.
    Cancel { id: String },
}

pub async fn run(args: JobArgs) -> ExitCode {
    let id = match &args.command {
        JobCommand::Get { id } | JobCommand::Wait { id, .. } | JobCommand::Cancel { id } => id,
    };
    let Ok(id) = id.parse::<Uuid>() else {
        eprintln!("mcpq: {id:?} is not a job id (ids are UUIDs, as `mcpq submit` prints them)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let client = match connect_client(&args.common, &[], "mcpq-job").await {
        Ok((client, _)) => client,
        Err(code) => return code,
    };
    let print = |record: &mcpq_schemas::JobRecord| {
        println!(
            "{}",
            serde_json::to_string_pretty(record).unwrap_or_default()
        );
    };
    let missing = || {
        eprintln!("mcpq: no job {id} (never submitted for later, or its record expired)");
        ExitCode::FAILURE
    };
    let result = async {
        match args.command {
            JobCommand::Get { .. } => Ok(match client.record(id).await? {
                Some(record) => {
                    print(&record);
                    ExitCode::SUCCESS
                }
                None => missing(),
            }),
            JobCommand::Wait { timeout, .. } => Ok(match client.wait_record(id, timeout).await? {
                Some(record) => {
                    print(&record);
                    match record.status {
                        mcpq_schemas::JobStatus::Completed => ExitCode::SUCCESS,
                        status if status.is_terminal() => ExitCode::FAILURE,
                        _ => {
                            eprintln!("mcpq: job {id} has not ended within {timeout:?}");
                            ExitCode::from(2)
                        }
                    }
                }
                None => missing(),
            }),
            JobCommand::Cancel { .. } => Ok(
                match client
                    .cancel(id, Some("requested by mcpq job cancel".into()))
                    .await?
                {
                    Cancel::Requested(record) => {
                        print(&record);
                        ExitCode::SUCCESS
                    }
                    Cancel::AlreadyEnded(record) => {
                        eprintln!("mcpq: job {id} has already ended; nothing to cancel");
                        print(&record);
                        ExitCode::FAILURE
                    }
                    Cancel::NotFound => missing(),
                },
            ),
        }
    };
    match result.await {
        Ok(code) => code,
        Err(e) => {
            let e: mcpq_dispatcher::ClientError = e;
            eprintln!("mcpq: {e}");
            ExitCode::FAILURE
        }
    }
}
