//! Upstreams that are child processes speaking MCP on stdin/stdout.

use std::{collections::BTreeMap, process::Stdio};

use mcpq_schemas::config::Secret;
use rmcp::transport::TokioChildProcess;

use super::UpstreamError;

#[derive(Clone)]
pub(super) struct StdioConnector {
    server: String,
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl StdioConnector {
    pub(super) fn new(
        server: &str,
        command: &str,
        args: &[String],
        env: &BTreeMap<String, Secret>,
    ) -> Result<Self, UpstreamError> {
        let env = env
            .iter()
            .map(|(name, secret)| {
                let value = secret.resolve().map_err(|source| UpstreamError::Secret {
                    server: server.to_string(),
                    source,
                })?;
                Ok((name.clone(), value))
            })
            .collect::<Result<_, _>>()?;
        Ok(StdioConnector {
            server: server.to_string(),
            command: command.to_string(),
            args: args.to_vec(),
            env,
        })
    }

    /// Starts the child process. Its stderr goes to the worker's stderr.
    pub(super) fn spawn(&self) -> Result<TokioChildProcess, UpstreamError> {
        let mut command = tokio::process::Command::new(&self.command);
        // Only what the config names, and what any program needs to start: the worker's own
        // environment holds other servers' tokens.
        command.env_clear();
        for name in INHERITED {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command.args(&self.args).envs(self.env.iter().cloned());
        // Its own process group: a Ctrl-C meant for the worker must not kill the upstream
        // while calls are still draining; the worker closes it last.
        command.process_group(0);
        let (child, _stderr) = TokioChildProcess::builder(command)
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| UpstreamError::Spawn {
                server: self.server.clone(),
                command: self.command.clone(),
                reason: e.to_string(),
            })?;
        tracing::info!(server = %self.server, command = %self.command, pid = ?child.id(), "started stdio upstream");
        Ok(child)
    }
}
/// The worker's environment variables a stdio upstream inherits; everything else it gets
/// comes from its `env:` in the config.
const INHERITED: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"];
