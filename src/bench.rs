//! `mcpq bench`: a load generator for a running mcpq, like `nats bench`. This first mode
//! publishes `tools/call` jobs straight to JetStream and waits for each reply on the inbox.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use hdrhistogram::Histogram;
use mcpq_dispatcher::Client;
use mcpq_schemas::{Job, McpRequest, Outcome, config::DEFAULT_NATS_URL, nats::connect};

use crate::EXIT_CONFIG;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// NATS URL of the mcpq deployment.
    #[arg(long, env = "MCPQ_NATS_URL", default_value = DEFAULT_NATS_URL)]
    nats: String,
    /// The server to call.
    #[arg(long)]
    server: String,
    /// The tool to call.
    #[arg(long)]
    tool: String,
    /// The tool's arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Calls in all.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: BenchArgs) -> ExitCode {
    let arguments = match serde_json::from_str::<serde_json::Value>(&args.args) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            eprintln!("mcpq: --args must be a JSON object, like '{{\"text\": \"hi\"}}'");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let client = match connect(&args.nats, "mcpq-bench").await {
        Ok(nats) => match Client::new(nats).await {
            Ok(client) => client,
            Err(e) => return fail(e),
        },
        Err(e) => return fail(e),
    };
    let request = Arc::new(McpRequest::call_tool(&args.tool, Some(arguments)));
    let started = Instant::now();
    let samples: Vec<Result<Duration, String>> = stream::iter(0..args.calls)
        .map(|_| {
            let client = client.clone();
            let request = request.clone();
            let server = args.server.clone();
            async move {
                let job = Job::new(server, (*request).clone());
                let t0 = Instant::now();
                match client.call(&job, Duration::from_secs(60)).await {
                    Ok(reply) => match reply.outcome {
                        Outcome::Ok { .. } => Ok(t0.elapsed()),
                        Outcome::Error { error } => Err(error.kind.as_str().to_string()),
                    },
                    Err(e) => Err(match e {
                        mcpq_dispatcher::ClientError::Timeout { .. } => "timeout".into(),
                        _ => "publish".into(),
                    }),
                }
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for sample in samples {
        match sample {
            Ok(latency) => {
                let _ = histogram.record(latency.as_micros() as u64);
            }
            Err(kind) => *errors.entry(kind).or_default() += 1,
        }
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let calls_per_s = histogram.len() as f64 / elapsed.as_secs_f64();
    let error_count: u64 = errors.values().sum();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "calls": args.calls, "concurrency": args.concurrency, "seconds": elapsed.as_secs_f64(),
                "calls_per_s": calls_per_s, "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99),
                "max_ms": histogram.max() as f64 / 1000.0, "errors": error_count, "errors_by_kind": errors,
            })
        );
    } else {
        println!(
            "{} calls, concurrency {}: {:.0} calls/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} errors {:?}",
            args.calls,
            args.concurrency,
            calls_per_s,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            histogram.max() as f64 / 1000.0,
            error_count,
            errors
        );
    }
    if error_count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mcpq: {message}");
    ExitCode::FAILURE
}
