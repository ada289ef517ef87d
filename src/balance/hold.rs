//! Holding a response's head, under a retry policy, until its first frames are in: a
//! call whose connection fails right after the response headers (a server killed
//! mid-call), or whose error status comes in trailers right after them, can then still be
//! retried, since the caller has seen nothing yet. How long each frame is waited for is
//! [`patience`]'s decision.

mod patience;

use std::collections::VecDeque;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tokio::time::Instant;
use tonic::body::Body;

use self::patience::{Patience, WINDOW};
use super::direct::Reads;
use super::status_observer::grpc_status;

type Outcome = Result<http::Response<Body>, tower::BoxError>;

/// Reads the first frames of a response's body: its first frame, then, if that is a data
/// frame of at most `limit` bytes, at most one more frame. Trailers right after the first
/// message (a unary call) are held with it; a second data frame, or no frame while the
/// connection (whose read count is `reads`) moves on, means a stream, and the response is
/// given on (committed), with the frames read in front; see [`patience`] for how long each
/// frame is waited for. No more than two frames are ever held, and none past the call's
/// `deadline` (its `grpc-timeout`, if it has one): the response is given on then.
///
/// Trailers that come before any data are merged into the headers, as a trailers-only
/// response; a body that fails before the response is given on becomes the attempt's
/// error ([`BodyFailed`]). A trailers-only response or an error passes as it is.
pub(super) async fn first_frames(
    result: Outcome,
    limit: usize,
    reads: Option<&Reads>,
    deadline: Option<Instant>,
) -> Outcome {
    let response = match result {
        Ok(response) if grpc_status(response.headers()).is_none() => response,
        other => return other,
    };
    let (mut parts, mut body) = response.into_parts();
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    match next_frame(&mut body, reads, deadline).await {
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
                    match next_frame(&mut body, reads, deadline).await {
                        // Nothing more while the connection moves on: a stream.
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

/// The next frame of `body`, waiting for it as long as [`Patience`] says, and not past
/// `deadline`.
async fn next_frame(body: &mut Body, reads: Option<&Reads>, deadline: Option<Instant>) -> Next {
    if body.is_end_stream() {
        return Next::End;
    }
    let count = || reads.map(Reads::get);
    let mut patience = Patience::new(count(), Instant::now());
    let mut next = pin!(std::future::poll_fn(
        |cx| Pin::new(&mut *body).poll_frame(cx)
    ));
    loop {
        let look = Instant::now() + WINDOW;
        let wake = deadline.map_or(look, |deadline| deadline.min(look));
        match tokio::time::timeout_at(wake, next.as_mut()).await {
            Err(_) if wake < look => return Next::Nothing,
            Err(_) if patience.gives_up(count(), Instant::now()) => return Next::Nothing,
            Err(_) => {}
            Ok(None) => return Next::End,
            Ok(Some(Err(status))) => return Next::Failed(status),
            Ok(Some(Ok(frame))) => return Next::Frame(frame),
        }
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
    use std::time::Duration;

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
        let held = first_frames(
            Ok(http::Response::new(Body::new(endless))),
            LIMIT,
            None,
            None,
        );
        let held = tokio::time::timeout(Duration::from_secs(1), held).await;
        held.expect("given on").expect("a response");
        assert_eq!(read.load(Ordering::Relaxed), 2, "two frames held at most");
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_message_larger_than_the_limit_is_given_on_at_once() {
        let read = Arc::new(AtomicUsize::new(0));
        let endless = Endless(read.clone(), LIMIT + 1);
        let held = first_frames(
            Ok(http::Response::new(Body::new(endless))),
            LIMIT,
            None,
            None,
        );
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

    /// How long `first_frames` holds a response whose body never sends a frame, on a
    /// connection whose reads are counted by `reads`, if given, for a call due `after`.
    async fn held_silent(reads: Option<&Reads>, after: Option<Duration>) -> Duration {
        let start = Instant::now();
        let deadline = after.map(|after| start + after);
        let silent = Ok(http::Response::new(Body::new(Silent)));
        let held = first_frames(silent, LIMIT, reads, deadline);
        let held = tokio::time::timeout(Duration::from_secs(10), held).await;
        held.expect("given on").expect("a response");
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn headers_without_a_frame_are_given_on_after_a_bounded_wait() {
        assert_eq!(
            held_silent(None, None).await,
            WINDOW,
            "uncounted: one window"
        );
        let idle = Reads::default();
        assert_eq!(held_silent(Some(&idle), None).await, patience::LONGEST);
        let due = Duration::from_millis(90);
        assert_eq!(
            held_silent(Some(&idle), Some(due)).await,
            due,
            "the call's deadline"
        );
        let moving = Reads::default();
        let reader = tokio::spawn({
            let moving = moving.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    moving.note();
                }
            }
        });
        assert_eq!(held_silent(Some(&moving), None).await, 2 * WINDOW);
        reader.abort();
    }

    /// A body that sends `first` frame, if any, then nothing until its sleep ends, then
    /// fails as a lost connection does.
    struct FailsLate(Option<Frame<Bytes>>, Pin<Box<tokio::time::Sleep>>);

    impl HttpBody for FailsLate {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            if let Some(frame) = self.0.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
            self.1
                .as_mut()
                .poll(cx)
                .map(|()| Some(Err(tonic::Status::unknown("connection error"))))
        }
    }

    /// How a held response ends whose server sends `first`, if any, after its headers,
    /// then stalls for 10 windows (descheduled on a busy machine) and dies, while its
    /// connection reads nothing.
    async fn stalled_then_killed(first: Option<Frame<Bytes>>) -> Outcome {
        let stall = Box::pin(tokio::time::sleep(WINDOW * 10));
        let body = Body::new(FailsLate(first, stall));
        let reads = Reads::default();
        first_frames(Ok(http::Response::new(body)), LIMIT, Some(&reads), None).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_stalls_then_dies_after_its_headers_fails_the_attempt() {
        let error = stalled_then_killed(None)
            .await
            .expect_err("the attempt failed");
        assert!(error.is::<BodyFailed>(), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_stalls_then_dies_after_its_message_fails_the_attempt() {
        let message = Frame::data(Bytes::from_static(b"\0\0\0\0\0"));
        let error = stalled_then_killed(Some(message)).await;
        let error = error.expect_err("the attempt failed");
        assert!(error.is::<BodyFailed>(), "{error}");
    }

    #[tokio::test]
    async fn trailers_first_read_as_a_trailers_only_response() {
        let held = first_frames(
            response(vec![Ok(Frame::trailers(status("14")))]),
            LIMIT,
            None,
            None,
        )
        .await;
        let held = held.expect("a response");
        assert_eq!(grpc_status(held.headers()), Some(tonic::Code::Unavailable));
    }

    #[tokio::test]
    async fn a_body_failing_before_any_frame_is_the_attempts_error() {
        let failed = vec![Err(tonic::Status::unknown("connection error"))];
        let error = first_frames(response(failed), LIMIT, None, None)
            .await
            .expect_err("an error");
        assert!(error.is::<BodyFailed>());
    }

    #[tokio::test]
    async fn a_message_and_its_trailers_pass_whole() {
        let data = Frame::data(Bytes::from_static(b"\0\0\0\0\0"));
        let frames = vec![Ok(data), Ok(Frame::trailers(status("0")))];
        let mut held = first_frames(response(frames), LIMIT, None, None)
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
