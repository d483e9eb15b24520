//! The job envelope: one MCP request for one upstream server, as it travels on `MCPQ_JOBS`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::lane::Lane;
use crate::{
    names::ENVELOPE_VERSION,
    seal::{Purpose, SigningKey},
};

/// A JSON object, as MCP params are.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// One MCP request to be executed against one upstream server.
///
/// Published to `mcpq.jobs.<server>.<lane>` with the headers listed in [`crate::names`]; the reply
/// inbox travels in the `Mcpq-Reply-To` header, never in the body, because JetStream keeps
/// headers but not the publisher's reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// Envelope version; this crate writes [`ENVELOPE_VERSION`].
    pub v: u32,
    /// Job id, a UUID v7 (time-ordered), chosen by the submitter.
    pub id: Uuid,
    /// The upstream server's name from the config; must match the subject's server token.
    pub server: String,
    /// The MCP request to send upstream.
    pub request: McpRequest,
    /// Caller's idempotency key; sent as `Nats-Msg-Id` so a double submission is dropped. With a
    /// key the id is derived from server and key (see [`idempotent_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Unix time in milliseconds after which the job must not be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Priority lane; also the last token of the subject.
    #[serde(default)]
    pub lane: Lane,
    /// W3C `traceparent` of the caller's span, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Unix time in milliseconds when the job was submitted. Optional for pipelines: absent (or
    /// 0), the worker takes the time JetStream stored the message.
    #[serde(default)]
    pub submitted_at_ms: u64,
    /// The least severe log level the caller wants to hear (`debug` ... `emergency`): the
    /// upstream's log messages during the call at or above it come to the inbox as log events.
    /// Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// What the caller can answer when the upstream asks during the call, as MCP client
    /// capabilities (`sampling`, `elicitation`, `roots`); questions it cannot answer are
    /// refused at once. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_capabilities: Option<serde_json::Value>,
    /// Who submitted the job, as the dispatcher authenticated them: its record, task and
    /// cancellation belong to this principal, and its idempotency key is scoped to it. Absent:
    /// an unauthenticated submission (a dispatcher without `auth:`, or a pipeline on NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Unix time in milliseconds before which the job must not start: a worker that gets it
    /// earlier hands it back until then. A dispatcher publishes such a job as a JetStream
    /// schedule (`mcpq.sched.<server>.<job id>`, `Nats-Schedule: @at ...`), so it reaches a lane
    /// only when it is due; a pipeline may do the same, or publish it to the lane at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<u64>,
    /// The recurring schedule this job is a tick of: the message is the schedule's template,
    /// and the worker derives each tick's job id from the schedule and the tick (see
    /// [`tick_id`]), so a tick delivered twice is one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    /// The call may not be sent twice: an attempt that failed is not retried (the job goes to
    /// the dead letters with its reason). A schedule with `idempotent: false` sets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_retry: bool,
    /// Where to POST the job's record when it ends (Standard Webhooks, signed with the
    /// deployment's `callbacks.secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// An MCP request: the JSON-RPC method and its params, without the JSON-RPC id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct McpRequest {
    /// e.g. `tools/call`, `resources/read`, `prompts/get`.
    pub method: String,
    /// The method's params exactly as MCP defines them (for `tools/call`: `name`, `arguments`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<JsonObject>,
}

impl McpRequest {
    /// A `tools/call` request for `tool` with `arguments`.
    pub fn call_tool(tool: impl Into<String>, arguments: Option<JsonObject>) -> Self {
        let mut params = JsonObject::new();
        params.insert("name".into(), serde_json::Value::String(tool.into()));
        if let Some(arguments) = arguments {
            params.insert("arguments".into(), serde_json::Value::Object(arguments));
        }
        Self {
            method: "tools/call".into(),
            params: Some(params),
        }
    }

    /// The tool name of a `tools/call` request.
    pub fn tool_name(&self) -> Option<&str> {
        (self.method == "tools/call")
            .then(|| self.params.as_ref()?.get("name")?.as_str())
            .flatten()
    }
}

impl Job {
    /// A new job with a fresh UUID v7 id, submitted now.
    pub fn new(server: impl Into<String>, request: McpRequest) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            id: Uuid::now_v7(),
            server: server.into(),
            request,
            idempotency_key: None,
            deadline_ms: None,
            lane: Lane::default(),
            traceparent: None,
            submitted_at_ms: crate::now_ms(),
            log_level: None,
            client_capabilities: None,
            principal: None,
            run_at_ms: None,
            schedule_id: None,
            no_retry: false,
            callback_url: None,
        }
    }

    /// Whether the job must not start yet, at `now_ms`.
    pub fn is_early(&self, now_ms: u64) -> bool {
        self.run_at_ms.is_some_and(|at| at > now_ms)
    }

    /// Makes the job idempotent under `key`: the id becomes a UUID derived from the server and
    /// the key (v5, see [`idempotent_id`]), so every submission with the same key is the same
    /// job. An authenticated caller's job is then made its own with [`Job::owned_by`], which
    /// derives the id again.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.id = idempotent_id(&self.server, &key);
        self.principal = None;
        self.idempotency_key = Some(key);
        self
    }

    /// Makes the job `principal`'s; an idempotent job's id is derived again, now scoped to it
    /// and keyed with the deployment's signing key (see [`idempotent_id_of`]).
    pub fn owned_by(mut self, principal: Option<String>, signing: &SigningKey) -> Self {
        self.principal = principal;
        if let Some(key) = &self.idempotency_key {
            self.id = idempotent_id_of(self.principal.as_deref(), &self.server, key, signing);
        }
        self
    }

    /// The `Nats-Msg-Id` for this job: its id (which its idempotency key derives), for a job
    /// with a key — the only kind of job that is ever published twice on purpose. (Each id in
    /// JetStream's duplicate window costs memory in nats-server.)
    pub fn msg_id(&self) -> Option<String> {
        self.idempotency_key.as_ref().map(|_| self.id.to_string())
    }
}

/// The job id of the tick of schedule `schedule_id` that JetStream fired with
/// `Nats-Schedule-Next: next` (the tick after it, which names this one): a UUID (v8) derived
/// with the deployment's signing key, so every delivery of the tick is one job and nobody
/// without the key can take a tick's id beforehand.
pub fn tick_id(schedule_id: &Uuid, next: &str, signing: &SigningKey) -> Uuid {
    Uuid::new_v8(signing.derive(
        Purpose::JobId,
        &[b"tick", schedule_id.as_bytes(), next.as_bytes()],
    ))
}

/// mcpq's namespace for idempotent ids (a fixed random UUID).
const NAMESPACE: Uuid = Uuid::from_u128(0x6d63_7071_5f69_6465_6d70_6f74_656e_7401);

/// The job id of every unauthenticated job (a pipeline's, a dispatcher's without `auth:`)
/// submitted to `server` with idempotency key `key`: UUID v5 of `<server>\0<key>` in mcpq's
/// namespace — a formula anyone can compute.
pub fn idempotent_id(server: &str, key: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{server}\u{0}{key}").as_bytes())
}

/// The job id of every job `principal` submits to `server` with idempotency key `key`. For an
/// authenticated caller a UUID (v8) derived with the deployment's signing key from principal,
/// server and key: nobody without the key — no pipeline, no other principal — can compute it,
/// so none can take the id before its caller does. Unauthenticated: [`idempotent_id`].
pub fn idempotent_id_of(
    principal: Option<&str>,
    server: &str,
    key: &str,
    signing: &SigningKey,
) -> Uuid {
    match principal {
        None => idempotent_id(server, key),
        Some(principal) => Uuid::new_v8(signing.derive(
            Purpose::JobId,
            &[principal.as_bytes(), server.as_bytes(), key.as_bytes()],
        )),
    }
}
