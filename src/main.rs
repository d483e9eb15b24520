//! `mcpq`: one CLI over the dispatcher and worker libraries. It parses arguments, loads the
//! config and hands over; the logic lives in the libraries.

mod audit;
mod auth_cmd;
mod batch;
mod bench;
mod call;
mod config_cmd;
mod deploy;
mod dlq;
mod jobs;
mod local_nats;
mod run;
mod schedule;
mod status;
mod telemetry;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Exit code for a bad config or bad arguments (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "mcpq",
    version,
    about = "A queue-backed dispatcher for MCP tool calls on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The one parser of every duration flag: `30s`, `500ms`, `1h 30m`.
pub fn duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (like 30s, 500ms or 1h)"))
}

/// Where the config and NATS are; shared by most commands.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// The config file.
    #[arg(
        long,
        short,
        env = "MCPQ_CONFIG",
        default_value = "mcp-infrastructure.yaml"
    )]
    pub config: PathBuf,
    /// NATS URL; overrides the config's nats.url.
    #[arg(long, env = "MCPQ_NATS_URL")]
    pub nats: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Everything on one machine: a local nats-server (unless the config names one), the
    /// dispatcher and workers for every server, in one process.
    Up(run::UpArgs),
    /// The dispatcher: MCP endpoints at /mcp and /servers/<name>/mcp.
    Dispatcher(run::DispatcherArgs),
    /// A worker process for some or all servers.
    Worker(run::WorkerArgs),
    /// Call a tool through the queue, NATS-native, and print its result as JSON.
    Call(call::CallArgs),
    /// Submit a call for later, NATS-native, and print its job id.
    Submit(jobs::SubmitArgs),
    /// Jobs by id: get, wait, cancel.
    Job(jobs::JobArgs),
    /// Recurring calls: add, list, show, pause, resume, rm.
    Schedule(schedule::ScheduleArgs),
    /// Batches of calls from a JSON-lines file.
    Batch(batch::BatchArgs),
    /// Load-test a running mcpq: jobs published to JetStream, replies awaited on an inbox.
    Bench(bench::BenchArgs),
    /// Dead letters: list, show, replay, purge.
    Dlq(dlq::DlqArgs),
    /// Every server at a glance: queues, throughput, latency, errors, circuit, health,
    /// workers, dead letters; refreshed in place.
    Status(status::StatusArgs),
    /// The audit stream: one record per call.
    Audit(audit::AuditArgs),
    /// Config file commands.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Kubernetes manifests from the config.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// API keys for the config's auth: section.
    #[command(subcommand)]
    Auth(auth_cmd::AuthCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The long-running commands export spans when their config asks (a bad config is reported
    // by the command itself, after this).
    let telemetry = match &cli.command {
        Command::Up(args) => Some(args.config()),
        Command::Dispatcher(args) => Some(args.config()),
        Command::Worker(args) => Some(args.config()),
        _ => None,
    }
    .and_then(|path| mcpq_schemas::config::Config::load(path).ok())
    .map(|config| config.telemetry);
    let export = telemetry::init_tracing(telemetry.as_ref());
    let code = run(cli.command);
    export.shutdown();
    code
}

fn run(command: Command) -> ExitCode {
    let command = match command {
        Command::Config(command) => return config_cmd::run(command),
        Command::Auth(command) => return auth_cmd::run(command),
        Command::Deploy(command) => return deploy::run(command),
        command => command,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mcpq: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match command {
            Command::Up(args) => run::up(args).await,
            Command::Dispatcher(args) => run::dispatcher(args).await,
            Command::Worker(args) => run::worker(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Submit(args) => jobs::submit(args).await,
            Command::Job(args) => jobs::run(args).await,
            Command::Batch(args) => batch::run(args).await,
            Command::Schedule(args) => schedule::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Audit(args) => audit::run(args).await,

            Command::Config(_) | Command::Auth(_) | Command::Deploy(_) => {
                unreachable!("handled above")
            }
        }
    })
}
