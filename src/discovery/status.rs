//! What discovery reports about itself.

use crate::error::Error;

/// The state of an [`EtcdDiscover`](crate::EtcdDiscover), published through a
/// [`tokio::sync::watch`] channel so an application can see it and report it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DiscoveryStatus {
    /// The first listing has not completed yet.
    Syncing,
    /// The endpoint set matches etcd at `revision`.
    Synced {
        /// The etcd revision the set is known to be current at.
        revision: i64,
        /// How many endpoints are announced.
        endpoints: usize,
        /// The etcd prefix listed and watched, with its trailing slash: `greeter/` for the
        /// service `greeter` in the default format.
        prefix: String,
        /// How many keys under the prefix are not endpoints: their values do not decode in
        /// the format (another format's, say), or they are another service's (a nested
        /// service's keys under the same prefix).
        skipped: usize,
        /// Why the last key skipped was, with its key, while any is: `greeter/1: not an
        /// etcd-naming JSON value ...`.
        skip_reason: Option<String>,
    },
    /// etcd cannot be reached or refused a request; the last known endpoints stay in use
    /// ("fail static") while discovery retries with backoff.
    Retrying {
        /// How many attempts have failed in a row.
        attempt: u32,
        /// The last error.
        error: Error,
        /// How many endpoints are still announced.
        endpoints: usize,
    },
    /// Discovery stopped on a permanent error, such as permission denied. The last known
    /// endpoints stay in use.
    Failed {
        /// The error that stopped discovery.
        error: Error,
    },
}

impl DiscoveryStatus {
    /// Returns `true` if the endpoint set was current at the last report.
    pub fn is_synced(&self) -> bool {
        matches!(self, DiscoveryStatus::Synced { .. })
    }
}
