//! `mcpq auth new-key PRINCIPAL`: a fresh API key, printed once, and the config lines that let
//! it in (only its SHA-256 goes in the file).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum AuthCommand {
    /// Print a new random API key for PRINCIPAL and the auth.apiKeys entry for the config.
    NewKey {
        /// Who the key is for; jobs it submits belong to this name.
        principal: String,
        /// What it may call, as server/name globs (repeat; default "*/*": everything).
        #[arg(long = "allow")]
        allow: Vec<String>,
    },
}

pub fn run(command: AuthCommand) -> ExitCode {
    match command {
        AuthCommand::NewKey { principal, allow } => {
            let (key, sha256) = match mcpq_dispatcher::auth::new_key() {
                Ok(made) => made,
                Err(e) => {
                    eprintln!("mcpq: cannot read random bytes from the system: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let allow = if allow.is_empty() {
                vec!["*/*".to_string()]
            } else {
                allow
            };
            let principal_json = serde_json::to_string(&principal).unwrap_or_default();
            let allow_json = serde_json::to_string(&allow).unwrap_or_default();
            eprintln!(
                "mcpq: the key for {principal_json} is on stdout; it is shown only now. Give it to the caller \
                 (Authorization: Bearer <key>) and add these lines to the config:\n\n\
                 auth:\n  apiKeys:\n    - principal: {principal_json}\n      sha256: \"{sha256}\"\n      allow: {allow_json}\n"
            );
            println!("{key}");
            ExitCode::SUCCESS
        }
    }
}
