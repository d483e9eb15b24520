//! mcpq running in-process for a test: workers and a dispatcher on a test's own nats-server,
//! configured from YAML, stopped when dropped.

use std::{net::SocketAddr, time::Duration};

use mcpq_dispatcher::{Client, Dispatcher, HttpOptions};
use mcpq_schemas::{Job, McpRequest, Reply, config::Config, nats::connect};
use mcpq_workers::WorkerOptions;
use tokio_util::sync::CancellationToken;

use crate::nats::NatsServer;

/// A running mcpq: one dispatcher and one worker process's worth of pools.
pub struct Stack {
    pub nats: NatsServer,
    pub config: Config,
    pub addr: SocketAddr,
    pub client: Client,
    stop: CancellationToken,
    /// Stops the first dispatcher only.
    dispatcher_stop: CancellationToken,
    workers: Option<tokio::task::JoinHandle<()>>,
}

impl Stack {
    /// Starts nats-server, the workers and the dispatcher for `servers_yaml` (the `servers:`
    /// list of a config), and waits until every server's catalog is published.
    pub async fn start(servers_yaml: &str) -> Stack {
        Stack::start_config(&format!("version: \"1.0\"\nservers:\n{servers_yaml}")).await
    }

    /// [`Stack::start`] from a whole config file (say, one with an `auth:` section).
    pub async fn start_config(config_yaml: &str) -> Stack {
        crate::init_logging();
        let nats = NatsServer::start();
        let config = Config::from_yaml(config_yaml)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        let stop = CancellationToken::new();
        let client = connect(&nats.url(), "test-workers")
            .await
            .expect("connect workers");
        let mut options = WorkerOptions::new("test-worker");
        options.drain_grace = Duration::from_secs(5);
        let workers = tokio::spawn({
            let config = config.clone();
            let stop = stop.clone();
            async move {
                if let Err(e) = mcpq_workers::run(client, &config, options, stop).await {
                    panic!("workers failed: {e}");
                }
            }
        });
        let dispatcher_nats = connect(&nats.url(), "test-dispatcher")
            .await
            .expect("connect dispatcher");
        let dispatcher = Dispatcher::new(dispatcher_nats.clone(), &config, HttpOptions::default())
            .await
            .expect("dispatcher starts");
        let catalog = dispatcher.catalog().clone();
        let dispatcher_stop = stop.child_token();
        let (addr, serving) = dispatcher
            .listen(
                "127.0.0.1:0".parse().expect("addr"),
                dispatcher_stop.clone(),
            )
            .await
            .expect("dispatcher listens");
        tokio::spawn(serving);
        let names: Vec<String> = config.servers.iter().map(|s| s.name.clone()).collect();
        crate::eventually(
            "every server's tool catalog",
            Duration::from_secs(60),
            || {
                let ready = names.iter().all(|n| catalog.server(n).is_some());
                async move { ready.then_some(()) }
            },
        )
        .await;
        let client = Client::new(dispatcher_nats).await.expect("client");
        Stack {
            nats,
            config,
            addr,
            client,
            stop,
            dispatcher_stop,
            workers: Some(workers),
        }
    }

    /// Stops the first dispatcher (workers keep running); its address stops answering.
    pub fn stop_dispatcher(&self) {
        self.dispatcher_stop.cancel();
    }

    /// Starts another dispatcher replica on the same NATS and config; returns its address.
    /// It stops with the stack.
    pub async fn another_dispatcher(&self) -> SocketAddr {
        self.another_dispatcher_with(HttpOptions::default()).await
    }

    /// [`Stack::another_dispatcher`] with its own HTTP options (limits, hosts).
    pub async fn another_dispatcher_with(&self, options: HttpOptions) -> SocketAddr {
        let nats = connect(&self.nats.url(), "test-dispatcher-2")
            .await
            .expect("connect dispatcher");
        let dispatcher = Dispatcher::new(nats, &self.config, options)
            .await
            .expect("dispatcher starts");
        let catalog = dispatcher.catalog().clone();
        let (addr, serving) = dispatcher
            .listen(
                "127.0.0.1:0".parse().expect("addr"),
                self.stop.child_token(),
            )
            .await
            .expect("dispatcher listens");
        tokio::spawn(serving);
        let names: Vec<String> = self.config.servers.iter().map(|s| s.name.clone()).collect();
        crate::eventually(
            "the new dispatcher's catalog",
            Duration::from_secs(30),
            || {
                let ready = names.iter().all(|n| catalog.server(n).is_some());
                async move { ready.then_some(()) }
            },
        )
        .await;
        addr
    }

    /// The aggregated MCP endpoint.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// One server's MCP endpoint.
    pub fn server_url(&self, server: &str) -> String {
        format!("http://{}/servers/{server}/mcp", self.addr)
    }

    /// Calls `tool` on `server` through NATS, as a pipeline would.
    pub async fn call(&self, server: &str, tool: &str, arguments: serde_json::Value) -> Reply {
        let job = Job::new(
            server,
            McpRequest::call_tool(tool, arguments.as_object().cloned()),
        );
        self.client
            .call(&job, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("call {server}/{tool}: {e}"))
    }

    /// The stored record of a job; panics if it has none.
    pub async fn record(&self, job_id: uuid::Uuid) -> mcpq_schemas::JobRecord {
        self.client
            .record(job_id)
            .await
            .unwrap_or_else(|e| panic!("read the record of {job_id}: {e}"))
            .unwrap_or_else(|| panic!("job {job_id} has no record"))
    }

    /// Stops dispatcher and workers and waits for the workers to drain.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(workers) = self.workers.take() {
            let _ = workers.await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A real `mcpq worker` process, killed when dropped.
pub struct WorkerProcess {
    child: std::process::Child,
}

impl WorkerProcess {
    /// Starts `mcpq worker` for the config at `config` on the NATS at `nats_url`.
    pub fn spawn(config: &std::path::Path, nats_url: &str, id: &str) -> WorkerProcess {
        Self::spawn_with(
            config,
            nats_url,
            &[
                "--id",
                id,
                "--drain-grace",
                "20s",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        )
    }

    /// `mcpq worker --config <config> --nats <nats_url>` and `args`, nothing else (no id, no
    /// metrics address: the defaults a new user gets).
    pub fn spawn_with(config: &std::path::Path, nats_url: &str, args: &[&str]) -> WorkerProcess {
        let child = std::process::Command::new(crate::mcpq_bin())
            .args(["worker", "--config"])
            .arg(config)
            .args(["--nats", nats_url])
            .args(args)
            .env(
                "MCPQ_LOG",
                std::env::var("MCPQ_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .expect("start mcpq worker");
        WorkerProcess { child }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("a pid fits in i32")
    }

    /// Sends `signal` (e.g. "KILL", "TERM") with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `timeout`; its exit status, or None if it did not.
    pub async fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Any real `mcpq` process (`dispatcher`, `worker`, `up`...), logging to a file, killed on drop.
pub struct McpqProcess {
    child: std::process::Child,
}

impl McpqProcess {
    pub fn spawn(args: &[&str], log: &std::path::Path) -> McpqProcess {
        let child = std::process::Command::new(crate::mcpq_bin())
            .args(args)
            .env(
                "MCPQ_LOG",
                std::env::var("MCPQ_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stderr(std::fs::File::create(log).expect("a log file"))
            .spawn()
            .expect("start mcpq");
        McpqProcess { child }
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for McpqProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `count` real `mcpq dispatcher` and `count` real `mcpq worker` processes for the config at
/// `config`, logging into `dir`; the dispatchers' base URLs (`http://127.0.0.1:<port>`).
pub fn replicas(
    dir: &std::path::Path,
    config: &str,
    nats: &str,
    count: usize,
) -> (Vec<String>, Vec<McpqProcess>) {
    let mut processes = Vec::new();
    let mut bases = Vec::new();
    for i in 0..count {
        let listen = format!("127.0.0.1:{}", crate::free_port());
        processes.push(McpqProcess::spawn(
            &[
                "dispatcher",
                "--config",
                config,
                "--nats",
                nats,
                "--listen",
                &listen,
            ],
            &dir.join(format!("d{i}.log")),
        ));
        bases.push(format!("http://{listen}"));
        processes.push(McpqProcess::spawn(
            &[
                "worker",
                "--config",
                config,
                "--nats",
                nats,
                "--id",
                &format!("w{i}"),
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            &dir.join(format!("w{i}.log")),
        ));
    }
    (bases, processes)
}
