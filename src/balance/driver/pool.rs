//! The shell around the subset: the endpoints, their connector tasks, and the snapshot the
//! calls pick from.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;
use tower::discover::Change;
use tracing::debug;

use crate::balance::EndpointState;
use crate::balance::backend::Backend;
use crate::balance::conn::Target;
use crate::balance::connect::{Connector, Task};
use crate::balance::shared::{PickView, Shared};
use crate::balance::subset::{Action, Id, Subset, Traits};
use crate::discovery::Discovered;

/// One discovered endpoint, as the driver keeps it.
struct Endpoint {
    backend: Arc<Backend>,
    target: Target,
    /// Set while the endpoint is in the connected subset.
    task: Option<Task>,
}

impl Drop for Endpoint {
    /// Gone from discovery, or replaced: out of rotation, and its connection closes once
    /// the calls on it end, even while channels still hold it.
    fn drop(&mut self) {
        self.backend.deactivate();
    }
}

/// Every discovered endpoint, and the subset of them that is connected.
pub(super) struct Pool<C> {
    subset: Subset,
    endpoints: HashMap<Id, Endpoint>,
    /// Every endpoint, sorted by key.
    all: Arc<[Arc<Backend>]>,
    connector: C,
    rng: fastrand::Rng,
}

impl<C: Connector> Pool<C> {
    pub(super) fn new(state: &Shared, connector: C) -> Self {
        Pool {
            subset: Subset::new(state.config.subset, Instant::now()),
            endpoints: HashMap::new(),
            all: Arc::new([]),
            connector,
            rng: fastrand::Rng::new(),
        }
    }

    /// When the subset wants to take more endpoints, if it does.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        self.subset.wake_at()
    }

    /// Applies a batch of changes, rebalances, and publishes.
    pub(super) fn apply(
        &mut self,
        state: &Shared,
        batch: Vec<Change<String, Discovered>>,
        now: Instant,
    ) {
        for change in batch {
            match change {
                Change::Insert(key, discovered) => self.insert(state, key, discovered),
                Change::Remove(key) => {
                    debug!(key, "endpoint removed");
                    if let Some(id) = self.subset.remove(&key) {
                        self.endpoints.remove(&id);
                    }
                }
            }
        }
        let mut all: Vec<_> = self.endpoints.values().map(|e| e.backend.clone()).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        self.all = all.into();
        self.execute();
        self.rebalance_quietly(now);
        self.publish(state);
        self.record_states(state, now);
    }

    fn insert(&mut self, state: &Shared, key: String, discovered: Discovered) {
        let Discovered {
            endpoint,
            instance,
            route,
        } = discovered;
        debug!(key, addr = %instance.addr, "endpoint added");
        let zone = state.config.zone.as_deref();
        let traits = Traits {
            weight: instance.metadata.weight.unwrap_or(1).max(1),
            local: zone.is_some() && instance.metadata.zone.as_deref() == zone,
        };
        let (id, old) = self.subset.insert(&key, traits, &mut self.rng);
        if let Some(old) = old {
            self.endpoints.remove(&old);
        }
        let backend = Backend::new(
            key,
            instance,
            state.signals.clone(),
            state.config.latency_decay,
            &state.config.outlier.unwrap_or_default(),
        );
        let endpoint = Endpoint {
            backend: Arc::new(backend),
            target: Target::new(endpoint, route),
            task: None,
        };
        self.endpoints.insert(id, endpoint);
    }

    /// Endpoints resting after a failure become candidates again once rested.
    pub(super) fn cool_down(&mut self, now: Instant) {
        self.subset.cool_down(now);
    }

    /// Rebalances the subset; publishes if its membership changed.
    pub(super) fn rebalance(&mut self, state: &Shared, now: Instant) {
        if self.rebalance_quietly(now) {
            self.publish(state);
        }
        self.record_states(state, now);
    }

    /// The state gauge, with outlier detection's ejections shown as ejected.
    fn record_states(&self, state: &Shared, now: Instant) {
        let states = self.all.iter().map(|b| b.shown_state(now));
        crate::metrics::endpoints(&state.service, states);
    }

    fn rebalance_quietly(&mut self, now: Instant) -> bool {
        let endpoints = &self.endpoints;
        let member_state = |id| {
            endpoints
                .get(&id)
                .map_or(EndpointState::Idle, |e: &Endpoint| e.backend.state())
        };
        let changed = self.subset.rebalance(now, &mut self.rng, member_state);
        self.execute();
        changed
    }

    /// Carries out what the subset decided.
    fn execute(&mut self) {
        for action in self.subset.take_actions() {
            match action {
                Action::Connect(id) => {
                    let Some(endpoint) = self.endpoints.get_mut(&id) else {
                        continue;
                    };
                    endpoint.backend.activate();
                    let task = self
                        .connector
                        .connect(endpoint.backend.clone(), endpoint.target.clone());
                    endpoint.task = Some(task);
                }
                Action::Disconnect { id, rest_until } => {
                    let Some(endpoint) = self.endpoints.get_mut(&id) else {
                        continue;
                    };
                    endpoint.task = None;
                    endpoint.backend.deactivate();
                    let key = &endpoint.backend.key;
                    match rest_until {
                        Some(until) => debug!(key, ?until, "endpoint leaves the subset to rest"),
                        None => debug!(key, "endpoint makes room in the subset"),
                    }
                }
            }
        }
    }

    fn publish(&self, state: &Shared) {
        let members = self.subset.members().iter();
        let backends = members
            .filter_map(|id| self.endpoints.get(id))
            .map(|e| e.backend.clone())
            .collect();
        let mut snapshot = PickView::new(
            backends,
            self.all.clone(),
            state.config.zone.as_deref(),
            self.subset.has_candidates(),
        );
        snapshot.slow_start = state.config.slow_start;
        state.publish(snapshot);
    }
}
