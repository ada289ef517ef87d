//! The crate's private seam in front of etcd: for discovery, read a range in pages at a
//! revision and watch a prefix from a revision with progress requests; for the registrar
//! ([`lease`]), grant a lease, keep it alive, ask for its TTL left, put and delete keys under
//! it and watch them.
//!
//! Discovery's engine asks etcd only through [`Etcd`] and [`Watch`], the lease task only
//! through [`lease::Leases`], implemented here for `etcd_client`, so that both state machines
//! run in unit tests on paused time against an in-memory fake (revisions, compaction, an
//! etcd that loses its data, leases that expire, injected errors, and etcd's own faults:
//! duplicate events, the 3.4 progress race, leader changes, stalled or unanswered keepalives),
//! the way kube-runtime puts a private trait in front of its API. The messages are the
//! crate's own types: etcd-client's cannot be built outside it.

#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod lease;

use std::future::Future;
use std::pin::Pin;

use etcd_client::{EventType, GetOptions, WatchOptions};

use super::history::Header;

/// A future the seam returns: boxed, so that the traits stay object-safe.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The largest response accepted: a page of a listing, or a watch response with many events.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// One page of a range read.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) header: Header,
    /// Keys and values, in key order.
    pub(crate) kvs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether keys are left after the last one.
    pub(crate) more: bool,
}

/// One event of a watch message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// A put, else a delete.
    pub(crate) put: bool,
    pub(crate) key: Vec<u8>,
    /// Empty for a delete.
    pub(crate) value: Vec<u8>,
    pub(crate) mod_revision: i64,
}

/// One message of a watch: created, events, progress or cancelled.
#[derive(Debug, Default)]
pub(crate) struct Message {
    pub(crate) header: Header,
    /// The first message of a watch, which etcd sends once it is set up.
    pub(crate) created: bool,
    pub(crate) canceled: bool,
    /// Above 0 when the watch was cancelled because its start revision is compacted.
    pub(crate) compact_revision: i64,
    pub(crate) cancel_reason: String,
    pub(crate) events: Vec<Event>,
}

impl Message {
    /// Whether it is a progress notification: no events, neither created nor cancelled.
    pub(crate) fn is_progress(&self) -> bool {
        !self.created && !self.canceled && self.events.is_empty()
    }
}

/// What discovery asks of etcd.
pub(crate) trait Etcd: Send + Sync {
    /// Reads up to `limit` keys of `[from, end)`, at `revision` (0: the current one).
    fn range(
        &self,
        from: Vec<u8>,
        end: Vec<u8>,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'_, Result<Page, etcd_client::Error>>;

    /// The header of a linearizable count-only read of `[from, end)`: the cluster's current
    /// revision, as a member in step with the leader knows it.
    fn count(
        &self,
        from: Vec<u8>,
        end: Vec<u8>,
    ) -> BoxFuture<'_, Result<Header, etcd_client::Error>>;

    /// Watches every key under `prefix` from revision `from`.
    fn watch(
        &self,
        prefix: String,
        from: i64,
    ) -> BoxFuture<'_, Result<Box<dyn Watch>, etcd_client::Error>>;
}

/// An open watch.
pub(crate) trait Watch: Send {
    /// The next message; `None` once the stream has ended.
    fn message(&mut self) -> BoxFuture<'_, Result<Option<Message>, etcd_client::Error>>;

    /// Asks etcd for a progress notification.
    fn request_progress(&mut self) -> BoxFuture<'_, Result<(), etcd_client::Error>>;
}

impl Etcd for etcd_client::Client {
    fn range(
        &self,
        from: Vec<u8>,
        end: Vec<u8>,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'_, Result<Page, etcd_client::Error>> {
        Box::pin(async move {
            let mut kv = self.kv_client().max_decoding_message_size(MAX_MESSAGE);
            let mut options = GetOptions::new().with_range(end).with_limit(limit);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = kv.get(from, Some(options)).await?;
            let kvs = response.kvs().iter();
            Ok(Page {
                header: Header::of(response.header()),
                kvs: kvs
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                    .collect(),
                more: response.more(),
            })
        })
    }

    fn count(
        &self,
        from: Vec<u8>,
        end: Vec<u8>,
    ) -> BoxFuture<'_, Result<Header, etcd_client::Error>> {
        Box::pin(async move {
            // Linearizable is etcd's default: the member confirms with the leader first.
            let options = GetOptions::new().with_range(end).with_count_only();
            let response = self.kv_client().get(from, Some(options)).await?;
            Ok(Header::of(response.header()))
        })
    }

    fn watch(
        &self,
        prefix: String,
        from: i64,
    ) -> BoxFuture<'_, Result<Box<dyn Watch>, etcd_client::Error>> {
        Box::pin(async move {
            let mut client = self.watch_client().max_decoding_message_size(MAX_MESSAGE);
            let options = WatchOptions::new().with_prefix().with_start_revision(from);
            let stream = client.watch(prefix, Some(options)).await?;
            Ok(Box::new(stream) as Box<dyn Watch>)
        })
    }
}

impl Watch for etcd_client::WatchStream {
    fn message(&mut self) -> BoxFuture<'_, Result<Option<Message>, etcd_client::Error>> {
        Box::pin(async move {
            let Some(response) = etcd_client::WatchStream::message(self).await? else {
                return Ok(None);
            };
            let events = response.events().iter().filter_map(|event| {
                let kv = event.kv()?;
                Some(Event {
                    put: event.event_type() == EventType::Put,
                    key: kv.key().to_vec(),
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision(),
                })
            });
            Ok(Some(Message {
                header: Header::of(response.header()),
                created: response.created(),
                canceled: response.canceled(),
                compact_revision: response.compact_revision(),
                cancel_reason: response.cancel_reason().to_owned(),
                events: events.collect(),
            }))
        })
    }

    fn request_progress(&mut self) -> BoxFuture<'_, Result<(), etcd_client::Error>> {
        Box::pin(etcd_client::WatchStream::request_progress(self))
    }
}
