//! Bodies with a bound on what they take: a response body that keeps its `--max-requests` slot
//! until its last byte is sent (a streamed answer — SSE — holds the slot as long as the call
//! does, not only until its headers go out), and a request body that must keep arriving (a
//! client that stops sending its body mid-way is cut off after `--idle-timeout`, instead of
//! holding a slot for ever).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

/// A response body holding a slot until it ends (or is dropped).
pub(crate) struct Held {
    inner: Body,
    _slot: OwnedSemaphorePermit,
}

impl Held {
    /// `inner`, holding `slot` until it ends.
    pub(crate) fn around(inner: Body, slot: OwnedSemaphorePermit) -> Body {
        Body::new(Held { inner, _slot: slot })
    }
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails when no data comes for `patience`.
pub(crate) struct Timed<B> {
    inner: B,
    patience: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> Timed<B> {
    pub(crate) fn new(inner: B, patience: Duration) -> Timed<B> {
        Timed {
            inner,
            patience,
            deadline: Box::pin(tokio::time::sleep(patience)),
        }
    }
}

/// The error a request body gives when its client stopped sending.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of the request body for {0:?} (--idle-timeout)")]
pub(crate) struct Stalled(Duration);

impl Stalled {
    /// Whether `error`, or anything it came from, is a stalled body.
    pub(crate) fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<Stalled>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

impl<B> http_body::Body for Timed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let patience = self.patience;
                self.deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + patience);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(self.patience))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
