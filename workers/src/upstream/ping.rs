//! Is the upstream alive? An MCP `ping` (a `tools/list` for an upstream that does not know
//! `ping`): the circuit breaker's probe, the health checks, and the test of an ejected endpoint.

use std::time::Duration;

use rmcp::{
    RoleClient, ServiceError,
    model::ClientRequest,
    service::{Peer, PeerRequestOptions},
};

use super::{Upstream, Verdict};

impl Upstream {
    /// Whether the upstream answers within `timeout`, opening a session first if there is none.
    /// Any answer, even a JSON-RPC error, shows it is alive.
    pub(crate) async fn probe(&self, timeout: Duration) -> Verdict {
        let peer = match tokio::time::timeout(timeout, self.peer()).await {
            Ok(Ok(peer)) => peer,
            Ok(Err(_)) | Err(_) => return Verdict::Retryable,
        };
        if ping(&peer, timeout).await {
            Verdict::Answered
        } else {
            Verdict::Retryable
        }
    }
}

/// Whether the session's server answers a `ping` (or, not knowing `ping`, a `tools/list`)
/// within `timeout`; any answer, even an error, counts.
pub(crate) async fn ping(peer: &Peer<RoleClient>, timeout: Duration) -> bool {
    let ask = |request: ClientRequest| {
        let peer = peer.clone();
        async move {
            let handle = peer
                .send_request_with_option(request, PeerRequestOptions::with_timeout(timeout))
                .await?;
            handle.await_response().await
        }
    };
    let ping = ClientRequest::PingRequest(rmcp::model::PingRequest::default());
    let answer = match ask(ping).await {
        Err(ServiceError::McpError(e)) if e.code == rmcp::model::ErrorCode::METHOD_NOT_FOUND => {
            let list = rmcp::model::ListToolsRequest {
                method: Default::default(),
                params: None,
                extensions: Default::default(),
            };
            ask(ClientRequest::ListToolsRequest(list)).await
        }
        other => other,
    };
    matches!(answer, Ok(_) | Err(ServiceError::McpError(_)))
}
