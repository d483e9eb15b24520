//! `mcpq deploy render`: Kubernetes manifests from the config — the dispatcher (Deployment,
//! Service, PodDisruptionBudget, HorizontalPodAutoscaler), one worker Deployment per server with
//! a KEDA ScaledObject on its queue depth, NetworkPolicies, the config as a ConfigMap, Secret
//! references for credentials, Prometheus scrape annotations, and values for the official NATS
//! Helm chart (a 3-node JetStream cluster). Pure: the same config renders the same files.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use clap::Subcommand;
use mcpq_schemas::config::{Config, ServerConfig, Transport};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum DeployCommand {
    /// Write Kubernetes manifests for the config into a directory (apply with `kubectl apply -k DIR`).
    Render(RenderArgs),
}

#[derive(clap::Args)]
pub struct RenderArgs {
    /// The config file.
    #[arg(
        long,
        short,
        env = "MCPQ_CONFIG",
        default_value = "mcp-infrastructure.yaml"
    )]
    config: PathBuf,
    /// Where the manifests go (created if missing).
    #[arg(long, short)]
    output: PathBuf,
    #[command(flatten)]
    options: RenderOptions,
}

/// What the config does not say about the cluster.
#[derive(clap::Args, Clone, Debug)]
pub struct RenderOptions {
    /// The Kubernetes namespace.
    #[arg(long, default_value = "mcpq")]
    pub namespace: String,
    /// The mcpq container image.
    #[arg(long, default_value = concat!("ghcr.io/mcpq/mcpq:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// The host name clients reach the dispatcher at (its allowed Host).
    #[arg(long, default_value = "mcpq.example.com")]
    pub host: String,
    /// The Prometheus that KEDA asks for queue depth.
    #[arg(long, default_value = "http://prometheus-server.monitoring.svc:80")]
    pub prometheus: String,
    /// The queue-depth trigger of the ScaledObjects: `prometheus` (on mcpq's metrics) or
    /// `nats-jetstream` (KEDA reads the consumers itself; see docs/scaling.md for its caveat).
    #[arg(long, default_value = "prometheus", value_parser = ["prometheus", "nats-jetstream"])]
    pub queue_trigger: String,
    /// NATS monitoring endpoint for the `nats-jetstream` trigger.
    #[arg(long, default_value = "nats.mcpq.svc:8222")]
    pub nats_monitoring: String,
    /// Render a dispatcher without authentication (the config has no auth: section): anyone
    /// who reaches it may call every tool. Only behind something that authenticates for you.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

pub fn run(command: DeployCommand) -> ExitCode {
    let DeployCommand::Render(args) = command;
    let config = match crate::config_cmd::load(&args.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let text = match std::fs::read_to_string(&args.config) {
        Ok(text) => text,
        Err(e) => return crate::run::fail(format!("cannot read {}: {e}", args.config.display())),
    };
    if config.auth.is_none() && !args.options.insecure_no_auth {
        eprintln!(
            "mcpq: refusing to render a dispatcher without authentication: the config has no auth: section, so anyone who reaches it could call every tool. \
             Add auth: (see `mcpq auth new-key` and docs/security.md), or pass --insecure-no-auth if something in front authenticates"
        );
        return ExitCode::from(crate::EXIT_CONFIG);
    }
    let files = render(&config, &text, &args.options);
    if let Err(e) = std::fs::create_dir_all(&args.output) {
        return crate::run::fail(format!("cannot create {}: {e}", args.output.display()));
    }
    for (name, content) in &files {
        let path = args.output.join(name);
        if let Err(e) = std::fs::write(&path, content) {
            return crate::run::fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    if config.auth.is_none() {
        eprintln!(
            "mcpq: WARNING: the config has no auth: section; the dispatcher is rendered with --insecure-no-auth (anyone who reaches it may call every tool): add auth: before exposing it"
        );
    }
    let c = &config.nats.credentials;
    if c.user.is_none() && c.creds.is_none() && c.nkey.is_none() {
        eprintln!(
            "mcpq: NOTE: the rendered NATS admits only its users (nats-values.yaml): set nats: {{user: \"${{env:MCPQ_NATS_USER}}\", password: \"${{env:MCPQ_NATS_PASSWORD}}\"}} in the config, \
             and those variables in the mcpq-dispatcher and mcpq-worker-<server> Secrets (users dispatcher and worker)"
        );
    }
    eprintln!(
        "mcpq: wrote {n} files to {dir} (kubectl apply -k {dir}; NATS first: helm install nats nats/nats -n {ns} -f {dir}/nats-values.yaml)",
        n = files.len(),
        dir = args.output.display(),
        ns = args.options.namespace,
    );
    ExitCode::SUCCESS
}

/// Every file, by name: YAML documents, `---`-separated.
pub fn render(
    config: &Config,
    config_text: &str,
    options: &RenderOptions,
) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut resources = Vec::new();
    let mut put = |name: String, docs: Vec<Value>, resources: &mut Vec<String>| {
        resources.push(name.clone());
        files.insert(name, yaml(&docs));
    };
    put(
        "config.yaml".into(),
        vec![config_map(config_text, options)],
        &mut resources,
    );
    put(
        "dispatcher.yaml".into(),
        dispatcher(config, options),
        &mut resources,
    );
    for server in &config.servers {
        put(
            format!("worker-{}.yaml", server.name),
            worker(config, server, options),
            &mut resources,
        );
    }
    put(
        "network-policies.yaml".into(),
        network_policies(config, options),
        &mut resources,
    );
    files.insert(
        "kustomization.yaml".into(),
        yaml(&[json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": options.namespace,
            "resources": resources,
            // The NATS users' passwords: copy nats-users.env.example to nats-users.env and
            // fill it in (never commit it).
            "secretGenerator": [{"name": NATS_USERS_SECRET, "envs": ["nats-users.env"]}],
            "generatorOptions": {"disableNameSuffixHash": true},
        })]),
    );
    files.insert("nats-values.yaml".into(), nats_values(config));
    files.insert(
        "nats-users.env.example".into(),
        format!(
            "# The passwords of mcpq's NATS users (deploy/nats/roles.conf), for Secret {NATS_USERS_SECRET}:\n\
             # copy to nats-users.env, fill in long random values, and never commit it.\n{}",
            NATS_USERS
                .iter()
                .map(|(_, var, _, _)| format!("{var}=\n"))
                .collect::<String>()
        ),
    );
    files
}

fn yaml(docs: &[Value]) -> String {
    let header =
        "# Rendered by `mcpq deploy render` from the config; render again after changing it.\n";
    let body = docs
        .iter()
        .map(|doc| {
            let mut text = yaml_serde::to_string(doc).unwrap_or_default();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text
        })
        .collect::<Vec<_>>()
        .join("---\n");
    format!("{header}{body}")
}

fn labels(component: &str, server: Option<&str>) -> Value {
    let mut labels = json!({
        "app.kubernetes.io/name": "mcpq",
        "app.kubernetes.io/component": component,
    });
    if let Some(server) = server {
        labels["mcpq.io/server"] = json!(server);
    }
    labels
}

fn metadata(name: &str, options: &RenderOptions, labels: Value) -> Value {
    json!({"name": name, "namespace": options.namespace, "labels": labels})
}

/// The NATS URL of the pods: the config's, else the Helm chart's service.
fn nats_url(config: &Config, options: &RenderOptions) -> String {
    config
        .nats
        .url
        .clone()
        .unwrap_or_else(|| format!("nats://nats.{}.svc:4222", options.namespace))
}

const CONFIG_PATH: &str = "/etc/mcpq/mcp-infrastructure.yaml";
const HTTP_PORT: u16 = 7400;
const METRICS_PORT: u16 = 9464;

fn config_map(text: &str, options: &RenderOptions) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata("mcpq-config", options, labels("config", None)),
        "data": {"mcp-infrastructure.yaml": text},
    })
}

/// A pod template running `mcpq <args>` with the config mounted, probes on the metrics port,
/// the scrape annotations, and credentials from the optional Secret `secret`.
fn pod(
    component_labels: Value,
    args: Vec<String>,
    ports: Value,
    secret: &str,
    options: &RenderOptions,
) -> Value {
    json!({
        "metadata": {
            "labels": component_labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": METRICS_PORT.to_string(),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "terminationGracePeriodSeconds": 45,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "mcpq",
                "image": options.image,
                "args": args,
                "env": [{"name": "MCPQ_CONFIG", "value": CONFIG_PATH}],
                "envFrom": [{"secretRef": {"name": secret, "optional": true}}],
                "ports": ports,
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 6},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/mcpq", "readOnly": true},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": "mcpq-config"}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    })
}

fn dispatcher(config: &Config, options: &RenderOptions) -> Vec<Value> {
    let labels = labels("dispatcher", None);
    let mut args: Vec<String> = [
        "dispatcher",
        "--listen",
        &format!("0.0.0.0:{HTTP_PORT}"),
        "--metrics-listen",
        &format!("0.0.0.0:{METRICS_PORT}"),
        "--nats",
        &nats_url(config, options),
        "--allowed-host",
        &options.host,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if config.auth.is_none() {
        args.push("--insecure-no-auth".into());
    }
    let ports = json!([
        {"name": "http", "containerPort": HTTP_PORT},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ]);
    vec![
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata("mcpq-dispatcher", options, labels.clone()),
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": pod(labels.clone(), args, ports, "mcpq-dispatcher", options),
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata("mcpq", options, labels.clone()),
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        }),
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata("mcpq-dispatcher", options, labels.clone()),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
        }),
        json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata("mcpq-dispatcher", options, labels.clone()),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mcpq-dispatcher"},
                "minReplicas": 2,
                "maxReplicas": 10,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
            },
        }),
    ]
}

fn worker(config: &Config, server: &ServerConfig, options: &RenderOptions) -> Vec<Value> {
    let name = format!("mcpq-worker-{}", server.name);
    let labels = labels("worker", Some(&server.name));
    let args = [
        "worker",
        "--server",
        &server.name,
        "--metrics-listen",
        &format!("0.0.0.0:{METRICS_PORT}"),
        "--nats",
        &nats_url(config, options),
        "--drain-grace",
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ports = json!([{"name": "metrics", "containerPort": METRICS_PORT}]);
    let replicas = server.autoscale.map_or(server.replicas, |a| a.min.max(1));
    let mut docs = vec![json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(&name, options, labels.clone()),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": pod(labels.clone(), args, ports, &format!("mcpq-{}", server.name), options),
        },
    })];
    if let Some(scale) = server.autoscale {
        let queue = match options.queue_trigger.as_str() {
            "nats-jetstream" => json!({
                "type": "nats-jetstream",
                "metadata": {
                    "natsServerMonitoringEndpoint": options.nats_monitoring,
                    "account": "$G",
                    "stream": mcpq_schemas::names::jobs_stream(&server.name),
                    "consumer": mcpq_schemas::names::consumer_name(&server.name, server.lane),
                    "lagThreshold": scale.target_queue_depth.to_string(),
                },
            }),
            _ => json!({
                "type": "prometheus",
                "metadata": {
                    "serverAddress": options.prometheus,
                    // Every dispatcher replica reports the same gauges: max over them, summed over lanes.
                    "query": format!(
                        "sum(max by (lane) (mcpq_queue_depth{{server=\"{s}\"}})) + sum(max by (lane) (mcpq_queue_ack_pending{{server=\"{s}\"}}))",
                        s = server.name
                    ),
                    "threshold": scale.target_queue_depth.to_string(),
                },
            }),
        };
        let mut triggers = vec![queue];
        if let Some(cpu) = scale.target_cpu_percent {
            triggers.push(json!({"type": "cpu", "metricType": "Utilization", "metadata": {"value": cpu.to_string()}}));
        }
        docs.push(json!({
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": metadata(&name, options, labels),
            "spec": {
                "scaleTargetRef": {"name": name},
                "minReplicaCount": scale.min,
                "maxReplicaCount": scale.max,
                "pollingInterval": 15,
                "cooldownPeriod": 300,
                "triggers": triggers,
            },
        }));
    }
    docs
}

/// The ports a server's upstream is reached on (stdio servers: HTTPS, for what the child calls).
fn upstream_ports(server: &ServerConfig) -> Vec<u16> {
    let port = |url: &str| {
        let rest = url.split_once("://").map_or("", |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(if url.starts_with("https://") { 443 } else { 80 })
    };
    let mut ports: Vec<u16> = match &server.transport {
        Transport::Http { endpoints, .. } => endpoints.iter().map(|e| port(&e.url)).collect(),
        Transport::Stdio { .. } => vec![443],
    };
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The Secret holding the NATS users' passwords.
const NATS_USERS_SECRET: &str = "mcpq-nats-users";

/// mcpq's NATS users (as deploy/nats/roles.conf defines them): name, password variable, and
/// the subjects it may publish and subscribe to. Pipelines get users of their own (see
/// docs/security.md), never one of these.
const NATS_USERS: [(&str, &str, &[&str], &[&str]); 3] = [
    (
        "dispatcher",
        "MCPQ_DISPATCHER_PASSWORD",
        &[
            "mcpq.jobs.>",
            "mcpq.sched.>",
            "mcpq.input.>",
            "mcpq.callbacks.>",
            "mcpq.callbacks-dead.>",
            "mcpq.done.>",
            "$JS.API.>",
            "$JS.ACK.>",
            "$KV.>",
            "$O.>",
            "_INBOX.>",
        ],
        &["_INBOX.>", "mcpq.events.>"],
    ),
    (
        "worker",
        "MCPQ_WORKER_PASSWORD",
        &[
            "mcpq.jobs.>",
            "mcpq.dlq.>",
            "mcpq.audit.>",
            "mcpq.events.>",
            "mcpq.holds.>",
            "mcpq.callbacks.>",
            "mcpq.done.>",
            "_INBOX.>",
            "$JS.API.>",
            "$JS.ACK.>",
            "$KV.>",
            "$O.>",
        ],
        &["_INBOX.>", "mcpq.input.>", "mcpq.holds.>", "mcpq.bell.>"],
    ),
    (
        "operator",
        "MCPQ_OPERATOR_PASSWORD",
        &["$JS.API.>", "mcpq.jobs.>", "_INBOX.>"],
        &["_INBOX.>", "mcpq.done.>"],
    ),
];

fn network_policies(config: &Config, options: &RenderOptions) -> Vec<Value> {
    let nats_egress = json!([
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}}], "ports": [{"protocol": "TCP", "port": 4222}]},
    ]);
    // NATS itself admits clients from mcpq's pods (and from pods labelled as pipelines) only;
    // its cluster routes from its own pods; its monitoring port from within the cluster.
    let mcpq_pods = json!({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mcpq"}}});
    let pipeline_pods = json!({"podSelector": {"matchLabels": {"mcpq.io/pipeline": "true"}}});
    let nats_pods = json!({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}});
    let mut docs = vec![
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata("mcpq-nats", options, labels("nats", None)),
            "spec": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [mcpq_pods, pipeline_pods], "ports": [{"protocol": "TCP", "port": 4222}]},
                    {"from": [nats_pods], "ports": [{"protocol": "TCP", "port": 6222}]},
                    {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 8222}]},
                ],
            },
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata("mcpq-dispatcher", options, labels("dispatcher", None)),
            "spec": {
                "podSelector": {"matchLabels": labels("dispatcher", None)},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": HTTP_PORT}, {"protocol": "TCP", "port": METRICS_PORT}]}],
                "egress": nats_egress,
            },
        }),
    ];
    for server in &config.servers {
        let mut egress = nats_egress.as_array().cloned().unwrap_or_default();
        let ports: Vec<Value> = upstream_ports(server)
            .into_iter()
            .map(|port| json!({"protocol": "TCP", "port": port}))
            .collect();
        egress.push(json!({"ports": ports}));
        docs.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(&format!("mcpq-worker-{}", server.name), options, labels("worker", Some(&server.name))),
            "spec": {
                "podSelector": {"matchLabels": labels("worker", Some(&server.name))},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": METRICS_PORT}]}],
                "egress": egress,
            },
        }));
    }
    docs
}

/// Values for the official NATS Helm chart (nats-io/k8s, chart `nats`): a 3-node cluster with
/// JetStream on persistent volumes, sized for mcpq's streams.
fn nats_values(config: &Config) -> String {
    let values = json!({
        "config": {
            "cluster": {"enabled": true, "replicas": 3},
            "jetstream": {
                "enabled": true,
                "fileStore": {"enabled": true, "pvc": {"enabled": true, "size": "20Gi"}},
                "memoryStore": {"enabled": true, "maxSize": "512Mi"},
            },
            "monitor": {"enabled": true},
            // Only mcpq's users (deploy/nats/roles.conf), their passwords from Secret
            // mcpq-nats-users; add one user per pipeline in the same way.
            "merge": {"authorization": {"users": NATS_USERS.iter().map(|(user, var, publish, subscribe)| json!({
                "user": user,
                "password": format!("<< ${var} >>"),
                "permissions": {"publish": publish, "subscribe": subscribe},
            })).collect::<Vec<_>>()}},
        },
        // The chart takes env as a map of name to value (or valueFrom).
        "container": {"env": NATS_USERS.iter().map(|(_, var, _, _)| (var.to_string(), json!({
            "valueFrom": {"secretKeyRef": {"name": NATS_USERS_SECRET, "key": var}},
        }))).collect::<serde_json::Map<_, _>>()},
        "podTemplate": {"topologySpreadConstraints": {"kubernetes.io/hostname": {"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}}},
    });
    format!(
        "# Values for the official NATS Helm chart: helm repo add nats https://nats-io.github.io/k8s/helm/charts/\n\
         # helm install nats nats/nats -n {{namespace}} -f nats-values.yaml\n\
         # mcpq's streams and buckets are created with nats.replicas: {} (set it to 3 for this cluster).\n{}",
        config.nats.replicas,
        yaml_serde::to_string(&values).unwrap_or_default()
    )
}
