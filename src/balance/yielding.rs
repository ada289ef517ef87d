//! Yielding to the scheduler before returning an error that came at once: no call path
//! may spin.

use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `call`, and yields to the scheduler before returning an error that came at once.
///
/// A call that fails without waiting (no endpoint, a deadline already past, every endpoint
/// refusing the request) would otherwise let a caller that retries at once keep its worker
/// thread for ever, and starve the tasks that would end the failure: the channel's own
/// task applying discovery, connections coming up. tokio's `yield_now` also lets the
/// runtime poll its I/O before the caller runs again.
pub(super) fn yielding<F, T>(call: F) -> Yielding<F, T>
where
    F: Future<Output = Result<T, tower::BoxError>>,
{
    Yielding {
        call,
        waited: false,
        failed: None,
        _output: std::marker::PhantomData,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`yielding`]: written out, as it wraps every call, so that it adds
    /// a few words to the call's future rather than a second copy of it.
    pub(super) struct Yielding<F, T> {
        #[pin]
        call: F,
        waited: bool,
        // An error that came at once, held while the task yields.
        failed: Option<(tower::BoxError, Pin<Box<dyn Future<Output = ()> + Send>>)>,
        _output: std::marker::PhantomData<fn() -> T>,
    }
}

impl<F, T> Future for Yielding<F, T>
where
    F: Future<Output = Result<T, tower::BoxError>>,
{
    type Output = Result<T, tower::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.failed.is_none() {
            match this.call.poll(cx) {
                Poll::Pending => {
                    *this.waited = true;
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) if !*this.waited => {
                    *this.failed = Some((error, Box::pin(tokio::task::yield_now())));
                }
                Poll::Ready(result) => return Poll::Ready(result),
            }
        }
        let Some((_, yielded)) = this.failed.as_mut() else {
            return Poll::Pending;
        };
        std::task::ready!(yielded.as_mut().poll(cx));
        match this.failed.take() {
            Some((error, _)) => Poll::Ready(Err(error)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_error_that_came_at_once_waits_for_one_turn_of_the_scheduler() {
        let mut call = std::pin::pin!(yielding(async { Err::<(), _>("refused".into()) }));
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        assert!(
            first.is_pending(),
            "the error is held while the task yields"
        );
        let error = call.await.expect_err("then given");
        assert_eq!(error.to_string(), "refused");
    }

    #[tokio::test]
    async fn a_result_after_a_wait_or_a_success_comes_at_once() {
        let ok = yielding(async { Ok::<_, tower::BoxError>(7) });
        let mut ok = std::pin::pin!(ok);
        let polled = std::future::poll_fn(|cx| Poll::Ready(ok.as_mut().poll(cx))).await;
        assert!(matches!(polled, Poll::Ready(Ok(7))));
        let waited = yielding(async {
            tokio::task::yield_now().await;
            Err::<(), tower::BoxError>("late".into())
        });
        let mut waited = std::pin::pin!(waited);
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(waited.as_mut().poll(cx)))
                .await
                .is_pending()
        );
        let polled = std::future::poll_fn(|cx| Poll::Ready(waited.as_mut().poll(cx))).await;
        assert!(
            matches!(polled, Poll::Ready(Err(_))),
            "no second wait after a wait"
        );
    }
}
