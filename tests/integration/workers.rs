//! Worker processes under real operations, each case with its promise counted at the upstream:
//! many workers on one host with no flags (a SIGKILLed one's calls answered by the other), a
//! worker SIGSTOPped past its AckWait then resumed, and a drain deadline that interrupts calls.

use std::time::Duration;

use futures::future::join_all;
use mcpq_schemas::{Job, McpRequest, Outcome, worker::WorkerBeat};
use mcpq_tests::{eventually, stack::WorkerProcess};

use crate::crash::{Rig, rig_acking};

/// The heartbeats of server `web`, once there are `n`.
async fn beats(rig: &Rig, n: usize) -> Vec<WorkerBeat> {
    let nats = async_nats::connect(rig.nats.url()).await.unwrap();
    let bucket = async_nats::jetstream::new(nats)
        .get_key_value("mcpq_workers")
        .await
        .unwrap();
    eventually(&format!("{n} heartbeats"), Duration::from_secs(60), || {
        let bucket = bucket.clone();
        async move {
            let keys: Vec<String> =
                futures::StreamExt::collect::<Vec<_>>(bucket.keys().await.ok()?)
                    .await
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter(|k| k.starts_with("web."))
                    .collect();
            let mut beats = Vec::new();
            for key in keys {
                let bytes = bucket.get(&key).await.ok()??;
                beats.push(serde_json::from_slice::<WorkerBeat>(&bytes).ok()?);
            }
            (beats.len() == n).then_some(beats)
        }
    })
    .await
}

fn call(tool: &str, arguments: serde_json::Value) -> Job {
    Job::new(
        "web",
        McpRequest::call_tool(tool, arguments.as_object().cloned()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_host_start_with_no_flags_and_a_killed_ones_calls_are_answered() {
    let _exclusive = mcpq_tests::exclusive().await;
    let rig = rig_acking(16, "", "30s", "3s").await;
    let config = rig.config.path();
    let first = WorkerProcess::spawn_with(config, &rig.nats.url(), &[]);
    let _second = WorkerProcess::spawn_with(config, &rig.nats.url(), &[]);
    // Both run, each serving its metrics somewhere of its own, shown in its heartbeat.
    let beats = beats(&rig, 2).await;
    let addresses: Vec<String> = beats
        .iter()
        .map(|b| {
            b.metrics
                .clone()
                .expect("a metrics address in the heartbeat")
        })
        .collect();
    assert_ne!(addresses[0], addresses[1], "{addresses:?}");
    for address in &addresses {
        let metrics = reqwest::get(format!("http://{address}/metrics"))
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200, "{address}");
    }
    // An address asked for explicitly must be free: exit 64, saying why.
    let taken = std::process::Command::new(mcpq_tests::mcpq_bin())
        .args(["worker", "--config"])
        .arg(config)
        .args(["--nats", &rig.nats.url(), "--metrics-listen", &addresses[0]])
        .output()
        .unwrap();
    assert_eq!(taken.status.code(), Some(64), "{taken:?}");
    let said = String::from_utf8_lossy(&taken.stderr);
    assert!(said.contains("cannot listen on"), "{said}");

    // 40 calls in flight over both; one worker dies; every caller is answered.
    let client = rig.client.clone();
    let calls = tokio::spawn(async move {
        join_all((0..40).map(|_| {
            let client = client.clone();
            async move {
                client
                    .call(
                        &call("slow", serde_json::json!({"ms": 2000})),
                        Duration::from_secs(90),
                    )
                    .await
            }
        }))
        .await
    });
    let web = &rig.web;
    eventually(
        "calls in flight on both workers",
        Duration::from_secs(30),
        || async move { (web.fixture.slow_running() >= 24).then_some(()) },
    )
    .await;
    first.signal("KILL");
    drop(first);
    let replies = calls.await.unwrap();
    let answered = replies
        .iter()
        .filter(|r| matches!(r, Ok(reply) if matches!(reply.outcome, Outcome::Ok { .. })))
        .count();
    assert_eq!(answered, 40, "every caller answered: {replies:?}");
    // At least once: the killed worker's calls ran again on the other.
    assert!(rig.web.fixture.calls() >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_ack_wait_then_resumed_runs_claimed_jobs_once_and_cancels_the_rest() {
    // AckWait 2 s, frozen 4 s: less than its heartbeat lasts (10 s), so the frozen worker keeps
    // the jobs it claimed.
    let _exclusive = mcpq_tests::exclusive().await;
    let rig = rig_acking(8, "", "30s", "2s").await;
    let tag = |kind: &str, n: usize| format!("{kind}-{n}");

    // Jobs with a record (submitted for later) are claimed: the second worker waits for the
    // frozen one, which finishes them when it resumes. Each runs once.
    let first = rig.worker("first");
    let mut ids = Vec::new();
    for n in 0..4 {
        let job = call(
            "hold",
            serde_json::json!({"tag": tag("async", n), "ms": 3000}),
        );
        rig.client.submit(&job).await.unwrap();
        ids.push(job.id);
    }
    for n in 0..4 {
        rig.web.fixture.until_held(&tag("async", n)).await;
    }
    first.signal("STOP");
    let second = rig.worker("second");
    // Past AckWait (the jobs went to the second worker, which waits for the frozen one), and
    // well within the heartbeat's 10 s, however late its last renewal and this CONT come.
    tokio::time::sleep(Duration::from_secs(4)).await;
    first.signal("CONT");
    rig.all_completed(&ids, Duration::from_secs(60)).await;
    for n in 0..4 {
        let runs = rig
            .web
            .fixture
            .held()
            .iter()
            .filter(|t| **t == tag("async", n))
            .count();
        assert_eq!(runs, 1, "claimed job {n} ran once");
    }
    assert!(rig.web.fixture.cancelled().is_empty());

    // Calls with an inbox are not claimed (at-least-once): the second worker runs them again,
    // and the resumed worker tells the upstream to cancel its own run. Every caller is answered.
    drop(second);
    let client = rig.client.clone();
    let calls = tokio::spawn(async move {
        join_all((0..4).map(|n| {
            let client = client.clone();
            async move {
                let job = call(
                    "hold",
                    serde_json::json!({"tag": format!("sync-{n}"), "ms": 12_000}),
                );
                client.call(&job, Duration::from_secs(90)).await
            }
        }))
        .await
    });
    for n in 0..4 {
        rig.web.fixture.until_held(&tag("sync", n)).await;
    }
    first.signal("STOP");
    let _second = rig.worker("second-again");
    for n in 0..4 {
        // Delivered again to the second worker once AckWait passes.
        eventually("the second run", Duration::from_secs(30), || {
            let held = rig.web.fixture.held();
            let tag = tag("sync", n);
            async move { (held.iter().filter(|t| **t == tag).count() == 2).then_some(()) }
        })
        .await;
    }
    first.signal("CONT");
    for n in 0..4 {
        rig.web.fixture.until_cancelled(&tag("sync", n)).await;
    }
    for reply in calls.await.unwrap() {
        let reply = reply.expect("answered");
        assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_cancels_calls_upstream_and_hands_their_jobs_back() {
    let rig = rig_acking(8, "", "30s", "30s").await;
    let mut first = WorkerProcess::spawn_with(
        rig.config.path(),
        &rig.nats.url(),
        &["--id", "first", "--drain-grace", "1s"],
    );
    let client = rig.client.clone();
    let call = tokio::spawn(async move {
        let job = call("hold", serde_json::json!({"tag": "drained", "ms": 8000}));
        client.call(&job, Duration::from_secs(90)).await
    });
    rig.web.fixture.until_held("drained").await;
    first.signal("TERM");
    // The grace passes with the call still running: the upstream hears it cancelled.
    rig.web.fixture.until_cancelled("drained").await;
    let status = first.wait(Duration::from_secs(30)).await.expect("it exits");
    assert!(status.success(), "a drained worker exits 0: {status}");
    // Handed back at once (not after AckWait's 30 s): the next worker runs it.
    let _second = rig.worker("second");
    let reply = call.await.unwrap().expect("answered");
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    let runs = rig
        .web
        .fixture
        .held()
        .iter()
        .filter(|t| *t == "drained")
        .count();
    assert_eq!(
        runs, 2,
        "at least once: the interrupted run, then the one that answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_heartbeat_loses_its_claimed_job_and_cancels_it_upstream() {
    let _exclusive = mcpq_tests::exclusive().await;
    let rig = rig_acking(8, "", "60s", "2s").await;
    let first = rig.worker("first");
    let job = call("hold", serde_json::json!({"tag": "frozen", "ms": 20_000}));
    rig.client.submit(&job).await.unwrap();
    rig.web.fixture.until_held("frozen").await;
    // Frozen past AckWait and past its heartbeat (10 s): the second worker asks it, hears
    // nothing, waits out the heartbeat, and takes the job over.
    first.signal("STOP");
    let _second = rig.worker("second");
    eventually("the second run", Duration::from_secs(60), || {
        let runs = rig
            .web
            .fixture
            .held()
            .iter()
            .filter(|t| *t == "frozen")
            .count();
        async move { (runs == 2).then_some(()) }
    })
    .await;
    // Woken, the first finds its claim taken: it cancels its call upstream and leaves the job.
    first.signal("CONT");
    rig.web.fixture.until_cancelled("frozen").await;
    rig.all_completed(&[job.id], Duration::from_secs(60)).await;
    let record = rig.client.record(job.id).await.unwrap().unwrap();
    assert_eq!(record.worker_id.as_deref(), Some("second"));
}
