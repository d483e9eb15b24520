//! The MCP endpoints: an rmcp `ServerHandler` that lists tools from the catalog and turns each
//! `tools/call` into a job, then answers with the job's reply.
//!
//! `/mcp` serves every server's tools as `<server>__<tool>`; `/servers/<name>/mcp` serves one
//! server's tools under their own names. Server names never contain `__`, so the first `__` of an
//! aggregated name always ends the server name, whatever the tool name holds.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use mcpq_schemas::{Job, JobError, Lane, McpRequest, Outcome, now_ms};
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ErrorCode, Implementation,
        ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
        SubscriptionFilter, Tool,
    },
    service::{RequestContext, SubscriptionContext},
};

use tracing::Instrument;

use crate::{catalog::Catalog, publish::Client};

/// Separates server and tool in aggregated tool names.
pub const NAME_SEPARATOR: &str = "__";
/// Request `_meta` key: how long the caller will wait for this call, in milliseconds.
pub const META_TIMEOUT_MS: &str = "io.mcpq/timeoutMs";
/// Request `_meta` key: the priority lane for this call (`high`, `normal`, `low`).
pub const META_LANE: &str = "io.mcpq/lane";
/// Request `_meta` key: an idempotency key; calls with the same key run once.
pub const META_IDEMPOTENCY_KEY: &str = "io.mcpq/idempotencyKey";

/// How long a call may wait in the queue before its upstream timeout starts, by default.
const QUEUE_ALLOWANCE: Duration = Duration::from_secs(30);

/// What the dispatcher knows about one configured server.
#[derive(Debug, Clone)]
pub struct ServerDefaults {
    pub lane: Lane,
    pub timeout: Duration,
}

/// State shared by every endpoint of one dispatcher.
pub struct Shared {
    pub client: Client,
    pub catalog: Catalog,
    pub servers: BTreeMap<String, ServerDefaults>,
}

/// One MCP endpoint: all servers, or one.
#[derive(Clone)]
pub struct Gateway {
    scope: Option<String>,
    shared: Arc<Shared>,
}

impl Gateway {
    /// The aggregated endpoint.
    pub fn all(shared: Arc<Shared>) -> Self {
        Gateway {
            scope: None,
            shared,
        }
    }

    /// The endpoint of one server.
    pub fn server(shared: Arc<Shared>, name: String) -> Self {
        Gateway {
            scope: Some(name),
            shared,
        }
    }

    /// Splits a tool name as this endpoint exposes it into (server, upstream tool name).
    fn resolve<'a>(&'a self, name: &'a str) -> Result<(&'a str, &'a str), ErrorData> {
        match &self.scope {
            Some(server) => Ok((server.as_str(), name)),
            None => name.split_once(NAME_SEPARATOR).ok_or_else(|| {
                ErrorData::invalid_params(
                    format!(
                        "unknown tool {name:?}: tools here are named <server>{NAME_SEPARATOR}<tool> (servers: {})",
                        self.server_list()
                    ),
                    None,
                )
            }),
        }
    }

    fn server_list(&self) -> String {
        self.shared
            .servers
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn tools(&self) -> Vec<Tool> {
        match &self.scope {
            Some(server) => self
                .shared
                .catalog
                .server(server)
                .map(|entry| entry.tools)
                .unwrap_or_default(),
            None => self
                .shared
                .catalog
                .all()
                .into_iter()
                .filter(|(server, _)| self.shared.servers.contains_key(server))
                .flat_map(|(server, entry)| {
                    entry.tools.into_iter().map(move |mut tool| {
                        tool.name = format!("{server}{NAME_SEPARATOR}{}", tool.name).into();
                        tool
                    })
                })
                .collect(),
        }
    }
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        let name = match &self.scope {
            Some(server) => format!("mcpq/{server}"),
            None => "mcpq".to_string(),
        };
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new(name, env!("CARGO_PKG_VERSION")))
        .with_instructions(match &self.scope {
            Some(server) => format!("Tools of the upstream MCP server {server:?}, called through the mcpq queue."),
            None => format!(
                "Tools of several upstream MCP servers, called through the mcpq queue; each tool is named <server>{NAME_SEPARATOR}<tool>."
            ),
        })
    }

    /// Tool list changes only; rmcp intersects this with what the client asked for.
    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    /// 2026-07-28 clients hear about catalog changes on a `subscriptions/listen` stream.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.shared.catalog.changes();
        changes.mark_unchanged();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if context.sink().notify_tool_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (server, tool) = self.resolve(&request.name)?;
        let Some(defaults) = self.shared.servers.get(server) else {
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown server {server:?} (servers: {})",
                    self.server_list()
                ),
                None,
            ));
        };
        // A server whose catalog is not published yet still takes jobs: they wait in the queue
        // for its workers. Once the catalog is known, unknown tools are refused at the door.
        if let Some(entry) = self.shared.catalog.server(server)
            && !entry.tools.iter().any(|t| t.name == tool)
        {
            let known: Vec<_> = entry.tools.iter().map(|t| t.name.as_ref()).collect();
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {tool:?} on server {server:?} (tools: {})",
                    known.join(", ")
                ),
                None,
            ));
        }
        let meta = request.meta.as_ref().map(|m| &m.0.0);
        let wait = meta
            .and_then(|m| m.get(META_TIMEOUT_MS))
            .and_then(serde_json::Value::as_u64)
            .map_or(defaults.timeout + QUEUE_ALLOWANCE, Duration::from_millis);
        let lane = meta
            .and_then(|m| m.get(META_LANE))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or(defaults.lane);
        let mut job = Job::new(
            server,
            McpRequest::call_tool(tool, request.arguments.clone()),
        );
        job.lane = lane;
        job.deadline_ms = Some(now_ms() + wait.as_millis() as u64);
        if let Some(key) = meta
            .and_then(|m| m.get(META_IDEMPOTENCY_KEY))
            .and_then(|v| v.as_str())
        {
            job = job.with_idempotency_key(key);
        }
        job.traceparent = meta
            .and_then(|m| m.get("traceparent"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let span = tracing::info_span!("call", job_id = %job.id, server, tool);
        let reply = self
            .shared
            .client
            .call(&job, wait)
            .instrument(span)
            .await
            .map_err(|e| {
                ErrorData::internal_error(e.to_string(), Some(serde_json::json!({"jobId": job.id})))
            })?;
        match reply.outcome {
            Outcome::Ok { result } => serde_json::from_value::<CallToolResult>(result)
                .map(CallToolResponse::Complete)
                .map_err(|e| {
                    ErrorData::internal_error(
                        format!(
                            "job {}: the upstream's answer is not a tool result: {e}",
                            job.id
                        ),
                        None,
                    )
                }),
            Outcome::Error { error } => Err(to_mcp_error(job.id, error)),
        }
    }
}

/// A job error as the JSON-RPC error the caller sees. Upstream JSON-RPC errors keep their code.
fn to_mcp_error(job_id: uuid::Uuid, error: JobError) -> ErrorData {
    let mut data = serde_json::json!({ "jobId": job_id, "kind": error.kind });
    if let Some(upstream) = &error.data {
        data["upstream"] = upstream.clone();
    }
    let code = error
        .code
        .and_then(|c| i32::try_from(c).ok())
        .map_or(ErrorCode::INTERNAL_ERROR, ErrorCode);
    ErrorData::new(code, error.message, Some(data))
}
