//! Wire formats: how a server instance is written to etcd, and read back.
//!
//! A [`Format`] maps an [`Instance`] to a key and a value, and a key and a value back to an
//! instance. The default, [`EtcdNaming`], is the convention of etcd's own Go naming package,
//! so Go and Rust services discover each other with no glue.

mod etcd_naming;
mod instance;

pub use etcd_naming::EtcdNaming;
pub use instance::{Instance, Metadata};

use std::fmt;

/// A registry wire format.
///
/// Implementations are synchronous, cheap and object-safe: discovery holds an
/// `Arc<dyn Format>` and calls [`decode`](Format::decode) for every key it sees.
///
/// `decode` never panics on bad input: it returns a [`DecodeError`] that says why, and
/// discovery skips the key with a warning that names it.
pub trait Format: fmt::Debug + Send + Sync + 'static {
    /// The key prefix that holds the instances of `service`, with its trailing slash.
    fn prefix(&self, service: &str) -> String;

    /// The key under which an instance of `service` registers, holding lease `lease_id`.
    fn key(&self, service: &str, instance: &Instance, lease_id: i64) -> String;

    /// The value an instance of `service` registers.
    fn value(&self, service: &str, instance: &Instance) -> Vec<u8>;

    /// Decodes the instance that the key and value describe.
    fn decode(&self, key: &str, value: &[u8]) -> Result<Instance, DecodeError>;
}

/// Why a registry value could not be decoded into an [`Instance`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The value is not UTF-8 text.
    #[error("value is not utf-8")]
    NotUtf8,
    /// The value is not the JSON the format expects.
    #[error("value is not valid json for this format")]
    Json(#[source] serde_json::Error),
    /// The value names no address.
    #[error("value has no address")]
    MissingAddress,
    /// The address is not `host:port`.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as found.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Checks that `addr` is `host:port`, with a non-empty host and a port in 1..=65535.
pub(crate) fn validate_addr(addr: &str) -> Result<(), DecodeError> {
    let invalid = |reason| DecodeError::InvalidAddress {
        addr: addr.to_owned(),
        reason,
    };
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(invalid("port is not in 1..=65535")),
        Ok(_) => {}
    }
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !host_ok {
        return Err(invalid("host is not a name or an ip address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ip_and_host_addresses() {
        for addr in ["10.0.0.1:50051", "[::1]:8080", "greeter-0.svc.local:443"] {
            assert!(validate_addr(addr).is_ok(), "{addr}");
        }
    }

    #[test]
    fn rejects_bad_addresses() {
        for addr in [
            "",
            "10.0.0.1",
            ":80",
            "host:0",
            "host:65536",
            "host:http",
            "a b:80",
            "user@host:80",
            "http://host:80",
            "::1:80",
        ] {
            assert!(validate_addr(addr).is_err(), "{addr:?} accepted");
        }
    }
}
