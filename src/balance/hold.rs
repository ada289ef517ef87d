//! Holding a response's head, under a retry policy, until its first frames are in: a
//! call whose connection fails right after the response headers (a server killed
//! mid-call), or whose error status comes in trailers right after them, can then still be
//! retried, since the caller has seen nothing yet.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;

use super::status_observer::grpc_status;

type Outcome = Result<http::Response<Body>, tower::BoxError>;

/// How long, after the response headers, the first frame may take and still be held
/// back: a server's first message, or its trailers, follow the headers at once; a server
/// stream that sends its headers first gets them to the caller after this wait at most.
const AFTER_HEADERS: Duration = Duration::from_millis(20);

/// How long, after the first data frame, the next frame may take and still be held back:
/// a unary response's trailers follow its message at once, so a server killed between the
/// two fails a call that can still be retried; a stream's next message may come much
/// later, and the caller gets the first one after this wait at most.
const AFTER_DATA: Duration = Duration::from_millis(20);

/// Reads the first frames of a response's body: its first frame, waiting
/// [`AFTER_HEADERS`] for it, then, if that is a data
/// frame of at most `limit` bytes, at most one more frame, waiting [`AFTER_DATA`] for it.
/// Trailers right after the first message (a unary call) are held with it; a second data
/// frame, or nothing within the wait, means a stream, and the response is given on
/// (committed), with the frames read in front. No more than two frames are ever held.
///
/// Trailers that come before any data are merged into the headers, as a trailers-only
/// response; a body that fails before the response is given on becomes the attempt's
/// error ([`BodyFailed`]). A trailers-only response or an error passes as it is.
pub(super) async fn first_frames(result: Outcome, limit: usize) -> Outcome {
    let response = match result {
        Ok(response) if grpc_status(response.headers()).is_none() => response,
        other => return other,
    };
    let (mut parts, mut body) = response.into_parts();
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    match next_frame(&mut body, AFTER_HEADERS).await {
        Next::Nothing => {}
        Next::End => body = Body::empty(),
        Next::Failed(status) => return Err(Box::new(BodyFailed(status))),
        Next::Frame(frame) => match frame.into_trailers() {
            Ok(trailers) => {
                parts.headers.extend(trailers);
                body = Body::empty();
            }
            Err(data) => {
                let small = data.data_ref().is_none_or(|data| data.len() <= limit);
                frames.push_back(data);
                if small {
                    match next_frame(&mut body, AFTER_DATA).await {
                        // Nothing more for a while: a stream; give it on.
                        Next::Nothing => {}
                        Next::End => body = Body::empty(),
                        Next::Failed(status) => return Err(Box::new(BodyFailed(status))),
                        // Trailers: the whole of a unary response. Data: a stream.
                        Next::Frame(frame) => frames.push_back(frame),
                    }
                }
            }
        },
    }
    let body = match frames.is_empty() {
        true => body,
        false => Body::new(Prepended { frames, rest: body }),
    };
    Ok(http::Response::from_parts(parts, body))
}

/// What came of waiting for a body's next frame.
enum Next {
    Frame(Frame<Bytes>),
    /// The body ended.
    End,
    Failed(tonic::Status),
    /// No frame within the wait.
    Nothing,
}

/// The next frame of `body`, waiting at most `wait` for it.
async fn next_frame(body: &mut Body, wait: Duration) -> Next {
    if body.is_end_stream() {
        return Next::End;
    }
    let next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    match tokio::time::timeout(wait, next).await {
        Err(_) => Next::Nothing,
        Ok(None) => Next::End,
        Ok(Some(Err(status))) => Next::Failed(status),
        Ok(Some(Ok(frame))) => Next::Frame(frame),
    }
}

/// A response body that failed before its response was given on.
#[derive(Debug)]
pub(super) struct BodyFailed(pub(super) tonic::Status);

impl std::fmt::Display for BodyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response failed before its first message")
    }
}

impl std::error::Error for BodyFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A body whose first frames were read already.
struct Prepended {
    frames: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl HttpBody for Prepended {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        match self.frames.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    use http::{HeaderMap, HeaderValue};

    use super::*;

    /// A body of the frames given, then its end (or an error).
    struct Frames(VecDeque<Result<Frame<Bytes>, tonic::Status>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn status(code: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from_static(code));
        map
    }

    fn response(frames: Vec<Result<Frame<Bytes>, tonic::Status>>) -> Outcome {
        Ok(http::Response::new(Body::new(Frames(frames.into()))))
    }

    fn drain(body: &mut Body) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        let mut n = 0;
        while let Poll::Ready(Some(Ok(_))) = Pin::new(&mut *body).poll_frame(&mut cx) {
            n += 1;
        }
        n
    }

    const LIMIT: usize = 1024;

    /// A body of data frames without end, counting those read.
    struct Endless(Arc<AtomicUsize>, usize);

    impl HttpBody for Endless {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0; self.1])))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_of_messages_is_given_on_after_its_second_frame() {
        let read = Arc::new(AtomicUsize::new(0));
        let endless = Endless(read.clone(), 5);
        let held = first_frames(Ok(http::Response::new(Body::new(endless))), LIMIT);
        let held = tokio::time::timeout(Duration::from_secs(1), held).await;
        held.expect("given on").expect("a response");
        assert_eq!(read.load(Ordering::Relaxed), 2, "two frames held at most");
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_message_larger_than_the_limit_is_given_on_at_once() {
        let read = Arc::new(AtomicUsize::new(0));
        let endless = Endless(read.clone(), LIMIT + 1);
        let held = first_frames(Ok(http::Response::new(Body::new(endless))), LIMIT);
        let mut held = held.await.expect("a response");
        assert_eq!(
            read.load(Ordering::Relaxed),
            1,
            "nothing read past the limit"
        );
        let mut cx = Context::from_waker(Waker::noop());
        let first = Pin::new(held.body_mut()).poll_frame(&mut cx);
        assert!(
            matches!(first, Poll::Ready(Some(Ok(f))) if f.data_ref().map(Bytes::len) == Some(LIMIT + 1))
        );
    }

    /// A body that never sends a frame: a server waiting for the client's first message.
    struct Silent;

    impl HttpBody for Silent {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn headers_without_a_frame_are_given_on_after_a_bounded_wait() {
        let start = tokio::time::Instant::now();
        let held = first_frames(Ok(http::Response::new(Body::new(Silent))), LIMIT);
        let held = tokio::time::timeout(Duration::from_secs(10), held).await;
        held.expect("given on").expect("a response");
        assert_eq!(start.elapsed(), AFTER_HEADERS);
    }

    #[tokio::test]
    async fn trailers_first_read_as_a_trailers_only_response() {
        let held = first_frames(response(vec![Ok(Frame::trailers(status("14")))]), LIMIT).await;
        let held = held.expect("a response");
        assert_eq!(grpc_status(held.headers()), Some(tonic::Code::Unavailable));
    }

    #[tokio::test]
    async fn a_body_failing_before_any_frame_is_the_attempts_error() {
        let failed = vec![Err(tonic::Status::unknown("connection error"))];
        let error = first_frames(response(failed), LIMIT)
            .await
            .expect_err("an error");
        assert!(error.is::<BodyFailed>());
    }

    #[tokio::test]
    async fn a_message_and_its_trailers_pass_whole() {
        let data = Frame::data(Bytes::from_static(b"\0\0\0\0\0"));
        let frames = vec![Ok(data), Ok(Frame::trailers(status("0")))];
        let mut held = first_frames(response(frames), LIMIT)
            .await
            .expect("a response");
        assert_eq!(
            grpc_status(held.headers()),
            None,
            "the status stays a trailer"
        );
        assert_eq!(drain(held.body_mut()), 2);
    }
}
