//! Discovery watched from outside: every status it reports ([`StatusLog`]) and its raw
//! stream as a consumer that maintains the endpoint set sees it ([`Feed`]).
//!
//! A [`Feed`] records as a violation anything a correct stream never does: an `Err` item, a
//! redundant insert, a remove of a key never announced, the end of the stream.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic_etcd::{DiscoveryStatus, EtcdDiscover};
use tower::discover::Change;

use super::{lock, wait_until};

/// How long discovery may take to reflect a change, an outage included.
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(20);

/// Every status discovery reports, recorded by a task.
#[derive(Debug)]
pub struct StatusLog {
    seen: Arc<Mutex<Vec<DiscoveryStatus>>>,
    receiver: watch::Receiver<DiscoveryStatus>,
    task: JoinHandle<()>,
}

impl StatusLog {
    /// Starts recording the statuses `receiver` reports, the current one first.
    pub fn start(mut receiver: watch::Receiver<DiscoveryStatus>) -> StatusLog {
        let seen = Arc::new(Mutex::new(vec![receiver.borrow_and_update().clone()]));
        let (log, mut changes) = (seen.clone(), receiver.clone());
        let task = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let status = changes.borrow_and_update().clone();
                lock(&log).push(status);
            }
        });
        StatusLog {
            seen,
            receiver,
            task,
        }
    }

    /// How many `Retrying` reports have been seen.
    pub fn retrying(&self) -> usize {
        lock(&self.seen)
            .iter()
            .filter(|s| matches!(s, DiscoveryStatus::Retrying { .. }))
            .count()
    }

    /// The `Failed` reports; there must be none.
    pub fn failures(&self) -> Vec<String> {
        lock(&self.seen)
            .iter()
            .filter(|s| matches!(s, DiscoveryStatus::Failed { .. }))
            .map(|s| format!("{s:?}"))
            .collect()
    }

    /// A short history: `syncing synced@5..9 retrying#1 ...`, runs folded.
    pub fn summary(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        let mut synced_from: Option<i64> = None;
        for status in lock(&self.seen).iter() {
            if let DiscoveryStatus::Synced { revision, .. } = status {
                let word = match synced_from {
                    Some(from) if from != *revision => {
                        words.pop();
                        format!("synced@{from}..{revision}")
                    }
                    Some(_) => continue,
                    None => format!("synced@{revision}"),
                };
                synced_from.get_or_insert(*revision);
                words.push(word);
                continue;
            }
            synced_from = None;
            let word = match status {
                DiscoveryStatus::Syncing => "syncing".to_owned(),
                DiscoveryStatus::Retrying { attempt, .. } => format!("retrying#{attempt}"),
                DiscoveryStatus::Failed { .. } => "FAILED".to_owned(),
                other => format!("{other:?}"),
            };
            if words.last() != Some(&word) {
                words.push(word);
            }
        }
        words.join(" ")
    }

    /// Waits until a new `Retrying` report follows the `before` seen so far.
    pub async fn wait_retrying_after(&self, before: usize, what: &str) {
        wait_until(what, CONVERGE_DEADLINE, || async {
            self.retrying() > before
        })
        .await;
    }

    /// Waits until discovery reports the set current at `revision` or later.
    pub async fn wait_synced_at(&self, revision: i64, what: &str) {
        let mut receiver = self.receiver.clone();
        let synced = receiver.wait_for(
            |s| matches!(s, DiscoveryStatus::Synced { revision: r, .. } if *r >= revision),
        );
        match tokio::time::timeout(CONVERGE_DEADLINE, synced).await {
            Ok(Ok(_)) => {}
            _ => panic!(
                "{what}: not synced at revision {revision} within {CONVERGE_DEADLINE:?}; \
                 statuses: {}",
                self.summary()
            ),
        }
    }

    /// Asserts that discovery never failed.
    pub fn assert_never_failed(&self, what: &str) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{what}: discovery failed: {failures:?}"
        );
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One item of the raw stream, with the endpoint reduced to its address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    Insert(String, String),
    Remove(String),
}

/// What the stream has announced, as a consumer that maintains the set sees it.
#[derive(Debug, Default)]
struct Announced {
    endpoints: BTreeMap<String, String>,
    /// Anything a correct stream never does: an `Err` item, a redundant insert, a remove
    /// of a key never announced, the end of the stream.
    violations: Vec<String>,
}

impl Announced {
    fn apply(&mut self, event: &Event) {
        match event {
            Event::Insert(key, addr) => {
                if self.endpoints.insert(key.clone(), addr.clone()).as_ref() == Some(addr) {
                    self.violations
                        .push(format!("insert of {key} -> {addr}, already announced"));
                }
            }
            Event::Remove(key) => {
                if self.endpoints.remove(key).is_none() {
                    self.violations
                        .push(format!("remove of {key}, never announced"));
                }
            }
        }
    }
}

/// A task that consumes the raw `EtcdDiscover` stream, keeps the announced set, and
/// forwards each item to the test.
#[derive(Debug)]
pub struct Feed {
    events: mpsc::UnboundedReceiver<Event>,
    announced: Arc<Mutex<Announced>>,
    /// The statuses of the discovery behind the stream.
    pub status: StatusLog,
    task: JoinHandle<()>,
}

impl Feed {
    /// Starts consuming `discover`, and recording its statuses.
    pub fn start(discover: EtcdDiscover) -> Feed {
        let mut discover = discover.into_stream();
        let status = StatusLog::start(discover.status());
        let announced = Arc::new(Mutex::new(Announced::default()));
        let (tx, events) = mpsc::unbounded_channel();
        let shared = announced.clone();
        let task = tokio::spawn(async move {
            while let Some(item) = discover.next().await {
                let event = match item {
                    Ok(Change::Insert(key, endpoint)) => Event::Insert(key, authority(&endpoint)),
                    Ok(Change::Remove(key)) => Event::Remove(key),
                    Err(error) => {
                        lock(&shared)
                            .violations
                            .push(format!("an Err reached the consumer: {error}"));
                        continue;
                    }
                };
                lock(&shared).apply(&event);
                // The test may have stopped reading; the set above is what counts.
                let _ = tx.send(event);
            }
            lock(&shared).violations.push("the stream ended".to_owned());
        });
        Feed {
            events,
            announced,
            status,
            task,
        }
    }

    /// Stops the consumer and waits until the discovery is dropped, so that the next
    /// discovery of the same prefix starts its own watch instead of sharing this one.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// The next item, within `deadline`.
    pub async fn next(&mut self, what: &str, deadline: Duration) -> Event {
        match tokio::time::timeout(deadline, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("{what}: the feed stopped; {:?}", self.violations()),
            Err(_) => panic!(
                "{what}: no item within {deadline:?}; statuses: {}",
                self.status.summary()
            ),
        }
    }

    /// The items before `last`, reading until `last` arrives.
    pub async fn until(&mut self, what: &str, last: &Event) -> Vec<Event> {
        let mut items = Vec::new();
        loop {
            let event = self.next(what, CONVERGE_DEADLINE).await;
            if &event == last {
                return items;
            }
            items.push(event);
        }
    }

    /// Asserts that no item has arrived since the last read.
    pub fn assert_quiet(&mut self, what: &str) {
        if let Ok(event) = self.events.try_recv() {
            panic!("{what}: unexpected item {event:?}");
        }
    }

    /// The endpoint set announced so far: key to address.
    pub fn endpoints(&self) -> BTreeMap<String, String> {
        lock(&self.announced).endpoints.clone()
    }

    /// What the stream did that a correct one never does; see the module docs.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.announced).violations.clone()
    }

    /// Asserts that no `Err`, redundant item or end reached the consumer, and that
    /// discovery never failed.
    pub fn assert_clean(&self, what: &str) {
        let violations = self.violations();
        assert!(violations.is_empty(), "{what}: {violations:#?}");
        self.status.assert_never_failed(what);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `host:port` of `endpoint`.
fn authority(endpoint: &Endpoint) -> String {
    endpoint
        .uri()
        .authority()
        .map(ToString::to_string)
        .unwrap_or_default()
}
