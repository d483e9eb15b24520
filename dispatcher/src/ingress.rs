//! The MCP endpoints: an rmcp `ServerHandler` that lists tools from the catalog and turns each
//! `tools/call` into a job, then answers with the job's reply.
//!
//! `/mcp` serves every server's tools as `<server>__<tool>`; `/servers/<name>/mcp` serves one
//! server's tools under their own names. Server names never contain `__`, so the first `__` of an
//! aggregated name always ends the server name, whatever the tool name holds.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use mcpq_schemas::{
    Job, JobError, JobRecord, Lane, McpRequest, Outcome, ProgressEvent,
    config::{TaskMode, TaskPolicy},
    now_ms,
};
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams,
        CreateTaskResult, ErrorCode, GetTaskParams, GetTaskResult, Implementation, ListToolsResult,
        PaginatedRequestParams, ProgressNotificationParam, ProgressToken, ServerCapabilities,
        ServerConfig, SubscriptionFilter, Tool, UpdateTaskParams,
    },
    service::{RequestContext, SubscriptionContext},
};

use tracing::Instrument;

use crate::{Cancel, catalog::Catalog, publish::Client, tasks};

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
    pub tasks: TaskPolicy,
}

/// State shared by every endpoint of one dispatcher.
pub struct Shared {
    pub client: Client,
    pub catalog: Catalog,
    pub servers: BTreeMap<String, ServerDefaults>,
    /// How long job records (and so tasks) are kept.
    pub result_ttl: Duration,
}

/// Why a call is refused before anything is queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownServer(String),
    UnknownTool(String),
}

impl Shared {
    /// The defaults of `server`, if it is configured and (once its catalog is known) has `tool`.
    /// A server whose catalog is not published yet still takes jobs: they wait in the queue for
    /// its workers.
    pub fn check(&self, server: &str, tool: &str) -> Result<&ServerDefaults, Refusal> {
        let Some(defaults) = self.servers.get(server) else {
            let known: Vec<_> = self.servers.keys().map(String::as_str).collect();
            return Err(Refusal::UnknownServer(format!(
                "unknown server {server:?} (servers: {})",
                known.join(", ")
            )));
        };
        if let Some(entry) = self.catalog.server(server)
            && !entry.tools.iter().any(|t| t.name == tool)
        {
            let known: Vec<_> = entry.tools.iter().map(|t| t.name.as_ref()).collect();
            return Err(Refusal::UnknownTool(format!(
                "unknown tool {tool:?} on server {server:?} (tools: {})",
                known.join(", ")
            )));
        }
        Ok(defaults)
    }
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::UnknownServer(m) | Refusal::UnknownTool(m) => m,
        }
    }
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
                .enable_tasks()
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
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (server, tool) = self.resolve(&request.name)?;
        let defaults = self
            .shared
            .check(server, tool)
            .map_err(|refusal| ErrorData::invalid_params(refusal.message().to_string(), None))?;
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
        let declared_tasks = context
            .client_capabilities()
            .is_some_and(|caps| caps.supports_tasks());
        let mode = if declared_tasks {
            defaults.tasks.mode(tool)
        } else {
            TaskMode::Never
        };
        if mode == TaskMode::Always {
            // The record and the job are stored before the client hears of the task.
            job.deadline_ms = meta
                .and_then(|m| m.get(META_TIMEOUT_MS))
                .and_then(serde_json::Value::as_u64)
                .map(|ms| now_ms() + ms);
            self.shared
                .client
                .submit(&job)
                .instrument(span)
                .await
                .map_err(|e| internal(&job, &e))?;
            return self.task_created(&job).await;
        }
        let token = context
            .meta
            .get_progress_token()
            .or_else(|| request.meta.as_ref().and_then(|m| m.get_progress_token()));
        let (progress, mut updates) = tokio::sync::mpsc::unbounded_channel();
        let progress = token.is_some().then_some(progress);
        // A caller that goes away (a dropped response stream, `notifications/cancelled`)
        // cancels the job, queued or running.
        let mut guard = CancelOnDrop {
            client: self.shared.client.clone(),
            job_id: job.id,
            server: server.to_string(),
            armed: true,
        };
        let call = self
            .shared
            .client
            .call_with_progress(&job, wait, progress)
            .instrument(span);
        tokio::pin!(call);
        let become_task = async {
            if mode == TaskMode::Optional {
                tokio::time::sleep(defaults.tasks.after).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(become_task);
        let reply = loop {
            tokio::select! {
                reply = &mut call => break reply,
                Some(event) = updates.recv() => {
                    if let Some(token) = &token {
                        notify_progress(&context, token, event).await;
                    }
                }
                () = context.ct.cancelled() => {
                    return Err(ErrorData::new(
                        ErrorCode::INVALID_REQUEST,
                        format!("job {}: cancelled by the client", job.id),
                        Some(serde_json::json!({"jobId": job.id, "kind": "cancelled"})),
                    ));
                }
                () = &mut become_task => {
                    guard.armed = false;
                    return self.task_created(&job).await;
                }
            }
        };
        guard.armed = false;
        // Progress sent before the reply goes out before the result.
        while let Ok(event) = updates.try_recv() {
            if let Some(token) = &token {
                notify_progress(&context, token, event).await;
            }
        }
        let reply = reply.map_err(|e| internal(&job, &e))?;
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

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let record = self.task_record(&request.task_id).await?;
        Ok(GetTaskResult::new(tasks::detailed(
            &record,
            self.shared.result_ttl,
        )))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let record = self.task_record(&request.task_id).await?;
        Err(ErrorData::invalid_params(
            format!(
                "task {} is not waiting for input (mcpq tasks never ask for any)",
                record.job_id
            ),
            None,
        ))
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let job_id = tasks::job_id(&request.task_id)?;
        match self
            .shared
            .client
            .cancel(job_id, Some("requested by tasks/cancel".into()))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
        {
            Cancel::Requested(_) | Cancel::AlreadyEnded(_) => Ok(()),
            Cancel::NotFound => Err(unknown_task(&request.task_id)),
        }
    }
}

impl Gateway {
    /// A task for `job`, once its record exists: created here if the worker has not written
    /// one yet (an existing record is left alone).
    async fn task_created(&self, job: &Job) -> Result<CallToolResponse, ErrorData> {
        let record = self
            .shared
            .client
            .ensure_record(job)
            .await
            .map_err(|e| internal(job, &e))?;
        Ok(CallToolResponse::Task(CreateTaskResult::new(tasks::task(
            &record,
            self.shared.result_ttl,
        ))))
    }

    async fn task_record(&self, task_id: &str) -> Result<JobRecord, ErrorData> {
        let job_id = tasks::job_id(task_id)?;
        self.shared
            .client
            .record(job_id)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
            .ok_or_else(|| unknown_task(task_id))
    }
}

fn unknown_task(task_id: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("unknown task {task_id:?} (never created here, or expired)"),
        None,
    )
}

fn internal(job: &Job, e: &crate::ClientError) -> ErrorData {
    ErrorData::internal_error(e.to_string(), Some(serde_json::json!({"jobId": job.id})))
}

async fn notify_progress(
    context: &RequestContext<RoleServer>,
    token: &ProgressToken,
    event: ProgressEvent,
) {
    let mut param = ProgressNotificationParam::new(token.clone(), event.progress.progress);
    if let Some(total) = event.progress.total {
        param = param.with_total(total);
    }
    if let Some(message) = event.progress.message {
        param = param.with_message(message);
    }
    let _ = context.peer.notify_progress(param).await;
}

/// Cancels the job if the call's future is dropped before it is disarmed (the client went away).
struct CancelOnDrop {
    client: crate::Client,
    job_id: uuid::Uuid,
    server: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let client = self.client.clone();
        let (job_id, server) = (self.job_id, std::mem::take(&mut self.server));
        tracing::info!(%job_id, "the caller went away; cancelling its job");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let reason = Some("the MCP client went away".to_string());
                if let Err(e) = client.request_cancel(job_id, &server, reason).await {
                    tracing::warn!(%job_id, error = %e, "cannot cancel the job");
                }
            });
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
