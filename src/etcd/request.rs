//! One request to etcd that succeeds while a quorum of members answers.
//!
//! etcd-client spreads its requests over every endpoint it was given (tonic's balanced
//! channel: lazy connections, a random pick) and keeps giving a share to a member that is
//! dead or frozen. A request that lands there fails at once (connection refused) or never
//! answers, though the other members would have served it. So every one-shot request of the
//! crate goes through [`request`]:
//!
//! - an attempt that fails in a way another member would not (refused, unavailable, no
//!   leader, timed out) is sent again at once, and most likely reaches another member; after
//!   two such failures in a row the next attempts are spaced by a short jittered backoff
//!   (10 ms doubling to 250 ms), so an etcd that is down altogether is not hammered;
//! - an attempt with no answer after [`HEDGE_AFTER`] gets a second one alongside it, the way
//!   gRPC's hedging policy (gRFC A6) does, and the first answer wins: a frozen member costs
//!   that delay, not the deadline (another every [`HEDGE_AFTER`] while none answers, at most
//!   [`MAX_IN_FLIGHT`] at a time; once that many wait, the oldest is dropped for each new
//!   one, so attempts go on until the deadline instead of all waiting on a frozen member);
//! - after [`MAX_FAILURES`] failed attempts in a row (at most 0.81 s when every member refuses)
//!   the last error is returned, so that the caller's retry path reports an etcd that is
//!   down; a dead member among three is picked that many times in a row once in 59,049;
//! - an answer that every member would give (permission denied, lease not found, compacted)
//!   is returned as it is;
//! - at the deadline, the last error is returned, or [`Error::Timeout`] if none came.
//!
//! Every request the crate retries or hedges this way is idempotent (reads, puts of the
//! same value under the same lease, deletes, revokes, keepalives, watches), except a lease
//! grant: a grant whose answer is lost leaves a lease with no key, which expires after its
//! TTL.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{AbortHandle, Abortable, Aborted, Join, Ready, join, ready};
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::Error;

/// How long an attempt may go unanswered before a second one is sent alongside it.
pub(crate) const HEDGE_AFTER: Duration = Duration::from_millis(300);

/// The most attempts of one request in flight at once. Each hedge has the same chance of
/// landing on the frozen member again (etcd-client picks at random), so a few are needed; as
/// the oldest gives way to each new one once this many wait, a request with a 5 s deadline
/// makes about 16 attempts, all on one frozen member of three once in 43 million requests.
pub(crate) const MAX_IN_FLIGHT: usize = 8;

/// Failed attempts in a row after which the request gives up before its deadline.
pub(crate) const MAX_FAILURES: u32 = 10;

/// Failures in a row that are retried at once, before the backoff starts.
const AT_ONCE: u32 = 2;

/// The spacing of attempts after [`AT_ONCE`] failures in a row.
fn backoff() -> Backoff {
    Backoff::default()
        .initial(Duration::from_millis(10))
        .max(Duration::from_millis(250))
}

/// Runs `attempt` until it succeeds, returns an error that retrying cannot change, or
/// `deadline` passes; see the [module](self) docs. `operation` names it in a timeout.
pub(crate) async fn request<T, F, Fut>(
    operation: &'static str,
    deadline: Duration,
    attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    request_until(operation, Instant::now() + deadline, attempt).await
}

/// [`request`] with the deadline as an instant.
pub(crate) async fn request_until<T, F, Fut>(
    operation: &'static str,
    end: Instant,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let started = Instant::now();
    let mut in_flight = Attempts::default();
    in_flight.start(attempt());
    let mut hedge_at = started + HEDGE_AFTER;
    // When the next attempt may start after a failure; `None` while none is due.
    let mut retry_at: Option<Instant> = None;
    // Failed attempts in a row.
    let mut failures = 0;
    let mut last = None;
    loop {
        tokio::select! {
            // Biased: an answer that is in wins over starting another attempt.
            biased;
            Some(result) = in_flight.next() => match result {
                Ok(value) => return Ok(value),
                Err(error) => {
                    retry_at = Some(after_failure(operation, error, &mut failures, &mut last)?);
                }
            },
            _ = sleep_until(retry_at) => {
                // Yields first, so that a request failing at once never spins.
                tokio::task::yield_now().await;
                retry_at = None;
                hedge_at = Instant::now() + HEDGE_AFTER;
                in_flight.start(attempt());
            }
            _ = tokio::time::sleep_until(hedge_at), if !in_flight.is_empty() => {
                hedge_at = Instant::now() + HEDGE_AFTER;
                in_flight.start(attempt());
            }
            _ = tokio::time::sleep_until(end) => {
                return Err(last.unwrap_or(Error::Timeout {
                    operation,
                    after: end.saturating_duration_since(started),
                }));
            }
        }
    }
}

/// After a failed attempt: the error, if it is final (an answer every member would give, or
/// [`MAX_FAILURES`] in a row), else when the next attempt may start. Counts the failure and
/// keeps the error as the `last` one.
fn after_failure(
    operation: &'static str,
    error: Error,
    failures: &mut u32,
    last: &mut Option<Error>,
) -> Result<Instant, Error> {
    if !error.is_member_local() || *failures + 1 >= MAX_FAILURES {
        return Err(error);
    }
    tracing::debug!(operation, error = %crate::error::Chain(&error), "etcd request failed, trying another member");
    *last = Some(error);
    *failures += 1;
    let delay = match failures.checked_sub(AT_ONCE) {
        None | Some(0) => Duration::ZERO,
        Some(n) => backoff().delay(n),
    };
    Ok(Instant::now() + delay)
}

/// The attempts in flight, at most [`MAX_IN_FLIGHT`]: starting one more drops the oldest.
struct Attempts<Fut: Future> {
    running: FuturesUnordered<Join<Ready<u64>, Abortable<Fut>>>,
    /// Of the attempts still running, oldest first, by number.
    handles: VecDeque<(u64, AbortHandle)>,
    started: u64,
}

impl<Fut: Future> Default for Attempts<Fut> {
    fn default() -> Self {
        Attempts {
            running: FuturesUnordered::new(),
            handles: VecDeque::new(),
            started: 0,
        }
    }
}

impl<Fut: Future> Attempts<Fut> {
    fn start(&mut self, attempt: Fut) {
        if self.handles.len() >= MAX_IN_FLIGHT
            && let Some((_, oldest)) = self.handles.pop_front()
        {
            oldest.abort();
        }
        let (handle, registration) = AbortHandle::new_pair();
        self.started += 1;
        self.handles.push_back((self.started, handle));
        let numbered = join(ready(self.started), Abortable::new(attempt, registration));
        self.running.push(numbered);
    }

    fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The next answer of an attempt that was not dropped.
    async fn next(&mut self) -> Option<Fut::Output> {
        loop {
            match self.running.next().await? {
                (n, Ok(output)) => {
                    self.handles.retain(|(m, _)| *m != n);
                    return Some(output);
                }
                // Dropped for a newer one: its handle is gone already.
                (_, Err(Aborted)) => {}
            }
        }
    }
}

/// Sleeps until `at`; never, without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn unavailable() -> Error {
        Error::Connect {
            endpoints: "http://127.0.0.1:1".into(),
            source: Arc::new(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
                "tcp connect error",
            ))),
        }
    }

    fn denied() -> Error {
        Error::List {
            prefix: "p/".into(),
            source: Arc::new(etcd_client::Error::GRpcStatus(
                tonic::Status::permission_denied("etcdserver: permission denied"),
            )),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_attempt_is_retried_at_once() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let result = request("test", Duration::from_secs(5), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(unavailable()),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(result.expect("the second attempt succeeds"), 1);
        assert_eq!(start.elapsed(), Duration::ZERO, "no wait before the retry");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_gets_a_hedge() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let result = request("test", Duration::from_secs(5), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => std::future::pending().await,
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(result.expect("the hedge succeeds"), 1);
        assert_eq!(start.elapsed(), HEDGE_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_every_member_would_give_is_final() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = request("test", Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(denied())
        })
        .await;
        assert!(result.expect_err("denied").is_permanent());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_etcd_that_refuses_everywhere_gets_the_last_error_within_a_second() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let result: Result<(), _> = request("test", Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unavailable())
        })
        .await;
        assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(calls.load(Ordering::SeqCst), MAX_FAILURES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_failure_ends_at_the_deadline() {
        let start = Instant::now();
        let result: Result<(), _> = request("test", Duration::from_secs(2), || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(unavailable())
        })
        .await;
        assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    /// Counts the attempts running (started, not yet ended or dropped) and the most at once.
    #[derive(Default)]
    struct Gauge {
        now: AtomicU32,
        most: AtomicU32,
    }

    struct Running<'a>(&'a Gauge);

    impl<'a> Running<'a> {
        fn new(gauge: &'a Gauge) -> Self {
            let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.most.fetch_max(now, Ordering::SeqCst);
            Running(gauge)
        }
    }

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_etcd_that_never_answers_times_out() {
        let calls = AtomicU32::new(0);
        let gauge = Gauge::default();
        let result: Result<(), _> = request("listing", Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            let _running = Running::new(&gauge);
            std::future::pending().await
        })
        .await;
        assert!(
            matches!(
                result,
                Err(Error::Timeout {
                    operation: "listing",
                    ..
                })
            ),
            "{result:?}"
        );
        // One at once, then one every HEDGE_AFTER until the deadline.
        assert_eq!(calls.load(Ordering::SeqCst), 17);
        assert_eq!(gauge.most.load(Ordering::SeqCst), MAX_IN_FLIGHT as u32);
    }

    /// The first eight attempts land on a frozen member, the ninth on a live one: the
    /// oldest gave way, so the request does not wait for its deadline with all eight stuck.
    #[tokio::test(start_paused = true)]
    async fn attempts_go_on_past_eight_stuck_on_a_frozen_member() {
        let calls = AtomicU32::new(0);
        let gauge = Gauge::default();
        let start = Instant::now();
        let result = request("test", Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let _running = Running::new(&gauge);
            match n {
                0..8 => std::future::pending().await,
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(result.expect("the ninth answers"), 8);
        assert_eq!(start.elapsed(), HEDGE_AFTER * 8);
        assert_eq!(gauge.most.load(Ordering::SeqCst), MAX_IN_FLIGHT as u32);
    }
}
