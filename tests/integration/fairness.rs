//! Fair shares between principals: with one slot and 20 ms calls, alice queues 2,000 jobs,
//! then bob sends 20, one every 50 ms. With fair shares (on by default with `auth`) bob's jobs take turns with
//! alice's, so each waits about one call; without (`fairness: {by: none}`) they wait behind
//! all of hers. Both are printed.

use std::time::Duration;

use mcpq_tests::{fixture::HttpFixture, stack::Stack};
use serde_json::{Value, json};

const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-0123456789";

/// How long each of bob's jobs took from submission to its end (ms), for those that ended
/// within `patience`; `None` for the others.
async fn bobs_waits(fairness: &str, patience: Duration) -> Vec<Option<u64>> {
    let web = HttpFixture::start().await;
    let sha = mcpq_dispatcher::auth::sha256_hex;
    let stack = Stack::start_config(&format!(
        "version: \"1.0\"
auth:
  apiKeys:
    - {{principal: alice, sha256: \"{}\", allow: [\"*/*\"]}}
    - {{principal: bob, sha256: \"{}\", allow: [\"*/*\"]}}
servers:
  - name: web
    type: http
    endpoint: {}
    concurrency: 1
    timeout: 10s
    fairness: {fairness}
",
        sha(ALICE),
        sha(BOB),
        web.url()
    ))
    .await;
    let base = format!("http://{}", stack.addr);
    let http = reqwest::Client::new();
    let slow = json!({"server": "web", "tool": "slow", "arguments": {"ms": 20}});
    others_cannot_touch(&http, &base).await;
    let lines: String = (0..2000).map(|_| format!("{slow}\n")).collect();
    let response = http
        .post(format!("{base}/v1/batches"))
        .bearer_auth(ALICE)
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    // Alice's backlog is being worked through.
    mcpq_tests::eventually("alice's first calls", Duration::from_secs(30), || {
        let calls = web.fixture.calls();
        async move { (calls >= 5).then_some(()) }
    })
    .await;
    // Bob calls as an interactive principal does, one call every 50 ms (a burst of 20 would
    // measure his own backlog too: a fair share is every other slot, not all of them).
    let mut bobs = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..20 {
        every.tick().await;
        let accepted: Value = mcpq_tests::json_of(
            http.post(format!("{base}/v1/jobs"))
                .bearer_auth(BOB)
                .json(&slow),
        )
        .await;
        bobs.push(accepted["id"].as_str().unwrap().to_string());
    }
    let deadline = tokio::time::Instant::now() + patience;
    let mut waits = Vec::new();
    for id in bobs {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let record: Value = mcpq_tests::json_of(
            http.get(format!(
                "{base}/v1/jobs/{id}/wait?timeout={}ms",
                left.as_millis().max(1)
            ))
            .bearer_auth(BOB),
        )
        .await;
        waits.push((record["status"] == "completed").then(|| {
            record["updatedAtMs"].as_u64().unwrap() - record["submittedAtMs"].as_u64().unwrap()
        }));
    }
    stack.stop().await;
    waits
}

/// Alice's schedule and job for later are hers: bob can neither see, pause, delete nor
/// cancel them (each answered as if there were none).
async fn others_cannot_touch(http: &reqwest::Client, base: &str) {
    let status = |r: reqwest::Response| r.status().as_u16();
    let created: Value = mcpq_tests::json_of(http
        .post(format!("{base}/v1/schedules"))
        .bearer_auth(ALICE)
        .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": "a"}, "every": "1h"}))).await;
    let schedule = format!("{base}/v1/schedules/{}", created["id"].as_str().unwrap());
    let later: Value = mcpq_tests::json_of(http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(ALICE)
        .json(&json!({"server": "web", "tool": "echo", "arguments": {"text": "b"}, "delay": "1h"}))).await;
    let job = format!("{base}/v1/jobs/{}", later["id"].as_str().unwrap());
    assert_eq!(later["status"], "scheduled", "{later}");
    for (request, what) in [
        (http.get(&schedule), "read"),
        (http.post(format!("{schedule}/pause")), "pause"),
        (http.delete(&schedule), "delete"),
        (http.delete(&job), "cancel"),
        (http.get(&job), "read the job"),
    ] {
        let answer = request.bearer_auth(BOB).send().await.unwrap();
        assert_eq!(status(answer), 404, "bob could {what} alice's");
    }
    let bobs: Value =
        mcpq_tests::json_of(http.get(format!("{base}/v1/schedules")).bearer_auth(BOB)).await;
    assert_eq!(bobs, json!([]), "bob lists alice's schedules");
    let shown: Value = mcpq_tests::json_of(http.get(&schedule).bearer_auth(ALICE)).await;
    assert_eq!(shown["paused"], false, "{shown}");
    assert_eq!(
        status(
            http.delete(&schedule)
                .bearer_auth(ALICE)
                .send()
                .await
                .unwrap()
        ),
        204
    );
    assert_eq!(
        status(http.delete(&job).bearer_auth(ALICE).send().await.unwrap()),
        202
    );
}

fn p99(waits: &[Option<u64>], patience: Duration) -> u64 {
    let mut ms: Vec<u64> = waits
        .iter()
        .map(|w| w.unwrap_or(patience.as_millis() as u64))
        .collect();
    ms.sort_unstable();
    ms[(ms.len() * 99).div_ceil(100) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principals_backlog_delays_anothers_calls_by_about_one_call() {
    let _exclusive = mcpq_tests::exclusive().await;
    let patience = Duration::from_secs(20);
    let fair = bobs_waits("{by: principal}", patience).await;
    let fair_p99 = p99(&fair, patience);
    // Without fair shares bob would wait ~40 s behind alice's 2,000 calls: 5 s tells.
    let unfair_patience = Duration::from_secs(5);
    let unfair = bobs_waits("{by: none}", unfair_patience).await;
    let unfair_p99 = p99(&unfair, unfair_patience);
    let unfinished = unfair.iter().filter(|w| w.is_none()).count();
    println!(
        "bob's p99 wait behind alice's 2,000 jobs (1 slot, 20 ms calls): fair shares {fair_p99} ms; \
         without {unfair_p99} ms or more ({unfinished} of 20 not done within {unfair_patience:?})"
    );
    assert!(fair.iter().all(Option::is_some), "{fair:?}");
    assert!(fair_p99 < 1000, "bob's p99 with fair shares: {fair_p99} ms");
    assert!(
        unfair_p99 >= 5 * fair_p99.max(100),
        "without fair shares bob waited only {unfair_p99} ms (with: {fair_p99} ms)"
    );
}
