//! Callbacks: when a job that named a `callbackUrl` ends, its [`DoneEvent`] waits in
//! `MCPQ_CALLBACKS` (stored by whoever ended the job) until a dispatcher POSTs it, signed per
//! Standard Webhooks (`webhook-id` = job id and status, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`). Every dispatcher shares
//! one durable consumer: at least once, retried with backoff for `callbacks.retryFor`, then
//! moved to `MCPQ_CALLBACKS_DEAD`; a `410 Gone` stops it. Targets on loopback, private or
//! link-local addresses are refused (when submitted and again when called, against DNS
//! rebinding) unless `callbacks.allowHosts` names them.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, AckKind,
        consumer::{AckPolicy, pull},
    },
};
use base64::Engine;
use futures::StreamExt;
use hmac::Mac;
use mcpq_schemas::{
    DoneEvent,
    config::CallbacksConfig,
    metrics::CALLBACKS_TOTAL,
    names::{CALLBACKS_CONSUMER, CALLBACKS_STREAM, dead_callback_subject},
};
use tokio_util::sync::CancellationToken;

/// Longest wait between two tries.
const MOST_BACKOFF: Duration = Duration::from_secs(3600);
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long resolving a callback's host may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Callbacks one dispatcher delivers at once: a target that never answers holds one of them,
/// not everybody's.
const AT_ONCE: usize = 32;

/// Why a callback target is refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("callbackUrl: callbacks are not configured on this deployment (set callbacks.secret)")]
    NotConfigured,
    #[error("callbackUrl: {0:?} is not an http or https URL with a host and without credentials")]
    NotUrl(String),
    #[error("callbackUrl: cannot resolve {host:?}: {reason}")]
    Unresolved { host: String, reason: String },
    #[error(
        "callbackUrl: {host:?} is at {ip}, a loopback, private or link-local address: callbacks go there only if callbacks.allowHosts lists the host"
    )]
    Private { host: String, ip: IpAddr },
}

/// The callback settings a dispatcher runs with: the signing key and where calls may go.
#[derive(Clone)]
pub struct Callbacks {
    key: Vec<u8>,
    pub retry_for: Duration,
    allow_hosts: Vec<String>,
    defaults: std::collections::BTreeMap<String, String>,
}

impl Callbacks {
    /// From the config: `None` when no secret is configured (no callbacks are taken then).
    pub fn from_config(config: &CallbacksConfig) -> Result<Option<Callbacks>, String> {
        let Some(secret) = &config.secret else {
            return Ok(None);
        };
        let text = secret
            .resolve()
            .map_err(|e| format!("callbacks.secret: {e}"))?;
        let key = mcpq_schemas::config::secret_bytes(&text)
            .map_err(|e| format!("callbacks.secret {e}"))?;
        Ok(Some(Callbacks {
            key,
            retry_for: config.retry_for,
            allow_hosts: config.allow_hosts.clone(),
            defaults: config.defaults.clone(),
        }))
    }

    /// The callback URL of a job `principal` submits with `asked` (its own, or the principal's
    /// default).
    pub fn url_for(&self, asked: Option<&str>, principal: Option<&str>) -> Option<String> {
        asked
            .map(str::to_string)
            .or_else(|| principal.and_then(|p| self.defaults.get(p).cloned()))
    }

    /// The addresses `url` may be called at, or why it may not be.
    pub async fn target(&self, url: &str) -> Result<Vec<SocketAddr>, TargetError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| TargetError::NotUrl(url.into()))?;
        let host = match (parsed.scheme(), parsed.host_str()) {
            ("http" | "https", Some(host))
                if !host.is_empty()
                    && parsed.username().is_empty()
                    && parsed.password().is_none() =>
            {
                host.to_string()
            }
            _ => return Err(TargetError::NotUrl(url.into())),
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((bare.as_str(), port)))
                .await
                .map_err(|_| TargetError::Unresolved {
                    host: host.clone(),
                    reason: format!("no answer within {DNS_TIMEOUT:?}"),
                })?
                .map_err(|e| TargetError::Unresolved {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .collect();
        if addrs.is_empty() {
            return Err(TargetError::Unresolved {
                host,
                reason: "no address".into(),
            });
        }
        let allowed = self
            .allow_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&bare));
        if !allowed && let Some(addr) = addrs.iter().find(|a| !public(a.ip())) {
            return Err(TargetError::Private {
                host,
                ip: addr.ip(),
            });
        }
        Ok(addrs)
    }

    /// The `webhook-signature` of `body` sent as `id` at `timestamp` (Unix seconds).
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!("v1,{signature}")
    }
}

/// Whether `ip` is an address callbacks may go to without being allowed by name: not
/// loopback, private, link-local, shared (CGNAT), reserved, documentation, benchmarking,
/// multicast or unspecified — nor an IPv6 form that carries such an IPv4 address (mapped,
/// compatible, NAT64, 6to4).
fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (b & 0xc0) == 64)
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b & 0xfe) == 18)
                || a >= 240
                || v4 == std::net::Ipv4Addr::new(168, 63, 129, 16))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            // IPv4 inside: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), translated
            // (::ffff:0:a.b.c.d), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16).
            let inside = if let Some(v4) = v6.to_ipv4_mapped() {
                Some(v4)
            } else if s[..6] == [0; 6]
                || s[..6] == [0, 0, 0, 0, 0xffff, 0]
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
            {
                Some(embedded(s[6], s[7]))
            } else if s[0] == 0x2002 {
                Some(embedded(s[1], s[2]))
            } else {
                None
            };
            if let Some(v4) = inside {
                return public(IpAddr::V4(v4));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0)
                || (s[0] == 0x2001 && s[1] == 0xdb8))
        }
    }
}

/// The wait before try `n + 1` (from 1 s, doubling, at most an hour, with jitter).
fn backoff(tries: u64, unit: f64) -> Duration {
    let base = Duration::from_secs(1u64 << tries.saturating_sub(1).min(12)).min(MOST_BACKOFF);
    base.mul_f64(0.75 + unit.clamp(0.0, 1.0) * 0.5)
}

/// Delivers callbacks until `shutdown`, binding the shared consumer again after any failure.
pub async fn run(js: jetstream::Context, callbacks: Callbacks, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Err(e) = deliver_all(&js, &callbacks, &shutdown).await {
            tracing::debug!(error = %e, "callbacks: binding the consumer again");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn deliver_all(
    js: &jetstream::Context,
    callbacks: &Callbacks,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let consumer = js
        .get_stream(CALLBACKS_STREAM)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(CALLBACKS_CONSUMER.into()),
            description: Some("mcpq dispatchers delivering callbacks".into()),
            ack_policy: AckPolicy::Explicit,
            // Longer than the slowest try (name lookup and POST), with the most waiting for a
            // turn here at the dispatcher.
            ack_wait: (DNS_TIMEOUT + POST_TIMEOUT) * 4,
            max_deliver: -1,
            ..Default::default()
        })
        .await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(AT_ONCE)
        .messages()
        .await?;
    let failed: std::sync::Mutex<Option<async_nats::Error>> = std::sync::Mutex::new(None);
    messages
        .take_until(shutdown.cancelled())
        .take_while(|message| {
            let ok = message.is_ok();
            if let Err(e) = message {
                *crate::lock(&failed) = Some(e.to_string().into());
            }
            std::future::ready(ok)
        })
        .for_each_concurrent(AT_ONCE, |message| async move {
            let Ok(message) = message else { return };
            let tries = message.info().map(|i| i.delivered).unwrap_or(1).max(1) as u64;
            let (outcome, ack) = deliver(js, callbacks, &message, tries).await;
            metrics::counter!(CALLBACKS_TOTAL, "outcome" => outcome).increment(1);
            let _ = message.ack_with(ack).await;
        })
        .await;
    match crate::lock(&failed).take() {
        Some(e) => Err(e),
        None if shutdown.is_cancelled() => Ok(()),
        None => Err("the callbacks consumer's stream ended".into()),
    }
}

/// One try of one callback: its outcome label and what to do with the message.
async fn deliver(
    js: &jetstream::Context,
    callbacks: &Callbacks,
    message: &jetstream::Message,
    tries: u64,
) -> (&'static str, AckKind) {
    let Ok(event) = serde_json::from_slice::<DoneEvent>(&message.payload) else {
        return bury(js, message, "unknown", "not a done event").await;
    };
    let server = event.data.server.clone();
    let Some(url) = event.data.callback_url.clone() else {
        return ("delivered", AckKind::Ack);
    };
    let webhook_id = event.webhook_id();
    let age =
        Duration::from_millis(mcpq_schemas::now_ms().saturating_sub(event.data.updated_at_ms));
    let addrs = match callbacks.target(&url).await {
        Ok(addrs) => addrs,
        Err(e @ (TargetError::Private { .. } | TargetError::NotUrl(_))) => {
            tracing::warn!(%webhook_id, error = %e, "callback refused");
            return match bury(js, message, &server, &e.to_string()).await {
                ("dead", ack) => ("refused", ack),
                other => other,
            };
        }
        Err(e) => {
            return retry_or_bury(js, message, &server, &e.to_string(), age, tries, callbacks)
                .await;
        }
    };
    let timestamp = mcpq_schemas::now_ms() / 1000;
    let body = message.payload.to_vec();
    let signature = callbacks.sign(&webhook_id, timestamp, &body);
    // The address checked is the one called: a name that resolves elsewhere a moment later
    // (DNS rebinding) is not asked again.
    let pinned = reqwest::Url::parse(&url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .and_then(|host| {
            reqwest::Client::builder()
                .timeout(POST_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .resolve_to_addrs(&host, &addrs)
                .build()
                .ok()
        });
    let Some(pinned) = pinned else {
        let why = "cannot make a client pinned to the checked address";
        return retry_or_bury(js, message, &server, why, age, tries, callbacks).await;
    };
    let sent = pinned
        .post(&url)
        .header("content-type", "application/json")
        .header("webhook-id", &webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => ("delivered", AckKind::Ack),
        Ok(response) if response.status() == reqwest::StatusCode::GONE => {
            tracing::info!(%webhook_id, %url, "callback target is gone (410); not sent again");
            ("gone", AckKind::Ack)
        }
        Ok(response) => {
            let why = format!("{url} answered {}", response.status());
            retry_or_bury(js, message, &server, &why, age, tries, callbacks).await
        }
        Err(e) => {
            let why = format!("{url}: {e}");
            retry_or_bury(js, message, &server, &why, age, tries, callbacks).await
        }
    }
}

async fn retry_or_bury(
    js: &jetstream::Context,
    message: &jetstream::Message,
    server: &str,
    why: &str,
    age: Duration,
    tries: u64,
    callbacks: &Callbacks,
) -> (&'static str, AckKind) {
    if age >= callbacks.retry_for {
        tracing::warn!(
            why,
            tries,
            "callback never landed within callbacks.retryFor; dead-lettered"
        );
        return bury(js, message, server, why).await;
    }
    let wait = backoff(tries, fastrand::f64()).min(callbacks.retry_for.saturating_sub(age));
    tracing::debug!(why, tries, ?wait, "callback did not land; trying again");
    ("retried", AckKind::Nak(Some(wait)))
}

/// Keeps a callback that will not be delivered in the dead callbacks, with its reason; if it
/// cannot be kept there, it stays queued and is tried again later.
async fn bury(
    js: &jetstream::Context,
    message: &jetstream::Message,
    server: &str,
    why: &str,
) -> (&'static str, AckKind) {
    let mut headers = HeaderMap::new();
    let reason: String = why.chars().filter(|c| !c.is_control()).take(512).collect();
    headers.insert("Mcpq-Callback-Error", reason.as_str());
    let stored = match js
        .publish_with_headers(
            dead_callback_subject(server),
            headers,
            message.payload.clone(),
        )
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    if stored {
        ("dead", AckKind::Ack)
    } else {
        tracing::warn!(why, "cannot keep a dead callback; it stays queued");
        ("retried", AckKind::Nak(Some(Duration::from_secs(60))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn callbacks(allow: &[&str]) -> Callbacks {
        Callbacks {
            key: b"0123456789abcdef".to_vec(),
            retry_for: Duration::from_secs(3600),
            allow_hosts: allow.iter().map(|s| s.to_string()).collect(),
            defaults: Default::default(),
        }
    }

    #[test]
    fn the_signature_is_standard_webhooks_v1() {
        // HMAC-SHA256 over "id.timestamp.body", base64, prefixed "v1,".
        let signature = callbacks(&[]).sign("msg_1", 1_700_000_000, b"{}");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(b"msg_1.1700000000.{}");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(signature, format!("v1,{expected}"));
    }

    #[tokio::test]
    async fn private_targets_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://10.0.0.1/x",
            "http://169.254.169.254/",
            "http://[::1]:8/",
        ] {
            assert!(
                matches!(
                    callbacks(&[]).target(url).await,
                    Err(TargetError::Private { .. })
                ),
                "{url}"
            );
        }
        assert!(
            callbacks(&["127.0.0.1"])
                .target("http://127.0.0.1:9/x")
                .await
                .is_ok()
        );
        assert!(matches!(
            callbacks(&[]).target("ftp://example.com/").await,
            Err(TargetError::NotUrl(_))
        ));
        assert!(public("93.184.216.34".parse().unwrap()));
        assert!(public("2606:4700::1111".parse().unwrap()));
        for private in [
            "100.64.0.1",
            "0.1.2.3",
            "192.0.0.192",
            "198.18.0.1",
            "240.0.0.1",
            "168.63.129.16",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "fec0::1",
            "fd00:ec2::254",
        ] {
            assert!(!public(private.parse().unwrap()), "{private}");
        }
        assert!(matches!(
            callbacks(&[]).target("http://user:pw@example.com/").await,
            Err(TargetError::NotUrl(_))
        ));
        assert!(!public("100.64.0.1".parse().unwrap()));
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.5), Duration::from_secs(8));
        assert_eq!(backoff(40, 0.5), MOST_BACKOFF);
    }
}
