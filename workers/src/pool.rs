//! One server's pool in a worker: its config, upstream session, outbox, retry policy, rate
//! limiters, circuit breaker and 429 hold — what every attempt and the pull loop share.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use mcpq_schemas::{
    config::ServerConfig,
    worker::{CircuitState, ServerStats},
};
use tokio::sync::Notify;

use crate::{
    cancel::Cancels,
    circuit::{Breaker, State},
    decide::{RetryPolicy, Verdict},
    limit::Limiter,
    outbox::Outbox,
    upstream::Upstream,
};

/// Everything a worker needs to serve one server.
pub(crate) struct Pool {
    pub server: ServerConfig,
    pub upstream: Upstream,
    pub outbox: Outbox,
    pub retry: RetryPolicy,
    pub worker_id: String,
    /// The consumer's AckWait; progress acks go out every third of it.
    pub ack_wait: Duration,
    /// This worker's share of the server's rate limit, if it has one.
    pub limiter: Option<Arc<Limiter>>,
    /// Per-tool shares of rate limits, by upstream tool name.
    pub tool_limiters: HashMap<String, Arc<Limiter>>,
    /// The upstream's circuit breaker, if it has one; the pull loop asks it before pulling.
    pub breaker: Option<Mutex<Breaker>>,
    /// Signalled when the breaker opens or closes, so the heartbeat shows it at once.
    pub circuit_changed: Notify,
    /// No pulling before this: the upstream answered 429 with a `Retry-After`.
    pub held_until: Mutex<Option<Instant>>,
    /// Cancellation requests (shared by every pool of the process).
    pub cancels: Arc<Cancels>,
    /// What this worker did for the server, for its heartbeat.
    pub stats: Mutex<ServerStats>,
    /// The upstream as the health checks last saw it.
    pub up: Mutex<Option<bool>>,
    /// The server's metric handles.
    pub meters: crate::observe::Meters,
}

impl Pool {
    /// The circuit state to show operators.
    pub(crate) fn circuit_state(&self) -> CircuitState {
        let Some(breaker) = &self.breaker else {
            return CircuitState::Closed;
        };
        match breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state()
        {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Slows the whole pool down: nothing more is pulled for `pause`.
    pub(crate) fn hold(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut held = self
            .held_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }

    /// How long pulling must still wait, if the pool is held.
    pub(crate) fn held_for(&self) -> Option<Duration> {
        let held = *self
            .held_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.and_then(|until| until.checked_duration_since(Instant::now()))
    }

    /// Feeds a call's outcome to the circuit breaker, logging when it opens.
    pub(crate) fn breaker_record(&self, verdict: Verdict) {
        let Some(breaker) = &self.breaker else { return };
        let (before, after) = {
            let mut breaker = breaker.lock().unwrap_or_else(PoisonError::into_inner);
            let before = breaker.state();
            breaker.record(verdict, Instant::now());
            (before, breaker.state())
        };
        if std::mem::discriminant(&before) != std::mem::discriminant(&after) {
            self.circuit_changed.notify_one();
            crate::observe::circuit(self, self.circuit_state());
        }
        if matches!(after, State::Open { .. }) && !matches!(before, State::Open { .. }) {
            tracing::warn!(server = %self.server.name, "circuit open: the upstream keeps failing; its jobs wait in the queue");
        } else if matches!(after, State::Closed { failures: 0 })
            && matches!(before, State::HalfOpen { .. })
        {
            tracing::info!(server = %self.server.name, "circuit closed: the probe call succeeded");
        }
    }
}
