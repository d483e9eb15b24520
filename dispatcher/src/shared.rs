//! What every endpoint of one dispatcher shares — the NATS client, the watched catalog, each
//! configured server's defaults — and the checks made before anything is queued.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    sync::Mutex,
    time::Duration,
};

use mcpq_schemas::{CatalogEntry, Lane, config::TaskPolicy};
use rmcp::model::ServerCapabilities;

use crate::{
    auth::{
        Caller,
        quota::{Held, OverLimit, Quotas},
    },
    catalog::Catalog,
    publish::Client,
};

/// What the dispatcher knows about one configured server.
#[derive(Debug, Clone)]
pub struct ServerDefaults {
    pub lane: Lane,
    pub timeout: Duration,
    pub tasks: TaskPolicy,
}

/// State shared by every endpoint of one dispatcher.
pub struct Shared {
    pub client: Client,
    /// The deployment's signing key: seals `requestState`, derives authenticated callers'
    /// idempotent job ids (the client signs their jobs with it too).
    pub signing: mcpq_schemas::seal::SigningKey,
    pub catalog: Catalog,
    pub servers: BTreeMap<String, ServerDefaults>,
    /// How long job records (and so tasks) are kept.
    pub result_ttl: Duration,
    /// Each endpoint's capabilities (by its server, `None` for `/mcp`) as of a catalog version:
    /// rmcp asks for them on every stateless request.
    pub capabilities: Mutex<HashMap<Option<String>, (u64, ServerCapabilities)>>,
    /// Per-principal limits, when any caller has some.
    pub quotas: Option<Quotas>,
    /// Slots for `/v1` long polls (each holds a JetStream watch while it waits).
    pub waits: std::sync::Arc<tokio::sync::Semaphore>,
    /// What each principal holds open here: long polls, listen streams.
    pub held: Arc<PerPrincipal>,
    /// The most of each that one principal may hold open (`--max-waits-per-principal`, also
    /// for listen streams).
    pub per_principal: usize,
    /// Signed callbacks when jobs end, when `callbacks.secret` is configured.
    pub callbacks: Option<crate::callbacks::Callbacks>,
}

/// Things one principal holds open on this dispatcher, counted, so that no caller takes all of
/// a bound that every caller shares.
#[derive(Default)]
pub struct PerPrincipal(Mutex<HashMap<(&'static str, String), usize>>);

/// One thing held; dropping it gives it back.
pub struct HeldOne {
    counts: Arc<PerPrincipal>,
    key: (&'static str, String),
}

impl Drop for HeldOne {
    fn drop(&mut self) {
        let mut counts = crate::lock(&self.counts.0);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl PerPrincipal {
    /// Holds one more `kind` for `principal`, unless it holds `most` already.
    pub fn hold(
        self: &Arc<Self>,
        kind: &'static str,
        principal: &str,
        most: usize,
    ) -> Option<HeldOne> {
        let key = (kind, principal.to_string());
        let mut counts = crate::lock(&self.0);
        let n = counts.entry(key.clone()).or_default();
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(HeldOne {
            counts: self.clone(),
            key,
        })
    }
}

/// Why a call is refused before anything is queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownServer(String),
    UnknownTool(String),
    /// A prompt, or a resource, the server does not offer.
    UnknownName(String),
    /// No worker has published the server's catalog yet: nothing can be checked, so nothing
    /// is let through.
    NoCatalog(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::UnknownServer(m)
            | Refusal::UnknownTool(m)
            | Refusal::UnknownName(m)
            | Refusal::NoCatalog(m) => m,
        }
    }
}

impl Shared {
    /// Gives `job` its callback URL (its own, or its principal's default), checked: callbacks
    /// configured, an http(s) URL, a host that may be called.
    pub async fn callback(
        &self,
        job: &mut mcpq_schemas::Job,
    ) -> Result<(), crate::callbacks::TargetError> {
        let Some(callbacks) = &self.callbacks else {
            return match job.callback_url {
                Some(_) => Err(crate::callbacks::TargetError::NotConfigured),
                None => Ok(()),
            };
        };
        job.callback_url = callbacks.url_for(job.callback_url.as_deref(), job.principal.as_deref());
        if let Some(url) = &job.callback_url {
            callbacks.target(url).await?;
        }
        Ok(())
    }

    /// Counts `calls` against the caller's calls per minute.
    pub async fn admit_calls(&self, caller: &Caller, calls: u32) -> Result<(), OverLimit> {
        match &self.quotas {
            Some(quotas) => quotas.admit_calls(caller, calls).await,
            None => Ok(()),
        }
    }

    /// Counts one call the caller holds open, against its calls per minute and in flight.
    pub async fn admit_open_call(&self, caller: &Caller) -> Result<Option<Held>, OverLimit> {
        let Some(quotas) = &self.quotas else {
            return Ok(None);
        };
        let held = quotas.hold(caller).await?;
        quotas.admit_calls(caller, 1).await?;
        Ok(held)
    }

    /// The defaults of `server`, if it is configured.
    pub fn server(&self, server: &str) -> Result<&ServerDefaults, Refusal> {
        self.servers.get(server).ok_or_else(|| {
            let known: Vec<_> = self.servers.keys().map(String::as_str).collect();
            Refusal::UnknownServer(format!(
                "unknown server {server:?} (servers: {})",
                known.join(", ")
            ))
        })
    }

    /// The defaults of `server`, if it is configured and a worker has published its catalog.
    /// The catalog is a listing, not a gate: a tool it does not list still goes to the
    /// upstream (servers disclose tools progressively, or by the client's capabilities, and a
    /// catalog may be a moment stale), whose answer passes through. Whether the caller may
    /// call it is decided before this, by its allow and deny lists.
    pub fn check(&self, server: &str) -> Result<&ServerDefaults, Refusal> {
        let defaults = self.server(server)?;
        self.listed(server)?;
        Ok(defaults)
    }

    /// Whether a worker has published `server`'s catalog: until one has, no worker serves it
    /// and nothing could run, so nothing is queued.
    fn listed(&self, server: &str) -> Result<(), Refusal> {
        self.catalog.with_server(server, |_| ()).ok_or_else(|| {
            Refusal::NoCatalog(format!(
                "server {server:?} has no catalog yet (no worker has listed its tools): start a worker for it, or try again shortly"
            ))
        })
    }

    /// The catalog entries of the configured servers, by name.
    pub fn entries(&self) -> BTreeMap<String, CatalogEntry> {
        let mut all = self.catalog.all();
        all.retain(|server, _| self.servers.contains_key(server));
        all
    }
}
