//! Counting calls in flight: for the registrar's drain, and for the balancer's load.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Notify;

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

    pub(crate) fn enter(self: &Arc<Self>) -> Guard {
        Guard::enter(self.clone())
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

/// What holds an [`InFlightCounter`]: the counter itself, or a value that has one, so that
/// a guard can keep an `Arc` the caller already holds rather than clone another.
pub(crate) trait Counted: Send + Sync + 'static {
    fn counter(&self) -> &InFlightCounter;
}

impl Counted for InFlightCounter {
    fn counter(&self) -> &InFlightCounter {
        self
    }
}

/// Counts one call until it is dropped: with the response body, once it has been sent.
pub(crate) struct Guard(Arc<dyn Counted>);

impl Guard {
    /// Counts a call on `owner`'s counter.
    pub(crate) fn enter(owner: Arc<dyn Counted>) -> Self {
        owner.counter().count.fetch_add(1, Ordering::AcqRel);
        Guard(owner)
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Guard").field(self.0.counter()).finish()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let counter = self.0.counter();
        if counter.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            counter.idle.notify_waiters();
        }
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

impl<B> CountedBody<B> {
    pub(crate) fn new(inner: B, guard: Option<Guard>) -> Self {
        CountedBody {
            inner,
            _guard: guard,
        }
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
