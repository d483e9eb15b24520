//! What operators watch: per-server `health` checks, `alerts` webhooks, the `audit` stream's
//! retention and `telemetry` (OTLP trace export) — raw sections as written and their validation.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    ConfigError, Secret,
    values::{ByteSizeText, DurationText},
};

/// `servers[].health`: how workers ping the upstream.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthSection {
    /// Time between pings, e.g. "15s" (default 15s); "0s" turns health checks off.
    #[serde(default)]
    pub interval: Option<DurationText>,
    /// How long a ping may take before it counts as failed (default 5s).
    #[serde(default)]
    pub timeout: Option<DurationText>,
    /// Failed pings in a row before the server is down (default 3); one success brings it up.
    #[serde(default)]
    pub unhealthy_after: Option<u32>,
    /// Least time between two alerts about this server, e.g. "5m" (the default): a server that
    /// flaps faster is reported once it has held still for that long.
    #[serde(default)]
    pub min_alert_interval: Option<DurationText>,
}

/// Active health checks of one server, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// `None`: no health checks.
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub min_alert_interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Some(Duration::from_secs(15)),
            timeout: Duration::from_secs(5),
            unhealthy_after: 3,
            min_alert_interval: Duration::from_secs(300),
        }
    }
}

pub(super) fn health(
    path: &str,
    section: Option<HealthSection>,
    errors: &mut Vec<ConfigError>,
) -> HealthConfig {
    let defaults = HealthConfig::default();
    let Some(s) = section else { return defaults };
    let interval = s.interval.map_or(defaults.interval, |d| Some(d.0));
    let health = HealthConfig {
        interval: interval.filter(|d| !d.is_zero()),
        timeout: s.timeout.map_or(defaults.timeout, |d| d.0),
        unhealthy_after: s.unhealthy_after.unwrap_or(defaults.unhealthy_after),
        min_alert_interval: s
            .min_alert_interval
            .map_or(defaults.min_alert_interval, |d| d.0),
    };
    if health.timeout.is_zero() {
        errors.push(ConfigError::field(
            format!("{path}.health.timeout"),
            "0 (at least 1ms)",
        ));
    }
    if let Some(interval) = health.interval
        && interval < Duration::from_millis(100)
    {
        errors.push(ConfigError::field(
            format!("{path}.health.interval"),
            format!("{interval:?} is too short (at least 100ms, or 0s for no health checks)"),
        ));
    }
    if health.unhealthy_after == 0 {
        errors.push(ConfigError::field(
            format!("{path}.health.unhealthyAfter"),
            "0 (at least 1 failed ping)",
        ));
    }
    health
}

/// One entry of `alerts:`: a webhook told when a server goes down or comes back.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertSection {
    /// The webhook URL; may use ${env:NAME} and ${file:PATH} (Slack webhook URLs are secrets).
    pub url: String,
    /// `slack` (an incoming-webhook message) or `json` (mcpq's alert object).
    pub kind: AlertKind,
}

/// The body an alert webhook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// `{"text": "..."}`, what Slack's incoming webhooks take.
    Slack,
    /// mcpq's `Alert` object (see docs/operations.md).
    Json,
}

/// A validated alert target.
#[derive(Debug, Clone)]
pub struct AlertTarget {
    pub url: Secret,
    pub kind: AlertKind,
}

pub(super) fn alerts(
    sections: Vec<AlertSection>,
    errors: &mut Vec<ConfigError>,
) -> Vec<AlertTarget> {
    let mut targets = Vec::new();
    for (i, section) in sections.into_iter().enumerate() {
        let path = format!("alerts[{i}].url");
        let url = match Secret::parse(&section.url) {
            Ok(url) => url,
            Err(e) => {
                errors.push(ConfigError::field(path, e));
                continue;
            }
        };
        // A literal URL is checked now; one from a secret when it is read.
        if !section.url.contains("${")
            && !section.url.starts_with("http://")
            && !section.url.starts_with("https://")
        {
            errors.push(ConfigError::field(
                path,
                format!(
                    "{:?} is not a URL (expected http:// or https://)",
                    section.url
                ),
            ));
            continue;
        }
        targets.push(AlertTarget {
            url,
            kind: section.kind,
        });
    }
    targets
}

/// `audit:`: how long the `MCPQ_AUDIT` stream keeps its records.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditSection {
    /// Oldest record kept, e.g. "30d" (default 7 days).
    #[serde(default)]
    pub max_age: Option<DurationText>,
    /// Most bytes kept, e.g. "1GiB" (default 128MiB: about 900,000 calls); the oldest records
    /// go first.
    #[serde(default)]
    pub max_bytes: Option<ByteSizeText>,
}

/// The audit stream's retention, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuditConfig {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 128 * 1024 * 1024,
        }
    }
}

pub(super) fn audit(section: Option<AuditSection>, errors: &mut Vec<ConfigError>) -> AuditConfig {
    let defaults = AuditConfig::default();
    let Some(s) = section else { return defaults };
    let audit = AuditConfig {
        max_age: s.max_age.map_or(defaults.max_age, |d| d.0),
        max_bytes: s.max_bytes.map_or(defaults.max_bytes, |b| b.0),
    };
    if audit.max_age < Duration::from_secs(1) {
        errors.push(ConfigError::field(
            "audit.maxAge",
            format!("{:?} is too short (at least 1s)", audit.max_age),
        ));
    }
    if audit.max_bytes < 1024 * 1024 {
        errors.push(ConfigError::field(
            "audit.maxBytes",
            format!("{} bytes is too small (at least 1MiB)", audit.max_bytes),
        ));
    }
    audit
}

/// `telemetry:`: where traces go.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TelemetrySection {
    /// OTLP/HTTP collector, e.g. http://otel-collector:4318 (spans go to /v1/traces). Absent:
    /// no export (trace ids still travel with every job and land in the audit stream).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (default mcpq).
    #[serde(default)]
    pub service_name: Option<String>,
}

/// Trace export, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TelemetryConfig {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

pub(super) fn telemetry(
    section: Option<TelemetrySection>,
    errors: &mut Vec<ConfigError>,
) -> TelemetryConfig {
    let Some(s) = section else {
        return TelemetryConfig::default();
    };
    if let Some(url) = &s.otlp_endpoint
        && let Err(e) = super::values::check_http_url(url)
    {
        errors.push(ConfigError::field("telemetry.otlpEndpoint", e));
    }
    TelemetryConfig {
        otlp_endpoint: s.otlp_endpoint,
        service_name: s.service_name,
    }
}
