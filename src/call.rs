//! `mcpq call SERVER TOOL [JSON-ARGS]`: what a pipeline does, from the shell — publish one
//! `tools/call` job to JetStream, wait on an inbox for the reply, print it as JSON.

use std::{process::ExitCode, time::Duration};

use mcpq_dispatcher::Client;
use mcpq_schemas::{
    Job, JsonObject, Lane, McpRequest, Outcome,
    config::{Config, DEFAULT_NATS_URL},
    nats::connect_with,
    now_ms,
};

use crate::{Common, EXIT_CONFIG};

/// One tool call from the command line: `mcpq call` and `mcpq submit` share it.
#[derive(clap::Args)]
pub struct ToolCall {
    #[command(flatten)]
    common: Common,
    /// The server, as named in the config.
    server: String,
    /// The tool, under the upstream's own name.
    tool: String,
    /// The tool's arguments as a JSON object.
    arguments: Option<String>,
    /// Priority lane: high, normal or low.
    #[arg(long, default_value = "normal", value_parser = parse_lane)]
    lane: Lane,
    /// Idempotency key: calls with the same key (per server) are one job, run once.
    #[arg(long, value_parser = parse_key)]
    idempotency_key: Option<String>,
}

impl ToolCall {
    /// A client on the NATS server the arguments name, and the call as a job with no deadline.
    pub async fn prepare(&self, name: &str) -> Result<(Client, Job), ExitCode> {
        let arguments = parse_arguments(self.arguments.as_deref())?;
        let (client, _) = connect_client(&self.common, &[&self.server], name).await?;
        let mut job = Job::new(&self.server, McpRequest::call_tool(&self.tool, arguments));
        job.lane = self.lane;
        if let Some(key) = &self.idempotency_key {
            job = job.with_idempotency_key(key);
        }
        Ok((client, job))
    }
}

#[derive(clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    call: ToolCall,
    /// How long to wait for the reply.
    #[arg(long, default_value = "60s", value_parser = crate::duration)]
    timeout: Duration,
}

/// An idempotency key as `--idempotency-key` takes it: printable, at most 256 bytes.
fn parse_key(text: &str) -> Result<String, mcpq_schemas::check::Invalid> {
    mcpq_schemas::check::idempotency_key("--idempotency-key", text).map(|()| text.to_string())
}

pub fn parse_lane(text: &str) -> Result<Lane, String> {
    serde_json::from_value(serde_json::Value::String(text.into()))
        .map_err(|_| format!("{text:?} is not a lane (high, normal or low)"))
}

/// A tool's arguments from the command line: a JSON object, or nothing.
pub fn parse_arguments(text: Option<&str>) -> Result<Option<JsonObject>, ExitCode> {
    match text.map(serde_json::from_str::<serde_json::Value>) {
        None => Ok(None),
        Some(Ok(serde_json::Value::Object(map))) => Ok(Some(map)),
        Some(Ok(other)) => {
            eprintln!("mcpq: arguments must be a JSON object, got {other}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
        Some(Err(e)) => {
            eprintln!(
                "mcpq: arguments are not JSON: {e} (write them like '{{\"timezone\": \"UTC\"}}')"
            );
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// A client on the NATS server that `common` names, and the config if there is one. The config
/// is optional: a pipeline may only know the NATS URL. When there is one, `servers` it does not
/// name are refused rather than queued for workers that never come.
pub async fn connect_client(
    common: &Common,
    servers: &[&str],
    name: &str,
) -> Result<(Client, Option<Config>), ExitCode> {
    let config = if common.config.exists() {
        match Config::load(&common.config) {
            Ok(config) => Some(config),
            Err(errors) => {
                eprintln!(
                    "mcpq: {} is not a valid config:\n{errors}",
                    common.config.display()
                );
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        }
    } else {
        None
    };
    if let Some(config) = &config {
        for server in servers {
            if config.server(server).is_none() {
                eprintln!(
                    "mcpq: unknown server {server:?} (configured in {}: {})",
                    common.config.display(),
                    config.server_names().join(", ")
                );
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        }
    }
    let url = match (&common.nats, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(config)) => config.nats.url_or_default().to_string(),
        (None, None) => DEFAULT_NATS_URL.to_string(),
    };
    let credentials = config
        .as_ref()
        .map(|c| c.nats.credentials.clone())
        .unwrap_or_default();
    let nats = connect_with(&url, name, &credentials).await.map_err(|e| {
        eprintln!("mcpq: {e}");
        ExitCode::FAILURE
    })?;
    let client = Client::new(nats).await.map_err(|e| {
        eprintln!("mcpq: {e}");
        ExitCode::FAILURE
    })?;
    Ok((client, config))
}

pub async fn run(args: CallArgs) -> ExitCode {
    let (client, mut job) = match args.call.prepare("mcpq-call").await {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
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
