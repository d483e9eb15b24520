//! NATS mode: `tools/call` jobs published to JetStream, each reply awaited on the inbox.

use std::{sync::Arc, time::Duration};

use mcpq_dispatcher::{Client, ClientError};
use mcpq_schemas::{Job, JsonObject, McpRequest, Outcome, nats::connect};

use super::{CallFuture, Caller};

/// With `wait`, each call is a round trip; without, a durable submission (JetStream's ack).
pub(super) async fn caller(
    url: &str,
    server: &str,
    tool: &str,
    arguments: JsonObject,
    wait: bool,
    principal_queue: Option<String>,
) -> Result<Caller, String> {
    let nats = connect(url, "mcpq-bench")
        .await
        .map_err(|e| e.to_string())?;
    let mut client = Client::new(nats).await.map_err(|e| e.to_string())?;
    if principal_queue.is_some() {
        // Sealed as a dispatcher seals them (the deployment's key, from KV or the environment),
        // so that the worker takes the principal as a dispatcher's job would be taken.
        let signing = match std::env::var("MCPQ_SIGNING_KEY") {
            Ok(secret) => Some(mcpq_schemas::seal::SigningKey::from_secret(&secret)),
            Err(_) => mcpq_schemas::nats::stored_signing_key(client.jetstream())
                .await
                .map_err(|e| e.to_string())?,
        };
        if let Some(signing) = signing {
            client = client.signing_with(signing);
        }
        client = client.fair_shares([server.to_string()]);
    }
    let principal: Option<Arc<str>> = principal_queue.map(Into::into);
    let request = Arc::new(McpRequest::call_tool(tool, Some(arguments)));
    let server: Arc<str> = server.into();
    Ok(Arc::new(move || -> CallFuture {
        let client = client.clone();
        let mut job = Job::new(&*server, (*request).clone());
        job.principal = principal.as_deref().map(str::to_string);
        Box::pin(async move {
            if !wait {
                return client
                    .submit(&job)
                    .await
                    .map(drop)
                    .map_err(|_| "publish".to_string());
            }
            match client.call(&job, Duration::from_secs(60)).await {
                Ok(reply) => match reply.outcome {
                    Outcome::Ok { .. } => Ok(()),
                    Outcome::Error { error } => Err(error.kind.as_str().to_string()),
                },
                Err(ClientError::Timeout { .. }) => Err("timeout".into()),
                Err(_) => Err("publish".into()),
            }
        })
    }))
}
