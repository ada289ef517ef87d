//! Feeding tonic's own balanced [`Channel`] from discovery.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::{Channel, Endpoint};
use tower::discover::Change;
use tracing::{Instrument, debug, error};

use crate::discovery::{DiscoveryStatus, DiscoveryStream, EtcdDiscover};

/// How many changes tonic's balancer may have queued before the forwarder coalesces.
const CHANNEL_CAPACITY: usize = 1024;

impl EtcdDiscover {
    /// Returns a tonic [`Channel`] that balances over the discovered servers, and the handle
    /// of the task that feeds it.
    ///
    /// The channel is tonic's own [`Channel::balance_channel`], so it is a plain
    /// `tonic::transport::Channel` that any generated client accepts. The feeding task is
    /// owned by the handle: it stops on [`DiscoveryHandle::stop`], or by itself once every
    /// clone of the channel is dropped. Dropping the handle leaves it running for as long as
    /// the channel lives.
    ///
    /// The task never blocks the watch: while tonic is not taking changes (it applies them
    /// only while requests flow), they are coalesced per key, so memory stays bounded by the
    /// number of keys.
    ///
    /// # Limits of tonic's balancer
    ///
    /// - A dead endpoint is never ejected: its lazy connection reports ready and fails the
    ///   call it gets, until etcd removes its key (at once on a graceful stop, within the
    ///   lease TTL after a crash).
    /// - With no endpoint at all, calls wait until one appears; set a timeout on the call or
    ///   on the endpoint (see [`EtcdDiscover::endpoint`]).
    /// - Changes reach the balancer only while requests flow.
    ///
    /// Must be called inside a tokio runtime.
    pub fn balance_channel(self) -> (Channel, DiscoveryHandle) {
        let (channel, sender) = Channel::balance_channel(CHANNEL_CAPACITY);
        let status = self.status();
        let (stop, stopped) = oneshot::channel();
        let span = tracing::info_span!("tonic_etcd::forward");
        let task = tokio::spawn(forward(self.into_stream(), sender, stopped).instrument(span));
        let handle = DiscoveryHandle {
            status,
            stop: Some(stop),
            task,
        };
        (channel, handle)
    }
}

/// The handle of the task that feeds a balanced channel from discovery.
#[derive(Debug)]
pub struct DiscoveryHandle {
    status: watch::Receiver<DiscoveryStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl DiscoveryHandle {
    /// A receiver of the discovery status.
    pub fn status(&self) -> watch::Receiver<DiscoveryStatus> {
        self.status.clone()
    }

    /// Stops feeding the channel and waits for the task to end. The channel keeps the
    /// endpoints it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            debug!(error = %e, "discovery task ended abnormally");
        }
    }
}

/// Changes waiting for room in tonic's queue, at most one per key.
#[derive(Default)]
struct Pending(BTreeMap<String, Option<Endpoint>>);

impl Pending {
    fn push(&mut self, change: Change<String, Endpoint>) {
        match change {
            Change::Insert(key, endpoint) => self.0.insert(key, Some(endpoint)),
            Change::Remove(key) => self.0.insert(key, None),
        };
    }

    fn pop(&mut self) -> Option<TonicChange<String, Endpoint>> {
        let (key, endpoint) = self.0.pop_first()?;
        Some(match endpoint {
            Some(endpoint) => TonicChange::Insert(key, endpoint),
            None => TonicChange::Remove(key),
        })
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

async fn forward(
    mut discover: DiscoveryStream,
    sender: mpsc::Sender<TonicChange<String, Endpoint>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut pending = Pending::default();
    let mut discovering = true;
    // A dropped handle is no request to stop: only `stop()` is.
    let mut stoppable = true;
    loop {
        // Biased: stopping wins, then handing over what is pending, then reading more, so
        // the queue to tonic drains before the backlog grows.
        tokio::select! {
            biased;
            stop = &mut stopped, if stoppable => match stop {
                Ok(()) => break,
                Err(_) => stoppable = false,
            },
            _ = sender.closed() => {
                debug!("balanced channel dropped, discovery stops");
                break;
            }
            permit = sender.reserve(), if !pending.is_empty() => match (permit, pending.pop()) {
                (Ok(permit), Some(change)) => permit.send(change),
                _ => break,
            },
            item = discover.next(), if discovering => match item {
                Some(Ok(change)) => pending.push(change),
                Some(Err(e)) => {
                    error!(error = %crate::error::Chain(&e), "discovery failed, endpoints frozen");
                    discovering = false;
                }
                None => discovering = false,
            },
            else => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint::from_shared(format!("http://127.0.0.1:{port}")).expect("valid uri")
    }

    #[test]
    fn pending_keeps_the_last_change_per_key() {
        let mut pending = Pending::default();
        pending.push(Change::Insert("a".into(), endpoint(1)));
        pending.push(Change::Remove("a".into()));
        pending.push(Change::Insert("b".into(), endpoint(2)));
        pending.push(Change::Insert("b".into(), endpoint(3)));
        assert!(matches!(pending.pop(), Some(TonicChange::Remove(k)) if k == "a"));
        match pending.pop() {
            Some(TonicChange::Insert(k, e)) => {
                assert_eq!(k, "b");
                assert_eq!(e.uri().port_u16(), Some(3));
            }
            _ => panic!("expected the last insert of b"),
        }
        assert!(pending.is_empty());
    }
}
