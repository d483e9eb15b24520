//! What to do with a message once its attempt is over: a pure function of the attempt's
//! outcome, the attempt number and the server's retry policy.

use std::time::Duration;

/// How an attempt ended, as far as the ack decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream answered (a tool result with `isError: true` is an answer too).
    Answered,
    /// A failure that may go away: connection lost, timeout, upstream process died.
    Retryable,
    /// A failure that will not go away by trying again: malformed job, JSON-RPC error.
    Permanent,
}

/// The one explicit decision every message ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Done: record the result, reply, ack.
    Ack,
    /// Try again after this delay: record the attempt, NAK with the delay.
    Retry(Duration),
    /// Failed for good: dead-letter, reply with the error, then TERM.
    DeadLetter,
}

/// Per-server retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff ceiling before the second attempt.
    pub initial: Duration,
    /// Largest backoff ceiling.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl From<mcpq_schemas::config::RetryConfig> for RetryPolicy {
    fn from(c: mcpq_schemas::config::RetryConfig) -> Self {
        RetryPolicy {
            max_attempts: c.max_attempts,
            initial: c.initial,
            max: c.max,
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter: a delay drawn uniformly from
    /// `[0, min(max, initial * 2^(attempt-1))]`, where `unit` is the draw in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.initial.saturating_mul(1u32 << exp).min(self.max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Decides the fate of `attempt` (1-based) that ended with `verdict`.
pub fn decide(verdict: Verdict, attempt: u32, policy: &RetryPolicy, unit: f64) -> Decision {
    match verdict {
        Verdict::Answered => Decision::Ack,
        Verdict::Permanent => Decision::DeadLetter,
        Verdict::Retryable if attempt >= policy.max_attempts => Decision::DeadLetter,
        Verdict::Retryable => Decision::Retry(policy.backoff(attempt, unit)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn answers_ack_and_permanent_failures_dead_letter_at_once() {
        let p = RetryPolicy::default();
        assert_eq!(decide(Verdict::Answered, 1, &p, 0.5), Decision::Ack);
        assert_eq!(decide(Verdict::Permanent, 1, &p, 0.5), Decision::DeadLetter);
    }

    #[test]
    fn retryable_failures_retry_until_the_last_attempt() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        assert!(matches!(
            decide(Verdict::Retryable, 1, &p, 0.5),
            Decision::Retry(_)
        ));
        assert!(matches!(
            decide(Verdict::Retryable, 2, &p, 0.5),
            Decision::Retry(_)
        ));
        assert_eq!(decide(Verdict::Retryable, 3, &p, 0.5), Decision::DeadLetter);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(4, 1.0), Duration::from_millis(800));
        assert_eq!(p.backoff(5, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(40, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(200));
    }
}
