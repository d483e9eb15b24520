//! May this run now? One server's gate in a worker: its circuit breaker ([`circuit`]), the
//! pause an upstream asked for with HTTP 429 `Retry-After`, its rate limits ([`limit`]), and
//! the share of free slots between lanes ([`lanes`]). The pull loop asks it before pulling;
//! every attempt, first or retry, asks it before calling the upstream.

pub(crate) mod circuit;
mod lanes;
mod limit;
pub(crate) mod shares;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

// tokio's clock, so that paused time drives the gate in tests; the breaker takes it as std's.
use tokio::time::Instant;

use mcpq_schemas::{config::ServerConfig, worker::CircuitState};

use self::{
    circuit::{Breaker, State},
    limit::Limiter,
};
pub(crate) use self::{
    circuit::{Count, Ticket},
    lanes::Picker,
    shares::Shares,
};
use crate::{lock, report::Report, upstream::Verdict};

pub(crate) struct Gate {
    breaker: Option<Mutex<Breaker>>,
    /// No calls before this: the upstream answered 429 with a `Retry-After`.
    held_until: Mutex<Option<Instant>>,
    /// This worker's share of the server's rate limit, if it has one.
    limiter: Option<Limiter>,
    /// Per-tool shares of rate limits, by upstream tool name.
    tool_limiters: HashMap<String, Limiter>,
    report: Arc<Report>,
}

impl Gate {
    pub(crate) fn new(server: &ServerConfig, report: Arc<Report>) -> Gate {
        let limiter = |l| Limiter::new(l, report.peers.clone());
        Gate {
            breaker: server
                .circuit_breaker
                .map(|c| Mutex::new(Breaker::new(c.failure_threshold, c.reset_timeout))),
            held_until: Mutex::new(None),
            limiter: server.rate_limit.map(limiter),
            tool_limiters: server
                .tool_rate_limits
                .iter()
                .map(|(tool, l)| (tool.clone(), limiter(*l)))
                .collect(),
            report,
        }
    }

    /// May the pull loop take jobs now? An open circuit or a 429 pause hold it; a circuit
    /// due for its probe says so.
    pub(crate) fn pull(&self) -> circuit::Gate {
        if let Some(pause) = self.held_for() {
            return circuit::Gate::Wait(pause);
        }
        let Some(breaker) = &self.breaker else {
            return circuit::Gate::Pull;
        };
        let (before, gate, after) = {
            let mut breaker = lock(breaker);
            let before = breaker.state();
            let gate = breaker.gate(Instant::now().into_std());
            (before, gate, breaker.state())
        };
        self.changed(before, after);
        gate
    }

    /// May an attempt call the upstream now? The ticket it is let through with, or how long
    /// its job should wait (its attempt not spent).
    pub(crate) fn admit(&self) -> Result<Option<Ticket>, Duration> {
        if let Some(pause) = self.held_for() {
            return Err(pause);
        }
        match &self.breaker {
            None => Ok(None),
            Some(breaker) => lock(breaker).admit(Instant::now().into_std()).map(Some),
        }
    }

    /// Feeds the verdict of a call let through with `ticket` to the breaker; says whether a
    /// failure counts against the job's attempts.
    pub(crate) fn record(&self, verdict: Verdict, ticket: Option<Ticket>) -> Count {
        let Some(breaker) = &self.breaker else {
            return Count::Counted;
        };
        let (before, count, after) = {
            let mut breaker = lock(breaker);
            let before = breaker.state();
            let count = breaker.record(verdict, ticket, Instant::now().into_std());
            (before, count, breaker.state())
        };
        self.changed(before, after);
        count
    }

    /// Feeds the verdict of the breaker's own probe.
    pub(crate) fn probed(&self, verdict: Verdict) {
        if let Some(breaker) = &self.breaker {
            let (before, after) = {
                let mut breaker = lock(breaker);
                let before = breaker.state();
                breaker.record(verdict, None, Instant::now().into_std());
                (before, breaker.state())
            };
            self.changed(before, after);
        }
    }

    /// The upstream asked for a pause (429 `Retry-After`): no call for `pause`.
    pub(crate) fn hold(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut held = lock(&self.held_until);
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }

    fn held_for(&self) -> Option<Duration> {
        let held = *lock(&self.held_until);
        held.and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// Waits until the rate limits let one more call of `tool` through; how long it waited,
    /// if the server has limits.
    pub(crate) async fn limit(&self, tool: Option<&str>) -> Option<Duration> {
        let tool_limiter = tool.and_then(|t| self.tool_limiters.get(t));
        if self.limiter.is_none() && tool_limiter.is_none() {
            return None;
        }
        let started = Instant::now();
        if let Some(limiter) = &self.limiter {
            limiter.ready().await;
        }
        if let Some(limiter) = tool_limiter {
            limiter.ready().await;
        }
        Some(started.elapsed())
    }

    /// Shows a change of the circuit's state (metrics, heartbeat, log).
    fn changed(&self, before: State, after: State) {
        if std::mem::discriminant(&before) == std::mem::discriminant(&after) {
            return;
        }
        let server = &self.report.server;
        let state = match after {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        };
        self.report.circuit(state);
        match (before, after) {
            (State::Closed { .. }, State::Open { .. }) => {
                tracing::warn!(%server, "circuit open: the upstream keeps failing; its jobs wait in the queue");
            }
            (State::HalfOpen { .. }, State::Closed { .. }) => {
                tracing::info!(%server, "circuit closed: the probe was answered");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        let config = mcpq_schemas::config::Config::from_yaml(
            "version: \"1.0\"\nservers:\n  - {name: s, type: http, endpoint: \"http://127.0.0.1:9/mcp\", circuitBreaker: {failureThreshold: 2, resetTimeout: 30s}}\n",
        )
        .unwrap();
        Gate::new(
            config.server("s").unwrap(),
            Arc::new(Report::new("s", "w", None)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pause_holds_pulls_and_attempts_for_exactly_its_length() {
        let gate = gate();
        assert_eq!(gate.pull(), circuit::Gate::Pull);
        gate.hold(Duration::from_secs(5));
        // A shorter pause asked for later does not shorten it.
        gate.hold(Duration::from_secs(1));
        assert_eq!(gate.admit().unwrap_err(), Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(gate.pull(), circuit::Gate::Wait(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(gate.pull(), circuit::Gate::Pull);
        assert!(gate.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_holds_the_server_until_its_probe_is_due_on_the_same_clock() {
        let gate = gate();
        for _ in 0..2 {
            let ticket = gate.admit().unwrap();
            gate.record(Verdict::Retryable, ticket);
        }
        assert_eq!(gate.pull(), circuit::Gate::Wait(Duration::from_secs(30)));
        assert!(
            gate.admit().is_err(),
            "no attempt while the circuit is open"
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(gate.pull(), circuit::Gate::Wait(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(gate.pull(), circuit::Gate::Probe);
        gate.probed(Verdict::Answered);
        assert_eq!(gate.pull(), circuit::Gate::Pull);
    }
}
