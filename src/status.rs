//! `mcpq status`: every server at a glance — queue depth per lane, calls/s, p50/p99, error rate,
//! circuit, health, live workers, dead letters — read from NATS alone (no dispatcher needed),
//! refreshed in place; `--once --json` for scripts.

use std::{io::Write, process::ExitCode, time::Duration};

use mcpq_dispatcher::status::{Sampler, Window};
use mcpq_schemas::{
    status::{ServerStatus, StatusReport},
    worker::CircuitState,
};

use crate::Common;

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    common: Common,
    /// Print one report and exit (rates over one `--interval`).
    #[arg(long)]
    once: bool,
    /// Print JSON (a `StatusReport`, see schemas/json) instead of the table.
    #[arg(long)]
    json: bool,
    /// Time between samples.
    #[arg(long, default_value = "2s", value_parser = crate::duration)]
    interval: Duration,
}

pub async fn run(args: StatusArgs) -> ExitCode {
    let config = match crate::config_cmd::load(&args.common.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let url = args
        .common
        .nats
        .clone()
        .unwrap_or_else(|| config.nats.url_or_default().to_string());
    let nats = match mcpq_schemas::nats::connect_with(&url, "mcpq-status", &config.nats.credentials)
        .await
    {
        Ok(nats) => nats,
        Err(e) => return crate::run::fail(e),
    };
    let js = async_nats::jetstream::new(nats);
    let servers = config
        .server_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let sampler = match Sampler::open(js, servers).await {
        Ok(sampler) => sampler,
        Err(e) => {
            return crate::run::fail(format!(
                "{e} (mcpq creates its buckets when a dispatcher or worker starts)"
            ));
        }
    };
    let mut window = Window::default();
    let stop = crate::run::on_signal();
    let live = !args.once && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut samples = 0;
    loop {
        match sampler.sample().await {
            Ok(sample) => window.push(sample),
            Err(e) => return crate::run::fail(format!("cannot read the queues: {e}")),
        }
        samples += 1;
        if let Some(report) = window.report()
            && (!args.once || samples >= 2)
        {
            let mut out = std::io::stdout().lock();
            if live {
                // Home and clear: the view refreshes in place.
                let _ = write!(out, "\x1b[H\x1b[2J");
            }
            if args.json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&report).unwrap_or_default()
                );
            } else {
                let _ = write!(out, "{}", table(&report, !args.once));
            }
            let _ = out.flush();
            if args.once {
                return ExitCode::SUCCESS;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return ExitCode::SUCCESS,
            () = tokio::time::sleep(args.interval) => {}
        }
    }
}

/// The report as a table for people.
pub fn table(report: &StatusReport, live: bool) -> String {
    let mut text = format!(
        "{:<20} {:>7} {:>17} {:>6} {:>8} {:>7} {:>7} {:>6} {:>10} {:>7} {:>7} {:>6}\n",
        "SERVER",
        "QUEUED",
        "HIGH/NORMAL/LOW",
        "HELD",
        "CALLS/S",
        "P50",
        "P99",
        "ERR%",
        "CIRCUIT",
        "HEALTH",
        "WORKERS",
        "DLQ"
    );
    for s in &report.servers {
        text.push_str(&row(s));
    }
    let metrics: Vec<String> = report
        .servers
        .iter()
        .flat_map(|s| s.metrics.iter().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !metrics.is_empty() {
        text.push_str("worker metrics:\n");
        for line in metrics {
            text.push_str(&format!("  {line}\n"));
        }
    }
    text.push_str(&format!(
        "rates over the last {:.0}s{}\n",
        report.rate_window_secs,
        if live { "; ctrl-c to quit" } else { "" }
    ));
    text
}

fn row(s: &ServerStatus) -> String {
    let lanes = s
        .lanes
        .iter()
        .map(|l| l.depth.to_string())
        .collect::<Vec<_>>()
        .join("/");
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v}ms"));
    let circuit = match s.circuit {
        CircuitState::Closed => "closed".to_string(),
        CircuitState::HalfOpen => format!("half-open({})", s.circuits_not_closed),
        CircuitState::Open => format!("open({})", s.circuits_not_closed),
        CircuitState::Unknown => "?".to_string(),
    };
    let health = match s.up {
        Some(true) => "up",
        Some(false) => "DOWN",
        None => "-",
    };
    format!(
        "{:<20} {:>7} {:>17} {:>6} {:>8.1} {:>7} {:>7} {:>6.1} {:>10} {:>7} {:>7} {:>6}\n",
        s.server,
        s.queued,
        lanes,
        s.ack_pending,
        s.calls_per_sec,
        ms(s.p50_ms),
        ms(s.p99_ms),
        s.error_rate * 100.0,
        circuit,
        health,
        s.workers,
        s.dlq
    )
}
