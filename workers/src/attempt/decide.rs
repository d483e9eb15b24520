//! What to do with a message once its attempt is over: a pure function of the attempt's
//! outcome, the attempts spent before it and the server's retry policy. Every message ends in
//! exactly one of these decisions.

use std::time::Duration;

use mcpq_schemas::JobStatus;

use super::outcome::Outcome;
use crate::{gate::Count, upstream::Verdict};

/// The one explicit decision every message ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The job ended: record it with this status, reply, then ack (TERM for an expired job).
    End(JobStatus),
    /// The job ended before: reply from its record, ack.
    Answer,
    /// Another message carries the job: ack this one; its caller hears from the record.
    Follow,
    /// Try again after this delay: record the failed attempt, NAK with the delay.
    Retry(Duration),
    /// Wait this long without spending an attempt: record the hold, NAK with the delay.
    Hold(Duration),
    /// Failed for good: dead-letter, record, reply, then TERM.
    DeadLetter(JobStatus),
    /// Not this job's to run (its id is another caller's): dead-letter, reply, then TERM —
    /// nothing written to the record it named.
    Refuse,
    /// Give the message back at once for another worker: NAK (a claimed job's claim is given
    /// back first, counted as a hold).
    HandBack,
    /// This attempt no longer holds the job: leave the message to the one that does.
    Abandon,
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
    /// The job may not be sent twice (`noRetry`): an attempt that reached the upstream and
    /// failed is never followed by another, not even after the circuit held it.
    pub at_most_once: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            at_most_once: false,
        }
    }
}

impl From<mcpq_schemas::config::RetryConfig> for RetryPolicy {
    fn from(c: mcpq_schemas::config::RetryConfig) -> Self {
        RetryPolicy {
            max_attempts: c.max_attempts,
            initial: c.initial,
            max: c.max,
            at_most_once: false,
        }
    }
}

impl RetryPolicy {
    /// This policy for a job that may not be sent twice: one attempt that counts.
    pub fn once(self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            at_most_once: true,
            ..self
        }
    }

    /// Exponential backoff with full jitter: a delay drawn uniformly from
    /// `[0, min(max, initial * 2^(attempt-1))]`, where `unit` is the draw in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.initial.saturating_mul(1u32 << exp).min(self.max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Deliveries of one job that nothing explains — neither a failed attempt nor a hold recorded,
/// nor a hand-back by this worker — after which the job is dead-lettered rather than delivered
/// again: each was held by a worker that stopped (a crash, a call that outlived AckWait with its
/// worker frozen) or whose ack was lost (a NATS node failing over).
pub const MAX_STRANDED: u32 = 6;

/// Decides the fate of a delivery that ended with `outcome`, `spent` attempts having counted
/// against the policy before it; `unit` is a uniform draw in `[0, 1)` for the jitter.
pub fn decide(outcome: &Outcome, spent: u32, policy: &RetryPolicy, unit: f64) -> Decision {
    match outcome {
        Outcome::Malformed(_) | Outcome::TooLarge { .. } => Decision::DeadLetter(JobStatus::Failed),
        Outcome::AlreadyDone(_) => Decision::Answer,
        Outcome::Duplicate => Decision::Follow,
        Outcome::Foreign => Decision::Refuse,
        Outcome::Stranded { .. } | Outcome::NotTwice => Decision::DeadLetter(JobStatus::Dead),
        Outcome::Cancelled { .. } => Decision::End(JobStatus::Cancelled),
        Outcome::Expired { .. } => Decision::End(JobStatus::Expired),
        Outcome::Held(wait) | Outcome::Early(wait) => Decision::Hold(*wait),
        Outcome::Interrupted => Decision::HandBack,
        Outcome::Lost => Decision::Abandon,
        Outcome::Answered(_) => Decision::End(JobStatus::Completed),
        Outcome::Failed { failure, count } => {
            let asked = failure.retry_after.unwrap_or_default();
            match (failure.verdict, count) {
                (Verdict::Permanent | Verdict::Answered, _) => {
                    Decision::DeadLetter(JobStatus::Failed)
                }
                (Verdict::Retryable, Count::Held(_)) if policy.at_most_once => {
                    Decision::DeadLetter(JobStatus::Dead)
                }
                (Verdict::Retryable, Count::Held(wait)) => Decision::Hold((*wait).max(asked)),
                (Verdict::Retryable, Count::Counted) if spent + 1 >= policy.max_attempts => {
                    Decision::DeadLetter(JobStatus::Dead)
                }
                // An upstream that said when to come back is not called before then.
                (Verdict::Retryable, Count::Counted) => {
                    Decision::Retry(policy.backoff(spent + 1, unit).max(asked))
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod at_most_once {
    use mcpq_schemas::ErrorKind;

    use super::*;
    use crate::call::Failure;

    #[test]
    fn a_job_that_may_not_run_twice_is_never_sent_again() {
        let once = RetryPolicy::default().once();
        let failure = |count| Outcome::Failed {
            failure: Failure::new(ErrorKind::Timeout, "timed out".into(), Verdict::Retryable),
            count,
        };
        assert_eq!(
            decide(&failure(Count::Counted), 0, &once, 0.5),
            Decision::DeadLetter(JobStatus::Dead)
        );
        assert_eq!(
            decide(&failure(Count::Held(Duration::from_secs(5))), 0, &once, 0.5),
            Decision::DeadLetter(JobStatus::Dead)
        );
        assert_eq!(
            decide(
                &failure(Count::Held(Duration::from_secs(5))),
                0,
                &RetryPolicy::default(),
                0.5
            ),
            Decision::Hold(Duration::from_secs(5))
        );
        assert_eq!(
            decide(&Outcome::NotTwice, 0, &once, 0.5),
            Decision::DeadLetter(JobStatus::Dead)
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mcpq_schemas::{ErrorKind, JobError, JobRecord};

    use super::*;
    use crate::call::Failure;

    fn failed(verdict: Verdict, count: Count, retry_after: Option<Duration>) -> Outcome {
        let mut failure = Failure::new(ErrorKind::Timeout, "timed out".into(), verdict);
        failure.retry_after = retry_after;
        Outcome::Failed { failure, count }
    }

    #[test]
    fn every_outcome_has_its_decision() {
        let p = RetryPolicy::default();
        let record = JobRecord::queued(&mcpq_schemas::Job::new(
            "s",
            mcpq_schemas::McpRequest::call_tool("t", None),
        ));
        let wait = Duration::from_secs(3);
        let cases = [
            (
                Outcome::Malformed(JobError::new(ErrorKind::MalformedJob, "x")),
                Decision::DeadLetter(JobStatus::Failed),
            ),
            (Outcome::AlreadyDone(Box::new(record)), Decision::Answer),
            (Outcome::Duplicate, Decision::Follow),
            (Outcome::Foreign, Decision::Refuse),
            (
                Outcome::Stranded { deliveries: 9 },
                Decision::DeadLetter(JobStatus::Dead),
            ),
            (
                Outcome::Cancelled {
                    when: "while it ran",
                    reason: None,
                },
                Decision::End(JobStatus::Cancelled),
            ),
            (
                Outcome::Expired { late_ms: 5 },
                Decision::End(JobStatus::Expired),
            ),
            (Outcome::Held(wait), Decision::Hold(wait)),
            (Outcome::Interrupted, Decision::HandBack),
            (Outcome::Lost, Decision::Abandon),
            (
                Outcome::TooLarge { size: 1 << 30 },
                Decision::DeadLetter(JobStatus::Failed),
            ),
            (
                Outcome::Answered(serde_json::json!({})),
                Decision::End(JobStatus::Completed),
            ),
            (
                failed(Verdict::Permanent, Count::Counted, None),
                Decision::DeadLetter(JobStatus::Failed),
            ),
        ];
        for (outcome, decision) in cases {
            assert_eq!(decide(&outcome, 0, &p, 0.5), decision, "{outcome:?}");
        }
    }

    #[test]
    fn retryable_failures_retry_until_the_last_attempt() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        let f = failed(Verdict::Retryable, Count::Counted, None);
        assert!(matches!(decide(&f, 0, &p, 0.5), Decision::Retry(_)));
        assert!(matches!(decide(&f, 1, &p, 0.5), Decision::Retry(_)));
        assert_eq!(
            decide(&f, 2, &p, 0.5),
            Decision::DeadLetter(JobStatus::Dead)
        );
    }

    #[test]
    fn a_failure_while_the_circuit_opens_waits_however_many_attempts_were_spent() {
        let p = RetryPolicy::default();
        let held = failed(
            Verdict::Retryable,
            Count::Held(Duration::from_secs(8)),
            None,
        );
        assert_eq!(
            decide(&held, 2, &p, 0.5),
            Decision::Hold(Duration::from_secs(8)),
            "the last attempt is not burnt by an open circuit"
        );
    }

    #[test]
    fn an_upstreams_retry_after_is_never_cut_short() {
        let p = RetryPolicy::default();
        let busy = failed(
            Verdict::Retryable,
            Count::Counted,
            Some(Duration::from_secs(5)),
        );
        assert_eq!(
            decide(&busy, 0, &p, 1.0),
            Decision::Retry(Duration::from_secs(5))
        );
        let held = failed(
            Verdict::Retryable,
            Count::Held(Duration::from_secs(1)),
            Some(Duration::from_secs(5)),
        );
        assert_eq!(
            decide(&held, 0, &p, 1.0),
            Decision::Hold(Duration::from_secs(5))
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            at_most_once: false,
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
