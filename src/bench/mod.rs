//! `mcpq bench`: a load generator for a running mcpq or any MCP endpoint, like `nats bench`.
//! Modes: NATS-native jobs through mcpq workers (default), an MCP client against any MCP URL
//! (`--mcp`: a dispatcher's endpoint, or an upstream directly), and the floor (`--floor`): a raw
//! JetStream work-queue round trip with no MCP at all, the physical limit of the queue hop.

mod floor;
mod jobs_api;
mod mcp;
mod nats;

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use mcpq_schemas::config::DEFAULT_NATS_URL;

use crate::{Common, EXIT_CONFIG};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The config file (NATS and floor modes: its `nats.url`, when the file exists) and the
    /// NATS URL, which overrides it.
    #[command(flatten)]
    common: Common,
    /// The server whose queue the jobs go to (NATS and jobs-API modes).
    #[arg(long, required_unless_present_any = ["mcp", "floor"])]
    server: Option<String>,
    /// Submit jobs for later through a dispatcher's HTTP jobs API at this base URL instead
    /// (e.g. http://127.0.0.1:7400): measures accepted jobs/s.
    #[arg(long, requires = "server", conflicts_with_all = ["mcp", "floor"])]
    jobs_api: Option<String>,
    /// Call an MCP endpoint with an MCP client instead (e.g. http://127.0.0.1:7400/servers/x/mcp).
    #[arg(long, conflicts_with_all = ["server", "floor"])]
    mcp: Option<String>,
    /// Measure a raw JetStream round trip (persisted publish, pull, core reply, ack), no MCP.
    #[arg(long, conflicts_with = "server")]
    floor: bool,
    /// The tool to call.
    #[arg(long, default_value = "echo")]
    tool: String,
    /// The tool's arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Add a string of this many bytes to the arguments as "text" (or as the floor's payload).
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Calls in all (the run ends at whichever of --calls and --duration comes first).
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Longest run, e.g. 10s.
    #[arg(long, value_parser = crate::duration)]
    duration: Option<Duration>,
    /// NATS mode: submit jobs without waiting for replies (measures accepted jobs/s).
    #[arg(long)]
    no_wait: bool,
    /// NATS mode: publish each job to this principal's own queue of the lane (as a dispatcher
    /// does on a server with fair shares), to measure that path. The job itself stays
    /// unauthenticated (no seal).
    #[arg(long, conflicts_with_all = ["mcp", "floor", "jobs_api"])]
    principal_queue: Option<String>,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    json: bool,
}

/// One call of a mode: `Ok` or the kind of error.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
pub(crate) type Caller = Arc<dyn Fn() -> CallFuture + Send + Sync>;

pub async fn run(args: BenchArgs) -> ExitCode {
    let mut arguments = match serde_json::from_str::<serde_json::Value>(&args.args) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            eprintln!("mcpq: --args must be a JSON object, like '{{\"text\": \"hi\"}}'");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(n) = args.payload_bytes {
        arguments.insert("text".into(), "x".repeat(n).into());
    }
    let caller = if let Some(url) = &args.mcp {
        mcp::caller(url, &args.tool, arguments, args.concurrency).await
    } else if let Some(base) = &args.jobs_api {
        Ok(jobs_api::caller(
            base,
            args.server.as_deref().unwrap_or_default(),
            &args.tool,
            arguments,
        ))
    } else if args.floor {
        let url = match nats_url(&args.common) {
            Ok(url) => url,
            Err(code) => return code,
        };
        floor::caller(&url, args.payload_bytes.unwrap_or(16)).await
    } else {
        let url = match nats_url(&args.common) {
            Ok(url) => url,
            Err(code) => return code,
        };
        let server = args.server.clone().unwrap_or_default();
        nats::caller(
            &url,
            &server,
            &args.tool,
            arguments,
            !args.no_wait,
            args.principal_queue.clone(),
        )
        .await
    };
    let caller = match caller {
        Ok(caller) => caller,
        Err(e) => {
            eprintln!("mcpq: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = drive(caller, args.concurrency.max(1), args.calls, args.duration).await;
    let mode = match (&args.mcp, &args.jobs_api, args.floor) {
        (Some(_), _, _) => "mcp",
        (None, Some(_), _) => "jobs-api",
        (None, None, true) => "floor",
        (None, None, false) => "nats",
    };
    report.print(mode, args.concurrency, args.json);
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Report {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
}

/// Closed-loop load: `concurrency` tasks, each calling again as soon as its call returns.
async fn drive(
    caller: Caller,
    concurrency: usize,
    calls: usize,
    duration: Option<Duration>,
) -> Report {
    let started = Instant::now();
    let end = duration.map(|d| started + d);
    let issued = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let caller = caller.clone();
        let issued = issued.clone();
        tasks.spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures is valid");
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while issued.fetch_add(1, Ordering::Relaxed) < calls
                && end.is_none_or(|end| Instant::now() < end)
            {
                let t0 = Instant::now();
                match caller().await {
                    Ok(()) => {
                        let _ = histogram.record(t0.elapsed().as_micros() as u64);
                    }
                    Err(kind) => *errors.entry(kind).or_default() += 1,
                }
            }
            (histogram, errors)
        });
    }
    let mut report = Report {
        histogram: Histogram::<u64>::new(3).expect("3 significant figures is valid"),
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    while let Some(Ok((histogram, errors))) = tasks.join_next().await {
        let _ = report.histogram.add(histogram);
        for (kind, n) in errors {
            *report.errors.entry(kind).or_default() += n;
        }
    }
    report.elapsed = started.elapsed();
    report
}

impl Report {
    fn print(&self, mode: &str, concurrency: usize, json: bool) {
        let ms = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        let ok = self.histogram.len();
        let errors: u64 = self.errors.values().sum();
        let calls_per_s = ok as f64 / self.elapsed.as_secs_f64();
        let max_ms = self.histogram.max() as f64 / 1000.0;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "mode": mode, "concurrency": concurrency, "calls": ok + errors,
                    "seconds": self.elapsed.as_secs_f64(), "calls_per_s": calls_per_s,
                    "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": max_ms,
                    "errors": errors, "errors_by_kind": self.errors,
                })
            );
        } else {
            println!(
                "{mode}: {} calls, concurrency {concurrency}: {calls_per_s:.0} calls/s; latency p50 {:.2} ms, \
                 p90 {:.2} ms, p99 {:.2} ms, max {max_ms:.2} ms; {errors} errors {:?}",
                ok + errors,
                ms(0.5),
                ms(0.9),
                ms(0.99),
                self.errors
            );
        }
    }
}

/// The NATS URL: `--nats`, else the config's when the config file exists, else the default.
fn nats_url(common: &Common) -> Result<String, ExitCode> {
    if let Some(url) = &common.nats {
        return Ok(url.clone());
    }
    if !common.config.exists() {
        return Ok(DEFAULT_NATS_URL.to_string());
    }
    match mcpq_schemas::config::Config::load(&common.config) {
        Ok(config) => Ok(config.nats.url_or_default().to_string()),
        Err(errors) => {
            eprintln!(
                "mcpq: {} is not a valid config:\n{errors}",
                common.config.display()
            );
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}
