//! What a worker tells operators about the jobs it runs: Prometheus metrics (names in
//! `mcpq_schemas::metrics`), and the counts its heartbeat carries for `mcpq status`.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use metrics::{Counter, Gauge, Histogram};

use mcpq_schemas::{
    ErrorKind, Job, JobStatus, Lane,
    metrics::{self as m, OTHER},
    now_ms,
    worker::CircuitState,
};

use super::Report;
use crate::{lock, upstream::Upstream};

/// One server's metric handles, registered once: a call then costs no label allocation and
/// no registry lookup (the per-tool ones are looked up by name in a small map).
pub(crate) struct Meters {
    server: String,
    in_flight: Gauge,
    queue_wait: [Histogram; 3],
    rate_limit_wait: Histogram,
    retries: Counter,
    dead_letters: Counter,
    circuit: Gauge,
    up: Gauge,
    tools: Mutex<HashMap<String, ToolMeters>>,
}

/// The handles of one tool (label) of one server.
#[derive(Clone)]
struct ToolMeters {
    upstream: Histogram,
    call: Histogram,
    /// By outcome, in the order of `metrics::OUTCOMES`.
    ended: [Counter; 6],
}

impl Meters {
    pub(crate) fn new(server: &str) -> Meters {
        let s = || server.to_string();
        let lane = |lane: Lane| metrics::histogram!(m::QUEUE_WAIT, "server" => s(), "lane" => lane.as_str());
        let meters = Meters {
            server: s(),
            in_flight: metrics::gauge!(m::IN_FLIGHT, "server" => s()),
            queue_wait: [lane(Lane::High), lane(Lane::Normal), lane(Lane::Low)],
            rate_limit_wait: metrics::histogram!(m::RATE_LIMIT_WAIT, "server" => s()),
            retries: metrics::counter!(m::RETRIES, "server" => s()),
            dead_letters: metrics::counter!(m::DEAD_LETTERS, "server" => s()),
            circuit: metrics::gauge!(m::CIRCUIT_STATE, "server" => s()),
            up: metrics::gauge!(m::UPSTREAM_UP, "server" => s()),
            tools: Mutex::default(),
        };
        // Shown at zero from the start, so a rate over them is defined before the first event.
        meters.retries.increment(0);
        meters.dead_letters.increment(0);
        meters.in_flight.set(0.0);
        meters
    }

    /// The circuit breaker's state, as a number.
    pub(crate) fn circuit(&self, state: CircuitState) {
        let value = match state {
            CircuitState::Closed | CircuitState::Unknown => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        };
        self.circuit.set(value);
    }

    /// What the health checks found.
    pub(crate) fn up(&self, up: bool) {
        self.up.set(if up { 1.0 } else { 0.0 });
    }

    fn tool(&self, tool: &str) -> ToolMeters {
        let mut tools = lock(&self.tools);
        if let Some(meters) = tools.get(tool) {
            return meters.clone();
        }
        let (s, t) = (|| self.server.clone(), || tool.to_string());
        let meters = ToolMeters {
            upstream: metrics::histogram!(m::UPSTREAM_DURATION, "server" => s(), "tool" => t()),
            call: metrics::histogram!(m::CALL_DURATION, "server" => s(), "tool" => t()),
            ended: m::OUTCOMES.map(|outcome| {
                metrics::counter!(m::CALLS_TOTAL, "server" => s(), "tool" => t(), "outcome" => outcome)
            }),
        };
        tools.insert(tool.to_string(), meters.clone());
        meters
    }
}

/// The `outcome` label of a job that ended with `status` (and `kind`, when it failed).
pub(crate) fn outcome(status: JobStatus, kind: Option<ErrorKind>) -> &'static str {
    match (status, kind) {
        (JobStatus::Completed, _) => "completed",
        (_, Some(ErrorKind::TooLarge)) => "too_large",
        (JobStatus::Dead, _) => "dead",
        (JobStatus::Cancelled, _) => "cancelled",
        (JobStatus::Expired, _) => "expired",
        _ => "failed",
    }
}

/// The `tool` label of a job: the tool (or prompt) name when the upstream's catalog has it or
/// the upstream `answered` the call (so it has the tool, listed yet or not), `other` for names
/// it does not know (a pipeline may send anything), the method for the rest.
pub(crate) fn tool_label(upstream: &Upstream, job: &Job, answered: bool) -> String {
    match job.request.tool_name() {
        Some(tool) if answered || upstream.knows_tool(tool) => tool.to_string(),
        Some(_) => OTHER.to_string(),
        None => job.request.method.clone(),
    }
}

impl Report {
    /// The job's first attempt starts: how long it waited in the queue.
    pub(crate) fn first_attempt(&self, lane: Lane, submitted_at_ms: u64) {
        let waited = now_ms().saturating_sub(submitted_at_ms);
        self.meters.queue_wait[lane.index()].record(Duration::from_millis(waited).as_secs_f64());
    }

    /// A job waited `waited` for the rate limit.
    pub(crate) fn rate_limited(&self, waited: Duration) {
        self.meters.rate_limit_wait.record(waited.as_secs_f64());
    }

    /// An upstream call runs until the guard drops.
    pub(crate) fn in_flight(&self) -> InFlight<'_> {
        self.meters.in_flight.increment(1.0);
        self.update_stats(|s| s.in_flight += 1);
        InFlight(self)
    }

    /// The upstream answered (or failed) after `took`.
    pub(crate) fn upstream_call(&self, tool: &str, took: Duration) {
        self.meters.tool(tool).upstream.record(took.as_secs_f64());
    }

    /// An attempt failed with `kind`.
    pub(crate) fn attempt_failed(&self, kind: ErrorKind) {
        metrics::counter!(m::ATTEMPTS_FAILED, "server" => self.server.clone(), "kind" => kind.as_str())
            .increment(1);
    }

    /// A failed attempt will be tried again.
    pub(crate) fn retried(&self) {
        self.meters.retries.increment(1);
    }

    /// A job went to the dead-letter stream.
    pub(crate) fn dead_lettered(&self) {
        self.meters.dead_letters.increment(1);
    }

    /// A malformed message ended dead without a job to name.
    pub(crate) fn malformed(&self) {
        metrics::counter!(m::CALLS_TOTAL, "server" => self.server.clone(), "tool" => OTHER, "outcome" => "dead")
            .increment(1);
        self.update_stats(|s| s.record(0, false));
    }

    /// A job ended for good (its record is written): counted and timed.
    pub(crate) fn ended(
        &self,
        tool: &str,
        status: JobStatus,
        kind: Option<ErrorKind>,
        latency_ms: u64,
    ) {
        let outcome = outcome(status, kind);
        let meters = self.meters.tool(tool);
        if let Some(i) = m::OUTCOMES.iter().position(|o| *o == outcome) {
            meters.ended[i].increment(1);
        }
        meters
            .call
            .record(Duration::from_millis(latency_ms).as_secs_f64());
        self.update_stats(|s| s.record(latency_ms, status == JobStatus::Completed));
    }
}

/// An upstream call is running until dropped.
pub(crate) struct InFlight<'a>(&'a Report);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.meters.in_flight.decrement(1.0);
        self.0
            .update_stats(|s| s.in_flight = s.in_flight.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_status_and_kind() {
        assert_eq!(outcome(JobStatus::Completed, None), "completed");
        assert_eq!(
            outcome(JobStatus::Failed, Some(ErrorKind::TooLarge)),
            "too_large"
        );
        assert_eq!(
            outcome(JobStatus::Failed, Some(ErrorKind::Upstream)),
            "failed"
        );
        assert_eq!(outcome(JobStatus::Dead, Some(ErrorKind::Timeout)), "dead");
        assert_eq!(
            outcome(JobStatus::Cancelled, Some(ErrorKind::Cancelled)),
            "cancelled"
        );
        assert_eq!(
            outcome(JobStatus::Expired, Some(ErrorKind::Expired)),
            "expired"
        );
        for status in [
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Dead,
            JobStatus::Cancelled,
            JobStatus::Expired,
        ] {
            assert!(m::OUTCOMES.contains(&outcome(status, None)));
        }
    }
}
