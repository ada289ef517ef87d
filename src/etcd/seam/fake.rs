//! An in-memory etcd behind the seam, for unit tests on paused time: revisions, a history of
//! events, compaction, an etcd that loses its data, watches that break, leases that expire,
//! injected errors; and etcd's own faults ([`faults`]): duplicate events, the 3.4 progress
//! race, leader changes, stalled keepalives, keepalive answers lost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;

use super::{BoxFuture, Etcd, Event, Page, Watch};

mod faults;
mod lease;
mod watch_stream;
use crate::etcd::history::Header;
pub(crate) use faults::Progress;
use watch_stream::{FakeWatch, Filter};

/// A cloneable handle to one in-memory etcd.
#[derive(Clone)]
pub(crate) struct FakeEtcd {
    state: Arc<Mutex<State>>,
    /// Bumped on every change, so that open watches look again.
    changed: Arc<watch::Sender<u64>>,
}

struct State {
    revision: i64,
    raft_term: u64,
    compacted: i64,
    /// Watches opened before the last break fail at their next read.
    generation: u64,
    kvs: BTreeMap<Vec<u8>, Vec<u8>>,
    events: Vec<Event>,
    /// Errors the next calls return, one each, in order.
    errors: VecDeque<etcd_client::Error>,
    /// Live leases: their TTL and when they expire.
    leases: BTreeMap<i64, (i64, Instant)>,
    /// The lease of each key that has one.
    key_leases: BTreeMap<Vec<u8>, i64>,
    next_lease: i64,
    /// Events above this revision are held back from every watch (0: none are).
    held_above: i64,
    /// Bumped by each redelivery; a watch that has not seen the bump rewinds to
    /// `redeliver_from`.
    redeliveries: u64,
    redeliver_from: i64,
    /// How a watch answers a progress request.
    progress: Progress,
    /// Until when no leader answers keepalives: an election.
    election_until: Option<Instant>,
    /// Keepalives go unanswered, and renew nothing.
    keepalives_stalled: bool,
    /// Keepalives renew their lease, but go unanswered.
    answers_lost: bool,
    /// LeaseTimeToLive requests served so far.
    time_to_lives: usize,
    /// Keepalive streams opened so far.
    keepalive_streams: usize,
    /// Range requests served so far, and count-only reads.
    ranges: usize,
    counts: usize,
    /// The revision of the member that serves watches, if it lags behind the leader.
    follower_at: Option<i64>,
}

impl FakeEtcd {
    /// An empty etcd at revision 1.
    pub(crate) fn new() -> FakeEtcd {
        let state = State {
            revision: 1,
            raft_term: 2,
            compacted: 0,
            generation: 0,
            kvs: BTreeMap::new(),
            events: Vec::new(),
            errors: VecDeque::new(),
            leases: BTreeMap::new(),
            key_leases: BTreeMap::new(),
            next_lease: 0x1000,
            held_above: 0,
            redeliveries: 0,
            redeliver_from: 0,
            progress: Progress::Current,
            election_until: None,
            keepalives_stalled: false,
            answers_lost: false,
            time_to_lives: 0,
            keepalive_streams: 0,
            ranges: 0,
            counts: 0,
            follower_at: None,
        };
        FakeEtcd {
            state: Arc::new(Mutex::new(state)),
            changed: Arc::new(watch::Sender::new(0)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the fake's lock is never poisoned")
    }

    fn changed(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Puts `key = value`; returns its revision.
    pub(crate) fn put(&self, key: &str, value: &str) -> i64 {
        self.write(key, Some(value))
    }

    /// Deletes `key`; returns the revision (unchanged if it was absent).
    pub(crate) fn delete(&self, key: &str) -> i64 {
        self.write(key, None)
    }

    fn write(&self, key: &str, value: Option<&str>) -> i64 {
        let revision = {
            let mut state = self.state();
            let key = key.as_bytes().to_vec();
            state.key_leases.remove(&key);
            let changed = match value {
                Some(value) => {
                    state.kvs.insert(key.clone(), value.into());
                    true
                }
                None => state.kvs.remove(&key).is_some(),
            };
            if changed {
                state.revision += 1;
                let event = Event {
                    put: value.is_some(),
                    key,
                    value: value.unwrap_or_default().into(),
                    mod_revision: state.revision,
                };
                state.events.push(event);
            }
            state.revision
        };
        self.changed();
        revision
    }

    /// Compacts the history at the current revision.
    pub(crate) fn compact(&self) {
        let mut state = self.state();
        state.compacted = state.revision;
        let compacted = state.compacted;
        state.events.retain(|e| e.mod_revision > compacted);
    }

    /// Breaks every open watch: its next read fails, as when a connection drops.
    pub(crate) fn break_watches(&self) {
        self.state().generation += 1;
        self.changed();
    }

    /// Loses every key and the history, back at revision 1 with the same cluster id: a data
    /// directory removed, or a restore from an older snapshot. Open watches break.
    pub(crate) fn wipe(&self) {
        {
            let mut state = self.state();
            state.revision = 1;
            state.compacted = 0;
            state.kvs.clear();
            state.events.clear();
        }
        self.break_watches();
    }

    /// Makes the next call fail with `error`.
    pub(crate) fn fail_next(&self, error: etcd_client::Error) {
        self.state().errors.push_back(error);
    }

    /// The next injected error, if any.
    fn injected(&self) -> Option<etcd_client::Error> {
        self.state().errors.pop_front()
    }

    fn header(state: &State) -> Header {
        Header {
            cluster_id: 7,
            revision: state.revision,
            raft_term: state.raft_term,
        }
    }
}

impl Etcd for FakeEtcd {
    fn range(
        &self,
        from: Vec<u8>,
        end: Vec<u8>,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'_, Result<Page, etcd_client::Error>> {
        let mut state = self.state();
        state.ranges += 1;
        let page = match state.errors.pop_front() {
            Some(error) => Err(error),
            None if revision > 0 && revision <= state.compacted => Err(compacted()),
            None => {
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                let mut kvs: Vec<_> = (state.kvs.range(from..end))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .take(limit + 1)
                    .collect();
                let more = kvs.len() > limit;
                kvs.truncate(limit);
                let header = FakeEtcd::header(&state);
                Ok(Page { header, kvs, more })
            }
        };
        Box::pin(std::future::ready(page))
    }

    fn count(
        &self,
        _from: Vec<u8>,
        _end: Vec<u8>,
    ) -> BoxFuture<'_, Result<Header, etcd_client::Error>> {
        let mut state = self.state();
        state.counts += 1;
        let header = match state.errors.pop_front() {
            Some(error) => Err(error),
            None => Ok(FakeEtcd::header(&state)),
        };
        Box::pin(std::future::ready(header))
    }

    fn watch(
        &self,
        prefix: String,
        from: i64,
    ) -> BoxFuture<'_, Result<Box<dyn Watch>, etcd_client::Error>> {
        let mut state = self.state();
        let watch = match state.errors.pop_front() {
            Some(error) => Err(error),
            None => {
                let filter = Filter::Prefix(prefix.into_bytes());
                Ok(Box::new(FakeWatch::new(self, &state, filter, from)) as Box<dyn Watch>)
            }
        };
        Box::pin(std::future::ready(watch))
    }
}

/// etcd's error for a read at a compacted revision.
fn compacted() -> etcd_client::Error {
    let status =
        tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
    etcd_client::Error::GRpcStatus(status)
}
