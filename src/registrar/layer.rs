//! The server layer that counts in-flight calls, so shutdown can drain them.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tower_layer::Layer;
use tower_service::Service;

/// The count of calls in flight, shared by every clone of the layer and its services.
#[derive(Debug, Default)]
pub(crate) struct InFlightCounter {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlightCounter {
    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn enter(self: &Arc<Self>) -> Guard {
        self.count.fetch_add(1, Ordering::AcqRel);
        Guard(self.clone())
    }

    /// Waits until no call is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one call until it is dropped: with the response body, once it has been sent.
#[derive(Debug)]
struct Guard(Arc<InFlightCounter>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A [`Layer`] for `tonic::transport::Server::builder().layer(..)` that counts in-flight
/// calls for a [`Registration`](crate::Registration)'s drain.
///
/// A call counts from the moment it reaches the server until its response body has been
/// sent or dropped, so streaming calls count until their last message. The layer is a cheap
/// `Clone` and holds no lifecycle of its own.
#[derive(Debug, Clone)]
pub struct InFlightLayer {
    counter: Arc<InFlightCounter>,
}

impl InFlightLayer {
    pub(crate) fn new(counter: Arc<InFlightCounter>) -> Self {
        InFlightLayer { counter }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlight {
            inner,
            counter: self.counter.clone(),
        }
    }
}

/// The service made by [`InFlightLayer`].
#[derive(Debug, Clone)]
pub struct InFlight<S> {
    inner: S,
    counter: Arc<InFlightCounter>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for InFlight<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = self.counter.enter();
        ResponseFuture {
            inner: self.inner.call(request),
            guard: Some(guard),
        }
    }
}

pin_project! {
    /// The response future of [`InFlight`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Guard>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<CountedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| CountedBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project! {
    /// A response body that keeps its call counted until it is dropped.
    #[derive(Debug)]
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<Guard>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_until_the_body_is_dropped() {
        let counter = Arc::new(InFlightCounter::default());
        let layer = InFlightLayer::new(counter.clone());
        let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
        }));
        let response = svc.call(http::Request::new(())).await.expect("infallible");
        assert_eq!(counter.get(), 1);
        let idle = tokio::spawn({
            let counter = counter.clone();
            async move { counter.idle().await }
        });
        drop(response);
        assert_eq!(counter.get(), 0);
        tokio::time::timeout(std::time::Duration::from_secs(5), idle)
            .await
            .expect("idle resolves once the body is dropped")
            .expect("task");
    }
}
