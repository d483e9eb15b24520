//! The MCP endpoints: an rmcp `ServerHandler` that serves every list — tools, resources,
//! resource templates, prompts — from the catalog, and turns each `tools/call`,
//! `resources/read`, `prompts/get` and `completion/complete` into a job ([`relay`]), answering
//! with the job's result in the revision the client speaks (`mcpq_schemas::bridge`).
//!
//! `/mcp` serves every server's offer under aggregated names ([`names`]); `/servers/<name>/mcp`
//! serves one server's under the upstream's own names.

pub(crate) mod as_written;
mod lists;
pub mod names;
pub(crate) mod plain;
mod relay;
mod subscriptions;

use crate::{AbortOnDrop, lock};
use std::sync::{Arc, Mutex};

use mcpq_schemas::{
    JsonObject, McpRequest,
    bridge::{self, Era},
    config::TaskMode,
};
#[allow(deprecated)] // logging is deprecated by SEP-2577; 2025-era clients still set levels
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams,
        CompleteRequestParams, CompleteResult, GetPromptRequestParams, GetPromptResponse,
        GetPromptResult, GetTaskParams, GetTaskResult, Implementation, InputRequiredResult,
        ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
        PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
        ReadResourceResult, Reference, ServerConfig, SetLevelRequestParams, SubscribeRequestParams,
        SubscriptionFilter, UnsubscribeRequestParams, UpdateTaskParams,
    },
    service::{RequestContext, SubscriptionContext},
};

use self::as_written::List;
pub use self::names::NAME_SEPARATOR;
pub use self::relay::{META_IDEMPOTENCY_KEY, META_LANE, META_RUN_AT, META_TIMEOUT_MS};
pub(crate) use self::relay::{Notifier, Origin};
use self::relay::{Relayed, Request, Resume, relay};
use crate::{Cancel, auth::Caller, shared::Shared, tasks};

/// One MCP endpoint (all servers, or one) for one client: per session for 2025-era clients,
/// per request for 2026-07-28 ones.
#[derive(Clone)]
pub struct Gateway {
    scope: Option<String>,
    shared: Arc<Shared>,
    /// The level a 2025-era session chose with `logging/setLevel`.
    log_level: Arc<Mutex<Option<String>>>,
    /// The resources a 2025-era session subscribed to, and the task that passes their updates
    /// on (stopped with the session).
    subscribed: subscriptions::Subscribed,
    forwarder: Arc<Mutex<Option<AbortOnDrop>>>,
}

impl Gateway {
    /// The aggregated endpoint.
    pub fn all(shared: Arc<Shared>) -> Self {
        Gateway::new(None, shared)
    }

    /// The endpoint of one server.
    pub fn server(shared: Arc<Shared>, name: String) -> Self {
        Gateway::new(Some(name), shared)
    }

    /// A fresh copy for a new session: same endpoint, nothing the last session chose.
    pub fn fresh(&self) -> Self {
        Gateway::new(self.scope.clone(), self.shared.clone())
    }

    fn new(scope: Option<String>, shared: Arc<Shared>) -> Self {
        Gateway {
            scope,
            shared,
            log_level: Arc::default(),
            subscribed: Arc::default(),
            forwarder: Arc::default(),
        }
    }

    /// Asks a worker to subscribe its upstream to `uri` of `server` (or to unsubscribe).
    async fn subscription_job(
        &self,
        server: &str,
        uri: &str,
        subscribe: bool,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let method = if subscribe {
            "resources/subscribe"
        } else {
            "resources/unsubscribe"
        };
        let mut params = JsonObject::new();
        params.insert("uri".into(), uri.into());
        let request = McpRequest {
            method: method.into(),
            params: Some(params),
        };
        self.relay_as::<serde_json::Value>(server, request, context, None)
            .await
            .map(drop)
    }

    /// "Method not found" for a method no upstream behind this endpoint serves, as that upstream
    /// would answer (its catalog declares no such capability); before any catalog is published
    /// nothing is judged.
    fn serves(
        &self,
        method: &str,
        declared: fn(&rmcp::model::ServerCapabilities) -> bool,
    ) -> Result<(), ErrorData> {
        let entries = self.entries();
        if entries.is_empty() || entries.iter().any(|(_, e)| declared(&e.capabilities)) {
            return Ok(());
        }
        let servers: Vec<&str> = entries.iter().map(|(s, _)| s.as_str()).collect();
        Err(ErrorData::new(
            rmcp::model::ErrorCode::METHOD_NOT_FOUND,
            format!(
                "{method}: not served here (upstream {} declares no such capability)",
                servers.join(", ")
            ),
            None,
        ))
    }

    /// A digest of each list the caller sees here (tools; resources and templates; prompts), to
    /// tell which changed.
    fn offer(&self, caller: &Caller) -> (u64, u64, u64) {
        fn digest<T: serde::Serialize>(items: &[T]) -> u64 {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_vec(items)
                .unwrap_or_default()
                .hash(&mut hasher);
            hasher.finish()
        }
        (
            digest(&self.listed(caller, List::Tools)),
            digest(&self.listed(caller, List::Resources))
                ^ digest(&self.listed(caller, List::Templates)).rotate_left(1),
            digest(&self.listed(caller, List::Prompts)),
        )
    }

    /// Whether the tool's input schema names a parameter that clients mirror in an
    /// `Mcp-Param-*` header (SEP-2243 `x-mcp-header`, at any depth of `properties`).
    pub(crate) fn mirrors_params(&self, name: &str) -> bool {
        let Ok((server, tool)) = self.resolve(name, "tool") else {
            return false;
        };
        self.shared
            .catalog
            .with_server(server, |entry| {
                entry
                    .tools
                    .iter()
                    .find(|t| t.name == tool)
                    .is_some_and(|t| mcpq_schemas::catalog::mirrors_params(&t.input_schema))
            })
            .unwrap_or(false)
    }

    /// Splits a tool or prompt name as this endpoint exposes it into (server, upstream name).
    fn resolve<'a>(&'a self, name: &'a str, what: &str) -> Result<(&'a str, &'a str), ErrorData> {
        match &self.scope {
            Some(server) => Ok((server.as_str(), name)),
            None => names::split_name(name).ok_or_else(|| {
                ErrorData::invalid_params(
                    format!(
                        "unknown {what} {name:?}: {what}s here are named <server>{NAME_SEPARATOR}<{what}> (servers: {})",
                        self.server_list()
                    ),
                    None,
                )
            }),
        }
    }

    /// Splits a resource URI (or template) as this endpoint exposes it into (server, upstream
    /// URI).
    fn resolve_uri<'a>(&'a self, uri: &'a str) -> Result<(&'a str, &'a str), ErrorData> {
        match &self.scope {
            Some(server) => Ok((server.as_str(), uri)),
            None => names::split_uri(uri).ok_or_else(|| {
                ErrorData::invalid_params(
                    format!(
                        "unknown resource {uri:?}: resources here are named {}<server>/<uri> (servers: {})",
                        names::URI_PREFIX,
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

    /// The least severe log level this caller wants: a 2026-07-28 request says so in its
    /// `_meta` (no opt-in, no messages); a 2025-era session chose it with `logging/setLevel`
    /// (and hears everything until it does, as from the upstream directly).
    fn log_level(&self, era: Era, meta: Option<&JsonObject>) -> Option<String> {
        match era {
            Era::Stateless => meta
                .and_then(|m| m.get(bridge::META_LOG_LEVEL))
                .and_then(|l| l.as_str())
                .map(str::to_string),
            Era::Session => Some(
                lock(&self.log_level)
                    .clone()
                    .unwrap_or_else(|| "debug".into()),
            ),
        }
    }

    /// Relays a request that is not a tool call and reads its answer as `T`.
    async fn relay_as<T: serde::de::DeserializeOwned>(
        &self,
        server: &str,
        request: McpRequest,
        context: &RequestContext<RoleServer>,
        resume: Option<Resume>,
    ) -> Result<Answered<T>, ErrorData> {
        let mut request = request;
        let method = request.method.clone();
        // The client's `_meta` is for mcpq (and names its own revision): the worker sends the
        // upstream its own.
        let meta = request
            .params
            .as_mut()
            .and_then(|p| p.remove("_meta"))
            .and_then(|m| match m {
                serde_json::Value::Object(m) => Some(m),
                _ => None,
            })
            // rmcp hands the request's `_meta` over in the context.
            .or_else(|| Some(context.meta.0.0.clone()));
        let origin = Origin::of(context);
        let era = origin.era;
        let request = Request {
            server,
            request,
            meta: meta.as_ref(),
            log_level: self.log_level(era, meta.as_ref()),
            origin,
            task: TaskMode::Never,
            resume,
        };
        match relay(&self.shared, request).await? {
            Relayed::Answer(result) => read_result(era, &method, result).map(Answered::Complete),
            Relayed::InputRequired(asked) => Ok(Answered::InputRequired(asked)),
            Relayed::Task(mcpq_schemas::Job { id, .. }) | Relayed::TaskOf(id) => Err(
                ErrorData::internal_error(format!("job {id}: only tool calls become tasks"), None),
            ),
        }
    }
}

impl Gateway {
    /// A tool call, from rmcp's handler or from the plain JSON path (`plain`).
    pub(crate) async fn call(
        &self,
        request: &CallToolRequestParams,
        meta: Option<&JsonObject>,
        origin: Origin<'_>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (server, tool) = self.resolve(&request.name, "tool")?;
        let declared_tasks = origin
            .capabilities
            .as_ref()
            .is_some_and(|caps| caps.supports_tasks());
        let resume = Resume::from_request(
            request.request_state.as_deref(),
            request.input_responses.as_ref(),
        )?;
        let era = origin.era;
        let relayed = Request {
            server,
            request: McpRequest::call_tool(tool, request.arguments.clone()),
            meta,
            log_level: self.log_level(era, meta),
            origin,
            // Admission (`relay::admit`) refuses a server that is not configured.
            task: match self.shared.server(server) {
                Ok(defaults) if declared_tasks && resume.is_none() => defaults.tasks.mode(tool),
                _ => TaskMode::Never,
            },
            resume,
        };
        match relay(&self.shared, relayed).await? {
            Relayed::Answer(result) => read_result::<CallToolResult>(era, "tools/call", result)
                .map(CallToolResponse::Complete),
            Relayed::InputRequired(asked) => Ok(CallToolResponse::InputRequired(asked)),
            Relayed::Task(job) => Box::pin(tasks::created(&self.shared, &job)).await,
            Relayed::TaskOf(job_id) => Box::pin(tasks::became(&self.shared, job_id)).await,
        }
    }
}

/// A relayed request's answer: the result, or (2026-07-28) a question for the client first.
enum Answered<T> {
    Complete(T),
    InputRequired(InputRequiredResult),
}

/// The request's params as JSON, without mcpq's own view of them.
fn params_of<T: serde::Serialize>(params: &T) -> JsonObject {
    match serde_json::to_value(params) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => JsonObject::new(),
    }
}

/// A canonical result as the client's revision has it, read as `T`.
fn read_result<T: serde::de::DeserializeOwned>(
    era: Era,
    method: &str,
    result: serde_json::Value,
) -> Result<T, ErrorData> {
    serde_json::from_value(bridge::result_for(era, method, result)).map_err(|e| {
        ErrorData::internal_error(
            format!("the upstream's answer is not a valid {method} result: {e}"),
            None,
        )
    })
}

/// The caller of this request, as the HTTP layer authenticated it. A request that did not
/// come through it may use nothing.
pub(super) fn caller_of(context: &RequestContext<RoleServer>) -> Caller {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .unwrap_or_else(Caller::nobody)
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        let name = match &self.scope {
            Some(server) => format!("mcpq/{server}"),
            None => "mcpq".to_string(),
        };
        ServerConfig::new(self.capabilities())
            .with_server_info(Implementation::new(name, env!("CARGO_PKG_VERSION")))
            .with_instructions(match &self.scope {
                Some(server) => format!(
                    "Tools, resources and prompts of the upstream MCP server {server:?}, called through the mcpq queue."
                ),
                None => format!(
                    "Tools, resources and prompts of several upstream MCP servers, called through the mcpq queue; tools and prompts are named <server>{NAME_SEPARATOR}<name>, resources {}<server>/<uri>.",
                    names::URI_PREFIX
                ),
            })
    }

    /// The tool as the catalog lists it (renamed on the aggregated endpoint): rmcp checks a
    /// call's `Mcp-Param-*` headers against its input schema's `x-mcp-header` annotations
    /// (SEP-2243) before the call reaches mcpq. A tool the catalog does not list is not checked.
    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        let (server, tool) = self.resolve(name, "tool").ok()?;
        self.shared.catalog.with_server(server, |entry| {
            entry.tools.iter().find(|t| t.name == tool).map(|t| {
                let mut t = rmcp::model::Tool::clone(t);
                t.name = name.to_string().into();
                t
            })
        })?
    }

    /// List changes only; rmcp intersects this with what the client asked for.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::builder()
            .tools_list_changed()
            .resources_list_changed()
            .prompts_list_changed();
        if let Some(uris) = &requested.resource_subscriptions {
            accepted = accepted.resource_subscriptions(uris.clone());
        }
        Some(accepted.build())
    }

    /// 2026-07-28 clients hear about catalog changes, and about the resources they name, on a
    /// `subscriptions/listen` stream.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let caller = caller_of(context.request_context());
        let Some(_held) = self.shared.held.hold(
            "listen",
            caller.principal().unwrap_or(""),
            self.shared.per_principal,
        ) else {
            return Err(ErrorData::new(
                rmcp::model::ErrorCode(-32000),
                "this caller holds as many listen streams open here as one caller may (--max-waits-per-principal): close one first",
                None,
            ));
        };
        let mut changes = self.shared.catalog.changes();
        changes.mark_unchanged();
        let mut offer = self.offer(&caller);
        let accepted = context.accepted().clone();
        let subscribed = subscriptions::Subscribed::default();
        // rmcp has acknowledged the stream already; updates count from when the upstream
        // listens, a job later.
        let updates = subscriptions::follow(&self.shared.client.nats()).await?;
        for uri in accepted.resource_subscriptions.iter().flatten() {
            let (server, uri) = self.resolve_uri(uri)?;
            self.subscription_job(server, uri, true, context.request_context())
                .await?;
            lock(&subscribed).insert((server.to_string(), uri.to_string()));
        }
        let forward = subscriptions::forward(
            updates,
            subscribed,
            self.scope.is_none(),
            subscriptions::ListenSink(context.sink().clone()),
        );
        tokio::pin!(forward);
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                () = &mut forward, if accepted.resource_subscriptions.is_some() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    // Only the lists that changed, as this caller sees them.
                    let now = self.offer(&caller);
                    let was = std::mem::replace(&mut offer, now);
                    let sink = context.sink();
                    let sent = async {
                        if accepted.tools_list_changed == Some(true) && was.0 != now.0 {
                            sink.notify_tool_list_changed().await?;
                        }
                        if accepted.resources_list_changed == Some(true) && was.1 != now.1 {
                            sink.notify_resource_list_changed().await?;
                        }
                        if accepted.prompts_list_changed == Some(true) && was.2 != now.2 {
                            sink.notify_prompt_list_changed().await?;
                        }
                        Ok::<(), rmcp::service::SubscriptionSendError>(())
                    };
                    if sent.await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.serves("tools/list", |c| c.tools.is_some())?;
        Ok(ListToolsResult::with_all_items(
            self.tools(&caller_of(&context)),
        ))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.serves("resources/list", |c| c.resources.is_some())?;
        Ok(ListResourcesResult::with_all_items(
            self.resources(&caller_of(&context)),
        ))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.serves("resources/templates/list", |c| c.resources.is_some())?;
        Ok(ListResourceTemplatesResult::with_all_items(
            self.resource_templates(&caller_of(&context)),
        ))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.serves("prompts/list", |c| c.prompts.is_some())?;
        Ok(ListPromptsResult::with_all_items(
            self.prompts(&caller_of(&context)),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.serves("resources/read", |c| c.resources.is_some())?;
        let (server, uri) = self.resolve_uri(&request.uri)?;
        let resume = Resume::from_request(
            request.request_state.as_deref(),
            request.input_responses.as_ref(),
        )?;
        let mut params = params_of(&request);
        params.insert("uri".into(), uri.into());
        let request = McpRequest {
            method: "resources/read".into(),
            params: Some(params),
        };
        Ok(
            match self
                .relay_as::<ReadResourceResult>(server, request, &context, resume)
                .await?
            {
                Answered::Complete(result) => ReadResourceResponse::Complete(result),
                Answered::InputRequired(asked) => ReadResourceResponse::InputRequired(asked),
            },
        )
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.serves("prompts/get", |c| c.prompts.is_some())?;
        let (server, name) = self.resolve(&request.name, "prompt")?;
        let resume = Resume::from_request(
            request.request_state.as_deref(),
            request.input_responses.as_ref(),
        )?;
        let mut params = params_of(&request);
        params.insert("name".into(), name.into());
        let request = McpRequest {
            method: "prompts/get".into(),
            params: Some(params),
        };
        Ok(
            match self
                .relay_as::<GetPromptResult>(server, request, &context, resume)
                .await?
            {
                Answered::Complete(result) => GetPromptResponse::Complete(result),
                Answered::InputRequired(asked) => GetPromptResponse::InputRequired(asked),
            },
        )
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        self.serves("completion/complete", |c| c.completions.is_some())?;
        let (server, reference) = match &request.r#ref {
            Reference::Prompt(prompt) => {
                let (server, name) = self.resolve(&prompt.name, "prompt")?;
                (
                    server,
                    serde_json::json!({"type": "ref/prompt", "name": name}),
                )
            }
            Reference::Resource(resource) => {
                let (server, uri) = self.resolve_uri(&resource.uri)?;
                (
                    server,
                    serde_json::json!({"type": "ref/resource", "uri": uri}),
                )
            }
            _ => {
                return Err(ErrorData::invalid_params(
                    "completion/complete: ref must be ref/prompt or ref/resource",
                    None,
                ));
            }
        };
        let mut params = params_of(&request);
        params.insert("ref".into(), reference);
        let request = McpRequest {
            method: "completion/complete".into(),
            params: Some(params),
        };
        match self.relay_as(server, request, &context, None).await? {
            Answered::Complete(result) => Ok(result),
            Answered::InputRequired(_) => Err(ErrorData::internal_error(
                "the upstream asked the client something during completion/complete, which has no way to ask",
                None,
            )),
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.serves("resources/subscribe", |c| c.resources.is_some())?;
        let (server, uri) = self.resolve_uri(&request.uri)?;
        // Updates are followed before the upstream subscribes: none after the answer is lost.
        let following = lock(&self.forwarder).is_some();
        if !following {
            let updates = subscriptions::follow(&self.shared.client.nats()).await?;
            let mut forwarder = lock(&self.forwarder);
            if forwarder.is_none() {
                *forwarder = Some(AbortOnDrop(tokio::spawn(subscriptions::forward(
                    updates,
                    self.subscribed.clone(),
                    self.scope.is_none(),
                    subscriptions::SessionPeer(context.peer.clone()),
                ))));
            }
        }
        lock(&self.subscribed).insert((server.to_string(), uri.to_string()));
        if let Err(e) = self.subscription_job(server, uri, true, &context).await {
            lock(&self.subscribed).remove(&(server.to_string(), uri.to_string()));
            return Err(e);
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.serves("resources/unsubscribe", |c| c.resources.is_some())?;
        let (server, uri) = self.resolve_uri(&request.uri)?;
        lock(&self.subscribed).remove(&(server.to_string(), uri.to_string()));
        self.subscription_job(server, uri, false, &context).await
    }

    #[allow(deprecated)] // logging is deprecated by SEP-2577; 2025-era clients still set levels
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.serves("logging/setLevel", |c| c.logging.is_some())?;
        let level = serde_json::to_value(request.level)
            .ok()
            .and_then(|l| l.as_str().map(str::to_string));
        *lock(&self.log_level) = level;
        Ok(())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // rmcp hands the request's `_meta` over in the context (the params' copy is empty).
        let meta = request
            .meta
            .as_ref()
            .map(|m| &m.0.0)
            .or(Some(&context.meta.0.0));
        self.call(&request, meta, Origin::of(&context)).await
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let record = tasks::record(&self.shared, &caller_of(&context), &request.task_id).await?;
        Ok(GetTaskResult::new(tasks::detailed(
            &record,
            self.shared.result_ttl,
        )))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let record = tasks::record(&self.shared, &caller_of(&context), &request.task_id).await?;
        tasks::update(&self.shared, record, request.input_responses).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let job_id = tasks::record(&self.shared, &caller_of(&context), &request.task_id)
            .await?
            .job_id;
        match self
            .shared
            .client
            .cancel(job_id, Some("requested by tasks/cancel".into()))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
        {
            Cancel::Requested(_) | Cancel::AlreadyEnded(_) => Ok(()),
            Cancel::NotFound => Err(tasks::unknown(&request.task_id)),
        }
    }
}
