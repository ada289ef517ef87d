//! One watch per prefix and settings in a [`SharedDiscovery`](super::SharedDiscovery): every
//! discovery made from it (or its clones) of the same prefix, with the same request
//! settings, shares one list-then-watch engine, on the one etcd client the group holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use tracing::Instrument;

use super::DiscoveryStatus;
use super::engine::{Engine, EngineConfig, WatchState};
use super::entries::Entries;
use super::published::{Message, Published, Publisher};

/// A running engine and its subscribers' channel. Dropping the last `Arc` stops the engine.
pub(super) struct Hub {
    published: Publisher,
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
        // The engine publishes its changes before the status that covers them, so a
        // subscriber that applies what is queued before it looks at the status never
        // reports `Synced` ahead of its stream.
        let status = config.status.subscribe();
        let published = Publisher::new();
        let (stop, stopped) = oneshot::channel();
        let span = tracing::info_span!("tonic_etcd::watch", prefix = %prefix);
        let engine = Engine::new(config, prefix, published.clone());
        let task = run(engine, published.clone(), stopped);
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
        let changes = published.subscribe();
        let snapshot = Catchup {
            entries: published.entries.clone(),
            listed: published.listed,
        };
        (snapshot, changes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published.lock()
    }

    /// Whether the engine has stopped: on a permanent error, or because the runtime it ran
    /// on was shut down. A new subscriber then starts a new one.
    fn failed(&self) -> bool {
        self.task.is_finished() || self.lock().failed.is_some()
    }
}

async fn run(mut engine: Engine, published: Publisher, mut stopped: oneshot::Receiver<()>) {
    /// Closes the subscribers' channel however the task ends, even when its runtime drops it.
    struct Closing(Publisher);
    impl Drop for Closing {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _closing = Closing(published.clone());
    let mut state = WatchState::List;
    loop {
        let (output, next) = tokio::select! {
            // Biased: once the last subscriber is gone, no further request is started.
            biased;
            _ = &mut stopped => return,
            step = engine.step(state) => step,
        };
        state = next;
        if let Err(error) = output {
            published.fail(error);
            return;
        }
    }
}
