//! Routing replies back to waiting callers: one inbox subscription per process
//! (`<prefix>.*`), each call with its own token (`<prefix>.<n>`), demultiplexed by token to the
//! task that waits for it. Tokens rather than job ids, because two callers may wait on one job
//! (an idempotency key submitted twice).

use crate::{AbortOnDrop, lock};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::StreamExt;
use mcpq_schemas::{
    InputAck, InputRequestEvent, LogEvent, ProgressEvent, Reply, TaskEvent,
    names::{EVENT_INPUT, EVENT_LOG, EVENT_PROGRESS, EVENT_REPLY, EVENT_TASK, HDR_EVENT},
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
    /// The upstream made the call a task (SEP-2663): its questions now wait in the job's record.
    Task(Box<TaskEvent>),
}

impl Event {
    /// The job the event is about.
    pub fn job_id(&self) -> uuid::Uuid {
        match self {
            Event::Progress(e) => e.job_id,
            Event::Log(e) => e.job_id,
            Event::Input(e) => e.job_id,
            Event::Task(e) => e.job_id,
        }
    }
}

/// How many events a caller may leave unread. Beyond it, progress and log events are dropped
/// (the next ones still come; the reply always does), and a question is refused — the worker
/// tells the upstream nobody will answer — so a caller that stops reading costs a bounded
/// amount of memory.
pub const EVENTS_UNREAD: usize = 256;

/// A caller waiting on its inbox token: the job it waits for, where the reply goes, and its
/// events if wanted. A message on the token about another job is not taken.
struct Waiter {
    job_id: uuid::Uuid,
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

    /// Registers a wait for one reply of job `job_id` (and its events, to `events`); publish
    /// the job with `subject` as its reply inbox.
    pub(crate) fn expect(
        &self,
        job_id: uuid::Uuid,
        events: Option<mpsc::Sender<Event>>,
    ) -> Waiting {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(
            token,
            Waiter {
                job_id,
                reply: tx,
                events,
            },
        );
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
        Some(EVENT_TASK) => {
            Some(serde_json::from_slice(&message.payload).map(|e| Event::Task(Box::new(e))))
        }
        Some(_) => return None, // events of newer workers this version does not know
    };
    if let Some(event) = event {
        let waiter = lock(waiters)
            .get(&token)
            .map(|w| (w.job_id, w.events.clone()));
        let refused = match (event, waiter) {
            (Ok(event), Some((job_id, _))) if event.job_id() != job_id => {
                tracing::warn!(%job_id, other = %event.job_id(), "an event about another job on a call's inbox; not taken");
                Some("this inbox waits for another job")
            }
            (Ok(event), Some((_, Some(to)))) => match to.try_send(event) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(Event::Input(_))) => {
                    Some("the caller has too many events unread to be asked")
                }
                // That the call became a task is never dropped: it changes how it ends.
                Err(mpsc::error::TrySendError::Full(event @ Event::Task(_))) => {
                    tokio::spawn(async move {
                        let _ = to.send(event).await;
                    });
                    None
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
    let mut waiters = lock(waiters);
    match waiters.get(&token) {
        Some(waiter) if waiter.job_id == reply.job_id => {
            if let Some(waiter) = waiters.remove(&token) {
                let _ = waiter.reply.send(reply);
            }
        }
        Some(waiter) => {
            tracing::warn!(job_id = %waiter.job_id, other = %reply.job_id, "a reply about another job on a call's inbox; not taken");
        }
        None => {}
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(token: u64, event: Option<&str>, payload: serde_json::Value) -> async_nats::Message {
        let headers = event.map(|e| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(HDR_EVENT, e);
            h
        });
        let payload = bytes::Bytes::from(payload.to_string());
        async_nats::Message {
            subject: format!("_INBOX.test.{token}").into(),
            reply: Some("_INBOX.worker.ack".into()),
            length: payload.len(),
            payload,
            headers,
            status: None,
            description: None,
        }
    }

    /// A caller that stops reading: its progress beyond EVENTS_UNREAD is dropped, a question
    /// is refused with the reason, and the reply still arrives.
    #[test]
    fn a_caller_that_stops_reading_holds_a_bounded_backlog_and_still_gets_its_reply() {
        let waiters: Waiters = Arc::default();
        let (events, mut unread) = mpsc::channel(EVENTS_UNREAD);
        let (reply_tx, mut reply_rx) = oneshot::channel();
        let job = uuid::Uuid::now_v7();
        lock(&waiters).insert(
            7,
            Waiter {
                job_id: job,
                reply: reply_tx,
                events: Some(events),
            },
        );
        for step in 0..EVENTS_UNREAD + 100 {
            let progress = json!({"v": 1, "jobId": job, "progress": step});
            assert!(route(&waiters, message(7, Some(EVENT_PROGRESS), progress)).is_some());
        }
        let question = json!({"v": 1, "jobId": job, "id": "q", "method": "roots/list",
                              "params": {}, "answerTo": "mcpq.input.x.q"});
        let (_, ack) = route(&waiters, message(7, Some(EVENT_INPUT), question)).unwrap();
        assert!(!ack.ok);
        assert!(ack.reason.unwrap().contains("too many events unread"));
        // A reply about another job on the same inbox is not taken; the job's own is.
        let other = uuid::Uuid::now_v7();
        let forged = json!({"v": 1, "jobId": other, "status": "ok", "result": {"content": [{"type": "text", "text": "forged"}]}});
        assert!(route(&waiters, message(7, None, forged)).is_none());
        assert!(reply_rx.try_recv().is_err());
        let (_, ack) = route(
            &waiters,
            message(
                7,
                Some(EVENT_PROGRESS),
                json!({"v": 1, "jobId": other, "progress": 1}),
            ),
        )
        .unwrap();
        assert!(!ack.ok);
        let reply = json!({"v": 1, "jobId": job, "status": "ok", "result": {"content": []}});
        assert!(route(&waiters, message(7, None, reply)).is_none());
        assert_eq!(reply_rx.try_recv().unwrap().job_id, job);
        // Exactly the first EVENTS_UNREAD progress events were kept, in order.
        let mut kept = Vec::new();
        while let Ok(Event::Progress(p)) = unread.try_recv() {
            kept.push(p.progress.progress as usize);
        }
        assert_eq!(kept, (0..EVENTS_UNREAD).collect::<Vec<_>>());
    }
}
