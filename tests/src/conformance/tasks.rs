//! The tools of the conformance suite's `tasks-*` scenarios and the fixture's own tasks
//! (SEP-2663, the `io.modelcontextprotocol/tasks` extension): kept in memory, run on tokio,
//! asking their questions through `tasks/get` (`input_required`) and hearing the answers
//! through `tasks/update`, partial answers included.
//!
//! A client that declared the extension (for the session, or in one request's `_meta`) gets a
//! task from a task-supporting tool; one that did not gets `optional` tools run to the end
//! and `required` ones refused with -32021.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rmcp::{
    ErrorData,
    model::{
        ClientCapabilities, CreateTaskResult, DetailedTask, GetTaskResult, InputResponses,
        JsonObject, Task, TaskPayload, TaskStatus,
    },
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How long a task stays readable after it ends (the fixture forgets nothing before exit).
const TTL: Duration = Duration::from_secs(3600);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// (name, description, input schema properties, task support)
const TOOLS: [(&str, &str, &str, Option<&str>); 7] = [
    (
        "greet",
        "Says hello to `name` (never a task)",
        r#"{"name": {"type": "string"}}"#,
        None,
    ),
    (
        "slow_compute",
        "Sleeps `seconds`, then answers; a task when the client supports tasks",
        r#"{"seconds": {"type": "number"}, "label": {"type": "string"}}"#,
        Some("optional"),
    ),
    (
        "failing_job",
        "A task that ends after a second in a tool error (isError)",
        "{}",
        Some("required"),
    ),
    (
        "protocol_error_job",
        "Fails with a protocol error (a failed task)",
        "{}",
        Some("optional"),
    ),
    (
        "confirm_delete",
        "A task that asks the user to confirm before it 'deletes' `filename`",
        r#"{"filename": {"type": "string"}}"#,
        Some("required"),
    ),
    (
        "multi_input",
        "A task that asks two questions at once",
        "{}",
        Some("required"),
    ),
    (
        "test_tool_with_task",
        "Asks the user's name in an input_required round, then finishes in a task",
        "{}",
        Some("required"),
    ),
];

/// The tools listed, with their `execution.taskSupport`.
pub fn tools() -> Vec<Value> {
    TOOLS
        .iter()
        .map(|(name, description, properties, support)| {
            let properties: Value = serde_json::from_str(properties).expect("the fixture's schema");
            let mut tool = json!({
                "name": name,
                "description": description,
                "inputSchema": {"type": "object", "properties": properties}
            });
            if let Some(support) = support {
                tool["execution"] = json!({"taskSupport": support});
            }
            tool
        })
        .collect()
}

/// Whether `name` is one of these tools, and its task support.
pub fn support(name: &str) -> Option<Option<&'static str>> {
    TOOLS.iter().find(|t| t.0 == name).map(|t| t.3)
}

/// Whether the request's client declared the tasks extension.
pub fn declared(capabilities: Option<&ClientCapabilities>) -> bool {
    capabilities.is_some_and(ClientCapabilities::supports_tasks)
}

/// The refusal of a `required` tool to a client without the extension.
pub fn required() -> ErrorData {
    ErrorData::missing_required_client_capability(
        ClientCapabilities::builder().enable_tasks().build(),
    )
}

fn iso8601(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn text(t: &str) -> Value {
    json!({"resultType": "complete", "content": [{"type": "text", "text": t}]})
}

/// How a task's work ended.
pub enum Ending {
    /// A tool result (an `isError` one included).
    Completed(Value),
    /// A protocol error.
    Failed(ErrorData),
    Cancelled,
}

struct State {
    status: TaskStatus,
    created: SystemTime,
    updated: SystemTime,
    payload: TaskPayload,
    /// Questions asked, not answered yet, and the answers so far.
    pending: BTreeMap<String, Value>,
    answers: serde_json::Map<String, Value>,
}

struct Entry {
    state: Mutex<State>,
    cancel: CancellationToken,
    answered: tokio::sync::Notify,
}

/// The fixture's tasks.
#[derive(Default)]
pub struct Tasks {
    tasks: Mutex<HashMap<String, Arc<Entry>>>,
}

/// What a task's work may do.
pub struct Running {
    entry: Arc<Entry>,
}

impl Running {
    pub fn cancelled(&self) -> &CancellationToken {
        &self.entry.cancel
    }

    /// Asks `questions` (`{method, params}` by key) and waits for every answer; `None` when
    /// the task is cancelled first.
    pub async fn ask(
        &self,
        questions: BTreeMap<String, Value>,
    ) -> Option<serde_json::Map<String, Value>> {
        {
            let mut state = self.entry.state.lock().expect("task");
            state.pending = questions;
            state.answers.clear();
            state.status = TaskStatus::InputRequired;
            state.updated = SystemTime::now();
        }
        loop {
            let notified = self.entry.answered.notified();
            {
                let mut state = self.entry.state.lock().expect("task");
                if state.pending.is_empty() {
                    state.status = TaskStatus::Working;
                    state.updated = SystemTime::now();
                    return Some(std::mem::take(&mut state.answers));
                }
            }
            tokio::select! {
                () = notified => {}
                () = self.entry.cancel.cancelled() => return None,
            }
        }
    }
}

fn unknown(task_id: &str) -> ErrorData {
    ErrorData::invalid_params(format!("unknown task {task_id:?}"), None)
}

impl Tasks {
    fn task(id: &str, state: &State) -> Task {
        Task::new(
            id,
            state.status,
            iso8601(state.created),
            iso8601(state.updated),
        )
        .with_ttl_ms(TTL.as_millis() as u64)
        .with_poll_interval_ms(POLL_INTERVAL.as_millis() as u64)
    }

    /// Starts `work` as a new task; its `CreateTaskResult` (the task is readable already).
    pub fn start<F, Fut>(&self, work: F) -> CreateTaskResult
    where
        F: FnOnce(Running) -> Fut,
        Fut: Future<Output = Ending> + Send + 'static,
    {
        let id = format!("task-{}", uuid::Uuid::new_v4().simple());
        let now = SystemTime::now();
        let entry = Arc::new(Entry {
            state: Mutex::new(State {
                status: TaskStatus::Working,
                created: now,
                updated: now,
                payload: TaskPayload::Working,
                pending: BTreeMap::new(),
                answers: serde_json::Map::new(),
            }),
            cancel: CancellationToken::new(),
            answered: tokio::sync::Notify::new(),
        });
        let created = Self::task(&id, &entry.state.lock().expect("task"));
        self.tasks
            .lock()
            .expect("tasks")
            .insert(id.clone(), entry.clone());
        let done = work(Running {
            entry: entry.clone(),
        });
        tokio::spawn(async move {
            let ending = tokio::select! {
                ending = done => ending,
                () = entry.cancel.cancelled() => Ending::Cancelled,
            };
            let mut state = entry.state.lock().expect("task");
            // A cancel that came first wins.
            let ending = if entry.cancel.is_cancelled() {
                Ending::Cancelled
            } else {
                ending
            };
            state.payload = match ending {
                Ending::Completed(result) => TaskPayload::Completed {
                    result: result.as_object().cloned().unwrap_or_default(),
                },
                Ending::Failed(error) => TaskPayload::Failed {
                    error: serde_json::to_value(&error)
                        .ok()
                        .and_then(|e| e.as_object().cloned())
                        .unwrap_or_default(),
                },
                Ending::Cancelled => TaskPayload::Cancelled,
            };
            state.status = state.payload.status();
            state.pending.clear();
            state.updated = SystemTime::now();
        });
        CreateTaskResult::new(created)
    }

    fn entry(&self, task_id: &str) -> Result<Arc<Entry>, ErrorData> {
        self.tasks
            .lock()
            .expect("tasks")
            .get(task_id)
            .cloned()
            .ok_or_else(|| unknown(task_id))
    }

    pub fn get(&self, task_id: &str) -> Result<GetTaskResult, ErrorData> {
        let entry = self.entry(task_id)?;
        let state = entry.state.lock().expect("task");
        let payload = match (&state.payload, state.status) {
            (TaskPayload::Working, TaskStatus::InputRequired) => TaskPayload::InputRequired {
                input_requests: serde_json::from_value(json!(state.pending))
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?,
            },
            (payload, _) => payload.clone(),
        };
        Ok(GetTaskResult::new(DetailedTask::new(
            Self::task(task_id, &state),
            payload,
        )))
    }

    /// Takes the answers to the task's pending questions (some or all of them).
    pub fn update(&self, task_id: &str, responses: InputResponses) -> Result<(), ErrorData> {
        let entry = self.entry(task_id)?;
        {
            let mut state = entry.state.lock().expect("task");
            for (key, answer) in responses {
                if state.pending.remove(&key).is_some() {
                    state.answers.insert(key, answer);
                }
            }
            state.updated = SystemTime::now();
        }
        entry.answered.notify_waiters();
        Ok(())
    }

    /// Cancels a running task; an ended one stays as it ended.
    pub fn cancel(&self, task_id: &str) -> Result<(), ErrorData> {
        let entry = self.entry(task_id)?;
        let running = matches!(
            entry.state.lock().expect("task").payload,
            TaskPayload::Working
        );
        if running {
            entry.cancel.cancel();
        }
        Ok(())
    }
}

fn elicit(message: &str, field: &str, kind: &str) -> Value {
    json!({"method": "elicitation/create", "params": {
        "message": message,
        "requestedSchema": {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    }})
}

fn accepted(answer: Option<&Value>, field: &str) -> String {
    match answer {
        Some(a) if a["action"] == "accept" => match &a["content"][field] {
            Value::String(s) => s.clone(),
            Value::Null => a["content"].to_string(),
            other => other.to_string(),
        },
        Some(a) => format!("({})", a["action"].as_str().unwrap_or("no action")),
        None => "(no answer)".into(),
    }
}

/// The work of tool `name` with `args`, run as a task or (`optional` tools) inline.
pub async fn work(name: String, args: JsonObject, task: Option<Running>) -> Ending {
    let arg = |key: &str| args.get(key).cloned().unwrap_or(Value::Null);
    let cancelled = task
        .as_ref()
        .map(|t| t.cancelled().clone())
        .unwrap_or_default();
    match name.as_str() {
        "slow_compute" => {
            let seconds = arg("seconds").as_f64().unwrap_or(0.0).clamp(0.0, 3600.0);
            let label = arg("label").as_str().unwrap_or("").to_string();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(seconds)) => {
                    Ending::Completed(text(&format!("computed {label} in {seconds}s")))
                }
                () = cancelled.cancelled() => Ending::Cancelled,
            }
        }
        "failing_job" => {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => Ending::Completed(json!({
                    "resultType": "complete",
                    "isError": true,
                    "content": [{"type": "text", "text": "failing_job failed, as it always does"}]
                })),
                () = cancelled.cancelled() => Ending::Cancelled,
            }
        }
        "protocol_error_job" => Ending::Failed(ErrorData::internal_error(
            "protocol_error_job broke down at the protocol level",
            None,
        )),
        "confirm_delete" | "multi_input" => {
            let Some(task) = task else {
                return Ending::Failed(required());
            };
            let filename = arg("filename").as_str().unwrap_or("").to_string();
            let questions: BTreeMap<String, Value> = if name == "confirm_delete" {
                BTreeMap::from([(
                    format!("confirm-{}", uuid::Uuid::new_v4().simple()),
                    elicit(&format!("Delete {filename}?"), "confirm", "boolean"),
                )])
            } else {
                BTreeMap::from([
                    (
                        format!("first-{}", uuid::Uuid::new_v4().simple()),
                        elicit("Your name?", "name", "string"),
                    ),
                    (
                        format!("second-{}", uuid::Uuid::new_v4().simple()),
                        elicit("Sure?", "confirm", "boolean"),
                    ),
                ])
            };
            let Some(answers) = task.ask(questions).await else {
                return Ending::Cancelled;
            };
            let said: Vec<String> = answers
                .values()
                .map(|a| {
                    accepted(
                        Some(a),
                        if name == "confirm_delete" {
                            "confirm"
                        } else {
                            "name"
                        },
                    )
                })
                .collect();
            Ending::Completed(text(&if name == "confirm_delete" {
                format!("delete {filename}: {}", said.join(", "))
            } else {
                format!("answered: {}", said.join(", "))
            }))
        }
        "test_tool_with_task" => Ending::Completed(text(&format!(
            "Hello, {}! (finished in a task)",
            arg("user_name").as_str().unwrap_or("")
        ))),
        "greet" => Ending::Completed(text(&format!(
            "Hello, {}!",
            arg("name").as_str().unwrap_or("")
        ))),
        other => Ending::Failed(ErrorData::invalid_params(
            format!("unknown tool {other:?}"),
            None,
        )),
    }
}

/// The name `test_tool_with_task` asked for in its `input_required` round, if answered.
pub fn user_name(responses: Option<&InputResponses>) -> Option<String> {
    let answer = responses?.get("user_name")?;
    Some(accepted(Some(answer), "name"))
}

/// `test_tool_with_task`'s round of questions.
pub fn ask_user_name() -> Value {
    json!({"user_name": elicit("What is your name?", "name", "string")})
}
