//! 2025-era MCP sessions that outlive the dispatcher replica that opened them: rmcp keeps each
//! session in memory and asks this store for one it does not know, so a client whose next
//! request lands on another replica (or on a restarted one) carries on without a new
//! `initialize`. The store holds the client's `initialize` only (KV `mcpq_sessions`, TTL
//! `nats.resultTtl`); what a session chose later (its log level) stays with the replica.
//! 2026-07-28 clients have no sessions.

use async_nats::jetstream::kv;
use mcpq_schemas::names::SESSIONS_BUCKET;
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

/// Sessions in KV.
pub(crate) struct KvSessions {
    bucket: kv::Store,
    /// Who opened each session this replica has seen, and the sessions each principal holds
    /// open here (for `--max-sessions`).
    owners: std::sync::Mutex<Owners>,
}

#[derive(Default)]
struct Owners {
    /// Session id → its principal ("" for an anonymous caller), as stored.
    known: std::collections::HashMap<String, String>,
    /// Principal → the sessions it opened through this replica, with when each was last used.
    open: std::collections::HashMap<String, std::collections::HashMap<String, std::time::Instant>>,
}

/// A session unused this long no longer counts against its principal's `--max-sessions`.
const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The KV key of a session's owner.
fn owner_key(session_id: &str) -> Result<String, SessionStoreError> {
    Ok(format!("owner.{}", key(session_id)?))
}

impl KvSessions {
    pub(crate) async fn open(
        js: &async_nats::jetstream::Context,
    ) -> Result<Self, crate::StoreError> {
        let bucket = js
            .get_key_value(SESSIONS_BUCKET)
            .await
            .map_err(crate::StoreError::at(format!("bucket {SESSIONS_BUCKET}")))?;
        Ok(KvSessions {
            bucket,
            owners: Default::default(),
        })
    }

    /// Whether `principal` ("" for anonymous) may use session `session_id`: it opened it. A
    /// session whose owner is not known (it never was, or it expired) is nobody's.
    pub(crate) async fn owned_by(&self, session_id: &str, principal: &str) -> bool {
        let known = crate::lock(&self.owners).known.get(session_id).cloned();
        let owner = match known {
            Some(owner) => Some(owner),
            None => {
                let Ok(key) = owner_key(session_id) else {
                    return false;
                };
                let stored = self.bucket.get(key).await.ok().flatten();
                let owner = stored.and_then(|b| String::from_utf8(b.to_vec()).ok());
                if let Some(owner) = &owner {
                    crate::lock(&self.owners)
                        .known
                        .insert(session_id.to_string(), owner.clone());
                }
                owner
            }
        };
        let mine = owner.as_deref() == Some(principal);
        if mine
            && let Some(open) = crate::lock(&self.owners).open.get_mut(principal)
            && let Some(used) = open.get_mut(session_id)
        {
            *used = std::time::Instant::now();
        }
        mine
    }

    /// Whether `principal` holds fewer than `most` sessions open through this replica.
    pub(crate) fn may_open(&self, principal: &str, most: usize) -> bool {
        let mut owners = crate::lock(&self.owners);
        let open = owners.open.entry(principal.to_string()).or_default();
        open.retain(|_, used| used.elapsed() < SESSION_IDLE);
        open.len() < most
    }

    /// Records that `principal` opened `session_id`.
    pub(crate) async fn opened(&self, session_id: &str, principal: &str) {
        {
            let mut owners = crate::lock(&self.owners);
            owners
                .known
                .insert(session_id.to_string(), principal.to_string());
            owners
                .open
                .entry(principal.to_string())
                .or_default()
                .insert(session_id.to_string(), std::time::Instant::now());
        }
        if let Ok(key) = owner_key(session_id)
            && let Err(e) = self
                .bucket
                .put(key, principal.as_bytes().to_vec().into())
                .await
        {
            tracing::warn!(error = %e, "cannot store a session's owner; other replicas will not carry it on");
        }
    }

    /// Records that `session_id` was closed.
    pub(crate) fn closed(&self, session_id: &str) {
        let mut owners = crate::lock(&self.owners);
        if let Some(owner) = owners.known.remove(session_id)
            && let Some(open) = owners.open.get_mut(&owner)
        {
            open.remove(session_id);
        }
    }
}

/// Session ids are KV keys only when they are made of key characters (rmcp's are UUIDs).
fn key(session_id: &str) -> Result<&str, SessionStoreError> {
    if !session_id.is_empty()
        && session_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(session_id)
    } else {
        Err(format!("session id {session_id:?} is not a valid key").into())
    }
}

#[async_trait::async_trait]
impl SessionStore for KvSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let Ok(key) = key(session_id) else {
            return Ok(None);
        };
        match self.bucket.get(key).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let bytes = serde_json::to_vec(state)?;
        self.bucket.put(key(session_id)?, bytes.into()).await?;
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        self.bucket.delete(key(session_id)?).await?;
        Ok(())
    }
}
