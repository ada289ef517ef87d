//! The channel's own task: applies discovery changes, whether calls flow or not.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::Poll;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::discover::Change;
use tracing::{debug, error};

use super::backend::{Backend, spawn_connector};
use super::conn::Target;
use super::{Snapshot, State};
use crate::discovery::Discovered;
use crate::{DiscoveryStatus, EtcdDiscover};

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
    let mut endpoints: HashMap<String, (Arc<Backend>, Connector)> = HashMap::new();
    let mut discovering = true;
    let mut status_open = true;
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
                apply(&state, &mut endpoints, batch);
            }
            changed = status.changed(), if status_open => {
                // A closed status channel answers at once, for ever: stop asking.
                status_open = changed.is_ok();
                if !status_open || !matches!(*status.borrow(), DiscoveryStatus::Syncing) {
                    mark_synced(&state);
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
        state.changed.notify_waiters();
    }
}

/// Takes every change that is ready now, so a burst rebuilds the endpoint list once.
fn drain_ready(discover: &mut EtcdDiscover, batch: &mut Vec<Change<String, Discovered>>) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while let Poll::Ready(Some(Ok(change))) = discover.poll_discovered(&mut cx) {
        batch.push(change);
    }
}

fn apply(
    state: &State,
    endpoints: &mut HashMap<String, (Arc<Backend>, Connector)>,
    batch: Vec<Change<String, Discovered>>,
) {
    if batch.is_empty() {
        return;
    }
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
                let target = Target::new(endpoint, &instance.addr, plain);
                debug!(key, addr = %instance.addr, "endpoint added");
                let backend = Arc::new(Backend::new(
                    key.clone(),
                    instance,
                    state.changed.clone(),
                    state.config.latency_decay,
                ));
                let check = state.config.health_check.clone();
                let task =
                    spawn_connector(backend.clone(), target, state.config.probe_backoff, check);
                endpoints.insert(key, (backend, Connector(task)));
            }
            Change::Remove(key) => {
                debug!(key, "endpoint removed");
                endpoints.remove(&key);
            }
        }
    }
    let mut backends: Vec<_> = endpoints.values().map(|(b, _)| b.clone()).collect();
    backends.sort_by(|a, b| a.key.cmp(&b.key));
    let snapshot = Arc::new(Snapshot::new(backends, state.config.zone.as_deref()));
    *state
        .snapshot
        .write()
        .unwrap_or_else(PoisonError::into_inner) = snapshot;
    state.version.fetch_add(1, Ordering::Release);
    state.changed.notify_waiters();
}
