//! `mcpq schedule add|list|show|pause|resume|rm`: recurring tool calls, NATS-native (the same
//! schedules `/v1/schedules` keeps).

use std::process::ExitCode;

use mcpq_dispatcher::schedules::plan;
use mcpq_schemas::{Lane, schedule::ScheduleSpec};
use uuid::Uuid;

use crate::{
    Common, EXIT_CONFIG,
    call::{connect_client, parse_arguments, parse_lane},
};

#[derive(clap::Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: ScheduleCommand,
}

#[derive(clap::Subcommand)]
enum ScheduleCommand {
    /// Call a tool on a schedule; prints the schedule's id and its next fire times.
    Add {
        /// The server, as named in the config.
        server: String,
        /// The tool, under the upstream's own name.
        tool: String,
        /// The tool's arguments as a JSON object.
        arguments: Option<String>,
        /// Six fields, seconds first ("0 30 9 * * MON-FRI"), or @hourly, @daily...
        #[arg(long, required_unless_present = "every", conflicts_with = "every")]
        cron: Option<String>,
        /// Every so long (at least 1s): 30s, 5m, 1h.
        #[arg(long)]
        every: Option<String>,
        /// The IANA time zone a cron expression is read in (UTC by default).
        #[arg(long)]
        time_zone: Option<String>,
        /// Priority lane of each tick: high, normal or low.
        #[arg(long, default_value = "normal", value_parser = parse_lane)]
        lane: Lane,
        /// The tool may not run twice: a failed tick is not retried.
        #[arg(long)]
        not_idempotent: bool,
    },
    /// Print every schedule as JSON lines.
    List,
    /// Print one schedule with its next fire times and latest ticks.
    Show { id: String },
    /// Stop firing until resumed (ticks meanwhile are skipped).
    Pause { id: String },
    /// Fire again.
    Resume { id: String },
    /// Delete the schedule.
    Rm { id: String },
}

pub async fn run(args: ScheduleArgs) -> ExitCode {
    let id = match &args.command {
        ScheduleCommand::Show { id }
        | ScheduleCommand::Pause { id }
        | ScheduleCommand::Resume { id }
        | ScheduleCommand::Rm { id } => match id.parse::<Uuid>() {
            Ok(id) => Some(id),
            Err(_) => {
                eprintln!(
                    "mcpq: {id:?} is not a schedule id (ids are UUIDs, as `mcpq schedule add` prints them)"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        _ => None,
    };
    let servers: Vec<&str> = match &args.command {
        ScheduleCommand::Add { server, .. } => vec![server.as_str()],
        _ => Vec::new(),
    };
    let client = match connect_client(&args.common, &servers, "mcpq-schedule").await {
        Ok((client, _)) => client,
        Err(code) => return code,
    };
    // Ticks run only under the dispatchers' seal: the template is sealed as theirs are.
    let signing = match std::env::var("MCPQ_SIGNING_KEY") {
        Ok(secret) => Some(mcpq_schemas::seal::SigningKey::from_secret(&secret)),
        Err(_) => mcpq_schemas::nats::stored_signing_key(client.jetstream())
            .await
            .ok()
            .flatten(),
    };
    let client = match signing {
        Some(signing) => client.signing_with(signing),
        None => client,
    };
    let missing = |id: Uuid| {
        eprintln!("mcpq: no schedule {id}");
        ExitCode::FAILURE
    };
    let result: Result<ExitCode, Box<dyn std::error::Error>> = async {
        Ok(match args.command {
            ScheduleCommand::Add {
                server,
                tool,
                arguments,
                cron,
                every,
                time_zone,
                lane,
                not_idempotent,
            } => {
                let arguments = match parse_arguments(arguments.as_deref()) {
                    Ok(arguments) => arguments,
                    Err(code) => return Ok(code),
                };
                let spec = ScheduleSpec {
                    server,
                    tool,
                    arguments,
                    cron,
                    every,
                    time_zone,
                    lane: Some(lane),
                    idempotent: Some(!not_idempotent),
                    callback_url: None,
                };
                let schedule = match plan(&spec, lane, None, mcpq_schemas::now_ms()) {
                    Ok(schedule) => schedule,
                    Err(e) => {
                        eprintln!("mcpq: --{}: {}", flag(&e.field), e.reason);
                        return Ok(ExitCode::from(EXIT_CONFIG));
                    }
                };
                client.create_schedule(&schedule).await?;
                print(&client.schedule_view(schedule).await?);
                ExitCode::SUCCESS
            }
            ScheduleCommand::List => {
                for schedule in client.schedules().await? {
                    println!("{}", serde_json::to_string(&schedule).unwrap_or_default());
                }
                ExitCode::SUCCESS
            }
            ScheduleCommand::Show { .. }
            | ScheduleCommand::Pause { .. }
            | ScheduleCommand::Resume { .. } => {
                let id = id.unwrap_or_default();
                let schedule = match args.command {
                    ScheduleCommand::Pause { .. } => client.set_paused(id, true).await?,
                    ScheduleCommand::Resume { .. } => client.set_paused(id, false).await?,
                    _ => client.schedule(id).await?,
                };
                match schedule {
                    Some(schedule) => {
                        print(&client.schedule_view(schedule).await?);
                        ExitCode::SUCCESS
                    }
                    None => missing(id),
                }
            }
            ScheduleCommand::Rm { .. } => {
                let id = id.unwrap_or_default();
                match client.schedule(id).await? {
                    Some(schedule) => {
                        client.delete_schedule(&schedule).await?;
                        eprintln!("mcpq: schedule {id} deleted");
                        ExitCode::SUCCESS
                    }
                    None => missing(id),
                }
            }
        })
    }
    .await;
    result.unwrap_or_else(|e| {
        eprintln!("mcpq: {e}");
        ExitCode::FAILURE
    })
}

/// The flag a field of a schedule is given with.
fn flag(field: &str) -> &'static str {
    match field {
        "every" => "every",
        "timeZone" => "time-zone",
        _ => "cron",
    }
}

fn print(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
