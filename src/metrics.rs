//! The metrics the crate records, with the `metrics` feature, through the [`metrics`] facade:
//! what they are named, their type, labels and unit.
//!
//! The library installs no recorder and serves nothing: the application installs the
//! exporter it wants (Prometheus, OpenTelemetry, StatsD) with the `metrics` crate, and may
//! call [`describe`] once after it, so the exporter shows each metric's help text and unit.
//! Without a recorder, or without the feature, recording costs nothing: without the
//! feature, the calls are compiled away.
//!
//! Names are dotted, as the `metrics` crate and OpenTelemetry write them; a Prometheus
//! exporter turns the dots into underscores, in names and labels: `tonic_etcd.lb.ejections`
//! is scraped as `tonic_etcd_lb_ejections{grpc_target="greeter",reason="transport"}`.
//!
//! Where gRPC's own metrics (gRFC A66 and A78, the subchannel metrics of gRFC A94, outlier
//! detection's of gRFC A91, retries of gRFC A96) cover the same thing, the crate uses their
//! name or their vocabulary, and their label `grpc.target`, which holds the service name
//! given to [`EtcdDiscover::new`](crate::EtcdDiscover::new). Nothing is recorded per call on
//! the path of a call that succeeds: only what goes wrong (ejections, retries, fail-fasts,
//! waits) and the background tasks (discovery, registration, connections).
//!
//! The repository's `docs/metrics.md` has the same list as a table, with what to alert on.

use crate::balance::EndpointState;
use crate::discovery::DiscoveryStatus;
use crate::registrar::RegistrationStatus;

// --- the crate's balancer (labels: `grpc.target`) ---

/// Gauge, `{endpoint}`: the endpoints the [`BalancedChannel`](crate::BalancedChannel)
/// knows, by state; labels `grpc.target` and `state`: `connecting`, `up`, `ejected`, `idle`
/// (see [`EndpointState`]). Updated by the channel's own task as endpoints change, at
/// least once a second; two channels over one service in a process share the series.
pub const ENDPOINTS: &str = "tonic_etcd.lb.endpoints";

/// Counter, `{ejection}`: endpoints taken out of rotation; labels `grpc.target` and
/// `reason`: `transport` (a refused, reset or closed connection, or a call that failed on
/// it), `health_check` (an active check failed), and, with outlier detection (gRFC A50),
/// `consecutive_failures`, `success_rate`, `failure_percentage`. gRFC A91 counts the last
/// three as `grpc.lb.outlier_detection.ejections_enforced_*`.
pub const EJECTIONS: &str = "tonic_etcd.lb.ejections";

/// Counter, `{readmission}`: ejected endpoints back in rotation after a probe; label
/// `grpc.target`.
pub const READMISSIONS: &str = "tonic_etcd.lb.readmissions";

/// Counter, `{attempt}`: connections opened to an endpoint, first ones and probes; label
/// `grpc.target`. Named as in gRFC A94 (`grpc.lb.pick_first.*` in gRFC A78).
pub const CONNECTION_ATTEMPTS_SUCCEEDED: &str = "grpc.subchannel.connection_attempts_succeeded";

/// Counter, `{attempt}`: connections that failed to open (refused, timed out, or not
/// `SERVING` to the health check); label `grpc.target`. Named as in gRFC A94.
pub const CONNECTION_ATTEMPTS_FAILED: &str = "grpc.subchannel.connection_attempts_failed";

/// Counter, `{retry}`: calls sent again; labels `grpc.target` and `kind`: `transparent`
/// (the call never left: it goes to another endpoint at once, at no cost to any budget;
/// gRFC A96's transparent retry) or `policy` (a retry policy sent a call that failed again,
/// gRFC A6).
pub const RETRIES: &str = "tonic_etcd.lb.retries";

/// Counter, `{retry}`: retries a retry policy wanted and retry throttling refused (gRFC
/// A6's token bucket); label `grpc.target`.
pub const RETRIES_THROTTLED: &str = "tonic_etcd.lb.retries_throttled";

/// Counter, `{call}`: calls that failed with `Unavailable` because no endpoint was up, at
/// once or after a wait that ran out; label `grpc.target`.
pub const FAIL_FASTS: &str = "tonic_etcd.lb.fail_fasts";

/// Counter, `{call}`: calls that found no endpoint up and waited for one (while discovery
/// starts, an endpoint connects, or with wait-for-ready), whatever the outcome; label
/// `grpc.target`.
pub const WAITS: &str = "tonic_etcd.lb.waits";

/// Histogram, seconds (`s`): how long each of the [`WAITS`] lasted, until an endpoint was
/// picked or the call failed; label `grpc.target`. The pick latency that matters: a pick
/// that finds an endpoint up at once takes well under a microsecond and is not recorded,
/// so a call that succeeds records nothing.
pub const WAIT_DURATION: &str = "tonic_etcd.lb.wait_duration";

// --- discovery (label: `prefix`, the etcd prefix watched, with its trailing slash) ---

/// Gauge: 1 for the discovery's current status, 0 for the others; labels `prefix` and
/// `status`: `syncing`, `synced`, `retrying`, `failed` (see [`DiscoveryStatus`]).
pub const DISCOVERY_STATUS: &str = "tonic_etcd.discovery.status";

/// Gauge, `{revision}`: the etcd revision the endpoint set is current at; label `prefix`.
pub const DISCOVERY_REVISION: &str = "tonic_etcd.discovery.revision";

/// Gauge, `{key}`: the keys under the prefix that discovery announces; label `prefix`.
pub const DISCOVERY_KEYS: &str = "tonic_etcd.discovery.keys";

/// Counter, `{list}`: listings of the prefix: the first, and each re-list (after a
/// compaction, or after resuming the watch failed); label `prefix`. Above 1, re-lists.
pub const DISCOVERY_LISTS: &str = "tonic_etcd.discovery.lists";

/// Counter, `{watch}`: watches opened: the first, and each restart after the stream ended,
/// failed or went silent; label `prefix`. Above 1, restarts.
pub const DISCOVERY_WATCHES: &str = "tonic_etcd.discovery.watches";

/// Counter, `{error}`: etcd requests of discovery that failed and are retried with backoff;
/// label `prefix`.
pub const DISCOVERY_ERRORS: &str = "tonic_etcd.discovery.errors";

// --- the registrar (one lease per process: no label) ---

/// Gauge: 1 for the registrar's current status, 0 for the others; label `status`:
/// `registering`, `registered`, `retrying`, `deregistered`, `failed` (see
/// [`RegistrationStatus`]).
pub const REGISTRAR_STATUS: &str = "tonic_etcd.registrar.status";

/// Counter, `{failure}`: keepalives of the lease that failed; label `reason`: `stalled`
/// (unanswered for a third of the TTL: the stream is opened again), `lease_lost` (etcd says
/// the lease is gone: a new one is granted), `error` (the stream or etcd failed).
pub const KEEPALIVE_FAILURES: &str = "tonic_etcd.registrar.keepalive_failures";

/// Counter, `{lease}`: leases granted: the first, and one after each loss of the lease.
pub const LEASES: &str = "tonic_etcd.registrar.leases";

/// Why an endpoint was ejected: the `reason` label of [`EJECTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum Ejection {
    Transport,
    HealthCheck,
    ConsecutiveFailures,
    SuccessRate,
    FailurePercentage,
}

impl Ejection {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            Ejection::Transport => "transport",
            Ejection::HealthCheck => "health_check",
            Ejection::ConsecutiveFailures => "consecutive_failures",
            Ejection::SuccessRate => "success_rate",
            Ejection::FailurePercentage => "failure_percentage",
        }
    }
}

/// Which retry: the `kind` label of [`RETRIES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum Retry {
    Transparent,
    Policy,
}

/// Why a keepalive failed: the `reason` label of [`KEEPALIVE_FAILURES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum KeepAlive {
    Stalled,
    LeaseLost,
    Error,
}

#[cfg(feature = "metrics")]
mod record;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use record::describe;
#[cfg(feature = "metrics")]
pub(crate) use record::*;

#[cfg(not(feature = "metrics"))]
mod noop;
#[cfg(not(feature = "metrics"))]
pub(crate) use noop::*;

/// The `state` label of an endpoint state.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn state_label(state: EndpointState) -> &'static str {
    match state {
        EndpointState::Connecting => "connecting",
        EndpointState::Up => "up",
        EndpointState::Ejected => "ejected",
        EndpointState::Idle => "idle",
    }
}

/// The `status` label of a discovery status.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn discovery_label(status: &DiscoveryStatus) -> &'static str {
    match status {
        DiscoveryStatus::Syncing => "syncing",
        DiscoveryStatus::Synced { .. } => "synced",
        DiscoveryStatus::Retrying { .. } => "retrying",
        DiscoveryStatus::Failed { .. } => "failed",
    }
}

/// The `status` label of a registration status.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn registrar_label(status: &RegistrationStatus) -> &'static str {
    match status {
        RegistrationStatus::Registering => "registering",
        RegistrationStatus::Registered { .. } => "registered",
        RegistrationStatus::Retrying { .. } => "retrying",
        RegistrationStatus::Deregistered => "deregistered",
        RegistrationStatus::Failed { .. } => "failed",
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests;
