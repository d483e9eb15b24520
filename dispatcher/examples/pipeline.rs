//! A Rust pipeline on mcpq without HTTP: submit calls for later, wait for them, run a batch,
//! cancel a job — all over NATS with `mcpq_dispatcher::Client`.
//!
//!     cargo run -p mcpq-dispatcher --example pipeline -- nats://127.0.0.1:4222 time get_current_time '{"timezone": "UTC"}'

use std::time::Duration;

use mcpq_dispatcher::{Cancel, Client};
use mcpq_schemas::{Job, McpRequest, Outcome, nats::connect};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, server, tool, arguments] = args.as_slice() else {
        anyhow::bail!("usage: pipeline NATS_URL SERVER TOOL JSON_ARGUMENTS");
    };
    let arguments = serde_json::from_str::<serde_json::Value>(arguments)?
        .as_object()
        .cloned();
    let client = Client::new(connect(url, "example-pipeline").await?).await?;
    let call = || Job::new(server, McpRequest::call_tool(tool, arguments.clone()));

    // Submit for later: the job is stored (record `queued`, message in JetStream) when this
    // returns; nobody has to wait on an inbox.
    let job = call().with_idempotency_key("example-1");
    client.submit(&job).await?;
    // ...later, from this process or any other: wait for it (or read `client.record(id)`).
    match client.wait(job.id, Duration::from_secs(60)).await?.outcome {
        Outcome::Ok { result } => println!("job {}: {result}", job.id),
        Outcome::Error { error } => println!("job {} failed: {error}", job.id),
    }

    // A batch: stored under one id, its jobs submitted 64 at a time, counted and read back in
    // input order.
    let jobs: Vec<Job> = (0..3)
        .map(|i| call().with_idempotency_key(format!("example-batch-{i}")))
        .collect();
    let batch = client.submit_batch(uuid::Uuid::now_v7(), &jobs).await?;
    for job in &jobs {
        client.wait(job.id, Duration::from_secs(60)).await?;
    }
    let status = client.batch_status(&batch).await?;
    println!(
        "batch {}: {} of {} completed",
        batch.batch_id, status.completed, status.total
    );
    for line in client.batch_results(&batch).await? {
        println!("  line {}: {:?}", line.index, line.status);
    }

    // Cancel: a queued job never runs; a running one has its upstream request cancelled.
    let job = call();
    client.submit(&job).await?;
    match client
        .cancel(job.id, Some("changed my mind".into()))
        .await?
    {
        Cancel::Requested(record) => println!("cancel requested: job is {:?}", record.status),
        Cancel::AlreadyEnded(record) => println!("too late: job is {:?}", record.status),
        Cancel::NotFound => println!("no such job"),
    }
    Ok(())
}
