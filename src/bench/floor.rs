//! Floor mode: the physical limit of the queue hop on this machine. A work-queue stream of its
//! own, a responder that pulls each message, answers on the caller's inbox with core NATS and
//! acks — mcpq's own path without MCP, JSON or KV. The stream is deleted afterwards... by the
//! next run, which recreates it empty.

use std::{sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{self, consumer::pull, stream},
};
use futures::StreamExt;
use mcpq_schemas::nats::connect;

use super::{CallFuture, Caller};

const STREAM: &str = "MCPQ_BENCH_FLOOR";
const SUBJECT: &str = "mcpq-bench.floor";
const REPLY_HEADER: &str = "Bench-Reply-To";

pub(super) async fn caller(url: &str, payload_bytes: usize) -> Result<Caller, String> {
    let nats = connect(url, "mcpq-bench-floor")
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(nats.clone());
    let _ = js.delete_stream(STREAM).await;
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create the floor stream: {e}"))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("floor".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    // The responder: its own connection, like a worker.
    let responder = connect(url, "mcpq-bench-floor-responder")
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let responder = responder.clone();
            tokio::spawn(async move {
                if let Some(inbox) = message.headers.as_ref().and_then(|h| h.get(REPLY_HEADER)) {
                    let _ = responder
                        .publish(inbox.to_string(), message.payload.clone())
                        .await;
                }
                let _ = message.ack().await;
            });
        }
    });
    let payload = bytes::Bytes::from(vec![b'x'; payload_bytes]);
    Ok(Arc::new(move || -> CallFuture {
        let nats = nats.clone();
        let js = js.clone();
        let payload = payload.clone();
        Box::pin(async move {
            let inbox = nats.new_inbox();
            let mut sub = nats
                .subscribe(inbox.clone())
                .await
                .map_err(|_| "subscribe".to_string())?;
            let mut headers = HeaderMap::new();
            headers.insert(REPLY_HEADER, inbox.as_str());
            js.publish_with_headers(SUBJECT, headers, payload)
                .await
                .map_err(|_| "publish".to_string())?
                .await
                .map_err(|_| "puback".to_string())?;
            match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                Ok(Some(_)) => Ok(()),
                _ => Err("timeout".into()),
            }
        })
    }))
}
