//! Routing replies back to waiting callers: one inbox subscription per process
//! (`<prefix>.*`), each call with its own token (`<prefix>.<n>`), demultiplexed by token to the
//! task that waits for it. Tokens rather than job ids, because two callers may wait on one job
//! (an idempotency key submitted twice).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::StreamExt;
use mcpq_schemas::{
    InputAck, InputRequestEvent, LogEvent, ProgressEvent, Reply,
    names::{EVENT_INPUT, EVENT_LOG, EVENT_PROGRESS, EVENT_REPLY, HDR_EVENT},
};
use tokio::sync::{mpsc, oneshot};

/// What a worker reports on a caller's inbox before the reply, in the order it reported it.
///
/// Boxed, so that the channel every waiting call holds (tokio allocates room for 32 at once)
/// costs little while nothing is reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Progress(Box<ProgressEvent>),
    Log(Box<LogEvent>),
    /// The upstream asks the caller something; answer with [`crate::Client::answer`].
    Input(Box<InputRequestEvent>),
}

/// How many events a caller may leave unread. Beyond it, progress and log events are dropped
/// (the next ones still come; the reply always does), and a question is refused — the worker
/// tells the upstream nobody will answer — so a caller that stops reading costs a bounded
/// amount of memory.
pub const EVENTS_UNREAD: usize = 256;

/// A caller waiting on its inbox token: where the reply goes, and its events if wanted.
struct Waiter {
    reply: oneshot::Sender<Reply>,
    events: Option<mpsc::Sender<Event>>,
}

type Waiters = Arc<std::sync::Mutex<HashMap<u64, Waiter>>>;

/// The process's inbox: register a job id, then wait for its reply.
#[derive(Clone)]
pub(crate) struct Inbox {
    prefix: String,
    next: Arc<AtomicU64>,
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
    token: u64,
    /// The subject the reply must be sent to.
    pub subject: String,
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
            let client = client.clone();
            async move {
                while let Some(message) = subscription.next().await {
                    if let Some((reply, ack)) = route(&waiters, message) {
                        let body = serde_json::to_vec(&ack).unwrap_or_default();
                        let _ = client.publish(reply, body.into()).await;
                    }
                }
            }
        });
        Ok(Inbox {
            prefix,
            next: Arc::default(),
            waiters,
            _router: Arc::new(AbortOnDrop(router)),
        })
    }

    /// Registers a wait for one reply (and its events, to `events`); publish the job with
    /// `subject` as its reply inbox.
    pub(crate) fn expect(&self, events: Option<mpsc::Sender<Event>>) -> Waiting {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(token, Waiter { reply: tx, events });
        Waiting {
            token,
            subject: format!("{}.{token}", self.prefix),
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
        lock(&self.waiters).remove(&self.token);
    }
}

fn lock(waiters: &Waiters) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
    waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands the message to its waiter; for a question, what to answer the worker (it takes it if
/// someone waits for the call's events).
fn route(
    waiters: &Waiters,
    message: async_nats::Message,
) -> Option<(async_nats::Subject, InputAck)> {
    let event = message
        .headers
        .as_ref()
        .and_then(|h| h.get(HDR_EVENT))
        .map(|v| v.as_str().to_string());
    let token = message
        .subject
        .rsplit('.')
        .next()
        .and_then(|token| token.parse::<u64>().ok())?;
    let event = match event.as_deref() {
        None | Some(EVENT_REPLY) => None,
        Some(EVENT_PROGRESS) => {
            Some(serde_json::from_slice(&message.payload).map(|e| Event::Progress(Box::new(e))))
        }
        Some(EVENT_LOG) => {
            Some(serde_json::from_slice(&message.payload).map(|e| Event::Log(Box::new(e))))
        }
        Some(EVENT_INPUT) => {
            Some(serde_json::from_slice(&message.payload).map(|e| Event::Input(Box::new(e))))
        }
        Some(_) => return None, // events of newer workers this version does not know
    };
    if let Some(event) = event {
        let refused = match (event, lock(waiters).get(&token)) {
            (
                Ok(event),
                Some(Waiter {
                    events: Some(to), ..
                }),
            ) => match to.try_send(event) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(Event::Input(_))) => {
                    Some("the caller has too many events unread to be asked")
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!("a caller's events are unread; one dropped");
                    None
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Some("the caller stopped waiting for this call")
                }
            },
            (Err(_), _) => Some("this dispatcher cannot read the event"),
            (Ok(_), Some(_)) => Some("the caller waits for the reply only"),
            (Ok(_), None) => Some("nobody waits for this call any more"),
        };
        let ack = InputAck {
            ok: refused.is_none(),
            reason: refused.map(str::to_string),
        };
        return message.reply.map(|reply| (reply, ack));
    }
    let reply: Reply = match serde_json::from_slice(&message.payload) {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(subject = %message.subject, error = %e, "unreadable reply dropped");
            return None;
        }
    };
    if let Some(waiter) = lock(waiters).remove(&token) {
        let _ = waiter.reply.send(reply);
    }
    None
}
