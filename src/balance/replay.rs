//! Keeping a request's body so that a retry can send it again: the first attempt's body
//! is recorded as it is sent, up to a buffer size; a retry replays the recording.
//!
//! A body larger than the buffer commits the call (gRFC A6), which is then not retried.
//! A body the transport had not read to its end when the attempt failed is replayed as
//! far as recorded, then continues from where the transport left it, once the transport
//! gives it back (by dropping it).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::body::Body;

/// What has been recorded of a body.
#[derive(Default)]
struct Recorded {
    frames: Vec<Bytes>,
    size: usize,
    /// The body ended, and every frame of it is here.
    ended: bool,
    /// It outgrew the buffer, or carried trailers: it cannot be replayed.
    overflowed: bool,
    /// What the transport had not read of the body when it dropped it.
    rest: Option<Body>,
}

/// A recording of a request body, shared by the body being sent and the call.
#[derive(Clone)]
pub(super) struct Recording {
    recorded: Arc<Mutex<Recorded>>,
    /// Told when the transport drops the body it was sending.
    back: Arc<Notify>,
    limit: usize,
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recorded = self.lock();
        f.debug_struct("Recording")
            .field("size", &recorded.size)
            .field("ended", &recorded.ended)
            .field("overflowed", &recorded.overflowed)
            .finish_non_exhaustive()
    }
}

impl Recording {
    /// A recording that keeps up to `limit` bytes.
    pub(super) fn new(limit: usize) -> Self {
        Recording {
            recorded: Arc::default(),
            back: Arc::default(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `body`, recorded here as it is read.
    pub(super) fn record(&self, body: Body) -> Body {
        Body::new(Tee {
            inner: Some(body),
            recording: self.clone(),
        })
    }

    /// Whether the body outgrew the buffer: it can never be sent again.
    pub(super) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Whether the whole body was read and recorded: it ended, and fit the buffer. Until
    /// then, the call may still be sending (a client or bidi stream).
    pub(super) fn is_complete(&self) -> bool {
        let recorded = self.lock();
        recorded.ended && !recorded.overflowed
    }

    /// The body to send again: what was recorded, then what the transport had not read
    /// of it. Waits until `until` for the transport to give the rest back; `None` if it
    /// does not, or if the body outgrew the buffer.
    pub(super) async fn replay(&self, until: Instant) -> Option<Body> {
        loop {
            let back = self.back.notified();
            tokio::pin!(back);
            back.as_mut().enable();
            {
                let mut recorded = self.lock();
                if recorded.overflowed {
                    return None;
                }
                if recorded.ended || recorded.rest.is_some() {
                    let frames = recorded.frames.iter().cloned().collect();
                    let rest = recorded.rest.take().map(|rest| self.record(rest));
                    return Some(Body::new(Replay { frames, rest }));
                }
            }
            tokio::time::timeout_at(until, back).await.ok()?;
        }
    }

    fn push(&self, frame: &Frame<Bytes>, end: bool) {
        let mut recorded = self.lock();
        if recorded.overflowed {
            return;
        }
        match frame.data_ref() {
            Some(data) if recorded.size + data.len() <= self.limit => {
                recorded.size += data.len();
                recorded.frames.push(data.clone());
            }
            // Too large, or trailers (gRPC requests have none): not replayed.
            _ => {
                recorded.overflowed = true;
                recorded.frames = Vec::new();
            }
        }
        recorded.ended |= end;
    }

    fn end(&self) {
        self.lock().ended = true;
    }

    /// The transport dropped the body before its end: keep the rest for a retry.
    fn give_back(&self, rest: Body) {
        let mut recorded = self.lock();
        if !recorded.ended && !recorded.overflowed {
            recorded.rest = Some(rest);
        }
        drop(recorded);
        self.back.notify_waiters();
    }
}

/// A body that records what passes through it, and gives back what was not read of it
/// when dropped.
struct Tee {
    inner: Option<Body>,
    recording: Recording,
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(Pin::new(&mut *inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => this.recording.push(frame, inner.is_end_stream()),
            None => this.recording.end(),
            Some(Err(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        let end = self
            .inner
            .as_ref()
            .is_none_or(|inner| inner.is_end_stream());
        if end {
            self.recording.end();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |inner| inner.size_hint())
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            self.recording.give_back(inner);
        }
    }
}

/// A recorded body, sent again, then the rest of the original, if any.
struct Replay {
    frames: VecDeque<Bytes>,
    rest: Option<Body>,
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(data) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;
    use std::time::Duration;

    use super::*;

    fn drain(body: &mut Body) -> Vec<Bytes> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut *body).poll_frame(&mut cx) {
            frames.extend(frame.into_data().ok());
        }
        frames
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(10)
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_within_the_buffer_replays_whole() {
        let recording = Recording::new(16);
        let mut body = recording.record(Body::new(String::from("hello")));
        assert_eq!(drain(&mut body), [Bytes::from_static(b"hello")]);
        let mut again = recording.replay(soon()).await.expect("replayable");
        assert_eq!(drain(&mut again), [Bytes::from_static(b"hello")]);
        let mut third = recording.replay(soon()).await.expect("as often as needed");
        assert_eq!(drain(&mut third).len(), 1);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_buffer_is_not_replayable() {
        let recording = Recording::new(4);
        let mut body = recording.record(Body::new(String::from("hello")));
        assert_eq!(drain(&mut body).len(), 1, "it is still sent whole");
        assert!(recording.overflowed());
        assert!(recording.replay(soon()).await.is_none());
    }

    #[tokio::test]
    async fn an_unread_body_comes_back_when_the_transport_drops_it() {
        let recording = Recording::new(16);
        let body = recording.record(Body::new(String::from("hello")));
        assert!(recording.replay(soon()).await.is_none(), "still held");
        drop(body);
        let mut again = recording.replay(soon()).await.expect("given back");
        assert_eq!(drain(&mut again), [Bytes::from_static(b"hello")]);
    }

    #[tokio::test]
    async fn an_empty_body_is_replayable_at_once() {
        let recording = Recording::new(4);
        let body = recording.record(Body::empty());
        assert!(body.is_end_stream());
        assert!(
            recording
                .replay(soon())
                .await
                .is_some_and(|b| b.is_end_stream())
        );
    }
}
