//! Streamable HTTP upstreams.

use std::collections::{BTreeMap, HashMap};

use http::{HeaderName, HeaderValue};
use mcpq_schemas::config::Secret;
use rmcp::transport::{
    StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
};

use super::UpstreamError;

/// Bytes an upstream's response may have beyond `maxResultBytes`: the JSON-RPC envelope.
const RESPONSE_SLACK: usize = 1024 * 1024;

#[derive(Clone)]
pub(super) struct HttpConnector {
    config: StreamableHttpClientTransportConfig,
}

impl HttpConnector {
    pub(super) fn new(
        server: &str,
        endpoint: &str,
        headers: &BTreeMap<String, Secret>,
        concurrency: usize,
        max_result_bytes: u64,
    ) -> Result<Self, UpstreamError> {
        let mut custom = HashMap::new();
        for (name, secret) in headers {
            let value = secret.resolve().map_err(|source| UpstreamError::Secret {
                server: server.to_string(),
                source,
            })?;
            let bad = || UpstreamError::BadHeader {
                server: server.to_string(),
                header: name.clone(),
            };
            let name = HeaderName::try_from(name.as_str()).map_err(|_| bad())?;
            let mut value = HeaderValue::try_from(value).map_err(|_| bad())?;
            value.set_sensitive(true);
            custom.insert(name, value);
        }
        // rmcp refuses responses over its limits (16 MiB by default): mcpq's own limit is
        // maxResultBytes, with room for the JSON-RPC envelope, and a larger answer fails the
        // job as too_large (see `call::failure`).
        let limit = usize::try_from(max_result_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(RESPONSE_SLACK);
        let mut config = StreamableHttpClientTransportConfig::with_uri(endpoint)
            .max_concurrent_requests(concurrency)
            .max_json_response_size(limit)
            .max_sse_event_size(limit);
        config.custom_headers = custom;
        config.allow_stateless = true;
        config.reinit_on_expired_session = true;
        Ok(HttpConnector { config })
    }

    pub(super) fn transport(&self) -> StreamableHttpClientTransport<reqwest::Client> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .redirect(same_origin_redirects())
            .build()
            .unwrap_or_default();
        StreamableHttpClientTransport::with_client(client, self.config.clone())
    }
}

/// Redirects are followed only to the same scheme, host and port: the upstream's credentials
/// (Authorization and the configured headers) never go to another host.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().cloned();
        let same = first.is_some_and(|first| {
            first.scheme() == attempt.url().scheme()
                && first.host_str() == attempt.url().host_str()
                && first.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if attempt.previous().len() > 5 {
            attempt.error("too many redirects")
        } else if same {
            attempt.follow()
        } else {
            let to = mcpq_schemas::redact::url(attempt.url().as_str());
            attempt.error(format!(
                "the upstream redirected to another host ({to}); mcpq does not send credentials there"
            ))
        }
    })
}
