//! Jobs-API mode: `POST /v1/jobs` to a dispatcher, each call one accepted async submission.

use std::sync::Arc;

use mcpq_schemas::{JsonObject, api::JobSubmission};

use super::{CallFuture, Caller};

pub(super) fn caller(base: &str, server: &str, tool: &str, arguments: JsonObject) -> Caller {
    let http = reqwest::Client::new();
    let url: Arc<str> = format!("{}/v1/jobs", base.trim_end_matches('/')).into();
    let body: Arc<[u8]> = serde_json::to_vec(&JobSubmission {
        server: server.into(),
        tool: tool.into(),
        arguments: Some(arguments),
        idempotency_key: None,
        lane: None,
        timeout_ms: None,
        run_at: None,
        delay: None,
        callback_url: None,
    })
    .unwrap_or_default()
    .into();
    Arc::new(move || -> CallFuture {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        Box::pin(async move {
            let response = http
                .post(&*url)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .map_err(|_| "http".to_string())?;
            if response.status() == 202 {
                Ok(())
            } else {
                Err(format!("http {}", response.status().as_u16()))
            }
        })
    })
}
