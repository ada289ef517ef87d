//! The channel's own task: applies discovery changes, whether calls flow or not, and
//! carries out what the subset decides.
//!
//! Every event (a batch of changes, the first successful listing, a member coming up or
//! going down, a timer) goes to the [`Pool`], which asks the pure
//! [`Subset`](super::subset::Subset) what to do, does it through the [`Connector`], and
//! publishes the endpoints for the calls.

mod pool;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tower::discover::Change;
use tracing::error;

use super::connect::Connector;
use super::shared::Shared;
use crate::discovery::{Discovered, DiscoveryStatus, DiscoveryStream};
use crate::error::Error;
use pool::Pool;

/// How often endpoints resting after a failure are checked.
const COOLING_CHECK: Duration = Duration::from_secs(1);

type Item = Result<Change<String, Discovered>, Error>;

/// Where the driver's changes come from: discovery, or a fake in tests.
pub(super) trait Source: Send + 'static {
    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>>;
}

impl Source for DiscoveryStream {
    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.poll_discovered(cx)
    }
}

/// Runs until `stop` fires or is dropped, with the last clone of the channel.
pub(super) async fn drive(
    state: Arc<Shared>,
    mut source: impl Source,
    mut status: watch::Receiver<DiscoveryStatus>,
    connector: impl Connector,
    mut stop: oneshot::Receiver<()>,
) {
    let mut pool = Pool::new(&state, connector);
    let mut discovering = true;
    let mut status_open = true;
    let mut tick = every(Duration::ZERO, COOLING_CHECK);
    let sweep_every = state.config.outlier.map(|o| o.sweep_interval());
    let mut sweep = every(
        sweep_every.unwrap_or(COOLING_CHECK),
        sweep_every.unwrap_or(COOLING_CHECK),
    );
    let mut rng = fastrand::Rng::new();
    loop {
        tokio::select! {
            // Biased: stopping wins over more changes, and changes over the status that
            // reports them.
            biased;
            _ = &mut stop => break,
            item = std::future::poll_fn(|cx| source.poll_change(cx)), if discovering => {
                discovering = on_change(&state, &mut pool, &mut source, item);
            }
            changed = status.changed(), if status_open => {
                // A closed status channel answers at once, for ever: stop asking.
                status_open = changed.is_ok();
                let settled = !status_open || settled(&status.borrow_and_update());
                if settled && !state.is_synced() && discovering {
                    discovering = first_sync(&state, &mut pool, &mut source).await;
                }
            }
            () = state.signals.driver.notified() => pool.rebalance(&state, Instant::now()),
            _ = tick.tick() => {
                pool.cool_down(Instant::now());
                pool.rebalance(&state, Instant::now());
            }
            () = sleep_until(pool.wake_at()), if pool.wake_at().is_some() => {
                pool.rebalance(&state, Instant::now());
            }
            _ = sweep.tick(), if sweep_every.is_some() => state.sweep_outliers(&mut rng),
        }
        if !discovering {
            state.mark_synced();
        }
    }
}

/// Applies `item` and every other change ready now, so a burst rebuilds the endpoint list
/// once; returns whether discovery goes on.
fn on_change(
    state: &Shared,
    pool: &mut Pool<impl Connector>,
    source: &mut impl Source,
    item: Option<Item>,
) -> bool {
    let (batch, discovering) = collect(source, Some(item));
    if !batch.is_empty() {
        pool.apply(state, batch, Instant::now());
    }
    discovering
}

/// Discovery has listed etcd for the first time (or failed for good): calls stop waiting
/// for it.
///
/// The shared watch reports its listing just before the listing reaches this stream: let it
/// arrive first, so that no call wakes to an empty set.
async fn first_sync(
    state: &Shared,
    pool: &mut Pool<impl Connector>,
    source: &mut impl Source,
) -> bool {
    tokio::task::yield_now().await;
    let discovering = on_change_ready(state, pool, source);
    state.mark_synced();
    discovering
}

/// Applies the changes ready now, if any; returns whether discovery goes on.
fn on_change_ready(
    state: &Shared,
    pool: &mut Pool<impl Connector>,
    source: &mut impl Source,
) -> bool {
    let first = ready(source);
    let (batch, discovering) = collect(source, first);
    if !batch.is_empty() {
        pool.apply(state, batch, Instant::now());
    }
    discovering
}

/// `first` (an item polled already, if any) and every change ready after it; and whether
/// discovery goes on: it ends with an error, logged here, or with the stream.
fn collect(
    source: &mut impl Source,
    first: Option<Option<Item>>,
) -> (Vec<Change<String, Discovered>>, bool) {
    let mut batch = Vec::new();
    let mut next = first;
    while let Some(item) = next.take() {
        match item {
            Some(Ok(change)) => {
                batch.push(change);
                next = ready(source);
            }
            Some(Err(e)) => {
                error!(error = %crate::error::Chain(&e), "discovery failed, endpoints frozen");
                return (batch, false);
            }
            None => return (batch, false),
        }
    }
    (batch, true)
}

/// The next item if one is ready now.
fn ready(source: &mut impl Source) -> Option<Option<Item>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match source.poll_change(&mut cx) {
        Poll::Ready(item) => Some(item),
        Poll::Pending => None,
    }
}

/// Whether discovery has listed etcd successfully or failed for good: either way, calls stop
/// waiting for it. A transient failure before the first listing is neither.
fn settled(status: &DiscoveryStatus) -> bool {
    matches!(
        status,
        DiscoveryStatus::Synced { .. } | DiscoveryStatus::Failed { .. }
    )
}

/// A timer that first fires `first` from now, then every `period`, later rather than in
/// bursts when the task falls behind.
fn every(first: Duration, period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(Instant::now() + first, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
