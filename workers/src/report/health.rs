//! Active health checks: each worker pings each of its upstreams every `health.interval`
//! (an MCP `ping`, the circuit breaker's probe). `unhealthyAfter` failures in a row make the
//! upstream down, one answer makes it up again. The state is shared in the `mcpq_health` bucket
//! and changes are announced to the `alerts:` webhooks.
//!
//! Each tick also takes back ejected endpoints of a replicated upstream that answer a ping again,
//! and closes sessions idle past `pool.idleTimeout` (`Upstream::tend`).
//!
//! One alert per change, whatever the number of workers: the record in KV is updated with
//! compare-and-set, and only the worker whose write wins sends the alert. No flood when a
//! server flaps: after an alert, the next waits `minAlertInterval`; what is announced then is
//! the state at that time, and nothing at all if the server is back where the last alert left it.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use mcpq_schemas::{
    config::{AlertKind, AlertTarget},
    health::{Alert, HealthRecord},
    names::ENVELOPE_VERSION,
    now_ms,
};
use tokio_util::sync::CancellationToken;

use mcpq_schemas::config::ServerConfig;

use super::Report;
use crate::upstream::{Upstream, Verdict};

/// What one worker's pings say, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct View {
    /// `None` until the first answer or the first `unhealthyAfter` failures.
    pub up: Option<bool>,
    failures: u32,
}

impl View {
    /// Counts one ping.
    pub(crate) fn ping(self, answered: bool, unhealthy_after: u32) -> View {
        if answered {
            return View {
                up: Some(true),
                failures: 0,
            };
        }
        let failures = self.failures.saturating_add(1);
        View {
            up: if failures >= unhealthy_after {
                Some(false)
            } else {
                self.up
            },
            failures,
        }
    }
}

/// What to write to the shared record, and whether to announce a state (`Some(up)`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub record: HealthRecord,
    pub alert: Option<bool>,
}

/// The shared record after this worker's view `up` at `now`; `None` when nothing changes.
/// Before any alert the server counts as announced up.
pub(crate) fn decide(
    current: Option<&HealthRecord>,
    server: &str,
    up: bool,
    error: Option<&str>,
    worker: &str,
    now: u64,
    min_interval: Duration,
) -> Option<Step> {
    let mut record = current.cloned().unwrap_or_else(|| HealthRecord {
        v: ENVELOPE_VERSION,
        server: server.to_string(),
        up,
        since_ms: now,
        seen_by: worker.to_string(),
        error: None,
        alerted_up: None,
        alerted_at_ms: 0,
    });
    let mut changed = current.is_none();
    if record.up != up {
        record.up = up;
        record.since_ms = now;
        record.seen_by = worker.to_string();
        changed = true;
    }
    if !up && record.error.as_deref() != error {
        record.error = error.map(str::to_string);
        changed = true;
    }
    let announced = record.alerted_up.unwrap_or(true);
    let quiet_long_enough = record.alerted_up.is_none()
        || now.saturating_sub(record.alerted_at_ms) >= min_interval.as_millis() as u64;
    let alert = (record.up != announced && quiet_long_enough).then_some(record.up);
    if let Some(up) = alert {
        record.alerted_up = Some(up);
        record.alerted_at_ms = now;
        changed = true;
    }
    changed.then_some(Step { record, alert })
}

/// Pings the server's upstream every `health.interval` until `shutdown`.
pub(crate) async fn watch(
    server: ServerConfig,
    upstream: Upstream,
    report: Arc<Report>,
    bucket: kv::Store,
    alerter: Arc<Alerter>,
    shutdown: CancellationToken,
) {
    let health = server.health;
    // Ejected endpoints of a replicated upstream are pinged even with health checks off.
    let interval = match (health.interval, upstream.replicated()) {
        (Some(interval), _) => interval,
        (None, true) => Duration::from_secs(5),
        (None, false) => return,
    };
    let mut view = View::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = upstream.tend(health.timeout) => {}
        }
        if health.interval.is_none() {
            continue;
        }
        let verdict = tokio::select! {
            () = shutdown.cancelled() => return,
            verdict = upstream.probe(health.timeout) => verdict,
        };
        let answered = verdict == Verdict::Answered;
        let before = view.up;
        view = view.ping(answered, health.unhealthy_after);
        let Some(up) = view.up else { continue };
        if before != view.up {
            if up {
                tracing::info!(server = %server.name, "upstream is up");
            } else {
                tracing::warn!(server = %server.name, failures = health.unhealthy_after, "upstream is down: its pings go unanswered");
            }
        }
        report.upstream_up(up);
        let error = (!up).then(|| {
            format!(
                "{} pings in a row unanswered within {:?}",
                view.failures, health.timeout
            )
        });
        share(
            &server,
            &report.worker_id,
            &bucket,
            &alerter,
            up,
            error.as_deref(),
        )
        .await;
    }
}

/// Brings the shared record up to date with compare-and-set, and sends the alert the winning
/// write calls for.
async fn share(
    config: &ServerConfig,
    worker_id: &str,
    bucket: &kv::Store,
    alerter: &Arc<Alerter>,
    up: bool,
    error: Option<&str>,
) {
    let server = &config.name;
    for _ in 0..5 {
        let entry = match bucket.entry(server).await {
            Ok(entry) => entry,
            Err(e) => {
                tracing::debug!(%server, error = %e, "cannot read the health record");
                return;
            }
        };
        let (current, revision) = match &entry {
            Some(e) if e.operation == kv::Operation::Put => (
                serde_json::from_slice::<HealthRecord>(&e.value).ok(),
                Some(e.revision),
            ),
            Some(e) => (None, Some(e.revision)),
            None => (None, None),
        };
        let Some(step) = decide(
            current.as_ref(),
            server,
            up,
            error,
            worker_id,
            now_ms(),
            config.health.min_alert_interval,
        ) else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&step.record) else {
            return;
        };
        let written = match revision {
            Some(revision) => bucket
                .update(server, bytes.into(), revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => bucket
                .create(server, bytes.into())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => {
                if let Some(up) = step.alert {
                    alerter.send(alert_of(&step.record, up));
                }
                return;
            }
            // Another worker wrote first: look again.
            Err(e) => tracing::debug!(%server, error = %e, "health record changed meanwhile"),
        }
    }
}

fn alert_of(record: &HealthRecord, up: bool) -> Alert {
    let text = if up {
        format!("mcpq: server {} is up again", record.server)
    } else {
        format!(
            "mcpq: server {} is down{}",
            record.server,
            record
                .error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})"))
        )
    };
    Alert {
        v: ENVELOPE_VERSION,
        server: record.server.clone(),
        state: if up { "up" } else { "down" }.into(),
        since_ms: record.since_ms,
        error: if up { None } else { record.error.clone() },
        text,
    }
}

/// Sends alerts to the configured webhooks, each in its own task, retried with backoff.
pub(crate) struct Alerter {
    targets: Vec<AlertTarget>,
    http: reqwest::Client,
}

/// Tries per alert and webhook: 1 s, 2 s, 4 s, 8 s apart.
const ALERT_TRIES: u32 = 5;

impl Alerter {
    pub(crate) fn new(targets: Vec<AlertTarget>) -> Alerter {
        Alerter {
            targets,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    fn send(self: &Arc<Self>, alert: Alert) {
        for target in &self.targets {
            let url = match target.url.resolve() {
                Ok(url) => url,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot send an alert: its webhook URL cannot be read");
                    continue;
                }
            };
            let body = match target.kind {
                AlertKind::Json => serde_json::to_value(&alert).unwrap_or_default(),
                AlertKind::Slack => serde_json::json!({ "text": alert.text }),
            };
            let http = self.http.clone();
            let server = alert.server.clone();
            tokio::spawn(async move {
                let mut pause = Duration::from_secs(1);
                for attempt in 1..=ALERT_TRIES {
                    match http.post(&url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => return,
                        Ok(r) => {
                            tracing::warn!(%server, status = %r.status(), attempt, "alert webhook refused the alert")
                        }
                        Err(e) => {
                            tracing::warn!(%server, error = %mcpq_schemas::redact::in_text(&e.to_string()), attempt, "cannot reach the alert webhook")
                        }
                    }
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                tracing::error!(%server, "alert given up after {ALERT_TRIES} tries");
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn step(record: Option<&HealthRecord>, up: bool, now: u64) -> Option<Step> {
        decide(record, "s", up, (!up).then_some("no answer"), "w", now, MIN)
    }

    #[test]
    fn pings_count_failures_in_a_row() {
        let mut view = View::default();
        view = view.ping(false, 3);
        view = view.ping(false, 3);
        assert_eq!(view.up, None, "two failures of three say nothing yet");
        view = view.ping(false, 3);
        assert_eq!(view.up, Some(false));
        view = view.ping(true, 3);
        assert_eq!(view.up, Some(true), "one answer brings it up");
        view = view.ping(false, 3).ping(false, 3);
        assert_eq!(
            view.up,
            Some(true),
            "two failures do not take it down again"
        );
    }

    #[test]
    fn one_alert_per_change_and_none_while_nothing_changes() {
        let first = step(None, true, 1_000).unwrap();
        assert_eq!(first.alert, None, "up from the start is no news");
        assert_eq!(step(Some(&first.record), true, 2_000), None);
        let down = step(Some(&first.record), false, 3_000).unwrap();
        assert_eq!(down.alert, Some(false));
        assert_eq!(down.record.since_ms, 3_000);
        assert_eq!(
            step(Some(&down.record), false, 4_000),
            None,
            "still down: no write"
        );
        let up = step(Some(&down.record), true, 3_000 + 60_000).unwrap();
        assert_eq!(up.alert, Some(true));
    }

    #[test]
    fn a_server_down_from_the_start_is_announced() {
        assert_eq!(step(None, false, 1_000).unwrap().alert, Some(false));
    }

    #[test]
    fn flapping_faster_than_the_minimum_interval_is_quiet_and_settles_on_the_last_state() {
        let up = step(None, true, 0).unwrap();
        let down = step(Some(&up.record), false, 100_000).unwrap();
        assert_eq!(down.alert, Some(false));
        // Back up 5 s later: too soon to say so.
        let back = step(Some(&down.record), true, 105_000).unwrap();
        assert_eq!(back.alert, None);
        // Down again: the last alert said down already.
        let again = step(Some(&back.record), false, 110_000).unwrap();
        assert_eq!(again.alert, None);
        // Still down after the interval: nothing to say.
        assert_eq!(step(Some(&again.record), false, 200_000), None);
        // Up, and it stays up past the interval: one alert, when the interval is over.
        let up_again = step(Some(&again.record), true, 120_000).unwrap();
        assert_eq!(up_again.alert, None);
        let later = step(Some(&up_again.record), true, 160_000).unwrap();
        assert_eq!(
            later.alert,
            Some(true),
            "the held change is announced once quiet"
        );
        assert_eq!(step(Some(&later.record), true, 170_000), None);
    }
}
