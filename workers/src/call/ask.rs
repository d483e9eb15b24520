//! Questions an upstream asks during a call — `sampling/createMessage`, `elicitation/create`,
//! `roots/list` — relayed to whoever waits for that call and the answer brought back.
//!
//! The question goes to the job's reply subject as an input event (a NATS request: the receiver
//! takes or refuses it at once); the answer comes to `mcpq.input.<job id>.<question id>`, where
//! this worker listens. A caller that cannot answer — it declared no such capability, nobody
//! waits for the job, nobody takes the question — is refused at once, so the upstream hears why
//! instead of waiting. An answer may name a new reply subject: the job's later events and its
//! reply go there (a 2026-07-28 client retries its request on any dispatcher replica).

use std::{sync::Arc, time::Duration};

use async_nats::HeaderMap;
use futures::StreamExt;
use mcpq_schemas::{
    ErrorKind, InputAck, InputAnswer, InputRequestEvent, JobError, PendingInput, TaskEvent,
    names::{ENVELOPE_VERSION, EVENT_INPUT, EVENT_TASK, HDR_EVENT, HDR_JOB_ID, input_subject},
};
use rmcp::{
    ErrorData,
    model::{ErrorCode, InputRequiredResult},
};
use serde_json::Value;
use uuid::Uuid;

use crate::{lock, upstream::CallEvent};

/// How long the receiver of a question has to take it.
const TAKE_WITHIN: Duration = Duration::from_secs(5);

/// The subject a job's events and reply go to; an answer may move it.
pub(crate) type ReplyTo = Arc<std::sync::Mutex<Option<String>>>;

/// Asks one job's caller what its upstream asks.
#[derive(Clone)]
pub(crate) struct Asker {
    pub nats: async_nats::Client,
    pub job_id: Uuid,
    pub reply_to: ReplyTo,
    /// The caller's MCP client capabilities.
    pub capabilities: Option<Value>,
    /// Answers are awaited until then (the call's own timeout).
    pub deadline: tokio::time::Instant,
    /// Fires when the call is cancelled, or the worker stops: a question stops waiting.
    pub interrupt: super::Interrupt,
    /// Where the job's record hears of questions waiting in it.
    pub record: tokio::sync::mpsc::UnboundedSender<CallEvent>,
    /// The upstream made the call a task: its caller now polls the task, and the questions
    /// wait in the job's record instead of going to the inbox.
    pub became_task: Arc<std::sync::atomic::AtomicBool>,
}

/// The client capabilities an upstream's question needs, as paths into the caller's declared
/// capabilities: the capability itself, or the mode or feature of it that the question uses
/// (`elicitation.url`, `sampling.tools`). `None` for a question mcpq does not relay.
/// `includeContext` asks for nothing: it is a hint a client may ignore, passed on as it is.
fn needs(method: &str, params: &Value) -> Option<Vec<String>> {
    match method {
        "sampling/createMessage" => {
            let mut needs = vec!["sampling".to_string()];
            if params
                .get("tools")
                .and_then(Value::as_array)
                .is_some_and(|tools| !tools.is_empty())
            {
                needs.push("sampling.tools".into());
            }
            Some(needs)
        }
        // Each mode is declared by name; a request that names none is form mode.
        "elicitation/create" => {
            let mode = params.get("mode").and_then(Value::as_str).unwrap_or("form");
            Some(vec![format!("elicitation.{mode}")])
        }
        "roots/list" => Some(vec!["roots".into()]),
        _ => None,
    }
}

/// Whether the caller declared the capability at `path`. An `elicitation` that names no mode
/// is form mode (as it was before URL mode came, in 2025-11-25).
fn declared(capabilities: Option<&Value>, path: &str) -> bool {
    let Some(capabilities) = capabilities else {
        return false;
    };
    let (top, sub) = path
        .split_once('.')
        .map_or((path, None), |(t, s)| (t, Some(s)));
    let Some(declared) = capabilities.get(top) else {
        return false;
    };
    match sub {
        None => true,
        Some("form") if top == "elicitation" => {
            declared.get("form").is_some() || declared.get("url").is_none()
        }
        Some(sub) => declared.get(sub).is_some(),
    }
}

fn refused(message: String) -> ErrorData {
    ErrorData::new(ErrorCode::METHOD_NOT_FOUND, message, None)
}

/// A question to put to the caller, or a 2026-07-28 upstream's round of them.
struct Question<'a> {
    /// What the question's id starts with: `q` for one, [`ROUND`] for a round.
    kind: char,
    /// What it asks, for messages (a round names each of its methods).
    method: &'a str,
    params: Value,
    /// A round's questions (`{method, params}`) by the upstream's keys.
    requests: Option<serde_json::Map<String, Value>>,
}

/// Starts the id of a 2026-07-28 upstream's round of questions (answered all at once, by the
/// upstream's keys); a single question's id starts with `q`.
pub const ROUND: char = 'r';

impl Asker {
    /// Refuses at once a question the caller cannot answer.
    fn check(&self, method: &str, params: &Value) -> Result<(), ErrorData> {
        let job = self.job_id;
        let Some(needs) = needs(method, params) else {
            return Err(refused(format!(
                "mcpq does not relay {method:?} to callers"
            )));
        };
        match needs
            .into_iter()
            .find(|need| !declared(self.capabilities.as_ref(), need))
        {
            None => Ok(()),
            Some(missing) => Err(refused(format!(
                "the caller of job {job} cannot answer {method}: it declared no {missing:?} capability"
            ))),
        }
    }

    /// The caller's answer to `method` with `params`, or why there is none.
    pub(crate) async fn ask(&self, method: &str, params: Value) -> Result<Value, ErrorData> {
        self.check(method, &params)?;
        self.put(Question {
            kind: 'q',
            method,
            params,
            requests: None,
        })
        .await
    }

    /// The caller's answers to a 2026-07-28 upstream's round of questions (`{method, params}`
    /// by the upstream's keys), asked at once: its `inputResponses`, by the same keys.
    pub(crate) async fn ask_round(
        &self,
        requests: serde_json::Map<String, Value>,
    ) -> Result<Value, ErrorData> {
        let mut methods = Vec::with_capacity(requests.len());
        for question in requests.values() {
            let method = question["method"].as_str().unwrap_or_default();
            self.check(method, &question["params"])?;
            methods.push(method);
        }
        let what = methods.join(", ");
        let params = requests
            .values()
            .next()
            .and_then(|q| q.get("params"))
            .cloned()
            .unwrap_or_default();
        self.put(Question {
            kind: ROUND,
            method: &what,
            params,
            requests: Some(requests),
        })
        .await
    }

    /// Notes that the upstream made the call a task, and tells the caller on its inbox: from
    /// now on the call's questions wait in its record (the caller polls its task).
    pub(crate) async fn became_task(&self) {
        use std::sync::atomic::Ordering;
        // A caller without the extension goes on waiting for the reply (and is asked on its
        // inbox); mcpq asks the upstream for tasks only for callers that have it.
        if !self.may_have_task() || self.became_task.swap(true, Ordering::SeqCst) {
            return;
        }
        // The task's record is written before anyone hears of the task.
        let (written, shown) = tokio::sync::oneshot::channel();
        if self.record.send(CallEvent::Task(written)).is_ok() {
            let _ = tokio::time::timeout(TAKE_WITHIN, shown).await;
        }
        let Some(inbox) = lock(&self.reply_to).clone() else {
            return;
        };
        let event = TaskEvent {
            v: ENVELOPE_VERSION,
            job_id: self.job_id,
        };
        let mut headers = HeaderMap::new();
        headers.insert(HDR_EVENT, EVENT_TASK);
        headers.insert(HDR_JOB_ID, self.job_id.to_string().as_str());
        if let Ok(body) = serde_json::to_vec(&event)
            && let Err(e) = self
                .nats
                .publish_with_headers(inbox, headers, body.into())
                .await
        {
            tracing::warn!(error = %e, "cannot tell the caller its call became a task");
        }
    }

    /// Puts a question (or a round of them) to the caller and waits for the answer.
    async fn put(&self, question: Question<'_>) -> Result<Value, ErrorData> {
        let job = self.job_id;
        let inbox = if self.became_task.load(std::sync::atomic::Ordering::SeqCst) {
            None
        } else {
            lock(&self.reply_to).clone()
        };
        let Some(inbox) = inbox else {
            return self.put_in_record(question).await;
        };
        let method = question.method;
        // Unguessable: the id names the subject the answer goes to.
        let id = format!("{}{}", question.kind, Uuid::new_v4().simple());
        let answer_to = input_subject(&job, &id);
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            ErrorData::internal_error(format!("job {job}: {what}: {e}"), None)
        };
        let mut answers = self
            .nats
            .subscribe(answer_to.clone())
            .await
            .map_err(|e| internal("cannot listen for the answer", &e))?;
        let event = InputRequestEvent {
            v: ENVELOPE_VERSION,
            job_id: job,
            id: id.clone(),
            method: match &question.requests {
                Some(requests) => requests
                    .values()
                    .next()
                    .and_then(|q| q["method"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                None => method.to_string(),
            },
            params: question.params,
            requests: question.requests,
            answer_to,
        };
        let body = serde_json::to_vec(&event).map_err(|e| internal("encode", &e))?;
        let mut headers = HeaderMap::new();
        headers.insert(HDR_EVENT, EVENT_INPUT);
        headers.insert(HDR_JOB_ID, job.to_string().as_str());
        let taken = tokio::time::timeout(
            TAKE_WITHIN,
            self.nats.request_with_headers(inbox, headers, body.into()),
        )
        .await;
        match taken {
            Ok(Ok(ack)) => {
                if let Ok(InputAck { ok: false, reason }) = serde_json::from_slice(&ack.payload) {
                    return Err(refused(format!(
                        "the caller of job {job} will not answer {method}: {}",
                        reason.unwrap_or_default()
                    )));
                }
            }
            Ok(Err(e)) => {
                return Err(refused(format!(
                    "nobody takes job {job}'s question {method}: {e}"
                )));
            }
            Err(_) => {
                return Err(refused(format!(
                    "the caller of job {job} did not take its question {method} within {TAKE_WITHIN:?}"
                )));
            }
        }
        let message = tokio::select! {
            message = tokio::time::timeout_at(self.deadline, answers.next()) => message,
            () = self.interrupt.fired() => return Err(self.interrupted(method)),
        };
        let message = message.ok().flatten().ok_or_else(|| {
            ErrorData::internal_error(
                format!("the caller of job {job} did not answer {method} in time"),
                None,
            )
        })?;
        let answer: InputAnswer = serde_json::from_slice(&message.payload)
            .map_err(|e| internal("unreadable answer", &e))?;
        if let Some(reply) = message.reply {
            let ack = serde_json::to_vec(&InputAck {
                ok: true,
                reason: None,
            })
            .unwrap_or_default();
            let _ = self.nats.publish(reply, ack.into()).await;
        }
        if let Some(moved) = answer
            .reply_to
            .filter(|s| mcpq_schemas::names::is_reply_inbox(s))
        {
            *lock(&self.reply_to) = Some(moved);
        }
        match (answer.result, answer.error) {
            (Some(result), _) => Ok(result),
            (None, Some(error)) => Err(refusal(error)),
            (None, None) => Err(ErrorData::internal_error(
                format!("the caller of job {job} sent an empty answer to {method}"),
                None,
            )),
        }
    }
}

impl Asker {
    fn interrupted(&self, method: &str) -> ErrorData {
        ErrorData::internal_error(
            format!(
                "job {} was interrupted while its caller was asked {method}",
                self.job_id
            ),
            None,
        )
    }

    /// Whether the caller can have a task (it declared the extension).
    fn may_have_task(&self) -> bool {
        self.capabilities
            .as_ref()
            .is_some_and(mcpq_schemas::bridge::declares_tasks)
    }

    /// Shows the waiting questions in the job's record (`None`: none), and waits until it does.
    async fn show(&self, input: Option<PendingInput>) {
        let (written, shown) = tokio::sync::oneshot::channel();
        if self.record.send(CallEvent::Input(input, written)).is_ok() {
            let _ = tokio::time::timeout(TAKE_WITHIN, shown).await;
        }
    }

    /// Asks a caller that is not asked on an inbox — a task's, or an async job's that declared
    /// what it can answer: the questions wait in the job's record (`input`), the caller answers
    /// to `answerTo`, some of them at a time if it likes (each answer is acknowledged once the
    /// record shows what still waits), until every one is answered or the call's time is up.
    async fn put_in_record(&self, question: Question<'_>) -> Result<Value, ErrorData> {
        let Question {
            kind,
            method,
            params,
            requests,
        } = question;
        let job = self.job_id;
        let id = format!("{kind}{}", Uuid::new_v4().simple());
        let answer_to = input_subject(&job, &id);
        let single = requests.is_none();
        let mut waiting = requests.unwrap_or_else(|| {
            serde_json::Map::from_iter([(
                id.clone(),
                serde_json::json!({"method": method, "params": params}),
            )])
        });
        let mut answers = serde_json::Map::new();
        let mut incoming = self.nats.subscribe(answer_to.clone()).await.map_err(|e| {
            ErrorData::internal_error(format!("job {job}: cannot listen for answers: {e}"), None)
        })?;
        let pending = |waiting: &serde_json::Map<String, Value>| {
            (!waiting.is_empty()).then(|| PendingInput {
                id: id.clone(),
                requests: waiting.clone(),
                answer_to: answer_to.clone(),
            })
        };
        self.show(pending(&waiting)).await;
        while !waiting.is_empty() {
            let message = tokio::select! {
                message = tokio::time::timeout_at(self.deadline, incoming.next()) => message,
                () = self.interrupt.fired() => {
                    self.show(None).await;
                    return Err(self.interrupted(method));
                }
            };
            let Some(message) = message.ok().flatten() else {
                self.show(None).await;
                return Err(ErrorData::internal_error(
                    format!("the caller of job {job} did not answer {method} in time"),
                    None,
                ));
            };
            let ack = |ok: bool, reason: Option<String>| {
                let nats = self.nats.clone();
                let reply = message.reply.clone();
                async move {
                    if let Some(reply) = reply {
                        let body = serde_json::to_vec(&InputAck { ok, reason }).unwrap_or_default();
                        let _ = nats.publish(reply, body.into()).await;
                    }
                }
            };
            let answer = match serde_json::from_slice::<InputAnswer>(&message.payload) {
                Ok(answer) if answer.id == id => answer,
                _ => {
                    ack(false, Some(format!("not an answer to {id}"))).await;
                    continue;
                }
            };
            match (answer.result, answer.error) {
                (Some(Value::Object(given)), _) => {
                    for (key, value) in given {
                        if waiting.remove(&key).is_some() {
                            answers.insert(key, value);
                        }
                    }
                }
                (None, Some(error)) => {
                    self.show(None).await;
                    ack(true, None).await;
                    return Err(refusal(error));
                }
                _ => {
                    ack(false, Some("answers come by key, in an object".into())).await;
                    continue;
                }
            }
            self.show(pending(&waiting)).await;
            ack(true, None).await;
        }
        if single {
            return Ok(answers.remove(&id).unwrap_or_default());
        }
        Ok(Value::Object(answers))
    }
}

/// A caller's refusal (a JSON-RPC error object) as the error the upstream hears.
fn refusal(error: Value) -> ErrorData {
    let code = error
        .get("code")
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(ErrorCode::INTERNAL_ERROR.0);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("the caller refused")
        .to_string();
    ErrorData::new(ErrorCode(code), message, error.get("data").cloned())
}

impl crate::upstream::Ask for Asker {
    fn ask<'a>(
        &'a self,
        method: &'a str,
        params: Value,
    ) -> futures::future::BoxFuture<'a, Result<Value, ErrorData>> {
        Box::pin(Asker::ask(self, method, params))
    }
}

/// Asks the caller an `input_required` result's questions, all at once and by the upstream's
/// keys; the caller's answers and the upstream's request state, to send back.
pub(crate) async fn answer_questions(
    asker: Option<&Asker>,
    asked: InputRequiredResult,
) -> Result<(serde_json::Value, Option<String>), JobError> {
    let requests: serde_json::Map<String, Value> = asked
        .input_requests
        .unwrap_or_default()
        .into_iter()
        .map(|(key, question)| (key, serde_json::to_value(&question).unwrap_or_default()))
        .collect();
    let what: Vec<&str> = requests
        .values()
        .map(|q| q["method"].as_str().unwrap_or_default())
        .collect();
    let what = what.join(", ");
    let no_answer = |message: String| JobError::new(ErrorKind::NoAnswer, message);
    if requests.is_empty() {
        return Err(JobError::new(
            ErrorKind::Upstream,
            "the upstream answered input_required and asked nothing",
        ));
    }
    let Some(asker) = asker else {
        return Err(no_answer(format!(
            "the upstream asked {what}, and nobody can answer for this job"
        )));
    };
    let answers = asker.ask_round(requests).await.map_err(|e| {
        no_answer(format!(
            "the upstream asked {what}, and got no answer: {}",
            e.message
        ))
    })?;
    Ok((answers, asked.request_state))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn may_answer(capabilities: Value, method: &str, params: Value) -> bool {
        needs(method, &params)
            .is_some_and(|needs| needs.iter().all(|n| declared(Some(&capabilities), n)))
    }

    #[test]
    fn a_question_needs_the_mode_or_feature_it_uses() {
        let form = json!({"mode": "form", "message": "m", "requestedSchema": {}});
        let url = json!({"mode": "url", "message": "m", "url": "https://x", "elicitationId": "1"});
        // An elicitation capability that names no mode is form mode.
        assert!(may_answer(
            json!({"elicitation": {}}),
            "elicitation/create",
            form.clone()
        ));
        assert!(!may_answer(
            json!({"elicitation": {}}),
            "elicitation/create",
            url.clone()
        ));
        assert!(may_answer(
            json!({"elicitation": {"url": {}}}),
            "elicitation/create",
            url
        ));
        assert!(!may_answer(
            json!({"elicitation": {"url": {}}}),
            "elicitation/create",
            form.clone()
        ));
        assert!(may_answer(
            json!({"elicitation": {"form": {}, "url": {}}}),
            "elicitation/create",
            form
        ));
        let with_tools = json!({"messages": [], "maxTokens": 1, "tools": [{"name": "t"}]});
        assert!(!may_answer(
            json!({"sampling": {}}),
            "sampling/createMessage",
            with_tools.clone()
        ));
        assert!(may_answer(
            json!({"sampling": {"tools": {}}}),
            "sampling/createMessage",
            with_tools
        ));
        // includeContext is a hint: passed on, never a reason to refuse.
        let with_context = json!({"messages": [], "maxTokens": 1, "includeContext": "thisServer"});
        assert!(may_answer(
            json!({"sampling": {}}),
            "sampling/createMessage",
            with_context
        ));
        // A mode mcpq has not heard of goes to a caller that declared it, and only to one.
        let later = json!({"mode": "later", "message": "m"});
        assert!(!may_answer(
            json!({"elicitation": {}}),
            "elicitation/create",
            later.clone()
        ));
        assert!(may_answer(
            json!({"elicitation": {"later": {}}}),
            "elicitation/create",
            later
        ));
        assert!(!may_answer(
            json!({"sampling": {}}),
            "roots/list",
            json!({})
        ));
        assert!(!may_answer(json!({"roots": {}}), "tools/call", json!({})));
    }
}
