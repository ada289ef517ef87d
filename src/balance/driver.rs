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
                let first_sync = !state.synced.load(Ordering::Acquire);
                if first_sync && (!status_open || settled(&status.borrow_and_update())) {
                    // The shared watch reports its listing just before the listing reaches
                    // this stream: let it arrive first, so no call wakes to an empty set.
                    tokio::task::yield_now().await;
                    let mut batch = Vec::new();
                    drain_ready(&mut discover, &mut batch);
                    if !batch.is_empty() {
                        pool.apply(&state, batch);
                        pool.rebalance(&state);
                        pool.publish(&state);
                    }
                    mark_synced(&state);
                }
            }
            () = state.signals.driver.notified() => {
                if pool.rebalance(&state) {
                    pool.publish(&state);
                }
            }
            _ = tick.tick() => {
                pool.cool_down(&state);
                if pool.rebalance(&state) {
                    pool.publish(&state);
                }
            }
            () = sleep_until(pool.wake_at), if pool.wake_at.is_some() => {
                pool.wake_at = None;
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

/// Whether discovery has listed etcd successfully or failed for good: either way, calls stop
/// waiting for it. A transient failure before the first listing is neither.
fn settled(status: &DiscoveryStatus) -> bool {
    matches!(
        status,
        DiscoveryStatus::Synced { .. } | DiscoveryStatus::Failed { .. }
    )
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
    /// Resting after a failure: not a candidate until its rest is over.
    resting: bool,
    /// Since when it has been up in the subset, as last seen.
    up_since: Option<Instant>,
}

/// The window over which at most `subset` endpoints join the subset.
const REPLACEMENT_WINDOW: Duration = Duration::from_millis(100);

/// How long a member must stay up before its failures are forgiven.
const FORGIVE_AFTER: Duration = Duration::from_secs(10);

/// Every discovered endpoint, and the subset of them that is connected.
///
/// While there are no more endpoints than [`Balancer::subset`](super::Balancer::subset),
/// every one is connected, and a failed one is probed with backoff until it answers. With
/// more, a random subset of that size is, with the client's zone first:
///
/// - a member that fails leaves at once for a candidate, and rests (2 s, doubling with each
///   failure in a row, to 60 s) before it may be drawn again;
/// - a new endpoint joins at once, in place of a random member of its zone class, with the
///   odds that keep the subset a uniform sample (reservoir sampling), so that servers
///   added later get their share of a fleet of clients;
/// - a member from another zone makes room for a candidate from the client's zone.
///
/// Probes are bounded by the subset's size, whatever the number of endpoints: at most that
/// many connection attempts at once, and that many new members per 100 ms. An endpoint
/// outside the subset costs no connection, task or timer.
struct Pool {
    entries: HashMap<String, Entry>,
    /// The members of the subset.
    active: Vec<Arc<Backend>>,
    /// Candidates for the subset, in the client's zone and elsewhere. They may hold
    /// endpoints since removed, replaced or drawn: those are skipped when drawn, and swept
    /// out when they outnumber the rest.
    local: Vec<Arc<Backend>>,
    others: Vec<Arc<Backend>>,
    /// Endpoints resting after a failure in the subset, until the instant.
    cooling: Vec<(Instant, Arc<Backend>)>,
    /// The highest weight seen, for weighted draws.
    max_weight: u32,
    /// How many endpoints are in the client's zone.
    local_entries: usize,
    /// Endpoints that joined the subset since `window_start`; see [`Pool::may_replace`].
    replaced: usize,
    window_start: Instant,
    /// When the subset may take more endpoints again, if it wants them.
    wake_at: Option<Instant>,
    /// Every endpoint, sorted by key.
    all: Arc<[Arc<Backend>]>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            entries: HashMap::new(),
            active: Vec::new(),
            local: Vec::new(),
            others: Vec::new(),
            cooling: Vec::new(),
            max_weight: 0,
            local_entries: 0,
            replaced: 0,
            window_start: Instant::now(),
            wake_at: None,
            all: Arc::new([]),
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Pool {
    fn apply(&mut self, state: &State, batch: Vec<Change<String, Discovered>>) {
        let mut rng = fastrand::Rng::new();
        for change in batch {
            match change {
                Change::Insert(
                    key,
                    Discovered {
                        endpoint,
                        instance,
                        route,
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
                    let entry = Entry {
                        backend: backend.clone(),
                        target: Target::new(endpoint, route),
                        connector: None,
                        failures: 0,
                        resting: false,
                        up_since: None,
                    };
                    self.local_entries += usize::from(self.is_local(state, &backend));
                    let Some(old) = self.entries.insert(key, entry) else {
                        self.admit(state, backend, &mut rng);
                        continue;
                    };
                    // An updated value: the new endpoint keeps the old one's place.
                    let member = old.connector.is_some();
                    self.drop_entry(state, &old);
                    match member {
                        true => self.activate(state, backend),
                        false => self.candidate(state, backend),
                    }
                }
                Change::Remove(key) => {
                    debug!(key, "endpoint removed");
                    if let Some(old) = self.entries.remove(&key) {
                        self.drop_entry(state, &old);
                    }
                }
            }
        }
        let mut all: Vec<_> = self.entries.values().map(|e| e.backend.clone()).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        self.all = all.into();
        self.sweep_candidates();
    }

    /// An endpoint discovery no longer has, or has replaced: out of the subset, and its
    /// connection closes once the calls on it end, even while channels still hold it.
    fn drop_entry(&mut self, state: &State, old: &Entry) {
        self.local_entries -= usize::from(self.is_local(state, &old.backend));
        self.active.retain(|b| !Arc::ptr_eq(b, &old.backend));
        old.backend.deactivate();
    }

    /// A new endpoint: a candidate, or a member at once in place of another, so that the
    /// subset stays a uniform sample of each zone class (reservoir sampling).
    fn admit(&mut self, state: &State, backend: Arc<Backend>, rng: &mut fastrand::Rng) {
        let subset = state.config.subset;
        if self.entries.len() <= subset || self.active.len() < subset {
            // Room for every endpoint, or the next rebalance draws from the candidates.
            self.candidate(state, backend);
            return;
        }
        let local = self.is_local(state, &backend);
        let same_class: Vec<usize> = (0..self.active.len())
            .filter(|&i| self.is_local(state, &self.active[i]) == local)
            .collect();
        let remote_members = (0..self.active.len())
            .filter(|&i| !self.is_local(state, &self.active[i]))
            .count();
        let replace = if local && remote_members > 0 {
            // The client's zone first: a remote member makes room.
            (0..self.active.len()).find(|&i| !self.is_local(state, &self.active[i]))
        } else {
            let class_size = match local {
                true => self.local_entries,
                false => self.entries.len() - self.local_entries,
            };
            let odds = same_class.len() as f64 / class_size.max(1) as f64;
            (!same_class.is_empty() && rng.f64() < odds)
                .then(|| same_class[rng.usize(..same_class.len())])
        };
        match replace {
            Some(i) => {
                let member = self.active.swap_remove(i);
                self.deactivate(state, &member, false);
                self.activate(state, backend);
            }
            None => self.candidate(state, backend),
        }
    }

    fn is_local(&self, state: &State, backend: &Backend) -> bool {
        let zone = state.config.zone.as_deref();
        zone.is_some() && backend.instance.metadata.zone.as_deref() == zone
    }

    /// Makes `backend` a candidate for the subset.
    fn candidate(&mut self, state: &State, backend: Arc<Backend>) {
        match self.is_local(state, &backend) {
            true => self.local.push(backend),
            false => self.others.push(backend),
        }
    }

    /// Whether `backend` is a current candidate: still discovered, not replaced, not a
    /// member, not resting.
    fn is_candidate(&self, backend: &Arc<Backend>) -> bool {
        self.entries.get(&backend.key).is_some_and(|entry| {
            Arc::ptr_eq(&entry.backend, backend) && entry.connector.is_none() && !entry.resting
        })
    }

    /// Drops the stale candidates once they outnumber the endpoints.
    fn sweep_candidates(&mut self) {
        if self.local.len() + self.others.len() <= 2 * self.entries.len() + 64 {
            return;
        }
        let (mut local, mut others) = (
            std::mem::take(&mut self.local),
            std::mem::take(&mut self.others),
        );
        local.retain(|b| self.is_candidate(b));
        others.retain(|b| self.is_candidate(b));
        (self.local, self.others) = (local, others);
    }

    /// Endpoints whose rest is over become candidates again; all of them while there is
    /// room for every endpoint.
    fn cool_down(&mut self, state: &State) {
        let now = Instant::now();
        let everyone = self.entries.len() <= state.config.subset;
        let (done, resting) = std::mem::take(&mut self.cooling)
            .into_iter()
            .partition::<Vec<_>, _>(|(until, _)| everyone || *until <= now);
        self.cooling = resting;
        for (_, backend) in done {
            let Some(entry) = self.entries.get_mut(&backend.key) else {
                continue;
            };
            if Arc::ptr_eq(&entry.backend, &backend) {
                entry.resting = false;
                self.candidate(state, backend);
            }
        }
    }

    /// Takes failed members out of a subset, prefers the client's zone, and tops the
    /// subset up; returns whether its membership changed.
    fn rebalance(&mut self, state: &State) -> bool {
        let subset = state.config.subset;
        let now = Instant::now();
        let mut changed = false;
        if self.entries.len() <= subset && !self.cooling.is_empty() {
            self.cool_down(state);
        }
        if self.entries.len() > subset {
            let mut i = 0;
            while i < self.active.len() {
                if self.active[i].state() == EndpointState::Ejected {
                    let backend = self.active.swap_remove(i);
                    self.deactivate(state, &backend, true);
                    changed = true;
                } else {
                    i += 1;
                }
            }
        }
        let mut rng = fastrand::Rng::new();
        if state.config.zone.is_some() {
            while let Some(i) =
                (0..self.active.len()).find(|&i| !self.is_local(state, &self.active[i]))
            {
                let Some(local) = self.draw_from(true, &mut rng) else {
                    break;
                };
                let remote = self.active.swap_remove(i);
                self.deactivate(state, &remote, false);
                self.activate(state, local);
                changed = true;
            }
        }
        let mut healthy = 0;
        for backend in &self.active {
            let Some(entry) = self.entries.get_mut(&backend.key) else {
                continue;
            };
            match backend.state() {
                EndpointState::Up => {
                    healthy += 1;
                    let since = *entry.up_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= FORGIVE_AFTER {
                        entry.failures = 0;
                    }
                }
                EndpointState::Connecting => {
                    healthy += 1;
                    entry.up_since = None;
                }
                _ => entry.up_since = None,
            }
        }
        for _ in healthy..subset.min(self.entries.len()) {
            if !self.may_replace(subset, now) {
                break;
            }
            let Some(backend) = self
                .draw_from(true, &mut rng)
                .or_else(|| self.draw_from(false, &mut rng))
            else {
                break;
            };
            self.activate(state, backend);
            changed = true;
        }
        changed
    }

    /// Whether one more endpoint may join the subset now: at most `subset` per
    /// [`REPLACEMENT_WINDOW`], so that a prefix of dead endpoints, each refused at once, is
    /// not tried at the pace of the refusals. Otherwise, sets when to try again.
    fn may_replace(&mut self, subset: usize, now: Instant) -> bool {
        if now >= self.window_start + REPLACEMENT_WINDOW {
            self.window_start = now;
            self.replaced = 0;
        }
        if self.replaced < subset {
            self.replaced += 1;
            return true;
        }
        self.wake_at = Some(self.window_start + REPLACEMENT_WINDOW);
        false
    }

    /// A candidate from the client's zone (`local`) or from elsewhere, drawn by weight.
    fn draw_from(&mut self, local: bool, rng: &mut fastrand::Rng) -> Option<Arc<Backend>> {
        let max_weight = self.max_weight.max(1);
        let mut rejected = 0;
        loop {
            let list = match local {
                true => &mut self.local,
                false => &mut self.others,
            };
            if list.is_empty() {
                return None;
            }
            let backend = list.swap_remove(rng.usize(..list.len()));
            if !self.is_candidate(&backend) {
                continue;
            }
            // Rejection sampling: a candidate is kept with odds of its weight over the
            // highest, a few times, then whatever comes.
            if rejected < WEIGHT_REJECTIONS && rng.u32(..max_weight) >= weight(&backend) {
                rejected += 1;
                let list = match local {
                    true => &mut self.local,
                    false => &mut self.others,
                };
                list.push(backend);
                continue;
            }
            return Some(backend);
        }
    }

    fn activate(&mut self, state: &State, backend: Arc<Backend>) {
        let Some(entry) = self.entries.get_mut(&backend.key) else {
            return;
        };
        backend.activate();
        let task = spawn_connector(backend.clone(), entry.target.clone(), &state.config);
        entry.connector = Some(Connector(task));
        entry.up_since = None;
        self.active.push(backend);
    }

    /// Takes a member out of the subset: after a failure (`failed`), to rest; otherwise
    /// back among the candidates at once.
    fn deactivate(&mut self, state: &State, backend: &Arc<Backend>, failed: bool) {
        let Some(entry) = self.entries.get_mut(&backend.key) else {
            return;
        };
        entry.connector = None;
        entry.up_since = None;
        backend.deactivate();
        if failed {
            entry.failures = entry.failures.saturating_add(1);
            entry.resting = true;
            debug!(key = %backend.key, failures = entry.failures, "endpoint leaves the subset to rest");
            let rest = cooldown().delay(entry.failures);
            self.cooling.push((Instant::now() + rest, backend.clone()));
        } else {
            debug!(key = %backend.key, "endpoint makes room in the subset");
            self.candidate(state, backend.clone());
        }
    }

    fn publish(&self, state: &State) {
        let candidates = self.entries.len() > state.config.subset
            && self
                .local
                .iter()
                .chain(&self.others)
                .any(|b| self.is_candidate(b));
        let snapshot = Arc::new(Snapshot::new(
            self.active.clone(),
            self.all.clone(),
            state.config.zone.as_deref(),
            candidates,
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
