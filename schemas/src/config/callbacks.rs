//! The `callbacks:` section: how mcpq tells a job's submitter that it ended (Standard Webhooks).

use std::{collections::BTreeMap, time::Duration};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{ConfigError, Secret, values::DurationText};

/// Signed HTTP callbacks when a job ends (`callbackUrl` on a job or schedule).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CallbacksSection {
    /// The Standard Webhooks signing secret, `whsec_` and base64, e.g.
    /// "${env:MCPQ_CALLBACK_SECRET}". Required for callbacks to be sent.
    #[serde(default)]
    pub secret: Option<String>,
    /// How long a callback that does not land is retried, with backoff, e.g. "24h" (the
    /// default); then it is dead-lettered.
    #[serde(default)]
    pub retry_for: Option<DurationText>,
    /// Hosts (as written in callback URLs) that may be called although they resolve to a
    /// loopback, private or link-local address; all others on such addresses are refused.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// A principal's callback URL for jobs that name none, by principal (`key:<name>` for an
    /// API key, or a JWT rule's principal).
    #[serde(default)]
    pub defaults: BTreeMap<String, String>,
}

/// The callbacks, validated.
#[derive(Debug, Clone)]
pub struct CallbacksConfig {
    pub secret: Option<Secret>,
    pub retry_for: Duration,
    pub allow_hosts: Vec<String>,
    pub defaults: BTreeMap<String, String>,
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        CallbacksConfig {
            secret: None,
            retry_for: DEFAULT_RETRY_FOR,
            allow_hosts: Vec::new(),
            defaults: BTreeMap::new(),
        }
    }
}

const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(24 * 3600);

pub(super) fn callbacks(
    section: Option<CallbacksSection>,
    errors: &mut Vec<ConfigError>,
) -> CallbacksConfig {
    let Some(section) = section else {
        return CallbacksConfig::default();
    };
    let secret = section
        .secret
        .as_deref()
        .and_then(|value| match Secret::parse(value) {
            Ok(secret) => {
                // A literal secret is checked now; one from the environment when it is read.
                if let Ok(text) = secret.resolve()
                    && !value.contains("${")
                    && let Err(e) = secret_bytes(&text)
                {
                    errors.push(ConfigError::field("callbacks.secret", e));
                }
                Some(secret)
            }
            Err(message) => {
                errors.push(ConfigError::field("callbacks.secret", message));
                None
            }
        });
    let retry_for = section.retry_for.map_or(DEFAULT_RETRY_FOR, |d| d.0);
    if retry_for < Duration::from_secs(60) {
        errors.push(ConfigError::field(
            "callbacks.retryFor",
            format!("{retry_for:?} is too short to retry anything (at least 1m)"),
        ));
    }
    for (principal, url) in &section.defaults {
        if let Err(e) = super::values::check_http_url(url) {
            errors.push(ConfigError::field(
                format!("callbacks.defaults.{principal}"),
                e.to_string(),
            ));
        }
    }
    CallbacksConfig {
        secret,
        retry_for,
        allow_hosts: section.allow_hosts,
        defaults: section.defaults,
    }
}

/// The key bytes of a Standard Webhooks secret (`whsec_` + base64), or what is wrong with it.
pub fn secret_bytes(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let Some(encoded) = text.strip_prefix("whsec_") else {
        return Err(
            "is not a Standard Webhooks secret: expected whsec_ followed by base64 (e.g. whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw)".into(),
        );
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("the part after whsec_ is not base64 ({e})"))?;
    if bytes.len() < 16 {
        return Err(format!(
            "the key is {} bytes; use at least 16 (24 to 64 random bytes, base64)",
            bytes.len()
        ));
    }
    Ok(bytes)
}
