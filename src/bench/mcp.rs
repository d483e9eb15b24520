//! MCP mode: one rmcp client session (2026-07-28, stateless) calling a tool on any MCP endpoint.

use std::sync::Arc;

use mcpq_schemas::JsonObject;
use rmcp::{
    model::{CallToolRequestParams, ClientConfig, ProtocolVersion},
    service::{ClientLifecycleMode, ClientServiceExt},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};

use super::{CallFuture, Caller};

/// The largest answer a benchmark call takes.
const MAX_ANSWER: usize = 256 * 1024 * 1024;

pub(super) async fn caller(
    url: &str,
    tool: &str,
    arguments: JsonObject,
    concurrency: usize,
) -> Result<Caller, String> {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let config = StreamableHttpClientTransportConfig::with_uri(url)
        .max_concurrent_requests(concurrency)
        // Large results are measured too (rmcp's own limit is 16 MiB).
        .max_json_response_size(MAX_ANSWER)
        .max_sse_event_size(MAX_ANSWER);
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let lifecycle = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: None,
    };
    let client = ClientConfig::default()
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .map_err(|e| format!("cannot open an MCP session with {url}: {e}"))?;
    let client = Arc::new(client);
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
    Ok(Arc::new(move || -> CallFuture {
        let client = client.clone();
        let params = params.clone();
        Box::pin(async move {
            match client.call_tool(params).await {
                Ok(result) if result.is_error == Some(true) => Err("tool_error".into()),
                Ok(_) => Ok(()),
                Err(rmcp::ServiceError::McpError(e)) => Err(format!("jsonrpc_{}", e.code.0)),
                Err(rmcp::ServiceError::Timeout { .. }) => Err("timeout".into()),
                Err(_) => Err("transport".into()),
            }
        })
    }))
}
