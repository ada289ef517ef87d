//! go-zero's etcd registry (`core/discov`), as its zrpc servers and clients use it.

use super::plain::decode_addr_text;
use super::{DecodeError, Format, Instance, slash_prefix};

/// The format of go-zero's `discov` publisher and subscriber.
///
/// The `service` is go-zero's `Etcd.Key` (for example `greeter.rpc`). Keys are
/// `<key>/<id>`, where the id is the lease id in decimal, as go-zero writes it, or the id set
/// with [`id`](GoZero::id) (go-zero's `discov.WithId`). Values are the bare address,
/// `10.0.0.5:8080`; reading trims ASCII whitespace around it. There is no metadata and no
/// TLS flag.
///
/// Two keys may carry the same address, for example while a server re-registers under a
/// new lease and the old key has not expired yet. Discovery keys its changes by the etcd key,
/// so each key is its own endpoint, and the address stays reachable until its last key is
/// deleted.
///
/// ```
/// use tonic_etcd::format::{Format, GoZero, Instance};
///
/// let instance = Instance::new("10.0.0.5:8080");
/// assert_eq!(GoZero::new().key("greeter.rpc", &instance, 7587), "greeter.rpc/7587");
/// assert_eq!(GoZero::new().id(42).key("greeter.rpc", &instance, 7587), "greeter.rpc/42");
/// assert_eq!(GoZero::new().value("greeter.rpc", &instance), b"10.0.0.5:8080");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GoZero {
    id: Option<i64>,
}

impl GoZero {
    /// The go-zero format, with keys named after the lease.
    #[must_use]
    pub fn new() -> Self {
        GoZero::default()
    }

    /// A fixed id for the key instead of the lease id, like go-zero's `discov.WithId`.
    /// It must be unique among the instances of the service. Default: the lease id.
    #[must_use]
    pub fn id(mut self, id: i64) -> Self {
        self.id = Some(id);
        self
    }
}

impl Format for GoZero {
    fn prefix(&self, service: &str) -> String {
        slash_prefix(service)
    }

    fn key(&self, service: &str, _instance: &Instance, lease_id: i64) -> String {
        format!("{}{}", self.prefix(service), self.id.unwrap_or(lease_id))
    }

    fn value(&self, _service: &str, instance: &Instance) -> Vec<u8> {
        instance.addr.clone().into_bytes()
    }

    fn decode(&self, _key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        decode_addr_text(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_go_zero_value() {
        let i = GoZero::new()
            .decode("greeter.rpc/7587861234567", b"10.0.0.5:8080")
            .expect("decodes");
        assert_eq!(i, Instance::new("10.0.0.5:8080"));
    }

    #[test]
    fn keys_are_the_lease_id_in_decimal_or_the_configured_id() {
        let i = Instance::new("10.0.0.5:8080");
        assert_eq!(
            GoZero::new().key("greeter.rpc/", &i, 7_587_861_234_567),
            "greeter.rpc/7587861234567"
        );
        assert_eq!(GoZero::new().id(-3).key("k", &i, 9), "k/-3");
        assert_eq!(GoZero::new().prefix("greeter.rpc"), "greeter.rpc/");
    }

    #[test]
    fn two_keys_may_carry_one_address() {
        let format = GoZero::new();
        let a = format.decode("k/1", b"10.0.0.5:8080").expect("first key");
        let b = format.decode("k/2", b"10.0.0.5:8080").expect("second key");
        assert_eq!(a, b);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\xc3",
            b"10.0.0.5",
            b"10.0.0.5:0",
            b"grpc://10.0.0.5:80",
        ] {
            let error = GoZero::new().decode("k/1", bad).expect_err("rejected");
            assert!(!error.to_string().is_empty());
        }
    }
}
