//! The status of every server, read from NATS alone: lane consumers (`num_pending`,
//! `num_ack_pending`), the dead-letter stream, worker heartbeats (circuit, counts, latency
//! buckets) and the health bucket. A [`Sampler`] takes one sample; a [`Window`] keeps the last
//! 15 minutes of them and derives rates and latencies from the difference between two.
//!
//! The dispatcher samples every few seconds (the queue gauges and the status page come from
//! there); `mcpq status` runs its own sampler, so it needs no dispatcher.

use std::{collections::VecDeque, time::Duration};

use crate::StoreError;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use mcpq_schemas::{
    Lane,
    health::HealthRecord,
    metrics as m,
    names::{
        DLQ_STREAM, DLQ_SUBJECTS, ENVELOPE_VERSION, HEALTH_BUCKET, WORKERS_BUCKET, consumer_name,
        dlq_subject, job_subject, jobs_stream,
    },
    now_ms,
    status::{HistoryPoint, LaneStatus, ServerStatus, StatusReport},
    worker::{CircuitState, LATENCY_BOUNDS_MS, WorkerBeat},
};

/// How long the [`Window`] keeps samples: the charts' span.
pub const HISTORY: Duration = Duration::from_secs(15 * 60);
/// The rate at each history point is taken over this much before it.
pub const HISTORY_RATE: Duration = Duration::from_secs(10);
/// Rates and latencies are taken over at most this much of the latest samples.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);

/// Reads the status of a set of servers.
pub struct Sampler {
    js: jetstream::Context,
    servers: Vec<String>,
    workers: kv::Store,
    health: kv::Store,
}

/// One sample: every server's status, with the latency buckets summed over its workers.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_ms: u64,
    pub servers: Vec<(ServerStatus, Vec<u64>)>,
}

impl Sampler {
    pub async fn open(js: jetstream::Context, servers: Vec<String>) -> Result<Sampler, StoreError> {
        let bucket = |name: &'static str| {
            let js = js.clone();
            async move {
                js.get_key_value(name)
                    .await
                    .map_err(StoreError::at(format!("bucket {name}")))
            }
        };
        Ok(Sampler {
            workers: bucket(WORKERS_BUCKET).await?,
            health: bucket(HEALTH_BUCKET).await?,
            js,
            servers,
        })
    }

    /// One sample of every server; an error when JetStream cannot say (the streams are
    /// missing, NATS is gone).
    pub async fn sample(&self) -> Result<Sample, StoreError> {
        let dlq = self.dead_letters().await?;
        let beats = self.beats().await;
        let mut servers = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            let stream = self
                .js
                .get_stream_no_info(jobs_stream(server))
                .await
                .map_err(StoreError::at(format!("stream {}", jobs_stream(server))))?;
            // Principals' queues (fair shares): every job stored there waits or runs.
            let tenants = tenant_counts(&stream, server).await?;
            let mut lanes = Vec::with_capacity(Lane::ALL.len());
            for lane in Lane::ALL {
                let name = consumer_name(server, lane);
                let (depth, ack_pending) = match stream.consumer_info(&name).await {
                    Ok(info) => (info.num_pending, info.num_ack_pending as u64),
                    // No worker has bound the lane yet: everything on its subject waits.
                    Err(_) => (subject_count(&stream, &job_subject(server, lane)).await?, 0),
                };
                lanes.push(LaneStatus {
                    lane,
                    depth: depth + tenants[lane.index()],
                    ack_pending,
                });
            }
            let mine: Vec<&WorkerBeat> = beats.iter().filter(|b| &b.server == server).collect();
            let mut latency = vec![0; LATENCY_BOUNDS_MS.len() + 1];
            for beat in &mine {
                for (sum, n) in latency.iter_mut().zip(&beat.stats.latency) {
                    *sum += n;
                }
            }
            let circuit = mine
                .iter()
                .map(|b| b.circuit)
                .max_by_key(|c| severity(*c))
                .unwrap_or(CircuitState::Closed);
            let health = self.health_of(server).await;
            servers.push((
                ServerStatus {
                    server: server.clone(),
                    queued: lanes.iter().map(|l| l.depth).sum(),
                    ack_pending: lanes.iter().map(|l| l.ack_pending).sum(),
                    lanes,
                    dlq: dlq.get(&dlq_subject(server)).copied().unwrap_or(0),
                    workers: mine.len() as u32,
                    circuit,
                    circuits_not_closed: mine
                        .iter()
                        .filter(|b| b.circuit != CircuitState::Closed)
                        .count() as u32,
                    up: health.as_ref().map(|h| h.up),
                    health_since_ms: health.as_ref().map(|h| h.since_ms),
                    in_flight: mine.iter().map(|b| b.stats.in_flight).sum(),
                    calls_per_sec: 0.0,
                    error_rate: 0.0,
                    p50_ms: None,
                    p99_ms: None,
                    ended: mine.iter().map(|b| b.stats.ended).sum(),
                    failed: mine.iter().map(|b| b.stats.failed).sum(),
                    metrics: {
                        let mut at: Vec<String> = mine
                            .iter()
                            .filter_map(|b| {
                                Some(format!("{} {}", b.worker_id, b.metrics.as_ref()?))
                            })
                            .collect();
                        at.sort();
                        at
                    },
                },
                latency,
            ));
        }
        Ok(Sample {
            at_ms: now_ms(),
            servers,
        })
    }

    /// Dead letters by subject.
    async fn dead_letters(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let what = format!("stream {DLQ_STREAM}");
        let stream = self
            .js
            .get_stream_no_info(DLQ_STREAM)
            .await
            .map_err(StoreError::at(what.clone()))?;
        let mut subjects = stream
            .info_with_subjects(DLQ_SUBJECTS)
            .await
            .map_err(StoreError::at(what.clone()))?;
        let mut counts = std::collections::HashMap::new();
        while let Some(Ok((subject, count))) = subjects.next().await {
            counts.insert(subject, count as u64);
        }
        Ok(counts)
    }

    async fn beats(&self) -> Vec<WorkerBeat> {
        let Ok(keys) = self.workers.keys().await else {
            return Vec::new();
        };
        let keys: Vec<String> = keys.filter_map(|k| async move { k.ok() }).collect().await;
        let mut beats = Vec::with_capacity(keys.len());
        for key in keys {
            if let Ok(Some(bytes)) = self.workers.get(&key).await
                && let Ok(beat) = serde_json::from_slice::<WorkerBeat>(&bytes)
            {
                beats.push(beat);
            }
        }
        beats
    }

    async fn health_of(&self, server: &str) -> Option<HealthRecord> {
        let bytes = self.health.get(server).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Messages stored on one subject of `stream`.
async fn subject_count(
    stream: &jetstream::stream::Stream<()>,
    subject: &str,
) -> Result<u64, StoreError> {
    let mut subjects = stream
        .info_with_subjects(subject)
        .await
        .map_err(StoreError::at(format!("messages on {subject}")))?;
    let mut count = 0;
    while let Some(Ok((_, n))) = subjects.next().await {
        count += n as u64;
    }
    Ok(count)
}

/// Jobs stored in `server`'s principals' queues, by lane.
async fn tenant_counts(
    stream: &jetstream::stream::Stream<()>,
    server: &str,
) -> Result<[u64; 3], StoreError> {
    let filter = mcpq_schemas::names::tenant_subjects(server);
    let mut subjects = stream
        .info_with_subjects(&filter)
        .await
        .map_err(StoreError::at(format!("messages on {filter}")))?;
    let mut counts = [0; 3];
    while let Some(Ok((subject, n))) = subjects.next().await {
        let lane = subject.rsplit('.').nth(1).unwrap_or_default();
        if let Ok(lane) = serde_json::from_value::<Lane>(lane.into()) {
            counts[lane.index()] += n as u64;
        }
    }
    Ok(counts)
}

fn severity(state: CircuitState) -> u8 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Unknown => 1,
        CircuitState::HalfOpen => 2,
        CircuitState::Open => 3,
    }
}

/// Sets the queue gauges from a sample: what autoscalers and alert rules read.
pub fn export(sample: &Sample) {
    for (status, _) in &sample.servers {
        for lane in &status.lanes {
            let labels = [
                ("server", status.server.clone()),
                ("lane", lane.lane.as_str().to_string()),
            ];
            metrics::gauge!(m::QUEUE_DEPTH, &labels).set(lane.depth as f64);
            metrics::gauge!(m::QUEUE_ACK_PENDING, &labels).set(lane.ack_pending as f64);
        }
        metrics::gauge!(m::DLQ_DEPTH, "server" => status.server.clone()).set(status.dlq as f64);
    }
}

/// The last [`HISTORY`] of samples.
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<Sample>,
}

impl Window {
    pub fn push(&mut self, sample: Sample) {
        let oldest = sample.at_ms.saturating_sub(HISTORY.as_millis() as u64);
        self.samples.push_back(sample);
        while self.samples.front().is_some_and(|s| s.at_ms < oldest) {
            self.samples.pop_front();
        }
    }

    /// The status at the latest sample, its rates over at most [`RATE_WINDOW`], and the history.
    pub fn report(&self) -> Option<StatusReport> {
        let newest = self.samples.back()?;
        let since = newest.at_ms.saturating_sub(RATE_WINDOW.as_millis() as u64);
        let base = self
            .samples
            .iter()
            .find(|s| s.at_ms >= since)
            .unwrap_or(newest);
        let secs = newest.at_ms.saturating_sub(base.at_ms) as f64 / 1000.0;
        let servers = newest
            .servers
            .iter()
            .map(|(now, latency)| {
                let mut status = now.clone();
                if let Some((then, then_latency)) =
                    base.servers.iter().find(|(s, _)| s.server == now.server)
                    && secs > 0.0
                {
                    let ended = now.ended.saturating_sub(then.ended);
                    let failed = now.failed.saturating_sub(then.failed);
                    status.calls_per_sec = ended as f64 / secs;
                    status.error_rate = if ended == 0 {
                        0.0
                    } else {
                        failed.min(ended) as f64 / ended as f64
                    };
                    let buckets: Vec<u64> = latency
                        .iter()
                        .zip(then_latency.iter().chain(std::iter::repeat(&0)))
                        .map(|(n, t)| n.saturating_sub(*t))
                        .collect();
                    status.p50_ms = quantile(&buckets, 0.5);
                    status.p99_ms = quantile(&buckets, 0.99);
                }
                status
            })
            .collect();
        // Each point's rate is taken over the samples of the last few seconds before it:
        // heartbeats carry the counts every 2 s, so the rate between two samples 1 s apart
        // would swing between nothing and double.
        let history = self
            .samples
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, after)| {
                let since = after.at_ms.saturating_sub(HISTORY_RATE.as_millis() as u64);
                let before = self
                    .samples
                    .iter()
                    .take(i)
                    .find(|s| s.at_ms >= since)
                    .unwrap_or(&self.samples[i - 1]);
                history_point(before, after)
            })
            .collect();
        Some(StatusReport {
            v: ENVELOPE_VERSION,
            at_ms: newest.at_ms,
            rate_window_secs: secs,
            servers,
            history,
        })
    }
}

fn history_point(before: &Sample, after: &Sample) -> HistoryPoint {
    let secs = (after.at_ms.saturating_sub(before.at_ms) as f64 / 1000.0).max(0.001);
    let mut point = HistoryPoint {
        at_ms: after.at_ms,
        queued: Default::default(),
        calls_per_sec: Default::default(),
    };
    for (now, _) in &after.servers {
        point.queued.insert(now.server.clone(), now.queued);
        let ended = before
            .servers
            .iter()
            .find(|(s, _)| s.server == now.server)
            .map_or(0, |(then, _)| now.ended.saturating_sub(then.ended));
        point
            .calls_per_sec
            .insert(now.server.clone(), ended as f64 / secs);
    }
    point
}

/// The upper bound (ms) of the bucket that holds quantile `q` of the counts in `buckets`
/// (bounds [`LATENCY_BOUNDS_MS`], the last bucket open-ended: reported as the last bound).
pub fn quantile(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(
                LATENCY_BOUNDS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]),
            );
        }
    }
    LATENCY_BOUNDS_MS.last().copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn server(name: &str, ended: u64, failed: u64, queued: u64) -> ServerStatus {
        ServerStatus {
            server: name.into(),
            lanes: Vec::new(),
            queued,
            ack_pending: 0,
            dlq: 0,
            workers: 1,
            circuit: CircuitState::Closed,
            circuits_not_closed: 0,
            up: Some(true),
            health_since_ms: None,
            in_flight: 0,
            calls_per_sec: 0.0,
            error_rate: 0.0,
            p50_ms: None,
            p99_ms: None,
            ended,
            failed,
            metrics: Vec::new(),
        }
    }

    fn buckets(fast: u64, slow: u64) -> Vec<u64> {
        let mut b = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        b[1] = fast; // <= 10 ms
        b[7] = slow; // <= 1 s
        b
    }

    #[test]
    fn quantiles_are_bucket_bounds() {
        assert_eq!(quantile(&buckets(0, 0), 0.5), None);
        assert_eq!(quantile(&buckets(99, 1), 0.5), Some(10));
        assert_eq!(quantile(&buckets(99, 1), 0.99), Some(10));
        assert_eq!(quantile(&buckets(98, 2), 0.99), Some(1_000));
    }

    #[test]
    fn rates_come_from_the_difference_over_the_window() {
        let mut window = Window::default();
        window.push(Sample {
            at_ms: 100_000,
            servers: vec![(server("a", 100, 10, 5), buckets(100, 0))],
        });
        assert_eq!(window.report().unwrap().servers[0].calls_per_sec, 0.0);
        window.push(Sample {
            at_ms: 110_000,
            servers: vec![(server("a", 300, 20, 7), buckets(200, 100))],
        });
        let report = window.report().unwrap();
        let a = &report.servers[0];
        assert_eq!(report.rate_window_secs, 10.0);
        assert_eq!(a.calls_per_sec, 20.0);
        assert_eq!(a.error_rate, 0.05);
        assert_eq!(a.p50_ms, Some(10));
        assert_eq!(a.p99_ms, Some(1_000));
        assert_eq!(report.history.len(), 1);
        assert_eq!(report.history[0].queued["a"], 7);
        assert_eq!(report.history[0].calls_per_sec["a"], 20.0);
    }

    #[test]
    fn a_worker_gone_never_makes_rates_negative_and_old_samples_leave() {
        let mut window = Window::default();
        window.push(Sample {
            at_ms: 0,
            servers: vec![(server("a", 500, 0, 0), buckets(500, 0))],
        });
        window.push(Sample {
            at_ms: 5_000,
            servers: vec![(server("a", 200, 0, 0), buckets(200, 0))],
        });
        let a = &window.report().unwrap().servers[0];
        assert_eq!(a.calls_per_sec, 0.0);
        assert_eq!(a.p50_ms, None);
        window.push(Sample {
            at_ms: 5_000 + HISTORY.as_millis() as u64 + 1,
            servers: vec![(server("a", 200, 0, 0), buckets(200, 0))],
        });
        assert_eq!(window.report().unwrap().history.len(), 0);
    }
}
