//! The fixture upstream: a real rmcp MCP server with tools that succeed, fail, crash, sleep and
//! report who they are. Served in-process over streamable HTTP, or over stdio by the
//! `mcpq-fixture` binary.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rmcp::{
    ErrorData, RoleServer, ServerHandler, ServiceExt,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        CallToolResult, ContentBlock, ProgressNotificationParam, ProtocolVersion,
        ServerCapabilities, ServerConfig, SubscriptionFilter,
    },
    schemars,
    service::{RequestContext, SubscriptionContext, SubscriptionSink},
    tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// Text to send back.
    pub text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct AddArgs {
    pub a: i64,
    pub b: i64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct FlakyArgs {
    /// Calls with the same key share one failure count.
    pub key: String,
    /// How many calls with this key hang before one answers.
    pub failures: u32,
    /// How long a failing call hangs, in milliseconds (longer than the caller's timeout).
    pub hang_ms: u64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct ProgressArgs {
    /// How many progress notifications to send before answering.
    pub steps: u32,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct HoldArgs {
    /// Names this call in `held()` and `cancelled()`.
    pub tag: String,
    /// Answer after this many milliseconds, unless cancelled first.
    pub ms: u64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct MarkArgs {
    /// Recorded in call order (see `marks()`).
    pub tag: String,
    /// How long to take, in milliseconds.
    #[serde(default)]
    pub ms: u64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct BigArgs {
    /// Recorded like a `mark` tag (see `marks()`), so executions can be counted.
    pub tag: String,
    /// How many bytes of text to answer with.
    pub bytes: usize,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SlowArgs {
    /// How long to sleep before answering, in milliseconds.
    pub ms: u64,
}

/// State shared by every handler instance of one fixture server.
#[derive(Default)]
struct State {
    calls: AtomicU64,
    /// Whether `grow` was called, revealing the `bonus` tool.
    grown: AtomicBool,
    /// Open `subscriptions/listen` streams, told when the tool list changes.
    listeners: Mutex<Vec<SubscriptionSink>>,
    /// Calls so far per `flaky` key.
    flaky: Mutex<std::collections::HashMap<String, u32>>,
    /// When each `stamp` and `flaky` call arrived, with the job id its `_meta` carried
    /// (`io.mcpq/jobId`; "" without one).
    stamps: Mutex<Vec<(std::time::Instant, String)>>,
    /// `tools/call busy` requests still to answer with HTTP 429, and how many were.
    busy_left: AtomicU64,
    rejected: AtomicU64,
    /// `slow` calls running now, and the most that ever ran at once.
    slow_now: AtomicU64,
    slow_peak: AtomicU64,
    /// While set, the HTTP fixture answers every request 503 (an outage), noting its method.
    down: AtomicBool,
    seen_down: Mutex<Vec<String>>,
    /// Tags of `hold` calls that started, and of those the client cancelled.
    held: Mutex<Vec<String>>,
    cancelled: Mutex<Vec<String>>,
    /// Tags of `mark` calls, in arrival order.
    marks: Mutex<Vec<String>>,
    /// Sessions clients opened over HTTP (`server/discover` or `initialize` requests).
    sessions_opened: AtomicU64,
}

/// The fixture's tools.
#[derive(Clone)]
pub struct Fixture {
    tool_router: ToolRouter<Self>,
    state: Arc<State>,
    /// Served over stdio by its own process, so `crash` may exit it.
    stdio: bool,
    /// Speaks only the 2025-era revisions (sessions, `initialize`, `notifications/cancelled`),
    /// like most servers in the wild.
    legacy: bool,
}

impl Fixture {
    pub fn new(stdio: bool) -> Self {
        Fixture {
            tool_router: Self::tool_router(),
            state: Arc::default(),
            stdio,
            legacy: false,
        }
    }

    /// A handler for one request: the shared state, with `bonus` hidden until `grow`.
    fn handler(&self) -> Fixture {
        let mut handler = self.clone();
        if !self.state.grown.load(Ordering::SeqCst) {
            handler.tool_router.disable_route("bonus");
        }
        handler
    }

    /// Notes when this call arrived and the job id its `_meta` carried.
    fn note_stamp(&self, context: &RequestContext<RoleServer>) {
        let job = context.meta.0.get("io.mcpq/jobId").and_then(|v| v.as_str());
        self.state
            .stamps
            .lock()
            .expect("stamps")
            .push((std::time::Instant::now(), job.unwrap_or_default().into()));
    }
}

#[tool_router]
impl Fixture {
    #[tool(description = "Send the text back")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        self.count();
        text
    }

    #[tool(
        name = "math.add",
        description = "Add two integers (a tool name with a dot)"
    )]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        self.count();
        (a + b).to_string()
    }

    #[tool(description = "Answer with a tool error (isError: true)")]
    fn fail(&self) -> Result<CallToolResult, ErrorData> {
        self.count();
        Ok(CallToolResult::error(vec![ContentBlock::text(
            "the fixture failed on purpose",
        )]))
    }

    #[tool(description = "Sleep, then answer")]
    async fn slow(&self, Parameters(SlowArgs { ms }): Parameters<SlowArgs>) -> String {
        self.count();
        let now = self.state.slow_now.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.slow_peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.state.slow_now.fetch_sub(1, Ordering::SeqCst);
        format!("slept {ms} ms")
    }

    #[tool(description = "Report progress `steps` times (step i of steps), then answer")]
    async fn progress(
        &self,
        Parameters(ProgressArgs { steps }): Parameters<ProgressArgs>,
        context: RequestContext<RoleServer>,
    ) -> String {
        self.count();
        if let Some(token) = context.meta.get_progress_token() {
            for step in 1..=steps {
                let _ = context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), f64::from(step))
                            .with_total(f64::from(steps))
                            .with_message(format!("step {step}")),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        format!("{steps} steps done")
    }

    #[tool(description = "Answer after `ms`, unless the client cancels first (then noted)")]
    async fn hold(
        &self,
        Parameters(HoldArgs { tag, ms }): Parameters<HoldArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<String, ErrorData> {
        self.count();
        self.state.held.lock().expect("held").push(tag.clone());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(format!("held {tag}")),
            () = context.ct.cancelled() => {
                self.state.cancelled.lock().expect("cancelled").push(tag.clone());
                Err(ErrorData::internal_error("cancelled", None))
            }
        }
    }

    #[tool(description = "Answer with the W3C traceparent the request's _meta carried (or none)")]
    fn traced(&self, context: RequestContext<RoleServer>) -> String {
        self.count();
        context
            .meta
            .0
            .get("traceparent")
            .and_then(|v| v.as_str())
            .unwrap_or("none")
            .to_string()
    }

    #[tool(description = "Answer with a JSON-RPC error (invalid params): a permanent failure")]
    fn reject(&self) -> Result<String, ErrorData> {
        self.count();
        Err(ErrorData::invalid_params(
            "the fixture rejects this call on purpose",
            None,
        ))
    }

    #[tool(description = "Note the tag in call order, take `ms`, answer")]
    async fn mark(&self, Parameters(MarkArgs { tag, ms }): Parameters<MarkArgs>) -> String {
        self.count();
        self.state.marks.lock().expect("marks").push(tag.clone());
        tokio::time::sleep(Duration::from_millis(ms)).await;
        tag
    }

    #[tool(description = "The process id and how many calls this server has answered")]
    fn whoami(&self) -> String {
        let calls = self.count();
        serde_json::json!({ "pid": std::process::id(), "calls": calls }).to_string()
    }

    #[tool(
        description = "Hang (so the caller times out) for the first `failures` calls with a key, then answer"
    )]
    async fn flaky(
        &self,
        Parameters(FlakyArgs {
            key,
            failures,
            hang_ms,
        }): Parameters<FlakyArgs>,
        context: RequestContext<RoleServer>,
    ) -> String {
        self.count();
        let call = {
            let mut counts = self.state.flaky.lock().expect("flaky counts");
            let n = counts.entry(key).or_default();
            *n += 1;
            *n
        };
        self.note_stamp(&context);
        if call <= failures {
            tokio::time::sleep(Duration::from_millis(hang_ms)).await;
        }
        format!("answered on call {call}")
    }

    #[tool(description = "Answer; the HTTP fixture answers 429 to it first while told to be busy")]
    fn busy(&self) -> String {
        self.count();
        "not busy any more".into()
    }

    #[tool(description = "Note the tag like mark, and answer with `bytes` bytes of text")]
    fn big(&self, Parameters(BigArgs { tag, bytes }): Parameters<BigArgs>) -> String {
        self.count();
        self.state.marks.lock().expect("marks").push(tag.clone());
        // Text that is not all one byte, so a truncated or shuffled copy would show.
        let mut text = format!("{tag}:");
        let mut i = 0u64;
        while text.len() < bytes {
            text.push(char::from(b'a' + (i % 26) as u8));
            i = i.wrapping_mul(31).wrapping_add(7);
        }
        text.truncate(bytes);
        text
    }

    #[tool(description = "Note the time of this call (for rate measurements) and answer")]
    fn stamp(&self, context: RequestContext<RoleServer>) -> String {
        self.count();
        self.note_stamp(&context);
        "stamped".into()
    }

    #[tool(description = "Reveal the bonus tool and tell listeners the tool list changed")]

    async fn grow(&self) -> String {
        self.count();
        self.state.grown.store(true, Ordering::SeqCst);
        let listeners: Vec<_> = self.state.listeners.lock().expect("listeners").clone();
        for sink in listeners {
            let _ = sink.notify_tool_list_changed().await;
        }
        "grown".into()
    }

    #[tool(description = "Only listed after grow")]
    fn bonus(&self) -> String {
        self.count();
        "bonus".into()
    }

    #[tool(description = "Exit the process at once (stdio only)")]
    fn crash(&self) -> Result<CallToolResult, ErrorData> {
        if self.stdio {
            std::process::exit(3);
        }
        Err(ErrorData::internal_error(
            "crash works over stdio only",
            None,
        ))
    }
}

impl Fixture {
    fn count(&self) -> u64 {
        self.state.calls.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Makes the next `n` `tools/call busy` requests over HTTP answer 429.
    pub fn be_busy(&self, n: u64) {
        self.state.busy_left.store(n, Ordering::SeqCst);
    }

    /// How many requests were answered 429.
    pub fn rejected(&self) -> u64 {
        self.state.rejected.load(Ordering::SeqCst)
    }

    /// `slow` calls running now.
    pub fn slow_running(&self) -> u64 {
        self.state.slow_now.load(Ordering::SeqCst)
    }

    /// The most `slow` calls that ever ran at once.
    pub fn slow_peak(&self) -> u64 {
        self.state.slow_peak.load(Ordering::SeqCst)
    }

    /// When each `stamp` and `flaky` call arrived, in order.
    pub fn stamps(&self) -> Vec<std::time::Instant> {
        let stamps = self.state.stamps.lock().expect("stamps");
        stamps.iter().map(|(at, _)| *at).collect()
    }

    /// The job id each `stamp` and `flaky` call carried in its `_meta` (`io.mcpq/jobId`), in
    /// order.
    pub fn stamped_jobs(&self) -> Vec<String> {
        let stamps = self.state.stamps.lock().expect("stamps");
        stamps.iter().map(|(_, job)| job.clone()).collect()
    }

    /// Tags of `hold` calls that started.
    pub fn held(&self) -> Vec<String> {
        self.state.held.lock().expect("held").clone()
    }

    /// Tags of `hold` calls the client cancelled (the fixture saw the cancellation).
    pub fn cancelled(&self) -> Vec<String> {
        self.state.cancelled.lock().expect("cancelled").clone()
    }

    /// Waits until a `hold` call tagged `tag` has started.
    pub async fn until_held(&self, tag: &str) {
        crate::eventually(
            &format!("hold {tag:?} runs"),
            Duration::from_secs(30),
            || {
                let held = self.held().iter().any(|t| t == tag);
                async move { held.then_some(()) }
            },
        )
        .await;
    }

    /// Waits until the fixture has seen the `hold` call tagged `tag` cancelled by its client.
    pub async fn until_cancelled(&self, tag: &str) {
        crate::eventually(
            &format!("the upstream sees hold {tag:?} cancelled"),
            Duration::from_secs(30),
            || {
                let cancelled = self.cancelled().iter().any(|t| t == tag);
                async move { cancelled.then_some(()) }
            },
        )
        .await;
    }

    /// Tags of `mark` calls, in arrival order.
    pub fn marks(&self) -> Vec<String> {
        self.state.marks.lock().expect("marks").clone()
    }

    /// Waits until a `mark` call tagged `tag` has started.
    pub async fn until_marked(&self, tag: &str) {
        crate::eventually(
            &format!("the upstream to run mark {tag:?}"),
            Duration::from_secs(60),
            || {
                let marked = self.marks().iter().any(|t| t == tag);
                async move { marked.then_some(()) }
            },
        )
        .await;
    }

    /// How many sessions clients opened over HTTP (`server/discover` or `initialize`).
    pub fn sessions_opened(&self) -> u64 {
        self.state.sessions_opened.load(Ordering::SeqCst)
    }

    /// Starts an outage (HTTP only): every request is answered 503 until [`Fixture::come_up`].
    pub fn go_down(&self) {
        self.state.seen_down.lock().expect("seen").clear();
        self.state.down.store(true, Ordering::SeqCst);
    }

    pub fn come_up(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }

    /// The JSON-RPC methods of the requests that arrived during the outage (`tools/call:<name>`
    /// for tool calls), and forgets them.
    pub fn seen_while_down(&self) -> Vec<String> {
        std::mem::take(&mut *self.state.seen_down.lock().expect("seen"))
    }

    /// Answered calls so far.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Serves on stdin/stdout until the client goes away.
    pub async fn serve_stdio(self) -> anyhow::Result<()> {
        let running = self.handler().serve(rmcp::transport::stdio()).await?;
        running.waiting().await?;
        Ok(())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Fixture {
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        if self.legacy {
            vec![ProtocolVersion::V_2025_11_25, ProtocolVersion::V_2025_06_18].into()
        } else {
            ProtocolVersion::KNOWN_VERSIONS.into()
        }
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        self.state
            .listeners
            .lock()
            .expect("listeners")
            .push(context.sink().clone());
        context.cancelled().await;
        Ok(())
    }
}

/// Answers HTTP 429 with `Retry-After: 1` to `tools/call busy` while `busy_left` lasts, as a
/// rate-limited API would.
async fn too_many_requests(
    state: Arc<State>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    if state.down.load(Ordering::SeqCst) {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let method = body["method"].as_str().unwrap_or("?").to_string();
        let seen = match body["params"]["name"].as_str() {
            Some(name) if method == "tools/call" => format!("{method}:{name}"),
            _ => method,
        };
        state.seen_down.lock().expect("seen").push(seen);
        return axum::response::Response::builder()
            .status(503)
            .body(axum::body::Body::from("down for maintenance"))
            .unwrap_or_default();
    }
    let text = std::str::from_utf8(&bytes).unwrap_or("");
    if text.contains("\"method\":\"server/discover\"") || text.contains("\"method\":\"initialize\"")
    {
        state.sessions_opened.fetch_add(1, Ordering::SeqCst);
    }
    let is_busy_call = text.contains("\"name\":\"busy\"");
    if is_busy_call
        && state
            .busy_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        state.rejected.fetch_add(1, Ordering::SeqCst);
        return axum::response::Response::builder()
            .status(429)
            .header("Retry-After", "1")
            .body(axum::body::Body::from("too many requests"))
            .unwrap_or_default();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Serves `router` on `addr` (with `TCP_NODELAY`, as rmcp's SSE answers need) until `stop`;
/// the address it is bound to.
pub async fn serve_until(
    addr: SocketAddr,
    router: axum::Router,
    stop: CancellationToken,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled_owned().await })
            .await;
    });
    addr
}

/// A fixture served over streamable HTTP on a free loopback port, stopped on drop.
pub struct HttpFixture {
    pub addr: SocketAddr,
    pub fixture: Fixture,
    stop: CancellationToken,
}

impl HttpFixture {
    pub async fn start() -> HttpFixture {
        Self::start_on("127.0.0.1:0".parse().expect("a loopback address")).await
    }

    pub async fn start_on(addr: SocketAddr) -> HttpFixture {
        Self::serve(addr, false).await
    }

    /// A fixture that speaks only the 2025-era revisions, with sessions.
    pub async fn start_legacy() -> HttpFixture {
        Self::serve("127.0.0.1:0".parse().expect("a loopback address"), true).await
    }

    async fn serve(addr: SocketAddr, legacy: bool) -> HttpFixture {
        let mut fixture = Fixture::new(false);
        fixture.legacy = legacy;
        let stop = CancellationToken::new();
        let shared = fixture.clone();
        let service: StreamableHttpService<Fixture, LocalSessionManager> =
            StreamableHttpService::new(
                move || Ok(shared.handler()),
                Default::default(),
                StreamableHttpServerConfig::default()
                    .with_legacy_session_mode(legacy)
                    .with_json_response(true)
                    .with_cancellation_token(stop.child_token()),
            );
        let busy = fixture.state.clone();
        let router =
            axum::Router::new()
                .nest_service("/mcp", service)
                .layer(axum::middleware::from_fn(move |request, next| {
                    too_many_requests(busy.clone(), request, next)
                }));
        let addr = serve_until(addr, router, stop.clone()).await;
        HttpFixture {
            addr,
            fixture,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
