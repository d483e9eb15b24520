//! Recurring schedules: a [`ScheduleSpec`] checked into a [`Schedule`], kept in KV
//! `mcpq_schedules`, and handed to JetStream as one message schedule on
//! `mcpq.sched.<server>.<id>` whose body is the tick's job template. JetStream fires it (once
//! per tick, however many dispatchers and workers run, and across restarts); the worker makes
//! each tick a job of its own. Pause removes the JetStream schedule and keeps the definition;
//! resume publishes it again; delete removes both.

use std::{str::FromStr, time::Duration};

use async_nats::{HeaderMap, jetstream::kv};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use mcpq_schemas::{
    Job, Lane, McpRequest,
    check::Invalid,
    names::{
        ENVELOPE_VERSION, HDR_SCHEDULE, HDR_SCHEDULE_TARGET, HDR_SCHEDULE_TIME_ZONE,
        SCHEDULES_BUCKET, fired_subject, schedule_subject,
    },
    schedule::{Fired, Schedule, ScheduleSpec, ScheduleView, TickView},
};
use uuid::Uuid;

use crate::{Client, ClientError, publish::BoxError};

/// The shortest `every` JetStream takes.
const MIN_EVERY: Duration = Duration::from_secs(1);
/// Next fire times shown.
const SHOWN: usize = 3;
/// JetStream's cron nicknames (ADR-51).
const NICKNAMES: [&str; 5] = ["@yearly", "@monthly", "@weekly", "@daily", "@hourly"];

/// The schedule `spec` asks for, owned by `principal`, created at `now_ms`; or the field that
/// is wrong and why.
pub fn plan(
    spec: &ScheduleSpec,
    default_lane: Lane,
    principal: Option<String>,
    now_ms: u64,
) -> Result<Schedule, Invalid> {
    match (&spec.cron, &spec.every) {
        (Some(_), Some(_)) => return Err(Invalid::new("every", "give cron or every, not both")),
        (None, None) => {
            return Err(Invalid::new(
                "cron",
                "a schedule needs cron (six fields, seconds first) or every (a duration)",
            ));
        }
        (Some(cron), None) => {
            cron_of(cron)?;
        }
        (None, Some(every)) => {
            every_of(every)?;
            if spec.time_zone.is_some() {
                return Err(Invalid::new(
                    "timeZone",
                    "a time zone applies to cron schedules only",
                ));
            }
        }
    }
    if let Some(zone) = &spec.time_zone {
        zone_of(zone)?;
    }
    Ok(Schedule {
        v: ENVELOPE_VERSION,
        id: Uuid::now_v7(),
        server: spec.server.clone(),
        tool: spec.tool.clone(),
        arguments: spec.arguments.clone(),
        cron: spec.cron.clone(),
        every: spec.every.clone(),
        time_zone: spec.time_zone.clone(),
        lane: spec.lane.unwrap_or(default_lane),
        idempotent: spec.idempotent.unwrap_or(true),
        callback_url: spec.callback_url.clone(),
        principal,
        created_at_ms: now_ms,
        paused: false,
    })
}

fn cron_of(text: &str) -> Result<croner::Cron, Invalid> {
    let bad = |why: String| {
        Invalid::new(
            "cron",
            format!(
                "{text:?} is not a cron schedule: {why} (six fields, seconds first: \"0 30 9 * * MON-FRI\"; or @hourly, @daily, @weekly, @monthly, @yearly)"
            ),
        )
    };
    let text = text.trim();
    if text.starts_with('@') {
        if !NICKNAMES.contains(&text.to_ascii_lowercase().as_str()) {
            return Err(bad("unknown nickname".into()));
        }
    } else if text.split_whitespace().count() != 6 {
        return Err(bad(format!("{} fields", text.split_whitespace().count())));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| bad(e.to_string()))
}

fn every_of(text: &str) -> Result<Duration, Invalid> {
    let every = humantime::parse_duration(text).map_err(|e| {
        Invalid::new(
            "every",
            format!("{text:?} is not a duration ({e}; e.g. \"30s\", \"5m\", \"1h 30m\")"),
        )
    })?;
    if every < MIN_EVERY {
        return Err(Invalid::new(
            "every",
            format!("{text:?} is shorter than JetStream schedules go (at least 1s)"),
        ));
    }
    Ok(every)
}

fn zone_of(text: &str) -> Result<chrono_tz::Tz, Invalid> {
    chrono_tz::Tz::from_str(text).map_err(|_| {
        Invalid::new(
            "timeZone",
            format!("{text:?} is not an IANA time zone (e.g. \"Europe/Paris\", \"America/New_York\", \"UTC\")"),
        )
    })
}

/// The `Nats-Schedule` header of `schedule`: its cron expression, or `@every` with the
/// duration as JetStream (Go) writes one.
pub fn nats_schedule(schedule: &Schedule) -> String {
    match (&schedule.cron, &schedule.every) {
        (Some(cron), _) => cron.trim().to_string(),
        (None, Some(every)) => {
            let every = every_of(every).unwrap_or(MIN_EVERY);
            if every.subsec_millis() == 0 {
                format!("@every {}s", every.as_secs())
            } else {
                format!("@every {}ms", every.as_millis())
            }
        }
        (None, None) => String::new(),
    }
}

/// The next `n` fire times of `schedule` after `now`, in RFC 3339 (UTC). `every` counts from
/// the tick JetStream announced last (`next`, when known) or from the schedule's creation.
pub fn next_fires(
    schedule: &Schedule,
    announced: Option<&str>,
    now: DateTime<Utc>,
    n: usize,
) -> Vec<String> {
    if schedule.paused {
        return Vec::new();
    }
    let times: Vec<DateTime<Utc>> = match (&schedule.cron, &schedule.every) {
        (Some(cron), _) => {
            let Ok(cron) = cron_of(cron) else {
                return Vec::new();
            };
            let zone = schedule
                .time_zone
                .as_deref()
                .and_then(|z| zone_of(z).ok())
                .unwrap_or(chrono_tz::UTC);
            cron.iter_after(now.with_timezone(&zone))
                .take(n)
                .map(|t| t.with_timezone(&Utc))
                .collect()
        }
        (None, Some(every)) => {
            let Ok(every) = every_of(every) else {
                return Vec::new();
            };
            let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::seconds(1));
            let from = announced
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .or_else(|| {
                    Utc.timestamp_millis_opt(schedule.created_at_ms as i64)
                        .single()
                        .map(|t| t + every)
                })
                .unwrap_or(now);
            let mut next = from;
            while next <= now {
                next += every;
            }
            (0..n)
                .map(|i| next + every * i32::try_from(i).unwrap_or(0))
                .collect()
        }
        (None, None) => Vec::new(),
    };
    times
        .into_iter()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .collect()
}

/// The job each tick of `schedule` starts from (the worker gives it the tick's id).
fn template(schedule: &Schedule) -> Job {
    let mut job = Job::new(
        &schedule.server,
        McpRequest::call_tool(&schedule.tool, schedule.arguments.clone()),
    );
    job.id = schedule.id;
    job.schedule_id = Some(schedule.id);
    job.lane = schedule.lane;
    job.principal = schedule.principal.clone();
    job.no_retry = !schedule.idempotent;
    job.callback_url = schedule.callback_url.clone();
    job
}

/// Why a schedule could not be created, read or changed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// JetStream refused the schedule itself (a cron expression or time zone it does not
    /// take): the caller's to fix.
    #[error("JetStream refused the schedule: {0}")]
    Refused(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl Client {
    async fn schedules_bucket(&self) -> Result<kv::Store, ClientError> {
        self.bucket(SCHEDULES_BUCKET).await
    }

    /// Stores `schedule` and hands it to JetStream.
    pub async fn create_schedule(&self, schedule: &Schedule) -> Result<(), ScheduleError> {
        let bucket = self.schedules_bucket().await?;
        let fail = |source: BoxError| ClientError::Schedule {
            id: schedule.id,
            source,
        };
        let bytes = serde_json::to_vec(schedule).map_err(|e| fail(e.into()))?;
        bucket
            .create(schedule.id.to_string(), bytes.into())
            .await
            .map_err(|e| fail(e.into()))?;
        if let Err(e) = self.publish_schedule(schedule).await {
            // It may have been stored all the same (an acknowledgement lost): neither stays.
            let _ = self.unschedule(&schedule.server, &schedule.id).await;
            let _ = bucket.purge(schedule.id.to_string()).await;
            return Err(e);
        }
        Ok(())
    }

    /// Publishes `schedule`'s JetStream message schedule (replacing one on its subject).
    async fn publish_schedule(&self, schedule: &Schedule) -> Result<(), ScheduleError> {
        let job = template(schedule);
        let payload = self.encode(&job)?;
        let subject = schedule_subject(&schedule.server, &schedule.id);
        let mut headers = HeaderMap::new();
        headers.insert(HDR_SCHEDULE, nats_schedule(schedule).as_str());
        headers.insert(
            HDR_SCHEDULE_TARGET,
            fired_subject(&schedule.server, schedule.lane).as_str(),
        );
        if let Some(zone) = &schedule.time_zone {
            headers.insert(HDR_SCHEDULE_TIME_ZONE, zone.as_str());
        }
        self.seal(&mut headers, &payload, None);
        let fail = |source: BoxError| ClientError::Publish {
            job_id: schedule.id,
            subject: subject.clone(),
            source,
        };
        let ack = self
            .jetstream()
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| fail(e.into()))?
            .await;
        match ack {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                async_nats::jetstream::context::PublishErrorKind::StreamNotFound => {
                    Err(ClientError::NoStream {
                        job_id: schedule.id,
                        subject,
                    }
                    .into())
                }
                async_nats::jetstream::context::PublishErrorKind::Other => {
                    Err(ScheduleError::Refused(e.to_string()))
                }
                _ => Err(fail(e.into()).into()),
            },
        }
    }

    /// The schedule of this id, if there is one.
    pub async fn schedule(&self, id: Uuid) -> Result<Option<Schedule>, ClientError> {
        self.schedule_entry(&id.to_string(), id).await
    }

    async fn schedule_entry<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        id: Uuid,
    ) -> Result<Option<T>, ClientError> {
        self.read_json(SCHEDULES_BUCKET, key, |source| ClientError::Schedule {
            id,
            source,
        })
        .await
    }

    /// Every schedule (their definitions), oldest first.
    pub async fn schedules(&self) -> Result<Vec<Schedule>, ClientError> {
        let bucket = self.schedules_bucket().await?;
        let fail = |source: BoxError| ClientError::Schedules(source);
        let mut keys = bucket.keys().await.map_err(|e| fail(e.into()))?;
        let mut ids = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| fail(e.into()))?;
            if let Ok(id) = key.parse::<Uuid>() {
                ids.push(id);
            }
        }
        ids.sort();
        let mut schedules = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(schedule) = self.schedule(id).await? {
                schedules.push(schedule);
            }
        }
        Ok(schedules)
    }

    /// `schedule` as shown: its next fire times and its latest ticks with their jobs' status.
    pub async fn schedule_view(&self, schedule: Schedule) -> Result<ScheduleView, ClientError> {
        let fired: Fired = self
            .schedule_entry(&format!("{}.fired", schedule.id), schedule.id)
            .await?
            .unwrap_or_default();
        let announced = fired.ticks.first().and_then(|t| t.next.clone());
        let next_fire_at = next_fires(&schedule, announced.as_deref(), Utc::now(), SHOWN);
        let mut last_jobs = Vec::with_capacity(fired.ticks.len());
        for tick in fired.ticks {
            let status = self.stored_record(tick.job_id).await?.map(|r| r.status);
            last_jobs.push(TickView { tick, status });
        }
        Ok(ScheduleView {
            schedule,
            next_fire_at,
            last_jobs,
        })
    }

    /// Pauses or resumes a schedule; the schedule as it is now. JetStream's side is applied
    /// whatever the definition said already (a pause or resume cut short before is completed),
    /// then checked against the definition once more: a delete or an opposite change that came
    /// meanwhile wins, and nothing is left firing that should not.
    pub async fn set_paused(
        &self,
        id: Uuid,
        paused: bool,
    ) -> Result<Option<Schedule>, ScheduleError> {
        let bucket = self.schedules_bucket().await?;
        let fail = |source: BoxError| ClientError::Schedule { id, source };
        for _ in 0..5 {
            let Some(entry) = bucket
                .entry(id.to_string())
                .await
                .map_err(|e| fail(e.into()))?
                .filter(|e| e.operation == kv::Operation::Put)
            else {
                return Ok(None);
            };
            let mut schedule: Schedule =
                serde_json::from_slice(&entry.value).map_err(|e| fail(e.into()))?;
            let mut revision = entry.revision;
            if schedule.paused != paused {
                schedule.paused = paused;
                let bytes = serde_json::to_vec(&schedule).map_err(|e| fail(e.into()))?;
                match bucket
                    .update(id.to_string(), bytes.into(), entry.revision)
                    .await
                {
                    Ok(written) => revision = written,
                    Err(_) => continue,
                }
            }
            // One schedule on the subject at most: the old one goes before a new one is set.
            self.unschedule(&schedule.server, &id).await?;
            if !paused {
                self.publish_schedule(&schedule).await?;
                let now = bucket
                    .entry(id.to_string())
                    .await
                    .map_err(|e| fail(e.into()))?;
                let still = now
                    .as_ref()
                    .is_some_and(|e| e.operation == kv::Operation::Put && e.revision == revision);
                if !still {
                    // Deleted or changed while this resumed it: its state wins on the next
                    // round (a deleted one is unscheduled again).
                    self.unschedule(&schedule.server, &id).await?;
                    continue;
                }
            }
            return Ok(Some(schedule));
        }
        Err(fail("the schedule keeps changing; try again".into()).into())
    }

    /// Deletes a schedule: JetStream's schedule first (nothing fires after), then the
    /// definition and its ticks. (A schedule a racing resume sets again finds no definition at
    /// its next tick: the worker drops the tick and removes the schedule.)
    pub async fn delete_schedule(&self, schedule: &Schedule) -> Result<(), ClientError> {
        self.unschedule(&schedule.server, &schedule.id).await?;
        let bucket = self.schedules_bucket().await?;
        let fail = |source: BoxError| ClientError::Schedule {
            id: schedule.id,
            source,
        };
        bucket
            .purge(format!("{}.fired", schedule.id))
            .await
            .map_err(|e| fail(e.into()))?;
        bucket
            .purge(schedule.id.to_string())
            .await
            .map_err(|e| fail(e.into()))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> ScheduleSpec {
        ScheduleSpec {
            server: "time".into(),
            tool: "now".into(),
            arguments: None,
            cron: None,
            every: Some("1s".into()),
            time_zone: None,
            lane: None,
            idempotent: None,
            callback_url: None,
        }
    }

    #[test]
    fn every_and_cron_become_the_headers_jetstream_reads() {
        let every = plan(&spec(), Lane::Normal, None, 0).unwrap();
        assert_eq!(nats_schedule(&every), "@every 1s");
        let mut half = spec();
        half.every = Some("1500ms".into());
        assert_eq!(
            nats_schedule(&plan(&half, Lane::Normal, None, 0).unwrap()),
            "@every 1500ms"
        );
        let mut cron = spec();
        cron.every = None;
        cron.cron = Some("0 30 9 * * MON-FRI".into());
        cron.time_zone = Some("Europe/Paris".into());
        let cron = plan(&cron, Lane::Low, Some("key:a".into()), 0).unwrap();
        assert_eq!(nats_schedule(&cron), "0 30 9 * * MON-FRI");
        assert_eq!(cron.lane, Lane::Low);
        assert!(cron.idempotent);
    }

    #[test]
    fn a_bad_schedule_names_its_field() {
        type Change = Box<dyn Fn(&mut ScheduleSpec)>;
        let cases: Vec<(Change, &str, &str)> = vec![
            (
                Box::new(|s| s.every = Some("500ms".into())),
                "every",
                "at least 1s",
            ),
            (
                Box::new(|s| s.every = Some("soon".into())),
                "every",
                "not a duration",
            ),
            (Box::new(|s| s.every = None), "cron", "needs cron"),
            (
                Box::new(|s| s.cron = Some("* * * * * *".into())),
                "every",
                "not both",
            ),
            (
                Box::new(|s| {
                    s.every = None;
                    s.cron = Some("*/5 * * * *".into());
                }),
                "cron",
                "5 fields",
            ),
            (
                Box::new(|s| {
                    s.every = None;
                    s.cron = Some("0 0 25 * * *".into());
                }),
                "cron",
                "not a cron schedule",
            ),
            (
                Box::new(|s| {
                    s.every = None;
                    s.cron = Some("0 0 9 * * *".into());
                    s.time_zone = Some("Mars/Olympus".into());
                }),
                "timeZone",
                "IANA",
            ),
            (
                Box::new(|s| s.time_zone = Some("UTC".into())),
                "timeZone",
                "cron schedules only",
            ),
        ];
        for (change, field, words) in cases {
            let mut spec = spec();
            change(&mut spec);
            let e = plan(&spec, Lane::Normal, None, 0).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(words), "{e} lacks {words:?}");
        }
    }

    #[test]
    fn next_fire_times_follow_the_schedule() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 8, 0, 0).unwrap();
        let mut cron = spec();
        cron.every = None;
        cron.cron = Some("0 30 9 * * MON-FRI".into());
        cron.time_zone = Some("Europe/Paris".into());
        let cron = plan(&cron, Lane::Normal, None, 0).unwrap();
        // Monday 7 December 2026, 09:30 in Paris is 08:30 UTC.
        assert_eq!(
            next_fires(&cron, None, now, 2),
            vec!["2026-12-07T08:30:00Z", "2026-12-08T08:30:00Z"]
        );
        let mut every = spec();
        every.every = Some("10s".into());
        let every = plan(&every, Lane::Normal, None, now.timestamp_millis() as u64).unwrap();
        assert_eq!(
            next_fires(&every, Some("2026-12-07T08:00:05Z"), now, 2),
            vec!["2026-12-07T08:00:05Z", "2026-12-07T08:00:15Z"]
        );
        let mut paused = every.clone();
        paused.paused = true;
        assert!(next_fires(&paused, None, now, 2).is_empty());
    }
}
