//! Upstreams that are child processes speaking MCP on stdin/stdout.

use std::{borrow::Cow, collections::BTreeMap, process::Stdio, time::Duration};

use mcpq_schemas::config::Secret;
use rmcp::{
    RoleClient,
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::{Transport, async_rw::AsyncRwTransport},
};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::{
    UpstreamError,
    tap::{Conversation, TappedReader},
};

#[derive(Clone)]
pub(super) struct StdioConnector {
    server: String,
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The longest line (one JSON-RPC message) read from a child: the largest `maxResultBytes`
/// the config allows (1 GiB) and 1 MiB of envelope. rmcp's own default is 16 MiB, and a longer
/// line is dropped — the call would time out and run again. Read whole, an answer over the
/// server's `maxResultBytes` ends the job `too_large`, once (see `attempt::run`).
const MAX_LINE: usize = 1024 * 1024 * 1024 + 1024 * 1024;
/// How long a child whose stdin was closed may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// A child process as an rmcp transport: JSON-RPC lines on its stdin and stdout, the child
/// killed when the transport is dropped without being closed.
pub(super) struct ChildTransport {
    child: Child,
    lines: AsyncRwTransport<RoleClient, TappedReader<ChildStdout>, ChildStdin>,
}

impl Transport<RoleClient> for ChildTransport {
    type Error = std::io::Error;

    fn name() -> Cow<'static, str> {
        "stdio child process".into()
    }

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.lines.send(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.lines.receive()
    }

    /// Closes stdin (the MCP stdio shutdown), waits a moment for the child, then kills it.
    async fn close(&mut self) -> Result<(), Self::Error> {
        self.lines.close().await?;
        if tokio::time::timeout(EXIT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
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
    pub(super) fn spawn(&self, tap: Conversation) -> Result<ChildTransport, UpstreamError> {
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
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let spawn_failed = |reason: String| UpstreamError::Spawn {
            server: self.server.clone(),
            command: self.command.clone(),
            reason,
        };
        let mut child = command.spawn().map_err(|e| spawn_failed(e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(spawn_failed("no stdin or stdout to talk to".into()));
        };
        tracing::info!(server = %self.server, command = %self.command, pid = ?child.id(), "started stdio upstream");
        let lines = AsyncRwTransport::new_client(TappedReader::new(stdout, tap), stdin)
            .with_max_line_length(MAX_LINE);
        Ok(ChildTransport { child, lines })
    }
}
/// The worker's environment variables a stdio upstream inherits; everything else it gets
/// comes from its `env:` in the config.
const INHERITED: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"];
