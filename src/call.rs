//! `mcpq call SERVER TOOL [JSON-ARGS]`: what a pipeline does, from the shell — publish one
//! `tools/call` job to JetStream, wait on an inbox for the reply, print it as JSON.

use std::{process::ExitCode, time::Duration};

use mcpq_dispatcher::Client;
use mcpq_schemas::{
    Job, Lane, McpRequest, Outcome,
    config::{Config, DEFAULT_NATS_URL},
    nats::connect,
    now_ms,
};

use crate::{Common, EXIT_CONFIG};

#[derive(clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    common: Common,
    /// The server, as named in the config.
    server: String,
    /// The tool, under the upstream's own name.
    tool: String,
    /// The tool's arguments as a JSON object.
    arguments: Option<String>,
    /// How long to wait for the reply.
    #[arg(long, default_value = "60s", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    timeout: Duration,
    /// Priority lane: high, normal or low.
    #[arg(long, default_value = "normal", value_parser = parse_lane)]
    lane: Lane,
    /// Idempotency key: a second call with the same key inside the duplicate window is dropped.
    #[arg(long)]
    idempotency_key: Option<String>,
}

fn parse_lane(text: &str) -> Result<Lane, String> {
    serde_json::from_value(serde_json::Value::String(text.into()))
        .map_err(|_| format!("{text:?} is not a lane (high, normal or low)"))
}

pub async fn run(args: CallArgs) -> ExitCode {
    let arguments = match args
        .arguments
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        None => None,
        Some(Ok(serde_json::Value::Object(map))) => Some(map),
        Some(Ok(other)) => {
            eprintln!("mcpq: arguments must be a JSON object, got {other}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Some(Err(e)) => {
            eprintln!(
                "mcpq: arguments are not JSON: {e} (write them like '{{\"timezone\": \"UTC\"}}')"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The config is optional here: a pipeline may only know the NATS URL. When there is one,
    // a server it does not name is refused rather than queued for workers that never come.
    let config = if args.common.config.exists() {
        match Config::load(&args.common.config) {
            Ok(config) => Some(config),
            Err(errors) => {
                eprintln!(
                    "mcpq: {} is not a valid config:\n{errors}",
                    args.common.config.display()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    } else {
        None
    };
    if let Some(config) = &config
        && config.server(&args.server).is_none()
    {
        eprintln!(
            "mcpq: unknown server {:?} (configured in {}: {})",
            args.server,
            args.common.config.display(),
            config.server_names().join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let url = match (&args.common.nats, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(config)) => config.nats.url_or_default().to_string(),
        (None, None) => DEFAULT_NATS_URL.to_string(),
    };
    let nats = match connect(&url, "mcpq-call").await {
        Ok(nats) => nats,
        Err(e) => {
            eprintln!("mcpq: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = match Client::new(nats).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("mcpq: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut job = Job::new(&args.server, McpRequest::call_tool(&args.tool, arguments));
    job.lane = args.lane;
    if let Some(key) = args.idempotency_key {
        job = job.with_idempotency_key(key);
    }
    job.deadline_ms = Some(now_ms() + args.timeout.as_millis() as u64);
    match client.call(&job, args.timeout).await {
        Ok(reply) => match reply.outcome {
            Outcome::Ok { result } => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Outcome::Error { error } => {
                eprintln!("mcpq: job {} failed: {error}", job.id);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&error).unwrap_or_default()
                );
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("mcpq: {e}");
            ExitCode::FAILURE
        }
    }
}
