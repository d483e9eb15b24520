//! What operators load into their tools: the Prometheus alert rules (`promtool check rules` and
//! `promtool test rules`), the Grafana dashboard (every query valid PromQL on mcpq's metrics),
//! the metric table in docs/operations.md, and the status page in headless Chromium.

use std::time::Duration;

use mcpq_dispatcher::HttpOptions;
use mcpq_tests::{fixture::HttpFixture, repo_root, stack::Stack};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_every_server_and_its_numbers_move_under_load() {
    let node = mcpq_tests::required_program("node");
    let chromium = std::path::PathBuf::from(
        std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    assert!(
        chromium.is_file(),
        "{} not found: run `make tools` (it installs Debian's chromium)",
        chromium.display()
    );
    let modules = mcpq_tests::repo_root().join(".tools/npm/node_modules");
    assert!(
        modules.join("playwright-core").is_dir(),
        "playwright-core not found: run `make tools`"
    );
    let web = HttpFixture::start().await;
    let stack = Stack::start(&crate::two_fixtures(&web.url())).await;
    let addr = stack
        .another_dispatcher_with(HttpOptions {
            sample_every: Duration::from_secs(1),
            ..HttpOptions::default()
        })
        .await;
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("status-page.png");
    let output = tokio::process::Command::new(node)
        .arg(mcpq_tests::repo_root().join("tests/browser/status-page.cjs"))
        .args([
            &format!("http://{addr}"),
            shot.to_str().unwrap(),
            "web,local",
        ])
        // A longer run makes a better picture for the docs (MCPQ_BLESS).
        .arg(std::env::var("MCPQ_STATUS_PAGE_LOAD_SECS").unwrap_or_else(|_| "8".into()))
        .env("NODE_PATH", &modules)
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "the browser script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(
        seen["problems"],
        json!([]),
        "no console errors, no failed requests"
    );
    assert_eq!(
        seen["shown"],
        json!(["web", "local"]),
        "every configured server"
    );
    let calls = |when: &str, server: &str| {
        seen[when]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["server"] == server)
            .unwrap()["calls"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(calls("before", "web"), 0.0, "{seen}");
    assert!(
        calls("after", "web") > 0.0,
        "the numbers move under load: {seen}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a screenshot"
    );
    if std::env::var_os("MCPQ_BLESS").is_some() {
        std::fs::write(mcpq_tests::repo_root().join("docs/status-page.png"), png).unwrap();
    }
    stack.stop().await;
}

fn promtool() -> std::path::PathBuf {
    mcpq_tests::on_path("promtool").unwrap_or_else(|| {
        panic!("promtool not found: run `make tools` (it installs Debian's prometheus)")
    })
}

fn run_promtool(args: &[&str]) -> String {
    let output = std::process::Command::new(promtool())
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_fire_on_what_they_should() {
    let checked = run_promtool(&["check", "rules", "deploy/observability/mcpq-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    // The rules asked for: queue growing, DLQ growing, circuit open, upstream down, auth
    // failure spike, queue full.
    let rules =
        std::fs::read_to_string(repo_root().join("deploy/observability/mcpq-alerts.yml")).unwrap();
    for alert in [
        "McpqQueueGrowing",
        "McpqDeadLettersGrowing",
        "McpqCircuitOpen",
        "McpqUpstreamDown",
        "McpqAuthFailureSpike",
        "McpqQueueFull",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
    }
    run_promtool(&["test", "rules", "tests/observability/mcpq-alerts.test.yml"]);
}

/// Metric names in a PromQL expression (histogram series by their base name).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = (rest.starts_with("mcpq_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.push(base.to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_dashboard_queries_are_valid_promql_on_mcpqs_metrics_and_show_them_all() {
    let text =
        std::fs::read_to_string(repo_root().join("deploy/observability/grafana-dashboard.json"))
            .unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 19, "{} queries", exprs.len());
    let known: Vec<&str> = mcpq_schemas::metrics::ALL
        .iter()
        .copied()
        .chain(["process_cpu_seconds_total"])
        .collect();
    let mut shown = std::collections::BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                known.contains(&name.as_str()),
                "{name} in {expr:?} is no mcpq metric"
            );
            shown.insert(name);
        }
    }
    for name in mcpq_schemas::metrics::ALL {
        assert!(
            shown.contains(name),
            "the dashboard shows nothing of {name}"
        );
    }
    // Each query, with Grafana's variables filled in, as a recording rule: promtool parses it.
    let rules = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$server", ".*");
            format!(
                "      - record: mcpq:dashboard:{i}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            )
        })
        .collect::<String>();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    run_promtool(&["check", "rules", file.to_str().unwrap()]);
}

#[test]
fn docs_operations_names_every_metric_and_the_worker_endpoint() {
    let docs = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    for name in mcpq_schemas::metrics::ALL {
        assert!(
            docs.contains(&format!("`{name}")),
            "docs/operations.md does not document {name}"
        );
    }
    for needle in [
        "--metrics-listen",
        "/readyz",
        "/healthz",
        "/status.json",
        "mcpq audit tail",
        "mcpq status",
        "alerts:",
        "otlpEndpoint",
    ] {
        assert!(
            docs.contains(needle),
            "docs/operations.md does not mention {needle}"
        );
    }
}
