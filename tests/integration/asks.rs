//! What an upstream asks the client in the middle of a call — sampling, elicitation, roots —
//! relayed through the queue: to 2025-era session clients as requests on the call's response
//! stream, to 2026-07-28 clients as an `input_required` round trip, to NATS callers as input
//! events; refused at once for a caller that cannot answer, never a hang.

use std::time::Duration;

use mcpq_dispatcher::Event;
use mcpq_schemas::{
    ErrorKind, InputAnswer, Job, JobStatus, McpRequest, Outcome, names::ENVELOPE_VERSION,
};
use mcpq_tests::{eventually, python_sdk};
use serde_json::json;

use crate::bridge::modern_and_legacy;

fn steps() -> serde_json::Value {
    json!([
        ["call_tool", "test_sampling", {"prompt": "say hi"}],
        ["call_tool", "test_elicitation", {"message": "who are you?"}],
        ["call_tool", "test_list_roots", {}],
        // Three questions in one round (a 2026-07-28 upstream asks them at once, by its keys).
        ["call_tool", "test_input_required_result_multiple_inputs", {}]
    ])
}

fn text(out: &serde_json::Value, step: usize) -> &str {
    out["steps"][step]["ok"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("step {step} has no text: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_questions_reach_the_client_and_its_answers_the_upstream() {
    let stack = modern_and_legacy("2025-06-18").await;
    // 2026-07-28 and 2025-era clients, in front of an upstream of each era (a 2026-07-28
    // upstream asks in its result, a 2025-era one with a request of its own).
    for server in ["modern", "legacy"] {
        for mode in ["auto", "legacy"] {
            let what = format!("{mode} client, {server} upstream");
            let out = python_sdk(&stack.server_url(server), mode, steps(), &[]).await;
            assert_eq!(
                text(&out, 0),
                "LLM response: sampled by the test client",
                "{what}"
            );
            assert!(text(&out, 1).contains("ada@example.com"), "{what}: {out}");
            assert!(
                text(&out, 2).contains("file:///work/project"),
                "{what}: {out}"
            );
            let asked: Vec<&str> = out["asked"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["method"].as_str().unwrap())
                .collect();
            assert_eq!(
                asked[..3],
                ["sampling/createMessage", "elicitation/create", "roots/list"],
                "{what}"
            );
            // The round's three questions, each answered once, and every answer reached the
            // upstream under its key.
            let mut round = asked[3..].to_vec();
            round.sort_unstable();
            assert_eq!(
                round,
                ["elicitation/create", "roots/list", "sampling/createMessage"],
                "{what}"
            );
            let all = text(&out, 3);
            assert!(
                all.contains("ada")
                    && all.contains("The LLM said: sampled by the test client")
                    && all.contains("file:///work/project"),
                "{what}: {all}"
            );
            // The question reached the client as the upstream asked it.
            assert_eq!(
                out["asked"][0]["params"]["messages"][0]["content"]["text"], "say hi",
                "{what}"
            );
            assert_eq!(
                out["asked"][1]["params"]["message"], "who are you?",
                "{what}"
            );

            // A client that declared none of it is refused at once, with the reason.
            let out = python_sdk(&stack.server_url(server), mode, steps(), &["--no-answers"]).await;
            for step in 0..2 {
                let step_out = &out["steps"][step];
                let said = step_out["error"]
                    .as_str()
                    .or_else(|| step_out["ok"]["content"][0]["text"].as_str())
                    .unwrap_or_default();
                assert!(
                    said.contains("declared no"),
                    "{what}, step {step}: {step_out}"
                );
            }
            // A 2026-07-28 upstream hears the caller's capabilities with each request, so it
            // asks only what the caller can answer: nothing, here.
            if server == "modern" {
                let ask = json!([["call_tool", "test_input_required_result_capabilities", {}]]);
                let out = python_sdk(&stack.server_url(server), mode, ask, &["--no-answers"]).await;
                assert_eq!(
                    text(&out, 0),
                    "asked only what the client can answer; answered: []",
                    "{what}"
                );
            }
        }
    }

    // A NATS caller gets the question as an event on its inbox and answers on its subject.
    let mut job = Job::new(
        "modern",
        McpRequest::call_tool(
            "test_sampling",
            json!({"prompt": "from nats"}).as_object().cloned(),
        ),
    );
    job.client_capabilities = Some(json!({"sampling": {}}));
    let (to, mut events) = tokio::sync::mpsc::channel(mcpq_dispatcher::EVENTS_UNREAD);
    let client = stack.client.clone();
    let answering = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::Input(question) = event {
                assert_eq!(question.method, "sampling/createMessage");
                assert_eq!(
                    question.params["messages"][0]["content"]["text"],
                    "from nats"
                );
                // The 2026-07-28 fixture asks in a round, under its own key: answered by it.
                let requests = question.requests.clone().expect("a round of questions");
                assert_eq!(requests.keys().collect::<Vec<_>>(), ["ask"]);
                assert!(question.id.starts_with('r'), "{}", question.id);
                let answer = InputAnswer {
                    v: ENVELOPE_VERSION,
                    job_id: question.job_id,
                    id: question.id.clone(),
                    result: Some(json!({"ask": {
                        "role": "assistant",
                        "content": {"type": "text", "text": "a pipeline answered"},
                        "model": "none"
                    }})),
                    error: None,
                    reply_to: None,
                };
                client.answer(&question.answer_to, &answer).await.unwrap();
                return true;
            }
        }
        false
    });
    let reply = stack
        .client
        .call_with_events(&job, Duration::from_secs(30), Some(to))
        .await
        .unwrap();
    let Outcome::Ok { result } = reply.outcome else {
        panic!("the call fails: {reply:?}");
    };
    assert_eq!(
        crate::first_text(&result),
        "LLM response: a pipeline answered"
    );
    assert!(answering.await.unwrap(), "the question came as an event");

    // An async job has nobody to ask: it ends at once, saying so.
    let job = Job::new(
        "modern",
        McpRequest::call_tool(
            "test_sampling",
            json!({"prompt": "later"}).as_object().cloned(),
        ),
    );
    stack.client.submit(&job).await.unwrap();
    let reply = stack
        .client
        .wait(job.id, Duration::from_secs(30))
        .await
        .unwrap();
    let Outcome::Error { error } = reply.outcome else {
        panic!("nobody could answer: {reply:?}");
    };
    assert_eq!(error.kind, ErrorKind::NoAnswer, "{error}");
    assert_eq!(stack.record(job.id).await.status, JobStatus::Failed);

    // An async job that declared what it can answer finds the question in its record, and
    // answers on the subject the record names.
    let mut job = Job::new(
        "modern",
        McpRequest::call_tool(
            "test_sampling",
            json!({"prompt": "from the record"}).as_object().cloned(),
        ),
    );
    job.client_capabilities = Some(json!({"sampling": {}}));
    stack.client.submit(&job).await.unwrap();
    let input = eventually(
        "the question in the record",
        Duration::from_secs(30),
        || {
            let client = stack.client.clone();
            async move { client.record(job.id).await.ok().flatten()?.input }
        },
    )
    .await;
    assert_eq!(input.requests["ask"]["method"], "sampling/createMessage");
    let answer = InputAnswer {
        v: ENVELOPE_VERSION,
        job_id: job.id,
        id: input.id.clone(),
        result: Some(json!({"ask": {
            "role": "assistant",
            "content": {"type": "text", "text": "answered from the record"},
            "model": "none"
        }})),
        error: None,
        reply_to: None,
    };
    stack
        .client
        .answer(&input.answer_to, &answer)
        .await
        .unwrap();
    let reply = stack
        .client
        .wait(job.id, Duration::from_secs(30))
        .await
        .unwrap();
    let Outcome::Ok { result } = reply.outcome else {
        panic!("answered from the record: {reply:?}");
    };
    assert_eq!(
        crate::first_text(&result),
        "LLM response: answered from the record"
    );
    assert_eq!(
        stack.record(job.id).await.input,
        None,
        "nothing waits any more"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_messages_reach_the_caller_in_order_at_its_level() {
    let stack = modern_and_legacy("2025-11-25").await;
    let call = json!(["call_tool", "test_tool_with_logging", {}]);
    let expected = json!([
        "Tool execution started",
        "Tool processing data",
        "Tool execution completed"
    ]);
    let heard = |out: &serde_json::Value| -> Vec<serde_json::Value> {
        out["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["data"].clone())
            .collect()
    };
    for server in ["modern", "legacy"] {
        let url = stack.server_url(server);
        // 2025-era sessions choose with logging/setLevel, per session.
        let out = python_sdk(
            &url,
            "legacy",
            json!([
                ["set_logging_level", "error"],
                call,
                ["set_logging_level", "info"],
                call
            ]),
            // The session's log messages ride its standalone stream, not the call's.
            &["--wait-logs", "3"],
        )
        .await;
        assert_eq!(
            serde_json::Value::Array(heard(&out)),
            expected,
            "{server}: only the call after setLevel info hears, in order: {out}"
        );
        // 2026-07-28 requests opt in per request.
        let out = python_sdk(&url, "auto", json!([call]), &["--log-level", "info"]).await;
        assert_eq!(
            serde_json::Value::Array(heard(&out)),
            expected,
            "{server}: {out}"
        );
        let out = python_sdk(&url, "auto", json!([call]), &["--log-level", "warning"]).await;
        assert!(heard(&out).is_empty(), "{server}: info is below warning");
        let out = python_sdk(&url, "auto", json!([call]), &[]).await;
        assert!(heard(&out).is_empty(), "{server}: no opt-in, no messages");
    }
    stack.stop().await;
}

/// A 2026-07-28 request as a client sends it over HTTP: headers and `_meta` of its own.
async fn modern_post(
    url: &str,
    method: &str,
    name: &str,
    params: serde_json::Value,
) -> serde_json::Value {
    let (_, _, messages) =
        crate::plain::post_2026(url, method, name, params, json!({}), crate::plain::ACCEPT).await;
    crate::plain::response_of(&messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_may_answer_on_another_replica_than_the_one_that_asked() {
    let stack = modern_and_legacy("2025-06-18").await;
    let other = stack.another_dispatcher().await;
    for server in ["modern", "legacy"] {
        let call = json!({"name": "test_sampling", "arguments": {"prompt": "two replicas"}});
        let asked = modern_post(
            &stack.server_url(server),
            "tools/call",
            "test_sampling",
            call.clone(),
        )
        .await;
        let result = &asked["result"];
        assert_eq!(result["resultType"], "input_required", "{server}: {asked}");
        let (key, question) = result["inputRequests"]
            .as_object()
            .and_then(|q| q.iter().next())
            .unwrap_or_else(|| panic!("{server}: no question in {asked}"));
        assert_eq!(question["method"], "sampling/createMessage");
        assert_eq!(
            question["params"]["messages"][0]["content"]["text"],
            "two replicas"
        );
        let mut retry = call;
        retry["requestState"] = result["requestState"].clone();
        retry["inputResponses"] = json!({ key.clone(): {
            "role": "assistant",
            "content": {"type": "text", "text": "answered elsewhere"},
            "model": "test"
        }});
        let answered = modern_post(
            &format!("http://{other}/servers/{server}/mcp"),
            "tools/call",
            "test_sampling",
            retry,
        )
        .await;
        assert_eq!(
            answered["result"]["content"][0]["text"], "LLM response: answered elsewhere",
            "{server}: {answered}"
        );
    }
    stack.stop().await;
}
