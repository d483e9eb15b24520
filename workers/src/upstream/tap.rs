//! The upstream's own words for what it lists.
//!
//! rmcp reads a `tools/list` answer (and a resource, template or prompt list) into its model
//! types, which keep only the fields rmcp knows: a tool's `execution`, extension fields and
//! whatever a newer revision adds would be lost on the way to the catalog. So while the catalog
//! lists ([`ListTap::listing`]), the transports note the list requests they send
//! ([`Conversation::asked`], in `Observed`) and keep the `result` of the answer to each exactly
//! as the upstream wrote it ([`Conversation::heard`]: the stdio reader and the HTTP client
//! below see the bytes), for the catalog to take ([`ListTap::take`]). Request ids are counted
//! per session, so each transport is its own conversation. With no list request awaiting its
//! answer the tap costs an atomic load per read; while one does, each message's id is read
//! (without building it) and only the answer is kept.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
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
    /// Whether the catalog is listing: only its list requests are noted.
    listing: AtomicBool,
    /// Whether a noted request awaits its answer.
    armed: AtomicBool,
    conversations: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    asked: HashMap<(u64, RequestId), Page>,
    heard: HashMap<Page, JsonObject>,
}

/// Held while the catalog lists; when it ends (or is dropped midway), whatever was asked and
/// not answered, or heard and not taken, is forgotten.
pub(crate) struct Listing<'a>(&'a ListTap);

impl Drop for Listing<'_> {
    fn drop(&mut self) {
        self.0.listing.store(false, Ordering::Release);
        self.0.forget();
    }
}

impl ListTap {
    /// A handle for one transport (one session: its own request ids).
    pub(crate) fn conversation(self: &Arc<Self>) -> Conversation {
        Conversation {
            tap: self.clone(),
            id: self.conversations.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The catalog lists until the guard is dropped.
    pub(crate) fn listing(&self) -> Listing<'_> {
        self.forget();
        self.listing.store(true, Ordering::Release);
        Listing(self)
    }

    /// The `result` the upstream sent for this page, as it wrote it, if it was heard.
    pub(crate) fn take(&self, page: &Page) -> Option<JsonObject> {
        lock(&self.state).heard.remove(page)
    }

    fn forget(&self) {
        let mut state = lock(&self.state);
        state.asked.clear();
        state.heard.clear();
        self.armed.store(false, Ordering::Release);
    }
}

/// One transport's view of its upstream's tap.
#[derive(Clone)]
pub(crate) struct Conversation {
    tap: Arc<ListTap>,
    id: u64,
}

/// The list page a request asks for, if it is a list request.
pub(crate) fn page_of(message: &ClientJsonRpcMessage) -> Option<(&RequestId, Page)> {
    let ClientJsonRpcMessage::Request(request) = message else {
        return None;
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
        _ => return None,
    };
    Some((&request.id, page))
}

impl Conversation {
    /// This transport's number among the upstream's: it names the session.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Notes an outgoing message when it asks for a list while the catalog lists.
    pub(crate) fn asked(&self, message: &ClientJsonRpcMessage) {
        if !self.tap.listing.load(Ordering::Acquire) {
            return;
        }
        let Some((id, page)) = page_of(message) else {
            return;
        };
        lock(&self.tap.state)
            .asked
            .insert((self.id, id.clone()), page);
        self.tap.armed.store(true, Ordering::Release);
    }

    /// Whether a list request awaits its answer (else no message needs looking at).
    pub(crate) fn armed(&self) -> bool {
        self.tap.armed.load(Ordering::Acquire)
    }

    /// Whether this list request is one the tap awaits the answer to.
    pub(crate) fn awaits(&self, message: &ClientJsonRpcMessage) -> bool {
        self.armed()
            && page_of(message).is_some_and(|(id, _)| {
                lock(&self.tap.state)
                    .asked
                    .contains_key(&(self.id, id.clone()))
            })
    }

    /// One whole JSON-RPC message from the upstream, as bytes: kept when it answers a list
    /// request this conversation noted. Only the id is read of any other message.
    pub(crate) fn heard(&self, message: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Id {
            id: Option<RequestId>,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            result: Option<JsonObject>,
        }
        if !self.armed() || message.len() > MAX_RAW {
            return;
        }
        let Ok(Id { id: Some(id) }) = serde_json::from_slice(message) else {
            return;
        };
        let key = (self.id, id);
        if !lock(&self.tap.state).asked.contains_key(&key) {
            return;
        }
        let result = serde_json::from_slice::<Answer>(message)
            .ok()
            .and_then(|a| a.result);
        let mut state = lock(&self.tap.state);
        let Some(page) = state.asked.remove(&key) else {
            return;
        };
        if state.asked.is_empty() {
            self.tap.armed.store(false, Ordering::Release);
        }
        if let Some(result) = result {
            state.heard.insert(page, result);
        }
    }
}

/// A child's stdout, read on by rmcp's line transport, with the lines shown to the tap while
/// it is armed. The bytes pass through unchanged.
pub(super) struct TappedReader<R> {
    inner: R,
    tap: Conversation,
    /// The line read so far, while the tap is armed.
    line: Vec<u8>,
    /// Whether the last byte passed on ended a line (a line begun before the tap was armed
    /// is skipped to its end rather than read from its middle).
    at_line_start: bool,
    /// Skipping the rest of a line: begun before arming, or longer than `MAX_RAW`.
    skipping: bool,
}

impl<R> TappedReader<R> {
    pub(super) fn new(inner: R, tap: Conversation) -> Self {
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
            if self.line.capacity() > 64 * 1024 {
                self.line = Vec::new();
            }
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
        let (session, other_session) = (tap.conversation(), tap.conversation());
        let other = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
        let answer = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"a","inputSchema":{},"execution":{"taskSupport":"forbidden"}}],"nextCursor":"n"}}"#;
        // Half a line passes before the tap is armed: it is skipped, not read from its middle.
        let (first, rest) = other.split_at(10);
        let stream = format!("{first}{rest}\n{answer}\n");
        let mut reader = TappedReader::new(stream.as_bytes(), session.clone());
        let mut start = [0u8; 10];
        reader.read_exact(&mut start).await.unwrap();
        // Not listing: nothing is noted.
        session.asked(&list_request(2, Some("c1")));
        assert!(!session.armed());
        let listing = tap.listing();
        session.asked(&list_request(2, Some("c1")));
        session.asked(&list_request(1, None));
        assert!(session.awaits(&list_request(2, Some("c1"))));
        assert!(
            !other_session.awaits(&list_request(2, Some("c1"))),
            "ids are per session"
        );
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
        assert!(session.armed());
        drop(listing);
        assert!(
            !session.armed(),
            "the listing's end forgets what was not answered"
        );
        assert!(tap.take(&page).is_none());
    }
}
