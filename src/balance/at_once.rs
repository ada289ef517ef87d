//! The common case of a call, sent at once: the channel's cached view gave an endpoint that
//! is up, on the balancer's own connection, and no retry policy applies.
//!
//! The request is queued on the connection while the channel's `call` runs, as tonic's
//! own connection does, and the call's future ([`Sending`]) only waits for the response.
//! It is written out rather than an `async` block: nested `async` code kept a copy of the
//! request and of each inner future, about 2 KB where these fields take a few hundred
//! bytes, and a future that large is allocated and freed with every call. Anything else
//! (no endpoint up yet, tonic's channel, a request the connection did not take) goes
//! the full way, through [`call::call_after`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;

use super::backend::Backend;
use super::call::{self, Sent};
use super::conn::Conn;
use super::direct::grpc_timeout;
use super::shared::Shared;
use crate::inflight::Guard;

/// The future of a call through the balanced channel.
pub(super) type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, tower::BoxError>> + Send>>;

/// Sends `request` on `backend` at once if it is up on the balancer's own connection;
/// otherwise takes the full way ([`call::call`]), from this pick.
pub(super) fn send(
    state: Arc<Shared>,
    backend: Arc<Backend>,
    request: http::Request<Body>,
) -> CallFuture {
    let (mut direct, generation) = match backend.check_out() {
        Some((Conn::Direct(direct), generation)) => (direct, generation),
        Some((conn, generation)) => {
            backend.check_in(conn, generation);
            return full(state, Some(backend), request);
        }
        None => return full(state, None, request),
    };
    // The call's own deadline, as `call` applies it on this connection; its timer is made
    // on the first poll (inside the runtime) and boxed, so calls without one do not carry it.
    let started = Instant::now();
    let timeout = grpc_timeout(request.headers()).map(|t| started + t);
    let guard = Guard::enter(backend.clone());
    let response = direct.send(request);
    // The handle is free once the call is queued; the next call on this thread reuses it.
    backend.check_in(Conn::Direct(direct), generation);
    Box::pin(call::yielding(Sending {
        response,
        timeout,
        deadline: None,
        call: Some(Call {
            state,
            backend,
            guard,
            generation,
            started,
        }),
        full: None,
    }))
}

/// The full way: pick (and wait) unless `picked`, send, retry what never left.
pub(super) fn full(
    state: Arc<Shared>,
    picked: Option<Arc<Backend>>,
    request: http::Request<Body>,
) -> CallFuture {
    Box::pin(call::yielding(call::call(state, picked, request, None)))
}

/// What the answer to a call sent at once needs.
struct Call {
    state: Arc<Shared>,
    backend: Arc<Backend>,
    /// Counts the call in flight on `backend`, until its response body ends.
    guard: Guard,
    /// The connection it was sent on.
    generation: u64,
    started: Instant,
}

pin_project_lite::pin_project! {
    /// A call queued on the balancer's own connection: waits for the response, by the
    /// call's own deadline; a request the connection did not take goes the full way.
    struct Sending<F> {
        #[pin]
        response: F,
        timeout: Option<Instant>,
        deadline: Option<Pin<Box<Sleep>>>,
        call: Option<Call>,
        // The full way, once the request came back unsent.
        full: Option<CallFuture>,
    }
}

type Response = Result<http::Response<Incoming>, TrySendError<http::Request<Body>>>;

impl<F: Future<Output = Response>> Future for Sending<F> {
    type Output = Result<http::Response<Body>, tower::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(full) = this.full {
            return full.as_mut().poll(cx);
        }
        let result = match this.response.poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                let Some(at) = *this.timeout else {
                    return Poll::Pending;
                };
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                ready!(deadline.as_mut().poll(cx));
                // The call's own time ran out: as on `call`'s way, not the endpoint's fault.
                return Poll::Ready(Err(tonic::TimeoutExpired(()).into()));
            }
        };
        let Some(call) = this.call.take() else {
            return Poll::Ready(Err("a call's future was polled after it ended".into()));
        };
        match call::direct_attempt(result) {
            (Ok(response), _) => Poll::Ready(Ok(Sent::Direct(response, call.guard).finish(
                call.state,
                call.backend,
                call.started,
            ))),
            (Err(error), unsent) => {
                drop(call.guard);
                // A request that never left goes again, elsewhere, as on `call`'s way.
                let request = call::after_failure(
                    &call.state,
                    &call.backend,
                    call.generation,
                    error,
                    unsent,
                    false,
                )?;
                // Its deadlines still run from when the call started.
                let full = this.full.insert(Box::pin(call::call_after(
                    call.state,
                    None,
                    request,
                    None,
                    1,
                    call.started,
                )));
                full.as_mut().poll(cx)
            }
        }
    }
}
