//! mcpq on a 3-node JetStream cluster (loopback routes, a store per node), everything at R3:
//! the leader of the job stream is SIGKILLed during 5,000 calls — every call is answered, none
//! runs twice, and the node rejoins with nobody doing anything.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use mcpq_dispatcher::Client;
use mcpq_schemas::{Job, McpRequest, Outcome, names::jobs_stream, nats::connect};
use mcpq_tests::{eventually, fixture::HttpFixture, mcpq_bin, nats::NatsCluster};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_5000_calls_loses_none_runs_none_twice_and_rejoins() {
    let _exclusive = mcpq_tests::exclusive().await;
    let mut cluster = NatsCluster::start(3);
    let web = HttpFixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcp.yaml");
    std::fs::write(
        &config,
        format!(
            "version: \"1.0\"\nnats: {{replicas: 3}}\nservers:\n  - {{name: web, type: http, endpoint: \"{}\", concurrency: 64, timeout: 30s}}\n",
            web.url()
        ),
    )
    .unwrap();
    // JetStream in a cluster answers once its meta leader is elected.
    let url = cluster.url();
    let nats = eventually("the cluster's JetStream", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let nats = connect(&url, "cluster-test").await.ok()?;
            let js = async_nats::jetstream::new(nats.clone());
            js.query_account().await.ok()?;
            Some(nats)
        }
    })
    .await;
    let worker = |i: usize| {
        tokio::process::Command::new(mcpq_bin())
            .args(["worker", "--config"])
            .arg(&config)
            .args([
                "--nats",
                &url,
                "--id",
                &format!("w{i}"),
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .env("MCPQ_LOG", "warn")
            .stderr(std::fs::File::create(dir.path().join(format!("w{i}.log"))).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    // The first worker lays the streams out; the second joins the layout once it exists.
    let mut workers = vec![worker(0)];
    let client = Client::new(nats.clone()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    // The workers have laid out the queue (R3) and take jobs.
    eventually("a first call", Duration::from_secs(180), || {
        let client = client.clone();
        async move {
            let job = Job::new(
                "web",
                McpRequest::call_tool("echo", json!({"text": "hi"}).as_object().cloned()),
            );
            client.call(&job, Duration::from_secs(5)).await.ok()
        }
    })
    .await;
    workers.push(worker(1));
    let info = js
        .get_stream(jobs_stream("web"))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();
    let victim: usize = leader.trim_start_matches('n').parse().unwrap();

    // 5,000 calls, 64 at a time; the stream's leader dies after the first 1,000 answers. A caller
    // whose reply was lost with its connection reads the job's record instead.
    let answered = Arc::new(AtomicUsize::new(0));
    let (calling, counting) = (client.clone(), answered.clone());
    let calls = (0..5000).map(move |i| {
        let (client, answered) = (calling.clone(), counting.clone());
        async move {
            // With an idempotency key a caller may simply call again when it heard nothing: a
            // job already stored is not stored twice, and one already done answers from its
            // record.
            let job = Job::new(
                "web",
                McpRequest::call_tool("mark", json!({"tag": format!("t{i}")}).as_object().cloned()),
            )
            .with_idempotency_key(format!("t{i}"));
            let reply = eventually(
                "an answer, calling again while none comes",
                Duration::from_secs(300),
                || {
                    let (client, job) = (client.clone(), job.clone());
                    async move { client.call(&job, Duration::from_secs(20)).await.ok() }
                },
            )
            .await;
            answered.fetch_add(1, Ordering::SeqCst);
            reply
        }
    });
    let load = tokio::spawn(
        futures::stream::iter(calls)
            .buffer_unordered(64)
            .collect::<Vec<_>>(),
    );
    eventually("1,000 answers", Duration::from_secs(120), || {
        let n = answered.load(Ordering::SeqCst);
        async move { (n >= 1000).then_some(()) }
    })
    .await;
    cluster.kill_node(victim);
    let replies = tokio::time::timeout(Duration::from_secs(600), load)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replies.len(), 5000);
    let failed: Vec<_> = replies
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Ok { .. }))
        .collect();
    assert!(
        failed.is_empty(),
        "{} calls failed, first {:?}",
        failed.len(),
        failed.first()
    );
    let marks = web.fixture.marks();
    let mut seen = std::collections::HashMap::<&str, u32>::new();
    for tag in &marks {
        *seen.entry(tag.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    assert_eq!(seen.len(), 5000, "every call ran");

    // The node comes back and catches up on its own.
    cluster.start_node(victim);
    eventually(
        "the job stream at 3 current replicas",
        Duration::from_secs(120),
        || {
            let js = js.clone();
            async move {
                let mut stream = js.get_stream(jobs_stream("web")).await.ok()?;
                let info = stream.info().await.ok()?;
                let cluster = info.cluster.as_ref()?;
                let current = cluster
                    .replicas
                    .iter()
                    .filter(|p| p.current && !p.offline)
                    .count();
                (cluster.leader.is_some() && current == 2).then_some(())
            }
        },
    )
    .await;
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_replica_count_is_applied_in_place() {
    let _exclusive = mcpq_tests::exclusive().await;
    use mcpq_schemas::nats::{Topology, ensure_topology};
    let cluster = NatsCluster::start(3);
    let url = cluster.url();
    let js = eventually("the cluster's JetStream", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let js = async_nats::jetstream::new(connect(&url, "replicas-test").await.ok()?);
            js.query_account().await.ok()?;
            Some(js)
        }
    })
    .await;
    let topology = |replicas| Topology {
        replicas,
        queues: vec![("web".into(), 1000)],
        ..Topology::default()
    };
    let replicas = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_stream(name)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .config
                .num_replicas
        }
    };
    ensure_topology(&js, &topology(1)).await.unwrap();
    let stream = js.get_stream("MCPQ_JOBS_web").await.unwrap();
    assert_eq!(stream.cached_info().config.num_replicas, 1);
    // A job queued at R1 is still there at R3: the change is made in place.
    let ack = js
        .publish("mcpq.jobs.web.normal", "queued before".into())
        .await
        .unwrap();
    ack.await.unwrap();
    ensure_topology(&js, &topology(3)).await.unwrap();
    for name in [
        "MCPQ_JOBS_web",
        "MCPQ_DLQ",
        "MCPQ_AUDIT",
        "KV_mcpq_results",
        "KV_mcpq_health",
        "OBJ_mcpq_blobs",
    ] {
        assert_eq!(replicas(name).await, 3, "{name}");
    }
    let mut stream = js.get_stream("MCPQ_JOBS_web").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    // And back down.
    ensure_topology(&js, &topology(1)).await.unwrap();
    assert_eq!(replicas("KV_mcpq_results").await, 1);
}
