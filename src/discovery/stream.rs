//! The running discovery: the stream of changes an [`EtcdDiscover`] becomes.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tower::discover::Change;

#[cfg(doc)]
use super::EtcdDiscover;
use super::{Discovered, DiscoveryStatus};
use crate::error::Error;

pub(super) type ChangeStream =
    Pin<Box<dyn Stream<Item = Result<Change<String, Discovered>, Error>> + Send>>;

/// A running discovery: the [`tower::discover::Discover`] of the servers registered under
/// an etcd prefix, made by [`EtcdDiscover::into_stream`].
///
/// Each item is a [`Change`] keyed by an etcd key, as [`EtcdDiscover`] describes. Its
/// configuration is fixed: the builder's setters are not there. The I/O starts on the first
/// poll. Only a permanent error is an item, and it is the last one; the stream then ends.
/// Dropping it stops its part in the watch (and the watch itself, when it was its last
/// discovery).
///
/// ```no_run
/// # async fn run(client: tonic_etcd::etcd_client::Client) {
/// use futures_util::StreamExt;
/// use tonic_etcd::EtcdDiscover;
/// use tower::discover::Change;
///
/// let mut changes = EtcdDiscover::new(client, "greeter").into_stream();
/// while let Some(Ok(change)) = changes.next().await {
///     match change {
///         Change::Insert(key, endpoint) => println!("{key}: {}", endpoint.uri()),
///         Change::Remove(key) => println!("{key} is gone"),
///     }
/// }
/// # }
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct DiscoveryStream {
    service: String,
    stream: ChangeStream,
    status: watch::Receiver<DiscoveryStatus>,
}

impl DiscoveryStream {
    pub(super) fn new(
        service: String,
        stream: ChangeStream,
        status: watch::Receiver<DiscoveryStatus>,
    ) -> Self {
        DiscoveryStream {
            service,
            stream,
            status,
        }
    }

    /// The service this discovers, as given.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// A receiver of the discovery status, updated as it syncs, retries or fails.
    pub fn status(&self) -> watch::Receiver<DiscoveryStatus> {
        self.status.clone()
    }

    /// Polls for the next change, with the decoded instance: what the crate's own balancer
    /// needs for weights and zones.
    pub(crate) fn poll_discovered(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Change<String, Discovered>, Error>>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl Stream for DiscoveryStream {
    type Item = Result<Change<String, Endpoint>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_discovered(cx).map(|item| {
            item.map(|result| {
                result.map(|change| match change {
                    Change::Insert(key, discovered) => Change::Insert(key, discovered.endpoint),
                    Change::Remove(key) => Change::Remove(key),
                })
            })
        })
    }
}

impl fmt::Debug for DiscoveryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryStream")
            .field("service", &self.service)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}
