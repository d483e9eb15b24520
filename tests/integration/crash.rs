//! Worker processes that die or are told to stop: no job is lost. A SIGKILLed worker's jobs are
//! redelivered and done by another worker; a SIGTERMed worker finishes what it runs, and what it
//! had not started is done by the next one, each job exactly once.

use std::time::Duration;

use mcpq_dispatcher::Client;
use mcpq_schemas::{Job, JobStatus, McpRequest, nats::connect};
use mcpq_tests::{fixture::HttpFixture, nats::NatsServer, stack::WorkerProcess};
use uuid::Uuid;

struct Rig {
    nats: NatsServer,
    web: HttpFixture,
    config: tempfile::NamedTempFile,
    client: Client,
}

async fn rig() -> Rig {
    mcpq_tests::init_logging();
    let nats = NatsServer::start();
    let web = HttpFixture::start().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    // A short AckWait: the jobs a SIGKILLed worker held come back soon.
    std::fs::write(
        config.path(),
        format!(
            "version: \"1.0\"\nservers:\n  - name: web\n    type: http\n    endpoint: {}\n    timeout: 2s\n    ackWait: 2s\n    concurrency: 8\n",
            web.url()
        ),
    )
    .unwrap();
    let nats_client = connect(&nats.url(), "test").await.unwrap();
    let js = async_nats::jetstream::new(nats_client.clone());
    mcpq_schemas::nats::ensure_topology(&js, &Default::default())
        .await
        .unwrap();
    let client = Client::new(nats_client).await.unwrap();
    Rig {
        nats,
        web,
        config,
        client,
    }
}

impl Rig {
    fn worker(&self, id: &str) -> WorkerProcess {
        WorkerProcess::spawn(self.config.path(), &self.nats.url(), id)
    }

    /// Submits `n` slow jobs (no reply inbox) and returns their ids.
    async fn submit_slow(&self, n: usize, ms: u64) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let job = Job::new(
                "web",
                McpRequest::call_tool("slow", serde_json::json!({"ms": ms}).as_object().cloned()),
            );
            self.client.submit(&job).await.expect("submitted");
            ids.push(job.id);
        }
        ids
    }

    /// Waits until the upstream has started a few calls: the first worker is mid-call.
    async fn upstream_busy(&self) {
        let web = &self.web;
        mcpq_tests::eventually(
            "the first worker to be mid-call",
            Duration::from_secs(30),
            || async move { (web.fixture.calls() >= 4).then_some(()) },
        )
        .await;
    }

    async fn all_completed(&self, ids: &[Uuid], within: Duration) {
        let client = self.client.clone();
        let ids = ids.to_vec();
        mcpq_tests::eventually("every job completed", within, || {
            let client = client.clone();
            let ids = ids.clone();
            async move {
                for id in ids {
                    if client.record(id).await.ok()??.status != JobStatus::Completed {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_sigkilled_worker_are_done_by_another() {
    let rig = rig().await;
    let first = rig.worker("first");
    let ids = rig.submit_slow(20, 1000).await;
    rig.upstream_busy().await;
    first.signal("KILL");
    drop(first);
    let _second = rig.worker("second");
    rig.all_completed(&ids, Duration::from_secs(90)).await;
    // At least once: calls cut off by the kill may have run twice, none is missing.
    assert!(rig.web.fixture.calls() >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_worker_finishes_its_calls_and_loses_nothing() {
    let rig = rig().await;
    let mut first = rig.worker("first");
    let ids = rig.submit_slow(40, 500).await;
    rig.upstream_busy().await;
    first.signal("TERM");
    let status = first
        .wait(Duration::from_secs(30))
        .await
        .expect("the worker exits after draining");
    assert!(status.success(), "a drained worker exits 0: {status}");
    let _second = rig.worker("second");
    rig.all_completed(&ids, Duration::from_secs(90)).await;
    assert_eq!(rig.web.fixture.calls(), 40, "every job ran exactly once");
}
