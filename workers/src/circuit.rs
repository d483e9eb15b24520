//! A circuit breaker per upstream, as a pure state machine: after `failure_threshold`
//! retryable failures in a row it opens and the worker stops pulling that server's jobs (they
//! stay queued; no attempt is burnt) until `reset_timeout` has passed; then one probe — an MCP
//! `ping` the worker sends itself, never a job — decides whether it closes again.

use std::time::{Duration, Instant};

use crate::decide::Verdict;

/// What the pull loop may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Pull as usual.
    Pull,
    /// Pull nothing; probe the upstream (ping it) and record the verdict.
    Probe,
    /// Pull nothing for this long.
    Wait(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Waiting for the probe started at `probe`; a probe that never reports is given up after
    /// `reset_timeout`.
    HalfOpen {
        probe: Instant,
    },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    reset: Duration,
    state: State,
}

/// How long a half-open breaker waits before asking again while its probe runs.
const PROBE_POLL: Duration = Duration::from_millis(50);

impl Breaker {
    pub fn new(threshold: u32, reset: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            reset,
            state: State::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// May the pull loop take jobs at `now`?
    pub fn gate(&mut self, now: Instant) -> Gate {
        match self.state {
            State::Closed { .. } => Gate::Pull,
            State::Open { until } if now < until => Gate::Wait(until - now),
            State::HalfOpen { probe } if now < probe + self.reset => Gate::Wait(PROBE_POLL),
            State::Open { .. } | State::HalfOpen { .. } => {
                self.state = State::HalfOpen { probe: now };
                Gate::Probe
            }
        }
    }

    /// Takes the outcome of a call. Only retryable failures (the upstream is unreachable, slow
    /// or dying) count; an answer, even a JSON-RPC error, shows the upstream is alive.
    pub fn record(&mut self, verdict: Verdict, now: Instant) {
        self.state = match (self.state, verdict) {
            (State::HalfOpen { .. }, Verdict::Retryable) => State::Open {
                until: now + self.reset,
            },
            (State::Closed { failures }, Verdict::Retryable) if failures + 1 >= self.threshold => {
                State::Open {
                    until: now + self.reset,
                }
            }
            (State::Closed { failures }, Verdict::Retryable) => State::Closed {
                failures: failures + 1,
            },
            (State::Open { until }, Verdict::Retryable) => State::Open { until },
            (_, Verdict::Answered | Verdict::Permanent) => State::Closed { failures: 0 },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_waits_then_probes_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        b.record(Verdict::Retryable, t0);
        b.record(Verdict::Retryable, t0);
        assert_eq!(b.gate(t0), Gate::Pull);
        b.record(Verdict::Retryable, t0);
        assert_eq!(
            b.gate(t0 + Duration::from_secs(4)),
            Gate::Wait(Duration::from_secs(6))
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.gate(later), Gate::Probe);
        assert_eq!(b.gate(later), Gate::Wait(PROBE_POLL), "one probe at a time");
        assert_eq!(
            b.gate(later + Duration::from_secs(10)),
            Gate::Probe,
            "a lost probe is retried"
        );
        b.record(Verdict::Answered, later);
        assert_eq!(b.gate(later), Gate::Pull);
    }

    #[test]
    fn a_failed_probe_opens_again_and_answers_reset_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.record(Verdict::Retryable, t0);
        b.record(Verdict::Permanent, t0);
        b.record(Verdict::Retryable, t0);
        assert_eq!(b.gate(t0), Gate::Pull, "a JSON-RPC error reset the count");
        b.record(Verdict::Retryable, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.gate(t1), Gate::Probe);
        b.record(Verdict::Retryable, t1);
        assert!(matches!(b.gate(t1), Gate::Wait(_)));
        assert!(matches!(b.state(), State::Open { .. }));
    }
}
