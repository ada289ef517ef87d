//! go-zero's etcd registry (`core/discov`), as its zrpc servers and clients use it.

use super::plain::decode_addr_text;
use super::{DecodeError, Format, Instance, one_segment_below, slash_prefix};

/// The format of go-zero's `discov` publisher and subscriber.
///
/// The `service` is go-zero's `Etcd.Key` (for example `greeter.rpc`). Keys are
/// `<key>/<id>`, where the id is the lease id in decimal, as go-zero writes it, or the id set
/// with [`id`](GoZero::id) (go-zero's `discov.WithId`). Values are the bare address,
/// `10.0.0.5:8080`; reading trims ASCII whitespace around it. There is no metadata and no
/// TLS flag.
///
/// Discovery takes only the keys one segment below the go-zero key, `<key>/<id>`: the keys
/// of a nested key (`greeter.rpc/admin/<id>` under `greeter.rpc`) are skipped with a
/// `debug!`. go-zero's own subscriber takes every key under `<key>/`. Values carry no
/// service name, so nothing else tells two keys apart.
///
/// Two keys may carry the same address, for example while a server re-registers under a
/// new lease and the old key has not expired yet. Discovery makes them one endpoint, as
/// go-zero does, which stays until the last of the keys is deleted (see
/// [`EtcdDiscover`](crate::EtcdDiscover)).
///
/// ```
/// use tonic_etcd::{Format, GoZero, Instance};
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

    fn decode_for(&self, service: &str, key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        one_segment_below(&self.prefix(service), key)?;
        self.decode(key, value)
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
    fn discovery_takes_only_keys_one_segment_below_the_prefix() {
        let format = GoZero::new();
        let value = format.value("greeter.rpc", &Instance::new("10.0.0.1:1"));
        let mine = format.decode_for("greeter.rpc", "greeter.rpc/7587", &value);
        assert_eq!(mine.expect("one segment below").addr, "10.0.0.1:1");
        let error = format
            .decode_for("greeter.rpc", "greeter.rpc/admin/7588", &value)
            .expect_err("a nested service's key");
        assert!(error.is_other_service(), "{error}");
        let theirs = format.decode_for("greeter.rpc/admin", "greeter.rpc/admin/7588", &value);
        assert!(theirs.is_ok(), "the nested service takes its own key");
        assert!(
            format.decode("greeter.rpc/admin/7588", &value).is_ok(),
            "decode alone does not look"
        );
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
