//! A circuit breaker per upstream, as a pure state machine: after `failure_threshold`
//! retryable failures in a row it opens; then the worker stops pulling that server's jobs and
//! lets no attempt through (jobs wait in the queue; no attempt is spent) until `reset_timeout`
//! has passed; then one probe — an MCP `ping` the worker sends itself, never a job — decides
//! whether it closes again.
//!
//! Every attempt, first or retry, passes [`Breaker::admit`], and only failures the upstream
//! returned to a call the closed circuit let through — before the circuit opened — count
//! against the job's attempts: the failure that opens it, and the failures of the calls still
//! in flight then, find the circuit open or opening and are held, not spent.

use std::time::{Duration, Instant};

use crate::upstream::Verdict;

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

/// An attempt let through by a closed circuit: which closed period it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// Whether a failed attempt counts against the job's attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Counted,
    /// The circuit is open or opening: the job waits this long, its attempt not spent.
    Held(Duration),
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    reset: Duration,
    state: State,
    /// How many times the circuit has opened: a ticket from before the last opening is stale.
    opened: u64,
}

/// How long a half-open breaker waits before asking again while its probe runs.
const PROBE_POLL: Duration = Duration::from_millis(50);

impl Breaker {
    pub fn new(threshold: u32, reset: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            reset,
            state: State::Closed { failures: 0 },
            opened: 0,
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

    /// May an attempt call the upstream at `now`? Only while the circuit is closed; otherwise
    /// how long its job should wait.
    pub fn admit(&self, now: Instant) -> Result<Ticket, Duration> {
        match self.state {
            State::Closed { .. } => Ok(Ticket(self.opened)),
            _ => Err(self.wait(now)),
        }
    }

    /// How long a held job waits: until the circuit may half-open (while a probe runs, the
    /// reset timeout, so that a job does not come back faster than the probe can decide).
    fn wait(&self, now: Instant) -> Duration {
        match self.state {
            State::Open { until } if until > now => until - now,
            _ => self.reset,
        }
        .max(PROBE_POLL)
    }

    /// Takes the verdict of a probe (no ticket) or of a call let through with `ticket`.
    /// Only retryable failures (the upstream is unreachable, slow or dying) count toward
    /// opening; an answer, even a JSON-RPC error, shows the upstream is alive. Says whether a
    /// failed call counts against its job's attempts.
    pub fn record(&mut self, verdict: Verdict, ticket: Option<Ticket>, now: Instant) -> Count {
        let before = self.state;
        let open = State::Open {
            until: now + self.reset,
        };
        self.state = match (before, verdict) {
            (State::HalfOpen { .. }, Verdict::Retryable) if ticket.is_none() => open,
            (State::Closed { failures }, Verdict::Retryable) if failures + 1 >= self.threshold => {
                open
            }
            (State::Closed { failures }, Verdict::Retryable) => State::Closed {
                failures: failures + 1,
            },
            (state, Verdict::Retryable) => state,
            // A late answer to a call let through before the circuit opened does not close it:
            // only the probe decides.
            (State::Open { .. } | State::HalfOpen { .. }, _) if ticket.is_some() => before,
            (_, Verdict::Answered | Verdict::Permanent) => State::Closed { failures: 0 },
        };
        if matches!(self.state, State::Open { .. }) && !matches!(before, State::Open { .. }) {
            self.opened += 1;
        }
        let let_through_closed = ticket == Some(Ticket(self.opened));
        match (verdict, self.state) {
            (Verdict::Retryable, State::Closed { .. }) if let_through_closed => Count::Counted,
            (Verdict::Retryable, _) => Count::Held(self.wait(now)),
            _ => Count::Counted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_waits_then_probes_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        let ticket = b.admit(t0).ok();
        b.record(Verdict::Retryable, ticket, t0);
        b.record(Verdict::Retryable, ticket, t0);
        assert_eq!(b.gate(t0), Gate::Pull);
        b.record(Verdict::Retryable, ticket, t0);
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
        b.record(Verdict::Answered, None, later);
        assert_eq!(b.gate(later), Gate::Pull);
    }

    #[test]
    fn a_failed_probe_opens_again_and_answers_reset_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        let ticket = b.admit(t0).ok();
        b.record(Verdict::Retryable, ticket, t0);
        b.record(Verdict::Permanent, ticket, t0);
        b.record(Verdict::Retryable, ticket, t0);
        assert_eq!(b.gate(t0), Gate::Pull, "a JSON-RPC error reset the count");
        b.record(Verdict::Retryable, ticket, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.gate(t1), Gate::Probe);
        b.record(Verdict::Retryable, None, t1);
        assert!(matches!(b.gate(t1), Gate::Wait(_)));
        assert!(matches!(b.state(), State::Open { .. }));
    }

    #[test]
    fn only_failures_before_the_circuit_opens_are_spent() {
        let t0 = Instant::now();
        let reset = Duration::from_secs(8);
        let mut b = Breaker::new(3, reset);
        // Sixteen calls in flight when the upstream falls.
        let tickets: Vec<_> = (0..16).map(|_| b.admit(t0).ok()).collect();
        let counts: Vec<_> = tickets
            .iter()
            .map(|t| b.record(Verdict::Retryable, *t, t0))
            .collect();
        assert_eq!(&counts[..2], &[Count::Counted, Count::Counted]);
        assert!(
            counts[2..].iter().all(|c| *c == Count::Held(reset)),
            "the failure that opens it and those after it are held: {counts:?}"
        );
        // While open, no attempt is let through; a late answer does not close it.
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(b.admit(t1), Err(Duration::from_secs(5)));
        assert_eq!(b.record(Verdict::Answered, tickets[0], t1), Count::Counted);
        assert!(matches!(b.state(), State::Open { .. }));
        // Half-open: still none; the probe closes it and attempts flow again.
        let t2 = t0 + reset;
        assert_eq!(b.gate(t2), Gate::Probe);
        assert_eq!(b.admit(t2), Err(reset));
        b.record(Verdict::Answered, None, t2);
        let fresh = b.admit(t2).ok();
        assert!(fresh.is_some());
        // A ticket from before the opening is stale even though the circuit is closed again.
        assert_eq!(
            b.record(Verdict::Retryable, tickets[5], t2),
            Count::Held(reset)
        );
        assert_eq!(b.record(Verdict::Retryable, fresh, t2), Count::Counted);
    }
}
