//! The shipped NATS roles (`deploy/nats/roles.conf`): mcpq's dispatcher and worker run under
//! theirs, a pipeline publishes jobs for its server and reads its own replies, and the server
//! refuses it everything else.

use std::{path::Path, time::Duration};

use async_nats::jetstream;
use futures::StreamExt;
use mcpq_schemas::{
    Job, Lane, McpRequest,
    names::{HDR_JOB_ID, HDR_MSG_ID, HDR_REPLY_TO, job_subject},
};
use mcpq_tests::{eventually, fixture::HttpFixture, mcpq_bin, nats::NatsServer, repo_root};
use serde_json::json;

/// The API key the test calls the dispatcher with: with `auth`, its jobs wait in the
/// principal's own queue (fair shares), rung to the worker on `mcpq.bell.>`.
const CALLER_KEY: &str = "roles-caller-key-0123";

pub(crate) const PASSWORDS: [(&str, &str); 4] = [
    ("MCPQ_DISPATCHER_PASSWORD", "dispatcher-pw-1"),
    ("MCPQ_WORKER_PASSWORD", "worker-pw-2"),
    ("MCPQ_PIPELINE_WEB_PASSWORD", "pipeline-pw-3"),
    ("MCPQ_OPERATOR_PASSWORD", "operator-pw-4"),
];

/// A config whose NATS identity is `user` (password read from a file).
fn config(dir: &Path, user: &str, password: &str, upstream: &str) -> std::path::PathBuf {
    let secret = dir.join(format!("{user}.pw"));
    std::fs::write(&secret, password).unwrap();
    let path = dir.join(format!("{user}.yaml"));
    std::fs::write(
        &path,
        format!(
            "version: \"1.0\"\nnats: {{user: {user}, password: \"${{file:{}}}\"}}\nauth: {{apiKeys: [{{principal: ci, sha256: \"{}\", allow: [\"*/*\"]}}]}}\ncallbacks: {{secret: {}, allowHosts: [127.0.0.1]}}\nservers:\n  - {{name: web, type: http, endpoint: \"{upstream}\", timeout: 10s}}\n",
            secret.display(),
            mcpq_dispatcher::auth::sha256_hex(CALLER_KEY),
            crate::callbacks::SECRET
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_its_part_and_a_pipeline_nothing_else() {
    let nats = NatsServer::start_with(&repo_root().join("deploy/nats/roles.conf"), &PASSWORDS);
    let web = HttpFixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spawn = |role: &str, args: &[&str], config: &Path| {
        let log = std::fs::File::create(dir.path().join(format!("{role}.log"))).unwrap();
        tokio::process::Command::new(mcpq_bin())
            .args(args)
            .arg("--config")
            .arg(config)
            .args(["--nats", &nats.url()])
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let worker_config = config(dir.path(), "worker", PASSWORDS[1].1, &web.url());
    let _worker = spawn("worker", &["worker"], &worker_config);
    let dispatcher_config = config(dir.path(), "dispatcher", PASSWORDS[0].1, &web.url());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _dispatcher = spawn(
        "dispatcher",
        &["dispatcher", "--listen", &listen],
        &dispatcher_config,
    );

    // The pipeline: its own identity and inbox prefix; the server's refusals are collected.
    let (refusals_tx, mut refusals) = tokio::sync::mpsc::unbounded_channel();
    let host = nats.url().trim_start_matches("nats://").to_string();
    let pipeline = async_nats::ConnectOptions::new()
        .user_and_password("pipeline-web".into(), PASSWORDS[2].1.into())
        .custom_inbox_prefix("_INBOX.pipeline-web")
        .event_callback(move |event| {
            let tx = refusals_tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(host)
        .await
        .expect("the pipeline connects");
    let js = jetstream::new(pipeline.clone());
    let inbox = pipeline.new_inbox();
    let replies = std::sync::Arc::new(tokio::sync::Mutex::new(
        pipeline.subscribe(inbox.clone()).await.unwrap(),
    ));
    let job = Job::new(
        "web",
        McpRequest::call_tool("echo", json!({"text": "role"}).as_object().cloned()),
    );
    let body = serde_json::to_vec(&job).unwrap();
    // Published until the worker has laid out the queue (the same id: a duplicate is dropped).
    let reply = eventually(
        "the pipeline's job answered",
        Duration::from_secs(90),
        || {
            let (js, body, inbox) = (js.clone(), body.clone(), inbox.clone());
            let replies = replies.clone();
            let id = job.id.to_string();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(HDR_REPLY_TO, inbox.as_str());
                headers.insert(HDR_JOB_ID, id.as_str());
                headers.insert(HDR_MSG_ID, id.as_str());
                let ack = js
                    .publish_with_headers(job_subject("web", Lane::Normal), headers, body.into())
                    .await
                    .ok()?;
                tokio::time::timeout(Duration::from_secs(5), ack)
                    .await
                    .ok()?
                    .ok()?;
                let mut replies = replies.lock().await;
                let message = tokio::time::timeout(Duration::from_secs(10), replies.next())
                    .await
                    .ok()??;
                serde_json::from_slice::<serde_json::Value>(&message.payload).ok()
            }
        },
    )
    .await;
    assert!(reply.to_string().contains("role"), "{reply}");

    // The dispatcher under its role serves a call end to end: one for later (the dispatcher
    // schedules it, the worker moves it to its lane) with a callback (the worker stores it, the
    // dispatcher delivers it).
    let hook_port = mcpq_tests::free_port();
    let hook_log = dir.path().join("hook.jsonl");
    let _receiver = crate::callbacks::Receiver::start(hook_port, &hook_log, 0);
    let http = reqwest::Client::new();
    let accepted: serde_json::Value = eventually("the dispatcher answers", Duration::from_secs(30), || {
        let http = http.clone();
        let url = format!("http://{listen}/v1/jobs");
        async move {
            let response = http
                .post(url)
                .bearer_auth(CALLER_KEY)
                .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": "via-dispatcher"},
                    "delay": "1s", "callbackUrl": format!("http://127.0.0.1:{hook_port}/hook")}))
                .send()
                .await
                .ok()?;
            (response.status() == 202).then_some(response.json().await.ok()?)
        }
    })
    .await;
    let waited = http
        .get(format!(
            "http://{listen}/v1/jobs/{}/wait?timeout=30s",
            accepted["id"].as_str().unwrap()
        ))
        .bearer_auth(CALLER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 200);
    assert!(waited.text().await.unwrap().contains("via-dispatcher"));
    // It went through the principal's own queue (fair shares, with auth).
    let admin = mcpq_schemas::nats::connect_with(
        &nats.url(),
        "roles-check",
        &mcpq_schemas::config::NatsCredentials {
            user: Some(mcpq_schemas::config::Secret::parse("operator").unwrap()),
            password: Some(mcpq_schemas::config::Secret::parse(PASSWORDS[3].1).unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let queue = mcpq_schemas::names::tenant_consumer(
        "web",
        Lane::Normal,
        &mcpq_schemas::names::tenant_token("key:ci"),
    );
    assert!(
        jetstream::new(admin)
            .get_stream(mcpq_schemas::names::jobs_stream("web"))
            .await
            .unwrap()
            .consumer_info(&queue)
            .await
            .is_ok(),
        "no consumer {queue}"
    );
    eventually(
        "the callback under the roles",
        Duration::from_secs(30),
        || {
            let received = crate::callbacks::lines(&hook_log);
            async move { received.iter().any(|l| l["verified"] == true).then_some(()) }
        },
    )
    .await;

    // Everything else the pipeline tries is refused by the server.
    let _ = pipeline
        .publish(job_subject("other", Lane::Normal), "{}".into())
        .await;
    let _records = pipeline.subscribe("$KV.mcpq_results.>").await;
    let _others = pipeline.subscribe("_INBOX.dispatcher.>").await;
    let _ = pipeline
        .publish("$JS.API.DIRECT.GET.KV_mcpq_results", "{}".into())
        .await;
    // Answering a question (one waiting in a task's record, say) is the dispatcher's alone.
    let _ = pipeline
        .publish(
            "mcpq.input.0190f5a2-0000-7000-8000-000000000000.r1",
            "{}".into(),
        )
        .await;
    pipeline.flush().await.ok();
    let mut seen = Vec::new();
    let wanted = [
        "Publish to \"mcpq.jobs.other.normal\"",
        "Subscription to \"$KV.mcpq_results.>\"",
        "Subscription to \"_INBOX.dispatcher.>\"",
        "Publish to \"$JS.API.DIRECT.GET.KV_mcpq_results\"",
        "Publish to \"mcpq.input.0190f5a2-0000-7000-8000-000000000000.r1\"",
    ];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(refusal) = refusals.recv().await {
            seen.push(refusal);
            if wanted.iter().all(|w| seen.iter().any(|s| s.contains(w))) {
                break;
            }
        }
    })
    .await;
    for w in wanted {
        assert!(
            seen.iter()
                .any(|s| s.contains("Permissions Violation") && s.contains(w)),
            "the server refused {w}: {seen:?}"
        );
    }
}
