//! Why a call found no endpoint: the message of its `Unavailable` status.
//!
//! The message names the service, what the balancer knows of its endpoints, and, while
//! discovery is not in sync with etcd, why:
//!
//! ```text
//! no endpoint of service "echo": none registered under etcd prefix "echo/"
//! no endpoint of service "echo": none registered under etcd prefix "echo/" (2 keys skipped, last echo/1: not an etcd-naming JSON value ...)
//! no endpoint of service "echo": 3 known, none up (2 ejected, 1 connecting)
//! no endpoint of service "echo": discovery has not listed etcd yet
//! no endpoint of service "echo": etcd at 127.0.0.1:41358 unreachable: connection refused, retrying (attempt 6)
//! no endpoint of service "echo": discovery failed: invalid service prefix "/": it is empty
//! ```

use std::error::Error as StdError;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tonic::Status;

use super::EndpointState;
use super::backend::Backend;
use crate::discovery::DiscoveryStatus;
use crate::error::Chain;
use crate::error::Error;

/// The `Unavailable` status of a call that found no endpoint of `service` up.
pub(super) fn no_endpoint(
    service: &str,
    known: &[Arc<Backend>],
    discovery: &DiscoveryStatus,
) -> Status {
    let mut message = format!("no endpoint of service {service:?}: ");
    let synced = discovery.is_synced();
    if !known.is_empty() {
        message.push_str(&endpoints(known));
        if !synced {
            message.push_str("; ");
        }
    } else if let DiscoveryStatus::Synced {
        prefix,
        skipped,
        skip_reason,
        ..
    } = discovery
    {
        let _ = write!(message, "none registered under etcd prefix {prefix:?}");
        if let (1.., Some(reason)) = (skipped, skip_reason) {
            let keys = if *skipped == 1 { "key" } else { "keys" };
            let _ = write!(message, " ({skipped} {keys} skipped, last {reason})");
        }
    }
    match discovery {
        DiscoveryStatus::Synced { .. } => {}
        DiscoveryStatus::Syncing => message.push_str("discovery has not listed etcd yet"),
        DiscoveryStatus::Retrying { attempt, error, .. } => {
            let _ = write!(message, "{}, retrying (attempt {attempt})", etcd(error));
        }
        DiscoveryStatus::Failed { error } => {
            let _ = write!(message, "discovery failed: {}", Chain(error));
        }
    }
    Status::unavailable(message)
}

/// `3 known, none up (2 ejected, 1 connecting)`.
fn endpoints(known: &[Arc<Backend>]) -> String {
    let (mut connecting, mut ejected, mut idle) = (0, 0, 0);
    for backend in known {
        match backend.state() {
            EndpointState::Connecting => connecting += 1,
            EndpointState::Ejected => ejected += 1,
            EndpointState::Idle => idle += 1,
            EndpointState::Up => {}
        }
    }
    let counts: Vec<String> = [
        (ejected, "ejected"),
        (connecting, "connecting"),
        (idle, "idle"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    format!("{} known, none up ({})", known.len(), counts.join(", "))
}

/// What went wrong with etcd, said plainly when etcd could not be reached:
/// `etcd at 127.0.0.1:2379 unreachable: connection refused`; else the error and its causes.
fn etcd(error: &Error) -> String {
    if let Error::Timeout { operation, after } = error {
        return format!("etcd unreachable: {operation} timed out after {after:?}");
    }
    let Some(io) = io_cause(error) else {
        return Chain(error).to_string();
    };
    match peer(error) {
        Some(addr) => format!("etcd at {addr} unreachable: {}", io.kind()),
        None => format!("etcd unreachable: {}", io.kind()),
    }
}

/// The I/O error at the root of `error`, if any: etcd was not reached.
fn io_cause<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a std::io::Error> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = crate::error::cause_of(e);
    }
    None
}

/// The address a connection to etcd failed to reach. hyper-util's connect error shows it
/// only in its `Debug` form, `ConnectError("tcp connect error", 127.0.0.1:2379, ...)`; this
/// reads it from there, and gives `None` when the form is not that one.
fn peer(error: &Error) -> Option<SocketAddr> {
    peer_in(&format!("{error:?}"))
}

fn peer_in(debug: &str) -> Option<SocketAddr> {
    let (_, rest) = debug.split_once("ConnectError(\"")?;
    let (_, rest) = rest.split_once("\", ")?;
    let end = rest.find([',', ')']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_when_keys_under_the_prefix_were_skipped() {
        let synced = DiscoveryStatus::Synced {
            revision: 3,
            endpoints: 0,
            prefix: "echo/".into(),
            skipped: 2,
            skip_reason: Some("echo/1: not an etcd-naming JSON value".into()),
        };
        let message = no_endpoint("echo", &[], &synced).message().to_owned();
        assert_eq!(
            message,
            "no endpoint of service \"echo\": none registered under etcd prefix \"echo/\" \
             (2 keys skipped, last echo/1: not an etcd-naming JSON value)"
        );
    }

    fn refused() -> Error {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        Error::List {
            prefix: "echo/".into(),
            source: Arc::new(etcd_client::Error::IoError(io)),
        }
    }

    #[test]
    fn says_etcd_is_unreachable_and_how_often_it_was_tried() {
        let status = DiscoveryStatus::Retrying {
            attempt: 6,
            error: refused(),
            endpoints: 0,
        };
        let message = no_endpoint("echo", &[], &status).message().to_owned();
        assert_eq!(
            message,
            "no endpoint of service \"echo\": etcd unreachable: connection refused, retrying (attempt 6)"
        );
    }

    #[test]
    fn reads_the_address_from_a_connect_error() {
        // The Debug form of the error etcd-client returns when nothing listens.
        let debug = "List { prefix: \"echo/\", source: GRpcStatus(Status { code: Unavailable, \
            message: \"tcp connect error\", source: Some(tonic::transport::Error(Transport, \
            ConnectError(ConnectError(\"tcp connect error\", 127.0.0.1:41358, Os { code: 111, \
            kind: ConnectionRefused, message: \"Connection refused\" })))) }) }";
        assert_eq!(
            peer_in(debug),
            Some("127.0.0.1:41358".parse().expect("addr"))
        );
        assert_eq!(peer(&refused()), None);
    }

    #[test]
    fn names_no_cause_once_synced() {
        let synced = DiscoveryStatus::Synced {
            revision: 3,
            endpoints: 0,
            prefix: "echo/".into(),
            skipped: 0,
            skip_reason: None,
        };
        let message = no_endpoint("echo", &[], &synced).message().to_owned();
        assert_eq!(
            message,
            "no endpoint of service \"echo\": none registered under etcd prefix \"echo/\""
        );
        let syncing = no_endpoint("echo", &[], &DiscoveryStatus::Syncing);
        assert!(
            syncing.message().ends_with("not listed etcd yet"),
            "{syncing:?}"
        );
    }
}
