//! Callbacks when jobs end: a receiver that checks signatures with the reference Standard
//! Webhooks implementation (PyPI `standardwebhooks`) and fails each callback's first two
//! deliveries gets every ended job — completed, failed, cancelled — once accepted, verified,
//! under a webhook id of its own; a 410 is not sent again; one that has not landed within
//! `callbacks.retryFor` is dead-lettered with its reason; a loopback target is refused unless
//! allowed by name.

use std::time::Duration;

use mcpq_tests::{eventually, fixture::HttpFixture, free_port, nats::NatsServer, stack::replicas};
use serde_json::{Value, json};

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The Python receiver (tests/clients/webhook_receiver.py), killed on drop.
pub(crate) struct Receiver(std::process::Child);

impl Receiver {
    /// Listens on `port`, logging each request into `log`; each callback's first `failures`
    /// deliveries are answered 500 (`-1`: every request is answered 410 Gone).
    pub(crate) fn start(port: u16, log: &std::path::Path, failures: i32) -> Receiver {
        Receiver(
            std::process::Command::new(mcpq_tests::required_program("python3"))
                .arg(mcpq_tests::repo_root().join("tests/clients/webhook_receiver.py"))
                .args([
                    &port.to_string(),
                    SECRET,
                    log.to_str().unwrap(),
                    &failures.to_string(),
                ])
                .spawn()
                .expect("start the webhook receiver"),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn lines(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until `MCPQ_CALLBACKS` holds nothing: every callback was acked, none waits to be sent
/// again.
async fn nothing_left_to_deliver(nats_url: &str, what: &str) {
    eventually(what, Duration::from_secs(30), || async move {
        (mcpq_tests::stored(nats_url, mcpq_schemas::names::CALLBACKS_STREAM, ">").await == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ended_job_is_called_back_signed_retried_and_once_accepted() {
    let web = HttpFixture::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let _receiver = Receiver::start(port, &log, 2);
    let gone_port = free_port();
    let gone_log = dir.path().join("gone.jsonl");
    let _gone = Receiver::start(gone_port, &gone_log, -1);
    // Real processes: the dispatcher's /metrics is its own.
    let nats = NatsServer::start();
    let config = dir.path().join("mcp.yaml");
    std::fs::write(
        &config,
        format!(
            "version: \"1.0\"\ncallbacks:\n  secret: {SECRET}\n  allowHosts: [127.0.0.1]\nservers:\n  - {{name: web, type: http, endpoint: \"{}\", timeout: 10s}}\n",
            web.url()
        ),
    )
    .unwrap();
    let (bases, _processes) = replicas(dir.path(), config.to_str().unwrap(), &nats.url(), 1);
    let base = bases[0].clone();
    mcpq_tests::ready(format!("{base}/readyz")).await;
    mcpq_tests::catalogs_published(&nats.url(), &["web"]).await;
    let hook = format!("http://127.0.0.1:{port}/hook");
    let http = reqwest::Client::new();
    let submit = |body: Value| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let response = http
                .post(format!("{base}/v1/jobs"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    let (status, done) = submit(
        json!({"server": "web", "tool": "echo", "arguments": {"text": "hi"}, "callbackUrl": hook}),
    )
    .await;
    assert_eq!(status, 202, "{done}");
    let (status, failed) =
        submit(json!({"server": "web", "tool": "no_such_tool", "callbackUrl": hook})).await;
    assert_eq!(status, 202, "{failed}");
    // A receiver that answers 410 Gone is sent its callback once.
    let (status, to_gone) = submit(json!({"server": "web", "tool": "echo",
        "arguments": {"text": "gone"}, "callbackUrl": format!("http://127.0.0.1:{gone_port}/hook")}))
    .await;
    assert_eq!(status, 202, "{to_gone}");
    let (status, later) =
        submit(json!({"server": "web", "tool": "stamp", "delay": "60s", "callbackUrl": hook}))
            .await;
    assert_eq!(status, 202, "{later}");
    let cancelled = http
        .delete(format!("{base}/v1/jobs/{}", later["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status().as_u16(), 202);

    let ids: Vec<String> = [&done, &failed, &later]
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    let accepted = eventually("three callbacks accepted", Duration::from_secs(60), || {
        let received = lines(&log);
        async move {
            let accepted: Vec<Value> = received
                .into_iter()
                .filter(|l| l["status"] == 200)
                .collect();
            (accepted.len() >= 3).then_some(accepted)
        }
    })
    .await;
    // Each landed on its third delivery, verified by the reference implementation; none twice.
    let mut statuses = Vec::new();
    for line in &accepted {
        assert_eq!(line["verified"], true, "{line}");
        assert_eq!(line["delivery"], 3, "{line}");
        let event = &line["event"];
        assert_eq!(event["type"], "job.ended", "{event}");
        let job_id = event["data"]["jobId"].as_str().unwrap();
        assert!(ids.iter().any(|id| id == job_id), "{event}");
        let status = event["data"]["status"].as_str().unwrap().to_string();
        let ended_at = event["data"]["updatedAtMs"].as_u64().unwrap();
        assert_eq!(
            line["id"],
            format!("{job_id}:{status}:{ended_at}"),
            "{line}"
        );
        assert_eq!(event["link"], format!("/v1/jobs/{job_id}"), "{event}");
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        ["cancelled", "completed", "failed"],
        "{accepted:?}"
    );
    let completed = accepted
        .iter()
        .find(|l| l["event"]["data"]["status"] == "completed")
        .unwrap();
    assert_eq!(
        crate::first_text(&completed["event"]["data"]["result"]),
        "hi",
        "{completed}"
    );
    // Nothing more comes: every callback was acked (none waits to be sent again).
    nothing_left_to_deliver(&nats.url(), "no callback left to deliver").await;
    let received = lines(&log);
    assert_eq!(received.len(), 9, "{received:#?}");
    let gone = lines(&gone_log);
    assert_eq!(gone.len(), 1, "a 410 is not sent again: {gone:#?}");
    assert_eq!(gone[0]["status"], 410);
    assert!(
        gone[0]["id"]
            .as_str()
            .unwrap()
            .starts_with(to_gone["id"].as_str().unwrap()),
        "{gone:?}"
    );

    // A callback that has not landed within callbacks.retryFor (24 h by default: one that
    // waited out a long outage, its job ended 25 hours ago) and fails once more is dead-lettered
    // with its reason.
    let mut stale = completed["event"].clone();
    let closed = free_port();
    let stale_url = format!("http://127.0.0.1:{closed}/hook");
    stale["data"]["updatedAtMs"] = json!(mcpq_schemas::now_ms() - 25 * 3600 * 1000);
    stale["data"]["callbackUrl"] = json!(stale_url);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.publish(
        mcpq_schemas::names::callback_subject("web"),
        serde_json::to_vec(&stale).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let dead = eventually(
        "the stale callback dead-lettered",
        Duration::from_secs(30),
        || {
            let js = js.clone();
            async move {
                let stream = js
                    .get_stream(mcpq_schemas::names::DEAD_CALLBACKS_STREAM)
                    .await
                    .ok()?;
                stream
                    .get_last_raw_message_by_subject("mcpq.callbacks-dead.web")
                    .await
                    .ok()
            }
        },
    )
    .await;
    let kept: Value = serde_json::from_slice(&dead.payload).unwrap();
    assert_eq!(kept, stale, "the dead callback keeps the event as it was");
    let reason = dead
        .headers
        .get("Mcpq-Callback-Error")
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(reason.contains(&stale_url), "{reason}");
    nothing_left_to_deliver(&nats.url(), "the stale callback taken off the queue").await;

    // A target on a loopback address that allowHosts does not name is refused, nothing queued.
    let (status, refused) = submit(
        json!({"server": "web", "tool": "echo", "arguments": {"text": "no"},
        "callbackUrl": format!("http://localhost:{port}/hook")}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("callbackUrl") && message.contains("allowHosts"),
        "{message}"
    );

    // The dispatcher counts what it delivered and what it tried again.
    let metrics = mcpq_tests::body_of(http.get(format!("{base}/metrics"))).await;
    let counted = |outcome: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("mcpq_callbacks_total{{outcome=\"{outcome}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(counted("delivered"), Some(3.0), "{metrics}");
    assert_eq!(counted("retried"), Some(6.0), "{metrics}");
    assert_eq!(counted("gone"), Some(1.0), "{metrics}");
    assert_eq!(counted("dead"), Some(1.0), "{metrics}");
}
