//! Calls for later and on a schedule, with real `mcpq` processes: a job `runAt` +3 s starts
//! after its time and not before, and one cancelled before its time never runs; an `every: 1s`
//! schedule fires once per tick with two dispatchers and two workers running, keeps firing
//! across a nats-server restart, and stops when paused or deleted.

use std::time::{Duration, Instant};

use mcpq_schemas::names::SCHEDULES_STREAM;
use mcpq_schemas::{JobStatus, schedule::ScheduleView};
use mcpq_tests::{eventually, fixture::HttpFixture, nats::NatsServer, stack::replicas, stored};
use serde_json::{Value, json};

/// A config for the HTTP fixture as `web`, written into `dir`.
fn config(dir: &std::path::Path, url: &str) -> String {
    let path = dir.join("mcp.yaml");
    std::fs::write(
        &path,
        format!(
            "version: \"1.0\"\nservers:\n  - {{name: web, type: http, endpoint: \"{url}\", concurrency: 4, timeout: 10s}}\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("the dispatcher answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn record(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let (status, body) = send(http.get(format!("{base}/v1/jobs/{id}"))).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_later_starts_after_its_time_and_one_cancelled_never_runs() {
    let nats = NatsServer::start();
    let web = HttpFixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &web.url());
    let (bases, _processes) = replicas(dir.path(), &config, &nats.url(), 1);
    let base = &bases[0];
    mcpq_tests::ready(format!("{base}/readyz")).await;
    mcpq_tests::catalogs_published(&nats.url(), &["web"]).await;
    let http = reqwest::Client::new();

    let due = Instant::now() + Duration::from_secs(3);
    let (status, accepted) = send(
        http.post(format!("{base}/v1/jobs"))
            .json(&json!({"server": "web", "tool": "stamp", "delay": "3s"})),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "scheduled", "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    // Due in 10 s: its cancel below lands well before, however loaded the machine.
    let later = (time::OffsetDateTime::now_utc() + Duration::from_secs(10))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, cancelled) = send(http.post(format!("{base}/v1/jobs")).json(
        &json!({"server": "web", "tool": "mark", "arguments": {"tag": "never"}, "runAt": later}),
    ))
    .await;
    assert_eq!(status, 202, "{cancelled}");
    let cancelled = cancelled["id"].as_str().unwrap().to_string();

    // Until it is due, the record says so and the upstream has not heard of it.
    let shown = record(&http, base, &id).await;
    assert_eq!(shown["status"], "scheduled", "{shown}");
    assert!(shown["runAtMs"].as_u64().is_some(), "{shown}");
    let (status, body) = send(http.delete(format!("{base}/v1/jobs/{cancelled}"))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");

    let ended = eventually(
        "the job for later to complete",
        Duration::from_secs(30),
        || {
            let (http, base, id) = (http.clone(), base.clone(), id.clone());
            async move {
                let shown = record(&http, &base, &id).await;
                (shown["status"] == "completed").then_some(shown)
            }
        },
    )
    .await;
    let stamps = web.fixture.stamps();
    assert_eq!(stamps.len(), 1, "one call: {ended}");
    assert!(
        stamps[0] >= due,
        "the call reached the upstream {:?} before its time",
        due - stamps[0]
    );
    // The cancelled one has no schedule left in JetStream (nothing can fire it), nor anything
    // fired on its way to a lane: it never ran and stays cancelled.
    let schedule = format!("mcpq.sched.web.{cancelled}");
    assert_eq!(stored(&nats.url(), SCHEDULES_STREAM, &schedule).await, 0);
    assert_eq!(
        stored(&nats.url(), SCHEDULES_STREAM, "mcpq.fired.>").await,
        0
    );
    assert!(web.fixture.marks().is_empty(), "{:?}", web.fixture.marks());
    assert_eq!(record(&http, base, &cancelled).await["status"], "cancelled");

    // A bad time names the field; nothing is queued.
    let (status, body) = send(
        http.post(format!("{base}/v1/jobs"))
            .json(&json!({"server": "web", "tool": "stamp", "runAt": "tomorrow"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("runAt"),
        "{body}"
    );
}

/// The schedule as dispatcher `base` shows it.
async fn view(http: &reqwest::Client, base: &str, id: &str) -> ScheduleView {
    let (status, body) = send(http.get(format!("{base}/v1/schedules/{id}"))).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Waits until the schedule shows `ticks` ticks whose jobs all completed.
async fn completed_ticks(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    ticks: usize,
) -> ScheduleView {
    eventually(
        &format!("{ticks} completed ticks"),
        Duration::from_secs(60),
        || async move {
            let view = view(http, base, id).await;
            let done = view
                .last_jobs
                .iter()
                .filter(|t| t.status == Some(JobStatus::Completed))
                .count();
            (done >= ticks).then_some(view)
        },
    )
    .await
}

/// Every tick listed completed and reached the upstream, and no job reached it twice (the
/// upstream sees each call's job id): no tick ran twice. Checked by job id rather than by
/// counting, since the list keeps the latest ticks only and a tick is noted as it starts.
async fn once_each(http: &reqwest::Client, base: &str, id: &str, web: &HttpFixture) {
    eventually(
        "every tick listed called once",
        Duration::from_secs(30),
        || async move {
            let view = view(http, base, id).await;
            let mut ids: Vec<_> = view.last_jobs.iter().map(|t| t.tick.job_id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), view.last_jobs.len(), "a tick listed twice");
            let called = web.fixture.stamped_jobs();
            let mut distinct = called.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                called.len(),
                "a job called twice: {called:?}"
            );
            assert!(
                !called.contains(&String::new()),
                "a call without its job id"
            );
            let all_done = view.last_jobs.iter().all(|t| {
                t.status == Some(JobStatus::Completed)
                    && called.contains(&t.tick.job_id.to_string())
            });
            all_done.then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_schedule_fires_once_per_tick_across_replicas_and_a_nats_restart() {
    let _exclusive = mcpq_tests::exclusive().await;
    let mut nats = NatsServer::start();
    let web = HttpFixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &web.url());
    let (bases, _processes) = replicas(dir.path(), &config, &nats.url(), 2);
    for base in &bases {
        mcpq_tests::ready(format!("{base}/readyz")).await;
    }
    mcpq_tests::catalogs_published(&nats.url(), &["web"]).await;
    let http = reqwest::Client::new();

    let (status, body) = send(
        http.post(format!("{}/v1/schedules", bases[0]))
            .json(&json!({"server": "web", "tool": "stamp", "every": "1s"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body["nextFireAt"].as_array().unwrap().len(), 3, "{body}");

    // Read through the other dispatcher: the ticks so far, each once.
    let seen = completed_ticks(&http, &bases[1], &id, 3).await;
    assert_eq!(seen.next_fire_at.len(), 3, "{seen:?}");
    once_each(&http, &bases[1], &id, &web).await;

    // NATS goes away for a while and comes back: the schedule is still there and fires on.
    let before = view(&http, &bases[0], &id).await.last_jobs.len();
    nats.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.start_again();
    completed_ticks(&http, &bases[0], &id, before + 3).await;
    once_each(&http, &bases[0], &id, &web).await;

    // Paused: nothing fires; resumed: it fires again.
    let (status, body) = send(http.post(format!("{}/v1/schedules/{id}/pause", bases[1]))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true, "{body}");
    // JetStream holds no schedule for it any more (nothing can fire), and the ticks fired
    // before the pause have all run, once each.
    let schedule = format!("mcpq.sched.web.{id}");
    assert_eq!(stored(&nats.url(), SCHEDULES_STREAM, &schedule).await, 0);
    eventually(
        "what fired before the pause moved to the lane",
        Duration::from_secs(20),
        || {
            let url = nats.url();
            async move { (stored(&url, SCHEDULES_STREAM, "mcpq.fired.>").await == 0).then_some(()) }
        },
    )
    .await;
    once_each(&http, &bases[0], &id, &web).await;
    let paused_at = web.fixture.stamps().len();
    let (status, _) = send(http.post(format!("{}/v1/schedules/{id}/resume", bases[0]))).await;
    assert_eq!(status, 200);
    eventually("a tick after resume", Duration::from_secs(20), || {
        let n = web.fixture.stamps().len();
        async move { (n > paused_at).then_some(()) }
    })
    .await;

    // Listed, then deleted: gone, and nothing fires after.
    let (status, list) = send(http.get(format!("{}/v1/schedules", bases[1]))).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (status, _) = send(http.delete(format!("{}/v1/schedules/{id}", bases[1]))).await;
    assert_eq!(status, 204);
    let (status, _) = send(http.get(format!("{}/v1/schedules/{id}", bases[0]))).await;
    assert_eq!(status, 404);
    assert_eq!(stored(&nats.url(), SCHEDULES_STREAM, &schedule).await, 0);

    // Bad schedules name their field.
    for (body, field) in [
        (
            json!({"server": "web", "tool": "stamp", "every": "500ms"}),
            "every",
        ),
        (
            json!({"server": "web", "tool": "stamp", "cron": "* * * * *"}),
            "cron",
        ),
        (
            json!({"server": "web", "tool": "stamp", "cron": "0 0 9 * * *", "timeZone": "Mars/Olympus"}),
            "timeZone",
        ),
    ] {
        let (status, answer) =
            send(http.post(format!("{}/v1/schedules", bases[0])).json(&body)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
}

/// A `tools/call` over MCP with `_meta` `io.mcpq/runAt`, from the official Python SDK in each
/// protocol mode, to server-everything (npm, over stdio): answered once it has run, not before
/// its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_for_later_over_mcp_is_answered_after_its_time_in_both_protocol_modes() {
    let stack = mcpq_tests::stack::Stack::start(&format!(
        "  - name: everything\n    type: stdio\n    command: {}\n    args: [\"stdio\"]\n    timeout: 20s\n",
        mcpq_tests::required_program("mcp-server-everything").display()
    ))
    .await;
    for mode in ["auto", "legacy"] {
        let due = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
        let run_at = due
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let out = mcpq_tests::python_sdk(
            &stack.server_url("everything"),
            mode,
            json!([["call_tool", "echo", {"message": format!("later-{mode}")}, {"io.mcpq/runAt": run_at}]]),
            &[],
        )
        .await;
        let answered = time::OffsetDateTime::now_utc();
        let step = &out["steps"][0];
        assert!(
            step["ok"].to_string().contains(&format!("later-{mode}")),
            "{mode}: {out}"
        );
        assert!(
            answered >= due,
            "{mode}: answered {:?} before its time",
            due - answered
        );
    }
    // A time that is not RFC 3339 is refused, naming the key.
    let out = mcpq_tests::python_sdk(
        &stack.server_url("everything"),
        "auto",
        json!([["call_tool", "echo", {"message": "x"}, {"io.mcpq/runAt": "soon"}]]),
        &[],
    )
    .await;
    assert!(
        out["steps"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("io.mcpq/runAt"),
        "{out}"
    );
    stack.stop().await;
}
