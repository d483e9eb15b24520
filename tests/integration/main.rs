//! mcpq's one integration-test binary: real nats-server, real MCP servers, many modules.

#![allow(clippy::unwrap_used)]

mod asks;
mod auth;
mod batch;
mod bridge;
mod callbacks;
mod cli;
mod cluster;
mod crash;
mod dashboards;
mod deploy;
mod endpoints;
mod fairness;
mod faults;
mod fidelity;
mod flow;
mod fuzz;
mod health;
mod hostile;
mod idempotency;
mod jobs;
mod limits;
mod load;
mod observe;
mod plain;
mod replicas;
mod restart;
mod retention;
mod retry;
mod roles;
mod schedules;
mod schemas;
mod stdio;
mod subscriptions;
mod tasks;
mod wire;
mod workers;

use mcpq_tests::fixture_bin;

/// The `servers:` entries for the HTTP fixture (`web`) and the stdio fixture (`local`).
pub fn two_fixtures(web_url: &str) -> String {
    format!(
        "  - name: web\n    type: http\n    endpoint: {web_url}\n    concurrency: 64\n    timeout: 10s\n\
         \x20 - name: local\n    type: stdio\n    command: {}\n    timeout: 10s\n",
        fixture_bin().display()
    )
}

/// The text of a tool result's first content block.
pub fn first_text(result: &serde_json::Value) -> &str {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content in {result}"))
}
