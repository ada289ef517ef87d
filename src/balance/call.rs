//! One call through the balancer: pick, send, and retry a call that never left.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};
use tracing::debug;

use super::backend::Backend;
use super::conn::Conn;
use super::direct::{Direct, Reads, grpc_timeout};
use super::longest::later;
use super::shared::Shared;
use super::status_observer;
pub(super) use super::yielding::yielding;
use crate::inflight::{CountedBody, Guard};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;

/// Retries of one call on other endpoints, after connection failures before it was sent.
const MAX_RETRIES: usize = 4;

type Slot = Arc<Mutex<Option<Body>>>;

/// The attempts of a call under a retry policy so far: the endpoints they went to, and the
/// read count of the connection the last one went out on, if it was the balancer's own
/// (what [`hold`](super::hold) watches while it holds the response).
#[derive(Default)]
pub(super) struct Tried {
    pub(super) backends: Vec<Arc<Backend>>,
    pub(super) reads: Option<Reads>,
}

/// Sends `request` on `picked`, or on an endpoint picked when none was, or when it failed
/// before sending. With `tried` (a retry policy's attempts), the pick avoids the
/// endpoints in it where another is up, and the endpoint sent to is added to it.
pub(super) async fn call(
    state: Arc<Shared>,
    picked: Option<Arc<Backend>>,
    request: http::Request<Body>,
    tried: Option<&mut Tried>,
) -> Result<http::Response<Body>, tower::BoxError> {
    call_after(state, picked, request, tried, 0, Instant::now()).await
}

/// [`call`], after `retries` attempts that never left, for a call that started at `since`:
/// its deadlines run from then, not from this retry.
pub(super) async fn call_after(
    state: Arc<Shared>,
    mut picked: Option<Arc<Backend>>,
    request: http::Request<Body>,
    mut tried: Option<&mut Tried>,
    mut retries: usize,
    since: Instant,
) -> Result<http::Response<Body>, tower::BoxError> {
    let deadline = state.config.wait_for_ready.map(|wait| later(since, wait));
    // The call's own deadline: for the wait for an endpoint, and on our own connection
    // (tonic's channel applies it by itself).
    let timeout = grpc_timeout(request.headers()).map(|t| since + t);
    let mut request = request;
    loop {
        let backend = match picked.take() {
            Some(backend) => backend,
            None => {
                let avoid = tried.as_deref().map_or(&[][..], |t| t.backends.as_slice());
                state.pick(deadline, timeout, avoid).await?
            }
        };
        let Some((conn, generation)) = backend.check_out() else {
            // It went down since it was picked: pick again, after other tasks had a turn.
            tokio::task::yield_now().await;
            continue;
        };
        let last = retries >= MAX_RETRIES;
        if let Some(tried) = tried.as_deref_mut() {
            tried.backends.push(backend.clone());
            tried.reads = match &conn {
                Conn::Direct(direct) => Some(direct.reads().clone()),
                Conn::Tonic(_) => None,
            };
        }
        let started = Instant::now();
        let (result, unsent) = attempt(&backend, conn, generation, request, timeout, last).await;
        match result {
            Ok(sent) => return Ok(sent.finish(state, backend, started)),
            Err(error) => {
                request = after_failure(&state, &backend, generation, error, unsent, last)?;
                retries += 1;
            }
        }
    }
}

/// After a failed attempt on `backend`: ejects its connection unless the failure says
/// nothing of the endpoint, counts a sent call's failure for outlier detection, and gives
/// back the request to send again elsewhere if it never left and this was not the `last`
/// try; otherwise the error.
pub(super) fn after_failure(
    state: &Shared,
    backend: &Arc<Backend>,
    generation: u64,
    error: tower::BoxError,
    unsent: Option<http::Request<Body>>,
    last: bool,
) -> Result<http::Request<Body>, tower::BoxError> {
    if !endpoint_is_fine(&*error) {
        backend.eject_connection(generation);
        if unsent.is_none() {
            state.transport_failure(backend);
        }
    }
    match unsent {
        Some(unsent) if !last => {
            crate::metrics::retry(&state.service, crate::metrics::Retry::Transparent);
            debug!(key = %backend.key, error = %crate::error::Chain(&*error), "call never left, retrying on another endpoint");
            Ok(unsent)
        }
        _ => Err(error),
    }
}

/// One attempt on `backend`'s connection `conn`: the response, with the guard that counts
/// it as the endpoint's load, or the error, with the request if it never left.
async fn attempt(
    backend: &Arc<Backend>,
    conn: Conn,
    generation: u64,
    request: http::Request<Body>,
    timeout: Option<Instant>,
    last: bool,
) -> (Result<Sent, tower::BoxError>, Option<http::Request<Body>>) {
    let guard = Guard::enter(backend.clone());
    match conn {
        Conn::Direct(direct) => {
            let (result, unsent) = send_direct(backend, direct, generation, request, timeout).await;
            (result.map(|r| Sent::Direct(r, guard)), unsent)
        }
        Conn::Tonic(channel) => {
            let (result, unsent) = send_tonic(backend, channel, generation, request, last).await;
            (result.map(|r| Sent::Tonic(r, guard)), unsent)
        }
    }
}

/// A response as its connection gave it, with the guard that counts its call in flight.
pub(super) enum Sent {
    Direct(http::Response<Incoming>, Guard),
    Tonic(http::Response<Body>, Guard),
}

impl Sent {
    /// The response for the caller, for a call sent at `started`: its latency recorded,
    /// its body counted ([`counted`]). The call's own `Arc`s go to the response: no clone
    /// per call.
    pub(super) fn finish(
        self,
        state: Arc<Shared>,
        backend: Arc<Backend>,
        started: Instant,
    ) -> http::Response<Body> {
        let now = Instant::now();
        let reference = state.observe(now - started, now);
        backend.observe(now - started, now, reference);
        match self {
            Sent::Direct(response, guard) => counted(response, guard, state, backend),
            Sent::Tonic(response, guard) => counted(response, guard, state, backend),
        }
    }
}

/// The response, its body keeping the call counted until it ends, so streams count as load;
/// with outlier detection, how the call ends (its `grpc-status`) is counted for `backend`.
fn counted<B>(
    response: http::Response<B>,
    guard: Guard,
    state: Arc<Shared>,
    backend: Arc<Backend>,
) -> http::Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    if state.config.outlier.is_none() {
        return response.map(|body| Body::new(CountedBody::new(body, Some(guard))));
    }
    let report = move |observed| state.observed(&backend, observed);
    let response = status_observer::observe(response, report);
    response.map(|body| Body::new(CountedBody::new(body, Some(guard))))
}

/// What an attempt gives: the response or the error, and the request if it never left.
pub(super) type Attempt<B> = (
    Result<http::Response<B>, tower::BoxError>,
    Option<http::Request<Body>>,
);

/// An attempt on the balancer's own connection, which hands back a request it did not take.
async fn send_direct(
    backend: &Backend,
    mut direct: Direct,
    generation: u64,
    request: http::Request<Body>,
    timeout: Option<Instant>,
) -> Attempt<Incoming> {
    let response = direct.send(request);
    // The handle is free once the call is queued; the next call reuses it.
    backend.check_in(Conn::Direct(direct), generation);
    wait_direct(response, timeout).await
}

/// The response to a request queued on the balancer's own connection, by the call's own
/// deadline (`timeout`); a request the connection did not take comes back with the error.
async fn wait_direct(
    response: impl Future<Output = Result<http::Response<Incoming>, TrySendError<http::Request<Body>>>>,
    timeout: Option<Instant>,
) -> Attempt<Incoming> {
    let result = match timeout {
        Some(at) => match tokio::time::timeout_at(at, response).await {
            Ok(result) => result,
            Err(_) => return (Err(tonic::TimeoutExpired(()).into()), None),
        },
        None => response.await,
    };
    direct_attempt(result)
}

/// What the balancer's own connection answered, as an attempt: the response, or the error
/// with the request if the connection did not take it.
pub(super) fn direct_attempt(
    result: Result<http::Response<Incoming>, TrySendError<http::Request<Body>>>,
) -> Attempt<Incoming> {
    match result {
        Ok(response) => (Ok(response), None),
        Err(mut error) => {
            let unsent = error.take_message();
            (Err(error.into_error().into()), unsent)
        }
    }
}

/// An attempt on tonic's channel, which drops a request it could not send. So that such a
/// request can be sent again, the body waits in a slot until the transport first reads it,
/// and a copy of the head stays here.
async fn send_tonic(
    backend: &Backend,
    mut channel: Channel,
    generation: u64,
    request: http::Request<Body>,
    last: bool,
) -> Attempt<Body> {
    let (mut parts, body) = request.into_parts();
    // An empty body is never polled, so it cannot tell whether the call left: no retry.
    let retryable = !last && !body.is_end_stream();
    let (body, slot) = match retryable {
        true => {
            let slot: Slot = Arc::new(Mutex::new(Some(body)));
            (Body::new(OnceBody::new(slot.clone())), Some(slot))
        }
        false => (body, None),
    };
    let request = resend(&mut parts, body, retryable);
    let result = match channel.ready().await {
        Ok(_) => {
            let future = channel.call(request);
            backend.check_in(Conn::Tonic(channel), generation);
            future.await
        }
        Err(error) => Err(error),
    };
    let unsent = match &result {
        Err(_) => slot
            .as_ref()
            .and_then(take)
            .map(|body| http::Request::from_parts(parts, body)),
        Ok(_) => None,
    };
    (result.map_err(Into::into), unsent)
}

/// Whether a failed call says nothing about its endpoint: its own deadline (`grpc-timeout`,
/// or the endpoint's timeout) passed, or the server reset that one stream and the
/// connection goes on.
fn endpoint_is_fine(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            return e.is_reset() && !e.is_go_away();
        }
        source = e.source();
    }
    false
}

/// The request for one attempt: the head in `parts`, and `body`. When the call may be sent
/// again, `parts` keeps a copy of the head, without the extensions (nothing below this
/// channel reads them).
///
/// The original goes out and the copy stays: the transport frees what it is given on its
/// own thread, and memory freed on another thread than the one that allocated it is far
/// costlier than memory freed where it was allocated.
fn resend(parts: &mut http::request::Parts, body: Body, keep: bool) -> http::Request<Body> {
    let copy = if keep {
        let (mut copy, ()) = http::Request::new(()).into_parts();
        copy.method = parts.method.clone();
        copy.uri = parts.uri.clone();
        copy.version = parts.version;
        copy.headers = parts.headers.clone();
        copy
    } else {
        http::Request::new(()).into_parts().0
    };
    http::Request::from_parts(std::mem::replace(parts, copy), body)
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Body>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

fn take(slot: &Slot) -> Option<Body> {
    lock(slot).take()
}

/// A request body that stays in its slot until the transport first reads it, so a call
/// that failed before sending anything can be sent again elsewhere.
struct OnceBody {
    slot: Slot,
    body: Option<Body>,
}

impl OnceBody {
    fn new(slot: Slot) -> Self {
        OnceBody { slot, body: None }
    }
}

impl HttpBody for OnceBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.body.is_none() {
            self.body = take(&self.slot);
        }
        match &mut self.body {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => lock(&self.slot).as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => lock(&self.slot)
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}
