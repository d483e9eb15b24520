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
}

impl KvSessions {
    pub(crate) async fn open(js: &async_nats::jetstream::Context) -> Result<Self, String> {
        let bucket = js
            .get_key_value(SESSIONS_BUCKET)
            .await
            .map_err(|e| format!("bucket {SESSIONS_BUCKET}: {e}"))?;
        Ok(KvSessions { bucket })
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
