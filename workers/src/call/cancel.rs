//! Stopping a call that runs: a caller's cancellation (every request stored in KV
//! `mcpq_cancels`, watched from start), the drain deadline, or the worker finding that its job
//! was delivered to another attempt. Whichever it is, the call's [`Interrupt`] fires, the
//! upstream is told (`notifications/cancelled`, or the request stream closed), and the attempt
//! reads why.
//!
//! A job is registered as running *before* the worker looks for a request, and a request marks
//! the job before it looks for it among the running ones, so a request that races the start of
//! a call is seen by one side or the other.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use async_nats::jetstream::kv;
use futures::StreamExt;
use mcpq_schemas::CancelRequest;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::lock;

/// Why a running call was stopped; the first reason given sticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Why {
    /// Someone asked (`DELETE /v1/jobs/{id}`, MCP `notifications/cancelled`, `tasks/cancel`),
    /// with their reason.
    Cancelled(Option<String>),
    /// The worker is stopping and the drain deadline passed: the job goes back to the queue.
    Draining,
    /// JetStream gave the job to another attempt (this one stopped past AckWait).
    Lost,
}

/// Stops one call. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Interrupt {
    token: CancellationToken,
    why: Arc<OnceLock<Why>>,
    /// Set once the delivery holds the job (claimed it, or is about to call): only then does
    /// it count as running the job here.
    active: Arc<std::sync::atomic::AtomicBool>,
}

impl Interrupt {
    /// The delivery holds the job from now on.
    pub(crate) fn activate(&self) {
        self.active.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The delivery does not hold the job after all (its claim did not land).
    pub(crate) fn deactivate(&self) {
        self.active
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the call for `why`, unless it was stopped already.
    pub(crate) fn fire(&self, why: Why) {
        let _ = self.why.set(why);
        self.token.cancel();
    }

    pub(crate) async fn fired(&self) {
        self.token.cancelled().await;
    }

    /// Why the call was stopped, if it was.
    pub(crate) fn why(&self) -> Option<&Why> {
        self.why.get()
    }
}

/// Cancellation requests heard so far and the jobs running in this process.
#[derive(Default)]
pub(crate) struct Cancels {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Requests by job id, with when they were heard (for forgetting them after the bucket's TTL).
    requested: HashMap<Uuid, (CancelRequest, Instant)>,
    /// The jobs running here; several deliveries of one job may run at once (a redelivery
    /// while the first still holds it), each with its own interrupt.
    running: HashMap<Uuid, Vec<Interrupt>>,
}

/// A job registered as running; unregisters on drop.
pub(crate) struct Running {
    pub interrupt: Interrupt,
    job_id: Uuid,
    cancels: Arc<Cancels>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = lock(&self.cancels.state);
        if let Some(runs) = state.running.get_mut(&self.job_id) {
            runs.retain(|run| !Arc::ptr_eq(&run.why, &self.interrupt.why));
            if runs.is_empty() {
                state.running.remove(&self.job_id);
            }
        }
    }
}

impl Cancels {
    /// Registers `job_id` as running here, stopped by `interrupt`; it fires at once if a
    /// request for the job was heard before.
    pub(crate) fn start(self: &Arc<Self>, job_id: Uuid, interrupt: Interrupt) -> Running {
        let mut state = lock(&self.state);
        if let Some((request, _)) = state.requested.get(&job_id) {
            interrupt.fire(Why::Cancelled(request.reason.clone()));
        }
        state
            .running
            .entry(job_id)
            .or_default()
            .push(interrupt.clone());
        Running {
            interrupt,
            job_id,
            cancels: self.clone(),
        }
    }

    /// Whether an attempt at `job_id` other than the one `mine` stops holds the job in this
    /// process now.
    pub(crate) fn runs_elsewhere(&self, job_id: &Uuid, mine: &Interrupt) -> bool {
        lock(&self.state).running.get(job_id).is_some_and(|runs| {
            runs.iter()
                .any(|run| run.is_active() && !Arc::ptr_eq(&run.why, &mine.why))
        })
    }

    /// Whether an attempt holds `job_id` in this process now.
    fn is_running(&self, job_id: &Uuid) -> bool {
        lock(&self.state)
            .running
            .get(job_id)
            .is_some_and(|runs| runs.iter().any(Interrupt::is_active))
    }

    /// Stops every call running here (the drain deadline passed).
    pub(crate) fn interrupt_all(&self, why: &Why) {
        for runs in lock(&self.state).running.values() {
            for run in runs {
                run.fire(why.clone());
            }
        }
    }

    fn heard(&self, request: CancelRequest, ttl: Duration) {
        let mut state = lock(&self.state);
        for run in state.running.get(&request.job_id).into_iter().flatten() {
            run.fire(Why::Cancelled(request.reason.clone()));
        }
        let now = Instant::now();
        state
            .requested
            .retain(|_, (_, at)| now.duration_since(*at) < ttl);
        state.requested.insert(request.job_id, (request, now));
    }
}

/// Answers, on `mcpq.holds.<this worker>`, whether a job runs here: a worker that finds a job
/// claimed by this one asks before it takes it over (a worker that does not answer — gone, or
/// frozen — holds nothing it can finish).
pub(crate) async fn answer_holds(
    nats: async_nats::Client,
    worker_id: &str,
    cancels: Arc<Cancels>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::Error> {
    let subject = mcpq_schemas::names::holds_subject(&mcpq_schemas::names::worker_key(worker_id));
    let mut asked = nats.subscribe(subject).await?;
    tokio::spawn(async move {
        loop {
            let question = tokio::select! {
                () = shutdown.cancelled() => return,
                question = asked.next() => match question {
                    Some(question) => question,
                    None => return,
                },
            };
            let held = std::str::from_utf8(&question.payload)
                .ok()
                .and_then(|id| id.trim().parse::<Uuid>().ok())
                .is_some_and(|id| cancels.is_running(&id));
            if let Some(reply) = question.reply {
                let answer: &'static [u8] = if held { b"yes" } else { b"no" };
                let _ = nats.publish(reply, answer.into()).await;
            }
        }
    });
    Ok(())
}

/// Asks the worker `holder` whether it runs `job_id`: `None` when it does not answer within
/// `within` (gone, or frozen).
pub(crate) async fn holds(
    nats: &async_nats::Client,
    holder: &str,
    job_id: &Uuid,
    within: Duration,
) -> Option<bool> {
    let subject = mcpq_schemas::names::holds_subject(&mcpq_schemas::names::worker_key(holder));
    match tokio::time::timeout(within, nats.request(subject, job_id.to_string().into())).await {
        Ok(Ok(answer)) => Some(answer.payload.as_ref() == b"yes"),
        Ok(Err(_)) | Err(_) => None,
    }
}

/// Loads every stored request, then follows new ones until `shutdown`. Returns once the
/// stored ones are loaded (the caller starts pulling jobs only then) and keeps following in a
/// task of its own.
pub(crate) async fn follow(
    bucket: kv::Store,
    cancels: Arc<Cancels>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::Error> {
    let ttl = bucket
        .status()
        .await
        .map(|s| s.max_age())
        .ok()
        .filter(|ttl| !ttl.is_zero())
        .unwrap_or(Duration::from_secs(24 * 3600));
    let stored = bucket.status().await.map(|s| s.values()).unwrap_or(0);
    let mut updates = bucket.watch_with_history(">").await?;
    let mut loaded = 0;
    while loaded < stored {
        // Entries carry how many more are pending; the history is loaded when it reaches 0.
        match tokio::time::timeout(Duration::from_secs(5), updates.next()).await {
            Ok(Some(Ok(entry))) => {
                loaded += 1;
                if let Some(request) = decode(&entry) {
                    cancels.heard(request, ttl);
                }
                if entry.delta == 0 {
                    break;
                }
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => break,
        }
    }
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = updates.next() => next,
            };
            match next {
                Some(Ok(entry)) => {
                    if let Some(request) = decode(&entry) {
                        tracing::info!(job_id = %request.job_id, "cancellation requested");
                        cancels.heard(request, ttl);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "cancellation watch interrupted"),
                None => {
                    tracing::warn!("cancellation watch ended; following again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    match bucket.watch(">").await {
                        Ok(again) => updates = again,
                        Err(e) => tracing::warn!(error = %e, "cannot watch cancellations"),
                    }
                }
            }
        }
    });
    Ok(())
}

fn decode(entry: &kv::Entry) -> Option<CancelRequest> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    serde_json::from_slice(&entry.value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(job_id: Uuid) -> CancelRequest {
        CancelRequest {
            v: 1,
            job_id,
            server: "s".into(),
            at_ms: 0,
            reason: Some("enough".into()),
        }
    }

    #[test]
    fn a_request_heard_before_the_start_fires_at_once_and_the_first_reason_sticks() {
        let cancels = Arc::new(Cancels::default());
        let id = Uuid::now_v7();
        cancels.heard(request(id), Duration::from_secs(60));
        let running = cancels.start(id, Interrupt::default());
        assert_eq!(
            running.interrupt.why(),
            Some(&Why::Cancelled(Some("enough".into())))
        );
        running.interrupt.fire(Why::Draining);
        assert!(matches!(running.interrupt.why(), Some(Why::Cancelled(_))));
    }

    #[test]
    fn every_delivery_running_here_is_reached_and_unregisters_alone() {
        let cancels = Arc::new(Cancels::default());
        let id = Uuid::now_v7();
        let first = cancels.start(id, Interrupt::default());
        let second = cancels.start(id, Interrupt::default());
        assert!(
            !cancels.is_running(&id),
            "registered, not yet holding the job"
        );
        first.interrupt.activate();
        second.interrupt.activate();
        assert!(cancels.is_running(&id));
        assert!(cancels.runs_elsewhere(&id, &second.interrupt));
        drop(first);
        assert!(cancels.is_running(&id), "the second delivery still runs");
        assert!(
            !cancels.runs_elsewhere(&id, &second.interrupt),
            "only itself"
        );
        cancels.interrupt_all(&Why::Draining);
        assert_eq!(second.interrupt.why(), Some(&Why::Draining));
        drop(second);
        assert!(!cancels.is_running(&id));
    }
}
