//! The list-then-watch state machine behind [`EtcdDiscover`](super::EtcdDiscover).
//!
//! ```text
//!            ┌──── compacted / resume keeps failing / etcd went back in time ────┐
//!            ▼                                                                   │
//!  List ──ok──► Watch{from} ──ok──► Streaming{revision} ──events──► Streaming
//!   │  ▲          │     ▲                 │  dead, ended or failed       │
//!   └──┘ backoff  └─────┘ backoff         └──────► backoff ──► Watch{revision + 1}
//! ```
//!
//! Every watch response is checked against the history listed (see
//! [`history`](crate::etcd::history)): an etcd that lost its data or was restored from an
//! older snapshot is listed again, and the listing diffed against what was announced; a
//! member that only lags behind is told apart by a linearizable read first.
//!
//! Transient errors never leave this module: they go to the backoff, to tracing and to the
//! status channel. Only a permanent error becomes a stream item, and it is the last one.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::DiscoveryStatus;
use super::diff::{RawChange, diff};
use super::entries::{Entries, KeyValue};
use super::published::{Publisher, delete, put};
use crate::backoff::{Backoff, Failure, Retry};
use crate::error::Error;
use crate::etcd::history::History;
use crate::etcd::list::list_prefix;
use crate::etcd::request::request;
use crate::etcd::seam::{Etcd, Message, Watch};

/// What one step of the machine announces: changes it has published already.
pub(super) type Output = Result<Vec<RawChange>, Error>;

/// How the machine talks to etcd.
pub(super) struct EngineConfig {
    pub(super) client: etcd_client::Client,
    pub(super) backoff: Backoff,
    pub(super) request_timeout: std::time::Duration,
    pub(super) progress_interval: std::time::Duration,
    pub(super) idle_timeout: std::time::Duration,
    pub(super) healthy_after: std::time::Duration,
    pub(super) status: watch::Sender<DiscoveryStatus>,
}

/// Failed resumes in a row after which the machine re-lists instead.
const RELIST_AFTER: u32 = 3;

pub(super) enum WatchState {
    /// Get the whole prefix, then diff it against what has been announced.
    List,
    /// Open a watch from `from`.
    Watch { from: i64 },
    /// Read an open watch; everything up to `revision` has been applied.
    Streaming(Box<Streaming>),
    /// A permanent error was reported; the stream ends.
    Done,
}

pub(super) struct Streaming {
    stream: Box<dyn Watch>,
    revision: i64,
    opened_at: Instant,
    last_message: Instant,
    progress: Interval,
}

pub(super) struct Engine {
    config: EngineConfig,
    /// etcd, through the crate's seam: the config's client, or a fake in unit tests.
    etcd: Arc<dyn Etcd>,
    /// The prefix with its trailing slash.
    prefix: String,
    /// Announced keys and their raw values, whether they decode or not.
    /// The published keys and their raw values, whether they decode or not: the one copy
    /// of the prefix, which the engine changes and its subscribers read.
    published: Publisher,
    /// The history the last listing started, checked on every watch response.
    history: History,
    retry: Retry,
}

impl Engine {
    pub(super) fn new(config: EngineConfig, prefix: String, published: Publisher) -> Self {
        let etcd = Arc::new(config.client.clone());
        Engine {
            published,
            ..Engine::with_etcd(config, prefix, etcd)
        }
    }

    /// An engine that reaches etcd through `etcd` rather than the config's client.
    fn with_etcd(config: EngineConfig, prefix: String, etcd: Arc<dyn Etcd>) -> Self {
        let retry = Retry::new(config.backoff);
        crate::metrics::discovery_status(&prefix, &DiscoveryStatus::Syncing);
        Engine {
            config,
            etcd,
            prefix,
            published: Publisher::new(),
            history: History::default(),
            retry,
        }
    }

    pub(super) async fn step(&mut self, state: WatchState) -> (Output, WatchState) {
        match state {
            WatchState::List => self.list().await,
            WatchState::Watch { from } => self.open(from).await,
            WatchState::Streaming(streaming) => self.read(streaming).await,
            WatchState::Done => (Ok(Vec::new()), WatchState::Done),
        }
    }

    async fn list(&mut self) -> (Output, WatchState) {
        let mut listing = Entries::new();
        let (etcd, prefix) = (&*self.etcd, self.prefix.as_str());
        let pages = list_prefix(etcd, prefix, self.config.request_timeout, |kvs| {
            for (key, value) in kvs {
                if let Some(key) = key_of(prefix, key) {
                    listing.insert(KeyValue::new(key, value.as_slice()));
                }
            }
        });
        let header = match pages.await {
            Ok(header) => header,
            Err(error) => return self.fail(error, WatchState::List).await,
        };
        let revision = header.revision;
        self.history = History::listed(header);
        let changes = self.published.publish(true, |announced| {
            let diff = diff(announced, &listing);
            let mut changes = Vec::with_capacity(diff.removed.len() + diff.upserted.len());
            for key in diff.removed {
                changes.extend(delete(announced, key));
            }
            for entry in diff.upserted {
                changes.extend(put(announced, entry));
            }
            changes
        });
        debug!(prefix = %self.prefix, revision, changes = changes.len(), "listed");
        crate::metrics::discovery_listed(&self.prefix);
        // After the changes: a subscriber never sees `Synced` before the listing.
        self.publish_synced(revision);
        (Ok(changes), WatchState::Watch { from: revision + 1 })
    }

    async fn open(&mut self, from: i64) -> (Output, WatchState) {
        let open = || async {
            let watch = self.etcd.watch(self.prefix.clone(), from);
            watch.await.map_err(|source| Error::Watch {
                prefix: self.prefix.clone(),
                source: Arc::new(source),
            })
        };
        let result = request("opening a watch", self.config.request_timeout, open).await;
        match result {
            Ok(stream) => {
                debug!(prefix = %self.prefix, from, "watching");
                crate::metrics::discovery_watch_opened(&self.prefix);
                let now = Instant::now();
                let mut progress = tokio::time::interval_at(
                    now + self.config.progress_interval,
                    self.config.progress_interval,
                );
                progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let streaming = Streaming {
                    stream,
                    revision: from - 1,
                    opened_at: now,
                    last_message: now,
                    progress,
                };
                (Ok(Vec::new()), WatchState::Streaming(Box::new(streaming)))
            }
            Err(error) => self.fail(error, WatchState::Watch { from }).await,
        }
    }

    async fn read(&mut self, mut s: Box<Streaming>) -> (Output, WatchState) {
        let idle_deadline = s.last_message + self.config.idle_timeout;
        let resume = WatchState::Watch {
            from: s.revision + 1,
        };
        // Biased: a message that is already there wins over a progress request or the idle
        // timer, so a busy stream is never mistaken for a dead one.
        tokio::select! {
            biased;
            message = s.stream.message() => match message {
                Ok(Some(response)) => self.on_response(response, s).await,
                Ok(None) => {
                    debug!(prefix = %self.prefix, "watch stream ended");
                    let source = etcd_client::Error::WatchError("stream ended".into());
                    let prefix = self.prefix.clone();
                    self.fail(Error::Watch { prefix, source: Arc::new(source) }, resume).await
                }
                Err(source) => {
                    let prefix = self.prefix.clone();
                    self.fail(Error::Watch { prefix, source: Arc::new(source) }, resume).await
                }
            },
            _ = tokio::time::sleep_until(idle_deadline) => {
                let after = self.config.idle_timeout;
                self.fail(Error::Timeout { operation: "watch went silent", after }, resume).await
            }
            _ = s.progress.tick() => {
                // A failed send shows up as an error on the response stream; a send that
                // cannot go out at all is left to the idle timer.
                let send = s.stream.request_progress();
                let _ = tokio::time::timeout(self.config.progress_interval, send).await;
                (Ok(Vec::new()), WatchState::Streaming(s))
            }
        }
    }

    async fn on_response(
        &mut self,
        response: Message,
        mut s: Box<Streaming>,
    ) -> (Output, WatchState) {
        s.last_message = Instant::now();
        if s.last_message - s.opened_at >= self.config.healthy_after {
            self.retry.reset();
        }
        // A progress notification may name the revision just below the last event sent:
        // etcd 3.4 notifies its watchers of revision N before it makes N its current
        // revision, and answers a progress request with the current one (etcd-io/etcd#15220).
        // That is no sign of another history.
        let floor = match response.is_progress() {
            true => s.revision - 1,
            false => s.revision,
        };
        if let Err(regression) = self.history.check(response.header, floor)
            && self.is_real(regression).await
        {
            return self.went_back(regression).await;
        }
        if response.canceled {
            return self.on_cancel(&response, s.revision + 1).await;
        }
        let changes = self.apply(&response, &mut s.revision);
        // A progress notification proves only that the stream is alive. etcd 3.4.23 (like
        // every release without the fix of etcd-io/etcd#15220) answers a progress request at
        // once with its current revision, even when this watcher has not been sent the
        // events up to it yet: a resumed watch catches up only every 100 ms, and a fresh
        // event may still be queued. Taking that revision as applied would drop those events
        // as repeats, for good.
        self.publish_synced(s.revision);
        (Ok(changes), WatchState::Streaming(s))
    }

    /// A cancelled watch: listed again if it fell behind a compaction, else resumed from
    /// `from` after the backoff (or ended, if etcd's reason is permanent).
    async fn on_cancel(&mut self, response: &Message, from: i64) -> (Output, WatchState) {
        if response.compact_revision > 0 {
            info!(
                prefix = %self.prefix,
                compact_revision = response.compact_revision,
                "watch fell behind a compaction, re-listing"
            );
            return (Ok(Vec::new()), WatchState::List);
        }
        let error = Error::WatchCancelled {
            prefix: self.prefix.clone(),
            reason: response.cancel_reason.clone(),
        };
        self.fail(error, WatchState::Watch { from }).await
    }

    /// Applies the events of `response` above `revision`, the applied one, which it raises.
    /// They are published as they are applied, before the status that covers them.
    fn apply(&self, response: &Message, revision: &mut i64) -> Vec<RawChange> {
        let (floor, prefix) = (*revision, self.prefix.as_str());
        self.published.publish(false, |announced| {
            let mut changes = Vec::new();
            for event in &response.events {
                // etcd 3.4 can repeat events; one at or below the applied revision is a
                // repeat.
                if event.mod_revision <= floor {
                    continue;
                }
                *revision = (*revision).max(event.mod_revision);
                let Some(key) = key_of(prefix, &event.key) else {
                    continue;
                };
                changes.extend(match event.put {
                    true => put(announced, KeyValue::new(key, event.value.as_slice())),
                    false => delete(announced, key),
                });
            }
            changes
        })
    }

    /// Handles a failed step: a permanent error ends the stream; a transient one is logged,
    /// published, waited out with backoff, and followed by `next`.
    async fn fail(&mut self, error: Error, next: WatchState) -> (Output, WatchState) {
        const RETRYING: &str = "etcd request failed, keeping the last known endpoints and retrying";
        let (error, attempt, delay) = match self.retry.failed(error, None, RETRYING) {
            Failure::Permanent(error) => {
                self.config.status.send_replace(DiscoveryStatus::Failed {
                    error: error.clone(),
                });
                crate::metrics::discovery_status(&self.prefix, &self.config.status.borrow());
                return (Err(error), WatchState::Done);
            }
            Failure::Transient {
                error,
                attempt,
                delay,
            } => (error, attempt, delay),
        };
        self.config.status.send_replace(DiscoveryStatus::Retrying {
            attempt,
            error,
            endpoints: self.published.len(),
        });
        crate::metrics::discovery_status(&self.prefix, &self.config.status.borrow());
        tokio::time::sleep(delay).await;
        let next = match next {
            WatchState::Watch { .. } if attempt >= RELIST_AFTER => WatchState::List,
            other => other,
        };
        (Ok(Vec::new()), next)
    }

    fn publish_synced(&mut self, revision: i64) {
        if let Some(after) = self.retry.succeeded() {
            info!(prefix = %self.prefix, revision, ?after, "etcd answers again, discovery is current");
        }
        let endpoints = self.published.len();
        self.config.status.send_if_modified(|status| {
            let current = DiscoveryStatus::Synced {
                revision,
                endpoints,
                prefix: self.prefix.clone(),
                skipped: 0,
                skip_reason: None,
            };
            let same = matches!(status, DiscoveryStatus::Synced { revision: r, endpoints: e, .. }
                if *r == revision && *e == endpoints);
            if !same {
                *status = current;
            }
            !same
        });
        crate::metrics::discovery_status(&self.prefix, &self.config.status.borrow());
    }
}

/// The key as text, if it is UTF-8 and under `prefix`.
fn key_of(prefix: &str, raw: &[u8]) -> Option<String> {
    match std::str::from_utf8(raw) {
        Ok(key) if key.starts_with(prefix) => Some(key.to_owned()),
        Ok(key) => {
            warn!(key, prefix, "skipping key outside the prefix");
            None
        }
        Err(_) => {
            warn!(key = %String::from_utf8_lossy(raw), "skipping key that is not utf-8");
            None
        }
    }
}

mod regression;
#[cfg(test)]
mod tests;
