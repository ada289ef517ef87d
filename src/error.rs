//! The crate's error type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

mod classify;
mod report;

pub(crate) use classify::is_certificate_error;
use classify::{etcd_error_is_permanent, etcd_source, reason_is_permanent, status_of};
pub(crate) use report::cause_of;

use report::Report;

/// An etcd client error, shared so that [`Error`] is cheap to clone into a status report.
type EtcdError = Arc<etcd_client::Error>;

/// Everything that can go wrong in discovery and registration.
///
/// Each variant is named after the operation that failed and carries its context. Its
/// `Display` names that level only; the underlying cause, when there is one, is available
/// through [`std::error::Error::source`], and [`Error::report`] prints the whole chain on one
/// line. A `main` that returns this error with `?` prints its `Debug` form; print the report
/// instead:
///
/// ```no_run
/// # async fn run() -> Result<(), tonic_etcd::Error> { Ok(()) }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// if let Err(error) = run().await {
///     eprintln!("error: {}", error.report());
///     std::process::exit(1);
/// }
/// # }
/// ```
///
/// Whether an error is worth retrying is decided in one place: [`Error::is_permanent`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service prefix cannot be watched.
    #[error("invalid service prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A target string (`etcd://10.0.0.1:2379/greeter?format=kratos`) cannot be parsed.
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// The part that is wrong, and why.
        reason: crate::target::TargetError,
    },

    /// An instance's address cannot be registered: clients could not dial it.
    #[error("cannot register address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was rejected, and what to do instead.
        reason: &'static str,
    },

    /// An etcd endpoint is not a URL etcd can be reached at.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A lease TTL below etcd's practical minimum, or above etcd's maximum lease TTL, was
    /// asked for.
    #[error("invalid lease ttl {}: it must be from {} to {}", Secs(*ttl), Secs(*min), Secs(*max))]
    InvalidTtl {
        /// The TTL as given.
        ttl: Duration,
        /// The smallest TTL accepted.
        min: Duration,
        /// The largest TTL accepted: etcd's `MaxLeaseTTL`, 9,000,000,000 s.
        max: Duration,
    },

    /// A timeout or interval was set to a value that would make every operation fail, such
    /// as a request timeout of zero.
    #[error("invalid {setting} {}: {reason}", Secs(*value))]
    InvalidDuration {
        /// The setting, as its setter is named: `request timeout`.
        setting: &'static str,
        /// The value as given.
        value: Duration,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// Listing the keys under a prefix failed.
    #[error("failed to list prefix {prefix:?}")]
    List {
        /// The prefix being listed, with its trailing slash.
        prefix: String,
        /// The etcd error.
        #[source]
        source: EtcdError,
    },

    /// Opening or reading a watch on a prefix failed.
    #[error("failed to watch prefix {prefix:?}")]
    Watch {
        /// The prefix being watched, with its trailing slash.
        prefix: String,
        /// The etcd error.
        #[source]
        source: EtcdError,
    },

    /// etcd cancelled a watch for a reason other than compaction.
    #[error("watch on prefix {prefix:?} was cancelled: {reason}")]
    WatchCancelled {
        /// The prefix being watched, with its trailing slash.
        prefix: String,
        /// The reason etcd gave.
        reason: String,
    },

    /// A request to etcd did not complete in time.
    #[error("{operation} timed out after {}", Secs(*after))]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// How long it was given.
        after: Duration,
    },

    /// Granting a lease failed.
    #[error("failed to grant a lease with ttl {ttl_secs} s")]
    LeaseGrant {
        /// The TTL asked for, in seconds.
        ttl_secs: i64,
        /// The etcd error.
        #[source]
        source: EtcdError,
    },

    /// Writing a registration key failed.
    #[error("failed to put key {key:?} with lease {lease_id:#x}")]
    Put {
        /// The key being written.
        key: String,
        /// The lease it was attached to.
        lease_id: i64,
        /// The etcd error.
        #[source]
        source: EtcdError,
    },

    /// Deleting a registration key failed.
    #[error("failed to delete key {key:?}")]
    Delete {
        /// The key being deleted.
        key: String,
        /// The etcd error.
        #[source]
        source: EtcdError,
    },

    /// Keeping a lease alive failed.
    #[error("failed to keep lease {lease_id:#x} alive")]
    KeepAlive {
        /// The lease.
        lease_id: i64,
        /// The etcd error.
        #[source]
        source: EtcdError,
    },

    /// etcd reports that the lease no longer exists.
    #[error("lease {lease_id:#x} has expired or was revoked")]
    LeaseLost {
        /// The lease.
        lease_id: i64,
    },

    /// The registration's lease task is no longer running.
    #[error("the registration has stopped")]
    Stopped,

    /// Revoking a lease failed.
    #[error("failed to revoke lease {lease_id:#x}")]
    Revoke {
        /// The lease.
        lease_id: i64,
        /// The etcd error.
        #[source]
        source: EtcdError,
    },

    /// Connecting to etcd, or its first request, failed.
    #[error("failed to connect to etcd at {endpoints}")]
    Connect {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// The etcd error.
        #[source]
        source: EtcdError,
    },

    /// etcd refused the user name or the password.
    #[error("etcd authentication failed for user {user:?}")]
    Authenticate {
        /// The user name given.
        user: String,
        /// The etcd error.
        #[source]
        source: EtcdError,
    },

    /// etcd has authentication enabled, and no user was given.
    #[error("etcd at {endpoints} requires authentication, and no user was given")]
    AuthRequired {
        /// The endpoints, comma-separated.
        endpoints: String,
    },

    /// The TLS handshake with etcd failed for a reason that retrying cannot fix, such as a
    /// missing or rejected client certificate, or a server certificate the CA did not sign.
    #[error("tls handshake with etcd at {endpoint} failed: {reason}")]
    TlsHandshake {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },

    /// The TLS settings cannot be used: a certificate or key that does not parse, or TLS
    /// asked for without the `tls` feature.
    #[error("invalid tls configuration: {reason}")]
    InvalidTlsConfig {
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// The error and all its causes on one line, for a log or the end of a program:
    /// `failed to connect to etcd at http://127.0.0.1:2379: grpc request error: ...:
    /// Connection refused (os error 111)`.
    ///
    /// Unlike a plain walk of [`source`](std::error::Error::source), it also looks inside
    /// etcd-client's errors, which hide their causes from `source`, and prints a gRPC
    /// status as its code and message.
    pub fn report(&self) -> impl fmt::Display + fmt::Debug + '_ {
        Report(self)
    }

    /// Returns `true` if retrying cannot help: the caller must change something first.
    ///
    /// Permanent errors are invalid arguments (an empty prefix, an address clients cannot
    /// dial, an etcd URL with an unknown scheme, a TTL below 2 s) and etcd
    /// answers that say the credentials are wrong or lack the permission. Everything else,
    /// including unreachable members, timeouts, leader elections and lost leases, is
    /// transient: discovery and the registrar retry it with backoff and never end on it.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::InvalidPrefix { .. }
            | Error::InvalidTarget { .. }
            | Error::InvalidAddress { .. }
            | Error::InvalidEndpoint { .. }
            | Error::InvalidTtl { .. }
            | Error::InvalidDuration { .. } => true,
            Error::WatchCancelled { reason, .. } => reason_is_permanent(reason),
            Error::List { source, .. }
            | Error::Watch { source, .. }
            | Error::LeaseGrant { source, .. }
            | Error::Put { source, .. }
            | Error::Delete { source, .. }
            | Error::KeepAlive { source, .. }
            | Error::Revoke { source, .. } => etcd_error_is_permanent(source),
            Error::Connect { source, .. } => {
                etcd_error_is_permanent(source) || is_certificate_error(source)
            }
            Error::Authenticate { source, .. } => etcd_error_is_permanent(source),
            Error::Timeout { .. } | Error::LeaseLost { .. } => false,
            Error::Stopped
            | Error::AuthRequired { .. }
            | Error::TlsHandshake { .. }
            | Error::InvalidTlsConfig { .. } => true,
        }
    }

    /// Returns `true` if etcd refused the operation for want of a permission (its RBAC):
    /// final for credentials that never had it, over once a revoked role is granted again.
    pub(crate) fn is_permission_denied(&self) -> bool {
        match self {
            Error::WatchCancelled { reason, .. } => reason.contains("permission denied"),
            Error::List { source, .. }
            | Error::Watch { source, .. }
            | Error::LeaseGrant { source, .. }
            | Error::Put { source, .. }
            | Error::Delete { source, .. }
            | Error::KeepAlive { source, .. }
            | Error::Revoke { source, .. } => {
                status_of(source).is_some_and(|s| s.code() == tonic::Code::PermissionDenied)
            }
            _ => false,
        }
    }

    /// Returns `true` if etcd said the lease this operation used does not exist.
    pub(crate) fn is_lease_not_found(&self) -> bool {
        match self {
            Error::LeaseLost { .. } => true,
            Error::Put { source, .. }
            | Error::KeepAlive { source, .. }
            | Error::Revoke { source, .. } => match &**source {
                // etcd-client's own word for a keepalive answered with TTL 0.
                etcd_client::Error::LeaseKeepAliveError(m) => m == "lease not found",
                other => status_of(other)
                    .is_some_and(|s| s.message().contains("requested lease not found")),
            },
            _ => false,
        }
    }

    /// Returns `true` if the error may be one member's alone (refused, unavailable, frozen,
    /// without a leader), so that the same request sent again may well succeed on another
    /// member; `false` for an answer every member would give (permanent errors, a lost
    /// lease, a compacted revision, a request etcd calls invalid, such as one over its
    /// request size limit) and for the crate's own state.
    pub(crate) fn is_member_local(&self) -> bool {
        let etcd_status = etcd_source(self).and_then(status_of);
        let compacted = matches!(self, Error::List { .. } | Error::Watch { .. })
            && etcd_status
                .is_some_and(|s| s.message().contains("required revision has been compacted"));
        let invalid = etcd_status.is_some_and(|s| s.code() == tonic::Code::InvalidArgument);
        !(self.is_permanent()
            || self.is_lease_not_found()
            || compacted
            || invalid
            || matches!(self, Error::Stopped | Error::WatchCancelled { .. }))
    }
}

/// Displays a duration in seconds, `2 s` or `0.5 s`, the unit a user sets TTLs and timeouts
/// in (a `Duration`'s `Debug` would print a zero TTL as `0ns`).
pub(crate) struct Secs(pub(crate) Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} s", self.0.as_secs_f64())
    }
}

/// Displays an error with all its causes, `outer: inner: root`, for logs.
pub(crate) struct Chain<'a>(pub(crate) &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
