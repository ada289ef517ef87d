//! The channel's own task: applies discovery changes, whether calls flow or not.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tower::discover::Change;
use tracing::{debug, error};

use super::backend::{Backend, EndpointState, spawn_connector};
use super::conn::Target;
use super::{Snapshot, State};
use crate::discovery::Discovered;
use crate::{Backoff, DiscoveryStatus, EtcdDiscover};

/// Aborts a connector when its endpoint is removed or the driver stops.
struct Connector(JoinHandle<()>);

impl Drop for Connector {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn drive(
    state: Arc<State>,
    mut discover: EtcdDiscover,
    mut stop: oneshot::Receiver<()>,
) {
    let mut status = discover.status();
    let mut pool = Pool::default();
    let mut discovering = true;
    let mut status_open = true;
    let mut tick = tokio::time::interval(COOLING_CHECK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Biased: stopping wins over more changes.
            biased;
            _ = &mut stop => break,
            item = discover.next_discovered(), if discovering => {
                let mut batch = Vec::new();
                match item {
                    Some(Ok(change)) => batch.push(change),
                    Some(Err(e)) => {
                        error!(error = %crate::error::Chain(&e), "discovery failed, endpoints frozen");
                        discovering = false;
                    }
                    None => discovering = false,
                }
                if discovering {
                    drain_ready(&mut discover, &mut batch);
                }
                if !batch.is_empty() {
                    pool.apply(&state, batch);
                    pool.rebalance(&state);
                    pool.publish(&state);
                }
            }
            changed = status.changed(), if status_open => {
                // A closed status channel answers at once, for ever: stop asking.
                status_open = changed.is_ok();
                if !status_open || !matches!(*status.borrow(), DiscoveryStatus::Syncing) {
                    mark_synced(&state);
                }
            }
            () = state.signals.driver.notified() => {
                if pool.rebalance(&state) {
                    pool.publish(&state);
                }
            }
            _ = tick.tick() => {
                pool.cool_down();
                if pool.rebalance(&state) {
                    pool.publish(&state);
                }
            }
        }
        if !discovering {
            mark_synced(&state);
        }
    }
}

fn mark_synced(state: &State) {
    if !state.synced.swap(true, Ordering::AcqRel) {
        state.signals.changed.notify_waiters();
    }
}

/// Takes every change that is ready now, so a burst rebuilds the endpoint list once.
fn drain_ready(discover: &mut EtcdDiscover, batch: &mut Vec<Change<String, Discovered>>) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while let Poll::Ready(Some(Ok(change))) = discover.poll_discovered(&mut cx) {
        batch.push(change);
    }
}

/// How often endpoints resting after a failure are checked.
const COOLING_CHECK: Duration = Duration::from_secs(1);

/// How long an endpoint that failed in a subset rests before it may join again: 2 s,
/// doubling with each failure in a row to 60 s, with jitter.
fn cooldown() -> Backoff {
    Backoff::default()
        .initial(Duration::from_secs(2))
        .max(Duration::from_secs(60))
}

/// One discovered endpoint, as the driver keeps it.
struct Entry {
    backend: Arc<Backend>,
    target: Target,
    /// Set while the endpoint is in the connected subset.
    connector: Option<Connector>,
    /// Failures in a row in the subset; each lengthens its rest before the next try.
    failures: u32,
}

/// Every discovered endpoint, and the subset of them that is connected.
///
/// While there are no more endpoints than [`Balancer::subset`](super::Balancer::subset),
/// every one is connected, and a failed one is probed with backoff until it answers. With
/// more, a random subset of that size is, drawn by weight and from the client's zone
/// first: a member that fails leaves it at once, for a candidate, and rests before it may
/// be drawn again. Probes are then bounded by the subset's size, whatever the number of
/// endpoints, and an endpoint outside it costs no connection, task or timer.
#[derive(Default)]
struct Pool {
    entries: HashMap<String, Entry>,
    /// The members of the subset.
    active: Vec<Arc<Backend>>,
    /// Candidates for the subset, in the client's zone and elsewhere. They may hold
    /// endpoints since removed, replaced or drawn: those are skipped when drawn.
    local: Vec<Arc<Backend>>,
    others: Vec<Arc<Backend>>,
    /// Endpoints resting after a failure in the subset, until the instant.
    cooling: Vec<(Instant, Arc<Backend>)>,
    /// The highest weight seen, for weighted draws.
    max_weight: u32,
    /// Every endpoint, sorted by key.
    all: Arc<[Arc<Backend>]>,
}

impl Pool {
    fn apply(&mut self, state: &State, batch: Vec<Change<String, Discovered>>) {
        for change in batch {
            match change {
                Change::Insert(
                    key,
                    Discovered {
                        endpoint,
                        instance,
                        plain,
                    },
                ) => {
                    debug!(key, addr = %instance.addr, "endpoint added");
                    let backend = Arc::new(Backend::new(
                        key.clone(),
                        instance,
                        state.signals.clone(),
                        state.config.latency_decay,
                    ));
                    self.max_weight = self.max_weight.max(weight(&backend));
                    self.candidate(state, backend.clone());
                    let entry = Entry {
                        backend,
                        target: Target::new(endpoint, plain),
                        connector: None,
                        failures: 0,
                    };
                    if let Some(old) = self.entries.insert(key, entry) {
                        self.active.retain(|b| !Arc::ptr_eq(b, &old.backend));
                    }
                }
                Change::Remove(key) => {
                    debug!(key, "endpoint removed");
                    if let Some(old) = self.entries.remove(&key) {
                        self.active.retain(|b| !Arc::ptr_eq(b, &old.backend));
                    }
                }
            }
        }
        let mut all: Vec<_> = self.entries.values().map(|e| e.backend.clone()).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        self.all = all.into();
    }

    /// Makes `backend` a candidate for the subset.
    fn candidate(&mut self, state: &State, backend: Arc<Backend>) {
        let zone = state.config.zone.as_deref();
        match zone.is_some() && backend.instance.metadata.zone.as_deref() == zone {
            true => self.local.push(backend),
            false => self.others.push(backend),
        }
    }

    /// Endpoints whose rest is over become candidates again.
    fn cool_down(&mut self) {
        let now = Instant::now();
        let (done, resting) = std::mem::take(&mut self.cooling)
            .into_iter()
            .partition::<Vec<_>, _>(|(until, _)| *until <= now);
        self.cooling = resting;
        for (_, backend) in done {
            // Not in the zone lists' order: a rested endpoint is drawn like any other.
            self.others.push(backend);
        }
    }

    /// Takes failed members out of a subset and tops it up; returns whether its membership
    /// changed.
    fn rebalance(&mut self, state: &State) -> bool {
        let subset = state.config.subset;
        let mut changed = false;
        if self.entries.len() > subset {
            let mut i = 0;
            while i < self.active.len() {
                if self.active[i].state() == EndpointState::Ejected {
                    let backend = self.active.swap_remove(i);
                    self.deactivate(&backend);
                    changed = true;
                } else {
                    i += 1;
                }
            }
        }
        let mut healthy = 0;
        for backend in &self.active {
            match backend.state() {
                EndpointState::Up => {
                    healthy += 1;
                    if let Some(entry) = self.entries.get_mut(&backend.key) {
                        entry.failures = 0;
                    }
                }
                EndpointState::Connecting => healthy += 1,
                _ => {}
            }
        }
        let mut rng = fastrand::Rng::new();
        for _ in healthy..subset.min(self.entries.len()) {
            let Some(backend) = self.draw(&mut rng) else {
                break;
            };
            self.activate(state, backend);
            changed = true;
        }
        changed
    }

    /// A candidate, from the client's zone first, drawn by weight.
    fn draw(&mut self, rng: &mut fastrand::Rng) -> Option<Arc<Backend>> {
        let max_weight = self.max_weight.max(1);
        for local in [true, false] {
            let mut rejected = 0;
            loop {
                let list = match local {
                    true => &mut self.local,
                    false => &mut self.others,
                };
                if list.is_empty() {
                    break;
                }
                let backend = list.swap_remove(rng.usize(..list.len()));
                let current = self.entries.get(&backend.key).is_some_and(|entry| {
                    Arc::ptr_eq(&entry.backend, &backend) && entry.connector.is_none()
                });
                if !current {
                    continue;
                }
                // Rejection sampling: a candidate is kept with odds of its weight over the
                // highest, a few times, then whatever comes.
                if rejected < WEIGHT_REJECTIONS && rng.u32(..max_weight) >= weight(&backend) {
                    rejected += 1;
                    list.push(backend);
                    continue;
                }
                return Some(backend);
            }
        }
        None
    }

    fn activate(&mut self, state: &State, backend: Arc<Backend>) {
        let Some(entry) = self.entries.get_mut(&backend.key) else {
            return;
        };
        backend.activate();
        let check = state.config.health_check.clone();
        let task = spawn_connector(
            backend.clone(),
            entry.target.clone(),
            state.config.probe_backoff,
            check,
        );
        entry.connector = Some(Connector(task));
        self.active.push(backend);
    }

    fn deactivate(&mut self, backend: &Arc<Backend>) {
        let Some(entry) = self.entries.get_mut(&backend.key) else {
            return;
        };
        debug!(key = %backend.key, failures = entry.failures + 1, "endpoint leaves the subset");
        entry.connector = None;
        backend.deactivate();
        entry.failures = entry.failures.saturating_add(1);
        let rest = cooldown().delay(entry.failures);
        self.cooling.push((Instant::now() + rest, backend.clone()));
    }

    fn publish(&self, state: &State) {
        let snapshot = Arc::new(Snapshot::new(
            self.active.clone(),
            self.all.clone(),
            state.config.zone.as_deref(),
        ));
        *state
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = snapshot;
        state.version.fetch_add(1, Ordering::Release);
        state.signals.changed.notify_waiters();
    }
}

/// How many times a draw puts a candidate back for its weight before it takes any.
const WEIGHT_REJECTIONS: u32 = 8;

fn weight(backend: &Backend) -> u32 {
    backend.instance.metadata.weight.unwrap_or(1).max(1)
}
