//! What the driver and the channels share: the endpoints as last published, whether
//! discovery has synced, and the channel-wide latency reference.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

use super::Balancer;
use super::backend::{Backend, Signals};
use super::cause;
use super::ejection::Panic;
use super::pick::{Ewma, Weighted};
use super::retry_throttle::TokenBucket;
use super::slow_start::SlowStart;
use crate::discovery::DiscoveryStatus;

/// Of 256 calls, how many feed the channel-wide latency estimate.
const REFERENCE_SAMPLE: u8 = 32;

/// The state one balanced channel's clones and its driver task share (one `Arc` per
/// channel); the driver writes the [`PickView`], calls read it.
pub(crate) struct Shared {
    pub(super) service: String,
    /// The latency of calls through the channel, sampled.
    latency: Mutex<Ewma>,
    /// The last estimate of `latency`, as `f64` bits, read without the lock.
    reference: AtomicU64,
    snapshot: RwLock<Arc<PickView>>,
    /// Counts the snapshots written, so a channel can tell when its cached one is stale. The
    /// driver writes a snapshot first and counts it after.
    version: AtomicU64,
    pub(super) signals: Arc<Signals>,
    /// Set once discovery has listed etcd successfully, failed for good or ended: no
    /// endpoint is on its way from etcd any more.
    synced: AtomicBool,
    /// When the channel was made: the start of the [`Balancer::startup_wait`].
    pub(super) created: Instant,
    status: watch::Receiver<DiscoveryStatus>,
    pub(super) config: Balancer,
    /// Held while outlier detection decides over the whole set, so two decisions never
    /// lock the endpoints' standings in different orders.
    pub(super) outlier_set: Mutex<()>,
    /// Whether most endpoints fail (outlier detection's panic).
    pub(super) panic: Panic,
    /// The retry throttle's tokens, with a retry policy and throttling.
    pub(super) throttle: Option<TokenBucket>,
}

/// The endpoints as one publication of the driver left them, with the weighted sets a
/// call's power-of-two-choices pick samples from; read-only once published.
pub(super) struct PickView {
    /// The connected subset, to pick from.
    pub(super) backends: Vec<Arc<Backend>>,
    /// Every endpoint discovery knows, sorted by key.
    pub(super) known: Arc<[Arc<Backend>]>,
    pub(super) all: Weighted,
    pub(super) local: Weighted,
    /// Whether the subset has endpoints left to try in place of failed members.
    pub(super) candidates: bool,
    /// The ramp of endpoints that come into rotation, if slow start is on.
    pub(super) slow_start: Option<SlowStart>,
}

impl Default for PickView {
    fn default() -> Self {
        PickView::new(Vec::new(), Arc::new([]), None, false)
    }
}

impl PickView {
    pub(super) fn new(
        backends: Vec<Arc<Backend>>,
        known: Arc<[Arc<Backend>]>,
        zone: Option<&str>,
        candidates: bool,
    ) -> Self {
        let weight = |b: &Backend| b.instance.metadata.weight.unwrap_or(1);
        let all = Weighted::new(backends.iter().enumerate().map(|(i, b)| (i, weight(b))));
        let local = Weighted::new(
            backends
                .iter()
                .enumerate()
                .filter(|(_, b)| zone.is_some() && b.instance.metadata.zone.as_deref() == zone)
                .map(|(i, b)| (i, weight(b))),
        );
        PickView {
            backends,
            known,
            all,
            local,
            candidates,
            slow_start: None,
        }
    }
}

impl Shared {
    pub(super) fn new(
        service: String,
        status: watch::Receiver<DiscoveryStatus>,
        config: Balancer,
    ) -> Self {
        let signals = Arc::new(Signals {
            service: service.as_str().into(),
            ..Signals::default()
        });
        Shared {
            service,
            latency: Mutex::new(Ewma::new(config.latency_decay)),
            reference: AtomicU64::new(0),
            snapshot: RwLock::new(Arc::default()),
            version: AtomicU64::new(0),
            signals,
            synced: AtomicBool::new(false),
            created: Instant::now(),
            status,
            outlier_set: Mutex::new(()),
            panic: Panic::new(),
            throttle: config
                .retry_throttling
                .filter(|_| !config.retry.is_empty())
                .map(|throttling| throttling.bucket()),
            config,
        }
    }

    pub(super) fn snapshot(&self) -> Arc<PickView> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many snapshots have been published.
    pub(super) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Publishes `snapshot` and wakes the calls waiting for an endpoint.
    pub(super) fn publish(&self, snapshot: PickView) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
        self.version.fetch_add(1, Ordering::Release);
        self.signals.changed.notify_waiters();
    }

    pub(super) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Discovery has listed etcd, failed for good or ended: calls stop waiting for it.
    pub(super) fn mark_synced(&self) {
        if !self.synced.swap(true, Ordering::AcqRel) {
            self.signals.changed.notify_waiters();
        }
    }

    /// Adds a sample of the calls' latencies to the channel-wide estimate; returns the
    /// estimate before it.
    ///
    /// The estimate only bounds what one sample can do to an endpoint's own, so a sample
    /// of the calls does: all of them would make every call write the same memory.
    pub(super) fn observe(&self, latency: Duration, now: Instant) -> f64 {
        let reference = f64::from_bits(self.reference.load(Ordering::Relaxed));
        if reference == 0.0 || fastrand::u8(..) < REFERENCE_SAMPLE {
            let mut ewma = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
            ewma.observe(latency, now, 0.0);
            let estimate = ewma.get(now);
            self.reference.store(estimate.to_bits(), Ordering::Relaxed);
        }
        reference
    }

    /// The status of a call that found no endpoint, with the cause.
    pub(super) fn unavailable(&self) -> Status {
        crate::metrics::fail_fast(&self.service);
        let snapshot = self.snapshot();
        cause::no_endpoint(&self.service, &snapshot.known, &self.status.borrow())
    }
}
