//! Telling the world that a job ended: a [`DoneEvent`] on `mcpq.done.<server>` (core NATS, for
//! pipelines that listen), and, for a job with a `callbackUrl`, the same event stored in
//! `MCPQ_CALLBACKS` for the dispatchers to deliver. Workers announce the jobs they end, and
//! dispatchers the jobs they cancel before they start.

use async_nats::{HeaderMap, jetstream};

use crate::{
    DoneEvent, JobRecord,
    names::{HDR_MSG_ID, callback_subject, done_subject},
};

/// Announces that `record`'s job ended. The callback is stored before this returns (tried a
/// few times): a worker acks the job only after, so a callback is never lost to a crash. The
/// store deduplicates on the webhook id within its duplicate window. `listened`: the job keeps
/// a record (someone may come back for it), so its end is worth a message to listeners.
pub async fn announce(
    js: &jetstream::Context,
    record: &JobRecord,
    listened: bool,
) -> Result<(), jetstream::context::PublishError> {
    let wanted = record.callback_url.is_some();
    if !listened && !wanted {
        return Ok(());
    }
    let event = DoneEvent::of(record.clone());
    let Ok(body) = serde_json::to_vec(&event) else {
        return Ok(());
    };
    let _ = js
        .client()
        .publish(done_subject(&record.server), body.clone().into())
        .await;
    if !wanted {
        return Ok(());
    }
    let mut last = None;
    for _ in 0..3 {
        let mut headers = HeaderMap::new();
        headers.insert(HDR_MSG_ID, event.webhook_id().as_str());
        let stored = match js
            .publish_with_headers(
                callback_subject(&record.server),
                headers,
                body.clone().into(),
            )
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    match last {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
