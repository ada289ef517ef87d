//! Wire formats: how a server instance is written to etcd, and read back.

mod blog;
mod check;
mod etcd_naming;
mod go_zero;
mod instance;
mod kratos;
mod plain;

pub use blog::Blog;
pub use check::{check_instance, check_service};
pub use etcd_naming::EtcdNaming;
pub use go_zero::GoZero;
pub use instance::{Instance, Metadata};
pub use kratos::Kratos;
pub use plain::PlainAddr;

use std::fmt;
use std::sync::Arc;

/// A registry wire format: how a server instance is written to etcd, and read back.
///
/// A format maps an [`Instance`] to a key and a value, and a key and a value back to an
/// instance. The default, [`EtcdNaming`], is the convention of etcd's own Go naming package,
/// so Go and Rust services discover each other with no glue. The others speak the registries
/// of Go frameworks, or the simplest thing that works:
///
/// | format | `service` is | key | value |
/// |---|---|---|---|
/// | [`EtcdNaming`] | the target | `<target>/<addr>` | `{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}` |
/// | [`GoZero`] | the go-zero key | `<key>/<lease id>` | `10.0.0.5:8080` |
/// | [`Kratos`] | the service name | `/microservices/<name>/<id>` | `{"id":..,"name":..,"version":..,"metadata":..,"endpoints":["grpc://10.0.0.5:9000"]}` |
/// | [`Blog`] | the service name | `services/<name>/<addr>` | `{"ID":0,"IP":"127.0.0.1:8080"}` |
/// | [`PlainAddr`] | the prefix | `<prefix>/<addr>` | `10.0.0.1:50051` |
///
/// Every decoder validates the address (`host:port`, port in 1..=65535) and returns a
/// [`DecodeError`] rather than panicking, whatever the bytes.
///
/// # Nested services
///
/// The keys of a service whose name extends another's with a slash (`greeter/admin` under
/// `greeter`) lie under the other's prefix, so a listing of `greeter` sees them. Discovery
/// decodes with [`Format::decode_for`], which tells them apart where the format can:
///
/// | format | tells `greeter` from `greeter/admin` by | cannot tell apart |
/// |---|---|---|
/// | [`EtcdNaming`] | key depth: only `<target>/<one segment>` | an instance key of more than one segment (`<target>/<host>/<port>`), which etcd's Go resolver would take and this skips |
/// | [`GoZero`] | key depth: only `<key>/<id>` | as etcd naming |
/// | [`Kratos`] | the value's `name`, as Kratos's own registry does | instances whose `name` is the service's, wherever their key lies under the prefix |
/// | [`Blog`] | key depth: only `services/<name>/<id>` | the original single key `services/<name>`, which it never reads |
/// | [`PlainAddr`] | key depth: only `<prefix>/<addr>` | as etcd naming |
///
/// No format can tell apart two services whose names differ only in leading or trailing
/// slashes: they are one service. A value written in another format under the same prefix
/// does not decode, and is skipped with a warning that names its key, with one exception:
/// [`GoZero`] and [`PlainAddr`] values are both a bare address, so under one prefix each
/// reads the other's keys.
///
/// # Implementing one
///
/// Implementations are synchronous, cheap and object-safe: discovery holds an
/// `Arc<dyn Format>` and calls [`decode`](Format::decode) for every key it sees, and the
/// registrar calls [`key`](Format::key) and [`value`](Format::value) once per registration.
/// `Box<dyn Format>` and `Arc<dyn Format>` are formats too, so a format chosen at run time
/// can be passed where `impl Format` is expected.
///
/// `decode` never panics on bad input: it returns a [`DecodeError`] that says why, and
/// discovery skips the key with a warning that names it.
///
/// ```
/// use tonic_etcd::{DecodeError, Format, Instance};
///
/// /// Keys `<service>/<addr>`, values `addr` in upper case, for the sake of the example.
/// #[derive(Debug)]
/// struct Shouting;
///
/// impl Format for Shouting {
///     fn prefix(&self, service: &str) -> String {
///         format!("{}/", service.trim_end_matches('/'))
///     }
///     fn key(&self, service: &str, instance: &Instance, _lease_id: i64) -> String {
///         format!("{}{}", self.prefix(service), instance.addr)
///     }
///     fn value(&self, _service: &str, instance: &Instance) -> Vec<u8> {
///         instance.addr.to_uppercase().into_bytes()
///     }
///     fn decode(&self, _key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
///         let text = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8)?;
///         Ok(Instance::new(text.to_lowercase()))
///     }
/// }
///
/// let format: Box<dyn Format> = Box::new(Shouting);
/// assert_eq!(format.value("s", &Instance::new("host-a:80")), b"HOST-A:80");
/// ```
pub trait Format: fmt::Debug + Send + Sync + 'static {
    /// The key prefix that holds the instances of `service`, with its trailing slash.
    ///
    /// Discovery lists and watches exactly this prefix; every key a format writes for
    /// `service` must start with it.
    fn prefix(&self, service: &str) -> String;

    /// The key under which an instance of `service` registers, holding lease `lease_id`.
    ///
    /// The registrar calls it again whenever it puts the key under a new lease, so a key
    /// named after the lease (as [`GoZero`]'s is) follows the lease. A format that ignores
    /// `lease_id` keeps one key for the whole registration.
    fn key(&self, service: &str, instance: &Instance, lease_id: i64) -> String;

    /// The value an instance of `service` registers.
    fn value(&self, service: &str, instance: &Instance) -> Vec<u8>;

    /// Decodes the instance that the key and value describe.
    fn decode(&self, key: &str, value: &[u8]) -> Result<Instance, DecodeError>;

    /// Decodes the instance that the key and value describe, if it is an instance of
    /// `service` itself, and not of a nested service whose keys lie under the same prefix
    /// (`greeter/admin` under `greeter`).
    ///
    /// Discovery calls this for every key under [`prefix`](Format::prefix)`(service)`, and
    /// skips one that belongs to another service ([`DecodeError::NestedKey`] or
    /// [`DecodeError::OtherService`]) with a `debug!` that names the key. The built-in
    /// formats check what they can (see [nested services](Format#nested-services)).
    ///
    /// The default takes every key under the prefix: it is [`decode`](Format::decode).
    fn decode_for(&self, service: &str, key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        let _ = service;
        self.decode(key, value)
    }
}

impl<F: Format + ?Sized> Format for Box<F> {
    fn prefix(&self, service: &str) -> String {
        (**self).prefix(service)
    }

    fn key(&self, service: &str, instance: &Instance, lease_id: i64) -> String {
        (**self).key(service, instance, lease_id)
    }

    fn value(&self, service: &str, instance: &Instance) -> Vec<u8> {
        (**self).value(service, instance)
    }

    fn decode(&self, key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        (**self).decode(key, value)
    }

    fn decode_for(&self, service: &str, key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        (**self).decode_for(service, key, value)
    }
}

impl<F: Format + ?Sized> Format for Arc<F> {
    fn prefix(&self, service: &str) -> String {
        (**self).prefix(service)
    }

    fn key(&self, service: &str, instance: &Instance, lease_id: i64) -> String {
        (**self).key(service, instance, lease_id)
    }

    fn value(&self, service: &str, instance: &Instance) -> Vec<u8> {
        (**self).value(service, instance)
    }

    fn decode(&self, key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        (**self).decode(key, value)
    }

    fn decode_for(&self, service: &str, key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        (**self).decode_for(service, key, value)
    }
}

/// Why a registry value could not be decoded into an [`Instance`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The value is not UTF-8 text.
    #[error("value is not utf-8")]
    NotUtf8,
    /// The value is not the JSON the format expects: another format's value, or none.
    #[error("not {expected}")]
    Json {
        /// What the format expects, with its shape: `an etcd-naming JSON value
        /// {"Addr":"host:port",..}`.
        expected: &'static str,
        /// What the JSON parser says is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The value names no address.
    #[error("value has no address")]
    MissingAddress,
    /// The value lists endpoints, but none of them is `grpc://` or `grpcs://`.
    #[error("value has no grpc:// or grpcs:// endpoint")]
    NoGrpcEndpoint,
    /// The address is not `host:port`.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as found.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key is not one segment below the service's prefix, where the format puts its
    /// instances: it is the key of a nested service (`greeter/admin/<addr>` under
    /// `greeter/`), or of something else.
    #[error("key is not one segment below {prefix:?}: it belongs to a nested service")]
    NestedKey {
        /// The service's prefix.
        prefix: String,
    },
    /// The value describes an instance of another service, as a Kratos instance of
    /// `greeter/admin` listed under `greeter` does.
    #[error("value is an instance of service {name:?}, not {service:?}")]
    OtherService {
        /// The service the value names (empty if it names none).
        name: String,
        /// The service being decoded.
        service: String,
    },
}

impl DecodeError {
    /// Whether the key or value belongs to another service: not a fault, just not ours.
    pub(crate) fn is_other_service(&self) -> bool {
        matches!(
            self,
            DecodeError::NestedKey { .. } | DecodeError::OtherService { .. }
        )
    }
}

/// The prefix `<service>/`, with exactly one trailing slash.
fn slash_prefix(service: &str) -> String {
    format!("{}/", service.trim_end_matches('/'))
}

/// Checks that `key` lies exactly one segment below `prefix`, as the instance keys of the
/// formats named after an address or an id do, and not deeper, as a nested service's do.
pub(crate) fn one_segment_below(prefix: &str, key: &str) -> Result<(), DecodeError> {
    match key.strip_prefix(prefix) {
        Some(rest) if !rest.contains('/') => Ok(()),
        _ => Err(DecodeError::NestedKey {
            prefix: prefix.to_owned(),
        }),
    }
}

/// Parses a JSON value, telling text that is not UTF-8 from text that is not the JSON wanted.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    value: &[u8],
    expected: &'static str,
) -> Result<T, DecodeError> {
    let text = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8)?;
    serde_json::from_str(text).map_err(|source| DecodeError::Json { expected, source })
}

/// Checks that `addr` is `host:port`, with a non-empty host and a port in 1..=65535.
pub(crate) fn validate_addr(addr: &str) -> Result<(), DecodeError> {
    let invalid = |reason| DecodeError::InvalidAddress {
        addr: addr.to_owned(),
        reason,
    };
    if let Ok(socket) = addr.parse::<std::net::SocketAddr>() {
        if socket.port() == 0 {
            return Err(invalid("port is not in 1..=65535"));
        }
        // A scope id (`[fe80::1%2]:80`) parses, but is not a valid URI authority.
        if addr.contains('%') {
            return Err(invalid("ipv6 scope ids are not supported"));
        }
        return Ok(());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(invalid("port is not in 1..=65535")),
        Ok(_) if !port.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(invalid("port is not in 1..=65535"));
        }
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
mod tests;
