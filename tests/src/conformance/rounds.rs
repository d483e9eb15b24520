//! The tools and the prompt that ask in rounds (SEP-2322's `input_required` results), as the
//! conformance suite's `input-required-result-*` scenarios call them: each round's questions
//! under keys of the tool's own, what the tool must remember between rounds in a
//! `requestState` it seals (HMAC, bound to the tool's name), and every retry checked — a key
//! missing is asked again, a key the tool does not know is ignored, an answer of the wrong shape
//! or a state this process did not seal is an error.
//!
//! A 2026-07-28 client sees the rounds as they are; a 2025-era session is asked each round's
//! questions as requests of the server's own (`Conformance::call_tool` drives the rounds).

use rmcp::{
    ErrorData,
    model::{
        ClientCapabilities, ErrorCode, InputRequiredResult, InputResponses, RequestStateCodec,
        SealOptions,
    },
};
use serde_json::{Value, json};

/// The prompt that asks before it is given.
pub const PROMPT: &str = "test_input_required_result_prompt";

const TOOLS: [(&str, &str); 10] = [
    (
        "test_input_required_result_elicitation",
        "Asks the user's name (key user_name), then greets them",
    ),
    (
        "test_input_required_result_sampling",
        "Asks the client's LLM a question (key capital_question)",
    ),
    (
        "test_input_required_result_list_roots",
        "Asks the client for its roots (key client_roots)",
    ),
    (
        "test_input_required_result_request_state",
        "Asks for a confirmation with a sealed requestState; says state-ok when it comes back intact",
    ),
    (
        "test_input_required_result_multiple_inputs",
        "Asks an elicitation, a sampling and the roots in one round",
    ),
    (
        "test_input_required_result_multi_round",
        "Asks a name, then a colour, in two rounds with a new requestState each",
    ),
    (
        "test_input_required_result_tampered_state",
        "Refuses a requestState that fails its integrity check",
    ),
    (
        "test_input_required_result_capabilities",
        "Asks only what the request's client capabilities allow",
    ),
    (
        "test_missing_capability",
        "Needs the client's sampling: refused (-32021) when the request did not declare it",
    ),
    (
        "test_streaming_elicitation",
        "Asks for a confirmation while it runs (in its result, never on the response stream)",
    ),
];

/// The tools listed (every one with no arguments).
pub fn tools() -> Vec<Value> {
    TOOLS
        .iter()
        .map(|(name, description)| {
            json!({"name": name, "description": description, "inputSchema": {"type": "object", "properties": {}}})
        })
        .collect()
}

/// Whether `name` is a tool (or the prompt) that asks in rounds.
pub fn asks_in_rounds(name: &str) -> bool {
    name == PROMPT || TOOLS.iter().any(|(tool, _)| *tool == name)
}

/// What one round came to.
pub enum Round {
    /// Questions for the client, and the state it sends back with the answers.
    Ask(InputRequiredResult),
    /// The tool's (or the prompt's) answer, as text.
    Done(String),
}

/// Seals and opens the tools' `requestState` with a key of this process.
pub struct Rounds {
    codec: RequestStateCodec,
}

impl Default for Rounds {
    fn default() -> Self {
        let key = [
            uuid::Uuid::new_v4().into_bytes(),
            uuid::Uuid::new_v4().into_bytes(),
        ]
        .concat();
        Rounds {
            codec: RequestStateCodec::try_new(key).expect("a 32-byte key is long enough"),
        }
    }
}

fn elicit(message: &str, field: &str, kind: &str) -> Value {
    json!({"method": "elicitation/create", "params": {
        "message": message,
        "requestedSchema": {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    }})
}

fn sample(question: &str) -> Value {
    json!({"method": "sampling/createMessage", "params": {
        "messages": [{"role": "user", "content": {"type": "text", "text": question}}],
        "maxTokens": 100
    }})
}

fn roots() -> Value {
    json!({"method": "roots/list", "params": {}})
}

/// The client's answer under `key`: `None` when it sent none, an error when it is no result
/// object (an `ElicitResult`, a `CreateMessageResult`, a `ListRootsResult`).
fn answer<'a>(responses: &'a InputResponses, key: &str) -> Result<Option<&'a Value>, ErrorData> {
    match responses.get(key) {
        None => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value)),
        Some(other) => Err(ErrorData::invalid_params(
            format!("inputResponses.{key} must be the client's result object, not {other}"),
            None,
        )),
    }
}

/// What the user entered in an elicitation's `field` (or what they did instead).
fn entered(answer: &Value, field: &str) -> String {
    match answer["action"].as_str() {
        Some("accept") => match &answer["content"][field] {
            Value::String(s) => s.clone(),
            Value::Null => answer["content"].to_string(),
            other => other.to_string(),
        },
        other => format!("({})", other.unwrap_or("no action")),
    }
}

fn said(answer: &Value) -> String {
    answer["content"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn root_uris(answer: &Value) -> String {
    let uris: Vec<&str> = answer["roots"]
        .as_array()
        .map(|roots| roots.iter().filter_map(|r| r["uri"].as_str()).collect())
        .unwrap_or_default();
    uris.join(", ")
}

fn ask(questions: Value, state: Option<String>) -> Result<Round, ErrorData> {
    let questions = serde_json::from_value(questions)
        .map_err(|e| ErrorData::internal_error(format!("the fixture's questions: {e}"), None))?;
    Ok(Round::Ask(InputRequiredResult::new(Some(questions), state)))
}

impl Rounds {
    fn seal(&self, tool: &str, payload: &str) -> String {
        self.codec.seal_with(
            payload.as_bytes(),
            &SealOptions::new().associated_data(tool.as_bytes()),
        )
    }

    /// What `state` says, if this process sealed it for `tool`.
    fn open(&self, tool: &str, state: &str) -> Result<String, ErrorData> {
        self.codec
            .open_with(state, tool.as_bytes())
            .ok()
            .and_then(|payload| String::from_utf8(payload).ok())
            .ok_or_else(|| {
                ErrorData::invalid_params(
                    format!("requestState failed its integrity check: it was altered, or {tool} did not issue it"),
                    None,
                )
            })
    }

    /// One round of `name`: its questions, or its answer once every one is answered.
    pub fn round(
        &self,
        name: &str,
        responses: Option<&InputResponses>,
        state: Option<&str>,
        capabilities: Option<&ClientCapabilities>,
    ) -> Result<Round, ErrorData> {
        let none = InputResponses::new();
        let responses = responses.unwrap_or(&none);
        // A state is checked whenever one comes back.
        let opened = state.map(|s| self.open(name, s)).transpose()?;
        let name_question = || elicit("What is your name?", "name", "string");
        let declared = |what: &str| {
            capabilities
                .and_then(|c| serde_json::to_value(c).ok())
                .is_some_and(|c| c.get(what).is_some())
        };
        match name {
            "test_input_required_result_elicitation" => match answer(responses, "user_name")? {
                Some(a) => Ok(Round::Done(format!("Hello, {}!", entered(a, "name")))),
                None => ask(json!({"user_name": name_question()}), None),
            },
            "test_input_required_result_sampling" => match answer(responses, "capital_question")? {
                Some(a) => Ok(Round::Done(format!("The LLM said: {}", said(a)))),
                None => ask(
                    json!({"capital_question": sample("What is the capital of France?")}),
                    None,
                ),
            },
            "test_input_required_result_list_roots" => match answer(responses, "client_roots")? {
                Some(a) => Ok(Round::Done(format!("The client's roots: {}", root_uris(a)))),
                None => ask(json!({"client_roots": roots()}), None),
            },
            "test_input_required_result_request_state"
            | "test_input_required_result_tampered_state" => {
                match (&opened, answer(responses, "confirm")?) {
                    (Some(_), Some(a)) => Ok(Round::Done(format!(
                        "state-ok: the requestState came back intact; confirmed: {}",
                        entered(a, "ok")
                    ))),
                    _ => ask(
                        json!({"confirm": elicit("Please confirm to continue", "ok", "boolean")}),
                        Some(self.seal(name, "confirm")),
                    ),
                }
            }
            "test_input_required_result_multiple_inputs" => {
                let all = json!({
                    "user_name": name_question(),
                    "greeting": sample("Say hello"),
                    "client_roots": roots()
                });
                let mut missing = serde_json::Map::new();
                for (key, question) in all.as_object().into_iter().flatten() {
                    if answer(responses, key)?.is_none() {
                        missing.insert(key.clone(), question.clone());
                    }
                }
                if missing.is_empty() && opened.is_some() {
                    return Ok(Round::Done(format!(
                        "Hello, {}! The LLM said: {}. The client's roots: {}",
                        entered(&responses["user_name"], "name"),
                        said(&responses["greeting"]),
                        root_uris(&responses["client_roots"])
                    )));
                }
                // Round one asks everything; a retry asks again what is still missing.
                let asked = if opened.is_some() {
                    Value::Object(missing)
                } else {
                    all
                };
                ask(asked, Some(self.seal(name, "all")))
            }
            "test_input_required_result_multi_round" => match opened.as_deref() {
                Some("step1") => match answer(responses, "step1")? {
                    Some(a) => {
                        let state = format!("step2:{}", entered(a, "name"));
                        ask(
                            json!({"step2": elicit("What is your favourite colour?", "color", "string")}),
                            Some(self.seal(name, &state)),
                        )
                    }
                    None => ask(json!({"step1": name_question()}), state.map(str::to_string)),
                },
                Some(step2) if step2.starts_with("step2:") => match answer(responses, "step2")? {
                    Some(a) => Ok(Round::Done(format!(
                        "{} likes {}",
                        &step2["step2:".len()..],
                        entered(a, "color")
                    ))),
                    None => ask(
                        json!({"step2": elicit("What is your favourite colour?", "color", "string")}),
                        state.map(str::to_string),
                    ),
                },
                _ => ask(
                    json!({"step1": name_question()}),
                    Some(self.seal(name, "step1")),
                ),
            },
            "test_missing_capability" => {
                if !declared("sampling") {
                    return Err(ErrorData::new(
                        ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY,
                        "test_missing_capability needs the client's sampling capability, which the request did not declare",
                        Some(json!({"requiredCapabilities": {"sampling": {}}})),
                    ));
                }
                match answer(responses, "sample")? {
                    Some(a) => Ok(Round::Done(format!("The LLM said: {}", said(a)))),
                    None => ask(json!({"sample": sample("Say something")}), None),
                }
            }
            "test_streaming_elicitation" => match answer(responses, "confirm")? {
                Some(a) => Ok(Round::Done(format!("Confirmed: {}", entered(a, "ok")))),
                None => ask(json!({"confirm": elicit("Go on?", "ok", "boolean")}), None),
            },
            "test_input_required_result_capabilities" => {
                let mut questions = serde_json::Map::new();
                if declared("elicitation") {
                    questions.insert("user_name".into(), name_question());
                }
                if declared("sampling") {
                    questions.insert(
                        "capital_question".into(),
                        sample("What is the capital of France?"),
                    );
                }
                if declared("roots") {
                    questions.insert("client_roots".into(), roots());
                }
                let answered: Vec<&String> = questions
                    .keys()
                    .filter(|k| responses.contains_key(*k))
                    .collect();
                if questions.is_empty() || !answered.is_empty() {
                    return Ok(Round::Done(format!(
                        "asked only what the client can answer; answered: {answered:?}"
                    )));
                }
                ask(Value::Object(questions), None)
            }
            PROMPT => match answer(responses, "user_context")? {
                Some(a) => Ok(Round::Done(format!(
                    "Write with this context: {}",
                    entered(a, "context")
                ))),
                None => ask(
                    json!({"user_context": elicit("What context should the prompt use?", "context", "string")}),
                    None,
                ),
            },
            other => Err(ErrorData::invalid_params(
                format!("{other:?} does not ask in rounds"),
                None,
            )),
        }
    }
}
