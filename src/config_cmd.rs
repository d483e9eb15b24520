//! `mcpq config check FILE`: load a config, print every error with its field path.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use mcpq_schemas::config::{Config, Transport};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file; prints each error with its field path and exits 64 if any.
    Check {
        /// The config file.
        file: PathBuf,
    },
    /// Print the JSON Schema of the config file (for editors).
    Schema,
}

pub fn run(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Check { file } => check(&file),
        ConfigCommand::Schema => {
            let schema = mcpq_schemas::json_schema::all()
                .into_iter()
                .find(|(name, _)| *name == "config.json")
                .map(|(_, schema)| mcpq_schemas::json_schema::render(&schema))
                .unwrap_or_default();
            print!("{schema}");
            ExitCode::SUCCESS
        }
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    let config = match load(file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    println!("{}: ok, {} server(s)", file.display(), config.servers.len());
    for server in &config.servers {
        let (kind, target) = match &server.transport {
            Transport::Http { endpoints, .. } => (
                "http",
                endpoints
                    .iter()
                    .map(|e| e.url.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Transport::Stdio { command, args, .. } => {
                ("stdio", format!("{command} {}", args.join(" ")))
            }
        };
        println!(
            "  {:<16} {kind:<5} {:<40} lane={} timeout={:?} concurrency={}",
            server.name,
            target.trim(),
            server.lane.as_str(),
            server.timeout,
            server.concurrency
        );
        let missing: Vec<_> = secrets(&server.transport)
            .filter(|name| std::env::var_os(name).is_none())
            .collect();
        if !missing.is_empty() {
            println!(
                "    note: not set in this environment: {}",
                missing.join(", ")
            );
        }
    }
    ExitCode::SUCCESS
}

fn secrets(transport: &Transport) -> Box<dyn Iterator<Item = String> + '_> {
    match transport {
        Transport::Http { headers, .. } => Box::new(
            headers
                .values()
                .flat_map(|s| s.env_names().map(str::to_string)),
        ),
        Transport::Stdio { env, .. } => {
            Box::new(env.values().flat_map(|s| s.env_names().map(str::to_string)))
        }
    }
}

/// Loads a config, printing its errors to stderr; the error is the exit code to use.
pub fn load(file: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(file).map_err(|errors| {
        eprintln!("mcpq: {} is not a valid config:", file.display());
        for error in &errors.0 {
            eprintln!("  {error}");
        }
        ExitCode::from(crate::EXIT_CONFIG)
    })
}
