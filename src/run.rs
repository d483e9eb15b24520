//! The long-running commands: `up` (everything in one process), `dispatcher`, `worker`. Each
//! loads the config, connects, runs until SIGINT/SIGTERM, then drains.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use mcpq_dispatcher::{Dispatcher, HttpOptions};
use mcpq_schemas::{config::Config, nats::connect_with};
use mcpq_workers::WorkerOptions;
use tokio_util::sync::CancellationToken;

use crate::{Common, config_cmd::load, local_nats::LocalNats};

const DEFAULT_LISTEN: &str = "127.0.0.1:7400";

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    common: Common,
    /// Address of the MCP endpoints.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where the local nats-server keeps its data.
    #[arg(long, default_value = ".mcpq")]
    data_dir: PathBuf,
    /// Port of the local nats-server.
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    #[command(flatten)]
    exposure: Exposure,
    #[command(flatten)]
    observe: Observe,
}

impl UpArgs {
    pub fn config(&self) -> &std::path::Path {
        &self.common.config
    }
}

impl DispatcherArgs {
    pub fn config(&self) -> &std::path::Path {
        &self.common.config
    }
}

impl WorkerArgs {
    pub fn config(&self) -> &std::path::Path {
        &self.common.config
    }
}

/// What the process records about itself.
#[derive(clap::Args)]
pub struct Observe {
    /// Record no metrics (and serve none at /metrics): only for measuring what they cost.
    #[arg(long)]
    no_metrics: bool,
}

impl Observe {
    /// The process's recorder, unless metrics are off. Installed once per process.
    fn metrics(&self) -> Result<Option<metrics_exporter_prometheus::PrometheusHandle>, ExitCode> {
        if self.no_metrics {
            return Ok(None);
        }
        crate::telemetry::install().map(Some).map_err(fail)
    }
}

/// Who may reach the dispatcher's listener.
#[derive(clap::Args)]
pub struct Exposure {
    /// Host names accepted in the Host header (repeat; default: loopback names only).
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// Browser origins allowed to call, like https://app.example.com (repeat; default: none
    /// but the dispatcher's own). A request with any other Origin is refused.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// Serve a non-loopback address without an auth: section: anyone who reaches it may call
    /// every tool. Only behind something that authenticates for you.
    #[arg(long)]
    insecure_no_auth: bool,
    /// HTTP requests served at once (an MCP call holds one while it runs); more get 503.
    #[arg(long, default_value_t = mcpq_dispatcher::DEFAULT_MAX_REQUESTS)]
    max_requests: usize,
    /// `/v1/jobs/{id}/wait` long polls open at once; more get 429.
    #[arg(long, default_value_t = mcpq_dispatcher::DEFAULT_MAX_WAITS)]
    max_waits: usize,
    /// Long polls, and 2026-07-28 listen streams, one principal may hold open at once; more
    /// get 429 (an error for a listen stream).
    #[arg(long, default_value_t = mcpq_dispatcher::DEFAULT_MAX_WAITS_PER_PRINCIPAL)]
    max_waits_per_principal: usize,
    /// Connections open at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = mcpq_dispatcher::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// 2025-era MCP sessions one principal may hold open through this dispatcher; one more
    /// initialize gets 429.
    #[arg(long, default_value_t = mcpq_dispatcher::DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
    /// How long a connection may take to send a request's headers, or stay idle between
    /// requests, before it is closed.
    #[arg(long, default_value = "30s", value_parser = crate::duration)]
    idle_timeout: Duration,
}

impl Exposure {
    /// Refuses to expose an unauthenticated dispatcher beyond loopback (exit 64), and says
    /// what it serves.
    fn check(&self, config: &Config, listen: SocketAddr) -> Result<HttpOptions, ExitCode> {
        if config.auth.is_none() {
            if !listen.ip().is_loopback() && !self.insecure_no_auth {
                eprintln!(
                    "mcpq: refusing to listen on {listen} without authentication: the config has no auth: section, \
                     so anyone who reaches {listen} could call every tool. Add auth: (see `mcpq auth new-key`), \
                     listen on 127.0.0.1, or pass --insecure-no-auth if something in front authenticates"
                );
                return Err(ExitCode::from(crate::EXIT_CONFIG));
            }
            if listen.ip().is_loopback() {
                eprintln!(
                    "mcpq: no auth: section in the config: serving without authentication, on loopback only"
                );
            } else {
                eprintln!(
                    "mcpq: WARNING: serving {listen} without authentication (--insecure-no-auth): anyone who reaches it may call every tool"
                );
            }
        }
        Ok(HttpOptions {
            allowed_hosts: self.allowed_hosts.clone(),
            allowed_origins: self.allowed_origins.clone(),
            max_requests: self.max_requests,
            max_waits: self.max_waits,
            max_waits_per_principal: self.max_waits_per_principal,
            max_connections: self.max_connections,
            max_sessions: self.max_sessions,
            idle_timeout: self.idle_timeout,
            ..HttpOptions::default()
        })
    }
}

#[derive(clap::Args)]
pub struct DispatcherArgs {
    #[command(flatten)]
    common: Common,
    /// Address of the MCP endpoints.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Also serve /metrics, /healthz and /readyz here, without auth (an internal port for
    /// Prometheus and the kubelet; the main listener serves them too, /metrics behind auth).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    exposure: Exposure,
    #[command(flatten)]
    observe: Observe,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    common: Common,
    /// Serve only this server (repeat for several; default: all).
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Worker id in records and logs (default: host name and pid).
    #[arg(long)]
    id: Option<String>,
    /// How long calls in flight may take to finish after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = crate::duration)]
    drain_grace: Duration,
    /// Address of the worker's /metrics, /healthz and /readyz. Without it: 127.0.0.1:9464, or
    /// a free port when that one is taken (another worker on this host); the address is logged
    /// and shown by `mcpq status`. Given, it must be free (exit 64 if not).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    observe: Observe,
}

/// Where a worker serves its metrics unless told otherwise (the port `mcpq deploy render` uses).
const DEFAULT_WORKER_METRICS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// Cancels the token on SIGINT or SIGTERM.
pub(crate) fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

fn nats_url(common: &Common, config: &Config) -> String {
    common
        .nats
        .clone()
        .unwrap_or_else(|| config.nats.url_or_default().to_string())
}

pub(crate) fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mcpq: {message}");
    ExitCode::FAILURE
}

pub async fn up(args: UpArgs) -> ExitCode {
    let config = match load(&args.common.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let mut options = match args.exposure.check(&config, args.listen) {
        Ok(options) => options,
        Err(code) => return code,
    };
    options.metrics = match args.observe.metrics() {
        Ok(handle) => handle,
        Err(code) => return code,
    };
    let shutdown = on_signal();
    let mut local = None;
    let url = match (&args.common.nats, &config.nats.url) {
        (Some(url), _) | (None, Some(url)) => url.clone(),
        (None, None) => match LocalNats::start(&args.data_dir.join("nats"), args.nats_port).await {
            Ok(nats) => {
                let url = nats.url.clone();
                eprintln!(
                    "mcpq: started nats-server at {url} (data in {})",
                    args.data_dir.join("nats").display()
                );
                local = Some(nats);
                url
            }
            Err(e) => return fail(e),
        },
    };
    let code = serve_both(&config, &url, args.listen, options, shutdown).await;
    if let Some(nats) = local {
        nats.stop().await;
    }
    code
}

async fn serve_both(
    config: &Config,
    url: &str,
    listen: SocketAddr,
    options: HttpOptions,
    shutdown: CancellationToken,
) -> ExitCode {
    let nats = match connect_with(url, "mcpq-up", &config.nats.credentials).await {
        Ok(nats) => nats,
        Err(e) => return fail(e),
    };
    let dispatcher = match Dispatcher::new(nats.clone(), config, options).await {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let (addr, serving) = match dispatcher.listen(listen, shutdown.clone()).await {
        Ok(bound) => bound,
        Err(e) => return fail(e),
    };
    eprintln!(
        "mcpq: MCP endpoint http://{addr}/mcp (per server: http://{addr}/servers/<name>/mcp); NATS {}",
        mcpq_schemas::redact::url(url)
    );
    let mut options = WorkerOptions::new(mcpq_workers::default_worker_id());
    options.metrics_addr = Some(addr.to_string());
    let worker = mcpq_workers::run(nats.clone(), config, options, shutdown.clone());
    let (served, worked) = tokio::join!(serving, async {
        let result = worker.await;
        // A worker that cannot start takes the whole process down.
        if result.is_err() {
            shutdown.cancel();
        }
        result
    });
    if let Err(e) = worked {
        return fail(e);
    }
    if let Err(e) = served {
        return fail(e);
    }
    ExitCode::SUCCESS
}

/// Loads the config and connects to its NATS (or `--nats`): what `dispatcher` and `worker`
/// start with. The error is the exit code, already explained on stderr.
async fn load_and_connect(
    common: &Common,
    name: &str,
) -> Result<(Config, async_nats::Client, String), ExitCode> {
    let config = load(&common.config)?;
    let url = nats_url(common, &config);
    let nats = connect_with(&url, name, &config.nats.credentials)
        .await
        .map_err(fail)?;
    Ok((config, nats, url))
}

pub async fn dispatcher(args: DispatcherArgs) -> ExitCode {
    // Whether it may listen at all is decided before connecting anywhere.
    let mut options = match load(&args.common.config) {
        Ok(config) => match args.exposure.check(&config, args.listen) {
            Ok(options) => options,
            Err(code) => return code,
        },
        Err(code) => return code,
    };
    options.metrics = match args.observe.metrics() {
        Ok(handle) => handle,
        Err(code) => return code,
    };
    let (config, nats, url) = match load_and_connect(&args.common, "mcpq-dispatcher").await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let shutdown = on_signal();
    if let Some(addr) = args.metrics_listen {
        let servers = config
            .server_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let probes = crate::telemetry::serve_probes(
            addr,
            options.metrics.clone(),
            nats.clone(),
            servers,
            false,
            shutdown.clone(),
        );
        match probes.await {
            Ok(addr) => eprintln!("mcpq: dispatcher metrics at http://{addr}/metrics"),
            Err(e) => return fail(e),
        }
    }
    let dispatcher = match Dispatcher::new(nats, &config, options).await {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let (addr, serving) = match dispatcher.listen(args.listen, shutdown).await {
        Ok(bound) => bound,
        Err(e) => return fail(e),
    };
    eprintln!(
        "mcpq: MCP endpoint http://{addr}/mcp (per server: http://{addr}/servers/<name>/mcp); NATS {}",
        mcpq_schemas::redact::url(&url)
    );
    match serving.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

pub async fn worker(args: WorkerArgs) -> ExitCode {
    let (config, nats, _url) = match load_and_connect(&args.common, "mcpq-worker").await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let metrics = match args.observe.metrics() {
        Ok(handle) => handle,
        Err(code) => return code,
    };
    let shutdown = on_signal();
    let served = if args.servers.is_empty() {
        config
            .server_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.servers.clone()
    };
    let probes = |addr| {
        crate::telemetry::serve_probes(
            addr,
            metrics.clone(),
            nats.clone(),
            served.clone(),
            true,
            shutdown.clone(),
        )
    };
    let listening = match args.metrics_listen {
        Some(addr) => match probes(addr).await {
            Ok(addr) => addr,
            Err(e) => {
                eprintln!("mcpq: {e}");
                return ExitCode::from(crate::EXIT_CONFIG);
            }
        },
        None => match probes(DEFAULT_WORKER_METRICS).await {
            Ok(addr) => addr,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                match probes(SocketAddr::new(DEFAULT_WORKER_METRICS.ip(), 0)).await {
                    Ok(addr) => {
                        tracing::info!(taken = %DEFAULT_WORKER_METRICS, %addr, "the default metrics address is taken (another worker on this host?); serving on a free port");
                        addr
                    }
                    Err(e) => return fail(e),
                }
            }
            Err(e) => return fail(e),
        },
    };
    eprintln!("mcpq: worker metrics at http://{listening}/metrics");
    let mut options = WorkerOptions::new(args.id.unwrap_or_else(mcpq_workers::default_worker_id));
    options.metrics_addr = Some(listening.to_string());
    options.servers = args.servers;
    options.drain_grace = args.drain_grace;
    match mcpq_workers::run(nats, &config, options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
