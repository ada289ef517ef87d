//! One discovery's view of the shared engine: joins it, then decodes its raw changes.

use futures_util::StreamExt;
use tokio::sync::watch;
use tower::discover::Change;

use super::decode::Decoder;
use super::diff::{self, RawChange};
use super::entries::Entries;
use super::hub::{Hub, Subscription};
use super::published::Message;
use super::stream::ChangeStream;
use super::{Config, Discovered, DiscoveryStatus};
use crate::error::Error;

/// Starts a subscriber: validates the prefix, joins (or starts) the shared engine of its prefix, then turns the engine's raw changes into endpoint changes.
pub(super) fn run(config: Config) -> ChangeStream {
    let prefix = config.format.prefix(&config.service);
    if prefix.trim_matches('/').is_empty() {
        let error = Error::InvalidPrefix {
            prefix: config.service.clone(),
            reason: "it is empty",
        };
        config.status.send_replace(DiscoveryStatus::Failed {
            error: error.clone(),
        });
        return Box::pin(futures_util::stream::iter([Err(error)]));
    }
    let subscriber = Subscriber {
        decoder: Decoder::new(
            config.format.clone(),
            config.service.clone(),
            config.endpoint_hook.clone(),
        ),
        config,
        prefix,
    };
    let steps = futures_util::stream::unfold(
        (subscriber, Step::Join),
        |(mut subscriber, mut step)| async move {
            loop {
                if matches!(step, Step::Done) {
                    return None;
                }
                let (output, next) = subscriber.step(step).await;
                match output {
                    Ok(changes) if changes.is_empty() => step = next,
                    output => return Some((output, (subscriber, next))),
                }
            }
        },
    );
    Box::pin(steps.flat_map(|output| {
        let items: Vec<_> = match output {
            Ok(changes) => changes.into_iter().map(Ok).collect(),
            Err(error) => vec![Err(error)],
        };
        futures_util::stream::iter(Drain::new(items))
    }))
}

/// Yields a vector's items in order, and frees its buffer with the last one.
///
/// A `vec::IntoIter` keeps its buffer until it is dropped, and `flat_map` drops it only when
/// polled past the last item: each item holds an `Endpoint` inline (about 1.2 KiB in all),
/// so after the listing of 10,000 instances, 11 MiB would stay allocated until the next poll.
struct Drain<T> {
    /// The items, last first.
    reversed: Vec<T>,
}

impl<T> Drain<T> {
    fn new(mut items: Vec<T>) -> Self {
        items.reverse();
        Drain { reversed: items }
    }
}

impl<T> Iterator for Drain<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let item = self.reversed.pop();
        if self.reversed.is_empty() {
            self.reversed = Vec::new();
        }
        item
    }
}

type Output = Result<Vec<Change<String, Discovered>>, Error>;

enum Step {
    /// Find the cluster, and join the engine watching the prefix there.
    Join,
    /// Follow the engine.
    Follow {
        subscription: Subscription,
    },
    /// Join a new engine after the last one went away, keeping what was seen.
    Rejoin,
    Done,
}

struct Subscriber {
    config: Config,
    prefix: String,
    decoder: Decoder,
}

impl Subscriber {
    /// Sets this discovery's status: the shared engine's (which it sets after publishing
    /// the changes the status covers), with this subscriber's own counts of endpoints and
    /// skipped keys (values that do not decode in its format are not endpoints). Derived
    /// here, in the stream's own task, each time either side changes.
    fn derive_status(&self, engine: &watch::Receiver<DiscoveryStatus>) {
        let mut status = engine.borrow().clone();
        let skipped = self.decoder.skipped();
        match &mut status {
            DiscoveryStatus::Synced {
                endpoints,
                skipped: keys,
                skip_reason,
                ..
            } => {
                *endpoints = self.decoder.len();
                *keys = skipped.keys;
                *skip_reason = skipped.reason;
            }
            DiscoveryStatus::Retrying { endpoints, .. } => *endpoints = self.decoder.len(),
            DiscoveryStatus::Syncing | DiscoveryStatus::Failed { .. } => {}
        }
        self.config.status.send_replace(status);
    }
}

impl Subscriber {
    async fn step(&mut self, step: Step) -> (Output, Step) {
        match step {
            Step::Join | Step::Rejoin => self.join().await,
            Step::Follow { subscription } => self.follow(subscription).await,
            Step::Done => (Ok(Vec::new()), Step::Done),
        }
    }

    /// Joins the engine of the group watching the prefix with this discovery's settings,
    /// starting one if none runs.
    ///
    /// What the decoder has seen from an earlier engine, when joining again, is reconciled
    /// with the new engine's listing by diff, at once if the listing is complete, else when
    /// it is.
    async fn join(&mut self) -> (Output, Step) {
        let config = &self.config;
        let (subscription, snapshot) =
            Hub::join(&config.watches, &self.prefix, config.settings, || {
                config.engine_config()
            });
        let raw = catch_up(&self.decoder.seen(), &snapshot.entries, snapshot.listed);
        let changes = self.apply(raw);
        self.derive_status(&subscription.status);
        (Ok(changes), Step::Follow { subscription })
    }

    async fn follow(&mut self, mut subscription: Subscription) -> (Output, Step) {
        use tokio::sync::broadcast::error::RecvError;
        let received = tokio::select! {
            // Biased: a batch already queued is applied before a status change is looked
            // at. The engine sets a status after publishing the changes it covers, so the status
            // never runs ahead of what this stream has yielded.
            biased;
            received = subscription.changes.recv() => received,
            Ok(()) = subscription.status.changed() => {
                self.derive_status(&subscription.status);
                return (Ok(Vec::new()), Step::Follow { subscription });
            }
        };
        let raw: Vec<RawChange> = match received {
            Ok(message) => match &*message {
                Message::Batch(changes) => changes.clone(),
                // The first listing of a new engine: anything seen before that it does not
                // hold is gone.
                Message::Listed => reconcile(&self.decoder.seen(), &mut subscription),
                Message::Failed(error) => {
                    let error = error.clone();
                    let failed = DiscoveryStatus::Failed {
                        error: error.clone(),
                    };
                    self.config.status.send_replace(failed);
                    return (Err(error), Step::Done);
                }
            },
            Err(RecvError::Lagged(missed)) => {
                // Fell behind the engine: catch up from its snapshot, by diff.
                tracing::debug!(prefix = %self.prefix, missed, "subscriber lagged, resyncing");
                reconcile(&self.decoder.seen(), &mut subscription)
            }
            Err(RecvError::Closed) => {
                // The engine is gone without failing: its runtime was shut down. Join again,
                // on this one, keeping what was seen.
                tracing::debug!(prefix = %self.prefix, "shared watch ended, joining again");
                return (Ok(Vec::new()), Step::Rejoin);
            }
        };
        let before = (self.decoder.len(), self.decoder.skipped());
        let changes = self.apply(raw);
        if (self.decoder.len(), self.decoder.skipped()) != before {
            self.derive_status(&subscription.status);
        }
        (Ok(changes), Step::Follow { subscription })
    }
}

impl Subscriber {
    /// Decodes raw changes into endpoint changes.
    fn apply(&mut self, raw: Vec<RawChange>) -> Vec<Change<String, Discovered>> {
        raw.into_iter()
            .flat_map(|c| self.decoder.apply(c))
            .collect()
    }
}

/// What to announce on joining an engine, given what was `seen` before: everything in its
/// snapshot that is new or changed; and, if the snapshot is a complete listing, the removal
/// of what was seen before and is gone.
fn catch_up(seen: &Entries, snapshot: &Entries, listed: bool) -> Vec<RawChange> {
    let changes = diff::diff(seen, snapshot).into_changes();
    if listed {
        changes.collect()
    } else {
        changes
            .filter(|c| matches!(c, RawChange::Put(..)))
            .collect()
    }
}

/// The changes that make `seen` match what the engine has published, with a fresh receiver
/// of what comes after, so no queued batch older than the snapshot is replayed on top of it.
fn reconcile(seen: &Entries, subscription: &mut Subscription) -> Vec<RawChange> {
    let (snapshot, changes) = subscription.hub.resubscribe();
    subscription.changes = changes;
    diff::diff(seen, &snapshot.entries).into_changes().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::entries::{entries, entry};

    #[test]
    fn joining_a_listed_engine_removes_what_is_gone() {
        let seen = entries(&[("a", "1"), ("b", "2")]);
        let snapshot = entries(&[("b", "2"), ("c", "3")]);
        let raw = catch_up(&seen, &snapshot, true);
        assert_eq!(
            raw,
            vec![
                RawChange::Delete("a".into()),
                RawChange::Put(entry("c", "3"))
            ]
        );
    }

    #[test]
    fn joining_an_engine_still_listing_removes_nothing_yet() {
        let seen = entries(&[("a", "1"), ("b", "2")]);
        let raw = catch_up(&seen, &entries(&[("b", "3")]), false);
        assert_eq!(
            raw,
            vec![RawChange::Put(entry("b", "3"))],
            "a removes nothing until the listing completes"
        );
    }
}
