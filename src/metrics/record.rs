//! Recording through the `metrics` facade (the `metrics` feature).

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use super::*;

const TARGET: &str = "grpc.target";
const PREFIX: &str = "prefix";

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the crate records: its name, kind, unit and help text.
const DESCRIPTIONS: [(&str, Kind, Option<Unit>, &str); 19] = [
    (
        ENDPOINTS,
        Kind::Gauge,
        Some(Unit::Count),
        "Endpoints the balancer knows, by state",
    ),
    (
        EJECTIONS,
        Kind::Counter,
        Some(Unit::Count),
        "Endpoints taken out of rotation, by reason",
    ),
    (
        READMISSIONS,
        Kind::Counter,
        Some(Unit::Count),
        "Ejected endpoints readmitted after a probe",
    ),
    (
        CONNECTION_ATTEMPTS_SUCCEEDED,
        Kind::Counter,
        Some(Unit::Count),
        "Connections opened to endpoints",
    ),
    (
        CONNECTION_ATTEMPTS_FAILED,
        Kind::Counter,
        Some(Unit::Count),
        "Connections to endpoints that failed to open",
    ),
    (
        RETRIES,
        Kind::Counter,
        Some(Unit::Count),
        "Calls sent again: transparent (never left) or by policy",
    ),
    (
        RETRIES_THROTTLED,
        Kind::Counter,
        Some(Unit::Count),
        "Policy retries refused by retry throttling",
    ),
    (
        FAIL_FASTS,
        Kind::Counter,
        Some(Unit::Count),
        "Calls failed with Unavailable: no endpoint up",
    ),
    (
        WAITS,
        Kind::Counter,
        Some(Unit::Count),
        "Calls that waited for an endpoint to be up",
    ),
    (
        WAIT_DURATION,
        Kind::Histogram,
        Some(Unit::Seconds),
        "How long calls waited for an endpoint to be up",
    ),
    (
        DISCOVERY_STATUS,
        Kind::Gauge,
        None,
        "1 for discovery's current status, 0 for the others",
    ),
    (
        DISCOVERY_REVISION,
        Kind::Gauge,
        None,
        "The etcd revision the endpoint set is current at",
    ),
    (
        DISCOVERY_KEYS,
        Kind::Gauge,
        Some(Unit::Count),
        "Keys announced under the prefix",
    ),
    (
        DISCOVERY_LISTS,
        Kind::Counter,
        Some(Unit::Count),
        "Listings of the prefix (above 1: re-lists)",
    ),
    (
        DISCOVERY_WATCHES,
        Kind::Counter,
        Some(Unit::Count),
        "Watches opened (above 1: restarts)",
    ),
    (
        DISCOVERY_ERRORS,
        Kind::Counter,
        Some(Unit::Count),
        "Failed etcd requests of discovery, retried",
    ),
    (
        REGISTRAR_STATUS,
        Kind::Gauge,
        None,
        "1 for the registrar's current status, 0 for the others",
    ),
    (
        KEEPALIVE_FAILURES,
        Kind::Counter,
        Some(Unit::Count),
        "Failed keepalives of the lease, by reason",
    ),
    (
        LEASES,
        Kind::Counter,
        Some(Unit::Count),
        "Leases granted (above 1: the lease was lost)",
    ),
];

/// Gives the installed recorder the help text and unit of every metric the crate records.
///
/// Call it once, after installing the recorder (an exporter): a Prometheus exporter then
/// writes a `# HELP` line for each. Recording works without it.
pub fn describe() {
    for (name, kind, unit, help) in DESCRIPTIONS {
        match (kind, unit) {
            (Kind::Counter, Some(unit)) => describe_counter!(name, unit, help),
            (Kind::Counter, None) => describe_counter!(name, help),
            (Kind::Gauge, Some(unit)) => describe_gauge!(name, unit, help),
            (Kind::Gauge, None) => describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
    }
}

/// Sets the endpoints-by-state gauges of `target` from the states of every endpoint known.
pub(crate) fn endpoints(target: &str, states: impl IntoIterator<Item = EndpointState>) {
    let mut counts = [0u32; 4];
    for state in states {
        counts[index(state)] += 1;
    }
    for state in [
        EndpointState::Connecting,
        EndpointState::Up,
        EndpointState::Ejected,
        EndpointState::Idle,
    ] {
        let labels = [
            (TARGET, target.to_owned()),
            ("state", state_label(state).to_owned()),
        ];
        gauge!(ENDPOINTS, &labels).set(counts[index(state)]);
    }
}

fn index(state: EndpointState) -> usize {
    match state {
        EndpointState::Connecting => 0,
        EndpointState::Up => 1,
        EndpointState::Ejected => 2,
        EndpointState::Idle => 3,
    }
}

/// An endpoint of `target` was ejected for `reason`.
pub(crate) fn ejection(target: &str, reason: Ejection) {
    counter!(EJECTIONS, TARGET => target.to_owned(), "reason" => reason.as_str()).increment(1);
}

/// An ejected endpoint of `target` was readmitted.
pub(crate) fn readmission(target: &str) {
    counter!(READMISSIONS, TARGET => target.to_owned()).increment(1);
}

/// A connection to an endpoint of `target` opened (`true`) or failed to (`false`).
pub(crate) fn connection_attempt(target: &str, succeeded: bool) {
    let name = match succeeded {
        true => CONNECTION_ATTEMPTS_SUCCEEDED,
        false => CONNECTION_ATTEMPTS_FAILED,
    };
    counter!(name, TARGET => target.to_owned()).increment(1);
}

/// A call to `target` is sent again.
pub(crate) fn retry(target: &str, kind: Retry) {
    let kind = match kind {
        Retry::Transparent => "transparent",
        Retry::Policy => "policy",
    };
    counter!(RETRIES, TARGET => target.to_owned(), "kind" => kind).increment(1);
}

/// Retry throttling refused a retry of a call to `target`.
pub(crate) fn retry_throttled(target: &str) {
    counter!(RETRIES_THROTTLED, TARGET => target.to_owned()).increment(1);
}

/// A call to `target` failed with `Unavailable`: no endpoint up.
pub(crate) fn fail_fast(target: &str) {
    counter!(FAIL_FASTS, TARGET => target.to_owned()).increment(1);
}

/// A call waiting for an endpoint: counted when it starts, its duration recorded when
/// it is dropped (the pick ended, either way).
#[derive(Debug)]
pub(crate) struct Waiting {
    target: String,
    started: tokio::time::Instant,
}

impl Waiting {
    pub(crate) fn start(target: &str) -> Self {
        counter!(WAITS, TARGET => target.to_owned()).increment(1);
        Waiting {
            target: target.to_owned(),
            started: tokio::time::Instant::now(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let target = std::mem::take(&mut self.target);
        histogram!(WAIT_DURATION, TARGET => target).record(seconds);
    }
}

/// Discovery of `prefix` reports `status`: the status gauges, and the revision and keys
/// while synced.
pub(crate) fn discovery_status(prefix: &str, status: &DiscoveryStatus) {
    let current = discovery_label(status);
    for label in ["syncing", "synced", "retrying", "failed"] {
        let labels = [(PREFIX, prefix.to_owned()), ("status", label.to_owned())];
        gauge!(DISCOVERY_STATUS, &labels).set(u8::from(label == current));
    }
    match status {
        DiscoveryStatus::Synced {
            revision,
            endpoints,
            ..
        } => {
            // A revision is far below 2^53: exact as an f64.
            gauge!(DISCOVERY_REVISION, PREFIX => prefix.to_owned()).set(*revision as f64);
            gauge!(DISCOVERY_KEYS, PREFIX => prefix.to_owned()).set(*endpoints as f64);
        }
        DiscoveryStatus::Retrying { .. } => {
            counter!(DISCOVERY_ERRORS, PREFIX => prefix.to_owned()).increment(1);
        }
        DiscoveryStatus::Syncing | DiscoveryStatus::Failed { .. } => {}
    }
}

/// Discovery listed `prefix`.
pub(crate) fn discovery_listed(prefix: &str) {
    counter!(DISCOVERY_LISTS, PREFIX => prefix.to_owned()).increment(1);
}

/// Discovery opened a watch of `prefix`.
pub(crate) fn discovery_watch_opened(prefix: &str) {
    counter!(DISCOVERY_WATCHES, PREFIX => prefix.to_owned()).increment(1);
}

/// The registrar reports `status`.
pub(crate) fn registrar_status(status: &RegistrationStatus) {
    let current = registrar_label(status);
    for label in [
        "registering",
        "registered",
        "retrying",
        "deregistered",
        "failed",
    ] {
        gauge!(REGISTRAR_STATUS, "status" => label).set(u8::from(label == current));
    }
}

/// A keepalive of the lease failed.
pub(crate) fn keepalive_failure(reason: KeepAlive) {
    let reason = match reason {
        KeepAlive::Stalled => "stalled",
        KeepAlive::LeaseLost => "lease_lost",
        KeepAlive::Error => "error",
    };
    counter!(KEEPALIVE_FAILURES, "reason" => reason).increment(1);
}

/// The registrar was granted a lease.
pub(crate) fn lease_granted() {
    counter!(LEASES).increment(1);
}
