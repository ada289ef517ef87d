//! The one source of truth of a prefix: the entries the engine has published, and the
//! channel that tells its subscribers each change as it is made.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use super::diff::RawChange;
use super::entries::Entries;
use crate::error::Error;

/// Batches a slow subscriber may fall behind by before it resyncs from the entries.
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
pub(super) struct Published {
    /// Every key under the prefix and its raw value, whether it decodes or not.
    pub(super) entries: Entries,
    /// Whether the first listing is complete.
    pub(super) listed: bool,
    pub(super) failed: Option<Error>,
    /// Hands out receivers while the engine runs. Cleared when the engine's task ends, so
    /// that every receiver then sees the channel closed.
    sender: Option<broadcast::Sender<Arc<Message>>>,
}

/// The published entries of a prefix, shared by the engine, which changes them, and the
/// hub, which hands them to new subscribers. The engine changes the entries and sends the
/// change under one lock, so a subscriber that takes the entries and a receiver under the
/// same lock sees every change exactly once.
#[derive(Clone)]
pub(super) struct Publisher(Arc<Mutex<Published>>);

impl Publisher {
    pub(super) fn new() -> Self {
        let (sender, _) = broadcast::channel(BACKLOG);
        Publisher(Arc::new(Mutex::new(Published {
            entries: Entries::new(),
            listed: false,
            failed: None,
            sender: Some(sender),
        })))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Published> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many keys are published.
    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Changes the entries with `change`, which returns what it changed, and sends that to
    /// the subscribers, under one lock; `listing` marks a complete listing (the first one
    /// is announced). Returns the changes (a copy of shared entries: a pointer each).
    pub(super) fn publish(
        &self,
        listing: bool,
        change: impl FnOnce(&mut Entries) -> Vec<RawChange>,
    ) -> Vec<RawChange> {
        let mut published = self.lock();
        let changes = change(&mut published.entries);
        if !changes.is_empty() {
            published.send(Message::Batch(changes.clone()));
        }
        if listing && !published.listed {
            published.listed = true;
            published.send(Message::Listed);
        }
        changes
    }

    /// Records that the engine stopped on `error`, and tells the subscribers.
    pub(super) fn fail(&self, error: Error) {
        let mut published = self.lock();
        published.failed = Some(error.clone());
        published.send(Message::Failed(error));
    }

    /// Closes the subscribers' channel: the engine has ended.
    pub(super) fn close(&self) {
        self.lock().sender = None;
    }
}

impl Published {
    fn send(&self, message: Message) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(Arc::new(message));
        }
    }

    /// A receiver of the changes after the entries as they are now; closed if the engine
    /// has ended.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<Message>> {
        match &self.sender {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }
}

/// Puts `entry` in `entries`: the change, if its value is new.
pub(super) fn put(entries: &mut Entries, entry: super::entries::KeyValue) -> Option<RawChange> {
    if entries.get(entry.key()) == Some(&entry) {
        return None;
    }
    entries.insert(entry.clone());
    Some(RawChange::Put(entry))
}

/// Takes `key` out of `entries`: the change, if it was there.
pub(super) fn delete(entries: &mut Entries, key: String) -> Option<RawChange> {
    entries.remove(&key)?;
    Some(RawChange::Delete(key))
}
