//! Recurring schedules: a tool call JetStream fires on a cron expression or every so often
//! (`POST /v1/schedules`, `mcpq schedule add`), kept in KV `mcpq_schedules` and as one JetStream
//! message schedule on `mcpq.sched.<server>.<schedule id>`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{JobStatus, JsonObject, Lane};

/// The body of `POST /v1/schedules`: what to call, and when. Exactly one of `cron` and `every`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The upstream server's name from the config.
    pub server: String,
    /// The tool's name on that server (not prefixed).
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<JsonObject>,
    /// Six fields, seconds first (`0 30 9 * * MON-FRI`), or `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A duration of at least one second (`"30s"`, `"5m"`, `"1h 30m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The IANA time zone a `cron` expression is read in (`Europe/Paris`); UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Priority lane of each tick's job; the server's configured `priority` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<Lane>,
    /// Whether the tool may safely run twice: a tick whose attempt failed is retried under the
    /// server's retry policy (default). `false`: a failed tick is not sent again (it goes to
    /// the dead letters with its reason), and the next tick comes as scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// Where to POST each tick's job record when it ends (see `callbackUrl` on jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// A recurring schedule as stored in KV `mcpq_schedules` under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub v: u32,
    pub id: Uuid,
    pub server: String,
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<JsonObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    pub lane: Lane,
    pub idempotent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Who created it: only they (or an unauthenticated operator) read, pause or delete it,
    /// and its ticks run as theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    pub created_at_ms: u64,
    /// Paused: JetStream holds no schedule for it until it is resumed.
    #[serde(default)]
    pub paused: bool,
}

/// The latest ticks of a schedule, newest first, in KV `mcpq_schedules` under
/// `<schedule id>.fired`; each worker that starts a tick adds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fired {
    pub ticks: Vec<Tick>,
}

impl Fired {
    /// Most ticks kept.
    pub const KEEP: usize = 20;

    /// Adds `tick` unless it is there already; the newest [`Fired::KEEP`] stay.
    pub fn add(&mut self, tick: Tick) -> bool {
        if self.ticks.iter().any(|t| t.job_id == tick.job_id) {
            return false;
        }
        self.ticks.insert(0, tick);
        self.ticks.sort_by_key(|t| std::cmp::Reverse(t.fired_at_ms));
        self.ticks.truncate(Self::KEEP);
        true
    }
}

/// One tick of a schedule: the job it became.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tick {
    pub job_id: Uuid,
    /// When JetStream fired it (Unix ms).
    pub fired_at_ms: u64,
    /// When JetStream said it would fire next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A schedule as `GET /v1/schedules/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The next fire times (RFC 3339, UTC), soonest first; empty while paused.
    pub next_fire_at: Vec<String>,
    /// The latest ticks, newest first, with each job's status when its record is still kept.
    pub last_jobs: Vec<TickView>,
}

/// A tick and how its job stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TickView {
    #[serde(flatten)]
    pub tick: Tick,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

/// The answer to `POST /v1/schedules` (`201 Created`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleCreated {
    pub id: Uuid,
    pub next_fire_at: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(n: u64) -> Tick {
        Tick {
            job_id: Uuid::from_u128(n.into()),
            fired_at_ms: n,
            next: None,
        }
    }

    #[test]
    fn fired_keeps_the_newest_ticks_once_each() {
        let mut fired = Fired::default();
        for n in 0..30 {
            assert!(fired.add(tick(n)));
        }
        assert!(!fired.add(tick(29)), "a tick delivered twice is one tick");
        assert_eq!(fired.ticks.len(), Fired::KEEP);
        assert_eq!(fired.ticks[0].fired_at_ms, 29);
        assert_eq!(fired.ticks[Fired::KEEP - 1].fired_at_ms, 10);
    }
}
