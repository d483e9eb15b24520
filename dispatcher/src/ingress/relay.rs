//! One MCP request through the queue: the job built from the request and its `_meta`, published,
//! waited for, with the upstream's progress and log messages relayed to the client in order on
//! the request's response stream, and the job cancelled if the client goes away.

use std::{pin::Pin, time::Duration};

use mcpq_schemas::{
    InputAnswer, InputRequestEvent, Job, JobError, JsonObject, McpRequest, Outcome,
    bridge::{self, Era},
    check,
    config::TaskMode,
    names::{ENVELOPE_VERSION, input_subject},
    now_ms,
};
use rmcp::{
    ErrorData, Peer, RoleServer,
    model::{
        ClientCapabilities, ErrorCode, InputRequiredResult, InputResponses,
        ProgressNotificationParam, ProgressToken, ServerNotification, ServerRequest,
    },
    service::RequestContext,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    Event,
    auth::{Caller, quota::OverLimit},
    shared::Shared,
};

/// Request `_meta` key: how long the caller will wait for this call, in milliseconds.
pub const META_TIMEOUT_MS: &str = "io.mcpq/timeoutMs";
/// Request `_meta` key: the priority lane for this call (`high`, `normal`, `low`).
pub const META_LANE: &str = "io.mcpq/lane";
/// Request `_meta` key: an idempotency key; calls with the same key run once.
pub const META_IDEMPOTENCY_KEY: &str = "io.mcpq/idempotencyKey";
/// Request `_meta` key: start the call no earlier than this (RFC 3339).
pub const META_RUN_AT: &str = "io.mcpq/runAt";

/// How long a call may wait in the queue before its upstream timeout starts, by default.
const QUEUE_ALLOWANCE: Duration = Duration::from_secs(30);

/// What a relayed request came to.
pub(super) enum Relayed {
    /// The upstream's result, canonical (see `mcpq_schemas::bridge`).
    Answer(serde_json::Value),
    /// The call became a task (tools only): the job is stored; the client polls it.
    Task(Job),
    /// A retried call the upstream made a task of: its record (written by the worker) is the
    /// task.
    TaskOf(Uuid),
    /// The upstream asks a 2026-07-28 client something: the client retries its request with
    /// the answer (the job waits meanwhile).
    InputRequired(InputRequiredResult),
}

/// Starts the id of a question that is a 2026-07-28 upstream's whole round (see the worker's
/// `call::ask::ROUND`): its answer is the caller's `inputResponses` as they came.
const ROUND: char = 'r';

/// Starts every `requestState` mcpq hands out: `mcpq/<job id>/<question id>/<seal>`, the seal
/// binding job and question to the caller asked (HMAC with the deployment's signing key).
const STATE_PREFIX: &str = "mcpq/";

/// The `requestState` of question `question` of job `job_id`, asked of `principal`.
fn request_state(
    signing: &mcpq_schemas::seal::SigningKey,
    job_id: &Uuid,
    question: &str,
    principal: Option<&str>,
) -> String {
    let seal = signing.seal(
        mcpq_schemas::seal::Purpose::Question,
        &[
            job_id.as_bytes(),
            question.as_bytes(),
            principal.unwrap_or("").as_bytes(),
        ],
    );
    format!("{STATE_PREFIX}{job_id}/{question}/{seal}")
}

/// A 2026-07-28 client's retried request: its answer to the question an earlier round asked.
pub(super) struct Resume {
    job_id: Uuid,
    question: String,
    seal: String,
    answer: serde_json::Value,
}

impl Resume {
    /// From a request's `requestState` and `inputResponses`; `None` when it is no retry.
    pub fn from_request(
        state: Option<&str>,
        responses: Option<&InputResponses>,
    ) -> Result<Option<Resume>, ErrorData> {
        let Some(state) = state else {
            return Ok(None);
        };
        let bad = || {
            ErrorData::invalid_params(
                format!(
                    "requestState {state:?} was not issued by mcpq (send back the one you got)"
                ),
                None,
            )
        };
        let mut parts = state.strip_prefix(STATE_PREFIX).ok_or_else(bad)?.split('/');
        let (Some(job_id), Some(question), Some(seal), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let job_id = job_id.parse().map_err(|_| bad())?;
        // The question id becomes a NATS subject token: mcpq's are letters and digits.
        if question.is_empty() || !question.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad());
        }
        // A 2026-07-28 upstream's round is answered whole: the upstream judges what is missing,
        // extra or malformed (and may ask again). A single question needs its answer here.
        let answer = if question.starts_with(ROUND) {
            serde_json::to_value(responses.cloned().unwrap_or_default()).map_err(|_| bad())?
        } else {
            responses
                .and_then(|r| r.get(question))
                .cloned()
                .ok_or_else(|| {
                    ErrorData::invalid_params(
                        format!("inputResponses has no answer to {question:?}, which requestState {state:?} asks for"),
                        None,
                    )
                })?
        };
        Ok(Some(Resume {
            job_id,
            question: question.to_string(),
            seal: seal.to_string(),
            answer,
        }))
    }
}

/// Who sent a request, and how to reach its client while the call runs.
pub(crate) struct Origin<'a> {
    pub caller: Caller,
    pub era: Era,
    /// The capabilities the client declared (per request on 2026-07-28, per session before).
    pub capabilities: Option<ClientCapabilities>,
    pub progress_token: Option<ProgressToken>,
    /// Where progress, log messages and a 2025-era session's questions go.
    pub notifier: Notifier<'a>,
    /// Cancelled when the client cancels the request (dropping the call does the same).
    pub cancelled: Option<&'a CancellationToken>,
    /// The W3C `traceparent` HTTP header, when it was a valid one (`_meta` comes first).
    pub traceparent: Option<String>,
}

impl<'a> Origin<'a> {
    /// A request rmcp hands to the gateway.
    pub fn of(context: &'a RequestContext<RoleServer>) -> Self {
        let version = context.protocol_version();
        Origin {
            caller: super::caller_of(context),
            era: Era::of(version.as_ref().map(|v| v.as_str())),
            capabilities: context.client_capabilities(),
            progress_token: context.meta.get_progress_token(),
            notifier: Notifier::Peer(&context.peer),
            cancelled: Some(&context.ct),
            traceparent: context
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|parts| crate::headers::traceparent_header(&parts.headers)),
        }
    }
}

/// Where a request's notifications go while it runs.
pub(crate) enum Notifier<'a> {
    /// rmcp's peer of the request: its response stream, or a 2025-era session.
    Peer(&'a Peer<RoleServer>),
    /// The plain JSON path's SSE body (`ingress::plain`): JSON-RPC notifications, encoded.
    Plain(tokio::sync::mpsc::UnboundedSender<String>),
}

impl Notifier<'_> {
    async fn notify(&self, notification: ServerNotification) {
        match self {
            Notifier::Peer(peer) => {
                let _ = peer.send_notification(notification).await;
            }
            Notifier::Plain(sender) => {
                let message = rmcp::model::ServerJsonRpcMessage::notification(notification);
                if let Ok(text) = serde_json::to_string(&message) {
                    let _ = sender.send(text);
                }
            }
        }
    }
}

/// One request on its way: who asked, and how.
pub(super) struct Request<'a> {
    pub server: &'a str,
    pub request: McpRequest,
    /// The request's `_meta`.
    pub meta: Option<&'a JsonObject>,
    pub origin: Origin<'a>,
    /// The least severe log level the caller wants to hear, if any.
    pub log_level: Option<String>,
    /// Tools only: whether (and when) the call becomes a task.
    pub task: TaskMode,
    /// A retry that carries the answer to the job's question: the job runs already.
    pub resume: Option<Resume>,
}

/// JSON-RPC error code: the caller may not use this tool, prompt or resource.
pub const FORBIDDEN: ErrorCode = ErrorCode(-32001);
/// JSON-RPC error code: the caller is over a limit; `data.retryAfterMs` says when to retry.
pub const RATE_LIMITED: ErrorCode = ErrorCode(-32029);
/// JSON-RPC error code: the server's queue is full (`maxQueued`); retry after `retryAfterMs`.
pub const QUEUE_FULL: ErrorCode = ErrorCode(-32030);

/// The refusal of a request the caller may not make.
pub(super) fn forbidden(caller: &Caller, server: &str, name: &str) -> ErrorData {
    ErrorData::new(
        FORBIDDEN,
        format!(
            "principal {:?} may not use {server}/{name} (not in its allow list, or denied); nothing was queued",
            caller.principal().unwrap_or("anonymous")
        ),
        Some(serde_json::json!({"kind": "forbidden"})),
    )
}

fn over_limit(over: OverLimit) -> ErrorData {
    ErrorData::new(
        RATE_LIMITED,
        over.message,
        Some(serde_json::json!({
            "kind": "rate_limited",
            "limit": over.limit,
            "retryAfterMs": over.retry_after.as_millis() as u64,
        })),
    )
}

/// What a request uses, as `allow` patterns name it: the tool or prompt name, or the URI.
fn used_name(request: &McpRequest) -> Option<&str> {
    fn field<'a>(object: &'a JsonObject, key: &str) -> Option<&'a str> {
        object.get(key)?.as_str()
    }
    let params = request.params.as_ref()?;
    match request.method.as_str() {
        "tools/call" | "prompts/get" => field(params, "name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => field(params, "uri"),
        "completion/complete" => {
            let reference = params.get("ref")?.as_object()?;
            field(reference, "name").or_else(|| field(reference, "uri"))
        }
        _ => None,
    }
}

/// Sends `request` through the queue and waits for its answer: admitted, started (a new job
/// submitted, or a running job's question answered), then its events relayed until the reply.
pub(super) async fn relay(shared: &Shared, request: Request<'_>) -> Result<Relayed, ErrorData> {
    let defaults = admit(shared, &request)?;
    let asked = wait_asked(request.meta)?;
    let wait = asked.unwrap_or(defaults.timeout + QUEUE_ALLOWANCE);
    let (events, updates) = tokio::sync::mpsc::channel(crate::replies::EVENTS_UNREAD);
    let started = match &request.resume {
        Some(resume) => answer_question(shared, &request, resume, wait, events)?,
        None => match submit(shared, &request, defaults, asked, wait, events).await? {
            Submitted::Task(job) => return Ok(Relayed::Task(*job)),
            Submitted::Call(started) => *started,
        },
    };
    pump(shared, &request, defaults, started, updates, wait).await
}

/// Admission, the same for every method: a caller allowed to use what the request names (the
/// tool, prompt or resource), on a configured server that a worker serves (it has published a
/// catalog). Nothing is queued for a request refused here.
fn admit<'s>(
    shared: &'s Shared,
    request: &Request<'_>,
) -> Result<&'s crate::ServerDefaults, ErrorData> {
    // What the caller may not use is refused first, whatever else is wrong with the request:
    // a server it may not use is forbidden, not described.
    let caller = &request.origin.caller;
    let name = used_name(&request.request).unwrap_or("");
    if !caller.may(request.server, name) {
        return Err(forbidden(caller, request.server, name));
    }
    let refused =
        |r: crate::shared::Refusal| ErrorData::invalid_params(r.message().to_string(), None);
    // An unsubscribe is never refused for want of a catalog: it waits for a worker like any
    // job, so that the upstream hears it when one comes back.
    if request.request.method == "resources/unsubscribe" {
        return shared.server(request.server).map_err(refused);
    }
    shared.check(request.server).map_err(refused)
}

/// A call on its way: the job's id, the job itself when the call may still become a task, and
/// the wait for its reply.
struct Started {
    job_id: Uuid,
    /// The job is for later: it waits as a JetStream schedule until it is due.
    later: bool,
    kept: Option<Job>,
    call: Pin<Box<dyn Future<Output = Result<mcpq_schemas::Reply, crate::ClientError>> + Send>>,
    span: tracing::Span,
    /// The caller's open-call slot (`maxOpenCalls`), held until the answer or the task is
    /// handed back.
    _slot: Option<crate::auth::quota::Held>,
}

/// What submitting a new request came to.
enum Submitted {
    /// A call to wait for.
    Call(Box<Started>),
    /// A task from the start (`taskMode: always`): stored, not waited for.
    Task(Box<Job>),
}

/// A 2026-07-28 client's retry that answers its job's question: only the caller the question
/// was asked of may (the `requestState`'s seal says who that was); the running job is waited
/// for from there.
fn answer_question(
    shared: &Shared,
    request: &Request<'_>,
    resume: &Resume,
    wait: Duration,
    events: tokio::sync::mpsc::Sender<Event>,
) -> Result<Started, ErrorData> {
    let job_id = resume.job_id;
    let asked_here = request_state(
        &shared.signing,
        &job_id,
        &resume.question,
        request.origin.caller.principal(),
    );
    let expected = asked_here.rsplit('/').next().unwrap_or_default();
    let sealed = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), resume.seal.as_bytes());
    if !bool::from(sealed) {
        return Err(ErrorData::invalid_params(
            format!("requestState for job {job_id} was not issued to this caller"),
            None,
        ));
    }
    let answer = InputAnswer {
        v: ENVELOPE_VERSION,
        job_id,
        id: resume.question.clone(),
        result: Some(resume.answer.clone()),
        error: None,
        reply_to: None,
    };
    let subject = input_subject(&job_id, &resume.question);
    let client = shared.client.clone();
    let call = async move {
        client
            .answer_and_wait(&subject, answer, wait, Some(events))
            .await
    };
    Ok(Started {
        job_id,
        later: false,
        kept: None,
        call: Box::pin(call),
        span: tracing::info_span!("relay", %job_id, server = request.server),
        _slot: None,
    })
}

/// A new request: a slot among the caller's open calls, then its job built and published.
async fn submit(
    shared: &Shared,
    request: &Request<'_>,
    defaults: &crate::ServerDefaults,
    asked: Option<Duration>,
    wait: Duration,
    events: tokio::sync::mpsc::Sender<Event>,
) -> Result<Submitted, ErrorData> {
    let caller = &request.origin.caller;
    // Steps other than the wait are boxed, so a waiting call holds no room for them.
    let slot = Box::pin(shared.admit_open_call(caller))
        .await
        .map_err(over_limit)?;
    let mut job = new_job(request, defaults, request.meta, asked, wait)?
        .owned_by(caller.principal().map(str::to_string), &shared.signing);
    // The call's span in the caller's trace; the job carries it on to the worker.
    let span = tracing::info_span!("ingress", job_id = %job.id, server = request.server);
    mcpq_schemas::trace::adopt(&span, job.traceparent.as_deref());
    if let Some(own) = mcpq_schemas::trace::of_span(&span) {
        job.traceparent = Some(own.to_string());
    }
    if request.task == TaskMode::Always {
        // The record and the job are stored before the client hears of the task; a task has
        // no deadline unless the caller set one.
        job.deadline_ms =
            asked.map(|asked| check::deadline_after(job.run_at_ms.unwrap_or_else(now_ms), asked));
        Box::pin(shared.client.submit(&job))
            .await
            .map_err(|e| client_error(job.id, &e))?;
        return Ok(Submitted::Task(Box::new(job)));
    }
    // A copy is kept only for a call that may become a task: after `taskAfter`, or when the
    // upstream makes a task of it.
    let kept = match request.task {
        TaskMode::Never => None,
        _ => Some(job.clone()),
    };
    let job_id = job.id;
    let later = job.run_at_ms.is_some();
    let client = shared.client.clone();
    // A call for later is waited for until it is due, and then as long as any call.
    let wait = wait + Duration::from_millis(job.run_at_ms.unwrap_or(0).saturating_sub(now_ms()));
    let call = async move { client.call_with_events(&job, wait, Some(events)).await };
    Ok(Submitted::Call(Box::new(Started {
        job_id,
        later,
        kept,
        call: Box::pin(call),
        span,
        _slot: slot,
    })))
}

/// Waits for the call's reply, relaying its events to the client in order meanwhile; hands
/// the call over as a task when it becomes one, and cancels the job when the client goes away.
async fn pump(
    shared: &Shared,
    request: &Request<'_>,
    defaults: &crate::ServerDefaults,
    started: Started,
    mut updates: tokio::sync::mpsc::Receiver<Event>,
    wait: Duration,
) -> Result<Relayed, ErrorData> {
    let Started {
        job_id,
        later,
        kept: job,
        call,
        span,
        _slot,
    } = started;
    let origin = &request.origin;
    let resumed = request.resume.is_some();
    let mut call = Box::pin(call.instrument(span));
    let token = origin.progress_token.clone().or_else(|| {
        request
            .meta
            .and_then(|m| m.get("progressToken"))
            .and_then(|t| serde_json::from_value(t.clone()).ok())
    });
    // A caller that goes away (a dropped response stream, `notifications/cancelled`) cancels
    // the job, queued or running.
    let mut guard = CancelOnDrop {
        client: shared.client.clone(),
        job_id,
        server: request.server.to_string(),
        later,
        armed: true,
    };
    let become_task = async {
        match request.task {
            TaskMode::Optional => tokio::time::sleep(defaults.tasks.after).await,
            _ => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(become_task);
    let reply = loop {
        tokio::select! {
            reply = &mut call => break reply,
            Some(event) = updates.recv() => {
                // The upstream made a task of the call: so does mcpq, for a caller that can
                // have one (the job was kept); any other caller just waits on.
                if matches!(event, Event::Task(_)) {
                    if let Some(job) = job {
                        guard.armed = false;
                        settle_later(shared, call);
                        return Ok(Relayed::Task(job));
                    }
                    if resumed {
                        guard.armed = false;
                        settle_later(shared, call);
                        return Ok(Relayed::TaskOf(job_id));
                    }
                    continue;
                }
                if let Some(asked) = Box::pin(handle(shared, origin, token.as_ref(), event, wait)).await {
                    guard.armed = false;
                    return Ok(Relayed::InputRequired(asked));
                }
            }
            () = cancelled(origin.cancelled) => {
                return Err(ErrorData::new(
                    ErrorCode::INVALID_REQUEST,
                    format!("job {job_id}: cancelled by the client"),
                    Some(serde_json::json!({"jobId": job_id, "kind": "cancelled"})),
                ));
            }
            () = &mut become_task, if job.is_some() => {
                guard.armed = false;
                if let Some(job) = job {
                    settle_later(shared, call);
                    return Ok(Relayed::Task(job));
                }
            }
        }
    };
    guard.armed = false;
    // Events sent before the reply go out before the result.
    while let Ok(event) = updates.try_recv() {
        if let Some(asked) = Box::pin(handle(shared, origin, token.as_ref(), event, wait)).await {
            return Ok(Relayed::InputRequired(asked));
        }
    }
    let reply = reply.map_err(|e| match &e {
        crate::ClientError::NotAsking { .. } => ErrorData::invalid_params(e.to_string(), None),
        _ => client_error(job_id, &e),
    })?;
    match reply.outcome {
        Outcome::Ok { result } => Ok(Relayed::Answer(result)),
        Outcome::Error { error } => Err(to_mcp_error(origin.era, reply.job_id, error)),
    }
}

/// A call that became a task: its reply still comes here, and the task's record gets it,
/// should the worker not have written the ending itself.
fn settle_later<F>(shared: &Shared, call: Pin<Box<F>>)
where
    F: Future<Output = Result<mcpq_schemas::Reply, crate::ClientError>> + Send + 'static,
{
    let client = shared.client.clone();
    tokio::spawn(async move {
        if let Ok(reply) = call.await
            && let Err(e) = client.settle_task(&reply).await
        {
            tracing::warn!(job_id = %reply.job_id, error = %e, "cannot write a task's ending");
        }
    });
}

/// The job for a new request, from its `_meta` and the server's defaults.
fn new_job(
    request: &Request<'_>,
    defaults: &crate::ServerDefaults,
    meta: Option<&JsonObject>,
    asked: Option<Duration>,
    wait: Duration,
) -> Result<Job, ErrorData> {
    let mut job = Job::new(request.server, request.request.clone());
    job.lane = match meta.and_then(|m| m.get(META_LANE)) {
        None => defaults.lane,
        Some(lane) => serde_json::from_value(lane.clone()).map_err(|_| {
            ErrorData::invalid_params(
                format!("_meta {META_LANE:?}: {lane} is not a lane (high, normal or low)"),
                None,
            )
        })?,
    };
    fn invalid(e: impl ToString) -> ErrorData {
        ErrorData::invalid_params(e.to_string(), None)
    }
    let text = |key: &str| match meta.and_then(|m| m.get(key)) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(invalid(format!("_meta {key:?}: {other} is not a string"))),
    };
    let now = now_ms();
    job.run_at_ms = check::run_at(now, text(META_RUN_AT)?, None).map_err(|mut e| {
        e.field = format!("_meta {META_RUN_AT:?}");
        invalid(e)
    })?;
    // The wait for a call for later starts when it is due.
    job.deadline_ms = Some(check::deadline_after(
        job.run_at_ms.unwrap_or(now),
        asked.unwrap_or(wait),
    ));
    if let Some(key) = text(META_IDEMPOTENCY_KEY)? {
        check::idempotency_key(&format!("_meta {META_IDEMPOTENCY_KEY:?}"), key).map_err(invalid)?;
        job = job.with_idempotency_key(key);
    }
    // The caller's trace (`_meta`, else the HTTP header), or one started here: every job is
    // traced, so its audit record and the upstream's `_meta` carry an id to follow.
    job.traceparent = Some(match text("traceparent")? {
        Some(traceparent) => {
            check::traceparent("_meta \"traceparent\"", traceparent).map_err(invalid)?;
            traceparent.to_string()
        }
        None => request
            .origin
            .traceparent
            .clone()
            .unwrap_or_else(|| mcpq_schemas::trace::TraceParent::start().to_string()),
    });
    job.log_level = request.log_level.clone();
    job.client_capabilities = request
        .origin
        .capabilities
        .as_ref()
        .and_then(|c| serde_json::to_value(c).ok());
    // The upstream may make a task of the call only when mcpq may (the worker declares the
    // extension upstream for a caller that has it).
    if request.task == TaskMode::Never
        && let Some(extensions) = job
            .client_capabilities
            .as_mut()
            .and_then(|c| c.get_mut("extensions"))
            .and_then(|e| e.as_object_mut())
    {
        extensions.remove(bridge::TASKS_EXTENSION);
    }
    Ok(job)
}

/// Relays one event to the client: progress when it sent a progress token, log messages (the
/// worker only sends those at or above the caller's level), and the upstream's questions — to a
/// 2025-era session as a request of its own (the answer goes back at once), to a 2026-07-28
/// client as the `input_required` result returned here.
async fn handle(
    shared: &Shared,
    origin: &Origin<'_>,
    token: Option<&ProgressToken>,
    event: Event,
    wait: Duration,
) -> Option<InputRequiredResult> {
    let Event::Input(question) = event else {
        notify(&origin.notifier, token, event).await;
        return None;
    };
    let asked = serde_json::json!({"method": question.method, "params": question.params});
    if origin.era == Era::Stateless {
        // The upstream's keys when it asked a round; the question's id for a single question.
        let requests = match &question.requests {
            Some(requests) => serde_json::Value::Object(requests.clone()),
            None => serde_json::json!({ question.id.clone(): asked }),
        };
        return match serde_json::from_value(requests) {
            Ok(requests) => Some(InputRequiredResult::new(
                Some(requests),
                Some(request_state(
                    &shared.signing,
                    &question.job_id,
                    &question.id,
                    origin.caller.principal(),
                )),
            )),
            Err(e) => {
                let error = serde_json::json!({"code": -32602, "message": format!("mcpq cannot relay {}: {e}", question.method)});
                answer(shared, &question, Err(error)).await;
                None
            }
        };
    }
    let Notifier::Peer(peer) = origin.notifier else {
        let error = serde_json::json!({"code": -32603, "message": format!("the client has no session to be asked {} in", question.method)});
        answer(shared, &question, Err(error)).await;
        return None;
    };
    // A 2025-era session is asked a round's questions one after the other.
    let answered = match &question.requests {
        None => ask_session(peer, asked, wait).await,
        Some(requests) => {
            let mut answers = serde_json::Map::with_capacity(requests.len());
            let mut refused = None;
            for (key, asked) in requests {
                match ask_session(peer, asked.clone(), wait).await {
                    Ok(answer) => {
                        answers.insert(key.clone(), answer);
                    }
                    Err(error) => {
                        refused = Some(error);
                        break;
                    }
                }
            }
            refused.map_or(Ok(serde_json::Value::Object(answers)), Err)
        }
    };
    answer(shared, &question, answered).await;
    None
}

/// Asks a 2025-era session `asked` (`{method, params}`) as a request of the server's own: its
/// answer, or its refusal as a JSON-RPC error.
async fn ask_session(
    peer: &Peer<RoleServer>,
    asked: serde_json::Value,
    wait: Duration,
) -> Result<serde_json::Value, serde_json::Value> {
    let method = asked["method"].as_str().unwrap_or_default().to_string();
    let answered = match serde_json::from_value::<ServerRequest>(asked) {
        // A client that never answers holds the call no longer than the call itself may last.
        Ok(request) => match tokio::time::timeout(wait, peer.send_request(request))
            .await
            .unwrap_or(Err(rmcp::ServiceError::Timeout { timeout: wait }))
        {
            Ok(result) => serde_json::to_value(result).map_err(|e| e.to_string()),
            Err(rmcp::ServiceError::McpError(e)) => {
                return Err(
                    serde_json::json!({"code": e.code.0, "message": e.message, "data": e.data}),
                );
            }
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    answered.map_err(|e| {
        serde_json::json!({"code": -32603, "message": format!("the client did not answer {method}: {e}")})
    })
}

/// Sends the client's answer (or refusal) to the worker that asked.
async fn answer(
    shared: &Shared,
    question: &InputRequestEvent,
    answered: Result<serde_json::Value, serde_json::Value>,
) {
    let (result, error) = match answered {
        Ok(result) => (Some(result), None),
        Err(error) => (None, Some(error)),
    };
    let answer = InputAnswer {
        v: ENVELOPE_VERSION,
        job_id: question.job_id,
        id: question.id.clone(),
        result,
        error,
        reply_to: None,
    };
    if let Err(e) = shared.client.answer(&question.answer_to, &answer).await {
        tracing::info!(error = %e, "the answer found no worker waiting for it");
    }
}

/// The caller's `io.mcpq/timeoutMs`, checked.
fn wait_asked(meta: Option<&JsonObject>) -> Result<Option<Duration>, ErrorData> {
    let Some(value) = meta.and_then(|m| m.get(META_TIMEOUT_MS)) else {
        return Ok(None);
    };
    check::timeout_ms(&format!("_meta {META_TIMEOUT_MS:?}"), value)
        .map(Some)
        .map_err(|e| ErrorData::invalid_params(e.to_string(), None))
}

/// Relays a progress or log event to the client.
async fn notify(notifier: &Notifier<'_>, token: Option<&ProgressToken>, event: Event) {
    match event {
        Event::Progress(event) => {
            let Some(token) = token else {
                return;
            };
            let mut param = ProgressNotificationParam::new(token.clone(), event.progress.progress);
            if let Some(total) = event.progress.total {
                param = param.with_total(total);
            }
            if let Some(message) = event.progress.message {
                param = param.with_message(message);
            }
            notifier
                .notify(ServerNotification::ProgressNotification(
                    rmcp::model::Notification::new(param),
                ))
                .await;
        }
        Event::Log(event) => {
            let message = serde_json::json!({
                "level": event.message.level,
                "logger": event.message.logger,
                "data": event.message.data,
            });
            #[allow(deprecated)] // logging is deprecated by SEP-2577; upstreams still log
            match serde_json::from_value::<rmcp::model::LoggingMessageNotificationParam>(message) {
                Ok(param) => {
                    notifier
                        .notify(ServerNotification::LoggingMessageNotification(
                            rmcp::model::Notification::new(param),
                        ))
                        .await;
                }
                Err(e) => tracing::debug!(error = %e, "log message with an unknown level dropped"),
            }
        }
        Event::Input(_) | Event::Task(_) => {}
    }
}

/// Resolves when `token` is cancelled; never without one.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// A client error as the JSON-RPC error the caller sees: a request too large is invalid
/// params naming the limit, a full queue a retryable `queue_full`, the rest internal.
pub(super) fn client_error(job_id: Uuid, e: &crate::ClientError) -> ErrorData {
    match e {
        crate::ClientError::TooFarAhead { .. } => {
            ErrorData::invalid_params(e.to_string(), Some(serde_json::json!({"jobId": job_id})))
        }
        crate::ClientError::TooLarge { size, limit, .. } => ErrorData::invalid_params(
            e.to_string(),
            Some(
                serde_json::json!({"jobId": job_id, "kind": "too_large", "size": size, "limit": limit}),
            ),
        ),
        crate::ClientError::QueueFull { server, .. } => ErrorData::new(
            QUEUE_FULL,
            e.to_string(),
            Some(
                serde_json::json!({"jobId": job_id, "kind": "queue_full", "server": server, "retryAfterMs": 1000}),
            ),
        ),
        _ => ErrorData::internal_error(e.to_string(), Some(serde_json::json!({"jobId": job_id}))),
    }
}

/// A job error as the JSON-RPC error the caller sees. Upstream JSON-RPC errors keep their code
/// (in the caller's revision: see `bridge::error_code_for`).
fn to_mcp_error(era: Era, job_id: uuid::Uuid, error: JobError) -> ErrorData {
    // The upstream's own error data reaches the client as it sent it (e.g. -32021's
    // `requiredCapabilities`), with mcpq's `jobId` and `kind`: those are always mcpq's (an
    // upstream's own keys of those names move to `data.upstream`).
    let mut data = match error.data {
        Some(serde_json::Value::Object(upstream)) => upstream,
        Some(other) => serde_json::Map::from_iter([("upstream".to_string(), other)]),
        None => serde_json::Map::new(),
    };
    for key in ["jobId", "kind"] {
        if let Some(theirs) = data.remove(key) {
            let upstream = data
                .entry("upstream")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(upstream) = upstream.as_object_mut() {
                upstream.insert(key.to_string(), theirs);
            }
        }
    }
    data.insert("jobId".into(), job_id.to_string().into());
    data.insert(
        "kind".into(),
        serde_json::to_value(error.kind).unwrap_or_default(),
    );
    let data = serde_json::Value::Object(data);
    let code = error
        .code
        .map(|c| bridge::error_code_for(era, c))
        .and_then(|c| i32::try_from(c).ok())
        .map_or(ErrorCode::INTERNAL_ERROR, ErrorCode);
    ErrorData::new(code, error.message, Some(data))
}

/// Cancels the job if the call's future is dropped before it is disarmed (the client went away).
struct CancelOnDrop {
    client: crate::Client,
    job_id: uuid::Uuid,
    server: String,
    /// A job for later: its schedule goes too, so it never fires for nobody.
    later: bool,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let client = self.client.clone();
        let (job_id, server, later) = (self.job_id, std::mem::take(&mut self.server), self.later);
        tracing::info!(%job_id, "the caller went away; cancelling its job");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let reason = Some("the MCP client went away".to_string());
                if later && let Err(e) = client.unschedule(&server, &job_id).await {
                    tracing::warn!(%job_id, error = %e, "cannot remove the job's schedule");
                }
                if let Err(e) = client.request_cancel(job_id, &server, reason).await {
                    tracing::warn!(%job_id, error = %e, "cannot cancel the job");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream's error data reaches the client as sent; `jobId` and `kind` are always
    /// mcpq's, an upstream's own of those names kept under `data.upstream`.
    #[test]
    fn an_upstreams_error_data_passes_through_and_cannot_pose_as_mcpqs() {
        let job_id = Uuid::new_v4();
        let mut error = JobError::new(mcpq_schemas::ErrorKind::Upstream, "needs sampling");
        error.code = Some(-32021);
        error.data = Some(serde_json::json!({
            "requiredCapabilities": {"sampling": {}},
            "jobId": "not-mcpqs",
            "kind": "forged"
        }));
        let mcp = to_mcp_error(Era::Stateless, job_id, error);
        assert_eq!(mcp.code.0, -32021);
        let data = mcp.data.expect("data");
        assert_eq!(
            data["requiredCapabilities"],
            serde_json::json!({"sampling": {}})
        );
        assert_eq!(data["jobId"], job_id.to_string());
        assert_eq!(data["kind"], "upstream");
        assert_eq!(
            data["upstream"],
            serde_json::json!({"jobId": "not-mcpqs", "kind": "forged"})
        );
        // Data that is no object is kept whole under `upstream`.
        let mut error = JobError::new(mcpq_schemas::ErrorKind::Upstream, "plain");
        error.data = Some(serde_json::json!("text"));
        let data = to_mcp_error(Era::Stateless, job_id, error)
            .data
            .expect("data");
        assert_eq!(data["upstream"], "text");
        assert_eq!(data["kind"], "upstream");
    }
}
