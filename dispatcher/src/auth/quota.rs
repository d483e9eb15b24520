//! Per-principal limits shared by every dispatcher replica, kept in KV `mcpq_quotas` with
//! compare-and-set updates (no replica trusts its own count alone):
//!
//! - `callsPerMinute`: a counter per principal and clock minute (`calls.<principal>.<minute>`);
//!   a call over it is refused until the minute ends (`Retry-After`).
//! - `maxInFlight`: the calls a principal has open on dispatchers (MCP calls waiting for their
//!   result), one entry per replica in `inflight.<principal>`. Each replica refreshes its entry
//!   while it holds calls; a replica that died stops counting after [`STALE`], so a crash never
//!   locks a principal out. Jobs submitted to `/v1` and left to run are counted by
//!   `callsPerMinute` only: nobody holds them open.

use crate::lock;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::kv;
use mcpq_schemas::{names::QUOTAS_BUCKET, now_ms};
use serde::{Deserialize, Serialize};

use super::Caller;

/// How long a replica's in-flight entry counts without a refresh.
pub const STALE: Duration = Duration::from_secs(30);
const REFRESH: Duration = Duration::from_secs(10);
/// Compare-and-set attempts before giving up on a contended counter.
const ATTEMPTS: usize = 50;

/// A call refused for a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    /// `callsPerMinute` or `maxInFlight`.
    pub limit: &'static str,
    pub retry_after: Duration,
    pub message: String,
}

/// The limits of one dispatcher.
#[derive(Clone)]
pub struct Quotas {
    kv: kv::Store,
    /// This replica's name in in-flight entries.
    replica: String,
    /// Calls this replica holds open, by principal.
    held: Arc<Mutex<HashMap<String, u32>>>,
    /// Principals the config names, shown by name in metrics.
    named: Arc<std::collections::BTreeSet<String>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct InFlightEntry {
    /// Per replica: calls held open, and when that was last written.
    replicas: BTreeMap<String, (u32, u64)>,
}

impl InFlightEntry {
    fn live_total(&self, now: u64) -> u32 {
        self.replicas
            .values()
            .filter(|(_, at)| now.saturating_sub(*at) < STALE.as_millis() as u64)
            .map(|(n, _)| n)
            .sum()
    }
}

/// A call counted in flight; dropping it gives the slot back.
pub struct Held {
    quotas: Quotas,
    principal: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (quotas, principal) = (self.quotas.clone(), std::mem::take(&mut self.principal));
        tokio::spawn(async move { quotas.release(&principal).await });
    }
}

/// A KV key token for a principal: any text, as hex.
fn token(principal: &str) -> String {
    principal.bytes().map(|b| format!("{b:02x}")).collect()
}

impl Quotas {
    /// `named`: the principals metrics may name (API keys, when `auth.metricsByPrincipal`);
    /// others are shown by their source, `key` or `jwt`, and no label grows per caller.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        named: std::collections::BTreeSet<String>,
    ) -> Result<Quotas, crate::StoreError> {
        let kv = js
            .get_key_value(QUOTAS_BUCKET)
            .await
            .map_err(crate::StoreError::at(format!("bucket {QUOTAS_BUCKET}")))?;
        let quotas = Quotas {
            kv,
            replica: uuid::Uuid::now_v7().simple().to_string(),
            held: Arc::default(),
            named: Arc::new(named),
        };
        let refresher = quotas.clone();
        tokio::spawn(async move { refresher.refresh_loop().await });
        Ok(quotas)
    }

    /// Counts `calls` against the caller's `callsPerMinute`.
    pub async fn admit_calls(&self, caller: &Caller, calls: u32) -> Result<(), OverLimit> {
        let (Some(principal), Some(limit)) = (caller.principal(), caller.limits().calls_per_minute)
        else {
            return Ok(());
        };
        let now = now_ms();
        let minute = now / 60_000;
        let retry_after = Duration::from_millis(60_000 - now % 60_000).max(Duration::from_secs(1));
        let key = format!("calls.{}.{minute}", token(principal));
        let over = |used: u64| OverLimit {
            limit: "callsPerMinute",
            retry_after,
            message: format!(
                "principal {principal:?} is over its limit of {limit} calls per minute ({used} used, {calls} more asked); retry in {}s",
                retry_after.as_secs()
            ),
        };
        for _ in 0..ATTEMPTS {
            let entry = self.kv.entry(&key).await.ok().flatten();
            let (used, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(0),
                    Some(e.revision),
                ),
                _ => (0, None),
            };
            if used + u64::from(calls) > u64::from(limit) {
                return Err(over(used));
            }
            let value = (used + u64::from(calls)).to_string().into_bytes().into();
            let written = match revision {
                Some(revision) => self.kv.update(&key, value, revision).await.is_ok(),
                None => self.kv.create(&key, value).await.is_ok(),
            };
            if written {
                self.used(principal, "calls_per_minute", used + u64::from(calls));
                return Ok(());
            }
        }
        // A counter this contended is a caller far over any sane limit.
        Err(over(u64::from(limit)))
    }

    /// Counts one open call against the caller's `maxInFlight`, until the [`Held`] drops.
    pub async fn hold(&self, caller: &Caller) -> Result<Option<Held>, OverLimit> {
        let (Some(principal), Some(limit)) = (caller.principal(), caller.limits().max_in_flight)
        else {
            return Ok(None);
        };
        let total = std::sync::atomic::AtomicU32::new(0);
        let ok = self
            .change(principal, |entry, mine, now| {
                let live = entry.live_total(now);
                if live >= limit {
                    return false;
                }
                *mine += 1;
                total.store(live + 1, std::sync::atomic::Ordering::Relaxed);
                true
            })
            .await;
        match ok {
            Some(true) => Ok(Some(Held {
                quotas: {
                    self.used(
                        principal,
                        "max_in_flight",
                        u64::from(total.load(std::sync::atomic::Ordering::Relaxed)),
                    );
                    self.clone()
                },
                principal: principal.to_string(),
            })),
            _ => Err(OverLimit {
                limit: "maxInFlight",
                retry_after: Duration::from_secs(1),
                message: format!(
                    "principal {principal:?} has {limit} calls in flight, its maxInFlight; retry when one ends"
                ),
            }),
        }
    }

    async fn release(&self, principal: &str) {
        let total = std::sync::atomic::AtomicU32::new(0);
        self.change(principal, |entry, mine, now| {
            *mine = mine.saturating_sub(1);
            total.store(
                entry.live_total(now).saturating_sub(1),
                std::sync::atomic::Ordering::Relaxed,
            );
            true
        })
        .await;
        self.used(
            principal,
            "max_in_flight",
            u64::from(total.load(std::sync::atomic::Ordering::Relaxed)),
        );
    }

    /// Shows a principal's use of a limit as `mcpq_quota_used`.
    fn used(&self, principal: &str, limit: &'static str, value: u64) {
        // Only the source (`key`, `jwt`) unless the config asks for names (`auth.metricsByPrincipal`).
        let principal = if self.named.contains(principal) {
            principal.to_string()
        } else {
            principal.split(':').next().unwrap_or("jwt").to_string()
        };
        metrics::gauge!(mcpq_schemas::metrics::QUOTA_USED, "principal" => principal, "limit" => limit)
            .set(value as f64);
    }

    /// Applies `f` to this replica's count in the principal's entry (compare-and-set); `f`
    /// returning false leaves everything as it was. `None`: the entry could not be written.
    async fn change(
        &self,
        principal: &str,
        f: impl Fn(&InFlightEntry, &mut u32, u64) -> bool,
    ) -> Option<bool> {
        let key = format!("inflight.{}", token(principal));
        for _ in 0..ATTEMPTS {
            let now = now_ms();
            let current = self.kv.entry(&key).await.ok().flatten();
            let (mut entry, revision) = match &current {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<InFlightEntry>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                _ => (InFlightEntry::default(), None),
            };
            // This replica's count as stored is the one to change: the entry read is the one the
            // write will replace (compare-and-set), so two holds racing here cannot both start
            // from the same count. Only an entry gone stale falls back to what this replica knows.
            let stored = entry
                .replicas
                .get(&self.replica)
                .filter(|(_, at)| now.saturating_sub(*at) < STALE.as_millis() as u64)
                .map(|(n, _)| *n);
            let mut mine =
                stored.unwrap_or_else(|| lock(&self.held).get(principal).copied().unwrap_or(0));
            if !f(&entry, &mut mine, now) {
                return Some(false);
            }
            entry.replicas.insert(self.replica.clone(), (mine, now));
            entry
                .replicas
                .retain(|_, (n, at)| *n > 0 && now.saturating_sub(*at) < STALE.as_millis() as u64);
            let value = serde_json::to_vec(&entry).unwrap_or_default().into();
            let written = match revision {
                Some(revision) => self.kv.update(&key, value, revision).await.is_ok(),
                None => self.kv.create(&key, value).await.is_ok(),
            };
            if written {
                let mut held = lock(&self.held);
                if mine == 0 {
                    held.remove(principal);
                } else {
                    held.insert(principal.to_string(), mine);
                }
                return Some(true);
            }
        }
        None
    }

    /// Keeps this replica's entries fresh while it holds calls.
    async fn refresh_loop(self) {
        loop {
            tokio::time::sleep(REFRESH).await;
            let principals: Vec<String> = lock(&self.held).keys().cloned().collect();
            for principal in principals {
                self.change(&principal, |_, _, _| true).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_replica_stops_counting() {
        let now = 100_000;
        let mut entry = InFlightEntry::default();
        entry.replicas.insert("a".into(), (3, now - 1_000));
        entry
            .replicas
            .insert("dead".into(), (5, now - STALE.as_millis() as u64));
        assert_eq!(entry.live_total(now), 3);
        assert_eq!(token("a.b c"), "612e622063");
    }
}
