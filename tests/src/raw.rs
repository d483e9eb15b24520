//! MCP clients that keep every byte: JSON-RPC written and read as `serde_json::Value`, with
//! no SDK's model in between to drop or add a field. The fidelity tests compare what a server
//! says directly ([`StdioPeer`]) with what mcpq says for it ([`HttpPeer`]), field for field.

use std::{path::Path, process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

/// How long one request may take.
const WAIT: Duration = Duration::from_secs(30);

/// What mcpq's workers declare to their upstreams; a direct client declares the same, so that
/// a server that lists according to its client's capabilities lists the same both ways.
pub fn worker_capabilities() -> Value {
    json!({
        "sampling": {"tools": {}, "context": {}},
        "elicitation": {"form": {}, "url": {}},
        "roots": {}
    })
}

/// What a 2026-07-28 request carries in its `_meta`: its revision, client and capabilities.
fn stateless_meta(capabilities: &Value) -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "fidelity-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    })
}

/// A JSON-RPC error (`{code, message, data}`) or a transport failure's text.
pub type Refusal = Value;

/// A peer that answers requests: either client here.
trait Requests {
    async fn request(&mut self, method: &str, params: Value) -> Result<Value, Refusal>;
}

impl Requests for StdioPeer {
    async fn request(&mut self, method: &str, params: Value) -> Result<Value, Refusal> {
        StdioPeer::request(self, method, params).await
    }
}

impl Requests for HttpPeer {
    async fn request(&mut self, method: &str, params: Value) -> Result<Value, Refusal> {
        HttpPeer::request(self, method, params).await
    }
}

/// A JSON-RPC answer's result, or its error.
fn outcome(method: &str, message: &Value) -> Result<Value, Refusal> {
    match (message.get("result"), message.get("error")) {
        (Some(result), _) => Ok(result.clone()),
        (None, Some(error)) => Err(error.clone()),
        _ => Err(json!(format!(
            "{method}: neither result nor error: {message}"
        ))),
    }
}

/// Every page of a list (`field` of each result), following `nextCursor`.
async fn list_all(
    peer: &mut impl Requests,
    method: &str,
    field: &str,
) -> Result<Vec<Value>, Refusal> {
    let mut all = Vec::new();
    let mut cursor: Option<Value> = None;
    loop {
        let params = match &cursor {
            Some(cursor) => json!({"cursor": cursor}),
            None => json!({}),
        };
        let page = peer.request(method, params).await?;
        all.extend(page[field].as_array().cloned().unwrap_or_default());
        match page.get("nextCursor") {
            Some(next) if !next.is_null() => cursor = Some(next.clone()),
            _ => return Ok(all),
        }
    }
}

/// A stdio MCP server, spoken to directly in the revision it prefers, as mcpq's worker speaks
/// to it: 2026-07-28 when it answers `server/discover`, else the 2025-era handshake.
pub struct StdioPeer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: i64,
    /// Whether requests carry their revision, client and capabilities (2026-07-28).
    stateless: bool,
    /// The server's `server/discover` or `initialize` result.
    pub initialized: Value,
}

impl StdioPeer {
    /// Starts `command` with only `env` (and PATH, HOME), declaring the workers' capabilities.
    pub async fn start(command: &Path, args: &[&str], env: &[(&str, &str)]) -> StdioPeer {
        let mut peer = StdioPeer::spawn(command, args, env);
        peer.stateless = true;
        if let Ok(discovered) = peer.request("server/discover", json!({})).await
            && discovered["supportedVersions"]
                .as_array()
                .is_some_and(|v| v.contains(&json!("2026-07-28")))
        {
            peer.initialized = discovered;
            return peer;
        }
        // A fresh process for the handshake, as the worker opens a fresh connection.
        peer.stop().await;
        let mut peer = StdioPeer::spawn(command, args, env);
        peer.initialized = peer
            .request(
                "initialize",
                json!({
                    "protocolVersion": "2025-11-25",
                    "capabilities": worker_capabilities(),
                    "clientInfo": {"name": "fidelity-test", "version": "1"}
                }),
            )
            .await
            .expect("initialize the stdio server");
        peer.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        peer
    }

    /// The revision spoken: `2026-07-28` or the one `initialize` agreed.
    pub fn revision(&self) -> String {
        if self.stateless {
            "2026-07-28".into()
        } else {
            self.initialized["protocolVersion"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        }
    }

    fn spawn(command: &Path, args: &[&str], env: &[(&str, &str)]) -> StdioPeer {
        let mut command = tokio::process::Command::new(command);
        command.env_clear();
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the stdio server");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        StdioPeer {
            child,
            stdin,
            lines,
            next_id: 0,
            stateless: false,
            initialized: Value::Null,
        }
    }

    async fn write(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).expect("serialise");
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .expect("write to the server");
    }

    /// Sends a request and reads until its answer; what the server asks meanwhile is answered
    /// as mcpq's worker answers outside a call (no roots), notifications are passed over.
    pub async fn request(&mut self, method: &str, mut params: Value) -> Result<Value, Refusal> {
        self.next_id += 1;
        let id = self.next_id;
        if self.stateless {
            params["_meta"] = stateless_meta(&worker_capabilities());
        }
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer within {WAIT:?}"))
                .expect("read from the server")
                .unwrap_or_else(|| panic!("{method}: the server closed its stdout"));
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(asked) = message.get("method").and_then(Value::as_str) {
                if let Some(asked_id) = message.get("id") {
                    let answer = match asked {
                        "roots/list" => {
                            json!({"jsonrpc": "2.0", "id": asked_id, "result": {"roots": []}})
                        }
                        "ping" => json!({"jsonrpc": "2.0", "id": asked_id, "result": {}}),
                        _ => {
                            json!({"jsonrpc": "2.0", "id": asked_id, "error": {"code": -32601, "message": "not outside a call"}})
                        }
                    };
                    self.write(&answer).await;
                }
                continue;
            }
            if message.get("id") != Some(&json!(id)) {
                continue;
            }
            return outcome(method, &message);
        }
    }

    /// Every page of a list (`field` of each result).
    pub async fn list(&mut self, method: &str, field: &str) -> Result<Vec<Value>, Refusal> {
        list_all(self, method, field).await
    }

    /// Closes stdin and waits for the server to end (killed if it does not).
    pub async fn stop(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The revision an [`HttpPeer`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2025-11-25: `initialize`, then a session (`Mcp-Session-Id`).
    Sessions,
    /// 2026-07-28: every request stateless, carrying its revision, client and capabilities.
    Stateless,
}

/// An MCP endpoint over streamable HTTP (mcpq's `/mcp` or `/servers/<name>/mcp`).
pub struct HttpPeer {
    url: String,
    http: reqwest::Client,
    era: Era,
    session: Option<String>,
    next_id: i64,
    capabilities: Value,
    /// The server's `initialize` result (2025-11-25) or `server/discover` result (2026-07-28).
    pub initialized: Value,
}

impl HttpPeer {
    /// Opens the endpoint in `era`, declaring `capabilities`.
    pub async fn open(url: &str, era: Era, capabilities: Value) -> HttpPeer {
        let mut peer = HttpPeer {
            url: url.to_string(),
            http: reqwest::Client::new(),
            era,
            session: None,
            next_id: 0,
            capabilities: capabilities.clone(),
            initialized: Value::Null,
        };
        peer.initialized = match era {
            Era::Sessions => {
                let result = peer
                    .request(
                        "initialize",
                        json!({
                            "protocolVersion": "2025-11-25",
                            "capabilities": capabilities,
                            "clientInfo": {"name": "fidelity-test", "version": "1"}
                        }),
                    )
                    .await
                    .expect("initialize through mcpq");
                peer.notify("notifications/initialized").await;
                result
            }
            Era::Stateless => peer
                .request("server/discover", json!({}))
                .await
                .expect("server/discover through mcpq"),
        };
        peer
    }

    async fn notify(&self, method: &str) {
        let response = self
            .post(method, None, &json!({"jsonrpc": "2.0", "method": method}))
            .send()
            .await
            .expect("post a notification");
        assert!(
            response.status().is_success(),
            "{method}: {}",
            response.status()
        );
    }

    fn post(&self, method: &str, name: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(&self.url)
            .header("Accept", "application/json, text/event-stream")
            .json(body);
        match self.era {
            Era::Sessions => {
                if let Some(session) = &self.session {
                    request = request
                        .header("Mcp-Session-Id", session)
                        .header("MCP-Protocol-Version", "2025-11-25");
                }
            }
            Era::Stateless => {
                request = request
                    .header("MCP-Protocol-Version", "2026-07-28")
                    .header("Mcp-Method", method);
                if let Some(name) = name {
                    request = request.header("Mcp-Name", name);
                }
            }
        }
        request
    }

    /// Sends a request and reads its answer (a JSON body, or the SSE event that carries it).
    pub async fn request(&mut self, method: &str, mut params: Value) -> Result<Value, Refusal> {
        self.next_id += 1;
        let id = self.next_id;
        if self.era == Era::Stateless {
            params["_meta"] = stateless_meta(&self.capabilities);
        }
        let name = match method {
            "tools/call" | "prompts/get" => params["name"].as_str().map(str::to_string),
            "resources/read" => params["uri"].as_str().map(str::to_string),
            _ => None,
        };
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let response = tokio::time::timeout(WAIT, self.post(method, name.as_deref(), &body).send())
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer within {WAIT:?}"))
            .map_err(|e| json!(e.to_string()))?;
        if let Some(session) = response.headers().get("mcp-session-id") {
            self.session = session.to_str().ok().map(str::to_string);
        }
        let json = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let text = tokio::time::timeout(WAIT, response.text())
            .await
            .unwrap_or_else(|_| panic!("{method}: the answer did not end within {WAIT:?}"))
            .map_err(|e| json!(e.to_string()))?;
        let messages: Vec<Value> = if json {
            serde_json::from_str(&text).into_iter().collect()
        } else {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim_start()).ok())
                .collect()
        };
        let message = messages
            .into_iter()
            .find(|m| m.get("id") == Some(&json!(id)))
            .unwrap_or_else(|| panic!("{method}: no answer in {text:?}"));
        outcome(method, &message)
    }

    /// Every page of a list (`field` of each result).
    pub async fn list(&mut self, method: &str, field: &str) -> Result<Vec<Value>, Refusal> {
        list_all(self, method, field).await
    }
}
