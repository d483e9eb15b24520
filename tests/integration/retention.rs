//! What a call leaves behind: a quick synchronous call no record; a slow one a record that
//! expires after `nats.callRecordTtl` (its own `Nats-TTL`); a job submitted for later a record
//! kept `resultTtl`; and audit entries gathered into one stored message per batch.

use std::time::Duration;

use mcpq_schemas::{Job, McpRequest, Outcome, audit::AuditBatch, names::AUDIT_STREAM};
use mcpq_tests::{fixture::HttpFixture, stack::Stack};

use crate::two_fixtures;

fn mark(tag: &str, ms: u64) -> Job {
    Job::new(
        "web",
        McpRequest::call_tool(
            "mark",
            serde_json::json!({"tag": tag, "ms": ms})
                .as_object()
                .cloned(),
        ),
    )
}

/// The `Nats-TTL` header of a job's record as stored, if it has a record.
async fn record_ttl(js: &async_nats::jetstream::Context, job: &Job) -> Option<Option<String>> {
    let stream = js.get_stream("KV_mcpq_results").await.unwrap();
    let message = stream
        .get_last_raw_message_by_subject(&format!("$KV.mcpq_results.{}", job.id))
        .await
        .ok()?;
    Some(
        message
            .headers
            .get("Nats-TTL")
            .map(|v| v.as_str().to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_call_keeps_its_record_as_long_as_it_needs_it() {
    let web = HttpFixture::start().await;
    let stack = Stack::start_config(&format!(
        "version: \"1.0\"\nnats: {{callRecordTtl: 5m}}\nservers:\n{}",
        two_fixtures(&web.url())
    ))
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());

    // Answered at once: its caller has the answer; nothing is kept.
    let quick = mark("quick", 0);
    let reply = stack
        .client
        .call(&quick, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(reply.outcome, Outcome::Ok { .. }));
    // Slow enough to become a task: kept, for callRecordTtl.
    let slow = mark("slow", 1500);
    let reply = stack
        .client
        .call(&slow, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(reply.outcome, Outcome::Ok { .. }));
    // Submitted for later: kept for resultTtl (the bucket's age; no TTL of its own).
    let later = mark("later", 0);
    stack.client.submit(&later).await.unwrap();
    mcpq_tests::all_completed(&stack.client, &[later.id], Duration::from_secs(30)).await;

    assert_eq!(
        record_ttl(&js, &quick).await,
        None,
        "no record of a quick call"
    );
    assert_eq!(record_ttl(&js, &slow).await, Some(Some("300".into())));
    assert_eq!(record_ttl(&js, &later).await, Some(None));
    let stored = stack.record(slow.id).await;
    assert_eq!(stored.status, mcpq_schemas::JobStatus::Completed);

    // Audit entries are gathered, not one message each: 50 jobs more, then count.
    let jobs: Vec<Job> = (0..50).map(|n| mark(&format!("batch-{n}"), 0)).collect();
    for job in &jobs {
        stack.client.submit(job).await.unwrap();
    }
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    mcpq_tests::all_completed(&stack.client, &ids, Duration::from_secs(30)).await;
    let mut stream = js.get_stream(AUDIT_STREAM).await.unwrap();
    let entries = mcpq_tests::eventually("53 audit entries", Duration::from_secs(30), || {
        let stream = stream.clone();
        async move {
            let info = stream.get_info().await.ok()?;
            let mut entries = 0;
            for seq in info.state.first_sequence..=info.state.last_sequence {
                let message = stream.get_raw_message(seq).await.ok()?;
                let batch: AuditBatch = serde_json::from_slice(&message.payload).ok()?;
                entries += batch.entries.len();
            }
            (entries == 53).then_some(entries)
        }
    })
    .await;
    let messages = stream.info().await.unwrap().state.messages;
    assert!(
        messages * 4 < entries as u64,
        "{messages} messages for {entries} entries"
    );
    stack.stop().await;
}
