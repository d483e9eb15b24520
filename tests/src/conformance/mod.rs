//! The conformance fixture: a real rmcp MCP server with the tools, resources, prompts and
//! completions that the official conformance suite (`@modelcontextprotocol/conformance`) calls,
//! so the suite can run against it directly and through mcpq's `/servers/<name>/mcp`. It can be
//! pinned to one protocol revision, which makes it an upstream of each era for the bridging
//! tests. Served over streamable HTTP (with 2025-era sessions) or stdio by `mcpq-fixture
//! conformance`.
//!
//! What it asks of its client during a call (sampling, elicitation, roots) it asks the way the
//! client's revision has it: a server-to-client request for 2025-era sessions, an
//! `input_required` result (and the answers in the retried request) for 2026-07-28.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

#[allow(deprecated)] // logging is deprecated by SEP-2577; the suite still tests it
use rmcp::{
    ErrorData, RoleServer, ServerHandler, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams,
        CompleteResult, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
        InputRequiredResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
        ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProtocolVersion,
        ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ServerCapabilities,
        ServerConfig, ServerRequest, SetLevelRequestParams, SubscribeRequestParams,
        SubscriptionFilter, UnsubscribeRequestParams,
    },
    service::{RequestContext, SubscriptionContext, SubscriptionSink},
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod rounds;
mod tasks;

/// A 1×1 red PNG.
pub const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A tiny WAV file (44-byte header, no samples).
pub const WAV: &str = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=";

/// The conformance fixture; cheap to clone (clones share what they observed).
#[derive(Clone, Default)]
pub struct Conformance {
    /// Serve only this revision, when set.
    pinned: Option<ProtocolVersion>,
    /// URIs clients subscribed to, in order (unsubscribes remove them).
    subscriptions: Arc<Mutex<Vec<String>>>,
    /// Who hears about updates: 2025-era sessions by URI, 2026-07-28 listen streams.
    sessions: Arc<Mutex<Vec<SessionSubscription>>>,
    listeners: Arc<Mutex<Vec<ListenSubscription>>>,
    /// Resources added by `test_add_resource`, listed after the fixed ones.
    added: Arc<Mutex<Vec<String>>>,
    /// Tools and prompts added by `test_trigger_tool_change` and `test_trigger_prompt_change`.
    added_tools: Arc<Mutex<Vec<String>>>,
    added_prompts: Arc<Mutex<Vec<String>>>,
    /// What ran, in order: `call <tool>`, `answered <tool>: <answer text>`, `read <uri>`.
    ran: Arc<Mutex<Vec<String>>>,
    /// Seals the `requestState` of the tools that ask in rounds.
    rounds: Arc<rounds::Rounds>,
    /// The tasks of the `tasks-*` scenarios' tools.
    tasks: Arc<tasks::Tasks>,
}

/// A 2025-era session subscribed to a URI.
type SessionSubscription = (String, rmcp::Peer<RoleServer>);
/// A 2026-07-28 listen stream and the URIs it names.
type ListenSubscription = (Vec<String>, SubscriptionSink, SubscriptionFilter);

/// Which of the server's lists changed.
#[derive(Clone, Copy)]
enum List {
    Tools,
    Resources,
    Prompts,
}

impl Conformance {
    pub fn new(pinned: Option<ProtocolVersion>) -> Self {
        Conformance {
            pinned,
            ..Conformance::default()
        }
    }

    /// What ran, in order: `call <tool>` for each tools/call, `answered <tool>: <text>` when
    /// an asking tool got its answer, `read <uri>` for each resources/read.
    pub fn ran(&self) -> Vec<String> {
        self.ran.lock().expect("ran").clone()
    }

    /// How many entries of [`Conformance::ran`] start with `prefix`.
    pub fn ran_count(&self, prefix: &str) -> usize {
        self.ran().iter().filter(|r| r.starts_with(prefix)).count()
    }

    fn note(&self, what: String) {
        self.ran.lock().expect("ran").push(what);
    }

    pub fn subscriptions(&self) -> Vec<String> {
        self.subscriptions.lock().expect("subscriptions").clone()
    }

    /// Tells every subscriber of `uri` that it changed; how many were told.
    async fn touch(&self, uri: &str) -> usize {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .expect("sessions")
            .iter()
            .filter(|(u, _)| u == uri)
            .map(|(_, peer)| peer.clone())
            .collect();
        let listeners: Vec<_> = self
            .listeners
            .lock()
            .expect("listeners")
            .iter()
            .filter(|(uris, _, _)| uris.iter().any(|u| u == uri))
            .map(|(_, sink, _)| sink.clone())
            .collect();
        let mut told = 0;
        for peer in sessions {
            let param = rmcp::model::ResourceUpdatedNotificationParam::new(uri);
            told += usize::from(peer.notify_resource_updated(param).await.is_ok());
        }
        for sink in listeners {
            told += usize::from(sink.notify_resource_updated(uri).await.is_ok());
        }
        told
    }

    /// Serves one client over stdio. A client that leaves before the handshake ends (a worker
    /// that probed `server/discover`, which a pinned 2025-era fixture refuses, and starts over
    /// with `initialize` on a new process) is not an error.
    pub async fn serve_stdio(self) -> anyhow::Result<()> {
        let running = match self.serve(rmcp::transport::stdio()).await {
            Ok(running) => running,
            Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        running.waiting().await?;
        Ok(())
    }
}

/// A result, marked `resultType: "complete"` (2026-07-28 requires the field; rmcp drops it for
/// a 2025-era client).
fn complete<T: serde::de::DeserializeOwned>(mut value: Value) -> T {
    if let Some(object) = value.as_object_mut() {
        object.insert("resultType".into(), "complete".into());
    }
    from_json(value)
}

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the fixture's own JSON fits rmcp's types")
}

fn tools() -> Value {
    let none = json!({"type": "object", "properties": {}});
    let string_arg = |name: &str, what: &str| json!({"type": "object", "properties": {name: {"type": "string", "description": what}}, "required": [name]});
    let tool = |name: &str, description: &str, schema: &Value| json!({"name": name, "description": description, "inputSchema": schema});
    json!([
        tool("test_simple_text", "Answers with one text block", &none),
        tool("test_image_content", "Answers with a PNG image", &none),
        tool("test_audio_content", "Answers with a WAV clip", &none),
        tool("test_embedded_resource", "Answers with an embedded resource", &none),
        tool("test_multiple_content_types", "Answers with text, an image and a resource", &none),
        tool("test_tool_with_logging", "Logs three messages while it runs", &none),
        tool("test_logging_tool", "Logs three messages while it runs, on 2026-07-28 only to a request that set _meta logLevel", &none),
        tool("test_error_handling", "Always fails (isError: true)", &none),
        tool("test_tool_with_progress", "Reports progress 0, 50, 100 of 100", &none),
        tool("test_sampling", "Asks the client's LLM to answer a prompt", &string_arg("prompt", "The prompt to send to the LLM")),
        tool("test_elicitation", "Asks the user for a name and an email", &string_arg("message", "The message to show the user")),
        tool("test_elicitation_sep1034_defaults", "Asks the user, with defaults for every field", &none),
        tool("test_elicitation_sep1330_enums", "Asks the user to pick from every kind of enum", &none),
        tool("test_list_roots", "Asks the client for its roots", &none),
        tool("test_touch_resource", "Tells the subscribers of a resource that it changed", &string_arg("uri", "The resource")),
        tool("test_add_resource", "Adds a resource and says the list changed", &string_arg("uri", "The new resource")),
        tool("test_trigger_tool_change", "Adds a tool and says the tool list changed", &none),
        // SEP-2243: the client mirrors `region` in an `Mcp-Param-Region` header.
        tool("test_custom_header", "Echoes its region, which clients also send as the Mcp-Param-Region header", &json!({
            "type": "object",
            "properties": {"region": {"type": "string", "description": "Where to run", "x-mcp-header": "Region"}},
            "required": ["region"]
        })),
        tool("test_trigger_prompt_change", "Adds a prompt and says the prompt list changed", &none),
        {
            "name": "json_schema_2020_12_tool",
            "description": "Tool with JSON Schema 2020-12 features",
            "inputSchema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
                "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                "additionalProperties": false
            }
        }
    ])
}

/// Every tool listed: the fixed ones, then those that ask in rounds.
fn all_tools() -> Value {
    let mut all = tools();
    if let Some(list) = all.as_array_mut() {
        list.extend(rounds::tools());
        list.extend(tasks::tools());
    }
    all
}

fn text(t: &str) -> Value {
    json!({"type": "text", "text": t})
}

/// What each tool asks of the client, if anything: (method, params).
fn client_request(
    tool: &str,
    args: &serde_json::Map<String, Value>,
) -> Option<(&'static str, Value)> {
    let arg = |name: &str| {
        args.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match tool {
        "test_sampling" => Some((
            "sampling/createMessage",
            json!({"messages": [{"role": "user", "content": text(&arg("prompt"))}], "maxTokens": 100}),
        )),
        "test_elicitation" => Some((
            "elicitation/create",
            json!({
                "message": arg("message"),
                "requestedSchema": {
                    "type": "object",
                    "properties": {
                        "username": {"type": "string", "description": "User's response"},
                        "email": {"type": "string", "description": "User's email address"}
                    },
                    "required": ["username", "email"]
                }
            }),
        )),
        "test_elicitation_sep1034_defaults" => Some((
            "elicitation/create",
            json!({
                "message": "Please review and update the form fields with defaults",
                "requestedSchema": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "User name", "default": "John Doe"},
                        "age": {"type": "integer", "description": "User age", "default": 30},
                        "score": {"type": "number", "description": "User score", "default": 95.5},
                        "status": {"type": "string", "description": "User status", "enum": ["active", "inactive", "pending"], "default": "active"},
                        "verified": {"type": "boolean", "description": "Verification status", "default": true}
                    }
                }
            }),
        )),
        "test_elicitation_sep1330_enums" => Some((
            "elicitation/create",
            json!({
                "message": "Please select options from the enum fields",
                "requestedSchema": {
                    "type": "object",
                    "properties": {
                        "untitledSingle": {"type": "string", "description": "Select one option", "enum": ["option1", "option2", "option3"]},
                        "titledSingle": {"type": "string", "description": "Select one option with titles", "oneOf": [
                            {"const": "value1", "title": "First Option"},
                            {"const": "value2", "title": "Second Option"},
                            {"const": "value3", "title": "Third Option"}
                        ]},
                        "legacyEnum": {"type": "string", "description": "Select one option (legacy)", "enum": ["opt1", "opt2", "opt3"], "enumNames": ["Option One", "Option Two", "Option Three"]},
                        "untitledMulti": {"type": "array", "description": "Select multiple options", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                        "titledMulti": {"type": "array", "description": "Select multiple options with titles", "items": {"anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"}
                        ]}}
                    }
                }
            }),
        )),
        "test_list_roots" => Some(("roots/list", json!({}))),
        _ => None,
    }
}

/// The tool's answer once the client answered what it asked.
/// The text of a result's first content block ("" when it has none).
fn first_text(result: &CallToolResult) -> String {
    result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

fn answered(tool: &str, answer: &Value) -> CallToolResult {
    let line = match tool {
        "test_sampling" => {
            let said = answer["content"]["text"].as_str().unwrap_or_default();
            format!("LLM response: {said}")
        }
        "test_elicitation" => format!("User response: {answer}"),
        "test_list_roots" => format!("Roots: {}", answer["roots"]),
        _ => format!(
            "Elicitation completed: action={}, content={}",
            answer["action"].as_str().unwrap_or_default(),
            answer.get("content").unwrap_or(&Value::Null)
        ),
    };
    complete(json!({"content": [text(&line)]}))
}

fn is_modern(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|v| !v.has_initialize())
}

/// A request of a tool or prompt that asks in rounds: its retried answers and state.
trait Retried {
    fn responses(&self) -> Option<&rmcp::model::InputResponses>;
    fn state(&self) -> Option<&str>;
}

impl Retried for CallToolRequestParams {
    fn responses(&self) -> Option<&rmcp::model::InputResponses> {
        self.input_responses.as_ref()
    }
    fn state(&self) -> Option<&str> {
        self.request_state.as_deref()
    }
}

impl Retried for GetPromptRequestParams {
    fn responses(&self) -> Option<&rmcp::model::InputResponses> {
        self.input_responses.as_ref()
    }
    fn state(&self) -> Option<&str> {
        self.request_state.as_deref()
    }
}

impl Conformance {
    /// A tool of the `tasks-*` scenarios: a task when the client supports tasks and the tool
    /// does, run to the end when only the tool does not require one, refused (-32021) when it
    /// does and the client cannot have one.
    async fn task_tool(
        &self,
        request: CallToolRequestParams,
        mut args: serde_json::Map<String, Value>,
        support: Option<&str>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let declared = tasks::declared(context.client_capabilities().as_ref());
        if support == Some("required") && !declared {
            return Err(tasks::required());
        }
        // It asks first (an input_required round), then finishes in a task.
        if request.name == "test_tool_with_task" {
            match tasks::user_name(request.input_responses.as_ref()) {
                Some(name) => {
                    args.insert("user_name".into(), name.into());
                }
                None => {
                    return Ok(CallToolResponse::InputRequired(
                        InputRequiredResult::from_input_requests(from_json(tasks::ask_user_name())),
                    ));
                }
            }
        }
        let name = request.name.to_string();
        if support.is_some() && declared {
            let created = self
                .tasks
                .start(move |running| tasks::work(name, args, Some(running)));
            return Ok(CallToolResponse::Task(created));
        }
        match tasks::work(name, args, None).await {
            tasks::Ending::Completed(result) => Ok(CallToolResponse::Complete(from_json(result))),
            tasks::Ending::Failed(error) => Err(error),
            tasks::Ending::Cancelled => Err(ErrorData::internal_error("cancelled", None)),
        }
    }

    /// Says that `list` changed: to a 2025-era session on the session, to the 2026-07-28
    /// listen streams that asked for it.
    async fn list_changed(&self, context: &RequestContext<RoleServer>, list: List) {
        let _ = match list {
            List::Tools => context.peer.notify_tool_list_changed().await,
            List::Resources => context.peer.notify_resource_list_changed().await,
            List::Prompts => context.peer.notify_prompt_list_changed().await,
        };
        let sinks: Vec<_> = self
            .listeners
            .lock()
            .expect("listeners")
            .iter()
            .filter(|(_, _, accepted)| {
                let wanted = match list {
                    List::Tools => accepted.tools_list_changed,
                    List::Resources => accepted.resources_list_changed,
                    List::Prompts => accepted.prompts_list_changed,
                };
                wanted == Some(true)
            })
            .map(|(_, sink, _)| sink.clone())
            .collect();
        for sink in sinks {
            let _ = match list {
                List::Tools => sink.notify_tool_list_changed().await,
                List::Resources => sink.notify_resource_list_changed().await,
                List::Prompts => sink.notify_prompt_list_changed().await,
            };
        }
    }

    /// A tool or prompt that asks in rounds: its answer text, or (2026-07-28) the round's
    /// questions for the client. A 2025-era session is asked each round's questions as
    /// requests of the server's own, round after round, until the tool has its answer.
    async fn in_rounds(
        &self,
        name: &str,
        request: &impl Retried,
        context: &RequestContext<RoleServer>,
    ) -> Result<Result<String, InputRequiredResult>, ErrorData> {
        let capabilities = context.client_capabilities();
        if is_modern(context) {
            return Ok(
                match self.rounds.round(
                    name,
                    request.responses(),
                    request.state(),
                    capabilities.as_ref(),
                )? {
                    rounds::Round::Done(text) => Ok(text),
                    rounds::Round::Ask(asked) => Err(asked),
                },
            );
        }
        let (mut responses, mut state) = (None, None);
        for _ in 0..8 {
            let asked = match self.rounds.round(
                name,
                responses.as_ref(),
                state.as_deref(),
                capabilities.as_ref(),
            )? {
                rounds::Round::Done(text) => return Ok(Ok(text)),
                rounds::Round::Ask(asked) => asked,
            };
            let mut answers = rmcp::model::InputResponses::new();
            for (key, question) in asked.input_requests.unwrap_or_default() {
                let question = serde_json::to_value(&question)
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                let method = question["method"].as_str().unwrap_or_default();
                let params = question.get("params").cloned().unwrap_or_default();
                answers.insert(key, Self::ask(context, method, params).await?);
            }
            responses = Some(answers);
            state = asked.request_state;
        }
        Err(ErrorData::internal_error(
            format!("{name} asked for more than 8 rounds"),
            None,
        ))
    }

    /// Asks the client during a 2025-era call; the answer as JSON.
    async fn ask(
        context: &RequestContext<RoleServer>,
        method: &str,
        params: Value,
    ) -> Result<Value, ErrorData> {
        let request: ServerRequest = from_json(json!({"method": method, "params": params}));
        let answer = context.peer.send_request(request).await.map_err(|e| {
            ErrorData::internal_error(format!("the client did not answer {method}: {e}"), None)
        })?;
        serde_json::to_value(answer).map_err(|e| ErrorData::internal_error(e.to_string(), None))
    }

    async fn run_tool(
        &self,
        name: &str,
        args: serde_json::Map<String, Value>,
        context: &RequestContext<RoleServer>,
        meta_token: Option<rmcp::model::ProgressToken>,
    ) -> Result<CallToolResult, ErrorData> {
        let result = match name {
            "test_simple_text" => {
                json!({"content": [text("This is a simple text response for testing.")]})
            }
            "test_image_content" => {
                json!({"content": [{"type": "image", "data": PNG, "mimeType": "image/png"}]})
            }
            "test_audio_content" => {
                json!({"content": [{"type": "audio", "data": WAV, "mimeType": "audio/wav"}]})
            }
            "test_embedded_resource" => json!({"content": [{"type": "resource", "resource": {
                "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content."}}]}),
            "test_multiple_content_types" => json!({"content": [
                text("Multiple content types test:"),
                {"type": "image", "data": PNG, "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "test://mixed-content-resource", "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}"}}
            ]}),
            "test_error_handling" => {
                json!({"isError": true, "content": [text("This tool intentionally returns an error for testing")]})
            }
            "json_schema_2020_12_tool" => {
                json!({"content": [text(&format!("Received: {}", Value::Object(args)))]})
            }
            "test_add_resource" => {
                let uri = args.get("uri").and_then(Value::as_str).unwrap_or_default();
                self.added.lock().expect("added").push(uri.to_string());
                self.list_changed(context, List::Resources).await;
                json!({"content": [text(&format!("added {uri}"))]})
            }
            "test_custom_header" => {
                let region = args
                    .get("region")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                json!({"content": [text(&format!("region {region}"))]})
            }
            "test_trigger_tool_change" | "test_trigger_prompt_change" => {
                let (added, list, what) = if name == "test_trigger_tool_change" {
                    (&self.added_tools, List::Tools, "tool")
                } else {
                    (&self.added_prompts, List::Prompts, "prompt")
                };
                let new = {
                    let mut added = added.lock().expect("added");
                    let new = format!("test_dynamic_{what}_{}", added.len() + 1);
                    added.push(new.clone());
                    new
                };
                self.list_changed(context, list).await;
                json!({"content": [text(&format!("added {what} {new}"))]})
            }
            dynamic
                if dynamic.starts_with("test_dynamic_tool_")
                    && self
                        .added_tools
                        .lock()
                        .expect("added")
                        .iter()
                        .any(|t| t == dynamic) =>
            {
                json!({"content": [text(&format!("{dynamic} answered"))]})
            }
            "test_touch_resource" => {
                let uri = args.get("uri").and_then(Value::as_str).unwrap_or_default();
                let told = self.touch(uri).await;
                json!({"content": [text(&format!("told {told} subscribers"))]})
            }
            // 2026-07-28: log messages only for a request that asks for them.
            "test_logging_tool"
                if is_modern(context)
                    && !context
                        .meta
                        .contains_key("io.modelcontextprotocol/logLevel") =>
            {
                json!({"content": [text("Tool with logging executed successfully (nothing logged: no logLevel)")]})
            }
            "test_tool_with_logging" | "test_logging_tool" => {
                for (i, message) in [
                    "Tool execution started",
                    "Tool processing data",
                    "Tool execution completed",
                ]
                .iter()
                .enumerate()
                {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    #[allow(deprecated)]
                    // logging is deprecated by SEP-2577; the suite still tests it
                    let _ = context
                        .peer
                        .notify_logging_message(from_json(
                            json!({"level": "info", "logger": "conformance", "data": message}),
                        ))
                        .await;
                }
                json!({"content": [text("Tool with logging executed successfully")]})
            }
            "test_tool_with_progress" => {
                for (i, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if let Some(token) = &meta_token {
                        let _ = context
                            .peer
                            .notify_progress(
                                ProgressNotificationParam::new(token.clone(), progress)
                                    .with_total(100.0),
                            )
                            .await;
                    }
                }
                json!({"content": [text("Tool with progress executed successfully")]})
            }
            // Answered, never listed: a tool disclosed later, or a catalog a moment stale.
            "test_unlisted_tool" => json!({"content": [text("an unlisted tool answered")]}),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool {other:?}"),
                    None,
                ));
            }
        };
        Ok(complete(result))
    }
}

/// The contents of a resource URI, if it names one.
fn read(uri: &str) -> Option<Value> {
    let content = match uri {
        "test://static-text" => {
            json!({"uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."})
        }
        "test://static-binary" => json!({"uri": uri, "mimeType": "image/png", "blob": PNG}),
        "test://watched-resource" => {
            json!({"uri": uri, "mimeType": "text/plain", "text": "Watched resource content"})
        }
        _ if uri.starts_with("test://big/") => {
            let bytes: usize = uri.strip_prefix("test://big/")?.parse().ok()?;
            json!({"uri": uri, "mimeType": "text/plain", "text": "x".repeat(bytes)})
        }
        _ => {
            let id = uri
                .strip_prefix("test://template/")?
                .strip_suffix("/data")?;
            json!({"uri": uri, "mimeType": "application/json",
                   "text": json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string()})
        }
    };
    Some(json!({"contents": [content]}))
}

impl ServerHandler for Conformance {
    fn get_info(&self) -> ServerConfig {
        #[allow(deprecated)] // logging is deprecated by SEP-2577; the suite still tests it
        let caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_resources_list_changed()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_completions()
            .enable_logging()
            .enable_tasks()
            .build();
        ServerConfig::new(caps).with_server_info(rmcp::model::Implementation::new(
            "mcpq-conformance-fixture",
            env!("CARGO_PKG_VERSION"),
        ))
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        match &self.pinned {
            Some(version) => vec![version.clone()].into(),
            None => ProtocolVersion::KNOWN_VERSIONS.into(),
        }
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, ErrorData> {
        self.tasks.get(&request.task_id)
    }

    async fn update_task(
        &self,
        request: rmcp::model::UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks.update(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.note("cancel task".to_string());
        self.tasks.cancel(&request.task_id)
    }

    /// A tool's definition, for rmcp's SEP-2243 `Mcp-Param-*` header checks.
    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        let tools: Vec<rmcp::model::Tool> = from_json(all_tools());
        tools.into_iter().find(|t| t.name == name)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = all_tools();
        if let Some(list) = tools.as_array_mut() {
            for name in self.added_tools.lock().expect("added").iter() {
                list.push(json!({"name": name, "description": "Added by test_trigger_tool_change", "inputSchema": {"type": "object", "properties": {}}}));
            }
        }
        Ok(ListToolsResult::with_all_items(from_json(tools)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        self.note(format!("call {}", request.name));
        if let Some(support) = tasks::support(&request.name) {
            return self.task_tool(request, args, support, &context).await;
        }
        if rounds::asks_in_rounds(&request.name) {
            let text = match self.in_rounds(&request.name, &request, &context).await? {
                Ok(text) => text,
                Err(asked) => return Ok(CallToolResponse::InputRequired(asked)),
            };
            self.note(format!("answered {}: {text}", request.name));
            return Ok(CallToolResponse::Complete(complete(
                json!({"content": [self::text(&text)]}),
            )));
        }
        if let Some((method, params)) = client_request(&request.name, &args) {
            if !is_modern(&context) {
                let answer = Self::ask(&context, method, params).await?;
                let result = answered(&request.name, &answer);
                self.note(format!(
                    "answered {}: {}",
                    request.name,
                    first_text(&result)
                ));
                return Ok(CallToolResponse::Complete(result));
            }
            // 2026-07-28: ask in a result, read the answer from the retried request.
            if let Some(answer) = request.input_responses.as_ref().and_then(|r| r.get("ask")) {
                let result = answered(&request.name, answer);
                self.note(format!(
                    "answered {}: {}",
                    request.name,
                    first_text(&result)
                ));
                return Ok(CallToolResponse::Complete(result));
            }
            let asked = from_json(json!({"ask": {"method": method, "params": params}}));
            return Ok(CallToolResponse::InputRequired(
                InputRequiredResult::from_input_requests(asked),
            ));
        }
        let token = context
            .meta
            .get_progress_token()
            .or_else(|| request.meta.as_ref().and_then(|m| m.get_progress_token()));
        self.run_tool(&request.name, args, &context, token)
            .await
            .map(CallToolResponse::Complete)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut resources = json!([
            {"uri": "test://static-text", "name": "static-text", "description": "A static text resource", "mimeType": "text/plain"},
            {"uri": "test://static-binary", "name": "static-binary", "description": "A static binary resource (a PNG)", "mimeType": "image/png"},
            {"uri": "test://watched-resource", "name": "watched-resource", "description": "A resource to subscribe to", "mimeType": "text/plain"}
        ]);
        for uri in self.added.lock().expect("added").iter() {
            if let Some(list) = resources.as_array_mut() {
                list.push(json!({"uri": uri, "name": uri, "description": "Added during the test"}));
            }
        }
        Ok(ListResourcesResult::with_all_items(from_json(resources)))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(from_json(
            json!([
                {"uriTemplate": "test://template/{id}/data", "name": "template", "description": "Data for an id", "mimeType": "application/json"},
            {"uriTemplate": "test://big/{bytes}", "name": "big", "description": "A text of that many bytes", "mimeType": "text/plain"}
            ]),
        )))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.note(format!("read {}", request.uri));
        let contents = read(&request.uri).ok_or_else(|| {
            ErrorData::resource_not_found(format!("no resource {:?}", request.uri), None)
        })?;
        Ok(ReadResourceResponse::Complete(
            complete::<ReadResourceResult>(contents),
        ))
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.sessions
            .lock()
            .expect("sessions")
            .push((request.uri.clone(), context.peer.clone()));
        self.subscriptions
            .lock()
            .expect("subscriptions")
            .push(request.uri);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let uris = context
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        self.subscriptions
            .lock()
            .expect("subscriptions")
            .extend(uris.iter().cloned());
        self.listeners.lock().expect("listeners").push((
            uris.clone(),
            context.sink().clone(),
            context.accepted().clone(),
        ));
        context.cancelled().await;
        let mut subscribed = self.subscriptions.lock().expect("subscriptions");
        for uri in &uris {
            if let Some(i) = subscribed.iter().position(|u| u == uri) {
                subscribed.remove(i);
            }
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscriptions
            .lock()
            .expect("subscriptions")
            .retain(|uri| *uri != request.uri);
        self.sessions
            .lock()
            .expect("sessions")
            .retain(|(uri, _)| *uri != request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let arg =
            |name: &str, what: &str| json!({"name": name, "description": what, "required": true});
        let mut prompts = json!([
            {"name": "test_simple_prompt", "description": "A prompt without arguments"},
            {"name": "test_prompt_with_arguments", "description": "A prompt with two arguments",
             "arguments": [arg("arg1", "First test argument"), arg("arg2", "Second test argument")]},
            {"name": "test_prompt_with_embedded_resource", "description": "A prompt that embeds a resource",
             "arguments": [arg("resourceUri", "URI of the resource to embed")]},
            {"name": "test_prompt_with_image", "description": "A prompt with an image"},
            {"name": rounds::PROMPT, "description": "A prompt that asks the user for its context first"}
        ]);
        if let Some(list) = prompts.as_array_mut() {
            for name in self.added_prompts.lock().expect("added").iter() {
                list.push(
                    json!({"name": name, "description": "Added by test_trigger_prompt_change"}),
                );
            }
        }
        Ok(ListPromptsResult::with_all_items(from_json(prompts)))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name == rounds::PROMPT {
            let text = match self.in_rounds(&request.name, &request, &context).await? {
                Ok(text) => text,
                Err(asked) => return Ok(GetPromptResponse::InputRequired(asked)),
            };
            return Ok(GetPromptResponse::Complete(complete::<GetPromptResult>(
                json!({"messages": [{"role": "user", "content": self::text(&text)}]}),
            )));
        }
        let args = request.arguments.clone().unwrap_or_default();
        let arg = |name: &str| {
            args.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let user = |content: Value| json!({"role": "user", "content": content});
        let messages = match request.name.as_str() {
            "test_simple_prompt" => json!([user(text("This is a simple prompt for testing."))]),
            "test_prompt_with_arguments" => json!([user(text(&format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                arg("arg1"),
                arg("arg2")
            )))]),
            "test_prompt_with_embedded_resource" => json!([
                user(
                    json!({"type": "resource", "resource": {"uri": arg("resourceUri"), "mimeType": "text/plain", "text": "Embedded resource content for testing."}})
                ),
                user(text("Please process the embedded resource above."))
            ]),
            "test_prompt_with_image" => json!([
                user(json!({"type": "image", "data": PNG, "mimeType": "image/png"})),
                user(text("Please analyze the image above."))
            ]),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown prompt {other:?}"),
                    None,
                ));
            }
        };
        Ok(GetPromptResponse::Complete(complete::<GetPromptResult>(
            json!({"messages": messages}),
        )))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let typed = request.argument.value.to_lowercase();
        let values: Vec<&str> = ["paris", "park", "party", "test", "testing"]
            .into_iter()
            .filter(|v| v.starts_with(&typed))
            .collect();
        Ok(complete(
            json!({"completion": {"values": values, "total": values.len(), "hasMore": false}}),
        ))
    }

    #[allow(deprecated)] // logging is deprecated by SEP-2577; the suite still tests it
    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }
}

/// The conformance fixture over streamable HTTP on `addr`, with sessions for 2025-era clients
/// (server-to-client requests need them), stopped on drop.
pub struct HttpConformance {
    pub addr: SocketAddr,
    pub fixture: Conformance,
    stop: CancellationToken,
}

impl HttpConformance {
    pub async fn start(addr: SocketAddr, pinned: Option<ProtocolVersion>) -> HttpConformance {
        let fixture = Conformance::new(pinned);
        let stop = CancellationToken::new();
        let shared = fixture.clone();
        let service: StreamableHttpService<Conformance, LocalSessionManager> =
            StreamableHttpService::new(
                move || Ok(shared.clone()),
                Default::default(),
                StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
            );
        let router = axum::Router::new().nest_service("/mcp", service);
        let addr = crate::fixture::serve_until(addr, router, stop.clone()).await;
        HttpConformance {
            addr,
            fixture,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

impl Drop for HttpConformance {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
