//! Streamable HTTP upstreams.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use http::{HeaderName, HeaderValue};
use mcpq_schemas::config::Secret;
use rmcp::{
    model::{ClientJsonRpcMessage, ServerJsonRpcMessage},
    transport::{
        StreamableHttpClientTransport,
        streamable_http_client::{
            SseError, StreamableHttpClient, StreamableHttpClientTransportConfig,
            StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
        },
    },
};
use sse_stream::{Sse, SseStream};

use super::{UpstreamError, tap::Conversation};

/// Bytes an upstream's response may have beyond `maxResultBytes`: the JSON-RPC envelope.
const RESPONSE_SLACK: usize = 1024 * 1024;

#[derive(Clone)]
pub(super) struct HttpConnector {
    config: StreamableHttpClientTransportConfig,
    /// The plain path's client for this endpoint (see `call::plain`).
    plain: Arc<Plain>,
}

/// What a plain 2026-07-28 `tools/call` needs (see `call::plain`): one pooled keep-alive
/// client per endpoint, its URL and configured headers, and the most bytes an answer may have.
pub(crate) struct Plain {
    pub client: reqwest::Client,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub limit: usize,
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
        let plain = Arc::new(Plain {
            // HTTP/1.1 only: a call's stream and the answer to a question on it never wait
            // for one another in one connection's stream limit.
            client: reqwest::Client::builder()
                .tcp_nodelay(true)
                .redirect(same_origin_redirects())
                .http1_only()
                .build()
                .unwrap_or_default(),
            uri: endpoint.to_string(),
            headers: custom.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            limit,
        });
        config.custom_headers = custom;
        config.allow_stateless = true;
        config.reinit_on_expired_session = true;
        Ok(HttpConnector { config, plain })
    }

    /// The plain path's client for this endpoint.
    pub(super) fn plain(&self) -> Arc<Plain> {
        self.plain.clone()
    }

    pub(super) fn transport(&self, tap: Conversation) -> StreamableHttpClientTransport<Tapped> {
        StreamableHttpClientTransport::with_client(
            Tapped {
                client: client(),
                tap,
            },
            self.config.clone(),
        )
    }
}

/// A response's whole body; `None` when it is longer than `limit` bytes (read no further).
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// An answer, or one event of it, longer than the worker reads (`call::failure` reads it as
/// too large).
#[derive(Debug, thiserror::Error)]
#[error("{what} exceeded the maximum size of {limit} bytes")]
pub(crate) struct TooLarge {
    what: &'static str,
    limit: usize,
}

impl TooLarge {
    /// A whole answer longer than `limit` bytes.
    pub(crate) fn answer(limit: usize) -> TooLarge {
        TooLarge {
            what: "the answer",
            limit,
        }
    }

    /// One SSE event longer than `limit` bytes.
    pub(crate) fn event(limit: usize) -> TooLarge {
        TooLarge {
            what: "an event",
            limit,
        }
    }
}

/// Whether `error` is a [`TooLarge`], or carries one inside an I/O error or an SSE stream's
/// body error (neither of which names what it carries as its source).
pub(crate) fn is_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<TooLarge>() {
        return true;
    }
    if let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        return is_too_large(inner);
    }
    if let Some(sse_stream::Error::Body(inner)) = error.downcast_ref::<sse_stream::Error>() {
        return is_too_large(&**inner);
    }
    false
}

/// A response's body as a stream that fails with [`TooLarge`] once it has brought more than
/// `limit` bytes.
pub(crate) fn bounded(
    response: reqwest::Response,
    limit: usize,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let mut read = 0usize;
    response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        read += chunk.len();
        if read > limit {
            return Err(std::io::Error::other(TooLarge::answer(limit)));
        }
        Ok(chunk)
    })
}

/// A response's SSE body as a stream that fails once one event (the bytes since the last blank
/// line) is longer than `limit`, as rmcp bounds each event; a long stream of small events is
/// never cut.
pub(crate) fn bounded_events(
    response: reqwest::Response,
    limit: usize,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let mut since_blank = 0usize;
    response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        // The end of the last event in the chunk: a blank line, LF or CRLF.
        let end = chunk
            .windows(2)
            .rposition(|w| w == b"\n\n")
            .map(|at| at + 2)
            .max(
                chunk
                    .windows(3)
                    .rposition(|w| w == b"\n\r\n")
                    .map(|at| at + 3),
            );
        since_blank = match end {
            Some(end) => chunk.len() - end,
            None => since_blank + chunk.len(),
        };
        if since_blank > limit {
            return Err(std::io::Error::other(TooLarge::event(limit)));
        }
        Ok(chunk)
    })
}

/// An HTTP client for an upstream: no Nagle delay, redirects only to the same origin.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .redirect(same_origin_redirects())
        .build()
        .unwrap_or_default()
}

/// rmcp's reqwest client, except that the answer to a list request is read here, so that the
/// tap sees its bytes before rmcp's model types drop the fields they do not know (see `tap`).
/// Every other message goes through rmcp's client unchanged.
#[derive(Clone)]
pub(super) struct Tapped {
    client: reqwest::Client,
    tap: Conversation,
}

type PostResult = Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>;

impl Tapped {
    /// A list request, posted as rmcp's client posts it. `None` when the answer is not a
    /// plain success (an error status, another content type, a body over the limit): rmcp's
    /// client then asks again and says what was wrong (a list request is safe to repeat).
    async fn post_list(
        &self,
        uri: &str,
        message: &ClientJsonRpcMessage,
        session_id: Option<&str>,
        auth_token: Option<&str>,
        custom_headers: &HashMap<HeaderName, HeaderValue>,
        limits: &StreamableHttpResponseLimits,
    ) -> Option<StreamableHttpPostResponse> {
        let mut request = self
            .client
            .post(uri)
            .header(http::header::ACCEPT, "text/event-stream, application/json");
        if let Some(token) = auth_token {
            request = request.bearer_auth(token);
        }
        for (name, value) in custom_headers {
            request = request.header(name, value);
        }
        if let Some(session_id) = session_id {
            request = request.header("Mcp-Session-Id", session_id);
        }
        let response = request.json(message).send().await.ok()?;
        if response.status() != reqwest::StatusCode::OK {
            return None;
        }
        let session_id = response
            .headers()
            .get("Mcp-Session-Id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let limit = limits.max_json_response_size;
        if content_type.starts_with("application/json") {
            if response.content_length().is_some_and(|n| n > limit as u64) {
                return None;
            }
            let body = read_body(response, limit).await.ok()??;
            self.tap.heard(&body);
            let message: ServerJsonRpcMessage = serde_json::from_slice(&body).ok()?;
            Some(StreamableHttpPostResponse::Json(message, session_id))
        } else if content_type.starts_with("text/event-stream") {
            let tap = self.tap.clone();
            let bytes = bounded(response, limit);
            let events: BoxStream<'static, Result<Sse, SseError>> =
                SseStream::from_bytes_stream(bytes)
                    .inspect_ok(move |event| {
                        if let Some(data) = &event.data {
                            tap.heard(data.as_bytes());
                        }
                    })
                    .boxed();
            Some(StreamableHttpPostResponse::Sse(events, session_id))
        } else {
            None
        }
    }
}

/// rmcp's transport calls only `post_message_with_response_limits` and
/// `get_stream_with_max_sse_event_size`; the two methods the trait requires besides go
/// straight to rmcp's client.
impl StreamableHttpClient for Tapped {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> PostResult {
        self.client
            .post_message(uri, message, session_id, auth_token, custom_headers)
            .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> PostResult {
        if self.tap.awaits(&message)
            && let Some(response) = self
                .post_list(
                    &uri,
                    &message,
                    session_id.as_deref(),
                    auth_token.as_deref(),
                    &custom_headers,
                    &limits,
                )
                .await
        {
            return Ok(response);
        }
        self.client
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_token,
                custom_headers,
                limits,
            )
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<reqwest::Error>> {
        self.client
            .delete_session(uri, session_id, auth_token, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<reqwest::Error>>
    {
        self.client
            .get_stream(uri, session_id, last_event_id, auth_token, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<reqwest::Error>>
    {
        self.client
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_token,
                custom_headers,
                max_sse_event_size,
            )
            .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_is_recognised_inside_io_and_sse_errors_and_nothing_else_is() {
        let io = || std::io::Error::other(TooLarge::event(8));
        assert!(is_too_large(&io()));
        assert!(is_too_large(&sse_stream::Error::Body(Box::new(io()))));
        assert!(is_too_large(&TooLarge::answer(8)));
        // The same words from anyone else are not a kind.
        let said = std::io::Error::other("the answer exceeded the maximum size of 8 bytes");
        assert!(!is_too_large(&said));
        assert!(!is_too_large(&sse_stream::Error::InvalidLine));
    }
}
