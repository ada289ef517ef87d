//! Reading how a call ended: its `grpc-status`, from the response headers of a
//! trailers-only response or from the trailers, for outlier detection and retries.
//!
//! gRPC over HTTP/2 (`PROTOCOL-HTTP2.md`) ends a call with `grpc-status` in the trailers.
//! A call that fails before any message is usually answered *trailers-only*: one HEADERS
//! frame with end-of-stream that holds `grpc-status` itself. [`observe`] covers both: it
//! reports a trailers-only status at once, and otherwise wraps the body in a
//! [`StatusBody`] that reports exactly once, when the trailers pass, when the body ends or
//! fails, or when it is dropped before its end (the caller cancelled: the shell must not
//! count that against the endpoint).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

/// The header (or trailer) that carries a call's status code, as ASCII decimal. A
/// `HeaderName`, not a `&str`: a lookup by name skips parsing it on every call.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The status code in `headers` (response headers or trailers), if there is one. A value
/// that is not a valid code reads as [`Code::Unknown`], as tonic reads it.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(&GRPC_STATUS)
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// How a call's response ended, as seen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The server ended the call with this status: in the headers of a trailers-only
    /// response, or in the trailers.
    Status(Code),
    /// The response ended without a `grpc-status` (trailers without it, or no trailers):
    /// the server broke the protocol; tonic reports such a call as failed.
    NoStatus,
    /// The response body failed: the stream was reset or the connection lost mid-call.
    BodyError,
    /// The body was dropped before its end: the caller cancelled the call or stopped
    /// reading. Says nothing of the endpoint.
    Dropped,
}

/// Calls `report` at once with the status of a trailers-only response; otherwise wraps
/// the body so that it calls `report` once, when the call ends (see [`StatusBody`]).
pub(crate) fn observe<B, F>(
    response: http::Response<B>,
    report: F,
) -> http::Response<StatusBody<B, F>>
where
    F: FnOnce(Observed),
{
    match grpc_status(response.headers()) {
        Some(code) => {
            report(Observed::Status(code));
            response.map(|body| StatusBody::new(body, None))
        }
        None => response.map(|body| StatusBody::new(body, Some(report))),
    }
}

pin_project! {
    /// A response body that tells how its call ended, once: [`Observed::Status`] from
    /// the trailers frame as it passes, [`Observed::NoStatus`] when the body ends without
    /// one, [`Observed::BodyError`] on its first error, [`Observed::Dropped`] when it is
    /// dropped before any of these. Frames pass through unchanged.
    pub(crate) struct StatusBody<B, F>
    where
        F: FnOnce(Observed),
    {
        #[pin]
        inner: B,
        report: Report<F>,
    }
}

impl<B, F: FnOnce(Observed)> StatusBody<B, F> {
    /// Wraps `inner`; `report` is called at most once. With `None`, nothing is reported.
    pub(crate) fn new(inner: B, report: Option<F>) -> Self {
        StatusBody {
            inner,
            report: Report(report),
        }
    }
}

impl<B, F: FnOnce(Observed)> fmt::Debug for StatusBody<B, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusBody")
            .field("reported", &self.report.0.is_none())
            .finish_non_exhaustive()
    }
}

impl<B: Body, F: FnOnce(Observed)> Body for StatusBody<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = ready!(this.inner.poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let observed =
                        grpc_status(trailers).map_or(Observed::NoStatus, Observed::Status);
                    this.report.send(observed);
                }
            }
            Some(Err(_)) => this.report.send(Observed::BodyError),
            None => this.report.send(Observed::NoStatus),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The report not sent yet; sends [`Observed::Dropped`] if dropped unsent.
struct Report<F: FnOnce(Observed)>(Option<F>);

impl<F: FnOnce(Observed)> Report<F> {
    fn send(&mut self, observed: Observed) {
        if let Some(report) = self.0.take() {
            report(observed);
        }
    }
}

impl<F: FnOnce(Observed)> Drop for Report<F> {
    fn drop(&mut self) {
        self.send(Observed::Dropped);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    use bytes::Bytes;
    use http::HeaderValue;

    use super::*;

    /// A body that yields the frames given, then ends.
    struct Frames(VecDeque<Result<Frame<Bytes>, &'static str>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn data() -> Result<Frame<Bytes>, &'static str> {
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))
    }

    fn trailers(status: Option<&'static str>) -> Result<Frame<Bytes>, &'static str> {
        let mut map = HeaderMap::new();
        if let Some(status) = status {
            map.insert(GRPC_STATUS, HeaderValue::from_static(status));
        }
        Ok(Frame::trailers(map))
    }

    type Seen = Arc<Mutex<Vec<Observed>>>;

    fn respond(
        status: Option<&'static str>,
        frames: impl IntoIterator<Item = Result<Frame<Bytes>, &'static str>>,
    ) -> (
        http::Response<StatusBody<Frames, impl FnOnce(Observed)>>,
        Seen,
    ) {
        let seen = Seen::default();
        let mut response = http::Response::new(Frames(frames.into_iter().collect()));
        if let Some(status) = status {
            let value = HeaderValue::from_static(status);
            response.headers_mut().insert(GRPC_STATUS, value);
        }
        let sink = seen.clone();
        let observed = observe(response, move |o| sink.lock().unwrap().push(o));
        (observed, seen)
    }

    /// Polls up to `frames` frames; returns how many came.
    fn poll(body: &mut StatusBody<Frames, impl FnOnce(Observed)>, frames: usize) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        let mut body = Pin::new(body);
        for n in 0..frames {
            match body.as_mut().poll_frame(&mut cx) {
                Poll::Ready(Some(_)) => {}
                Poll::Ready(None) => return n,
                Poll::Pending => unreachable!("the test body is always ready"),
            }
        }
        frames
    }

    fn seen(seen: &Seen) -> Vec<Observed> {
        seen.lock().unwrap().clone()
    }

    #[test]
    fn a_trailers_only_response_reports_at_once_and_once() {
        let (response, log) = respond(Some("14"), []);
        assert_eq!(seen(&log), [Observed::Status(Code::Unavailable)]);
        let mut body = response.into_body();
        assert_eq!(poll(&mut body, 4), 0);
        drop(body);
        assert_eq!(seen(&log), [Observed::Status(Code::Unavailable)]);
    }

    #[test]
    fn reports_the_status_of_the_trailers_as_they_pass() {
        let (response, log) = respond(None, [data(), trailers(Some("13"))]);
        let mut body = response.into_body();
        assert_eq!(poll(&mut body, 1), 1);
        assert!(seen(&log).is_empty(), "not before the trailers");
        assert_eq!(poll(&mut body, 1), 1);
        assert_eq!(seen(&log), [Observed::Status(Code::Internal)]);
        assert_eq!(poll(&mut body, 4), 0);
        drop(body);
        assert_eq!(seen(&log), [Observed::Status(Code::Internal)], "once");
    }

    #[test]
    fn a_body_dropped_before_its_end_reports_dropped() {
        let (response, log) = respond(None, [data(), data(), trailers(Some("0"))]);
        let mut body = response.into_body();
        assert_eq!(poll(&mut body, 2), 2);
        drop(body);
        assert_eq!(seen(&log), [Observed::Dropped]);
    }

    #[test]
    fn an_end_without_a_status_reports_no_status() {
        let (response, log) = respond(None, [data()]);
        let mut body = response.into_body();
        assert_eq!(poll(&mut body, 4), 1);
        assert_eq!(seen(&log), [Observed::NoStatus]);

        let (response, log) = respond(None, [data(), trailers(None)]);
        let mut body = response.into_body();
        assert_eq!(poll(&mut body, 4), 2);
        drop(body);
        assert_eq!(seen(&log), [Observed::NoStatus]);
    }

    #[test]
    fn a_body_error_reports_once() {
        let (response, log) = respond(None, [data(), Err("reset"), trailers(Some("0"))]);
        let mut body = response.into_body();
        assert_eq!(poll(&mut body, 4), 3);
        drop(body);
        assert_eq!(seen(&log), [Observed::BodyError]);
    }

    #[test]
    fn an_unreadable_status_reads_as_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), Some(Code::Unknown));
        headers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers), Some(Code::NotFound));
    }
}
