//! The server layer that counts in-flight calls, so shutdown can drain them.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::inflight::{CountedBody, Guard, InFlightCounter};

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
        let guard = InFlightCounter::enter(&self.counter);
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
        Poll::Ready(Ok(response.map(|inner| CountedBody::new(inner, guard))))
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
