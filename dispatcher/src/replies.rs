//! Routing replies back to waiting callers: one inbox subscription per process
//! (`<prefix>.<job id>`), demultiplexed by job id to the task that waits for it.

use std::{collections::HashMap, sync::Arc};

use futures::StreamExt;
use mcpq_schemas::{
    Reply,
    names::{EVENT_REPLY, HDR_EVENT},
};
use tokio::sync::oneshot;
use uuid::Uuid;

type Waiters = Arc<std::sync::Mutex<HashMap<Uuid, oneshot::Sender<Reply>>>>;

/// The process's inbox: register a job id, then wait for its reply.
#[derive(Clone)]
pub(crate) struct Inbox {
    prefix: String,
    waiters: Waiters,
    _router: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A registered wait for one job's reply; dropping it unregisters.
pub(crate) struct Waiting {
    job_id: Uuid,
    rx: Option<oneshot::Receiver<Reply>>,
    waiters: Waiters,
}

impl Inbox {
    pub(crate) async fn open(
        client: &async_nats::Client,
    ) -> Result<Inbox, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let mut subscription = client.subscribe(format!("{prefix}.*")).await?;
        let waiters: Waiters = Arc::default();
        let router = tokio::spawn({
            let waiters = waiters.clone();
            async move {
                while let Some(message) = subscription.next().await {
                    route(&waiters, message);
                }
            }
        });
        Ok(Inbox {
            prefix,
            waiters,
            _router: Arc::new(AbortOnDrop(router)),
        })
    }

    /// The subject a job's reply must be sent to.
    pub(crate) fn subject(&self, job_id: Uuid) -> String {
        format!("{}.{job_id}", self.prefix)
    }

    /// Registers interest in `job_id`'s reply; do this before publishing the job.
    pub(crate) fn expect(&self, job_id: Uuid) -> Waiting {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(job_id, tx);
        Waiting {
            job_id,
            rx: Some(rx),
            waiters: self.waiters.clone(),
        }
    }
}

impl Waiting {
    /// The reply, or `None` if the inbox closed.
    pub(crate) async fn reply(mut self) -> Option<Reply> {
        self.rx.take()?.await.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.waiters).remove(&self.job_id);
    }
}

fn lock(waiters: &Waiters) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<Reply>>> {
    waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn route(waiters: &Waiters, message: async_nats::Message) {
    let event = message
        .headers
        .as_ref()
        .and_then(|h| h.get(HDR_EVENT))
        .map(|v| v.as_str().to_string());
    if event.as_deref().is_some_and(|e| e != EVENT_REPLY) {
        return; // progress and other events: not routed yet
    }
    let Some(job_id) = message
        .subject
        .rsplit('.')
        .next()
        .and_then(|token| token.parse::<Uuid>().ok())
    else {
        return;
    };
    let reply: Reply = match serde_json::from_slice(&message.payload) {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(%job_id, error = %e, "unreadable reply dropped");
            return;
        }
    };
    if let Some(tx) = lock(waiters).remove(&job_id) {
        let _ = tx.send(reply);
    }
}
