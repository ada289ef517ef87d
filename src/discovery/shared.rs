//! Sharing one watch per prefix between discoveries, made explicit: a handle the
//! application creates and clones.

use std::fmt;
use std::sync::Arc;

use super::EtcdDiscover;
use super::hub::Watches;

/// A group of discoveries that share one etcd client and one list-then-watch per prefix.
///
/// Every [`EtcdDiscover`] made by [`discover`](SharedDiscovery::discover) on this handle or
/// a clone of it, for the same etcd prefix and with the same request settings
/// ([`backoff`](EtcdDiscover::backoff), [`request_timeout`](EtcdDiscover::request_timeout),
/// [`progress_interval`](EtcdDiscover::progress_interval),
/// [`idle_timeout`](EtcdDiscover::idle_timeout)), reads one shared watch, so etcd serves
/// one watcher for them, however many channels the process builds. Each discovery still
/// decodes it with its own [`format`](EtcdDiscover::format) and
/// [`endpoint`](EtcdDiscover::endpoint) hook, and reports its own status. The shared watch
/// runs while any of its discoveries lives, and stops with the last one.
///
/// Sharing follows the handle, as a tonic [`Channel`](tonic::transport::Channel) shares its
/// connection with its clones and not with a channel built anew: discoveries made from
/// other handles, or with [`EtcdDiscover::new`], never share a watch with these, so a
/// client with other credentials, another TLS identity or other timeouts never reads
/// through this group's client. There is no process-wide registry.
///
/// Building one does no I/O; a watch starts on the first poll of the first discovery of
/// its prefix.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tonic_etcd::{EtcdConfig, Kratos, SharedDiscovery};
///
/// let etcd = EtcdConfig::new(["http://127.0.0.1:2379"]).connect().await?;
/// let shared = SharedDiscovery::new(etcd);
/// // Two channels, one watch of `greeter/` in etcd.
/// let greeter = shared.discover("greeter").channel();
/// let greeter_again = shared.clone().discover("greeter").channel();
/// // Another prefix: a watch of its own, on the same client.
/// let admin = shared.discover("admin").format(Kratos::new()).channel();
/// # drop((greeter, greeter_again, admin));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SharedDiscovery {
    client: etcd_client::Client,
    watches: Arc<Watches>,
}

impl SharedDiscovery {
    /// A new group, with no watch yet, reading through `client` (its endpoints,
    /// credentials and TLS identity).
    pub fn new(client: etcd_client::Client) -> Self {
        SharedDiscovery {
            client,
            watches: Arc::default(),
        }
    }

    /// Discovers the instances of `service`, as [`EtcdDiscover::new`] does, sharing the
    /// watch of its prefix with the group's other discoveries that have the same request
    /// settings.
    pub fn discover(&self, service: impl Into<String>) -> EtcdDiscover {
        EtcdDiscover::in_group(self.client.clone(), self.watches.clone(), service.into())
    }

    /// How many shared watches run now: one per prefix and request settings that a live
    /// discovery of the group has polled.
    pub fn watches(&self) -> usize {
        self.watches.running()
    }
}

impl fmt::Debug for SharedDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedDiscovery")
            .field("watches", &self.watches())
            .finish_non_exhaustive()
    }
}
