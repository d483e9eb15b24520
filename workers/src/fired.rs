//! What a server's schedules fired, moved to its lanes. JetStream fires a job for later or a
//! recurring schedule's tick onto `mcpq.fired.<server>.<lane>` in the schedules stream (a
//! schedule's target must be in its own stream, and a jobs stream, which refuses jobs beyond
//! `maxQueued`, cannot hold schedules). The server's workers share one durable consumer of
//! those subjects and publish each message to its lane as it is — body, seal and headers —
//! acking it only once the jobs stream has stored it: nothing is lost between the two streams,
//! and a lane that is full keeps the fired job waiting here instead of refusing it.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{
        self, AckKind,
        consumer::{AckPolicy, pull},
    },
};
use futures::StreamExt;
use mcpq_schemas::{
    Lane,
    names::{
        HDR_MSG_ID, HDR_SCHEDULE_NEXT, HDR_SCHEDULER, HDR_TICK, SCHEDULES_STREAM, fired_consumer,
        fired_subjects, job_subject,
    },
};
use tokio_util::sync::CancellationToken;

/// How long a fired job waits before it is offered to a full lane again.
const FULL_WAIT: Duration = Duration::from_secs(1);

/// Moves what `server`'s schedules fire to its lanes until `shutdown`.
pub(crate) async fn run(
    js: jetstream::Context,
    server: String,
    fair: bool,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match relay(&js, &server, fair, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(%server, error = %e, retry = ?backoff, "cannot read what the schedules fired; binding again");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn relay(
    js: &jetstream::Context,
    server: &str,
    fair: bool,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let consumer = js
        .get_stream(SCHEDULES_STREAM)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(fired_consumer(server)),
            description: Some(format!(
                "mcpq workers of server {server}: what its schedules fired, to its lanes"
            )),
            filter_subject: fired_subjects(server),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => match next {
                Some(message) => message?,
                None => return Err("the consumer's message stream ended".into()),
            },
        };
        let kind = move_to_lane(js, server, fair, &message).await;
        let _ = message.ack_with(kind).await;
    }
}

/// Publishes one fired message to its lane; the ack it then gets.
async fn move_to_lane(
    js: &jetstream::Context,
    server: &str,
    fair: bool,
    message: &jetstream::Message,
) -> AckKind {
    let lane = message
        .subject
        .rsplit('.')
        .next()
        .and_then(|token| serde_json::from_value::<Lane>(token.into()).ok())
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    let mut tick = None;
    let mut scheduler = None;
    if let Some(fired) = &message.headers {
        for (name, values) in fired.iter() {
            let name: &str = name.as_ref();
            if name == HDR_SCHEDULE_NEXT {
                tick = values.first().map(|v| v.as_str().to_string());
            } else if name == HDR_SCHEDULER {
                scheduler = values.first().map(|v| v.as_str().to_string());
            }
            // JetStream's own headers stay behind; mcpq's (job id, seal, reply inbox,
            // traceparent) travel on.
            if name.starts_with("Nats-") {
                continue;
            }
            for value in values {
                headers.append(name, value.as_str());
            }
        }
    }
    // A recurring schedule's tick names itself (`purge` is a one-shot's, not a tick).
    if let Some(tick) = tick.as_deref().filter(|t| *t != "purge") {
        headers.insert(HDR_TICK, tick);
    }
    // A relay retried after its ack was lost publishes the same message id: one job.
    let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    let msg_id = format!(
        "fired:{}:{}",
        scheduler.as_deref().unwrap_or(message.subject.as_str()),
        tick.as_deref().unwrap_or(&stream_seq.to_string())
    );
    headers.insert(HDR_MSG_ID, msg_id.as_str());
    // With fair shares, a principal's job waits in that principal's queue of the lane.
    let principal = fair
        .then(|| serde_json::from_slice::<serde_json::Value>(&message.payload).ok())
        .flatten()
        .and_then(|job| job.get("principal")?.as_str().map(str::to_string));
    let subject = match principal {
        Some(principal) => mcpq_schemas::names::tenant_subject(
            server,
            lane,
            &mcpq_schemas::names::tenant_token(&principal),
        ),
        None => job_subject(server, lane),
    };
    let stored = match js
        .publish_with_headers(subject.clone(), headers, message.payload.clone())
        .await
    {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(_) => AckKind::Ack,
        Err(e) if mcpq_schemas::nats::is_queue_full(&e) => {
            tracing::info!(%server, %subject, "a fired job waits: the lane is full");
            AckKind::Nak(Some(FULL_WAIT))
        }
        Err(e) => {
            tracing::warn!(%server, %subject, error = %e, "cannot move a fired job to its lane; trying again");
            AckKind::Nak(Some(FULL_WAIT))
        }
    }
}
