//! `mcpq deploy render`: the manifests for the guide's example config validate against the
//! Kubernetes schemas (kubernetes-validate, strict) and the KEDA CRD schema, carry what the
//! config says (autoScale bounds, the queue-depth trigger, replicas), and match their golden
//! files (`MCPQ_BLESS=1` rewrites them after a deliberate change).

use std::{collections::BTreeMap, path::Path, process::Command};

use mcpq_tests::{mcpq_bin, repo_root, required_program};
use serde_json::Value;

fn render(config: &Path, out: &Path, extra: &[&str]) {
    let output = Command::new(mcpq_bin())
        .args(["deploy", "render", "--config"])
        .arg(config)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&path).unwrap(),
            )
        })
        .collect()
}

/// Every YAML document of the rendered Kubernetes files, as JSON.
fn documents(files: &BTreeMap<String, String>) -> Vec<Value> {
    files
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "nats-values.yaml" | "kustomization.yaml" | "nats-users.env.example"
            )
        })
        .flat_map(|(_, text)| {
            text.split("\n---\n")
                .map(|doc| yaml_serde::from_str::<Value>(doc).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn rendered_manifests_validate_and_match_their_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("deploy/examples/mcp-infrastructure.yaml");
    // The guide's example has no auth: rendering it needs saying so.
    let refused = Command::new(mcpq_bin())
        .args(["deploy", "render", "--config"])
        .arg(&example)
        .arg("-o")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(64), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--insecure-no-auth"),
        "{refused:?}"
    );
    assert!(files(dir.path()).is_empty(), "nothing written when refused");
    render(&example, dir.path(), &["--insecure-no-auth"]);
    let rendered = files(dir.path());

    // Golden files pin the output.
    let golden = repo_root().join("tests/golden/deploy");
    if std::env::var_os("MCPQ_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        std::fs::create_dir_all(&golden).unwrap();
        for (name, text) in &rendered {
            std::fs::write(golden.join(name), text).unwrap();
        }
    }
    assert_eq!(
        rendered,
        files(&golden),
        "the rendered manifests changed: review, then MCPQ_BLESS=1 to pin them"
    );

    // Kubernetes' own schemas, strictly (no unknown fields); KEDA's kinds are checked below.
    let manifests: Vec<_> = rendered
        .keys()
        .filter(|name| {
            !matches!(
                name.as_str(),
                "nats-values.yaml" | "kustomization.yaml" | "nats-users.env.example"
            )
        })
        .map(|name| dir.path().join(name))
        .collect();
    let output = Command::new(required_program("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .args(&manifests)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}");
    assert!(!report.contains("ERROR"), "{report}");

    // The NATS users rendered for the Helm chart are deploy/nats/roles.conf's, permission for
    // permission (the roles test runs a real nats-server on that file).
    let roles = std::fs::read_to_string(repo_root().join("deploy/nats/roles.conf")).unwrap();
    let values: Value = yaml_serde::from_str(&rendered["nats-values.yaml"]).unwrap();
    let users = values["config"]["merge"]["authorization"]["users"]
        .as_array()
        .unwrap();
    assert_eq!(users.len(), 3, "{users:?}");
    for user in users {
        let name = user["user"].as_str().unwrap();
        let list = |what: &str| {
            let subjects: Vec<String> = user["permissions"][what]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| format!("\"{}\"", s.as_str().unwrap()))
                .collect();
            format!("{what}: [{}]", subjects.join(", "))
        };
        let block = format!(
            "  {name} = {{\n    {}\n    {}\n  }}",
            list("publish"),
            list("subscribe")
        );
        assert!(roles.contains(&block), "roles.conf lacks\n{block}");
        let var = format!("MCPQ_{}_PASSWORD", name.to_uppercase());
        assert_eq!(user["password"], format!("<< ${var} >>"));
        assert_eq!(
            values["container"]["env"][&var]["valueFrom"]["secretKeyRef"]["name"],
            "mcpq-nats-users"
        );
        assert!(rendered["nats-users.env.example"].contains(&format!("\n{var}=\n")));
    }

    // The KEDA CRD schema.
    let docs = documents(&rendered);
    let mut node = Command::new(required_program("node"))
        .arg(repo_root().join("tests/deploy/validate-keda.mjs"))
        .env("MODULES", repo_root().join(".tools/npm/node_modules"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = node.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&docs).unwrap().as_bytes())
            .unwrap();
    }
    let out = node.wait_with_output().unwrap();
    assert!(out.status.success());
    let keda: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keda["errors"], serde_json::json!([]), "{keda}");
    assert_eq!(
        keda["validated"], 1,
        "one ScaledObject: github has autoScale"
    );

    // What the config says is there.
    let kinds: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("Deployment", "mcpq-dispatcher"),
        ("Service", "mcpq"),
        ("PodDisruptionBudget", "mcpq-dispatcher"),
        ("HorizontalPodAutoscaler", "mcpq-dispatcher"),
        ("Deployment", "mcpq-worker-jira"),
        ("Deployment", "mcpq-worker-github"),
        ("Deployment", "mcpq-worker-slack"),
        ("ScaledObject", "mcpq-worker-github"),
        ("NetworkPolicy", "mcpq-dispatcher"),
        ("NetworkPolicy", "mcpq-worker-github"),
        ("ConfigMap", "mcpq-config"),
    ] {
        assert!(kinds.contains(&expected), "{expected:?} in {kinds:?}");
    }
    let scaled = docs.iter().find(|d| d["kind"] == "ScaledObject").unwrap();
    assert_eq!(scaled["spec"]["minReplicaCount"], 2);
    assert_eq!(scaled["spec"]["maxReplicaCount"], 10);
    let queue = &scaled["spec"]["triggers"][0];
    assert_eq!(queue["type"], "prometheus");
    assert_eq!(
        queue["metadata"]["threshold"], "100",
        "autoScale.targetQueueDepth's default"
    );
    let query = queue["metadata"]["query"].as_str().unwrap();
    assert!(
        query.contains("mcpq_queue_depth{server=\"github\"}")
            && query.contains("mcpq_queue_ack_pending{server=\"github\"}")
    );
    assert_eq!(scaled["spec"]["triggers"][1]["type"], "cpu");
    assert_eq!(scaled["spec"]["triggers"][1]["metadata"]["value"], "70");
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(
        config_map["data"]["mcp-infrastructure.yaml"]
            .as_str()
            .unwrap(),
        std::fs::read_to_string(&example).unwrap(),
        "the config goes in unchanged"
    );
    // Credentials are Secret references, never values.
    let worker = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "mcpq-worker-github")
        .unwrap();
    assert_eq!(
        worker["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "mcpq-github"
    );

    // The nats-jetstream trigger instead, when asked for.
    let other = tempfile::tempdir().unwrap();
    render(
        &example,
        other.path(),
        &["--insecure-no-auth", "--queue-trigger", "nats-jetstream"],
    );
    let docs = documents(&files(other.path()));
    let scaled = docs.iter().find(|d| d["kind"] == "ScaledObject").unwrap();
    assert_eq!(scaled["spec"]["triggers"][0]["type"], "nats-jetstream");
    assert_eq!(
        scaled["spec"]["triggers"][0]["metadata"]["stream"],
        "MCPQ_JOBS_github"
    );
}

#[test]
fn the_compose_topology_is_a_three_node_cluster_two_dispatchers_and_three_workers() {
    let dir = repo_root().join("deploy/compose");
    let compose: Value =
        yaml_serde::from_str(&std::fs::read_to_string(dir.join("compose.yaml")).unwrap()).unwrap();
    // YAML merge keys (`<<: *mcpq`), as compose applies them.
    let services: serde_json::Map<String, Value> = compose["services"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, service)| {
            let mut merged = service
                .get("<<")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            for (key, value) in service.as_object().unwrap() {
                if key != "<<" {
                    merged[key] = value.clone();
                }
            }
            (name.clone(), merged)
        })
        .collect();
    let nats: Vec<_> = services.keys().filter(|k| k.starts_with("nats-")).collect();
    assert_eq!(nats.len(), 3);
    for name in &nats {
        let command: Vec<&str> = services[name.as_str()]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let routes = command[command.iter().position(|a| *a == "--routes").unwrap() + 1];
        for other in nats.iter().filter(|o| *o != name) {
            assert!(
                routes.contains(&format!("{other}:6222")),
                "{name} routes to {other}"
            );
        }
        assert!(command.contains(&"-js"), "{name} runs JetStream");
    }
    let dispatchers = services
        .keys()
        .filter(|k| k.starts_with("dispatcher-"))
        .count();
    assert_eq!(dispatchers, 2);
    assert_eq!(services["worker"]["deploy"]["replicas"], 3);
    let url = services["worker"]["environment"]["MCPQ_NATS_URL"]
        .as_str()
        .unwrap();
    assert_eq!(url.split(',').count(), 3, "every node is a seed");
    let config = mcpq_schemas::config::Config::load(&dir.join("mcp-infrastructure.yaml")).unwrap();
    assert_eq!(config.nats.replicas, 3, "R3 on the 3-node cluster");
}
