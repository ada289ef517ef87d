//! The fake's watches: the events of their keys from a revision, in order, with the faults
//! of [`faults`](super::faults) (held events, redelivered events, progress answers).

use tokio::sync::watch;

use super::{FakeEtcd, Progress, State};
use crate::etcd::history::Header;
use crate::etcd::seam::{BoxFuture, Event, Message, Watch};

/// The keys a watch sees.
pub(super) enum Filter {
    Prefix(Vec<u8>),
    Keys(Vec<Vec<u8>>),
}

impl Filter {
    fn matches(&self, key: &[u8]) -> bool {
        match self {
            Filter::Prefix(prefix) => key.starts_with(prefix),
            Filter::Keys(keys) => keys.iter().any(|k| k == key),
        }
    }
}

pub(super) struct FakeWatch {
    etcd: FakeEtcd,
    changed: watch::Receiver<u64>,
    generation: u64,
    filter: Filter,
    /// The next revision to send.
    next: i64,
    created: bool,
    /// The redeliveries already acted on.
    redeliveries: u64,
    /// Progress requests not answered yet.
    progress_requests: usize,
}

impl FakeWatch {
    /// A watch of `filter` from revision `from`, on `etcd` whose state is `state`.
    pub(super) fn new(etcd: &FakeEtcd, state: &State, filter: Filter, from: i64) -> FakeWatch {
        FakeWatch {
            etcd: etcd.clone(),
            changed: etcd.changed.subscribe(),
            generation: state.generation,
            filter,
            next: from,
            created: false,
            redeliveries: state.redeliveries,
            progress_requests: 0,
        }
    }

    /// The next message if one is ready; an error if the watch is broken. Events go out
    /// before a progress answer, except those held back.
    fn poll_message(&mut self) -> Result<Option<Message>, etcd_client::Error> {
        let mut state = self.etcd.state();
        state.expire();
        if state.generation != self.generation {
            return Err(etcd_client::Error::WatchError("connection reset".into()));
        }
        let mut header = FakeEtcd::header(&state);
        let follower_at = state.follower_at.unwrap_or(i64::MAX);
        header.revision = header.revision.min(follower_at);
        if !self.created {
            self.created = true;
            return Ok(Some(self.created_message(&state, header)));
        }
        if state.redeliveries != self.redeliveries {
            self.redeliveries = state.redeliveries;
            self.next = self.next.min(state.redeliver_from);
        }
        let last = match state.held_above {
            0 => header.revision,
            held => held.min(header.revision),
        };
        let events: Vec<Event> = (state.events.iter())
            .filter(|e| (self.next..=last).contains(&e.mod_revision))
            .filter(|e| self.filter.matches(&e.key))
            .cloned()
            .collect();
        self.next = self.next.max(last + 1);
        if !events.is_empty() {
            let header = Header {
                revision: last,
                ..header
            };
            return Ok(Some(Message {
                header,
                events,
                ..Message::default()
            }));
        }
        let progress = state.progress;
        drop(state);
        Ok(self.progress_answer(progress, header))
    }

    /// The answer to a progress request, if one is waiting.
    fn progress_answer(&mut self, progress: Progress, header: Header) -> Option<Message> {
        if self.progress_requests == 0 {
            return None;
        }
        self.progress_requests -= 1;
        let revision = match progress {
            Progress::Current => header.revision,
            Progress::Behind(n) => header.revision - n,
        };
        let header = Header { revision, ..header };
        Some(Message {
            header,
            ..Message::default()
        })
    }

    /// The first message: created, or cancelled if `next` is compacted.
    fn created_message(&self, state: &State, header: Header) -> Message {
        if self.next <= state.compacted {
            let reason = "etcdserver: mvcc: required revision has been compacted";
            return Message {
                header,
                created: true,
                canceled: true,
                compact_revision: state.compacted,
                cancel_reason: reason.into(),
                ..Message::default()
            };
        }
        Message {
            header,
            created: true,
            ..Message::default()
        }
    }
}

impl Watch for FakeWatch {
    fn message(&mut self) -> BoxFuture<'_, Result<Option<Message>, etcd_client::Error>> {
        Box::pin(async move {
            loop {
                self.changed.borrow_and_update();
                if let Some(message) = self.poll_message()? {
                    return Ok(Some(message));
                }
                if self.changed.changed().await.is_err() {
                    return Ok(None);
                }
            }
        })
    }

    fn request_progress(&mut self) -> BoxFuture<'_, Result<(), etcd_client::Error>> {
        self.progress_requests += 1;
        Box::pin(std::future::ready(Ok(())))
    }
}
