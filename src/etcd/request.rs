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
//!   [`MAX_IN_FLIGHT`] at a time; once that many wait, the oldest but the first is dropped
//!   for each new one, so attempts go on until the deadline instead of all waiting on a
//!   frozen member, and the first still answers within the deadline when every member is
//!   merely slow);
//! - after [`MAX_FAILURES`] failed attempts in a row (at most 0.81 s when every member refuses)
//!   the last error is returned, so that the caller's retry path reports an etcd that is
//!   down; a dead member among three is picked that many times in a row once in 59,049;
//! - an answer that every member would give (permission denied, lease not found, compacted,
//!   a request etcd calls invalid) is returned as it is;
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
/// the oldest but the first gives way to each new one once this many wait, a request with a
/// 5 s deadline makes about 16 attempts, all on one frozen member of three once in 43
/// million requests.
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
            // Before starting another attempt: none starts at the deadline.
            _ = tokio::time::sleep_until(end) => {
                return Err(last.unwrap_or(Error::Timeout {
                    operation,
                    after: end.saturating_duration_since(started),
                }));
            }
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

/// The attempts in flight, at most [`MAX_IN_FLIGHT`]: starting one more drops the oldest
/// but the first. The first is kept to the end, so that a request to an etcd that is slow
/// everywhere (a loaded disk) is answered if its first attempt is, within the deadline.
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
        if self.handles.len() >= MAX_IN_FLIGHT {
            let first_runs = self.handles.front().is_some_and(|(n, _)| *n == 1);
            if let Some((_, oldest)) = self.handles.remove(usize::from(first_runs)) {
                oldest.abort();
            }
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
mod tests;
