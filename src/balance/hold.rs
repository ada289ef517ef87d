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

/// How long, after a data frame, the next frame may take and still be held back: a unary
/// response's trailers follow its message at once, so a server killed between the two
/// fails a call that can still be retried; a stream's next message may come much later,
/// and the caller gets the first one after this wait at most.
const AFTER_DATA: Duration = Duration::from_millis(20);

/// Reads a response's body until its end, or until its first data frame is in and no
/// further frame comes within [`AFTER_DATA`], then gives the response on with the frames
/// read in front. Trailers that come before any data are merged
/// into the headers, as a trailers-only response; a body that fails before the response
/// is given on becomes the attempt's error ([`BodyFailed`]). A trailers-only response or
/// an error passes as it is.
pub(super) async fn first_frames(result: Outcome) -> Outcome {
    let response = match result {
        Ok(response) if grpc_status(response.headers()).is_none() => response,
        other => return other,
    };
    let (mut parts, mut body) = response.into_parts();
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    loop {
        if body.is_end_stream() {
            break;
        }
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let next = match frames.is_empty() {
            true => Some(next.await),
            false => tokio::time::timeout(AFTER_DATA, next).await.ok(),
        };
        match next {
            // Data in, and nothing more for a while: a stream; give it on.
            None => break,
            // The end.
            Some(None) => {
                body = Body::empty();
                break;
            }
            Some(Some(Err(status))) => return Err(Box::new(BodyFailed(status))),
            Some(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(trailers) if frames.is_empty() => {
                    parts.headers.extend(trailers);
                    body = Body::empty();
                    break;
                }
                Ok(trailers) => frames.push_back(Frame::trailers(trailers)),
                Err(frame) => frames.push_back(frame),
            },
        }
    }
    let body = match frames.is_empty() {
        true => body,
        false => Body::new(Prepended { frames, rest: body }),
    };
    Ok(http::Response::from_parts(parts, body))
}

/// A response body that failed before its response was given on.
#[derive(Debug)]
pub(super) struct BodyFailed(tonic::Status);

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

    #[tokio::test]
    async fn trailers_first_read_as_a_trailers_only_response() {
        let held = first_frames(response(vec![Ok(Frame::trailers(status("14")))])).await;
        let held = held.expect("a response");
        assert_eq!(grpc_status(held.headers()), Some(tonic::Code::Unavailable));
    }

    #[tokio::test]
    async fn a_body_failing_before_any_frame_is_the_attempts_error() {
        let failed = vec![Err(tonic::Status::unknown("connection error"))];
        let error = first_frames(response(failed)).await.expect_err("an error");
        assert!(error.is::<BodyFailed>());
    }

    #[tokio::test]
    async fn a_message_and_its_trailers_pass_whole() {
        let data = Frame::data(Bytes::from_static(b"\0\0\0\0\0"));
        let frames = vec![Ok(data), Ok(Frame::trailers(status("0")))];
        let mut held = first_frames(response(frames)).await.expect("a response");
        assert_eq!(
            grpc_status(held.headers()),
            None,
            "the status stays a trailer"
        );
        assert_eq!(drain(held.body_mut()), 2);
    }
}
