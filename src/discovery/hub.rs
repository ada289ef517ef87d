//! One watch per prefix and settings in a [`SharedDiscovery`](super::SharedDiscovery): every
//! discovery made from it (or its clones) of the same prefix, with the same request
//! settings, shares one list-then-watch engine, on the one etcd client the group holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use tracing::Instrument;

use super::DiscoveryStatus;
use super::diff::RawChange;
use super::engine::{Engine, EngineConfig, State};
use super::entries::Entries;
use crate::error::Error;

/// Batches a slow subscriber may fall behind by before it resyncs from the snapshot.
const BACKLOG: usize = 1024;

/// What the engine tells its subscribers.
#[derive(Debug)]
pub(super) enum Message {
    Batch(Vec<RawChange>),
    /// The engine's first listing is complete: the published entries are etcd's truth.
    Listed,
    Failed(Error),
}

/// What has been published so far: the state a new subscriber starts from.
#[derive(Default)]
pub(super) struct Published {
    pub(super) entries: Entries,
    /// Whether the first listing is complete.
    pub(super) listed: bool,
    pub(super) failed: Option<Error>,
    /// Hands out receivers while the engine runs. The engine task clears it when it ends,
    /// so that every receiver then sees the channel closed.
    sender: Option<broadcast::Sender<Arc<Message>>>,
}

/// A running engine and its subscribers' channel. Dropping the last `Arc` stops the engine.
pub(super) struct Hub {
    published: Arc<Mutex<Published>>,
    status: watch::Receiver<DiscoveryStatus>,
    task: tokio::task::JoinHandle<()>,
    _stop: oneshot::Sender<()>,
}

/// The running engines of one group of discoveries, by prefix and settings. Only the group
/// holds it, so no discovery outside the group (another client, other credentials) ever
/// reads through one of them.
#[derive(Default)]
pub(crate) struct Watches {
    hubs: Mutex<HashMap<String, Engines>>,
}

/// The engines of one prefix, with their settings.
type Engines = Vec<(Settings, Weak<Hub>)>;

impl Watches {
    /// How many engines run.
    pub(super) fn running(&self) -> usize {
        let hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
        hubs.values()
            .flatten()
            .filter(|(_, hub)| hub.strong_count() > 0)
            .count()
    }
}

/// The request settings of an engine: two discoveries share one only if theirs are equal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Settings {
    pub(super) backoff: crate::backoff::Backoff,
    pub(super) request_timeout: Duration,
    pub(super) progress_interval: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) healthy_after: Duration,
}

/// A subscriber's link to the engine: the changes it publishes, and its status.
pub(super) struct Subscription {
    pub(super) hub: Arc<Hub>,
    pub(super) changes: broadcast::Receiver<Arc<Message>>,
    pub(super) status: watch::Receiver<DiscoveryStatus>,
}

/// The entries published when a subscriber (re)subscribes, which its receiver of changes
/// follows. The subscriber catches up from it, then drops it.
pub(super) struct Catchup {
    pub(super) entries: Entries,
    /// Whether the entries are a complete listing.
    pub(super) listed: bool,
}

impl Hub {
    /// Joins the engine of `watches` that watches `prefix` with `settings`, starting one with
    /// `config` if none runs (or the last one failed).
    pub(super) fn join(
        watches: &Watches,
        prefix: &str,
        settings: Settings,
        config: impl FnOnce() -> EngineConfig,
    ) -> (Subscription, Catchup) {
        let mut hubs = watches.hubs.lock().unwrap_or_else(PoisonError::into_inner);
        hubs.retain(|_, engines| {
            engines.retain(|(_, hub)| hub.strong_count() > 0);
            !engines.is_empty()
        });
        let engines = hubs.entry(prefix.to_owned()).or_default();
        let running = engines
            .iter()
            .filter(|(s, _)| *s == settings)
            .find_map(|(_, hub)| hub.upgrade())
            .filter(|hub| !hub.failed());
        let hub = running.unwrap_or_else(|| {
            let hub = Arc::new(Hub::start(config(), prefix.to_owned()));
            engines.retain(|(s, _)| *s != settings);
            engines.push((settings, Arc::downgrade(&hub)));
            hub
        });
        drop(hubs);
        hub.subscribe()
    }

    fn start(config: EngineConfig, prefix: String) -> Hub {
        let gate = StatusGate::new(config.status.subscribe());
        let status = gate.published.subscribe();
        let (sender, _) = broadcast::channel(BACKLOG);
        let published = Arc::new(Mutex::new(Published {
            sender: Some(sender.clone()),
            ..Published::default()
        }));
        let (stop, stopped) = oneshot::channel();
        let span = tracing::info_span!("tonic_etcd::watch", prefix = %prefix);
        let engine = Engine::new(config, prefix);
        let task = run(engine, published.clone(), sender, gate, stopped);
        let task = tokio::spawn(task.instrument(span));
        Hub {
            published,
            status,
            task,
            _stop: stop,
        }
    }

    fn subscribe(self: Arc<Self>) -> (Subscription, Catchup) {
        let (snapshot, changes) = self.resubscribe();
        let status = self.status.clone();
        let subscription = Subscription {
            hub: self,
            changes,
            status,
        };
        (subscription, snapshot)
    }

    /// The entries now and a receiver of the changes after them: taken under one lock, so
    /// no batch falls in between or is seen twice. Once the engine has ended, the receiver
    /// is closed.
    pub(super) fn resubscribe(&self) -> (Catchup, broadcast::Receiver<Arc<Message>>) {
        let published = self.lock();
        let changes = match &published.sender {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        };
        let snapshot = Catchup {
            entries: published.entries.clone(),
            listed: published.listed,
        };
        (snapshot, changes)
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the engine has stopped: on a permanent error, or because the runtime it ran
    /// on was shut down. A new subscriber then starts a new one.
    fn failed(&self) -> bool {
        self.task.is_finished() || self.lock().failed.is_some()
    }
}

async fn run(
    mut engine: Engine,
    published: Arc<Mutex<Published>>,
    sender: broadcast::Sender<Arc<Message>>,
    mut gate: StatusGate,
    mut stopped: oneshot::Receiver<()>,
) {
    /// Closes the subscribers' channel however the task ends, even when its runtime drops it.
    struct Closing(Arc<Mutex<Published>>);
    impl Drop for Closing {
        fn drop(&mut self) {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).sender = None;
        }
    }
    let _closing = Closing(published.clone());
    let mut state = State::List;
    loop {
        let step = engine.step(state);
        tokio::pin!(step);
        let (output, next) = loop {
            tokio::select! {
                // Biased: once the last subscriber is gone, no further request is started;
                // a step that is done wins over the status it has just set.
                biased;
                _ = &mut stopped => return,
                done = &mut step => break done,
                Ok(()) = gate.engine.changed() => gate.during_step(),
            }
        };
        state = next;
        let ended = publish(
            &mut published.lock().unwrap_or_else(PoisonError::into_inner),
            &sender,
            output,
            &gate.engine,
        );
        gate.after_step();
        if ended {
            return;
        }
    }
}

/// Publishes a step's output to the subscribers; `true` if the engine has failed for good.
fn publish(
    published: &mut Published,
    sender: &broadcast::Sender<Arc<Message>>,
    output: Result<Vec<RawChange>, Error>,
    status: &watch::Receiver<DiscoveryStatus>,
) -> bool {
    match output {
        Ok(changes) if changes.is_empty() => {}
        Ok(changes) => {
            for change in &changes {
                match change {
                    RawChange::Put(entry) => {
                        published.entries.insert(entry.clone());
                    }
                    RawChange::Delete(key) => {
                        published.entries.remove(key);
                    }
                }
            }
            let _ = sender.send(Arc::new(Message::Batch(changes)));
        }
        Err(error) => {
            published.failed = Some(error.clone());
            let _ = sender.send(Arc::new(Message::Failed(error)));
            return true;
        }
    }
    if !published.listed && status.borrow().is_synced() {
        published.listed = true;
        let _ = sender.send(Arc::new(Message::Listed));
    }
    false
}

/// The engine's status as its subscribers see it: `Synced` only once the changes it covers
/// are published, so that no subscriber reports synced before its stream has the listing.
/// The engine sets `Synced` as it ends the step that lists or reads up to the revision, a
/// moment before the hub sends that step's changes.
pub(super) struct StatusGate {
    engine: watch::Receiver<DiscoveryStatus>,
    published: watch::Sender<DiscoveryStatus>,
    /// A `Synced` seen during a step, held until the step's changes are published.
    held: bool,
}

impl StatusGate {
    fn new(engine: watch::Receiver<DiscoveryStatus>) -> Self {
        StatusGate {
            engine,
            published: watch::Sender::new(DiscoveryStatus::Syncing),
            held: false,
        }
    }

    /// During a step: passes on at once anything but `Synced` (a retry, a failure).
    fn during_step(&mut self) {
        let status = self.engine.borrow_and_update().clone();
        self.held = status.is_synced();
        if !self.held {
            self.published.send_replace(status);
        }
    }

    /// Once the step's changes are published: passes on the status, if it changed.
    fn after_step(&mut self) {
        if self.held || self.engine.has_changed().unwrap_or(false) {
            self.held = false;
            let status = self.engine.borrow_and_update().clone();
            self.published.send_replace(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn synced(revision: i64) -> DiscoveryStatus {
        DiscoveryStatus::Synced {
            revision,
            endpoints: 1,
            prefix: "p/".into(),
            skipped: 0,
            skip_reason: None,
        }
    }

    #[test]
    fn synced_waits_for_the_steps_changes_and_a_retry_does_not() {
        let (engine, receiver) = watch::channel(DiscoveryStatus::Syncing);
        let mut gate = StatusGate::new(receiver);
        let published = gate.published.subscribe();
        let retrying = DiscoveryStatus::Retrying {
            attempt: 1,
            error: Error::Timeout {
                operation: "listing",
                after: Duration::from_secs(1),
            },
            endpoints: 0,
        };
        engine.send_replace(retrying);
        gate.during_step();
        assert!(matches!(
            *published.borrow(),
            DiscoveryStatus::Retrying { .. }
        ));
        engine.send_replace(synced(7));
        gate.during_step();
        assert!(
            matches!(*published.borrow(), DiscoveryStatus::Retrying { .. }),
            "held until the listing is published"
        );
        gate.after_step();
        assert!(matches!(
            *published.borrow(),
            DiscoveryStatus::Synced { revision: 7, .. }
        ));
        // A step that set `Synced` and ended before the gate looked at it.
        engine.send_replace(synced(8));
        gate.after_step();
        assert!(matches!(
            *published.borrow(),
            DiscoveryStatus::Synced { revision: 8, .. }
        ));
    }
}
