//! The upstream's own words for what it lists.
//!
//! rmcp reads a `tools/list` answer (and a resource, template or prompt list) into its model
//! types, which keep only the fields rmcp knows: a tool's `execution`, extension fields and
//! whatever a newer revision adds would be lost on the way to the catalog. So the transports
//! note the list requests the worker sends ([`ListTap::asked`], in `Observed`) and keep the
//! `result` of the answer to each exactly as the upstream wrote it ([`ListTap::heard`]: the
//! stdio reader and the HTTP client below see the bytes), for the catalog to take
//! ([`ListTap::take`]). With no list request awaiting its answer, the tap costs one atomic
//! load per message.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use mcpq_schemas::JsonObject;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, RequestId};
use tokio::io::{AsyncRead, ReadBuf};

use crate::lock;

/// One page of one list: its method and the cursor it was asked with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Page {
    pub method: &'static str,
    pub cursor: Option<String>,
}

/// The longest answer kept raw: a larger list is read through rmcp's model only.
const MAX_RAW: usize = 64 * 1024 * 1024;

/// List requests awaiting their answers, and the answers heard, per upstream.
#[derive(Default)]
pub(crate) struct ListTap {
    armed: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    asked: HashMap<RequestId, Page>,
    heard: HashMap<Page, JsonObject>,
}

impl ListTap {
    /// Notes an outgoing message when it asks for a list.
    pub(crate) fn asked(&self, message: &ClientJsonRpcMessage) {
        let ClientJsonRpcMessage::Request(request) = message else {
            return;
        };
        let cursor = |params: &Option<rmcp::model::PaginatedRequestParams>| {
            params.as_ref().and_then(|p| p.cursor.clone())
        };
        let page = match &request.request {
            ClientRequest::ListToolsRequest(r) => Page {
                method: "tools/list",
                cursor: cursor(&r.params),
            },
            ClientRequest::ListResourcesRequest(r) => Page {
                method: "resources/list",
                cursor: cursor(&r.params),
            },
            ClientRequest::ListResourceTemplatesRequest(r) => Page {
                method: "resources/templates/list",
                cursor: cursor(&r.params),
            },
            ClientRequest::ListPromptsRequest(r) => Page {
                method: "prompts/list",
                cursor: cursor(&r.params),
            },
            _ => return,
        };
        lock(&self.state).asked.insert(request.id.clone(), page);
        self.armed.store(true, Ordering::Release);
    }

    /// Whether this request is a list request awaiting its answer.
    pub(crate) fn awaits(&self, id: &RequestId) -> bool {
        lock(&self.state).asked.contains_key(id)
    }

    /// Whether a list request awaits its answer (else no message needs looking at).
    pub(crate) fn armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// One whole JSON-RPC message from the upstream, as bytes: kept when it answers a list
    /// request this tap noted.
    pub(crate) fn heard(&self, message: &[u8]) {
        if !self.armed() || message.len() > MAX_RAW {
            return;
        }
        let Ok(serde_json::Value::Object(mut message)) = serde_json::from_slice(message) else {
            return;
        };
        let Some(id) = message
            .get("id")
            .and_then(|id| serde_json::from_value::<RequestId>(id.clone()).ok())
        else {
            return;
        };
        let mut state = lock(&self.state);
        let Some(page) = state.asked.remove(&id) else {
            return;
        };
        if state.asked.is_empty() {
            self.armed.store(false, Ordering::Release);
        }
        if let Some(serde_json::Value::Object(result)) = message.remove("result") {
            state.heard.insert(page, result);
        }
    }

    /// The `result` the upstream sent for this page, as it wrote it, if it was heard.
    pub(crate) fn take(&self, page: &Page) -> Option<JsonObject> {
        lock(&self.state).heard.remove(page)
    }

    /// Forgets every request still awaiting its answer and every answer not taken (a lister
    /// that gave up must not leave the tap looking at every message).
    pub(crate) fn forget(&self) {
        let mut state = lock(&self.state);
        state.asked.clear();
        state.heard.clear();
        self.armed.store(false, Ordering::Release);
    }
}

/// A child's stdout, read on by rmcp's line transport, with the lines shown to the tap while
/// it is armed. The bytes pass through unchanged.
pub(super) struct TappedReader<R> {
    inner: R,
    tap: Arc<ListTap>,
    /// The line read so far, while the tap is armed.
    line: Vec<u8>,
    /// Whether the last byte passed on ended a line (a line begun before the tap was armed
    /// is skipped to its end rather than read from its middle).
    at_line_start: bool,
    /// Skipping the rest of a line: begun before arming, or longer than `MAX_RAW`.
    skipping: bool,
}

impl<R> TappedReader<R> {
    pub(super) fn new(inner: R, tap: Arc<ListTap>) -> Self {
        TappedReader {
            inner,
            tap,
            line: Vec::new(),
            at_line_start: true,
            skipping: false,
        }
    }

    fn look(&mut self, mut bytes: &[u8]) {
        if !self.tap.armed() {
            self.line.clear();
            self.skipping = false;
        } else {
            if self.line.is_empty() && !self.skipping && !self.at_line_start {
                self.skipping = true;
            }
            while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
                if !self.skipping {
                    self.line.extend_from_slice(&bytes[..end]);
                    self.tap.heard(&self.line);
                }
                self.line.clear();
                self.skipping = false;
                bytes = &bytes[end + 1..];
            }
            if !self.skipping {
                if self.line.len() + bytes.len() > MAX_RAW {
                    self.line = Vec::new();
                    self.skipping = true;
                } else {
                    self.line.extend_from_slice(bytes);
                }
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for TappedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            if let Some(last) = read.last() {
                let ends_line = *last == b'\n';
                self.look(read);
                self.at_line_start = ends_line;
            }
        }
        polled
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rmcp::model::{ListToolsRequest, PaginatedRequestParams};
    use tokio::io::AsyncReadExt;

    use super::*;

    fn list_request(id: i64, cursor: Option<&str>) -> ClientJsonRpcMessage {
        let params = PaginatedRequestParams::default().with_cursor(cursor.map(str::to_string));
        ClientJsonRpcMessage::request(
            ClientRequest::ListToolsRequest(ListToolsRequest::with_param(params)),
            RequestId::Number(id),
        )
    }

    #[tokio::test]
    async fn the_answer_to_a_list_request_is_kept_as_the_upstream_wrote_it() {
        let tap = Arc::new(ListTap::default());
        let other = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
        let answer = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"a","inputSchema":{},"execution":{"taskSupport":"forbidden"}}],"nextCursor":"n"}}"#;
        // Half a line passes before the tap is armed: it is skipped, not read from its middle.
        let (first, rest) = other.split_at(10);
        let stream = format!("{first}{rest}\n{answer}\n");
        let mut reader = TappedReader::new(stream.as_bytes(), tap.clone());
        let mut start = [0u8; 10];
        reader.read_exact(&mut start).await.unwrap();
        tap.asked(&list_request(2, Some("c1")));
        tap.asked(&list_request(1, None));
        assert!(tap.armed());
        let mut passed = start.to_vec();
        reader.read_to_end(&mut passed).await.unwrap();
        assert_eq!(
            passed,
            stream.as_bytes(),
            "the bytes pass through unchanged"
        );
        let page = Page {
            method: "tools/list",
            cursor: Some("c1".into()),
        };
        let result = tap.take(&page).expect("the list answer was kept");
        assert_eq!(result["tools"][0]["execution"]["taskSupport"], "forbidden");
        assert_eq!(result["nextCursor"], "n");
        // Request 1 was answered in the line begun before arming: never read, still awaited.
        assert!(tap.armed());
        tap.forget();
        assert!(!tap.armed());
        assert!(tap.take(&page).is_none());
    }
}
